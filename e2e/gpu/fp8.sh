#!/usr/bin/env bash
# FP8 weights (`--quantization fp8`) on the H200, in one call: every kernel check (fused-gpu-check:
# quantize, expand, FP8 GEMV in row groups, SwiGLU, the cuBLAS path past the GEMV), the forward
# checks (fused-gpu-bench --only check: bf16 and FP8 GPU models against the CPU model holding the
# same values), then bf16 and FP8 dummy Llama-2-7B alternating: (a) batch-1 decode, (b) 4K
# prefill, (c) offline throughput (round 1: 64 requests, the FP8 GEMV covers every decode batch;
# round 2: 256, past it); and the daemon serving FP8 over HTTP.
# Prints a short table last; logs and JSON lines under $OUT.
# Usage: OUT=<dir> bash e2e/gpu/fp8.sh   (bin/ holds fused-gpu-check, fused-gpu-bench and
# fused-daemon built with --features cuda; tok/ a 32000-token tokenizer.json). Env: ROUNDS (2),
# STEPS (128), DEADLINE (seconds after which no new timed run starts, 300).
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
set +e
rounds="${ROUNDS:-2}" steps="${STEPS:-128}" deadline="${DEADLINE:-300}"
status=0
"$bin/fused-gpu-check" > "$out/kernel-check.txt" 2>&1 || status=1
"$bin/fused-gpu-bench" --only check --json "$out/forward-check.jsonl" > "$out/forward-check.txt" 2>&1 || status=1
echo "checks done at ${SECONDS}s (status so far $status)"
for round in $(seq 1 "$rounds"); do
  for format in bf16 fp8; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "deadline: round $round $format not run"; continue; fi
    flag=$([ "$format" = fp8 ] && echo --fp8)
    "$bin/fused-gpu-bench" $flag --only decode,prefill,offline --decode-steps "$steps" \
      --offline-requests "$([ "$round" = 1 ] && echo 64 || echo 256)" --tokenizer "$here/tok" --token-budget 8192 \
      --json "$out/$format-perf-$round.jsonl" > "$out/$format-perf-$round.txt" 2>&1 || status=1
    echo "$format round $round done at ${SECONDS}s"
  done
done
# The daemon over HTTP with --quantization fp8: ready, a greedy completion, a stream.
port=18080
"$bin/fused-daemon" serve --device cuda --load-format dummy --model llama-2-7b --tokenizer "$here/tok" \
  --quantization fp8 --max-seqs 64 --max-context 4096 --port "$port" > "$out/serve-fp8.log" 2>&1 &
pid=$!
for _ in $(seq 240); do curl -sf "localhost:$port/ready" >/dev/null && break; sleep 0.5; done
t0=$(date +%s.%N)
served=$(curl -s "localhost:$port/v1/completions" -H 'content-type: application/json' \
  -d '{"prompt":"The H200 has","max_tokens":64,"ignore_eos":true,"temperature":0}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["usage"]["completion_tokens"])')
t1=$(date +%s.%N)
kill -TERM "$pid"; wait "$pid"; serve_exit=$?
[ "$served" = 64 ] && [ "$serve_exit" = 0 ] || status=1
echo
echo "==== checks ===="
echo "kernels: $(grep -c PASS "$out/kernel-check.txt") pass, $(grep -c FAIL "$out/kernel-check.txt") fail"
grep -E "fp8|FAIL" "$out/kernel-check.txt" | head -40
echo "forward: $(grep -c '"pass":true' "$out/forward-check.jsonl") pass, $(grep -c '"pass":false' "$out/forward-check.jsonl") fail"
grep -h 'fp8' "$out/forward-check.txt" | head -12
grep -h '"pass":false' "$out/forward-check.jsonl" | head -5
echo "serve --quantization fp8: $served completion tokens in $(python3 -c "print(f'{($t1-$t0)*1000:.0f}')") ms, exit $serve_exit after SIGTERM"
grep -E "ERROR|panicked" "$out/serve-fp8.log" | head -5
echo "==== (a) decode, (b) prefill, (c) offline: each run's value (bf16 | fp8) ===="
python3 "$here/compare_table.py" "$out" bf16 fp8 --parts a,b,c --ratio
echo "fp8.sh: $([ $status = 0 ] && echo 'PASSED' || echo "FAILURES (see $out)") at ${SECONDS}s"
exit $status
