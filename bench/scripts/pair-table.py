#!/usr/bin/env python3
"""Slim's paired ratios from two slim-bench result files side by side (e.g. the namespace lab and podman).

    bench/scripts/pair-table.py A/latest.json B/latest.json [--names netns,podman] [--base host|overlay]

For each workload in both files: the `paired_ratio_to_BASE` slim-bench wrote for the slim cell
(the run-by-run ratios of its interleaved rounds, the figure its goals are judged by), as
median [min..max], for A and for B, and B's median over A's. Lower-is-better rows (CPU,
latency) are ratios the same way: below 1 is better there.
"""
import argparse
import json


def paired(res, base):
    return (res.get("slim") or {}).get(f"paired_ratio_to_{base}")


def fmt(p):
    return f"{p['median']:.2f} [{p['min']:.2f}..{p['max']:.2f}]" if p else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--names", default="A,B")
    ap.add_argument("--base", default="host", choices=["host", "overlay"])
    args = ap.parse_args()
    na, nb = args.names.split(",")
    da, db = json.load(open(args.a)), json.load(open(args.b))
    print(f"slim/{args.base} per run, median [min..max]")
    print(f"  A = {na}: {args.a} (commit {da.get('commit', '?')[:7]}, {da.get('date')})")
    print(f"  B = {nb}: {args.b} (commit {db.get('commit', '?')[:7]}, {db.get('date')})")
    print(f"{'workload':32} {na:>22} {nb:>22} {nb + '/' + na:>14}")
    for w, ra in da["results"].items():
        a, b = paired(ra, args.base), paired(db["results"].get(w, {}), args.base)
        if a is None and b is None:
            continue
        q = f"{b['median'] / a['median']:.2f}" if a and b else "-"
        print(f"{w:32} {fmt(a):>22} {fmt(b):>22} {q:>14}")


if __name__ == "__main__":
    main()
