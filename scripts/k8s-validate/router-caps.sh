#!/usr/bin/env bash
# Runs two slim-routers with exactly the capabilities that deploy/kubernetes/base gives the router
# container (CAPS, setpriv syntax, e.g. "+sys_ptrace"; every other capability is dropped from the
# bounding set, as `drop: [ALL]` does), and checks that Slim connections work across them:
# the client's connections succeed, its router sets Slim connections up (it counts at least one:
# connections from leased pooled ports need no router and are not counted, see
# router/src/metrics.rs), and no connection's payload crosses the client container's overlay
# interface (fewer bytes than one connection carries).
#
#   router-caps.sh CAPS TARGET_DIR     (TARGET_DIR holds slim-router, slim-testprog, libslim_preload.so)
#
# Root (network namespaces). Its own namespaces k8scap-{h1,h2,c1,c2}, joined by veths: underlay
# 192.168.251.0/24, containers 10.40.1.2 and 10.40.2.2 routed through their hosts; no route out.
# Removed on exit, also on failure.
set -euo pipefail

CAPS=${1:?capabilities, e.g. +sys_ptrace}
T=$(readlink -f "${2:?target directory}")
NS="k8scap-h1 k8scap-h2 k8scap-c1 k8scap-c2"
D=$(mktemp -d /tmp/slim-k8scap.XXXXXX)
CONNS=20
BYTES=1000000

fail() { echo "router-caps: FAIL: $*" >&2; for i in 1 2; do echo "--- router h$i" >&2; tail -5 "$D/h$i.log" >&2 || true; done; exit 1; }
cleanup() {
    for f in "$D"/*.pid; do
        if [ -e "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
    done
    sleep 0.3
    for n in $NS; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$D"
}
trap cleanup EXIT
for f in slim-router slim-testprog libslim_preload.so; do
    [ -e "$T/$f" ] || fail "$T/$f is missing: build first (make build)"
done
for n in $NS; do ip netns del "$n" 2>/dev/null || true; done

for n in $NS; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip link add k8scap-u1 netns k8scap-h1 type veth peer name k8scap-u2 netns k8scap-h2
for i in 1 2; do
    ip -n "k8scap-h$i" addr add "192.168.251.$i/24" dev "k8scap-u$i"
    ip -n "k8scap-h$i" link set "k8scap-u$i" up
    ip link add "k8scap-v$i" netns "k8scap-h$i" type veth peer name eth0 netns "k8scap-c$i"
    ip -n "k8scap-h$i" addr add "10.40.$i.1/24" dev "k8scap-v$i"
    ip -n "k8scap-h$i" link set "k8scap-v$i" up
    ip -n "k8scap-c$i" addr add "10.40.$i.2/24" dev eth0
    ip -n "k8scap-c$i" link set eth0 up
    ip -n "k8scap-c$i" route add default via "10.40.$i.1"
    ip netns exec "k8scap-h$i" sysctl -qw net.ipv4.ip_forward=1
done
ip -n k8scap-h1 route add 10.40.2.0/24 via 192.168.251.2
ip -n k8scap-h2 route add 10.40.1.0/24 via 192.168.251.1
head -c 32 /dev/urandom > "$D/cluster.key"
chmod 400 "$D/cluster.key"

for i in 1 2; do
    mkdir -p "$D/h$i"
    nsenter --net="/run/netns/k8scap-h$i" \
        setpriv --bounding-set="-all,$CAPS" --inh-caps=-all -- \
        "$T/slim-router" --host-addr "192.168.251.$i" --socket "$D/h$i/router.sock" \
        --prefix 10.40.0.0/16 --peer "192.168.251.$((3 - i)):7788" --cluster-key "$D/cluster.key" \
        > "$D/h$i.log" 2>&1 &
    echo $! > "$D/router$i.pid"
done
for i in 1 2; do
    for _ in $(seq 100); do [ -S "$D/h$i/router.sock" ] && break; sleep 0.1; done
    [ -S "$D/h$i/router.sock" ] || fail "router h$i did not create its socket"
done
for i in 1 2; do
    eff=$(awk '/^CapEff/ {print $2}' "/proc/$(cat "$D/router$i.pid")/status")
    echo "router-caps: router h$i runs with CapEff $eff ($CAPS)"
done

lib="LD_PRELOAD=$T/libslim_preload.so SLIM_PREFIXES=10.40.0.0/16"
# shellcheck disable=SC2086
nsenter --net=/run/netns/k8scap-c2 env $lib SLIM_ROUTER_SOCKET="$D/h2/router.sock" \
    "$T/slim-testprog" serve 5000 > "$D/server.log" 2>&1 &
echo $! > "$D/server.pid"
for _ in $(seq 100); do grep -q LISTENING "$D/server.log" 2>/dev/null && break; sleep 0.1; done
grep -q LISTENING "$D/server.log" || fail "the server did not start: $(cat "$D/server.log")"
# Both routers must know the listener before the client connects (replicated on listen).
overlay_rx() { ip netns exec k8scap-h1 cat /sys/class/net/k8scap-v1/statistics/rx_bytes; }
before=$(overlay_rx)
# shellcheck disable=SC2086
nsenter --net=/run/netns/k8scap-c1 env $lib SLIM_ROUTER_SOCKET="$D/h1/router.sock" \
    timeout 60 "$T/slim-testprog" client 10.40.2.2 5000 --conns "$CONNS" --bytes "$BYTES" \
    > "$D/client.log" 2>&1 || fail "the client failed: $(cat "$D/client.log")"
overlay=$(( $(overlay_rx) - before ))

kill -USR1 "$(cat "$D/router1.pid")"
for _ in $(seq 50); do grep -q 'connects=' "$D/h1.log" && break; sleep 0.1; done
connects=$(sed 's/\x1b\[[0-9;]*m//g' "$D/h1.log" | grep -o 'connects=[0-9]*' | tail -1 | cut -d= -f2)
echo "router-caps: $CONNS connections of $BYTES bytes: client router counts $connects Slim connects; $overlay bytes crossed the client's overlay interface"
# Leased pooled ports connect without the router (and uncounted); how many of the 20 did depends
# on how far the pool was filled. The overlay byte count is what shows every connection bypassed.
[ "${connects:-0}" -ge 1 ] || fail "the client's router counted ${connects:-no} Slim connects: it set none up"
[ "$overlay" -lt "$BYTES" ] || fail "$overlay bytes went through the overlay: at least one connection's payload did not bypass it"
echo "router-caps: ok"
