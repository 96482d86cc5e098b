#!/usr/bin/env bash
# Set up the peer tools the benchmarks compare against, each in its own venv cached outside the
# clone (never the test venv):
#   llamacpp  PyPI llama-cpp-python[server] (builds llama.cpp from source: several minutes on
#             2 cores) -> ~/.cache/fusedmodel/llamacpp
#   llama-server  llama.cpp's own C++ server, built with cmake (Debian's) from the llama.cpp
#             source vendored in the same llama-cpp-python sdist -> $LLAMA_SERVER_DIR
#             (default /opt/llama.cpp/<version>; several minutes on 2 cores, once)
#   guidellm  PyPI guidellm (an independent serving benchmark)     -> ~/.cache/fusedmodel/guidellm
# Usage: scripts/bench-peers.sh llamacpp|llama-server|guidellm ...   Prints each one's bin directory.
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

# llama.cpp's C++ `llama-server` from the sdist's vendor/llama.cpp: native CPU build (AVX2/FMA/
# AVX-512 where the machine has them), no libcurl (models are local files), server target only.
setup_llama_server() {
  local dir=${LLAMA_SERVER_DIR:-/opt/llama.cpp/$LLAMACPP_VERSION}
  if [ ! -x "$dir/bin/llama-server" ]; then
    command -v cmake >/dev/null || {
      echo "installing Debian's cmake ..." >&2
      apt-get install -y -q cmake >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q cmake >/dev/null; }
    }
    local work; work=$(mktemp -d)
    echo "building llama-server from llama-cpp-python $LLAMACPP_VERSION's llama.cpp into $dir (first time: minutes) ..." >&2
    python3 -m pip download -q --no-binary llama-cpp-python --no-deps -d "$work" "llama-cpp-python==$LLAMACPP_VERSION" >&2
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    local src; src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
    cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2
    cmake --build "$work/build" --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}" >&2
    mkdir -p "$dir/bin"
    install -m 755 "$work/build/bin/llama-server" "$dir/bin/llama-server"
    { echo "llama.cpp vendored in llama-cpp-python $LLAMACPP_VERSION"; "$dir/bin/llama-server" --version 2>&1 | head -2; } > "$dir/SOURCE"
    rm -rf "$work"
  fi
  echo "$dir/bin"
}

[ $# -gt 0 ] || { echo "usage: $0 llamacpp|llama-server|guidellm ..." >&2; exit 2; }
for peer in "$@"; do
  case "$peer" in
    llamacpp)
      # Native CPU build (AVX2/FMA where the machine has them), the way llama.cpp ships by default.
      CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
        setup_venv llamacpp "llama-cpp-python[server]==$LLAMACPP_VERSION" \
        --no-cache-dir "llama-cpp-python[server]==$LLAMACPP_VERSION" ;;
    llama-server)
      setup_llama_server ;;
    guidellm)
      setup_venv guidellm "guidellm==$GUIDELLM_VERSION" "guidellm==$GUIDELLM_VERSION" ;;
    *) echo "unknown peer '$peer' (llamacpp|llama-server|guidellm)" >&2; exit 2 ;;
  esac
done
