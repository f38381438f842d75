//! connect() and listen() on overlay addresses: where a program's socket becomes a Slim one.

use crate::addr::{self, normalize};
use crate::config;
use crate::fdtable::{self, CANDIDATE, CONN, HOSTED, LISTENER, NONE, PLAIN};
use crate::hooks::{errno, set_errno, sock_int};
use crate::link;
use crate::listener;
use crate::log::{slog, DEBUG};
use crate::real;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use slim_uapi::peer::Announce;
use slim_uapi::proto::{
    ConnectReq, Identity, IpList, ListenReq, Reply, Request, SockOpts, MAX_FRAME,
};
use std::os::fd::{AsRawFd, OwnedFd};

/// Whether `fd` is a TCP socket (asked of the kernel when socket() was not seen, e.g. after exec).
fn is_tcp(fd: i32, kind: u8) -> bool {
    kind == CANDIDATE
        || sock_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP)
}

fn family_of(a: &SocketAddr) -> i32 {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// The overlay source address the container's routing picks for IPv4 / IPv6 destinations,
/// found once with an unconnected-then-connected UDP socket (which sends nothing).
static SRC_V4: AtomicU32 = AtomicU32::new(0);
static SRC_V6: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

fn route_source(dst: SocketAddr) -> Option<IpAddr> {
    match dst {
        SocketAddr::V4(_) => {
            let c = SRC_V4.load(Ordering::Relaxed);
            if c != 0 {
                return Some(IpAddr::V4(Ipv4Addr::from(c)));
            }
        }
        SocketAddr::V6(_) => {
            let (a, b) = (
                SRC_V6[0].load(Ordering::Relaxed),
                SRC_V6[1].load(Ordering::Relaxed),
            );
            if a != 0 || b != 0 {
                return Some(IpAddr::V6(Ipv6Addr::from((a as u128) << 64 | b as u128)));
            }
        }
    }
    let fam = family_of(&dst);
    // SAFETY: plain socket(2).
    let u = unsafe { real::socket(fam, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if u < 0 {
        return None;
    }
    let (ss, len) = addr::to_storage(SocketAddr::new(dst.ip(), 9), fam);
    // SAFETY: ss holds a valid address of `len` bytes.
    let r = unsafe { real::connect(u, &ss as *const _ as *const libc::sockaddr, len) };
    let src = if r == 0 {
        addr::local_of(u).map(|a| a.ip())
    } else {
        None
    };
    // SAFETY: our own temporary socket.
    unsafe { real::close(u) };
    match src? {
        IpAddr::V4(v4) => SRC_V4.store(u32::from(v4), Ordering::Relaxed),
        IpAddr::V6(v6) => {
            let x = u128::from(v6);
            SRC_V6[0].store((x >> 64) as u64, Ordering::Relaxed);
            SRC_V6[1].store(x as u64, Ordering::Relaxed);
        }
    }
    src
}

enum Fast {
    /// A pooled host socket, its connect started and announced.
    Done(OwnedFd, Identity),
    /// The router's table says no Slim listener is there: the overlay it is.
    NoListener,
    /// No table, no pooled socket, or a case the fast path does not cover.
    AskRouter,
    /// Refused where Slim decides (the module, for the Slim policy): the program gets this
    /// errno, and the overlay is not asked to carry the connection instead.
    Refused(i32),
}

static NEXT_ROUTE: AtomicU32 = AtomicU32::new(0);

/// Connects without a round trip to the router: the destination's host listener comes from the
/// router's shared route table, the host socket from the pool the router filled, and the router
/// is told afterwards (a one-way message) so that it can announce the connection.
fn fast_connect(family: i32, src_ip: IpAddr, dst: SocketAddr, opts: &SockOpts) -> Fast {
    if link::secure() {
        return translated_connect(family, src_ip, dst, opts);
    }
    let routes = match link::lookup_route(&dst) {
        Err(()) => return Fast::AskRouter,
        Ok(None) => return Fast::NoListener,
        Ok(Some(r)) => r,
    };
    let pick = NEXT_ROUTE.fetch_add(1, Ordering::Relaxed) as usize % routes.count;
    let Some(host_dst) = routes.hosts[pick] else {
        return Fast::AskRouter;
    };
    // Pools are filled for the container's own source address of each family; a program that
    // bound another overlay address of its container asks the router.
    if route_source(dst) != Some(src_ip) {
        return Fast::AskRouter;
    }
    // Pooled sockets are bound to the host's IPv4 address (IPv4-mapped for IPv6 sockets).
    if !host_dst.is_ipv4() {
        return Fast::AskRouter;
    }
    // A pooled socket's 4-tuple may already be in use (its port is shared with connections to
    // other destinations): the connect says so at once, and another socket is tried.
    for _ in 0..3 {
        let Some(pooled) = link::pooled_socket(family, src_ip) else {
            return Fast::AskRouter;
        };
        let sock = pooled.fd;
        let raw = sock.as_raw_fd();
        // A pooled IPv6 socket is bound to an IPv4-mapped address already.
        apply_opts(raw, opts, true);
        let id = Identity {
            local: SocketAddr::new(normalize_ip(src_ip), pooled.port),
            peer: Some(dst),
        };
        // A leased port identifies the connection by itself, unless the destination's host
        // listener serves several overlay endpoints of this family. Otherwise announce first,
        // so the announcement is on its way before the SYN.
        if !pooled.leased || routes.shared[pick] {
            let Some(client_host) = addr::local_of(raw).map(normalize) else {
                return Fast::AskRouter;
            };
            link::send_oneway(&Request::Announce(Announce {
                client_host,
                server_host: host_dst,
                client_overlay: id.local,
                server_overlay: dst,
            }));
        }
        let (ss, len) = addr::to_storage(host_dst, family);
        // SAFETY: ss holds a valid address of `len` bytes; the socket is non-blocking.
        let r = unsafe { real::connect(raw, &ss as *const _ as *const libc::sockaddr, len) };
        if r == 0 || errno() == libc::EINPROGRESS {
            return Fast::Done(sock, id);
        }
        if errno() != libc::EADDRNOTAVAIL {
            slog!(
                DEBUG,
                "pooled connect to {host_dst} failed (errno {}); asking the router",
                errno()
            );
            return Fast::AskRouter;
        }
    }
    Fast::AskRouter
}

/// Secure mode: connects a pooled socket that the kernel module restricted with
/// `SLIM_RESTRICT_TRANSLATE` to the overlay destination itself. The module finds the host
/// listener in the table the router loaded and connects there (the library never learns the host
/// endpoint); the socket's leased port identifies the connection to the listener's router, so
/// nothing is announced. ENOENT: no Slim listener the module knows (none, or one the router must
/// announce): the router is asked, as without a pool.
fn translated_connect(family: i32, src_ip: IpAddr, dst: SocketAddr, opts: &SockOpts) -> Fast {
    if route_source(dst) != Some(src_ip) {
        return Fast::AskRouter;
    }
    let (ss, len) = addr::to_storage(dst, family);
    for _ in 0..3 {
        let Some(pooled) = link::pooled_socket(family, src_ip) else {
            return Fast::AskRouter;
        };
        let raw = pooled.fd.as_raw_fd();
        apply_opts(raw, opts, true);
        let id = Identity {
            local: SocketAddr::new(normalize_ip(src_ip), pooled.port),
            peer: Some(dst),
        };
        // SAFETY: ss holds a valid address of `len` bytes; the socket is non-blocking.
        let r = unsafe { real::connect(raw, &ss as *const _ as *const libc::sockaddr, len) };
        let e = errno();
        if r == 0 || e == libc::EINPROGRESS {
            return Fast::Done(pooled.fd, id);
        }
        match e {
            // Untouched unless the program's options were set on it.
            libc::ENOENT => {
                if opts.is_empty() {
                    link::return_pooled(family, src_ip, pooled);
                }
                return Fast::AskRouter;
            }
            // Denied by the Slim policy (slim_kern checks it before anything is sent), or a
            // refusal TCP reported at once: either way the program's answer. The socket is not
            // pooled again (it may have been used).
            libc::ECONNREFUSED => {
                slog!(
                    DEBUG,
                    "connect to {dst} refused (the Slim policy, slim_kern)"
                );
                return Fast::Refused(e);
            }
            // The 4-tuple is in use (the port is shared with connections elsewhere).
            libc::EADDRNOTAVAIL => continue,
            _ => {
                slog!(
                    DEBUG,
                    "translated connect to {dst} failed (errno {e}); asking the router"
                );
                return Fast::AskRouter;
            }
        }
    }
    Fast::AskRouter
}

fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The container's IPv4 source address for overlay peers (0: none), set once a connection
/// from it went the fast way. From then on `socket()` hands out pooled host sockets: a connect
/// to a Slim listener then needs no second socket and no descriptor swap. The first socket
/// that has to become an overlay socket after all clears it, so a program whose connections
/// mostly go elsewhere stops paying for the swap.
static HOSTED_SRC: AtomicU32 = AtomicU32::new(0);

/// socket(AF_INET, SOCK_STREAM) once connections are known to go the fast way: a pooled host
/// socket under the lowest free descriptor number, as socket() would give, with the flags the
/// program asked for. None: make an ordinary socket.
pub fn hosted_socket(ty: i32) -> Option<i32> {
    let src = HOSTED_SRC.load(Ordering::Relaxed);
    if src == 0 || !link::available() {
        return None;
    }
    let src_ip = IpAddr::V4(Ipv4Addr::from(src));
    let pooled = link::pooled_socket(libc::AF_INET, src_ip)?;
    let cmd = if ty & libc::SOCK_CLOEXEC != 0 {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    // SAFETY: F_DUPFD on the pooled descriptor, which we own; the copy is the program's.
    let fd = unsafe { real::fcntl(pooled.fd.as_raw_fd(), cmd, 0) };
    drop(pooled.fd);
    if fd < 0 {
        return None;
    }
    if ty & libc::SOCK_NONBLOCK == 0 {
        // Pooled sockets are non-blocking; this one blocks, as asked.
        // SAFETY: F_SETFL on the descriptor just made.
        unsafe { real::fcntl(fd, libc::F_SETFL, 0) };
    }
    let Some(slot) = fdtable::get_or_alloc(fd) else {
        // SAFETY: the descriptor just made, not yet handed out.
        unsafe { real::close(fd) };
        return None;
    };
    slot.set_hosted(
        libc::AF_INET,
        SocketAddr::new(src_ip, pooled.port),
        pooled.leased,
    );
    Some(fd)
}

/// Replaces `fd`'s socket with `new` under the same number, keeping the descriptor's
/// close-on-exec flag and file status flags (O_NONBLOCK) and the program's epoll
/// registrations. Returns false (errno set) if the descriptor could not be replaced.
fn swap_in(fd: i32, new: OwnedFd, regs: &[Option<fdtable::EpollReg>]) -> bool {
    // SAFETY: fcntl queries and F_SETFL on the program's descriptor and our own.
    let cloexec = unsafe {
        let fl = real::fcntl(fd, libc::F_GETFL, 0);
        if fl >= 0 {
            real::fcntl(new.as_raw_fd(), libc::F_SETFL, fl as usize);
        }
        let fdfl = real::fcntl(fd, libc::F_GETFD, 0);
        fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0
    };
    // SAFETY: dup3 onto the program's descriptor number atomically replaces its socket.
    let d = unsafe {
        real::dup3(
            new.as_raw_fd(),
            fd,
            if cloexec { libc::O_CLOEXEC } else { 0 },
        )
    };
    if d < 0 {
        return false;
    }
    for reg in regs.iter().flatten() {
        let mut ev = libc::epoll_event {
            events: reg.events,
            u64: reg.data,
        };
        // SAFETY: ev is valid; registers the new socket where the program had the old one.
        unsafe { real::epoll_ctl(reg.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }
    true
}

/// A fresh overlay socket (in the container's network namespace) with `opts` applied.
fn overlay_socket(family: i32, opts: &SockOpts) -> Option<OwnedFd> {
    // SAFETY: plain socket(2).
    let raw = unsafe { real::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: raw was just made and is owned by nobody else.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    apply_opts(raw, opts, false);
    Some(sock)
}

/// Sets the options the program set on the socket that `raw` replaces (`bound`: `raw` is
/// bound already, so IPV6_V6ONLY and IPV6_ADDRFORM can no longer change).
fn apply_opts(raw: i32, opts: &SockOpts, bound: bool) {
    for o in opts.iter() {
        if bound
            && o.level == libc::IPPROTO_IPV6
            && (o.name == libc::IPV6_V6ONLY || o.name == libc::IPV6_ADDRFORM)
        {
            continue;
        }
        let v = o.value();
        // SAFETY: v is a valid buffer of v.len() bytes.
        unsafe {
            real::setsockopt(
                raw,
                o.level,
                o.name,
                v.as_ptr().cast(),
                v.len() as libc::socklen_t,
            )
        };
    }
}

/// Makes a HOSTED socket an ordinary overlay one, with the program's options, before it is
/// used for anything but a connect to a Slim listener (bind, listen, dup, a connect
/// elsewhere). `missed`: a connect that could not use it, which stops further hosting.
/// Returns false (errno set) if no overlay socket could be made.
pub fn unhost(fd: i32, missed: bool) -> bool {
    let Some(s) = fdtable::get(fd).filter(|s| s.kind() == HOSTED) else {
        return true;
    };
    if missed {
        HOSTED_SRC.store(0, Ordering::Relaxed);
    }
    let Some(sock) = overlay_socket(s.family(), &s.opts()) else {
        return false;
    };
    if !swap_in(fd, sock, &s.epoll_regs()) {
        return false;
    }
    s.make_candidate();
    slog!(DEBUG, "fd {fd}: host socket given back for an overlay one");
    true
}

/// The network namespace cookie of a socket (Linux 5.14+).
fn netns_cookie(fd: i32) -> Option<u64> {
    let mut v: u64 = 0;
    let mut len = core::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: v/len valid for writes.
    let r = unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            &mut v as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

/// Whether `fd`, a socket this process has no record of, lives in another network namespace:
/// a HOSTED socket inherited across exec, which the new program image knows nothing about.
fn foreign_netns(fd: i32) -> bool {
    let Some(theirs) = netns_cookie(fd) else {
        return false;
    };
    // SAFETY: plain socket(2), closed below.
    let probe = unsafe { real::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if probe < 0 {
        return false;
    }
    let ours = netns_cookie(probe);
    // SAFETY: our own temporary socket.
    unsafe { real::close(probe) };
    ours.is_some_and(|o| o != theirs)
}

/// A socket without a record, IPv4 and bound to a non-overlay address, that [`foreign_netns`]
/// finds in the host's namespace becomes an overlay socket (the options set on it before exec
/// are lost with the records). For the bind, listen, connect and getsockname hooks.
pub fn recover_hosted(fd: i32) -> bool {
    if fdtable::kind(fd) != NONE {
        return false;
    }
    // Hosted sockets are IPv4 and bound to a host address: only such a socket is worth the
    // namespace probe (listen() on a Unix socket, say, stops at this getsockname). (In secure
    // mode slim_kern answers a fresh socket's address for a hosted socket: nothing to recover.)
    let bound_elsewhere = match addr::local_of(fd) {
        Some(SocketAddr::V4(a)) => {
            let ip = IpAddr::V4(*a.ip());
            a.port() != 0 && !addr::is_local_only(ip) && !config::get().in_overlay(ip)
        }
        _ => false,
    };
    if !bound_elsewhere || !foreign_netns(fd) {
        return false;
    }
    let Some(sock) = overlay_socket(libc::AF_INET, &SockOpts::default()) else {
        return false;
    };
    if !swap_in(fd, sock, &[]) {
        return false;
    }
    if let Some(s) = fdtable::get_or_alloc(fd) {
        s.set_candidate();
    }
    slog!(
        DEBUG,
        "fd {fd}: inherited host socket replaced by an overlay one"
    );
    true
}

enum Hosted {
    /// The connect's outcome, for the program.
    Done(i32),
    /// Now an overlay socket (a candidate): carry on as for any.
    Candidate,
    /// Now an overlay socket, and the overlay it is.
    Overlay,
}

/// connect() on a HOSTED socket: to a Slim listener straight from this socket (the kernel does
/// the blocking, timeouts and EINTR as for any connect); anywhere else, after turning it into an
/// overlay socket.
fn connect_hosted(fd: i32, s: &fdtable::Slot, ndst: SocketAddr) -> Hosted {
    let give_back = |missed: bool| {
        if unhost(fd, missed) {
            Hosted::Candidate
        } else {
            Hosted::Done(-1)
        }
    };
    let Some(local) = s.local.load() else {
        return give_back(true);
    };
    if link::secure() {
        return connect_hosted_translated(fd, s, local, ndst, give_back);
    }
    let routes = match link::lookup_route(&ndst) {
        Err(()) => return give_back(true),
        Ok(None) => {
            return match give_back(true) {
                Hosted::Candidate => Hosted::Overlay,
                other => other,
            }
        }
        Ok(Some(r)) => r,
    };
    let pick = NEXT_ROUTE.fetch_add(1, Ordering::Relaxed) as usize % routes.count;
    let Some(host_dst) = routes.hosts[pick].filter(|h| h.is_ipv4()) else {
        return give_back(true);
    };
    if route_source(ndst) != Some(local.ip()) {
        return give_back(true);
    }
    let (ss, len) = addr::to_storage(host_dst, libc::AF_INET);
    let mut leased = s.leased();
    let mut local = local;
    let regs = s.epoll_regs();
    // A 4-tuple already in use (the port is shared with connections to other destinations)
    // fails at once: another pooled socket takes this one's place.
    for _ in 0..3 {
        if !leased || routes.shared[pick] {
            let Some(client_host) = addr::local_of(fd).map(normalize) else {
                return Hosted::Done(-1);
            };
            link::send_oneway(&Request::Announce(Announce {
                client_host,
                server_host: host_dst,
                client_overlay: local,
                server_overlay: ndst,
            }));
        }
        // SAFETY: ss holds a valid address of `len` bytes.
        let r = unsafe { real::connect(fd, &ss as *const _ as *const libc::sockaddr, len) };
        let e = errno();
        if r == 0 || e != libc::EADDRNOTAVAIL {
            s.set_conn(libc::AF_INET, 0, local, Some(ndst));
            slog!(DEBUG, "fd {fd}: Slim connection {local} -> {ndst} (hosted)");
            set_errno(e);
            return Hosted::Done(r);
        }
        let Some((next, next_leased)) = rehost(fd, s, local.ip(), &regs) else {
            break;
        };
        (local, leased) = (next, next_leased);
    }
    // No pooled socket can reach this destination now: the ordinary way (the router makes one).
    give_back(false)
}

/// A HOSTED socket whose 4-tuple is in use: another pooled socket of `ip` takes its place under
/// the same number (with the program's flags and epoll registrations). Returns its overlay
/// identity and whether its port is leased; None if there is none or it could not be swapped in.
fn rehost(
    fd: i32,
    s: &fdtable::Slot,
    ip: IpAddr,
    regs: &[Option<fdtable::EpollReg>],
) -> Option<(SocketAddr, bool)> {
    let pooled = link::pooled_socket(libc::AF_INET, ip)?;
    let (local, leased) = (SocketAddr::new(ip, pooled.port), pooled.leased);
    if !swap_in(fd, pooled.fd, regs) {
        return None;
    }
    s.rehost(local, leased);
    Some((local, leased))
}

/// Secure mode: connect() on a HOSTED socket, which the router restricted with
/// `SLIM_RESTRICT_TRANSLATE`, is the program's own connect to the overlay destination: slim_kern
/// finds the host listener in its tables (and checks the Slim policy) and connects there, with the
/// kernel's blocking, timeouts and EINTR. ENOENT (no Slim listener the module knows) turns it into
/// an overlay socket, and the connect carries on as for any candidate (the router is asked).
fn connect_hosted_translated(
    fd: i32,
    s: &fdtable::Slot,
    local: SocketAddr,
    ndst: SocketAddr,
    give_back: impl Fn(bool) -> Hosted,
) -> Hosted {
    if !ndst.is_ipv4() || route_source(ndst) != Some(local.ip()) {
        return give_back(true);
    }
    let (ss, len) = addr::to_storage(ndst, libc::AF_INET);
    let regs = s.epoll_regs();
    let mut local = local;
    for _ in 0..3 {
        // SAFETY: ss holds a valid address of `len` bytes.
        let r = unsafe { real::connect(fd, &ss as *const _ as *const libc::sockaddr, len) };
        let e = errno();
        match e {
            _ if r == 0 => {}
            // No Slim listener in the module's tables.
            libc::ENOENT => return give_back(true),
            // The 4-tuple is in use (the port is shared with connections elsewhere): another
            // pooled socket takes this one's place.
            libc::EADDRNOTAVAIL => {
                let Some((next, _)) = rehost(fd, s, local.ip(), &regs) else {
                    break;
                };
                local = next;
                continue;
            }
            // EINPROGRESS, EINTR, ECONNREFUSED (the Slim policy, or TCP), ...: the program's.
            _ => {}
        }
        s.set_conn(libc::AF_INET, 0, local, Some(ndst));
        slog!(
            DEBUG,
            "fd {fd}: Slim connection {local} -> {ndst} (hosted, slim_kern)"
        );
        set_errno(e);
        return Hosted::Done(r);
    }
    give_back(false)
}

/// The connect hook. Returns None when the call should go to the C library unchanged.
pub fn connect(fd: i32, dst: SocketAddr) -> Option<i32> {
    let ndst = normalize(dst);
    let cfg = config::get();
    let mut kind = fdtable::kind(fd);
    let elsewhere = addr::is_local_only(ndst.ip()) || !cfg.in_overlay(ndst.ip());
    if kind == HOSTED {
        if elsewhere {
            return (!unhost(fd, true)).then_some(-1);
        }
        let s = fdtable::get(fd)?;
        match connect_hosted(fd, s, ndst) {
            Hosted::Done(r) => return Some(r),
            Hosted::Overlay => return None,
            Hosted::Candidate => kind = CANDIDATE,
        }
    }
    if elsewhere {
        return None;
    }
    match kind {
        CONN => return Some(reconnect(fd)),
        LISTENER | PLAIN => return None,
        _ => {}
    }
    if !link::available() || !is_tcp(fd, kind) {
        return None;
    }
    let mut local = addr::local_of(fd)?;
    if local.port() != 0 && recover_hosted(fd) {
        kind = CANDIDATE;
        local = addr::local_of(fd)?;
    }
    let family = family_of(&local);
    if local.port() != 0 {
        // The program chose its own source port; only the overlay can honour that.
        return None;
    }
    let nlocal = normalize(local);
    if family == libc::AF_INET && dst.is_ipv6() {
        return None;
    }
    let src_ip = if nlocal.ip().is_unspecified() {
        route_source(ndst)?
    } else if cfg.in_overlay(nlocal.ip()) {
        nlocal.ip()
    } else {
        return None;
    };
    let slot = fdtable::get(fd);
    let opts = match slot {
        Some(s) if kind == CANDIDATE => s.opts(),
        _ => SockOpts::default(),
    };
    let regs = slot.map(|s| s.epoll_regs()).unwrap_or_default();
    let (host, id, cookie) = match fast_connect(family, src_ip, ndst, &opts) {
        Fast::Done(host, id) => {
            if let (libc::AF_INET, IpAddr::V4(v4)) = (family, src_ip) {
                HOSTED_SRC.store(u32::from(v4), Ordering::Relaxed);
            }
            (host, id, 0)
        }
        Fast::NoListener => return None,
        Fast::Refused(e) => {
            set_errno(e);
            return Some(-1);
        }
        Fast::AskRouter => {
            let req = Request::Connect(ConnectReq {
                family,
                src_ip,
                dst: ndst,
                opts,
            });
            let mut buf = [0u8; MAX_FRAME];
            let (n, mut passed) = link::call(&req, &mut buf)?;
            let (id, cookie) = match Reply::decode(&buf[..n]) {
                Ok(Reply::ConnectOk { id, cookie }) => (id, cookie),
                // EACCES/EPERM: refused (secure mode); ECONNREFUSED: denied by the Slim policy,
                // which the overlay must not be asked to carry instead.
                Ok(Reply::Error { errno: e, message })
                    if e == libc::EACCES || e == libc::EPERM || e == libc::ECONNREFUSED =>
                {
                    slog!(DEBUG, "connect to {dst} refused by the router: {message}");
                    set_errno(e);
                    return Some(-1);
                }
                Ok(other) => {
                    slog!(DEBUG, "connect to {dst}: {:?}; using the overlay", other);
                    return None;
                }
                Err(_) => return None,
            };
            (passed.take()?, id, cookie)
        }
    };
    // SAFETY: fcntl queries on the program's descriptor.
    let (fl, fdfl) = unsafe {
        (
            real::fcntl(fd, libc::F_GETFL, 0),
            real::fcntl(fd, libc::F_GETFD, 0),
        )
    };
    let nonblock = fl >= 0 && fl & libc::O_NONBLOCK != 0;
    let cloexec = fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0;
    // SAFETY: dup3 onto the program's descriptor number atomically replaces its unconnected
    // overlay socket with the host socket, whose connect is already under way.
    let d = unsafe {
        real::dup3(
            host.as_raw_fd(),
            fd,
            if cloexec { libc::O_CLOEXEC } else { 0 },
        )
    };
    drop(host);
    if d < 0 {
        return None;
    }
    if let Some(s) = fdtable::get_or_alloc(fd) {
        s.set_conn(family, cookie, id.local, id.peer);
    }
    for reg in regs.into_iter().flatten() {
        let mut ev = libc::epoll_event {
            events: reg.events,
            u64: reg.data,
        };
        // SAFETY: ev is valid; re-registers the new socket where the program had registered the old.
        unsafe { real::epoll_ctl(reg.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }
    slog!(DEBUG, "fd {fd}: Slim connection {} -> {dst}", id.local);
    if nonblock {
        set_errno(libc::EINPROGRESS);
        return Some(-1);
    }
    Some(finish_blocking(fd))
}

fn set_blocking(fd: i32) {
    // SAFETY: F_GETFL/F_SETFL on the program's descriptor.
    unsafe {
        let fl = real::fcntl(fd, libc::F_GETFL, 0);
        if fl >= 0 {
            real::fcntl(fd, libc::F_SETFL, (fl & !libc::O_NONBLOCK) as usize);
        }
    }
}

/// A blocking connect: wait for the host handshake as the kernel would, then report its outcome.
fn finish_blocking(fd: i32) -> i32 {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: p is a valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, crate::hooks::timeout_ms(fd, libc::SO_SNDTIMEO)) };
    // The socket is the program's blocking socket again whatever happens next.
    set_blocking(fd);
    if n < 0 {
        return -1; // EINTR: the connection goes on, as with an interrupted blocking connect
    }
    if n == 0 {
        set_errno(libc::EINPROGRESS);
        return -1;
    }
    match sock_int(fd, libc::SOL_SOCKET, libc::SO_ERROR) {
        Some(0) => 0,
        Some(e) => {
            set_errno(e);
            -1
        }
        None => -1,
    }
}

/// connect() again on a Slim socket: the answers the kernel gives for a connection in progress.
fn reconnect(fd: i32) -> i32 {
    if addr::peer_of(fd).is_some() {
        set_errno(libc::EISCONN);
        return -1;
    }
    match sock_int(fd, libc::SOL_SOCKET, libc::SO_ERROR) {
        Some(0) | None => {}
        Some(e) => {
            set_errno(e);
            return -1;
        }
    }
    // SAFETY: F_GETFL on the program's descriptor.
    let fl = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    if fl >= 0 && fl & libc::O_NONBLOCK != 0 {
        set_errno(libc::EALREADY);
        return -1;
    }
    finish_blocking(fd)
}

/// The container's overlay addresses: where a wildcard listener can be reached.
pub fn overlay_ips() -> IpList {
    let cfg = config::get();
    let mut out = IpList::default();
    let mut ifa: *mut libc::ifaddrs = core::ptr::null_mut();
    // SAFETY: ifa is valid for writes; freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifa) } < 0 {
        return out;
    }
    let mut p = ifa;
    while !p.is_null() {
        // SAFETY: p walks the list getifaddrs returned.
        let a = unsafe { (*p).ifa_addr };
        if !a.is_null() {
            // SAFETY: getifaddrs' addresses are full sockaddrs of their family.
            if let Some(sa) = unsafe {
                addr::read(
                    a,
                    core::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            } {
                if cfg.in_overlay(sa.ip()) {
                    out.push(sa.ip());
                }
            }
        }
        // SAFETY: as above.
        p = unsafe { (*p).ifa_next };
    }
    // SAFETY: ifa came from getifaddrs.
    unsafe { libc::freeifaddrs(ifa) };
    out
}

/// The listen hook, after the C library's listen() succeeded on `fd`.
pub fn after_listen(fd: i32, backlog: i32, kind: u8) {
    if kind != CANDIDATE && kind != NONE {
        return;
    }
    if !link::available() || !is_tcp(fd, kind) {
        return;
    }
    let Some(bound) = addr::local_of(fd) else {
        return;
    };
    let family = family_of(&bound);
    let nb = normalize(bound);
    let cfg = config::get();
    if !nb.ip().is_unspecified() && !cfg.in_overlay(nb.ip()) {
        return; // loopback or another non-overlay address: not Slim's business
    }
    let v6only =
        family == libc::AF_INET6 && sock_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) == Some(1);
    let ips = if nb.ip().is_unspecified() {
        overlay_ips()
    } else {
        IpList::default()
    };
    let slot = fdtable::get(fd);
    let opts = match slot {
        Some(s) if kind == CANDIDATE => s.opts(),
        _ => SockOpts::default(),
    };
    let regs = slot.map(|s| s.epoll_regs()).unwrap_or_default();
    let req = Request::Listen(ListenReq {
        family,
        v6only,
        bound,
        ips,
        backlog,
        opts,
    });
    let mut buf = [0u8; MAX_FRAME];
    let Some((n, mut passed)) = link::call(&req, &mut buf) else {
        return;
    };
    match (Reply::decode(&buf[..n]), passed.take()) {
        (Ok(Reply::ListenOk { cookie }), Some(host)) => {
            listener::install(fd, host, cookie, family, regs)
        }
        (r, _) => slog!(DEBUG, "listen on {bound}: {:?}; overlay only", r.ok()),
    }
    let _ = errno();
}
