//! The lab's fixed topology: every name and address lives here, so the network builder, the
//! checker and the CLI are all driven by these tables instead of repeating literals.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Every namespace, device and state file the lab makes starts with this, so nothing is
/// mistaken for somebody else's.
pub const NAME_PREFIX: &str = "slim-";

pub const UNDERLAY_MTU: u32 = 1500;
/// The underlay MTU minus the VXLAN encapsulation (outer IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14).
pub const OVERLAY_MTU: u32 = 1450;

pub const UNDERLAY_V4_PREFIX_LEN: u8 = 24;
pub const UNDERLAY_V6_PREFIX_LEN: u8 = 64;
pub const OVERLAY_V4_PREFIX_LEN: u8 = 12;
pub const OVERLAY_V6_PREFIX_LEN: u8 = 64;

/// The overlay prefixes as the router and the preload library take them.
pub const OVERLAY_PREFIXES: [&str; 2] = ["10.32.0.0/12", "fd00:32::/64"];

pub const VXLAN_DEV: &str = "slim-vx";
pub const VXLAN_ID: u32 = 42;
pub const VXLAN_PORT: u16 = 4789;
pub const BRIDGE_DEV: &str = "slim-br";
pub const CONTAINER_DEV: &str = "eth0";

/// The TCP port every router listens on in its host namespace for the other routers.
pub const ROUTER_PORT: u16 = 7788;

/// A "host": a network namespace standing for one machine of the cluster.
#[derive(Debug, PartialEq, Eq)]
pub struct Host {
    pub name: &'static str,
    pub netns: &'static str,
    /// This host's end of the underlay veth pair.
    pub underlay_dev: &'static str,
    pub underlay_v4: Ipv4Addr,
    pub underlay_v6: Ipv6Addr,
}

/// A "container": a network namespace plugged into its host's bridge.
#[derive(Debug, PartialEq, Eq)]
pub struct Container {
    pub name: &'static str,
    pub netns: &'static str,
    /// Name of the host this container lives on (see [`HOSTS`]).
    pub host: &'static str,
    /// The host-side end of the container's veth pair (the container side is [`CONTAINER_DEV`]).
    pub host_veth: &'static str,
    pub overlay_v4: Ipv4Addr,
    pub overlay_v6: Ipv6Addr,
}

pub static HOSTS: [Host; 2] = [
    Host {
        name: "h1",
        netns: "slim-h1",
        underlay_dev: "slim-u1",
        underlay_v4: Ipv4Addr::new(192, 168, 77, 1),
        underlay_v6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1),
    },
    Host {
        name: "h2",
        netns: "slim-h2",
        underlay_dev: "slim-u2",
        underlay_v4: Ipv4Addr::new(192, 168, 77, 2),
        underlay_v6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2),
    },
];

pub static CONTAINERS: [Container; 3] = [
    Container {
        name: "c1",
        netns: "slim-c1",
        host: "h1",
        host_veth: "slim-vc1",
        overlay_v4: Ipv4Addr::new(10, 32, 0, 1),
        overlay_v6: Ipv6Addr::new(0xfd00, 0x32, 0, 0, 0, 0, 0, 1),
    },
    Container {
        name: "c2",
        netns: "slim-c2",
        host: "h2",
        host_veth: "slim-vc2",
        overlay_v4: Ipv4Addr::new(10, 32, 0, 2),
        overlay_v6: Ipv6Addr::new(0xfd00, 0x32, 0, 0, 0, 0, 0, 2),
    },
    Container {
        name: "c3",
        netns: "slim-c3",
        host: "h1",
        host_veth: "slim-vc3",
        overlay_v4: Ipv4Addr::new(10, 32, 0, 3),
        overlay_v6: Ipv6Addr::new(0xfd00, 0x32, 0, 0, 0, 0, 0, 3),
    },
];

impl Host {
    /// The other hosts of the cluster: the VXLAN remote and the router's peers.
    pub fn peers(&self) -> impl Iterator<Item = &'static Host> + '_ {
        HOSTS.iter().filter(move |h| h.name != self.name)
    }

    /// The single VXLAN unicast remote. A kernel vxlan device takes one `remote`; with more
    /// than two hosts the lab would need FDB entries instead.
    pub fn vxlan_remote(&self) -> &'static Host {
        self.peers()
            .next()
            .expect("the topology has two hosts, so every host has a peer")
    }

    pub fn containers(&self) -> impl Iterator<Item = &'static Container> + '_ {
        CONTAINERS.iter().filter(move |c| c.host == self.name)
    }
}

impl Container {
    pub fn host(&self) -> &'static Host {
        HOSTS
            .iter()
            .find(|h| h.name == self.host)
            .expect("every container names a host of HOSTS")
    }
}

/// Any namespace of the lab, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Host(&'static Host),
    Container(&'static Container),
}

impl Node {
    /// Hosts first, then containers, in table order.
    pub fn all() -> impl Iterator<Item = Node> {
        HOSTS
            .iter()
            .map(Node::Host)
            .chain(CONTAINERS.iter().map(Node::Container))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Node::Host(h) => h.name,
            Node::Container(c) => c.name,
        }
    }

    pub fn netns(&self) -> &'static str {
        match self {
            Node::Host(h) => h.netns,
            Node::Container(c) => c.netns,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Node::Host(_) => "host",
            Node::Container(_) => "container",
        }
    }

    /// The host the node runs on (a host runs on itself).
    pub fn host(&self) -> &'static Host {
        match self {
            Node::Host(h) => h,
            Node::Container(c) => c.host(),
        }
    }

    /// The address others reach this node at: overlay for containers, underlay for hosts.
    pub fn addr(&self, v6: bool) -> IpAddr {
        match (self, v6) {
            (Node::Host(h), false) => h.underlay_v4.into(),
            (Node::Host(h), true) => h.underlay_v6.into(),
            (Node::Container(c), false) => c.overlay_v4.into(),
            (Node::Container(c), true) => c.overlay_v6.into(),
        }
    }
}

impl FromStr for Node {
    type Err = String;

    /// Accepts both the short name (`c1`) and the namespace name (`slim-c1`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let short = s.strip_prefix(NAME_PREFIX).unwrap_or(s);
        Node::all().find(|n| n.name() == short).ok_or_else(|| {
            let names: Vec<&str> = Node::all().map(|n| n.name()).collect();
            format!("unknown node `{s}`; use one of {}", names.join(", "))
        })
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every namespace the lab creates, hosts first.
pub fn all_netns() -> impl Iterator<Item = &'static str> {
    Node::all().map(|n| n.netns())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_short_and_namespace_names() {
        assert_eq!("c2".parse::<Node>().unwrap().netns(), "slim-c2");
        assert_eq!("slim-h1".parse::<Node>().unwrap().name(), "h1");
        assert!("c9".parse::<Node>().unwrap_err().contains("c1, c2, c3"));
    }

    #[test]
    fn containers_know_their_hosts() {
        let c3: Node = "c3".parse().unwrap();
        assert_eq!(c3.host().name, "h1");
        let h1 = &HOSTS[0];
        let on_h1: Vec<&str> = h1.containers().map(|c| c.name).collect();
        assert_eq!(on_h1, ["c1", "c3"]);
        assert_eq!(h1.vxlan_remote().name, "h2");
    }

    #[test]
    fn addresses_follow_the_node_kind() {
        let h2: Node = "h2".parse().unwrap();
        assert_eq!(h2.addr(false).to_string(), "192.168.77.2");
        assert_eq!(h2.addr(true).to_string(), "fd77::2");
        let c1: Node = "c1".parse().unwrap();
        assert_eq!(c1.addr(false).to_string(), "10.32.0.1");
        assert_eq!(c1.addr(true).to_string(), "fd00:32::1");
    }

    #[test]
    fn names_are_unique_and_prefixed() {
        let mut names: Vec<&str> = all_netns().collect();
        assert!(names.iter().all(|n| n.starts_with(NAME_PREFIX)));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), HOSTS.len() + CONTAINERS.len());
    }
}
