//! `fused-operator`: runs the FusedModel controller in a cluster — leader election on a Lease,
//! `/metrics` and `/healthz`, JSON logs, and a graceful stop on SIGTERM (in-flight reconciles
//! finish, the Lease is released for the next leader).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
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
        () = stopped(stop_rx.clone()) => return Ok(()),
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
    tracing::info!("stopped");
    outcome
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
