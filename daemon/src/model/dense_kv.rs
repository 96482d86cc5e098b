//! A heap-allocated, fully backed [`KvAccess`]: every slot holds `max_len` positions up front.
//! For scoring text offline and for tests of the forward pass alone; serving uses `kv::KvManager`.

use std::cell::UnsafeCell;

use super::config::ModelConfig;
use crate::kv::{KvAccess, LayerKv, SlotId};

pub struct DenseKv {
    /// `[slot][layer][K|V][max_len][kv_dim]` f32.
    data: Box<[UnsafeCell<f32>]>,
    layers: usize,
    slots: usize,
    max_len: usize,
    kv_dim: usize,
}

// SAFETY: DenseKv hands out raw pointers; the forward pass's contract (distinct slots per batch,
// no concurrent access to a position) is what keeps writes from racing.
unsafe impl Sync for DenseKv {}

impl DenseKv {
    pub fn new(cfg: &ModelConfig, slots: usize, max_len: usize) -> Self {
        let kv_dim = cfg.kv_dim();
        let len = slots * cfg.layers * 2 * max_len * kv_dim;
        let data = (0..len).map(|_| UnsafeCell::new(0.0)).collect();
        Self {
            data,
            layers: cfg.layers,
            slots,
            max_len,
            kv_dim,
        }
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

impl KvAccess for DenseKv {
    fn layer_kv(&self, slot: SlotId, layer: usize) -> LayerKv {
        assert!(
            (slot as usize) < self.slots && layer < self.layers,
            "DenseKv: slot or layer out of range"
        );
        let plane = self.max_len * self.kv_dim;
        let k = ((slot as usize * self.layers + layer) * 2) * plane;
        LayerKv {
            k: self.data[k].get().cast::<u8>(),
            v: self.data[k + plane].get().cast::<u8>(),
            token_stride: self.kv_dim * 4,
        }
    }
}
