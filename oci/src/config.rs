//! slim-oci's own configuration (`/etc/slim/oci.toml`) and the three keys it reads from the
//! router's configuration (`prefixes`, `socket`, `secure`; the router owns that file's schema,
//! so every other key is ignored here).

use ipnet::IpNet;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/slim/oci.toml";
/// Overrides [`DEFAULT_PATH`]; `--slim-config PATH` overrides both.
pub const PATH_ENV: &str = "SLIM_OCI_CONFIG";
pub const DEFAULT_ROUTER_CONFIG: &str = "/etc/slim/router.toml";
pub const DEFAULT_LIBRARY: &str = "/usr/local/lib/slim/libslim_preload.so";
/// The router's defaults for the keys slim-oci reads (`slim-router --help`).
const ROUTER_DEFAULT_SOCKET: &str = "/run/slim/router.sock";
const ROUTER_DEFAULT_PREFIX: &str = "10.32.0.0/12";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Whether containers without an `io.slim/enable` annotation get Slim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostDefault {
    #[default]
    Off,
    On,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OciConfig {
    /// The real runtime: a path, or a name looked up in PATH. None: crun, else runc.
    pub runtime: Option<String>,
    pub router_config: PathBuf,
    pub library: PathBuf,
    pub default: HostDefault,
    /// A file that gets every line slim-oci logs, besides syslog and the runtime's log.
    pub log: Option<PathBuf>,
}

impl Default for OciConfig {
    fn default() -> Self {
        OciConfig {
            runtime: None,
            router_config: DEFAULT_ROUTER_CONFIG.into(),
            library: DEFAULT_LIBRARY.into(),
            default: HostDefault::Off,
            log: None,
        }
    }
}

/// Where the configuration is: `--slim-config`, else `$SLIM_OCI_CONFIG`, else the default.
/// The bool says whether it was named explicitly (then it must exist).
pub fn locate(flag: Option<&Path>) -> (PathBuf, bool) {
    if let Some(p) = flag {
        return (p.to_path_buf(), true);
    }
    match std::env::var_os(PATH_ENV) {
        Some(p) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from(DEFAULT_PATH), false),
    }
}

/// Reads slim-oci's configuration; a missing default file means all defaults.
pub fn load(path: &Path, explicit: bool) -> Result<OciConfig, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(OciConfig::default())
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.into(),
                source,
            })
        }
    };
    toml::from_str(&text).map_err(|e| ConfigError::Invalid {
        path: path.into(),
        message: e.to_string(),
    })
}

/// What slim-oci needs from the router's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterSettings {
    pub prefixes: Vec<IpNet>,
    pub socket: PathBuf,
    pub secure: bool,
}

/// The router's keys as written; unknown keys are the router's business.
#[derive(Deserialize)]
struct RouterFile {
    prefixes: Option<Vec<String>>,
    socket: Option<PathBuf>,
    #[serde(default)]
    secure: bool,
}

/// Reads the router's configuration. Unlike the router, slim-oci needs the file: without it,
/// it cannot know the prefixes or whether the router runs in secure mode.
pub fn load_router(path: &Path) -> Result<RouterSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse_router(path, &text)
}

fn parse_router(path: &Path, text: &str) -> Result<RouterSettings, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.into(),
        message,
    };
    let file: RouterFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let prefixes = file
        .prefixes
        .unwrap_or_else(|| vec![ROUTER_DEFAULT_PREFIX.to_string()])
        .iter()
        .map(|p| {
            p.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
                invalid(format!(
                    "prefix `{p}` is not a CIDR prefix such as 10.32.0.0/12"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if prefixes.is_empty() {
        return Err(invalid("`prefixes` is empty".into()));
    }
    let socket = file.socket.unwrap_or_else(|| ROUTER_DEFAULT_SOCKET.into());
    if !socket.is_absolute() || socket.file_name().is_none() {
        return Err(invalid(format!(
            "socket `{}` must be an absolute path to a file",
            socket.display()
        )));
    }
    Ok(RouterSettings {
        prefixes,
        socket,
        secure: file.secure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_config_keys_and_defaults() {
        let c: OciConfig = toml::from_str(
            "runtime = \"/usr/bin/crun\"\nrouter_config = \"/etc/slim/h1.toml\"\n\
             library = \"/opt/slim/libslim_preload.so\"\ndefault = \"on\"\nlog = \"/var/log/slim-oci.log\"\n",
        )
        .unwrap();
        assert_eq!(c.runtime.as_deref(), Some("/usr/bin/crun"));
        assert_eq!(c.router_config, PathBuf::from("/etc/slim/h1.toml"));
        assert_eq!(c.default, HostDefault::On);
        assert_eq!(c.log, Some("/var/log/slim-oci.log".into()));
        let empty: OciConfig = toml::from_str("").unwrap();
        assert_eq!(empty, OciConfig::default());
        assert!(toml::from_str::<OciConfig>("runtime_path = \"x\"").is_err());
        assert!(toml::from_str::<OciConfig>("default = \"maybe\"").is_err());
    }

    #[test]
    fn the_installed_example_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/oci.toml");
        assert_eq!(load(&path, true).unwrap(), OciConfig::default());
    }

    #[test]
    fn missing_default_file_is_defaults_missing_explicit_is_error() {
        let p = Path::new("/nonexistent/slim/oci.toml");
        assert_eq!(load(p, false).unwrap(), OciConfig::default());
        assert!(matches!(load(p, true), Err(ConfigError::Read { .. })));
    }

    #[test]
    fn router_keys_read_others_ignored() {
        // The agreed example from the common interface, every key present.
        let text = r#"
host_addrs   = ["192.168.1.11"]
prefixes     = ["10.32.0.0/12", "fd00:32::/64"]
socket       = "/run/slim/router.sock"
socket_mode  = "666"
peer_listen  = "192.168.1.11:7788"
peers        = ["192.168.1.12:7788"]
peers_file   = "/etc/slim/peers"
cluster_key  = "/etc/slim/cluster.key"
insecure_peer_channel = false
lease_ports  = "40000-65535"
secure       = true
log_level    = "info"
metrics_listen = "127.0.0.1:9788"
"#;
        let r = parse_router(Path::new("r.toml"), text).unwrap();
        assert_eq!(
            r.prefixes,
            vec![
                "10.32.0.0/12".parse::<IpNet>().unwrap(),
                "fd00:32::/64".parse().unwrap()
            ]
        );
        assert_eq!(r.socket, PathBuf::from("/run/slim/router.sock"));
        assert!(r.secure);
    }

    #[test]
    fn router_defaults_and_errors() {
        let r = parse_router(Path::new("r.toml"), "host_addrs = [\"10.0.0.1\"]").unwrap();
        assert_eq!(r.prefixes, vec!["10.32.0.0/12".parse::<IpNet>().unwrap()]);
        assert_eq!(r.socket, PathBuf::from("/run/slim/router.sock"));
        assert!(!r.secure);
        assert!(parse_router(Path::new("r"), "prefixes = [\"10.32.0.0/33\"]").is_err());
        assert!(parse_router(Path::new("r"), "socket = \"router.sock\"").is_err());
        assert!(parse_router(Path::new("r"), "prefixes = []").is_err());
        assert!(parse_router(Path::new("r"), "secure = \"yes\"").is_err());
    }
}
