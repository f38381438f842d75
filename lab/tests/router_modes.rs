//! `slim-lab routers plain|secure`: both routers restarted in one mode, the network, the
//! containers and their running programs kept; a mode that cannot be had leaves the lab as it
//! was. Without the slim_kern module (any machine) secure mode must be refused by name; with it
//! (the QEMU guest of `make vm-test`, vm-tests/secure_lab.sh) the switch is made both ways.
//!
//! A running Slim server registers its listener again with a restarted router. A secure router
//! takes over any host listener of its containers (a plain router's is restricted then, a former
//! secure router's is pointed at the new router's tables: SLIM_RESTRICT_ADOPT); a plain router
//! takes back only host listeners that were never restricted (a listener a secure router took
//! over stays on the overlay under plain routers until its program listens again). slim-bench's
//! `slim_secure` mode relies on the first: its servers start under plain routers.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const C2: &str = "10.32.0.2";
const MB: u64 = 1 << 20;
const PORT: &str = "7190";
const OTHER_PORT: &str = "7191";

fn recorded_mode() -> String {
    std::fs::read_to_string("/run/slim-lab/mode")
        .expect("the lab's mode file")
        .trim()
        .to_string()
}

fn router_runs_secure(host: &str) -> bool {
    let line = std::fs::read(format!("/proc/{}/cmdline", router_pid(host))).unwrap_or_default();
    line.split(|b| *b == 0).any(|arg| arg == b"--secure")
}

/// Whether, within 20 s, a Slim client's megabyte to the server on c2 at `port` stops crossing
/// the VXLAN device (a running server registers its listener again with a restarted router on
/// its next accept; until then connections take the overlay).
fn through_slim(port: &str) -> bool {
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

fn serve(port: &str) -> Bg {
    let tp = testprog();
    let server = spawn("c2", true, &[tp.as_str(), "serve", port]);
    assert!(
        server.first_line.starts_with("LISTENING"),
        "server said {:?}",
        server.first_line
    );
    server
}

/// Switches and checks the recorded mode, both routers' command lines and the lab's status.
fn switch_to(mode: &str) {
    let out = lab_cmd(&["routers", mode]);
    assert!(
        out.contains(&format!("started in {mode} mode")) || out.contains("nothing to do"),
        "{out}"
    );
    assert_eq!(recorded_mode(), mode);
    for h in ["h1", "h2"] {
        assert_eq!(router_runs_secure(h), mode == "secure", "router of {h}");
    }
    lab_cmd(&["status"]);
}

#[test]
fn routers_switch_mode_and_keep_the_lab_and_its_programs() {
    let _g = lab();
    let start = recorded_mode();
    let server = serve(PORT);
    assert!(through_slim(PORT), "no Slim connection before any switch");

    // The recorded mode with both routers serving: nothing to do, the same routers.
    let pids = (router_pid("h1"), router_pid("h2"));
    let out = lab_cmd(&["routers", &start]);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(pids, (router_pid("h1"), router_pid("h2")));

    // One router gone: the same command starts both again, in that mode.
    lab_cmd(&["router", "h1", "stop"]);
    let out = lab_cmd(&["routers", &start]);
    assert!(out.contains(&format!("started in {start} mode")), "{out}");
    assert_ne!(
        router_pid("h2"),
        pids.1,
        "the router of h2 was not restarted"
    );
    switch_to(&start);
    assert!(
        through_slim(PORT),
        "after the routers restarted, the running server was not reached through Slim"
    );

    if Path::new("/dev/slim").exists() {
        // The module is loaded: both ways, and back to where the lab was; a server started in
        // the other mode is reached through Slim, and the first one again once back.
        let other = if start == "secure" { "plain" } else { "secure" };
        switch_to(other);
        let other_server = serve(OTHER_PORT);
        assert!(
            through_slim(OTHER_PORT),
            "a server started with the routers in {other} mode was not reached through Slim"
        );
        switch_to(&start);
        assert!(
            through_slim(PORT),
            "back in {start} mode, the server started in it was not reached through Slim"
        );
        if start == "secure" {
            // A secure router takes over the host listener a plain router made for a running
            // server (restricts it: SLIM_RESTRICT_ADOPT), instead of leaving it on the overlay.
            assert!(
                through_slim(OTHER_PORT),
                "a server started with the routers in plain mode was not reached through Slim \
                 once they run in secure mode"
            );
        }
        drop(other_server);
    } else {
        // No module: secure mode is refused by name and nothing changes.
        assert_eq!(start, "plain", "a secure lab without /dev/slim");
        let pids = (router_pid("h1"), router_pid("h2"));
        let o = Command::new(lab_bin())
            .args(["routers", "secure"])
            .output()
            .expect("run slim-lab routers secure");
        let t = text(&o);
        assert!(!o.status.success(), "secure mode without the module: {t}");
        assert!(
            t.contains("/dev/slim does not exist")
                && t.contains("slim_kern")
                && t.contains("left running in plain mode"),
            "{t}"
        );
        assert_eq!(recorded_mode(), "plain");
        assert_eq!(pids, (router_pid("h1"), router_pid("h2")));
        lab_cmd(&["status"]);
        assert!(
            through_slim(PORT),
            "the lab stopped working after a refused switch"
        );
    }
    drop(server);
}
