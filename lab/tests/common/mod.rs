//! Shared harness for the lab's integration tests: one lab for all tests of a binary, tests run
//! one at a time, background programs killed (whole process group) even when a test fails.

#![allow(dead_code)]

pub mod podman;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

pub fn lab_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_slim-lab"))
}

/// Another binary of the workspace, next to slim-lab (make test builds them all first).
pub fn bin(name: &str) -> PathBuf {
    let p = lab_bin().parent().expect("target dir").join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`make build`)",
        p.display()
    );
    p
}

pub fn testprog() -> String {
    bin("slim-testprog").display().to_string()
}

/// Serializes tests without touching the lab (for tests that bring it up their own way).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serializes tests and makes sure the lab is up (idempotent).
pub fn lab() -> MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // SLIM_LAB_SECURE=1 (set by vm-tests/guest.sh, inside the test VM with slim_kern loaded):
    // the same tests against routers in secure mode.
    let mut up = Command::new(lab_bin());
    up.arg("up");
    if std::env::var_os("SLIM_LAB_SECURE").is_some_and(|v| v == "1") {
        up.arg("--secure");
    }
    let out = up.output().expect("run slim-lab up");
    assert!(
        out.status.success(),
        "slim-lab up failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    g
}

fn exec_cmd(node: &str, slim: bool, args: &[&str]) -> Command {
    let mut c = Command::new(lab_bin());
    c.arg("exec").arg(node);
    if slim {
        c.arg("--slim");
    }
    c.arg("--").arg("timeout").arg("120").args(args);
    c
}

/// Runs a program in a node and returns its output (it gets 120 s at most).
pub fn run(node: &str, slim: bool, args: &[&str]) -> Output {
    exec_cmd(node, slim, args)
        .output()
        .expect("spawn slim-lab exec")
}

pub fn run_env(node: &str, slim: bool, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = exec_cmd(node, slim, args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn slim-lab exec")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs and asserts success; returns stdout.
pub fn ok(node: &str, slim: bool, args: &[&str]) -> String {
    let o = run(node, slim, args);
    assert!(
        o.status.success(),
        "`{}` in {node} (slim={slim}) failed:\n{}",
        args.join(" "),
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A program running in the background; killed with its whole process group when dropped.
pub struct Bg {
    child: Child,
    pub first_line: String,
}

impl Bg {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the program to exit by itself; true if it succeeded.
    pub fn wait_success(&mut self) -> bool {
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created for this child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Starts a server and waits until it prints its first line (e.g. "LISTENING ...").
pub fn spawn(node: &str, slim: bool, args: &[&str]) -> Bg {
    let mut c = Command::new(lab_bin());
    c.arg("exec").arg(node);
    if slim {
        c.arg("--slim");
    }
    c.arg("--")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let mut child = c.spawn().expect("spawn server");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut r = BufReader::new(stdout);
    let mut first_line = String::new();
    let _ = r.read_line(&mut first_line);
    // Keep draining so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while r.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    assert!(
        !first_line.is_empty(),
        "server `{}` in {node} exited before it was ready",
        args.join(" ")
    );
    Bg { child, first_line }
}

pub fn lab_cmd(args: &[&str]) -> String {
    let o = Command::new(lab_bin())
        .args(args)
        .output()
        .expect("run slim-lab");
    assert!(
        o.status.success(),
        "slim-lab {} failed:\n{}",
        args.join(" "),
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// rx+tx bytes of a device in a node's namespace.
pub fn bytes(node: &str, dev: &str) -> u64 {
    let out = lab_cmd(&["counters", node, dev]);
    out.split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok())
        .sum()
}

pub fn router_pid(host: &str) -> u32 {
    let p = std::fs::read_to_string(format!("/run/slim-lab/{host}.pid")).expect("router pid file");
    p.trim().parse().expect("router pid")
}

pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Descriptors of `pid` that are TCP sockets (any state), found through the inode numbers in
/// its network namespace's /proc/net/tcp{,6}.
pub fn tcp_fd_count(pid: u32) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for f in ["tcp", "tcp6"] {
        let t = std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default();
        for line in t.lines().skip(1) {
            if let Some(ino) = line.split_whitespace().nth(9) {
                inodes.insert(format!("socket:[{ino}]"));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| inodes.contains(&*l.to_string_lossy()))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Polls `f` until it returns true or `limit` passes; returns the last value. Used where the
/// system settles asynchronously (a process closing its descriptors on exit), never as a
/// performance check.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// All pids of a process group.
pub fn group_pids(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pgrp is the 5th field, after "pid (comm) state ppid".
        let Some(rest) = stat.rsplit_once(')').map(|x| x.1) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

/// The counters a host's router logs on SIGUSR1, as `name=value` pairs of its latest such line.
pub fn router_counters(host: &str) -> std::collections::HashMap<String, u64> {
    let log = format!("/run/slim-lab/{host}.log");
    let lines = |s: &str| s.lines().filter(|l| l.contains("counters;")).count();
    let before = lines(&std::fs::read_to_string(&log).unwrap_or_default());
    // SAFETY: kill(2) on the router's pid.
    unsafe { libc::kill(router_pid(host) as i32, libc::SIGUSR1) };
    let mut text = String::new();
    eventually(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        lines(&text) > before
    });
    let line = text
        .lines()
        .rfind(|l| l.contains("counters;"))
        .unwrap_or("");
    // Strip the terminal colours tracing may add.
    let plain: String = line
        .split('\x1b')
        .map(|p| p.split_once('m').map_or(p, |(_, rest)| rest))
        .collect();
    plain
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// A server in `node` (with Slim) on `port` of every address that writes `greeting` and a newline
/// to each connection and closes it; started once it listens.
pub fn spawn_greeter(node: &str, port: u16, greeting: &str) -> Bg {
    let script = format!(
        r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {port}))
s.listen(64)
print("LISTENING", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"{greeting}\n")
    c.close()
"#
    );
    spawn(node, true, &["python3", "-c", &script])
}
