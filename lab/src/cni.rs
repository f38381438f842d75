//! The CNI network of the podman runtime: one network, `slim-overlay`, on every host, with the
//! bridge plugin on the lab's existing bridge (the one the VXLAN device is enslaved to) and
//! host-local IPAM over the overlay subnets, each host handing out addresses from its own range
//! so that they never collide across hosts.
//!
//! No gateway, no masquerade, no default route, no portmap or firewall plugin: the network rule
//! forbids a way out, and the host's iptables are left alone. The bridge plugin with
//! `isGateway: false` gives the bridge no address and enables no forwarding.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::topology::{Host, BRIDGE_DEV, OVERLAY_MTU, OVERLAY_PREFIXES};

/// The CNI network's name, the same on every host (as one cluster-wide overlay would be).
pub const NETWORK: &str = "slim-overlay";

/// The IPv4 range host-local hands out on `host`: 10.32.N.1 - 10.32.N.254 for host hN.
pub fn v4_range(host: &Host) -> (Ipv4Addr, Ipv4Addr) {
    let n = host_number(host);
    (Ipv4Addr::new(10, 32, n, 1), Ipv4Addr::new(10, 32, n, 254))
}

/// The IPv6 range on `host`: fd00:32::N:1 - fd00:32::N:ffff.
pub fn v6_range(host: &Host) -> (Ipv6Addr, Ipv6Addr) {
    let n = u16::from(host_number(host));
    (
        Ipv6Addr::new(0xfd00, 0x32, 0, 0, 0, 0, n, 1),
        Ipv6Addr::new(0xfd00, 0x32, 0, 0, 0, 0, n, 0xffff),
    )
}

/// The digit of the host's name (h1 -> 1).
fn host_number(host: &Host) -> u8 {
    host.name
        .trim_start_matches('h')
        .parse()
        .expect("lab hosts are named hN")
}

/// The network's configuration list (`slim-overlay.conflist`) for `host`; host-local keeps its
/// allocations in `ipam_dir`.
pub fn conflist(host: &Host, ipam_dir: &Path) -> String {
    let (v4_lo, v4_hi) = v4_range(host);
    let (v6_lo, v6_hi) = v6_range(host);
    let [v4_subnet, v6_subnet] = OVERLAY_PREFIXES;
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "{NETWORK}",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE_DEV}",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": false,
      "mtu": {OVERLAY_MTU},
      "ipam": {{
        "type": "host-local",
        "dataDir": "{ipam}",
        "ranges": [
          [{{ "subnet": "{v4_subnet}", "rangeStart": "{v4_lo}", "rangeEnd": "{v4_hi}" }}],
          [{{ "subnet": "{v6_subnet}", "rangeStart": "{v6_lo}", "rangeEnd": "{v6_hi}" }}]
        ]
      }}
    }}
  ]
}}
"#,
        ipam = ipam_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::HOSTS;

    #[test]
    fn hosts_get_disjoint_ranges() {
        assert_eq!(v4_range(&HOSTS[0]).0.to_string(), "10.32.1.1");
        assert_eq!(v4_range(&HOSTS[1]).1.to_string(), "10.32.2.254");
        assert_eq!(v6_range(&HOSTS[1]).0.to_string(), "fd00:32::2:1");
    }

    #[test]
    fn no_way_out() {
        let text = conflist(&HOSTS[0], Path::new("/run/x"));
        assert!(text.contains(r#""isGateway": false"#));
        assert!(text.contains(r#""ipMasq": false"#));
        assert!(!text.contains("routes"));
        assert!(!text.contains("portmap") && !text.contains("firewall"));
        assert!(text.contains(r#""bridge": "slim-br""#));
    }
}
