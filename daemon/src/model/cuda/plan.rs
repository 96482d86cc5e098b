//! How one batch looks to the GPU kernels: per-row, per-chunk and per-layer arrays built on the
//! host from the [`SeqChunk`]s and the KV addresses, packed into one buffer that is copied to the
//! device in a single transfer. Pure host arithmetic (no CUDA), so CI tests it everywhere.
//!
//! Chunks of one token go to the split-KV decode kernel, longer ones to the prefill kernel in
//! tiles of `tile_rows` query rows. A decode batch can be padded to a graph bucket: padding rows
//! have position [`PAD_POSITION`] (their K/V are not written) and empty chunks (no keys).
//!
//! Must not: launch kernels or own device memory.

use crate::kv::KvAccess;
use crate::model::ModelError;
use crate::model::forward::{LogitsWanted, SeqChunk};

/// Position of a padding row.
pub const PAD_POSITION: u32 = u32::MAX;

/// Everything the kernels read about one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchPlan {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub row_chunk: Vec<u32>,
    pub chunk_q_start: Vec<u32>,
    pub chunk_len: Vec<u32>,
    pub chunk_start: Vec<u32>,
    pub tile_chunk: Vec<u32>,
    pub tile_row0: Vec<u32>,
    pub dec_row: Vec<u32>,
    pub dec_chunk: Vec<u32>,
    /// Rows whose logits are computed, in output order.
    pub head_rows: Vec<u32>,
    /// `(first logits row, rows)` per real chunk.
    pub spans: Vec<(usize, usize)>,
    /// `[layer][chunk][K, V]` device addresses.
    pub kv: Vec<u64>,
    /// Bytes from one KV position to the next (the same for every slot and layer).
    pub token_stride: usize,
    /// Longest context (start + tokens) of the batch.
    pub max_ctx: usize,
}

/// Byte offsets of each array inside the packed buffer (each 16-byte aligned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetaOffsets {
    pub tokens: usize,
    pub positions: usize,
    pub row_chunk: usize,
    pub chunk_q_start: usize,
    pub chunk_len: usize,
    pub chunk_start: usize,
    pub tile_chunk: usize,
    pub tile_row0: usize,
    pub dec_row: usize,
    pub dec_chunk: usize,
    pub head_rows: usize,
    pub kv: usize,
}

impl BatchPlan {
    /// Plans `chunks` over `layers` layers. `pad_to`: pad a decode-only batch with empty
    /// single-row chunks up to this many rows (a CUDA graph bucket), computing logits for all.
    pub fn new(
        chunks: &[SeqChunk<'_>],
        kv: &dyn KvAccess,
        layers: usize,
        tile_rows: usize,
        pad_to: Option<usize>,
    ) -> Result<Self, ModelError> {
        let mut plan = Self::default();
        let rows: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let to_u32 = |value: usize, what: &str| {
            u32::try_from(value)
                .map_err(|_| ModelError::Input(format!("{what} {value} does not fit 32 bits")))
        };
        for (index, c) in chunks.iter().enumerate() {
            let n = c.tokens.len();
            if n == 0 {
                return Err(ModelError::Input(format!("chunk {index} has no tokens")));
            }
            let first = plan.tokens.len();
            plan.chunk_q_start.push(to_u32(first, "row")?);
            plan.chunk_len.push(to_u32(n, "chunk length")?);
            plan.chunk_start.push(to_u32(c.start_pos, "position")?);
            plan.max_ctx = plan.max_ctx.max(c.start_pos + n);
            for (t, &token) in c.tokens.iter().enumerate() {
                plan.tokens.push(token);
                plan.positions.push(to_u32(c.start_pos + t, "position")?);
                plan.row_chunk.push(to_u32(index, "chunk")?);
            }
            if n == 1 {
                plan.dec_row.push(to_u32(first, "row")?);
                plan.dec_chunk.push(to_u32(index, "chunk")?);
            } else {
                for r0 in (0..n).step_by(tile_rows) {
                    plan.tile_chunk.push(to_u32(index, "chunk")?);
                    plan.tile_row0.push(to_u32(r0, "row")?);
                }
            }
            if pad_to.is_none() {
                let wanted = c.logits.rows(n);
                plan.spans.push((plan.head_rows.len(), wanted.len()));
                for r in wanted {
                    plan.head_rows.push(to_u32(first + r, "row")?);
                }
            }
        }
        if let Some(bucket) = pad_to {
            if bucket < rows || chunks.iter().any(|c| c.tokens.len() != 1) {
                return Err(ModelError::Input(format!(
                    "only a decode batch of at most {bucket} rows can be padded to {bucket}"
                )));
            }
            for (index, c) in chunks.iter().enumerate() {
                let wanted = usize::from(c.logits != LogitsWanted::None);
                plan.spans.push((index, wanted));
            }
            for pad in rows..bucket {
                let index = to_u32(pad, "row")?;
                plan.tokens.push(0);
                plan.positions.push(PAD_POSITION);
                plan.row_chunk.push(index);
                plan.chunk_q_start.push(index);
                plan.chunk_len.push(0);
                plan.chunk_start.push(0);
                plan.dec_row.push(index);
                plan.dec_chunk.push(index);
            }
            plan.head_rows = (0..to_u32(bucket, "rows")?).collect();
        }
        let mut stride = None;
        for layer in 0..layers {
            for c in chunks {
                let lkv = kv.layer_kv(c.slot, layer);
                if *stride.get_or_insert(lkv.token_stride) != lkv.token_stride {
                    return Err(ModelError::Input(
                        "KV token strides differ between slots or layers".into(),
                    ));
                }
                plan.kv.extend([lkv.k as u64, lkv.v as u64]);
            }
            let pads = plan.chunk_len.len() - chunks.len();
            plan.kv.extend(std::iter::repeat_n(0, 2 * pads));
        }
        plan.token_stride = stride.unwrap_or(0);
        Ok(plan)
    }

    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    pub fn chunks(&self) -> usize {
        self.chunk_len.len()
    }

    /// The packed bytes and where each array starts in them.
    pub fn pack(&self) -> (Vec<u8>, MetaOffsets) {
        let mut bytes = Vec::new();
        let mut put = |values: &[u8]| {
            let at = bytes.len().next_multiple_of(16);
            bytes.resize(at, 0);
            bytes.extend_from_slice(values);
            at
        };
        let u32s = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let offsets = MetaOffsets {
            tokens: put(&u32s(&self.tokens)),
            positions: put(&u32s(&self.positions)),
            row_chunk: put(&u32s(&self.row_chunk)),
            chunk_q_start: put(&u32s(&self.chunk_q_start)),
            chunk_len: put(&u32s(&self.chunk_len)),
            chunk_start: put(&u32s(&self.chunk_start)),
            tile_chunk: put(&u32s(&self.tile_chunk)),
            tile_row0: put(&u32s(&self.tile_row0)),
            dec_row: put(&u32s(&self.dec_row)),
            dec_chunk: put(&u32s(&self.dec_chunk)),
            head_rows: put(&u32s(&self.head_rows)),
            kv: put(&self
                .kv
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>()),
        };
        (bytes, offsets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{LayerKv, SlotId};

    /// Addresses that encode (slot, layer) so the test can see which went where.
    struct FakeKv;

    impl KvAccess for FakeKv {
        fn layer_kv(&self, slot: SlotId, layer: usize) -> LayerKv {
            let k = 0x1000_0000 * (u64::from(slot) + 1) + 0x1000 * layer as u64;
            LayerKv {
                k: k as *mut u8,
                v: (k + 0x800) as *mut u8,
                token_stride: 64,
            }
        }
    }

    fn chunk(slot: u32, start_pos: usize, tokens: &[u32], logits: LogitsWanted) -> SeqChunk<'_> {
        SeqChunk {
            slot,
            start_pos,
            tokens,
            logits,
        }
    }

    #[test]
    fn mixed_batch_splits_decodes_from_prefill_tiles() {
        let long: Vec<u32> = (0..70).collect();
        let chunks = [
            chunk(3, 10, &[7], LogitsWanted::Last),
            chunk(5, 0, &long, LogitsWanted::None),
            chunk(1, 4, &[1, 2], LogitsWanted::All),
        ];
        let plan = BatchPlan::new(&chunks, &FakeKv, 2, 64, None).expect("valid batch");
        assert_eq!(plan.rows(), 73);
        assert_eq!(plan.chunk_q_start, [0, 1, 71]);
        assert_eq!(plan.dec_row, [0]);
        assert_eq!(plan.dec_chunk, [0]);
        assert_eq!(plan.tile_chunk, [1, 1, 2]);
        assert_eq!(plan.tile_row0, [0, 64, 0]);
        assert_eq!(plan.head_rows, [0, 71, 72]);
        assert_eq!(plan.spans, [(0, 1), (1, 0), (1, 2)]);
        assert_eq!(plan.positions[71..], [4, 5]);
        assert_eq!(plan.max_ctx, 70);
        // Layer 1, chunk 2 (slot 1): K then V.
        assert_eq!(plan.kv[2 * 3 + 4..2 * 3 + 6], [0x2000_1000, 0x2000_1800]);
        assert_eq!(plan.token_stride, 64);
    }

    #[test]
    fn padded_decode_batch_has_empty_chunks_and_a_fixed_layout() {
        let a = [
            chunk(0, 5, &[1], LogitsWanted::Last),
            chunk(2, 9, &[2], LogitsWanted::Last),
        ];
        let b = [chunk(1, 7, &[3], LogitsWanted::Last)];
        let pa = BatchPlan::new(&a, &FakeKv, 3, 64, Some(4)).expect("fits the bucket");
        let pb = BatchPlan::new(&b, &FakeKv, 3, 64, Some(4)).expect("fits the bucket");
        assert_eq!(pa.positions, [5, 9, PAD_POSITION, PAD_POSITION]);
        assert_eq!(pa.chunk_len, [1, 1, 0, 0]);
        assert_eq!(pa.dec_row, [0, 1, 2, 3]);
        assert_eq!(pa.head_rows, [0, 1, 2, 3]);
        assert_eq!(pa.spans, [(0, 1), (1, 1)]);
        assert_eq!(pa.kv.len(), 3 * 4 * 2);
        // Same bucket, same offsets: a graph captured for one replays the other.
        assert_eq!(pa.pack().1, pb.pack().1);
        let (bytes, offsets) = pa.pack();
        assert!(offsets.kv.is_multiple_of(16) && bytes.len() == offsets.kv + 3 * 4 * 16);
    }

    #[test]
    fn bad_batches_are_errors() {
        let long = [1, 2];
        let prefill = [chunk(0, 0, &long, LogitsWanted::Last)];
        assert!(BatchPlan::new(&prefill, &FakeKv, 1, 64, Some(4)).is_err());
        let empty = [chunk(0, 0, &[], LogitsWanted::Last)];
        assert!(BatchPlan::new(&empty, &FakeKv, 1, 64, None).is_err());
        let many = [
            chunk(0, 0, &[1], LogitsWanted::Last),
            chunk(1, 0, &[1], LogitsWanted::Last),
        ];
        assert!(BatchPlan::new(&many, &FakeKv, 1, 64, Some(1)).is_err());
    }
}
