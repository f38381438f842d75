//! The policy of Slim connections (issue 15, point 4): which overlay destinations a container
//! may reach through Slim. Without it the overlay's own filtering (NetworkPolicy, iptables on
//! the bridge) never sees a Slim connection: it runs on the host network.
//!
//! A policy file (`policy_file` / `--policy-file`), TOML:
//!
//! ```toml
//! # Containers no rule selects: "allow" (the default) or "deny".
//! default = "allow"
//!
//! [[allow]]
//! # The containers this rule selects, by overlay address: any of a container's addresses in
//! # one of these prefixes.
//! from = ["10.32.0.1/32"]
//! # What they may reach: "all", or PREFIX, PREFIX:PORT, PREFIX:LO-HI ([PREFIX]:PORT for IPv6).
//! to = ["10.32.0.2/32:8080", "10.32.1.0/24"]
//! ```
//!
//! A container selected by at least one rule may reach exactly what its rules allow; the rules
//! add up. A denied connect fails with ECONNREFUSED: what a REJECT rule of the overlay's
//! firewall answers for TCP (`--reject-with tcp-reset`), so that the program fails at once and
//! handles it as it handles any closed port (a DROP would leave it waiting for its own timeout
//! for no gain). It is counted (`slim_policy_denied`) and logged. The library does not take the
//! overlay for it: the overlay's own policy still applies to whatever the program does next.
//!
//! Enforced in secure mode, where each connect is set up: by the router for a connect it makes
//! ([`Policy::allows`]), and by `slim_kern` for one the module translates on a pooled socket: the
//! router loads each constrained container's allow-list into the module's policy table
//! ([`Policy::allow_list`], `kmod_tables.rs`) and restricts that container's pooled sockets with
//! `SLIM_RESTRICT_POLICY`. Plain mode identifies no container (its library is trusted and may take
//! pooled sockets without asking), so a policy needs `--secure`.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// One allowed destination: a prefix and a port range (all ports if none given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub net: Option<IpNet>,
    pub ports: (u16, u16),
}

impl Dest {
    fn allows(&self, dst: SocketAddr) -> bool {
        self.net.is_none_or(|n| n.contains(&dst.ip()))
            && (self.ports.0..=self.ports.1).contains(&dst.port())
    }

    /// `all`, `PREFIX`, `PREFIX:PORT`, `PREFIX:LO-HI`, `[PREFIX]`, `[PREFIX]:PORT`, ...
    pub fn parse(s: &str) -> Result<Dest, String> {
        let bad = |why: &str| {
            format!("`{s}` {why}: write \"all\", a prefix such as \"10.32.0.0/16\", or a prefix with ports such as \"10.32.0.2/32:8080\", \"10.32.0.0/16:8000-8100\", \"[fd00:32::/64]:443\"")
        };
        let s = s.trim();
        if s == "all" {
            return Ok(Dest {
                net: None,
                ports: (0, u16::MAX),
            });
        }
        let (net, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (net, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("has no closing ]"))?;
            match after {
                "" => (net, None),
                p => (
                    net,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("has text after ]"))?),
                ),
            }
        } else {
            match s.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (s, None),
            }
        };
        let net: IpNet = net
            .parse()
            .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| bad("is not a prefix"))?;
        let ports = match ports {
            None => (0, u16::MAX),
            Some(p) => {
                let (lo, hi) = p.split_once('-').unwrap_or((p, p));
                let lo: u16 = lo.parse().map_err(|_| bad("has a bad port"))?;
                let hi: u16 = hi.parse().map_err(|_| bad("has a bad port"))?;
                if lo > hi {
                    return Err(bad("has a port range that ends before it starts"));
                }
                (lo, hi)
            }
        };
        Ok(Dest {
            net: Some(net.trunc()),
            ports,
        })
    }
}

#[derive(Debug, Clone)]
struct Rule {
    from: Vec<IpNet>,
    to: Vec<Dest>,
}

impl Rule {
    /// Whether the rule selects a container with overlay addresses `addrs`.
    fn selects(&self, addrs: &[IpAddr]) -> bool {
        addrs
            .iter()
            .any(|a| self.from.iter().any(|n| n.contains(a)))
    }
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    default_allow: bool,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default: Option<String>,
    #[serde(default)]
    allow: Vec<FileRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    from: Vec<String>,
    to: Vec<String>,
}

impl Policy {
    /// Parses a policy file's text; errors name the rule and the entry at fault.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let default_allow = match f.default.as_deref() {
            None | Some("allow") => true,
            Some("deny") => false,
            Some(other) => {
                return Err(format!(
                    "`default = \"{other}\"`: write \"allow\" or \"deny\""
                ))
            }
        };
        let mut rules = Vec::new();
        for (i, r) in f.allow.iter().enumerate() {
            let at = |m: String| format!("[[allow]] number {}: {m}", i + 1);
            if r.from.is_empty() {
                return Err(at("`from` is empty: name the containers by overlay prefix, e.g. [\"10.32.0.1/32\"]".into()));
            }
            let from = r
                .from
                .iter()
                .map(|s| {
                    s.parse::<IpNet>()
                        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                        .map(|n| n.trunc())
                        .map_err(|_| {
                            at(format!(
                                "`from` entry `{s}` is not a prefix such as \"10.32.0.1/32\""
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let to =
                r.to.iter()
                    .map(|s| Dest::parse(s).map_err(|m| at(format!("`to`: {m}"))))
                    .collect::<Result<Vec<_>, _>>()?;
            rules.push(Rule { from, to });
        }
        Ok(Policy {
            default_allow,
            rules,
        })
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the policy file {}: {e}", path.display()))?;
        Policy::parse(&text).map_err(|m| format!("policy file {}: {m}", path.display()))
    }

    /// Whether a container with overlay addresses `addrs` may connect to `dst` through Slim.
    pub fn allows(&self, addrs: &[IpAddr], dst: SocketAddr) -> bool {
        let mut selected = false;
        for r in self.rules.iter().filter(|r| r.selects(addrs)) {
            selected = true;
            if r.to.iter().any(|d| d.allows(dst)) {
                return true;
            }
        }
        !selected && self.default_allow
    }

    /// Whether the policy restricts a container with overlay addresses `addrs` at all (a rule
    /// selects it, or the default denies): then each of its connects must be checked.
    pub fn constrains(&self, addrs: &[IpAddr]) -> bool {
        !self.default_allow || self.rules.iter().any(|r| r.selects(addrs))
    }

    /// What a container with overlay addresses `addrs` may reach, if the policy constrains it:
    /// (prefix, lowest port, highest port) per allowed destination, "all" as `0.0.0.0/0` and
    /// `::/0`; empty if it may reach nothing. `None`: not constrained (any destination).
    pub fn allow_list(&self, addrs: &[IpAddr]) -> Option<Vec<(IpNet, u16, u16)>> {
        if !self.constrains(addrs) {
            return None;
        }
        let mut out = Vec::new();
        for r in self.rules.iter().filter(|r| r.selects(addrs)) {
            for d in &r.to {
                let nets = match d.net {
                    Some(n) => vec![n],
                    None => vec![
                        IpNet::V4(ipnet::Ipv4Net::default()),
                        IpNet::V6(ipnet::Ipv6Net::default()),
                    ],
                };
                for n in nets {
                    let row = (n, d.ports.0, d.ports.1);
                    if !out.contains(&row) {
                        out.push(row);
                    }
                }
            }
        }
        Some(out)
    }

    /// Rules, for the start-up log.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn default_allow(&self) -> bool {
        self.default_allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rules_select_by_source_and_allow_by_destination() {
        let p = Policy::parse(
            r#"
default = "allow"
[[allow]]
from = ["10.32.0.1/32"]
to = ["10.32.0.2/32:8080", "10.32.1.0/24", "[fd00:32::/64]:443-444"]
[[allow]]
from = ["10.32.0.1"]
to = ["10.32.0.3:22"]
"#,
        )
        .unwrap();
        let c1 = [ip("10.32.0.1"), ip("fd00:32::1")];
        assert!(p.allows(&c1, sa("10.32.0.2:8080")));
        assert!(!p.allows(&c1, sa("10.32.0.2:8081")));
        assert!(p.allows(&c1, sa("10.32.1.9:1")));
        assert!(p.allows(&c1, sa("[fd00:32::2]:444")));
        assert!(!p.allows(&c1, sa("[fd00:32::2]:80")));
        // Rules add up.
        assert!(p.allows(&c1, sa("10.32.0.3:22")));
        // A container no rule selects: the default.
        assert!(p.allows(&[ip("10.32.0.3")], sa("10.32.0.2:1")));
        let deny = Policy::parse("default = \"deny\"\n").unwrap();
        assert!(!deny.allows(&[ip("10.32.0.3")], sa("10.32.0.2:1")));
        let all = Policy::parse(
            "default = \"deny\"\n[[allow]]\nfrom = [\"10.32.0.0/16\"]\nto = [\"all\"]\n",
        )
        .unwrap();
        assert!(all.allows(&[ip("10.32.0.3")], sa("10.32.9.9:9")));
        assert!(Policy::parse("").unwrap().allows(&[], sa("10.32.0.2:1")));
        // Which containers must have each connect checked (they get no translating pool).
        assert!(p.constrains(&c1));
        assert!(!p.constrains(&[ip("10.32.0.3")]));
        assert!(deny.constrains(&[ip("10.32.0.3")]));
        assert!(all.constrains(&[ip("10.32.0.3")]));
        assert!(!Policy::parse("").unwrap().constrains(&[ip("10.32.0.3")]));
        // The same as allow-lists for the module: what `allows` says, row by row.
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            p.allow_list(&c1).unwrap(),
            vec![
                (net("10.32.0.2/32"), 8080, 8080),
                (net("10.32.1.0/24"), 0, u16::MAX),
                (net("fd00:32::/64"), 443, 444),
                (net("10.32.0.3/32"), 22, 22),
            ]
        );
        assert_eq!(p.allow_list(&[ip("10.32.0.3")]), None);
        assert_eq!(deny.allow_list(&[ip("10.32.0.3")]), Some(vec![]));
        assert_eq!(
            all.allow_list(&[ip("10.32.0.3")]).unwrap(),
            vec![(net("0.0.0.0/0"), 0, u16::MAX), (net("::/0"), 0, u16::MAX)]
        );
    }

    #[test]
    fn mistakes_are_named() {
        for (text, says) in [
            ("default = \"maybe\"\n", "default"),
            ("[[allow]]\nfrom = []\nto = [\"all\"]\n", "`from` is empty"),
            (
                "[[allow]]\nfrom = [\"x\"]\nto = [\"all\"]\n",
                "`from` entry `x`",
            ),
            (
                "[[allow]]\nfrom = [\"10.0.0.1\"]\nto = [\"10.0.0.0/8:9-1\"]\n",
                "ends before",
            ),
            (
                "[[allow]]\nfrom = [\"10.0.0.1\"]\nto = [\"10.0.0.0/8:http\"]\n",
                "bad port",
            ),
            (
                "[[allow]]\nfrom = [\"10.0.0.1\"]\nto = [\"all\"]\nports = 1\n",
                "ports",
            ),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
