//! Per-page map / unmap latency of the KV backends and the mapper thread's throughput.
//!
//! `cargo bench -p fused-daemon --bench kv_map` measures the CPU backend (memfd pool) next to
//! the anonymous-memory alternative (`mprotect` + `madvise`) it was chosen over; with
//! `--features cuda` on a GPU machine it measures the CUDA VMM backend too (`e2e/gpu/kv_test.sh`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fused_daemon::kv::backend::cpu::CpuBackend;
use fused_daemon::kv::backend::{PageBackend, PageId};
use fused_daemon::kv::{KvBudget, KvConfig, KvError, KvLayout, KvManager, PAGE_GRANULE_BYTES};

const PAGE: usize = PAGE_GRANULE_BYTES;
const RUN_PAGES: usize = 64;

/// The alternative CPU design, for comparison only: anonymous memory made accessible with
/// `mprotect` and populated (zeroed) on map, given back to the kernel with `madvise` on unmap.
struct AnonBackend {
    base: usize,
    virtual_bytes: usize,
}

impl AnonBackend {
    fn new(virtual_bytes: usize) -> Self {
        // SAFETY: a fresh PROT_NONE reservation.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                virtual_bytes,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "reservation");
        Self {
            base: base as usize,
            virtual_bytes,
        }
    }

    fn os(call: &'static str, status: i32) -> Result<(), KvError> {
        if status == 0 {
            Ok(())
        } else {
            Err(KvError::Os {
                call,
                source: std::io::Error::last_os_error(),
            })
        }
    }
}

impl PageBackend for AnonBackend {
    fn name(&self) -> &'static str {
        "cpu-anon-mprotect"
    }

    fn base_address(&self) -> usize {
        self.base
    }

    fn map_run(&mut self, offset: usize, pages: &[PageId]) -> Result<(), KvError> {
        let at = (self.base + offset) as *mut libc::c_void;
        let len = pages.len() * PAGE;
        // SAFETY: inside our reservation.
        Self::os("mprotect", unsafe {
            libc::mprotect(at, len, libc::PROT_READ | libc::PROT_WRITE)
        })?;
        // SAFETY: as above; populating makes the comparison fair (memfd maps with MAP_POPULATE).
        Self::os("madvise", unsafe {
            libc::madvise(at, len, libc::MADV_POPULATE_WRITE)
        })
    }

    fn unmap_run(&mut self, offset: usize, count: usize) -> Result<(), KvError> {
        let at = (self.base + offset) as *mut libc::c_void;
        // SAFETY: inside our reservation.
        Self::os("madvise", unsafe {
            libc::madvise(at, count * PAGE, libc::MADV_DONTNEED)
        })?;
        // SAFETY: as above.
        Self::os("mprotect", unsafe {
            libc::mprotect(at, count * PAGE, libc::PROT_NONE)
        })
    }

    fn copy_pages(&mut self, _: &[PageId], _: &[PageId], _: usize) -> Result<(), KvError> {
        Err(KvError::Backend(
            "anonymous memory has no pool pages to copy between (ablation only)".into(),
        ))
    }
}

impl Drop for AnonBackend {
    fn drop(&mut self) {
        // SAFETY: our reservation.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.virtual_bytes) };
    }
}

/// Times `pages` mapped with one call, then unmapped with one call, on `backend`.
fn map_then_unmap(
    backend: &mut dyn PageBackend,
    pages: &[PageId],
    iters: u64,
) -> (Duration, Duration) {
    let (mut map, mut unmap) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..iters {
        let started = Instant::now();
        backend.map_run(0, pages).expect("map");
        map += started.elapsed();
        let started = Instant::now();
        backend.unmap_run(0, pages.len()).expect("unmap");
        unmap += started.elapsed();
    }
    (map, unmap)
}

fn backend_group(c: &mut Criterion, backend: &mut dyn PageBackend) {
    let mut group = c.benchmark_group(format!("kv_map/{}", backend.name()));
    let consecutive: Vec<PageId> = (0..RUN_PAGES as PageId).collect();
    let scattered: Vec<PageId> = (0..RUN_PAGES as PageId).map(|page| page * 2).collect();
    let cases: [(&str, &[PageId]); 3] = [
        ("1_page", &consecutive[..1]),
        ("64_pages", &consecutive),
        ("64_scattered_pages", &scattered),
    ];
    for (name, pages) in cases {
        group.throughput(Throughput::Elements(pages.len() as u64));
        group.bench_function(format!("map_{name}"), |b| {
            b.iter_custom(|iters| map_then_unmap(backend, pages, iters).0)
        });
        group.bench_function(format!("unmap_{name}"), |b| {
            b.iter_custom(|iters| map_then_unmap(backend, pages, iters).1)
        });
    }
    group.finish();
}

/// A shape where one full sequence is exactly 64 pages in either layout (4 layers, 8 KV heads,
/// head_dim 128, bf16, 8192 tokens).
fn mapper_config(layout: KvLayout) -> KvConfig {
    let mut config = KvConfig::for_model(4, 8, 128, 2);
    config.layout = layout;
    config.max_seqs = 2;
    config.max_context_len = 8192;
    config.pool_bytes = RUN_PAGES * PAGE;
    config.lookahead_tokens = 0;
    config
}

/// Pages per second through the whole path: accounting, queue, mapper thread, backend, wake-up.
fn mapper_group(c: &mut Criterion, name: &str, make: &dyn Fn(&KvConfig) -> KvManager) {
    let mut group = c.benchmark_group(format!("kv_mapper/{name}"));
    for layout in [KvLayout::PerLayer, KvLayout::Interleaved] {
        let config = mapper_config(layout);
        let mut manager = make(&config);
        assert_eq!(
            manager.geometry().pages_for(config.max_context_len),
            RUN_PAGES
        );
        group.throughput(Throughput::Elements(RUN_PAGES as u64));
        group.bench_function(format!("admit_64_pages_{layout:?}"), |b| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let slot = manager.admit(config.max_context_len).expect("room");
                    manager
                        .wait_ready(slot, config.max_context_len)
                        .expect("mapped");
                    took += started.elapsed();
                    manager.free(black_box(slot)).expect("live");
                    manager.trim_idle().expect("trim");
                    manager.sync().expect("unmapped");
                }
                took
            })
        });
    }
    group.finish();
}

fn cpu(c: &mut Criterion) {
    let mut memfd =
        CpuBackend::new(4 * RUN_PAGES * PAGE, PAGE, 2 * RUN_PAGES).expect("memfd backend");
    backend_group(c, &mut memfd);
    let mut anon = AnonBackend::new(4 * RUN_PAGES * PAGE);
    backend_group(c, &mut anon);
    mapper_group(c, "cpu-memfd", &|config| {
        KvManager::cpu(config).expect("cpu manager")
    });
}

#[cfg(feature = "cuda")]
fn cuda(c: &mut Criterion) {
    use fused_daemon::kv::backend::cuda::{CudaBackend, cuda_context};
    let context = match cuda_context(0) {
        Ok(context) => context,
        Err(error) if std::env::var("FUSED_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("FUSED_REQUIRE_GPU=1 but no usable GPU: {error}")
        }
        Err(error) => {
            eprintln!("SKIPPED kv_map CUDA benchmarks: no usable GPU here ({error})");
            return;
        }
    };
    let mut backend = CudaBackend::new(
        context.clone(),
        4 * RUN_PAGES * PAGE,
        PAGE,
        2 * RUN_PAGES,
        false,
    )
    .expect("CUDA backend");
    backend_group(c, &mut backend);
    drop(backend);
    mapper_group(c, "cuda-vmm", &|config| {
        KvManager::cuda(config, context.clone()).expect("cuda manager")
    });
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &mut Criterion) {
    eprintln!("SKIPPED kv_map CUDA benchmarks: built without feature `cuda`");
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = cpu, cuda }
criterion_main!(benches);
