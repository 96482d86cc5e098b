#!/usr/bin/env bash
# (d) Online serving on the GPU: `fused-daemon serve --device cuda` (dummy Llama-2-7B) under
# Poisson arrivals at increasing rates, with long prompts mixed in among short ones, driven over
# loopback by `fused-bench`; Sarathi (chunked prefills under a token budget) against
# prefill-first (vLLM v0: a whole prompt in one iteration). Prints P50/P99 TTFT and TBT per rate
# and each policy's capacity: the highest rate whose P99 TBT is at most $SLO_MS.
#   OUT=<dir> bash e2e/gpu/online.sh      (bin/ holds fused-daemon [cuda] and fused-bench, tok/)
# Env: RATES (req/s, comma-separated), DURATION (s of arrivals per rate), BUDGET (Sarathi),
#      LONG_FRACTION, LONG_LEN, IN_LEN, OUT_LEN, SLO_MS.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
set +e
out="$out/online"; mkdir -p "$out"
rates="${RATES:-12,24,36,48}"
duration="${DURATION:-8}"
budget="${BUDGET:-1024}"
ctx=4096   # Llama-2-7B's context
common=(serve --device cuda --load-format dummy --model llama-2-7b --tokenizer "$here/tok"
        --max-seqs 128 --max-context "$ctx" --max-queue 4096 --gpu-memory-utilization 0.9)
declare -A policy=(
  [sarathi]="--scheduler sarathi --token-budget $budget"
  [prefill-first]="--scheduler prefill-first --token-budget $ctx"
)
status=0
for name in sarathi prefill-first; do
  port=18500
  # shellcheck disable=SC2086
  "$bin/fused-daemon" "${common[@]}" ${policy[$name]} --port "$port" > "$out/$name-daemon.log" 2>&1 &
  pid=$!
  for _ in $(seq 240); do curl -sf "localhost:$port/ready" >/dev/null && break; sleep 0.5; done
  "$bin/fused-bench" --base-url "http://127.0.0.1:$port" --tokenizer "$here/tok/tokenizer.json" \
    --dataset-name random --random-input-len "${IN_LEN:-512}" --random-output-len "${OUT_LEN:-128}" \
    --random-range-ratio 0.5 --random-long-fraction "${LONG_FRACTION:-0.1}" \
    --random-long-input-len "${LONG_LEN:-2600}" --num-prompts 400 --duration "$duration" \
    --sweep-request-rates "$rates" --ignore-eos --seed 1 --scrape-metrics --disable-tqdm \
    --request-timeout-s 120 --label "$name" --result-json "$out/$name.json" \
    > "$out/$name.txt" 2>&1 || status=1
  kill -TERM "$pid"; wait "$pid"
done
python3 - "$out" "${SLO_MS:-100}" <<'PY'
import json, sys
out, slo = sys.argv[1], float(sys.argv[2])
print("| scheduler | rate req/s | done req/s | failed | output tok/s | TTFT P50 ms | TTFT P99 ms | TBT P50 ms | TBT P99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
capacity = {}
for name in ["sarathi", "prefill-first"]:
    try:
        runs = json.load(open(f"{out}/{name}.json"))["sweep"]
    except (OSError, KeyError, ValueError) as e:
        print(f"| {name} | no result ({e}) |"); continue
    for r in runs:
        ttft, itl = r["ttft_ms"], r["itl_ms"]
        print(f"| {name} | {r['request_rate']:g} | {r['request_throughput']:.2f} | {r['failed']} | "
              f"{r['output_throughput']:.0f} | {ttft['median']:.0f} | {ttft['p99']:.0f} | "
              f"{itl['median']:.1f} | {itl['p99']:.1f} |")
        if itl["p99"] <= slo and r["failed"] == 0:
            capacity[name] = max(capacity.get(name, 0), r["request_rate"])
for name in ["sarathi", "prefill-first"]:
    print(f"ONLINE capacity (P99 TBT <= {slo:g} ms) {name}: {capacity.get(name, 0):g} req/s")
PY
exit $status
