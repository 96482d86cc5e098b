"""Sarathi vs prefill-first on the real daemon (CPU, SmolLM2): 16 streams decode, then one
2,000-token prompt arrives. Reports the inter-token latency of the 16 running streams while the
long prompt is being prefilled (from its arrival until its first token), max and P99.

Usage: python e2e/bench/stall_free.py [--daemon target/release/fused-daemon] [--budgets 512,128]
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, port, extra):
    proc = subprocess.Popen([binary, "serve", "--port", str(port), "--max-seqs", "24", "--max-context", "4096", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("daemon did not become ready")


async def stream(client, base, body, stamps):
    async with client.stream("POST", f"{base}/v1/completions", json=body, timeout=None) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                stamps.append(time.perf_counter())


async def scenario(base, long_prompt_tokens):
    async with httpx.AsyncClient() as client:
        streams = [[] for _ in range(16)]
        body = {"prompt": "Tell me a story about a river.", "max_tokens": 400, "ignore_eos": True, "stream": True, "temperature": 0}
        tasks = [asyncio.create_task(stream(client, base, body, s)) for s in streams]
        await asyncio.sleep(4.0)  # steady decoding
        long_stamps = []
        arrival = time.perf_counter()
        long_body = {"prompt": list(range(1000, 1000 + long_prompt_tokens)), "max_tokens": 1, "stream": True}
        await stream(client, base, long_body, long_stamps)
        first_token = long_stamps[0] if long_stamps else time.perf_counter()
        await asyncio.sleep(1.0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    gaps = []
    for s in streams:
        for a, b in zip(s, s[1:]):
            if b >= arrival and a <= first_token:
                gaps.append(b - a)
    steady = [b - a for s in streams for a, b in zip(s, s[1:]) if b < arrival]
    gaps.sort()
    steady.sort()
    pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
    return {
        "ttft_long_s": first_token - arrival,
        "itl_during_prefill_max_s": gaps[-1] if gaps else float("nan"),
        "itl_during_prefill_p99_s": pct(gaps, 0.99),
        "itl_steady_p50_s": pct(steady, 0.5),
        "gaps": len(gaps),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", default="target/release/fused-daemon")
    ap.add_argument("--budgets", default="512,128")
    ap.add_argument("--long-prompt", type=int, default=2000)
    args = ap.parse_args()
    runs = [(f"sarathi budget {b}", ["--scheduler", "sarathi", "--token-budget", b]) for b in args.budgets.split(",")]
    runs.append(("prefill-first", ["--scheduler", "prefill-first", "--token-budget", "4096"]))
    rows = []
    for name, extra in runs:
        port = free_port()
        proc = start(args.daemon, port, extra)
        try:
            result = asyncio.run(scenario(f"http://127.0.0.1:{port}", args.long_prompt))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        rows.append((name, result))
        print(name, json.dumps(result), file=sys.stderr)
    print(f"\n16 decoding streams + one {args.long_prompt}-token prompt (SmolLM2-135M, CPU, {os.cpu_count()} cores)\n")
    print("| policy | ITL of running streams during the prefill: max | P99 | steady ITL P50 | TTFT of the long prompt |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['itl_during_prefill_max_s'] * 1000:.0f} ms | {r['itl_during_prefill_p99_s'] * 1000:.0f} ms | "
              f"{r['itl_steady_p50_s'] * 1000:.0f} ms | {r['ttft_long_s']:.2f} s |")


if __name__ == "__main__":
    main()
