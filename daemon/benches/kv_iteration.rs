//! Is mapping off the critical path? Iteration time while sequences grow across page boundaries
//! (pages mapped on demand by the mapper thread) against the steady state (every page mapped
//! before timing), with the same compute and the same KV calls in both.
//!
//! One iteration does what the engine does: `wait_ready` for this iteration's tokens, announce
//! the next iteration's tokens with `reserve` (decode growth, or the next prefill chunk), then
//! compute: write the new tokens' K/V and read every live K/V byte of every sequence (the memory
//! traffic of decode attention). Rounds alternate steady / growth on fresh regions.
//!
//! `cargo bench -p fused-daemon --bench kv_iteration` (CPU, SmolLM2-135M shape, f32); built with
//! `--features cuda` and run on a GPU (`e2e/gpu/kv_test.sh`) it adds the CUDA backend with a
//! Llama-3-8B shape in bf16 and an NVRTC kernel as the compute. Prints a table last.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fused_daemon::kv::{KvBudget, KvConfig, KvLayout, KvManager};
use fused_daemon::model::kv_access::{KvAccess, SlotId};

/// What one iteration computes over the batch, after the KV is ready.
trait Compute {
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
    backend: String,
    layout: KvLayout,
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
    backend: &str,
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
        backend: backend.to_string(),
        layout: config.layout,
        scenario: scenario.name,
        seqs: scenario.start.len(),
        iterations: scenario.iterations * rounds,
        steady_ms: mean_ms(&steady),
        growth_ms: mean_ms(&growth),
        stalls,
        pages_mapped,
    };
    eprintln!(
        "{} {:?} {}: steady {:.3} ms, growth {:.3} ms, {} stalls, {} pages mapped",
        row.backend,
        row.layout,
        row.scenario,
        row.steady_ms,
        row.growth_ms,
        row.stalls,
        row.pages_mapped
    );
    Ok(row)
}

/// Host compute: one thread writes the new tokens and reads all live K/V.
struct HostCompute {
    sink: u64,
}

impl Compute for HostCompute {
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
                        // SAFETY: as above; rows are 8-byte aligned (f32 × multiple-of-2 widths).
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

/// SmolLM2-135M's KV shape in f32 (30 layers, 3 KV heads, head_dim 64).
fn cpu_config(layout: KvLayout, scenario: &Scenario) -> KvConfig {
    let mut config = KvConfig::for_model(30, 3, 64, 4);
    config.layout = layout;
    config.max_seqs = scenario.start.len();
    config.max_context_len = 4096;
    config.lookahead_tokens = 16;
    let probe = fused_daemon::kv::Geometry::new(&config)
        .map(|g| g.pages_for(config.max_context_len))
        .unwrap_or(0);
    config.pool_bytes = config.max_seqs * probe * config.page_bytes;
    config
}

fn cpu_rows(rounds: usize) -> Result<Vec<Row>> {
    // Per-layer pages hold 2730 tokens: start just below a boundary so every sequence crosses it;
    // interleaved pages hold 45 tokens, so they cross every 45 steps anyway.
    let decode = Scenario {
        name: "decode +1/iter",
        start: (0..4).map(|i| 2700 - 40 * i).collect(),
        growth: 1,
        iterations: 120,
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
            let config = cpu_config(layout, scenario);
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
        CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
    };
    use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
    use fused_daemon::kv::backend::cuda::cuda_context;
    use fused_daemon::kv::{KvConfig, KvLayout, KvManager};
    use fused_daemon::model::kv_access::SlotId;

    use super::{Compute, Row, Scenario, compare};

    /// Writes the new tokens' words, then reads every live word of each (sequence, run) row,
    /// split over `splits` blocks per row.
    const KERNEL: &str = r#"
extern "C" __global__ void kv_step(unsigned long long base, const unsigned int* slots,
    const unsigned int* lens, unsigned int growth, unsigned long long run_stride,
    unsigned long long slot_stride, unsigned int run_token_bytes, unsigned int splits,
    unsigned int* sink) {
  const unsigned int seq = blockIdx.y;
  const unsigned long long run = blockIdx.x / splits;
  const unsigned long long part = blockIdx.x % splits;
  uint4* data = (uint4*)(base + run * run_stride + (unsigned long long)slots[seq] * slot_stride);
  const unsigned long long len = lens[seq];
  const unsigned long long words = len * run_token_bytes / 16;
  const unsigned long long first_new = (len - growth) * run_token_bytes / 16;
  const unsigned long long fresh = words - first_new;
  for (unsigned long long i = first_new + fresh * part / splits + threadIdx.x;
       i < first_new + fresh * (part + 1) / splits; i += blockDim.x) {
    data[i] = make_uint4(seq, (unsigned int)run, (unsigned int)i, 0x5eedu);
  }
  unsigned int acc = 0;
  for (unsigned long long i = words * part / splits + threadIdx.x; i < words * (part + 1) / splits;
       i += blockDim.x) {
    const uint4 v = data[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0xdeadbeefu) atomicAdd(sink, 1u);
}
"#;

    struct DeviceCompute {
        stream: Arc<CudaStream>,
        function: CudaFunction,
        slots: CudaSlice<u32>,
        lens: CudaSlice<u32>,
        sink: CudaSlice<u32>,
    }

    impl DeviceCompute {
        fn new(context: &Arc<CudaContext>, seqs: usize) -> Result<Self> {
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
                compile_ptx_with_opts(KERNEL, options).map_err(|e| anyhow!("NVRTC: {e:?}"))?;
            let module = context
                .load_module(ptx)
                .map_err(|e| anyhow!("load module: {:?}", e.0))?;
            let function = module
                .load_function("kv_step")
                .map_err(|e| anyhow!("load function: {:?}", e.0))?;
            let stream = context.default_stream();
            let zeros = vec![0u32; seqs];
            let slots = stream
                .clone_htod(&zeros)
                .map_err(|e| anyhow!("alloc: {:?}", e.0))?;
            let lens = stream
                .clone_htod(&zeros)
                .map_err(|e| anyhow!("alloc: {:?}", e.0))?;
            let sink = stream
                .clone_htod(&[0u32])
                .map_err(|e| anyhow!("alloc: {:?}", e.0))?;
            Ok(Self {
                stream,
                function,
                slots,
                lens,
                sink,
            })
        }
    }

    impl Compute for DeviceCompute {
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
            let err = |e: cudarc::driver::DriverError| anyhow!("{:?}", e.0);
            self.stream
                .memcpy_htod(slots, &mut self.slots)
                .map_err(err)?;
            self.stream
                .memcpy_htod(&lens, &mut self.lens)
                .map_err(err)?;
            let splits = (256 / geometry.runs).max(1) as u32;
            let base = manager.base_address() as u64;
            let run_stride = (geometry.max_seqs * geometry.slot_stride) as u64;
            let slot_stride = geometry.slot_stride as u64;
            let run_token_bytes = geometry.run_token_bytes as u32;
            let growth = growth as u32;
            let config = LaunchConfig {
                grid_dim: (geometry.runs as u32 * splits, slots.len() as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = self.stream.launch_builder(&self.function);
            launch
                .arg(&base)
                .arg(&self.slots)
                .arg(&self.lens)
                .arg(&growth)
                .arg(&run_stride);
            launch
                .arg(&slot_stride)
                .arg(&run_token_bytes)
                .arg(&splits)
                .arg(&mut self.sink);
            // SAFETY: the arguments match the kernel's signature; every address it touches is
            // below `lens`, which wait_ready made ready.
            unsafe { launch.launch(config) }.map_err(err)?;
            self.stream.synchronize().map_err(err)
        }
    }

    /// Llama-3-8B's KV shape in bf16 (32 layers, 8 KV heads, head_dim 128).
    fn config(layout: KvLayout, seqs: usize) -> KvConfig {
        let mut config = KvConfig::for_model(32, 8, 128, 2);
        config.layout = layout;
        config.max_seqs = seqs;
        config.max_context_len = 8192;
        config.lookahead_tokens = 16;
        config.pool_bytes = seqs * 8192 * 32 * 2 * 8 * 128 * 2 + (256 << 20);
        config
    }

    pub(super) fn rows(rounds: usize) -> Result<Vec<Row>> {
        let context = match cuda_context(0) {
            Ok(context) => context,
            Err(error) => {
                eprintln!("SKIPPED kv_iteration on CUDA: no usable GPU here ({error})");
                return Ok(Vec::new());
            }
        };
        // Per-layer pages hold 1024 tokens: starts just below 1024, 2048 and 3072 so every
        // sequence crosses one; interleaved pages hold 16 tokens and cross every 16 steps.
        let decode = Scenario {
            name: "decode +1/iter",
            start: (0..32).map(|i| 1024 * (1 + i % 3) - 24 - 3 * i).collect(),
            growth: 1,
            iterations: 256,
        };
        let prefill = Scenario {
            name: "prefill chunk 512/iter",
            start: (0..16).map(|i| 1 + 37 * i).collect(),
            growth: 512,
            iterations: 13,
        };
        let make =
            |config: &KvConfig| KvManager::cuda(config, context.clone()).context("CUDA KV manager");
        let mut rows = Vec::new();
        for layout in [KvLayout::PerLayer, KvLayout::Interleaved] {
            for scenario in [&decode, &prefill] {
                let mut compute = DeviceCompute::new(&context, scenario.start.len())?;
                let config = config(layout, scenario.start.len());
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
        Ok(rows)
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let only_gpu = args.iter().any(|arg| arg == "--gpu-only");
    let rounds = 3;
    let mut rows = Vec::new();
    if !only_gpu {
        rows.extend(cpu_rows(rounds)?);
    }
    #[cfg(feature = "cuda")]
    rows.extend(gpu::rows(rounds)?);
    #[cfg(not(feature = "cuda"))]
    eprintln!("SKIPPED kv_iteration on CUDA: built without feature `cuda`");
    println!(
        "\n| backend | layout | scenario | seqs | iterations | steady ms/iter | growth ms/iter | growth vs steady | stalls | pages mapped while timed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {:?} | {} | {} | {} | {:.3} | {:.3} | {:+.2} % | {} | {} |",
            row.backend,
            row.layout,
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
