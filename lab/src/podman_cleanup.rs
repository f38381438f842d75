//! What `down` removes after the podman runtime, from any state: the containers (through podman,
//! so that CNI releases their addresses and podman its mounts), then whatever a failed or
//! interrupted run left: network namespaces podman made, mounts under the lab's storage, CNI's
//! result cache, the storage itself and the cgroups.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::containers;
use crate::paths::{NETNS_DIR, PODMAN_ROOT, STATE_DIR};
use crate::podman::{self, Options, CGROUP_PARENT};
use crate::topology::HOSTS;

/// libcni's cache of ADD results, one file per attachment, named after the network.
const CNI_RESULTS: &str = "/var/lib/cni/results";

pub fn anything_exists() -> bool {
    Path::new(PODMAN_ROOT).exists() || !cgroup_dirs().is_empty()
}

/// Removes everything the podman runtime made. Runs before the namespaces' processes are
/// killed: containers stopped from outside would race conmon's own cleanup.
pub fn teardown() -> Result<()> {
    let options = Options::read();
    let mut failures = Vec::new();
    for host in &HOSTS {
        if podman::storage_root(host).exists() {
            if let Err(e) = podman::remove_all(host, &options) {
                failures.push(format!("{e:#}"));
            }
        }
    }
    for r in containers::read() {
        remove_netns(&r.sandbox);
    }
    unmount_under(&[Path::new(PODMAN_ROOT), Path::new(STATE_DIR)])?;
    remove_cni_results()?;
    match std::fs::remove_dir_all(PODMAN_ROOT) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {PODMAN_ROOT}"));
        }
        _ => {}
    }
    if let Some(parent) = Path::new(PODMAN_ROOT).parent() {
        // Only if empty: /var/lib/slim-lab holds nothing else today, but may one day.
        let _ = std::fs::remove_dir(parent);
    }
    for dir in cgroup_dirs() {
        remove_cgroup(&dir);
    }
    // A failed `podman rm` does not stop the teardown: what it would have removed was removed
    // by hand above.
    for f in failures {
        eprintln!("slim-lab: warning: {f}; its leftovers were removed by hand");
    }
    Ok(())
}

/// A network namespace podman made and did not delete (`/run/netns/netns-...`).
fn remove_netns(sandbox: &str) {
    let path = Path::new(sandbox);
    if path.parent() == Some(Path::new(NETNS_DIR)) && path.exists() {
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            let _ = crate::ip::run(&["netns", "del", name]);
        }
    }
}

/// Lazily unmounts every mount point below `roots`, deepest first.
fn unmount_under(roots: &[&Path]) -> Result<()> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| roots.iter().any(|r| p.starts_with(r)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        let status = Command::new("umount").arg("-l").arg(&p).status();
        if !status.is_ok_and(|s| s.success()) {
            anyhow::bail!(
                "cannot unmount {} (left by podman); unmount it by hand",
                p.display()
            );
        }
    }
    Ok(())
}

fn remove_cni_results() -> Result<()> {
    let Ok(dir) = std::fs::read_dir(CNI_RESULTS) else {
        return Ok(());
    };
    let prefix = format!("{}-", crate::cni::NETWORK);
    for entry in dir.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// `/sys/fs/cgroup/<controller>/slim-lab` (cgroup v1 and hybrid) or `/sys/fs/cgroup/slim-lab`.
pub fn cgroup_dirs() -> Vec<PathBuf> {
    let name = CGROUP_PARENT.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(name)];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(name)));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// Removes a cgroup and its children, deepest first (a cgroup is removed with rmdir; its files
/// are the kernel's).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
