//! The accept table: a shared-memory hash table in which a router publishes, for every host
//! connection announced towards its host, which overlay connection it stands for. The router
//! writes it; the preload libraries of its host map it read-only (the memfd comes with the
//! router's `HelloOk`) and look accepted connections up without a round trip to the router.
//! A miss (not yet announced, or overwritten) falls back to asking the router.
//!
//! Slots are 16 `u64` words, guarded by a sequence counter (odd while being written), written by
//! one writer at a time (the router serializes its writes).
//!
//! word 0: sequence; words 1-5: key (client host endpoint, server host endpoint);
//! words 6-10: value (client overlay endpoint, server overlay endpoint); rest unused.

use core::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use core::sync::atomic::{fence, AtomicU64, Ordering};

pub const SLOTS: usize = 1 << 16;
pub const SLOT_WORDS: usize = 16;
pub const TABLE_WORDS: usize = SLOTS * SLOT_WORDS;
pub const TABLE_BYTES: usize = TABLE_WORDS * 8;
/// Slots probed from the hashed position.
const PROBE: usize = 4;

/// Two endpoints in five words: (ip0 ip1 ip2 ip3 as 4 u32 of an IPv6 or v4-mapped address,
/// ports and family flags packed).
fn pack(a: &SocketAddr, b: &SocketAddr) -> [u64; 5] {
    fn ip16(s: &SocketAddr) -> [u8; 16] {
        match s.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }
    fn fam(s: &SocketAddr) -> u64 {
        if s.is_ipv4() {
            4
        } else {
            6
        }
    }
    let (x, y) = (ip16(a), ip16(b));
    let w = |o: &[u8; 16], i: usize| {
        u64::from_le_bytes([
            o[i],
            o[i + 1],
            o[i + 2],
            o[i + 3],
            o[i + 4],
            o[i + 5],
            o[i + 6],
            o[i + 7],
        ])
    };
    [
        w(&x, 0),
        w(&x, 8),
        w(&y, 0),
        w(&y, 8),
        a.port() as u64 | (b.port() as u64) << 16 | fam(a) << 32 | fam(b) << 40,
    ]
}

fn unpack(w: &[u64; 5]) -> Option<(SocketAddr, SocketAddr)> {
    fn one(hi: u64, lo: u64, port: u16, fam: u64) -> Option<SocketAddr> {
        let mut o = [0u8; 16];
        o[..8].copy_from_slice(&hi.to_le_bytes());
        o[8..].copy_from_slice(&lo.to_le_bytes());
        let ip = Ipv6Addr::from(o);
        match fam {
            4 => Some(SocketAddr::V4(SocketAddrV4::new(
                ip.to_ipv4_mapped()?,
                port,
            ))),
            6 => Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))),
            _ => None,
        }
    }
    let meta = w[4];
    let a = one(w[0], w[1], meta as u16, (meta >> 32) & 0xff)?;
    let b = one(w[2], w[3], (meta >> 16) as u16, (meta >> 40) & 0xff)?;
    Some((a, b))
}

fn hash(key: &[u64; 5]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for k in key {
        h = (h ^ k).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h as usize
}

/// A view of the table over shared memory.
pub struct AcceptTable<'a> {
    words: &'a [AtomicU64],
}

/// An announced connection: the overlay endpoints of its client and of its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub client_overlay: SocketAddr,
    pub server_overlay: SocketAddr,
}

impl<'a> AcceptTable<'a> {
    /// None if `words` is not exactly a table.
    pub fn new(words: &'a [AtomicU64]) -> Option<Self> {
        (words.len() == TABLE_WORDS).then_some(AcceptTable { words })
    }

    fn slot(&self, i: usize) -> &'a [AtomicU64] {
        let i = i % SLOTS;
        &self.words[i * SLOT_WORDS..(i + 1) * SLOT_WORDS]
    }

    /// Publishes an entry. Only one writer at a time (the caller serializes).
    pub fn insert(&self, client_host: &SocketAddr, server_host: &SocketAddr, e: &Entry) {
        let key = pack(client_host, server_host);
        let val = pack(&e.client_overlay, &e.server_overlay);
        let h = hash(&key);
        // The first probed slot that is empty or holds the same key; else the hashed slot
        // (overwriting the oldest-looking is not worth the bookkeeping).
        let mut target = self.slot(h);
        for p in 0..PROBE {
            let s = self.slot(h + p);
            let same = (0..5).all(|i| s[1 + i].load(Ordering::Relaxed) == key[i]);
            let empty = s[0].load(Ordering::Relaxed) == 0;
            if same || empty {
                target = s;
                break;
            }
        }
        let seq = target[0].load(Ordering::Relaxed);
        let writing = (seq | 1).wrapping_add(if seq & 1 == 1 { 2 } else { 0 });
        target[0].store(writing, Ordering::Relaxed);
        fence(Ordering::Release);
        for i in 0..5 {
            target[1 + i].store(key[i], Ordering::Relaxed);
            target[6 + i].store(val[i], Ordering::Relaxed);
        }
        target[0].store(writing.wrapping_add(1), Ordering::Release);
    }

    /// Looks a host connection up. Lock-free and allocation-free.
    pub fn lookup(&self, client_host: &SocketAddr, server_host: &SocketAddr) -> Option<Entry> {
        let key = pack(client_host, server_host);
        let h = hash(&key);
        for p in 0..PROBE {
            let s = self.slot(h + p);
            for _attempt in 0..4 {
                let before = s[0].load(Ordering::Acquire);
                if before == 0 {
                    break;
                }
                if before & 1 == 1 {
                    core::hint::spin_loop();
                    continue;
                }
                let mut k = [0u64; 5];
                let mut v = [0u64; 5];
                for i in 0..5 {
                    k[i] = s[1 + i].load(Ordering::Relaxed);
                    v[i] = s[6 + i].load(Ordering::Relaxed);
                }
                fence(Ordering::Acquire);
                if s[0].load(Ordering::Relaxed) != before {
                    continue;
                }
                if k != key {
                    break;
                }
                let (client_overlay, server_overlay) = unpack(&v)?;
                return Some(Entry {
                    client_overlay,
                    server_overlay,
                });
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
    fn insert_then_lookup_and_misses() {
        let words: Vec<AtomicU64> = (0..TABLE_WORDS).map(|_| AtomicU64::new(0)).collect();
        let t = AcceptTable::new(&words).unwrap();
        let e = Entry {
            client_overlay: sa("10.32.0.1:40000"),
            server_overlay: sa("[fd00:32::2]:80"),
        };
        assert_eq!(
            t.lookup(&sa("192.168.77.1:40000"), &sa("192.168.77.2:5000")),
            None
        );
        t.insert(&sa("192.168.77.1:40000"), &sa("192.168.77.2:5000"), &e);
        assert_eq!(
            t.lookup(&sa("192.168.77.1:40000"), &sa("192.168.77.2:5000")),
            Some(e)
        );
        assert_eq!(
            t.lookup(&sa("192.168.77.1:40001"), &sa("192.168.77.2:5000")),
            None
        );
        // Many entries: every one still found or cleanly missing, never a wrong answer.
        for p in 0..20_000u16 {
            let c = SocketAddr::new("192.168.77.1".parse().unwrap(), p);
            let e = Entry {
                client_overlay: SocketAddr::new("10.32.0.1".parse().unwrap(), p),
                server_overlay: sa("10.32.0.2:80"),
            };
            t.insert(&c, &sa("192.168.77.2:5000"), &e);
        }
        for p in 0..20_000u16 {
            let c = SocketAddr::new("192.168.77.1".parse().unwrap(), p);
            if let Some(e) = t.lookup(&c, &sa("192.168.77.2:5000")) {
                assert_eq!(e.client_overlay.port(), p);
            }
        }
    }
}
