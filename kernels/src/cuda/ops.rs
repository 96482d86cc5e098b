//! Typed launches of the kernels in `cu/`: one method per kernel, checking shapes that the kernels
//! assume (head dims, group sizes, grid limits) and returning typed errors.
//!
//! Every method is `unsafe`: its pointer arguments are device addresses that must address buffers
//! of the documented shapes; that is the caller's contract, and nothing here can check it.

use std::path::Path;
use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaStream, LaunchConfig};
use cudarc::nvrtc::Ptx;

use super::blas::GemmOut;
use super::compile::{CacheStatus, compile_cubin};
use super::device::GpuDevice;
use super::error::{CudaError, DriverResult, as_i32, as_u32};
use super::launch::Launch;

/// The kernel sources, in the order they are concatenated for NVRTC.
pub const SOURCES: [(&str, &str); 4] = [
    ("common.cuh", include_str!("cu/common.cuh")),
    ("elementwise.cu", include_str!("cu/elementwise.cu")),
    ("attention.cu", include_str!("cu/attention.cu")),
    ("gemv.cu", include_str!("cu/gemv.cu")),
];

/// Most rows [`Kernels::gemv`] takes (decode batches up to this use it instead of cuBLAS).
pub const GEMV_MAX_ROWS: usize = 8;

/// Largest keys per decode split and query heads per KV head the decode kernel supports.
const DECODE_MAX_SPLIT: usize = 256;
const DECODE_MAX_GROUP: usize = 8;
/// Query rows per prefill tile.
pub const PREFILL_TILE_ROWS: usize = 64;

/// The batch as the attention kernels see it: per-chunk device arrays and this layer's K/V
/// addresses (`kv[2c]`, `kv[2c + 1]` for chunk `c`).
#[derive(Debug, Clone, Copy)]
pub struct AttentionBatch {
    pub chunk_q_start: u64,
    pub chunk_len: u64,
    pub chunk_start: u64,
    pub kv: u64,
    /// Bytes from one position to the next in the KV region.
    pub token_stride: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
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

/// A GEMV's sizes: `rows` inputs of `inner` values against `out` weight rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemvShape {
    pub rows: usize,
    pub out: usize,
    pub inner: usize,
}

/// What a GEMV writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvOut {
    /// As a GEMM would (`f32`, accumulated `f32` or `bf16`).
    Gemm(GemmOut),
    /// SwiGLU of a stacked `[gate; up]` weight, bf16.
    SwiGlu,
}

/// The compiled kernels, launched on the device's stream.
pub struct Kernels {
    stream: Arc<CudaStream>,
    multiprocessors: usize,
    embed: CudaFunction,
    rms_norm: CudaFunction,
    rope_kv: CudaFunction,
    silu_mul: CudaFunction,
    argmax: CudaFunction,
    fill_bf16: CudaFunction,
    fill_f32: CudaFunction,
    prefill_64: CudaFunction,
    prefill_128: CudaFunction,
    prefill_128_occ3: CudaFunction,
    /// Use the 168-register build of the d128 prefill kernel (3 blocks per SM).
    pub prefill_occupancy3: bool,
    /// `gemv_r{1,2,4,8}_p{pair}` at `4 pair + rows bucket`.
    gemv: Vec<CudaFunction>,
    /// Blocks a GEMV should have: rows are split over up to 8 warps until it has as many (the
    /// default, one block per 32 threads an SM holds, keeps every SM streaming; 0 never splits).
    pub gemv_min_blocks: usize,
    /// Decode attention by head dim (64, 128) and largest group (1, 4, 8).
    decode: [[CudaFunction; 3]; 2],
    combine: CudaFunction,
    /// Launch kernels as programmatic dependents of the previous one (set when the device
    /// supports it, sm_90 and later; benchmarks turn it off to measure what it brings).
    pub dependent_launch: bool,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kernels")
    }
}

fn grid(x: usize, y: usize, z: usize, block: u32) -> Result<LaunchConfig, CudaError> {
    Ok(LaunchConfig {
        grid_dim: (
            as_u32(x, "grid x")?,
            as_u32(y, "grid y")?,
            as_u32(z, "grid z")?,
        ),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// `log2(e) / sqrt(head_dim)`: the kernels work in base 2.
fn scale_log2(head_dim: usize) -> f32 {
    std::f32::consts::LOG2_E / (head_dim as f32).sqrt()
}

impl Kernels {
    /// Compiles (or loads from `cache_dir`) the kernels for `device` and loads them.
    pub fn load(
        device: &GpuDevice,
        cache_dir: Option<&Path>,
    ) -> Result<(Self, CacheStatus), CudaError> {
        Self::load_with(device, cache_dir, &[])
    }

    /// [`Kernels::load`] with build-time knobs of the sources set (`#define NAME value` ahead of
    /// them, e.g. `GEMV_UNROLL`): what benchmarks use to compare variants in one process.
    pub fn load_with(
        device: &GpuDevice,
        cache_dir: Option<&Path>,
        defines: &[(&str, i64)],
    ) -> Result<(Self, CacheStatus), CudaError> {
        let source: String = defines
            .iter()
            .map(|(name, value)| format!("#define {name} {value}\n"))
            .chain(SOURCES.iter().map(|(_, text)| format!("{text}\n")))
            .collect();
        let (cubin, status) = compile_cubin(&source, &device.arch(), cache_dir)?;
        let module = device
            .context()
            .load_module(Ptx::from_binary(cubin))
            .during("cuModuleLoadData")?;
        let function = |name: &str| module.load_function(name).during("cuModuleGetFunction");
        let kernels = Self {
            stream: device.stream().clone(),
            multiprocessors: device.multiprocessors(),
            embed: function("embed_rows")?,
            rms_norm: function("rms_norm_rows")?,
            rope_kv: function("rope_kv_write")?,
            silu_mul: function("silu_mul_rows")?,
            argmax: function("argmax_rows")?,
            fill_bf16: function("fill_uniform_bf16")?,
            fill_f32: function("fill_uniform_f32")?,
            prefill_64: function("attn_prefill_d64")?,
            prefill_128: function("attn_prefill_d128")?,
            prefill_128_occ3: function("attn_prefill_d128_occ3")?,
            prefill_occupancy3: false,
            gemv: [0, 1]
                .iter()
                .flat_map(|pair| [1, 2, 4, 8].map(|rows| format!("gemv_r{rows}_p{pair}")))
                .map(|name| function(&name))
                .collect::<Result<_, _>>()?,
            gemv_min_blocks: 8 * device.multiprocessors(),
            decode: [
                [
                    function("attn_decode_d64_g1")?,
                    function("attn_decode_d64_g4")?,
                    function("attn_decode_d64_g8")?,
                ],
                [
                    function("attn_decode_d128_g1")?,
                    function("attn_decode_d128_g4")?,
                    function("attn_decode_d128_g8")?,
                ],
            ],
            combine: function("attn_decode_combine")?,
            dependent_launch: device.compute_capability().0 >= 9,
        };
        Ok((kernels, status))
    }

    pub fn multiprocessors(&self) -> usize {
        self.multiprocessors
    }

    /// Whether the attention kernels support this shape.
    pub fn supports_attention(heads: usize, kv_heads: usize, head_dim: usize) -> bool {
        matches!(head_dim, 64 | 128)
            && kv_heads > 0
            && heads.is_multiple_of(kv_heads)
            && heads / kv_heads <= DECODE_MAX_GROUP
    }

    /// Queues `launch` on the stream (as a programmatic dependent where enabled).
    ///
    /// # Safety
    /// As [`Launch::launch`].
    unsafe fn queue(
        &self,
        launch: &mut Launch<'_>,
        cfg: LaunchConfig,
        name: &'static str,
    ) -> Result<(), CudaError> {
        // SAFETY: per the contract.
        unsafe { launch.launch(&self.stream, cfg, self.dependent_launch, name) }
    }

    /// Grid-stride launches: enough blocks to fill the device, no more.
    fn stride_blocks(&self, n: usize, block: usize) -> usize {
        n.div_ceil(block).clamp(1, self.multiprocessors * 16)
    }

    /// `x[r] = table[tokens[r]]` as f32: `tokens [rows] u32`, `table [vocab, hidden] bf16`,
    /// `x [rows, hidden] f32`.
    ///
    /// # Safety
    /// Pointers address buffers of those shapes; every token is below `vocab`.
    pub unsafe fn embed(
        &self,
        tokens: u64,
        table: u64,
        x: u64,
        rows: usize,
        hidden: usize,
    ) -> Result<(), CudaError> {
        if rows == 0 {
            return Ok(());
        }
        let hidden = as_i32(hidden, "hidden")?;
        let mut b = Launch::new(&self.embed);
        b.arg(&tokens).arg(&table).arg(&x).arg(&hidden);
        // SAFETY: per the contract.
        unsafe { self.queue(&mut b, grid(rows, 1, 1, 256)?, "launch embed_rows") }?;
        Ok(())
    }

    /// RMSNorm of `rows` rows: `out[r] = norm(x[map(r)]) * weight` (`x` f32 `[.., hidden]`,
    /// `weight` f32, `out` bf16 `[rows, hidden]`; `row_map` of `rows` u32, or identity).
    ///
    /// # Safety
    /// Pointers address buffers of those shapes; mapped rows exist in `x`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rms_norm(
        &self,
        x: u64,
        weight: u64,
        out: u64,
        row_map: Option<u64>,
        rows: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        if rows == 0 {
            return Ok(());
        }
        let hidden = as_i32(hidden, "hidden")?;
        let map = row_map.unwrap_or(0);
        let mut b = Launch::new(&self.rms_norm);
        b.arg(&x)
            .arg(&weight)
            .arg(&out)
            .arg(&map)
            .arg(&hidden)
            .arg(&eps);
        // SAFETY: per the contract.
        unsafe { self.queue(&mut b, grid(rows, 1, 1, 256)?, "launch rms_norm_rows") }?;
        Ok(())
    }

    /// RoPE on Q and K of `qkv [rows, q + 2 kv] f32`; Q to `q_out [rows, q] bf16`; K and V (bf16)
    /// to `kv[2 c] / kv[2 c + 1] + pos × token_stride` for each row's chunk `c`. A row at
    /// position `u32::MAX` is padding (K/V not written). `rope`: `(cos, sin)` tables
    /// `[positions, head_dim / 2] f32`, or none (no rotation).
    ///
    /// # Safety
    /// Pointers address buffers of those shapes; every position is in the tables and ready in
    /// its chunk's KV memory.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rope_kv_write(
        &self,
        qkv: u64,
        q_out: u64,
        positions: u64,
        row_chunk: u64,
        batch: &AttentionBatch,
        rope: Option<(u64, u64)>,
        rows: usize,
    ) -> Result<(), CudaError> {
        if rows == 0 {
            return Ok(());
        }
        let stride = i64::try_from(batch.token_stride)
            .map_err(|_| CudaError::Invalid("token stride exceeds i64".into()))?;
        let (cos, sin) = rope.unwrap_or((0, 0));
        let use_rope = i32::from(rope.is_some());
        let (heads, kv_heads, head_dim) = (
            as_i32(batch.heads, "heads")?,
            as_i32(batch.kv_heads, "kv heads")?,
            as_i32(batch.head_dim, "head dim")?,
        );
        let mut b = Launch::new(&self.rope_kv);
        b.arg(&qkv)
            .arg(&q_out)
            .arg(&positions)
            .arg(&row_chunk)
            .arg(&batch.kv)
            .arg(&stride)
            .arg(&cos)
            .arg(&sin)
            .arg(&heads)
            .arg(&kv_heads)
            .arg(&head_dim)
            .arg(&use_rope);
        // A few rows (decode) spread each row over blocks; many rows fill the device as they are.
        let pairs = (batch.heads + batch.kv_heads) * batch.head_dim / 2;
        let parts = if rows >= 4 * self.multiprocessors {
            1
        } else {
            pairs.max(batch.kv_heads * batch.head_dim).div_ceil(256)
        };
        // SAFETY: per the contract.
        unsafe { self.queue(&mut b, grid(rows, parts, 1, 256)?, "launch rope_kv_write") }?;
        Ok(())
    }

    /// `out[r, j] = silu(gu[r, j]) · gu[r, ffn + j]` (`gu [rows, 2 ffn]`, `out [rows, ffn]`, bf16).
    ///
    /// # Safety
    /// Pointers address buffers of those shapes.
    pub unsafe fn silu_mul(
        &self,
        gate_up: u64,
        out: u64,
        rows: usize,
        ffn: usize,
    ) -> Result<(), CudaError> {
        if rows == 0 {
            return Ok(());
        }
        if rows > 65_535 {
            return Err(CudaError::Invalid(format!(
                "silu_mul takes at most 65535 rows per launch, not {rows}"
            )));
        }
        let cfg = grid(ffn.div_ceil(8 * 256), rows, 1, 256)?;
        let (rows, ffn) = (as_i32(rows, "rows")?, as_i32(ffn, "ffn")?);
        let mut b = Launch::new(&self.silu_mul);
        b.arg(&gate_up).arg(&out).arg(&rows).arg(&ffn);
        // SAFETY: per the contract.
        unsafe { self.queue(&mut b, cfg, "launch silu_mul_rows") }?;
        Ok(())
    }

    /// `out[r]` = first index of the largest of `logits[r, ..vocab]` (f32 in, u32 out).
    ///
    /// # Safety
    /// Pointers address buffers of those shapes.
    pub unsafe fn argmax(
        &self,
        logits: u64,
        out: u64,
        rows: usize,
        vocab: usize,
    ) -> Result<(), CudaError> {
        if rows == 0 {
            return Ok(());
        }
        let vocab = as_i32(vocab, "vocab")?;
        let mut b = Launch::new(&self.argmax);
        b.arg(&logits).arg(&out).arg(&vocab);
        // SAFETY: per the contract.
        unsafe { self.queue(&mut b, grid(rows, 1, 1, 1024)?, "launch argmax_rows") }?;
        Ok(())
    }

    /// Fills `n` bf16 (or f32, `f32 = true`) elements with uniform values in `[lo, hi)` that
    /// depend only on `(seed, index)`.
    ///
    /// # Safety
    /// `out` addresses `n` elements.
    pub unsafe fn fill_uniform(
        &self,
        out: u64,
        n: usize,
        seed: u64,
        lo: f32,
        hi: f32,
        f32: bool,
    ) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let blocks = self.stride_blocks(n, 256);
        let count = n as u64;
        let function = if f32 { &self.fill_f32 } else { &self.fill_bf16 };
        let mut b = Launch::new(function);
        b.arg(&out).arg(&count).arg(&seed).arg(&lo).arg(&hi);
        // SAFETY: per the contract.
        unsafe { self.queue(&mut b, grid(blocks, 1, 1, 256)?, "launch fill_uniform") }?;
        Ok(())
    }

    /// Whether [`Kernels::gemv`] takes this shape: at most [`GEMV_MAX_ROWS`] rows and an
    /// `inner` size that is a multiple of 8 (its 16-byte loads).
    pub fn gemv_fits(rows: usize, inner: usize) -> bool {
        rows <= GEMV_MAX_ROWS && inner.is_multiple_of(8)
    }

    /// `y = x · Wᵀ` for at most [`GEMV_MAX_ROWS`] rows (`x [rows, inner]`, `W [out, inner]` bf16,
    /// `inner` a multiple of 8; `y [rows, out]` as `kind`), streaming W at memory bandwidth.
    ///
    /// # Safety
    /// Pointers address buffers of those shapes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemv(
        &self,
        x: u64,
        w: u64,
        y: u64,
        rows: usize,
        out: usize,
        inner: usize,
        kind: GemmOut,
    ) -> Result<(), CudaError> {
        let shape = GemvShape { rows, out, inner };
        // SAFETY: per the contract.
        unsafe { self.gemv_fused(x, w, y, shape, GemvOut::Gemm(kind)) }
    }

    /// [`Kernels::gemv`], or with SwiGLU folded in ([`GemvOut::SwiGlu`]: `W [2 out, inner]`
    /// holds the gate rows, then the up rows, and `y [rows, out]` bf16 is
    /// `silu(x · W_gateᵀ) · (x · W_upᵀ)`).
    ///
    /// # Safety
    /// Pointers address buffers of those shapes.
    pub unsafe fn gemv_fused(
        &self,
        x: u64,
        w: u64,
        y: u64,
        shape: GemvShape,
        kind: GemvOut,
    ) -> Result<(), CudaError> {
        let GemvShape { rows, out, inner } = shape;
        if rows == 0 {
            return Ok(());
        }
        if !Self::gemv_fits(rows, inner) {
            return Err(CudaError::Invalid(format!(
                "gemv takes at most {GEMV_MAX_ROWS} rows and inner sizes that are multiples of 8, \
                 not {rows} x {inner}"
            )));
        }
        let bucket = match rows {
            1 => 0,
            2 => 1,
            3..=4 => 2,
            _ => 3,
        };
        let pair = usize::from(kind == GemvOut::SwiGlu);
        let row_blocks = out.div_ceil(8);
        let ksplit = [1, 2, 4, 8]
            .into_iter()
            .find(|k| row_blocks * k >= self.gemv_min_blocks)
            .unwrap_or(8);
        let mode: i32 = match kind {
            GemvOut::Gemm(GemmOut::F32 { accumulate: false }) => 0,
            GemvOut::Gemm(GemmOut::F32 { accumulate: true }) => 1,
            GemvOut::Gemm(GemmOut::Bf16) => 2,
            GemvOut::SwiGlu => 3,
        };
        let (n, o, i) = (
            as_i32(rows, "rows")?,
            as_i32(out, "out")?,
            as_i32(inner, "inner")?,
        );
        let split = as_i32(ksplit, "ksplit")?;
        let mut b = Launch::new(&self.gemv[4 * pair + bucket]);
        b.arg(&x)
            .arg(&w)
            .arg(&y)
            .arg(&n)
            .arg(&o)
            .arg(&i)
            .arg(&mode)
            .arg(&split);
        let blocks = (out * ksplit).div_ceil(8);
        // SAFETY: per the contract.
        unsafe { self.queue(&mut b, grid(blocks, 1, 1, 256)?, "launch gemv") }?;
        Ok(())
    }

    fn check_shape(batch: &AttentionBatch) -> Result<(), CudaError> {
        if !Self::supports_attention(batch.heads, batch.kv_heads, batch.head_dim) {
            return Err(CudaError::Invalid(format!(
                "attention kernels support head_dim 64 or 128 and at most {DECODE_MAX_GROUP} query \
                 heads per KV head, not {} heads / {} KV heads of {}",
                batch.heads, batch.kv_heads, batch.head_dim
            )));
        }
        if !batch.token_stride.is_multiple_of(16) {
            return Err(CudaError::Invalid(format!(
                "KV token stride {} is not a multiple of 16 bytes",
                batch.token_stride
            )));
        }
        Ok(())
    }

    /// Causal attention of prefill chunks on the tensor cores: `q`, `out` `[rows, heads,
    /// head_dim] bf16`; tiles of [`PREFILL_TILE_ROWS`] query rows listed by `tile_chunk` /
    /// `tile_row0` (`tiles` u32 each).
    ///
    /// # Safety
    /// Pointers address buffers of those shapes; each tile's chunk has its keys
    /// `0..start + len` ready in the KV region.
    pub unsafe fn attention_prefill(
        &self,
        batch: &AttentionBatch,
        q: u64,
        out: u64,
        tile_chunk: u64,
        tile_row0: u64,
        tiles: usize,
    ) -> Result<(), CudaError> {
        Self::check_shape(batch)?;
        if tiles == 0 {
            return Ok(());
        }
        let function = match (batch.head_dim, self.prefill_occupancy3) {
            (64, _) => &self.prefill_64,
            (_, false) => &self.prefill_128,
            (_, true) => &self.prefill_128_occ3,
        };
        let stride = batch.token_stride as i64;
        let (heads, kv_heads) = (as_i32(batch.heads, "heads")?, as_i32(batch.kv_heads, "kv")?);
        let scale = scale_log2(batch.head_dim);
        let mut b = Launch::new(function);
        b.arg(&q)
            .arg(&out)
            .arg(&tile_chunk)
            .arg(&tile_row0)
            .arg(&batch.chunk_q_start)
            .arg(&batch.chunk_len)
            .arg(&batch.chunk_start)
            .arg(&batch.kv)
            .arg(&stride)
            .arg(&heads)
            .arg(&kv_heads)
            .arg(&scale);
        // SAFETY: per the contract.
        unsafe {
            self.queue(
                &mut b,
                grid(tiles, batch.heads, 1, 128)?,
                "launch attn_prefill",
            )
        }?;
        Ok(())
    }

    /// Decode attention (one query row per listed chunk) with split-KV: `dec_row` / `dec_chunk`
    /// (`decodes` u32 each) name each decode's row of `q` / `out` and its chunk; `part_o` /
    /// `part_ml` are scratch of [`DecodeSplits::partial_sizes`] f32.
    ///
    /// # Safety
    /// Pointers address buffers of those shapes; each chunk's keys `0..start + len` are ready,
    /// and `start + len <= splits.split_len × splits.splits`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attention_decode(
        &self,
        batch: &AttentionBatch,
        q: u64,
        out: u64,
        dec_row: u64,
        dec_chunk: u64,
        decodes: usize,
        splits: DecodeSplits,
        part_o: u64,
        part_ml: u64,
    ) -> Result<(), CudaError> {
        Self::check_shape(batch)?;
        if splits.split_len > DECODE_MAX_SPLIT || splits.split_len == 0 || splits.splits == 0 {
            return Err(CudaError::Invalid(format!("bad decode splits {splits:?}")));
        }
        if decodes == 0 {
            return Ok(());
        }
        let by_dim = &self.decode[usize::from(batch.head_dim == 128)];
        let function = match batch.heads / batch.kv_heads {
            1 => &by_dim[0],
            2..=4 => &by_dim[1],
            _ => &by_dim[2],
        };
        let stride = batch.token_stride as i64;
        let (heads, kv_heads) = (as_i32(batch.heads, "heads")?, as_i32(batch.kv_heads, "kv")?);
        let (split_len, count) = (
            as_i32(splits.split_len, "split")?,
            as_i32(splits.splits, "splits")?,
        );
        let scale = scale_log2(batch.head_dim);
        let mut b = Launch::new(function);
        b.arg(&q)
            .arg(&dec_row)
            .arg(&dec_chunk)
            .arg(&batch.chunk_len)
            .arg(&batch.chunk_start)
            .arg(&batch.kv)
            .arg(&stride)
            .arg(&heads)
            .arg(&kv_heads)
            .arg(&split_len)
            .arg(&count)
            .arg(&scale)
            .arg(&part_o)
            .arg(&part_ml);
        let cfg = grid(decodes, batch.kv_heads, splits.splits, 128)?;
        // SAFETY: per the contract.
        unsafe { self.queue(&mut b, cfg, "launch attn_decode") }?;
        let head_dim = as_i32(batch.head_dim, "head dim")?;
        let mut c = Launch::new(&self.combine);
        c.arg(&part_o)
            .arg(&part_ml)
            .arg(&dec_row)
            .arg(&out)
            .arg(&heads)
            .arg(&head_dim)
            .arg(&count);
        let cfg = grid(decodes, batch.heads, 1, batch.head_dim as u32)?;
        // SAFETY: per the contract.
        unsafe { self.queue(&mut c, cfg, "launch attn_decode_combine") }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Compiles the real sources with the real NVRTC when the library is on this machine (it
    /// needs no GPU); CI machines without it skip loudly.
    #[test]
    fn kernel_sources_compile_with_nvrtc() {
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("SKIPPED kernel_sources_compile_with_nvrtc: libnvrtc is not installed here");
            return;
        }
        let source: String = SOURCES.iter().map(|(_, t)| format!("{t}\n")).collect();
        let (cubin, status) = compile_cubin(&source, "sm_90", None).expect("sources compile");
        assert_eq!(status, CacheStatus::Disabled);
        assert_eq!(&cubin[..4], b"\x7fELF", "a cubin is an ELF image");
        let broken = format!("{source}\nextern \"C\" __global__ void broken() {{ undefined(); }}");
        let error = compile_cubin(&broken, "sm_90", None).expect_err("broken source");
        assert!(error.to_string().contains("undefined"), "{error}");
    }
}
