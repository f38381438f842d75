#!/usr/bin/env bash
# A/B of two builds of this project on the lab, interleaved: A B A B ... (ROUNDS pairs), each a
# whole slim-bench run of its own checkout (its routers, library and lab), so that a change is
# judged against the machine's drift, not against a result from another hour.
#
#   bench/scripts/ab.sh A_CHECKOUT B_CHECKOUT OUT ROUNDS [slim-bench arguments...]
#   e.g. bench/scripts/ab.sh /work/main . /tmp/ab 3 --only conn1 --modes host,overlay,slim --runs 5 --no-callcost
#
# Each checkout must be built (cargo build --release). Between runs it waits AB_PAUSE seconds
# (default 65): a run's TIME_WAIT leftovers last 60 s, and a router that leases ports by bind
# (router/src/leasewatch.rs) counts a port as held while a TIME_WAIT socket without SO_REUSEPORT
# (one of an older router's) is on it, so without the pause the side that follows the other's
# run would start with most of its lease range blocked. Writes OUT/{A,B}-N/latest.json and
# OUT/{A,B}-N/output.txt, then prints each pair's Slim/host per run (bench/scripts/pair-table.py).
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,10p' "$0"; exit 2; }
A=$(cd "$1" && pwd); B=$(cd "$2" && pwd); OUT=$3; ROUNDS=$4; shift 4
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$OUT"
for r in $(seq 1 "$ROUNDS"); do
    for side in A B; do
        dir=$A; [ $side = B ] && dir=$B
        o="$OUT/$side-$r"; mkdir -p "$o"
        echo "== round $r, $side: $dir ($(git -C "$dir" rev-parse --short HEAD))"
        # From the checkout, so that the JSON records its commit; its own lab binaries.
        (cd "$dir" && ./target/release/slim-bench --restart-routers --out "$o" "$@") 2>&1 | tee "$o/output.txt"
        sleep "${AB_PAUSE:-65}"
    done
done
for r in $(seq 1 "$ROUNDS"); do
    python3 "$HERE/pair-table.py" "$OUT/A-$r/latest.json" "$OUT/B-$r/latest.json" --names A,B
done
