//! `slim-lab router HOST start|stop|restart`: one host's router alone, without touching the
//! network or any other process in the namespaces, so that servers and connections in the
//! containers live on while their router goes away and comes back.

use anyhow::{bail, Result};

use crate::network::netns_exists;
use crate::state::{self, Mode};
use crate::topology::Host;
use crate::{paths, routers};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Start the router unless it already serves, in the lab's recorded mode.
    Start,
    /// SIGTERM the router, SIGKILL after 5 s; succeeds when none runs.
    Stop,
    /// Stop, then start.
    Restart,
}

pub fn router(host: &'static Host, action: Action) -> Result<()> {
    let _lock = state::lock()?;
    let Some(mode) = state::read() else {
        bail!("the lab is not up (no mode recorded); run `slim-lab up` first");
    };
    if !netns_exists(host.netns) {
        bail!(
            "the namespace {} is missing; run `slim-lab up` to rebuild the lab",
            host.netns
        );
    }
    if action != Action::Stop && !mode.routers {
        bail!("the lab was built with --no-routers; run `slim-lab up` to build it with routers");
    }
    if action != Action::Start {
        match routers::stop(host)? {
            Some(pid) => println!("router of {} stopped (pid {pid})", host.name),
            None => println!("router of {} was not running", host.name),
        }
    }
    if action != Action::Stop {
        start(host, mode)?;
    }
    Ok(())
}

fn start(host: &'static Host, mode: Mode) -> Result<()> {
    let current = routers::state(host);
    if current.serving() {
        println!(
            "router of {} already running (pid {})",
            host.name,
            current.pid.unwrap_or_default()
        );
        return Ok(());
    }
    if current.alive {
        bail!(
            "the router of {} runs but does not answer on its socket; \
             use `slim-lab router {} restart`",
            host.name,
            host.name
        );
    }
    start_dead(&[host], mode)?;
    println!(
        "router of {} started ({})",
        host.name,
        if mode.secure { "secure" } else { "plain" }
    );
    Ok(())
}

/// Starts the routers of `hosts`, none of which runs, and waits until they all answer.
pub fn start_dead(hosts: &[&'static Host], mode: Mode) -> Result<()> {
    let bin = paths::router_bin()?;
    let starting = hosts
        .iter()
        .map(|host| routers::spawn(host, &bin, mode.secure))
        .collect::<Result<Vec<_>>>()?;
    routers::wait_ready(starting)
}
