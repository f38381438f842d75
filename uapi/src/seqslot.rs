//! What the shared-memory tables ([`crate::accept_table`], [`crate::route_table`]) have in
//! common: socket addresses packed into words, a hash, and slots of [`SLOT_WORDS`] words whose
//! word 0 is a sequence counter (0: never used; odd: being written). One writer at a time
//! (the router serializes); readers take a consistent copy or give up, never wait.

use core::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use core::sync::atomic::{fence, AtomicU64, Ordering};

pub const SLOT_WORDS: usize = 16;
/// The words after the sequence counter.
pub const DATA_WORDS: usize = SLOT_WORDS - 1;

/// An endpoint in three words: the address (IPv4 as IPv4-mapped), then port and family. All zero
/// means "none".
pub fn pack(a: &SocketAddr) -> [u64; 3] {
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

pub fn unpack(w: &[u64]) -> Option<SocketAddr> {
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

pub fn hash(words: &[u64]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h as usize
}

/// Slot `i` (modulo the table's slot count) of a table.
pub fn slot(words: &[AtomicU64], i: usize) -> &[AtomicU64] {
    let i = i % (words.len() / SLOT_WORDS);
    &words[i * SLOT_WORDS..(i + 1) * SLOT_WORDS]
}

pub fn is_used(slot: &[AtomicU64]) -> bool {
    slot[0].load(Ordering::Relaxed) != 0
}

/// Replaces the data words of a slot.
pub fn write(slot: &[AtomicU64], data: &[u64; DATA_WORDS]) {
    let seq = slot[0].load(Ordering::Relaxed);
    // Odd while writing; a counter left odd by a writer that died is moved on past it.
    let writing = (seq | 1).wrapping_add(if seq & 1 == 1 { 2 } else { 0 });
    slot[0].store(writing, Ordering::Relaxed);
    fence(Ordering::Release);
    for (w, d) in slot[1..].iter().zip(data) {
        w.store(*d, Ordering::Relaxed);
    }
    slot[0].store(writing.wrapping_add(1), Ordering::Release);
}

/// A consistent copy of a slot's data words; None if it was never used or kept changing.
pub fn read(slot: &[AtomicU64]) -> Option<[u64; DATA_WORDS]> {
    for _attempt in 0..4 {
        let before = slot[0].load(Ordering::Acquire);
        if before == 0 {
            return None;
        }
        if before & 1 == 1 {
            core::hint::spin_loop();
            continue;
        }
        let mut data = [0u64; DATA_WORDS];
        for (d, w) in data.iter_mut().zip(&slot[1..]) {
            *d = w.load(Ordering::Relaxed);
        }
        fence(Ordering::Acquire);
        if slot[0].load(Ordering::Relaxed) == before {
            return Some(data);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_round_trip() {
        for a in ["10.32.0.1:80", "[fd00:32::2]:443", "[::ffff:10.0.0.1]:1"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(unpack(&pack(&a)), Some(a));
        }
        assert_eq!(unpack(&[0, 0, 0]), None);
    }
}
