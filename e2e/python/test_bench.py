"""CI smoke test of the benchmark client: `target/release/fused-bench` against the real daemon
serving SmolLM2 — a few requests, then the result JSON is checked for completeness and internal
consistency, and against the daemon's own Prometheus counters."""

import json
import math
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import BINARY, MODEL_NAME
from test_load_and_metrics import scrape, value

BENCH = Path(os.environ.get("FUSED_BENCH_BIN", BINARY.parent / "fused-bench"))
GGUF = Path(
    os.environ.get("FUSED_MODEL_CACHE", Path.home() / ".cache" / "fusedmodel" / "models")
) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def bench(*args: str, check: bool = True, tokenizer: bool = True) -> subprocess.CompletedProcess:
    if not BENCH.exists():
        raise RuntimeError(f"{BENCH} is missing: run `cargo build --release -p fused-e2e` first")
    cmd = [str(BENCH), *(["--tokenizer", str(GGUF)] if tokenizer else []), "--disable-tqdm", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def check_distribution(d: dict, samples_s: list) -> None:
    """Mean/median/P90/P99 (ms) agree with the samples (s), numpy's linear percentiles."""
    ms = sorted(x * 1000 for x in samples_s)
    assert ms, "no samples"

    def pct(q):
        rank = q / 100 * (len(ms) - 1)
        lo = math.floor(rank)
        hi = min(lo + 1, len(ms) - 1)
        return ms[lo] + (ms[hi] - ms[lo]) * (rank - lo)

    assert d["mean"] == pytest.approx(sum(ms) / len(ms), rel=1e-9)
    for key, q in [("median", 50), ("p90", 90), ("p99", 99)]:
        assert d[key] == pytest.approx(pct(q), rel=1e-9), key
    assert ms[0] <= d["median"] <= d["p90"] <= d["p99"] <= ms[-1]


def test_bench_result_is_complete_and_consistent(daemon, tmp_path):
    before = scrape(daemon)
    result_path = tmp_path / "result.json"
    proc = bench(
        "--base-url", daemon.base, "--model", MODEL_NAME,
        "--num-prompts", "6", "--random-input-len", "48", "--random-output-len", "8",
        "--ignore-eos", "--request-rate", "4", "--max-concurrency", "3", "--seed", "3",
        "--num-warmups", "0", "--scrape-metrics", "--goodput", "ttft:600000",
        "--label", "ci", "--result-json", str(result_path), "--plot-dir", str(tmp_path),
    )
    after = scrape(daemon)
    assert "Successful requests:" in proc.stdout and "P99 ITL (ms):" in proc.stdout
    r = json.loads(result_path.read_text())

    assert r["schema"] == "fused-bench/1" and r["label"] == "ci"
    assert (r["completed"], r["failed"], r["num_prompts"]) == (6, 0, 6)
    assert r["request_rate"] == 4 and r["max_concurrency"] == 3 and r["ignore_eos"] is True
    assert r["token_counts_from"] == "usage"
    reqs = r["requests"]
    assert len(reqs) == 6
    for q in reqs:
        assert q["success"] and q["error"] is None
        assert q["output_len"] == 8, "ignore_eos: exactly max_tokens tokens"
        assert q["input_len"] == q["ref_input_len"] == 48, "random prompts of 48 tokens"
        assert q["generated_text"]
        assert 1 <= len(q["itl_s"]) <= 7
        assert 0 < q["ttft_s"] <= q["latency_s"]
        assert q["ttft_s"] + sum(q["itl_s"]) <= q["latency_s"] + 1e-6
    starts = [q["start_s"] for q in reqs]
    assert starts == sorted(starts) and starts[-1] > 0, "Poisson arrivals spread the sends"

    # Totals and rates follow from the requests.
    assert r["total_output_tokens"] == sum(q["output_len"] for q in reqs) == 48
    assert r["total_input_tokens"] == sum(q["input_len"] for q in reqs)
    assert r["ref_total_output_tokens"] == sum(q["ref_output_len"] for q in reqs)
    dur = r["duration_s"]
    assert dur >= max(q["start_s"] + q["latency_s"] for q in reqs) - 1e-6
    assert r["request_throughput"] == pytest.approx(6 / dur)
    assert r["output_throughput"] == pytest.approx(48 / dur)
    assert r["total_token_throughput"] == pytest.approx((48 + r["total_input_tokens"]) / dur)
    assert r["request_goodput"] == pytest.approx(r["request_throughput"]), "every request met 600 s"
    assert 1 <= r["max_concurrent_requests"] <= 3

    # vLLM's metric definitions, recomputed here from the raw samples.
    check_distribution(r["ttft_ms"], [q["ttft_s"] for q in reqs])
    check_distribution(r["e2el_ms"], [q["latency_s"] for q in reqs])
    check_distribution(r["itl_ms"], [x for q in reqs for x in q["itl_s"]])
    check_distribution(
        r["tpot_ms"], [(q["latency_s"] - q["ttft_s"]) / (q["output_len"] - 1) for q in reqs]
    )

    # The server saw exactly this traffic.
    delta = lambda name: value(after, name) - value(before, name)  # noqa: E731
    assert delta("vllm:generation_tokens_total") == r["total_output_tokens"]
    assert delta("vllm:prompt_tokens_total") == r["total_input_tokens"]
    server = r["server"]
    assert server["samples"] >= 1
    assert 1 <= server["peak_num_requests_running"] <= 3
    assert 0 < server["peak_kv_cache_usage_perc"] <= 1
    assert server["preemptions"] == 0

    png = (tmp_path / "latency_cdf.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_without_a_tokenizer_the_servers_tokenize_route_sizes_and_counts(daemon, tmp_path):
    """As `vllm bench serve` falls back to the served model's tokenizer: no --tokenizer, and the
    prompts are sized and the text counted through the daemon's /tokenize and /detokenize."""
    result_path = tmp_path / "server-tok.json"
    proc = bench(
        "--base-url", daemon.base, "--num-prompts", "3", "--random-input-len", "32",
        "--random-output-len", "6", "--ignore-eos", "--max-concurrency", "3", "--seed", "5",
        "--num-warmups", "0", "--result-json", str(result_path), tokenizer=False,
    )
    assert "server's /tokenize" in proc.stderr
    r = json.loads(result_path.read_text())
    assert r["tokenizer_id"] == f"{daemon.base}/tokenize"
    assert r["completed"] == 3 and r["failed"] == 0
    for q in r["requests"]:
        assert q["input_len"] == q["ref_input_len"] == 32, "sized by the server's own tokenizer"
        assert q["ref_output_len"] >= 1 and q["output_len"] == 6


def test_chat_backend_on_domain_text_with_a_sweep(daemon, tmp_path):
    text = tmp_path / "medical.txt"
    text.write_text(
        "\n".join(
            f"Acute bronchitis due to streptococcus, episode {i} of care" for i in range(40)
        )
    )
    result_path = tmp_path / "sweep.json"
    bench(
        "--base-url", daemon.base, "--backend", "openai-chat",
        "--dataset-name", "text", "--dataset-path", str(text),
        "--text-input-len", "40", "--text-output-len", "4", "--ignore-eos",
        "--num-prompts", "2", "--sweep-request-rates", "2,8", "--label", "chat",
        "--result-json", str(result_path), "--plot-dir", str(tmp_path),
    )
    sweep = json.loads(result_path.read_text())
    assert sweep["schema"] == "fused-bench/1" and sweep["label"] == "chat"
    assert [run["request_rate"] for run in sweep["sweep"]] == [2, 8]
    for run in sweep["sweep"]:
        assert run["model_id"] == MODEL_NAME, "the model came from GET /v1/models"
        assert run["endpoint"].endswith("/v1/chat/completions")
        assert run["completed"] == 2 and run["total_output_tokens"] == 8
        for q in run["requests"]:
            assert q["ref_input_len"] >= 40
            assert q["input_len"] > q["ref_input_len"], "the chat template adds tokens"
    for name in ["sweep_throughput.png", "sweep_latency.png"]:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_multi_turn_conversations_extend_each_turn_and_hit_the_prefix_cache(daemon, tmp_path):
    """`--multi-turn 3`: 2 conversations of 3 turns; each turn's prompt is the last one's, its
    answer and a new message, so the daemon finds the last turn's pages cached."""
    before = scrape(daemon)
    result_path = tmp_path / "chat.json"
    bench(
        "--base-url", daemon.base, "--model", MODEL_NAME, "--multi-turn", "3",
        "--num-prompts", "6", "--random-input-len", "150", "--random-output-len", "8",
        "--ignore-eos", "--max-concurrency", "2", "--seed", "9", "--num-warmups", "0",
        "--result-json", str(result_path),
    )
    after = scrape(daemon)
    r = json.loads(result_path.read_text())
    assert r["completed"] == 6 and r["failed"] == 0
    lens = [q["input_len"] for q in r["requests"]]
    for conversation in (lens[:3], lens[3:]):
        for last, turn in zip(conversation, conversation[1:]):
            # The last prompt, its 8-token answer and a new ~150-token message.
            assert turn >= last + 8 + 100, lens
    hits = value(after, "vllm:prefix_cache_hits_total") - value(before, "vllm:prefix_cache_hits_total")
    # Each of the 4 later turns finds the last turn's prompt cached, but for the partly filled
    # page the last turn left (45.5 tokens; only whole pages are published).
    assert hits >= sum(lens[i] - 46 for i in (0, 1, 3, 4)), (hits, lens)


def test_bad_input_and_dead_servers_fail_clearly(tmp_path):
    proc = bench("--goodput", "itl:5", check=False)
    assert proc.returncode != 0 and "--goodput item" in proc.stderr
    proc = bench("--dataset-name", "sharegpt", check=False)
    assert proc.returncode != 0 and "--dataset-path" in proc.stderr
    # Nothing listens on port 9 of loopback (discard): the warm-up request fails, loudly.
    proc = bench("--base-url", "http://127.0.0.1:9", "--model", "m", "--num-prompts", "1",
                 "--random-input-len", "8", "--random-output-len", "2", check=False)
    assert proc.returncode != 0 and "warm-up request failed" in proc.stderr
    plot = subprocess.run([str(BENCH), "plot", str(tmp_path / "missing.json"), "--plot-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert plot.returncode != 0 and "missing.json" in plot.stderr
