"""Autoscaling on a real kubelet, the whole round trip, with nothing installed but the two charts:
`examples/smollm2-135m-scale-from-zero.yaml` (windows shortened, at most two replicas) is applied
at zero replicas → a chat request through the Service's ClusterIP is held by the operator's
activator (kube-proxy sends it to the operator Pod), which wakes the model and forwards it once
the real Pod is ready: 200, its wait reported → the Service then routes straight to the replica
(the activator is out of the data path) → load from concurrent clients makes requests wait: the
operator's autoscaler reads each replica's /metrics and scales to 2, `kubectl describe fm` shows
each signal's current value against its target → the load stops: back to 1 after the scale-down
window, and to 0 after `scaleToZeroAfter` of quiet (the Service points at the activator again) →
at zero, concurrent requests (one of them streaming, which sees the activator's SSE progress
comments) are held through the cold start and all answered.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from datetime import datetime, timezone

import httpx
import pytest
import yaml

from conftest import OPERATOR_NAMESPACE, ROOT, condition, get, items, kubectl, timed, wait_for

EXAMPLE = ROOT / "examples" / "smollm2-135m-scale-from-zero.yaml"
NAME = "smollm2-135m-on-demand"
SERVED = "smollm2-135m-instruct"
SELECTOR = f"fused.dev/model={NAME}"
WAIT_HEADER = "x-fused-activator-wait-ms"
# Short windows, so that the journey takes minutes, not the example's quarter of an hour.
SCALE_DOWN_WINDOW_S = 10
SCALE_TO_ZERO_AFTER_S = 30


def chat(content: str, max_tokens: int, stream: bool = False) -> dict:
    return {"model": SERVED, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0, "stream": stream}


def replicas(ns: str) -> tuple[int, int]:
    """spec.replicas and status.readyReplicas of the model."""
    model = get("fm", NAME, ns) or {}
    return model.get("spec", {}).get("replicas", -1), (model.get("status") or {}).get("readyReplicas", 0)


def service_addresses(ns: str) -> list[tuple[str, int]]:
    """The ready (IP, port) pairs of the model's Service, as the operator wrote them."""
    endpoints = get("endpoints", NAME, ns) or {}
    return sorted((a["ip"], p["port"]) for s in endpoints.get("subsets") or []
                  for a in s.get("addresses", []) for p in s.get("ports", []))


def activator_addresses() -> list[tuple[str, int]]:
    """The operator Pods' activator addresses (its chart's Service)."""
    endpoints = get("endpoints", "fused-operator-activator", OPERATOR_NAMESPACE) or {}
    return sorted((a["ip"], p["port"]) for s in endpoints.get("subsets") or []
                  for a in s.get("addresses", []) for p in s.get("ports", []))


def serving_ips(ns: str) -> list[str]:
    return sorted(
        p["status"]["podIP"] for p in items("pods", ns, SELECTOR)
        if "deletionTimestamp" not in p["metadata"]
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    )


def events(ns: str) -> list[tuple[str, str]]:
    listed = json.loads(kubectl("get", "events", "-n", ns, "-o", "json",
                                "--field-selector", f"involvedObject.name={NAME}"))["items"]
    return [(e["reason"], e.get("message", "")) for e in listed]


def accepts_connections(ip: str) -> bool:
    try:
        socket.create_connection((ip, 8000), timeout=2).close()
        return True
    except OSError:
        return False


def reaches_the_activator(ip: str) -> bool:
    """Whether the ClusterIP leads to the activator: a request naming no model (its Host is no
    Service) gets the activator's own OpenAI-style 404, and wakes nothing. An open port alone is
    not enough: until kube-proxy has synced, the address may lead elsewhere (seen on a host whose
    cluster outlived earlier runs: an empty 404 from the operator's metrics port)."""
    try:
        r = httpx.post(f"http://{ip}:8000/v1/completions", headers={"Host": "no-such-model.invalid"},
                       json={}, timeout=5)
    except httpx.HTTPError:
        return False
    return r.status_code == 404 and "no scale-to-zero FusedModel" in r.text


def parse_time(text: str) -> float:
    """Seconds since the epoch of an API server time (`2026-12-04T18:31:07Z`)."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def post(url: str, body: dict, results: list, lock: threading.Lock) -> None:
    """One request on its own connection (kube-proxy picks an endpoint per connection)."""
    t = time.monotonic()
    try:
        r = httpx.post(url, json=body, timeout=300, headers={"connection": "close"})
        outcome = (r.status_code, r.headers.get(WAIT_HEADER), time.monotonic() - t, r.text)
    except httpx.HTTPError as e:
        outcome = (0, None, time.monotonic() - t, repr(e))
    with lock:
        results.append(outcome)


@pytest.mark.incremental
class TestScaleToZeroAndBack:
    url: str = ""

    def test_at_zero_the_service_points_at_the_activator(self, class_namespace):
        ns = class_namespace
        model = yaml.safe_load(EXAMPLE.read_text())
        model = copy.deepcopy(model)
        model["spec"]["autoscaling"].update(
            maxReplicas=2, scaleDownStabilization=f"{SCALE_DOWN_WINDOW_S}s",
            scaleToZeroAfter=f"{SCALE_TO_ZERO_AFTER_S}s")
        kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(model))
        activator = wait_for("the activator's endpoints", activator_addresses, 60)
        wait_for("the model's Service pointing at the activator",
                 lambda: service_addresses(ns) == activator, 60)
        wait_for("Ready=False/ScaledToZero",
                 lambda: condition(get("fm", NAME, ns), "Ready").get("reason") == "ScaledToZero", 60)
        service = get("svc", NAME, ns)
        assert "selector" not in service["spec"], service["spec"]
        assert items("pods", ns, SELECTOR) == []
        # kube-proxy follows the endpoints within a sync (until then the ClusterIP, which had no
        # endpoints, refuses connections). A connection that sends nothing wakes nothing.
        ip = service["spec"]["clusterIP"]
        wait_for("kube-proxy sending the ClusterIP to the activator", lambda: accepts_connections(ip), 30)
        assert replicas(ns) == (0, 0), "a connection without a request woke the model"
        wait_for("the activator answering at the ClusterIP", lambda: reaches_the_activator(ip), 30)
        assert replicas(ns) == (0, 0), "a request for no model woke the model"
        type(self).url = f"http://{ip}:8000/v1/chat/completions"

    def test_a_request_at_zero_is_held_and_answered_after_the_cold_start(self, class_namespace):
        ns = class_namespace
        t = time.monotonic()
        r = httpx.post(self.url, json=chat("What is the capital of France?", 16), timeout=300)
        took = timed("request at zero replicas -> answer (cold start held by the activator)", t)
        assert r.status_code == 200, r.text
        waited = int(r.headers[WAIT_HEADER])
        print(f"held {waited} ms; answer: {r.json()['choices'][0]['message']['content']!r}")
        assert 0 < waited <= took * 1000
        assert replicas(ns)[0] == 1, replicas(ns)
        reasons = [reason for reason, _ in events(ns)]
        assert reasons.count("Activated") == 1, reasons
        # Now the Service routes straight to the replica: the activator is out of the data path.
        wait_for("the Service pointing at the replica",
                 lambda: service_addresses(ns) == [(ip, 8000) for ip in serving_ips(ns)] != [], 60)
        r = httpx.post(self.url, json=chat("And of Italy?", 8), timeout=120, headers={"connection": "close"})
        assert r.status_code == 200 and WAIT_HEADER not in r.headers, (r.status_code, r.headers)

    def test_load_scales_up_and_describe_shows_current_against_target(self, class_namespace):
        ns = class_namespace
        stop = threading.Event()
        results: list = []
        lock = threading.Lock()

        def client(i: int) -> None:
            n = 0
            while not stop.is_set():
                post(self.url, chat(f"Write a long story about the number {i}-{n}.", 48), results, lock)
                n += 1

        # 14 clients against 8 running places per replica: ~6 wait, against a target of 4.
        threads = [threading.Thread(target=client, args=(i,)) for i in range(14)]
        t = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            def signals():
                status = (get("fm", NAME, ns) or {}).get("status") or {}
                autoscaling = status.get("autoscaling") or {}
                waiting = next((s for s in autoscaling.get("signals", [])
                                if s["name"] == "vllm:num_requests_waiting"), {})
                return autoscaling if float(waiting.get("current") or 0) > 4 else None

            seen = wait_for("status.autoscaling to see more than 4 waiting requests per replica", signals, 120)
            print(f"status.autoscaling under load: {seen}")
            described = kubectl("describe", "fm", NAME, "-n", ns)
            print(described)
            assert "vllm:num_requests_waiting" in described and "Target:" in described, described
            wait_for("2 ready replicas", lambda: replicas(ns) == (2, 2), 300)
            timed("load -> 2 ready replicas", t)
            wait_for("the Service listing both replicas", lambda: len(service_addresses(ns)) == 2, 60)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=400)
        failed = [r for r in results if r[0] != 200]
        print(f"{len(results)} requests under load, {len(failed)} not 200")
        assert not failed, failed[:3]
        reasons = [reason for reason, _ in events(ns)]
        assert "ScaledUp" in reasons, reasons
        wide = kubectl("get", "fm", NAME, "-n", ns, "-o", "wide")
        print(wide)
        assert "waiting" in wide, wide

    def test_idle_goes_back_to_one_then_to_zero(self, class_namespace):
        ns = class_namespace
        t = time.monotonic()
        wait_for("1 replica after the scale-down window", lambda: replicas(ns)[0] == 1,
                 SCALE_DOWN_WINDOW_S + 60)
        timed("load stopped -> 1 replica", t)
        wait_for("0 replicas after scaleToZeroAfter", lambda: replicas(ns) == (0, 0),
                 SCALE_TO_ZERO_AFTER_S + 120)
        timed("load stopped -> 0 replicas", t)
        wait_for("the Service pointing at the activator again",
                 lambda: service_addresses(ns) == activator_addresses() != [], 60)
        reasons = [reason for reason, _ in events(ns)]
        assert "ScaledDown" in reasons and "ScaledToZero" in reasons, reasons
        status = get("fm", NAME, ns)["status"]
        print(f"status.autoscaling at zero: {status['autoscaling']}")
        autoscaling = status["autoscaling"]
        assert autoscaling["lastScaleReason"].startswith("no request"), autoscaling
        quiet = parse_time(autoscaling["lastScaleTime"]) - parse_time(autoscaling["lastActiveTime"])
        assert quiet >= SCALE_TO_ZERO_AFTER_S, f"went to zero after {quiet} s of quiet"

    def test_concurrent_requests_at_zero_all_succeed_and_a_stream_sees_progress(self, class_namespace):
        ns = class_namespace
        results: list = []
        lock = threading.Lock()
        stream_lines: list[str] = []

        def streaming() -> None:
            with httpx.stream("POST", self.url, json=chat("Count to five.", 12, stream=True),
                              timeout=300) as r:
                stream_lines.append(f"status {r.status_code}")
                for line in r.iter_lines():
                    if line:
                        stream_lines.append(line)

        threads = [threading.Thread(target=post, args=(self.url, chat(f"Say {i}.", 8), results, lock))
                   for i in range(8)]
        threads.append(threading.Thread(target=streaming))
        t = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=400)
        timed("9 concurrent requests at zero replicas -> all answered", t)
        statuses = [r[0] for r in results]
        print(f"statuses {statuses}, waits (ms) {[r[1] for r in results]}")
        assert statuses == [200] * 8, results
        assert all(r[1] is not None and int(r[1]) > 0 for r in results), results
        print("stream:", *stream_lines[:6], "...", *stream_lines[-2:], sep="\n  ")
        assert stream_lines[0] == "status 200", stream_lines
        assert any(line.startswith(": fused-activator") for line in stream_lines), stream_lines
        data = [line for line in stream_lines if line.startswith("data: ")]
        assert data[-1] == "data: [DONE]", data
        assert any('"content"' in line for line in data), data
        reasons = [reason for reason, _ in events(ns)]
        assert "Activated" in reasons, reasons
        kubectl("delete", "fm", NAME, "-n", ns, "--wait=true", "--timeout=120s")
