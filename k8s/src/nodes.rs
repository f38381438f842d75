//! The cluster's Node objects, as the API server sends them (only the fields this program needs;
//! serde ignores the rest), and the peers they make: every other node's InternalIP with the
//! routers' peer port.
//!
//! Which nodes are peers: every Node object but our own, whatever its conditions. A NotReady
//! node (its kubelet stopped reporting to the API server) or a cordoned one may still run pods
//! that other pods talk to, and the overlay (Flannel keeps a node's route, neighbour and FDB
//! entries until its Node object is deleted) still reaches them; dropping it from the peers
//! would withdraw its listeners from every router and break connection setup to those pods
//! while the overlay still works. The routers themselves notice an unreachable peer (its
//! connection fails and is retried). A node leaves the peers when its Node object is deleted.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// `v1.NodeList` (`kubectl get nodes -o json` prints the same shape with `kind: List`).
#[derive(Debug, Deserialize)]
pub struct NodeList {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<Node>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// `v1.Node`.
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// `v1.NodeStatus`: only `addresses`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeStatus {
    #[serde(default)]
    pub addresses: Vec<NodeAddress>,
}

/// `v1.NodeAddress`: `type` is Hostname, InternalIP, ExternalIP, InternalDNS or ExternalDNS.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
}

/// Which address families become peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    /// Every InternalIP, IPv4 and IPv6.
    All,
    /// IPv4 InternalIPs only.
    Ipv4,
    /// IPv6 InternalIPs only.
    Ipv6,
}

impl Family {
    /// The family of `ip` (a router listens for peers on its one host address, so on a
    /// dual-stack cluster the peers must be of that address's family).
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    fn admits(self, ip: IpAddr) -> bool {
        match self {
            Family::All => true,
            Family::Ipv4 => ip.is_ipv4(),
            Family::Ipv6 => ip.is_ipv6(),
        }
    }
}

/// What makes a node's addresses peers.
#[derive(Debug, Clone)]
pub struct Selection {
    /// This node's name (left out: a router is not its own peer).
    pub own_node: String,
    /// The routers' peer port.
    pub port: u16,
    pub family: Family,
}

/// The peers of one node: its InternalIPs of the selected family, with the peer port. A node
/// with none (only an ExternalIP or a Hostname) has no peer address: it is logged and left out,
/// since the routers must reach each other without address translation.
pub fn node_peers(node: &Node, sel: &Selection) -> Vec<SocketAddr> {
    if node.metadata.name == sel.own_node {
        return Vec::new();
    }
    let mut out = Vec::new();
    for a in node
        .status
        .addresses
        .iter()
        .filter(|a| a.kind == "InternalIP")
    {
        match a.address.parse::<IpAddr>() {
            Ok(ip) if sel.family.admits(ip) => out.push(SocketAddr::new(ip, sel.port)),
            Ok(_) => {}
            Err(_) => tracing::warn!(
                node = %node.metadata.name,
                address = %a.address,
                "node InternalIP is not an IP address; skipped"
            ),
        }
    }
    if out.is_empty() {
        tracing::warn!(
            node = %node.metadata.name,
            family = ?sel.family,
            "node has no InternalIP of the selected family; it is not a peer"
        );
    }
    out
}

/// The cluster's nodes as the last list and the watch events since then left them.
#[derive(Debug, Default)]
pub struct NodeSet {
    nodes: BTreeMap<String, Node>,
    /// Where a watch resumes.
    pub resource_version: Option<String>,
}

/// One event of a watch on nodes (`v1.WatchEvent`).
#[derive(Debug, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub object: serde_json::Value,
}

/// What an event did to the set.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// A node was added, changed or deleted, or a bookmark moved the resource version.
    Ok,
    /// The API server ended the watch with an ERROR event (`v1.Status`); the caller lists
    /// again, at once for 410 Gone (the resource version left the server's window), after its
    /// backoff for anything else.
    Ended { code: i64, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("watch event of unknown type `{0}`")]
    UnknownType(String),
    #[error("malformed {kind} watch event: {source}")]
    Malformed {
        kind: String,
        source: serde_json::Error,
    },
}

/// `v1.Status`, as an ERROR event carries it.
#[derive(Debug, Deserialize)]
struct Status {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

impl NodeSet {
    pub fn from_list(list: NodeList) -> Self {
        let nodes = list
            .items
            .into_iter()
            .map(|n| (n.metadata.name.clone(), n))
            .collect();
        NodeSet {
            nodes,
            resource_version: list.metadata.resource_version.filter(|v| !v.is_empty()),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Every peer, sorted and without duplicates.
    pub fn peers(&self, sel: &Selection) -> BTreeSet<SocketAddr> {
        self.nodes
            .values()
            .flat_map(|n| node_peers(n, sel))
            .collect()
    }

    pub fn apply(&mut self, ev: WatchEvent) -> Result<Applied, EventError> {
        let malformed = |source| EventError::Malformed {
            kind: ev.kind.clone(),
            source,
        };
        match ev.kind.as_str() {
            "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" => {
                let node: Node = serde_json::from_value(ev.object.clone()).map_err(malformed)?;
                if let Some(rv) = node.metadata.resource_version.clone() {
                    self.resource_version = Some(rv);
                }
                match ev.kind.as_str() {
                    "ADDED" | "MODIFIED" => {
                        self.nodes.insert(node.metadata.name.clone(), node);
                    }
                    "DELETED" => {
                        self.nodes.remove(&node.metadata.name);
                    }
                    _ => {}
                }
                Ok(Applied::Ok)
            }
            "ERROR" => {
                let s: Status = serde_json::from_value(ev.object.clone()).map_err(malformed)?;
                Ok(Applied::Ended {
                    code: s.code,
                    message: s.message,
                })
            }
            other => Err(EventError::UnknownType(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/nodelist.json");
    const EVENTS: &str = include_str!("../tests/fixtures/watch-events.jsonl");

    fn sel(own: &str, family: Family) -> Selection {
        Selection {
            own_node: own.into(),
            port: 7788,
            family,
        }
    }

    fn addrs(s: &BTreeSet<SocketAddr>) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn kubectl_nodelist_to_peers() {
        let list: NodeList = serde_json::from_str(FIXTURE).unwrap();
        assert_eq!(list.items.len(), 6);
        let set = NodeSet::from_list(list);
        // kubectl prints `kind: List` with an empty resourceVersion: nothing to resume from.
        assert_eq!(set.resource_version, None);
        // From worker-1: itself left out; the NotReady worker-2 and the cordoned worker-5 stay;
        // worker-3 (ExternalIP and Hostname only) has no peer address; worker-4 is IPv6-only.
        assert_eq!(
            addrs(&set.peers(&sel("worker-1", Family::Ipv4))),
            [
                "192.168.1.10:7788",
                "192.168.1.12:7788",
                "192.168.1.15:7788"
            ]
        );
        assert_eq!(
            addrs(&set.peers(&sel("worker-1", Family::Ipv6))),
            ["[fd00:1::14]:7788"]
        );
        assert_eq!(
            addrs(&set.peers(&sel("worker-4", Family::All))),
            [
                "192.168.1.10:7788",
                "192.168.1.11:7788",
                "192.168.1.12:7788",
                "192.168.1.15:7788",
                "[fd00:1::11]:7788"
            ]
        );
    }

    #[test]
    fn api_server_nodelist_keeps_its_resource_version() {
        let list: NodeList = serde_json::from_str(
            r#"{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"4711"},"items":[]}"#,
        )
        .unwrap();
        let set = NodeSet::from_list(list);
        assert_eq!(set.resource_version.as_deref(), Some("4711"));
        assert_eq!(set.len(), 0);
        assert!(set.peers(&sel("a", Family::All)).is_empty());
    }

    #[test]
    fn watch_events_add_change_delete_and_expire() {
        let list: NodeList = serde_json::from_str(FIXTURE).unwrap();
        let mut set = NodeSet::from_list(list);
        let mut results = Vec::new();
        for line in EVENTS.lines().filter(|l| !l.trim().is_empty()) {
            let ev: WatchEvent = serde_json::from_str(line).unwrap();
            results.push(set.apply(ev).unwrap());
        }
        // worker-6 added, worker-2 deleted, cp-1 changed its address, a bookmark, then 410.
        assert_eq!(
            addrs(&set.peers(&sel("worker-1", Family::Ipv4))),
            [
                "192.168.1.15:7788",
                "192.168.1.16:7788",
                "192.168.1.20:7788"
            ]
        );
        assert_eq!(set.resource_version.as_deref(), Some("9005"));
        assert!(results[..4].iter().all(|r| *r == Applied::Ok));
        assert!(
            matches!(&results[4], Applied::Ended { code: 410, message } if message.contains("too old"))
        );
    }

    #[test]
    fn unknown_event_type_is_an_error() {
        let mut set = NodeSet::default();
        let ev: WatchEvent = serde_json::from_str(r#"{"type":"SURPRISE","object":{}}"#).unwrap();
        assert!(matches!(set.apply(ev), Err(EventError::UnknownType(t)) if t == "SURPRISE"));
        let ev: WatchEvent =
            serde_json::from_str(r#"{"type":"ADDED","object":{"metadata":"not a map"}}"#).unwrap();
        assert!(matches!(set.apply(ev), Err(EventError::Malformed { .. })));
    }
}
