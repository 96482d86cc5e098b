//! The device start-up runs on: `--device auto|cpu|cuda` resolved to a usable GPU or the CPU
//! (an explicit `cuda` without one is an error with the reason), then the forward pass and the
//! KV region on it, with lines for kernel compilation and weight upload.
//!
//! Must not: read checkpoints (load.rs) or serve anything.

#[cfg(feature = "cuda")]
use std::sync::Arc;
#[cfg(feature = "cuda")]
use std::time::Instant;

use anyhow::{Context, bail};

use super::{Device, ServeArgs};
use crate::kv::{KvConfig, KvManager};
use crate::model::{Forward, Model, ModelConfig};
use crate::vocab::serving::ServedPatch;

/// A usable GPU, in a `cuda` build.
#[cfg(feature = "cuda")]
pub type Gpu = Arc<fused_kernels::cuda::GpuDevice>;
#[cfg(not(feature = "cuda"))]
pub type Gpu = std::convert::Infallible;

/// The GPU `device` asks for: `None` runs on the CPU. `cuda` without a usable GPU (or in a
/// build without CUDA) is an error naming the reason; `auto` falls back to the CPU and says why.
pub fn open_gpu(device: Device) -> anyhow::Result<Option<Gpu>> {
    if device == Device::Cpu {
        tracing::info!("running on the CPU (--device cpu)");
        return Ok(None);
    }
    let unusable = match try_open_gpu() {
        Ok(gpu) => return Ok(Some(gpu)),
        Err(reason) => reason,
    };
    if device == Device::Cuda {
        bail!(
            "--device cuda: no usable GPU: {unusable}. Run with --device cpu, or --device auto \
             to fall back to the CPU when no GPU is usable"
        );
    }
    tracing::warn!(reason = %unusable, "--device auto: no usable GPU; running on the CPU");
    Ok(None)
}

#[cfg(feature = "cuda")]
fn try_open_gpu() -> Result<Gpu, String> {
    let started = Instant::now();
    let gpu = fused_kernels::cuda::GpuDevice::open(0).map_err(|e| e.to_string())?;
    tracing::info!(
        name = gpu.name(),
        arch = %gpu.arch(),
        seconds = started.elapsed().as_secs_f64(),
        "running on the GPU"
    );
    Ok(Arc::new(gpu))
}

#[cfg(not(feature = "cuda"))]
fn try_open_gpu() -> Result<Gpu, String> {
    Err("this build has no CUDA support (build with `--features cuda`)".into())
}

/// The host KV pool without `--kv-memory-mib`, MiB.
const DEFAULT_CPU_KV_MIB: usize = 1024;

/// The KV region's shape for `forward` (its element size comes from the model's KV dtype).
fn kv_config(
    args: &ServeArgs,
    forward: &dyn Forward,
    max_context: usize,
) -> anyhow::Result<KvConfig> {
    let config = forward.config();
    Ok(KvConfig {
        max_seqs: args.max_seqs,
        max_context_len: max_context,
        page_bytes: args.kv_block_size,
        layout: args.kv_layout.into(),
        pool_bytes: args
            .kv_memory_mib
            .unwrap_or(DEFAULT_CPU_KV_MIB)
            .saturating_mul(1 << 20),
        eager: args.eager_kv,
        prefix_caching: !args.no_enable_prefix_caching,
        ..KvConfig::for_model(
            config.layers,
            config.kv_heads,
            config.head_dim,
            forward.kv_element_bytes(),
        )
    })
}

/// The forward pass and the KV region on the chosen device; `vocab_patch`: a patch the GPU lays
/// into its own embedding and head (a host model came patched).
pub fn forward_and_kv(
    gpu: Option<Gpu>,
    model: Option<Model>,
    vocab_patch: Option<&ServedPatch>,
    config: &ModelConfig,
    max_context: usize,
    args: &ServeArgs,
) -> anyhow::Result<(Box<dyn Forward>, KvManager)> {
    match gpu {
        None => {
            let model = model.context("no host weights were loaded")?;
            let kv_config = kv_config(args, &model, max_context)?;
            let kv = KvManager::cpu(&kv_config).context("reserving the KV region")?;
            Ok((Box::new(model), kv))
        }
        #[cfg(feature = "cuda")]
        Some(gpu) => {
            use crate::model::cuda::{GpuModel, GpuOptions, WeightFormat};
            // A checkpoint without host weights streams to the device from this directory.
            let checkpoint_dir = match (&model, args.load_format) {
                (None, super::LoadFormat::Auto) => {
                    Some(super::load::model_path(args.model_spec()?)?)
                }
                _ => None,
            };
            // An FP8 checkpoint is served in FP8 unless --quantization says otherwise (as vLLM).
            let method = checkpoint_dir
                .as_deref()
                .and_then(ModelConfig::quantization_method);
            let checkpoint_fp8 = matches!(method.as_deref(), Some("fp8" | "compressed-tensors"));
            if checkpoint_fp8 && args.quantization.is_none() {
                tracing::info!(
                    method = method.as_deref().unwrap_or_default(),
                    "the checkpoint holds FP8 weights: serving them as FP8"
                );
            }
            let options = GpuOptions {
                graphs: !args.no_cuda_graphs,
                max_graph_batch: args.max_seqs.next_power_of_two(),
                max_context,
                max_batch_tokens: match args.token_budget()? {
                    crate::sched::TokenBudget::Fixed(tokens) => tokens,
                    crate::sched::TokenBudget::Auto { max, .. } => max,
                },
                max_seqs: args.max_seqs,
                weights: match args.quantization {
                    Some(super::args::Quantization::Fp8) => WeightFormat::Fp8,
                    Some(super::args::Quantization::Gguf) => WeightFormat::Blocks,
                    None if checkpoint_fp8 => WeightFormat::Fp8,
                    None => WeightFormat::Bf16,
                },
                persistent_decode: args.decode_kernel == super::args::DecodeKernel::Persistent,
                ..GpuOptions::default()
            };
            let started = Instant::now();
            tracing::info!(
                "compiling CUDA kernels (NVRTC; cached after the first start) and uploading weights"
            );
            let mut forward = match (model, checkpoint_dir) {
                (Some(model), _) => GpuModel::from_host(gpu.clone(), &model, options)?,
                (None, Some(dir)) => {
                    GpuModel::from_checkpoint(gpu.clone(), config.clone(), &dir, options)?
                }
                (None, None) => GpuModel::dummy(gpu.clone(), config.clone(), args.seed, options)?,
            };
            if let Some(patch) = vocab_patch {
                patch_gpu_vocab(&mut forward, patch, config)?;
            }
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                graphs = !args.no_cuda_graphs,
                "kernels compiled and weights on the GPU; a CUDA graph is captured on the first \
                 decode of each batch shape (--enforce-eager: none)"
            );
            let kv_config = KvConfig {
                pool_bytes: gpu_kv_pool_bytes(&gpu, args)?,
                ..kv_config(args, &forward, max_context)?
            };
            let kv = KvManager::cuda(&kv_config, gpu.context().clone())
                .context("reserving the KV region in GPU memory")?;
            Ok((Box::new(forward), kv))
        }
        #[cfg(not(feature = "cuda"))]
        Some(never) => {
            let _ = (config, max_context, args, vocab_patch);
            match never {}
        }
    }
}

/// Lays `patch`'s vocabulary into the GPU model's embedding and head (its new rows rounded to
/// bf16, as the device holds every row).
#[cfg(feature = "cuda")]
fn patch_gpu_vocab(
    forward: &mut crate::model::cuda::GpuModel,
    patch: &ServedPatch,
    config: &ModelConfig,
) -> anyhow::Result<()> {
    use crate::model::ModelError;
    use crate::model::cuda::VocabMatrix;
    use half::bf16;
    let started = Instant::now();
    let rounded = |rows: &[f32]| rows.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>();
    let (input, output) = (rounded(&patch.rows.input), rounded(&patch.rows.output));
    forward.remap_vocab(|base, matrix| {
        let new_rows = match matrix {
            VocabMatrix::Input => &input,
            VocabMatrix::Output => &output,
        };
        (patch.tokenizer)
            .remap_rows(base, config.vocab_size, config.hidden, new_rows)
            .map_err(|e| ModelError::Input(e.to_string()))
    })?;
    tracing::info!(
        patch = %patch.artifact.dir.display(),
        new_tokens = patch.rows.ids.len(),
        seconds = started.elapsed().as_secs_f64(),
        "vocabulary patch applied to the GPU's embedding and LM head"
    );
    Ok(())
}

/// Bytes of GPU memory for KV pages: free memory now (weights and work buffers are already
/// allocated) less the `1 − utilization` share of the device that the daemon leaves alone, at
/// most `--kv-memory-mib`.
#[cfg(feature = "cuda")]
fn gpu_kv_pool_bytes(gpu: &Gpu, args: &ServeArgs) -> anyhow::Result<usize> {
    let utilization = args.gpu_memory_utilization;
    let (free, total) = gpu.memory()?;
    let kept_back = ((1.0 - utilization) * total as f64) as usize;
    let cap = (args.kv_memory_mib).map_or(usize::MAX, |mib| mib.saturating_mul(1 << 20));
    let pool = free.saturating_sub(kept_back).min(cap);
    tracing::info!(
        free,
        total,
        utilization,
        cap,
        pool,
        "GPU memory for the KV pool"
    );
    if pool < crate::kv::DEFAULT_PAGE_BYTES {
        bail!(
            "--gpu-memory-utilization {utilization}: {free} bytes free of {total} leave no room for KV pages; raise it"
        );
    }
    Ok(pool)
}
