#!/usr/bin/env bash
# The streaming GEMV (issue 19's weight stream, issue 20's FP8 decode) in one call: every kernel
# check with both GEMV builds (fused-gpu-check), the forward checks (bf16 and FP8 models against
# the CPU), the copy bandwidth, each decode GEMV of a Llama-2-7B layer at 1 and 8 rows in bf16
# and FP8 through both builds, and (a) batch-1 decode of dummy Llama-2-7B in bf16 and FP8 with
# the streaming build, the warp-per-row build and the stream's depth knob, alternating ROUNDS
# times. Prints a short table last; logs and JSON lines under $OUT.
# Usage: OUT=<dir> bash e2e/gpu/gemv_stream.sh   (bin/ holds fused-gpu-check and fused-gpu-bench
# built with --features cuda). Env: ROUNDS (2), STEPS (128), SHAPE (llama-2-7b), FORWARD=0 runs
# only the FP8-checkpoint forward check (the others take ≈ 2 min).
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
set +e
out="${OUT:-/tmp/fused-gpu-out}"; mkdir -p "$out"
rounds="${ROUNDS:-2}" steps="${STEPS:-128}" shape="${SHAPE:-llama-2-7b}"
status=0
timeout 300 "$bin/fused-gpu-check" > "$out/kernel-check.txt" 2>&1 || status=1
echo "kernel checks done at ${SECONDS}s (status $status)"
forward=$([ "${FORWARD:-1}" = 1 ] && echo check || echo fp8-checkpoint)
timeout 300 "$bin/fused-gpu-bench" --only "$forward" --json "$out/forward-check.jsonl" > "$out/forward-check.txt" 2>&1 || status=1
echo "forward checks ($forward) done at ${SECONDS}s (status $status)"
timeout 300 "$bin/fused-gpu-bench" --only ceilings,ops --shape "$shape" --json "$out/ops.jsonl" > "$out/ops.txt" 2>&1 || status=1
echo "ops done at ${SECONDS}s"
for round in $(seq 1 "$rounds"); do
  for format in bf16 fp8; do
    flag=$([ "$format" = fp8 ] && echo --fp8)
    timeout 300 "$bin/fused-gpu-bench" $flag --only ceilings,decode --shape "$shape" --decode-steps "$steps" \
      --json "$out/$format-perf-$round.jsonl" > "$out/$format-perf-$round.txt" 2>&1 || status=1
    echo "$format round $round done at ${SECONDS}s"
  done
done
echo
echo "==== checks ===="
echo "kernels: $(grep -c PASS "$out/kernel-check.txt") pass, $(grep -c FAIL "$out/kernel-check.txt") fail"
grep -E "FAIL|panicked|rror" "$out/kernel-check.txt" | head -20
grep -E "gemv stream 1x4096|gemv stream 1x4096x11008|fp8 stream 1x" "$out/kernel-check.txt" | head -8
echo "forward: $(grep -c '"pass":true' "$out/forward-check.jsonl") pass, $(grep -c '"pass":false' "$out/forward-check.jsonl") fail"
grep -h '"pass":false' "$out/forward-check.jsonl" | head -5
grep -h "FP8 checkpoint" "$out/forward-check.txt"
echo "==== decode GEMVs of one layer: streaming vs warp per row ===="
grep -E "copy|decode gemv" "$out/ops.txt" | cut -c1-230
tail -3 "$out/ops.txt" | grep -iE "error|panic"
echo "==== (a) batch-1 decode: each run (bf16 | fp8) ===="
python3 "$here/compare_table.py" "$out" bf16 fp8 --parts a,ceiling --ratio
grep -hiE "error|panicked" "$out"/*-perf-*.txt | head -5
echo "gemv_stream.sh: $([ $status = 0 ] && echo 'PASSED' || echo "FAILURES (see $out)") at ${SECONDS}s"
exit $status
