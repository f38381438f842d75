//! Where the containers are: the addresses, pids and namespaces that `up --runtime podman` read
//! back from podman, recorded in the state directory, and the addresses every command reports
//! whichever the runtime.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};

use crate::paths::containers_file;
use crate::runtime::Runtime;
use crate::state::recorded_runtime;
use crate::topology::{Container, Node};

/// One podman container as podman reported it after it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The lab's short name (c1).
    pub name: String,
    /// The container's init process, as the host sees it.
    pub pid: u32,
    /// Podman's container id.
    pub id: String,
    /// The addresses CNI's host-local IPAM gave it.
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The network namespace file podman made (`/run/netns/netns-...`).
    pub sandbox: String,
}

impl Record {
    fn line(&self) -> String {
        format!(
            "{} {} {} {} {} {}",
            self.name, self.pid, self.id, self.v4, self.v6, self.sandbox
        )
    }

    fn parse(line: &str) -> Option<Record> {
        let mut w = line.split_whitespace();
        let record = Record {
            name: w.next()?.to_string(),
            pid: w.next()?.parse().ok()?,
            id: w.next()?.to_string(),
            v4: w.next()?.parse().ok()?,
            v6: w.next()?.parse().ok()?,
            sandbox: w.next()?.to_string(),
        };
        w.next().is_none().then_some(record)
    }
}

pub fn write(records: &[Record]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        let _ = writeln!(text, "{}", r.line());
    }
    let path = containers_file();
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Every recorded container; none when the lab runs namespaces or is down.
pub fn read() -> Vec<Record> {
    std::fs::read_to_string(containers_file())
        .map(|text| text.lines().filter_map(Record::parse).collect())
        .unwrap_or_default()
}

pub fn find(c: &Container) -> Option<Record> {
    read().into_iter().find(|r| r.name == c.name)
}

/// The address others reach a node at: for a podman container the one IPAM gave it (as
/// recorded), otherwise the topology's fixed one.
pub fn addr(node: Node, v6: bool) -> Result<IpAddr> {
    let Node::Container(c) = node else {
        return Ok(node.addr(v6));
    };
    if recorded_runtime() != Runtime::Podman {
        return Ok(node.addr(v6));
    }
    let Some(r) = find(c) else {
        bail!(
            "the lab runs podman containers but no address of {} is recorded in {}; \
             run `slim-lab up --runtime podman`",
            c.name,
            containers_file().display()
        );
    };
    Ok(if v6 { r.v6.into() } else { r.v4.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines_round_trip() {
        let r = Record {
            name: "c1".into(),
            pid: 42,
            id: "abc".into(),
            v4: "10.32.1.5".parse().unwrap(),
            v6: "fd00:32::1:5".parse().unwrap(),
            sandbox: "/run/netns/netns-x".into(),
        };
        assert_eq!(Record::parse(&r.line()), Some(r));
        assert_eq!(Record::parse("c1 42"), None);
    }
}
