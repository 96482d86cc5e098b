#!/usr/bin/env bash
# Every served architecture on the GPU over HTTP (issue 20): `fused-daemon serve --device cuda`
# with dummy weights of Llama-2-7B, of Qwen2.5-7B's shape (Q/K/V biases, 28 heads in GQA groups
# of 7, head_dim 128; the 32,000-token vocabulary of tok/) and of GPT-2 small (LayerNorm, learned
# positions, GELU, biases; its 50,257 rows are more than tok/'s ids, so the engine samples among
# the decodable ones on the host, as for a padded vocabulary), one at a time, each through
# serve_smoke.py (completion, stream, bad request, fused_model_info's architecture, a 256-token
# single stream).
# The forward passes themselves are checked against the CPU and HF transformers by check.sh
# (qwen2-d64-g7, gpt2-d64). ≈ 1.5 min.
#   OUT=<dir> bash e2e/gpu/archs.sh     (bin/fused-daemon [cuda], tok/ beside this script;
#                                        ONLY=gpt2 serves one architecture)
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
set +e
shape="$(mktemp -d /tmp/fused-qwen2.XXXX)/config.json"
cat > "$shape" <<'JSON'
{"model_type": "qwen2", "vocab_size": 32000, "hidden_size": 3584, "num_hidden_layers": 28,
 "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944,
 "rope_theta": 1000000.0, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
 "tie_word_embeddings": false, "use_sliding_window": false}
JSON
status=0
for run in "llama-2-7b llama" "$shape qwen2" "gpt2 gpt2"; do
  set -- $run
  [ -n "${ONLY:-}" ] && [ "$2" != "$ONLY" ] && continue
  echo "== $2 ($1)"
  python3 "$here/serve_smoke.py" "$bin/fused-daemon" "$here/tok" "$1" "$2" 2>&1 | tee "$out/serve-$2.txt" \
    | grep -E "completion|stream|bad request|model info|serve smoke"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
done
echo "archs.sh: $([ $status = 0 ] && echo ALL PASSED || echo FAILURES)"
exit $status
