//! What the library knows about each file descriptor of the process.
//!
//! Looked up on every intercepted call, including `close`, `dup2` and `fcntl`, which programs call
//! from signal handlers and between fork and exec: so the table takes no lock and never allocates
//! on lookup. It is a two-level array of atomics; second-level chunks are mapped with mmap(2) the
//! first time a descriptor in their range needs state, and never unmapped.
//!
//! Only fresh TCP sockets (from `socket()`) and Slim's own sockets get state; every other
//! descriptor costs one pointer load and one byte load.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering};
use slim_uapi::proto::{SockOpt, SockOpts, MAX_OPT_LEN};

/// No state: not a socket Slim cares about (the zero value of fresh chunks).
pub const NONE: u8 = 0;
/// A TCP socket fresh from `socket()`: its options and epoll registrations are recorded, so they
/// can be carried over if Slim replaces it with a host socket.
pub const CANDIDATE: u8 = 1;
/// A host socket standing in for an overlay connection.
pub const CONN: u8 = 2;
/// An epoll instance standing in for an overlay listener (see `listener.rs`).
pub const LISTENER: u8 = 3;
/// One of the library's own descriptors behind a listener; the program does not know it exists.
pub const HIDDEN: u8 = 4;
/// A socket the router said it does not know (checked once after exec; not asked again).
pub const PLAIN: u8 = 5;
/// A pooled host socket that `socket()` handed to the program, not connected yet (see
/// `connect::hosted_socket`). Its options and epoll registrations are recorded as for a
/// candidate, so that an overlay socket can take its place if the program does anything with it
/// but connect to a Slim listener; `local` holds the overlay identity it will have.
pub const HOSTED: u8 = 6;

const CHUNK: usize = 256;
const CHUNKS: usize = 4096;
/// Descriptors at or above this number are never tracked (they are passed straight through).
pub const MAX_FD: usize = CHUNK * CHUNKS;
pub const MAX_TRACKED_OPTS: usize = 8;
pub const MAX_REGS: usize = 4;

/// A socket address in three atomic words: tag/port, then 16 address bytes.
#[derive(Default)]
pub struct PackedAddr([AtomicU64; 3]);

impl PackedAddr {
    pub const fn new() -> PackedAddr {
        PackedAddr([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)])
    }

    pub fn store(&self, a: Option<SocketAddr>) {
        let (w0, bytes) = match a {
            None => (0u64, [0u8; 16]),
            Some(SocketAddr::V4(v4)) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v4.ip().octets());
                (4 | (v4.port() as u64) << 8, b)
            }
            Some(SocketAddr::V6(v6)) => (6 | (v6.port() as u64) << 8, v6.ip().octets()),
        };
        self.0[1].store(
            u64::from_ne_bytes(bytes[..8].try_into().unwrap_or([0; 8])),
            Ordering::Relaxed,
        );
        self.0[2].store(
            u64::from_ne_bytes(bytes[8..].try_into().unwrap_or([0; 8])),
            Ordering::Relaxed,
        );
        self.0[0].store(w0, Ordering::Release);
    }

    pub fn load(&self) -> Option<SocketAddr> {
        let w0 = self.0[0].load(Ordering::Acquire);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.0[1].load(Ordering::Relaxed).to_ne_bytes());
        b[8..].copy_from_slice(&self.0[2].load(Ordering::Relaxed).to_ne_bytes());
        let port = (w0 >> 8) as u16;
        match w0 & 0xff {
            4 => Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
                port,
            )),
            6 => Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), port)),
            _ => None,
        }
    }

    fn copy_from(&self, o: &PackedAddr) {
        self.store(o.load());
    }
}

#[derive(Default)]
struct OptSlot {
    level: AtomicI32,
    name: AtomicI32,
    len: AtomicU8,
    value: [AtomicU64; 2],
}

/// An epoll registration made while the socket was a candidate. `epfd` is stored plus one, so
/// that the zero of a fresh chunk means "empty".
#[derive(Default)]
struct RegSlot {
    epfd1: AtomicI32,
    events: AtomicU32,
    data: AtomicU64,
}

#[derive(Clone, Copy)]
pub struct EpollReg {
    pub epfd: i32,
    pub events: u32,
    pub data: u64,
}

#[derive(Default)]
pub struct Slot {
    kind: AtomicU8,
    /// The application's socket family (AF_INET or AF_INET6), for addresses we report.
    family: AtomicU8,
    nopts: AtomicU8,
    cookie: AtomicU64,
    pub local: PackedAddr,
    pub peer: PackedAddr,
    listener: AtomicU32,
    /// HOSTED: whether the socket's host port is leased to its overlay address.
    leased: AtomicU8,
    opts: [OptSlot; MAX_TRACKED_OPTS],
    regs: [RegSlot; MAX_REGS],
}

impl Slot {
    #[inline]
    pub fn kind(&self) -> u8 {
        self.kind.load(Ordering::Acquire)
    }

    pub fn family(&self) -> i32 {
        self.family.load(Ordering::Relaxed) as i32
    }

    pub fn cookie(&self) -> u64 {
        self.cookie.load(Ordering::Relaxed)
    }

    pub fn set_cookie(&self, c: u64) {
        self.cookie.store(c, Ordering::Relaxed);
    }

    pub fn listener(&self) -> usize {
        self.listener.load(Ordering::Relaxed) as usize
    }

    pub fn clear(&self) {
        self.kind.store(NONE, Ordering::Release);
        self.nopts.store(0, Ordering::Relaxed);
        for r in &self.regs {
            r.epfd1.store(0, Ordering::Relaxed);
        }
    }

    pub fn set_candidate(&self) {
        self.clear();
        self.kind.store(CANDIDATE, Ordering::Release);
    }

    pub fn set_hosted(&self, family: i32, local: SocketAddr, leased: bool) {
        self.clear();
        self.family.store(family as u8, Ordering::Relaxed);
        self.local.store(Some(local));
        self.leased.store(leased as u8, Ordering::Relaxed);
        self.kind.store(HOSTED, Ordering::Release);
    }

    /// HOSTED: another pooled socket took this one's place (its options recorded so far stay).
    pub fn rehost(&self, local: SocketAddr, leased: bool) {
        self.local.store(Some(local));
        self.leased.store(leased as u8, Ordering::Relaxed);
    }

    /// HOSTED: whether its port is leased (a connection from it needs no announcement).
    pub fn leased(&self) -> bool {
        self.leased.load(Ordering::Relaxed) != 0
    }

    /// A HOSTED socket replaced by an overlay one: a candidate again, with the options and
    /// epoll registrations recorded so far.
    pub fn make_candidate(&self) {
        self.kind.store(CANDIDATE, Ordering::Release);
    }

    pub fn set_plain(&self) {
        self.clear();
        self.kind.store(PLAIN, Ordering::Release);
    }

    pub fn set_hidden(&self) {
        self.clear();
        self.kind.store(HIDDEN, Ordering::Release);
    }

    pub fn set_conn(&self, family: i32, cookie: u64, local: SocketAddr, peer: Option<SocketAddr>) {
        self.clear();
        self.family.store(family as u8, Ordering::Relaxed);
        self.cookie.store(cookie, Ordering::Relaxed);
        self.local.store(Some(local));
        self.peer.store(peer);
        self.kind.store(CONN, Ordering::Release);
    }

    pub fn set_listener(&self, family: i32, index: usize) {
        self.clear();
        self.family.store(family as u8, Ordering::Relaxed);
        self.listener.store(index as u32, Ordering::Relaxed);
        self.kind.store(LISTENER, Ordering::Release);
    }

    /// Makes this slot describe the same socket as `o` (after dup). Returns the kind copied.
    pub fn copy_from(&self, o: &Slot) -> u8 {
        let kind = o.kind();
        self.clear();
        if kind == CONN || kind == LISTENER || kind == PLAIN || kind == HOSTED {
            self.family
                .store(o.family.load(Ordering::Relaxed), Ordering::Relaxed);
            self.cookie.store(o.cookie(), Ordering::Relaxed);
            self.local.copy_from(&o.local);
            self.peer.copy_from(&o.peer);
            self.listener
                .store(o.listener.load(Ordering::Relaxed), Ordering::Relaxed);
            self.leased
                .store(o.leased.load(Ordering::Relaxed), Ordering::Relaxed);
            self.kind.store(kind, Ordering::Release);
            kind
        } else {
            NONE
        }
    }

    /// Records an option set on a candidate socket (the latest value of an option wins).
    pub fn record_opt(&self, level: i32, name: i32, value: &[u8]) {
        if value.len() > MAX_OPT_LEN {
            return;
        }
        let n = self.nopts.load(Ordering::Relaxed) as usize;
        let mut at = n;
        for (i, o) in self.opts[..n.min(MAX_TRACKED_OPTS)].iter().enumerate() {
            if o.level.load(Ordering::Relaxed) == level && o.name.load(Ordering::Relaxed) == name {
                at = i;
                break;
            }
        }
        if at >= MAX_TRACKED_OPTS {
            return;
        }
        let o = &self.opts[at];
        let mut v = [0u8; 16];
        v[..value.len()].copy_from_slice(value);
        o.level.store(level, Ordering::Relaxed);
        o.name.store(name, Ordering::Relaxed);
        o.len.store(value.len() as u8, Ordering::Relaxed);
        o.value[0].store(
            u64::from_ne_bytes(v[..8].try_into().unwrap_or([0; 8])),
            Ordering::Relaxed,
        );
        o.value[1].store(
            u64::from_ne_bytes(v[8..].try_into().unwrap_or([0; 8])),
            Ordering::Relaxed,
        );
        if at == n {
            self.nopts.store((n + 1) as u8, Ordering::Relaxed);
        }
    }

    pub fn opts(&self) -> SockOpts {
        let mut out = SockOpts::default();
        let n = (self.nopts.load(Ordering::Relaxed) as usize).min(MAX_TRACKED_OPTS);
        for o in &self.opts[..n] {
            let mut v = [0u8; 16];
            v[..8].copy_from_slice(&o.value[0].load(Ordering::Relaxed).to_ne_bytes());
            v[8..].copy_from_slice(&o.value[1].load(Ordering::Relaxed).to_ne_bytes());
            let len = (o.len.load(Ordering::Relaxed) as usize).min(16);
            if let Some(opt) = SockOpt::new(
                o.level.load(Ordering::Relaxed),
                o.name.load(Ordering::Relaxed),
                &v[..len],
            ) {
                out.push(opt);
            }
        }
        out
    }

    /// Tracks epoll_ctl on a candidate socket.
    pub fn track_epoll(&self, op: i32, epfd: i32, events: u32, data: u64) {
        let find = |epfd: i32| {
            self.regs
                .iter()
                .find(|r| r.epfd1.load(Ordering::Relaxed) == epfd + 1)
        };
        match op {
            libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD => {
                let slot = find(epfd).or_else(|| {
                    self.regs
                        .iter()
                        .find(|r| r.epfd1.load(Ordering::Relaxed) == 0)
                });
                if let Some(r) = slot {
                    r.events.store(events, Ordering::Relaxed);
                    r.data.store(data, Ordering::Relaxed);
                    r.epfd1.store(epfd + 1, Ordering::Relaxed);
                }
            }
            libc::EPOLL_CTL_DEL => {
                if let Some(r) = find(epfd) {
                    r.epfd1.store(0, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }

    pub fn epoll_regs(&self) -> [Option<EpollReg>; MAX_REGS] {
        let mut out = [None; MAX_REGS];
        for (o, r) in out.iter_mut().zip(&self.regs) {
            let e1 = r.epfd1.load(Ordering::Relaxed);
            if e1 > 0 {
                *o = Some(EpollReg {
                    epfd: e1 - 1,
                    events: r.events.load(Ordering::Relaxed),
                    data: r.data.load(Ordering::Relaxed),
                });
            }
        }
        out
    }
}

struct Chunk {
    slots: [Slot; CHUNK],
}

static TABLE: [AtomicPtr<Chunk>; CHUNKS] = [const { AtomicPtr::new(ptr::null_mut()) }; CHUNKS];

#[inline]
fn split(fd: i32) -> Option<(usize, usize)> {
    if fd < 0 || fd as usize >= MAX_FD {
        return None;
    }
    let fd = fd as usize;
    Some((fd / CHUNK, fd % CHUNK))
}

/// The slot of `fd` if its chunk exists. No allocation, no lock.
#[inline]
pub fn get(fd: i32) -> Option<&'static Slot> {
    let (c, i) = split(fd)?;
    let p = TABLE[c].load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: chunks are never freed once published, and every bit pattern of a Chunk is a valid
    // value (atomics only; mmap zero-fills).
    Some(unsafe { &(*p).slots[i] })
}

/// The first descriptor at or after `fd` whose chunk exists (others have no state at all).
pub fn next_in_table(fd: usize) -> usize {
    let mut c = fd / CHUNK;
    while c < CHUNKS && TABLE[c].load(Ordering::Acquire).is_null() {
        c += 1;
    }
    if c == fd / CHUNK {
        fd
    } else {
        c * CHUNK
    }
}

/// The kind of `fd`, NONE if untracked.
#[inline]
pub fn kind(fd: i32) -> u8 {
    get(fd).map(|s| s.kind()).unwrap_or(NONE)
}

/// The slot of `fd`, mapping its chunk if needed (mmap: a system call, no malloc, no lock).
pub fn get_or_alloc(fd: i32) -> Option<&'static Slot> {
    if let Some(s) = get(fd) {
        return Some(s);
    }
    let (c, i) = split(fd)?;
    let size = core::mem::size_of::<Chunk>();
    // SAFETY: an anonymous private mapping with no address hint; checked for failure below.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let p = p as *mut Chunk;
    match TABLE[c].compare_exchange(ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {}
        Err(_) => {
            // Another thread published a chunk first; ours was never visible to anyone.
            // SAFETY: p is our own mapping of `size` bytes.
            unsafe { libc::munmap(p.cast(), size) };
        }
    }
    get(fd).or({
        let _ = i;
        None
    })
}

/// Forgets whatever was known about `fd` (it was closed or replaced).
#[inline]
pub fn clear(fd: i32) {
    if let Some(s) = get(fd) {
        if s.kind() != NONE {
            s.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_addresses_round_trip() {
        let p = PackedAddr::default();
        for a in ["10.32.0.1:80", "[fd00:32::2]:443", "0.0.0.0:0"] {
            let a: SocketAddr = a.parse().unwrap();
            p.store(Some(a));
            assert_eq!(p.load(), Some(a));
        }
        p.store(None);
        assert_eq!(p.load(), None);
    }

    #[test]
    fn options_and_epoll_regs_are_tracked() {
        let s = get_or_alloc(100_000).unwrap();
        s.set_candidate();
        s.record_opt(6, 1, &1i32.to_ne_bytes());
        s.record_opt(6, 1, &0i32.to_ne_bytes());
        s.record_opt(1, 2, &1i32.to_ne_bytes());
        let o = s.opts();
        assert_eq!(o.len(), 2);
        assert_eq!(o.iter().next().unwrap().value(), &0i32.to_ne_bytes());
        s.track_epoll(libc::EPOLL_CTL_ADD, 0, 1, 7);
        s.track_epoll(libc::EPOLL_CTL_MOD, 0, 5, 8);
        s.track_epoll(libc::EPOLL_CTL_ADD, 9, 1, 9);
        s.track_epoll(libc::EPOLL_CTL_DEL, 9, 0, 0);
        let regs: Vec<EpollReg> = s.epoll_regs().into_iter().flatten().collect();
        assert_eq!(regs.len(), 1);
        assert_eq!((regs[0].epfd, regs[0].events, regs[0].data), (0, 5, 8));
        s.clear();
        assert_eq!(kind(100_000), NONE);
        assert_eq!(kind(5), kind(5));
        assert!(get_or_alloc(MAX_FD as i32).is_none());
    }
}
