#!/usr/bin/env bash
# The main job: fetch SmolLM2-135M-Instruct (first run only), build the daemon, and serve it on
# CPU with the OpenAI-compatible API on http://127.0.0.1:8000. Extra arguments go to
# `fused-daemon serve` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
echo "building fused-daemon (release; the first build takes a few minutes) ..." >&2
cargo build --release -p fused-daemon
exec target/release/fused-daemon serve "$@"
