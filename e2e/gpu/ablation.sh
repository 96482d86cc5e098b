#!/usr/bin/env bash
# The fused-vs-normal ablation on the GPU (issue 20; docs/ABLATION.md): a real-format Llama-2-7B
# bf16 checkpoint written on the device (random values, transformers' `save_pretrained` shards,
# load_checkpoint.py; MODEL=dummy uses weights made on the device instead), the Mistral tokenizer
# of tok/ (a 32,000-token Llama-family tokenizer), and an AdaptiVocab patch of it built from the
# ICD-10-CM training chapters (`vocab build --swap 2000`; its new rows computed by `vocab
# init-embeddings` from the checkpoint's own embedding and head). Each row streams the checkpoint
# into `fused-daemon serve --device cuda` and serves under the same KV budget and load, driven by
# `fused-bench` on held-out ICD-10-CM chapters (data/heldout.txt):
#   fused          patch + KV mapped on demand + Sarathi (--token-budget $BUDGET)
#   no-patch       fused without the patch
#   eager-kv       fused with each sequence's whole context reserved at admission
#   prefill-first  fused with whole prompts first (--scheduler prefill-first, budget = context)
#   all-off        no patch, eager KV, prefill-first: the "normal" model
# Per row: a Poisson run (RATE req/s, N requests, --ignore-eos), then a capacity probe (CAP at
# once, 16 output tokens) whose peak of vllm:num_requests_running is the most sequences the KV
# budget holds. Prints the table last. ≈ 6 min (the checkpoint written once: ≈ 1.5 min).
#   OUT=<dir> bash e2e/gpu/ablation.sh   (bin/ with fused-daemon and fused-bench [cuda], tok/,
#                                          data/train.txt and data/heldout.txt beside this script)
# Env: N (64), RATE (16), IN_LEN (512), OUT_LEN (128), CAP (64), KV_MIB (4096), CTX (2048),
#      BUDGET (1024), MAX_SEQS (64), MODEL (checkpoint | dummy), CKPT (/tmp/llama2-7b-bf16).
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
set +e
out="$out/ablation"; mkdir -p "$out"
N=${N:-64} RATE=${RATE:-16} IN_LEN=${IN_LEN:-512} OUT_LEN=${OUT_LEN:-128} CAP=${CAP:-64}
KV_MIB=${KV_MIB:-4096} CTX=${CTX:-2048} BUDGET=${BUDGET:-1024} MAX_SEQS=${MAX_SEQS:-64}
patch="$out/patch"
"$bin/fused-daemon" vocab build --base "$here/tok" --corpus "$here/data/train.txt" --swap 2000 \
  --out "$patch" > "$out/patch-build.txt" 2>&1 || { cat "$out/patch-build.txt"; exit 1; }
if [ "${MODEL:-checkpoint}" = dummy ]; then
  # An embedding-and-head checkpoint of random values for init-embeddings; the served weights are
  # made on the device.
  emb="$out/embeddings"
  python3 - "$emb" <<'PY' || exit 1
import json, os, sys, torch
from safetensors.torch import save_file
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
g = torch.Generator().manual_seed(1)
rand = lambda: (torch.rand(32000, 4096, generator=g) * 0.16 - 0.08).to(torch.bfloat16)
save_file({"model.embed_tokens.weight": rand(), "lm_head.weight": rand()}, f"{d}/model.safetensors")
json.dump({"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096,
           "tie_word_embeddings": False}, open(f"{d}/config.json", "w"))
PY
  model=(--load-format dummy --model llama-2-7b)
else
  emb="${CKPT:-/tmp/llama2-7b-bf16}"
  python3 "$here/load_checkpoint.py" write "$emb" > "$out/checkpoint.txt" 2>&1 \
    || { cat "$out/checkpoint.txt"; exit 1; }
  model=(--model "$emb")
fi
# init-embeddings reads the tokenizer from the model's directory.
cp "$here"/tok/* "$emb"/
"$bin/fused-daemon" vocab init-embeddings --patch "$patch" --model "$emb" > "$out/patch-rows.txt" 2>&1 \
  || { cat "$out/patch-rows.txt"; exit 1; }
common=(serve --device cuda "${model[@]}" --tokenizer "$here/tok"
        --kv-memory-mib "$KV_MIB" --max-seqs "$MAX_SEQS" --max-context "$CTX" --max-queue 4096)
declare -A rows=(
  [fused]="--patch-tokenizer $patch --token-budget $BUDGET"
  [no-patch]="--token-budget $BUDGET"
  [eager-kv]="--patch-tokenizer $patch --token-budget $BUDGET --eager-kv"
  [prefill-first]="--patch-tokenizer $patch --scheduler prefill-first --token-budget $CTX"
  [all-off]="--eager-kv --scheduler prefill-first --token-budget $CTX"
)
order=(fused no-patch eager-kv prefill-first all-off)
status=0
for row in "${order[@]}"; do
  port=18700
  # shellcheck disable=SC2086
  "$bin/fused-daemon" "${common[@]}" ${rows[$row]} --port "$port" > "$out/$row-daemon.log" 2>&1 &
  pid=$!
  for _ in $(seq 480); do curl -sf "localhost:$port/ready" >/dev/null && break; sleep 0.5; done
  bench=(--base-url "http://127.0.0.1:$port" --tokenizer "$here/tok/tokenizer.json" --dataset-name text
         --dataset-path "$here/data/heldout.txt" --text-input-len "$IN_LEN" --ignore-eos --disable-tqdm
         --scrape-metrics --request-timeout-s 120 --label "$row")
  timeout 150 "$bin/fused-bench" "${bench[@]}" --text-output-len "$OUT_LEN" --num-prompts "$N" \
    --request-rate "$RATE" --seed 1 --result-json "$out/$row.json" > "$out/$row.txt" 2>&1 || status=1
  timeout 90 "$bin/fused-bench" "${bench[@]}" --text-output-len 16 --num-prompts "$CAP" --seed 2 \
    --result-json "$out/$row-capacity.json" > "$out/$row-capacity.txt" 2>&1 || status=1
  kill -TERM "$pid"; wait "$pid"
  echo "$row done at ${SECONDS}s (status $status)"
done
grep -h "removed" "$out/patch-build.txt"
python3 - "$out" "$KV_MIB" "${order[@]}" <<'PY'
import json, sys
out, kv_mib, rows = sys.argv[1], sys.argv[2], sys.argv[3:]
print(f"| row | prompt tokens (server) | output tok/s (ref. tokens) | req/s | TTFT P50 ms | TTFT P99 ms | TBT P50 ms | TBT P99 ms | most sequences in {kv_mib} MiB of KV | failed |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for row in rows:
    try:
        r = json.load(open(f"{out}/{row}.json"))
        cap = json.load(open(f"{out}/{row}-capacity.json"))["server"]["peak_num_requests_running"]
    except (OSError, KeyError, ValueError) as e:
        print(f"| {row} | no result ({e!r}) |"); continue
    t, i = r["ttft_ms"], r["itl_ms"]
    print(f"| {row} | {r['total_input_tokens']} | {r['ref_output_throughput']:.0f} | {r['request_throughput']:.2f} | "
          f"{t['median']:.0f} | {t['p99']:.0f} | {i['median']:.1f} | {i['p99']:.1f} | {cap:.0f} | {r['failed']} |")
PY
exit $status
