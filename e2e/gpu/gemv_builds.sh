#!/usr/bin/env bash
# The decode GEMV's two builds (issue 19's batch 2–8 decode, issue 20's FP8 decode) in one call:
# every kernel check with the warp-per-row and the tensor-core build (fused-gpu-check), the
# forward checks (bf16 and FP8 models against the CPU, with the default build), the copy
# bandwidth, each decode GEMV of a Llama-2-7B layer at 1, 2, 4 and 8 rows in bf16 and FP8 through
# both builds, and decode of dummy Llama-2-7B in bf16 and FP8: one sequence with each variant of
# the step (a), and 2, 4 and 8 sequences with the default build against a warp per row.
# Alternates bf16 and FP8 ROUNDS times. Prints a short table last; logs and JSON lines under $OUT.
# Usage: OUT=<dir> bash e2e/gpu/gemv_builds.sh   (bin/ holds fused-gpu-check and fused-gpu-bench
# built with --features cuda). Env: ROUNDS (1), STEPS (128), SHAPE (llama-2-7b), FORWARD=0 runs
# only the FP8-checkpoint forward check (the others take ≈ 2 min).
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
set +e
rounds="${ROUNDS:-1}" steps="${STEPS:-128}" shape="${SHAPE:-llama-2-7b}"
status=0
timeout 300 "$bin/fused-gpu-check" > "$out/kernel-check.txt" 2>&1 || status=1
echo "kernel checks done at ${SECONDS}s (status $status)"
forward=$([ "${FORWARD:-1}" = 1 ] && echo check || echo fp8-checkpoint)
timeout 300 "$bin/fused-gpu-bench" --only "$forward" --json "$out/forward-check.jsonl" > "$out/forward-check.txt" 2>&1 || status=1
echo "forward checks ($forward) done at ${SECONDS}s (status $status)"
timeout 300 "$bin/fused-gpu-bench" --only ceilings,ops --shape "$shape" --json "$out/ops.jsonl" > "$out/ops.txt" 2>&1 || status=1
echo "ops done at ${SECONDS}s (status $status)"
for round in $(seq 1 "$rounds"); do
  for format in bf16 fp8; do
    flag=$([ "$format" = fp8 ] && echo --fp8)
    timeout 300 "$bin/fused-gpu-bench" $flag --only ceilings,decode,decode-batches --shape "$shape" \
      --decode-steps "$steps" --json "$out/$format-perf-$round.jsonl" > "$out/$format-perf-$round.txt" 2>&1 || status=1
    echo "$format round $round done at ${SECONDS}s (status $status)"
  done
done
echo
echo "==== checks ===="
echo "kernels: $(grep -c PASS "$out/kernel-check.txt") pass, $(grep -c FAIL "$out/kernel-check.txt") fail"
grep -E "FAIL|panicked|rror" "$out/kernel-check.txt" | head -20
echo "forward: $(grep -c '"pass":true' "$out/forward-check.jsonl") pass, $(grep -c '"pass":false' "$out/forward-check.jsonl") fail"
grep -h '"pass":false' "$out/forward-check.jsonl" | head -5
echo "==== decode GEMVs of one layer: tensor cores vs warp per row ===="
grep -E "copy|decode gemv" "$out/ops.txt" | cut -c1-200
grep -iE "error|panic" "$out/ops.txt" | head -3
echo "==== decode: each run (bf16 | fp8) ===="
python3 "$here/compare_table.py" "$out" bf16 fp8 --parts a,ceiling --ratio
grep -hiE "error|panicked" "$out"/*-perf-*.txt | head -5
echo "gemv_builds.sh: $([ $status = 0 ] && echo 'PASSED' || echo "FAILURES (see $out)") at ${SECONDS}s"
exit $status
