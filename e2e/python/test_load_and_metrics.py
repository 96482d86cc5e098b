"""Load, metrics and lifecycle: 64 concurrent streams, Prometheus exposition checked with
`prometheus_client`'s parser, token counters against summed usage, disconnects freeing KV, 503
on overload, SIGTERM drain."""

import asyncio
import signal
import threading
import time

import httpx
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from conftest import MODEL_NAME, Daemon


def scrape(daemon) -> dict:
    """`{(name, labels-tuple): value}` of every sample, parsed by prometheus_client."""
    samples = {}
    for family in text_string_to_metric_families(daemon.metrics_text()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    want = tuple(sorted({"model_name": MODEL_NAME, "engine": "0", **labels}.items()))
    return samples[(name, want)]


def test_64_concurrent_streams_complete_and_counters_match_usage(daemon):
    before = scrape(daemon)

    async def one(client, i):
        stream = await client.completions.create(
            model=MODEL_NAME,
            prompt=f"Request {i}: a short story about the number {i}.",
            max_tokens=16 + i % 8,
            temperature=0.7,
            seed=i,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage, finish, text = None, None, ""
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.text
                finish = c.finish_reason or finish
        return usage, finish, text

    async def run():
        client = AsyncOpenAI(base_url=f"{daemon.base}/v1", api_key="x", max_retries=0, timeout=600)
        ready_codes = []

        async def watch_ready():
            async with httpx.AsyncClient() as h:
                while True:
                    ready_codes.append((await h.get(f"{daemon.base}/ready")).status_code)
                    await asyncio.sleep(0.25)

        watcher = asyncio.create_task(watch_ready())
        results = await asyncio.gather(*(one(client, i) for i in range(64)))
        watcher.cancel()
        return results, ready_codes

    started = time.time()
    results, ready_codes = asyncio.run(run())
    elapsed = time.time() - started
    assert len(results) == 64
    assert all(u is not None and f in ("stop", "length") for u, f, _ in results)
    assert ready_codes and set(ready_codes) == {200}, "the server stayed ready under load"
    prompt = sum(u.prompt_tokens for u, _, _ in results)
    completion = sum(u.completion_tokens for u, _, _ in results)
    print(f"64 streams: {completion} tokens in {elapsed:.1f}s ({completion / elapsed:.1f} tok/s)")
    after = scrape(daemon)
    d_prompt = value(after, "vllm:prompt_tokens_total") - value(before, "vllm:prompt_tokens_total")
    d_gen = value(after, "vllm:generation_tokens_total") - value(before, "vllm:generation_tokens_total")
    print(f"usage: prompt {prompt}, completion {completion}; counters: prompt {d_prompt}, generation {d_gen}")
    assert d_prompt == prompt and d_gen == completion
    # vLLM's units: tokens per page (SmolLM2: 46,080 bytes of f32 K/V a token) and pages.
    info = [k for k in after if k[0] == "vllm:cache_config_info"]
    assert len(info) == 1, info
    labels = dict(info[0][1])
    assert labels["block_size"] == str(2097152 // 46080)
    assert labels["num_gpu_blocks"] == str(int(value(after, "fused_kv_pages_total")))
    ttft_count = value(after, "vllm:time_to_first_token_seconds_count") - value(before, "vllm:time_to_first_token_seconds_count")
    assert ttft_count == 64


def wait_idle(daemon, timeout=30.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = scrape(daemon)
        if value(s, "vllm:num_requests_running") == 0 and value(s, "vllm:kv_cache_usage_perc") == 0:
            return s
        time.sleep(0.2)
    raise AssertionError(f"not idle after {timeout}s: {daemon.metrics_text()}")


def test_disconnect_mid_stream_frees_kv(daemon):
    wait_idle(daemon)
    body = {"model": MODEL_NAME, "prompt": "Write a very long essay about rivers.", "max_tokens": 1500, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{daemon.base}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        # One iterator, kept alive: leaving a `for` over `r.iter_lines()` closes that generator,
        # and httpx closes the connection with it, so the request would be cancelled before the
        # scrape below sees it running.
        lines = r.iter_lines()
        got = []
        for line in lines:
            if line.startswith("data: "):
                got.append(line)
            if len(got) >= 5:
                break
        assert len(got) == 5, f"the stream ended early: {got}"
        busy = scrape(daemon)
        print({k[0]: v for k, v in busy.items() if "num_requests" in k[0] or "kv_cache_usage" in k[0]})
        assert value(busy, "vllm:num_requests_running") == 1
        assert value(busy, "vllm:kv_cache_usage_perc") > 0
    # The connection is closed here, long before 1500 tokens.
    idle = wait_idle(daemon)
    assert value(idle, "vllm:request_success_total", finished_reason="abort") >= 1
    print("KV usage back to", value(idle, "vllm:kv_cache_usage_perc"), "after the disconnect")


def test_overload_gets_503_with_retry_after():
    d = Daemon("--max-seqs", "1", "--max-queue", "1", log_name="overload")
    try:
        body = {"model": MODEL_NAME, "prompt": "Tell me a long story.", "max_tokens": 400, "ignore_eos": True}
        codes = []

        def fire():
            try:
                r = httpx.post(f"{d.base}/v1/completions", json=body, timeout=300)
                codes.append((r.status_code, r.headers.get("retry-after"), r.json()))
            except httpx.HTTPError as e:
                codes.append((None, None, str(e)))

        threads = [threading.Thread(target=fire) for _ in range(6)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        rejected = [c for c in codes if c[0] == 503]
        print("status codes:", sorted(str(c[0]) for c in codes))
        assert len([c for c in codes if c[0] == 200]) >= 1
        assert rejected, "two slots (1 running + 1 queued) and six requests: some must get 503"
        assert all(c[1] is not None and c[2]["error"]["type"] == "server_error" for c in rejected)
    finally:
        assert d.stop() == 0


def test_sigterm_drains_in_flight_requests_and_exits_zero():
    d = Daemon(log_name="drain")
    result = {}

    def long_request():
        body = {"model": MODEL_NAME, "prompt": "Once", "max_tokens": 60, "ignore_eos": True}
        r = httpx.post(f"{d.base}/v1/completions", json=body, timeout=120)
        result["status"], result["tokens"] = r.status_code, r.json()["usage"]["completion_tokens"]

    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(0.5)
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    try:
        code = httpx.get(f"{d.base}/ready", timeout=5).status_code
    except httpx.ConnectError:
        code = "refused"
    assert code in (503, "refused"), f"not ready while draining, got {code}"
    t.join()
    assert result == {"status": 200, "tokens": 60}
    assert d.stop() == 0
