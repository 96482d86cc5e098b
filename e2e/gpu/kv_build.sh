#!/usr/bin/env bash
# Builds, on this (GPU-less) machine, the binaries e2e/gpu/kv_test.sh runs on the GPU machine:
# the daemon's test binary (the KV suite, CUDA tests included) and the kv_map / kv_iteration
# benchmarks, all with `--features cuda` (the CUDA driver and NVRTC are loaded at run time).
# Stripped copies land in OUT_DIR (default .cache/gpu/kv, ignored by git): carry that folder.
#
#   e2e/gpu/kv_build.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${1:-.cache/gpu/kv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
mkdir -p "$OUT_DIR"

# Prints the executables cargo reports for the given build, one "name kind path" per line.
executables() {
  cargo "$@" -p fused-daemon --features cuda --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
        print(msg["target"]["name"], msg["target"]["kind"][0], msg["executable"])
'
}

cargo test --release -p fused-daemon --features cuda --lib --no-run
cargo bench -p fused-daemon --features cuda --bench kv_map --bench kv_iteration --no-run
{ executables test --release --lib; executables bench --bench kv_map --bench kv_iteration; } |
  while read -r name kind path; do
    case "$name/$kind" in
      fused_daemon/lib | fused-daemon/lib) dest=kv_tests ;;
      kv_map/bench | kv_iteration/bench) dest=$name ;;
      *) continue ;;
    esac
    cp "$path" "$OUT_DIR/$dest"
    strip "$OUT_DIR/$dest"
    echo "built $OUT_DIR/$dest ($(du -h "$OUT_DIR/$dest" | cut -f1))"
  done
cp e2e/gpu/kv_test.sh "$OUT_DIR/"
for binary in kv_tests kv_map kv_iteration; do
  [ -x "$OUT_DIR/$binary" ] || { echo "missing $OUT_DIR/$binary" >&2; exit 1; }
done
echo "carry $OUT_DIR and run: bash e2e/gpu/kv_test.sh $OUT_DIR"
