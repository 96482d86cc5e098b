//! Autoscaling end to end against a real kube-apiserver and controller manager (v1.20, loopback)
//! with replicas that really serve: the operator and its activator run in this process; each
//! daemon Pod the controller manager creates runs as a local `fused-daemon` (SmolLM2-135M, CPU)
//! under a stand-in kubelet (bind, readiness from `/ready`, preStop + SIGTERM + drain on
//! deletion) behind a made-up Pod IP; clients reach a Service through a stand-in kube-proxy that
//! sends each connection to one of the Service's ready endpoints as the API server lists them.
//! What is not real here: the kubelet, the Pod network and kube-proxy (see `autoscale_support`);
//! the images and the fetch step are covered elsewhere (`operator_pod_serves`, the real-cluster
//! suite).
//!
//! - a `fused-bench` load ramp (Poisson, rising rate) moves replicas 1 → N and, after the load,
//!   back to 1; the signal in `status.autoscaling` is what the daemons' `/metrics` said;
//! - at zero replicas a chat request is held by the activator and answered (200) after the cold
//!   start with its wait reported; 20 concurrent requests during a cold start all succeed
//!   (streaming ones get SSE progress comments); after `scaleToZeroAfter` of quiet the replicas
//!   return to 0 and the Service points at the activator again;
//! - a request held past `activationTimeout` gets 503 with `Retry-After`;
//! - a scale-down during load loses no request.
//!
//! The tests run one at a time (two shared cores): each holds `SERIAL`.

mod autoscale_support;
mod operator_support;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use autoscale_support::*;
use fused_crds::{FusedModel, FusedModelSpec, condition_type};
use fused_e2e::bench::report::ResultFile;
use fused_e2e::k8s::TestCluster;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use operator_support::*;
use serde_json::json;
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// Waits this long at most for anything that involves starting or stopping daemons.
const SLOW: Duration = Duration::from_secs(240);

fn model(name: &str, replicas: i32, autoscaling: serde_json::Value) -> FusedModel {
    let spec: FusedModelSpec = serde_json::from_value(json!({
        "baseModel": {"uri": format!("file://{}", local_model().display()), "format": "gguf"},
        "servedModelName": "smollm2",
        "kvCache": {"maxContextLen": 1024},
        "scheduler": {"tokenBudget": 256, "maxNumSeqs": 2, "maxQueue": 256},
        "replicas": replicas,
        "autoscaling": autoscaling,
        "resources": {"gpus": 0}
    }))
    .expect("test spec");
    let mut model = FusedModel::new(name, spec);
    model.metadata.namespace = None;
    model
}

fn chat(max_tokens: u32, stream: bool) -> serde_json::Value {
    json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

/// What each test runs on: the shared cluster (with its controller manager), the namespace
/// `ns`, a stand-in Pod network and kubelet (the replicas of the models in `never_ready` never
/// turn ready), and the operator with its activator.
async fn start(
    ns: &str,
    never_ready: &[&str],
) -> (
    &'static TestCluster,
    Client,
    tempfile::TempDir,
    PodNet,
    Kubelet,
    Stack,
    Api<FusedModel>,
) {
    let cluster = cluster(true).await;
    let client = cluster.client().expect("client");
    create_namespace(&client, ns).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let net = PodNet::default();
    let kubelet = Kubelet::start(&client, ns, &net, dir.path(), never_ready).await;
    let stack = Stack::start(&client, ns, &net).await;
    let models = Api::namespaced(client.clone(), ns);
    (cluster, client, dir, net, kubelet, stack, models)
}

/// Waits until `name` has `want` (`spec.replicas`, ready replicas).
async fn wait_replicas(models: &Api<FusedModel>, name: &str, want: (i32, i32), what: &str) {
    wait_for(what, SLOW, || async {
        match replicas(models, name).await {
            have if have == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// `spec.replicas` and ready replicas of `name`.
async fn replicas(models: &Api<FusedModel>, name: &str) -> (i32, i32) {
    let model = models.get(name).await.expect("the FusedModel");
    (
        model.spec.replicas,
        model.status.map_or(0, |s| s.ready_replicas),
    )
}

/// The `vllm:num_requests_waiting` signal of `status.autoscaling`, and how many replicas it
/// was read from.
fn waiting_signal(model: &FusedModel) -> Option<(f64, i32)> {
    let autoscaling = model.status.as_ref()?.autoscaling.as_ref()?;
    let signal = autoscaling
        .signals
        .iter()
        .find(|s| s.name == "vllm:num_requests_waiting")?;
    Some((
        signal.current.as_deref()?.parse().ok()?,
        autoscaling.scraped_replicas,
    ))
}

/// The mean `vllm:num_requests_waiting` over the serving Pods, read by the test itself.
async fn daemons_waiting(client: &Client, ns: &str, net: &PodNet) -> Option<f64> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("fused.dev/model"))
        .await
        .ok()?;
    let http = reqwest::Client::new();
    let mut values = Vec::new();
    for pod in pods
        .items
        .iter()
        .filter(|p| fused_operator::endpoints::serves(p))
    {
        let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
        let address = net.resolve((ip, 8000).into());
        let text = http
            .get(format!("http://{address}/metrics"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        values.push(fused_operator::scrape::parse(&text).ok()?.waiting);
    }
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

async fn events(client: &Client, ns: &str) -> Vec<(String, String)> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// `kubectl describe fm` of `name`.
fn describe_fm(cluster: &TestCluster, ns: &str, name: &str) -> String {
    cluster
        .run_kubectl(&["describe", "fm", name, "-n", ns])
        .unwrap_or_else(|e| e.to_string())
}

/// Runs `fused-bench` against `base_url` with `args`; returns its result file.
fn bench(base_url: &str, args: &[&str], dir: &std::path::Path) -> ResultFile {
    let result = dir.join(format!(
        "bench-{}.json",
        Instant::now().elapsed().as_nanos()
    ));
    let output = Command::new(workspace_binary("fused-bench", "FUSED_BENCH_BIN"))
        .args(["--base-url", base_url, "--model", "smollm2"])
        .args(["--tokenizer", &local_model().display().to_string()])
        .args([
            "--disable-tqdm",
            "--result-json",
            &result.display().to_string(),
        ])
        .args(args)
        .output()
        .expect("run fused-bench");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success(),
        "fused-bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    ResultFile::read(&result).expect("the bench result")
}

/// (completed, failed, first error) over every run of a result file.
fn outcome(file: &ResultFile) -> (usize, usize, Option<String>) {
    let runs = match file {
        ResultFile::Single(run) => vec![run.as_ref()],
        ResultFile::Sweep(sweep) => sweep.sweep.iter().collect(),
    };
    let completed = runs.iter().map(|r| r.summary.completed).sum();
    let failed = runs.iter().map(|r| r.summary.failed).sum();
    let error = runs
        .iter()
        .flat_map(|r| r.requests.iter())
        .find_map(|r| r.error.clone());
    (completed, failed, error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_ramp_scales_out_and_back_and_status_reads_the_daemons() {
    let _serial = SERIAL.lock().await;
    let ns = "as-ramp";
    let (cluster, client, dir, net, kubelet, stack, models) = start(ns, &[]).await;
    let name = "ramp";
    create_model(
        &client,
        ns,
        &model(
            name,
            1,
            json!({"minReplicas": 1, "maxReplicas": 3, "targetWaitingRequests": 2,
                   "scaleDownStabilization": "30s"}),
        ),
    )
    .await;
    let started = Instant::now();
    wait_replicas(&models, name, (1, 1), "one ready replica").await;
    println!(
        "first replica ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let proxy = ServiceProxy::start(&client, ns, name, &net).await;
    let base = format!("http://{}", proxy.address);

    // Beside the ramp: the autoscaler's signal against the daemons' own /metrics, sampled by
    // the test every 250 ms, and the replica counts over time.
    let (stop_sampler, stop) = tokio::sync::watch::channel(false);
    let sampler = {
        let client = client.clone();
        let net = net.clone();
        let models = models.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut daemons: Vec<(f64, f64)> = Vec::new();
            let mut status: Vec<(f64, f64, i32)> = Vec::new();
            let mut timeline: Vec<(f64, i32, i32)> = Vec::new();
            let mut last_status = None;
            loop {
                let t = t0.elapsed().as_secs_f64();
                if let Some(mean) = daemons_waiting(&client, ns, &net).await {
                    daemons.push((t, mean));
                }
                if let Ok(model) = models.get(name).await {
                    let signal = waiting_signal(&model);
                    if signal.is_some() && signal != last_status {
                        let (value, scraped) = signal.unwrap_or_default();
                        status.push((t0.elapsed().as_secs_f64(), value, scraped));
                        last_status = signal;
                    }
                    let ready = model.status.as_ref().map_or(0, |s| s.ready_replicas);
                    if timeline
                        .last()
                        .is_none_or(|l| (l.1, l.2) != (model.spec.replicas, ready))
                    {
                        timeline.push((t, model.spec.replicas, ready));
                    }
                }
                if *stop.borrow() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (daemons, status, timeline)
        })
    };

    // The ramp: Poisson arrivals at 0.5, then 1, then 2 requests/s, 20 s each.
    let ramp_dir = dir.path().to_owned();
    let ramp_base = base.clone();
    let ramp = tokio::task::spawn_blocking(move || {
        bench(
            &ramp_base,
            &[
                "--sweep-request-rates",
                "0.5,1,2",
                "--duration",
                "20",
                "--num-prompts",
                "200",
                "--random-input-len",
                "64",
                "--random-output-len",
                "48",
                "--ignore-eos",
                "--request-timeout-s",
                "300",
                "--seed",
                "7",
            ],
            &ramp_dir,
        )
    });
    let result = ramp.await.expect("the ramp");
    let (completed, failed, error) = outcome(&result);
    println!("ramp: {completed} completed, {failed} failed (first error: {error:?})");
    assert_eq!(failed, 0, "no request fails while scaling out: {error:?}");
    assert!(completed > 20, "{completed}");

    // After the load: back to one replica once the stabilisation window has passed.
    let load_end = Instant::now();
    wait_replicas(&models, name, (1, 1), "back to 1 replica").await;
    println!(
        "back to 1 replica {:.1} s after the load ended",
        load_end.elapsed().as_secs_f64()
    );
    stop_sampler.send_replace(true);
    let (daemons, status, timeline) = sampler.await.expect("the sampler");
    println!("replicas over time (s, spec, ready): {timeline:?}");
    let peak = timeline.iter().map(|t| t.1).max().unwrap_or(0);
    assert!(peak >= 2, "the ramp scaled out: {timeline:?}");

    // Every value the autoscaler reported was the daemons' mean within one scrape: between the
    // lowest and the highest the test read in the two seconds before it appeared (interval 1 s),
    // give or take one waiting request the test's sampling missed.
    let mut exact = 0;
    for (t, value, scraped) in &status {
        let window: Vec<f64> = daemons
            .iter()
            .filter(|(at, _)| *at >= t - 2.0 && *at <= *t)
            .map(|(_, v)| *v)
            .collect();
        if window.is_empty() {
            continue;
        }
        let low = window.iter().copied().fold(f64::INFINITY, f64::min);
        let high = window.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // A request can wait for less than the sampler's 250 ms: the operator's scrape may see
        // it and the test's never. Such a transient moves the mean by one request at one
        // replica (the signal's resolution), never more (CI saw status 1 from 1 replica while
        // every sample around it read 0).
        let slack = 1.0 / f64::from((*scraped).max(1)) + 1e-3;
        assert!(
            *value >= low - slack && *value <= high + slack,
            "at {t:.1} s the status said {value} (from {scraped} replicas) while the daemons said \
             {window:?}"
        );
        if window.iter().any(|v| (v - value).abs() < 1e-3) {
            exact += 1;
        }
    }
    println!(
        "status values checked against the daemons: {} ({} equal to a reading of the same second)",
        status.len(),
        exact
    );
    assert!(
        status.iter().any(|s| s.1 > 0.0),
        "the ramp made requests wait: {status:?}"
    );

    let reasons: Vec<String> = events(&client, ns).await.into_iter().map(|e| e.0).collect();
    assert!(reasons.contains(&"ScaledUp".to_owned()), "{reasons:?}");
    assert!(reasons.contains(&"ScaledDown".to_owned()), "{reasons:?}");
    println!("{}", describe_fm(cluster, ns, name));
    drop(proxy);
    stack.stop().await;
    kubelet.stop().await;
}

/// Sends `body` through the Service proxy as a client of `http://<host>` would.
async fn post(
    http: &reqwest::Client,
    proxy: &ServiceProxy,
    host: &str,
    body: &serde_json::Value,
) -> reqwest::Result<reqwest::Response> {
    http.post(format!("http://{}/v1/chat/completions", proxy.address))
        .header(reqwest::header::HOST, host)
        .json(body)
        .send()
        .await
}

/// The IPs the Service `name`'s endpoints list.
async fn endpoint_ips(client: &Client, ns: &str, name: &str) -> Vec<IpAddr> {
    Api::<Endpoints>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("get endpoints")
        .map(|e| {
            fused_operator::endpoints::ready_addresses(&e)
                .into_iter()
                .map(|a| a.ip())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn from_zero_requests_are_held_answered_and_the_model_returns_to_zero() {
    let _serial = SERIAL.lock().await;
    let ns = "as-zero";
    let (cluster, client, _dir, net, kubelet, stack, models) = start(ns, &[]).await;
    let name = "on-demand";
    let host = format!("{name}.{ns}.svc:8000");
    create_model(
        &client,
        ns,
        &model(
            name,
            0,
            json!({"minReplicas": 0, "maxReplicas": 2, "targetWaitingRequests": 8,
                   "scaleToZeroAfter": "15s", "activationTimeout": "120s"}),
        ),
    )
    .await;
    let activator_ip = IpAddr::V4(ACTIVATOR_IP);

    // At zero: the Service has no selector and its endpoints are the activator's.
    wait_for("the Service to point at the activator", WAIT, || async {
        let ips = endpoint_ips(&client, ns, name).await;
        if ips == [activator_ip] {
            Ok(())
        } else {
            Err(format!("{ips:?}"))
        }
    })
    .await;
    let service = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("the Service");
    assert_eq!(service.spec.and_then(|s| s.selector), None, "no selector");
    let proxy = ServiceProxy::start(&client, ns, name, &net).await;
    let http = reqwest::Client::new();

    // One chat request at zero: held, the model woken, answered after the cold start.
    let sent = Instant::now();
    let response = post(&http, &proxy, &host, &chat(8, false))
        .await
        .expect("the first request");
    let status = response.status();
    let waited: u64 = response
        .headers()
        .get("x-fused-activator-wait-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("the activator reports the wait");
    let body: serde_json::Value = response.json().await.expect("a JSON body");
    println!(
        "cold start: {status} after {:.1} s, held {waited} ms: {}",
        sent.elapsed().as_secs_f64(),
        body["choices"][0]["message"]["content"]
    );
    assert_eq!(status, 200, "{body}");
    assert!(waited > 0);
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    );
    assert_eq!(
        replicas(&models, name).await.0,
        1,
        "the activator set one replica"
    );

    // With a replica serving, the Service points at it: the activator is out of the data path.
    wait_for("the Service to point at the replica", WAIT, || async {
        let ips = endpoint_ips(&client, ns, name).await;
        if !ips.is_empty() && !ips.contains(&activator_ip) {
            Ok(())
        } else {
            Err(format!("{ips:?}"))
        }
    })
    .await;
    let direct = post(&http, &proxy, &host, &chat(4, false))
        .await
        .expect("a request to the replica");
    assert_eq!(direct.status(), 200);
    assert!(
        direct.headers().get("x-fused-activator-wait-ms").is_none(),
        "served by the replica, not through the activator"
    );

    // Quiet: after scaleToZeroAfter the replicas go back to zero, the Service to the activator.
    let quiet = Instant::now();
    wait_for("zero replicas after 15 s of quiet", SLOW, || async {
        let pods = pods_of(&client, ns, name).await;
        match (replicas(&models, name).await.0, pods.len()) {
            (0, 0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    println!(
        "back to zero {:.1} s after the last request",
        quiet.elapsed().as_secs_f64()
    );
    assert!(
        quiet.elapsed() >= Duration::from_secs(14),
        "not before scaleToZeroAfter"
    );
    wait_for(
        "the Service to point at the activator again",
        WAIT,
        || async {
            let ips = endpoint_ips(&client, ns, name).await;
            if ips == [activator_ip] {
                Ok(())
            } else {
                Err(format!("{ips:?}"))
            }
        },
    )
    .await;
    let model = models.get(name).await.expect("the model");
    let autoscaling = model
        .status
        .as_ref()
        .and_then(|s| s.autoscaling.clone())
        .expect("status.autoscaling");
    assert!(
        autoscaling
            .last_scale_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("no request for")),
        "{autoscaling:?}"
    );
    assert!(has(&model, condition_type::READY, "False", "ScaledToZero"));

    // Twenty concurrent requests during a cold start (four of them streaming): all answered.
    let burst = Instant::now();
    let requests = (0..20).map(|i| {
        let http = http.clone();
        let host = host.clone();
        let proxy = &proxy;
        async move {
            let stream = i % 5 == 0;
            let response = post(&http, proxy, &host, &chat(8, stream)).await;
            match response {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    (i, status, stream, text)
                }
                Err(error) => (i, 0, stream, error.to_string()),
            }
        }
    });
    let answers = futures::future::join_all(requests).await;
    println!(
        "20 concurrent requests during a cold start answered in {:.1} s",
        burst.elapsed().as_secs_f64()
    );
    for (i, status, stream, text) in &answers {
        assert_eq!(*status, 200, "request {i}: {text}");
        if *stream {
            assert!(
                text.starts_with(": fused-activator:"),
                "request {i} streams progress comments first: {text}"
            );
            assert!(
                text.contains("\"chat.completion.chunk\""),
                "request {i}: {text}"
            );
            assert!(
                text.trim_end().ends_with("data: [DONE]"),
                "request {i}: {text}"
            );
        } else {
            let body: serde_json::Value = serde_json::from_str(text).expect("a JSON answer");
            assert!(
                body["choices"][0]["message"]["content"].is_string(),
                "{text}"
            );
        }
    }
    let reasons: Vec<String> = events(&client, ns).await.into_iter().map(|e| e.0).collect();
    assert!(reasons.contains(&"Activated".to_owned()), "{reasons:?}");
    assert!(reasons.contains(&"ScaledToZero".to_owned()), "{reasons:?}");
    let log = kubelet.log();
    println!(
        "kubelet: {} Pods started, {} stopped",
        log.started.len(),
        log.stopped.len()
    );
    assert!(
        log.stopped.values().all(|(_, _, clean)| *clean),
        "every daemon drained and exited 0"
    );
    println!("{}", describe_fm(cluster, ns, name));
    drop(proxy);
    stack.stop().await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_that_cannot_start_gets_503_with_retry_after_at_the_activation_timeout() {
    let _serial = SERIAL.lock().await;
    let ns = "as-stuck";
    let name = "stuck";
    let (_cluster, client, _dir, net, kubelet, stack, models) = start(ns, &[name]).await;
    create_model(
        &client,
        ns,
        &model(
            name,
            0,
            json!({"minReplicas": 0, "maxReplicas": 1, "targetWaitingRequests": 4,
                   "activationTimeout": "3s"}),
        ),
    )
    .await;
    wait_for("the Service to point at the activator", WAIT, || async {
        let ips = endpoint_ips(&client, ns, name).await;
        if ips == [IpAddr::V4(ACTIVATOR_IP)] {
            Ok(())
        } else {
            Err(format!("{ips:?}"))
        }
    })
    .await;
    let proxy = ServiceProxy::start(&client, ns, name, &net).await;
    let http = reqwest::Client::new();
    let host = format!("{name}.{ns}.svc");
    let sent = Instant::now();
    let response = post(&http, &proxy, &host, &chat(8, false))
        .await
        .expect("a response");
    let elapsed = sent.elapsed();
    assert_eq!(response.status(), 503);
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: serde_json::Value = response.json().await.expect("an OpenAI error");
    println!(
        "after {:.1} s: 503, Retry-After {retry_after:?}: {body}",
        elapsed.as_secs_f64()
    );
    assert_eq!(retry_after.as_deref(), Some("10"));
    assert!(elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(15));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("activationTimeout")),
        "{body}"
    );
    assert_eq!(
        replicas(&models, name).await.0,
        1,
        "it was woken nonetheless"
    );

    // A streaming client gets its progress, then the error as an event.
    let text = post(&http, &proxy, &host, &chat(8, true))
        .await
        .expect("a response")
        .text()
        .await
        .expect("the stream");
    println!("streaming: {text}");
    assert!(text.starts_with(": fused-activator:"), "{text}");
    assert!(text.contains("\"code\":503"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // An unknown host is a 404 naming it.
    let unknown = post(&http, &proxy, "nothing.as-stuck.svc", &chat(8, false))
        .await
        .expect("a response");
    assert_eq!(unknown.status(), 404);
    drop(proxy);
    stack.stop().await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scale_down_during_load_loses_no_request() {
    let _serial = SERIAL.lock().await;
    let ns = "as-down";
    let (_cluster, client, dir, net, kubelet, stack, models) = start(ns, &[]).await;
    let name = "drain";
    // Two replicas, a target the load never reaches. `minReplicas: 2` holds both while they
    // start (on a loaded machine the second one can take longer than the 25 s window, and the
    // autoscaler would otherwise remove it before the load begins); it drops to 0 once the load
    // runs on both, and the autoscaler then removes one replica while the load runs.
    create_model(
        &client,
        ns,
        &model(
            name,
            2,
            json!({"minReplicas": 2, "maxReplicas": 2, "targetWaitingRequests": 16,
                   "scaleDownStabilization": "25s"}),
        ),
    )
    .await;
    wait_replicas(&models, name, (2, 2), "two ready replicas").await;
    let proxy = ServiceProxy::start(&client, ns, name, &net).await;
    let base = format!("http://{}", proxy.address);
    let bench_dir = dir.path().to_owned();
    let load_start = Instant::now();
    let load = tokio::task::spawn_blocking(move || {
        bench(
            &base,
            &[
                "--request-rate",
                "1",
                "--duration",
                "50",
                "--num-prompts",
                "100",
                "--random-input-len",
                "64",
                "--random-output-len",
                "32",
                "--ignore-eos",
                "--request-timeout-s",
                "300",
                "--seed",
                "11",
            ],
            &bench_dir,
        )
    });
    let routed = proxy.routed.clone();
    wait_for("connections to both replicas", SLOW, || async {
        match routed.lock().expect("routed").len() {
            endpoints if endpoints >= 2 => Ok(()),
            endpoints => Err(format!("{endpoints} endpoint(s)")),
        }
    })
    .await;
    let release = json!({"spec": {"autoscaling": {"minReplicas": 0}}});
    models
        .patch(name, &PatchParams::default(), &Patch::Merge(&release))
        .await
        .expect("lower minReplicas");
    let scaled_down = wait_for("the scale-down to 1 during the load", SLOW, || async {
        match replicas(&models, name).await {
            (1, _) => Ok(load_start.elapsed()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let result = load.await.expect("the load");
    let load_time = load_start.elapsed();
    let (completed, failed, error) = outcome(&result);
    println!(
        "scaled 2 → 1 at {:.1} s of a {:.1} s load: {completed} completed, {failed} failed \
         (first error: {error:?})",
        scaled_down.as_secs_f64(),
        load_time.as_secs_f64()
    );
    assert!(
        scaled_down < load_time,
        "the scale-down happened during the load"
    );
    assert_eq!(failed, 0, "no request lost: {error:?}");
    assert!(completed >= 20, "{completed}");
    let log = kubelet.log();
    let stopped: Vec<_> = log.stopped.iter().collect();
    println!(
        "stopped replicas (SIGTERM → exit): {:?}",
        stopped
            .iter()
            .map(|(name, (term, exit, clean))| (name, exit.duration_since(*term), clean))
            .collect::<Vec<_>>()
    );
    assert_eq!(stopped.len(), 1, "one replica was removed");
    assert!(stopped[0].1.2, "it drained and exited 0");
    let routed = proxy.routed.lock().expect("routed").clone();
    println!("connections per endpoint: {routed:?}");
    assert!(
        routed.len() >= 2,
        "both replicas took connections before the scale-down"
    );
    drop(proxy);
    stack.stop().await;
    kubelet.stop().await;
}
