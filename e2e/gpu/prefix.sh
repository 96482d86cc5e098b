#!/usr/bin/env bash
# Prefix sharing on the H200 (issue 21): `fused-daemon serve --device cuda` on dummy Llama-2-7B
# and a Llama-3-8B shape (8 KV heads; its 32,000-token vocabulary fits tok/), each with prefix
# caching on and off, one daemon at a time, in one call:
#   1. correctness: greedy tokens and logprobs of prompts sharing 0 / 50 / 100 % of a cached
#      prompt and diverging at and inside a page boundary, with and without sharing, for both KV
#      layouts (prefix_check.py): within the GPU forward check's tolerance (3e-2) or twice the
#      difference that other chunk boundaries alone make (a third daemon, no sharing, a token
#      budget of 384 instead of 512: bf16 GEMMs of other row counts round differently);
#   2. 64 requests sharing a 2,000-token prefix with 100-token suffixes sent at once (fused-bench,
#      one unmeasured warm-up request first: the prefix is cached, as a system prompt is in steady
#      traffic): TTFT P50/P99, throughput, peak KV held;
#   3. a multi-turn chat trace (fused-bench --multi-turn: 16 conversations × 4 turns, each turn
#      extends the last with the answer and a new message), TTFT P50/P99 and throughput;
#   4. one solitary 2,100-token request without sharing: prefill time per KV page, against
#   5. the map cost on CUDA VMM: µs per page mapped when a cached 2,000-token prefix is mapped into
#      a new request (the kv_prefix bench, built with --features cuda), both shapes and layouts.
#   6. with bin/kv_tests (the daemon's lib tests built with --features cuda): the KV prefix
#      property suite and the shared-map read-back on the CUDA backend (FUSED_REQUIRE_GPU=1).
# Prints a table last (also $OUT/prefix-table.md); logs and JSON in $OUT/prefix-logs.tgz. ≈ 3 min.
#   OUT=<dir> bash e2e/gpu/prefix.sh     (bin/ holds fused-daemon [cuda], fused-bench, kv_prefix
#                                         [cuda]; tok/ a 32,000-token tokenizer.json)
# Env: SHAPES (llama-2-7b llama-3-8b; or config.json paths), LAYOUTS (interleaved per-layer: the
#      first one also runs 2-4), PROMPTS (64), PREFIX (2000), SUFFIX (100), OUT_LEN (64),
#      TOL (3e-2), KV_BLOCK_SIZE (the daemons' --kv-block-size in bytes; default: pages of 16
#      interleaved tokens, vLLM's default block: 8 MiB for Llama-2-7B, 2 MiB otherwise). A dry run
#      of the script's plumbing on a CPU: DEVICE=cpu BIN=target/release
#      SHAPES=small.json PROMPTS=8 PREFIX=300 SUFFIX=50 OUT_LEN=8 (tok/ beside this script).
here="$(cd "$(dirname "$0")" && pwd)"
device="${DEVICE:-cuda}"
if [ "$device" = cuda ]; then source "$here/env.sh"; else bin="${BIN:?BIN=<dir of CPU builds>}"; fi
set +e
# Logs and JSON in a work folder; $OUT gets two files (the device tool brings back at most 8).
out="${WORK:-/tmp/fused-prefix}"; rm -rf "$out"; mkdir -p "$out" "${OUT:=/tmp/fused-gpu-out}"
shapes=(${SHAPES:-llama-2-7b llama-3-8b})
layouts=(${LAYOUTS:-interleaved per-layer})
prompts="${PROMPTS:-64}"; prefix="${PREFIX:-2000}"; suffix="${SUFFIX:-100}"; out_len="${OUT_LEN:-64}"
tol="${TOL:-3e-2}"
port=18600
status=0
started=$(date +%s)

# Llama-3-8B's shape with the 32,000-token vocabulary of tok/ (dummy weights sample only ids the
# tokenizer can decode); the KV shape (32 layers × 8 KV heads × 128) is Llama-3-8B's.
cat > "$out/llama-3-8b-shape.json" <<'JSON'
{"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32,
 "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
 "rope_theta": 500000.0, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
 "tie_word_embeddings": false}
JSON
model_arg() { case "$1" in llama-3-8b) echo "$out/llama-3-8b-shape.json" ;; *) echo "$1" ;; esac; }
# 16 tokens per interleaved page: Llama-2-7B's K/V are 512 KiB a token (32 KV heads), 4 tokens in
# 2 MiB; a cached prefix is one cuMemMap per page (≈ 25 µs each, serialised in the driver).
block_size() { case "$1" in llama-2-7b) echo $((8 << 20)) ;; *) echo $((2 << 20)) ;; esac; }
label() { basename "$1" .json; }

# start SHAPE LAYOUT MODE: a daemon on $port; MODE "on", "off" or "rechunk" (off, and prefill
# chunks of another size).
start() {
  local flags=(--enable-prefix-caching)
  [ "$3" = off ] && flags=(--no-enable-prefix-caching)
  [ "$3" = rechunk ] && flags=(--no-enable-prefix-caching --max-num-batched-tokens 384)
  local log="$out/$(label "$1")-$2-$3-daemon.log"
  "$bin/fused-daemon" serve --device "$device" --load-format dummy --model "$(model_arg "$1")" \
    --served-model-name "$(label "$1")" --tokenizer "$here/tok" --kv-layout "$2" "${flags[@]}" \
    --kv-block-size "${KV_BLOCK_SIZE:-$(block_size "$1")}" \
    --max-seqs "$prompts" --max-context 4096 --max-queue 4096 --gpu-memory-utilization 0.9 \
    --disable-log-requests --port "$port" > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 240); do
    curl -sf "localhost:$port/ready" >/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  echo "daemon $1 $2 $3 did not become ready:"; tail -20 "$log"; status=1
  return 1
}
stop() { kill -TERM "$pid"; wait "$pid" || { echo "daemon exit status $?"; status=1; }; }

bench() { # NAME EXTRA...: fused-bench against the daemon on $port
  local name=$1; shift
  "$bin/fused-bench" --base-url "http://127.0.0.1:$port" --tokenizer "$here/tok/tokenizer.json" \
    --dataset-name random --ignore-eos --seed 1 --scrape-metrics --disable-tqdm \
    --request-timeout-s 120 --label "$name" --result-json "$out/$name.json" "$@" \
    > "$out/$name.txt" 2>&1 || { echo "fused-bench $name failed:"; tail -5 "$out/$name.txt"; status=1; }
}

for model in "${shapes[@]}"; do
  shape=$(label "$model")
  for layout in "${layouts[@]}"; do
    for mode in on off rechunk; do
      echo "== $shape $layout prefix caching $mode ($(( $(date +%s) - started )) s)"
      start "$model" "$layout" "$mode" || continue
      python3 "$here/prefix_check.py" probe "$port" "$out/$shape-$layout-$mode-check.json" || status=1
      if [ "$layout" = "${layouts[0]}" ] && [ "$mode" != rechunk ]; then
        name="$shape-$mode"
        python3 "$here/prefix_check.py" metrics "$port" > "$out/$name-start-metrics.json"
        bench "$name-shared" --random-prefix-len "$prefix" --random-input-len "$suffix" \
          --random-output-len "$out_len" --num-prompts "$prompts" --num-warmups 1
        python3 "$here/prefix_check.py" metrics "$port" > "$out/$name-shared-metrics.json"
        bench "$name-chat" --multi-turn 4 --random-input-len 300 --random-output-len "$out_len" \
          --num-prompts 64 --max-concurrency 16 --num-warmups 0
        python3 "$here/prefix_check.py" metrics "$port" > "$out/$name-chat-metrics.json"
        if [ "$mode" = off ]; then
          bench "$name-solo" --random-input-len $((prefix + suffix)) --random-output-len 1 \
            --num-prompts 3 --max-concurrency 1 --num-warmups 1
        fi
      fi
      stop
    done
    python3 "$here/prefix_check.py" compare "$out/$shape-$layout-on-check.json" \
      "$out/$shape-$layout-off-check.json" "$tol" "$out/$shape-$layout-rechunk-check.json" \
      | tee "$out/$shape-$layout-compare.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  done
done

if [ -x "$bin/kv_tests" ]; then
  echo "== KV prefix suites on the CUDA backend ($(( $(date +%s) - started )) s)"
  FUSED_REQUIRE_GPU=1 "$bin/kv_tests" --test-threads 1 kv::tests::cuda::prefix_sharing \
    kv::tests::cuda::shared_prefixes > "$out/kv_tests.txt" 2>&1 || { echo "KV prefix suites failed"; status=1; }
  grep -E "^test |test result" "$out/kv_tests.txt"
fi
echo "== map cost on CUDA VMM ($(( $(date +%s) - started )) s)"
FUSED_REQUIRE_GPU=1 "$bin/kv_prefix" > "$out/kv_prefix.txt" 2>&1 || { echo "kv_prefix failed"; status=1; }

python3 - "$out" $(for m in "${shapes[@]}"; do label "$m"; done) <<'PY' | tee "$OUT/prefix-table.md"
import json, sys
out, shapes = sys.argv[1], sys.argv[2:]
def load(name):
    try:
        return json.load(open(f"{out}/{name}.json"))
    except (OSError, ValueError):
        return None
print("\n| shape | workload | prefix caching | TTFT P50 ms | TTFT P99 ms | req/s | output tok/s | peak KV used | KV GiB held | prefix hits / queries |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
for shape in shapes:
    for work in ["shared", "chat"]:
        for mode in ["on", "off"]:
            r, m = load(f"{shape}-{mode}-{work}"), load(f"{shape}-{mode}-{work}-metrics") or {}
            # The counters before this workload: the last snapshot taken before it.
            m0 = load(f"{shape}-{mode}-{'start' if work == 'shared' else 'shared'}-metrics") or {}
            if not r:
                print(f"| {shape} | {work} | {mode} | no result |"); continue
            peak = (r.get("server") or {}).get("peak_kv_cache_usage_perc") or 0.0
            held = peak * m.get("fused_kv_pages_total", 0) * m.get("fused_kv_page_bytes", 0) / 2**30
            delta = lambda k: m.get(k, 0) - m0.get(k, 0)
            hits = f"{delta('vllm:prefix_cache_hits_total'):.0f} / {delta('vllm:prefix_cache_queries_total'):.0f}"
            print(f"| {shape} | {work} | {mode} | {r['ttft_ms']['median']:.0f} | {r['ttft_ms']['p99']:.0f} | "
                  f"{r['request_throughput']:.2f} | {r['output_throughput']:.0f} | {peak:.1%} | {held:.1f} | {hits} |")
    on, off = load(f"{shape}-on-shared"), load(f"{shape}-off-shared")
    if on and off and on["ttft_ms"]["median"] > 0:
        print(f"| {shape} | shared: TTFT P50 without / with sharing | | {off['ttft_ms']['median'] / on['ttft_ms']['median']:.1f}× | "
              f"{off['ttft_ms']['p99'] / max(on['ttft_ms']['p99'], 1e-9):.1f}× (P99) | | | | | |")
print("\n| shape | tokens per interleaved page | solitary prefill of prefix + suffix, ms | prefill ms per page |")
print("|---|---:|---:|---:|")
for shape in shapes:
    solo, check = load(f"{shape}-off-solo"), load(f"{shape}-interleaved-off-check")
    if solo and check:
        per_token = solo["ttft_ms"]["median"] / max(solo["total_input_tokens"] / max(solo["completed"], 1), 1)
        print(f"| {shape} | {check['tokens_per_page']} | {solo['ttft_ms']['median']:.1f} | {per_token * check['tokens_per_page']:.3f} |")
print()
for shape in shapes:
    for layout in ["interleaved", "per-layer"]:
        try:
            print(f"correctness {shape} {layout}:" + open(f"{out}/{shape}-{layout}-compare.txt").read().rstrip())
        except OSError:
            pass
print()
try:
    print("".join(l for l in open(f"{out}/kv_prefix.txt") if l.startswith("|")))
except OSError:
    print("no kv_prefix output")
PY
tar -czf "$OUT/prefix-logs.tgz" -C "$(dirname "$out")" "$(basename "$out")"
echo "PREFIX total $(( $(date +%s) - started )) s, status $status"
exit $status
