//! `slim-lab rm|run|restart NODE`: remove one podman container, create it again, or both, keeping
//! the lab's records (`/run/slim-lab/containers`, the namespace name `slim-cN`) in step, so that
//! `addr`, `exec`, `status` and `up` see what podman has. Tests use them to check what a
//! container leaves behind in the routers when it goes, and what it gets back when it returns.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};

use crate::network::netns_exists;
use crate::podman::{self, Options};
use crate::runtime::Runtime;
use crate::state::{self, recorded_runtime};
use crate::topology::Container;
use crate::{containers, ip, paths};

/// What `run` creates the container with.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunOptions {
    /// Without the lab's `--annotation`s (so slim-oci injects no Slim into it).
    pub plain: bool,
    /// The addresses to ask IPAM for; IPAM's next free ones when absent.
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

fn require_podman() -> Result<()> {
    if recorded_runtime() != Runtime::Podman {
        bail!(
            "rm, run and restart work on podman containers; bring the lab up with \
             `slim-lab up --runtime podman`"
        );
    }
    Ok(())
}

/// `podman rm --force` of the container, its namespace name and its record. Succeeds when it
/// does not exist.
pub fn rm(c: &Container) -> Result<()> {
    require_podman()?;
    let _lock = state::lock()?;
    remove(c)
}

fn remove(c: &Container) -> Result<()> {
    if netns_exists(c.netns) {
        ip::run(&["netns", "del", c.netns])?;
    }
    podman::remove(c, &Options::read())?;
    let rest: Vec<_> = containers::read()
        .into_iter()
        .filter(|r| r.name != c.name)
        .collect();
    containers::write(&rest)
}

/// Creates the container as `up` does (the recorded runtime and annotations, unless `plain`),
/// records it and names its network namespace. Fails if it exists.
pub fn run(c: &Container, opts: RunOptions) -> Result<()> {
    require_podman()?;
    let _lock = state::lock()?;
    create(c, opts)
}

fn create(c: &Container, opts: RunOptions) -> Result<()> {
    if containers::find(c).is_some() {
        bail!(
            "{} exists; remove it first with `slim-lab rm {}` (or use `restart`)",
            c.name,
            c.name
        );
    }
    let addrs = match (opts.v4, opts.v6) {
        (Some(v4), Some(v6)) => Some((v4, v6)),
        (None, None) => None,
        _ => bail!("give both --ip and --ip6, or neither"),
    };
    let mut options = Options::read();
    if opts.plain {
        options.annotations.clear();
    }
    let record = podman::create(c, &paths::rootfs()?, &options, addrs)?;
    ip::run(&["netns", "attach", c.netns, &record.pid.to_string()])?;
    println!(
        "{} on {}: pid {}, {} {}",
        c.name, c.host, record.pid, record.v4, record.v6
    );
    let mut records = containers::read();
    records.push(record);
    containers::write(&records)
}

/// `rm` then `run` with the container's old addresses (unless `opts` names others): the same
/// container name and address, a fresh container (new processes, new network namespace).
pub fn restart(c: &Container, mut opts: RunOptions) -> Result<()> {
    require_podman()?;
    let _lock = state::lock()?;
    if let Some(old) = containers::find(c) {
        opts.v4 = opts.v4.or(Some(old.v4));
        opts.v6 = opts.v6.or(Some(old.v6));
    }
    remove(c)?;
    create(c, opts)
}
