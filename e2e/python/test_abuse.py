"""Abuse benchmark, loopback only and bounded: what hostile or careless clients do to one
replica, and the numbers that show it survives. Printed as a table (docs/BENCHMARKS.md records
them with this command: `pytest e2e/python/test_abuse.py -s`).

- 400 slow-header sockets: /health stays fast, every socket is closed by the header timeout;
- streams nobody reads fill every admission place: places come back as soon as generation ends;
- 4 × 2 MB /tokenize at once: /health stays fast (tokenizing runs off the async runtime);
- oversized `stop` / `logit_bias` lists and bodies: 4xx naming the field."""

import socket
import threading
import time

import httpx
import pytest

from conftest import MODEL_NAME, Daemon
from test_load_and_metrics import scrape, value

HEADER_TIMEOUT_S = 10
RESULTS: list[tuple[str, str]] = []


@pytest.fixture(scope="module")
def target():
    d = Daemon(
        "--max-seqs", "4", "--max-queue", "4", "--http-timeout-s", str(HEADER_TIMEOUT_S), log_name="abuse"
    )
    yield d
    print("\nabuse benchmark (loopback, one replica, SmolLM2 on CPU)")
    for name, result in RESULTS:
        print(f"  {name:<48} {result}")
    assert d.stop() == 0


def health_latencies(base: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client() as h:
        while not stop.is_set():
            started = time.perf_counter()
            r = h.get(f"{base}/health", timeout=30)
            out.append(time.perf_counter() - started)
            assert r.status_code == 200
            time.sleep(0.05)


def test_slow_header_sockets_do_not_starve_probes_and_are_closed(target):
    host, port = "127.0.0.1", target.port
    sockets = []
    for _ in range(400):
        s = socket.create_connection((host, port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        sockets.append(s)
    opened = time.time()
    stop, latencies = threading.Event(), []
    poller = threading.Thread(target=health_latencies, args=(target.base, stop, latencies))
    poller.start()
    time.sleep(3)
    stop.set()
    poller.join()
    worst = max(latencies)
    # Every slow socket must be closed by the server (recv returns b"" or the peer resets).
    for s in sockets:
        s.settimeout(HEADER_TIMEOUT_S + 20 - (time.time() - opened))
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
        s.close()
    closed_after = time.time() - opened
    RESULTS.append(("400 slow-header sockets: worst /health", f"{worst * 1000:.1f} ms over {len(latencies)} probes"))
    RESULTS.append(("400 slow-header sockets: all closed after", f"{closed_after:.1f} s (timeout {HEADER_TIMEOUT_S} s)"))
    assert worst < 1.0
    assert closed_after < HEADER_TIMEOUT_S + 20


def test_unread_streams_give_capacity_back_when_generation_ends(target):
    body = {"model": MODEL_NAME, "prompt": "Count to ten.", "max_tokens": 24, "ignore_eos": True, "stream": True}
    client = httpx.Client(timeout=120)
    streams = []
    for _ in range(8):  # --max-seqs 4 + --max-queue 4: every place
        ctx = client.stream("POST", f"{target.base}/v1/completions", json=body)
        r = ctx.__enter__()
        assert r.status_code == 200
        streams.append(ctx)
    full = httpx.post(f"{target.base}/v1/completions", json={**body, "stream": False}, timeout=30)
    assert full.status_code == 503, "every place is taken"
    started = time.time()
    while True:
        s = scrape(target)
        if value(s, "vllm:num_requests_running") == 0 and value(s, "vllm:num_requests_waiting") == 0:
            break
        assert time.time() - started < 120
        time.sleep(0.1)
    # Nobody has read a byte of the eight streams, yet the places are back.
    r = httpx.post(f"{target.base}/v1/completions", json={**body, "stream": False}, timeout=120)
    freed_after = time.time() - started
    RESULTS.append(("8 unread streams: a new request after generation", f"{r.status_code} ({freed_after:.1f} s)"))
    assert r.status_code == 200, r.text
    for ctx in streams:
        ctx.__exit__(None, None, None)
    client.close()


def test_big_tokenize_calls_do_not_starve_probes(target):
    text = "The patient presents with acute bronchitis and mild fever. " * 35_000  # ≈ 2 MB
    assert len(text) > 2_000_000
    stop, latencies, codes = threading.Event(), [], []

    def tokenize():
        r = httpx.post(f"{target.base}/tokenize", json={"model": MODEL_NAME, "prompt": text}, timeout=300)
        codes.append((r.status_code, r.json().get("count")))

    poller = threading.Thread(target=health_latencies, args=(target.base, stop, latencies))
    poller.start()
    started = time.time()
    workers = [threading.Thread(target=tokenize) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    took = time.time() - started
    stop.set()
    poller.join()
    worst = max(latencies)
    RESULTS.append(("4 x 2 MB /tokenize: worst /health", f"{worst * 1000:.1f} ms ({took:.1f} s of tokenizing)"))
    assert all(code == 200 and count > 100_000 for code, count in codes), codes
    assert worst < 1.0


@pytest.mark.parametrize(
    "field, body",
    [
        ("stop", {"stop": ["x"] * 33}),
        ("stop", {"stop": "y" * 513}),
        ("logit_bias", {"logit_bias": {str(i): 1 for i in range(1025)}}),
        ("logit_bias", {"logit_bias": {"7": 1, "07": -1}}),
    ],
)
def test_oversized_lists_get_a_4xx_naming_the_field(target, field, body):
    r = httpx.post(
        f"{target.base}/v1/completions",
        json={"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 2, **body},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
    RESULTS.append((f"oversized {field}", f"{r.status_code}: {r.json()['error']['message'][:60]}"))


def test_an_oversized_body_is_a_413_before_parsing(target):
    r = httpx.post(
        f"{target.base}/v1/completions",
        content=b'{"prompt": "' + b"a" * (9 << 20) + b'"}',
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413, r.text[:200]
    assert r.json()["error"]["type"] == "invalid_request_error"
    RESULTS.append(("9 MiB body", f"{r.status_code}"))
