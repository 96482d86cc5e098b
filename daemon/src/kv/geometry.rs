//! Where every byte of a KV region lives: page runs, slot strides, virtual page numbers and the
//! per-layer K/V offsets the forward pass uses. Pure arithmetic on a validated [`KvConfig`].
//!
//! A region is `runs × max_seqs` *page runs* of `pages_per_run` pages each. A run is the part of
//! one slot that grows page by page: in the per-layer layout there is one run per (layer, K|V)
//! tensor (`runs = 2 × layers`), in the interleaved layout one per slot (`runs = 1`). Run `r` of
//! slot `s` starts at byte `(r × max_seqs + s) × slot_stride`, and `slot_stride` is a whole number
//! of pages, so every slot row starts page-aligned.
//!
//! Must not: hold state, allocate or map.

use super::KvError;
use super::config::{KvConfig, KvLayout};

/// The fixed arithmetic of one KV region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub layout: KvLayout,
    pub layers: usize,
    pub max_seqs: usize,
    pub max_context_len: usize,
    pub page_bytes: usize,
    /// Page runs per slot: `2 × layers` (per-layer) or 1 (interleaved).
    pub runs: usize,
    /// Bytes of one token's K (or V) for one layer: `kv_heads × head_dim × elem_bytes`.
    pub layer_token_bytes: usize,
    /// Bytes one token occupies in one run (also the stride from one position to the next).
    pub run_token_bytes: usize,
    /// Pages one run needs for `max_context_len` tokens.
    pub pages_per_run: usize,
    /// Bytes from one slot's run to the next (`pages_per_run × page_bytes`).
    pub slot_stride: usize,
    /// Bytes of the whole virtual reservation.
    pub virtual_bytes: usize,
    /// Physical pages in the pool.
    pub pool_pages: usize,
}

fn overflow(what: &str) -> KvError {
    KvError::InvalidConfig(format!("{what} overflows the address space"))
}

impl Geometry {
    /// Validates `config` and works out its geometry.
    pub fn new(config: &KvConfig) -> Result<Self, KvError> {
        config.validate()?;
        let layer_token_bytes = config
            .kv_heads
            .checked_mul(config.head_dim)
            .and_then(|n| n.checked_mul(config.elem_bytes))
            .ok_or_else(|| overflow("kv_heads × head_dim × elem_bytes"))?;
        let runs_per_layer_set = config
            .layers
            .checked_mul(2)
            .ok_or_else(|| overflow("layers"))?;
        let (runs, run_token_bytes) = match config.layout {
            KvLayout::PerLayer => (runs_per_layer_set, layer_token_bytes),
            KvLayout::Interleaved => (
                1,
                runs_per_layer_set
                    .checked_mul(layer_token_bytes)
                    .ok_or_else(|| overflow("token bytes"))?,
            ),
        };
        let run_bytes = config
            .max_context_len
            .checked_mul(run_token_bytes)
            .ok_or_else(|| overflow("max_context_len × token bytes"))?;
        let pages_per_run = run_bytes.div_ceil(config.page_bytes);
        let slot_stride = pages_per_run
            .checked_mul(config.page_bytes)
            .ok_or_else(|| overflow("slot stride"))?;
        let virtual_pages = runs
            .checked_mul(config.max_seqs)
            .and_then(|n| n.checked_mul(pages_per_run))
            .ok_or_else(|| overflow("virtual pages"))?;
        if virtual_pages >= u32::MAX as usize {
            return Err(KvError::InvalidConfig(format!(
                "{virtual_pages} virtual pages do not fit 32-bit page numbers: use fewer \
                 sequences, a shorter context or bigger pages"
            )));
        }
        let virtual_bytes = virtual_pages
            .checked_mul(config.page_bytes)
            .filter(|bytes| *bytes <= isize::MAX as usize)
            .ok_or_else(|| overflow("virtual reservation"))?;
        let pool_pages = (config.pool_bytes / config.page_bytes).min(virtual_pages);
        Ok(Self {
            layout: config.layout,
            layers: config.layers,
            max_seqs: config.max_seqs,
            max_context_len: config.max_context_len,
            page_bytes: config.page_bytes,
            runs,
            layer_token_bytes,
            run_token_bytes,
            pages_per_run,
            slot_stride,
            virtual_bytes,
            pool_pages,
        })
    }

    /// Pages per run (levels) that hold `tokens` tokens.
    pub fn levels_for(&self, tokens: usize) -> usize {
        tokens
            .saturating_mul(self.run_token_bytes)
            .div_ceil(self.page_bytes)
    }

    /// Physical pages a sequence of `tokens` tokens needs (all runs).
    pub fn pages_for(&self, tokens: usize) -> usize {
        self.levels_for(tokens).saturating_mul(self.runs)
    }

    /// Whole tokens one page holds in one run (a token may also straddle two pages).
    pub fn tokens_per_page(&self) -> usize {
        self.page_bytes / self.run_token_bytes
    }

    /// Bytes of live K and V for one token over all layers.
    pub fn token_bytes(&self) -> usize {
        self.runs * self.run_token_bytes
    }

    /// Tokens the whole pool holds when packed perfectly (every run full to its last byte).
    pub fn capacity_tokens(&self) -> usize {
        (self.pool_pages / self.runs) * self.page_bytes / self.run_token_bytes
    }

    /// The first token with bytes on page `level` of a run (the token may begin on the page
    /// before: rows need not divide pages).
    pub fn level_first_token(&self, level: usize) -> usize {
        level * self.page_bytes / self.run_token_bytes
    }

    /// One past the last token with bytes on page `level` of a run: the page's contents are
    /// final once this many tokens are computed, and depend on exactly these tokens.
    pub fn level_end_token(&self, level: usize) -> usize {
        ((level + 1) * self.page_bytes).div_ceil(self.run_token_bytes)
    }

    /// Tokens whose bytes all lie on pages `0..=level` of a run.
    pub fn level_whole_end(&self, level: usize) -> usize {
        (level + 1) * self.page_bytes / self.run_token_bytes
    }

    /// Virtual page number of page `level` of run `run` of `slot`.
    pub fn virtual_page(&self, run: usize, slot: usize, level: usize) -> usize {
        (run * self.max_seqs + slot) * self.pages_per_run + level
    }

    /// Byte offsets of `slot`'s K and V for `layer` from the region's base.
    pub fn layer_offsets(&self, slot: usize, layer: usize) -> (usize, usize) {
        match self.layout {
            KvLayout::PerLayer => {
                let k_run = 2 * layer;
                let k = (k_run * self.max_seqs + slot) * self.slot_stride;
                let v = ((k_run + 1) * self.max_seqs + slot) * self.slot_stride;
                (k, v)
            }
            KvLayout::Interleaved => {
                let row = slot * self.slot_stride;
                let k = row + 2 * layer * self.layer_token_bytes;
                (k, k + self.layer_token_bytes)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama3_8b(layout: KvLayout) -> Geometry {
        let mut config = KvConfig::for_model(32, 8, 128, 2);
        config.layout = layout;
        config.max_seqs = 256;
        config.max_context_len = 8192;
        config.pool_bytes = 64 << 30;
        Geometry::new(&config).expect("valid Llama-3-8B shape")
    }

    #[test]
    fn per_layer_llama3_holds_1024_tokens_per_page() {
        let geometry = llama3_8b(KvLayout::PerLayer);
        assert_eq!(geometry.runs, 64);
        assert_eq!(geometry.tokens_per_page(), 1024);
        assert_eq!(geometry.pages_per_run, 8);
        assert_eq!(geometry.pages_for(1), 64);
        assert_eq!(geometry.pages_for(1025), 128);
        assert_eq!(geometry.virtual_bytes, 64 * 256 * 8 * (2 << 20));
    }

    #[test]
    fn interleaved_llama3_grows_one_page_per_16_tokens() {
        let geometry = llama3_8b(KvLayout::Interleaved);
        assert_eq!(geometry.runs, 1);
        assert_eq!(geometry.run_token_bytes, 32 * 2 * 8 * 128 * 2);
        assert_eq!(geometry.tokens_per_page(), 16);
        assert_eq!(geometry.pages_for(17), 2);
        assert_eq!(
            geometry.token_bytes(),
            llama3_8b(KvLayout::PerLayer).token_bytes()
        );
    }

    #[test]
    fn layer_offsets_stay_inside_their_slot_rows() {
        for layout in [KvLayout::PerLayer, KvLayout::Interleaved] {
            let geometry = llama3_8b(layout);
            for slot in [0, 1, 255] {
                for layer in [0, 17, 31] {
                    let (k, v) = geometry.layer_offsets(slot, layer);
                    let last = (geometry.max_context_len - 1) * geometry.run_token_bytes;
                    assert!(v + last + geometry.layer_token_bytes <= geometry.virtual_bytes);
                    assert_ne!(k, v);
                    let run_start = |offset: usize| offset / geometry.slot_stride;
                    assert_eq!(
                        run_start(k),
                        run_start(k + last),
                        "{layout:?} K crosses a row"
                    );
                }
            }
        }
    }

    #[test]
    fn level_token_ranges_follow_straddling_rows() {
        // 2 layers × 8 heads × 96 × f32, interleaved: 12,288-byte rows, 170.67 per 2 MiB page.
        let mut config = KvConfig::for_model(2, 8, 96, 4);
        config.layout = KvLayout::Interleaved;
        let geometry = Geometry::new(&config).expect("valid");
        assert_eq!(geometry.run_token_bytes, 12_288);
        assert_eq!(geometry.level_first_token(0), 0);
        assert_eq!(geometry.level_whole_end(0), 170);
        assert_eq!(
            geometry.level_end_token(0),
            171,
            "token 170 straddles pages 0 and 1"
        );
        assert_eq!(geometry.level_first_token(1), 170);
        assert_eq!(geometry.level_whole_end(2), 512);
        assert_eq!(
            geometry.level_end_token(2),
            512,
            "3 pages end on a row boundary"
        );
        let aligned = llama3_8b(KvLayout::Interleaved);
        assert_eq!(
            (
                aligned.level_first_token(3),
                aligned.level_whole_end(3),
                aligned.level_end_token(3)
            ),
            (48, 64, 64)
        );
    }

    #[test]
    fn pool_is_capped_at_the_virtual_region() {
        let mut config = KvConfig::for_model(1, 1, 64, 4);
        config.max_seqs = 2;
        config.max_context_len = 16;
        config.pool_bytes = 1 << 40;
        let geometry = Geometry::new(&config).expect("valid tiny shape");
        assert_eq!(geometry.pool_pages, 4);
    }

    #[test]
    fn absurd_shapes_are_errors_not_overflows() {
        let mut config = KvConfig::for_model(usize::MAX / 2, 8, 128, 2);
        config.pool_bytes = 1 << 30;
        assert!(matches!(
            Geometry::new(&config),
            Err(KvError::InvalidConfig(_))
        ));
    }
}
