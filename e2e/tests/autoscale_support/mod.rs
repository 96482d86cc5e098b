//! Scaffolding of the autoscaling tests (test logic stays in `operator_autoscale.rs`): what the
//! loopback cluster lacks to run replicas — a stand-in kubelet that binds each daemon Pod the
//! controller manager creates to a node, runs its daemon container as a local `fused-daemon`
//! process behind a made-up Pod IP, reports it Ready as its readiness probe says, and on
//! deletion runs the preStop sleep, sends SIGTERM and waits for the drain before removing the
//! Pod; a stand-in Pod network (made-up Pod IP → local socket); a stand-in kube-proxy that sends
//! each connection to one of a Service's ready endpoints, as read from the API server; and an
//! operator with its activator, in this process, reaching Pods through that network.
// Each test uses a different part of this module.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fused_operator::activator::Activator;
use fused_operator::endpoints::ready_addresses;
use fused_operator::pod_network::PodNetwork;
use fused_operator::{Context, Metrics, OperatorConfig};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use crate::operator_support::local_model;
use crate::operator_support::{TEST_DAEMON_IMAGE, workspace_binary};

/// The made-up IP of the activator's "Pod".
pub const ACTIVATOR_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// Port of the activator's endpoints.
pub const ACTIVATOR_PORT: u16 = 8081;
/// Name of the activator's Service in each test namespace.
pub const ACTIVATOR_SERVICE: &str = "fused-activator";

/// The stand-in Pod network: made-up Pod IPs to local sockets.
#[derive(Clone, Default)]
pub struct PodNet {
    map: Arc<Mutex<HashMap<IpAddr, SocketAddr>>>,
}

impl PodNet {
    /// Routes `ip` (any port) to `local`.
    pub fn add(&self, ip: IpAddr, local: SocketAddr) {
        self.map.lock().expect("pod net").insert(ip, local);
    }

    /// Forgets `ip`.
    pub fn remove(&self, ip: IpAddr) {
        self.map.lock().expect("pod net").remove(&ip);
    }

    /// Where a connection to `address` goes.
    pub fn resolve(&self, address: SocketAddr) -> SocketAddr {
        self.map
            .lock()
            .expect("pod net")
            .get(&address.ip())
            .copied()
            .unwrap_or(address)
    }

    /// The operator's view of it.
    pub fn network(&self) -> PodNetwork {
        let net = self.clone();
        PodNetwork::mapped(move |address| net.resolve(address))
    }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// The operator (controller + autoscaler) and its activator, in this process, for `namespace`.
pub struct Stack {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The operator's context.
    pub ctx: Arc<Context>,
}

impl Stack {
    /// Starts them with the autoscaler every second; the activator's Service and endpoints
    /// (a made-up Pod IP routed to its local port) are created in `namespace`.
    pub async fn start(client: &Client, namespace: &str, net: &PodNet) -> Self {
        let mut config = OperatorConfig::with_daemon_image(TEST_DAEMON_IMAGE);
        config.watch_namespace = Some(namespace.to_owned());
        config.autoscale_interval_s = 1;
        config.activator_service = Some(format!("{namespace}/{ACTIVATOR_SERVICE}"));
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let mut ctx = Context::new(client.clone(), config, metrics)
            .await
            .expect("operator context");
        ctx.pod_network = net.network();
        let ctx = Arc::new(ctx);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the activator");
        net.add(
            IpAddr::V4(ACTIVATOR_IP),
            listener.local_addr().expect("activator address"),
        );
        create_activator_service(client, namespace).await;
        let activator = Activator::start(&ctx).await.expect("start the activator");

        let (stop, stopped) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let operator = tokio::spawn(fused_operator::run(ctx.clone(), until(stopped.clone())));
        let serving = tokio::spawn(async move {
            if let Err(error) = activator.serve(listener, until(stopped)).await {
                panic!("the activator failed: {error}");
            }
        });
        Self {
            stop,
            tasks: vec![operator, serving],
            ctx,
        }
    }

    /// Stops both and waits for them.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        for task in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("the operator stops within 60 s")
                .expect("the operator task ends cleanly");
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn create_activator_service(client: &Client, namespace: &str) {
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": ACTIVATOR_SERVICE},
        "spec": {"ports": [{"name": "http", "port": ACTIVATOR_PORT, "protocol": "TCP"}]}
    }))
    .expect("activator Service");
    Api::<Service>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &service)
        .await
        .expect("create the activator Service");
    let endpoints: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": ACTIVATOR_SERVICE},
        "subsets": [{"addresses": [{"ip": ACTIVATOR_IP.to_string()}],
                     "ports": [{"name": "http", "port": ACTIVATOR_PORT, "protocol": "TCP"}]}]
    }))
    .expect("activator Endpoints");
    Api::<Endpoints>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &endpoints)
        .await
        .expect("create the activator Endpoints");
}

/// One daemon process standing in for a Pod's daemon container.
struct LocalPod {
    ip: IpAddr,
    child: Option<Child>,
    ready: bool,
    terminating: bool,
}

/// What the stand-in kubelet did, for the tests' assertions.
#[derive(Debug, Default, Clone)]
pub struct KubeletLog {
    /// Pods started (name → time the daemon process started).
    pub started: HashMap<String, Instant>,
    /// Pods that became ready (name → when).
    pub ready: HashMap<String, Instant>,
    /// Pods stopped: name → (SIGTERM sent, process exited, exit status success).
    pub stopped: HashMap<String, (Instant, Instant, bool)>,
}

/// The stand-in kubelet of one namespace.
pub struct Kubelet {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// What it did.
    pub log: Arc<Mutex<KubeletLog>>,
}

struct KubeletState {
    client: Client,
    namespace: String,
    node: String,
    net: PodNet,
    model_path: PathBuf,
    daemon_bin: PathBuf,
    dir: PathBuf,
    never_ready: HashSet<String>,
    pods: HashMap<String, LocalPod>,
    next_ip: Arc<AtomicU32>,
    log: Arc<Mutex<KubeletLog>>,
    http: reqwest::Client,
}

impl Kubelet {
    /// Starts running the daemon Pods of `namespace`; the Pods of the FusedModels in
    /// `never_ready` are bound and started but their daemon never runs (a model that cannot
    /// start).
    pub async fn start(
        client: &Client,
        namespace: &str,
        net: &PodNet,
        dir: &Path,
        never_ready: &[&str],
    ) -> Self {
        let node = format!("node-{namespace}");
        let object: Node =
            serde_json::from_value(json!({"metadata": {"name": node}})).expect("a Node");
        match Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &object)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => panic!("create Node {node}: {error}"),
        }
        let log = Arc::new(Mutex::new(KubeletLog::default()));
        let mut state = KubeletState {
            client: client.clone(),
            namespace: namespace.to_owned(),
            node,
            net: net.clone(),
            model_path: local_model(),
            daemon_bin: workspace_binary("fused-daemon", "FUSED_DAEMON_BIN"),
            dir: dir.to_owned(),
            never_ready: never_ready.iter().map(|s| (*s).to_owned()).collect(),
            pods: HashMap::new(),
            next_ip: Arc::new(AtomicU32::new(2)),
            log: log.clone(),
            http: reqwest::Client::new(),
        };
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                state.sync().await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
            state.kill_all();
        });
        Self {
            stop,
            task: Some(task),
            log,
        }
    }

    /// Stops every daemon and the kubelet.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }

    /// A copy of what it did so far.
    pub fn log(&self) -> KubeletLog {
        self.log.lock().expect("kubelet log").clone()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl KubeletState {
    async fn sync(&mut self) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let Ok(list) = api
            .list(&ListParams::default().labels("fused.dev/model"))
            .await
        else {
            return;
        };
        let present: HashSet<String> = list.items.iter().map(|p| p.name_any()).collect();
        for pod in &list.items {
            let name = pod.name_any();
            if pod.metadata.deletion_timestamp.is_some() {
                self.terminate(pod).await;
            } else if !self.pods.contains_key(&name) {
                self.start_pod(pod).await;
            } else {
                self.probe(pod).await;
            }
        }
        // Pods removed by someone else: stop their processes.
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|name| !present.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(mut pod) = self.pods.remove(&name)
                && !pod.terminating
                && let Some(child) = pod.child.as_mut()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    async fn start_pod(&mut self, pod: &Pod) {
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        });
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_none()
            && let Err(error) = api
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
        {
            eprintln!("kubelet: binding {name}: {error}");
            return;
        }
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
        let ip = IpAddr::V4(Ipv4Addr::new(10, 244, (n / 250) as u8, (n % 250) as u8 + 2));
        let model = pod
            .labels()
            .get("fused.dev/model")
            .cloned()
            .unwrap_or_default();
        let child = if self.never_ready.contains(&model) {
            None
        } else {
            let port = free_port();
            self.net.add(ip, SocketAddr::from(([127, 0, 0, 1], port)));
            Some(self.spawn_daemon(pod, port))
        };
        self.log
            .lock()
            .expect("kubelet log")
            .started
            .insert(name.clone(), Instant::now());
        self.pods.insert(
            name.clone(),
            LocalPod {
                ip,
                child,
                ready: false,
                terminating: false,
            },
        );
        self.patch_status(pod, ip, false).await;
    }

    fn spawn_daemon(&self, pod: &Pod, port: u16) -> Child {
        let container = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == "daemon"))
            .expect("a daemon container");
        let mut args = container.args.clone().unwrap_or_default();
        let mut set = |flag: &str, value: String| {
            let at = args
                .iter()
                .position(|a| a == flag)
                .unwrap_or_else(|| panic!("{flag} in {args:?}"));
            args[at + 1] = value;
        };
        set("--host", "127.0.0.1".into());
        set("--port", port.to_string());
        set("--model", self.model_path.display().to_string());
        let scratch = self.dir.join(pod.name_any());
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let log = std::fs::File::create(scratch.join("daemon.log")).expect("daemon log");
        Command::new(&self.daemon_bin)
            .args(&args)
            .env("FUSED_KERNEL_CACHE", scratch.join("kernels"))
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start fused-daemon")
    }

    /// Follows the readiness probe (`GET /ready`), as the kubelet would, every sync.
    async fn probe(&mut self, pod: &Pod) {
        let name = pod.name_any();
        let Some(local) = self.pods.get(&name) else {
            return;
        };
        if local.terminating || local.child.is_none() {
            return;
        }
        let address = self.net.resolve(SocketAddr::new(local.ip, 8000));
        let ready = self
            .http
            .get(format!("http://{address}/ready"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready != local.ready {
            let ip = local.ip;
            if let Some(local) = self.pods.get_mut(&name) {
                local.ready = ready;
            }
            if ready {
                self.log
                    .lock()
                    .expect("kubelet log")
                    .ready
                    .insert(name.clone(), Instant::now());
            }
            self.patch_status(pod, ip, ready).await;
        }
    }

    /// A deleted Pod: the preStop sleep of its spec, SIGTERM, wait (at most the grace period),
    /// then the kubelet's final delete.
    async fn terminate(&mut self, pod: &Pod) {
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let Some(local) = self.pods.get_mut(&name) else {
            let _ = api
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
            return;
        };
        if local.terminating {
            return;
        }
        local.terminating = true;
        let child = local.child.take();
        let ip = local.ip;
        let spec = pod.spec.clone().unwrap_or_default();
        let container = spec.containers.iter().find(|c| c.name == "daemon");
        let pre_stop = container
            .and_then(|c| {
                c.lifecycle
                    .as_ref()?
                    .pre_stop
                    .as_ref()?
                    .exec
                    .as_ref()?
                    .command
                    .clone()
            })
            .and_then(|command| match command.as_slice() {
                [sleep, seconds] if sleep == "sleep" => seconds.parse::<u64>().ok(),
                _ => None,
            })
            .unwrap_or(0);
        let grace = spec.termination_grace_period_seconds.unwrap_or(30) as u64;
        let net = self.net.clone();
        let log = self.log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(pre_stop)).await;
            let term = Instant::now();
            let mut clean = true;
            if let Some(mut child) = child {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(grace.saturating_sub(pre_stop));
                clean = loop {
                    match child.try_wait() {
                        Ok(Some(status)) => break status.success(),
                        Ok(None) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break false;
                        }
                    }
                };
            }
            log.lock()
                .expect("kubelet log")
                .stopped
                .insert(name.clone(), (term, Instant::now(), clean));
            net.remove(ip);
            let _ = api
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
        });
    }

    async fn patch_status(&self, pod: &Pod, ip: IpAddr, ready: bool) {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let flag = if ready { "True" } else { "False" };
        let condition = |type_: &str, status: &str| json!({"type": type_, "status": status, "lastTransitionTime": now});
        let inits: Vec<serde_json::Value> = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .map(|c| {
                json!({"name": c.name, "ready": true, "restartCount": 0, "image": c.image,
                       "imageID": "", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}})
            })
            .collect();
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": "10.244.0.1",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "startTime": now,
            "conditions": [condition("PodScheduled", "True"), condition("Initialized", "True"),
                           condition("ContainersReady", flag), condition("Ready", flag)],
            "initContainerStatuses": inits,
            "containerStatuses": [{"name": "daemon", "ready": ready, "restartCount": 0,
                                   "image": TEST_DAEMON_IMAGE, "imageID": "", "started": true,
                                   "state": {"running": {"startedAt": now}}}],
        }});
        if let Err(error) = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
        {
            eprintln!("kubelet: status of {}: {error}", pod.name_any());
        }
    }

    fn kill_all(&mut self) {
        for (_, mut pod) in self.pods.drain() {
            if let Some(child) = pod.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The stand-in kube-proxy of one Service: each connection to its local port goes to one of
/// the Service's ready endpoints (round robin), read from the API server when it is accepted.
pub struct ServiceProxy {
    /// Where clients connect (the Service's "ClusterIP").
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// Connections sent to each endpoint (made-up IP).
    pub routed: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ServiceProxy {
    /// Starts proxying the Service `name` of `namespace`.
    pub async fn start(client: &Client, namespace: &str, name: &str, net: &PodNet) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Service proxy");
        let address = listener.local_addr().expect("proxy address");
        let api: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
        let name = name.to_owned();
        let net = net.clone();
        let routed = Arc::new(Mutex::new(HashMap::new()));
        let counts = routed.clone();
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let endpoints = api
                    .get_opt(&name)
                    .await
                    .ok()
                    .flatten()
                    .map(|e| ready_addresses(&e))
                    .unwrap_or_default();
                if endpoints.is_empty() {
                    // No endpoint: the connection is refused, as kube-proxy's REJECT rule does.
                    continue;
                }
                let chosen = endpoints[next.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
                *counts
                    .lock()
                    .expect("routed")
                    .entry(chosen.ip())
                    .or_insert(0) += 1;
                let target = net.resolve(chosen);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            address,
            task,
            routed,
        }
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
