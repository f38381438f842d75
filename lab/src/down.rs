//! `slim-lab down`: remove everything the lab made, from any state, crashed or absent.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::network::netns_exists;
use crate::paths::STATE_DIR;
use crate::processes::{netns_pids, terminate};
use crate::topology::{all_netns, HOSTS};
use crate::{ip, podman_cleanup, routers, state};

const GRACE: Duration = Duration::from_secs(2);

pub fn anything_exists() -> bool {
    all_netns().any(netns_exists)
        || Path::new(STATE_DIR).exists()
        || podman_cleanup::anything_exists()
}

/// Stops every process of the lab, deletes its namespaces (which deletes every device in
/// them) and the state directory. Does not take the lock: `up` calls it while holding it.
pub fn teardown() -> Result<()> {
    // Podman's containers first, through podman, while their hosts' namespaces still exist.
    if podman_cleanup::anything_exists() {
        podman_cleanup::teardown()?;
    }
    // The pid files catch a router whose namespace was already deleted by hand (a running
    // process keeps its namespace alive, but `ip netns pids` can no longer name it).
    let mut pids: Vec<u32> = HOSTS.iter().filter_map(routers::live_pid).collect();
    for ns in all_netns().filter(|ns| netns_exists(ns)) {
        pids.extend(netns_pids(ns));
    }
    terminate(&pids, GRACE);

    let deletions: Vec<String> = all_netns()
        .filter(|ns| netns_exists(ns))
        .map(|ns| format!("netns del {ns}"))
        .collect();
    if !deletions.is_empty() {
        ip::batch(None, &deletions).context("cannot delete the lab's namespaces")?;
    }
    match std::fs::remove_dir_all(STATE_DIR) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove the state directory {STATE_DIR}"))
        }
        _ => Ok(()),
    }
}

pub fn down() -> Result<()> {
    let _lock = state::lock()?;
    if !anything_exists() {
        println!("lab is not up, nothing to remove");
        return Ok(());
    }
    teardown()?;
    println!("lab down");
    Ok(())
}
