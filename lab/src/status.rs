//! `slim-lab status` and `slim-lab nodes`: what exists, as text.

use anyhow::Result;

use crate::network::{byte_counters, global_addrs, netns_exists};
use crate::paths::{router_log, router_socket};
use crate::state::{self, Mode};
use crate::topology::{Node, VXLAN_DEV};
use crate::{containers, health, routers};

/// Prints the lab's state and returns whether it is fully up.
pub fn status() -> Result<bool> {
    let recorded = state::read();
    match recorded {
        Some(mode) => println!("mode: {}", mode.describe()),
        None => println!("mode: not recorded (`slim-lab up` has not finished)"),
    }
    for node in Node::all() {
        print_node(node, recorded)?;
    }
    // Without a recorded mode, judge the network alone, as `up --no-routers` builds it.
    let mode = recorded.unwrap_or(Mode {
        secure: false,
        routers: false,
        runtime: state::recorded_runtime(),
    });
    let mut problems = health::problems(mode)?;
    if recorded.is_none() {
        problems.push("no mode recorded: run `slim-lab up`".to_string());
    }
    if problems.is_empty() {
        println!("lab is up");
    } else {
        println!("lab is NOT fully up:");
        for p in &problems {
            println!("  - {p}");
        }
    }
    Ok(problems.is_empty())
}

fn print_node(node: Node, mode: Option<Mode>) -> Result<()> {
    let ns = node.netns();
    let role = match node {
        Node::Host(_) => "host".to_string(),
        Node::Container(c) => format!("container on {}", c.host),
    };
    if !netns_exists(ns) {
        println!("{node} ({ns}, {role}): namespace missing");
        return Ok(());
    }
    let addrs: Vec<String> = global_addrs(ns)?
        .into_iter()
        .map(|a| format!("{} {}", a.dev, a.cidr))
        .collect();
    println!("{node} ({ns}, {role}): {}", addrs.join(", "));
    if let Node::Container(c) = node {
        if let Some(r) = containers::find(c) {
            println!(
                "  podman container {}: init pid {}, id {:.12}, netns {}",
                crate::podman::container_name(c),
                r.pid,
                r.id,
                r.sandbox
            );
        }
    }
    if let Node::Host(host) = node {
        if mode.is_some_and(|m| !m.routers) {
            println!("  router: not started (up --no-routers)");
        } else {
            let r = routers::state(host);
            let pid = r.pid.map_or("none".to_string(), |p| p.to_string());
            println!(
                "  router: pid {pid} {}, socket {} {}, log {}",
                if r.alive { "alive" } else { "dead" },
                router_socket(host).display(),
                if r.answering {
                    "answering"
                } else {
                    "not answering"
                },
                router_log(host).display(),
            );
        }
        match byte_counters(ns, VXLAN_DEV) {
            Ok((rx, tx)) => println!("  {VXLAN_DEV}: rx_bytes {rx} tx_bytes {tx}"),
            Err(_) => println!("  {VXLAN_DEV}: missing"),
        }
    }
    Ok(())
}

/// One line per node: name, kind, host, IPv4, IPv6, namespace. With podman, the addresses are
/// the ones IPAM gave the containers.
pub fn nodes() -> Result<()> {
    for node in Node::all() {
        println!(
            "{:<4}{:<11}{:<4}{:<14}{:<14}{}",
            node.name(),
            node.kind(),
            node.host().name,
            containers::addr(node, false)?,
            containers::addr(node, true)?,
            node.netns()
        );
    }
    Ok(())
}
