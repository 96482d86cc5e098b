//! Optional export of the daemon's spans to an OpenTelemetry collector over OTLP/HTTP
//! (protobuf): each request's `http` span (its `request_id`, method, path) with the engine's
//! span of each choice under it. Off unless `--otlp-traces-endpoint` (vLLM's flag) or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names the collector's traces URL.
//!
//! Spans leave in batches from the SDK's own thread; the HTTP requests run on a one-thread
//! runtime of their own with the daemon's `reqwest` client, so exporting never touches the
//! serving runtime or the engine thread.
//!
//! Must not: block a request, or fail the daemon when the collector is down (export errors are
//! the SDK's to log and drop).

use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::TracerProvider;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps the exporter alive; flushes the spans still buffered when dropped.
pub struct OtlpExport {
    provider: SdkTracerProvider,
}

impl Drop for OtlpExport {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("OTLP export: flushing the last spans failed: {error}");
        }
    }
}

/// A `tracing` layer that exports spans to `endpoint` (the collector's full traces URL, e.g.
/// `http://otel-collector:4318/v1/traces`), and the guard that keeps it running.
pub fn layer<S>(endpoint: &str) -> anyhow::Result<(impl Layer<S> + use<S>, OtlpExport)>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let client = RuntimeClient::new()?;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("fused-daemon")
                .build(),
        )
        .build();
    let tracer = provider.tracer("fused-daemon");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok((layer, OtlpExport { provider }))
}

/// The daemon's `reqwest` client on a runtime of its own (the SDK's export thread has none).
#[derive(Debug)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl RuntimeClient {
    fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()?;
        let client = reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?;
        Ok(Self { client, runtime })
    }
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let response = self
            .runtime
            .spawn(async move {
                let response = client.execute(request).await?;
                let status = response.status();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, body))
            })
            .await??;
        let (status, body) = response;
        Ok(Response::builder().status(status).body(body)?)
    }
}
