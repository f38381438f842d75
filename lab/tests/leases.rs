//! Port leases across the lab: a leased host port is never handed out again while a program
//! holds its socket, and comes back to the range once that socket is closed.

mod common;

use common::*;
use std::collections::HashSet;

const C2: &str = "10.32.0.2";
/// The lab routers' lease range: the ports above the lab's ephemeral range (lab/src/network.rs
/// sets net.ipv4.ip_local_port_range to 10000-39999; the routers lease the rest by default).
const LEASE_RANGE: std::ops::RangeInclusive<u16> = 40000..=65535;

/// The connections of h1 from host port `port`, as (local, peer) endpoints: one entry per
/// connection whatever its state (established, closing, TIME_WAIT).
fn connections_from(port: u16) -> HashSet<String> {
    let filter = format!("sport = :{port}");
    ok("h1", false, &["ss", "-Htan", &filter])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5).then(|| format!("{} {}", f[3], f[4]))
        })
        .collect()
}

/// Leases h1's router has made so far.
fn leases() -> u64 {
    router_counters("h1").get("leases").copied().unwrap_or(0)
}

/// A one-second connrate burst from c1 to `port` on c2.
fn burst(tp: &str, port: &str) {
    let out = ok("c1", true, &[tp, "connrate", C2, port, "--secs", "1"]);
    assert!(out.contains("errors=0"), "connrate: {out}");
}

/// Bursts to `port` until h1's router has leased more ports than the range holds (at most
/// ten); whether it did.
fn cycle_the_range(tp: &str, port: &str) -> bool {
    let span = (*LEASE_RANGE.end() - *LEASE_RANGE.start()) as u64 + 1;
    let start = leases();
    (0..10).any(|_| {
        burst(tp, port);
        leases() - start > span
    })
}

/// c1 holds one connection from a leased port P while it sets up more connections than the
/// lease range has ports: none of them comes from P. Once the held connection is closed, P is
/// leased again and a later connection comes from it. Each phase connects to a server of its
/// own, so a connection from P of one phase cannot be taken for one of another.
#[test]
fn a_leased_port_comes_back_after_its_connection_closes() {
    let _g = lab();
    let tp = testprog();
    let _warm = spawn("c2", true, &[&tp, "rr-serve", "7198"]);
    let _during = spawn("c2", true, &[&tp, "rr-serve", "7196"]);
    let _after = spawn("c2", true, &[&tp, "rr-serve", "7199"]);
    let _s = spawn("c2", true, &[&tp, "serve", "7197"]);
    // Warm: c1 owns ports of the range and its router keeps a stash of them.
    cycle_the_range(&tp, "7198");
    let flag = "/tmp/slim-test-lease-back.go";
    let _ = std::fs::remove_file(flag);
    // The held connection: the first of c1's connections from a leased port.
    let script = format!(
        r#"
import socket, os, time
held = None
for _ in range(200):
    c = socket.create_connection(("{C2}", 7197))
    if {lo} <= c.getsockname()[1] <= {hi}:
        held = c
        break
    c.close()
print("PORT", held.getsockname()[1] if held else 0, flush=True)
while not os.path.exists("{flag}"):
    time.sleep(0.02)
held.close()
"#,
        lo = LEASE_RANGE.start(),
        hi = LEASE_RANGE.end(),
    );
    let mut held = spawn("c1", true, &["python3", "-c", &script]);
    let port: u16 = held
        .first_line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    assert!(
        LEASE_RANGE.contains(&port),
        "no connection of c1 came from a leased port: {:?}",
        held.first_line
    );
    let open = connections_from(port);
    // The range goes round while P is held: no new connection from P.
    assert!(
        cycle_the_range(&tp, "7196"),
        "h1's router leased fewer ports than the range holds (the test did not test what it says)"
    );
    let during = connections_from(port);
    let new: Vec<&String> = during.difference(&open).collect();
    assert!(
        new.is_empty(),
        "port {port} was leased again while its connection was open: {new:?}"
    );
    // Closed: P comes back, and a later connection comes from it.
    std::fs::write(flag, b"").unwrap();
    assert!(held.wait_success(), "the held connection's program failed");
    let _ = std::fs::remove_file(flag);
    let closed = connections_from(port);
    let back = (0..10).any(|_| {
        burst(&tp, "7199");
        !connections_from(port).is_subset(&closed)
    });
    assert!(
        back,
        "port {port} was never leased again after its connection closed: {:?}",
        connections_from(port)
    );
}
