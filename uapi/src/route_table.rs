//! The route table: a shared-memory copy of a router's view of where Slim listeners are
//! (overlay endpoint -> up to [`MAX_ROUTES`] host listener endpoints). The router rewrites a
//! slot whenever its own table changes; the preload libraries of its host map it read-only and
//! resolve a connect without a round trip to the router. An overlay endpoint that is absent (or
//! whose slot holds no route) has no Slim listener: the connection takes the overlay.
//!
//! Slots are [`crate::seqslot`] slots; data words 0-2: key, then [`MAX_ROUTES`] routes of 3
//! words each (all zero: no route). Bit [`SHARED_BIT`] of a route's third word says that its
//! host listener is [`shared`](crate::peer::ListenerEntry::shared).

use crate::seqslot::{self, DATA_WORDS, SLOT_WORDS};
use core::net::SocketAddr;
use core::sync::atomic::AtomicU64;

pub const SLOTS: usize = 1 << 14;
pub const TABLE_WORDS: usize = SLOTS * SLOT_WORDS;
pub const TABLE_BYTES: usize = TABLE_WORDS * 8;
/// Data words: the key (3), then MAX_ROUTES routes of 3 words.
pub const MAX_ROUTES: usize = 4;
const PROBE: usize = 8;
/// In a route's third word (port and family use bits 0-23).
const SHARED_BIT: u64 = 1 << 32;

pub struct RouteTable<'a> {
    words: &'a [AtomicU64],
}

/// The host listeners serving one overlay endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routes {
    pub count: usize,
    pub hosts: [Option<SocketAddr>; MAX_ROUTES],
    /// Per host: connections to it must be announced even from a leased port.
    pub shared: [bool; MAX_ROUTES],
}

impl<'a> RouteTable<'a> {
    pub fn new(words: &'a [AtomicU64]) -> Option<Self> {
        (words.len() == TABLE_WORDS).then_some(RouteTable { words })
    }

    /// Sets the routes of `overlay` (an empty list removes them). One writer at a time. Returns
    /// false if the table is too full to place the key (lookups then miss: overlay fallback).
    pub fn set(&self, overlay: &SocketAddr, hosts: &[(SocketAddr, bool)]) -> bool {
        let key = seqslot::pack(overlay);
        let h = seqslot::hash(&key);
        let slots = || (0..PROBE).map(|p| seqslot::slot(self.words, h + p));
        let mut target = slots().find(|s| seqslot::read(s).is_some_and(|d| d[..3] == key));
        if target.is_none() {
            if hosts.is_empty() {
                return true;
            }
            // A slot never used, or one whose routes were all removed (first route empty).
            target = slots()
                .find(|s| !seqslot::is_used(s) || seqslot::read(s).is_some_and(|d| d[5] == 0));
        }
        let Some(s) = target else { return false };
        let mut data = [0u64; DATA_WORDS];
        data[..3].copy_from_slice(&key);
        for (r, (host, shared)) in hosts.iter().take(MAX_ROUTES).enumerate() {
            let mut w = seqslot::pack(host);
            if *shared {
                w[2] |= SHARED_BIT;
            }
            data[3 + r * 3..6 + r * 3].copy_from_slice(&w);
        }
        seqslot::write(s, &data);
        true
    }

    /// The routes of `overlay`, if any. Lock-free, allocation-free.
    pub fn lookup(&self, overlay: &SocketAddr) -> Option<Routes> {
        let key = seqslot::pack(overlay);
        let h = seqslot::hash(&key);
        for p in 0..PROBE {
            let s = seqslot::slot(self.words, h + p);
            if !seqslot::is_used(s) {
                return None;
            }
            let Some(d) = seqslot::read(s) else { continue };
            if d[..3] != key {
                continue;
            }
            let mut out = Routes::default();
            for r in 0..MAX_ROUTES {
                let w = &d[3 + r * 3..6 + r * 3];
                if let Some(a) = seqslot::unpack(w) {
                    out.hosts[out.count] = Some(a);
                    out.shared[out.count] = w[2] & SHARED_BIT != 0;
                    out.count += 1;
                }
            }
            return (out.count > 0).then_some(out);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;
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
        assert!(t.set(&k, &[(sa("192.168.77.2:41000"), false)]));
        let r = t.lookup(&k).unwrap();
        assert_eq!((r.count, r.hosts[0]), (1, Some(sa("192.168.77.2:41000"))));
        assert!(!r.shared[0]);
        assert!(t.set(
            &k,
            &[
                (sa("192.168.77.2:41000"), false),
                (sa("192.168.77.2:41001"), true)
            ]
        ));
        let r = t.lookup(&k).unwrap();
        assert_eq!((r.count, r.shared[..2].to_vec()), (2, vec![false, true]));
        assert_eq!(r.hosts[1], Some(sa("192.168.77.2:41001")));
        assert!(t.set(&k, &[]));
        assert_eq!(t.lookup(&k), None);
        // The removed key's slot is reused, and other keys are unaffected.
        let k6 = sa("[fd00:32::2]:80");
        assert!(t.set(&k6, &[(sa("192.168.77.2:41002"), false)]));
        assert!(t.set(&k, &[(sa("192.168.77.2:41003"), false)]));
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
            assert!(t.set(
                &key,
                &[(SocketAddr::new("192.168.77.2".parse().unwrap(), p), false)]
            ));
        }
        for p in 1..3000u16 {
            let key = SocketAddr::new("10.32.0.9".parse().unwrap(), p);
            assert_eq!(t.lookup(&key).unwrap().hosts[0].unwrap().port(), p);
        }
    }
}
