//! A real Kubernetes control plane on loopback for tests: etcd + kube-apiserver v1.20
//! (+ kube-controller-manager), started as child processes on free 127.0.0.1 ports with their
//! own credentials and work directory, so several clusters can run side by side.
//!
//! [`TestCluster::start`] returns once the API server is ready; it gives a `kube::Client`, a
//! kubeconfig for `kubectl`/`helm`, and kills exactly the processes it started on
//! [`TestCluster::stop`] or drop. Binaries come from `$FUSED_K8S_DIR` (default `/opt/k8s/bin`)
//! and `PATH`; when one is missing, `start` fails with an error naming `scripts/setup-k8s.sh`.
//! No scheduler or kubelet runs: Pods stay Pending.

mod apply;
mod binaries;
mod error;
mod pki;
mod process;
mod workdir;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tempfile::TempDir;
use tokio::sync::OnceCell;

pub use apply::{
    FIELD_MANAGER, apply_yaml, create_object, install_crd_yaml, install_fused_crd, parse_manifests,
    wait_crd_established,
};
pub use binaries::{DEFAULT_K8S_BIN_DIR, k8s_bin_dir, locate};
pub use error::{ClusterError, Result};
pub use process::GuardedProcess;

use pki::Pki;

/// How long the control plane may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Attempts at starting etcd + apiserver on fresh ports if a port was taken meanwhile.
const START_ATTEMPTS: usize = 3;

/// A running control plane; dropping it stops every process it started and deletes its files.
#[derive(Debug)]
pub struct TestCluster {
    // Field order matters: processes stop (drop) before the work directory is removed.
    processes: Vec<GuardedProcess>,
    config: Config,
    kubeconfig: PathBuf,
    server_url: String,
    workdir: TempDir,
}

impl TestCluster {
    /// Starts etcd and kube-apiserver, plus kube-controller-manager when `with_kcm` (garbage
    /// collection, namespace deletion, Deployment -> ReplicaSet -> Pod), and waits until the API
    /// server is ready and the `default` namespace exists.
    pub async fn start(with_kcm: bool) -> Result<Self> {
        let apiserver_bin = binaries::locate_in_k8s_dir("kube-apiserver")?;
        let kcm_bin = with_kcm
            .then(|| binaries::locate_in_k8s_dir("kube-controller-manager"))
            .transpose()?;
        let etcd_bin = binaries::locate("etcd")?;

        let workdir = workdir::create()?;
        let dir = workdir.path().to_owned();
        let pki = Pki::generate(&dir.join("pki"))?;
        std::fs::create_dir_all(dir.join("log"))
            .map_err(ClusterError::io("creating the log directory"))?;

        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            match start_control_plane(&dir, &pki, &etcd_bin, &apiserver_bin).await {
                Ok(plane) => {
                    let mut cluster = Self {
                        processes: plane.processes,
                        config: plane.config,
                        kubeconfig: plane.kubeconfig,
                        server_url: plane.server_url,
                        workdir,
                    };
                    if let Some(kcm_bin) = &kcm_bin {
                        cluster.start_kcm(kcm_bin, &pki).await?;
                    }
                    return Ok(cluster);
                }
                Err(e) => {
                    eprintln!(
                        "fused-e2e: control plane start attempt {attempt}/{START_ATTEMPTS} failed: {e}"
                    );
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("START_ATTEMPTS > 0, so at least one attempt ran"))
    }

    /// A cluster shared by every test of this test binary (one per `with_kcm` value), started on
    /// first use. It is never dropped: its processes die with the test process (see
    /// [`GuardedProcess`]) and its directory is swept by a later start.
    pub async fn shared(with_kcm: bool) -> Result<&'static TestCluster> {
        static PLAIN: OnceCell<TestCluster> = OnceCell::const_new();
        static WITH_KCM: OnceCell<TestCluster> = OnceCell::const_new();
        let cell = if with_kcm { &WITH_KCM } else { &PLAIN };
        cell.get_or_try_init(|| Self::start(with_kcm)).await
    }

    /// A new client for this cluster, bound to the calling tokio runtime.
    pub fn client(&self) -> Result<Client> {
        Client::try_from(self.config.clone()).map_err(|e| ClusterError::Kubeconfig {
            path: self.kubeconfig.clone(),
            message: e.to_string(),
        })
    }

    /// An admin client that returns 429 and 503 at once: kube's default client retries them
    /// with a backoff of up to 1000 s (15 times), so a refused eviction would take minutes.
    pub fn client_without_retries(&self) -> Result<Client> {
        let mut config = self.config.clone();
        config.default_retry = false;
        Client::try_from(config).map_err(|e| ClusterError::Kubeconfig {
            path: self.kubeconfig.clone(),
            message: e.to_string(),
        })
    }

    /// Path of an admin kubeconfig for `kubectl --kubeconfig` / `helm --kubeconfig`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL (`https://127.0.0.1:<port>`).
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The cluster's work directory (logs under `log/`).
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// A `kubectl` command pointed at this cluster (discovery cache kept in the work directory).
    pub fn kubectl(&self) -> Result<Command> {
        let mut command = Command::new(binaries::locate("kubectl")?);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.workdir.path().join("kubectl-cache"));
        Ok(command)
    }

    /// A `helm` command pointed at this cluster.
    pub fn helm(&self) -> Result<Command> {
        let mut command = Command::new(binaries::locate("helm")?);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        Ok(command)
    }

    /// Runs `kubectl args...` against this cluster; returns its stdout, or an error with stderr.
    pub fn run_kubectl(&self, args: &[&str]) -> Result<String> {
        let output = self
            .kubectl()?
            .args(args)
            .output()
            .map_err(ClusterError::io("running kubectl"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(ClusterError::CommandFailed {
                command: format!("kubectl {}", args.join(" ")),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            })
        }
    }

    /// Stops every process this cluster started (controller manager, API server, etcd).
    pub fn stop(&mut self) {
        for process in self.processes.iter_mut().rev() {
            process.stop();
        }
    }

    async fn start_kcm(&mut self, kcm_bin: &Path, pki: &Pki) -> Result<()> {
        let args = [
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--leader-elect=false".into(),
            "--port=0".into(),
            "--secure-port=0".into(),
            format!(
                "--service-account-private-key-file={}",
                pki.sa_key.display()
            ),
            format!("--root-ca-file={}", pki.ca_cert.display()),
            "--use-service-account-credentials=false".into(),
            "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route,\
             -attachdetach,-persistentvolume-binder,-persistentvolume-expander,-pvc-protection,\
             -pv-protection,-ttl"
                .into(),
        ];
        let log = self.workdir.path().join("log/kube-controller-manager.log");
        let mut kcm = GuardedProcess::spawn("kube-controller-manager", kcm_bin, &args, &log)?;
        // It has no health port here (--port=0 --secure-port=0); its controllers are running once
        // the service-account controller has created `default` in the `default` namespace.
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client()?, "default");
        wait_until(&mut kcm, READY_TIMEOUT, |_| {
            let accounts = accounts.clone();
            async move {
                accounts
                    .get_opt("default")
                    .await
                    .is_ok_and(|sa| sa.is_some())
            }
        })
        .await?;
        self.processes.push(kcm);
        Ok(())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A ready etcd + kube-apiserver pair and how to reach it.
struct ControlPlane {
    processes: Vec<GuardedProcess>,
    kubeconfig: PathBuf,
    config: Config,
    server_url: String,
}

/// One attempt at etcd + kube-apiserver on fresh ports.
async fn start_control_plane(
    dir: &Path,
    pki: &Pki,
    etcd_bin: &Path,
    apiserver_bin: &Path,
) -> Result<ControlPlane> {
    let [etcd_port, etcd_peer_port, api_port] = free_ports()?;
    let etcd_data = dir.join("etcd");
    if etcd_data.exists() {
        std::fs::remove_dir_all(&etcd_data).map_err(ClusterError::io("clearing etcd data"))?;
    }
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
    let etcd_args = [
        "--name=fused-e2e".to_owned(),
        format!("--data-dir={}", etcd_data.display()),
        "--unsafe-no-fsync".into(),
        format!("--listen-client-urls={etcd_url}"),
        format!("--advertise-client-urls={etcd_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=fused-e2e={peer_url}"),
    ];
    let mut etcd = GuardedProcess::spawn_with_scratch(
        "etcd",
        etcd_bin,
        &etcd_args,
        &dir.join("log/etcd.log"),
        Some(&etcd_data),
    )?;
    // Our etcd (not some other process on the port) logs that it serves this exact address.
    let serving = format!("serving insecure client requests on 127.0.0.1:{etcd_port}");
    wait_until(&mut etcd, Duration::from_secs(30), |p| {
        std::future::ready(std::fs::read_to_string(p.log()).is_ok_and(|log| log.contains(&serving)))
    })
    .await?;

    let apiserver_args = [
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={api_port}"),
        "--insecure-port=0".into(),
        format!("--tls-cert-file={}", pki.server_cert.display()),
        format!("--tls-private-key-file={}", pki.server_key.display()),
        format!("--client-ca-file={}", pki.ca_cert.display()),
        format!("--token-auth-file={}", pki.token_file.display()),
        "--authorization-mode=RBAC".into(),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        format!("--service-account-key-file={}", pki.sa_pub.display()),
        format!(
            "--service-account-signing-key-file={}",
            pki.sa_key.display()
        ),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--disable-admission-plugins=ServiceAccount".into(),
        "--allow-privileged=true".into(),
    ];
    let mut apiserver = GuardedProcess::spawn(
        "kube-apiserver",
        apiserver_bin,
        &apiserver_args,
        &dir.join("log/kube-apiserver.log"),
    )?;

    let server_url = format!("https://127.0.0.1:{api_port}");
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &server_url, pki)?;
    let config = client_config(&kubeconfig).await?;
    let client = Client::try_from(config.clone()).map_err(|e| ClusterError::Kubeconfig {
        path: kubeconfig.clone(),
        message: e.to_string(),
    })?;
    wait_until(&mut apiserver, READY_TIMEOUT, |_| is_ready(&client)).await?;
    Ok(ControlPlane {
        processes: vec![etcd, apiserver],
        kubeconfig,
        config,
        server_url,
    })
}

/// `/readyz` answers ok and the bootstrap controller has created the `default` namespace.
async fn is_ready(client: &Client) -> bool {
    let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    let ready = client
        .request_text(request)
        .await
        .is_ok_and(|body| body.trim() == "ok");
    ready
        && Api::<Namespace>::all(client.clone())
            .get_opt("default")
            .await
            .is_ok_and(|ns| ns.is_some())
}

/// Polls `check` every 100 ms until it holds, the process exits, or `timeout` passes.
async fn wait_until<F, Fut>(
    process: &mut GuardedProcess,
    timeout: Duration,
    mut check: F,
) -> Result<()>
where
    F: FnMut(&GuardedProcess) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.exited() {
            return Err(process.not_ready(format!("exited with {status}")));
        }
        if check(process).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(process.not_ready(format!("not ready after {} s", timeout.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three distinct free loopback ports (held together while picking so they differ).
fn free_ports() -> Result<[u16; 3]> {
    let bind = || TcpListener::bind("127.0.0.1:0").map_err(ClusterError::io("picking a free port"));
    let listeners = [bind()?, bind()?, bind()?];
    let mut ports = [0u16; 3];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(ClusterError::io("reading a bound port"))?
            .port();
    }
    Ok(ports)
}

fn write_kubeconfig(path: &Path, server_url: &str, pki: &Pki) -> Result<()> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fused-e2e", "cluster": {
            "server": server_url,
            "certificate-authority": pki.ca_cert,
        }}],
        "users": [{"name": "admin", "user": {"token": pki.admin_token}}],
        "contexts": [{"name": "fused-e2e", "context": {
            "cluster": "fused-e2e", "user": "admin", "namespace": "default",
        }}],
        "current-context": "fused-e2e",
    });
    // JSON is YAML: kubectl, helm and kube read it as a kubeconfig.
    std::fs::write(path, kubeconfig.to_string())
        .map_err(ClusterError::io(format!("writing {}", path.display())))
}

async fn client_config(kubeconfig: &Path) -> Result<Config> {
    let to_error = |e: &dyn std::fmt::Display| ClusterError::Kubeconfig {
        path: kubeconfig.to_owned(),
        message: e.to_string(),
    };
    let parsed = Kubeconfig::read_from(kubeconfig).map_err(|e| to_error(&e))?;
    Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .map_err(|e| to_error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness itself: with the controller manager, a Deployment gets its ReplicaSet; two
    /// clusters run side by side; stopping kills the processes and dropping removes the files.
    #[tokio::test]
    async fn clusters_run_side_by_side_and_clean_up() {
        use k8s_openapi::api::apps::v1::ReplicaSet;
        let (with_kcm, plain) = tokio::join!(TestCluster::start(true), TestCluster::start(false));
        let mut with_kcm = with_kcm.expect("cluster with controller manager starts");
        let plain = plain.expect("second cluster starts");
        assert_ne!(with_kcm.server_url(), plain.server_url());

        let client = with_kcm.client().expect("client");
        let deployment = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: example/web:1}]}
"#;
        apply_yaml(&client, deployment, "default")
            .await
            .expect("apply a Deployment");
        let replica_sets: Api<ReplicaSet> = Api::namespaced(client, "default");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let list = replica_sets
                .list(&Default::default())
                .await
                .expect("list ReplicaSets");
            if list.items.iter().any(|rs| {
                rs.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("web-"))
            }) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kube-controller-manager made no ReplicaSet for web"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let namespaces = plain
            .run_kubectl(&["get", "namespaces", "-o", "name"])
            .expect("kubectl works");
        assert!(namespaces.contains("namespace/default"), "{namespaces}");

        let workdir = with_kcm.workdir().to_owned();
        with_kcm.stop();
        for process in &mut with_kcm.processes {
            assert!(
                process.exited().is_some(),
                "{} still runs after stop()",
                process.name()
            );
        }
        drop(with_kcm);
        assert!(
            !workdir.exists(),
            "dropping the cluster removes {}",
            workdir.display()
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let [a, b, c] = free_ports().expect("loopback ports");
        assert!(a != b && b != c && a != c);
    }
}
