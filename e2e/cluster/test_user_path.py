"""A platform team's first hour, on a real kubelet: `helm install` both charts (the conftest's
`operator` fixture) → `kubectl apply -f examples/smollm2-135m-cpu.yaml` (the init container fetches
the weights from the node's HTTP server, digest pinned) → the Pod Running and Ready and the
FusedModel Ready=True → a chat request through the Service's ClusterIP answers "Paris" →
`kubectl scale fm --replicas 2` → requests spread over both replicas → Prometheus scrapes both
through the chart's documented scrape job and the KV-utilisation panel returns each Pod's series →
a spec change rolls out while fused-bench sends load, with zero failed requests → a killed daemon
container shows in the status and recovers → `kubectl delete` leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    CONTAINERD_SOCK, DAEMON_IMAGE, EXAMPLE, MODEL_FILE, NODE_IP, ROOT, condition, get, items,
    kubectl, run, timed, wait_for, wait_for_routes,
)
from pod_discovery import PodDiscovery

NAME = "smollm2-135m"
SERVED = "smollm2-135m-instruct"
SELECTOR = f"fused.dev/model={NAME}"
GGUF = Path(os.environ.get("FUSED_MODEL_CACHE", Path.home() / ".cache" / "fusedmodel" / "models")) / MODEL_FILE
BENCH = Path(os.environ.get("FUSED_BENCH_BIN", ROOT / "target" / "release" / "fused-bench"))
DASHBOARD = ROOT / "charts" / "fused-operator" / "dashboards" / "fused-daemon.json"
SCRAPE_JOB = ROOT / "charts" / "fused-operator" / "prometheus" / "fused-daemon-scrape.yaml"
KV_PANEL = "KV utilisation per replica"


def model_ready(ns: str, replicas: int, generation: int | None = None):
    """The FusedModel when it is Ready=True with `replicas` ready (of `generation`), else None."""
    model = get("fm", NAME, ns)
    status = (model or {}).get("status") or {}
    ready = condition(model, "Ready")
    if ready.get("status") != "True" or status.get("readyReplicas") != replicas:
        return None
    if generation is not None and ready.get("observedGeneration") != generation:
        return None
    return model


def serving_pods(ns: str) -> list[dict]:
    """Running, Ready Pods of the model that are not terminating."""
    return [
        p for p in items("pods", ns, SELECTOR)
        if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]


def requests_served(pod_ip: str) -> float:
    """vllm:request_success_total of one replica, read from its own /metrics."""
    text = httpx.get(f"http://{pod_ip}:8000/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "vllm:request_success_total")


def service_addresses(ns: str) -> list[str]:
    """The ready addresses of the model's Service (its Endpoints object)."""
    endpoints = get("endpoints", NAME, ns) or {}
    return [a["ip"] for s in endpoints.get("subsets") or [] for a in s.get("addresses", [])]


def daemon_status(pod: dict) -> dict:
    return next(c for c in pod["status"]["containerStatuses"] if c["name"] == "daemon")


@pytest.mark.incremental
class TestUserPath:
    """One journey; each step uses what the one before it left (class attributes)."""

    cluster_ip: str = ""

    def test_example_is_served_by_a_ready_pod(self, class_namespace):
        ns = class_namespace
        t = time.monotonic()
        kubectl("apply", "-n", ns, "-f", str(EXAMPLE))
        model = wait_for("FusedModel Ready=True with 1 ready replica", lambda: model_ready(ns, 1), 600)
        timed("kubectl apply -> FusedModel Ready=True (weights fetched over HTTP from the node)", t)
        for type_, reason in (("ArtifactsReady", "Verified"), ("Scheduled", "AllReplicasScheduled"),
                              ("Degraded", "AsExpected"), ("Progressing", "RolloutComplete")):
            assert condition(model, type_)["reason"] == reason, (type_, condition(model, type_))
        (pod,) = serving_pods(ns)
        daemon = daemon_status(pod)
        assert daemon["ready"] and daemon["image"].endswith(DAEMON_IMAGE), daemon
        fetch = next(c for c in pod["status"]["initContainerStatuses"] if c["name"] == "fetch-model")
        assert fetch["state"]["terminated"]["exitCode"] == 0, fetch
        # The init container really went to the node's file server, and verified the digest.
        args = next(c for c in pod["spec"]["initContainers"] if c["name"] == "fetch-model")["args"]
        assert f"http://{NODE_IP}:28090/{MODEL_FILE}" in args, args
        log = kubectl("logs", "-n", ns, pod["metadata"]["name"], "-c", "fetch-model")
        print(f"fetch-model log:\n{log}")
        assert "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53" in log
        # The daemon process really runs as the images' non-root user, on a read-only root.
        container_id = daemon["containerID"].split("://", 1)[1]
        tasks = run("ctr", "-a", CONTAINERD_SOCK, "-n", "k8s.io", "tasks", "ls").stdout
        pid = next(line.split()[1] for line in tasks.splitlines() if line.startswith(container_id))
        uids = next(line.split()[1:] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("Uid:"))
        assert set(uids) == {"65532"}, f"daemon runs as {uids}"
        context = next(c for c in pod["spec"]["containers"] if c["name"] == "daemon")["securityContext"]
        assert context.get("readOnlyRootFilesystem") is True, context
        type(self).cluster_ip = get("svc", NAME, ns)["spec"]["clusterIP"]
        wait_for_routes(ns, NAME, [pod["status"]["podIP"]])
        timed("kubectl apply -> the ClusterIP routes to the Pod", t)

    def test_chat_through_the_service_answers_paris(self, class_namespace):
        client = OpenAI(base_url=f"http://{self.cluster_ip}:8000/v1", api_key="unused", max_retries=0,
                        timeout=120)
        t = time.monotonic()
        answer = client.chat.completions.create(
            model=SERVED, max_tokens=30, temperature=0,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        ).choices[0].message.content
        timed("chat request through the ClusterIP", t)
        print(f"answer: {answer!r}")
        assert "Paris" in answer

    def test_scaled_to_two_replicas_both_serve(self, class_namespace):
        ns = class_namespace
        t = time.monotonic()
        kubectl("scale", "fm", NAME, "-n", ns, "--replicas", "2")
        wait_for("FusedModel Ready=True with 2 ready replicas", lambda: model_ready(ns, 2), 300)
        timed("kubectl scale --replicas 2 -> Ready", t)
        endpoints = wait_for("two ready addresses behind the Service",
                             lambda: addresses if len(addresses := service_addresses(ns)) == 2 else None, 60)
        pods = serving_pods(ns)
        assert sorted(p["status"]["podIP"] for p in pods) == sorted(endpoints)
        wait_for_routes(ns, NAME, endpoints)
        before = {ip: requests_served(ip) for ip in endpoints}
        n = 16
        for i in range(n):
            # A new connection per request: kube-proxy picks a replica per connection.
            r = httpx.post(f"http://{self.cluster_ip}:8000/v1/completions", timeout=120,
                           json={"model": SERVED, "prompt": f"Count to {i}:", "max_tokens": 2},
                           headers={"connection": "close"})
            assert r.status_code == 200, r.text
        served = {ip: requests_served(ip) - before[ip] for ip in endpoints}
        print(f"requests per replica: {served}")
        assert sum(served.values()) == n
        assert all(v > 0 for v in served.values()), f"one replica got nothing: {served}"

    def test_prometheus_scrapes_both_replicas_and_the_kv_panel_has_each(self, class_namespace, tmp_path):
        ns = class_namespace
        pods = {p["metadata"]["name"] for p in serving_pods(ns)}
        prometheus = os.environ.get("FUSED_PROMETHEUS_BIN", "/usr/bin/prometheus")
        assert os.access(prometheus, os.X_OK), f"{prometheus} missing: run scripts/setup-prometheus.sh"
        jobs = yaml.safe_load(SCRAPE_JOB.read_text())
        # Debian's Prometheus is built without Kubernetes discovery: the real Pods' metadata
        # reaches it over http_sd in the labels Kubernetes SD (role: pod) gives; the shipped
        # relabelling and the scraping are Prometheus' own.
        discovery = PodDiscovery(ns)
        for job in jobs:
            assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}], job
            job["http_sd_configs"] = [{"url": discovery.url, "refresh_interval": "1s"}]
            job["scrape_interval"] = job["scrape_timeout"] = "1s"
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(
            {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": jobs}))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=open(tmp_path / "prometheus.log", "wb"), stderr=subprocess.STDOUT)
        try:
            api = f"http://127.0.0.1:{port}/api/v1"
            wait_for("Prometheus ready", lambda: _get_ok(f"http://127.0.0.1:{port}/-/ready"), 60)

            def up_targets():
                targets = httpx.get(f"{api}/targets", timeout=10).json()["data"]["activeTargets"]
                up = {t["labels"].get("pod") for t in targets if t["health"] == "up"}
                return up if up >= pods else None

            up = wait_for(f"both daemon Pods {pods} scraped", up_targets, 90)
            targets = httpx.get(f"{api}/targets", timeout=10).json()["data"]["activeTargets"]
            assert {t["labels"]["job"] for t in targets} == {"fused-daemon"}
            assert {t["labels"]["namespace"] for t in targets} == {ns}
            assert all(t["labels"]["node"] == "fused-node" for t in targets)
            assert up == pods, f"scraped {up}, expected exactly {pods}"
            expr = kv_panel_query()

            def per_pod():
                result = httpx.get(f"{api}/query", params={"query": expr}, timeout=10).json()["data"]["result"]
                return result if {r["metric"].get("pod") for r in result} == pods else None

            result = wait_for(f"{KV_PANEL!r} returning a series per Pod ({expr})", per_pod, 60)
            print(f"{KV_PANEL}: {[(r['metric']['pod'], r['value'][1]) for r in result]}")
            for r in result:
                assert 0.0 <= float(r["value"][1]) <= 1.0, r
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            discovery.close()

    def test_spec_change_rolls_out_without_a_failed_request(self, class_namespace, tmp_path):
        ns = class_namespace
        assert BENCH.exists(), f"{BENCH} missing: cargo build --release -p fused-e2e"
        old_pods = {p["metadata"]["name"] for p in serving_pods(ns)}
        generation = get("fm", NAME, ns)["metadata"]["generation"]
        done = threading.Event()
        results: list[dict] = []

        def load():
            # fused-bench runs of 15 s back to back, until the rollout finished and one more ran.
            i = 0
            while True:
                last = done.is_set()
                out = tmp_path / f"bench-{i}.json"
                proc = subprocess.run(
                    [str(BENCH), "--base-url", f"http://{self.cluster_ip}:8000", "--model", SERVED,
                     "--tokenizer", str(GGUF), "--dataset-name", "random", "--random-input-len", "32",
                     "--random-output-len", "24", "--ignore-eos", "--max-concurrency", "3",
                     "--duration", "15", "--num-prompts", "64", "--num-warmups", "0", "--seed", str(i),
                     "--request-timeout-s", "120", "--disable-tqdm", "--result-json", str(out)],
                    capture_output=True, text=True, timeout=300)
                assert proc.returncode == 0, f"fused-bench exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
                results.append(json.loads(out.read_text()))
                i += 1
                if last:
                    return

        errors: list[BaseException] = []
        thread = threading.Thread(target=lambda: _capture(load, errors))
        thread.start()
        time.sleep(5)
        t = time.monotonic()
        kubectl("patch", "fm", NAME, "-n", ns, "--type", "merge", "-p",
                json.dumps({"spec": {"scheduler": {"tokenBudget": 128}}}))

        def rolled_out():
            if not model_ready(ns, 2, generation + 1):
                return None
            pods = items("pods", ns, SELECTOR)
            names = {p["metadata"]["name"] for p in pods}
            return names if len(pods) == 2 and not names & old_pods else None

        new_pods = wait_for("the rollout to finish (2 new Pods, old ones gone)", rolled_out, 600)
        timed("rollout of 2 replicas under load", t)
        done.set()
        thread.join(timeout=400)
        assert not errors, errors
        completed = sum(r["completed"] for r in results)
        failed = sum(r["failed"] for r in results)
        print(f"rollout under load: {len(results)} fused-bench runs, {completed} requests completed, "
              f"{failed} failed; new Pods {sorted(new_pods)}")
        errors_seen = [q["error"] for r in results for q in r["requests"] if not q["success"]]
        assert failed == 0, f"{failed} requests failed during the rollout: {errors_seen[:5]}"
        assert completed >= 20, "too little load to tell"
        # Every container of the new Pods got the new flag.
        for pod in items("pods", ns, SELECTOR):
            args = pod["spec"]["containers"][0]["args"]
            assert args[args.index("--token-budget") + 1] == "128"

    def test_a_killed_daemon_shows_in_status_and_recovers(self, class_namespace):
        ns = class_namespace
        pod = serving_pods(ns)[0]
        name = pod["metadata"]["name"]
        container_id = daemon_status(pod)["containerID"].split("://", 1)[1]
        seen: list[tuple[str, str]] = []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                ready = condition(get("fm", NAME, ns), "Ready")
                if ready and (not seen or seen[-1] != (ready["status"], ready["reason"])):
                    seen.append((ready["status"], ready["reason"]))
                time.sleep(0.2)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            t = time.monotonic()
            run("ctr", "-a", CONTAINERD_SOCK, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", container_id)

            def restarted_and_ready():
                p = get("pod", name, ns)
                status = daemon_status(p)
                return p if status["restartCount"] >= 1 and status["ready"] else None

            restarted = wait_for(f"{name}'s daemon restarted by the kubelet and ready", restarted_and_ready, 180)
            recovered = wait_for("FusedModel Ready=True again", lambda: model_ready(ns, 2), 120)
            timed("daemon killed -> restarted -> FusedModel Ready again", t)
        finally:
            stop.set()
            watcher.join()
        # The watcher polls: it may stop between wait_for's last read and its own next one, so the
        # condition wait_for saw ends the sequence.
        final = condition(recovered, "Ready")
        if seen[-1:] != [(final["status"], final["reason"])]:
            seen.append((final["status"], final["reason"]))
        last = daemon_status(restarted)["lastState"]["terminated"]
        assert last["exitCode"] == 137, last
        print(f"Ready condition seen: {seen}")
        assert ("False", "ReplicasNotReady") in seen, f"the lost replica never showed in status: {seen}"
        assert seen[-1] == ("True", "Available"), seen
        events = json.loads(kubectl("get", "events", "-n", ns, "-o", "json",
                                    "--field-selector", f"involvedObject.name={NAME}"))["items"]
        reasons = [e["reason"] for e in events]
        assert "ReplicasNotReady" in reasons, reasons
        # A lost replica is not a rollout: Progressing stayed RolloutComplete.
        assert ("False", "RollingOut") not in seen, seen

    def test_delete_leaves_nothing_behind(self, class_namespace):
        ns = class_namespace
        containers = [
            c["containerID"].split("://", 1)[1]
            for p in items("pods", ns, SELECTOR)
            for c in p["status"].get("containerStatuses", [])
        ]
        t = time.monotonic()
        kubectl("delete", "fm", NAME, "-n", ns, "--wait=true", "--timeout=300s")

        def all_gone():
            left = kubectl("get", "deploy,rs,pods,svc,endpoints,hpa", "-n", ns, "-l", SELECTOR,
                           "-o", "name").split()
            left += [e for e in kubectl("get", "endpoints", "-n", ns, "-o", "name").split() if NAME in e]
            return not left

        wait_for("every object of the FusedModel gone", all_gone, 300)

        def containers_gone():
            tasks = run("ctr", "-a", CONTAINERD_SOCK, "-n", "k8s.io", "tasks", "ls", "-q").stdout.split()
            return not set(containers) & set(tasks)

        wait_for("its containers gone from containerd", containers_gone, 120)
        timed("kubectl delete -> nothing left", t)
        assert containers, "the Pods had containers to look for"
        assert get("fm", NAME, ns) is None


def kv_panel_query() -> str:
    """The KV-utilisation-per-replica panel's query, its variables set to Grafana's "All"."""
    dashboard = json.loads(DASHBOARD.read_text())

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    (panel,) = [p for p in panels(dashboard["panels"]) if p.get("title") == KV_PANEL]
    expr = panel["targets"][0]["expr"]
    for var in dashboard["templating"]["list"]:
        if var.get("allValue"):
            expr = re.sub(rf"\$\{{?{var['name']}\}}?", var["allValue"], expr)
    assert "$" not in expr, expr
    return expr


def _get_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _capture(fn, errors: list) -> None:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - reported by the test thread
        errors.append(e)
