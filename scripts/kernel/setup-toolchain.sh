#!/usr/bin/env bash
# Installs and fetches everything needed to build the secure-mode test kernel, the Rust module and to
# boot the kernel under QEMU with virtme-ng. Idempotent: a second run checks and returns in seconds.
# Safe to interrupt: every download/extraction goes to a temporary name and is renamed when complete.
#
# What it does (recipe: ../shared/notes/kernel-toolchain-probe.md):
#  1. Downloads and EXTRACTS (never installs) the QEMU 7.2 debs from bookworm into $KCACHE/qemu.
#     Installing qemu-system-x86 7.2 would make apt REMOVE the preinstalled qemu-utils 10.x (qemu-utils
#     >= 8 Breaks qemu-system-common < 8.0).
#  2. apt-installs, from the machine's own sources (bookworm + bookworm-security only): rustc-web,
#     rust-web-src, clang/lld/llvm 22 + libclang1-22, the kernel build tools, udev (virtme-ng's script
#     I/O needs /lib/systemd/systemd-udevd in the guest's root, which is the host's root), python3-venv
#     and the runtime libraries of the extracted QEMU. A dry run first: anything not from Debian 12, or
#     any removal, aborts.
#  3. bindgen-cli $BINDGEN_VERSION from crates.io into $KCACHE/tools.
#  4. virtme-ng from PyPI into the venv $KCACHE/venv (Debian's /usr/bin/python3).
#  5. Downloads linux-source-7.3 with a SEPARATE apt configuration ($KCACHE/apt: its own sources.list
#     with bookworm-backports, trixie and trixie-backports on the machine's mirror, its own lists, state
#     and cache) and extracts it into $KCACHE/src/<version>/. Set SLIM_KERNEL_REFRESH=1 to look for a
#     newer upload when a source is already extracted.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh
. "$HERE/env.sh"

[ "$(id -u)" = 0 ] || kdie "must run as root (apt-get install)"
mkdir -p "$KCACHE" "$KDEBS"
T_ALL=$SECONDS
export DEBIAN_FRONTEND=noninteractive
APT_LOCK=(-o DPkg::Lock::Timeout=900)

# ---------------------------------------------------------------------------------------------- 1
qemu_extract() {
    if [ -e "$KQEMU_DIR/.extracted" ] && [ -x "$KQEMU" ]; then
        klog "qemu: already extracted in $KQEMU_DIR ($(cat "$KQEMU_DIR/.extracted"))"
        return 0
    fi
    local ver
    ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    case "$ver" in 1:7.2*) ;; *) kdie "qemu-system-x86 candidate is '$ver', expected 1:7.2 from bookworm" ;; esac
    local d=$KDEBS/qemu
    if [ ! -e "$d/.complete" ]; then
        rm -rf "$d" "$d.tmp"
        mkdir -p "$d.tmp"
        (cd "$d.tmp" && apt-get download qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)
        touch "$d.tmp/.complete"
        mv "$d.tmp" "$d"
    fi
    rm -rf "$KQEMU_DIR.tmp"
    mkdir -p "$KQEMU_DIR.tmp"
    local f
    for f in "$d"/*.deb; do dpkg-deb -x "$f" "$KQEMU_DIR.tmp"; done
    echo "$ver" > "$KQEMU_DIR.tmp/.extracted"
    rm -rf "$KQEMU_DIR"
    mv "$KQEMU_DIR.tmp" "$KQEMU_DIR"
    klog "qemu: $ver extracted into $KQEMU_DIR"
}

# ---------------------------------------------------------------------------------------------- 2
SYS_PKGS=(rustc-web rust-web-src clang-22 lld-22 llvm-22 libclang1-22 flex bison libelf-dev bc cpio kmod
          udev python3-venv libssl-dev)
qemu_runtime_libs() {
    # The lib* Depends of the extracted qemu-system-x86 (the notes found libcapstone4 libfdt1 libpmem1
    # libslirp0 libvdeplug2 missing on a fresh machine).
    local deb
    deb=$(ls "$KDEBS"/qemu/qemu-system-x86_*.deb 2>/dev/null | head -1)
    [ -n "$deb" ] || { echo libcapstone4 libfdt1 libpmem1 libslirp0 libvdeplug2; return; }
    dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/(.*//; s/|.*//; s/ //g' | grep '^lib' | sort -u
}
apt_install() {
    local want missing=() p
    # shellcheck disable=SC2207
    want=("${SYS_PKGS[@]}" $(qemu_runtime_libs))
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        klog "apt: all ${#want[@]} packages present"
        return 0
    fi
    klog "apt: installing ${missing[*]}"
    local sim
    if ! sim=$(apt-get -s "${APT_LOCK[@]}" install --no-install-recommends "${missing[@]}" 2>&1); then
        klog "apt: dry run failed, updating the package lists"
        apt-get "${APT_LOCK[@]}" update -qq
        sim=$(apt-get -s "${APT_LOCK[@]}" install --no-install-recommends "${missing[@]}")
    fi
    # Guard: only Debian 12 (bookworm, bookworm-updates, bookworm-security) and no removals.
    if grep -q '^Remv ' <<<"$sim"; then
        grep '^Remv ' <<<"$sim" >&2
        kdie "apt would remove packages; refusing"
    fi
    local bad
    bad=$(grep '^Inst ' <<<"$sim" | grep -Ev '\((\S+) (Debian|Debian-Security):12' || true)
    [ -z "$bad" ] || { echo "$bad" >&2; kdie "apt would install packages not from Debian 12; refusing"; }
    # policy-rc.d (exit 101): nothing that gets installed (udev) starts a service on the host.
    local restore=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        restore=1
    fi
    local rc=0
    apt-get "${APT_LOCK[@]}" install -y -q --no-install-recommends "${missing[@]}" || rc=$?
    [ $restore = 1 ] && rm -f /usr/sbin/policy-rc.d
    return $rc
}
qemu_check() {
    local nf
    nf=$(ldd "$KQEMU" | grep 'not found' || true)
    [ -z "$nf" ] || { echo "$nf" >&2; kdie "the extracted QEMU misses libraries"; }
    klog "qemu: $("$KQEMU" --version | head -1)"
}

# ---------------------------------------------------------------------------------------------- 3
bindgen_install() {
    if [ -x "$KTOOLS/bin/bindgen" ] && "$KTOOLS/bin/bindgen" --version 2>/dev/null | grep -q " $BINDGEN_VERSION\$"; then
        klog "bindgen: $("$KTOOLS/bin/bindgen" --version) present"
        return 0
    fi
    command -v cargo >/dev/null || kdie "cargo not found (rustup's cargo is expected in /root/.cargo/bin)"
    # A private target dir so that a workspace CARGO_TARGET_DIR is not polluted.
    CARGO_TARGET_DIR=$KCACHE/cargo-target nice -n 10 cargo install --locked bindgen-cli \
        --version "$BINDGEN_VERSION" --root "$KTOOLS"
    rm -rf "$KCACHE/cargo-target"
    klog "bindgen: $("$KTOOLS/bin/bindgen" --version)"
}

# ---------------------------------------------------------------------------------------------- 4
vng_install() {
    if [ -x "$KVENV/bin/vng" ] && "$KVENV/bin/pip" show virtme-ng 2>/dev/null | grep -q "^Version: $VIRTME_NG_VERSION\$"; then
        klog "virtme-ng: $VIRTME_NG_VERSION present"
        return 0
    fi
    [ -x "$KVENV/bin/pip" ] || { rm -rf "$KVENV"; /usr/bin/python3 -m venv "$KVENV"; }
    "$KVENV/bin/pip" install -q "virtme-ng==$VIRTME_NG_VERSION"
    klog "virtme-ng: $("$KVENV/bin/vng" --version 2>&1 | head -1)"
}

# ---------------------------------------------------------------------------------------------- 5
mirror_uri() {
    # The machine's Debian mirror (not the security one), from deb822 .sources or a one-line list.
    local u
    u=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for (i=2;i<=NF;i++) print $i}' |
        grep -v security | grep '/debian/*$' | head -1 || true)
    [ -n "$u" ] || u=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1=="deb" {print $2}' | grep -v security | grep '/debian/*$' | head -1 || true)
    echo "${u:-http://deb.debian.org/debian}" | sed 's:/*$::'
}
SIDE_APT=(-o "Dir::Etc::SourceList=$KAPTDIR/sources.list" -o "Dir::Etc::SourceParts=$KAPTDIR/sources.list.d"
          -o "Dir::Etc::Preferences=$KAPTDIR/preferences" -o "Dir::Etc::PreferencesParts=$KAPTDIR/preferences.d"
          -o "Dir::State=$KAPTDIR/state" -o "Dir::State::Lists=$KAPTDIR/lists"
          -o "Dir::State::status=/var/lib/dpkg/status" -o "Dir::Cache=$KAPTDIR/cache")
side_apt_config() {
    mkdir -p "$KAPTDIR"/{sources.list.d,preferences.d,state,lists/partial,cache/archives/partial}
    : > "$KAPTDIR/preferences"
    local m; m=$(mirror_uri)
    cat > "$KAPTDIR/sources.list.new" <<EOF
# Used by scripts/kernel/setup-toolchain.sh ONLY to download linux-source; never to install.
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $m bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $m trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $m trixie-backports main
EOF
    mv "$KAPTDIR/sources.list.new" "$KAPTDIR/sources.list"
}
ksrc_fetch() {
    local have
    if have=$(ksrc_dir) && [ "${SLIM_KERNEL_REFRESH:-0}" != 1 ]; then
        klog "source: $have present (SLIM_KERNEL_REFRESH=1 to look for a newer upload)"
        return 0
    fi
    side_apt_config
    klog "source: apt-get update with $KAPTDIR/sources.list ($(mirror_uri))"
    apt-get "${SIDE_APT[@]}" update -q
    local ver safe
    ver=$(apt-cache "${SIDE_APT[@]}" policy "$KSRC_PKG" | awk '/Candidate:/ {print $2}')
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || kdie "$KSRC_PKG not found in $KAPTDIR/sources.list"
    safe=$(echo "$ver" | sed 's/[^A-Za-z0-9.-]/-/g')
    local dest=$KCACHE/src/$safe
    if [ -e "$dest/.extracted" ]; then
        klog "source: $KSRC_PKG $ver already extracted in $dest"
        return 0
    fi
    mkdir -p "$KDEBS/src"
    local deb
    deb=$(ls "$KDEBS"/src/"${KSRC_PKG}"_*.deb 2>/dev/null | grep -F "_$(echo "$ver" | sed 's/^[0-9]*://')_" | head -1 || true)
    if [ -z "$deb" ]; then
        # Into a temporary dir first: an interrupted download never looks like a complete .deb.
        rm -rf "$KDEBS/src.tmp"
        mkdir -p "$KDEBS/src.tmp"
        (cd "$KDEBS/src.tmp" && apt-get "${SIDE_APT[@]}" download "$KSRC_PKG=$ver")
        mv "$KDEBS"/src.tmp/*.deb "$KDEBS/src/"
        rm -rf "$KDEBS/src.tmp"
        deb=$(ls "$KDEBS"/src/"${KSRC_PKG}"_*.deb | grep -F "_$(echo "$ver" | sed 's/^[0-9]*://')_" | head -1)
    fi
    klog "source: extracting $(basename "$deb") ($(du -h "$deb" | cut -f1))"
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp/pkg"
    dpkg-deb -x "$deb" "$dest.tmp/pkg"
    local tarball
    tarball=$(ls "$dest.tmp"/pkg/usr/src/linux-source-*.tar.* | head -1)
    tar -xaf "$tarball" -C "$dest.tmp"
    rm -rf "$dest.tmp/pkg"
    echo "$KSRC_PKG $ver" > "$dest.tmp/.extracted"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    klog "source: $(ls -d "$dest"/linux-source-*) ($(make -s -C "$dest"/linux-source-* kernelversion 2>/dev/null))"
}

kstep "qemu 7.2 debs (download + extract)" qemu_extract
kstep "apt install (bookworm, bookworm-security)" apt_install
kstep "qemu runtime check" qemu_check
kstep "bindgen-cli $BINDGEN_VERSION" bindgen_install
kstep "virtme-ng $VIRTME_NG_VERSION" vng_install
kstep "kernel source ($KSRC_PKG)" ksrc_fetch
klog "toolchain ready in $((SECONDS - T_ALL)) s: rustc $(/usr/bin/rustc --version | cut -d' ' -f2)," \
     "clang $(clang$LLVM_SUFFIX --version | head -1 | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)," \
     "$("$KTOOLS/bin/bindgen" --version), source $(ksrc_dir)"
