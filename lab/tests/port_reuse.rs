//! Port reuse is safe (issue 15, point 5): once a Slim listener closes, a connection to its
//! overlay endpoint never reaches another program that binds the same host port afterwards. It
//! is refused, or goes to the overlay (refused there too: nothing listens on it).

mod common;

use common::*;
use std::collections::HashSet;
use std::time::Duration;

const C2: &str = "10.32.0.2";
const H2: &str = "192.168.77.2";
const PORT: &str = "7310";

/// h2's listening host ports on its host address.
fn host_listeners() -> HashSet<u16> {
    ok("h2", false, &["ss", "-Htln"])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .filter_map(|a| {
            let (ip, port) = a.rsplit_once(':')?;
            (ip.trim_matches(['[', ']']).ends_with(H2))
                .then(|| port.parse().ok())
                .flatten()
        })
        .collect()
}

/// The server in c2 (with Slim) is killed; right away a program in h2 (without Slim, as any
/// host program) binds its host listener's port, as soon as the kernel lets it, and accepts
/// there. Then c1 (with Slim, a new process that has not seen the listener go) connects to the
/// old overlay endpoint again and again for 2 s. No connection reaches the squatter, and the
/// squatter does get the port in the end (the hold does not leak).
#[test]
fn a_closed_listeners_port_never_reaches_the_next_program_on_it() {
    let _g = lab();
    let before = host_listeners();
    let server = spawn_greeter("c2", PORT.parse().unwrap(), "OLD");
    assert!(
        server.first_line.starts_with("LISTENING"),
        "{}",
        server.first_line
    );
    let mut new: Vec<u16> = host_listeners().difference(&before).copied().collect();
    assert_eq!(
        new.len(),
        1,
        "expected one new host listener in h2 for the Slim server, found {new:?}"
    );
    let port = new.pop().unwrap();
    // The connection path works before the kill (and c1's router knows the route).
    let first = ok("c1", true, &["python3", "-c", &format!(
        "import socket; print(socket.create_connection((\"{C2}\", {PORT}), timeout=2).recv(16).decode().strip())"
    )]);
    assert_eq!(first.trim(), "OLD");

    let (bound_flag, done_flag) = (
        "/tmp/slim-test-port-reuse.bound",
        "/tmp/slim-test-port-reuse.done",
    );
    for f in [bound_flag, done_flag] {
        let _ = std::fs::remove_file(f);
    }
    drop(server);
    let squatter_script = format!(
        r#"
import os, socket, time
t0 = time.monotonic()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
while True:
    try:
        s.bind(("{H2}", {port}))
        break
    except OSError:
        if time.monotonic() - t0 > 20:
            print("NEVER BOUND", flush=True)
            open("{bound_flag}", "w").close()
            raise SystemExit(0)
        time.sleep(0.005)
s.listen(64)
print(f"BOUND after {{time.monotonic() - t0:.2f}} s", flush=True)
open("{bound_flag}", "w").close()
s.settimeout(0.1)
got = 0
while not os.path.exists("{done_flag}"):
    try:
        c, peer = s.accept()
    except socket.timeout:
        continue
    got += 1
    print("ACCEPTED", peer, flush=True)
    c.sendall(b"NEW\n")
    c.close()
print(f"accepted {{got}}", flush=True)
"#
    );
    let squatter =
        std::thread::spawn(move || ok("h2", false, &["python3", "-c", &squatter_script]));
    assert!(
        eventually(Duration::from_secs(30), || std::path::Path::new(bound_flag)
            .exists()),
        "the squatter neither bound the port nor gave up"
    );
    let client_script = format!(
        r#"
import socket, time
seen = {{}}
end = time.monotonic() + 2
while time.monotonic() < end:
    try:
        c = socket.create_connection(("{C2}", {PORT}), timeout=1)
        c.settimeout(1)
        data = c.recv(16).decode().strip() or "eof"
        c.close()
    except ConnectionRefusedError:
        data = "refused"
    except OSError as e:
        data = type(e).__name__
    seen[data] = seen.get(data, 0) + 1
    time.sleep(0.002)
print(" ".join(f"{{k}}={{v}}" for k, v in sorted(seen.items())), flush=True)
"#
    );
    let seen = ok("c1", true, &["python3", "-c", &client_script]);
    std::fs::write(done_flag, b"").unwrap();
    let squatter = squatter.join().expect("squatter thread");
    for f in [bound_flag, done_flag] {
        let _ = std::fs::remove_file(f);
    }
    eprintln!("squatter on {H2}:{port}: {squatter}client: {seen}");
    assert!(
        squatter.contains("BOUND after"),
        "the host port {port} never came free after its listener closed (a hold leaked): {squatter}"
    );
    assert!(
        squatter.contains("accepted 0") && !seen.contains("NEW"),
        "a connection to the closed listener's overlay endpoint reached the program that took its \
         host port: squatter: {squatter} client: {seen}"
    );
}
