//! Helpers for `apps.rs`: one shared lab, programs run in its namespaces with a timeout, background
//! servers killed with their whole process group, and the VXLAN byte counters.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const LAB: &str = env!("CARGO_BIN_EXE_slim-lab");

/// Every program gets at most this long (coreutils `timeout`), so a hang fails the test.
const PROGRAM_TIMEOUT: &str = "120";
/// Background servers are killed by their guard; this only bounds them if the test process dies.
const SERVER_TIMEOUT: &str = "600";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const READY_POLL: Duration = Duration::from_millis(50);

/// The tests share one lab and its ports: one at a time.
static LAB_LOCK: Mutex<()> = Mutex::new(());

/// Takes the lab for one test and makes sure it is up (routers on; plain mode, or secure mode
/// with SLIM_LAB_SECURE=1 as vm-tests/secure_lab.sh sets it inside the test VM). `up` is
/// idempotent and restarts dead routers without touching what runs in the containers.
pub fn lab() -> MutexGuard<'static, ()> {
    let guard = LAB_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let mut up = Command::new(LAB);
    up.arg("up");
    if std::env::var_os("SLIM_LAB_SECURE").is_some_and(|v| v == "1") {
        up.arg("--secure");
    }
    let out = up
        .stdin(Stdio::null())
        .output()
        .expect("cannot run slim-lab up");
    assert!(
        out.status.success(),
        "slim-lab up failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    guard
}

/// A command line to run in a lab node: `timeout SECS slim-lab exec NODE [--slim] -- CMD...`.
fn lab_command(timeout: &str, node: &str, slim: bool, cmd: &[&str]) -> Command {
    let mut command = Command::new("timeout");
    command.args(["-k", "5", timeout, LAB, "exec", node]);
    if slim {
        command.arg("--slim");
    }
    command.arg("--").args(cmd);
    command
}

/// What a finished program did.
pub struct Ran {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from_output(what: String, out: Output) -> Ran {
        Ran {
            what,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with everything the program printed unless it exited 0.
    pub fn ok(self) -> Ran {
        assert!(self.status.success(), "{self}");
        self
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

fn describe(node: &str, slim: bool, cmd: &[&str]) -> String {
    format!(
        "slim-lab exec {node}{} -- {}",
        if slim { " --slim" } else { "" },
        cmd.join(" ")
    )
}

/// Runs a program in `node` (under Slim with `slim`) to completion, stdin from /dev/null.
pub fn run(node: &str, slim: bool, cmd: &[&str]) -> Ran {
    run_with_stdin(node, slim, cmd, None)
}

/// Same as [`run`], with stdin read from a file.
pub fn run_with_stdin(node: &str, slim: bool, cmd: &[&str], stdin: Option<&Path>) -> Ran {
    let what = describe(node, slim, cmd);
    let stdin = match stdin {
        Some(path) => Stdio::from(File::open(path).expect("cannot open the stdin file")),
        None => Stdio::null(),
    };
    let out = lab_command(PROGRAM_TIMEOUT, node, slim, cmd)
        .stdin(stdin)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    Ran::from_output(what, out)
}

/// A background program in a lab node, in its own process group; dropping it kills the group
/// (SIGKILL), so servers go away even when an assertion fails.
pub struct Server {
    what: String,
    child: Child,
    log: PathBuf,
}

impl Server {
    /// Starts `cmd` in `node`, stdout and stderr to `<dir>/<name>.log`.
    pub fn start(node: &str, slim: bool, cmd: &[&str], dir: &Path, name: &str) -> Server {
        let what = describe(node, slim, cmd);
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("cannot create the server log");
        let err = out.try_clone().expect("cannot duplicate the server log");
        let child = lab_command(SERVER_TIMEOUT, node, slim, cmd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        Server { what, child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the server's output if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("cannot poll the server") {
            panic!(
                "server `{}` exited with {status}; its output:\n{}",
                self.what,
                self.log()
            );
        }
    }

    /// Waits until a plain (non-Slim) TCP connect from `from` to `addr:port` succeeds.
    pub fn wait_connectable(&mut self, from: &str, addr: &str, port: u16) {
        let probe = format!("</dev/tcp/{addr}/{port}");
        self.wait_for(&format!("{addr}:{port} to accept from {from}"), || {
            Command::new(LAB)
                .args(["exec", from, "--", "bash", "-c", &probe])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    /// Waits until the server's output contains `text` (for servers that a probe connection
    /// would disturb).
    pub fn wait_output(&mut self, text: &str) {
        let log = self.log.clone();
        self.wait_for(&format!("`{text}` in the output"), || {
            std::fs::read_to_string(&log).is_ok_and(|s| s.contains(text))
        });
    }

    fn wait_for(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.assert_running();
            if ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server `{}` not ready after {} s (waited for {what}); its output:\n{}",
                self.what,
                READY_TIMEOUT.as_secs(),
                self.log()
            );
            sleep(READY_POLL);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // The group was made by process_group(0): its id is the child's pid.
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A directory under /tmp for one test's files, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("slim-apps-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("cannot create the test directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file in the directory and returns its path as a string, for command lines.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("cannot create a test subdirectory");
        }
        std::fs::write(&path, contents).expect("cannot write a test file");
        path.display().to_string()
    }

    pub fn join(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `rx_bytes + tx_bytes` of h1's VXLAN device: everything c1 exchanged with c2 over the overlay.
pub fn vxlan_bytes() -> u64 {
    let ran = Command::new(LAB)
        .args(["counters", "h1", "slim-vx"])
        .output()
        .expect("cannot run slim-lab counters");
    let text = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "slim-lab counters failed: {text}");
    text.split_whitespace()
        .map(|n| n.parse::<u64>().expect("counters prints two numbers"))
        .sum()
}

/// Asserts that the overlay device saw far less than the payload since `before`: at most a tenth
/// of it and never a megabyte, so the payload went over host sockets.
pub fn assert_bypassed(before: u64, payload: u64, what: &str) {
    let delta = vxlan_bytes().saturating_sub(before);
    let limit = (payload / 10).min(1 << 20);
    assert!(payload > 0, "{what}: no payload moved");
    assert!(
        delta < limit,
        "{what}: the VXLAN device of h1 carried {delta} bytes for a payload of {payload} bytes \
         (limit {limit}): the data went through the overlay, not through Slim"
    );
    eprintln!("{what}: payload {payload} bytes, VXLAN delta {delta} bytes");
}

/// Deterministic, incompressible-looking test data.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The first number after `key` in `text` (skipping spaces, tabs, `:` and `=`).
pub fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.trim_start_matches([' ', '\t', ':', '=', '"']);
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
