#!/usr/bin/env bash
# Loading real checkpoints (issue 20) and memory at start-up (issue 16 item 15), in one call on
# the H200 machine: writes a real-format Llama-2-7B bf16 checkpoint, measures the disk read
# rate, streams it into `fused-daemon serve --device cuda` (seconds to ready, GB/s, peak host
# RSS), then serves dummy Llama-2-7B with --gpu-memory-utilization 1.0 and a budget-filling
# prompt. Prints the results last.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
set +e
status=0
python3 "$here/load_checkpoint.py" "$bin/fused-daemon" "$here/tok" > "$out/load.txt" 2>&1 || status=1
python3 "$here/full_memory.py" "$bin/fused-daemon" "$here/tok" > "$out/full-memory.txt" 2>&1 || status=1
sed -n '/==== load results/,$p' "$out/load.txt"
grep '^====' "$out/full-memory.txt"
exit $status
