#!/usr/bin/env python3
"""The table of a `make vm-bench` run (slim-bench's JSON), in Markdown for README.

    bench/scripts/vm-table.py bench/results/vm-latest.json [--baseline bench/results/vm-baseline.json]

Per workload: each mode's median [min..max], then ratios run by run (the i-th runs of all modes
come from the same round, seconds apart), median [min..max]: overlay/host, slim/host,
secure/slim, secure/overlay. With --baseline, the baseline run's secure/slim and secure/overlay
too (e.g. secure mode before the module made connections itself). Then the goal of issue 15,
point 6: secure Slim's one-client connection rate >= 0.95x plain Slim's and above the overlay's,
judged by the median of the per-run ratios, in the same run.
"""
import argparse
import json
import statistics
import sys

GOAL_METRIC = "conn_rate_1"
MIN_TO_SLIM = 0.95
MODES = ["host", "overlay", "slim", "slim_secure"]
RATIOS = [("overlay", "host"), ("slim", "host"), ("slim_secure", "slim"), ("slim_secure", "overlay")]
NAMES = {"slim_secure": "secure"}


def num(x):
    a = abs(x)
    if a >= 1000:
        return "%.0f" % x
    if a >= 100:
        return "%.1f" % x
    if a >= 10:
        return "%.2f" % x
    return "%.3f" % x


def cell(res, metric, mode):
    c = (res.get(metric) or {}).get(mode)
    if not c:
        return "-"
    if "refused" in c:
        return "refused"
    if "error" in c:
        return "error"
    return "%s [%s..%s]" % (num(c["median"]), num(c["min"]), num(c["max"]))


def per_run(res, metric, a, b):
    """Run-by-run ratios a/b: (median, min, max), or None."""
    ca, cb = (res.get(metric) or {}).get(a), (res.get(metric) or {}).get(b)
    if not ca or not cb or "runs" not in ca or "runs" not in cb:
        return None
    if len(ca["runs"]) != len(cb["runs"]) or not ca["runs"]:
        return None
    if any(y <= 0 for y in cb["runs"]):
        return None
    r = [x / y for x, y in zip(ca["runs"], cb["runs"])]
    return statistics.median(r), min(r), max(r)


def ratio_text(p):
    return "-" if p is None else "%.2f [%.2f..%.2f]" % p


def goal(res):
    s = per_run(res, GOAL_METRIC, "slim_secure", "slim")
    o = per_run(res, GOAL_METRIC, "slim_secure", "overlay")
    if s is None or o is None:
        return "not measured"
    met = s[0] >= MIN_TO_SLIM and o[0] > 1.0
    return "secure/slim %.2f, secure/overlay %.2f: %s" % (
        s[0], o[0], "met" if met else "NOT met")


def describe(d):
    cfg = d.get("config", {})
    return "%s, commit %s%s, %s runs of %s s, keep-awake %s, kernel %s" % (
        d.get("date", "?"), (d.get("commit") or "?")[:10],
        " (dirty)" if d.get("commit_dirty") else "", cfg.get("runs", "?"), cfg.get("secs", "?"),
        cfg.get("keep_awake", "?"), (d.get("machine") or {}).get("kernel", "?"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--baseline", help="a vm-bench JSON whose secure ratios get their own columns")
    a = ap.parse_args()
    d = json.load(open(a.json))
    res = d.get("results", {})
    base = json.load(open(a.baseline)) if a.baseline else None
    bres = (base or {}).get("results", {})
    metrics = [m for m in res if isinstance(res[m], dict) and any(k in res[m] for k in MODES)]

    print("vm-bench: %s" % describe(d))
    if base:
        print("baseline: %s" % describe(base))
    print()
    head = ["workload"] + [NAMES.get(m, m) for m in MODES]
    head += ["%s/%s" % (NAMES.get(x, x), NAMES.get(y, y)) for x, y in RATIOS]
    if base:
        head += ["secure/slim, baseline", "secure/overlay, baseline"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for m in metrics:
        unit = next((c.get("unit") for c in res[m].values() if isinstance(c, dict)), "")
        row = ["`%s` (%s)" % (m, unit)] + [cell(res, m, mode) for mode in MODES]
        row += [ratio_text(per_run(res, m, x, y)) for x, y in RATIOS]
        if base:
            row += [ratio_text(per_run(bres, m, "slim_secure", "slim")),
                    ratio_text(per_run(bres, m, "slim_secure", "overlay"))]
        print("| " + " | ".join(row) + " |")
    print()
    print("Goal (one-client connection rate, secure >= %.2fx slim and > overlay, median of the "
          "per-run ratios): %s" % (MIN_TO_SLIM, goal(res)))
    if base:
        print("Baseline: %s" % goal(bres))
    notes = d.get("notes", [])
    for n in notes:
        if "slim_secure" in n or "loaded machine" in n:
            print("note: %s" % n)


if __name__ == "__main__":
    sys.exit(main())
