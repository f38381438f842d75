//! `slim-lab router HOST start|stop|restart`: one host's router alone, without touching the
//! network or any other process in the namespaces, so that servers and connections in the
//! containers live on while their router goes away and comes back. `slim-lab routers
//! plain|secure`: both routers restarted in that mode, the same way (slim-bench's `slim_secure`
//! mode switches between the two in one run).

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::network::netns_exists;
use crate::runtime::Runtime;
use crate::state::{self, Mode};
use crate::topology::{Host, HOSTS};
use crate::{health, paths, routers};

/// What `slim-lab routers` switches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RouterMode {
    /// Routers without --secure: host sockets are not restricted.
    Plain,
    /// Routers with --secure: every host socket restricted by slim_kern (needs /dev/slim).
    Secure,
}

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

/// `slim-lab routers plain|secure`: restarts both routers in that mode and records it, leaving
/// the network, the containers and their programs alone (a Slim listener registers again with
/// its new router on its next accept). Nothing is touched when the mode cannot be had: secure
/// mode without the module's device. Already in that mode with both routers serving the current
/// build: nothing to do.
pub fn set_mode(want: RouterMode) -> Result<()> {
    let _lock = state::lock()?;
    let Some(mode) = state::read() else {
        bail!("the lab is not up (no mode recorded); run `slim-lab up` first");
    };
    if !mode.routers {
        bail!("the lab was built with --no-routers; run `slim-lab up` to build it with routers");
    }
    if mode.runtime == Runtime::Podman {
        bail!(
            "with --runtime podman the mode is also in slim-oci's configuration of each \
             container; rebuild the lab instead: `slim-lab down; slim-lab up --runtime podman \
             [--secure] ...`"
        );
    }
    for host in &HOSTS {
        if !netns_exists(host.netns) {
            bail!(
                "the namespace {} is missing; run `slim-lab up` to rebuild the lab",
                host.netns
            );
        }
    }
    let secure = want == RouterMode::Secure;
    if secure && !Path::new(paths::SLIM_DEV).exists() {
        bail!(
            "{} does not exist: secure mode needs the slim_kern kernel module (`insmod \
             slim_kern.ko`, built by `make kmod`; `make vm-test` and `make vm-bench` run it in \
             a QEMU guest); the routers were left running in {} mode",
            paths::SLIM_DEV,
            mode.name()
        );
    }
    let new = Mode { secure, ..mode };
    if mode == new && health::router_problems(mode).is_empty() {
        println!("routers already run in {} mode, nothing to do", new.name());
        return Ok(());
    }
    for host in &HOSTS {
        if let Some(pid) = routers::stop(host)? {
            println!("router of {} stopped (pid {pid})", host.name);
        }
    }
    if let Err(e) = start_dead(&HOSTS.iter().collect::<Vec<_>>(), new) {
        // Back to the recorded mode, so that a failed switch leaves a working lab.
        for host in &HOSTS {
            let _ = routers::stop(host);
        }
        let restored = start_dead(&HOSTS.iter().collect::<Vec<_>>(), mode);
        return Err(e).with_context(|| match restored {
            Ok(()) => format!(
                "the routers did not start in {} mode; they run in {} mode again",
                new.name(),
                mode.name()
            ),
            Err(r) => format!(
                "the routers did not start in {} mode, nor again in {} mode ({r:#}); \
                 `slim-lab up` repairs them",
                new.name(),
                mode.name()
            ),
        });
    }
    state::write(new)?;
    println!("routers of h1, h2 started in {} mode", new.name());
    Ok(())
}
