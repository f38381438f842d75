//! The policy of Slim connections (issue 15, point 4). In secure mode (the QEMU guest runs this
//! with SLIM_LAB_SECURE=1 and the module loaded): a connect the policy denies fails with
//! ECONNREFUSED, is counted, and does not go over the overlay instead; what it allows, and
//! containers it does not select, work as before. In plain mode a router refuses a policy at
//! start, saying why (plain mode cannot enforce one).

mod common;

use common::*;

const C2: &str = "10.32.0.2";
const POLICY: &str = "/run/slim-lab/policy.toml";

fn secure() -> bool {
    std::env::var_os("SLIM_LAB_SECURE").is_some_and(|v| v == "1")
}

/// What a connect from `node` to C2:`port` gets: the server's first line, or the error's name.
fn try_connect(node: &str, port: u16) -> String {
    let script = format!(
        r#"
import socket
try:
    c = socket.create_connection(("{C2}", {port}), timeout=5)
    c.settimeout(5)
    print(c.recv(64).decode().strip() or "eof")
except OSError as e:
    print(type(e).__name__)
"#
    );
    ok(node, true, &["python3", "-c", &script])
        .trim()
        .to_string()
}

/// Restarts the router of h1 (c1's and c3's) so that it reads the policy file, or its absence.
fn restart_h1() {
    lab_cmd(&["router", "h1", "restart"]);
}

#[test]
fn the_policy_denies_what_it_does_not_allow_and_nothing_else() {
    let _g = lab();
    if !secure() {
        // Plain mode: the router refuses to start with a policy, naming the fix.
        std::fs::write(POLICY, "default = \"deny\"\n").unwrap();
        let router = bin("slim-router");
        let o = run(
            "h1",
            false,
            &[
                router.to_str().unwrap(),
                "--check-config",
                "--host-addr",
                "192.168.77.1",
                "--policy-file",
                POLICY,
            ],
        );
        let _ = std::fs::remove_file(POLICY);
        let text = text(&o);
        assert!(
            !o.status.success() && text.contains("secure mode only"),
            "a plain router accepted a policy: {text}"
        );
        return;
    }
    // Two servers in c2: 7320 allowed for c1, 7321 not.
    let serve = |port: u16| spawn_greeter("c2", port, &format!("HELLO {port}"));
    let _a = serve(7320);
    let _b = serve(7321);
    // Without a policy: both reachable from c1.
    assert_eq!(try_connect("c1", 7320), "HELLO 7320");
    assert_eq!(try_connect("c1", 7321), "HELLO 7321");

    std::fs::write(
        POLICY,
        format!(
            "default = \"allow\"\n[[allow]]\nfrom = [\"10.32.0.1/32\"]\nto = [\"{C2}/32:7320\"]\n"
        ),
    )
    .unwrap();
    restart_h1();
    let denied_before = router_counters("h1")
        .get("policy_denied")
        .copied()
        .unwrap_or(0);
    let allowed = try_connect("c1", 7320);
    let denied = try_connect("c1", 7321);
    // c3 (on h1 too) is selected by no rule: the default allows it.
    let other = try_connect("c3", 7321);
    let denied_after = router_counters("h1")
        .get("policy_denied")
        .copied()
        .unwrap_or(0);
    let _ = std::fs::remove_file(POLICY);
    restart_h1();
    assert_eq!(allowed, "HELLO 7320", "an allowed connect failed");
    // ConnectionRefusedError, not HELLO 7321: the library did not take the overlay instead.
    assert_eq!(denied, "ConnectionRefusedError", "a denied connect");
    assert_eq!(other, "HELLO 7321", "a container no rule selects");
    assert!(
        denied_after > denied_before,
        "the denial was not counted: policy_denied {denied_before} -> {denied_after}"
    );
    // Without the policy again: reachable.
    assert_eq!(try_connect("c1", 7321), "HELLO 7321");
}
