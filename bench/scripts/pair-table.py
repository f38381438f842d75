#!/usr/bin/env python3
"""Slim/host ratios of two slim-bench result files side by side (e.g. the namespace lab and podman).

    bench/scripts/pair-table.py A/latest.json B/latest.json [--names netns,podman] [--mode slim --base host]

For each workload in both files: the per-run ratio MODE/BASE (run i of MODE over run i of BASE,
the rounds slim-bench interleaves), as median [min..max], for A and for B, and B's median over A's.
Lower-is-better rows (CPU, latency) are ratios the same way: below 1 is better there.
"""
import argparse
import json
import statistics


def per_run(res, mode, base):
    m, b = res.get(mode), res.get(base)
    if not m or not b:
        return None
    rs = [x / y for x, y in zip(m["runs"], b["runs"]) if y]
    return rs or None


def fmt(rs):
    if not rs:
        return "-"
    return f"{statistics.median(rs):.2f} [{min(rs):.2f}..{max(rs):.2f}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--names", default="A,B")
    ap.add_argument("--mode", default="slim")
    ap.add_argument("--base", default="host")
    args = ap.parse_args()
    na, nb = args.names.split(",")
    da, db = json.load(open(args.a)), json.load(open(args.b))
    print(f"{args.mode}/{args.base} per run, median [min..max]")
    print(f"  A = {na}: {args.a} (commit {da.get('commit', '?')[:7]}, {da.get('date')})")
    print(f"  B = {nb}: {args.b} (commit {db.get('commit', '?')[:7]}, {db.get('date')})")
    print(f"{'workload':32} {na:>22} {nb:>22} {nb + '/' + na:>14}")
    for w, ra in da["results"].items():
        rb = db["results"].get(w)
        if rb is None:
            continue
        a, b = per_run(ra, args.mode, args.base), per_run(rb, args.mode, args.base)
        if a is None and b is None:
            continue
        q = f"{statistics.median(b) / statistics.median(a):.2f}" if a and b else "-"
        print(f"{w:32} {fmt(a):>22} {fmt(b):>22} {q:>14}")


if __name__ == "__main__":
    main()
