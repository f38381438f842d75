//! `slim-lab up`: build the lab from scratch unless it already matches.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::state::{self, Mode};
use crate::topology::{CONTAINERS, HOSTS};
use crate::{down, health, ip, network, paths, routers};

/// Runs one named step and prints its duration, so a slow `up` shows where the time went.
fn step<T>(name: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let result = work().with_context(|| format!("step `{name}` failed"))?;
    println!("{name:<40}{:>8.1} ms", start.elapsed().as_secs_f64() * 1e3);
    Ok(result)
}

pub fn up(mode: Mode) -> Result<()> {
    let _lock = state::lock()?;
    // Find the router before touching anything, so a missing build leaves a working lab alone.
    let router_bin = if mode.routers {
        Some(paths::router_bin()?)
    } else {
        None
    };
    if state::read() == Some(mode) && health::problems(mode)?.is_empty() {
        println!("lab already up ({}), nothing to do", mode.describe());
        return Ok(());
    }

    let start = Instant::now();
    if down::anything_exists() {
        step("tear down the old lab", down::teardown)?;
    }
    step("namespaces and veth pairs", || {
        state::create_dir()?;
        ip::batch(None, &network::namespace_commands())
    })?;
    for host in &HOSTS {
        step(&format!("{}: underlay, bridge, vxlan", host.name), || {
            ip::batch(Some(host.netns), &network::host_commands(host))
        })?;
    }
    for c in &CONTAINERS {
        step(&format!("{}: overlay addresses", c.name), || {
            ip::batch(Some(c.netns), &network::container_commands(c))
        })?;
    }
    if let Some(bin) = &router_bin {
        step("routers", || {
            let starting = HOSTS
                .iter()
                .map(|host| routers::spawn(host, bin, mode.secure))
                .collect::<Result<Vec<_>>>()?;
            routers::wait_ready(starting)
        })
        .context("the half-built lab is left for inspection; `slim-lab down` removes it")?;
    }
    step("verify", || {
        let problems = health::problems(mode)?;
        if !problems.is_empty() {
            bail!(
                "the lab was built but does not check out:\n  {}",
                problems.join("\n  ")
            );
        }
        state::write(mode)
    })?;
    println!(
        "lab up in {:.2} s ({})",
        start.elapsed().as_secs_f64(),
        mode.describe()
    );
    Ok(())
}
