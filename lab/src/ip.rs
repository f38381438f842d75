//! Running iproute2's `ip` and reading its one-line (`-o`) output.

use std::io::{ErrorKind, Write};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

fn spawn_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == ErrorKind::NotFound {
        anyhow::anyhow!("the `ip` command is missing; install iproute2 (apt-get install iproute2)")
    } else {
        anyhow::Error::new(e).context("cannot run the `ip` command")
    }
}

fn check(args: &[&str], output: Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `ip ARGS...` and returns its stdout; a failure carries ip's own stderr.
pub fn run(args: &[&str]) -> Result<String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(spawn_error)?;
    check(args, output)
}

/// Runs `ip [-n NETNS] -batch -` over `lines`: one process per namespace instead of one per
/// command keeps `up` well under a second.
pub fn batch(netns: Option<&str>, lines: &[String]) -> Result<()> {
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let script = lines.join("\n") + "\n";
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(script.as_bytes())
        .context("cannot feed commands to `ip -batch`")?;
    let output = child
        .wait_with_output()
        .context("cannot wait for `ip -batch`")?;
    check(&args, output)
        .with_context(|| format!("the batch was:\n{script}"))
        .map(drop)
}

/// One line of `ip -o [-d] link show`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub flags: Vec<String>,
    pub mtu: Option<u32>,
    pub master: Option<String>,
    /// The whole line, for the `-d` details (e.g. `vxlan id 42 remote ...`).
    pub line: String,
}

impl Link {
    /// Administratively up (IFF_UP), whatever the carrier says.
    pub fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }
}

/// Strips the `@peer` suffix ip adds to veth and vlan names.
fn device_name(token: &str) -> &str {
    let token = token.trim_end_matches(':');
    token.split('@').next().unwrap_or(token)
}

/// Parses `ip -o [-d] link show`: `5: eth0@if4: <BROADCAST,UP,LOWER_UP> mtu 1450 ... master x ...`.
pub fn parse_links(text: &str) -> Vec<Link> {
    text.lines()
        .filter_map(|line| {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let name = device_name(tokens.get(1)?).to_string();
            let flags = tokens
                .get(2)?
                .trim_start_matches('<')
                .trim_end_matches('>')
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_string)
                .collect();
            let after = |key: &str| {
                tokens
                    .windows(2)
                    .find(|w| w[0] == key)
                    .map(|w| w[1].to_string())
            };
            Some(Link {
                name,
                flags,
                mtu: after("mtu").and_then(|m| m.parse().ok()),
                master: after("master"),
                line: line.to_string(),
            })
        })
        .collect()
}

/// One address from `ip -o addr show`, as `10.32.0.1/12` with its device.
#[derive(Debug, PartialEq, Eq)]
pub struct Addr {
    pub dev: String,
    pub cidr: String,
    /// A duplicate-address failure makes an IPv6 address unusable even though it is listed.
    pub dad_failed: bool,
}

/// Parses `ip -o addr show`: `2: eth0    inet 10.32.0.1/12 scope global eth0\ ...`.
pub fn parse_addrs(text: &str) -> Vec<Addr> {
    text.lines()
        .filter_map(|line| {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            if !matches!(tokens.get(2), Some(&"inet") | Some(&"inet6")) {
                return None;
            }
            Some(Addr {
                dev: device_name(tokens[1]).to_string(),
                cidr: tokens.get(3)?.to_string(),
                dad_failed: tokens.contains(&"dadfailed"),
            })
        })
        .collect()
}

/// Reads `rx.bytes` and `tx.bytes` out of `ip -j -s link show dev DEV` without a JSON parser:
/// the statistics object nests `"rx":{..."bytes":N...}` and `"tx":{...}` once per device.
pub fn parse_byte_counters(json: &str) -> Option<(u64, u64)> {
    let bytes_after = |key: &str| -> Option<u64> {
        let start = json.find(key)? + key.len();
        let rest = &json[start..];
        let value = &rest[rest.find("\"bytes\":")? + "\"bytes\":".len()..];
        let digits: String = value.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    };
    Some((bytes_after("\"rx\":{")?, bytes_after("\"tx\":{")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_link_lines() {
        let text = "5: eth0@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 2a:...\n\
                    7: slim-vx: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue master slim-br state UNKNOWN \\    vxlan id 42 remote 192.168.77.2\n";
        let links = parse_links(text);
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].name, "eth0");
        assert!(links[0].is_up());
        assert_eq!(links[0].mtu, Some(1450));
        assert_eq!(links[0].master, None);
        assert_eq!(links[1].master.as_deref(), Some("slim-br"));
        assert!(links[1].line.contains("vxlan id 42"));
    }

    #[test]
    fn down_link_is_not_up() {
        let links = parse_links("1: lo: <LOOPBACK> mtu 65536 qdisc noop state DOWN\n");
        assert!(!links[0].is_up());
    }

    #[test]
    fn parses_addr_lines() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                    2: eth0    inet6 fd00:32::1/64 scope global dadfailed \\       valid_lft forever\n";
        let addrs = parse_addrs(text);
        assert_eq!(addrs[0].dev, "lo");
        assert_eq!(addrs[0].cidr, "127.0.0.1/8");
        assert!(!addrs[0].dad_failed);
        assert_eq!(addrs[1].cidr, "fd00:32::1/64");
        assert!(addrs[1].dad_failed);
    }

    #[test]
    fn parses_byte_counters() {
        let json = r#"[{"ifindex":7,"ifname":"slim-vx","stats64":{"rx":{"bytes":1234,"packets":5},"tx":{"bytes":98,"packets":1}}}]"#;
        assert_eq!(parse_byte_counters(json), Some((1234, 98)));
        assert_eq!(parse_byte_counters("[]"), None);
    }
}
