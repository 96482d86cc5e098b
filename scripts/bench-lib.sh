# Shared helpers of the scripts/bench-*.sh benchmarks (sourced, not run). Starts servers on
# loopback, waits for them, stops them by PID; builds the binaries once.
# Servers run in their own session (setsid): with the kernel's session autogroups
# (/proc/sys/kernel/sched_autogroup_enabled = 1) a server sharing a session with the benchmark
# client gets a CPU share that depends on the client's own load, and two clients measuring the
# same server disagree (seen here: guidellm 45 vs fused-bench 28 output tok/s, both correct for
# what the server did under each; 28 vs 28 once the server had its own session).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DAEMON=$TARGET/release/fused-daemon
BENCH=$TARGET/release/fused-bench
GGUF=$("$ROOT/scripts/fetch-model.sh" | tail -1)
SERVER_PIDS=()

build_bins() {
  (cd "$ROOT" && cargo build --release -p fused-daemon -p fused-e2e --bin fused-daemon --bin fused-bench >&2)
}

# The medical text the benchmarks use: ICD-10-CM chapters held out of patch training.
medical_text() {
  if [ -n "${MEDICAL_TEXT:-}" ]; then echo "$MEDICAL_TEXT"; return; fi
  if [ -x "$ROOT/scripts/fetch-corpus.sh" ]; then
    echo "$("$ROOT/scripts/fetch-corpus.sh" | tail -1)/heldout-chapters.txt"; return
  fi
  local f=${XDG_CACHE_HOME:-$HOME/.cache}/fusedmodel/data/icd10cm/heldout-chapters.txt
  [ -s "$f" ] || { echo "no medical text: set MEDICAL_TEXT or add scripts/fetch-corpus.sh" >&2; exit 1; }
  echo "$f"
}

wait_http() { # url, seconds, pid
  local deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do
    kill -0 "$3" 2>/dev/null || { echo "server $3 exited; see its log" >&2; return 1; }
    curl -sf "$1" >/dev/null && return 0
    sleep 0.5
  done
  echo "no answer from $1 after $2 s" >&2; return 1
}

start_daemon() { # port, log, extra args...
  local port=$1 log=$2; shift 2
  setsid "$DAEMON" serve --port "$port" --served-model-name smollm2 "$@" >"$log" 2>&1 &
  SERVER_PIDS+=($!)
  wait_http "http://127.0.0.1:$port/ready" 180 $!
}

start_llamacpp() { # port, log, extra args...
  local port=$1 log=$2; shift 2
  local bin; bin=$("$ROOT/scripts/bench-peers.sh" llamacpp | tail -1)
  # interrupt_requests False: queue concurrent requests instead of cutting the running stream.
  setsid "$bin/python" -m llama_cpp.server --model "$GGUF" --model_alias smollm2 --host 127.0.0.1 \
    --port "$port" --n_ctx 2048 --n_threads "${LLAMA_THREADS:-2}" \
    --n_threads_batch "${LLAMA_THREADS:-2}" --interrupt_requests False \
    "$@" >"$log" 2>&1 &
  SERVER_PIDS+=($!)
  wait_http "http://127.0.0.1:$port/v1/models" 180 $!
}

start_llama_server() { # port, log, extra args...
  # llama.cpp's own C++ server (scripts/bench-peers.sh llama-server): continuous batching over
  # LLAMA_SLOTS parallel slots, LLAMA_THREADS threads for decode and for prompt batches.
  local port=$1 log=$2; shift 2
  local bin; bin=$("$ROOT/scripts/bench-peers.sh" llama-server | tail -1)
  local slots=${LLAMA_SLOTS:-8}
  setsid "$bin/llama-server" -m "$GGUF" --alias smollm2 --host 127.0.0.1 --port "$port" \
    -c $((512 * slots)) -np "$slots" -t "${LLAMA_THREADS:-2}" -tb "${LLAMA_THREADS:-2}" \
    "$@" >"$log" 2>&1 &
  SERVER_PIDS+=($!)
  wait_http "http://127.0.0.1:$port/health" 180 $!
}

stop_servers() {
  for pid in "${SERVER_PIDS[@]}"; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  SERVER_PIDS=()
}
trap stop_servers EXIT
