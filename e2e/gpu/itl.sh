#!/usr/bin/env bash
# A single stream over HTTP against the decode step it runs (issue 19): for bf16 and FP8 weights,
# the graph decode step of dummy Llama-2-7B timed in-process (`fused-gpu-bench --only decode`,
# 128 steps), then `fused-daemon serve --device cuda` on the same weights driven by `fused-bench`
# one request at a time (--max-concurrency 1; 128-token prompts, 256 output tokens, --ignore-eos):
# the inter-token latency's P50 and P99 and their ratio to the step. ≈ 2 min.
#   OUT=<dir> bash e2e/gpu/itl.sh     (bin/ holds fused-daemon, fused-bench, fused-gpu-bench
#                                      built with --features cuda; tok/ beside this script)
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
set +e
out="$out/itl"; mkdir -p "$out"
status=0
for format in bf16 fp8; do
  flag=$([ "$format" = fp8 ] && echo --fp8)
  quant=$([ "$format" = fp8 ] && echo "--quantization fp8")
  timeout 200 "$bin/fused-gpu-bench" $flag --only decode --decode-steps 128 \
    --json "$out/$format-step.jsonl" > "$out/$format-step.txt" 2>&1 || status=1
  port=18600
  # shellcheck disable=SC2086
  "$bin/fused-daemon" serve --device cuda --load-format dummy --model llama-2-7b $quant \
    --tokenizer "$here/tok" --max-seqs 8 --max-context 4096 --port "$port" > "$out/$format-daemon.log" 2>&1 &
  pid=$!
  for _ in $(seq 240); do curl -sf "localhost:$port/ready" >/dev/null && break; sleep 0.5; done
  "$bin/fused-bench" --base-url "http://127.0.0.1:$port" --tokenizer "$here/tok/tokenizer.json" \
    --dataset-name random --random-input-len 128 --random-output-len 256 --num-prompts 8 \
    --max-concurrency 1 --ignore-eos --seed 1 --disable-tqdm --label "$format" \
    --result-json "$out/$format-http.json" > "$out/$format-http.txt" 2>&1 || status=1
  kill -TERM "$pid"; wait "$pid"
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print("| weights | decode step (graph, in-process) ms | HTTP ITL P50 ms | HTTP ITL P99 ms | P50 / step | P99 / step | failed |")
print("|---|---:|---:|---:|---:|---:|---:|")
for fmt in ["bf16", "fp8"]:
    try:
        steps = [json.loads(l) for l in open(f"{out}/{fmt}-step.jsonl")]
        tok_s = next(r["value"] for r in steps if r["name"].endswith("batch-1 decode tok/s (graph)"))
        http = json.load(open(f"{out}/{fmt}-http.json"))
    except (OSError, StopIteration, KeyError, ValueError) as e:
        print(f"| {fmt} | no result ({e!r}) |"); continue
    step, itl = 1e3 / tok_s, http["itl_ms"]
    print(f"| {fmt} | {step:.2f} | {itl['median']:.2f} | {itl['p99']:.2f} | {itl['median'] / step:.2f} | "
          f"{itl['p99'] / step:.2f} | {http['failed']} |")
PY
exit $status
