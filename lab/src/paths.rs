//! Where the lab keeps its state and where it finds the binaries it runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::topology::Host;

/// Router sockets, logs, pid files and the mode; removed whole by `down`.
pub const STATE_DIR: &str = "/run/slim-lab";

/// Serializes `up` and `down`. It sits outside [`STATE_DIR`] and is never removed: unlinking a
/// lock file that another process waits on would let a third one lock a fresh inode alongside.
pub const LOCK_FILE: &str = "/run/slim-lab.lock";

/// Where `ip netns add` mounts the namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Holds `secure` or `plain`.
pub fn mode_file() -> PathBuf {
    Path::new(STATE_DIR).join("mode")
}

/// Holds `on` or `off`: whether `up` started the routers (`--no-routers` builds only the network).
pub fn routers_file() -> PathBuf {
    Path::new(STATE_DIR).join("routers")
}

pub fn router_socket(host: &Host) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{}.sock", host.name))
}

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
