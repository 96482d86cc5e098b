#!/usr/bin/env bash
# Set up the peer tools the benchmarks compare against, each in its own venv cached outside the
# clone (never the test venv):
#   llamacpp  PyPI llama-cpp-python[server] (builds llama.cpp from source: several minutes on
#             2 cores) -> ~/.cache/fusedmodel/llamacpp
#   guidellm  PyPI guidellm (an independent serving benchmark)     -> ~/.cache/fusedmodel/guidellm
# Usage: scripts/bench-peers.sh llamacpp|guidellm ...   Prints each venv's bin directory.
set -euo pipefail
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/fusedmodel
LLAMACPP_VERSION=0.3.36
GUIDELLM_VERSION=0.8.1

setup_venv() { # name, stamp, pip args...
  local venv="$CACHE/$1" stamp=$2; shift 2
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "setting up $venv ($stamp; first time: minutes) ..." >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >&2
    "$venv/bin/pip" install -q "$@" >&2
    echo "$stamp" > "$venv/.stamp"
  fi
  echo "$venv/bin"
}

[ $# -gt 0 ] || { echo "usage: $0 llamacpp|guidellm ..." >&2; exit 2; }
for peer in "$@"; do
  case "$peer" in
    llamacpp)
      # Native CPU build (AVX2/FMA where the machine has them), the way llama.cpp ships by default.
      CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
        setup_venv llamacpp "llama-cpp-python[server]==$LLAMACPP_VERSION" \
        --no-cache-dir "llama-cpp-python[server]==$LLAMACPP_VERSION" ;;
    guidellm)
      setup_venv guidellm "guidellm==$GUIDELLM_VERSION" "guidellm==$GUIDELLM_VERSION" ;;
    *) echo "unknown peer '$peer' (llamacpp|guidellm)" >&2; exit 2 ;;
  esac
done
