//! Which TCP sockets the kernel has in LISTEN state in this network namespace, from
//! /proc/net/tcp and /proc/net/tcp6. Used to notice host listeners whose last holder closed them.

use crate::hostsock::normalize;
use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

const TCP_LISTEN: &str = "0A";

pub fn listening_endpoints() -> io::Result<HashSet<SocketAddr>> {
    let mut out = HashSet::new();
    for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        match std::fs::read_to_string(path) {
            Ok(text) => parse(&text, v6, &mut out),
            // A kernel without IPv6 has no tcp6 file.
            Err(e) if e.kind() == io::ErrorKind::NotFound && v6 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn parse(text: &str, v6: bool, out: &mut HashSet<SocketAddr>) {
    for line in text.lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(_sl), Some(local), Some(_rem), Some(st)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if st != TCP_LISTEN {
            continue;
        }
        if let Some(a) = parse_endpoint(local, v6) {
            out.insert(normalize(a));
        }
    }
}

/// "0100007F:1F90": the address as the kernel's in-memory words printed in hex (so each 32-bit
/// word is in host byte order), then the port.
fn parse_endpoint(s: &str, v6: bool) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if !v6 {
        let w = u32::from_str_radix(addr, 16).ok()?;
        return Some(SocketAddr::new(
            Ipv4Addr::from(w.to_ne_bytes()).into(),
            port,
        ));
    }
    if addr.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for i in 0..4 {
        let w = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Some(SocketAddr::new(Ipv6Addr::from(bytes).into(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families() {
        let v4 = "  sl  local_address rem_address   st\n   0: 014DA8C0:1F90 00000000:0000 0A 0\n   1: 014DA8C0:1F91 024DA8C0:0050 01 0\n";
        let mut out = HashSet::new();
        parse(v4, false, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out.contains(&"192.168.77.1:8080".parse().unwrap()));
        let v6 = "  sl  local_address\n   0: 0000000000000000FFFF0000014DA8C0:1F90 00000000000000000000000000000000:0000 0A\n";
        let mut out = HashSet::new();
        parse(v6, true, &mut out);
        assert!(out.contains(&"192.168.77.1:8080".parse().unwrap()));
    }

    #[test]
    fn sees_a_real_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let eps = listening_endpoints().unwrap();
        assert!(eps.contains(&l.local_addr().unwrap()));
    }
}
