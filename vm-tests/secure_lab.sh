#!/bin/bash
# Runs INSIDE the test VM, from guest.sh, with slim_kern loaded: secure mode end to end.
#
#   secure_lab.sh REPO OUT
#
# 1. `slim-lab up --secure`: the two-host lab (namespaces, veth, bridge, VXLAN) with both routers
#    started with --secure (they open /dev/slim and restrict every host socket they hand out).
# 2. Real programs through Slim in secure mode: the lab's own tests (lab/tests/apps.rs,
#    behaviour.rs; their test binaries are listed in $OUT/tests.txt by run.sh) run against the
#    secure lab (SLIM_LAB_SECURE=1): iperf3 and nginx+curl across hosts with the bytes checked and
#    the VXLAN device's counters showing that the payload took the host network.
# 3. The attack suite: `slim-testprog attack` as nobody (no capabilities) inside container c1,
#    with the preload library and the seccomp rule of docs/seccomp.md, against a Slim server in c2
#    (see testprogs/src/attack.rs).
# 4. Module counters: sockets were restricted, refusals counted; `slim-lab down`.
# Output: one "ok   - ..." / "FAIL - ..." line per check (guest.sh counts them).
set -u
REPO=${1:?usage: secure_lab.sh REPO OUT}
OUT=${2:?usage: secure_lab.sh REPO OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
LAB=$REPO/target/release/slim-lab
PROG=$REPO/target/release/slim-testprog
PROBE="/usr/bin/python3 $HERE/kabi_probe.py"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

ok() { echo "ok   - $*"; }
nok() { echo "FAIL - $*"; }

stats() { $PROBE stats 2>&1; }
field() { sed -nE "s/.* $1=([0-9]+).*/\1/p"; }

before=$(stats)
if out=$("$LAB" up --secure 2>&1); then
    ok "slim-lab up --secure: $(tail -1 <<<"$out")"
else
    nok "slim-lab up --secure failed:"
    echo "$out" | sed 's/^/    /'
    exit 0
fi
for h in h1 h2; do
    if grep -q "secure mode: host sockets are restricted by slim_kern" "/run/slim-lab/$h.log"; then
        ok "router $h runs in secure mode"
    else
        nok "router $h did not report secure mode: $(tail -3 "/run/slim-lab/$h.log")"
    fi
done

# --- real programs, the lab's own tests, against the secure routers
run_test() {
    local bin=$1 name=$2 log="$OUT/secure-$2.log" t0=$SECONDS
    # What the lab looked like before the test (its `up` rebuilds a lab that is not intact).
    "$LAB" status >"$OUT/secure-$2.status-before.txt" 2>&1 || true
    if SLIM_LAB_SECURE=1 RUST_BACKTRACE=1 timeout 600 "$bin" --exact --test-threads=1 "$name" >"$log" 2>&1; then
        ok "secure mode: $name ($((SECONDS - t0)) s)"
    else
        nok "secure mode: $name ($((SECONDS - t0)) s), log:"
        grep -vE '^\s+(at |[0-9]+: )' "$log" | tail -25 | sed 's/^/    /'
        echo "    lab status before the test:"
        sed 's/^/      /' "$OUT/secure-$name.status-before.txt"
    fi
}
APPS=$(sed -n 's/^apps=//p' "$OUT/tests.txt" 2>/dev/null)
BEHAVIOUR=$(sed -n 's/^behaviour=//p' "$OUT/tests.txt" 2>/dev/null)
if [ -x "$APPS" ] && [ -x "$BEHAVIOUR" ]; then
    for t in iperf3_one_stream_cross_host iperf3_reverse_cross_host \
        nginx_two_workers_curl_exact_file_cross_host nginx_two_workers_curl_exact_file_same_host; do
        run_test "$APPS" "$t"
    done
    for t in every_connect_style_across_hosts_and_on_one_host connection_survives_dup_fork_and_exec \
        peers_without_slim_see_exactly_the_bytes_written dual_stack_listener_and_ipv6_overlay \
        fresh_sockets_stay_fresh_sockets_of_the_container router_stop_and_restart; do
        run_test "$BEHAVIOUR" "$t"
    done
else
    nok "lab test binaries not found (run.sh writes them to $OUT/tests.txt): apps=$APPS behaviour=$BEHAVIOUR"
fi
# The policy of Slim connections (router --policy-file), enforced in secure mode.
POLICY_TEST=$(sed -n 's/^policy=//p' "$OUT/tests.txt" 2>/dev/null)
if [ -x "$POLICY_TEST" ]; then
    run_test "$POLICY_TEST" the_policy_denies_what_it_does_not_allow_and_nothing_else
else
    nok "lab test binary policy not found in $OUT/tests.txt"
fi
# `slim-lab routers plain|secure` with the module loaded: secure -> plain -> secure, the lab and a
# running server kept (what `make vm-bench` does between its Slim modes).
ROUTER_MODES=$(sed -n 's/^router_modes=//p' "$OUT/tests.txt" 2>/dev/null)
if [ -x "$ROUTER_MODES" ]; then
    run_test "$ROUTER_MODES" routers_switch_mode_and_keep_the_lab_and_its_programs
else
    nok "lab test binary router_modes not found in $OUT/tests.txt"
fi
mid=$(stats)
r0=$(field restricted <<<"$before")
r1=$(field restricted <<<"$mid")
c1=$(field children <<<"$mid")
if [ -n "$r1" ] && [ "${r1:-0}" -gt "${r0:-0}" ] && [ "${c1:-0}" -gt 0 ]; then
    ok "the programs ran on restricted host sockets (module: $((r1 - r0)) restricted, $c1 accepted children)"
else
    nok "the module restricted nothing during the program runs: before: $before; after: $mid"
fi

# --- the attack suite: nobody, inside container c1, with the preload library
"$LAB" up --secure >/dev/null 2>&1
"$LAB" exec c2 --slim -- timeout 300 "$PROG" serve 7400 >"$OUT/attack-server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
    "$LAB" exec c1 -- timeout 2 bash -c 'exec 3<>/dev/tcp/10.32.0.2/7400' 2>/dev/null && break
    sleep 0.2
done
# --- the routers' tables in the module (issue 15 point 1): with c2's Slim listener up, each router's
# own table set (one per open /dev/slim) holds the listener row (h2: its own, tagged with c2; h1: its
# peer's), read back by the router from the module (TABLE_STATS + TABLE_DUMP) into its status.
cat > /tmp/slim-ktables-check.py <<'PY'
import json, sys
host, want_overlay, want_host_ip = sys.argv[1], sys.argv[2], sys.argv[3]
s = json.load(sys.stdin)
k = s.get("kernel_tables")
if not k:
    print(f"FAIL {host}: no kernel_tables in the status")
    sys.exit(1)
rows = [r for r in k["listener_rows"] if r[0] == want_overlay and r[1].rsplit(":", 1)[0] == want_host_ip]
ok = rows and k["in_sync"] and k["listeners"] == len(k["listener_rows"]) and k["refused_batches"] == 0
print(("OK" if ok else "FAIL") + f" {host}: module rows listeners={k['listeners']} leases={k['leases']} "
      f"identities={k['identities']} generation={k['generation']} in_sync={k['in_sync']} "
      f"refused={k['refused_batches']} row={rows}")
sys.exit(0 if ok else 1)
PY
for h in h2 h1; do
    out=$("$LAB" exec $h -- "$REPO/target/release/slim-router" status --json --socket /run/slim-lab/$h.sock 2>&1 |
        /usr/bin/python3 /tmp/slim-ktables-check.py $h 10.32.0.2:7400 192.168.77.2 2>&1)
    if [[ $out == OK* ]]; then ok "kernel tables: ${out#OK }"; else nok "kernel tables: ${out#FAIL }"; fi
done
out=$("$LAB" exec h2 -- "$REPO/target/release/slim-router" status --json --socket /run/slim-lab/h2.sock 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; k=json.load(sys.stdin)["kernel_tables"]; print(k["identities"])' 2>&1)
if [ "${out:-0}" -ge 1 ] 2>/dev/null; then
    ok "kernel tables: h2's set holds the identity of c2 (its library is connected): $out rows"
else
    nok "kernel tables: no identity rows in h2's set: $out"
fi

# --- connect and accept by the module (issue 15 points 2 and 3): c1's library gets pooled sockets on
# ports leased to it, restricted with SLIM_RESTRICT_TRANSLATE, and connects them to the overlay
# endpoint itself; h1's module translates it from h1's listeners table, and h2's module identifies
# the accepted child from the lease. A connection from a leased port (40000-65535 in the lab) was
# made that way; one the router made has an ephemeral port (10000-39999): the first connects of a
# process go through the router until its pool is filled (the lease must reach every peer first).
# So: h1's router made exactly the unleased ones, the module translated exactly the leased ones, and
# h2's router identified exactly the unleased ones (IdentifyChild); the server saw c1's address.
cat > /tmp/slim-translate-probe.py <<'PY'
import json, socket
total = leased = 0
seen = set()
while total < 200 and leased < 20:
    s = socket.create_connection(("10.32.0.2", 7400), timeout=10)
    hello = s.recv(200)
    port = s.getsockname()[1]
    server_saw = hello.split(b"peer=")[1].split(b" ")[0].decode() if b"peer=" in hello else repr(hello)
    seen.add((s.getsockname()[0], s.getpeername(), "server saw " + server_saw.rsplit(":", 1)[0]))
    s.close()
    total += 1
    if port >= 40000:
        leased += 1
print(json.dumps({"total": total, "leased": leased, "seen": sorted(map(str, seen))}))
PY
tstat() {
    "$LAB" exec h1 -- "$REPO/target/release/slim-router" status --json --socket /run/slim-lab/h1.sock 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys; s=json.load(sys.stdin); k=s["kernel_tables"]; print(k.get("translated", -1), s["counters"]["connections"], k["leases"])'
}
accepts() {
    "$LAB" exec h2 -- "$REPO/target/release/slim-router" status --json --socket /run/slim-lab/h2.sock 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["counters"]["accepts"], s["kernel_tables"]["leases"])'
}
read -r tr0 cn0 _ <<<"$(tstat)"
read -r ac0 _ <<<"$(accepts)"
pout=$("$LAB" exec c1 --slim -- timeout 300 python3 /tmp/slim-translate-probe.py 2>&1)
read -r tr1 cn1 leases1 <<<"$(tstat)"
read -r ac1 h2leases <<<"$(accepts)"
read -r total nleased <<<"$(/usr/bin/python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["total"], d["leased"])' "$pout" 2>/dev/null)"
unleased=$(( ${total:-0} - ${nleased:-0} ))
want_seen="[\"('10.32.0.1', ('10.32.0.2', 7400), 'server saw 10.32.0.1')\"]"
if [ "${nleased:-0}" -ge 20 ] && [ "$((tr1 - tr0))" = "$nleased" ] && [ "$((cn1 - cn0))" = "$unleased" ] && grep -qF "\"seen\": $want_seen" <<<"$pout"; then
    ok "connect by the module: $total connects from c1, $nleased from leased ports translated by slim_kern (translated $tr0 -> $tr1), the $unleased others made by h1's router (connections $cn0 -> $cn1); h1's module lease rows $leases1; the server saw c1's overlay address"
else
    nok "connect by the module: probe $pout; translated $tr0 -> $tr1 (want +leased), h1's router connections $cn0 -> $cn1 (want +unleased)"
fi
if [ -n "$ac1" ] && [ "$((ac1 - ac0))" = "$unleased" ] && [ "${h2leases:-0}" -ge 1 ]; then
    ok "accept by the module: h2's router identified only the $unleased connections from unleased ports (accepts $ac0 -> $ac1); h2's module holds $h2leases lease rows"
else
    nok "accept by the module: h2's router accepts $ac0 -> $ac1 (want +$unleased), h2's module lease rows ${h2leases:-?}"
fi

NOBODY="setpriv --reuid 65534 --regid 65534 --clear-groups --inh-caps=-all --bounding-set=-all"
t0=$SECONDS
while IFS= read -r line; do
    case $line in
        "ok   - "*) ok "attack: ${line#ok   - }" ;;
        "FAIL - "*) nok "attack: ${line#FAIL - }" ;;
        "exit status 0") ok "attack suite finished ($((SECONDS - t0)) s)" ;;
        "exit status "*) nok "attack suite ended with $line" ;;
        *) echo "  attack: $line" ;;
    esac
# seccomp-exec plays the container runtime: it denies ioctl(SIOCGIFCONF), which the kernel answers
# before the module can refuse it (docs/seccomp.md).
done < <("$LAB" exec c1 --slim -- timeout 300 $NOBODY "$PROG" seccomp-exec -- "$PROG" attack 10.32.0.2:7400 7401 10.32.0.3 192.168.77.1 192.168.77.2 2>&1; echo "exit status $?")
kill "$server" 2>/dev/null
wait "$server" 2>/dev/null
after=$(stats)
echo "  module stats after the attack: $after"
refused=$(sed -nE 's/.*refusals=\[([0-9]+), ([0-9]+), ([0-9]+).*/\1 \2 \3/p' <<<"$after")
set -- $refused
if [ "${1:-0}" -gt 0 ] && [ "${2:-0}" -gt 0 ] && [ "${3:-0}" -gt 0 ]; then
    ok "refusals counted by kind (connect $1, bind $2, listen $3)"
else
    nok "refusals not counted: $after"
fi
for h in h1 h2; do
    grep -E "refused|WARN|ERROR" "/run/slim-lab/$h.log" | tail -5 | sed "s/^/  $h.log: /"
done

# --- revocation: an administrator (root in h1's namespace) cuts container c1's Slim connections
cat > /tmp/slim-revoke-probe.py <<'PY'
import socket, sys
s = socket.create_connection(("10.32.0.2", 7402))
s.recv(200)                      # the server's greeting
print("CONNECTED", flush=True)
s.settimeout(120)
try:
    data = s.recv(100)
    print("EOF" if data == b"" else f"DATA {data!r}", flush=True)
except OSError as e:
    print(f"ERROR {e}", flush=True)
PY
"$LAB" exec c2 --slim -- timeout 200 "$PROG" serve 7402 >"$OUT/revoke-server.log" 2>&1 &
rserver=$!
sleep 2
"$LAB" exec c1 --slim -- timeout 150 python3 /tmp/slim-revoke-probe.py >"$OUT/revoke-client.log" 2>&1 &
rclient=$!
for _ in $(seq 1 100); do grep -q CONNECTED "$OUT/revoke-client.log" 2>/dev/null && break; sleep 0.2; done
probe_pid=$(pgrep -f slim-revoke-probe.py | tail -1)
rv_before=$(field revoked <<<"$(stats)")
out=$("$LAB" exec h1 -- "$REPO/target/release/slim-router" --revoke "$probe_pid" --socket /run/slim-lab/h1.sock 2>&1)
wait "$rclient"
rv_after=$(field revoked <<<"$(stats)")
if grep -q '^revoked [1-9][0-9]* host sockets' <<<"$out" && grep -q '^EOF' "$OUT/revoke-client.log" \
    && [ "${rv_after:-0}" -gt "${rv_before:-0}" ]; then
    ok "revocation: $out; the container's connection saw EOF; module revoked $rv_before -> $rv_after"
else
    nok "revocation: router said: $out; client: $(cat "$OUT/revoke-client.log"); module revoked $rv_before -> $rv_after"
fi
out=$("$LAB" exec c1 -- "$REPO/target/release/slim-router" --revoke "$probe_pid" --socket /run/slim-lab/h1.sock 2>&1)
if grep -q "administrators" <<<"$out"; then
    ok "revocation asked from inside a container is refused: $out"
else
    nok "revocation from inside a container: $out"
fi
kill "$rserver" 2>/dev/null
wait "$rserver" 2>/dev/null

# --- the Slim policy in the module (issue 15 points 4 and 7): with a policy that lets c1 reach only
# c2:7410, h1's router loads c1's allow-list into its set's policy table and hands c1 pooled sockets
# restricted with SLIM_RESTRICT_POLICY. A program of c1 (nobody, no capabilities) fills its pool on
# the allowed endpoint, then connects to c2:7411, a Slim listener the policy denies: ECONNREFUSED
# each time, refused by h1's module (its policy_denied grows by as many), and the server on 7411
# never sees a connection. Once the program is gone, c1's allow-list is gone from the module too.
cat > /tmp/slim-policy-probe.py <<'PY'
import json, socket
res = {"allowed": 0, "leased": 0, "denied": []}
for _ in range(200):
    s = socket.create_connection(("10.32.0.2", 7410), timeout=10)
    s.recv(200)
    port = s.getsockname()[1]
    s.close()
    res["allowed"] += 1
    if port >= 40000:
        res["leased"] += 1
        if res["leased"] >= 3:
            break
for _ in range(5):
    try:
        s = socket.create_connection(("10.32.0.2", 7411), timeout=10)
        res["denied"].append("connected: " + repr(s.recv(200)))
    except OSError as e:
        res["denied"].append(type(e).__name__)
print(json.dumps(res))
PY
pstat() {
    "$LAB" exec h1 -- "$REPO/target/release/slim-router" status --json --socket /run/slim-lab/h1.sock 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys; k=json.load(sys.stdin)["kernel_tables"]; print(k["policy_denied"], k["policy_rows"])'
}
printf 'default = "allow"\n[[allow]]\nfrom = ["10.32.0.1/32"]\nto = ["10.32.0.2/32:7410"]\n' > /run/slim-lab/policy.toml
"$LAB" router h1 restart >/dev/null 2>&1
"$LAB" exec c2 --slim -- timeout 200 "$PROG" serve 7410 >"$OUT/policy-allowed.log" 2>&1 &
pa=$!
"$LAB" exec c2 --slim -- timeout 200 python3 -c '
import socket
l = socket.create_server(("0.0.0.0", 7411))
while True:
    c, peer = l.accept()
    print("accepted", peer[0], flush=True)
    c.sendall(b"HELLO 7411\n")
    c.close()' >"$OUT/policy-denied.log" 2>&1 &
pd=$!
for port in 7410 7411; do
    for _ in $(seq 1 100); do
        "$LAB" exec c3 -- timeout 2 bash -c "exec 3<>/dev/tcp/10.32.0.2/$port" 2>/dev/null && break
        sleep 0.2
    done
done
read -r pden0 _ <<<"$(pstat)"
pout=$("$LAB" exec c1 --slim -- timeout 200 $NOBODY python3 /tmp/slim-policy-probe.py 2>&1)
read -r pden1 prows <<<"$(pstat)"
kill "$pa" "$pd" 2>/dev/null
wait "$pa" "$pd" 2>/dev/null
want='"denied": ["ConnectionRefusedError", "ConnectionRefusedError", "ConnectionRefusedError", "ConnectionRefusedError", "ConnectionRefusedError"]'
# The server on 7411 logs each connection it accepts: c3's readiness probe (10.32.0.3), none of c1's.
if grep -qF "$want" <<<"$pout" && grep -q '"leased": 3' <<<"$pout" && [ "$((pden1 - pden0))" = 5 ] \
    && [ "${prows:-1}" = 0 ] && grep -q "^accepted 10\.32\.0\.3" "$OUT/policy-denied.log" \
    && ! grep -q "^accepted 10\.32\.0\.1" "$OUT/policy-denied.log"; then
    ok "attack: a connect the Slim policy denies, through a pooled socket as nobody: ECONNREFUSED 5 of 5, refused by h1's module (policy_denied $pden0 -> $pden1), the server never reached; c1's allow-list left the module with its last program ($prows policy rows)"
else
    nok "attack: policy-denied connects: probe $pout; h1 module policy_denied $pden0 -> $pden1, rows ${prows:-?}; server log: $(head -c 300 "$OUT/policy-denied.log")"
fi
rm -f /run/slim-lab/policy.toml
"$LAB" router h1 restart >/dev/null 2>&1

cp /run/slim-lab/h1.log "$OUT/secure-router-h1.log" 2>/dev/null
cp /run/slim-lab/h2.log "$OUT/secure-router-h2.log" 2>/dev/null
if out=$("$LAB" down 2>&1); then ok "slim-lab down"; else nok "slim-lab down: $out"; fi
