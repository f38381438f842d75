//! Where the lab keeps its state and where it finds the binaries it runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::runtime::{self, Runtime};
use crate::topology::Host;

/// Router sockets, logs, pid files and the mode; removed whole by `down`.
pub const STATE_DIR: &str = "/run/slim-lab";

/// Serializes `up` and `down`. It sits outside [`STATE_DIR`] and is never removed: unlinking a
/// lock file that another process waits on would let a third one lock a fresh inode alongside.
pub const LOCK_FILE: &str = "/run/slim-lab.lock";

/// The control device of the slim_kern module, which routers in secure mode open.
pub const SLIM_DEV: &str = "/dev/slim";

/// Where `ip netns add` mounts the namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Holds `secure` or `plain`.
pub fn mode_file() -> PathBuf {
    Path::new(STATE_DIR).join("mode")
}

/// A policy of Slim connections for the routers in secure mode (`slim-router --policy-file`),
/// used by a router that starts while it exists (the policy lab test writes it).
pub fn policy_file() -> PathBuf {
    Path::new(STATE_DIR).join("policy.toml")
}

/// Holds `on` or `off`: whether `up` started the routers (`--no-routers` builds only the network).
pub fn routers_file() -> PathBuf {
    Path::new(STATE_DIR).join("routers")
}

/// The router's socket in the lab as recorded (see [`router_socket_for`]).
pub fn router_socket(host: &Host) -> PathBuf {
    router_socket_for(host, runtime::recorded())
}

/// With namespaces `/run/slim-lab/hN.sock`. With podman the socket is alone in a directory of
/// its own ([`router_socket_dir`]): that directory is what a container gets mounted (at
/// [`CONTAINER_SOCKET_DIR`]), so that the socket a restarted router creates anew shows up in
/// the container too.
pub fn router_socket_for(host: &Host, runtime: Runtime) -> PathBuf {
    match runtime {
        Runtime::Netns => Path::new(STATE_DIR).join(format!("{}.sock", host.name)),
        Runtime::Podman => router_socket_dir(host).join("router.sock"),
    }
}

pub fn router_socket_dir(host: &Host) -> PathBuf {
    Path::new(STATE_DIR).join(host.name)
}

/// Where a podman container of the lab sees its host's [`router_socket_dir`].
pub const CONTAINER_SOCKET_DIR: &str = "/run/slim";

/// Where a podman container of the lab sees the build directory (slim-lab's own directory:
/// libslim_preload.so, slim-testprog), read-only.
pub const CONTAINER_BUILD_DIR: &str = "/opt/slim";

/// Holds `netns` or `podman`: how the containers were made.
pub fn runtime_file() -> PathBuf {
    Path::new(STATE_DIR).join("runtime")
}

/// The podman runtime's persistent storage (one `--root` per host). Removed whole by `down`.
pub const PODMAN_ROOT: &str = "/var/lib/slim-lab/podman";

/// The podman runtime's run-time state of one host: podman's `--runroot` and `--tmpdir`, the CNI
/// configuration and IPAM directories. Inside [`STATE_DIR`], so `down` removes it.
pub fn podman_run_dir(host: &Host) -> PathBuf {
    Path::new(STATE_DIR).join("podman").join(host.name)
}

/// Container name, pid, id, addresses and network namespace of each podman container, as `up`
/// read them back from podman.
pub fn containers_file() -> PathBuf {
    Path::new(STATE_DIR).join("containers")
}

/// The directory slim-lab runs from (the build directory): mounted into podman containers.
pub fn build_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the slim-lab executable's own path")?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    exe.parent().map(Path::to_path_buf).with_context(|| {
        format!(
            "slim-lab runs from {}, which has no directory",
            exe.display()
        )
    })
}

/// The root filesystem of the podman containers: `$SLIM_ROOTFS`, else the newest tree that
/// scripts/rootfs/build-rootfs.sh finished.
pub fn rootfs() -> Result<PathBuf> {
    let path = std::env::var_os("SLIM_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOTFS));
    let resolved = std::fs::canonicalize(&path).with_context(|| {
        format!(
            "no root filesystem for the podman containers at {}; build it with \
             scripts/rootfs/build-rootfs.sh (cached in /var/cache/slim-rootfs) or set SLIM_ROOTFS",
            path.display()
        )
    })?;
    if !resolved.join("usr/bin").is_dir() {
        bail!(
            "{} is not a root filesystem (no usr/bin); rebuild it with scripts/rootfs/build-rootfs.sh",
            resolved.display()
        );
    }
    Ok(resolved)
}

/// Where scripts/rootfs/build-rootfs.sh links its newest finished tree.
pub const DEFAULT_ROOTFS: &str = "/var/cache/slim-rootfs/current";

pub fn router_log(host: &Host) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{}.log", host.name))
}

/// The cluster key the routers seal their messages with (`--cluster-key`; sealing is the default).
pub fn cluster_key() -> PathBuf {
    Path::new(STATE_DIR).join("cluster.key")
}

pub fn router_pid_file(host: &Host) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{}.pid", host.name))
}

pub fn netns_path(netns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(netns)
}

/// The router binary: `$SLIM_ROUTER_BIN`, else `slim-router` next to this executable.
pub fn router_bin() -> Result<PathBuf> {
    locate("SLIM_ROUTER_BIN", "slim-router")
}

/// The preload library: `$SLIM_PRELOAD_LIB`, else `libslim_preload.so` next to this executable.
pub fn preload_lib() -> Result<PathBuf> {
    locate("SLIM_PRELOAD_LIB", "libslim_preload.so")
}

/// Returns an absolute path: the router runs from another working directory and the dynamic
/// loader resolves a relative LD_PRELOAD against each program's own one.
fn locate(env: &str, file_name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        return std::fs::canonicalize(&path).with_context(|| {
            format!(
                "{env}={} does not exist; point it at a built {file_name} or unset it",
                path.display()
            )
        });
    }
    let exe = std::env::current_exe()
        .context("cannot find the slim-lab executable's own path; set ${env} instead")?;
    let Some(dir) = exe.parent() else {
        bail!(
            "slim-lab runs from {}, which has no directory; set {env}",
            exe.display()
        );
    };
    let path = dir.join(file_name);
    if !path.exists() {
        bail!(
            "{file_name} not found at {}; build it with `make build` or set {env}",
            path.display()
        );
    }
    Ok(path)
}
