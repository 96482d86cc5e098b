#!/usr/bin/env bash
# The cost of structured outputs (issue 17): the same daemon, the same prompts and load (a closed
# loop of CONC streams, --ignore-eos, OUT_LEN tokens each, chat), once free and once constrained
# by a JSON schema (llguidance masks every token), alternated ROUNDS times in one run.
# The schema is a list of at least 1000 short strings, so no output can complete before OUT_LEN
# tokens and both runs generate the same number of tokens. Prefix caching is off: each round's
# second mode sends the first mode's prompts again, and cached prompts would skip their prefill
# (a 10x lower TTFT that once passed for a faster constrained run).
# Usage: scripts/bench-structured.sh [OUT_DIR]     (≈ 6 min on 2 cores)
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
OUT=${1:-$ROOT/results/structured}
IN_LEN=${IN_LEN:-64} OUT_LEN=${OUT_LEN:-64} CONC=${CONC:-16} ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18240}
mkdir -p "$OUT"
[ -n "${SKIP_BUILD:-}" ] || build_bins  # SKIP_BUILD=1: measure the binaries already built
TEXT=$(medical_text)
SCHEMA='{"type": "object", "properties": {"notes": {"type": "array", "minItems": 1000, "items": {"type": "string", "maxLength": 40}}}, "required": ["notes"]}'
FORMAT="{\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"notes\", \"schema\": $SCHEMA, \"strict\": true}}}"
start_daemon "$PORT" "$OUT/daemon.log" --max-seqs "$CONC" --no-enable-prefix-caching
for round in $(seq "$ROUNDS"); do
  for mode in free schema; do
    extra='{}'; [ "$mode" = schema ] && extra=$FORMAT
    "$BENCH" --base-url "http://127.0.0.1:$PORT" --backend openai-chat --tokenizer "$GGUF" \
      --dataset-name text --dataset-path "$TEXT" --text-input-len "$IN_LEN" \
      --text-output-len "$OUT_LEN" --ignore-eos --num-prompts $((CONC * 2)) \
      --max-concurrency "$CONC" --seed "$round" --extra-body "$extra" --disable-tqdm \
      --label "$mode" --result-json "$OUT/$mode-$round.json" >"$OUT/$mode-$round.txt"
  done
done
stop_servers
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
load = lambda n: json.load(open(f"{out}/{n}.json"))
print("| round | free output tok/s | schema output tok/s | schema / free | free TPOT ms | schema TPOT ms |")
print("|---:|---:|---:|---:|---:|---:|")
ratios = []
for r in range(1, rounds + 1):
    f, s = load(f"free-{r}"), load(f"schema-{r}")
    ratios.append(s["output_throughput"] / f["output_throughput"])
    print(f"| {r} | {f['output_throughput']:.1f} | {s['output_throughput']:.1f} | {ratios[-1]:.3f} | {f['tpot_ms']['mean']:.1f} | {s['tpot_ms']['mean']:.1f} |")
print(f"\nmedian schema / free: {statistics.median(ratios):.3f}")
PY
