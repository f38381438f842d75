#!/usr/bin/env bash
# Builds Slim's node image (the one image the DaemonSet of deploy/kubernetes/ runs) from a Debian
# root filesystem made by mmdebstrap plus this repository's release binaries, as a tarball, and
# imports it into podman unless --tar-only is given. No registry is needed: push the result to
# yours afterwards (README.md beside this script).
#
#   deploy/image/build.sh [--tag NAME] [--suite SUITE] [--kmod KO]... [--bin-dir DIR] [--tar-only FILE]
#
#   --tag NAME       image name for podman import [localhost/slim:0.1.0]
#   --suite SUITE    Debian release of the base [this machine's, VERSION_CODENAME of /etc/os-release:
#                    the binaries need a glibc at least as new as the one they were built with]
#   --kmod KO        a slim_kern.ko built against one node kernel (repeat for every kernel of the
#                    cluster); it goes to /opt/slim/modules/<its vermagic's kernel release>/
#   --bin-dir DIR    take slim-router, slim-k8s-peers, slim-oci and libslim_preload.so from DIR
#                    instead of building them (cargo build --release) into target/release
#   --tar-only FILE  write the image's root filesystem tarball to FILE and do not run podman
#
# Must run as root (mmdebstrap's root mode). Needs mmdebstrap; kmod (modinfo) when --kmod is given.
set -euo pipefail

TAG=localhost/slim:0.1.0
# shellcheck disable=SC1091
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
KMODS=()
BIN_DIR=
TAR_ONLY=
# insmod/rmmod/modinfo for the module's init containers; the rest (sh, cp, mv, grep, sleep) is in
# Debian's essential set that minbase installs.
PKGS=kmod

die() { echo "build.sh: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --tag) TAG=${2:?}; shift 2 ;;
        --suite) SUITE=${2:?}; shift 2 ;;
        --kmod) KMODS+=("$(readlink -f "${2:?}")"); shift 2 ;;
        --bin-dir) BIN_DIR=$(readlink -f "${2:?}"); shift 2 ;;
        --tar-only) TAR_ONLY=$(readlink -f "${2:?}"); shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap --mode=root)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
repo=$(cd "$(dirname "$0")/../.." && pwd)

if [ -z "$BIN_DIR" ]; then
    (cd "$repo" && cargo build --release -p slim-router -p slim-k8s-peers -p slim-oci -p slim-preload)
    BIN_DIR=$repo/target/release
fi
# Copies without debug information (the release profile keeps some): a third of the size.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for f in slim-router slim-k8s-peers slim-oci libslim_preload.so; do
    [ -f "$BIN_DIR/$f" ] || die "$BIN_DIR/$f is missing; build it (cargo build --release) or give --bin-dir"
    cp "$BIN_DIR/$f" "$stage/$f"
    strip --strip-debug "$stage/$f" 2>/dev/null || true
done
BIN_DIR=$stage

# $1 in the hooks is mmdebstrap's chroot, expanded by mmdebstrap, not here.
# shellcheck disable=SC2016
hooks=(
    --customize-hook='mkdir -p "$1/opt/slim/bin" "$1/opt/slim/lib" "$1/opt/slim/modules"'
    --customize-hook="copy-in $BIN_DIR/slim-router $BIN_DIR/slim-k8s-peers /usr/local/bin"
    --customize-hook="copy-in $BIN_DIR/slim-oci /opt/slim/bin"
    --customize-hook="copy-in $BIN_DIR/libslim_preload.so /opt/slim/lib"
)
for ko in "${KMODS[@]}"; do
    command -v modinfo >/dev/null || die "modinfo (kmod) is needed to read $ko's kernel release"
    # vermagic starts with the kernel release the module loads into.
    krel=$(modinfo -F vermagic "$ko" | cut -d' ' -f1)
    [ -n "$krel" ] || die "$ko has no vermagic: is it a kernel module?"
    hooks+=(--customize-hook="mkdir -p \"\$1/opt/slim/modules/$krel\""
            --customize-hook="copy-in $ko /opt/slim/modules/$krel")
    echo "build.sh: slim_kern.ko for kernel $krel"
done
# Smaller image: no apt lists or caches, no documentation.
# shellcheck disable=SC2016
hooks+=(--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/usr/share/doc/* "$1"/usr/share/man/*')

out=${TAR_ONLY:-$(mktemp --suffix=.tar)}
mmdebstrap --mode=root --variant=minbase --include="$PKGS" "${hooks[@]}" "$SUITE" "$out"
echo "build.sh: root filesystem in $out"

if [ -z "$TAR_ONLY" ]; then
    podman import \
        --change 'CMD ["/usr/local/bin/slim-router", "--help"]' \
        --change 'LABEL org.opencontainers.image.title=slim' \
        "$out" "$TAG"
    rm -f "$out"
    echo "build.sh: image $TAG; push it with: podman push $TAG <registry>/slim:<version>"
fi
