"""Who decides a finish, and tracing a request: a stop string ends a request as `stop` with its
latency recorded (it used to be counted as `abort`), the client's `x-request-id` comes back and
names the engine's log line for the request, a client that leaves while queued never reaches its
prefill, and a refusal is a plain 503 before any stream starts."""

import json
import threading
import time

import httpx

from conftest import MODEL_NAME, Daemon
from test_load_and_metrics import scrape, value, wait_idle


def greedy_text(daemon, prompt: str, max_tokens: int = 24, **extra) -> dict:
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    r = httpx.post(f"{daemon.base}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def stream_completion(daemon, body: dict) -> tuple[str, str | None]:
    text, finish = "", None
    with httpx.stream("POST", f"{daemon.base}/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            for c in chunk["choices"]:
                text += c["text"]
                finish = c["finish_reason"] or finish
    return text, finish


def test_a_stop_string_finish_is_counted_as_stop_with_its_latency(daemon):
    prompt = "The three primary colors are"
    full = greedy_text(daemon, prompt)["text"]
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[2]
    cut = full.index(stop)
    wait_idle(daemon)
    before = scrape(daemon)
    plain = greedy_text(daemon, prompt, stop=[stop])
    assert (plain["text"], plain["finish_reason"], plain["stop_reason"]) == (full[:cut], "stop", stop)
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 24, "temperature": 0, "stop": [stop], "stream": True}
    assert stream_completion(daemon, body) == (full[:cut], "stop")
    after = wait_idle(daemon)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("vllm:request_success_total", finished_reason="stop") == 2
    assert delta("vllm:request_success_total", finished_reason="abort") == 0
    assert delta("vllm:e2e_request_latency_seconds_count") == 2


def test_the_request_id_comes_back_and_names_the_engine_log_line(daemon):
    rid = f"e2e-trace-{time.time_ns()}"
    r = httpx.post(
        f"{daemon.base}/v1/chat/completions",
        headers={"x-request-id": rid},
        json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == rid
    assert r.json()["id"] == f"chatcmpl-{rid}"
    generated = httpx.get(f"{daemon.base}/health", timeout=5).headers["x-request-id"]
    assert len(generated) == 32, "a request without an id gets a fresh one"
    deadline = time.time() + 10
    while time.time() < deadline:
        lines = [l for l in daemon.log_path.read_text().splitlines() if rid in l]
        if any("request finished" in l for l in lines):
            break
        time.sleep(0.1)
    print("\n".join(lines))
    finished = [l for l in lines if "request finished" in l]
    assert finished, f"no engine line names {rid}"
    assert "finish_reason" in finished[0] and "completion_tokens" in finished[0] and "queue_s" in finished[0]


def test_a_client_that_leaves_while_queued_never_reaches_its_prefill():
    d = Daemon("--max-seqs", "1", log_name="queued-leave")
    try:
        busy = {"model": MODEL_NAME, "prompt": "Tell a long story.", "max_tokens": 400, "ignore_eos": True}
        t = threading.Thread(target=lambda: httpx.post(f"{d.base}/v1/completions", json=busy, timeout=300))
        t.start()
        deadline = time.time() + 30
        while value(scrape(d), "vllm:num_requests_running") < 1:
            assert time.time() < deadline, "the first request never ran"
            time.sleep(0.05)
        prompt_tokens_before = value(scrape(d), "vllm:prompt_tokens_total")
        queued = {"model": MODEL_NAME, "prompt": "Queued " * 50, "max_tokens": 5, "stream": True}
        with httpx.stream("POST", f"{d.base}/v1/completions", json=queued, timeout=60) as r:
            assert r.status_code == 200
            deadline = time.time() + 10
            while value(scrape(d), "vllm:num_requests_waiting") < 1:
                assert time.time() < deadline, "the second request never queued"
                time.sleep(0.05)
        # The client is gone; the first request is still decoding.
        deadline = time.time() + 5
        while value(scrape(d), "vllm:num_requests_waiting") > 0:
            assert time.time() < deadline, "the departed request is still queued"
            time.sleep(0.05)
        samples = scrape(d)
        assert value(samples, "vllm:num_requests_running") == 1, "the first request still runs"
        assert value(samples, "vllm:request_success_total", finished_reason="abort") == 1
        assert value(samples, "vllm:prompt_tokens_total") == prompt_tokens_before, "no prefill ran for it"
        t.join()
    finally:
        assert d.stop() == 0


def test_a_refused_stream_is_a_503_before_the_stream_starts():
    d = Daemon("--max-seqs", "1", "--max-queue", "0", log_name="refused-stream")
    try:
        busy = {"model": MODEL_NAME, "prompt": "Tell a long story.", "max_tokens": 300, "ignore_eos": True}
        t = threading.Thread(target=lambda: httpx.post(f"{d.base}/v1/completions", json=busy, timeout=300))
        t.start()
        deadline = time.time() + 30
        while value(scrape(d), "vllm:num_requests_running") < 1:
            assert time.time() < deadline
            time.sleep(0.05)
        body = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 5, "stream": True}
        with httpx.stream("POST", f"{d.base}/v1/completions", json=body, timeout=60) as r:
            r.read()
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "server_overloaded"
        t.join()
    finally:
        assert d.stop() == 0


def test_the_api_key_guards_the_api_and_optionally_metrics_and_never_shows():
    import os
    import subprocess

    from conftest import BINARY

    help_text = subprocess.run(
        [str(BINARY), "serve", "--help"],
        env={**os.environ, "FUSED_API_KEY": "sekret-from-env"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--api-key" in help_text and "sekret-from-env" not in help_text
    open_metrics = Daemon("--api-key", "sekret", log_name="apikey-open-metrics")
    try:
        assert httpx.get(f"{open_metrics.base}/metrics", timeout=10).status_code == 200
        assert httpx.get(f"{open_metrics.base}/v1/models", timeout=10).status_code == 401
    finally:
        assert open_metrics.stop() == 0
    d = Daemon("--api-key", "sekret", "--protect-metrics", log_name="apikey-metrics")
    try:
        assert httpx.get(f"{d.base}/metrics", timeout=10).status_code == 401
        authed = httpx.get(f"{d.base}/metrics", headers={"authorization": "Bearer sekret"}, timeout=10)
        assert authed.status_code == 200 and "vllm:num_requests_running" in authed.text
        for route in ("/health", "/ready", "/version"):
            assert httpx.get(f"{d.base}{route}", timeout=10).status_code == 200, route
        assert "sekret" not in d.log_path.read_text()
    finally:
        assert d.stop() == 0


def test_spans_reach_an_otlp_collector_with_the_request_id():
    import http.server
    import socket as socketlib

    bodies = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            bodies.append((self.path, self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    d = Daemon("--otlp-traces-endpoint", f"http://127.0.0.1:{port}/v1/traces", log_name="otlp")
    try:
        rid = f"otlp-trace-{time.time_ns()}"
        r = httpx.post(
            f"{d.base}/v1/completions",
            headers={"x-request-id": rid},
            json={"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 3},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    finally:
        # SIGTERM flushes the spans still buffered.
        assert d.stop() == 0
        server.shutdown()
    assert bodies, "no export reached the collector"
    assert all(path == "/v1/traces" for path, _ in bodies)
    payload = b"".join(body for _, body in bodies)
    assert rid.encode() in payload, "the request's id is an attribute of an exported span"
    assert b"fused-daemon" in payload and b"engine" in payload and b"http" in payload
