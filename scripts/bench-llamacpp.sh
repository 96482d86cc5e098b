#!/usr/bin/env bash
# CPU comparison with llama.cpp (PyPI llama-cpp-python[server], built from source into its own
# venv) on the same SmolLM2 GGUF, the same medical prompts and the same load, both measured by
# fused-bench in one run of this script:
#   decode   a closed loop of 1 and of 8 concurrent streams (--ignore-eos, OUT_LEN tokens each):
#            decode tokens/s at batch 1 and batch 8
#   rates    Poisson arrivals at each of RATES req/s: throughput, P99 TTFT and P99 ITL
# llama-cpp-python honours `min_tokens`, not `ignore_eos`: both are sent. Its stream has no usage,
# so output tokens are counted by the reference tokenizer (the GGUF's) for both servers.
# Usage: scripts/bench-llamacpp.sh [OUT_DIR]     (≈ 12 min on 2 cores, first run + llama.cpp build)
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
OUT=${1:-$ROOT/results/llamacpp}
IN_LEN=${IN_LEN:-64} OUT_LEN=${OUT_LEN:-64} RATES=${RATES:-0.25,1} N_RATE=${N_RATE:-16}
PORT=${PORT:-18230}
mkdir -p "$OUT"
build_bins
TEXT=$(medical_text)
"$ROOT/scripts/bench-peers.sh" llamacpp >/dev/null
run_server() { # name
  local name=$1
  local args=(--base-url "http://127.0.0.1:$PORT" --tokenizer "$GGUF" --dataset-name text
              --dataset-path "$TEXT" --text-input-len "$IN_LEN" --text-output-len "$OUT_LEN"
              --ignore-eos --extra-body "{\"min_tokens\": $OUT_LEN}" --disable-tqdm)
  for conc in 1 8; do
    "$BENCH" "${args[@]}" --num-prompts $((conc == 1 ? 4 : 16)) --max-concurrency "$conc" \
      --seed 1 --label "$name batch $conc" --result-json "$OUT/$name-batch$conc.json" \
      >"$OUT/$name-batch$conc.txt"
  done
  "$BENCH" "${args[@]}" --num-prompts "$N_RATE" --sweep-request-rates "$RATES" --seed 2 \
    --label "$name" --result-json "$OUT/$name-rates.json" >"$OUT/$name-rates.txt"
}
echo "== fused-daemon (defaults: Sarathi, KV on demand)" >&2
start_daemon "$PORT" "$OUT/fused.log"
run_server fused
stop_servers
echo "== llama.cpp (llama-cpp-python server, 2 threads)" >&2
start_llamacpp "$PORT" "$OUT/llamacpp.log"
run_server llamacpp
stop_servers
"$BENCH" plot "$OUT/fused-rates.json" "$OUT/llamacpp-rates.json" "$OUT"/{fused,llamacpp}-batch{1,8}.json \
  --plot-dir "$OUT"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
load = lambda n: json.load(open(f"{out}/{n}.json"))
print("| server | batch | decode tok/s (ref. tokens) | per-stream tok/s (1000/TPOT) | TTFT median ms |")
print("|---|---:|---:|---:|---:|")
for b in (1, 8):
    for s in ("fused", "llamacpp"):
        r = load(f"{s}-batch{b}")
        print(f"| {s} | {b} | {r['ref_output_throughput']:.1f} | {1000 / r['tpot_ms']['mean']:.1f} | {r['ttft_ms']['median']:.0f} |")
    f, l = load(f"fused-batch{b}"), load(f"llamacpp-batch{b}")
    print(f"| **ratio fused / llama.cpp** | {b} | **{f['ref_output_throughput'] / l['ref_output_throughput']:.2f}×** | | |")
print()
print("| server | req/s offered | req/s done | output tok/s (ref. tokens) | TTFT P99 ms | ITL P99 ms | failed |")
print("|---|---:|---:|---:|---:|---:|---:|")
for s in ("fused", "llamacpp"):
    for r in load(f"{s}-rates")["sweep"]:
        print(f"| {s} | {r['request_rate']} | {r['request_throughput']:.3f} | {r['ref_output_throughput']:.1f} | "
              f"{r['ttft_ms']['p99']:.0f} | {r['itl_ms']['p99']:.0f} | {r['failed']} |")
PY
