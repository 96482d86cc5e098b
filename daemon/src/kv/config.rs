//! What a KV region is asked to be: the model's KV shape, the slot grid, the page size, the
//! layout and the physical budget. Validation turns every bad value into a typed error.
//!
//! Must not: allocate, map or know about backends.

use super::KvError;

/// The smallest page the CUDA driver maps (and the unit `blockSize` must be a multiple of).
pub const PAGE_GRANULE_BYTES: usize = 2 << 20;

/// Default page size: one 2 MiB granule, as vAttention and the `FusedModel` default.
pub const DEFAULT_PAGE_BYTES: usize = PAGE_GRANULE_BYTES;
/// Tokens of growth mapped ahead of each reservation by default: a decode step finds the page
/// of its next few tokens mapped (the only look-ahead in the daemon; the scheduler claims only
/// what a batch needs).
pub const DEFAULT_LOOKAHEAD_TOKENS: usize = 16;

/// How a region's bytes are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    /// vAttention's layout: per layer a K and a V tensor, each `[slot][ctx][kv_heads][head_dim]`.
    /// A page holds one (layer, K|V, slot) run, so a sequence grows by `2 * layers` pages at a time.
    PerLayer,
    /// The "megacache": one tensor `[slot][ctx][layer][K|V][kv_heads][head_dim]`; every layer of
    /// a token lies on one page, so a sequence grows one page at a time (`2 * layers` times finer).
    Interleaved,
}

impl std::str::FromStr for KvLayout {
    type Err = KvError;

    /// Parses the `FusedModel` spelling (`perLayer` / `interleaved`, case-insensitive).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "perlayer" | "per-layer" | "per_layer" => Ok(Self::PerLayer),
            "interleaved" | "megacache" => Ok(Self::Interleaved),
            _ => Err(KvError::InvalidConfig(format!(
                "unknown KV layout {text:?} (expected perLayer or interleaved)"
            ))),
        }
    }
}

/// What a new sequence does with the cached page it matches only partly (its prompt diverges
/// inside the page, or its hit ends inside one): the page is never shared, since the sequence
/// writes the rest of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialPage {
    /// Copy the matching part of the cached page into the sequence's own page (one device
    /// copy of at most a page per run) and compute from the divergence on.
    Copy,
    /// Compute every token of that page again. A row that straddles a page boundary still
    /// needs the page before it copied (it must not be written where it is shared).
    Recompute,
}

/// The shape and budget of one model's KV region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvConfig {
    /// Transformer layers.
    pub layers: usize,
    /// Key/value heads per layer (after grouped-query sharing).
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Bytes per element: 4 for f32 on the CPU, 2 for bf16 on the GPU.
    pub elem_bytes: usize,
    /// Sequences that can hold KV at once (slots).
    pub max_seqs: usize,
    /// Tokens one sequence can hold.
    pub max_context_len: usize,
    /// Bytes per physical page (`blockSize`): a multiple of 2 MiB.
    pub page_bytes: usize,
    /// Byte order of the region.
    pub layout: KvLayout,
    /// Physical budget in bytes; the pool holds `pool_bytes / page_bytes` pages (at most as many
    /// as the whole virtual region has).
    pub pool_bytes: usize,
    /// The ablation "the world before vAttention": `admit` reserves pages for the full
    /// `max_context_len` at once, as a static per-sequence allocation would.
    pub eager: bool,
    /// Tokens of growth the mapper maps ahead of each reservation when free pages allow, so that
    /// decode steps that cross a page boundary find it mapped. 0 turns look-ahead off.
    pub lookahead_tokens: usize,
    /// Automatic prefix caching: pages a sequence filled stay indexed by their tokens' hashes,
    /// and a new sequence with the same prefix maps them instead of computing them.
    pub prefix_caching: bool,
    /// What a sequence does with a cached page it matches only partly.
    pub partial_page: PartialPage,
}

impl KvConfig {
    /// A config for a model's KV shape with the defaults: 2 MiB pages, per-layer layout, 64
    /// sequences of 4096 tokens, a 1 GiB pool, on-demand mapping, 16 tokens of look-ahead, no
    /// prefix caching (the daemon turns it on).
    pub fn for_model(layers: usize, kv_heads: usize, head_dim: usize, elem_bytes: usize) -> Self {
        Self {
            layers,
            kv_heads,
            head_dim,
            elem_bytes,
            max_seqs: 64,
            max_context_len: 4096,
            page_bytes: DEFAULT_PAGE_BYTES,
            layout: KvLayout::PerLayer,
            pool_bytes: 1 << 30,
            eager: false,
            lookahead_tokens: DEFAULT_LOOKAHEAD_TOKENS,
            prefix_caching: false,
            partial_page: PartialPage::Copy,
        }
    }

    /// Checks every field; the first problem found is the error.
    pub fn validate(&self) -> Result<(), KvError> {
        let positive = [
            ("layers", self.layers),
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("elem_bytes", self.elem_bytes),
            ("max_seqs", self.max_seqs),
            ("max_context_len", self.max_context_len),
            ("page_bytes", self.page_bytes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(KvError::InvalidConfig(format!("{name} must be positive")));
        }
        if !self.page_bytes.is_multiple_of(PAGE_GRANULE_BYTES) {
            return Err(KvError::InvalidConfig(format!(
                "page size (blockSize) {} bytes is not a multiple of 2 MiB ({PAGE_GRANULE_BYTES})",
                self.page_bytes
            )));
        }
        if self.pool_bytes < self.page_bytes {
            return Err(KvError::InvalidConfig(format!(
                "KV pool of {} bytes holds no {}-byte page",
                self.pool_bytes, self.page_bytes
            )));
        }
        if self.max_seqs > u32::MAX as usize {
            return Err(KvError::InvalidConfig(format!(
                "max_seqs {} does not fit a slot id",
                self.max_seqs
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_pages_that_are_not_whole_granules() {
        let mut config = KvConfig::for_model(2, 2, 64, 4);
        config.page_bytes = 3 << 20;
        let error = config
            .validate()
            .expect_err("3 MiB is not a multiple of 2 MiB");
        assert!(error.to_string().contains("multiple of 2 MiB"), "{error}");
        config.page_bytes = 4 << 20;
        config.validate().expect("4 MiB pages are valid");
    }

    #[test]
    fn rejects_zero_fields_and_empty_pools() {
        let mut config = KvConfig::for_model(2, 2, 64, 4);
        config.kv_heads = 0;
        assert!(
            matches!(config.validate(), Err(KvError::InvalidConfig(m)) if m.contains("kv_heads"))
        );
        let mut config = KvConfig::for_model(2, 2, 64, 4);
        config.pool_bytes = 1 << 20;
        assert!(matches!(config.validate(), Err(KvError::InvalidConfig(m)) if m.contains("pool")));
    }

    #[test]
    fn parses_layout_names() {
        assert_eq!(
            "perLayer".parse::<KvLayout>().ok(),
            Some(KvLayout::PerLayer)
        );
        assert_eq!(
            "interleaved".parse::<KvLayout>().ok(),
            Some(KvLayout::Interleaved)
        );
        assert!("paged".parse::<KvLayout>().is_err());
    }
}
