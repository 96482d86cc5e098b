//! `fused-daemon serve`: load the model and tokenizer, reserve the KV region, start the engine
//! thread and the HTTP server; drain on SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::engine::{self, EngineParts};
use crate::kv::{KvConfig, KvManager};
use crate::metrics::Metrics;
use crate::model::gguf::GgufFile;
use crate::model::{Forward, Model, ModelConfig};
use crate::sched::{Policy, Scheduler, SchedulerConfig, TokenBudget};
use crate::server::listener::ConnectionLimits;
use crate::server::{self, AppState};
use crate::tokenizer::Codec;

/// The default model's file name in the model cache (fetched by `scripts/fetch-model.sh`).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadFormat {
    /// GGUF file or HF directory, by what `--model` points at.
    Auto,
    /// Seeded random weights; `--model` is a shape preset or a config.json.
    Dummy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A GGUF file or an HF directory (config.json + safetensors). With `--load-format dummy`: a
    /// shape preset (smollm2-135m, llama-2-7b, llama-3-8b, gpt2, tiny-llama) or a config.json.
    /// Default: SmolLM2-135M-Instruct in the model cache.
    #[arg(long, env = "FUSED_MODEL")]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub load_format: LoadFormat,
    /// Seed of dummy weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tokenizer (tokenizer.json, HF directory or GGUF); default: the model's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// AdaptiVocab patch directory (built by `fused-daemon vocab build`, embeddings added by
    /// `vocab init-embeddings`). The daemon refuses a patch built for another base tokenizer.
    #[arg(long, env = "FUSED_PATCH_TOKENIZER")]
    pub patch_tokenizer: Option<PathBuf>,
    /// Expected sha256 of the patch artifact (the CRD's `patchTokenizer.sha256`).
    #[arg(long, requires = "patch_tokenizer")]
    pub patch_sha256: Option<String>,
    /// KV page size in bytes (a multiple of 2 MiB).
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub kv_block_size: usize,
    /// KV layout: interleaved (every layer of a token on one page) or perLayer.
    #[arg(long, default_value = "interleaved")]
    pub kv_layout: String,
    /// Physical KV memory (host memory, or GPU memory with `--device cuda`), in MiB.
    #[arg(long, default_value_t = 1024)]
    pub kv_memory_mib: usize,
    /// On the GPU: the share of device memory the daemon may use (vLLM's meaning). The KV pool
    /// is what stays free after the weights and work buffers, less the other `1 − this` share;
    /// `--kv-memory-mib` is the CPU pool.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Allocate each sequence's KV for the whole context at admission (ablation: the world
    /// before vAttention) instead of page by page on demand.
    #[arg(long)]
    pub eager_kv: bool,
    /// Sequences that hold KV at once (KV slots; also the scheduler's max running).
    #[arg(long, default_value_t = 16)]
    pub max_seqs: usize,
    /// Context length per sequence (prompt + output), at most the model's.
    #[arg(long, default_value_t = 2048)]
    pub max_context: usize,
    /// Tokens per iteration: a number, or `auto` (largest budget under --tbt-target-ms).
    #[arg(long, default_value = "512")]
    pub token_budget: String,
    /// Inter-token latency target of `--token-budget auto`.
    #[arg(long, default_value_t = 100)]
    pub tbt_target_ms: u64,
    /// Requests waiting for admission at most; beyond it the server answers 503.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Batch composition: sarathi (chunked prefills, stall-free), prefill-first (vLLM v0),
    /// decode-first (Orca-like).
    #[arg(long, default_value = "sarathi")]
    pub scheduler: String,
    /// `cuda` runs on GPU 0 (a `cuda` build); without a usable GPU it says so and uses the CPU.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Run decode iterations eagerly instead of replaying CUDA graphs.
    #[arg(long)]
    pub no_cuda_graphs: bool,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Name clients use in `model`; default: the model file's stem.
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer <key>` on the API routes (`/v1/*`, `/tokenize`,
    /// `/detokenize`). Prefer the environment variable: arguments show in `ps`. `/health`,
    /// `/ready` and `/version` stay open (probes); `/metrics` too unless `--protect-metrics`.
    #[arg(long, env = "FUSED_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Require the API key on `/metrics` too (Prometheus then scrapes with a bearer token).
    #[arg(long, requires = "api_key")]
    pub protect_metrics: bool,
    /// Seconds in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_s: u64,
    /// Open HTTP connections at most; more are closed on accept (descriptors and memory stay
    /// bounded, probes keep working).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a client may take to send a request's headers; idle keep-alive connections are
    /// closed after this too.
    #[arg(long, default_value_t = 30)]
    pub http_timeout_s: u64,
    /// Seconds a response write may make no progress (a client that stops reading) before the
    /// connection is closed and its request cancelled.
    #[arg(long, default_value_t = 60)]
    pub write_timeout_s: u64,
    /// No log line per finished request (by default each request logs its id, finish reason,
    /// token counts and timings, as vLLM does).
    #[arg(long)]
    pub disable_log_requests: bool,
    /// Automatic prefix caching (on by default, as in vLLM v1): KV pages of prompts and outputs
    /// stay cached by their token ids until memory is needed, and a request whose tokens start
    /// with a cached prefix maps those pages instead of computing them.
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    /// Turn automatic prefix caching off.
    #[arg(long, overrides_with = "enable_prefix_caching")]
    pub no_enable_prefix_caching: bool,
}

/// Where the default model lives: `$FUSED_MODEL_CACHE` or `~/.cache/fusedmodel/models`.
pub fn model_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FUSED_MODEL_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("fusedmodel").join("models")
}

/// The model's host weights — `None` when the GPU makes them itself (dummy weights) or streams
/// them from the checkpoint (an HF directory, no patch tokenizer) — its shape, its tokenizer and
/// a display name.
fn load(
    args: &ServeArgs,
    on_gpu: bool,
) -> anyhow::Result<(Option<Model>, ModelConfig, Codec, String)> {
    let host_dummy = !on_gpu;
    let started = Instant::now();
    let (model, config, codec, name) = match args.load_format {
        LoadFormat::Dummy => {
            let shape = args
                .model
                .as_deref()
                .context("--load-format dummy needs --model <preset|config.json>")?;
            let config = match ModelConfig::preset(shape) {
                Some(c) => c,
                None if Path::new(shape).is_file() => ModelConfig::from_hf_json(Path::new(shape))?,
                None => bail!(
                    "unknown shape `{shape}`: use a preset ({}) or a config.json",
                    ModelConfig::PRESETS.join(", ")
                ),
            };
            let tokenizer = args
                .tokenizer
                .as_deref()
                .context("dummy weights have no tokenizer: pass --tokenizer")?;
            tracing::info!(
                shape,
                params = config.parameter_count(),
                "generating dummy weights"
            );
            let codec = Codec::from_path(tokenizer)
                .with_context(|| format!("loading tokenizer {}", tokenizer.display()))?;
            let model = if host_dummy {
                Some(Model::dummy(config.clone(), args.seed)?)
            } else {
                None
            };
            (model, config, codec, format!("dummy-{shape}"))
        }
        LoadFormat::Auto => {
            let path = match &args.model {
                Some(p) => PathBuf::from(p),
                None => {
                    let p = model_cache_dir().join(DEFAULT_MODEL_FILE);
                    if !p.exists() {
                        bail!(
                            "the default model is not in the cache ({}). Fetch it with `scripts/fetch-model.sh` \
                             (or pass --model <file.gguf | hf-dir>)",
                            p.display()
                        );
                    }
                    p
                }
            };
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into());
            tracing::info!(model = %path.display(), "loading weights");
            if on_gpu && streams_to_gpu(args, &path) {
                let config = ModelConfig::from_hf_json(&path.join("config.json"))?;
                let codec = Codec::from_path(args.tokenizer.as_deref().unwrap_or(&path))?;
                (None, config, codec, name)
            } else {
                let (model, codec) = open_model(&path, args.tokenizer.as_deref())?;
                let config = model.config.clone();
                (Some(model), config, codec, name)
            }
        }
    };
    let (mut model, codec) = (model, codec);
    let codec = match &args.patch_tokenizer {
        None => codec,
        Some(dir) => {
            let model = model.as_mut().context(
                "--patch-tokenizer needs host weights, not dummy weights made on the GPU",
            )?;
            apply_patch(model, codec, dir, args.patch_sha256.as_deref())?
        }
    };
    if codec.vocab_size() > config.vocab_size {
        bail!(
            "the tokenizer has {} ids but the model only {} embedding rows",
            codec.vocab_size(),
            config.vocab_size
        );
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        params = config.parameter_count(),
        "model loaded"
    );
    Ok((model, config, codec, name))
}

/// Whether the GPU loads `path` itself, streaming the checkpoint to the device (an HF directory
/// without a patch tokenizer; a patch needs the host's embedding and head).
fn streams_to_gpu(args: &ServeArgs, path: &Path) -> bool {
    args.load_format == LoadFormat::Auto && path.is_dir() && args.patch_tokenizer.is_none()
}

/// A model and its tokenizer (its own, or `tokenizer`) from a GGUF file or an HF directory.
pub fn open_model(path: &Path, tokenizer: Option<&Path>) -> anyhow::Result<(Model, Codec)> {
    if path.is_dir() {
        let codec = Codec::from_path(tokenizer.unwrap_or(path))?;
        return Ok((Model::load_hf_dir(path)?, codec));
    }
    let file = GgufFile::open(path)?;
    let codec = match tokenizer {
        Some(t) => Codec::from_path(t)?,
        None => {
            Codec::from_gguf(&file.content).context("reading the tokenizer from GGUF metadata")?
        }
    };
    Ok((Model::load_gguf(file)?, codec))
}

/// Loads the AdaptiVocab patch in `dir` onto `codec` (refusing one built for another base
/// tokenizer, or whose digest is not `sha256`) and patches `model`'s embedding and LM head.
pub fn apply_patch(
    model: &mut Model,
    codec: Codec,
    dir: &Path,
    sha256: Option<&str>,
) -> anyhow::Result<Codec> {
    let (codec, patch) = crate::vocab::serving::load_for_serving(dir, sha256, codec)
        .with_context(|| format!("loading the patch tokenizer {}", dir.display()))?;
    let weights = &mut model.weights;
    let (embed, head) = patch.tokenizer.remap_embedding_and_head(
        &weights.embed,
        weights.lm_head(),
        model.config.vocab_size,
        &patch.rows,
    )?;
    weights.set_vocab(embed, head);
    tracing::info!(patch = %dir.display(), new_tokens = patch.rows.ids.len(), "vocabulary patch applied");
    Ok(codec)
}

fn token_budget(args: &ServeArgs) -> anyhow::Result<TokenBudget> {
    if args.token_budget == "auto" {
        return Ok(TokenBudget::Auto {
            tbt_target: Duration::from_millis(args.tbt_target_ms),
            min: args.max_seqs.max(64),
            max: 4096,
        });
    }
    let tokens: usize = args
        .token_budget
        .parse()
        .context("--token-budget must be a number or `auto`")?;
    Ok(TokenBudget::Fixed(tokens))
}

/// A usable GPU, in a `cuda` build.
#[cfg(feature = "cuda")]
type Gpu = Arc<fused_kernels::cuda::GpuDevice>;
#[cfg(not(feature = "cuda"))]
type Gpu = std::convert::Infallible;

/// The GPU for `--device cuda`, or `None` (CPU) with a log line saying why there is none.
fn open_gpu(device: Device) -> Option<Gpu> {
    if device == Device::Cpu {
        return None;
    }
    #[cfg(feature = "cuda")]
    match fused_kernels::cuda::GpuDevice::open(0) {
        Ok(gpu) => {
            tracing::info!(name = gpu.name(), arch = %gpu.arch(), "running on the GPU");
            Some(Arc::new(gpu))
        }
        Err(error) => {
            tracing::warn!(%error, "--device cuda: no usable GPU; falling back to the CPU");
            None
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        tracing::warn!(
            "--device cuda: this build has no CUDA support (feature `cuda`); using the CPU"
        );
        None
    }
}

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
        layout: args.kv_layout.parse()?,
        pool_bytes: args.kv_memory_mib << 20,
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

/// The forward pass and the KV region on the chosen device.
fn forward_and_kv(
    gpu: Option<Gpu>,
    model: Option<Model>,
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
            use crate::model::cuda::{GpuModel, GpuOptions};
            let options = GpuOptions {
                graphs: !args.no_cuda_graphs,
                max_graph_batch: args.max_seqs.next_power_of_two(),
                max_context,
                max_batch_tokens: match token_budget(args)? {
                    TokenBudget::Fixed(tokens) => tokens,
                    TokenBudget::Auto { max, .. } => max,
                },
                max_seqs: args.max_seqs,
                ..GpuOptions::default()
            };
            let forward = match (model, args.load_format, &args.model) {
                (Some(model), _, _) => GpuModel::from_host(gpu.clone(), &model, options)?,
                (None, LoadFormat::Auto, Some(dir)) => {
                    GpuModel::from_checkpoint(gpu.clone(), config.clone(), Path::new(dir), options)?
                }
                (None, _, _) => GpuModel::dummy(gpu.clone(), config.clone(), args.seed, options)?,
            };
            let kv_config = KvConfig {
                pool_bytes: gpu_kv_pool_bytes(&gpu, args.gpu_memory_utilization)?,
                ..kv_config(args, &forward, max_context)?
            };
            let kv = KvManager::cuda(&kv_config, gpu.context().clone())
                .context("reserving the KV region in GPU memory")?;
            Ok((Box::new(forward), kv))
        }
        #[cfg(not(feature = "cuda"))]
        Some(never) => {
            let _ = (config, max_context, args);
            match never {}
        }
    }
}

/// Bytes of GPU memory for KV pages: free memory now (weights and work buffers are already
/// allocated) less the `1 − utilization` share of the device that the daemon leaves alone.
#[cfg(feature = "cuda")]
fn gpu_kv_pool_bytes(gpu: &Gpu, utilization: f64) -> anyhow::Result<usize> {
    if !(utilization > 0.0 && utilization <= 1.0) {
        bail!("--gpu-memory-utilization must be in (0, 1], got {utilization}");
    }
    let (free, total) = gpu.memory()?;
    let kept_back = ((1.0 - utilization) * total as f64) as usize;
    let pool = free.saturating_sub(kept_back);
    tracing::info!(free, total, utilization, pool, "GPU memory for the KV pool");
    if pool < crate::kv::DEFAULT_PAGE_BYTES {
        bail!(
            "--gpu-memory-utilization {utilization}: {free} bytes free of {total} leave no room for KV pages; raise it"
        );
    }
    Ok(pool)
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let gpu = open_gpu(args.device);
    let (model, config, codec, default_name) = load(&args, gpu.is_some())?;
    let max_context = args.max_context.min(config.max_positions);
    let (model, kv) = forward_and_kv(gpu, model, &config, max_context, &args)?;
    let kv_stats = kv.stats();
    tracing::info!(
        backend = kv_stats.backend,
        pages = kv_stats.pages_total,
        page_bytes = kv_stats.page_bytes,
        tokens_per_page = kv_stats.tokens_per_page,
        capacity_tokens = kv_stats.capacity_tokens,
        "KV region reserved"
    );
    let policy: Policy = args.scheduler.parse()?;
    let scheduler = Scheduler::new(SchedulerConfig {
        token_budget: token_budget(&args)?,
        max_num_seqs: args.max_seqs,
        // Admission (`capacity` below) is the one bound on queued requests; the scheduler's
        // queue never refuses what admission let in.
        max_queue: args.max_seqs + args.max_queue,
        policy,
    })?;
    let served_model_name = args.served_model_name.clone().unwrap_or(default_name);
    let metrics = Arc::new(Metrics::new(
        &served_model_name,
        kv_stats.page_bytes,
        kv_stats.pages_total,
    )?);
    let codec = Arc::new(codec);
    let (engine, engine_thread) = engine::spawn(EngineParts {
        model,
        kv,
        scheduler,
        metrics: metrics.clone(),
        codec: codec.clone(),
        eos_ids: codec.eos_ids().to_vec(),
        max_context,
        capacity: args.max_seqs + args.max_queue,
        log_requests: !args.disable_log_requests,
        prefix_caching: prefix_hasher(&args, &served_model_name),
    })?;
    let state = Arc::new(AppState {
        engine: engine.clone(),
        tokenizer: server::tokenize::TokenizerPool::new(codec.clone()),
        codec,
        metrics,
        served_model_name,
        max_context,
        api_key: args.api_key.as_deref().map(server::ApiKey::new),
        protect_metrics: args.protect_metrics,
        ready: Default::default(),
        started: std::time::SystemTime::now(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let served = runtime.block_on(serve_http(&args, state));
    engine.shutdown();
    if engine_thread.join().is_err() || engine.has_panicked() {
        bail!("the engine thread panicked; exiting so that the replica is restarted");
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// The token hasher of the KV prefix cache, seeded with what makes K/V differ for equal token
/// ids; `None` with `--no-enable-prefix-caching`.
fn prefix_hasher(args: &ServeArgs, served_model_name: &str) -> Option<Arc<engine::PrefixHasher>> {
    if args.no_enable_prefix_caching {
        tracing::info!("prefix caching is off");
        return None;
    }
    let patch = args.patch_sha256.clone().or_else(|| {
        args.patch_tokenizer
            .as_ref()
            .map(|p| p.display().to_string())
    });
    let identity = format!(
        "{served_model_name}|{:?}|{}|{:?}|{}|{}",
        args.model, args.seed, patch, args.kv_layout, args.kv_block_size
    );
    Some(Arc::new(engine::PrefixHasher::new(&identity)))
}

async fn serve_http(args: &ServeArgs, state: Arc<AppState>) -> anyhow::Result<()> {
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .context("--host/--port")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    state.ready.store(true, Ordering::Release);
    tracing::info!(%addr, model = %state.served_model_name, "serving the OpenAI API");
    let (signalled_tx, mut signalled) = tokio::sync::watch::channel(false);
    let drain_state = state.clone();
    let shutdown = async move {
        wait_for_signal().await;
        tracing::info!(
            in_flight = drain_state.engine.in_flight(),
            "draining: not ready, no new requests"
        );
        drain_state.ready.store(false, Ordering::Release);
        drain_state.engine.start_draining();
        let _ = signalled_tx.send(true);
    };
    let limits = ConnectionLimits {
        max_connections: args.max_connections,
        header_read_timeout: Duration::from_secs(args.http_timeout_s),
        write_timeout: Duration::from_secs(args.write_timeout_s),
    };
    let refused = {
        let metrics = state.metrics.clone();
        move || metrics.connections_refused.inc()
    };
    let mut server = tokio::spawn(server::listener::serve(
        listener,
        server::router(state.clone()),
        limits,
        refused,
        shutdown,
    ));
    let drain = Duration::from_secs(args.drain_timeout_s);
    let engine = state.engine.clone();
    tokio::select! {
        result = &mut server => result?,
        () = engine.stopped() => {
            // In-flight requests already got their error; give their responses a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
            bail!("the engine stopped");
        }
        _ = async {
            let _ = signalled.wait_for(|s| *s).await;
            tokio::time::sleep(drain).await;
        } => tracing::warn!(in_flight = state.engine.in_flight(), "drain timeout: stopping with requests in flight"),
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
