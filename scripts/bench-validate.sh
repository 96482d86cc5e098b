#!/usr/bin/env bash
# Validate fused-bench against an independent tool: PyPI guidellm and fused-bench measure the
# same daemon under the same load (the same medical prompts, fixed output length, a closed loop
# of CONC concurrent streams), alternating ROUNDS times; prints throughput and TTFT side by side.
# Usage: scripts/bench-validate.sh [OUT_DIR]     (≈ 8 min on 2 cores)
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
OUT=${1:-$ROOT/results/validate}
N=${N:-32} CONC=${CONC:-4} OUTPUT_LEN=${OUTPUT_LEN:-48} LINES=${LINES:-12} ROUNDS=${ROUNDS:-2}
PORT=${PORT:-18210}
mkdir -p "$OUT"
build_bins
GUIDELLM=$("$ROOT/scripts/bench-peers.sh" guidellm | tail -1)/guidellm
# One prompt set for both tools: LINES consecutive lines of held-out medical text each, as a
# JSONL for guidellm and a ShareGPT file for fused-bench.
python3 - "$(medical_text)" "$OUT" "$N" "$LINES" "$OUTPUT_LEN" <<'PY'
import json, sys
src, out, n, k, olen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lines = [l.strip() for l in open(src, encoding="utf-8") if l.strip()]
prompts = ["\n".join(lines[i * k:(i + 1) * k]) for i in range(n)]
with open(f"{out}/prompts.jsonl", "w") as f:
    for p in prompts:
        f.write(json.dumps({"prompt": p, "output_tokens_count": olen}) + "\n")
json.dump([{"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": "-"}]}
           for p in prompts], open(f"{out}/prompts.sharegpt.json", "w"))
PY
cat >"$OUT/guidellm-scenario.json" <<JSON
{"spec": {
  "backend": {"kind": "openai_http", "target": "http://127.0.0.1:$PORT", "model": "smollm2",
              "request_format": "/v1/completions",
              "extras": {"body": {"ignore_eos": true, "temperature": 0}}},
  "profile": {"kind": "concurrent", "streams": $CONC},
  "data": [{"kind": "json_file", "path": "$OUT/prompts.jsonl"}],
  "constraints": [{"kind": "max_requests", "count": $N}]}}
JSON
start_daemon "$PORT" "$OUT/daemon.log"
for round in $(seq "$ROUNDS"); do
  "$BENCH" --base-url "http://127.0.0.1:$PORT" --tokenizer "$GGUF" --dataset-name sharegpt \
    --dataset-path "$OUT/prompts.sharegpt.json" --sharegpt-output-len "$OUTPUT_LEN" \
    --num-prompts "$N" --max-concurrency "$CONC" --ignore-eos --disable-tqdm \
    --label "fused-bench #$round" --result-json "$OUT/fused-bench-$round.json" >/dev/null
  "$GUIDELLM" run -c "$OUT/guidellm-scenario.json" --disable-console \
    --output "kind=json,path=$OUT/guidellm-$round.json"
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = []
for r in range(1, rounds + 1):
    f = json.load(open(f"{out}/fused-bench-{r}.json"))
    rows.append(("fused-bench", r, f["completed"], f["output_throughput"], f["ttft_ms"]["mean"],
                 f["ttft_ms"]["median"], f["ttft_ms"]["p99"], f["itl_ms"]["mean"]))
    b = json.load(open(f"{out}/guidellm-{r}.json"))["benchmarks"][0]["metrics"]
    ttft, itl = b["time_to_first_token_ms"]["successful"], b["inter_token_latency_ms"]["successful"]
    rows.append(("guidellm", r, b["request_totals"]["successful"],
                 b["output_tokens_per_second"]["successful"]["mean"], ttft["mean"],
                 ttft["median"], ttft["percentiles"]["p99"], itl["mean"]))
print("| tool | round | completed | output tok/s | TTFT mean ms | TTFT median ms | TTFT P99 ms | ITL mean ms |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for t, r, c, tp, m, md, p99, itl in rows:
    print(f"| {t} | {r} | {c} | {tp:.1f} | {m:.0f} | {md:.0f} | {p99:.0f} | {itl:.1f} |")
def mean(tool, i): return sum(x[i] for x in rows if x[0] == tool) / rounds
for name, i in [("output tok/s", 3), ("TTFT mean", 4), ("TTFT median", 5), ("ITL mean", 7)]:
    a, g = mean("fused-bench", i), mean("guidellm", i)
    print(f"{name}: fused-bench {a:.1f}, guidellm {g:.1f}, fused-bench / guidellm = {a / g:.3f}")
PY
