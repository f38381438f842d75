//! The accept table: a shared-memory hash table in which a router publishes, for every host
//! connection announced towards its host, which overlay connection it stands for. The router
//! writes it; the preload libraries of its host map it read-only (the memfd comes with the
//! router's `HelloOk`) and look accepted connections up without a round trip to the router.
//! A miss (not yet announced, or overwritten) falls back to asking the router.
//!
//! Slots are [`crate::seqslot`] slots; data words 0-5: key (client host endpoint, server host
//! endpoint), 6-11: value (client overlay endpoint, server overlay endpoint).
//!
//! Two more kinds of entries share the table, told apart by a stand-in endpoint in the key:
//! - *leases* (server host endpoint [`ANY`]): every connection from this client host endpoint
//!   is from this overlay address (`PeerMsg::Lease`);
//! - *listener keys* (client host endpoint [`KEYS`]): the overlay endpoint, per family, that a
//!   host listener of this host serves, when it serves exactly one of that family.
//!
//! Together they identify a connection from a leased port without any announcement.

use crate::seqslot::{self, DATA_WORDS, SLOT_WORDS};
use core::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use core::sync::atomic::AtomicU64;

pub const SLOTS: usize = 1 << 16;
pub const TABLE_WORDS: usize = SLOTS * SLOT_WORDS;
pub const TABLE_BYTES: usize = TABLE_WORDS * 8;
/// A lease table ([`AcceptTable::for_leases`]) is larger: an entry per port of every peer's
/// lease range (25k ports per host in the lab, 4.5k with Linux's default ranges). Its pages are
/// allocated only as entries land on them.
pub const LEASE_SLOTS: usize = 1 << 18;
pub const LEASE_TABLE_WORDS: usize = LEASE_SLOTS * SLOT_WORDS;
pub const LEASE_TABLE_BYTES: usize = LEASE_TABLE_WORDS * 8;
/// Slots probed from the hashed position (connection entries come and go; a miss costs a round
/// trip to the router).
const PROBE: usize = 4;
/// Slots probed in a lease table ([`AcceptTable::for_leases`]): its entries stay (one per port
/// of each host's lease range), and one pushed out would cost a round trip per connection from
/// that port.
pub const LEASE_PROBE: usize = 32;
/// The stand-in server endpoint of lease entries, and the "ask the router" value.
pub const ANY: SocketAddr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
/// The stand-in client endpoint of listener-key entries.
pub const KEYS: SocketAddr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 1, 0, 0));

/// What the table says about a client host endpoint's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Connections from it are from this overlay address.
    Owner(IpAddr),
    /// Some connections from it predate its current lease: only the router can tell them apart.
    Ask,
}

/// Key (client host, server host) and value (client overlay, server overlay): 12 data words.
fn key(client_host: &SocketAddr, server_host: &SocketAddr) -> [u64; 6] {
    let (a, b) = (seqslot::pack(client_host), seqslot::pack(server_host));
    [a[0], a[1], a[2], b[0], b[1], b[2]]
}

/// A view of the table over shared memory.
pub struct AcceptTable<'a> {
    words: &'a [AtomicU64],
    probe: usize,
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
        (words.len() == TABLE_WORDS).then_some(AcceptTable {
            words,
            probe: PROBE,
        })
    }

    /// A table of leases and listener keys (probed further).
    pub fn for_leases(words: &'a [AtomicU64]) -> Option<Self> {
        (words.len() == LEASE_TABLE_WORDS).then_some(AcceptTable {
            words,
            probe: LEASE_PROBE,
        })
    }

    /// Publishes an entry. Only one writer at a time (the caller serializes).
    pub fn insert(&self, client_host: &SocketAddr, server_host: &SocketAddr, e: &Entry) {
        let key = key(client_host, server_host);
        let h = seqslot::hash(&key);
        // The first probed slot that is empty or holds the same key; else the hashed slot
        // (overwriting the oldest-looking is not worth the bookkeeping).
        let target = (0..self.probe)
            .map(|p| seqslot::slot(self.words, h + p))
            .find(|s| !seqslot::is_used(s) || seqslot::read(s).is_some_and(|d| d[..6] == key))
            .unwrap_or_else(|| seqslot::slot(self.words, h));
        let mut data = [0u64; DATA_WORDS];
        data[..6].copy_from_slice(&key);
        data[6..9].copy_from_slice(&seqslot::pack(&e.client_overlay));
        data[9..12].copy_from_slice(&seqslot::pack(&e.server_overlay));
        seqslot::write(target, &data);
    }

    /// Publishes the lease of a client host endpoint (None: ask the router).
    pub fn set_lease(&self, client_host: &SocketAddr, owner: Option<IpAddr>) {
        let v = owner.map_or(ANY, |ip| SocketAddr::new(ip, client_host.port()));
        self.insert(
            client_host,
            &ANY,
            &Entry {
                client_overlay: v,
                server_overlay: ANY,
            },
        );
    }

    /// The lease of a client host endpoint, if one was published.
    pub fn lease(&self, client_host: &SocketAddr) -> Option<Lease> {
        let e = self.lookup(client_host, &ANY)?;
        Some(if e.client_overlay == ANY {
            Lease::Ask
        } else {
            Lease::Owner(e.client_overlay.ip())
        })
    }

    /// Publishes the overlay endpoints a host listener serves, one per family (None: none, or
    /// more than one).
    pub fn set_listener_keys(
        &self,
        server_host: &SocketAddr,
        v4: Option<SocketAddr>,
        v6: Option<SocketAddr>,
    ) {
        self.insert(
            &KEYS,
            server_host,
            &Entry {
                client_overlay: v4.unwrap_or(ANY),
                server_overlay: v6.unwrap_or(ANY),
            },
        );
    }

    /// The one overlay endpoint of the family of `client` that the host listener serves.
    pub fn listener_key(&self, server_host: &SocketAddr, client: IpAddr) -> Option<SocketAddr> {
        let e = self.lookup(&KEYS, server_host)?;
        let k = if client.is_ipv4() {
            e.client_overlay
        } else {
            e.server_overlay
        };
        (k != ANY).then_some(k)
    }

    /// Looks a host connection up. Lock-free and allocation-free.
    pub fn lookup(&self, client_host: &SocketAddr, server_host: &SocketAddr) -> Option<Entry> {
        let key = key(client_host, server_host);
        let h = seqslot::hash(&key);
        let d = (0..self.probe)
            .filter_map(|p| seqslot::read(seqslot::slot(self.words, h + p)))
            .find(|d| d[..6] == key)?;
        Some(Entry {
            client_overlay: seqslot::unpack(&d[6..9])?,
            server_overlay: seqslot::unpack(&d[9..12])?,
        })
    }

    /// Looks an announced connection up; an entry the router withdrew (all [`ANY`]) is a miss.
    pub fn lookup_connection(
        &self,
        client_host: &SocketAddr,
        server_host: &SocketAddr,
    ) -> Option<Entry> {
        self.lookup(client_host, server_host)
            .filter(|e| e.client_overlay != ANY)
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

    #[test]
    fn leases_and_listener_keys() {
        let words: Vec<AtomicU64> = (0..LEASE_TABLE_WORDS).map(|_| AtomicU64::new(0)).collect();
        let t = AcceptTable::for_leases(&words).unwrap();
        let c = sa("192.168.77.1:61000");
        let s = sa("192.168.77.2:41000");
        assert_eq!(t.lease(&c), None);
        t.set_lease(&c, Some("10.32.0.1".parse().unwrap()));
        assert_eq!(
            t.lease(&c),
            Some(Lease::Owner("10.32.0.1".parse().unwrap()))
        );
        // A lease is no connection entry, and a connection entry no lease.
        assert_eq!(t.lookup(&c, &s), None);
        t.set_lease(&c, None);
        assert_eq!(t.lease(&c), Some(Lease::Ask));
        assert_eq!(t.lease(&sa("192.168.77.1:61001")), None);

        assert_eq!(t.listener_key(&s, "10.32.0.1".parse().unwrap()), None);
        t.set_listener_keys(&s, Some(sa("10.32.0.2:80")), None);
        assert_eq!(
            t.listener_key(&s, "10.32.0.1".parse().unwrap()),
            Some(sa("10.32.0.2:80"))
        );
        assert_eq!(t.listener_key(&s, "fd00:32::1".parse().unwrap()), None);
        assert_eq!(t.lease(&s), None);
    }

    #[test]
    fn every_lease_of_a_busy_cluster_stays_found() {
        // Four peers that each leased every port of 40000-65535: all 102k leases stay found.
        let words: Vec<AtomicU64> = (0..LEASE_TABLE_WORDS).map(|_| AtomicU64::new(0)).collect();
        let t = AcceptTable::for_leases(&words).unwrap();
        let hosts = [
            "192.168.77.1",
            "192.168.77.3",
            "192.168.77.4",
            "192.168.77.5",
        ];
        for h in hosts {
            for p in 40000..=65535u16 {
                let c = SocketAddr::new(h.parse().unwrap(), p);
                t.set_lease(&c, Some("10.32.0.1".parse().unwrap()));
            }
        }
        let missing = hosts
            .iter()
            .flat_map(|h| (40000..=65535u16).map(move |p| SocketAddr::new(h.parse().unwrap(), p)))
            .filter(|c| t.lease(c).is_none())
            .count();
        assert_eq!(missing, 0);
    }
}
