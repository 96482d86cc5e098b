#!/usr/bin/env bash
# The KV suite and benchmarks on a CUDA GPU (an H200), from binaries built by e2e/gpu/kv_build.sh.
#   1. the KV test suite with the CUDA backend required (FUSED_REQUIRE_GPU=1: no silent skip):
#      property tests against the accounting model, every page boundary read back through the
#      device, pool exhaustion with preemption, typed errors for bad input;
#   2. kv_map (criterion): per-page cuMemMap + cuMemSetAccess and cuMemUnmap latency, and the
#      mapper thread's throughput through the whole manager;
#   3. kv_iteration: iteration time while sequences grow across pages vs the steady state, with
#      map stalls (goal: within 1 %, 0 stalls).
# Prints a summary last; the full log goes to $OUT/kv_gpu.log when $OUT is set.
#
#   bash e2e/gpu/kv_test.sh [BIN_DIR]     (BIN_DIR default .cache/gpu/kv)
set -uo pipefail
BIN=${1:-.cache/gpu/kv}
LOG=${OUT:-/tmp}/kv_gpu.log
: >"$LOG"
for binary in kv_tests kv_map kv_iteration; do
  [ -x "$BIN/$binary" ] || { echo "missing $BIN/$binary: run e2e/gpu/kv_build.sh here first" >&2; exit 2; }
done

# NVRTC for the iteration benchmark's kernels: the toolkit's copy, else the Python wheel's.
nvrtc=$(ls /usr/local/cuda/lib64/libnvrtc.so.13* /usr/local/cuda*/lib64/libnvrtc.so.13* 2>/dev/null | head -1)
if [ -z "$nvrtc" ]; then
  nvrtc=$(python3 -c 'import nvidia, glob, os; print((glob.glob(os.path.join(list(nvidia.__path__)[0], "*", "lib", "libnvrtc.so.13*")) + [""])[0])' 2>/dev/null)
fi
[ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "libnvrtc: ${nvrtc:-not found}" | tee -a "$LOG"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$LOG"

# Every CUDA test and benchmark fails, instead of skipping, when it finds no GPU.
export FUSED_REQUIRE_GPU=1

echo "== 1. KV test suite (CPU and CUDA backends)" | tee -a "$LOG"
"$BIN/kv_tests" kv:: --test-threads=1 2>&1 | tee -a "$LOG"
suite=${PIPESTATUS[0]}

echo "== 2. kv_map (criterion, CUDA groups)" | tee -a "$LOG"
export CRITERION_HOME=/tmp/kv_criterion CARGO_TARGET_DIR=/tmp/kv_criterion
"$BIN/kv_map" --bench cuda-vmm 2>&1 | tee -a "$LOG"
map=${PIPESTATUS[0]}

echo "== 3. kv_iteration (CUDA)" | tee -a "$LOG"
"$BIN/kv_iteration" --gpu-only 2>&1 | tee "$LOG.iteration" | tee -a "$LOG"
iteration=${PIPESTATUS[0]}

echo
echo "==================== KV on the GPU: summary ===================="
echo "test suite: $(grep -E '^test result' "$LOG" | tail -1) (exit $suite)"
grep -E '^test kv::tests::cuda::' "$LOG"
echo
echo "| criterion benchmark | time per call [low est high] | µs per page (est) |"
echo "|---|---|---|"
awk '
  /^kv_map\/cuda-vmm\/|^kv_mapper\/cuda-vmm\// { id = $1; next }
  id != "" && /time:/ {
    match($0, /\[.*\]/); t = substr($0, RSTART, RLENGTH);
    pages = (id ~ /64/) ? 64 : 1; split(t, f, " "); est = f[3]; unit = f[4];
    scale = (unit == "ms") ? 1000 : (unit == "ns") ? 0.001 : (unit == "s") ? 1e6 : 1;
    printf "| %s | %s | %.2f |\n", id, t, est * scale / pages; id = ""
  }' "$LOG"
echo "(kv_map exit $map)"
echo
grep -E '^\|' "$LOG.iteration" || echo "kv_iteration printed no table"
echo "(kv_iteration exit $iteration)"
[ "$suite" = 0 ] && [ "$map" = 0 ] && [ "$iteration" = 0 ]
