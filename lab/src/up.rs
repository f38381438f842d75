//! `slim-lab up`: build the lab from scratch unless it already matches.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::podman::{self, Options};
use crate::runtime::Runtime;
use crate::state::{self, Mode};
use crate::topology::{Host, CONTAINERS, HOSTS};
use crate::{containers, down, health, ip, network, paths, router_cmd, routers};

/// Runs one named step and prints its duration, so a slow `up` shows where the time went.
fn step<T>(name: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let result = work().with_context(|| format!("step `{name}` failed"))?;
    println!("{name:<40}{:>8.1} ms", start.elapsed().as_secs_f64() * 1e3);
    Ok(result)
}

/// Builds the lab in `mode`; `options` only matter with the podman runtime.
pub fn up(mode: Mode, options: &Options) -> Result<()> {
    let _lock = state::lock()?;
    // Find the router and the root filesystem before touching anything, so that a missing build
    // leaves a working lab alone.
    let router_bin = if mode.routers {
        Some(paths::router_bin()?)
    } else {
        None
    };
    let rootfs = match mode.runtime {
        Runtime::Podman => Some(paths::rootfs()?),
        Runtime::Netns => None,
    };
    let same_options = mode.runtime == Runtime::Netns || Options::read() == *options;
    if state::read() == Some(mode)
        && same_options
        && health::network_problems(mode.runtime)?.is_empty()
    {
        let router_problems = health::router_problems(mode);
        if router_problems.is_empty() {
            println!("lab already up ({}), nothing to do", mode.describe());
            return Ok(());
        }
        // Only routers are wrong: fix just them, so that servers and connections in the
        // containers survive.
        let mut hosts: Vec<&'static Host> = router_problems.iter().map(|(h, _)| *h).collect();
        hosts.dedup();
        return repair_routers(&hosts, mode);
    }

    let start = Instant::now();
    if down::anything_exists() {
        step("tear down the old lab", down::teardown)?;
    }
    step("namespaces and veth pairs", || {
        state::create_dir()?;
        state::write_runtime(mode.runtime)?;
        ip::batch(None, &network::namespace_commands(mode.runtime))
    })?;
    for host in &HOSTS {
        step(&format!("{}: underlay, bridge, vxlan", host.name), || {
            if mode.runtime == Runtime::Podman {
                routers::prepare_socket_dir(host)?;
            }
            ip::batch(
                Some(host.netns),
                &network::host_commands(host, mode.runtime),
            )
        })?;
    }
    // Podman containers come after the routers: slim-oci injects Slim only when the router's
    // socket exists.
    if mode.runtime == Runtime::Netns {
        for c in &CONTAINERS {
            step(&format!("{}: overlay addresses", c.name), || {
                ip::batch(Some(c.netns), &network::container_commands(c))
            })?;
        }
    }
    step("sysctls", || {
        // Podman containers got theirs from `podman run --sysctl`.
        let namespaces: Vec<&str> = match mode.runtime {
            Runtime::Netns => crate::topology::all_netns().collect(),
            Runtime::Podman => HOSTS.iter().map(|h| h.netns).collect(),
        };
        for ns in namespaces {
            network::tune(ns)?;
        }
        Ok(())
    })?;
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
    if let Some(rootfs) = &rootfs {
        podman_containers(rootfs, options, mode.secure)
            .context("the half-built lab is left for inspection; `slim-lab down` removes it")?;
    }
    verify(mode)?;
    println!(
        "lab up in {:.2} s ({})",
        start.elapsed().as_secs_f64(),
        mode.describe()
    );
    Ok(())
}

/// The podman runtime's containers: the CNI network on each host, then each container, its
/// addresses read back from podman and recorded, and its network namespace given the lab's name
/// for it (`ip netns attach`), so that `ip -n slim-c1`, `counters` and `status` work as with the
/// namespace runtime.
fn podman_containers(rootfs: &std::path::Path, options: &Options, secure: bool) -> Result<()> {
    step("podman: CNI networks", || {
        options.write()?;
        for host in &HOSTS {
            podman::write_network(host)?;
            if options.slim_oci {
                podman::write_slim_oci_config(host, secure)?;
            }
        }
        Ok(())
    })?;
    let mut records = Vec::new();
    for c in &CONTAINERS {
        let record = step(&format!("{}: podman container", c.name), || {
            let record = podman::create(c, rootfs, options, None)?;
            ip::run(&["netns", "attach", c.netns, &record.pid.to_string()])?;
            Ok(record)
        })?;
        println!(
            "    {} on {}: pid {}, {} {}",
            c.name, c.host, record.pid, record.v4, record.v6
        );
        records.push(record);
        containers::write(&records)?;
    }
    Ok(())
}

fn verify(mode: Mode) -> Result<()> {
    step("verify", || {
        let problems = health::problems(mode)?;
        if !problems.is_empty() {
            bail!(
                "the lab was built but does not check out:\n  {}",
                problems.join("\n  ")
            );
        }
        state::write(mode)
    })
}

/// The network is intact and only the routers of `hosts` are wrong (dead, not answering, or
/// running in a lab built without routers): stop them and, with routers on, start them again.
fn repair_routers(hosts: &[&'static Host], mode: Mode) -> Result<()> {
    let start = Instant::now();
    let names: Vec<&str> = hosts.iter().map(|h| h.name).collect();
    let verb = if mode.routers { "restart" } else { "stop" };
    step(
        &format!("{verb} the router of {}", names.join(", ")),
        || {
            for host in hosts {
                routers::stop(host)?;
            }
            if mode.routers {
                router_cmd::start_dead(hosts, mode)?;
            }
            Ok(())
        },
    )?;
    verify(mode)?;
    println!(
        "lab up in {:.2} s ({}, network kept)",
        start.elapsed().as_secs_f64(),
        mode.describe()
    );
    Ok(())
}
