//! The lab as the benchmark uses it: through the `slim-lab` command line only (up, addr,
//! exec, router), so that the benchmark does not depend on the lab's internals.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procs;

/// Where one mode's client and server run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// The JSON key.
    pub key: &'static str,
    pub client: &'static str,
    pub server: &'static str,
    /// Both ends run under Slim's library.
    pub slim: bool,
    /// Ports of this mode's servers are the family's base plus this.
    pub index: u16,
    pub what: &'static str,
}

pub const HOST: Mode = Mode {
    key: "host",
    client: "h1",
    server: "h2",
    slim: false,
    index: 0,
    what: "h1 -> h2 over the underlay (host network), no Slim",
};
pub const OVERLAY: Mode = Mode {
    key: "overlay",
    client: "c1",
    server: "c2",
    slim: false,
    index: 1,
    what: "c1 (on h1) -> c2 (on h2) over the VXLAN overlay, no Slim on either side",
};
pub const SLIM: Mode = Mode {
    key: "slim",
    client: "c1",
    server: "c2",
    slim: true,
    index: 2,
    what: "c1 (on h1) -> c2 (on h2), both under Slim's library",
};
pub const SLIM_SAME_HOST: Mode = Mode {
    key: "slim_same_host",
    client: "c1",
    server: "c3",
    slim: true,
    index: 3,
    what: "c1 -> c3, both on h1, both under Slim's library",
};
pub const OVERLAY_SAME_HOST: Mode = Mode {
    key: "overlay_same_host",
    client: "c1",
    server: "c3",
    slim: false,
    index: 4,
    what: "c1 -> c3, both on h1, over the host's bridge, no Slim",
};

/// The host network's own same-host path (loopback in h1's namespace): the fair baseline for
/// the two same-host modes, whose traffic never leaves h1 either (Slim's goes over loopback
/// too, host socket to host socket).
pub const HOST_SAME_HOST: Mode = Mode {
    key: "host_same_host",
    client: "h1",
    server: "h1",
    slim: false,
    index: 5,
    what: "h1 -> h1 (loopback in the host's namespace), no Slim",
};

pub const ALL_MODES: [Mode; 6] = [
    HOST,
    OVERLAY,
    SLIM,
    SLIM_SAME_HOST,
    OVERLAY_SAME_HOST,
    HOST_SAME_HOST,
];

pub fn mode_by_key(key: &str) -> Option<Mode> {
    ALL_MODES.iter().copied().find(|m| m.key == key)
}

pub const STATE_DIR: &str = "/run/slim-lab";

pub struct Lab {
    pub bin: PathBuf,
    addrs: HashMap<&'static str, String>,
    /// CPU for the server side and for the client side (taskset), if pinning.
    pub server_cpu: Option<usize>,
    pub client_cpu: Option<usize>,
}

impl Lab {
    /// Brings the lab up (idempotent) and learns the addresses.
    pub fn open(bin: &Path, server_cpu: Option<usize>, client_cpu: Option<usize>) -> Result<Lab> {
        let bin = std::fs::canonicalize(bin)
            .with_context(|| format!("no slim-lab at {}; build it first", bin.display()))?;
        let mut up = Command::new(&bin);
        up.arg("up");
        let out = procs::run(up, Duration::from_secs(120))?;
        if !out.status.success() {
            bail!("slim-lab up failed:\n{}", out.report());
        }
        let mut lab = Lab {
            bin,
            addrs: HashMap::new(),
            server_cpu,
            client_cpu,
        };
        for node in ["h1", "h2", "c1", "c2", "c3"] {
            let mut cmd = Command::new(&lab.bin);
            cmd.args(["addr", node]);
            let out = procs::run(cmd, Duration::from_secs(10))?;
            let addr = out.stdout.trim().to_string();
            if !out.status.success() || addr.is_empty() {
                bail!("slim-lab addr {node} failed:\n{}", out.report());
            }
            lab.addrs.insert(node, addr);
        }
        Ok(lab)
    }

    pub fn addr(&self, node: &str) -> &str {
        self.addrs.get(node).map(String::as_str).unwrap_or("?")
    }

    /// `[taskset -c CPU] slim-lab exec NODE [--slim] -- ARGV...`
    pub fn command(&self, cpu: Option<usize>, node: &str, slim: bool, argv: &[&str]) -> Command {
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.args(["exec", node]);
        if slim {
            cmd.arg("--slim");
        }
        cmd.arg("--").args(argv);
        cmd
    }

    pub fn client(&self, mode: &Mode, argv: &[&str]) -> Command {
        self.command(self.client_cpu, mode.client, mode.slim, argv)
    }

    pub fn server(&self, mode: &Mode, argv: &[&str]) -> Command {
        self.command(self.server_cpu, mode.server, mode.slim, argv)
    }

    /// The address a mode's client connects to.
    pub fn target(&self, mode: &Mode) -> &str {
        self.addr(mode.server)
    }

    /// Whether a plain TCP connect from the mode's client node to addr:port succeeds.
    pub fn connectable(&self, mode: &Mode, port: u16) -> bool {
        let probe = format!("</dev/tcp/{}/{port}", self.target(mode));
        let cmd = self.command(None, mode.client, false, &["bash", "-c", &probe]);
        procs::run(cmd, Duration::from_secs(10)).is_ok_and(|f| f.status.success())
    }

    /// The routers: (host, pid, executable), from the lab's pid files.
    pub fn routers(&self) -> Vec<(String, Option<i32>, Option<PathBuf>)> {
        ["h1", "h2"]
            .iter()
            .map(|h| {
                let pid = std::fs::read_to_string(format!("{STATE_DIR}/{h}.pid"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok());
                let exe = pid.and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok());
                (h.to_string(), pid, exe)
            })
            .collect()
    }

    /// The router binary that `slim-lab router ... restart` would start: next to slim-lab.
    pub fn own_router(&self) -> PathBuf {
        self.bin.with_file_name("slim-router")
    }

    pub fn restart_router(&self, host: &str) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["router", host, "restart"]);
        let out = procs::run(cmd, Duration::from_secs(60))?;
        if !out.status.success() {
            bail!("slim-lab router {host} restart failed:\n{}", out.report());
        }
        Ok(())
    }

    /// `plain` or `secure`, as the lab recorded it.
    pub fn lab_mode(&self) -> String {
        std::fs::read_to_string(format!("{STATE_DIR}/mode"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    }
}
