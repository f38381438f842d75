#!/usr/bin/env bash
# Installs the Debian packages that the lab, the tests and the demo use. Idempotent: packages that are
# already installed are not touched, and apt is not called at all when nothing is missing.
set -euo pipefail

PKGS=(iproute2 procps psmisc iperf iperf3 nginx-light wrk memcached libmemcached-tools redis-server
      redis-tools curl python3 default-jre-headless default-jdk-headless
      valgrind python3-matplotlib)
# slim-oci's tests (oci/tests/podman.rs): podman runs containers through slim-oci and crun.
PKGS+=(podman crun conmon catatonit containernetworking-plugins)
# scripts/k8s-validate.sh: shellcheck for the manifests' shell, the CNI portmap plugin's VERSION.
PKGS+=(shellcheck)
# slim-lab --runtime podman (the packages above, plus): podman's default configuration files, mmdebstrap
# for the containers' root filesystem (scripts/rootfs/build-rootfs.sh), util-linux for unshare/nsenter.
PKGS+=(golang-github-containers-common mmdebstrap util-linux)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PKGS[@]} packages present"
    exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Services that Debian would start on install (nginx, memcached, redis) must not run on the host: the
# tests start their own inside the lab's namespaces. policy-rc.d (exit 101) tells invoke-rc.d not to start them.
restore_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    restore_policy=1
fi
trap '[ $restore_policy = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq || apt-get update
apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Stop anything that got started anyway, so the host's ports stay free.
for s in nginx memcached redis-server; do
    systemctl stop "$s" 2>/dev/null || service "$s" stop 2>/dev/null || true
done
pkill -x nginx 2>/dev/null || true
pkill -x memcached 2>/dev/null || true
pkill -x redis-server 2>/dev/null || true
echo "install-deps: done"
