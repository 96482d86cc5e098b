"""Prefix caching over HTTP with the real SmolLM2 weights: 16 chat requests that share a
1,000-token system prompt, sent at once to a daemon with prefix caching (the default, here also
spelled `--enable-prefix-caching`) and to one with `--no-enable-prefix-caching`, in one run:

* the same greedy answers; the same logprobs within 1e-5 for requests sent one at a time
  (within 1e-4 in the burst: a model step of at most 8 rows runs on the GGUF's quantised blocks
  and a larger one on the f32 matrices (`PACKED_MAX_ROWS`, "CPU decode from the GGUF's blocks" in
  docs/BENCHMARKS.md), so a row's rounding depends on how many rows share its step, and the two
  daemons batch the burst differently, with or without sharing). The token budget (2,048) keeps
  each prompt in one chunk, so a sequential request's prompt rows take the f32 path in both
  daemons: with a 512-token budget the daemon without sharing prefills a 1,030-token prompt's
  last 6 tokens as an 8-row step on the blocks, the other as part of its 30-token suffix, and
  their logprobs differ by 1.4e-5 for that reason alone;
* the prefill tokens each daemon computed: prompt tokens minus
  `usage.prompt_tokens_details.cached_tokens`, which must agree with the daemon's
  `vllm:prefix_cache_queries_total` / `vllm:prefix_cache_hits_total`;
* client-side time to first token, printed (not asserted: performance is measured by
  benchmarks; the numbers and this command are in docs/BENCHMARKS.md).
"""

import asyncio
import json
import os
import statistics
import time

import httpx
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from conftest import MODEL_NAME, Daemon

REQUESTS = 16
SYSTEM_TOKENS = 1000


def counter(daemon: Daemon, name: str) -> float:
    for family in text_string_to_metric_families(daemon.metrics_text()):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} is not exported")


def system_prompt(daemon: Daemon) -> str:
    """Rules until the text is at least SYSTEM_TOKENS tokens long."""
    lines = []
    while True:
        lines.append(f"Rule {len(lines) + 1}: answer questions about the harbour of town "
                     f"{len(lines) * 7 % 97} politely, briefly and in plain words. ")
        text = "You are the harbour assistant. " + "".join(lines)
        count = httpx.post(f"{daemon.base}/tokenize", json={"model": MODEL_NAME, "prompt": text},
                           timeout=30).json()["count"]
        if count >= SYSTEM_TOKENS:
            return text


async def ask(client: AsyncOpenAI, system: str, i: int) -> dict:
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "system", "content": system},
                  {"role": "user", "content": f"Question {i}: when does ship number {i * 13} leave?"}],
        max_tokens=8, temperature=0, logprobs=True, top_logprobs=3, stream=True,
        stream_options={"include_usage": True},
    )
    ttft, text, logprobs, usage = None, "", [], None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content and ttft is None:
                ttft = time.perf_counter() - started
            text += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                for token in choice.logprobs.content:
                    logprobs.append([token.logprob] + [t.logprob for t in token.top_logprobs])
    return {"ttft": ttft, "text": text, "logprobs": logprobs, "usage": usage}


def burst(daemon: Daemon, system: str) -> tuple[list[dict], float]:
    async def run():
        client = AsyncOpenAI(base_url=f"{daemon.base}/v1", api_key="x", max_retries=0, timeout=600)
        return await asyncio.gather(*(ask(client, system, i) for i in range(REQUESTS)))

    started = time.perf_counter()
    results = asyncio.run(run())
    return results, time.perf_counter() - started


def one_by_one(daemon: Daemon, system: str, questions: range) -> list[dict]:
    async def run():
        client = AsyncOpenAI(base_url=f"{daemon.base}/v1", api_key="x", max_retries=0, timeout=600)
        return [await ask(client, system, i) for i in questions]

    return asyncio.run(run())


def compare(with_sharing: list[dict], without: list[dict], tolerance: float, what: str) -> None:
    for i, (a, b) in enumerate(zip(with_sharing, without, strict=True)):
        assert a["text"] == b["text"], f"{what} {i}: {a['text']!r} != {b['text']!r}"
        assert len(a["logprobs"]) == len(b["logprobs"]) > 0
        worst = max(abs(x - y) for la, lb in zip(a["logprobs"], b["logprobs"]) for x, y in zip(la, lb))
        assert worst <= tolerance, f"{what} {i}: logprobs differ by {worst}"
        print(f"{what} {i}: worst logprob difference {worst:.1e}")
        assert b["usage"].prompt_tokens_details.cached_tokens == 0


def summary(name: str, results: list[dict], seconds: float) -> dict:
    ttfts = sorted(r["ttft"] for r in results)
    prompt = sum(r["usage"].prompt_tokens for r in results)
    cached = sum(r["usage"].prompt_tokens_details.cached_tokens for r in results)
    return {
        "daemon": name, "requests": len(results), "prompt_tokens": prompt, "cached_tokens": cached,
        "prefill_tokens_computed": prompt - cached, "ttft_p50_s": statistics.median(ttfts),
        "ttft_max_s": ttfts[-1], "ttft_mean_s": statistics.fmean(ttfts), "wall_s": seconds,
    }


def test_16_requests_sharing_a_1000_token_system_prompt():
    common = ("--max-seqs", "16", "--max-context", "2048", "--token-budget", "2048")
    sharing = Daemon(*common, "--enable-prefix-caching", log_name="prefix-on")
    plain = Daemon(*common, "--no-enable-prefix-caching", log_name="prefix-off")
    try:
        system = system_prompt(sharing)
        with_sharing, with_s = burst(sharing, system)
        without, without_s = burst(plain, system)
        compare(with_sharing, without, 1e-4, "burst request")
        # One at a time (new questions; the system prompt is cached): batches are equal.
        later = range(REQUESTS, REQUESTS + 4)
        sequential = one_by_one(sharing, system, later)
        compare(sequential, one_by_one(plain, system, later), 1e-5, "sequential request")
        assert all(r["usage"].prompt_tokens_details.cached_tokens >= SYSTEM_TOKENS - 46 for r in sequential)

        on = summary("--enable-prefix-caching", with_sharing, with_s)
        off = summary("--no-enable-prefix-caching", without, without_s)
        prompt = on["prompt_tokens"]
        assert prompt == off["prompt_tokens"] >= REQUESTS * SYSTEM_TOKENS
        # Each request computes its own question, at most one page (45.5 tokens) of the system
        # prompt's end, and the requests admitted before the first prefill was published
        # compute it all; at least 12 of the 16 must find it cached.
        per_request = prompt // REQUESTS
        assert on["cached_tokens"] >= 12 * (SYSTEM_TOKENS - 46), on
        assert on["prefill_tokens_computed"] < prompt - 12 * (SYSTEM_TOKENS - 46), on
        assert off["prefill_tokens_computed"] == prompt
        later_prompt = sum(r["usage"].prompt_tokens for r in sequential)
        later_cached = sum(r["usage"].prompt_tokens_details.cached_tokens for r in sequential)
        assert counter(sharing, "vllm:prefix_cache_queries_total") == prompt + later_prompt
        assert counter(sharing, "vllm:prefix_cache_hits_total") == on["cached_tokens"] + later_cached
        assert counter(plain, "vllm:prefix_cache_queries_total") == 0
        assert counter(sharing, "fused_kv_shared_pages") >= 0

        print(f"\n16 requests × {per_request} prompt tokens (system prompt ≥ {SYSTEM_TOKENS}), sent at once:")
        print("| daemon | prefill tokens computed | cached | TTFT P50 | TTFT mean | TTFT max | wall |")
        for row in (on, off):
            print(f"| {row['daemon']} | {row['prefill_tokens_computed']} | {row['cached_tokens']} | "
                  f"{row['ttft_p50_s']:.2f} s | {row['ttft_mean_s']:.2f} s | {row['ttft_max_s']:.2f} s | "
                  f"{row['wall_s']:.2f} s |")
        out = os.environ.get("FUSED_PREFIX_RESULT")
        if out:
            with open(out, "w") as f:
                json.dump([on, off], f, indent=2)
    finally:
        assert sharing.stop() == 0
        assert plain.stop() == 0
