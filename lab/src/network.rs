//! The lab's network, described once per namespace: the `ip` commands that build it and the
//! devices and addresses that prove it is built.

use anyhow::{Context, Result};

use crate::containers;
use crate::ip;
use crate::paths::netns_path;
use crate::runtime::Runtime;
use crate::topology::{
    all_netns, Container, Host, Node, BRIDGE_DEV, CONTAINERS, CONTAINER_DEV, HOSTS, OVERLAY_MTU,
    OVERLAY_V4_PREFIX_LEN, OVERLAY_V6_PREFIX_LEN, UNDERLAY_MTU, UNDERLAY_V4_PREFIX_LEN,
    UNDERLAY_V6_PREFIX_LEN, VXLAN_DEV, VXLAN_ID, VXLAN_PORT,
};

pub fn netns_exists(netns: &str) -> bool {
    netns_path(netns).exists()
}

/// Commands for `ip -batch` in the initial namespace: the namespaces and every veth pair, each
/// end created straight inside its namespace so the initial namespace never holds a lab device.
/// With podman, only the hosts' namespaces and the underlay: podman and CNI make the containers'.
pub fn namespace_commands(runtime: Runtime) -> Vec<String> {
    let mut lines: Vec<String> = match runtime {
        Runtime::Netns => all_netns().map(|ns| format!("netns add {ns}")).collect(),
        Runtime::Podman => HOSTS
            .iter()
            .map(|h| format!("netns add {}", h.netns))
            .collect(),
    };
    let (h1, h2) = (&HOSTS[0], &HOSTS[1]);
    lines.push(format!(
        "link add {} netns {} mtu {UNDERLAY_MTU} type veth peer name {} netns {} mtu {UNDERLAY_MTU}",
        h1.underlay_dev, h1.netns, h2.underlay_dev, h2.netns
    ));
    if runtime == Runtime::Podman {
        return lines;
    }
    for c in &CONTAINERS {
        lines.push(format!(
            "link add {} netns {} mtu {OVERLAY_MTU} type veth peer name {CONTAINER_DEV} netns {} mtu {OVERLAY_MTU}",
            c.host_veth,
            c.host().netns,
            c.netns
        ));
    }
    lines
}

/// Commands for `ip -n HOST -batch`: underlay addresses, the bridge and the VXLAN device.
/// `nodad` makes IPv6 addresses usable at once instead of after a second of DAD.
pub fn host_commands(host: &Host, runtime: Runtime) -> Vec<String> {
    let dev = host.underlay_dev;
    let remote = host.vxlan_remote();
    let mut lines = vec![
        "link set lo up".to_string(),
        format!("addr add {}/{UNDERLAY_V4_PREFIX_LEN} dev {dev}", host.underlay_v4),
        format!("addr add {}/{UNDERLAY_V6_PREFIX_LEN} dev {dev} nodad", host.underlay_v6),
        format!("link set {dev} up"),
        // No STP: ports forward as soon as they are up, with no listening/learning delay.
        format!("link add {BRIDGE_DEV} type bridge stp_state 0"),
        format!("link set {BRIDGE_DEV} up"),
        format!(
            "link add {VXLAN_DEV} mtu {OVERLAY_MTU} type vxlan id {VXLAN_ID} dstport {VXLAN_PORT} local {} remote {} dev {dev}",
            host.underlay_v4, remote.underlay_v4
        ),
        format!("link set {VXLAN_DEV} master {BRIDGE_DEV} up"),
    ];
    if runtime == Runtime::Netns {
        for c in host.containers() {
            lines.push(format!("link set {} master {BRIDGE_DEV} up", c.host_veth));
        }
    }
    lines
}

/// Commands for `ip -n CONTAINER -batch`: the overlay addresses on eth0. No default route: the
/// on-link overlay subnets are all a container may reach.
pub fn container_commands(c: &Container) -> Vec<String> {
    vec![
        "link set lo up".to_string(),
        format!(
            "addr add {}/{OVERLAY_V4_PREFIX_LEN} dev {CONTAINER_DEV}",
            c.overlay_v4
        ),
        format!(
            "addr add {}/{OVERLAY_V6_PREFIX_LEN} dev {CONTAINER_DEV} nodad",
            c.overlay_v6
        ),
        format!("link set {CONTAINER_DEV} up"),
    ]
}

/// One device as it must be found in a built lab.
struct ExpectedLink {
    name: &'static str,
    mtu: Option<u32>,
    master: Option<&'static str>,
    addrs: Vec<String>,
    /// Substrings of the `ip -d` details, e.g. the VXLAN id and endpoints.
    details: Vec<String>,
}

impl ExpectedLink {
    fn plain(name: &'static str) -> Self {
        ExpectedLink {
            name,
            mtu: None,
            master: None,
            addrs: Vec::new(),
            details: Vec::new(),
        }
    }
}

fn expected_links(node: Node, runtime: Runtime) -> Vec<ExpectedLink> {
    match node {
        Node::Host(h) => {
            let mut links = vec![
                ExpectedLink::plain("lo"),
                ExpectedLink {
                    mtu: Some(UNDERLAY_MTU),
                    addrs: vec![
                        format!("{}/{UNDERLAY_V4_PREFIX_LEN}", h.underlay_v4),
                        format!("{}/{UNDERLAY_V6_PREFIX_LEN}", h.underlay_v6),
                    ],
                    ..ExpectedLink::plain(h.underlay_dev)
                },
                ExpectedLink::plain(BRIDGE_DEV),
                ExpectedLink {
                    mtu: Some(OVERLAY_MTU),
                    master: Some(BRIDGE_DEV),
                    details: vec![
                        format!("vxlan id {VXLAN_ID} "),
                        format!("remote {} ", h.vxlan_remote().underlay_v4),
                        format!("local {} ", h.underlay_v4),
                        format!("dstport {VXLAN_PORT} "),
                    ],
                    ..ExpectedLink::plain(VXLAN_DEV)
                },
            ];
            // CNI names the host ends of podman containers' veth pairs itself.
            if runtime == Runtime::Netns {
                links.extend(h.containers().map(|c| ExpectedLink {
                    mtu: Some(OVERLAY_MTU),
                    master: Some(BRIDGE_DEV),
                    ..ExpectedLink::plain(c.host_veth)
                }));
            }
            links
        }
        Node::Container(_) if runtime == Runtime::Podman => vec![
            ExpectedLink::plain("lo"),
            ExpectedLink {
                mtu: Some(OVERLAY_MTU),
                addrs: [false, true]
                    .into_iter()
                    .filter_map(|v6| containers::addr(node, v6).ok())
                    .map(|a| {
                        let len = if a.is_ipv6() {
                            OVERLAY_V6_PREFIX_LEN
                        } else {
                            OVERLAY_V4_PREFIX_LEN
                        };
                        format!("{a}/{len}")
                    })
                    .collect(),
                ..ExpectedLink::plain(CONTAINER_DEV)
            },
        ],
        Node::Container(c) => vec![
            ExpectedLink::plain("lo"),
            ExpectedLink {
                mtu: Some(OVERLAY_MTU),
                addrs: vec![
                    format!("{}/{OVERLAY_V4_PREFIX_LEN}", c.overlay_v4),
                    format!("{}/{OVERLAY_V6_PREFIX_LEN}", c.overlay_v6),
                ],
                ..ExpectedLink::plain(CONTAINER_DEV)
            },
        ],
    }
}

/// What is wrong with one node's namespace; empty when it is exactly as `up` builds it.
pub fn node_problems(node: Node, runtime: Runtime) -> Result<Vec<String>> {
    let ns = node.netns();
    if !netns_exists(ns) {
        return Ok(vec![format!("namespace {ns} is missing")]);
    }
    let links = ip::parse_links(
        &ip::run(&["-n", ns, "-o", "-d", "link", "show"])
            .with_context(|| format!("cannot list the devices of namespace {ns}"))?,
    );
    let addrs = ip::parse_addrs(
        &ip::run(&["-n", ns, "-o", "addr", "show"])
            .with_context(|| format!("cannot list the addresses of namespace {ns}"))?,
    );
    let mut problems = Vec::new();
    for want in expected_links(node, runtime) {
        let Some(link) = links.iter().find(|l| l.name == want.name) else {
            problems.push(format!("{ns}: device {} is missing", want.name));
            continue;
        };
        if !link.is_up() {
            problems.push(format!("{ns}: device {} is down", want.name));
        }
        if want.mtu.is_some() && link.mtu != want.mtu {
            problems.push(format!(
                "{ns}: device {} has mtu {:?}, want {:?}",
                want.name, link.mtu, want.mtu
            ));
        }
        if want.master.is_some() && link.master.as_deref() != want.master {
            problems.push(format!(
                "{ns}: device {} is not enslaved to {}",
                want.name,
                want.master.unwrap_or_default()
            ));
        }
        for detail in &want.details {
            if !link.line.contains(detail.as_str()) {
                problems.push(format!(
                    "{ns}: device {} lacks `{}`",
                    want.name,
                    detail.trim()
                ));
            }
        }
        for cidr in &want.addrs {
            match addrs.iter().find(|a| a.dev == want.name && &a.cidr == cidr) {
                None => problems.push(format!("{ns}: {} lacks address {cidr}", want.name)),
                Some(a) if a.dad_failed => {
                    problems.push(format!("{ns}: {cidr} on {} failed DAD", want.name))
                }
                Some(_) => {}
            }
        }
    }
    Ok(problems)
}

/// Every address of a namespace except loopback and link-local ones, for `status`.
pub fn global_addrs(netns: &str) -> Result<Vec<ip::Addr>> {
    let text = ip::run(&["-n", netns, "-o", "addr", "show", "scope", "global"])
        .with_context(|| format!("cannot list the addresses of namespace {netns}"))?;
    Ok(ip::parse_addrs(&text))
}

/// `(rx_bytes, tx_bytes)` of a device, read from the kernel's 64-bit counters.
pub fn byte_counters(netns: &str, dev: &str) -> Result<(u64, u64)> {
    let json =
        ip::run(&["-n", netns, "-j", "-s", "link", "show", "dev", dev]).with_context(|| {
            format!("cannot read the counters of {dev} in {netns}; is the lab up (`slim-lab up`)?")
        })?;
    ip::parse_byte_counters(&json)
        .with_context(|| format!("`ip -j -s link` printed no byte counters for {dev}: {json}"))
}

/// Per-namespace TCP settings of a busy container host: reuse TIME_WAIT ports for new outgoing
/// connections and a wide ephemeral port range, so that connection-rate tests and benchmarks
/// (tens of thousands of short connections to one server) measure setup, not port exhaustion.
/// Applied alike to hosts and containers, so every mode of a comparison gets the same. The
/// ephemeral range is 10000-39999 (30000 ports, about Linux's default count), leaving
/// 40000-65535 to the routers' port leases (`slim-router --lease-ports`): a port is reused for
/// the same peer only after its TIME_WAIT is a second old, so one client at ~15k connections/s
/// cycles through ~15-30k ports, whichever kind it gets.
pub fn tune(netns: &str) -> Result<()> {
    let settings = [
        ("net/ipv4/tcp_tw_reuse", "1"),
        ("net/ipv4/ip_local_port_range", "10000\t39999"),
    ];
    let mut args: Vec<String> = vec![
        "netns".into(),
        "exec".into(),
        netns.into(),
        "sh".into(),
        "-c".into(),
    ];
    let script: Vec<String> = settings
        .iter()
        .map(|(k, v)| format!("printf '{v}' > /proc/sys/{k}"))
        .collect();
    args.push(script.join(" && "));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::ip::run(&refs).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_gets_one_veth_pair() {
        let lines = namespace_commands(Runtime::Netns);
        for c in &CONTAINERS {
            assert!(lines
                .iter()
                .any(|l| l.contains(c.host_veth) && l.contains(c.netns)));
        }
    }

    #[test]
    fn vxlan_points_at_the_other_host() {
        let lines = host_commands(&HOSTS[1], Runtime::Netns);
        let vx = lines.iter().find(|l| l.contains("type vxlan")).unwrap();
        assert!(vx.contains("local 192.168.77.2 remote 192.168.77.1"));
    }

    #[test]
    fn podman_leaves_the_containers_to_cni() {
        let lines = namespace_commands(Runtime::Podman);
        assert!(!lines.iter().any(|l| l.contains("slim-c")));
        assert!(lines.iter().any(|l| l.contains("slim-u1")));
        let host = host_commands(&HOSTS[0], Runtime::Podman);
        assert!(!host.iter().any(|l| l.contains("slim-vc")));
        assert!(host.iter().any(|l| l.contains("slim-vx master slim-br")));
    }
}
