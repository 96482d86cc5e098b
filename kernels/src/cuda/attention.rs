//! The batch as the kernels read it from device memory ([`DeviceBatch`]: per-row, per-chunk and
//! per-layer arrays, the KV region's addresses among them) and the launches of the kernels that
//! touch the KV region: RoPE + K/V write, prefill attention (tensor cores, causal, tiles of
//! [`PREFILL_TILE_ROWS`] query rows) and split-KV decode attention.
//!
//! The KV region (vAttention: CUDA virtual memory mapped page by page by the KV manager) is the
//! one place raw device addresses remain: [`DeviceBatch::new`] is where a caller vouches for them,
//! and for the indices the kernels read from device memory; everything after it is checked.
//!
//! Must not: know how the KV region is mapped or which sequence owns a slot.

use half::bf16;

use super::GpuDevice;
use super::error::{CudaError, as_i32, as_u32};
use super::kernels::{Decode, Kernels, grid};
use super::memory::{
    DeviceBuffer, DeviceSlice, DeviceView, DeviceViewMut, Indices, Positions, check_len,
};
use crate::cpu::{AttentionShape, RopeTable};

/// Query rows per prefill tile.
pub const PREFILL_TILE_ROWS: usize = 64;
/// Largest keys per decode split and query heads per KV head the decode kernel supports.
const DECODE_MAX_SPLIT: usize = 256;
const DECODE_MAX_GROUP: usize = 8;

/// What fixes a batch's bounds besides its arrays: the attention shape, the KV layout and the
/// model's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchShape {
    pub attention: AttentionShape,
    /// Bytes from one KV position to the next (the same for every slot and layer).
    pub token_stride: usize,
    pub layers: usize,
    /// Every token is below this.
    pub vocab: usize,
    /// Every (non-padding) position is below this (the RoPE tables' rows).
    pub positions: usize,
    /// Every chunk ends (start + length) at or before this.
    pub max_context: usize,
}

/// The device arrays of one batch (as the daemon's `BatchPlan` lays them out).
#[derive(Debug, Clone, Copy)]
pub struct BatchArrays<'a> {
    /// Per row: token id, position (`u32::MAX`: padding), chunk.
    pub tokens: DeviceSlice<'a, u32>,
    pub positions: DeviceSlice<'a, u32>,
    pub row_chunk: DeviceSlice<'a, u32>,
    /// Per chunk: first row, rows, position of its first row.
    pub chunk_q_start: DeviceSlice<'a, u32>,
    pub chunk_len: DeviceSlice<'a, u32>,
    pub chunk_start: DeviceSlice<'a, u32>,
    /// Per prefill tile: chunk and first row within the chunk.
    pub tile_chunk: DeviceSlice<'a, u32>,
    pub tile_row0: DeviceSlice<'a, u32>,
    /// Per single-token (decode) chunk: its row and chunk.
    pub dec_row: DeviceSlice<'a, u32>,
    pub dec_chunk: DeviceSlice<'a, u32>,
    /// Rows whose logits are computed, in output order.
    pub head_rows: DeviceSlice<'a, u32>,
    /// `[layer][chunk][K, V]` addresses in the KV region.
    pub kv: DeviceSlice<'a, u64>,
}

/// One batch on the device, vouched for: see [`DeviceBatch::new`].
#[derive(Debug, Clone, Copy)]
pub struct DeviceBatch<'a> {
    arrays: BatchArrays<'a>,
    shape: BatchShape,
}

/// The batch as one layer's kernels see it: its K/V addresses selected.
#[derive(Debug, Clone, Copy)]
pub struct LayerBatch<'a> {
    batch: DeviceBatch<'a>,
    kv: DeviceSlice<'a, u64>,
}

impl<'a> DeviceBatch<'a> {
    /// Checks the arrays' lengths against each other and the shape against the kernels.
    ///
    /// # Safety
    /// The arrays hold what the daemon's batch planner and KV manager guarantee (nothing here can
    /// read device memory to check it):
    /// - every `tokens[r] < shape.vocab`, every `head_rows[i] <` rows, every `row_chunk[r] <`
    ///   chunks;
    /// - `positions[r]` is `u32::MAX` (padding) or lies in `chunk_start[c] .. chunk_start[c] +
    ///   chunk_len[c]` of its chunk `c`, below `shape.positions`;
    /// - each chunk `c`: `chunk_q_start[c] + chunk_len[c] ≤` rows and `chunk_start[c] +
    ///   chunk_len[c] ≤ shape.max_context`; each tile: `tile_chunk[t] <` chunks and
    ///   `tile_row0[t] < chunk_len[tile_chunk[t]]`; each decode: `dec_chunk[i] <` chunks, that
    ///   chunk has at most one row, and `dec_row[i]` is it (`< rows`);
    /// - the KV region: for every layer `l` and chunk `c`, `kv[2 (l chunks + c)]` and the next
    ///   address are the chunk's K and V for layer `l`, where position `p < chunk_start[c] +
    ///   chunk_len[c]` holds `kv_heads × head_dim` bf16 at `p × token_stride` bytes — memory the
    ///   KV manager has mapped (`KvAccess::layer_kv`: positions below the length the engine made
    ///   ready are backed) and keeps mapped while kernels queued with this batch run, and that
    ///   no other chunk's K/V overlaps (each chunk is a distinct sequence slot).
    pub unsafe fn new(arrays: BatchArrays<'a>, shape: BatchShape) -> Result<Self, CudaError> {
        let a = &arrays;
        let (rows, chunks) = (a.positions.len(), a.chunk_len.len());
        let same = |what: &str, len: usize, want: usize| {
            if len == want {
                Ok(())
            } else {
                Err(CudaError::Invalid(format!(
                    "batch array {what} has {len} elements, not {want}"
                )))
            }
        };
        same("tokens", a.tokens.len(), rows)?;
        same("row_chunk", a.row_chunk.len(), rows)?;
        same("chunk_q_start", a.chunk_q_start.len(), chunks)?;
        same("chunk_start", a.chunk_start.len(), chunks)?;
        same("tile_row0", a.tile_row0.len(), a.tile_chunk.len())?;
        same("dec_chunk", a.dec_chunk.len(), a.dec_row.len())?;
        same("kv", a.kv.len(), shape.layers * chunks * 2)?;
        let AttentionShape {
            heads,
            kv_heads,
            head_dim,
        } = shape.attention;
        if !Kernels::supports_attention(heads, kv_heads, head_dim) {
            return Err(CudaError::Invalid(format!(
                "attention kernels support head_dim 64 or 128 and at most {DECODE_MAX_GROUP} query \
                 heads per KV head, not {heads} heads / {kv_heads} KV heads of {head_dim}"
            )));
        }
        if !shape.token_stride.is_multiple_of(16) || shape.token_stride < kv_heads * head_dim * 2 {
            return Err(CudaError::Invalid(format!(
                "KV token stride {} is not a multiple of 16 bytes holding {kv_heads} x {head_dim} \
                 bf16",
                shape.token_stride
            )));
        }
        Ok(Self { arrays, shape })
    }

    pub fn shape(&self) -> &BatchShape {
        &self.shape
    }

    pub fn rows(&self) -> usize {
        self.arrays.positions.len()
    }

    pub fn decodes(&self) -> usize {
        self.arrays.dec_row.len()
    }

    /// The token of each row (each below the vocabulary size).
    pub fn tokens(&self) -> Indices<'a> {
        Indices {
            values: self.arrays.tokens,
            bound: self.shape.vocab,
        }
    }

    /// Each row's position (below the batch's positions, or `u32::MAX` for padding).
    pub fn positions(&self) -> Positions<'a> {
        Positions {
            values: self.arrays.positions,
            bound: self.shape.positions,
        }
    }

    /// The rows whose logits are computed (each below the row count).
    pub fn head_rows(&self) -> Indices<'a> {
        Indices {
            values: self.arrays.head_rows,
            bound: self.rows(),
        }
    }

    /// `[layer][chunk][K, V]` addresses in the KV region.
    pub(crate) fn kv(&self) -> DeviceSlice<'a, u64> {
        self.arrays.kv
    }

    /// Layer `layer`'s view of the batch.
    pub fn layer(&self, layer: usize) -> Result<LayerBatch<'a>, CudaError> {
        let per_layer = 2 * self.arrays.chunk_len.len();
        if layer >= self.shape.layers {
            return Err(CudaError::Invalid(format!(
                "layer {layer} of a batch planned for {}",
                self.shape.layers
            )));
        }
        Ok(LayerBatch {
            batch: *self,
            kv: self
                .arrays
                .kv
                .slice(layer * per_layer..(layer + 1) * per_layer)?,
        })
    }
}

/// `(cos, sin)` tables `[positions, head_dim / 2]` f32 on the device.
#[derive(Debug)]
pub struct RopeTables {
    cos: DeviceBuffer<f32>,
    sin: DeviceBuffer<f32>,
    half: usize,
}

impl RopeTables {
    /// The CPU's table as device arrays: rotating `(1, 0)` pairs yields exactly `(cos, sin)`, so
    /// both backends rotate by the same values.
    pub fn upload(
        device: &GpuDevice,
        table: &RopeTable,
        head_dim: usize,
    ) -> Result<Self, CudaError> {
        let (half, positions) = (head_dim / 2, table.max_positions());
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        let mut unit = vec![0.0f32; head_dim];
        for pos in 0..positions {
            unit[..half].fill(1.0);
            unit[half..].fill(0.0);
            table.apply(&mut unit, pos);
            cos.extend_from_slice(&unit[..half]);
            sin.extend_from_slice(&unit[half..]);
        }
        Ok(Self {
            cos: device.upload_new(&cos)?,
            sin: device.upload_new(&sin)?,
            half,
        })
    }

    pub(crate) fn cos(&self) -> DeviceSlice<'_, f32> {
        self.cos.view()
    }

    pub(crate) fn sin(&self) -> DeviceSlice<'_, f32> {
        self.sin.view()
    }

    /// Positions the tables cover.
    pub fn positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }
}

/// How decode attention splits each sequence's keys over blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeSplits {
    pub split_len: usize,
    pub splits: usize,
}

impl DecodeSplits {
    /// Enough splits that `decodes × kv_heads × splits` blocks fill the device about twice, for
    /// contexts up to `max_ctx`.
    pub fn plan(decodes: usize, kv_heads: usize, max_ctx: usize, multiprocessors: usize) -> Self {
        let blocks = (decodes * kv_heads).max(1);
        let wanted = (2 * multiprocessors).div_ceil(blocks).max(1);
        let split_len = max_ctx
            .max(1)
            .div_ceil(wanted)
            .next_multiple_of(32)
            .clamp(32, DECODE_MAX_SPLIT);
        Self {
            split_len,
            splits: max_ctx.max(1).div_ceil(split_len),
        }
    }

    /// f32 elements of the partial outputs and of the (max, sum) pairs for `decodes` rows.
    pub fn partial_sizes(&self, decodes: usize, heads: usize, head_dim: usize) -> (usize, usize) {
        let parts = decodes * heads * self.splits;
        (parts * head_dim, parts * 2)
    }
}

/// `log2(e) / sqrt(head_dim)`: the kernels work in base 2.
fn scale_log2(head_dim: usize) -> f32 {
    std::f32::consts::LOG2_E / (head_dim as f32).sqrt()
}

impl LayerBatch<'_> {
    fn token_stride(&self) -> Result<i64, CudaError> {
        i64::try_from(self.batch.shape.token_stride)
            .map_err(|_| CudaError::Invalid("token stride exceeds i64".into()))
    }

    /// Fails unless `q` and `out` hold a `[rows, heads × head_dim]` row each.
    fn check_rows(&self, q: usize, out: usize) -> Result<(), CudaError> {
        let AttentionShape {
            heads, head_dim, ..
        } = self.batch.shape.attention;
        let q_dim = heads * head_dim;
        check_len("attention queries", q, self.batch.rows() * q_dim)?;
        check_len("attention output", out, self.batch.rows() * q_dim)
    }
}

impl Kernels {
    /// Whether the attention kernels support this shape.
    pub fn supports_attention(heads: usize, kv_heads: usize, head_dim: usize) -> bool {
        matches!(head_dim, 64 | 128)
            && kv_heads > 0
            && heads.is_multiple_of(kv_heads)
            && heads / kv_heads <= DECODE_MAX_GROUP
    }

    /// RoPE on Q and K of `qkv [rows, q + 2 kv] f32` plus `bias [q + 2 kv]` (added to every row
    /// before the rotation: Qwen2's Q/K/V biases); Q to `q_out [rows, q] bf16`; K and V (bf16)
    /// into the KV region at each row's position (padding rows: not written). `rope`: none for
    /// no rotation.
    pub fn rope_kv_write(
        &self,
        batch: &LayerBatch<'_>,
        qkv: &impl DeviceView<f32>,
        bias: Option<&DeviceBuffer<f32>>,
        q_out: &mut impl DeviceViewMut<bf16>,
        rope: Option<&RopeTables>,
    ) -> Result<(), CudaError> {
        let (shape, rows) = (batch.batch.shape, batch.batch.rows());
        let AttentionShape {
            heads,
            kv_heads,
            head_dim,
        } = shape.attention;
        let (qkv, q_out) = (qkv.view(), q_out.view_mut());
        check_len(
            "RoPE input",
            qkv.len(),
            rows * (heads + 2 * kv_heads) * head_dim,
        )?;
        check_len("RoPE output", q_out.len(), rows * heads * head_dim)?;
        if let Some(bias) = bias {
            check_len("QKV bias", bias.len(), (heads + 2 * kv_heads) * head_dim)?;
        }
        if let Some(rope) = rope {
            // Padding rows read position 0's row.
            check_len("RoPE tables", rope.positions(), shape.positions.max(1))?;
            if rope.half != head_dim / 2 {
                return Err(CudaError::Invalid(format!(
                    "RoPE tables of {} pairs for head_dim {head_dim}",
                    rope.half
                )));
            }
        }
        if rows == 0 {
            return Ok(());
        }
        // A few rows (decode) spread each row over blocks; many rows fill the device as they are.
        let pairs = (heads + kv_heads) * head_dim / 2;
        let parts = if rows >= 4 * self.multiprocessors {
            1
        } else {
            pairs.max(kv_heads * head_dim).div_ceil(256)
        };
        let a = &batch.batch.arrays;
        let args = (
            qkv,
            bias.map(|b| b.view()),
            q_out,
            a.positions,
            a.row_chunk,
            batch.kv,
            batch.token_stride()?,
            rope.map(|r| r.cos.view()),
            rope.map(|r| r.sin.view()),
            as_i32(heads, "heads")?,
            as_i32(kv_heads, "kv heads")?,
            as_i32(head_dim, "head dim")?,
            i32::from(rope.is_some()),
        );
        // SAFETY: block `(r, _)` reads row `r < rows` of `qkv` and the bias vector and writes row
        // `r` of `q_out` (extents checked above), reads the tables' row of its position (`< shape.positions`,
        // the tables' rows, checked above) and writes K/V at that position of its chunk: inside
        // the mapped KV region by `DeviceBatch::new`'s contract.
        unsafe { self.queue(&self.rope_kv, grid(rows, parts, 1, 256)?, args) }
    }

    /// Causal attention of the batch's prefill tiles on the tensor cores: `q`, `out` `[rows,
    /// heads, head_dim] bf16`.
    pub fn attention_prefill(
        &self,
        batch: &LayerBatch<'_>,
        q: &impl DeviceView<bf16>,
        out: &mut impl DeviceViewMut<bf16>,
    ) -> Result<(), CudaError> {
        let (q, out) = (q.view(), out.view_mut());
        batch.check_rows(q.len(), out.len())?;
        let a = &batch.batch.arrays;
        let tiles = a.tile_chunk.len();
        if tiles == 0 {
            return Ok(());
        }
        let AttentionShape {
            heads,
            kv_heads,
            head_dim,
        } = batch.batch.shape.attention;
        let kernel = match (head_dim, self.prefill_occupancy3) {
            (64, _) => &self.prefill_64,
            (_, false) => &self.prefill_128,
            (_, true) => &self.prefill_128_occ3,
        };
        let args = (
            q,
            out,
            a.tile_chunk,
            a.tile_row0,
            a.chunk_q_start,
            a.chunk_len,
            a.chunk_start,
            batch.kv,
            batch.token_stride()?,
            as_i32(heads, "heads")?,
            as_i32(kv_heads, "kv heads")?,
            scale_log2(head_dim),
        );
        // SAFETY: a tile reads and writes rows of its chunk (`< rows`, the extents of `q` and
        // `out` checked above) and reads keys `0..start + len` of its chunk from the KV region;
        // that those are in range and mapped is `DeviceBatch::new`'s contract.
        unsafe { self.queue(kernel, grid(tiles, heads, 1, 128)?, args) }
    }

    /// Decode attention (one query row per decode chunk) with split-KV: `part_o` / `part_ml`
    /// are scratch of [`DecodeSplits::partial_sizes`] f32, `splits` must cover the batch's
    /// `max_context`.
    pub fn attention_decode(
        &self,
        batch: &LayerBatch<'_>,
        q: &impl DeviceView<bf16>,
        out: &mut impl DeviceViewMut<bf16>,
        splits: DecodeSplits,
        part_o: &mut impl DeviceViewMut<f32>,
        part_ml: &mut impl DeviceViewMut<f32>,
    ) -> Result<(), CudaError> {
        let (q, mut out) = (q.view(), out.view_mut());
        let (mut part_o, mut part_ml) = (part_o.view_mut(), part_ml.view_mut());
        batch.check_rows(q.len(), out.len())?;
        let shape = batch.batch.shape;
        let AttentionShape {
            heads,
            kv_heads,
            head_dim,
        } = shape.attention;
        let DecodeSplits {
            split_len,
            splits: count,
        } = splits;
        let covered = split_len * count;
        if split_len > DECODE_MAX_SPLIT || covered == 0 || covered < shape.max_context {
            return Err(CudaError::Invalid(format!(
                "decode splits {splits:?} do not cover a context of {}",
                shape.max_context
            )));
        }
        let decodes = batch.batch.decodes();
        let (o_len, ml_len) = splits.partial_sizes(decodes, heads, head_dim);
        check_len("decode partial outputs", part_o.len(), o_len)?;
        check_len("decode partial (max, sum)", part_ml.len(), ml_len)?;
        if decodes == 0 {
            return Ok(());
        }
        let a = &batch.batch.arrays;
        let (heads_i, kv_heads_i) = (as_i32(heads, "heads")?, as_i32(kv_heads, "kv heads")?);
        let count_i = as_i32(count, "splits")?;
        let args = (
            q,
            a.dec_row,
            a.dec_chunk,
            a.chunk_len,
            a.chunk_start,
            batch.kv,
            batch.token_stride()?,
            heads_i,
            kv_heads_i,
            as_i32(split_len, "split")?,
            count_i,
            scale_log2(head_dim),
            part_o.view_mut(),
            part_ml.view_mut(),
        );
        let cfg = grid(decodes, kv_heads, count, 128)?;
        // SAFETY: block `(i, g, s)` reads row `dec_row[i] < rows` of `q` (extent checked above),
        // keys of split `s` below its chunk's `start + len` (in range and mapped by
        // `DeviceBatch::new`'s contract; `splits` cover `max_context`, checked above) and writes
        // partial `(i, head, s)` of `partial_sizes` (checked above).
        unsafe { self.queue(self.decode_kernel(heads / kv_heads, head_dim), cfg, args) }?;
        let args = (
            part_o.view(),
            part_ml.view(),
            a.dec_row,
            out.view_mut(),
            heads_i,
            as_i32(head_dim, "head dim")?,
            count_i,
        );
        let cfg = grid(decodes, heads, 1, as_u32(head_dim, "head dim")?)?;
        // SAFETY: block `(i, head)` reads the `splits` partials of `(i, head)` (the extents
        // checked above) and writes `head_dim` values of row `dec_row[i] < rows` of `out`.
        unsafe { self.queue(&self.combine, cfg, args) }
    }

    /// The decode build for `group` query heads per KV head and `head_dim`.
    fn decode_kernel(&self, group: usize, head_dim: usize) -> &Decode {
        let by_dim = &self.decode[usize::from(head_dim == 128)];
        match group {
            1 => &by_dim[0],
            2..=4 => &by_dim[1],
            _ => &by_dim[2],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::memory::fake_views;

    fn arrays<'a>(rows: usize, chunks: usize, layers: usize) -> BatchArrays<'a> {
        let u32s = |n| fake_views::<u32>(0x1000, n).0;
        BatchArrays {
            tokens: u32s(rows),
            positions: u32s(rows),
            row_chunk: u32s(rows),
            chunk_q_start: u32s(chunks),
            chunk_len: u32s(chunks),
            chunk_start: u32s(chunks),
            tile_chunk: u32s(1),
            tile_row0: u32s(1),
            dec_row: u32s(0),
            dec_chunk: u32s(0),
            head_rows: u32s(1),
            kv: fake_views::<u64>(0x2000, layers * chunks * 2).0,
        }
    }

    const SHAPE: BatchShape = BatchShape {
        attention: AttentionShape {
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
        },
        token_stride: 256,
        layers: 3,
        vocab: 100,
        positions: 512,
        max_context: 512,
    };

    fn batch<'a>(arrays: BatchArrays<'a>, shape: BatchShape) -> Result<DeviceBatch<'a>, CudaError> {
        // SAFETY: the test only inspects the batch; nothing launches with it.
        unsafe { DeviceBatch::new(arrays, shape) }
    }

    #[test]
    fn a_batch_checks_its_array_lengths_shape_and_layers() {
        let planned = batch(arrays(5, 2, 3), SHAPE).expect("consistent");
        let bounds = (planned.tokens().bound(), planned.head_rows().bound());
        assert_eq!((planned.rows(), bounds), (5, (100, 5)));
        let layer = planned.layer(2).expect("layer 2 of 3");
        assert_eq!(layer.kv.len(), 4);
        assert!(planned.layer(3).is_err());
        let mut short_kv = arrays(5, 2, 3);
        short_kv.kv = fake_views::<u64>(0x2000, 11).0;
        assert!(batch(short_kv, SHAPE).is_err());
        let narrow = BatchShape {
            token_stride: 240,
            ..SHAPE
        };
        assert!(batch(arrays(5, 2, 3), narrow).is_err());
        let odd = BatchShape {
            attention: AttentionShape {
                head_dim: 96,
                ..SHAPE.attention
            },
            ..SHAPE
        };
        assert!(batch(arrays(5, 2, 3), odd).is_err());
    }

    #[test]
    fn decode_splits_cover_the_context_and_respect_limits() {
        for (decodes, kv_heads, ctx) in [(1, 32, 4096), (256, 8, 4096), (3, 3, 1), (1, 1, 100_000)]
        {
            let s = DecodeSplits::plan(decodes, kv_heads, ctx, 132);
            assert!(s.split_len * s.splits >= ctx, "{s:?} for {ctx}");
            assert!((32..=DECODE_MAX_SPLIT).contains(&s.split_len), "{s:?}");
            assert!(s.split_len.is_multiple_of(32));
        }
        assert_eq!(DecodeSplits::plan(1, 32, 4096, 132).split_len, 256);
        assert_eq!(DecodeSplits::plan(1, 32, 64, 132).splits, 2);
    }
}
