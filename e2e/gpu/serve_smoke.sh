#!/usr/bin/env bash
# On the GPU machine: `fused-daemon serve --device cuda` on dummy Llama-2-7B weights, at two
# --gpu-memory-utilization values, each driven over loopback (a completion, a stream, /metrics,
# SIGTERM). Prints the KV pool the daemon sized from GPU memory and a short table last.
#   e2e/gpu/serve_smoke.sh DIR   (DIR holds a stripped `fused-daemon` built with --features cuda
#                                 and `tok/` with a 32000-token tokenizer.json, e.g. Mistral-7B's)
set -uo pipefail
DIR=${1:?dir with fused-daemon and tok/}
source "$(dirname "$0")/env.sh"
set +e
rows=()
for util in 0.9 0.5; do
  port=$((18000 + ${util#0.} ))
  log=${OUT:-/tmp}/serve-$util.log
  "$DIR/fused-daemon" serve --device cuda --load-format dummy --model llama-2-7b --tokenizer "$DIR/tok" \
    --gpu-memory-utilization "$util" --max-seqs 64 --max-context 4096 --port "$port" > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do curl -sf "localhost:$port/ready" >/dev/null && break; sleep 0.5; done
  body='{"prompt":"The H200 has","max_tokens":32,"ignore_eos":true,"temperature":0}'
  t0=$(date +%s.%N)
  usage=$(curl -s "localhost:$port/v1/completions" -H 'content-type: application/json' -d "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["usage"]["completion_tokens"])')
  t1=$(date +%s.%N)
  done_line=$(curl -sN "localhost:$port/v1/completions" -H 'content-type: application/json' \
    -d '{"prompt":"Hi","max_tokens":8,"stream":true}' | tail -2 | head -1)
  pages=$(curl -s "localhost:$port/metrics" | grep '^fused_kv_pages_total' | awk '{print $2}')
  kill -TERM "$pid"; wait "$pid"; code=$?
  sed -i 's/\x1b\[[0-9;]*m//g' "$log"
  pool=$(grep -o 'pool=[0-9]*' "$log" | head -1)
  rows+=("| $util | ${pool#pool=} | $pages | $usage | $(python3 -c "print(f'{($t1-$t0)*1000:.0f}')") ms | ${done_line:0:12} | $code |")
  grep -E "GPU memory for the KV pool|KV region reserved|ERROR" "$log" | cut -c1-300
done
echo
echo "| --gpu-memory-utilization | KV pool bytes | KV pages (2 MiB) | completion tokens | 32-token completion | stream end | exit after SIGTERM |"
echo "|---|---:|---:|---:|---:|---|---:|"
printf '%s\n' "${rows[@]}"
