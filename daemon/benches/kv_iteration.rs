//! Is mapping off the critical path? Iteration time while sequences grow across page boundaries
//! (pages mapped on demand by the mapper thread) against the steady state (every page mapped
//! before timing), with the same compute and the same KV calls in both.
//!
//! One iteration does what the engine does: `wait_ready` for this iteration's tokens, announce
//! the next iteration's tokens with `reserve` (decode growth, or the next prefill chunk), then
//! compute. Rounds alternate steady / growth on fresh regions; iterations are pooled.
//!
//! Computes: "KV traffic only" writes the new tokens' K/V and reads every live K/V byte (decode
//! attention's memory traffic, nothing else: the shortest iteration, the hardest case to hide
//! mapping in). On the GPU, "Llama-3-8B roofline" adds what a real iteration of that model also
//! costs: reading 16 GB of weights, and the batch's matmul FLOPs (2 × 8.03e9 × tokens) at
//! 788 TFLOP/s, modelled by a timed kernel.
//!
//! `cargo bench -p fused-daemon --bench kv_iteration` (CPU, SmolLM2-135M shape, f32); built with
//! `--features cuda` and run on a GPU (`e2e/gpu/kv_test.sh`, flag `--gpu-only`) it measures the
//! CUDA backend with a Llama-3-8B shape in bf16. Prints a table last.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fused_daemon::kv::{Geometry, KvBudget, KvConfig, KvLayout, KvManager};
use fused_daemon::kv::{KvAccess, SlotId};

/// What one iteration computes over the batch, after the KV is ready.
trait Compute {
    /// A label for the table.
    fn label(&self) -> &'static str;
    /// `lens[i]` tokens of `slots[i]` are live; the last `growth` of each are new this iteration.
    fn step(
        &mut self,
        manager: &KvManager,
        slots: &[SlotId],
        lens: &[usize],
        growth: usize,
    ) -> Result<()>;
}

/// A workload: sequences start at `start` tokens and grow by `growth` per iteration.
struct Scenario {
    name: &'static str,
    start: Vec<usize>,
    growth: usize,
    iterations: usize,
}

impl Scenario {
    /// Tokens sequence `index` is reserved for by the end (one announced step past the last).
    fn final_len(&self, index: usize) -> usize {
        self.start[index] + self.growth * (self.iterations + 1)
    }
}

struct RunResult {
    iteration_times: Vec<Duration>,
    stalls: u64,
    pages_mapped: u64,
}

/// One timed run on a fresh region: `premapped` maps every page the run will touch first.
fn run(
    make: &dyn Fn() -> Result<KvManager>,
    compute: &mut dyn Compute,
    scenario: &Scenario,
    premapped: bool,
) -> Result<RunResult> {
    let mut manager = make()?;
    let max = manager.geometry().max_context_len;
    let mut slots = Vec::new();
    for (index, &start) in scenario.start.iter().enumerate() {
        ensure!(
            scenario.final_len(index) <= max,
            "scenario outgrows the context"
        );
        let slot = manager.admit(start)?;
        let announced = if premapped {
            scenario.final_len(index)
        } else {
            start + scenario.growth
        };
        manager.reserve(slot, announced)?;
        slots.push(slot);
    }
    manager.sync()?;
    let mut lens = scenario.start.clone();
    let before = manager.stats();
    let mut iteration_times = Vec::with_capacity(scenario.iterations);
    for _ in 0..scenario.iterations {
        let started = Instant::now();
        for (slot, len) in slots.iter().zip(&mut lens) {
            *len += scenario.growth;
            manager.wait_ready(*slot, *len)?;
        }
        for (&slot, &len) in slots.iter().zip(&lens) {
            manager.reserve(slot, len + scenario.growth)?;
        }
        compute.step(&manager, &slots, &lens, scenario.growth)?;
        iteration_times.push(started.elapsed());
    }
    let after = manager.stats();
    manager.shutdown()?;
    Ok(RunResult {
        iteration_times,
        stalls: after.map_stalls - before.map_stalls,
        pages_mapped: after.pages_mapped_total - before.pages_mapped_total,
    })
}

struct Row {
    backend: &'static str,
    layout: KvLayout,
    compute: &'static str,
    scenario: &'static str,
    seqs: usize,
    iterations: usize,
    steady_ms: f64,
    growth_ms: f64,
    stalls: u64,
    pages_mapped: u64,
}

fn mean_ms(times: &[Duration]) -> f64 {
    times.iter().map(Duration::as_secs_f64).sum::<f64>() / times.len().max(1) as f64 * 1e3
}

/// Alternates steady and growth runs `rounds` times and pools their iterations.
fn compare(
    backend: &'static str,
    config: &KvConfig,
    make: &dyn Fn(&KvConfig) -> Result<KvManager>,
    compute: &mut dyn Compute,
    scenario: &Scenario,
    rounds: usize,
) -> Result<Row> {
    let make = || make(config);
    // One untimed growth run warms caches, the pool and the compute.
    run(&make, compute, scenario, false)?;
    let (mut steady, mut growth) = (Vec::new(), Vec::new());
    let (mut stalls, mut pages_mapped) = (0, 0);
    for _ in 0..rounds {
        steady.extend(run(&make, compute, scenario, true)?.iteration_times);
        let result = run(&make, compute, scenario, false)?;
        growth.extend(result.iteration_times);
        stalls += result.stalls;
        pages_mapped += result.pages_mapped;
    }
    let row = Row {
        backend,
        layout: config.layout,
        compute: compute.label(),
        scenario: scenario.name,
        seqs: scenario.start.len(),
        iterations: scenario.iterations * rounds,
        steady_ms: mean_ms(&steady),
        growth_ms: mean_ms(&growth),
        stalls,
        pages_mapped,
    };
    eprintln!(
        "{} {:?} {} / {}: steady {:.3} ms, growth {:.3} ms, {} stalls, {} pages mapped",
        row.backend,
        row.layout,
        row.compute,
        row.scenario,
        row.steady_ms,
        row.growth_ms,
        row.stalls,
        row.pages_mapped
    );
    Ok(row)
}

/// Sizes `config` for `scenario`: one slot per sequence, a context of the longest final length
/// (rounded up to 1024), and a pool that holds every sequence at that length.
fn fit_to(config: &mut KvConfig, scenario: &Scenario) -> Result<()> {
    let longest = (0..scenario.start.len())
        .map(|index| scenario.final_len(index))
        .max()
        .unwrap_or(1);
    config.max_seqs = scenario.start.len();
    config.max_context_len = longest.next_multiple_of(1024);
    let pages = Geometry::new(config)?.pages_for(config.max_context_len);
    config.pool_bytes = config.max_seqs * pages * config.page_bytes;
    Ok(())
}

/// Host compute: one thread writes the new tokens and reads all live K/V.
struct HostCompute {
    sink: u64,
}

impl Compute for HostCompute {
    fn label(&self) -> &'static str {
        "KV traffic only"
    }

    fn step(
        &mut self,
        manager: &KvManager,
        slots: &[SlotId],
        lens: &[usize],
        growth: usize,
    ) -> Result<()> {
        let geometry = manager.geometry();
        let row_bytes = geometry.layer_token_bytes;
        for (&slot, &len) in slots.iter().zip(lens) {
            for layer in 0..geometry.layers {
                let kv = manager.layer_kv(slot, layer);
                for base in [kv.k, kv.v] {
                    for position in len - growth..len {
                        // SAFETY: position < len, which wait_ready made ready for this slot.
                        unsafe {
                            base.add(position * kv.token_stride)
                                .write_bytes(position as u8, row_bytes)
                        };
                    }
                    for position in 0..len {
                        // SAFETY: as above; rows are 8-byte aligned (f32 × even widths).
                        let row = unsafe {
                            std::slice::from_raw_parts(
                                base.add(position * kv.token_stride).cast::<u64>(),
                                row_bytes / 8,
                            )
                        };
                        self.sink = row
                            .iter()
                            .fold(self.sink, |acc, word| acc.rotate_left(1) ^ word);
                    }
                }
            }
        }
        std::hint::black_box(self.sink);
        Ok(())
    }
}

fn cpu_rows(rounds: usize) -> Result<Vec<Row>> {
    // SmolLM2-135M in f32: per-layer pages hold 2730 tokens, so the sequences start just below
    // that boundary and all cross it; interleaved pages hold 45 tokens and cross every 45 steps.
    let decode = Scenario {
        name: "decode +1/iter",
        start: vec![2700, 2660, 2620],
        growth: 1,
        iterations: 80,
    };
    let prefill = Scenario {
        name: "prefill chunk 256/iter",
        start: vec![16, 80, 144, 208],
        growth: 256,
        iterations: 12,
    };
    let make = |config: &KvConfig| KvManager::cpu(config).context("CPU KV manager");
    let mut rows = Vec::new();
    for layout in [KvLayout::PerLayer, KvLayout::Interleaved] {
        for scenario in [&decode, &prefill] {
            let mut config = KvConfig::for_model(30, 3, 64, 4);
            config.layout = layout;
            fit_to(&mut config, scenario)?;
            rows.push(compare(
                "cpu-memfd",
                &config,
                &make,
                &mut HostCompute { sink: 0 },
                scenario,
                rounds,
            )?);
        }
    }
    Ok(rows)
}

#[cfg(feature = "cuda")]
mod gpu {
    use std::sync::Arc;

    use anyhow::{Context, Result, anyhow, ensure};
    use cudarc::driver::{
        CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg,
    };
    use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
    use fused_daemon::kv::SlotId;
    use fused_daemon::kv::backend::cuda::cuda_context;
    use fused_daemon::kv::{KvConfig, KvLayout, KvManager};

    use super::{Compute, Row, Scenario, compare, fit_to};

    const KERNELS: &str = r#"
// 16 bytes, declared here so that the source needs no header.
struct alignas(16) Word { unsigned int x, y, z, w; };

// Writes the new tokens' words, then reads every live word of each (sequence, run) row, the
// row split over `splits` blocks.
extern "C" __global__ void kv_step(unsigned long long base, const unsigned int* slots,
    const unsigned int* lens, unsigned int growth, unsigned long long run_stride,
    unsigned long long slot_stride, unsigned int run_token_bytes, unsigned int splits,
    unsigned int* sink) {
  const unsigned int seq = blockIdx.y;
  const unsigned long long run = blockIdx.x / splits;
  const unsigned long long part = blockIdx.x % splits;
  Word* data = (Word*)(base + run * run_stride + (unsigned long long)slots[seq] * slot_stride);
  const unsigned long long len = lens[seq];
  const unsigned long long words = len * run_token_bytes / 16;
  const unsigned long long first_new = (len - growth) * run_token_bytes / 16;
  const unsigned long long fresh = words - first_new;
  for (unsigned long long i = first_new + fresh * part / splits + threadIdx.x;
       i < first_new + fresh * (part + 1) / splits; i += blockDim.x) {
    Word word;
    word.x = seq; word.y = (unsigned int)run; word.z = (unsigned int)i; word.w = 0x5eedu;
    data[i] = word;
  }
  unsigned int acc = 0;
  for (unsigned long long i = words * part / splits + threadIdx.x; i < words * (part + 1) / splits;
       i += blockDim.x) {
    const Word v = data[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0xdeadbeefu) atomicAdd(sink, 1u);
}

// Reads `words` 16-byte words: the weights of one decode step.
extern "C" __global__ void weights_read(const Word* weights, unsigned long long words,
    unsigned int* sink) {
  unsigned int acc = 0;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < words;
       i += (unsigned long long)gridDim.x * blockDim.x) {
    const Word v = weights[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0xdeadbeefu) atomicAdd(sink, 1u);
}

// Occupies the stream for `ns` nanoseconds: the modelled matmul time.
extern "C" __global__ void busy_ns(unsigned long long ns) {
  unsigned long long start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - start < ns);
}
"#;

    /// Llama-3-8B: parameters (for FLOPs) and bf16 weight bytes; the H200's bf16 GEMM rate.
    const PARAMS: f64 = 8.03e9;
    const WEIGHT_BYTES: usize = 16_060_000_000;
    const FLOPS_PER_SECOND: f64 = 788e12;

    fn driver(error: DriverError) -> anyhow::Error {
        anyhow!("CUDA driver error {:?}", error.0)
    }

    struct Model {
        weights: CudaSlice<u8>,
        read: CudaFunction,
        busy: CudaFunction,
    }

    struct DeviceCompute {
        stream: Arc<CudaStream>,
        kv_step: CudaFunction,
        slots: CudaSlice<u32>,
        lens: CudaSlice<u32>,
        sink: CudaSlice<u32>,
        model: Option<Model>,
    }

    impl DeviceCompute {
        fn new(context: &Arc<CudaContext>, seqs: usize, with_model: bool) -> Result<Self> {
            // SAFETY: only probes for the library.
            ensure!(
                unsafe { cudarc::nvrtc::sys::is_culib_present() },
                "libnvrtc is not on the library path"
            );
            let options = CompileOptions {
                arch: Some("sm_90"),
                ..Default::default()
            };
            let ptx =
                compile_ptx_with_opts(KERNELS, options).map_err(|e| anyhow!("NVRTC: {e:?}"))?;
            let module = context.load_module(ptx).map_err(driver)?;
            let stream = context.default_stream();
            let zeros = vec![0u32; seqs];
            let model = match with_model {
                false => None,
                true => Some(Model {
                    weights: stream.alloc_zeros::<u8>(WEIGHT_BYTES).map_err(driver)?,
                    read: module.load_function("weights_read").map_err(driver)?,
                    busy: module.load_function("busy_ns").map_err(driver)?,
                }),
            };
            Ok(Self {
                kv_step: module.load_function("kv_step").map_err(driver)?,
                slots: stream.clone_htod(&zeros).map_err(driver)?,
                lens: stream.clone_htod(&zeros).map_err(driver)?,
                sink: stream.clone_htod(&[0u32]).map_err(driver)?,
                stream,
                model,
            })
        }

        fn launch_model(&mut self, tokens: usize) -> Result<()> {
            let Some(model) = &self.model else {
                return Ok(());
            };
            let words = (WEIGHT_BYTES / 16) as u64;
            let grid = LaunchConfig {
                grid_dim: (132 * 8, 1, 1),
                block_dim: (512, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = self.stream.launch_builder(&model.read);
            launch.arg(&model.weights).arg(&words).arg(&mut self.sink);
            // SAFETY: arguments match `weights_read`; the buffer holds `words` 16-byte words.
            unsafe { launch.launch(grid) }.map_err(driver)?;
            let nanos = (2.0 * PARAMS * tokens as f64 / FLOPS_PER_SECOND * 1e9) as u64;
            let grid = LaunchConfig {
                grid_dim: (132, 1, 1),
                block_dim: (32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = self.stream.launch_builder(&model.busy);
            launch.arg(&nanos);
            // SAFETY: arguments match `busy_ns`, which touches no memory.
            unsafe { launch.launch(grid) }.map_err(driver)?;
            Ok(())
        }
    }

    impl Compute for DeviceCompute {
        fn label(&self) -> &'static str {
            if self.model.is_some() {
                "Llama-3-8B roofline"
            } else {
                "KV traffic only"
            }
        }

        fn step(
            &mut self,
            manager: &KvManager,
            slots: &[SlotId],
            lens: &[usize],
            growth: usize,
        ) -> Result<()> {
            let geometry = manager.geometry();
            ensure!(
                geometry.run_token_bytes.is_multiple_of(16),
                "token rows must be 16-byte multiples"
            );
            let lens: Vec<u32> = lens.iter().map(|&len| len as u32).collect();
            self.stream
                .memcpy_htod(slots, &mut self.slots)
                .map_err(driver)?;
            self.stream
                .memcpy_htod(&lens, &mut self.lens)
                .map_err(driver)?;
            let splits = (256 / geometry.runs).max(1) as u32;
            let base = manager.base_address() as u64;
            let run_stride = (geometry.max_seqs * geometry.slot_stride) as u64;
            let slot_stride = geometry.slot_stride as u64;
            let run_token_bytes = geometry.run_token_bytes as u32;
            let growth_u32 = growth as u32;
            let grid = LaunchConfig {
                grid_dim: (geometry.runs as u32 * splits, slots.len() as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = self.stream.launch_builder(&self.kv_step);
            launch
                .arg(&base)
                .arg(&self.slots)
                .arg(&self.lens)
                .arg(&growth_u32)
                .arg(&run_stride);
            launch
                .arg(&slot_stride)
                .arg(&run_token_bytes)
                .arg(&splits)
                .arg(&mut self.sink);
            // SAFETY: arguments match `kv_step`; every address it touches is below `lens`,
            // which wait_ready made ready.
            unsafe { launch.launch(grid) }.map_err(driver)?;
            self.launch_model(slots.len() * growth)?;
            self.stream.synchronize().map_err(driver)
        }
    }

    pub(super) fn rows(rounds: usize) -> Result<Vec<Row>> {
        let context = match cuda_context(0) {
            Ok(context) => context,
            Err(error) if std::env::var("FUSED_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
                return Err(anyhow!("FUSED_REQUIRE_GPU=1 but no usable GPU: {error}"));
            }
            Err(error) => {
                eprintln!("SKIPPED kv_iteration on CUDA: no usable GPU here ({error})");
                return Ok(Vec::new());
            }
        };
        // Llama-3-8B in bf16: per-layer pages hold 1024 tokens, so the decode sequences start
        // just below 1024, 2048 or 3072 and all cross; interleaved pages hold 16 tokens.
        let decode = Scenario {
            name: "decode +1/iter",
            start: (0..32).map(|i| 1024 * (1 + i % 3) - 24 - 3 * i).collect(),
            growth: 1,
            iterations: 256,
        };
        // Four prompts, one 512-token chunk each per iteration: a 2048-token budget.
        let prefill = Scenario {
            name: "prefill chunk 512/iter",
            start: (0..4).map(|i| 1 + 37 * i).collect(),
            growth: 512,
            iterations: 14,
        };
        let make =
            |config: &KvConfig| KvManager::cuda(config, context.clone()).context("CUDA KV manager");
        let mut rows = Vec::new();
        for with_model in [false, true] {
            for layout in [KvLayout::PerLayer, KvLayout::Interleaved] {
                for scenario in [&decode, &prefill] {
                    let mut compute =
                        DeviceCompute::new(&context, scenario.start.len(), with_model)?;
                    let mut config = KvConfig::for_model(32, 8, 128, 2);
                    config.layout = layout;
                    fit_to(&mut config, scenario)?;
                    rows.push(compare(
                        "cuda-vmm",
                        &config,
                        &make,
                        &mut compute,
                        scenario,
                        rounds,
                    )?);
                }
            }
        }
        Ok(rows)
    }
}

fn main() -> Result<()> {
    let gpu_only = std::env::args().any(|arg| arg == "--gpu-only");
    let rounds = 3;
    let mut rows = Vec::new();
    if !gpu_only {
        rows.extend(cpu_rows(rounds)?);
    }
    #[cfg(feature = "cuda")]
    rows.extend(gpu::rows(rounds)?);
    #[cfg(not(feature = "cuda"))]
    eprintln!("SKIPPED kv_iteration on CUDA: built without feature `cuda`");
    println!(
        "\n| backend | layout | compute | scenario | seqs | iterations | steady ms/iter | growth ms/iter | growth vs steady | stalls | pages mapped while timed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {:?} | {} | {} | {} | {} | {:.3} | {:.3} | {:+.2} % | {} | {} |",
            row.backend,
            row.layout,
            row.compute,
            row.scenario,
            row.seqs,
            row.iterations,
            row.steady_ms,
            row.growth_ms,
            (row.growth_ms / row.steady_ms - 1.0) * 100.0,
            row.stalls,
            row.pages_mapped
        );
    }
    Ok(())
}
