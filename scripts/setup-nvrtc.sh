#!/usr/bin/env bash
# NVIDIA's NVRTC library (the runtime compiler the daemon builds its kernels with), for the test
# that compiles every kernel source for sm_90 on a machine without a GPU
# (kernels/src/cuda/kernels.rs). Version 13.0, as the device's CUDA; from the Python package
# index, cached outside the clone. Prints the directory to put on LD_LIBRARY_PATH.
# Usage: NVRTC_LIB=$(scripts/setup-nvrtc.sh PYTHON)   (PYTHON: one with pip, e.g. setup-python.sh's)
set -euo pipefail
py=${1:-python3}
version=13.0.88
dir=${XDG_CACHE_HOME:-$HOME/.cache}/fusedmodel/nvrtc-$version
lib=$dir/nvidia/cu13/lib
if [ ! -e "$lib/libnvrtc.so.13" ]; then
  echo "setup-nvrtc: installing nvidia-cuda-nvrtc $version into $dir" >&2
  rm -rf "$dir.tmp"
  "$py" -m pip install -q --no-deps --target "$dir.tmp" "nvidia-cuda-nvrtc==$version" >&2
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
[ -e "$lib/libnvrtc.so.13" ] || { echo "setup-nvrtc: $lib/libnvrtc.so.13 is missing" >&2; exit 1; }
echo "$lib"
