"""Two builds or formats side by side: every timed value fused-gpu-bench wrote to
<dir>/<a>-perf-*.jsonl and <dir>/<b>-perf-*.jsonl, one row per measure with each run's value,
then b against a (as a ratio `1.23x` with --ratio, else as a change `+23.0%`).

Usage: python3 compare_table.py DIR A B [--parts a,b,c] [--ratio]
"""
import argparse
import glob
import json
import os

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("dir")
parser.add_argument("a")
parser.add_argument("b")
parser.add_argument("--parts", default="a,b,c,ceiling", help="fused-gpu-bench parts to show")
parser.add_argument("--ratio", action="store_true", help="show b / a instead of the change")
args = parser.parse_args()
parts = set(args.parts.split(","))

rows = {}
for label in (args.a, args.b):
    for path in sorted(glob.glob(os.path.join(args.dir, f"{label}-perf-*.jsonl"))):
        for line in open(path):
            r = json.loads(line)
            if r["part"] in parts and r["pass"] is None:
                key = (r["part"], r["name"], r["unit"])
                rows.setdefault(key, {}).setdefault(label, []).append(r["value"])

mean = lambda vs: sum(vs) / len(vs)
show = lambda vs: " ".join(f"{v:.1f}" for v in vs) or "-"
for (part, name, unit), by in rows.items():
    a, b = by.get(args.a, []), by.get(args.b, [])
    versus = ""
    if a and b and mean(a):
        versus = f"{mean(b) / mean(a):.2f}x" if args.ratio else f"{100 * (mean(b) / mean(a) - 1):+.1f}%"
    print(f"{part:<7} {name[:62]:<62} {show(a):>15} | {show(b):<15} {unit:<8} {versus}")
