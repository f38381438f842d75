//! Checks the configuration in effect against this host before anything is started (and for
//! `--check-config`): every error names the key (and its flag) and the fix.

use crate::cli::LeasePorts;
use crate::config::Config;
use crate::{hostsock, leases, peers_file, router};
use anyhow::{bail, Context};
use std::net::IpAddr;

/// How to make a cluster key, for error messages.
pub const MAKE_KEY: &str = "create one key for the whole cluster with \
    `head -c 32 /dev/urandom > /etc/slim/cluster.key; chmod 600 /etc/slim/cluster.key`, copy it to \
    every host, and name it with `cluster_key = \"/etc/slim/cluster.key\"` in the configuration file \
    (or --cluster-key FILE)";

/// What a valid configuration yields.
pub struct Checked {
    pub settings: router::Settings,
    /// The cluster key, unless the operator opted out of sealing.
    pub key: Option<slim_uapi::seal::ClusterKey>,
    /// Notes that do not stop the router (printed by `--check-config`, logged at start).
    pub warnings: Vec<String>,
    /// Problems a running router works around (a malformed peers-file line is skipped) but
    /// `--check-config` reports as errors, so that an operator fixes them.
    pub problems: Vec<String>,
}

pub fn check(c: &Config) -> anyhow::Result<Checked> {
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    if c.host_addrs.is_empty() {
        bail!("`host_addrs` (--host-addr) is not set: give this host's address on the host network, e.g. `host_addrs = [\"192.168.1.11\"]` in the configuration file or --host-addr 192.168.1.11");
    }
    if c.prefixes.is_empty() {
        bail!("`prefixes` (--prefix) is empty: give the overlay's prefixes, e.g. `prefixes = [\"10.32.0.0/12\"]`");
    }
    let mut s = router::Settings {
        host_v4: None,
        host_v6: None,
        prefixes: c.prefixes.clone(),
        lease_ports: None,
        lease_uids: c.lease_uids,
        policy: None,
    };
    for ip in &c.host_addrs {
        if ip.is_unspecified() || ip.is_loopback() {
            bail!("`host_addrs` (--host-addr) {ip}: give this host's address on the host network, not a wildcard or loopback address");
        }
        hostsock::check_local_address(*ip).with_context(|| {
            format!("`host_addrs` (--host-addr) {ip} is not an address of this host (network namespace); check `ip addr`")
        })?;
        let dup = match ip {
            IpAddr::V4(v4) => s.host_v4.replace(*v4).is_some(),
            IpAddr::V6(v6) => s.host_v6.replace(*v6).is_some(),
        };
        if dup {
            bail!("`host_addrs` (--host-addr) has two addresses of one family: give one IPv4 and/or one IPv6 address");
        }
        if c.prefixes.iter().any(|p| p.contains(ip)) {
            bail!("`host_addrs` (--host-addr) {ip} lies inside an overlay prefix (`prefixes`, --prefix); the host network and the overlay must not overlap");
        }
    }
    s.lease_ports = match c.lease_ports {
        Some(LeasePorts::Off) => None,
        Some(LeasePorts::Range(lo, hi)) => {
            leases::check_range(lo, hi).map_err(|m| anyhow::anyhow!("`lease_ports`: {m}"))?;
            Some((lo, hi))
        }
        None => leases::default_range(),
    };
    if let Some(l) = c.peer_listen() {
        if !l.ip().is_unspecified() {
            hostsock::check_local_address(l.ip()).with_context(|| {
                format!("`peer_listen` (--peer-listen) {l}: {} is not an address of this host; give one of `ip addr`, or 0.0.0.0", l.ip())
            })?;
        }
    }
    if let Some(m) = c.metrics_listen {
        if !m.ip().is_unspecified() {
            hostsock::check_local_address(m.ip()).with_context(|| {
                format!("`metrics_listen` (--metrics-listen) {m}: {} is not an address of this host; use e.g. 127.0.0.1:9788", m.ip())
            })?;
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log_level) {
        bail!(
            "`log_level` (--log-level) `{}` is not a valid level ({e}); use error, warn, info, debug or trace",
            c.log_level
        );
    }
    if let Some(dir) = c.socket.parent() {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            warnings.push(format!(
                "`socket` {}: the directory {} does not exist yet; the router creates it",
                c.socket.display(),
                dir.display()
            ));
        }
    }
    if let Some(path) = &c.peers_file {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for bad in peers_file::parse(&text).errors {
                    problems.push(format!(
                        "`peers_file` {}:{}: {}; write one ADDR:PORT per line, e.g. 192.168.1.12:7788",
                        path.display(),
                        bad.line,
                        bad.message
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => warnings.push(format!(
                "`peers_file` {} does not exist yet: no peers from it until it does",
                path.display()
            )),
            Err(e) => bail!(
                "`peers_file` {}: cannot read it: {e}; make it readable by the router",
                path.display()
            ),
        }
    }
    if let Some(path) = &c.policy_file {
        if !c.secure {
            bail!(
                "`policy_file` (--policy-file) {}: a policy is enforced in secure mode only (plain \
                 mode identifies no container and its library connects without asking); add \
                 `secure = true` (--secure) or remove the policy",
                path.display()
            );
        }
        s.policy = Some(crate::policy::Policy::load(path).map_err(|m| anyhow::anyhow!("{m}"))?);
    }
    if c.secure && !std::path::Path::new(slim_uapi::kabi::SLIM_DEVICE_PATH).exists() {
        bail!(
            "`secure` (--secure) needs the slim_kern module ({} is missing): load it with `insmod slim_kern.ko`",
            slim_uapi::kabi::SLIM_DEVICE_PATH
        );
    }
    let key = match (&c.cluster_key, c.insecure_peer_channel) {
        (Some(_), true) => bail!(
            "both `cluster_key` (--cluster-key) and `insecure_peer_channel` (--insecure-peer-channel) are set: remove one"
        ),
        (Some(path), false) => Some(
            slim_uapi::seal::ClusterKey::from_file(path)
                .with_context(|| format!("`cluster_key` (--cluster-key) {}", path.display()))?,
        ),
        (None, true) if c.secure => bail!(
            "`secure` (--secure) needs a cluster key: in secure mode the routers seal what they tell each other; {MAKE_KEY}"
        ),
        (None, true) => None,
        (None, false) => bail!(
            "no cluster key (`cluster_key`, --cluster-key): the router <-> router channel is sealed by default; \
             {MAKE_KEY}; or, to run unsealed (anything that reaches the peer port can then take over \
             other containers' connections), set `insecure_peer_channel = true` or pass --insecure-peer-channel"
        ),
    };
    Ok(Checked {
        settings: s,
        key,
        warnings,
        problems,
    })
}
