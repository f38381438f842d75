//! The accept table: a shared-memory hash table in which a router publishes, for every host
//! connection announced towards its host, which overlay connection it stands for. The router
//! writes it; the preload libraries of its host map it read-only (the memfd comes with the
//! router's `HelloOk`) and look accepted connections up without a round trip to the router.
//! A miss (not yet announced, or overwritten) falls back to asking the router.
//!
//! Slots are [`crate::seqslot`] slots; data words 0-5: key (client host endpoint, server host
//! endpoint), 6-11: value (client overlay endpoint, server overlay endpoint).

use crate::seqslot::{self, DATA_WORDS, SLOT_WORDS};
use core::net::SocketAddr;
use core::sync::atomic::AtomicU64;

pub const SLOTS: usize = 1 << 16;
pub const TABLE_WORDS: usize = SLOTS * SLOT_WORDS;
pub const TABLE_BYTES: usize = TABLE_WORDS * 8;
/// Slots probed from the hashed position.
const PROBE: usize = 4;

/// Key (client host, server host) and value (client overlay, server overlay): 12 data words.
fn key(client_host: &SocketAddr, server_host: &SocketAddr) -> [u64; 6] {
    let (a, b) = (seqslot::pack(client_host), seqslot::pack(server_host));
    [a[0], a[1], a[2], b[0], b[1], b[2]]
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

    /// Publishes an entry. Only one writer at a time (the caller serializes).
    pub fn insert(&self, client_host: &SocketAddr, server_host: &SocketAddr, e: &Entry) {
        let key = key(client_host, server_host);
        let h = seqslot::hash(&key);
        // The first probed slot that is empty or holds the same key; else the hashed slot
        // (overwriting the oldest-looking is not worth the bookkeeping).
        let target = (0..PROBE)
            .map(|p| seqslot::slot(self.words, h + p))
            .find(|s| !seqslot::is_used(s) || seqslot::read(s).is_some_and(|d| d[..6] == key))
            .unwrap_or_else(|| seqslot::slot(self.words, h));
        let mut data = [0u64; DATA_WORDS];
        data[..6].copy_from_slice(&key);
        data[6..9].copy_from_slice(&seqslot::pack(&e.client_overlay));
        data[9..12].copy_from_slice(&seqslot::pack(&e.server_overlay));
        seqslot::write(target, &data);
    }

    /// Looks a host connection up. Lock-free and allocation-free.
    pub fn lookup(&self, client_host: &SocketAddr, server_host: &SocketAddr) -> Option<Entry> {
        let key = key(client_host, server_host);
        let h = seqslot::hash(&key);
        let d = (0..PROBE)
            .filter_map(|p| seqslot::read(seqslot::slot(self.words, h + p)))
            .find(|d| d[..6] == key)?;
        Some(Entry {
            client_overlay: seqslot::unpack(&d[6..9])?,
            server_overlay: seqslot::unpack(&d[9..12])?,
        })
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
