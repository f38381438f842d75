//! The library's connections to the router.
//!
//! A small pool of `SOCK_SEQPACKET` connections shared by all threads: a call takes one out (an
//! atomic swap), does one request/reply on it and puts it back, so no lock is ever held across
//! the round trip and threads never wait for each other. A forked child closes the pool it
//! inherited (the parent still uses those connections) and opens its own.

use crate::config;
use crate::log::{slog, DEBUG, ERROR, INFO};
use crate::real;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};
use slim_uapi::proto::{Reply, Request, HELLO_SECURE, MAX_FRAME, PROTO_VERSION};
use std::os::fd::{FromRawFd, OwnedFd};

const POOL: usize = 8;
static POOL_FDS: [AtomicI32; POOL] = [const { AtomicI32::new(-1) }; POOL];
/// Set for good when the router speaks another protocol version: the program runs on the overlay.
static DISABLED: AtomicBool = AtomicBool::new(false);
/// While the router is unreachable, do not try again before this CLOCK_MONOTONIC time (ns).
static RETRY_AT: AtomicU64 = AtomicU64::new(0);
static WARNED_DOWN: AtomicBool = AtomicBool::new(false);
const RETRY_DELAY_NS: u64 = 50_000_000;
/// Identity of the router's socket file (inode and change time) when we last reached it: a new
/// file means a new router, which knows nothing of this process's listeners. The change time is
/// needed because a re-created file may get the same inode number back.
static ROUTER_INO: AtomicU64 = AtomicU64::new(0);
static REATTACH_DUE: AtomicBool = AtomicBool::new(false);
/// Bounds every wait for the router, so that a hung router cannot hang the program forever.
const ROUTER_TIMEOUT_S: libc::time_t = 10;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid for writes; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn errno() -> i32 {
    // SAFETY: __errno_location always returns the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Whether asking the router is worth it right now.
pub fn available() -> bool {
    if DISABLED.load(Ordering::Relaxed) || config::get().router_addr_len == 0 {
        return false;
    }
    let at = RETRY_AT.load(Ordering::Relaxed);
    at == 0 || now_ns() >= at
}

/// Closes the idle connections: in the child after fork (they belong to the parent's
/// conversation), and when the router was replaced (they lead nowhere).
pub fn forget_pool() {
    // Pooled host sockets too: after fork both processes would connect the same socket.
    for s in &POOL_FDS {
        let fd = s.swap(-1, Ordering::Relaxed);
        if fd >= 0 {
            discard(fd);
        }
    }
    for s in SOCKETS.iter().flatten() {
        let v = s.swap(EMPTY, Ordering::Relaxed);
        if v != EMPTY {
            discard(v as u32 as i32);
        }
    }
    for n in &NO_POOL {
        n.store(false, Ordering::Relaxed);
    }
    // A reply on its way belongs to whoever sent the request (the parent, after fork).
    for p in &PREFETCH {
        let fd = p.swap(NO_PREFETCH, Ordering::AcqRel);
        if fd >= 0 {
            discard(fd);
        }
    }
}

fn take() -> Option<i32> {
    for s in &POOL_FDS {
        let fd = s.swap(-1, Ordering::Acquire);
        if fd >= 0 {
            return Some(fd);
        }
    }
    None
}

fn give_back(fd: i32) {
    for s in &POOL_FDS {
        if s.compare_exchange(-1, fd, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
    discard(fd);
}

/// The program is about to dup2 onto this descriptor number: if it is one of our idle
/// connections, let it go (the program's dup2 closes it). Returns whether it was ours.
pub fn evict(fd: i32) -> bool {
    for s in &POOL_FDS {
        if s.compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            crate::fdtable::clear(fd);
            return true;
        }
    }
    false
}

fn discard(fd: i32) {
    crate::fdtable::clear(fd);
    // SAFETY: fd is our own connection, no longer in the pool.
    unsafe { real::close(fd) };
}

/// Moves one of our descriptors out of the program's way: to a high number, marked hidden so
/// that the program's close/close_range of descriptors it never opened leave it alone (it would
/// otherwise close it and reuse the number, and our frames would land in its stream).
pub fn adopt(fd: i32) -> i32 {
    // SAFETY: F_DUPFD_CLOEXEC on our own descriptor.
    let mut high = unsafe {
        real::fcntl(
            fd,
            libc::F_DUPFD_CLOEXEC,
            crate::listener::HIDDEN_BASE as usize,
        )
    };
    if high >= 0 {
        // SAFETY: our own temporary descriptor.
        unsafe { real::close(fd) };
    } else {
        high = fd;
    }
    if let Some(s) = crate::fdtable::get_or_alloc(high) {
        s.set_hidden();
    }
    high
}

fn open() -> Option<i32> {
    let cfg = config::get();
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe { real::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let fd = adopt(fd);
    // SAFETY: router_addr is a valid sockaddr_un of router_addr_len bytes.
    let r = unsafe {
        real::connect(
            fd,
            &cfg.router_addr as *const _ as *const libc::sockaddr,
            cfg.router_addr_len,
        )
    };
    if r < 0 {
        let e = errno();
        discard(fd);
        RETRY_AT.store(now_ns() + RETRY_DELAY_NS, Ordering::Relaxed);
        if !WARNED_DOWN.swap(true, Ordering::Relaxed) {
            slog!(
                INFO,
                "router not reachable (errno {e}); connections use the overlay until it is"
            );
        }
        return None;
    }
    let tv = libc::timeval {
        tv_sec: ROUTER_TIMEOUT_S,
        tv_usec: 0,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: tv is a valid timeval for the duration of the call.
        unsafe {
            real::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &tv as *const _ as *const libc::c_void,
                core::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
    }
    let mut buf = [0u8; MAX_FRAME];
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let mut tables = Passed::new();
    let ok = match exchange(
        fd,
        &Request::Hello {
            version: PROTO_VERSION,
            pid,
        },
        None,
        &mut buf,
    ) {
        Some((n, extra)) => {
            tables = extra;
            match Reply::decode(&buf[..n]) {
                Ok(Reply::HelloOk { version, flags }) if version == PROTO_VERSION => {
                    SECURE.store(flags & HELLO_SECURE != 0, Ordering::Relaxed);
                    true
                }
                Ok(Reply::Error { message, .. }) => {
                    slog!(
                        ERROR,
                        "router refused this library: {message}; connections use the overlay"
                    );
                    DISABLED.store(true, Ordering::Relaxed);
                    false
                }
                Ok(_) | Err(_) => {
                    slog!(
                        ERROR,
                        "router at SLIM_ROUTER_SOCKET does not speak protocol {PROTO_VERSION}; install matching slim-router and libslim_preload.so; connections use the overlay"
                    );
                    DISABLED.store(true, Ordering::Relaxed);
                    false
                }
            }
        }
        None => false,
    };
    if !ok {
        discard(fd);
        return None;
    }
    WARNED_DOWN.store(false, Ordering::Relaxed);
    RETRY_AT.store(0, Ordering::Relaxed);
    if note_router_instance() || ACCEPT_TABLE.load(Ordering::Acquire).is_null() {
        // The accept table, the route table, the lease table.
        if let Some(t) = tables.take() {
            map_table(&t, slim_uapi::accept_table::TABLE_BYTES, &ACCEPT_TABLE);
        }
        if let Some(t) = tables.take() {
            map_table(&t, slim_uapi::route_table::TABLE_BYTES, &ROUTE_TABLE);
        }
        if let Some(t) = tables.take() {
            map_table(&t, slim_uapi::accept_table::LEASE_TABLE_BYTES, &LEASE_TABLE);
        }
    }
    Some(fd)
}

/// The router runs in secure mode (see `slim_uapi::proto::HELLO_SECURE`).
static SECURE: AtomicBool = AtomicBool::new(false);

/// Whether the router runs in secure mode: host sockets are restricted by the kernel module and
/// accepted connections are identified with `Request::IdentifyChild`.
pub fn secure() -> bool {
    SECURE.load(Ordering::Relaxed)
}

/// The router's accept and route tables, mapped read-only (null until a router sent them).
static ACCEPT_TABLE: AtomicPtr<AtomicU64> = AtomicPtr::new(core::ptr::null_mut());
static ROUTE_TABLE: AtomicPtr<AtomicU64> = AtomicPtr::new(core::ptr::null_mut());
/// Peers' port leases and our listeners' overlay keys (an accept table of its own).
static LEASE_TABLE: AtomicPtr<AtomicU64> = AtomicPtr::new(core::ptr::null_mut());

/// A table `map_table` mapped (None until a router sent it), as its `words` words.
fn mapped(table: &AtomicPtr<AtomicU64>, words: usize) -> Option<&'static [AtomicU64]> {
    let p = table.load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: map_table stores only live read-only mappings of the table's whole size (the
    // callers pass that size), page-aligned and never unmapped; the router writes them only
    // through atomics.
    Some(unsafe { core::slice::from_raw_parts(p as *const AtomicU64, words) })
}

fn map_table(fd: &OwnedFd, bytes: usize, into: &AtomicPtr<AtomicU64>) {
    use std::os::fd::AsRawFd;
    // SAFETY: a read-only shared mapping of the router's sealed table (it cannot shrink under
    // us); checked for failure.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            bytes,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p != libc::MAP_FAILED {
        // A previous router's table stays mapped (a few pages, once per restart): unmapping it
        // under a concurrent lookup would be unsound.
        into.store(p.cast(), Ordering::Release);
    }
}

/// The host listeners of an overlay endpoint, from the router's route table. `Err(())` when
/// there is no table (ask the router instead); `Ok(None)` when no Slim listener is known there.
#[allow(clippy::result_unit_err)]
pub fn lookup_route(
    overlay: &core::net::SocketAddr,
) -> Result<Option<slim_uapi::route_table::Routes>, ()> {
    if !available() {
        return Err(());
    }
    let words = mapped(&ROUTE_TABLE, slim_uapi::route_table::TABLE_WORDS).ok_or(())?;
    let t = slim_uapi::route_table::RouteTable::new(words).ok_or(())?;
    Ok(t.lookup(overlay))
}

/// Pools of ready host sockets (see `Request::Sockets`): IPv4 sockets, IPv6 sockets for IPv4
/// overlay peers (IPv4-mapped), IPv6 sockets for IPv6 overlay peers; each pool's sockets are
/// leased (if the router leases) to this container's overlay address of that peer family.
/// Small: each idle pooled socket holds a host port, and one round trip per 16 connects is cheap
/// enough.
const SOCKET_POOL: usize = 32;
const REFILL: u8 = 16;
/// A pool slot: empty, or a descriptor (bits 0-31), its host port (32-47) and whether the port
/// is leased (bit 48).
const EMPTY: u64 = u64::MAX;
const LEASED: u64 = 1 << 48;
static SOCKETS: [[AtomicU64; SOCKET_POOL]; 3] =
    [const { [const { AtomicU64::new(EMPTY) }; SOCKET_POOL] }; 3];

/// A pooled host socket.
pub struct Pooled {
    pub fd: OwnedFd,
    /// Its host port.
    pub port: u16,
    /// Its port is leased to the overlay address the pool was filled for: a connection from it
    /// needs no announcement.
    pub leased: bool,
}

/// Per pool, a router connection whose `Sockets` request is on its way (sent ahead of need, so
/// that a connect seldom waits for the router), or NO_PREFETCH, or SENDING.
const NO_PREFETCH: i32 = -1;
const SENDING: i32 = -2;
static PREFETCH: [AtomicI32; 3] = [const { AtomicI32::new(NO_PREFETCH) }; 3];
/// A refill is asked for ahead of need when the pool holds this many sockets or fewer.
const LOW_WATER: usize = REFILL as usize;

/// Per pool, the router answered that it has no pooled sockets for it (e.g. secure mode with a
/// module that cannot translate, or cannot check the Slim policy of a constrained container): no
/// more asking until the router is replaced.
static NO_POOL: [AtomicBool; 3] = [const { AtomicBool::new(false) }; 3];

fn pool_index(family: i32, overlay_v6: bool) -> usize {
    match (family == libc::AF_INET6, overlay_v6) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 2,
    }
}

/// A ready host socket of `family` for connections from `src` (this container's overlay
/// address for peers of its family). When the pool runs low, more are asked for without
/// waiting; only an empty pool waits for the router.
pub fn pooled_socket(family: i32, src: core::net::IpAddr) -> Option<Pooled> {
    let idx = pool_index(family, src.is_ipv6());
    if NO_POOL[idx].load(Ordering::Relaxed) {
        return None;
    }
    let pool = &SOCKETS[idx];
    collect_prefetch(idx, libc::MSG_DONTWAIT);
    for round in 0..2 {
        for s in pool.iter() {
            let v = s.swap(EMPTY, Ordering::Acquire);
            if v != EMPTY {
                let fd = v as u32 as i32;
                crate::fdtable::clear(fd);
                if pool
                    .iter()
                    .filter(|s| s.load(Ordering::Relaxed) != EMPTY)
                    .count()
                    <= LOW_WATER
                {
                    start_prefetch(family, src, idx);
                }
                return Some(Pooled {
                    // SAFETY: the pool owned this descriptor; now the caller does.
                    fd: unsafe { OwnedFd::from_raw_fd(fd) },
                    port: (v >> 32) as u16,
                    leased: v & LEASED != 0,
                });
            }
        }
        if round == 1 {
            break;
        }
        // Empty: wait for the refill on its way, or ask for one now.
        if !collect_prefetch(idx, 0) && !refill(family, src) {
            return None;
        }
    }
    None
}

/// Puts an unused pooled socket (unconnected, none of the program's options set on it) back
/// into its pool, or closes it if the pool is full.
pub fn return_pooled(family: i32, src: core::net::IpAddr, p: Pooled) {
    use std::os::fd::IntoRawFd;
    let raw = p.fd.into_raw_fd();
    if let Some(s) = crate::fdtable::get_or_alloc(raw) {
        s.set_hidden();
    }
    let v = raw as u32 as u64 | (p.port as u64) << 32 | if p.leased { LEASED } else { 0 };
    let pool = &SOCKETS[pool_index(family, src.is_ipv6())];
    if !pool.iter().any(|s| {
        s.compare_exchange(EMPTY, v, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }) {
        discard(raw);
    }
}

fn sockets_request(family: i32, src: core::net::IpAddr) -> Request {
    Request::Sockets {
        family,
        count: REFILL,
        lease: Some(src),
    }
}

/// Sends a `Sockets` request for pool `idx` and leaves its reply to `collect_prefetch`.
fn start_prefetch(family: i32, src: core::net::IpAddr, idx: usize) {
    if !available()
        || PREFETCH[idx]
            .compare_exchange(NO_PREFETCH, SENDING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let fd = take().or_else(open);
    let mut buf = [0u8; MAX_FRAME];
    let sent =
        fd.filter(|fd| send_request(*fd, &sockets_request(family, src), None, &mut buf).is_some());
    match sent {
        Some(fd) => PREFETCH[idx].store(fd, Ordering::Release),
        None => {
            if let Some(fd) = fd {
                discard(fd);
            }
            PREFETCH[idx].store(NO_PREFETCH, Ordering::Release);
        }
    }
}

/// Installs the reply to pool `idx`'s prefetch if it has come (`flags` 0: waits for it).
/// Returns whether sockets were installed.
fn collect_prefetch(idx: usize, flags: i32) -> bool {
    let fd = PREFETCH[idx].load(Ordering::Acquire);
    if fd < 0
        || PREFETCH[idx]
            .compare_exchange(fd, SENDING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return false;
    }
    let mut buf = [0u8; MAX_FRAME];
    match recv_reply(fd, &mut buf, flags) {
        None if errno() == libc::EAGAIN && flags != 0 => {
            PREFETCH[idx].store(fd, Ordering::Release);
            false
        }
        None => {
            discard(fd);
            PREFETCH[idx].store(NO_PREFETCH, Ordering::Release);
            false
        }
        Some((n, fds)) => {
            give_back(fd);
            PREFETCH[idx].store(NO_PREFETCH, Ordering::Release);
            install(idx, &buf[..n], fds)
        }
    }
}

fn refill(family: i32, src: core::net::IpAddr) -> bool {
    let mut buf = [0u8; MAX_FRAME];
    let Some((n, fds)) = call(&sockets_request(family, src), &mut buf) else {
        return false;
    };
    install(pool_index(family, src.is_ipv6()), &buf[..n], fds)
}

/// Puts the sockets of a `SocketsOk` reply into pool `idx`.
fn install(idx: usize, reply: &[u8], mut fds: Passed) -> bool {
    let (leased, ports) = match Reply::decode(reply) {
        Ok(Reply::SocketsOk {
            count,
            leased,
            ports,
        }) if count > 0 => (leased, ports),
        Ok(Reply::Fallback(why)) => {
            slog!(
                DEBUG,
                "no pooled sockets from the router ({why:?}); asking per connect"
            );
            NO_POOL[idx].store(true, Ordering::Relaxed);
            return false;
        }
        _ => return false,
    };
    let pool = &SOCKETS[idx];
    let mut ports = ports.iter();
    while let Some(fd) = fds.take() {
        use std::os::fd::IntoRawFd;
        let raw = adopt(fd.into_raw_fd());
        let Some(port) = ports.next() else {
            discard(raw);
            continue;
        };
        let v = raw as u32 as u64 | (port as u64) << 32 | if leased { LEASED } else { 0 };
        if !pool.iter().any(|s| {
            s.compare_exchange(EMPTY, v, Ordering::Release, Ordering::Relaxed)
                .is_ok()
        }) {
            discard(raw);
        }
    }
    true
}

/// Sends a notification, opening a connection to the router if none is idle (unlike [`notify`]).
pub fn send_oneway(req: &Request) {
    let mut buf = [0u8; MAX_FRAME];
    let _ = call(req, &mut buf);
}

/// Looks an accepted host connection up in the router's accept table: no round trip.
pub fn lookup_accepted(
    client_host: &core::net::SocketAddr,
    server_host: &core::net::SocketAddr,
) -> Option<slim_uapi::accept_table::Entry> {
    let words = mapped(&ACCEPT_TABLE, slim_uapi::accept_table::TABLE_WORDS)?;
    slim_uapi::accept_table::AcceptTable::new(words)?.lookup_connection(client_host, server_host)
}

/// The overlay address a peer router leased `client_host`'s port to, and the overlay endpoint
/// of that address's family that the local host listener `server_host` serves, if both are
/// known without asking the router.
pub fn lookup_leased(
    client_host: &core::net::SocketAddr,
    server_host: &core::net::SocketAddr,
) -> Option<slim_uapi::accept_table::Entry> {
    use slim_uapi::accept_table::{AcceptTable, Lease, LEASE_TABLE_WORDS};
    let words = mapped(&LEASE_TABLE, LEASE_TABLE_WORDS)?;
    let t = AcceptTable::for_leases(words)?;
    let Lease::Owner(owner) = t.lease(client_host)? else {
        return None;
    };
    Some(slim_uapi::accept_table::Entry {
        client_overlay: core::net::SocketAddr::new(owner, client_host.port()),
        server_overlay: t.listener_key(server_host, owner)?,
    })
}

fn router_ino() -> u64 {
    let cfg = config::get();
    // SAFETY: all-zero stat is valid; sun_path is NUL-terminated (the config zero-fills it and
    // leaves room for the terminator).
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: as above; st is valid for writes.
    if unsafe { libc::stat(cfg.router_addr.sun_path.as_ptr(), &mut st) } < 0 {
        return 0;
    }
    // One word standing for (inode, ctime): equal files give equal words.
    let mut h = st.st_ino ^ 0x9E37_79B9_7F4A_7C15;
    for x in [st.st_ctime as u64, st.st_ctime_nsec as u64, st.st_dev] {
        h = (h ^ x).wrapping_mul(0x0100_0000_01B3);
    }
    h | 1
}

/// Records which router instance serves us; if it changed, this process's listeners must be
/// registered again. Returns whether it changed.
fn note_router_instance() -> bool {
    let ino = router_ino();
    if ino == 0 {
        return false;
    }
    let before = ROUTER_INO.swap(ino, Ordering::Relaxed);
    if before != 0 && before != ino {
        slog!(
            INFO,
            "router restarted; registering this process's listeners again"
        );
        REATTACH_DUE.store(true, Ordering::Relaxed);
        return true;
    }
    false
}

/// Called when a Slim listener accepted an overlay connection: peers may have fallen back
/// because our router restarted and forgot our listeners. One stat(2), only on that path.
pub fn check_router_restart() {
    if ROUTER_INO.load(Ordering::Relaxed) != 0 && router_ino() != ROUTER_INO.load(Ordering::Relaxed)
    {
        // The pooled connections went to the old router: drop them all, then open a connection,
        // which notices the new instance (and schedules the reattachment).
        forget_pool();
        RETRY_AT.store(0, Ordering::Relaxed);
        if let Some(fd) = open() {
            give_back(fd);
        }
    }
    run_due_reattach();
}

fn run_due_reattach() {
    if REATTACH_DUE.swap(false, Ordering::Relaxed) {
        crate::listener::reattach_all();
    }
}

/// Descriptors that came with a reply. Those not taken are closed on drop.
pub struct Passed {
    fds: [i32; MAX_PASSED],
    n: usize,
    next: usize,
}

/// More than the router ever sends with one reply (pool batches are at most 64).
const MAX_PASSED: usize = 64;

impl Passed {
    fn new() -> Passed {
        Passed {
            fds: [-1; MAX_PASSED],
            n: 0,
            next: 0,
        }
    }

    /// The next descriptor, owned by the caller.
    pub fn take(&mut self) -> Option<OwnedFd> {
        if self.next >= self.n {
            return None;
        }
        let f = self.fds[self.next];
        self.next += 1;
        // SAFETY: the kernel installed this descriptor for us and nobody else owns it.
        Some(unsafe { OwnedFd::from_raw_fd(f) })
    }
}

impl Drop for Passed {
    fn drop(&mut self) {
        while let Some(f) = self.take() {
            drop(f);
        }
    }
}

/// Sends one request and reads one reply (and at most one attached descriptor).
fn exchange(
    fd: i32,
    req: &Request,
    attach: Option<i32>,
    buf: &mut [u8; MAX_FRAME],
) -> Option<(usize, Passed)> {
    send_request(fd, req, attach, buf)?;
    if !req.expects_reply() {
        return Some((0, Passed::new()));
    }
    recv_reply(fd, buf, 0)
}

fn send_request(
    fd: i32,
    req: &Request,
    attach: Option<i32>,
    buf: &mut [u8; MAX_FRAME],
) -> Option<()> {
    let n = req.encode(buf).ok()?;
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: n,
        };
        let mut cbuf = [0u64; 4];
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(afd) = attach {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is a pure size computation.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
            // SAFETY: the control buffer is large enough for one int (CMSG_SPACE(4) <= 32 bytes).
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
                core::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut i32, afd);
            }
        }
        // SAFETY: msg points at live buffers of the sizes it states.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Some(());
        }
        if errno() != libc::EINTR {
            return None;
        }
    }
}

/// The router's reply on `fd` (`flags`: 0 to wait for it, MSG_DONTWAIT not to; then None with
/// errno EAGAIN if it has not come yet).
fn recv_reply(fd: i32, buf: &mut [u8; MAX_FRAME], flags: i32) -> Option<(usize, Passed)> {
    // Room for MAX_PASSED descriptors (CMSG_SPACE(64 * 4) = 272 bytes).
    let mut cbuf = [0u64; 40];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = core::mem::size_of_val(&cbuf);
        // SAFETY: msg points at live buffers of the sizes it states.
        let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC | flags) };
        if r < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return None;
        }
        let mut passed = Passed::new();
        // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c) as *const i32;
                    let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                    for i in 0..count {
                        let f = core::ptr::read_unaligned(data.add(i));
                        if passed.n < MAX_PASSED {
                            passed.fds[passed.n] = f;
                            passed.n += 1;
                        } else {
                            drop(OwnedFd::from_raw_fd(f));
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if r == 0 || msg.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        return Some((r as usize, passed));
    }
}

/// One request/reply with the router. None when the router cannot be asked (then the caller
/// uses the overlay). The reply is decoded from `buf`.
pub fn call(req: &Request, buf: &mut [u8; MAX_FRAME]) -> Option<(usize, Passed)> {
    call_with_fd(req, None, buf)
}

/// Like [`call`], attaching `attach` to the request with `SCM_RIGHTS`.
pub fn call_with_fd(
    req: &Request,
    attach: Option<i32>,
    buf: &mut [u8; MAX_FRAME],
) -> Option<(usize, Passed)> {
    if !available() {
        return None;
    }
    let (fd, pooled) = match take() {
        Some(fd) => (fd, true),
        None => (open()?, false),
    };
    let (fd, result) = match exchange(fd, req, attach, buf) {
        None if pooled => {
            // An idle connection may have gone stale (the router restarted): one more try on a
            // fresh one before giving up on the router.
            discard(fd);
            let fresh = open()?;
            (fresh, exchange(fresh, req, attach, buf))
        }
        r => (fd, r),
    };
    match result {
        Some(r) => {
            give_back(fd);
            if REATTACH_DUE.load(Ordering::Relaxed) && !matches!(req, Request::Reattach(_)) {
                // Re-registering uses `call` itself; the flag is cleared first, so this runs once.
                let saved = *buf;
                run_due_reattach();
                *buf = saved;
            }
            Some(r)
        }
        None => {
            // A broken or restarted router: drop this connection; the next call reconnects.
            slog!(DEBUG, "router connection lost (errno {})", errno());
            discard(fd);
            None
        }
    }
}

/// A notification that needs no reply, sent only if an idle connection is at hand: used from
/// `close`, which must neither block on the router nor open connections.
pub fn notify(req: &Request) {
    let Some(fd) = take() else { return };
    let mut buf = [0u8; MAX_FRAME];
    let Ok(n) = req.encode(&mut buf) else {
        give_back(fd);
        return;
    };
    // SAFETY: buf holds n encoded bytes; MSG_DONTWAIT keeps close() from blocking.
    let r = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            n,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if r < 0 && errno() != libc::EAGAIN {
        discard(fd);
    } else {
        give_back(fd);
    }
}
