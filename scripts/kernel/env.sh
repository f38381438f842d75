# Shared settings for scripts/kernel/*.sh and vm-tests/run.sh. Source it; it defines variables and
# helpers only and has no side effects besides exporting the toolchain environment.
#
# Everything lives outside the repository, under $SLIM_KERNEL_CACHE (default /var/cache/slim-kernel):
#   apt/            separate apt configuration (bookworm-backports, trixie, trixie-backports) used only
#                   to DOWNLOAD linux-source; nothing from those suites is ever installed
#   debs/           downloaded .deb files
#   src/<ver>/      extracted kernel source (linux-source-7.3/)
#   qemu/           extracted QEMU 7.2 (bookworm) debs: qemu/usr/bin/qemu-system-x86_64
#   tools/bin/      bindgen (cargo install bindgen-cli)
#   venv/           virtme-ng (PyPI)
#   build-<ver>-<hash>/   kernel build dirs (O=), one per source version and config fragment

SLIM_KERNEL_CACHE=${SLIM_KERNEL_CACHE:-/var/cache/slim-kernel}
KCACHE=$SLIM_KERNEL_CACHE
KAPTDIR=$KCACHE/apt
KDEBS=$KCACHE/debs
KTOOLS=$KCACHE/tools
KVENV=$KCACHE/venv
KQEMU_DIR=$KCACHE/qemu
KQEMU=$KQEMU_DIR/usr/bin/qemu-system-x86_64

# Pinned toolchain. Changing any of these changes the build-cache key (see build-kernel.sh).
KSRC_PKG=${KSRC_PKG:-linux-source-7.3}
BINDGEN_VERSION=0.73.2
VIRTME_NG_VERSION=${VIRTME_NG_VERSION:-1.42}
LLVM_SUFFIX=-22

export LIBCLANG_PATH=/usr/lib/llvm${LLVM_SUFFIX}/lib
export PATH=$KVENV/bin:$KTOOLS/bin:$PATH:/root/.cargo/bin
# The kernel and every out-of-tree module MUST be built with the same variables: without RUSTC=
# rustup's rustc (first in PATH) is picked and the module fails with E0514 (incompatible core).
KMAKE=(LLVM=$LLVM_SUFFIX RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc BINDGEN=$KTOOLS/bin/bindgen)

klog() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
kdie() { klog "ERROR: $*" >&2; exit 1; }

# kstep NAME CMD...: runs CMD, prints its duration; fails the script if CMD fails.
kstep() {
    local name=$1; shift
    local t0=$SECONDS
    klog "==> $name"
    "$@" || kdie "$name failed (after $((SECONDS - t0)) s)"
    klog "<== $name: $((SECONDS - t0)) s"
}

# The extracted kernel source: the newest directory src/*/linux-source-* with a .extracted stamp.
ksrc_dir() {
    local d
    for d in $(ls -d "$KCACHE"/src/*/ 2>/dev/null | sed 's:/$::' | sort -V -r); do
        if [ -e "$d/.extracted" ]; then
            ls -d "$d"/linux-source-*/ 2>/dev/null | head -1 | sed 's:/$::'
            return 0
        fi
    done
    return 1
}
# Version string of the extracted source (the Debian package version, path-safe).
ksrc_version() {
    local d; d=$(ksrc_dir) || return 1
    basename "$(dirname "$d")"
}
