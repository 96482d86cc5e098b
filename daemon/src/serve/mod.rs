//! `fused-daemon serve`, started the way vLLM starts: flags are checked, the port is bound
//! first (`/health` 200, `/ready` 503 with the step start-up is in), then the device is opened,
//! the weights read (progress and bytes/s logged), the KV region reserved and the engine thread
//! started; only then does `/ready` turn 200. A port in use or a model that is not there fails
//! before any weight is read. On SIGTERM: not ready, stop accepting, drain, exit 0.
//!
//! - `args`: the command line (vLLM's flag names included) and the checks that need no I/O;
//! - `load`: where the model is, reading it with progress, tokenizer, chat template, patch;
//! - `device`: `--device` resolved to a GPU or the CPU, the forward pass and the KV region.

mod args;
mod device;
mod load;

pub use args::{Device, Dtype, KvLayoutArg, LoadFormat, Quantization, SchedulerArg, ServeArgs};
pub use load::{DEFAULT_MODEL_FILE, apply_patch, model_cache_dir, open_model};

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::{self, EngineHandle, EngineParts};
use crate::metrics::{CacheInfo, Metrics};
use crate::sched::{Scheduler, SchedulerConfig};
use crate::server::hand_off::{self, HandOff};
use crate::server::listener::ConnectionLimits;
use crate::server::startup::{self, Startup};
use crate::server::{self, AppState};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.check()?;
    if args.load_format == LoadFormat::Auto {
        load::model_path(args.model_spec()?)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = bind(&args.host, args.port)?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let startup = Startup::new("starting");
    let hand_off = HandOff::new();
    let metrics_cell: Arc<OnceLock<Arc<Metrics>>> = Arc::default();
    let (stop_accepting, stop) = watch::channel(false);
    let (signalled_tx, signalled) = watch::channel(false);
    let server = runtime.spawn(server::listener::serve(
        listener,
        startup::router(startup.clone()).layer(axum::middleware::from_fn_with_state(
            hand_off.clone(),
            hand_off::mark,
        )),
        ConnectionLimits {
            max_connections: args.max_connections,
            header_read_timeout: Duration::from_secs(args.http_timeout_s),
            write_timeout: Duration::from_secs(args.write_timeout_s),
        },
        {
            let metrics = metrics_cell.clone();
            move || {
                if let Some(m) = metrics.get() {
                    m.connections_refused.inc();
                }
            }
        },
        async move {
            let mut stop = stop;
            let _ = stop.wait_for(|s| *s).await;
        },
    ));
    runtime.spawn({
        let startup = startup.clone();
        async move {
            wait_for_signal().await;
            if !startup.is_serving() {
                // Nothing runs yet that needs draining.
                tracing::info!(step = %startup.step(), "signal during start-up: stopping");
                std::process::exit(0);
            }
            let _ = signalled_tx.send(true);
        }
    });
    let (state, engine_thread) = match start(&args, &startup) {
        Ok(started) => started,
        Err(error) => {
            let _ = stop_accepting.send(true);
            let _ = runtime.block_on(server);
            return Err(error);
        }
    };
    let _ = metrics_cell.set(state.metrics.clone());
    startup.serve(server::router(state.clone()));
    state.ready.store(true, Ordering::Release);
    tracing::info!(
        addr = %format!("{}:{}", args.host, args.port),
        model = %state.served_model_name,
        "serving the OpenAI API; ready"
    );
    let engine = state.engine.clone();
    let served = runtime.block_on(supervise(
        state,
        server,
        signalled,
        stop_accepting,
        hand_off,
        Duration::from_secs(args.drain_timeout_s),
    ));
    engine.shutdown();
    if engine_thread.join().is_err() || engine.has_panicked() {
        bail!("the engine thread panicked; exiting so that the replica is restarted");
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds `host:port` at once (before anything is loaded), so a port in use fails in
/// milliseconds and probes get answers while the model loads.
fn bind(host: &str, port: u16) -> anyhow::Result<std::net::TcpListener> {
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .with_context(|| format!("--host {host} --port {port}: not an address"))?;
    let listener = std::net::TcpListener::bind(addr).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "cannot listen on {addr}: the port is in use by another process; stop it or \
                 choose another with --port"
            )
        } else {
            anyhow::anyhow!("cannot listen on {addr}: {error}")
        }
    })?;
    listener.set_nonblocking(true)?;
    tracing::info!(%addr, "listening: /health answers now, /ready once the model is loaded");
    Ok(listener)
}

/// Opens the device, loads the model, reserves KV and starts the engine, telling `startup`
/// each step.
fn start(
    args: &ServeArgs,
    startup: &Startup,
) -> anyhow::Result<(Arc<AppState>, std::thread::JoinHandle<()>)> {
    let step = |s: String| startup.set_step(s);
    step("opening the device".into());
    let gpu = device::open_gpu(args.device)?;
    args.dtype.check(gpu.is_some())?;
    Quantization::check(args.quantization, gpu.is_some())?;
    if args.quantization == Some(Quantization::Gguf) {
        let file = match args.load_format {
            LoadFormat::Auto => Some(load::model_path(args.model_spec()?)?),
            LoadFormat::Dummy => None,
        };
        Quantization::check_model(args.quantization, file.as_deref())?;
    }
    let loaded = load::load(args, gpu.is_some(), &step)?;
    let max_context = args.max_context.min(loaded.config.max_positions);
    step("reserving KV memory".into());
    let (model, kv) = device::forward_and_kv(
        gpu,
        loaded.model,
        loaded.vocab_patch.as_ref(),
        &loaded.config,
        max_context,
        args,
    )?;
    let kv_stats = kv.stats();
    tracing::info!(
        backend = kv_stats.backend,
        pages = kv_stats.pages_total,
        page_bytes = kv_stats.page_bytes,
        tokens_per_page = kv_stats.tokens_per_page,
        capacity_tokens = kv_stats.capacity_tokens,
        "KV region reserved"
    );
    let cache = CacheInfo::from_kv(
        &kv_stats,
        model.kv_element_bytes(),
        args.gpu_memory_utilization,
        !args.no_enable_prefix_caching,
    );
    let scheduler = Scheduler::new(SchedulerConfig {
        token_budget: args.token_budget()?,
        max_num_seqs: args.max_seqs,
        // Admission (`capacity` below) is the one bound on queued requests; the scheduler's
        // queue never refuses what admission let in.
        max_queue: args.max_seqs + args.max_queue,
        policy: args.scheduler.into(),
    })?;
    let served_model_name = args
        .served_model_name
        .clone()
        .unwrap_or(loaded.default_name);
    let metrics = Arc::new(Metrics::new(&served_model_name, max_context, &cache)?);
    metrics.set_model_info(
        cache.cache_dtype,
        model.quantization(),
        loaded.config.arch.name(),
    );
    let codec = Arc::new(loaded.codec);
    step("starting the engine".into());
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
        prefix_caching: prefix_hasher(args, &served_model_name),
    })?;
    let state = Arc::new(AppState {
        engine,
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
    Ok((state, engine_thread))
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
        "{served_model_name}|{:?}|{}|{:?}|{:?}|{}",
        args.model, args.seed, patch, args.kv_layout, args.kv_block_size
    );
    Some(Arc::new(engine::PrefixHasher::new(&identity)))
}

/// Serves until a signal or until the engine stops. On a signal: not ready; kept-alive clients
/// are handed off (every response closes its connection until no exchange has been open for a
/// quiet spell); then no new requests or connections, and in-flight ones finish within `drain`.
async fn supervise(
    state: Arc<AppState>,
    mut server: JoinHandle<()>,
    mut signalled: watch::Receiver<bool>,
    stop_accepting: watch::Sender<bool>,
    hand_off: Arc<HandOff>,
    drain: Duration,
) -> anyhow::Result<()> {
    let engine: EngineHandle = state.engine.clone();
    tokio::select! {
        result = &mut server => return Ok(result?),
        () = engine.stopped() => {
            // In-flight requests already got their error; give their responses a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
            bail!("the engine stopped");
        }
        _ = signalled.wait_for(|s| *s) => {}
    }
    tracing::info!(
        in_flight = engine.in_flight(),
        "draining: not ready; connections handed off, then no new requests"
    );
    state.ready.store(false, Ordering::Release);
    hand_off.start_closing();
    hand_off.settle(hand_off::QUIET, drain).await;
    engine.start_draining();
    let _ = stop_accepting.send(true);
    tokio::select! {
        result = &mut server => result?,
        () = engine.stopped() => bail!("the engine stopped while draining"),
        () = tokio::time::sleep(drain) => tracing::warn!(
            in_flight = engine.in_flight(),
            "drain timeout: stopping with requests in flight"
        ),
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
