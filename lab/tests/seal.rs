//! The sealed router <-> router channel (`slim-router --cluster-key`), without the lab: real
//! `slim-router` processes in this network namespace, talking over loopback only (peer ports on
//! 127.0.0.1 and 127.0.0.2), and `slim-testprog peer-attack` playing a container that reached a
//! node's address. Needs the release binaries (`cargo build --release`).
//!
//! `--host-addr` must be a non-loopback address of this host; the routers only bind to it to check
//! it (no container asks them for host sockets here), so no traffic leaves loopback.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SAME_KEY: &str = "start every router with the same --cluster-key";

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!("slim-seal-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A key file of 32 random bytes (or hex when `hex`), with `mode`.
    fn key(&self, name: &str, mode: u32, hex: bool) -> PathBuf {
        let mut k = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut k))
            .unwrap();
        let p = self.path(name);
        if hex {
            let h: String = k.iter().map(|b| format!("{b:02x}")).collect();
            fs::write(&p, format!("{h}\n")).unwrap();
        } else {
            fs::write(&p, k).unwrap();
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A router this test started; killed (by its own pid) when dropped.
struct Router {
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Router {
    fn log(&self) -> String {
        strip_ansi(&fs::read_to_string(&self.log).unwrap_or_default())
    }

    fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) {
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if f(&self.log()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "router {}: {what} did not happen; its log:\n{}",
            self.name,
            self.log()
        );
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A non-loopback address of this host, for `--host-addr` (checked by binding, never used).
fn host_addr() -> String {
    let addrs = nix::ifaddrs::getifaddrs().expect("getifaddrs");
    let mut v6 = None;
    for a in addrs {
        let Some(sa) = a.address else { continue };
        if let Some(v4) = sa.as_sockaddr_in() {
            let ip = v4.ip();
            if !ip.is_loopback() && !ip.is_link_local() {
                return ip.to_string();
            }
        } else if let Some(s6) = sa.as_sockaddr_in6() {
            let ip = s6.ip();
            if !ip.is_loopback() && !ip.is_unicast_link_local() && v6.is_none() {
                v6 = Some(ip.to_string());
            }
        }
    }
    v6.expect("this test needs one non-loopback address on this host for --host-addr")
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &Dir, name: &'static str, args: &[&str]) -> Router {
    let log = dir.path(&format!("{name}.log"));
    let sock = dir.path(&format!("{name}.sock"));
    let child = Command::new(common::bin("slim-router"))
        .arg("--host-addr")
        .arg(host_addr())
        .arg("--socket")
        .arg(&sock)
        .arg("--log-level")
        .arg("debug")
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start slim-router");
    Router { child, log, name }
}

fn attack(to: &str, key: &Path, mode: &str) -> (bool, String) {
    let out = Command::new(common::bin("slim-testprog"))
        .args(["peer-attack", "--to", to, "--key"])
        .arg(key)
        .args(["--mode", mode])
        .output()
        .expect("run slim-testprog peer-attack");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn sealed_router_channel() {
    let dir = Dir::new();
    let k1 = dir.key("k1", 0o600, false);
    let k2 = dir.key("k2", 0o600, true);
    let pa = free_port("127.0.0.1");
    let pb = free_port("127.0.0.2");
    let a_listen = format!("127.0.0.1:{pa}");
    let b_listen = format!("127.0.0.2:{pb}");
    let k1s = k1.to_str().unwrap();

    // Two routers with the same key connect, each to the other.
    let b = start(
        &dir,
        "b",
        &["--peer-listen", &b_listen, "--cluster-key", k1s],
    );
    let a = start(
        &dir,
        "a",
        &[
            "--peer-listen",
            &a_listen,
            "--cluster-key",
            k1s,
            "--peer",
            &b_listen,
        ],
    );
    for r in [&a, &b] {
        r.wait_for("sealed start", |l| {
            l.contains("peer frames are sealed with the cluster key")
        });
        r.wait_for("peer router connected", |l| {
            l.contains("peer router connected") && l.contains("sealed=true")
        });
    }

    // A valid sealed frame is accepted: a listener the router acknowledges and records.
    let (ok, out) = attack(&b_listen, &k1, "valid");
    assert!(
        ok && out.contains("ACCEPTED"),
        "valid sealed frames refused:\n{out}\n{}",
        b.log()
    );
    b.wait_for("the valid listener recorded", |l| {
        l.contains("peer listener added") && l.contains("10.32.99.1:8080")
    });

    // Each attack is refused (the connection dropped) and counted by kind.
    for (mode, kind) in [
        ("tamper", "tampered"),
        ("replay", "replayed"),
        ("expired", "expired"),
        ("foreign", "foreign"),
        ("unsealed", "unsealed"),
        ("malformed", "malformed"),
    ] {
        let (ok, out) = attack(&b_listen, &k1, mode);
        assert!(
            ok && out.contains("REFUSED"),
            "{mode} not refused:\n{out}\n{}",
            b.log()
        );
        b.wait_for(&format!("a refusal of kind {kind}"), |l| {
            l.lines()
                .any(|x| x.contains("peer frame refused") && x.contains(&format!("kind={kind}")))
        });
    }
    b.signal(libc::SIGUSR1);
    b.wait_for("the counters on SIGUSR1", |l| {
        l.contains(
            "counters; sealed peer frames: opened ",
        ) && l.contains(
            "foreign 1, tampered 1, expired 1, replayed 1, malformed 1, overloaded 0, unsealed 1",
        )
    });
    // The real peer connection was not disturbed.
    assert!(
        !a.log().contains("peer router disconnected"),
        "a lost its peer:\n{}",
        a.log()
    );

    // A router with another key is refused, and both sides say so and name the fix.
    let before = b.count("kind=foreign");
    let c = start(
        &dir,
        "c",
        &[
            "--peer-listen",
            &format!("127.0.0.1:{}", free_port("127.0.0.1")),
            "--cluster-key",
            k2.to_str().unwrap(),
            "--peer",
            &b_listen,
        ],
    );
    c.wait_for("the refusal of b's Hello", |l| {
        l.contains("kind=foreign") && l.contains(SAME_KEY)
    });
    b.wait_for("the refusal of c's Hello", |l| {
        l.matches("kind=foreign").count() > before
    });
    assert!(!c.log().contains("peer router connected"), "{}", c.log());
    drop(c);

    // A router that opted out of sealing: both sides say so and name the fix.
    let before = b.count("kind=unsealed");
    let d = start(
        &dir,
        "d",
        &[
            "--peer-listen",
            &format!("127.0.0.1:{}", free_port("127.0.0.1")),
            "--peer",
            &b_listen,
            "--insecure-peer-channel",
        ],
    );
    d.wait_for("the refusal of b's sealed Hello", |l| {
        l.contains("seals its frames") && l.contains(SAME_KEY)
    });
    b.wait_for("the refusal of d's plain Hello", |l| {
        l.matches("kind=unsealed").count() > before && l.contains(SAME_KEY)
    });
    assert!(!d.log().contains("peer router connected"), "{}", d.log());
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("peer frames are NOT sealed")),
        "the opt-out is not logged at warn:\n{}",
        d.log()
    );
    drop(d);

    // Without a key and without the opt-out the router does not start, and says how to make a
    // key or opt out.
    let mut n = start(
        &dir,
        "n",
        &[
            "--peer-listen",
            &format!("127.0.0.1:{}", free_port("127.0.0.1")),
        ],
    );
    let status = n.child.wait().unwrap();
    let log = n.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("head -c 32 /dev/urandom") && log.contains("--insecure-peer-channel"),
        "no clear message without a key:\n{log}"
    );

    // Key files readable by others, or of the wrong size, stop the router at startup.
    let open_key = dir.key("k644", 0o644, false);
    let bad_size = dir.path("short");
    fs::write(&bad_size, [7u8; 16]).unwrap();
    fs::set_permissions(&bad_size, fs::Permissions::from_mode(0o600)).unwrap();
    for (file, want) in [(&open_key, "chmod 600"), (&bad_size, "32 random bytes")] {
        let mut e = start(
            &dir,
            "e",
            &[
                "--peer-listen",
                &format!("127.0.0.1:{}", free_port("127.0.0.1")),
                "--cluster-key",
                file.to_str().unwrap(),
            ],
        );
        let until = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = e.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < until,
                "router started with {}",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = e.log();
        assert!(!status.success(), "{log}");
        assert!(
            log.contains(want) && log.contains(file.to_str().unwrap()),
            "no clear message for {}:\n{log}",
            file.display()
        );
    }
    drop(a);
    drop(b);
}
