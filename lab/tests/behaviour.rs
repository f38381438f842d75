//! Slim's behaviour across the lab, one test per property of ARCHITECTURE.md's invariants 1-5,
//! with slim-testprog (an ordinary libc socket program) at both ends.

mod common;

use common::*;
use std::time::Duration;

const C2: &str = "10.32.0.2";
const C3: &str = "10.32.0.3";
const MB: u64 = 1 << 20;

fn serve(node: &str, slim: bool, port: u16, extra: &[&str]) -> Bg {
    let tp = testprog();
    let p = port.to_string();
    let mut args = vec![tp.as_str(), "serve", p.as_str()];
    args.extend_from_slice(extra);
    let bg = spawn(node, slim, &args);
    assert!(
        bg.first_line.starts_with("LISTENING"),
        "server said {:?}",
        bg.first_line
    );
    bg
}

fn client(node: &str, slim: bool, addr: &str, port: u16, extra: &[&str]) -> String {
    let tp = testprog();
    let p = port.to_string();
    let mut args = vec![tp.as_str(), "client", addr, p.as_str()];
    args.extend_from_slice(extra);
    let out = ok(node, slim, &args);
    assert!(out.starts_with("OK"), "client said {out}");
    out
}

/// The test client in c1 with the library preloaded by hand (not `--slim`), with `env` on top
/// of the router socket; returns the bytes the VXLAN device carried meanwhile.
fn client_with_env(env: &[(&str, &str)], args: &[&str]) -> u64 {
    let lib = bin("libslim_preload.so").display().to_string();
    let mut all = vec![
        ("LD_PRELOAD", lib.as_str()),
        ("SLIM_ROUTER_SOCKET", "/run/slim-lab/h1.sock"),
    ];
    all.extend_from_slice(env);
    let tp = testprog();
    let mut full = vec![tp.as_str(), "client"];
    full.extend_from_slice(args);
    let before = bytes("h1", "slim-vx");
    let o = run_env("c1", false, &all, &full);
    assert!(o.status.success(), "{}", text(&o));
    bytes("h1", "slim-vx") - before
}

/// Whether, within 20 s, a Slim client's megabyte to `port` on c2 stops crossing the VXLAN device.
fn back_to_slim(port: &str) -> bool {
    eventually(Duration::from_secs(20), || {
        let before = bytes("h1", "slim-vx");
        let o = run(
            "c1",
            true,
            &[&testprog(), "client", C2, port, "--bytes", "1000000"],
        );
        o.status.success() && bytes("h1", "slim-vx") - before < MB / 4
    })
}

#[test]
fn every_connect_style_across_hosts_and_on_one_host() {
    let _g = lab();
    let _s2 = serve("c2", true, 7101, &["--workers", "2", "--accept", "epoll"]);
    let _s3 = serve("c3", true, 7101, &[]);
    for style in [
        "block",
        "epoll-before",
        "epoll-after",
        "epoll-et",
        "poll",
        "select",
    ] {
        let before = bytes("h1", "slim-vx");
        client(
            "c1",
            true,
            C2,
            7101,
            &["--style", style, "--conns", "4", "--bytes", "1000000"],
        );
        let vx = bytes("h1", "slim-vx") - before;
        // 4 MB each way went through; the overlay saw only setup noise (ARP, nothing else).
        assert!(vx < MB / 4, "{style}: {vx} bytes crossed the VXLAN device");
        client(
            "c1",
            true,
            C3,
            7101,
            &["--style", style, "--conns", "2", "--bytes", "100000"],
        );
    }
}

#[test]
fn listener_readiness_through_select_poll_epoll_and_accept4_flags() {
    let _g = lab();
    for (i, style) in ["block", "epoll", "epoll-et", "poll", "select"]
        .iter()
        .enumerate()
    {
        let port = 7110 + i as u16;
        let _s = serve("c2", true, port, &["--accept", style, "--accept4-flags"]);
        client("c1", true, C2, port, &["--conns", "5"]);
        // A peer without Slim reaches the same listener through the overlay.
        client("c3", false, C2, port, &["--conns", "2"]);
    }
}

#[test]
fn a_server_closing_stray_descriptors_keeps_its_slim_listener() {
    let _g = lab();
    let _s = serve("c2", true, 7125, &["--close-range"]);
    let before = bytes("h1", "slim-vx");
    client(
        "c1",
        true,
        C2,
        7125,
        &["--conns", "3", "--bytes", "1000000"],
    );
    assert!(
        bytes("h1", "slim-vx") - before < MB / 4,
        "connections fell back to the overlay"
    );
}

#[test]
fn dual_stack_listener_and_ipv6_overlay() {
    let _g = lab();
    let _s = serve("c2", true, 7120, &["--v6"]);
    client("c1", true, C2, 7120, &["--conns", "3"]);
    client("c1", true, C2, 7120, &["--conns", "3", "--v6sock"]);
    let before = bytes("h1", "slim-vx");
    client(
        "c1",
        true,
        "fd00:32::2",
        7120,
        &["--conns", "3", "--bytes", "1000000"],
    );
    assert!(
        bytes("h1", "slim-vx") - before < MB / 4,
        "IPv6 overlay connection went over VXLAN"
    );
    let _v6only = serve("c2", true, 7121, &["--v6", "--v6only"]);
    client("c1", true, "fd00:32::2", 7121, &["--conns", "2"]);
}

#[test]
fn exact_pairing_500_connections_prefork_server_no_fd_left() {
    let _g = lab();
    let routers = [router_pid("h1"), router_pid("h2")];
    let router_fds: Vec<usize> = routers.iter().map(|p| fd_count(*p)).collect();
    let s = serve("c2", true, 7130, &["--workers", "4", "--accept", "block"]);
    let workers = group_pids(s.pid());
    assert_eq!(workers.len(), 4, "pre-fork server should have 4 processes");
    let tcp_before: Vec<usize> = workers.iter().map(|p| tcp_fd_count(*p)).collect();
    let all_before: Vec<usize> = workers.iter().map(|p| fd_count(*p)).collect();
    // 5 client processes x 100 connections, all open at once; each client checks that the
    // server process that answered saw exactly this connection's own address.
    client(
        "c1",
        true,
        C2,
        7130,
        &["--conns", "100", "--procs", "5", "--bytes", "2000"],
    );
    let settled = eventually(Duration::from_secs(10), || {
        workers.iter().map(|p| tcp_fd_count(*p)).collect::<Vec<_>>() == tcp_before
    });
    assert!(
        settled,
        "TCP sockets left open in the server: {:?} -> {:?}",
        tcp_before,
        workers.iter().map(|p| tcp_fd_count(*p)).collect::<Vec<_>>()
    );
    // Besides its sockets, each process may keep a few idle connections to the router (a
    // bounded pool of 8), nothing else.
    for (p, before) in workers.iter().zip(&all_before) {
        let now = fd_count(*p);
        assert!(
            now <= before + 8,
            "worker {p}: {before} -> {now} descriptors"
        );
    }
    // Once the programs are gone, the routers hold no more than they held before (less is
    // possible: a connection of the previous test's programs may still have been closing when
    // the baseline was taken).
    drop(s);
    let back = eventually(Duration::from_secs(10), || {
        routers
            .iter()
            .zip(&router_fds)
            .all(|(p, before)| fd_count(*p) <= *before)
    });
    assert!(
        back,
        "router descriptors {:?} -> {:?}",
        router_fds,
        routers.iter().map(|p| fd_count(*p)).collect::<Vec<_>>()
    );
}

#[test]
fn connection_survives_dup_fork_and_exec() {
    let _g = lab();
    let _s = serve("c2", true, 7140, &[]);
    let tp = testprog();
    let out = ok("c1", true, &[&tp, "inherit", C2, "7140"]);
    assert!(out.contains("OK check-fd 10.32.0.1:"), "{out}");
    assert!(out.contains("OK inherit"), "{out}");
}

#[test]
fn peers_without_slim_see_exactly_the_bytes_written() {
    let _g = lab();
    // Server without the library, Slim client: falls back to the overlay.
    let _plain = serve("c2", false, 7150, &[]);
    let before = bytes("h1", "slim-vx");
    client("c1", true, C2, 7150, &["--conns", "3", "--bytes", "300000"]);
    assert!(
        bytes("h1", "slim-vx") - before > 900_000,
        "fallback should have used the overlay"
    );
    // Slim server, client without the library.
    let _slim = serve("c2", true, 7151, &[]);
    client(
        "c1",
        false,
        C2,
        7151,
        &["--conns", "3", "--bytes", "300000"],
    );
}

#[test]
fn destinations_outside_the_prefixes_use_the_overlay() {
    let _g = lab();
    let _s = serve("c2", true, 7155, &[]);
    // Only c1's own address is "overlay" for this program: c2 is outside its prefixes.
    let vx = client_with_env(
        &[("SLIM_PREFIXES", "10.32.0.1/32")],
        &[C2, "7155", "--bytes", "300000"],
    );
    assert!(
        vx > 600_000,
        "a destination outside the prefixes must go over the overlay"
    );
}

#[test]
fn data_bypasses_the_overlay_100mb() {
    let _g = lab();
    let _s = serve("c2", true, 7160, &[]);
    let (vx1, vx2, u1) = (
        bytes("h1", "slim-vx"),
        bytes("h2", "slim-vx"),
        bytes("h1", "slim-u1"),
    );
    client("c1", true, C2, 7160, &["--bytes", "100000000"]);
    let (dvx1, dvx2, du1) = (
        bytes("h1", "slim-vx") - vx1,
        bytes("h2", "slim-vx") - vx2,
        bytes("h1", "slim-u1") - u1,
    );
    assert!(
        dvx1 < MB && dvx2 < MB,
        "VXLAN carried {dvx1} / {dvx2} bytes of a 100 MB transfer"
    );
    assert!(
        du1 > 200_000_000,
        "the underlay carried only {du1} bytes of 2 x 100 MB"
    );
}

/// Takes h2's end of the underlay down (SYNs from h1 are lost until it comes back); brings it
/// back up even if the test fails.
struct UnderlayCut;
impl UnderlayCut {
    fn new() -> UnderlayCut {
        lab_cmd(&["exec", "h2", "--", "ip", "link", "set", "slim-u2", "down"]);
        UnderlayCut
    }
}
impl Drop for UnderlayCut {
    fn drop(&mut self) {
        let _ = std::process::Command::new(lab_bin())
            .args(["exec", "h2", "--", "ip", "link", "set", "slim-u2", "up"])
            .output();
    }
}

/// Host ports leased to one container's pooled sockets change owner: c1 uses every port of h1's
/// lease range (and keeps reusing its own), then c3, on the same host, gets ports that were
/// c1's. The server in c2 must see c3's address on every one of c3's connections: the peer
/// router learnt each change of owner before c3 could connect from that port.
#[test]
fn leased_ports_change_owner_and_connections_keep_their_identity() {
    let _g = lab();
    let tp = testprog();
    let _rr = spawn("c2", true, &[&tp, "rr-serve", "7180"]);
    let _s = serve("c2", true, 7181, &["--accept", "epoll"]);
    let before = router_counters("h1");
    // More connections than the range (61000-65535) has ports.
    let out = ok("c1", true, &[&tp, "connrate", C2, "7180", "--secs", "1.5"]);
    assert!(out.contains("errors=0"), "connrate: {out}");
    let mid = router_counters("h1");
    // c3 then checks, per connection, that the server saw its own address (several rounds, so
    // that its pool is refilled with ports that were c1's).
    for _ in 0..4 {
        ok(
            "c3",
            true,
            &[
                &tp, "client", C2, "7181", "--conns", "40", "--procs", "2", "--bytes", "100",
            ],
        );
    }
    let after = router_counters("h1");
    let get = |m: &std::collections::HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    assert!(
        get(&mid, "leases") > get(&before, "leases"),
        "c1's pooled sockets got no leased ports: {mid:?}"
    );
    assert!(
        get(&after, "lease_changes") > get(&mid, "lease_changes"),
        "no leased port changed owner from c1 to c3 (the test did not test what it says): {after:?}"
    );
}

#[test]
fn nonblocking_connect_never_waits_for_the_network() {
    let _g = lab();
    let _s = serve("c2", true, 7170, &["--accept", "epoll"]);
    client("c1", true, C2, 7170, &[]);
    // With the underlay cut, no handshake can complete: a connect() that waited for the network
    // would hang or return connected, and the event loop's timer would stall.
    let cut = UnderlayCut::new();
    let tp = testprog();
    let mut storm = spawn(
        "c1",
        true,
        &["timeout", "60", &tp, "setup-storm", C2, "7170", "100"],
    );
    assert_eq!(
        storm.first_line.trim(),
        "ISSUED 100",
        "connects did not all return EINPROGRESS at once"
    );
    drop(cut);
    // Back online, the kernel's SYN retransmissions complete every connection.
    assert!(
        storm.wait_success(),
        "the connections did not complete once the network was back"
    );
}

#[test]
fn router_stop_and_restart() {
    let _g = lab();
    let _s = serve("c2", true, 7180, &["--accept", "epoll"]);
    // A long-lived Slim connection, driven step by step through a fifo-less handshake: the
    // python client waits for a file before its second exchange.
    let flag = "/tmp/slim-test-router-restart.go";
    let _ = std::fs::remove_file(flag);
    let script = format!(
        r#"
import socket, os, time, sys
c = socket.create_connection(("{C2}", 7180))
f = c.makefile("rb")
hello = f.readline()
def echo(n):
    data = os.urandom(n)
    c.sendall(data)
    got = b""
    while len(got) < n:
        got += f.read1(n - len(got))
    assert got == data, "echo mismatch"
echo(100000)
print("PHASE1", c.getsockname()[0], flush=True)
while not os.path.exists("{flag}"):
    time.sleep(0.02)
echo(100000)
print("PHASE2 ok", flush=True)
"#
    );
    let long = spawn("c1", true, &["timeout", "60", "python3", "-c", &script]);
    assert!(
        long.first_line.starts_with("PHASE1 10.32.0.1"),
        "{}",
        long.first_line
    );
    lab_cmd(&["router", "h1", "stop"]);
    // New connections still work, over the overlay.
    let before = bytes("h1", "slim-vx");
    client("c1", true, C2, 7180, &["--conns", "2", "--bytes", "200000"]);
    assert!(
        bytes("h1", "slim-vx") - before > 400_000,
        "with the router stopped the overlay must carry it"
    );
    // The existing Slim connection keeps flowing.
    std::fs::write(flag, b"go").unwrap();
    let mut long = long;
    let status = long.wait_success();
    assert!(
        status,
        "the existing connection broke when the router stopped"
    );
    let _ = std::fs::remove_file(flag);
    // Router back: new connections use Slim again (the server registered its listener with the
    // h2 router, which stayed up; h1's router relearns it from its peer).
    lab_cmd(&["router", "h1", "start"]);
    assert!(
        back_to_slim("7180"),
        "after the router restarted, connections did not go back to Slim"
    );
    // The server's router restarts too: it forgot the listener, peers fall back to the overlay;
    // the server's library notices the new router (on its next overlay accept) and registers
    // its listener again, so connections return to Slim without restarting the server.
    lab_cmd(&["router", "h2", "restart"]);
    assert!(
        back_to_slim("7180"),
        "after the server's router restarted, its listener was not registered again"
    );
}

#[test]
fn udp_loopback_and_unix_sockets_are_untouched() {
    let _g = lab();
    let script = r#"
import socket, os, threading
# UDP across the overlay (a plain server in c2 is not needed: send to ourselves over eth0).
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.32.0.1", 0))
v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); v.sendto(b"udp", u.getsockname())
assert u.recvfrom(10)[0] == b"udp"
# TCP over loopback, and to our own overlay address bound to loopback-only listener.
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.create_connection(l.getsockname()); s, a = l.accept()
assert c.getsockname()[0] == "127.0.0.1" and s.getpeername() == c.getsockname()
c.sendall(b"lo"); assert s.recv(2) == b"lo"
# Unix stream pair.
x, y = socket.socketpair(); x.sendall(b"ux"); assert y.recv(2) == b"ux"
print("OK untouched")
"#;
    let before = lab_cmd(&["exec", "h1", "--", "cat", "/run/slim-lab/h1.log"])
        .lines()
        .count();
    let out = ok("c1", true, &["python3", "-c", script]);
    assert!(out.contains("OK untouched"), "{out}");
    let log = lab_cmd(&["exec", "h1", "--", "cat", "/run/slim-lab/h1.log"]);
    let new: Vec<&str> = log
        .lines()
        .skip(before)
        .filter(|l| l.contains("listener registered"))
        .collect();
    assert!(
        new.is_empty(),
        "a loopback listener was registered with the router: {new:?}"
    );
}

#[test]
fn router_answers_garbage_and_refuses_other_versions() {
    let _g = lab();
    let script = r#"
import socket, struct
def ask(payload):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect("/run/slim-lab/h1.sock")
    s.send(payload)
    try:
        r = s.recv(4096)
    except ConnectionResetError:
        r = b""
    s.close()
    return r
# Not Slim at all: an error reply (or a closed connection), never a crash.
r = ask(b"GET / HTTP/1.1\r\n\r\n")
assert r == b"" or r[:4] == struct.pack("<I", 0x534C494D), r
# A well-formed Hello of protocol version 99: refused with a message naming the versions.
r = ask(struct.pack("<IHHHI", 0x534C494D, 99, 1, 99, 1))
assert b"protocol" in r and b"99" in r, r
# Truncated and oversized frames.
ask(struct.pack("<IHH", 0x534C494D, 1, 2))
ask(b"\x00" * 65536)
print("OK router-robust")
"#;
    let out = ok("c1", false, &["python3", "-c", script]);
    assert!(out.contains("OK router-robust"), "{out}");
    // And the router still serves Slim connections.
    let _s = serve("c2", true, 7190, &[]);
    client("c1", true, C2, 7190, &["--conns", "2"]);
}

#[test]
fn router_configuration_errors_name_the_problem() {
    let _g = lab();
    let router = bin("slim-router").display().to_string();
    let cases: [(&[&str], &str); 6] = [
        (
            &["--host-addr", "192.168.77.1", "--prefix", "10.32.0.0/33"],
            "10.32.0.0/33",
        ),
        // The lab's ephemeral range is 10000-39999.
        (
            &[
                "--host-addr",
                "192.168.77.1",
                "--socket",
                "/run/slim-lab/test-z.sock",
                "--lease-ports",
                "30000-45000",
            ],
            "overlaps the ephemeral port range 10000-39999",
        ),
        (
            &["--host-addr", "192.168.77.1", "--lease-ports", "61000"],
            "is not a port range such as 61000-65535",
        ),
        (
            &[
                "--host-addr",
                "192.168.77.9",
                "--socket",
                "/run/slim-lab/test-x.sock",
            ],
            "not an address of this host",
        ),
        // The lab's own router serves this path.
        (
            &[
                "--host-addr",
                "192.168.77.1",
                "--socket",
                "/run/slim-lab/h1.sock",
                "--insecure-peer-channel",
            ],
            "busy",
        ),
        (
            &[
                "--host-addr",
                "10.32.0.5",
                "--socket",
                "/run/slim-lab/test-y.sock",
            ],
            "not an address of this host",
        ),
    ];
    for (args, expect) in cases {
        let mut full = vec![router.as_str()];
        full.extend_from_slice(args);
        let o = run("h1", false, &full);
        assert!(
            !o.status.success(),
            "slim-router {args:?} should refuse to start"
        );
        let t = text(&o);
        assert!(
            t.contains(expect),
            "slim-router {args:?}: message should mention {expect:?}:\n{t}"
        );
    }
}

#[test]
fn original_vnet_prefix_variable_is_honoured() {
    let _g = lab();
    let _s = serve("c2", true, 7200, &[]);
    let vx = client_with_env(
        &[("VNET_PREFIX", "10.32.0.0/12")],
        &[C2, "7200", "--bytes", "1000000"],
    );
    assert!(vx < MB / 4, "VNET_PREFIX did not enable Slim");
}

#[test]
fn library_refuses_a_router_of_another_version_and_uses_the_overlay() {
    let _g = lab();
    let _s = serve("c2", false, 7210, &[]);
    // A stand-in "router" that answers every Hello with protocol version 99's refusal.
    let sock = "/run/slim-lab/other-version.sock";
    let fake = format!(
        r#"
import socket, struct, os
p = "{sock}"
if os.path.exists(p): os.unlink(p)
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.bind(p); s.listen(8)
print("READY", flush=True)
while True:
    c, _ = s.accept()
    c.recv(4096)
    msg = b"slim-router speaks protocol 99 but libslim_preload.so speaks 1; install matching versions"
    c.send(struct.pack("<IHHiH", 0x534C494D, 99, 107, 71, len(msg)) + msg)
    c.close()
"#
    );
    let _router = spawn("h1", false, &["python3", "-c", &fake]);
    let lib = bin("libslim_preload.so").display().to_string();
    let o = run_env(
        "c1",
        false,
        &[
            ("LD_PRELOAD", lib.as_str()),
            ("SLIM_ROUTER_SOCKET", sock),
            ("SLIM_PREFIXES", "10.32.0.0/12"),
        ],
        &[&testprog(), "client", C2, "7210", "--conns", "2"],
    );
    let t = text(&o);
    assert!(
        o.status.success(),
        "the program must still work over the overlay:\n{t}"
    );
    assert!(
        t.contains("router refused this library") && t.contains("protocol 99"),
        "no clear message:\n{t}"
    );
}

/// Control for the secure-mode attack suite (vm-tests/secure_lab.sh runs it against routers with
/// --secure, where every check must pass): without secure mode the same suite, run as nobody in a
/// container, must find the host sockets unrestricted, so the suite can fail.
#[test]
fn attack_suite_finds_unrestricted_sockets_without_secure_mode() {
    let _g = lab();
    let _s = serve("c2", true, 7420, &[]);
    let o = run(
        "c1",
        true,
        &[
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            &testprog(),
            "attack",
            "10.32.0.2:7420",
            "7421",
            "10.32.0.3",
            "192.168.77.1",
            "192.168.77.2",
        ],
    );
    let t = text(&o);
    assert!(
        !o.status.success(),
        "the attack suite passed without secure mode:\n{t}"
    );
    for expect in [
        "FAIL - connection: getsockname: reveals host address 192.168.77.1",
        "FAIL - connection: bind refused",
        "FAIL - connection: setsockopt SO_BINDTODEVICE lo refused: success",
        "FAIL - dup: getpeername: reveals host address 192.168.77.2",
        "FAIL - router: says it runs in secure mode",
        "FAIL - router: connect as another container (10.32.0.3) refused",
    ] {
        assert!(t.contains(expect), "expected {expect:?} in:\n{t}");
    }
}

/// Once a process's connections go the fast way, socket() may hand it a host socket: it must
/// still look and behave like a fresh socket of the container (flags, getsockname, options,
/// bind to the overlay address, listen, loopback, dup, a refused connect, exec).
#[test]
fn fresh_sockets_stay_fresh_sockets_of_the_container() {
    let _g = lab();
    let _s = serve("c2", true, 7150, &[]);
    let tp = testprog();
    let out = ok(
        "c1",
        true,
        &[&tp, "fresh-sockets", C2, "7150", "--dead-port", "7151"],
    );
    assert!(out.contains("OK fresh-inherited"), "{out}");
    assert!(out.contains("OK fresh-sockets"), "{out}");
}

/// An engine that appends the library to an image's own LD_PRELOAD can put the C library ahead of
/// it. The C library's functions then win over the hooks: the program must still run (it used to
/// abort in the library's constructor), on the ordinary path, and the library says why once.
#[test]
fn c_library_preloaded_before_the_library_runs_without_slim_and_says_so() {
    let lib = bin("libslim_preload.so").display().to_string();
    let libc = "/lib/x86_64-linux-gnu/libc.so.6";
    let prog = "import socket; s = socket.socket(); s.close(); print('ran')";
    let run = |preload: String| {
        std::process::Command::new("/usr/bin/python3")
            .args(["-c", prog])
            .env("LD_PRELOAD", preload)
            .env_remove("SLIM_LOG")
            .output()
            .expect("run python3")
    };
    let shadowed = run(format!("{libc}:{lib}"));
    let err = String::from_utf8_lossy(&shadowed.stderr);
    assert!(
        shadowed.status.success(),
        "status {:?}: {err}",
        shadowed.status
    );
    assert_eq!(String::from_utf8_lossy(&shadowed.stdout), "ran\n");
    assert_eq!(err.matches("runs without Slim").count(), 1, "stderr: {err}");
    let first = run(lib.clone());
    assert!(first.status.success());
    assert!(
        first.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&first.stderr)
    );
}
