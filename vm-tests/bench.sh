#!/bin/bash
# Runs INSIDE the test VM for `make vm-bench` (vm-tests/bench-run.sh starts vm-tests/run.sh with
# SLIM_VM_GUEST pointing here), as root, with the host's root file system mounted read-only over
# 9p and OUT (an --rwdir) writable.
#
#   bench.sh KO OUT
#
# Loads the module KO, brings the lab up (plain routers) and runs slim-bench with the modes
# host, overlay, slim and slim_secure interleaved: slim-bench switches the lab's routers between
# plain and secure (`slim-lab routers plain|secure`) around the two Slim modes. Its arguments are
# OUT/bench-args.txt (written by bench-run.sh). Writes OUT/latest.json (slim-bench's), its table
# in OUT/bench-output.txt, the module's counters before and after, the kernel log; takes the lab
# down and unloads the module; OUT/result.txt says how it went. Exit code: slim-bench's, or 1 if
# the module did not load, did not restrict sockets in the secure runs, or the kernel log has
# reports (KASAN, lockdep, BUG, WARNING, oops).
set -u
KO=${1:?usage: bench.sh KO OUT}
OUT=${2:?usage: bench.sh KO OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PROBE="/usr/bin/python3 $HERE/kabi_probe.py"
LAB=$REPO/target/release/slim-lab
BENCH=$REPO/target/release/slim-bench
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "[$(date +%H:%M:%S)] vm-bench: $*"; }
finish() {
    say "$1"
    echo "$1" > "$OUT/result.txt"
    exit "$2"
}

say "guest: $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
ip link set lo up 2>/dev/null || true
if ! out=$(insmod "$KO" 2>&1); then
    finish "insmod $KO failed: $out" 1
fi
udevadm settle 2>/dev/null || true
[ -c /dev/slim ] || finish "/dev/slim missing after insmod" 1
before=$($PROBE stats 2>&1)
say "module loaded; stats: $before"

out=$("$LAB" up 2>&1) || {
    echo "$out"
    finish "slim-lab up failed" 1
}
say "lab up: $(tail -1 <<<"$out")"

read -r -a ARGS < "$OUT/bench-args.txt" || ARGS=()
say "slim-bench ${ARGS[*]}"
# From the checkout, so that the JSON records its commit.
cd "$REPO" || finish "cannot cd to $REPO" 1
t0=$SECONDS
"$BENCH" --out "$OUT" "${ARGS[@]}" 2>&1 | tee "$OUT/bench-output.txt"
rc=${PIPESTATUS[0]}
say "slim-bench: rc=$rc in $((SECONDS - t0)) s"

after=$($PROBE stats 2>&1)
say "module stats after: $after"
printf 'before: %s\nafter: %s\n' "$before" "$after" > "$OUT/module-stats.txt"
r0=$(sed -nE 's/.* restricted=([0-9]+).*/\1/p' <<<"$before")
r1=$(sed -nE 's/.* restricted=([0-9]+).*/\1/p' <<<"$after")
c1=$(sed -nE 's/.* children=([0-9]+).*/\1/p' <<<"$after")
problems=()
if [ "${r1:-0}" -le "${r0:-0}" ] || [ "${c1:-0}" -eq 0 ]; then
    problems+=("the module restricted no socket during the secure runs (before: $before; after: $after)")
else
    say "secure runs used the module: $((r1 - r0)) host sockets restricted, $c1 accepted children"
fi
for h in h1 h2; do cp "/run/slim-lab/$h.log" "$OUT/router-$h.log" 2>/dev/null; done
"$LAB" down >/dev/null 2>&1 || problems+=("slim-lab down failed")
rmmod slim_kern 2>/dev/null || problems+=("rmmod slim_kern failed")

dmesg > "$OUT/dmesg.txt" 2>&1 || true
bad=$(grep -nE 'BUG:|WARNING:|Oops|general protection fault|Kernel panic|kernel BUG|UBSAN:|KASAN:|DEBUG_LOCKS_WARN_ON|INFO: (possible|inconsistent|lockdep is turned off|trying to register|task .* blocked)|Call Trace:' "$OUT/dmesg.txt" || true)
if [ -n "$bad" ]; then
    problems+=("kernel log has reports")
    echo "$bad" | head -40
fi

if [ ${#problems[@]} -gt 0 ]; then
    printf 'vm-bench: %s\n' "${problems[@]}"
    finish "slim-bench rc=$rc; problems: ${problems[*]}" 1
fi
finish "slim-bench rc=$rc" "$rc"
