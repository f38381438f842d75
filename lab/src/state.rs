//! The lab's recorded mode (files in the state directory) and the lock around changing it.

use std::fs::File;

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::paths::{mode_file, routers_file, runtime_file, LOCK_FILE, STATE_DIR};
use crate::runtime::Runtime;

/// How the lab was (or is to be) brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub secure: bool,
    /// False after `up --no-routers`: only the network exists.
    pub routers: bool,
    /// What the containers are: namespaces or podman containers.
    pub runtime: Runtime,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        if self.secure {
            "secure"
        } else {
            "plain"
        }
    }

    pub fn describe(&self) -> String {
        let routers = if self.routers { "on" } else { "off" };
        format!(
            "{}, routers {routers}, runtime {}",
            self.name(),
            self.runtime
        )
    }
}

pub fn create_dir() -> Result<()> {
    std::fs::create_dir_all(STATE_DIR)
        .with_context(|| format!("cannot create the state directory {STATE_DIR}; run as root"))
}

/// Written last by `up`, so its presence also says the build finished.
pub fn write(mode: Mode) -> Result<()> {
    let routers = if mode.routers { "on" } else { "off" };
    std::fs::write(mode_file(), format!("{}\n", mode.name()))
        .and_then(|()| std::fs::write(routers_file(), format!("{routers}\n")))
        .and_then(|()| std::fs::write(runtime_file(), format!("{}\n", mode.runtime)))
        .with_context(|| format!("cannot record the lab's mode in {STATE_DIR}"))
}

/// The recorded mode, or None when `up` never finished (or `down` ran since).
pub fn read() -> Option<Mode> {
    let mode = std::fs::read_to_string(mode_file()).ok()?;
    let secure = match mode.trim() {
        "secure" => true,
        "plain" => false,
        _ => return None,
    };
    // A missing routers file means an older or foreign writer: routers were meant to run.
    let routers = std::fs::read_to_string(routers_file())
        .map(|s| s.trim() != "off")
        .unwrap_or(true);
    Some(Mode {
        secure,
        routers,
        runtime: recorded_runtime(),
    })
}

pub fn recorded_runtime() -> Runtime {
    crate::runtime::recorded()
}

/// Recorded first by `up`, before anything that depends on it (the routers' socket path).
pub fn write_runtime(runtime: Runtime) -> Result<()> {
    std::fs::write(runtime_file(), format!("{runtime}\n"))
        .with_context(|| format!("cannot record the runtime in {STATE_DIR}"))
}

/// Blocks until no other `slim-lab up`/`down` runs, so parallel test suites calling `up` find
/// one finished lab instead of tearing each other's down.
pub fn lock() -> Result<Flock<File>> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .with_context(|| format!("cannot open the lock file {LOCK_FILE}; run as root"))?;
    match Flock::lock(file, FlockArg::LockExclusive) {
        Ok(lock) => Ok(lock),
        Err((_, errno)) => bail!("cannot lock {LOCK_FILE}: {errno}"),
    }
}
