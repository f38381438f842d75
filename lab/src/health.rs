//! Whether the lab is exactly as `up` builds it: the check behind `up`'s idempotence and
//! `status`'s exit code.

use anyhow::Result;

use crate::network::node_problems;
use crate::routers;
use crate::state::Mode;
use crate::topology::{Node, HOSTS};

/// Everything that differs from a lab built in `mode`; empty means fully up.
pub fn problems(mode: Mode) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for node in Node::all() {
        problems.extend(node_problems(node)?);
    }
    for host in &HOSTS {
        let router = routers::state(host);
        if mode.routers && !router.serving() {
            problems.push(format!(
                "the router of {} is {}",
                host.name,
                if router.alive {
                    "alive but not answering on its socket"
                } else {
                    "not running"
                }
            ));
        }
        if !mode.routers && router.alive {
            problems.push(format!(
                "the router of {} runs although the lab was built without routers",
                host.name
            ));
        }
    }
    Ok(problems)
}
