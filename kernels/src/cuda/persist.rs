//! The persistent decode kernel (`cu/persist.cu`): every layer of one sequence's decode step in
//! one cooperative launch. [`PersistentProgram`] holds what the kernel reads besides the batch:
//! the layers' weight addresses (taken from typed, length-checked views), the model's shape, the
//! split of the context over blocks and the grid barrier's counter, whose arrivals it counts so
//! that each launch knows where its barriers release. [`Kernels::decode_persistent`] checks the
//! batch and buffers against the program and launches.
//!
//! Must not: run anything but the layers (the embedding, final norm and head stay the per-op
//! kernels) or batches other than one decode row.

use cudarc::driver::LaunchConfig;
use half::bf16;

use super::attention::{DeviceBatch, RopeTables};
use super::device::GpuDevice;
use super::error::{CudaError, as_u32};
use super::kernels::Kernels;
use super::memory::{DeviceBuffer, DeviceSlice, DeviceViewMut, check_len};

/// Threads of a block (`PD_THREADS`).
const THREADS: u32 = 256;
/// Keys of one (KV head, split) the kernel holds in shared memory (`PD_MAX_SPLIT_KEYS`).
const MAX_SPLIT_KEYS: usize = 512;
/// Dynamic shared memory a block may use without opting in to more (48 KiB less the block
/// reductions' static arrays).
const MAX_SHARED: usize = 47 << 10;
/// Grid barriers of one layer (one after each stage, A to E; none after the last layer's E).
const BARRIERS_PER_LAYER: u64 = 5;

/// The model shape the kernel runs: Llama-family blocks (RMSNorm, rotary or no positions in the
/// blocks, SwiGLU), bf16 weights without biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistentShape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub layers: usize,
    /// Positions a sequence can reach (the context the splits must cover).
    pub max_positions: usize,
}

impl PersistentShape {
    fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }

    /// Why the kernel cannot run this shape, if it cannot.
    pub fn unsupported(&self) -> Option<String> {
        let vectors = [self.hidden, self.q_dim(), self.ffn];
        if !Kernels::supports_attention(self.heads, self.kv_heads, self.head_dim) {
            Some(format!(
                "head_dim {} with {} heads over {} KV heads",
                self.head_dim, self.heads, self.kv_heads
            ))
        } else if vectors.iter().any(|n| !n.is_multiple_of(8)) {
            Some(format!("widths {vectors:?} are not multiples of 8"))
        } else if self.shared_bytes() > MAX_SHARED {
            Some(format!(
                "{} bytes of shared memory per block (at most {MAX_SHARED})",
                self.shared_bytes()
            ))
        } else if self.layers == 0 {
            Some("no layers".into())
        } else {
            None
        }
    }

    /// Dynamic shared memory of a block: the largest stage input vector (bf16), or the
    /// attention stage's queries, scores and statistics (f32).
    fn shared_bytes(&self) -> usize {
        let vector = 2 * self.hidden.max(self.q_dim()).max(self.ffn);
        let group = self.group();
        let attention = 4 * (group * self.head_dim + group * MAX_SPLIT_KEYS + 2 * group);
        vector.max(attention).next_multiple_of(16)
    }
}

/// Stages of a layer (`PD_STAGES`): A QKV, B attention, C O, D gate/up, E down.
const STAGES: usize = 5;

/// One stage's time in a launch, averaged over the layers (see
/// [`PersistentProgram::stage_times`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTime {
    pub mean_work_us: f64,
    pub max_work_us: f64,
    pub mean_wait_us: f64,
}

/// One layer's weights, as the per-op path holds them.
#[derive(Debug, Clone, Copy)]
pub struct PersistentLayer<'a> {
    pub attn_norm: DeviceSlice<'a, f32>,
    /// `[q + 2 kv, hidden]`: Q rows, K rows, V rows.
    pub qkv: DeviceSlice<'a, bf16>,
    /// `[hidden, q]`.
    pub o: DeviceSlice<'a, bf16>,
    pub mlp_norm: DeviceSlice<'a, f32>,
    /// `[2 ffn, hidden]`: gate rows, then up rows.
    pub gate_up: DeviceSlice<'a, bf16>,
    /// `[hidden, ffn]`.
    pub down: DeviceSlice<'a, bf16>,
}

/// What the persistent kernel reads besides the batch; see the module doc.
pub struct PersistentProgram {
    shape: PersistentShape,
    /// Six addresses per layer (`persist.cu`'s `table`).
    table: DeviceBuffer<u64>,
    /// `PdDims`: hidden, heads, kv_heads, head_dim, ffn, layers, K/V addresses per layer (2:
    /// one sequence), splits.
    dims: DeviceBuffer<u32>,
    counter: DeviceBuffer<u64>,
    /// Arrivals at the counter so far: where the next launch's barriers start.
    arrivals: u64,
    part_o: DeviceBuffer<f32>,
    part_ml: DeviceBuffer<f32>,
    splits: usize,
    grid: usize,
    /// `[layers][STAGES][blocks][work ns, wait ns]` of the last launch, when asked for.
    timers: Option<DeviceBuffer<u64>>,
}

impl std::fmt::Debug for PersistentProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PersistentProgram({:?}, {} blocks, {} splits)",
            self.shape, self.grid, self.splits
        )
    }
}

impl PersistentProgram {
    /// The program of `layers` (one per layer of `shape`, each checked against it) on one
    /// block per SM of `device`.
    ///
    /// # Safety
    /// The buffers the `layers` view stay allocated, unmoved and unwritten for as long as the
    /// program is used: it keeps their addresses, not borrows (the model that owns both never
    /// replaces a block's matrices while it holds the program).
    pub unsafe fn new(
        device: &GpuDevice,
        shape: PersistentShape,
        layers: &[PersistentLayer<'_>],
    ) -> Result<Self, CudaError> {
        if let Some(why) = shape.unsupported() {
            return Err(CudaError::Invalid(format!(
                "the persistent decode kernel does not run this model: {why}"
            )));
        }
        if layers.len() != shape.layers {
            return Err(CudaError::Invalid(format!(
                "{} layers given for a shape of {}",
                layers.len(),
                shape.layers
            )));
        }
        let (h, q, kv, f) = (shape.hidden, shape.q_dim(), shape.kv_dim(), shape.ffn);
        let mut table = Vec::with_capacity(6 * layers.len());
        for l in layers {
            check_len("attention norm", l.attn_norm.len(), h)?;
            check_len("QKV weight", l.qkv.len(), (q + 2 * kv) * h)?;
            check_len("O weight", l.o.len(), h * q)?;
            check_len("MLP norm", l.mlp_norm.len(), h)?;
            check_len("gate/up weight", l.gate_up.len(), 2 * f * h)?;
            check_len("down weight", l.down.len(), h * f)?;
            table.extend([
                l.attn_norm.address(),
                l.qkv.address(),
                l.o.address(),
                l.mlp_norm.address(),
                l.gate_up.address(),
                l.down.address(),
            ]);
        }
        let grid = device.multiprocessors();
        // Enough (KV head, split) pieces for every block, and no split longer than the kernel
        // holds.
        let splits = grid
            .div_ceil(shape.kv_heads)
            .max(shape.max_positions.div_ceil(MAX_SPLIT_KEYS))
            .max(1);
        let dims = [
            shape.hidden,
            shape.heads,
            shape.kv_heads,
            shape.head_dim,
            shape.ffn,
            shape.layers,
            2,
            splits,
        ]
        .map(|v| as_u32(v, "persistent decode dimension"))
        .into_iter()
        .collect::<Result<Vec<u32>, _>>()?;
        let mut counter = device.alloc(1)?;
        device.fill_bytes(&mut counter, 0)?;
        Ok(Self {
            table: device.upload_new(&table)?,
            dims: device.upload_new(&dims)?,
            counter,
            arrivals: 0,
            part_o: device.alloc(shape.heads * splits * shape.head_dim)?,
            part_ml: device.alloc(shape.heads * splits * 2)?,
            splits,
            grid,
            shape,
            timers: None,
        })
    }

    /// Makes every later launch record each block's work and wait per stage (see
    /// [`PersistentProgram::stage_times`]).
    pub fn enable_timers(&mut self, device: &GpuDevice) -> Result<(), CudaError> {
        let n = self.shape.layers * STAGES * self.grid * 2;
        self.timers = Some(device.alloc(n)?);
        Ok(())
    }

    /// The last launch's time per stage (A to E) in µs, averaged over the layers: the blocks'
    /// mean and longest work, and their mean wait at the barrier after it. `None` without
    /// [`PersistentProgram::enable_timers`].
    pub fn stage_times(&self, device: &GpuDevice) -> Result<Option<Vec<StageTime>>, CudaError> {
        let Some(timers) = &self.timers else {
            return Ok(None);
        };
        let mut ns = vec![0u64; timers.len()];
        device.download(timers, &mut ns)?;
        let (layers, grid) = (self.shape.layers, self.grid);
        let times = (0..STAGES)
            .map(|stage| {
                let mut t = StageTime::default();
                for layer in 0..layers {
                    let at = |block: usize, i: usize| {
                        ns[2 * ((layer * STAGES + stage) * grid + block) + i] as f64 / 1e3
                    };
                    let work: Vec<f64> = (0..grid).map(|b| at(b, 0)).collect();
                    t.mean_work_us += work.iter().sum::<f64>() / grid as f64;
                    t.max_work_us += work.iter().copied().fold(0.0, f64::max);
                    t.mean_wait_us += (0..grid).map(|b| at(b, 1)).sum::<f64>() / grid as f64;
                }
                let n = layers as f64;
                StageTime {
                    mean_work_us: t.mean_work_us / n,
                    max_work_us: t.max_work_us / n,
                    mean_wait_us: t.mean_wait_us / n,
                }
            })
            .collect();
        Ok(Some(times))
    }

    pub fn shape(&self) -> &PersistentShape {
        &self.shape
    }

    /// Blocks of a launch (one per SM) and splits of each KV head's context.
    pub fn grid_and_splits(&self) -> (usize, usize) {
        (self.grid, self.splits)
    }
}

impl Kernels {
    /// Every layer of the one decode row of `batch` in one launch: `x` (the residual, `hidden`
    /// f32, the embedding in) gets the layers' sum; `q` (`q_dim` bf16) and `act` (`ffn` bf16)
    /// are the kernel's work space. `rope`: the rotation tables (none without RoPE).
    #[allow(clippy::too_many_arguments)]
    pub fn decode_persistent(
        &self,
        program: &mut PersistentProgram,
        batch: &DeviceBatch<'_>,
        rope: Option<&RopeTables>,
        eps: f32,
        x: &mut impl DeviceViewMut<f32>,
        q: &mut impl DeviceViewMut<bf16>,
        act: &mut impl DeviceViewMut<bf16>,
    ) -> Result<(), CudaError> {
        let s = program.shape;
        let b = batch.shape();
        let kv = batch.kv();
        if batch.rows() != 1 || batch.decodes() != 1 || kv.len() != 2 * s.layers {
            return Err(CudaError::Invalid(format!(
                "the persistent decode kernel runs one decode row of one sequence, not {} rows \
                 ({} decodes, {} K/V addresses)",
                batch.rows(),
                batch.decodes(),
                kv.len()
            )));
        }
        let a = b.attention;
        if (a.heads, a.kv_heads, a.head_dim, b.layers)
            != (s.heads, s.kv_heads, s.head_dim, s.layers)
        {
            return Err(CudaError::Invalid(format!(
                "a batch of {a:?} x {} layers for a program of {s:?}",
                b.layers
            )));
        }
        if b.positions > s.max_positions {
            return Err(CudaError::Invalid(format!(
                "a batch reaching position {} past the program's {}",
                b.positions, s.max_positions
            )));
        }
        if let Some(rope) = rope
            && rope.positions() < b.positions
        {
            return Err(CudaError::Invalid(format!(
                "RoPE tables of {} positions for a batch reaching {}",
                rope.positions(),
                b.positions
            )));
        }
        let (x, q, act) = (x.view_mut(), q.view_mut(), act.view_mut());
        check_len("residual", x.len(), s.hidden)?;
        check_len("query buffer", q.len(), s.q_dim())?;
        check_len("activation buffer", act.len(), s.ffn)?;
        let token_stride = i64::try_from(b.token_stride)
            .map_err(|_| CudaError::Invalid("KV token stride overflows i64".into()))?;
        let cfg = LaunchConfig {
            grid_dim: (as_u32(program.grid, "grid")?, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: as_u32(s.shared_bytes(), "shared memory")?,
        };
        let base = program.arrivals;
        let barriers = BARRIERS_PER_LAYER * s.layers as u64 - 1;
        let args = (
            program.table.view(),
            kv,
            batch.positions().values,
            program.dims.view(),
            x,
            q,
            program.part_o.view_mut(),
            program.part_ml.view_mut(),
            act,
            program.counter.view_mut(),
            rope.map(RopeTables::cos),
            rope.map(RopeTables::sin),
            token_stride,
            eps,
            std::f32::consts::LOG2_E / (s.head_dim as f32).sqrt(),
            base,
            program.timers.as_mut().map(DeviceBuffer::view_mut),
        );
        // SAFETY: the grid is one block per SM and the launch is cooperative (all resident or
        // refused). The kernel reads the program's table (six matrices per layer whose lengths
        // `PersistentProgram::new` checked against the shape, kept alive by its contract) and
        // the batch's K/V addresses, position and the rotation tables (a `DeviceBatch`, vouched
        // for by its constructor: position `pos` and every key below it are mapped; the tables
        // cover its positions, checked above); it writes `hidden` of `x`, `q_dim` of `q`, `ffn`
        // of `act` (checked above), `heads × splits × head_dim` and `× 2` partials (allocated
        // so), the counter, the timers (`layers × STAGES × blocks × 2`, allocated so) and K
        // and V of the row's position (inside the batch's KV rows).
        unsafe { self.queue_cooperative(&self.decode_persistent, cfg, args)? };
        program.arrivals = base + barriers * program.grid as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama(hidden: usize, heads: usize, kv_heads: usize, ffn: usize) -> PersistentShape {
        PersistentShape {
            hidden,
            heads,
            kv_heads,
            head_dim: hidden / heads,
            ffn,
            layers: 32,
            max_positions: 4096,
        }
    }

    #[test]
    fn the_served_llama_shapes_fit_and_others_say_why_not() {
        for shape in [
            llama(4096, 32, 32, 11008),
            llama(4096, 32, 8, 14336),
            llama(576, 9, 3, 1536),
        ] {
            assert_eq!(shape.unsupported(), None, "{shape:?}");
            assert!(shape.shared_bytes() <= MAX_SHARED);
        }
        // Llama-3-8B: the 14,336-wide activation is the largest stage input (28 KiB).
        assert_eq!(llama(4096, 32, 8, 14336).shared_bytes(), 2 * 14336);
        let odd = llama(4096, 32, 32, 11001);
        assert!(
            odd.unsupported()
                .is_some_and(|why| why.contains("multiples of 8"))
        );
        let wide = llama(4096, 32, 32, 40960);
        assert!(
            wide.unsupported()
                .is_some_and(|why| why.contains("shared memory"))
        );
        let heads = PersistentShape {
            head_dim: 96,
            ..llama(4096, 32, 32, 11008)
        };
        assert!(
            heads
                .unsupported()
                .is_some_and(|why| why.contains("head_dim 96"))
        );
    }
}
