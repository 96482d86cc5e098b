#!/usr/bin/env bash
# Correctness on the GPU: every kernel against its CPU reference, the GPU forward pass against
# the CPU one (both KV layouts, eager and graph decode), and against HF transformers.
# Run from the directory holding bin/ (see e2e/gpu/README.md). Exit status: non-zero on failure.
source "$(dirname "$0")/env.sh"
status=0
"$bin/fused-gpu-check" 2>&1 | tee "$out/kernel-check.txt" || status=1
hf="$(mktemp -d /tmp/fused-hf.XXXX)"
"$bin/fused-gpu-bench" --only check --hf-dir "$hf" 2>&1 | tee "$out/forward-check.txt" || status=1
python3 "$(dirname "$0")/hf_logits.py" "$hf" 2>&1 | tee "$out/hf-check.txt" || status=1
echo "check.sh: $([ $status = 0 ] && echo ALL PASSED || echo FAILURES)"
exit $status
