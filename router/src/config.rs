//! The router's configuration file (TOML, default `/etc/slim/router.toml`) and how it merges with
//! the command line: a flag given on the command line wins over the file's key, a repeatable flag
//! given at least once replaces the file's whole list, and what neither gives takes the default.
//!
//! The keys are the ones agreed with the other programs that read this file (slim-oci reads
//! `socket` and `prefixes`); an unknown key is an error here, so a typo is caught at
//! `slim-router --check-config` instead of silently doing nothing.

use crate::cli::{LeasePorts, RunArgs};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Where the router looks for its configuration when neither `--config` nor
/// `SLIM_ROUTER_CONFIG` names one. A missing file here is fine (flags only).
pub const DEFAULT_CONFIG: &str = "/etc/slim/router.toml";
pub const DEFAULT_SOCKET: &str = "/run/slim/router.sock";
pub const DEFAULT_SOCKET_MODE: u32 = 0o666;
pub const DEFAULT_PREFIX: &str = "10.32.0.0/12";
pub const DEFAULT_LOG_LEVEL: &str = "info";
pub const DEFAULT_PEER_PORT: u16 = 7788;

/// The file, key by key; every key may be left out. Also what `--check-config` prints (every key
/// set), so its output is itself a valid configuration file.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_addrs: Option<Vec<IpAddr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefixes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<SocketAddr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_peer_channel: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ports: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_uids: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}; create it, or point --config (or SLIM_ROUTER_CONFIG) at an existing file")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Value {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// Which file to read: the explicit one (flag or environment), which must exist, or the default,
/// which may be missing.
pub fn load(explicit: Option<&Path>) -> Result<(FileConfig, Option<PathBuf>), ConfigError> {
    let (path, must_exist) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((parse(&text, &path)?, Some(path))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
            Ok((FileConfig::default(), None))
        }
        Err(source) => Err(ConfigError::Read { path, source }),
    }
}

pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: format!(
            "{}; the keys are described in docs/operations.md",
            e.to_string().trim_end()
        ),
    })
}

/// The configuration in effect: command line over file over defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from, if one was read.
    pub file: Option<PathBuf>,
    pub host_addrs: Vec<IpAddr>,
    pub prefixes: Vec<IpNet>,
    pub socket: PathBuf,
    pub socket_mode: u32,
    /// Where peers dial in; `None`: the first host address, port 7788.
    pub peer_listen: Option<SocketAddr>,
    pub peers: Vec<SocketAddr>,
    pub peers_file: Option<PathBuf>,
    pub cluster_key: Option<PathBuf>,
    pub insecure_peer_channel: bool,
    /// `None`: the default range (above the ephemeral ports, if there is room).
    pub lease_ports: Option<LeasePorts>,
    /// The uids of leased sockets (`leasewatch`).
    pub lease_uids: crate::leasewatch::LeaseUids,
    /// Secure mode: the policy of Slim connections (`policy`).
    pub policy_file: Option<PathBuf>,
    pub secure: bool,
    pub log_level: String,
    pub metrics_listen: Option<SocketAddr>,
}

impl Config {
    /// Merges the command line over the file (`file` names where it came from, for errors).
    pub fn merge(
        args: &RunArgs,
        f: FileConfig,
        file: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let where_ = file.clone().unwrap_or_else(|| PathBuf::from("(no file)"));
        let bad = |key: &'static str, message: String| ConfigError::Value {
            path: where_.clone(),
            key,
            message,
        };
        let prefixes = if !args.prefixes.is_empty() {
            args.prefixes.clone()
        } else {
            match f.prefixes {
                Some(v) => v
                    .iter()
                    .map(|s| {
                        s.parse::<IpNet>().map_err(|_| {
                            bad(
                                "prefixes",
                                format!("`{s}` is not a CIDR prefix such as 10.32.0.0/12 or fd00:32::/64"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
                None => vec![DEFAULT_PREFIX.parse().expect("the default prefix parses")],
            }
        };
        let socket_mode = match (args.socket_mode, f.socket_mode) {
            (Some(m), _) => m,
            (None, Some(s)) => crate::cli::parse_mode(&s).map_err(|m| bad("socket_mode", m))?,
            (None, None) => DEFAULT_SOCKET_MODE,
        };
        let lease_ports = match (args.lease_ports, f.lease_ports) {
            (Some(l), _) => Some(l),
            (None, Some(s)) => {
                Some(crate::cli::parse_lease_ports(&s).map_err(|m| bad("lease_ports", m))?)
            }
            (None, None) => None,
        };
        let lease_uids = match (args.lease_uids, f.lease_uids) {
            (Some(u), _) => u,
            (None, Some(s)) => {
                crate::leasewatch::LeaseUids::parse(&s).map_err(|m| bad("lease_uids", m))?
            }
            (None, None) => crate::leasewatch::LeaseUids::default(),
        };
        let list = |flag: &Vec<SocketAddr>, file: Option<Vec<SocketAddr>>| {
            if flag.is_empty() {
                file.unwrap_or_default()
            } else {
                flag.clone()
            }
        };
        Ok(Config {
            host_addrs: if args.host_addr.is_empty() {
                f.host_addrs.unwrap_or_default()
            } else {
                args.host_addr.clone()
            },
            prefixes,
            socket: args
                .socket
                .clone()
                .or(f.socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            socket_mode,
            peer_listen: args.peer_listen.or(f.peer_listen),
            peers: list(&args.peers, f.peers),
            peers_file: args.peers_file.clone().or(f.peers_file),
            cluster_key: args.cluster_key.clone().or(f.cluster_key),
            insecure_peer_channel: args.insecure_peer_channel
                || f.insecure_peer_channel.unwrap_or(false),
            lease_ports,
            lease_uids,
            policy_file: args.policy_file.clone().or(f.policy_file),
            secure: args.secure || f.secure.unwrap_or(false),
            log_level: args
                .log_level
                .clone()
                .or(f.log_level)
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string()),
            metrics_listen: args.metrics_listen.or(f.metrics_listen),
            file,
        })
    }

    /// Where peers dial in.
    pub fn peer_listen(&self) -> Option<SocketAddr> {
        self.peer_listen.or_else(|| {
            self.host_addrs
                .first()
                .map(|ip| SocketAddr::new(*ip, DEFAULT_PEER_PORT))
        })
    }

    /// Every key with the value in effect, as a configuration file would spell it.
    pub fn to_file(&self) -> FileConfig {
        FileConfig {
            host_addrs: Some(self.host_addrs.clone()),
            prefixes: Some(self.prefixes.iter().map(|p| p.to_string()).collect()),
            socket: Some(self.socket.clone()),
            socket_mode: Some(format!("{:o}", self.socket_mode)),
            peer_listen: self.peer_listen(),
            peers: Some(self.peers.clone()),
            peers_file: self.peers_file.clone(),
            cluster_key: self.cluster_key.clone(),
            insecure_peer_channel: Some(self.insecure_peer_channel),
            lease_ports: Some(match self.lease_ports {
                Some(LeasePorts::Off) => "off".to_string(),
                Some(LeasePorts::Range(lo, hi)) => format!("{lo}-{hi}"),
                None => match crate::leases::default_range() {
                    Some((lo, hi)) => format!("{lo}-{hi}"),
                    None => "off".to_string(),
                },
            }),
            lease_uids: Some(self.lease_uids.to_string()),
            policy_file: self.policy_file.clone(),
            secure: Some(self.secure),
            log_level: Some(self.log_level.clone()),
            metrics_listen: self.metrics_listen,
        }
    }

    /// The effective configuration as TOML.
    pub fn render(&self) -> String {
        toml::to_string(&self.to_file()).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(a: &[&str]) -> RunArgs {
        let mut v = vec!["slim-router"];
        v.extend_from_slice(a);
        crate::cli::Args::try_parse_from(v).unwrap().run
    }

    const FULL: &str = r#"
host_addrs   = ["192.168.1.11"]
prefixes     = ["10.32.0.0/12", "fd00:32::/64"]
socket       = "/run/slim/router.sock"
socket_mode  = "660"
peer_listen  = "192.168.1.11:7788"
peers        = ["192.168.1.12:7788"]
peers_file   = "/etc/slim/peers"
cluster_key  = "/etc/slim/cluster.key"
insecure_peer_channel = false
lease_ports  = "40000-65535"
lease_uids   = "3000000,3000001,3000002"
secure       = false
log_level    = "info"
metrics_listen = "127.0.0.1:9788"
"#;

    fn p() -> &'static Path {
        Path::new("/etc/slim/router.toml")
    }

    /// deploy/systemd/router.toml, the example operators start from, stays valid.
    #[test]
    fn the_example_configuration_parses() {
        let text = include_str!("../../deploy/systemd/router.toml");
        let f = parse(text, p()).unwrap();
        let c = Config::merge(&args(&[]), f, Some(p().into())).unwrap();
        assert_eq!(
            c.cluster_key.as_deref(),
            Some(Path::new("/etc/slim/cluster.key"))
        );
        assert!(!c.insecure_peer_channel);
    }

    #[test]
    fn every_agreed_key_parses() {
        let f = parse(FULL, p()).unwrap();
        let c = Config::merge(&args(&[]), f, Some(p().into())).unwrap();
        assert_eq!(
            c.host_addrs,
            vec!["192.168.1.11".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(c.prefixes.len(), 2);
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.peers, vec!["192.168.1.12:7788".parse().unwrap()]);
        assert_eq!(c.peers_file.as_deref(), Some(Path::new("/etc/slim/peers")));
        assert!(matches!(
            c.lease_ports,
            Some(LeasePorts::Range(40000, 65535))
        ));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9788".parse().unwrap()));
        assert_eq!(c.lease_uids.to_string(), "3000000,3000001,3000002");
        assert!(!c.insecure_peer_channel && !c.secure);
    }

    #[test]
    fn unknown_and_mistyped_keys_are_errors_that_name_them() {
        let e = parse("host_adrs = [\"192.168.1.11\"]\n", p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("host_adrs") && e.contains("router.toml"), "{e}");
        let e = parse("secure = \"yes\"\n", p()).unwrap_err().to_string();
        assert!(e.contains("secure"), "{e}");
        let f = parse("prefixes = [\"10.32.0.0/33\"]\n", p()).unwrap();
        let e = Config::merge(&args(&[]), f, Some(p().into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`prefixes`") && e.contains("10.32.0.0/33"),
            "{e}"
        );
        let f = parse("socket_mode = \"9\"\n", p()).unwrap();
        let e = Config::merge(&args(&[]), f, None).unwrap_err().to_string();
        assert!(e.contains("`socket_mode`"), "{e}");
        let f = parse("lease_ports = \"61000\"\n", p()).unwrap();
        let e = Config::merge(&args(&[]), f, None).unwrap_err().to_string();
        assert!(
            e.contains("`lease_ports`") && e.contains("61000-65535"),
            "{e}"
        );
    }

    #[test]
    fn flags_win_and_repeated_flags_replace_lists() {
        let f = parse(FULL, p()).unwrap();
        let c = Config::merge(
            &args(&[
                "--peer",
                "192.168.1.13:7788",
                "--peer",
                "192.168.1.14:7788",
                "--prefix",
                "10.40.0.0/16",
                "--socket-mode",
                "600",
                "--lease-ports",
                "off",
                "--secure",
                "--log-level",
                "debug",
            ]),
            f,
            None,
        )
        .unwrap();
        assert_eq!(
            c.peers,
            vec![
                "192.168.1.13:7788".parse().unwrap(),
                "192.168.1.14:7788".parse().unwrap()
            ]
        );
        assert_eq!(c.prefixes, vec!["10.40.0.0/16".parse::<IpNet>().unwrap()]);
        assert_eq!(c.socket_mode, 0o600);
        assert!(matches!(c.lease_ports, Some(LeasePorts::Off)));
        assert!(c.secure);
        assert_eq!(c.log_level, "debug");
        // What no flag gave comes from the file.
        assert_eq!(
            c.host_addrs,
            vec!["192.168.1.11".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            c.cluster_key.as_deref(),
            Some(Path::new("/etc/slim/cluster.key"))
        );
    }

    #[test]
    fn defaults_without_file_or_flags() {
        let c = Config::merge(
            &args(&["--host-addr", "192.168.1.11"]),
            FileConfig::default(),
            None,
        )
        .unwrap();
        assert_eq!(c.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(c.socket_mode, 0o666);
        assert_eq!(c.prefixes, vec![DEFAULT_PREFIX.parse::<IpNet>().unwrap()]);
        assert_eq!(c.peer_listen(), Some("192.168.1.11:7788".parse().unwrap()));
        assert_eq!(c.log_level, "info");
        assert!(c.metrics_listen.is_none() && c.peers_file.is_none());
    }

    #[test]
    fn the_printed_configuration_reads_back_the_same() {
        let f = parse(FULL, p()).unwrap();
        let c = Config::merge(&args(&[]), f, Some(p().into())).unwrap();
        let text = c.render();
        let again =
            Config::merge(&args(&[]), parse(&text, p()).unwrap(), Some(p().into())).unwrap();
        assert_eq!(c, again, "{text}");
    }

    #[test]
    fn a_missing_explicit_file_is_an_error_naming_it_and_a_missing_default_is_not() {
        let e = load(Some(Path::new("/nonexistent/slim/router.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/slim/router.toml"), "{e}");
        if !Path::new(DEFAULT_CONFIG).exists() {
            let (f, from) = load(None).unwrap();
            assert_eq!(f, FileConfig::default());
            assert!(from.is_none());
        }
    }
}
