//! Configuration from the environment, read once when the library loads.
//!
//! - `SLIM_PREFIXES`: overlay prefixes, comma or space separated, IPv4 and IPv6
//!   (the original Slim's `VNET_PREFIX` is accepted too). Default: 10.32.0.0/12.
//! - `SLIM_ROUTER_SOCKET`: the router's Unix socket. Default: /run/slim/router.sock.
//! - `SLIM_LOG`: off, error, warn (default), info, debug.

use crate::log::{slog, WARN};
use core::net::IpAddr;
use ipnet::IpNet;
use std::sync::OnceLock;

pub const DEFAULT_SOCKET: &str = "/run/slim/router.sock";
pub const DEFAULT_PREFIX: &str = "10.32.0.0/12";
const MAX_PREFIXES: usize = 16;

pub struct Config {
    prefixes: [Option<IpNet>; MAX_PREFIXES],
    /// The socket path as a ready-made `sockaddr_un`, so connecting needs no allocation.
    pub router_addr: libc::sockaddr_un,
    pub router_addr_len: libc::socklen_t,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

pub fn get() -> &'static Config {
    CONFIG.get_or_init(load)
}

impl Config {
    #[inline]
    pub fn in_overlay(&self, ip: IpAddr) -> bool {
        self.prefixes.iter().flatten().any(|p| p.contains(&ip))
    }

    pub fn prefixes(&self) -> impl Iterator<Item = &IpNet> {
        self.prefixes.iter().flatten()
    }
}

fn load() -> Config {
    if let Ok(l) = std::env::var("SLIM_LOG") {
        crate::log::set_level_from(&l);
    }
    let spec = std::env::var("SLIM_PREFIXES")
        .or_else(|_| std::env::var("VNET_PREFIX"))
        .unwrap_or_else(|_| DEFAULT_PREFIX.to_string());
    let mut prefixes = [None; MAX_PREFIXES];
    let mut n = 0;
    for item in spec.split([',', ' ', ';']).filter(|s| !s.is_empty()) {
        match parse_prefix(item) {
            Some(p) if n < MAX_PREFIXES => {
                prefixes[n] = Some(p);
                n += 1;
            }
            Some(_) => slog!(
                WARN,
                "more than {MAX_PREFIXES} overlay prefixes; `{item}` ignored"
            ),
            None => slog!(
                WARN,
                "SLIM_PREFIXES: `{item}` is not a CIDR prefix such as 10.32.0.0/12; ignored"
            ),
        }
    }
    let path = std::env::var("SLIM_ROUTER_SOCKET").unwrap_or_else(|_| DEFAULT_SOCKET.to_string());
    // SAFETY: sockaddr_un is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    let len = if bytes.len() < addr.sun_path.len() {
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        core::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1
    } else {
        slog!(
            WARN,
            "SLIM_ROUTER_SOCKET is longer than a Unix socket path may be; Slim is disabled"
        );
        0
    };
    Config {
        prefixes,
        router_addr: addr,
        router_addr_len: len as libc::socklen_t,
    }
}

/// Accepts `a.b.c.d/n`, `x::/n`, and a bare address (a host prefix).
fn parse_prefix(s: &str) -> Option<IpNet> {
    if let Ok(p) = s.parse::<IpNet>() {
        return Some(p.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse() {
        assert_eq!(
            parse_prefix("10.32.1.0/12").unwrap().to_string(),
            "10.32.0.0/12"
        );
        assert_eq!(
            parse_prefix("fd00:32::/64").unwrap().to_string(),
            "fd00:32::/64"
        );
        assert_eq!(parse_prefix("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert!(parse_prefix("10.0.0.0/33").is_none());
        assert!(parse_prefix("bogus").is_none());
    }
}
