#!/usr/bin/env bash
# The Python environment of the end-to-end tests (official openai client, prometheus_client,
# HF transformers as the reference). Cached outside the clone; prints the venv's python.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${FUSED_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fusedmodel/pyref}
REQ="$ROOT/e2e/python/requirements.txt"
STAMP="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "setting up the test Python environment in $VENV (first time: several minutes) ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  "$VENV/bin/pip" install -q -r "$REQ" >&2
  echo "$want" > "$STAMP"
fi
echo "$VENV/bin/python"
