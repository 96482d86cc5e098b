#!/usr/bin/env bash
# Issue 20's quantized weights on the GPU in one call: the kernel checks (the GGUF block GEMV and
# its expansion among them), the forward checks (Q8_0 and Q4_K blocks kept on the device against
# the CPU on the same decoded values, FP8, bf16), each decode GEMV of a layer at 1-8 rows in
# every format (`ops`: TB/s against the copy bandwidth), then batch-1 and 2/4/8-sequence decode and a
# 4K prefill of dummy Llama-2-7B with bf16, FP8, Q8_0 and Q4_K block matrices, each against its
# own roofline (the bytes a step reads over the copy bandwidth measured in the same process).
# Prints a short table last; logs and JSON lines under $OUT.
# Usage: OUT=<dir> bash e2e/gpu/quant.sh   (bin/ holds fused-gpu-check and fused-gpu-bench built
# with --features cuda). Env: FORMATS ("bf16 fp8 q8_0 q4_k"), STEPS (128), SHAPE (llama-2-7b),
# CHECKS=0 skips the checks.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
set +e
status=0
if [ "${CHECKS:-1}" = 1 ]; then
  timeout 300 "$bin/fused-gpu-check" > "$out/kernel-check.txt" 2>&1 || status=1
  echo "kernel checks done at ${SECONDS}s (status $status)"
  timeout 300 "$bin/fused-gpu-bench" --only check --json "$out/forward-check.jsonl" > "$out/forward-check.txt" 2>&1 || status=1
  echo "forward checks done at ${SECONDS}s (status $status)"
fi
timeout 300 "$bin/fused-gpu-bench" --only ceilings,ops --shape "${SHAPE:-llama-2-7b}" --json "$out/ops.jsonl" \
  > "$out/ops.txt" 2>&1 || status=1
echo "ops done at ${SECONDS}s (status $status)"
for format in ${FORMATS:-bf16 fp8 q8_0 q4_k}; do
  case "$format" in
    bf16) flag=() ;;
    fp8) flag=(--fp8) ;;
    *) flag=(--gguf "$format") ;;
  esac
  timeout 300 "$bin/fused-gpu-bench" "${flag[@]}" --only ceilings,decode,decode-batches,prefill \
    --shape "${SHAPE:-llama-2-7b}" --decode-steps "${STEPS:-128}" --json "$out/$format-perf-1.jsonl" \
    > "$out/$format-perf-1.txt" 2>&1 || status=1
  echo "$format done at ${SECONDS}s (status $status)"
done
echo
if [ "${CHECKS:-1}" = 1 ]; then
  echo "==== checks ===="
  echo "kernels: $(grep -c PASS "$out/kernel-check.txt") pass, $(grep -c FAIL "$out/kernel-check.txt") fail"
  grep -E "FAIL|panicked|rror" "$out/kernel-check.txt" | head -20
  grep -E "Q8_0|Q4_K" "$out/kernel-check.txt" | head -40
  echo "forward: $(grep -c '"pass":true' "$out/forward-check.jsonl") pass, $(grep -c '"pass":false' "$out/forward-check.jsonl") fail"
  grep -h '"pass":false' "$out/forward-check.jsonl" | head -5
  grep -hE "blocks" "$out/forward-check.txt" | head -12
fi
echo "==== each decode GEMV of a layer: GGUF blocks, and bf16 / FP8 for comparison ===="
grep -E "copy|rows (Q8_0|Q4_K): blocks|1 rows (bf16|fp8)" "$out/ops.txt" | cut -c1-160
echo "==== decode and prefill by weight format ===="
for format in ${FORMATS:-bf16 fp8 q8_0 q4_k}; do
  echo "-- $format"
  grep -hE "GB read per decode step|copy|decode tok/s \(graph\)|aggregate tok/s \(graph\)|prefill" "$out/$format-perf-1.txt" | cut -c1-200 | head -12
  grep -hiE "error|panicked" "$out/$format-perf-1.txt" | head -3
done
echo "quant.sh: $([ $status = 0 ] && echo PASSED || echo "FAILURES (see $out)") at ${SECONDS}s"
exit $status
