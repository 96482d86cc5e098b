# Sourced by the GPU scripts on the lent H200 machine: puts ONE directory of symlinks to the
# PyTorch environment's CUDA 13 libraries (cuBLAS, cuBLASLt, NVRTC) first on LD_LIBRARY_PATH, so
# cudarc's dynamic loader cannot mix them with the toolkit's copies, and prints what is used.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nvlib="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')"
libs="$(mktemp -d /tmp/fused-cudalibs.XXXX)"
for f in "$nvlib"/libcublas.so.* "$nvlib"/libcublasLt.so.* "$nvlib"/libnvrtc.so.* "$nvlib"/libnvrtc-builtins.so.*; do
  [ -e "$f" ] || continue
  ln -sf "$f" "$libs/$(basename "$f")"
done
for name in cublas cublasLt nvrtc; do
  major="$(ls "$libs"/lib$name.so.* 2>/dev/null | head -1 || true)"
  if [ -z "$major" ]; then echo "env.sh: lib$name not found under $nvlib" >&2; exit 3; fi
  ln -sf "$major" "$libs/lib$name.so"
done
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
export FUSED_KERNEL_CACHE="${FUSED_KERNEL_CACHE:-/tmp/fused-kernel-cache}"
bin="$here/bin"
# Where a script writes what it measures ($OUT on the device machine).
out="${OUT:-/tmp/fused-gpu-out}"; mkdir -p "$out"
echo "GPU libraries from $nvlib: $(cd "$libs" && ls | tr '\n' ' ')"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader || true
