#!/usr/bin/env bash
# Two builds of the GPU path in one call on the H200, for a refactor that must change nothing:
# every kernel check (fused-gpu-check) and the GPU-vs-CPU forward checks (fused-gpu-bench --only
# check) of each, then (a) batch-1 decode, (b) 4K prefill and (c) offline throughput, the builds
# alternating for up to ROUNDS rounds (so the spread of one build's runs is the noise). Prints a
# short table last; full logs and JSON lines under $OUT.
# Usage: OUT=<dir> bash before_after.sh <before-bin-dir> <after-bin-dir>   (each dir holds
# fused-gpu-check and fused-gpu-bench). Env: ROUNDS (2), STEPS (decode steps, 128), BUDGET
# (offline token budget, 8192), DEADLINE (seconds after which no new timed run starts, 330),
# PARTS (timed fused-gpu-bench parts, ceilings,decode,prefill,offline), ORDER (of the builds in a
# round, "before after"), CHECKS=0 skips the checks.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
set +e
declare -A dir=([before]="$(cd "$1" && pwd)" [after]="$(cd "$2" && pwd)")
rounds="${ROUNDS:-2}" steps="${STEPS:-128}" budget="${BUDGET:-8192}" deadline="${DEADLINE:-330}"
parts="${PARTS:-ceilings,decode,prefill,offline}" order="${ORDER:-before after}"
status=0
for build in $([ "${CHECKS:-1}" = 1 ] && echo before after); do
  "${dir[$build]}/fused-gpu-check" > "$out/$build-kernel-check.txt" 2>&1 || status=1
  "${dir[$build]}/fused-gpu-bench" --only check --json "$out/$build-check.jsonl" \
    > "$out/$build-forward-check.txt" 2>&1 || status=1
  echo "$build checks done at ${SECONDS}s (status so far $status)"
done
for round in $(seq 1 "$rounds"); do
  for build in $order; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "deadline: round $round $build not run"; continue; fi
    "${dir[$build]}/fused-gpu-bench" --only "$parts" \
      --decode-steps "$steps" --token-budget "$budget" --json "$out/$build-perf-$round.jsonl" \
      > "$out/$build-perf-$round.txt" 2>&1 || status=1
    echo "$build round $round done at ${SECONDS}s"
  done
done
echo
echo "==== checks ===="
for build in $([ "${CHECKS:-1}" = 1 ] && echo before after); do
  echo "$build: kernels: $(grep -c PASS "$out/$build-kernel-check.txt") pass," \
    "$(grep -c FAIL "$out/$build-kernel-check.txt") fail; $(tail -1 "$out/$build-kernel-check.txt")"
  grep -E "FAIL" "$out/$build-kernel-check.txt" | head -5
  echo "$build: forward: $(grep -c '"pass":true' "$out/$build-check.jsonl" 2>/dev/null) pass," \
    "$(grep -c '"pass":false' "$out/$build-check.jsonl" 2>/dev/null) fail"
  grep -h '"pass":false' "$out/$build-check.jsonl" 2>/dev/null | head -5
done
grep -h '"pass":false' "$out"/*-perf-*.jsonl 2>/dev/null | head -5
echo "==== (a) decode, (b) prefill, (c) offline: each run's value (before | after) ===="
python3 "$here/compare_table.py" "$out" before after
echo "before_after.sh: $([ $status = 0 ] && echo 'checks PASSED' || echo "FAILURES (see $out)") at ${SECONDS}s"
exit $status
