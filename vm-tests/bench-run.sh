#!/usr/bin/env bash
# `make vm-bench`: secure mode measured in the QEMU guest. Builds what vm-tests/run.sh builds
# (cached kernel, slim_kern.ko, the workspace), boots the guest with vm-tests/bench.sh instead of
# the tests, and there runs slim-bench with host network, overlay, plain Slim and Slim with the
# routers in secure mode (`slim_secure`), interleaved. Then copies the guest's JSON to
# bench/results/vm-latest.json and prints the table (bench/scripts/vm-table.py).
#
#   vm-tests/bench-run.sh
#
# Environment: SLIM_VM_BENCH_ARGS (slim-bench's arguments; default below), SLIM_VM_BENCH_DEST
# (where the JSON goes, default bench/results/vm-latest.json), SLIM_VM_BENCH_BASELINE (a JSON
# shown as the "secure, before" column, default bench/results/vm-baseline.json if it exists),
# SLIM_VM_OUT (default target/vm-bench), SLIM_VM_TIMEOUT (default 2700 s), and run.sh's.
#
# Absolute numbers under TCG (and a KASAN/lockdep kernel) mean little; the ratios of one run do.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# --keep-awake none: the guest's vCPUs are QEMU threads, a halted one wakes when its thread does
# (the busy loops of `spin` would burn host cores that the other vCPU's thread needs).
# --max-busy-pct 50: the load check sees only the guest, where nothing else runs; under TCG its
# own background work (kworkers of the debug kernel) is heavier than on a normal machine.
DEFAULT_ARGS="--only conn1,nginx_close,rr --modes host,overlay,slim,slim_secure --runs 3 --secs 2 \
--keep-awake none --max-busy-pct 50 --max-wait-secs 30 --no-callcost --no-chart"
ARGS=${SLIM_VM_BENCH_ARGS:-$DEFAULT_ARGS}
DEST=${SLIM_VM_BENCH_DEST:-$REPO/bench/results/vm-latest.json}
BASELINE=${SLIM_VM_BENCH_BASELINE:-$REPO/bench/results/vm-baseline.json}

export SLIM_VM_OUT=${SLIM_VM_OUT:-$REPO/target/vm-bench}
export SLIM_VM_GUEST=$REPO/vm-tests/bench.sh
export SLIM_VM_TIMEOUT=${SLIM_VM_TIMEOUT:-2700}
mkdir -p "$SLIM_VM_OUT"
rm -f "$SLIM_VM_OUT/latest.json" "$SLIM_VM_OUT/bench-output.txt"
echo "$ARGS" > "$SLIM_VM_OUT/bench-args.txt"

rc=0
"$REPO/vm-tests/run.sh" || rc=$?
if [ ! -s "$SLIM_VM_OUT/latest.json" ]; then
    echo "vm-bench: no results from the guest (rc=$rc); see the output above and $SLIM_VM_OUT" >&2
    exit $((rc == 0 ? 1 : rc))
fi
mkdir -p "$(dirname "$DEST")"
cp "$SLIM_VM_OUT/latest.json" "$DEST"
echo "vm-bench: wrote $DEST (guest result: $(cat "$SLIM_VM_OUT/result.txt" 2>/dev/null))"
table_args=("$DEST")
if [ -e "$BASELINE" ] && [ "$(realpath "$BASELINE")" != "$(realpath "$DEST")" ]; then
    table_args+=(--baseline "$BASELINE")
fi
/usr/bin/python3 "$REPO/bench/scripts/vm-table.py" "${table_args[@]}"
exit $rc
