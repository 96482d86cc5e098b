#!/usr/bin/env bash
# CPU comparison with llama.cpp on the same SmolLM2 GGUF, the same medical prompts and the same
# load, both measured by fused-bench in one run of this script. The peer (PEER):
#   llama-server      (default) llama.cpp's own C++ server, built with cmake from the llama.cpp
#                     source vendored in the llama-cpp-python sdist (scripts/bench-peers.sh)
#   llama-cpp-python  PyPI llama-cpp-python[server] (the same llama.cpp behind a Python server
#                     that serves one request at a time), built from source into its own venv
#   decode   a closed loop of 1 and of 8 concurrent streams (--ignore-eos, OUT_LEN tokens each):
#            decode tokens/s at batch 1 and batch 8, ROUNDS rounds alternating the servers
#   rates    Poisson arrivals at each of RATES req/s: throughput, P99 TTFT and P99 ITL
# llama-cpp-python honours `min_tokens`, not `ignore_eos`: both are sent. Its stream has no usage,
# so output tokens are counted by the reference tokenizer (the GGUF's) for both servers.
# Usage: [PEER=llama-server|llama-cpp-python] [LLAMA_THREADS=2] scripts/bench-llamacpp.sh [OUT_DIR]
#        (≈ 12 min on 2 cores; the first run also builds llama.cpp)
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
OUT=${1:-$ROOT/results/llamacpp}
IN_LEN=${IN_LEN:-64} OUT_LEN=${OUT_LEN:-64} RATES=${RATES-0.25,1} N_RATE=${N_RATE:-16}
PORT=${PORT:-18230}
mkdir -p "$OUT"
build_bins
TEXT=$(medical_text)
PEER=${PEER:-llama-server}
case "$PEER" in
  llama-server) "$ROOT/scripts/bench-peers.sh" llama-server >/dev/null ;;
  llama-cpp-python) "$ROOT/scripts/bench-peers.sh" llamacpp >/dev/null ;;
  *) echo "PEER must be llama-server or llama-cpp-python, not '$PEER'" >&2; exit 2 ;;
esac
PORT_FUSED=$PORT PORT_LLAMA=$((PORT + 1)) ROUNDS=${ROUNDS:-3}
bench() { # server name, port, label, output name, fused-bench args...
  local port=$2 label=$3 name=$4; shift 4
  "$BENCH" --base-url "http://127.0.0.1:$port" --tokenizer "$GGUF" --dataset-name text \
    --dataset-path "$TEXT" --text-input-len "$IN_LEN" --text-output-len "$OUT_LEN" --ignore-eos \
    --extra-body "{\"min_tokens\": $OUT_LEN}" --disable-tqdm --label "$label" \
    --result-json "$OUT/$name.json" "$@" >"$OUT/$name.txt"
}
# Both servers stay up (idle, each in its own session) and are measured in alternation, so slow
# drifts of the machine's load hit both alike.
echo "== fused-daemon (defaults: Sarathi, KV on demand) on :$PORT_FUSED" >&2
# Prefix caching off: rounds, batch sizes and sweep rates send the same prompts again, and
# cached prompts would skip their prefill (this bench compares engines on cold prompts).
start_daemon "$PORT_FUSED" "$OUT/fused.log" --no-enable-prefix-caching
echo "== llama.cpp ($PEER, ${LLAMA_THREADS:-2} threads) on :$PORT_LLAMA" >&2
if [ "$PEER" = llama-server ]; then
  start_llama_server "$PORT_LLAMA" "$OUT/llamacpp.log"
else
  start_llamacpp "$PORT_LLAMA" "$OUT/llamacpp.log"
fi
for round in $(seq "$ROUNDS"); do
  for conc in 1 8; do
    for server in fused llamacpp; do
      port=$PORT_FUSED; [ "$server" = llamacpp ] && port=$PORT_LLAMA
      bench "$server" "$port" "$server batch $conc" "$server-batch$conc-$round" \
        --num-prompts $((conc == 1 ? 4 : 16)) --max-concurrency "$conc" --seed "$round"
    done
  done
done
for server in fused llamacpp; do  # RATES= (empty) skips the Poisson runs
  [ -n "$RATES" ] || break
  port=$PORT_FUSED; [ "$server" = llamacpp ] && port=$PORT_LLAMA
  bench "$server" "$port" "$server" "$server-rates" --num-prompts "$N_RATE" \
    --sweep-request-rates "$RATES" --seed 100
done
stop_servers
charts=("$OUT"/{fused,llamacpp}-batch{1,8}-1.json)
[ -z "$RATES" ] || charts+=("$OUT/fused-rates.json" "$OUT/llamacpp-rates.json")
"$BENCH" plot "${charts[@]}" --plot-dir "$OUT"
python3 - "$OUT" "$ROUNDS" "$PEER" "${LLAMA_THREADS:-2}" <<'PY'
import json, os, statistics, sys
out, rounds, peer, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
print(f"peer: {peer}, {threads} threads")
load = lambda n: json.load(open(f"{out}/{n}.json"))
print("| batch | round | fused tok/s | llama.cpp tok/s | fused / llama.cpp | fused per-stream tok/s (1000/TPOT) | llama.cpp per-stream tok/s |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for b in (1, 8):
    ratios = []
    for r in range(1, rounds + 1):
        f, l = load(f"fused-batch{b}-{r}"), load(f"llamacpp-batch{b}-{r}")
        ratio = f["ref_output_throughput"] / l["ref_output_throughput"]
        ratios.append(ratio)
        print(f"| {b} | {r} | {f['ref_output_throughput']:.1f} | {l['ref_output_throughput']:.1f} | {ratio:.2f}× | "
              f"{1000 / f['tpot_ms']['mean']:.1f} | {1000 / l['tpot_ms']['mean']:.1f} |")
    print(f"| {b} | **median** | | | **{statistics.median(ratios):.2f}×** | | |")
if not os.path.exists(f"{out}/fused-rates.json"):
    sys.exit(0)
print()
print("| server | req/s offered | req/s done | output tok/s (ref. tokens) | TTFT P99 ms | ITL P99 ms | failed |")
print("|---|---:|---:|---:|---:|---:|---:|")
for s in ("fused", "llamacpp"):
    for r in load(f"{s}-rates")["sweep"]:
        print(f"| {s} | {r['request_rate']} | {r['request_throughput']:.3f} | {r['ref_output_throughput']:.1f} | "
              f"{r['ttft_ms']['p99']:.0f} | {r['itl_ms']['p99']:.0f} | {r['failed']} |")
PY
