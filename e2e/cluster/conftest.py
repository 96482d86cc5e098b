"""Fixtures of the real-cluster suite: a one-node Kubernetes on this machine with the operator,
brought up by the README's command, `scripts/cluster-up.sh --operator` (containerd, kubelet,
kube-proxy, bridge CNI and the control plane; the images built from the repository's Dockerfiles
by scripts/build-images.sh; both charts installed with Helm). Pods are real: the kubelet pulls
nothing (the images are in its containerd), runs the init containers, probes, kills and restarts
containers; requests go through kube-proxy's Service rules.

The suite stops the cluster at the end if it started it (a cluster that was already running is
left running); `FUSED_CLUSTER_KEEP=1` leaves it running anyway, for a look around after a failure
(objects, events and Pod descriptions of a failed test's namespace are saved under
$FUSED_TEST_LOGS/cluster). Test classes marked `incremental` are one user journey: once a step
fails, the later steps are reported as not run (xfail) with the step that broke.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
K8S_BIN = Path(os.environ.get("FUSED_K8S_DIR", "/opt/k8s/bin"))
CLUSTER_DIR = Path(os.environ.get("FUSED_CLUSTER_DIR", "/opt/k8s/cluster"))
KUBECONFIG = CLUSTER_DIR / "kubeconfig"
CONTAINERD_SOCK = "/run/fused-k8s/containerd/containerd.sock"
NODE_IP = "10.244.0.1"
OPERATOR_NAMESPACE = "fused-system"
VERSION = next(
    line.split('"')[1] for line in (ROOT / "Cargo.toml").read_text().splitlines()
    if line.startswith("version = ")
)
DAEMON_IMAGE = f"localhost/fused-daemon:{VERSION}"
EXAMPLE = ROOT / "examples" / "smollm2-135m-cpu.yaml"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOG_DIR = Path(os.environ.get("FUSED_TEST_LOGS", "/tmp/fused-e2e-logs")) / "cluster"


def timed(what: str, started: float) -> float:
    took = time.monotonic() - started
    print(f"[timing] {what}: {took:.1f} s", flush=True)
    return took


def run(*args: str | Path, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Runs a command with this suite's kubeconfig and tools on PATH; a failure shows its output."""
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG), "PATH": f"{K8S_BIN}:{os.environ['PATH']}"}
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env,
                          timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def kubectl(*args: str, **kw) -> str:
    return run("kubectl", *args, **kw).stdout


def get(kind: str, name: str, namespace: str) -> dict | None:
    """The object as JSON, or None if it does not exist."""
    proc = run("kubectl", "get", kind, name, "-n", namespace, "-o", "json", check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr:
            return None
        raise AssertionError(f"kubectl get {kind} {name}: {proc.stderr}")
    return json.loads(proc.stdout)


def items(kind: str, namespace: str, selector: str = "") -> list[dict]:
    args = ["get", kind, "-n", namespace, "-o", "json"]
    if selector:
        args += ["-l", selector]
    return json.loads(kubectl(*args))["items"]


def wait_for(what: str, probe, timeout: float, interval: float = 0.5):
    """Polls `probe` until it returns something truthy; fails with `what` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}")


def kube_proxy_routes(namespace: str, service: str) -> set[str]:
    """The Pod IPs kube-proxy has programmed behind a Service: the DNAT targets of its endpoint
    rules in the node's nat table. The Endpoints object listing a Pod is not enough for a request
    to reach it: until kube-proxy syncs, the ClusterIP rejects connections (a CI run saw that
    right after the first Pod turned Ready)."""
    rules = run("iptables-save", "-t", "nat").stdout
    comment = re.escape(f"{namespace}/{service}")
    return set(re.findall(rf'--comment "?{comment}(?::[^" ]*)?"? .*-j DNAT --to-destination ([0-9.]+):', rules))


def wait_for_routes(namespace: str, service: str, pod_ips, timeout: float = 60):
    """Waits until kube-proxy routes the Service to every one of `pod_ips`."""
    wanted = set(pod_ips)
    seen: set[str] = set()

    def routed() -> bool:
        nonlocal seen
        seen = kube_proxy_routes(namespace, service)
        return wanted <= seen

    deadline = time.monotonic() + timeout
    while not routed():
        if time.monotonic() > deadline:
            pytest.fail(f"kube-proxy did not route {namespace}/{service} to {sorted(wanted)} within "
                        f"{timeout:.0f} s; it routes to {sorted(seen)}")
        time.sleep(0.5)


def condition(model: dict | None, type_: str) -> dict:
    for c in ((model or {}).get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return {}


def cluster_answers() -> bool:
    if not KUBECONFIG.exists():
        return False
    return run("kubectl", "get", "--raw", "/readyz", check=False, timeout=10).returncode == 0


def save_diagnostics(name: str) -> Path:
    """Everything a failed run needs to be understood: objects, events, logs of the cluster."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    out = LOG_DIR / f"{name}.txt"
    parts = []
    for args in (["get", "fm,deploy,rs,pods,svc,endpoints", "-A", "-o", "wide"],
                 ["get", "fm", "-A", "-o", "yaml"],
                 ["get", "events", "-A", "--sort-by=.lastTimestamp"],
                 ["describe", "pods", "-A"]):
        proc = run("kubectl", *args, check=False)
        parts.append(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    out.write_text("\n".join(parts))
    return out


@pytest.fixture(scope="session")
def operator():
    """The cluster with the operator, brought up by the README's command, `scripts/cluster-up.sh
    --operator` (cluster, images built from the Dockerfiles, both charts installed with Helm; a
    no-op for what already runs). Stopped at the end unless it was running before."""
    was_up = cluster_answers()
    t = time.monotonic()
    proc = subprocess.run([str(SCRIPTS / "cluster-up.sh"), "--operator"], text=True, capture_output=True)
    print(proc.stderr[-4000:], flush=True)
    assert proc.returncode == 0, f"scripts/cluster-up.sh --operator failed:\n{proc.stdout}\n{proc.stderr}"
    timed(f"cluster-up.sh --operator ({'already running' if was_up else 'started'})", t)
    kubectl("rollout", "status", "deployment/fused-operator", "-n", OPERATOR_NAMESPACE, "--timeout=120s")
    pids = {p.stem: int(p.read_text()) for p in (CLUSTER_DIR / "pids").glob("*.pid")}
    yield
    if not was_up and os.environ.get("FUSED_CLUSTER_KEEP") != "1":
        proc = subprocess.run([str(SCRIPTS / "cluster-down.sh")], text=True, capture_output=True)
        assert proc.returncode == 0, f"scripts/cluster-down.sh failed:\n{proc.stderr}"
        assert_host_clean(pids)


def assert_host_clean(pids: dict[str, int]) -> None:
    """What cluster-up.sh started is gone: its processes, bridge, Pod network namespaces,
    iptables chains and mounts."""
    alive = {name: pid for name, pid in pids.items() if Path(f"/proc/{pid}").exists()}
    assert not alive, f"still running after cluster-down.sh: {alive}"
    assert subprocess.run(["ip", "link", "show", "fusedk8s0"], capture_output=True).returncode != 0, \
        "bridge fusedk8s0 left behind"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "cni-" not in netns, f"Pod network namespaces left behind: {netns}"
    for table in ("filter", "nat", "mangle"):
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        assert "KUBE-" not in rules, f"KUBE-* rules left in {table}:\n{rules}"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    left = [m for m in mounts if m.startswith((str(CLUSTER_DIR), "/run/fused-k8s"))]
    assert not left, f"mounts left behind: {left}"


def namespace_for(request):
    """A new namespace named after the test (or class), deleted with everything in it
    afterwards; the cluster's state is saved to the log directory first if a test in it failed."""
    name = "e2e-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    # A namespace of an earlier run may still be going away.
    wait_for(f"namespace {name} of an earlier run to be gone",
             lambda: get("namespace", name, "default") is None, 240)
    kubectl("create", "namespace", name)
    yield name
    failed = getattr(request.node, "_failed_step", None) or (
        getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed)
    if failed:
        print(f"diagnostics of {name}: {save_diagnostics(name)}", flush=True)
    # Not waited for: a kubelet 1.20 takes up to a minute to let go of a Pod stuck pulling an
    # image. The Pods being deleted hold little (the failure variants request 100m of CPU).
    kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def namespace(operator, request):
    yield from namespace_for(request)


@pytest.fixture(scope="class")
def class_namespace(operator, request):
    yield from namespace_for(request)


def node_http_server(directory: Path) -> tuple[subprocess.Popen, str]:
    """A file server on the node's bridge address (reachable from Pods), on a free port."""
    import socket

    with socket.socket() as s:
        s.bind((NODE_IP, 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["python3", "-m", "http.server", "--bind", NODE_IP, "--directory",
                             str(directory), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://{NODE_IP}:{port}"
    wait_for(f"file server {base}", lambda: _answers(base), 30)
    return proc, base


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# ---- incremental journeys: a failed step marks the later ones as not run --------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    setattr(item, f"rep_{report.when}", report)
    if report.when == "call" and report.failed and "incremental" in item.keywords:
        item.parent._failed_step = item.name


def pytest_runtest_setup(item):
    if "incremental" in item.keywords:
        failed = getattr(item.parent, "_failed_step", None)
        if failed is not None:
            pytest.xfail(f"NOT RUN: the earlier step {failed} failed")


def pytest_configure(config):
    config.addinivalue_line("markers", "incremental: steps of one journey, in order")
