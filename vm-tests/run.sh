#!/usr/bin/env bash
# Boots the cached secure-mode test kernel under QEMU (TCG: KVM on this machine type cannot run an
# unmodified guest) with virtme-ng and runs vm-tests/guest.sh inside it (or SLIM_VM_GUEST: the
# benchmark's vm-tests/bench.sh, see vm-tests/bench-run.sh). Exit code = the guest's.
#
#   vm-tests/run.sh            build what is missing (kernel: cached; module: make -C kmod-rs), then boot
#   SLIM_VM_NO_BUILD=1 vm-tests/run.sh    only boot (fails if the kernel or module is missing)
#
# Environment: SLIM_VM_OUT (guest-writable results dir, default target/vm-tests), SLIM_VM_TIMEOUT
# (seconds, default 2400), SLIM_VM_CPUS (2), SLIM_VM_MEM (2G: KASAN takes 1/8 for shadow memory),
# SLIM_VM_GUEST (the script the guest runs with arguments KO OUT, default vm-tests/guest.sh; it
# must write OUT/result.txt when it ends).
# The guest has no network device: `vng` without --net gives it none.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../scripts/kernel/env.sh
. "$REPO/scripts/kernel/env.sh"
T0=$SECONDS

if [ "${SLIM_VM_NO_BUILD:-0}" != 1 ]; then
    kstep "kernel (scripts/kernel/build-kernel.sh)" "$REPO/scripts/kernel/build-kernel.sh"
    kstep "module (make -C kmod-rs)" make -s -C "$REPO/kmod-rs"
    kstep "userspace (cargo build --release)" cargo build --release --workspace --all-targets --quiet
fi
KDIR=$("$REPO/scripts/kernel/build-kernel.sh" --print-kdir)
KO=$REPO/target/kmod-rs/slim_kern.ko
[ -e "$KDIR/.slim-build-complete" ] || kdie "kernel not built: $KDIR (run scripts/kernel/build-kernel.sh)"
[ -e "$KO" ] || kdie "module not built: $KO (run make -C kmod-rs)"
[ -x "$KQEMU" ] || kdie "QEMU not extracted: $KQEMU (run scripts/kernel/setup-toolchain.sh)"
command -v vng >/dev/null || kdie "vng not found (run scripts/kernel/setup-toolchain.sh)"
[ -x /lib/systemd/systemd-udevd ] || kdie "udev is not installed on the host (virtme-ng's script I/O needs it)"

OUT=${SLIM_VM_OUT:-$REPO/target/vm-tests}
GUEST=${SLIM_VM_GUEST:-$REPO/vm-tests/guest.sh}
[ -x "$GUEST" ] || kdie "the guest script $GUEST is not an executable file"
mkdir -p "$OUT"
rm -f "$OUT"/result.txt "$OUT"/dmesg*.txt

# The lab's test binaries, which guest.sh runs again against routers in secure mode.
(cd "$REPO" && cargo test --release -p slim-lab --no-run --message-format=json 2>/dev/null) |
    python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["target"]["name"] + "=" + m["executable"])' > "$OUT/tests.txt" || true

klog "boot: $KDIR ($(head -1 "$KDIR/.slim-build-complete"))"
klog "module: $KO; guest runs: $GUEST; results: $OUT"
rc=0
# "| cat": when stdout is a regular file, the guest's output would be written from offset 0 over what
# this script printed before (seen with `run.sh > log`); a pipe keeps the log in order. pipefail makes
# rc the exit code of timeout/vng, i.e. of guest.sh.
# panic=-1: reboot at once on a panic (CONFIG_PANIC_ON_OOPS=y turns any oops into one), which ends
# QEMU; the timeout catches a hung guest.
# no5lvl: 4-level paging. QEMU's TCG CPU has LA57, and with 5-level paging 7.3 + KASAN reports a false
# "BUG: KASAN: wild-memory-access" when an interrupt hits the window in early boot where
# identify_cpu() has zeroed boot_cpu_data.x86_capability (pgtable_l5_enabled() is then false, so
# KASAN's shadow-range check is wrong). Seen in 1 of 2 boots before this option.
# 2400 s: the guest's tests took 17-20 min under TCG on 2 cores (2026-12-07: the table, translate,
# policy and router-mode tests added; each lab test 45-145 s there).
timeout --foreground -k 10 "${SLIM_VM_TIMEOUT:-2400}" \
    vng --disable-kvm --run "$KDIR" --qemu "$KQEMU" \
        --cpus "${SLIM_VM_CPUS:-2}" --memory "${SLIM_VM_MEM:-2G}" \
        --append "panic=-1 oops=panic no5lvl" \
        --rwdir "$OUT" \
        --exec "$GUEST $KO $OUT" </dev/null 2>&1 | cat || rc=$?
if [ ! -e "$OUT/result.txt" ]; then
    klog "no result from the guest (rc=$rc): it crashed, panicked or timed out; see the console output above"
    [ $rc != 0 ] || rc=1
fi
klog "vm-tests: rc=$rc in $((SECONDS - T0)) s"
exit $rc
