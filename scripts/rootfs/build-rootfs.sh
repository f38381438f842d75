#!/usr/bin/env bash
# Builds the root filesystem of the lab's podman containers (`slim-lab up --runtime podman`) from
# Debian packages with mmdebstrap, cached outside the repository.
#
#   scripts/rootfs/build-rootfs.sh               build if needed; last line of stdout: the rootfs path
#   scripts/rootfs/build-rootfs.sh --print-path  print the rootfs path for this script and package
#                                                list; builds nothing
#
# Packages come from the same Debian archive apt uses: the enabled entries of /etc/apt/sources.list
# and /etc/apt/sources.list.d/*.{list,sources} for this machine's release (VERSION_CODENAME of
# /etc/os-release) are handed to mmdebstrap as the chroot's sources.
#
# Cache key: $CACHE/<16 hex of sha256(this script, the package list, the suite, the sources)>. The
# tree is $CACHE/<key>/rootfs; $CACHE/<key>/.complete marks a finished build (a second run prints
# "cached" and returns at once); $CACHE/current links to the newest finished tree (what slim-lab uses
# when SLIM_ROOTFS is not set). One build at a time: flock on $CACHE/.lock; a second invocation waits
# and then finds the finished tree. An interrupted build leaves no stamp and is redone from scratch.
# Environment: SLIM_ROOTFS_CACHE (default /var/cache/slim-rootfs).
#
# The tree is never written by the lab: podman runs it as `--rootfs DIR:O` (an overlay whose upper
# layer is thrown away with the container). slim-testprog and libslim_preload.so are not in it: the
# lab bind-mounts them read-only from the build.
set -euo pipefail

CACHE=${SLIM_ROOTFS_CACHE:-/var/cache/slim-rootfs}
SELF=$(readlink -f "${BASH_SOURCE[0]}")

# What the container tests run: servers and clients of the application tests, plus the usual tools
# to look around in a container (ps, ip, ss); wrk for `slim-bench --runtime podman`.
PKGS=(iperf3 nginx-light redis-server redis-tools postgresql postgresql-client memcached
      libmemcached-tools curl python3 procps iproute2 wrk)

log() { echo "build-rootfs: $*" >&2; }
die() { log "error: $*"; exit 1; }

suite() {
    # shellcheck disable=SC1091
    (. /etc/os-release && echo "${VERSION_CODENAME:?}") || die "no VERSION_CODENAME in /etc/os-release"
}

# The enabled apt sources of the Debian archive for SUITE (and SUITE-updates, SUITE-security): the deb
# stanzas of *.sources files that name SUITE (deb822), and the one-line deb entries of *.list files.
deb822_sources() {
    local s=$1 f
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        # Stanzas are separated by blank lines; keep the deb stanzas whose Suites name this release.
        awk -v s="$s" 'BEGIN { RS=""; ORS="\n\n" }
            /(^|\n)Types:[^\n]*deb([ \t]|$|\n)/ && $0 ~ ("(^|\n)Suites:[^\n]*[ \t]" s "([-a-z]*)?([ \t]|\n|$)") &&
            !/(^|\n)Enabled:[ \t]*no/ { print }' "$f"
    done
}
oneline_sources() {
    local s=$1 f
    shopt -s nullglob
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -e "$f" ] || continue
        grep -E "^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[a-z]+://[^[:space:]]+[[:space:]]+$s(-[a-z]+)?[[:space:]]" "$f" || true
    done
}

key() {
    { sha256sum "$SELF" | cut -d' ' -f1; printf '%s\n' "${PKGS[@]}"; suite; deb822_sources "$(suite)"; oneline_sources "$(suite)"; } |
        sha256sum | cut -c1-16
}

DIR=$CACHE/$(key)
ROOTFS=$DIR/rootfs
STAMP=$DIR/.complete

if [ "${1:-}" = --print-path ]; then
    echo "$ROOTFS"
    exit 0
fi
[ $# -eq 0 ] || die "usage: $0 [--print-path]"

finish() {
    ln -sfn "$(basename "$DIR")/rootfs" "$CACHE/current"
    echo "$ROOTFS"
}
if [ -e "$STAMP" ]; then
    log "cached: $ROOTFS ($(head -1 "$STAMP"))"
    finish
    exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap --mode=root); run it with sudo"
command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed; run scripts/install-deps.sh"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    log "another build is running; waiting for it"
    flock 9
fi
if [ -e "$STAMP" ]; then
    log "cached: $ROOTFS (built by the concurrent run)"
    finish
    exit 0
fi

SUITE=$(suite)
rm -rf "$DIR"
mkdir -p "$DIR"
MIRRORS=()
deb822_sources "$SUITE" > "$DIR/apt.sources"
oneline_sources "$SUITE" > "$DIR/apt.list"
[ -s "$DIR/apt.sources" ] && MIRRORS+=("$DIR/apt.sources")
[ -s "$DIR/apt.list" ] && MIRRORS+=("$DIR/apt.list")
[ ${#MIRRORS[@]} -gt 0 ] || die "no enabled apt source for $SUITE in /etc/apt/sources.list{,.d}; add the Debian archive there"
log "building $ROOTFS ($SUITE: ${PKGS[*]})"
T0=$SECONDS
# --variant=apt: Essential packages plus apt (small, and `apt-get` works inside for debugging).
# Maintainer scripts run in the chroot (mmdebstrap keeps services from starting there).
mmdebstrap --mode=root --variant=apt --include="$(IFS=,; echo "${PKGS[*]}")" \
    --aptopt='Acquire::Retries "3"' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$SUITE" "$ROOTFS" "${MIRRORS[@]}"
# Empty mount points for what the lab binds into every container.
mkdir -p "$ROOTFS/opt/slim" "$ROOTFS/run/slim"
echo "built $(date -u +%FT%TZ) in $((SECONDS - T0)) s: ${PKGS[*]}" > "$STAMP"
log "done in $((SECONDS - T0)) s"
finish
