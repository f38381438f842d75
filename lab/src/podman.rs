//! The podman runtime: running podman for one lab host, creating the containers and reading their
//! addresses back, `exec` and removal.
//!
//! Every podman invocation goes through [`podman`]: a private mount namespace in which the
//! cgroup2 mount of the hybrid layout is gone (crun refuses the hybrid layout), entered into the
//! host's network namespace with `nsenter --net` (`ip netns exec` would remount /sys and lose the
//! cgroup mounts), with a storage, run directory and CNI configuration of the lab's own, so that
//! the machine's default podman storage is never touched. conmon inherits both namespaces, and
//! the cleanup command it runs when a container exits gets the same flags from podman.

use std::ffi::{OsStr, OsString};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::cni;
use crate::containers::Record;
use crate::paths::{
    self, netns_path, podman_run_dir, router_socket_dir, CONTAINER_BUILD_DIR, CONTAINER_SOCKET_DIR,
    PODMAN_ROOT, STATE_DIR,
};
use crate::topology::{Container, Host, OVERLAY_PREFIXES};

/// Where the podman runtime's containers put their cgroups (cgroupfs manager; `down` removes it).
pub const CGROUP_PARENT: &str = "/slim-lab";

/// The open-files limit of the containers. Podman's default (1048576) is above what this machine
/// lets a process set; this is within the hard limit of the machines the lab runs on, and as
/// much as the servers of the tests need.
const NOFILE: u32 = 16384;
/// Podman's own default for the process limit, set explicitly so it is visible.
const NPROC: u32 = 32768;

/// Runs in the new mount namespace before podman: with propagation unchanged, /run/netns and
/// the storage's mounts stay shared with the initial namespace (later podman calls and `ip`
/// see the network namespaces and overlay mounts podman made), while the cgroup tree is made
/// private first so that unmounting the cgroup2 mount of the hybrid layout stays in here.
const WRAPPER: &str = r#"
if mountpoint -q /sys/fs/cgroup/unified; then
    mount --make-rprivate /sys/fs/cgroup && umount /sys/fs/cgroup/unified || exit 125
fi
ns=$1; shift
exec nsenter --net="$ns" -- "$@"
"#;

/// What `up --runtime podman` passes to podman beyond the lab's own settings: the hook for an
/// OCI runtime wrapper such as slim-oci.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The OCI runtime podman runs (`podman --runtime PATH`); crun when absent.
    pub oci_runtime: Option<PathBuf>,
    /// `--annotation KEY=VALUE` on every container, e.g. `io.slim/enable=true`.
    pub annotations: Vec<String>,
    /// `--security-opt VALUE` on every container, e.g. `seccomp=unconfined` (to measure what
    /// podman's default seccomp filter costs).
    pub security_opts: Vec<String>,
    /// The OCI runtime is slim-oci: each host gets a slim-oci config of its own (its router's
    /// socket, the build's library; see [`write_slim_oci_config`]), which every podman call names
    /// with `--runtime-flag slim-config=PATH` (podman passes no environment to the runtime).
    pub slim_oci: bool,
}

impl Options {
    fn file() -> PathBuf {
        Path::new(STATE_DIR).join("podman").join("options")
    }

    /// Recorded by `up`: every later podman call (exec, rm, the exit command) must name the same
    /// OCI runtime, and `up` compares them to decide whether to rebuild.
    pub fn write(&self) -> Result<()> {
        std::fs::create_dir_all(Path::new(STATE_DIR).join("podman"))
            .context("cannot create the podman state directory")?;
        let mut text = String::new();
        if let Some(r) = &self.oci_runtime {
            text.push_str(&format!("oci-runtime {}\n", r.display()));
        }
        for a in &self.annotations {
            text.push_str(&format!("annotation {a}\n"));
        }
        for o in &self.security_opts {
            text.push_str(&format!("security-opt {o}\n"));
        }
        if self.slim_oci {
            text.push_str("slim-oci on\n");
        }
        std::fs::write(Self::file(), text).context("cannot record the podman options")
    }

    pub fn read() -> Options {
        let mut o = Options::default();
        let text = std::fs::read_to_string(Self::file()).unwrap_or_default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("oci-runtime", v)) => o.oci_runtime = Some(PathBuf::from(v)),
                Some(("annotation", v)) => o.annotations.push(v.to_string()),
                Some(("security-opt", v)) => o.security_opts.push(v.to_string()),
                Some(("slim-oci", "on")) => o.slim_oci = true,
                _ => {}
            }
        }
        o
    }

    fn runtime_arg(&self) -> OsString {
        self.oci_runtime
            .as_ref()
            .map_or_else(|| "crun".into(), |p| p.clone().into_os_string())
    }
}

/// The container's name in podman.
pub fn container_name(c: &Container) -> String {
    format!("slim-{}", c.name)
}

pub fn storage_root(host: &Host) -> PathBuf {
    Path::new(PODMAN_ROOT).join(host.name)
}

/// `podman` with the lab's global flags for `host`, wrapped as the module doc says. When the
/// host's namespace is gone (a half-removed lab), podman runs in the initial one so that
/// `down` can still remove its containers.
pub fn podman(host: &Host, options: &Options) -> Command {
    let run = podman_run_dir(host);
    let ns = netns_path(host.netns);
    let mut c = Command::new("unshare");
    c.args([
        "-m",
        "--propagation",
        "unchanged",
        "--",
        "sh",
        "-c",
        WRAPPER,
        "sh",
    ]);
    c.arg(if ns.exists() {
        ns
    } else {
        PathBuf::from("/proc/self/ns/net")
    });
    c.arg("podman")
        .arg("--root")
        .arg(storage_root(host))
        .arg("--runroot")
        .arg(run.join("run"))
        .arg("--tmpdir")
        .arg(run.join("tmp"))
        .arg("--network-config-dir")
        .arg(cni_dir(host))
        .args(["--network-backend", "cni", "--cgroup-manager", "cgroupfs"])
        .args(["--events-backend", "none", "--storage-driver", "overlay"])
        .arg("--runtime")
        .arg(options.runtime_arg());
    if options.slim_oci {
        let mut flag = OsString::from("slim-config=");
        flag.push(slim_oci_config(host));
        c.arg("--runtime-flag").arg(flag);
    }
    c
}

fn slim_oci_config(host: &Host) -> PathBuf {
    podman_run_dir(host).join("slim-oci.toml")
}

/// slim-oci's configuration for `host` (`slim-oci.toml`: crun as the real runtime, the build's
/// library, injection only on request) and the router configuration it reads the prefixes,
/// socket and mode from (`router.toml`, the values the lab starts the host's router with).
pub fn write_slim_oci_config(host: &Host, secure: bool) -> Result<()> {
    let run = podman_run_dir(host);
    let router = run.join("router.toml");
    let prefixes: Vec<String> = OVERLAY_PREFIXES
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect();
    let router_text = format!(
        "# The settings slim-lab starts {}'s router with, for slim-oci.\n\
         prefixes = [{}]\nsocket = \"{}\"\nsecure = {secure}\n",
        host.name,
        prefixes.join(", "),
        crate::paths::router_socket_for(host, crate::runtime::Runtime::Podman).display()
    );
    let oci_text = format!(
        "runtime = \"crun\"\nrouter_config = \"{}\"\nlibrary = \"{}\"\ndefault = \"off\"\n",
        router.display(),
        paths::preload_lib()?.display()
    );
    std::fs::write(&router, router_text)
        .and_then(|()| std::fs::write(slim_oci_config(host), oci_text))
        .with_context(|| format!("cannot write slim-oci's configuration in {}", run.display()))
}

fn cni_dir(host: &Host) -> PathBuf {
    podman_run_dir(host).join("cni")
}

/// Runs podman and returns its stdout; a failure carries podman's stderr.
fn output(host: &Host, options: &Options, args: &[&OsStr]) -> Result<String> {
    let out = podman(host, options)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run podman (via unshare and nsenter); run scripts/install-deps.sh")?;
    if !out.status.success() {
        bail!(
            "`podman {}` on {} failed ({}): {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            host.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn output_str(host: &Host, options: &Options, args: &[&str]) -> Result<String> {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    output(host, options, &args)
}

/// Writes the host's CNI network configuration into the lab's own config directory.
pub fn write_network(host: &Host) -> Result<()> {
    let run = podman_run_dir(host);
    let ipam = run.join("ipam");
    for dir in [
        cni_dir(host),
        ipam.clone(),
        run.join("run"),
        run.join("tmp"),
    ] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = cni_dir(host).join(format!("{}.conflist", cni::NETWORK));
    std::fs::write(&file, cni::conflist(host, &ipam))
        .with_context(|| format!("cannot write {}", file.display()))
}

/// Starts container `c` on its host: the cached root filesystem through an overlay (`:O`, so the
/// tree is never written), catatonit as init (`--init`) in front of `sleep infinity`, its own
/// mount, pid, ipc, uts and network namespaces, attached to the CNI network; the router's socket
/// directory and the build directory mounted read-only. `addrs`: the addresses to ask IPAM for
/// (`--ip`, `--ip6`; a container created again keeps its old ones), else IPAM's next free ones.
/// Returns what podman reports.
pub fn create(
    c: &Container,
    rootfs: &Path,
    options: &Options,
    addrs: Option<(Ipv4Addr, Ipv6Addr)>,
) -> Result<Record> {
    let host = c.host();
    let name = container_name(c);
    let build = paths::build_dir()?;
    let mut args: Vec<OsString> = vec![
        "run".into(),
        "--detach".into(),
        "--name".into(),
        name.clone().into(),
        "--hostname".into(),
        c.name.into(),
        "--network".into(),
        cni::NETWORK.into(),
        "--init".into(),
        "--cgroup-parent".into(),
        CGROUP_PARENT.into(),
        "--ulimit".into(),
        format!("nofile={NOFILE}:{NOFILE}").into(),
        "--ulimit".into(),
        format!("nproc={NPROC}:{NPROC}").into(),
        // The namespace lab's TCP settings (network::tune), as namespaced sysctls.
        "--sysctl".into(),
        "net.ipv4.tcp_tw_reuse=1".into(),
        "--sysctl".into(),
        "net.ipv4.ip_local_port_range=10000 39999".into(),
        "--volume".into(),
        mount_arg(&router_socket_dir(host), CONTAINER_SOCKET_DIR),
        "--volume".into(),
        mount_arg(&build, CONTAINER_BUILD_DIR),
        "--label".into(),
        "io.slim.lab=1".into(),
    ];
    for a in &options.annotations {
        args.extend(["--annotation".into(), a.into()]);
    }
    for o in &options.security_opts {
        args.extend(["--security-opt".into(), o.into()]);
    }
    if let Some((v4, v6)) = addrs {
        args.extend([
            "--ip".into(),
            v4.to_string().into(),
            "--ip6".into(),
            v6.to_string().into(),
        ]);
    }
    let mut root = rootfs.as_os_str().to_owned();
    root.push(":O");
    args.extend(["--rootfs".into(), root, "sleep".into(), "infinity".into()]);
    let refs: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    output(host, options, &refs)?;
    inspect(c, options)
}

fn mount_arg(src: &Path, dst: &str) -> OsString {
    let mut v = src.as_os_str().to_owned();
    v.push(format!(":{dst}:ro"));
    v
}

/// Reads the container's init pid, id, network namespace and IPAM addresses back from podman.
pub fn inspect(c: &Container, options: &Options) -> Result<Record> {
    let format = format!(
        "{{{{.State.Pid}}}} {{{{.Id}}}} {{{{.NetworkSettings.SandboxKey}}}}{{{{range $k, $v := .NetworkSettings.Networks}}}}{{{{if eq $k \"{}\"}}}} {{{{$v.IPAddress}}}} {{{{$v.GlobalIPv6Address}}}}{{{{end}}}}{{{{end}}}}",
        cni::NETWORK
    );
    let name = container_name(c);
    let text = output_str(c.host(), options, &["inspect", "--format", &format, &name])?;
    parse_inspect(c, text.trim())
        .with_context(|| format!("`podman inspect {name}` printed `{}`", text.trim()))
}

fn parse_inspect(c: &Container, text: &str) -> Result<Record> {
    let w: Vec<&str> = text.split_whitespace().collect();
    let [pid, id, sandbox, v4, v6] = w[..] else {
        bail!("expected pid, id, namespace and two addresses");
    };
    let pid: u32 = pid.parse().context("no pid: is the container running?")?;
    if pid == 0 {
        bail!("the container is not running (pid 0)");
    }
    let v4: Ipv4Addr = v4.parse().context("no IPv4 address from IPAM")?;
    let v6: Ipv6Addr = v6.parse().context("no IPv6 address from IPAM")?;
    Ok(Record {
        name: c.name.to_string(),
        pid,
        id: id.to_string(),
        v4,
        v6,
        sandbox: sandbox.to_string(),
    })
}

/// The slim-lab containers podman knows on `host` (running or not).
pub fn list(host: &Host, options: &Options) -> Result<Vec<String>> {
    let text = output_str(
        host,
        options,
        &[
            "ps",
            "--all",
            "--format",
            "{{.Names}}",
            "--filter",
            "label=io.slim.lab=1",
        ],
    )?;
    Ok(text.lines().map(str::to_string).collect())
}

/// Removes container `c` as `remove_all` does: SIGKILL at once, CNI DEL, its root filesystem and
/// network namespace gone. Succeeds when podman has no such container.
pub fn remove(c: &Container, options: &Options) -> Result<()> {
    let name = container_name(c);
    output_str(
        c.host(),
        options,
        &["rm", "--force", "--ignore", "--time", "0", &name],
    )?;
    if list(c.host(), options)?.contains(&name) {
        bail!("podman still lists {name} on {} after `rm --force`", c.host);
    }
    Ok(())
}

/// Removes every container of `host`'s storage: podman stops them (SIGKILL at once: `-t 0`),
/// runs CNI DEL (IPAM releases the address, the veth goes), unmounts their root filesystems
/// and deletes their network namespaces.
pub fn remove_all(host: &Host, options: &Options) -> Result<()> {
    output_str(host, options, &["rm", "--all", "--force", "--time", "0"])?;
    let left = list(host, options)?;
    if !left.is_empty() {
        bail!(
            "podman still lists {} on {} after `rm --all --force`",
            left.join(", "),
            host.name
        );
    }
    Ok(())
}

/// The command `slim-lab exec` runs for a podman container: `podman exec` (crun joins every
/// namespace of the container, its cgroup, capabilities and seccomp profile), stdin attached.
/// Podman's exit status is the command's, with 125/126/127 for its own failures, a command that
/// cannot run, and one that is not found, as slim-lab's.
pub fn exec_command(c: &Container, slim: bool, cmd: &[OsString]) -> Command {
    let options = Options::read();
    let mut command = podman(c.host(), &options);
    command.args(["exec", "--interactive"]);
    if slim {
        for (k, v) in slim_env() {
            command.arg("--env").arg(format!("{k}={v}"));
        }
    }
    command.arg(container_name(c)).args(cmd);
    command
}

/// `--slim` inside a podman container: the library and the socket as the container sees them.
/// (With an OCI runtime wrapper that injects Slim, containers get these at creation instead.)
fn slim_env() -> Vec<(&'static str, String)> {
    vec![
        (
            "LD_PRELOAD",
            format!("{CONTAINER_BUILD_DIR}/libslim_preload.so"),
        ),
        (
            "SLIM_ROUTER_SOCKET",
            format!("{CONTAINER_SOCKET_DIR}/router.sock"),
        ),
        ("SLIM_PREFIXES", OVERLAY_PREFIXES.join(",")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::CONTAINERS;

    #[test]
    fn inspect_output_parses() {
        let r = parse_inspect(
            &CONTAINERS[0],
            "123 abcd /run/netns/netns-1 10.32.1.4 fd00:32::1:4",
        )
        .unwrap();
        assert_eq!((r.pid, r.v4.to_string()), (123, "10.32.1.4".to_string()));
        assert!(parse_inspect(&CONTAINERS[0], "0 abcd /x 10.32.1.4 fd00:32::1:4").is_err());
        assert!(parse_inspect(&CONTAINERS[0], "123 abcd /x").is_err());
    }

    #[test]
    fn every_podman_call_names_the_lab_storage() {
        let c = podman(&crate::topology::HOSTS[0], &Options::default());
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("--root /var/lib/slim-lab/podman/h1"));
        assert!(joined.contains("--runroot /run/slim-lab/podman/h1/run"));
        assert!(joined.contains("--network-config-dir /run/slim-lab/podman/h1/cni"));
        assert!(joined.contains("--runtime crun"));
    }
}
