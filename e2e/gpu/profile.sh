#!/usr/bin/env bash
# Where a batch-1 decode step's GPU time goes: Nsight Compute times each kernel of a window of
# eager decode steps of `fused-gpu-bench --only decode` alone (clocks left alone, caches flushed
# before each kernel, as for weights streamed once), and the table sums them per kernel and grid.
# Env: SKIP (kernel launches before the window: the prompt's and the first steps'), COUNT.
source "$(dirname "$0")/env.sh"
ncu="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
[ -n "$ncu" ] || { echo "profile.sh: Nsight Compute (ncu) not found" >&2; exit 3; }
"$ncu" --clock-control none -k 'regex:^(gemv|attn_decode|rope|rms|silu|argmax|embed)' \
  --launch-skip "${SKIP:-716}" --launch-count "${COUNT:-876}" \
  --metrics gpu__time_duration.sum --csv --page raw \
  "$bin/fused-gpu-bench" --only decode --decode-steps 16 > "$out/ncu.csv" 2> "$out/ncu.err" || {
  tail -5 "$out/ncu.err"; exit 1; }
python3 - "$out/ncu.csv" <<'PY'
import csv, sys, collections
key = "gpu__time_duration.sum"
rows = list(csv.DictReader(l for l in open(sys.argv[1]) if l.startswith('"')))
units = next((r[key] for r in rows if not r.get("Kernel Name")), "nsecond")
unit = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(units, 1e-3)
value = lambda r: r.get(key, "").replace(",", "")
rows = [r for r in rows if r.get("Kernel Name") and value(r).replace(".", "").isdigit()]
agg = collections.defaultdict(list)
for r in rows:
    agg[(r["Kernel Name"], r["Grid Size"])].append(float(value(r)) * unit)
steps = sum(len(v) for k, v in agg.items() if k[0].startswith("argmax"))
print(f"{len(rows)} kernels, {steps} steps")
total = 0.0
for (name, grid), times in sorted(agg.items(), key=lambda kv: -sum(kv[1])):
    per_step = sum(times) / max(steps, 1)
    total += per_step
    print(f"| {name[:40]:40} | {grid:>14} | {len(times):5} | {sum(times)/len(times):8.2f} us | {per_step:8.1f} us/step |")
print(f"sum of kernel times per step: {total:.1f} us")
PY
