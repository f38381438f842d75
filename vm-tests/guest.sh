#!/bin/bash
# Runs INSIDE the test VM (started by vm-tests/run.sh through `vng --exec`), as root, with the host's
# root file system mounted read-only over 9p and OUT (an --rwdir) writable.
#
#   guest.sh KO OUT
#
# Loads the module KO, checks /dev/slim and its ioctls (VERSION, STATS, unknown -> ENOTTY, bad
# pointer -> EFAULT), runs restrict_test.py (RESTRICT on loopback TCP sockets) and stress_test.py
# (concurrent ioctls and closes), checks that callers without CAP_NET_ADMIN in the initial user namespace are
# refused (unprivileged user, root without the capability, root of a user namespace), unloads the
# module, then fails on any KASAN / lockdep / BUG / WARNING / oops report in the kernel log. Prints
# "N passed, M failed"; exits non-zero on any failure.
set -u
KO=${1:?usage: guest.sh KO OUT}
OUT=${2:?usage: guest.sh KO OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3
PROBE="$PY $HERE/kabi_probe.py"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok   - $*"; }
nok() { fail=$((fail + 1)); echo "FAIL - $*"; }
# expect NAME PATTERN CMD...: passes when CMD's combined output matches the extended regex PATTERN.
expect() {
    local name=$1 pat=$2 out
    shift 2
    out=$("$@" 2>&1)
    if grep -qE -- "$pat" <<<"$out"; then ok "$name: $out"; else nok "$name: wanted /$pat/, got: $out"; fi
}

echo "guest: $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo); kernel cmdline: $(cat /proc/cmdline)"
dmesg > "$OUT/dmesg-boot.txt" 2>&1 || true

# --- load
if out=$(insmod "$KO" 2>&1); then ok "insmod $(basename "$KO")"; else nok "insmod: $out"; fi
udevadm settle 2>/dev/null || true
if [ -c /dev/slim ]; then
    ok "/dev/slim is a character device ($(stat -c '%A %U' /dev/slim))"
else
    nok "/dev/slim missing"
fi
expect "device is root-only (mode 0600)" '^600 root$' stat -c '%a %U' /dev/slim

# --- ioctls as root (CAP_NET_ADMIN)
expect "VERSION matches kabi.rs" '^ok version=' $PROBE version
expect "STATS: all zero on a fresh module" '^ok live=0 restricted=0 children=0 revoked=0 refusals=\[0(, 0){15}\]$' $PROBE stats
expect "unknown ioctl -> ENOTTY" '^errno=ENOTTY$' $PROBE unknown
expect "VERSION number with a wrong size -> ENOTTY" '^errno=ENOTTY$' $PROBE badsize
expect "VERSION to a NULL pointer -> EFAULT" '^errno=EFAULT$' $PROBE nullptr
expect "RESTRICT with an all-zero request (no local address) -> EINVAL" '^errno=EINVAL$' $PROBE restrict-stub

# py_checks NAME PREFIX [ARGS...]: runs vm-tests/NAME.py ARGS (one "ok   - ..." / "FAIL - ..." line
# per check) and counts its lines as checks of this script, each prefixed with PREFIX; any other line
# is shown; a non-zero exit is a failure of its own.
py_checks() {
    local name=$1 prefix=$2 line
    shift 2
    while IFS= read -r line; do
        case $line in
            "ok   - "*) ok "$prefix${line#ok   - }" ;;
            "FAIL - "*) nok "$prefix${line#FAIL - }" ;;
            "exit status 0") ;;
            "exit status "*) nok "$name.py $* ended with $line" ;;
            *) echo "  $name: $line" ;;
        esac
    done < <($PY "$HERE/$name.py" "$@" 2>&1; echo "exit status $?")
}

# --- RESTRICT on real sockets (vm-tests/restrict_test.py: one "ok"/"FAIL" line per check)
ip link set lo up 2>/dev/null || true
py_checks restrict_test ""

# --- concurrency stress (vm-tests/stress_test.py): threads racing RESTRICT, accept, SET_CHILD_ADDRS,
# REVOKE, STATS and close (also close of an fd during an ioctl on it) for a few seconds; checks the
# errnos and the STATS totals, and that everything is closed again (restricted_live 0) so the rmmod
# below can succeed. KASAN / lockdep findings show up in the kernel-log check at the end.
py_checks stress_test ""

# --- the router's tables in the module (vm-tests/table_test.py): TABLE_UPDATE / DUMP / STATS round
# trips, all-or-nothing batches, malformed input, EPERM without CAP_NET_ADMIN, one set per open file,
# concurrent updates against paged dumps. The limit (ENOSPC) is checked after the rmmod below, with
# the module loaded again with a small table_limit.
py_checks table_test "tables: "

# --- connect by the module (vm-tests/translate_test.py, SLIM_RESTRICT_TRANSLATE): overlay endpoints
# looked up in the listeners table, blocking and non-blocking, ENOENT without a row, ECONNREFUSED,
# per-file sets, a socket passed to nobody, 4 threads connecting while rows change.
py_checks translate_test "translate: "

# --- callers without CAP_NET_ADMIN in the initial user namespace
expect "root without CAP_NET_ADMIN: open refused" '^errno=EPERM$' \
    setpriv --inh-caps=-net_admin --bounding-set=-net_admin $PROBE open
expect "user-namespace root: open refused" '^errno=EPERM$' \
    unshare --user --map-root-user $PROBE open
expect "nobody, fd opened by root: ioctl refused" '^errno=EPERM$' \
    bash -c "exec setpriv --reuid 65534 --regid 65534 --clear-groups --inh-caps=-all --bounding-set=-all $PROBE --fd 3 version 3</dev/slim"
expect "root without CAP_NET_ADMIN, fd opened by root: ioctl refused" '^errno=EPERM$' \
    bash -c "exec setpriv --inh-caps=-net_admin --bounding-set=-net_admin $PROBE --fd 3 stats 3</dev/slim"
# With the node world-accessible, only the module's own check stands between nobody and the device.
chmod 0666 /dev/slim
expect "nobody, node mode 0666: open refused by the capability check" '^errno=EPERM$' \
    setpriv --reuid 65534 --regid 65534 --clear-groups --inh-caps=-all --bounding-set=-all $PROBE open
chmod 0600 /dev/slim

# --- secure mode end to end (vm-tests/secure_lab.sh): the lab with --secure routers, real programs
# (iperf3, nginx+curl, the lab's own tests) and the attack suite as an unprivileged container process.
REPO=$(cd "$HERE/.." && pwd)
while IFS= read -r line; do
    case $line in
        "ok   - "*) ok "${line#ok   - }" ;;
        "FAIL - "*) nok "${line#FAIL - }" ;;
        "exit status 0") ;;
        "exit status "*) nok "secure_lab.sh ended with $line" ;;
        *) echo "$line" ;;
    esac
done < <(bash "$HERE/secure_lab.sh" "$REPO" "$OUT" 2>&1; echo "exit status $?")

# --- unload
if out=$(rmmod slim_kern 2>&1); then ok "rmmod slim_kern"; else nok "rmmod: $out"; fi
udevadm settle 2>/dev/null || true
if [ ! -e /dev/slim ]; then ok "/dev/slim gone after rmmod"; else nok "/dev/slim still present after rmmod"; fi

# --- the table limit: the module again, with table_limit=8
if out=$(insmod "$KO" table_limit=8 2>&1); then
    ok "insmod $(basename "$KO") table_limit=8"
    udevadm settle 2>/dev/null || true
    # (Rust module parameters have no sysfs file in 7.3: TABLE_STATS reports the limit.)
    py_checks table_test "tables: " --limit 8
    if out=$(rmmod slim_kern 2>&1); then ok "rmmod slim_kern (table_limit=8)"; else nok "rmmod (table_limit=8): $out"; fi
else
    nok "insmod table_limit=8: $out"
fi

# --- kernel log: any sanitizer / lockdep / BUG / WARNING / oops report fails the run
dmesg > "$OUT/dmesg.txt" 2>&1 || true
# KASAN reports start with "BUG: KASAN:", lockdep's with "WARNING: possible ..." or "INFO: ...",
# DEBUG_ATOMIC_SLEEP's with "BUG: sleeping function called from invalid context".
bad=$(grep -nE 'BUG:|WARNING:|Oops|general protection fault|Kernel panic|kernel BUG|UBSAN:|KASAN:|DEBUG_LOCKS_WARN_ON|INFO: (possible|inconsistent|lockdep is turned off|trying to register|task .* blocked)|Call Trace:' "$OUT/dmesg.txt" || true)
if [ -z "$bad" ]; then
    ok "kernel log clean ($(wc -l < "$OUT/dmesg.txt") lines: no KASAN/lockdep/BUG/WARNING/oops)"
else
    nok "kernel log has reports:"
    echo "$bad" | head -40
fi
grep -E 'slim_kern' "$OUT/dmesg.txt" | sed 's/^/  dmesg: /'

echo "$pass passed, $fail failed"
echo "$pass passed, $fail failed" > "$OUT/result.txt"
[ "$fail" = 0 ]
