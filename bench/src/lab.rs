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
    /// The lab's routers run with --secure (slim_kern restricts their host sockets) while this
    /// mode is measured; the benchmark switches them (bench/src/secure.rs).
    pub secure: bool,
    /// Ports of this mode's servers are the family's base plus this.
    pub index: u16,
    pub what: &'static str,
}

pub const HOST: Mode = Mode {
    key: "host",
    client: "h1",
    server: "h2",
    slim: false,
    secure: false,
    index: 0,
    what: "h1 -> h2 over the underlay (host network), no Slim",
};
pub const OVERLAY: Mode = Mode {
    key: "overlay",
    client: "c1",
    server: "c2",
    slim: false,
    secure: false,
    index: 1,
    what: "c1 (on h1) -> c2 (on h2) over the VXLAN overlay, no Slim on either side",
};
pub const SLIM: Mode = Mode {
    key: "slim",
    client: "c1",
    server: "c2",
    slim: true,
    secure: false,
    index: 2,
    what: "c1 (on h1) -> c2 (on h2), both under Slim's library",
};
pub const SLIM_SAME_HOST: Mode = Mode {
    key: "slim_same_host",
    client: "c1",
    server: "c3",
    slim: true,
    secure: false,
    index: 3,
    what: "c1 -> c3, both on h1, both under Slim's library",
};
pub const OVERLAY_SAME_HOST: Mode = Mode {
    key: "overlay_same_host",
    client: "c1",
    server: "c3",
    slim: false,
    secure: false,
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
    secure: false,
    index: 5,
    what: "h1 -> h1 (loopback in the host's namespace), no Slim",
};

/// Slim with the routers in secure mode: every host socket restricted by the slim_kern module
/// (`/dev/slim`), so only where it is loaded (the QEMU guest of `make vm-bench`). Not in the
/// default modes.
pub const SLIM_SECURE: Mode = Mode {
    key: "slim_secure",
    client: "c1",
    server: "c2",
    slim: true,
    secure: true,
    index: 6,
    what: "c1 (on h1) -> c2 (on h2), both under Slim's library, the routers in secure mode \
           (--secure: host sockets restricted by slim_kern)",
};

/// The default modes of a full run (all but `slim_secure`, which needs the kernel module).
pub const ALL_MODES: [Mode; 6] = [
    HOST,
    OVERLAY,
    SLIM,
    SLIM_SAME_HOST,
    OVERLAY_SAME_HOST,
    HOST_SAME_HOST,
];

/// Every mode `--modes` takes.
pub const KNOWN_MODES: [Mode; 7] = [
    HOST,
    OVERLAY,
    SLIM,
    SLIM_SAME_HOST,
    OVERLAY_SAME_HOST,
    HOST_SAME_HOST,
    SLIM_SECURE,
];

pub fn mode_by_key(key: &str) -> Option<Mode> {
    KNOWN_MODES.iter().copied().find(|m| m.key == key)
}

pub const STATE_DIR: &str = "/run/slim-lab";

/// Where the containers' programs run: `slim-lab up --runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// c1, c2, c3 are network namespaces; Slim comes with `slim-lab exec --slim`.
    Netns,
    /// c1, c2, c3 are podman + crun containers run through slim-oci, annotated
    /// `io.slim/enable=true`: Slim is injected by slim-oci, as a user gets it.
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Netns => "netns",
            Runtime::Podman => "podman",
        }
    }
}

/// Where the lab mounts its build directory (slim-lab's, with slim-testprog) in podman
/// containers.
const CONTAINER_BUILD_DIR: &str = "/opt/slim";

pub struct Lab {
    pub bin: PathBuf,
    pub runtime: Runtime,
    addrs: HashMap<&'static str, String>,
    /// With podman: each container's root as this machine sees it (`/proc/INIT/root`).
    roots: HashMap<&'static str, PathBuf>,
    /// CPU for the server side and for the client side (taskset), if pinning.
    pub server_cpu: Option<usize>,
    pub client_cpu: Option<usize>,
}

impl Lab {
    /// Brings the lab up (idempotent; with another runtime than the running lab's, slim-lab
    /// rebuilds it) and learns the addresses, which with podman come from CNI's IPAM.
    pub fn open(
        bin: &Path,
        runtime: Runtime,
        slim_oci: &Path,
        security_opts: &[String],
        server_cpu: Option<usize>,
        client_cpu: Option<usize>,
    ) -> Result<Lab> {
        let bin = std::fs::canonicalize(bin)
            .with_context(|| format!("no slim-lab at {}; build it first", bin.display()))?;
        let mut up = Command::new(&bin);
        up.arg("up");
        if runtime == Runtime::Podman {
            let oci = std::fs::canonicalize(slim_oci).with_context(|| {
                format!(
                    "no slim-oci at {}; build the workspace or give --slim-oci",
                    slim_oci.display()
                )
            })?;
            up.args(["--runtime", "podman", "--slim-oci"])
                .arg(oci)
                .args(["--annotation", "io.slim/enable=true"]);
            for o in security_opts {
                up.arg("--security-opt").arg(o);
            }
        }
        let out = procs::run(up, Duration::from_secs(600))?;
        if !out.status.success() {
            bail!("{}", out.report());
        }
        let mut lab = Lab {
            bin,
            runtime,
            addrs: HashMap::new(),
            roots: HashMap::new(),
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
        if runtime == Runtime::Podman {
            lab.check_injected()?;
            for node in ["c1", "c2", "c3"] {
                let root = container_root(node)?;
                lab.roots.insert(node, root);
            }
        }
        Ok(lab)
    }

    pub fn addr(&self, node: &str) -> &str {
        self.addrs.get(node).map(String::as_str).unwrap_or("?")
    }

    /// Each container's processes get the library from slim-oci, and `env -u` removes it.
    fn check_injected(&self) -> Result<()> {
        for node in ["c1", "c2", "c3"] {
            let run = |slim| {
                let cmd = self.command(None, node, slim, &["sh", "-c", "echo \"[$LD_PRELOAD]\""]);
                procs::run(cmd, Duration::from_secs(30))
            };
            let with = run(true)?;
            if !with.status.success() || !with.stdout.contains("libslim_preload.so") {
                bail!(
                    "slim-oci did not inject Slim into {node} (no libslim_preload.so in its \
                     LD_PRELOAD; see docs/containers.md, \"Not injected although asked\"): {}",
                    with.report()
                );
            }
            let without = run(false)?;
            if !without.status.success() || without.stdout.trim() != "[]" {
                bail!("`env -u LD_PRELOAD` in {node}: {}", without.report());
            }
        }
        Ok(())
    }

    /// A podman container's root directory as this machine sees it; None for other nodes.
    pub fn container_root(&self, node: &str) -> Option<&Path> {
        self.roots.get(node).map(PathBuf::as_path)
    }

    /// Whether `node` is a podman container (its programs see its own file system, and Slim
    /// is injected into every process by slim-oci).
    pub fn in_container(&self, node: &str) -> bool {
        self.runtime == Runtime::Podman && node.starts_with('c')
    }

    /// The path under which `node` sees `program` of the build directory.
    pub fn program_path(&self, node: &str, program: &Path) -> Result<String> {
        if !self.in_container(node) {
            return Ok(program.display().to_string());
        }
        let build = self.bin.parent().context("slim-lab has no directory")?;
        match (program.parent(), program.file_name()) {
            (Some(dir), Some(name)) if dir == build => {
                Ok(format!("{CONTAINER_BUILD_DIR}/{}", name.to_string_lossy()))
            }
            _ => bail!(
                "{} is not in the build directory {} that the lab mounts at {CONTAINER_BUILD_DIR} \
                 in the podman containers; use the one next to slim-lab",
                program.display(),
                build.display()
            ),
        }
    }

    /// Makes `dir` with `files` (relative path, contents) where `node`'s programs see it: on
    /// this machine, or inside a podman container's own file system.
    pub fn write_files(&self, node: &str, dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
        if !self.in_container(node) {
            for (rel, data) in files {
                let path = dir.join(rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                std::fs::write(&path, data)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            return std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()));
        }
        // One `sh` in the container: mkdir -p DIR, then each file from an argument.
        let mut script = String::from("set -e; mkdir -p \"$1\"; cd \"$1\"; shift");
        let mut args: Vec<String> = vec![dir.display().to_string()];
        for (rel, data) in files {
            script.push_str("; mkdir -p \"$(dirname \"$1\")\"; printf %s \"$2\" > \"$1\"; shift 2");
            args.push(rel.to_string());
            args.push(String::from_utf8(data.to_vec()).context("a file to write is not text")?);
        }
        let mut argv: Vec<&str> = vec!["sh", "-c", &script, "sh"];
        argv.extend(args.iter().map(String::as_str));
        let out = procs::run(
            self.command(None, node, false, &argv),
            Duration::from_secs(30),
        )?;
        if !out.status.success() {
            bail!("cannot write files in {node}: {}", out.report());
        }
        Ok(())
    }

    /// Ends the processes in a podman container whose command line matches `pattern` (an
    /// extended regular expression): SIGTERM, then SIGKILL. `podman exec` forwards no signals,
    /// so killing the `slim-lab exec` that started a server leaves the server running.
    pub fn kill_in_container(&self, node: &str, pattern: &str) {
        if !self.in_container(node) {
            return;
        }
        let script = "pkill -TERM -f \"$1\" || exit 0; \
                      for i in 1 2 3 4 5 6 7 8 9 10; do pgrep -f \"$1\" >/dev/null || exit 0; \
                      sleep 0.2; done; pkill -KILL -f \"$1\"; exit 0";
        let cmd = self.command(None, node, false, &["sh", "-c", script, "sh", pattern]);
        match procs::run(cmd, Duration::from_secs(30)) {
            Ok(f) if f.status.success() => {}
            Ok(f) => eprintln!("slim-bench: stopping `{pattern}` in {node}: {}", f.report()),
            Err(e) => eprintln!("slim-bench: stopping `{pattern}` in {node}: {e:#}"),
        }
    }

    /// `[taskset -c CPU] slim-lab exec NODE [--slim] -- ARGV...`. In a podman container Slim
    /// is slim-oci's: `slim` runs the program as the container runs it (injected), `!slim`
    /// removes the injected library first (`env -u LD_PRELOAD`), for the overlay baseline.
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
        if self.in_container(node) {
            cmd.arg("--");
            if !slim {
                cmd.args(["env", "-u", "LD_PRELOAD"]);
            }
        } else {
            if slim {
                cmd.arg("--slim");
            }
            cmd.arg("--");
        }
        cmd.args(argv);
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

    /// `slim-lab routers plain|secure`: both routers restarted in that mode (nothing done if
    /// they already run in it), the network and the servers kept.
    pub fn set_router_mode(&self, secure: bool) -> Result<()> {
        let mode = if secure { "secure" } else { "plain" };
        let mut cmd = Command::new(&self.bin);
        cmd.args(["routers", mode]);
        let out = procs::run(cmd, Duration::from_secs(120))?;
        if !out.status.success() {
            bail!("slim-lab routers {mode} failed:\n{}", out.report());
        }
        Ok(())
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

/// `/proc/PID/root` of a podman container's init (catatonit, `/run/podman-init`), found among
/// the processes of the network namespace the lab names after the container (`slim-cN`).
fn container_root(node: &str) -> Result<PathBuf> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "pids", &format!("slim-{node}")]);
    let out = procs::run(cmd, Duration::from_secs(10))?;
    if !out.status.success() {
        bail!("cannot list the processes of {node}: {}", out.report());
    }
    let own_mnt = std::fs::read_link("/proc/self/ns/mnt").ok();
    for pid in out.stdout.split_whitespace() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let mnt = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        if cmdline.starts_with(b"/run/podman-init") && mnt.is_some() && mnt != own_mnt {
            return Ok(PathBuf::from(format!("/proc/{pid}/root")));
        }
    }
    bail!(
        "no init process (/run/podman-init) of container {node} in network namespace slim-{node}: \
         is the lab up with --runtime podman (`slim-lab status`)?"
    )
}
