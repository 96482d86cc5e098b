//! `fused-operator`: runs the FusedModel controller in a cluster — leader election on a Lease,
//! the activator (on every replica, leader or not), `/metrics` and `/healthz`, JSON logs, and a
//! graceful stop on SIGTERM (in-flight reconciles and held requests finish, the Lease is
//! released for the next leader).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use fused_operator::activator::Activator;
use fused_operator::leader::{LeaderElector, LeaseTiming, default_identity};
use fused_operator::{Context, Metrics, OperatorConfig, controller, http};
use tokio::sync::watch;

const IN_CLUSTER_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[derive(Debug, Parser)]
#[command(
    name = "fused-operator",
    version,
    about = "Reconcile FusedModels into serving daemons"
)]
struct Cli {
    #[command(flatten)]
    config: OperatorConfig,
    /// Address of /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Address of the activator (where scale-to-zero Services point while no replica serves).
    #[arg(long, default_value = "0.0.0.0:8081")]
    activator_addr: SocketAddr,
    /// Run no activator in this process.
    #[arg(long)]
    no_activator: bool,
    /// Namespace of the leader-election Lease (default: the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "fused-operator")]
    lease_name: String,
    /// Log line format.
    #[arg(long, value_enum, default_value = "json")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    match cli.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: signal received");
        signal_tx.send_replace(true);
    });

    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let server = tokio::spawn(http::serve(
        cli.metrics_addr,
        metrics.clone(),
        stopped(stop_rx.clone()),
    ));

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let activator = if cli.no_activator {
        None
    } else {
        let ctx = Context::new(client.clone(), cli.config.clone(), metrics.clone())
            .await
            .context("starting the activator")?;
        let listener = tokio::net::TcpListener::bind(cli.activator_addr)
            .await
            .with_context(|| format!("binding the activator to {}", cli.activator_addr))?;
        let activator = Activator::start(&ctx)
            .await
            .context("starting the activator")?;
        tracing::info!(addr = %cli.activator_addr, "activator listening");
        Some(tokio::spawn(
            activator.serve(listener, stopped(stop_rx.clone())),
        ))
    };
    let namespace = cli
        .leader_election_namespace
        .or_else(|| std::fs::read_to_string(IN_CLUSTER_NAMESPACE).ok())
        .map(|ns| ns.trim().to_owned())
        .unwrap_or_else(|| "default".to_owned());
    let timing = LeaseTiming::default();
    timing.check().map_err(anyhow::Error::msg)?;
    let elector = LeaderElector::new(
        client.clone(),
        &namespace,
        &cli.lease_name,
        &default_identity(),
        timing,
    );
    tracing::info!(identity = elector.identity(), lease = %cli.lease_name, %namespace, "waiting to lead");
    tokio::select! {
        () = elector.acquire() => {}
        () = stopped(stop_rx.clone()) => {
            wait_activator(activator).await;
            return Ok(());
        }
    }
    metrics.leader.set(1);

    let ctx = Arc::new(
        Context::new(client, cli.config, metrics.clone())
            .await
            .context("starting the controller")?,
    );
    let outcome = match elector
        .run_while_leading(controller::run(ctx, stopped(stop_rx.clone())))
        .await
    {
        Some(()) => Ok(()),
        None => Err(anyhow::anyhow!(
            "lost the leader Lease; stopped reconciling, exiting so a restart can campaign again"
        )),
    };
    metrics.leader.set(0);
    if let Err(error) = elector.release().await {
        tracing::warn!(%error, "releasing the leader Lease");
    }
    stop_tx.send_replace(true);
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "the metrics server failed"),
        Err(error) => tracing::warn!(%error, "the metrics server task failed"),
    }
    wait_activator(activator).await;
    tracing::info!("stopped");
    outcome
}

/// Waits for the activator to finish the requests it holds (it stops on the stop flag).
async fn wait_activator(activator: Option<tokio::task::JoinHandle<std::io::Result<()>>>) {
    if let Some(task) = activator {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the activator failed"),
            Err(error) => tracing::warn!(%error, "the activator task failed"),
        }
    }
}

/// Completes once the stop flag is set.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
