//! The route table: a shared-memory copy of a router's view of where Slim listeners are
//! (overlay endpoint -> up to [`MAX_ROUTES`] host listener endpoints). The router rewrites a
//! slot whenever its own table changes; the preload libraries of its host map it read-only and
//! resolve a connect without a round trip to the router. An overlay endpoint that is absent (or
//! whose slot holds no route) has no Slim listener: the connection takes the overlay.
//!
//! Slot: 16 `u64` words, sequence-counter guarded like the accept table.
//! word 0: sequence (0 = never used); words 1-3: key; then [`MAX_ROUTES`] routes of 3 words.

use core::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use core::sync::atomic::{fence, AtomicU64, Ordering};

pub const SLOTS: usize = 1 << 14;
pub const SLOT_WORDS: usize = 16;
pub const TABLE_WORDS: usize = SLOTS * SLOT_WORDS;
pub const TABLE_BYTES: usize = TABLE_WORDS * 8;
pub const MAX_ROUTES: usize = 4;
const PROBE: usize = 8;

/// An endpoint in three words; all zero means "none".
fn pack(a: &SocketAddr) -> [u64; 3] {
    let (o, fam) = match a.ip() {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 4u64),
        IpAddr::V6(v6) => (v6.octets(), 6u64),
    };
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&o[..8]);
    lo.copy_from_slice(&o[8..]);
    [
        u64::from_le_bytes(hi),
        u64::from_le_bytes(lo),
        a.port() as u64 | fam << 16,
    ]
}

fn unpack(w: &[u64; 3]) -> Option<SocketAddr> {
    let mut o = [0u8; 16];
    o[..8].copy_from_slice(&w[0].to_le_bytes());
    o[8..].copy_from_slice(&w[1].to_le_bytes());
    let ip = Ipv6Addr::from(o);
    let port = w[2] as u16;
    match (w[2] >> 16) & 0xff {
        4 => Some(SocketAddr::V4(SocketAddrV4::new(
            ip.to_ipv4_mapped()?,
            port,
        ))),
        6 => Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))),
        _ => None,
    }
}

fn hash(key: &[u64; 3]) -> usize {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for k in key {
        h = (h ^ k).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 31;
    }
    h as usize
}

pub struct RouteTable<'a> {
    words: &'a [AtomicU64],
}

/// The host listeners serving one overlay endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routes {
    pub count: usize,
    pub hosts: [Option<SocketAddr>; MAX_ROUTES],
}

impl<'a> RouteTable<'a> {
    pub fn new(words: &'a [AtomicU64]) -> Option<Self> {
        (words.len() == TABLE_WORDS).then_some(RouteTable { words })
    }

    fn slot(&self, i: usize) -> &'a [AtomicU64] {
        let i = i % SLOTS;
        &self.words[i * SLOT_WORDS..(i + 1) * SLOT_WORDS]
    }

    fn key_of(s: &[AtomicU64]) -> [u64; 3] {
        [
            s[1].load(Ordering::Relaxed),
            s[2].load(Ordering::Relaxed),
            s[3].load(Ordering::Relaxed),
        ]
    }

    /// Sets the routes of `overlay` (an empty list removes them). One writer at a time. Returns
    /// false if the table is too full to place the key (lookups then miss: overlay fallback).
    pub fn set(&self, overlay: &SocketAddr, hosts: &[SocketAddr]) -> bool {
        let key = pack(overlay);
        let h = hash(&key);
        let mut target = None;
        for p in 0..PROBE {
            let s = self.slot(h + p);
            if s[0].load(Ordering::Relaxed) != 0 && Self::key_of(s) == key {
                target = Some(s);
                break;
            }
        }
        if target.is_none() {
            if hosts.is_empty() {
                return true;
            }
            // A slot never used, or one whose routes were all removed.
            for p in 0..PROBE {
                let s = self.slot(h + p);
                let unused = s[0].load(Ordering::Relaxed) == 0 || s[6].load(Ordering::Relaxed) == 0;
                if unused {
                    target = Some(s);
                    break;
                }
            }
        }
        let Some(s) = target else { return false };
        let seq = s[0].load(Ordering::Relaxed);
        let writing = (seq | 1).wrapping_add(if seq & 1 == 1 { 2 } else { 0 });
        s[0].store(writing, Ordering::Relaxed);
        fence(Ordering::Release);
        for (i, k) in key.iter().enumerate() {
            s[1 + i].store(*k, Ordering::Relaxed);
        }
        for r in 0..MAX_ROUTES {
            let w = hosts.get(r).map(pack).unwrap_or([0; 3]);
            for (i, x) in w.iter().enumerate() {
                s[4 + r * 3 + i].store(*x, Ordering::Relaxed);
            }
        }
        s[0].store(writing.wrapping_add(1), Ordering::Release);
        true
    }

    /// The routes of `overlay`, if any. Lock-free, allocation-free.
    pub fn lookup(&self, overlay: &SocketAddr) -> Option<Routes> {
        let key = pack(overlay);
        let h = hash(&key);
        for p in 0..PROBE {
            let s = self.slot(h + p);
            for _attempt in 0..4 {
                let before = s[0].load(Ordering::Acquire);
                if before == 0 {
                    return None;
                }
                if before & 1 == 1 {
                    core::hint::spin_loop();
                    continue;
                }
                let k = Self::key_of(s);
                let mut w = [0u64; 3 * MAX_ROUTES];
                for (i, x) in w.iter_mut().enumerate() {
                    *x = s[4 + i].load(Ordering::Relaxed);
                }
                fence(Ordering::Acquire);
                if s[0].load(Ordering::Relaxed) != before {
                    continue;
                }
                if k != key {
                    break;
                }
                let mut out = Routes::default();
                for r in 0..MAX_ROUTES {
                    let e = [w[r * 3], w[r * 3 + 1], w[r * 3 + 2]];
                    if let Some(a) = unpack(&e) {
                        out.hosts[out.count] = Some(a);
                        out.count += 1;
                    }
                }
                return (out.count > 0).then_some(out);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn set_lookup_replace_remove() {
        let words: Vec<AtomicU64> = (0..TABLE_WORDS).map(|_| AtomicU64::new(0)).collect();
        let t = RouteTable::new(&words).unwrap();
        let k = sa("10.32.0.2:80");
        assert_eq!(t.lookup(&k), None);
        assert!(t.set(&k, &[sa("192.168.77.2:41000")]));
        let r = t.lookup(&k).unwrap();
        assert_eq!((r.count, r.hosts[0]), (1, Some(sa("192.168.77.2:41000"))));
        assert!(t.set(&k, &[sa("192.168.77.2:41000"), sa("192.168.77.2:41001")]));
        assert_eq!(t.lookup(&k).unwrap().count, 2);
        assert!(t.set(&k, &[]));
        assert_eq!(t.lookup(&k), None);
        // The removed key's slot is reused, and other keys are unaffected.
        let k6 = sa("[fd00:32::2]:80");
        assert!(t.set(&k6, &[sa("192.168.77.2:41002")]));
        assert!(t.set(&k, &[sa("192.168.77.2:41003")]));
        assert_eq!(
            t.lookup(&k6).unwrap().hosts[0],
            Some(sa("192.168.77.2:41002"))
        );
        assert_eq!(
            t.lookup(&k).unwrap().hosts[0],
            Some(sa("192.168.77.2:41003"))
        );
        for p in 1..3000u16 {
            let key = SocketAddr::new("10.32.0.9".parse().unwrap(), p);
            assert!(t.set(&key, &[SocketAddr::new("192.168.77.2".parse().unwrap(), p)]));
        }
        for p in 1..3000u16 {
            let key = SocketAddr::new("10.32.0.9".parse().unwrap(), p);
            assert_eq!(t.lookup(&key).unwrap().hosts[0].unwrap().port(), p);
        }
    }
}
