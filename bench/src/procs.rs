//! The processes the benchmark starts. Each runs in its own process group, registered here, so
//! that an error, a panic or a signal (Ctrl-C, SIGTERM, SIGHUP) kills every server, client and
//! busy loop with its children (nginx workers, connrate's client processes). Each also gets
//! `PR_SET_PDEATHSIG` = SIGKILL: if the benchmark itself is killed with SIGKILL, its direct
//! children still go (all of ours exec in place: taskset -> slim-lab exec -> program).

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

/// Process groups we started and have not reaped yet.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// Set once cleanup has begun: anything registered later is killed at once.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);
/// Files and directories to remove on the way out (the run's temporary directory).
static TEMP_PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn register(pgid: i32) {
    GROUPS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(pgid);
    if SHUTTING_DOWN.load(Ordering::SeqCst) {
        kill_group(pgid);
    }
}

fn unregister(pgid: i32) {
    GROUPS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|g| *g != pgid);
}

fn kill_group(pgid: i32) {
    let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
}

/// Kills every registered process group (SIGKILL).
pub fn kill_all() {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    let groups = GROUPS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for g in groups {
        kill_group(g);
    }
}

/// Whether a signal started the cleanup (the main thread should stop quietly).
pub fn shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::SeqCst)
}

pub fn remove_on_exit(path: &Path) {
    TEMP_PATHS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(path.to_path_buf());
}

pub fn remove_temp_paths() {
    let paths = std::mem::take(&mut *TEMP_PATHS.lock().unwrap_or_else(PoisonError::into_inner));
    for p in paths {
        let _ = std::fs::remove_dir_all(&p);
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (call first in main, before any
/// other thread exists, so every later thread inherits the mask) and starts a thread that
/// waits for them: it kills every registered group, removes the temporary files and exits
/// with 128 + the signal. Children get an empty signal mask from std's spawn.
pub fn install_signal_cleanup() -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block()
        .context("cannot block SIGINT/SIGTERM/SIGHUP")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(sig) = set.wait() else { return };
            eprintln!("\nslim-bench: {sig}: stopping every server, client and busy loop");
            kill_all();
            remove_temp_paths();
            std::process::exit(128 + sig as i32);
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// Makes `cmd` start in a new process group, die with us, and read /dev/null.
fn prepare(cmd: &mut Command) {
    cmd.process_group(0).stdin(Stdio::null());
    // SAFETY: runs in the forked child before exec; prctl is async-signal-safe and touches no
    // memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A command line for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

fn quote(a: &OsStr) -> String {
    let a = a.to_string_lossy();
    if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
        format!("'{}'", a.replace('\'', "'\\''"))
    } else {
        a.into_owned()
    }
}

/// A long-running process (a server or a busy loop), killed with its group on drop.
pub struct Background {
    child: Child,
    pgid: i32,
    pub what: String,
    log: Option<PathBuf>,
}

impl Background {
    /// Starts `cmd`, its stdout and stderr into `log` (or /dev/null).
    pub fn start(mut cmd: Command, log: Option<&Path>) -> Result<Background> {
        prepare(&mut cmd);
        let what = describe(&cmd);
        match log {
            Some(path) => {
                let out = File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                let err = out
                    .try_clone()
                    .context("cannot duplicate a log descriptor")?;
                cmd.stdout(out).stderr(err);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        let pgid = child.id() as i32;
        register(pgid);
        Ok(Background {
            child,
            pgid,
            what,
            log: log.map(Path::to_path_buf),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pgid
    }

    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Fails with the process's output if it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("cannot poll a child")? {
            bail!(
                "`{}` exited with {status}; its output:\n{}",
                self.what,
                tail(&self.log_text(), 2000)
            );
        }
        Ok(())
    }

    /// Polls `ready` every 50 ms until it holds, the process dies, or `timeout` passes.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Self) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if ready(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` not ready after {} s (waited for {what}); its output:\n{}",
                    self.what,
                    timeout.as_secs(),
                    tail(&self.log_text(), 2000)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal to the whole group (SIGSTOP/SIGCONT for the busy loops).
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(-self.pgid), sig);
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Until we reap the leader its pid holds the group id, so this cannot hit a stranger.
        if let Ok(None) = self.child.try_wait() {
            kill_group(self.pgid);
        }
        let _ = self.child.wait();
        unregister(self.pgid);
    }
}

/// What a finished program printed.
pub struct Finished {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Everything about the run, for error messages.
    pub fn report(&self) -> String {
        format!(
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.status,
            tail(&self.stdout, 3000),
            tail(&self.stderr, 3000)
        )
    }
}

/// Runs `cmd` to completion; after `timeout` its whole group is killed and this fails.
pub fn run(mut cmd: Command, timeout: Duration) -> Result<Finished> {
    prepare(&mut cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = describe(&cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    let pgid = child.id() as i32;
    register(pgid);
    // A thread waits (blocked in waitpid, no polling that would cost CPU during a measurement)
    // and reads both pipes.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out,
        Err(_) => {
            kill_group(pgid);
            let _ = rx.recv();
            unregister(pgid);
            bail!("`{what}` did not finish within {} s", timeout.as_secs());
        }
    };
    // Both pipes reached EOF, so nothing of the group holds them any more.
    unregister(pgid);
    let out = out.with_context(|| format!("cannot wait for `{what}`"))?;
    Ok(Finished {
        what,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The last `n` bytes of `s` (on a character boundary).
pub fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut at = s.len() - n;
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_captures_output_and_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let f = run(cmd, Duration::from_secs(10)).unwrap();
        assert_eq!(f.stdout, "out\n");
        assert_eq!(f.stderr, "err\n");
        assert_eq!(f.status.code(), Some(3));
    }

    #[test]
    fn run_kills_the_group_on_timeout() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & sleep 30"]);
        let t = Instant::now();
        let e = run(cmd, Duration::from_millis(300)).err().unwrap();
        assert!(e.to_string().contains("did not finish"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn background_dies_on_drop() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut b = Background::start(cmd, None).unwrap();
        b.check_running().unwrap();
        let pid = b.pid();
        drop(b);
        assert!(kill(Pid::from_raw(pid), None).is_err(), "still alive");
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
        assert_eq!(tail("aé", 1), "");
    }
}
