#!/usr/bin/env bash
# The fused-vs-normal ablation on CPU with SmolLM2: the same daemon with each technique switched
# off alone, on held-out medical text, under the same load and the same KV memory budget.
#   fused          Sarathi scheduler (--token-budget $BUDGET), KV mapped on demand
#                  (+ --patch-tokenizer $PATCH if set)
#   no-patch       as fused without the patch tokenizer (only when PATCH is set)
#   eager-kv       --eager-kv: each sequence's whole context reserved at admission
#   prefill-first  --scheduler prefill-first (vLLM v0) with --token-budget = --max-context
# Per row: a Poisson run (RATE req/s, N requests, --ignore-eos) for throughput and latency, then
# a capacity probe (CAP requests at once) whose peak of vllm:num_requests_running is the most
# sequences that fit the KV budget. Results, charts and the table go to OUT_DIR.
# Usage: [PATCH=dir] [BUDGET=512] scripts/bench-ablation.sh [OUT_DIR]     (≈ 10 min on 2 cores)
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
OUT=${1:-$ROOT/results/ablation}
N=${N:-32} RATE=${RATE:-0.5} IN_LEN=${IN_LEN:-256} OUT_LEN=${OUT_LEN:-64} CAP=${CAP:-64}
KV_MIB=${KV_MIB:-512} MAX_SEQS=${MAX_SEQS:-64} CTX=${CTX:-2048} BUDGET=${BUDGET:-512}
PORT=${PORT:-18220}
mkdir -p "$OUT"
build_bins
TEXT=$(medical_text)
COMMON=(--kv-memory-mib "$KV_MIB" --max-seqs "$MAX_SEQS" --max-context "$CTX")
declare -A ROWS
SARATHI="--token-budget $BUDGET"
if [ -n "${PATCH:-}" ]; then
  ROWS[fused]="--patch-tokenizer $PATCH $SARATHI"
  ROWS[no-patch]="$SARATHI"
  ORDER=(fused no-patch eager-kv prefill-first)
  PATCH_ARGS="--patch-tokenizer $PATCH"
else
  echo "PATCH is not set: the fused row runs without a patch tokenizer and there is no no-patch row" >&2
  ROWS[fused]="$SARATHI"
  ORDER=(fused eager-kv prefill-first)
  PATCH_ARGS=""
fi
ROWS[eager-kv]="$PATCH_ARGS $SARATHI --eager-kv"
ROWS[prefill-first]="$PATCH_ARGS --scheduler prefill-first --token-budget $CTX"
for row in "${ORDER[@]}"; do
  echo "== $row: fused-daemon serve ${COMMON[*]} ${ROWS[$row]}" >&2
  # shellcheck disable=SC2086
  start_daemon "$PORT" "$OUT/$row.log" "${COMMON[@]}" ${ROWS[$row]}
  bench_args=(--base-url "http://127.0.0.1:$PORT" --tokenizer "$GGUF" --dataset-name text
              --dataset-path "$TEXT" --text-input-len "$IN_LEN" --ignore-eos --disable-tqdm
              --scrape-metrics --label "$row")
  "$BENCH" "${bench_args[@]}" --text-output-len "$OUT_LEN" --num-prompts "$N" \
    --request-rate "$RATE" --seed 1 --result-json "$OUT/$row.json" >"$OUT/$row.txt"
  "$BENCH" "${bench_args[@]}" --text-output-len 16 --num-prompts "$CAP" --seed 2 \
    --result-json "$OUT/$row-capacity.json" >"$OUT/$row-capacity.txt"
  stop_servers
done
"$BENCH" plot $(printf "$OUT/%s.json " "${ORDER[@]}") --plot-dir "$OUT"
python3 - "$OUT" "${ORDER[@]}" <<'PY'
import json, sys
out, rows = sys.argv[1], sys.argv[2:]
print("| daemon | req/s | output tok/s | output tok/s (ref. tokens) | prompt tokens (server) | TTFT P99 s | TBT P50 ms | TBT P99 ms | max sequences in KV budget | failed |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for row in rows:
    r = json.load(open(f"{out}/{row}.json"))
    cap = json.load(open(f"{out}/{row}-capacity.json"))["server"]["peak_num_requests_running"]
    print(f"| {row} | {r['request_throughput']:.3f} | {r['output_throughput']:.1f} | "
          f"{r['ref_output_throughput']:.1f} | {r['total_input_tokens']} | "
          f"{r['ttft_ms']['p99'] / 1000:.2f} | {r['itl_ms']['median']:.0f} | {r['itl_ms']['p99']:.0f} | "
          f"{cap:.0f} | {r['failed']} |")
PY
