//! How the forward pass reads and writes K/V: the narrow interface the KV manager implements,
//! and the slot id that names one sequence's row of the KV region.

/// Identifies one sequence's row of the KV region.
pub type SlotId = u32;

/// Where one sequence's keys and values for one layer live.
///
/// Position `p` of the sequence is at `k.add(p * token_stride)` (and likewise for `v`); one
/// position holds `kv_heads * head_dim` contiguous elements of the region's element type.
#[derive(Debug, Clone, Copy)]
pub struct LayerKv {
    pub k: *mut u8,
    pub v: *mut u8,
    /// Bytes from one position to the next.
    pub token_stride: usize,
}

// SAFETY: the pointers address the KV region, which outlives every forward pass; the engine
// guarantees that no two sequences of a batch share a slot, so writes never alias.
unsafe impl Send for LayerKv {}
unsafe impl Sync for LayerKv {}

/// The KV storage the forward pass reads and writes.
pub trait KvAccess: Sync {
    /// The K/V location of `slot` for `layer`. Positions below the length the engine has made
    /// ready for this slot are backed by memory; others must not be touched.
    fn layer_kv(&self, slot: SlotId, layer: usize) -> LayerKv;
}
