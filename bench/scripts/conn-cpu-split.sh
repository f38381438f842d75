#!/usr/bin/env bash
# Where the CPU of short connections goes, per process: router of h1, router of h2, the server,
# and the machine's total (client and softirq are the rest). One `slim-testprog connrate` run of
# SECS seconds (default 4) against `rr-serve`, server pinned to CPU 0, client to CPU 1.
#
#   bench/scripts/conn-cpu-split.sh [slim|overlay|host] [SECS]
#
# Not a benchmark (no interleaving, no busy loops, one run): a quick look at which process pays
# for connection setup, to compare before and after a change on an idle machine. Needs the lab
# (`slim-lab up`) and a release build.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MODE=${1:-slim}
SECS=${2:-4}
L=$REPO/target/release/slim-lab
P=$REPO/target/release/slim-testprog
case $MODE in
    slim) srv=(c2 --slim) cli=(c1 --slim) dst=10.32.0.2 ;;
    overlay) srv=(c2) cli=(c1) dst=10.32.0.2 ;;
    host) srv=(h2) cli=(h1) dst=192.168.77.2 ;;
    *) echo "usage: $0 [slim|overlay|host] [SECS]" >&2; exit 2 ;;
esac
"$L" up >/dev/null
"$L" exec "${srv[@]}" -- taskset -c 0 "$P" rr-serve 7590 >/dev/null 2>&1 &
sleep 1
spid=$(pgrep -f "rr-serve 7590" | tail -1)
r1=$(cat /run/slim-lab/h1.pid)
r2=$(cat /run/slim-lab/h2.pid)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
a1=$(cpu "$r1"); a2=$(cpu "$r2"); as=$(cpu "$spid"); b0=$(busy)
out=$("$L" exec "${cli[@]}" -- taskset -c 1 "$P" connrate "$dst" 7590 --secs "$SECS")
c1=$(cpu "$r1"); c2=$(cpu "$r2"); cs=$(cpu "$spid"); b1=$(busy)
kill "$spid" 2>/dev/null || true
n=$(sed -nE 's/.*count=([0-9]+).*/\1/p' <<<"$out")
hz=$(getconf CLK_TCK)
us() { echo $(( $1 * 1000000 / hz / n )); }
echo "$MODE: $out"
echo "CPU-us per connection: router h1 $(us $((c1 - a1))), router h2 $(us $((c2 - a2))), server $(us $((cs - as))), machine total $(us $((b1 - b0)))"
