#!/usr/bin/env bash
# Configures and builds the secure-mode test kernel (bzImage + modules), cached outside the repository.
#
#   scripts/kernel/build-kernel.sh               set up the toolchain if needed, then configure + build
#   scripts/kernel/build-kernel.sh --print-kdir  print the build dir for the current source and config
#                                                (the KDIR for kmod-rs/ and vm-tests/); builds nothing
#
# Cache key: $KCACHE/build-<source version>-<12 hex of sha256(final fragment)>, where the final
# fragment is scripts/kernel/slim.config plus a header naming the pinned toolchain (rustc, clang,
# bindgen, virtme-ng versions), so a toolchain change also gives a new build dir. A stamp file
# (.slim-build-complete) marks a finished build: a second run prints "cached" and returns. The build is
# plain incremental `make`, so an interrupted run simply continues when started again.
# Environment: SLIM_KERNEL_CACHE (default /var/cache/slim-kernel), SLIM_KERNEL_JOBS (default nproc),
# SLIM_KERNEL_SKIP_SETUP=1 (do not run setup-toolchain.sh first).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh
. "$HERE/env.sh"
FRAGMENT=$HERE/slim.config

final_fragment() {
    echo "# slim final fragment: toolchain rustc=$(/usr/bin/rustc --version 2>/dev/null | cut -d' ' -f2)" \
         "clang=$(clang$LLVM_SUFFIX --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)" \
         "bindgen=$BINDGEN_VERSION virtme-ng=$VIRTME_NG_VERSION"
    cat "$FRAGMENT"
}
build_dir() {
    local ver hash
    ver=$(ksrc_version) || kdie "no extracted kernel source in $KCACHE/src (run scripts/kernel/setup-toolchain.sh)"
    hash=$(final_fragment | sha256sum | cut -c1-12)
    echo "$KCACHE/build-$ver-$hash"
}

if [ "${1:-}" = --print-kdir ]; then
    build_dir
    exit 0
fi
[ $# -eq 0 ] || kdie "usage: $0 [--print-kdir]"

T_ALL=$SECONDS
if [ "${SLIM_KERNEL_SKIP_SETUP:-0}" != 1 ]; then
    kstep "toolchain setup" "$HERE/setup-toolchain.sh"
fi
KSRC=$(ksrc_dir) || kdie "no extracted kernel source"
B=$(build_dir)
STAMP=$B/.slim-build-complete

if [ -e "$STAMP" ] && [ -e "$B/arch/x86/boot/bzImage" ]; then
    klog "cached: $B ($(head -1 "$STAMP"))"
    ln -sfn "$(basename "$B")" "$KCACHE/current"
    exit 0
fi

mkdir -p "$B"
# One build per build dir at a time (a second invocation waits).
exec 9>"$B.lock"
if ! flock -n 9; then
    klog "another build of $B is running; waiting for it"
    flock 9
fi
if [ -e "$STAMP" ]; then
    klog "cached: $B (built by the concurrent run)"
    exit 0
fi

klog "source $KSRC ($(make -s -C "$KSRC" kernelversion)), build dir $B"
final_fragment > "$B/slim-final.config"

configure() {
    cd "$KSRC"
    make "${KMAKE[@]}" rustavailable
    # virtme-ng's config: defconfig + its fragment (virtio, 9p, devtmpfs, serial console, ...) + ours.
    virtme-configkernel --defconfig --custom "$B/slim-final.config" O="$B" "${KMAKE[@]}"
    # Apply our fragment once more explicitly (it must win over virtme-ng's choices), then resolve.
    local line sym val
    local args=()
    while IFS= read -r line; do
        if [[ $line =~ ^CONFIG_([A-Za-z0-9_]+)=(.*)$ ]]; then
            sym=${BASH_REMATCH[1]}; val=${BASH_REMATCH[2]}
            case "$val" in y) args+=(-e "$sym") ;; m) args+=(-m "$sym") ;; *) args+=(--set-val "$sym" "$val") ;; esac
        elif [[ $line =~ ^#\ CONFIG_([A-Za-z0-9_]+)\ is\ not\ set ]]; then
            args+=(-d "${BASH_REMATCH[1]}")
        fi
    done < "$FRAGMENT"
    scripts/config --file "$B/.config" "${args[@]}"
    make O="$B" "${KMAKE[@]}" olddefconfig
    # Verify: every option of the fragment has the requested value in the final .config.
    local bad=0 have
    while IFS= read -r line; do
        if [[ $line =~ ^CONFIG_([A-Za-z0-9_]+)=(.*)$ ]]; then
            sym=${BASH_REMATCH[1]}; val=${BASH_REMATCH[2]}
            have=$(grep -E "^CONFIG_$sym=" "$B/.config" | cut -d= -f2- || true)
            [ "$have" = "$val" ] || { klog "config: CONFIG_$sym wanted $val, got '${have:-unset}'"; bad=1; }
        elif [[ $line =~ ^#\ CONFIG_([A-Za-z0-9_]+)\ is\ not\ set ]]; then
            sym=${BASH_REMATCH[1]}
            if grep -qE "^CONFIG_$sym=[ym]" "$B/.config"; then klog "config: CONFIG_$sym should be off"; bad=1; fi
        fi
    done < "$FRAGMENT"
    [ $bad = 0 ] || { klog "config: the fragment did not apply (dependencies?); see $B/.config"; return 1; }
    klog "config: $(grep -c '=y$' "$B/.config") options =y, $(grep -c '=m$' "$B/.config") =m;" \
         "$(grep -E '^CONFIG_(CC_IS_CLANG|RUSTC_VERSION|KASAN_GENERIC|PROVE_LOCKING)=' "$B/.config" | tr '\n' ' ')"
    cp "$B/.config" "$B/.config.slim-configured"
    touch "$B/.slim-configured"
}
if [ -e "$B/.slim-configured" ] && cmp -s "$B/.config" "$B/.config.slim-configured"; then
    klog "config: already done"
else
    rm -f "$B/.slim-configured"
    kstep "configure" configure
fi

JOBS=${SLIM_KERNEL_JOBS:-$(nproc)}
build() {
    local TIMEFORMAT="build: real %0Rs, user %0Us, sys %0Ss"
    time nice -n 10 make -C "$KSRC" O="$B" "${KMAKE[@]}" -j"$JOBS" bzImage modules
}
kstep "make -j$JOBS bzImage modules (nice 10)" build
ls -l "$B/arch/x86/boot/bzImage"
{
    echo "built $(date -Is) in $((SECONDS - T_ALL)) s; $(make -s -C "$KSRC" kernelversion) from $(cat "$(dirname "$KSRC")/.extracted")"
    head -1 "$B/slim-final.config"
} > "$STAMP.tmp"
mv "$STAMP.tmp" "$STAMP"
ln -sfn "$(basename "$B")" "$KCACHE/current"
klog "done: $B ($((SECONDS - T_ALL)) s); KDIR for modules: $B"
