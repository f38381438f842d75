//! Starting the per-host `slim-router`s and telling whether they still serve.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::paths::{
    router_log, router_pid_file, router_socket, router_socket_dir, router_socket_for,
};
use crate::processes::{cmdline, is_running, terminate};
use crate::runtime::Runtime;
use crate::topology::{Host, OVERLAY_PREFIXES, ROUTER_PORT};

/// How long `up` waits for a started router to answer. Seconds on a normal machine; inside the
/// QEMU guest of `make vm-test` (TCG, KASAN) on a loaded host a start took over 10 s.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a router may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
const READY_POLL: Duration = Duration::from_millis(20);
const LOG_TAIL_LINES: usize = 20;

/// The router's exact command line after the binary.
pub fn router_args(host: &Host, secure: bool) -> Vec<String> {
    router_args_with_socket(host, secure, &router_socket(host))
}

fn router_args_with_socket(host: &Host, secure: bool, socket: &Path) -> Vec<String> {
    let mut args = vec![
        "--host-addr".to_string(),
        host.underlay_v4.to_string(),
        "--socket".to_string(),
        socket.display().to_string(),
    ];
    for prefix in OVERLAY_PREFIXES {
        args.extend(["--prefix".to_string(), prefix.to_string()]);
    }
    for peer in host.peers() {
        args.extend([
            "--peer".to_string(),
            format!("{}:{ROUTER_PORT}", peer.underlay_v4),
        ]);
    }
    if secure {
        args.push("--secure".to_string());
        let policy = crate::paths::policy_file();
        if policy.exists() {
            args.extend(["--policy-file".to_string(), policy.display().to_string()]);
        }
    }
    // The peer channel is sealed by default (the router refuses to start without a key).
    args.push("--cluster-key".to_string());
    args.push(crate::paths::cluster_key().display().to_string());
    args.extend(["--log-level".to_string(), "info".to_string()]);
    args
}

/// A router that was spawned and may not answer yet.
pub struct Starting {
    host: &'static Host,
    child: Child,
}

/// Spawns the router in the host's namespace, detached from this process's session so that it
/// outlives `slim-lab up` and a terminal's hangup. Its pid is written before it is ready so
/// that `down` finds it even if `up` fails while waiting.
/// Creates the lab's cluster key (32 random bytes, readable by root only) unless it exists.
fn ensure_cluster_key() -> Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = crate::paths::cluster_key();
    if path.exists() {
        return Ok(());
    }
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("cannot read /dev/urandom for the cluster key")?;
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create the cluster key {}", path.display()))?;
    f.write_all(&key)
        .with_context(|| format!("cannot write the cluster key {}", path.display()))?;
    Ok(())
}

pub fn spawn(host: &'static Host, bin: &Path, secure: bool) -> Result<Starting> {
    ensure_cluster_key()?;
    let log_path = router_log(host);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open the router log {}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .context("cannot duplicate the router log descriptor")?;
    // `ip netns exec` execs the router in place (same pid) and remounts /sys for the namespace,
    // which the router may read to find its devices.
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", host.netns])
        .arg(bin)
        .args(router_args(host, secure))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2) and
    // close_range(2), which are async-signal-safe and touch no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The router outlives the command that started it: it must not keep whatever that
            // command inherited open (a `flock LOCK cmd` lock would stay held as long as the
            // router runs). Marked close-on-exec rather than closed, so the standard library's
            // own exec-error pipe keeps working.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {} in {}", bin.display(), host.netns))?;
    let pid_path = router_pid_file(host);
    std::fs::write(&pid_path, format!("{}\n", child.id()))
        .with_context(|| format!("cannot write {}", pid_path.display()))?;
    Ok(Starting { host, child })
}

/// Creates the router's own socket directory (podman runtime): what containers get mounted.
pub fn prepare_socket_dir(host: &Host) -> Result<()> {
    let dir = router_socket_dir(host);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the router's directory {}", dir.display()))
}

/// Waits until every router accepts a connection on its socket, or one dies, or time runs out.
pub fn wait_ready(mut starting: Vec<Starting>) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !starting.is_empty() {
        let mut still = Vec::new();
        for mut s in starting {
            if answers(&router_socket(s.host)) {
                continue;
            }
            if let Some(status) = s.child.try_wait().context("cannot poll a router process")? {
                bail!(
                    "the router of {} exited ({status}) before it answered on {}; its log {} ends with:\n{}",
                    s.host.name,
                    router_socket(s.host).display(),
                    router_log(s.host).display(),
                    log_tail(s.host)
                );
            }
            still.push(s);
        }
        starting = still;
        if starting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let s = &starting[0];
            bail!(
                "the router of {} did not answer on {} within {} s; its log {} ends with:\n{}",
                s.host.name,
                router_socket(s.host).display(),
                READY_TIMEOUT.as_secs(),
                router_log(s.host).display(),
                log_tail(s.host)
            );
        }
        sleep(READY_POLL);
    }
    Ok(())
}

/// Whether a router accepts connections on `path`. The router speaks SOCK_SEQPACKET (see the
/// uapi crate), so a stream connect would fail with EPROTOTYPE even against a live router.
pub fn answers(path: &Path) -> bool {
    let Ok(sock) = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    // The connection closes when `sock` drops; the router sees an empty session and moves on.
    connect(std::os::fd::AsRawFd::as_raw_fd(&sock), &addr).is_ok()
}

fn log_tail(host: &Host) -> String {
    match std::fs::read_to_string(router_log(host)) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            if tail.is_empty() {
                "(empty)".to_string()
            } else {
                tail.join("\n")
            }
        }
        Err(e) => format!("(unreadable: {e})"),
    }
}

/// What the state directory and /proc say about one host's router.
pub struct RouterState {
    pub pid: Option<u32>,
    pub alive: bool,
    pub answering: bool,
}

impl RouterState {
    pub fn serving(&self) -> bool {
        self.alive && self.answering
    }
}

/// The router's pid from its pid file, if the process is running and is still that router
/// (the command line names its socket), so that a recycled pid is never mistaken for it.
pub fn live_pid(host: &Host) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(router_pid_file(host))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // Either runtime's path: the lab's processes are stopped before the runtime changes.
    let paths = [
        router_socket_for(host, Runtime::Netns),
        router_socket_for(host, Runtime::Podman),
    ];
    let line = cmdline(pid);
    (is_running(pid) && paths.iter().any(|p| line.contains(&*p.to_string_lossy()))).then_some(pid)
}

/// Stops the host's router, if one runs: SIGTERM, SIGKILL after [`STOP_GRACE`], and waits until
/// it is gone. Touches nothing else: the network and every other process stay as they are.
/// Returns the pid it stopped.
pub fn stop(host: &Host) -> Result<Option<u32>> {
    let Some(pid) = live_pid(host) else {
        remove_pid_file(host)?;
        return Ok(None);
    };
    terminate(&[pid], STOP_GRACE);
    if is_running(pid) {
        bail!(
            "the router of {} (pid {pid}) still runs after SIGTERM and SIGKILL",
            host.name
        );
    }
    remove_pid_file(host)?;
    Ok(Some(pid))
}

fn remove_pid_file(host: &Host) -> Result<()> {
    let path = router_pid_file(host);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

pub fn state(host: &Host) -> RouterState {
    let pid = std::fs::read_to_string(router_pid_file(host))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    RouterState {
        pid,
        alive: live_pid(host).is_some(),
        answering: answers(&router_socket(host)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::HOSTS;

    #[test]
    fn router_command_line_is_exact() {
        let socket = router_socket_for(&HOSTS[0], Runtime::Netns);
        let args = router_args_with_socket(&HOSTS[0], true, &socket).join(" ");
        assert_eq!(
            args,
            "--host-addr 192.168.77.1 --socket /run/slim-lab/h1.sock --prefix 10.32.0.0/12 \
             --prefix fd00:32::/64 --peer 192.168.77.2:7788 --secure \
             --cluster-key /run/slim-lab/cluster.key --log-level info"
        );
        let plain = router_args(&HOSTS[0], false).join(" ");
        assert!(
            plain.contains("--cluster-key /run/slim-lab/cluster.key")
                && !plain.contains("--secure"),
            "{plain}"
        );
    }
}
