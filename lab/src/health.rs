//! Whether the lab is exactly as `up` builds it: the check behind `up`'s idempotence and
//! `status`'s exit code.

use anyhow::Result;

use crate::containers;
use crate::network::node_problems;
use crate::processes::is_running;
use crate::routers;
use crate::runtime::Runtime;
use crate::state::Mode;
use crate::topology::{Host, Node, CONTAINERS, HOSTS};

/// Everything that differs from a lab built in `mode`; empty means fully up.
pub fn problems(mode: Mode) -> Result<Vec<String>> {
    let mut problems = network_problems(mode.runtime)?;
    problems.extend(router_problems(mode).into_iter().map(|(_, p)| p));
    Ok(problems)
}

/// What differs in the namespaces, devices and addresses, routers aside; with podman, also
/// whether each container's recorded init process still runs.
pub fn network_problems(runtime: Runtime) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for node in Node::all() {
        problems.extend(node_problems(node, runtime)?);
    }
    if runtime == Runtime::Podman {
        for c in &CONTAINERS {
            match containers::find(c) {
                None => problems.push(format!("no podman container of {} is recorded", c.name)),
                Some(r) if !is_running(r.pid) => problems.push(format!(
                    "the podman container of {} (init pid {}) is not running",
                    c.name, r.pid
                )),
                Some(_) => {}
            }
        }
    }
    Ok(problems)
}

/// What differs in the routers, with the host each problem is about.
pub fn router_problems(mode: Mode) -> Vec<(&'static Host, String)> {
    let mut problems = Vec::new();
    for host in &HOSTS {
        let router = routers::state(host);
        if mode.routers && !router.serving() {
            problems.push((
                host,
                format!(
                    "the router of {} is {}",
                    host.name,
                    if router.alive {
                        "alive but not answering on its socket"
                    } else {
                        "not running"
                    }
                ),
            ));
        }
        if mode.routers && router.alive {
            if let Some(why) = stale_binary(router.pid) {
                problems.push((host, format!("the router of {} {why}", host.name)));
            }
        }
        if !mode.routers && router.alive {
            problems.push((
                host,
                format!(
                    "the router of {} runs although the lab was built without routers",
                    host.name
                ),
            ));
        }
    }
    problems
}

/// Whether a running router is not the binary `up` would start now (rebuilt or another
/// checkout's): its tests would then run against old code.
fn stale_binary(pid: Option<u32>) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{}/exe", pid?)).ok()?;
    let text = exe.display().to_string();
    if text.ends_with(" (deleted)") {
        return Some("runs a binary that has since been rebuilt".to_string());
    }
    let want = crate::paths::router_bin().ok()?;
    let want = std::fs::canonicalize(&want).unwrap_or(want);
    (exe != want).then(|| format!("runs {} instead of {}", exe.display(), want.display()))
}
