#!/usr/bin/env bash
# Issue 19's (a) figures beyond context 128, in one call: batch-1 decode of dummy Llama-2-7B and
# of the Llama-3-8B shape (GQA, 128k vocabulary), bf16 and FP8, at contexts 512, 2,048 and
# 4,000 against a roofline of the weight bytes plus the K/V bytes read at that context (the copy
# bandwidth measured in the same process), per-op graphs and the persistent kernel (bf16 only)
# side by side, and each shape's (a) variants at context ≈ 256.
# Prints a short table last; logs and JSON lines under $OUT.
# Usage: OUT=<dir> bash e2e/gpu/contexts.sh   (bin/ holds fused-gpu-bench built with
# --features cuda). Env: SHAPES ("llama-2-7b llama-3-8b"), FORMATS ("bf16 fp8"), STEPS (128).
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
set +e
status=0
for shape in ${SHAPES:-llama-2-7b llama-3-8b}; do
  for format in ${FORMATS:-bf16 fp8}; do
    flag=$([ "$format" = fp8 ] && echo --fp8)
    timeout 300 "$bin/fused-gpu-bench" $flag --only ceilings,decode,decode-contexts --shape "$shape" \
      --decode-steps "${STEPS:-128}" --json "$out/$shape-$format.jsonl" > "$out/$shape-$format.txt" 2>&1 || status=1
    echo "$shape $format done at ${SECONDS}s (status $status)"
  done
done
echo
echo "==== batch-1 decode (graph, default build) ===="
grep -hE "copy|batch-1 decode tok/s \((graph|persistent kernel)\)|at context" "$out"/*.txt | cut -c1-220
grep -hiE "error|panicked" "$out"/*.txt | head -5
echo "contexts.sh: $([ $status = 0 ] && echo PASSED || echo "FAILURES (see $out)") at ${SECONDS}s"
exit $status
