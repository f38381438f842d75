#!/usr/bin/env bash
# The main job on the local lab: iperf3 between two "hosts" over the host network, between two
# containers over the VXLAN overlay, and between the same containers through Slim, side by side.
set -euo pipefail
T=${1:-target/release}
LAB=$T/slim-lab
SECS=${DEMO_SECONDS:-5}
ROUNDS=${DEMO_ROUNDS:-3}
PORT=5399

$LAB up

gbps() { # NODE SLIM ADDR -> Gbit/s
    local node=$1 slim=$2 addr=$3 flag=""
    [ "$slim" = 1 ] && flag=--slim
    $LAB exec "$node" $flag -- iperf3 -c "$addr" -p $PORT -t "$SECS" -J 2>/dev/null |
        python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}

cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
# Servers: h2 for the host network, c2 (with Slim, which serves plain overlay clients too).
$LAB exec h2 -- iperf3 -s -p $PORT >/dev/null 2>&1 &
$LAB exec c2 --slim -- iperf3 -s -p $PORT >/dev/null 2>&1 &
sleep 1

declare -A res
for r in $(seq "$ROUNDS"); do
    # Interleaved, so that drift on this shared machine hits every mode alike.
    h=$(gbps h1 0 "$($LAB addr h2)")
    vx0=$($LAB counters h1 slim-vx | awk '{printf "%.0f", $1+$2}')
    o=$(gbps c1 0 "$($LAB addr c2)")
    vx1=$($LAB counters h1 slim-vx | awk '{printf "%.0f", $1+$2}')
    s=$(gbps c1 1 "$($LAB addr c2)")
    vx2=$($LAB counters h1 slim-vx | awk '{printf "%.0f", $1+$2}')
    res[host]+="$h "; res[overlay]+="$o "; res[slim]+="$s "
    echo "round $r: host $h, overlay $o, Slim $s Gbit/s; VXLAN device bytes: overlay run $((vx1-vx0)), Slim run $((vx2-vx1))"
done

python3 - "${res[host]}" "${res[overlay]}" "${res[slim]}" <<'PY'
import statistics, sys
host, overlay, slim = ([float(x) for x in a.split()] for a in sys.argv[1:4])
def cell(v): return "%6.2f  (min %.2f, max %.2f)" % (statistics.median(v), min(v), max(v))
h = statistics.median(host)
print()
print("iperf3, one TCP stream, c1 -> c2 across two hosts (Gbit/s, median of %d runs)" % len(host))
print("  host network  %s" % cell(host))
print("  VXLAN overlay %s   %.2fx host" % (cell(overlay), statistics.median(overlay) / h))
print("  Slim          %s   %.2fx host, %.2fx overlay" % (cell(slim), statistics.median(slim) / h,
      statistics.median(slim) / statistics.median(overlay)))
PY
