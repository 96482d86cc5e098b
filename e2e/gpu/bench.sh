#!/usr/bin/env bash
# Everything the GPU issue asks to show, in one call on the H200 machine (see README.md):
# kernel checks, forward checks (CPU and HF transformers), ceilings, (a) batch-1 decode vs the
# memory roofline, (b) 4K prefill vs the GEMM rate, (e) KV layouts, (c) offline throughput vs
# transformers, the daemon serving HTTP on the GPU, and (d) online serving, Sarathi vs
# prefill-first (online.sh). Prints a short table last.
# Env: PARTS (fused-gpu-bench parts), BUDGETS (offline token budgets), PEERS=0 skips
# transformers, SERVE=0 skips the HTTP run, ONLINE=0 skips (d).
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
set +e
parts="${PARTS:-ceilings,ops,decode,prefill,vattn,offline}"
status=0
"$bin/fused-gpu-check" > "$out/kernel-check.txt" 2>&1 || status=1
tail -3 "$out/kernel-check.txt"
hf="$(mktemp -d /tmp/fused-hf.XXXX)"
"$bin/fused-gpu-bench" --only "check,$parts" --hf-dir "$hf" --json "$out/results.jsonl" \
  --token-budget "${BUDGETS:-4096,8192}" --tokenizer "$here/tok" \
  > "$out/bench.txt" 2>&1 || status=1
python3 "$here/hf_logits.py" "$hf" > "$out/hf-check.txt" 2>&1 || status=1
rm -rf "$hf"
if [ "${PEERS:-1}" = 1 ]; then
  PYTHONUNBUFFERED=1 timeout "${PEERS_TIMEOUT:-330}" python3 "$here/hf_peers.py" 256 512 128 \
    > "$out/peers.txt" 2>&1 || true
fi
if [ "${SERVE:-1}" = 1 ]; then
  python3 "$here/serve_smoke.py" "$bin/fused-daemon" "$here/tok" > "$out/serve.txt" 2>&1 || status=1
fi
if [ "${ONLINE:-1}" = 1 ]; then
  OUT="$out" bash "$here/online.sh" > "$out/online.txt" 2>&1 || status=1
fi
echo
echo "==== kernels ===="; grep -E "FAIL|passed|FAILED" "$out/kernel-check.txt" | tail -5
echo "==== fused-gpu-bench ===="; sed -n '/==== fused-gpu-bench results/,$p' "$out/bench.txt" | tail -40
echo "==== HF logits ===="; tail -1 "$out/hf-check.txt"
[ -f "$out/peers.txt" ] && { echo "==== peers ===="; grep PEER "$out/peers.txt"; }
[ -f "$out/serve.txt" ] && { echo "==== serve ===="; grep -E "completion|bad request|metrics|serve smoke" "$out/serve.txt"; }
[ -f "$out/online.txt" ] && { echo "==== (d) online ===="; grep -E "^\||ONLINE" "$out/online.txt"; }
echo "bench.sh: $([ $status = 0 ] && echo 'checks PASSED' || echo 'FAILURES (see $OUT)')"
exit $status
