//! Overlay listeners that also accept Slim connections.
//!
//! A Slim listener has two sockets: the program's own overlay socket (for peers without Slim) and
//! a host listener from the router (for Slim peers). The program's descriptor number is given to
//! an epoll instance holding both, so it becomes readable when either has a connection: select,
//! poll and epoll on it keep working unchanged, as does sharing it across fork (pre-fork servers).
//! `accept` takes from whichever is ready. The two sockets live at descriptors the program does
//! not know ("hidden"), tagged in the epoll set with [`MAGIC`] so they can be found again after exec.

use crate::addr;
use crate::fdtable::{self, EpollReg, LISTENER, MAX_REGS};
use crate::link;
use crate::log::{slog, DEBUG, WARN};
use crate::real;
use core::net::SocketAddr;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use slim_uapi::proto::{AcceptLookup, Identity, Reply, Request, MAX_FRAME};
use std::os::fd::{AsRawFd, OwnedFd};

/// "SLIM" in the high half of the epoll data word, the socket's role in the low half.
pub const MAGIC: u64 = 0x534C_494D_0000_0000;
const ROLE_OVERLAY: u64 = 1;
const ROLE_HOST: u64 = 2;
/// Hidden descriptors are placed at or above this number, away from the low numbers programs
/// expect to be theirs.
pub const HIDDEN_BASE: i32 = 900;

pub struct ListenerRec {
    refs: AtomicU32,
    /// Where the program bound its socket, and its family: what a re-registration tells the router.
    pub bound: crate::fdtable::PackedAddr,
    /// The host listener's own address: every connection it accepts has it as local address.
    pub host_local: crate::fdtable::PackedAddr,
    pub family: AtomicI32,
    pub overlay_fd: AtomicI32,
    pub host_fd: AtomicI32,
    pub cookie: AtomicU64,
    turn: AtomicU32,
    /// The last accept found both queues empty on a blocking listener (see `accept`).
    waits: AtomicBool,
}

const MAX_LISTENERS: usize = 1024;
static RECS: [ListenerRec; MAX_LISTENERS] = [const {
    ListenerRec {
        refs: AtomicU32::new(0),
        bound: crate::fdtable::PackedAddr::new(),
        host_local: crate::fdtable::PackedAddr::new(),
        family: AtomicI32::new(0),
        overlay_fd: AtomicI32::new(-1),
        host_fd: AtomicI32::new(-1),
        cookie: AtomicU64::new(0),
        turn: AtomicU32::new(0),
        waits: AtomicBool::new(false),
    }
}; MAX_LISTENERS];

pub fn rec(i: usize) -> &'static ListenerRec {
    &RECS[i % MAX_LISTENERS]
}

fn alloc_rec() -> Option<usize> {
    RECS.iter().position(|r| {
        r.refs
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}

/// Another descriptor (dup, F_DUPFD) refers to the listener.
pub fn retain(i: usize) {
    rec(i).refs.fetch_add(1, Ordering::AcqRel);
}

/// One descriptor of the listener went away; the last one closes the hidden sockets.
/// Async-signal-safe: atomics and close(2) only.
pub fn release(i: usize) {
    let r = rec(i);
    if r.refs.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    let o = r.overlay_fd.swap(-1, Ordering::AcqRel);
    let h = r.host_fd.swap(-1, Ordering::AcqRel);
    let cookie = r.cookie.load(Ordering::Relaxed);
    for fd in [o, h] {
        if fd >= 0 {
            fdtable::clear(fd);
            // SAFETY: the hidden descriptors are this library's own.
            unsafe { real::close(fd) };
        }
    }
    slog!(DEBUG, "Slim listener closed (cookie {cookie})");
    link::notify(&Request::Closed { cookie });
}

/// The program is about to dup2 onto descriptor `fd`, one of our hidden listener sockets: move
/// ours to another number first so the listener keeps working.
pub fn evict(fd: i32) {
    for r in RECS.iter() {
        if r.refs.load(Ordering::Acquire) == 0 {
            continue;
        }
        for slot in [&r.overlay_fd, &r.host_fd] {
            if slot.load(Ordering::Relaxed) != fd {
                continue;
            }
            // SAFETY: F_GETFD/F_DUPFD on our own descriptor.
            let cloexec = unsafe { real::fcntl(fd, libc::F_GETFD, 0) } & libc::FD_CLOEXEC != 0;
            let moved = hide(fd, cloexec);
            if moved >= 0 {
                slot.store(moved, Ordering::Release);
                fdtable::clear(fd);
            }
        }
    }
}

/// Mirrors FD_CLOEXEC of the program's descriptor onto the hidden ones, so that they are
/// inherited across exec exactly when the listener is.
pub fn mirror_cloexec(i: usize, cloexec: bool) {
    let r = rec(i);
    for fd in [
        r.overlay_fd.load(Ordering::Relaxed),
        r.host_fd.load(Ordering::Relaxed),
    ] {
        if fd >= 0 {
            // SAFETY: F_SETFD on our own descriptor.
            unsafe {
                real::fcntl(
                    fd,
                    libc::F_SETFD,
                    if cloexec {
                        libc::FD_CLOEXEC as usize
                    } else {
                        0
                    },
                )
            };
        }
    }
}

fn errno() -> i32 {
    // SAFETY: __errno_location always returns the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

fn set_errno(e: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e };
}

fn hide(fd: i32, cloexec: bool) -> i32 {
    let cmd = if cloexec {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    // SAFETY: F_DUPFD on a valid descriptor.
    let mut h = unsafe { real::fcntl(fd, cmd, HIDDEN_BASE as usize) };
    if h < 0 {
        // RLIMIT_NOFILE below the base: take any number.
        // SAFETY: as above.
        h = unsafe { real::fcntl(fd, cmd, 3) };
    }
    if h >= 0 {
        if let Some(s) = fdtable::get_or_alloc(h) {
            s.set_hidden();
        }
        // SAFETY: F_GETFL/F_SETFL on our own descriptor.
        unsafe {
            let fl = real::fcntl(h, libc::F_GETFL, 0);
            real::fcntl(h, libc::F_SETFL, (fl | libc::O_NONBLOCK) as usize);
        }
    }
    h
}

fn epoll_add(ep: i32, fd: i32, events: u32, data: u64) -> i32 {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: ev is a valid epoll_event.
    unsafe { real::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) }
}

/// Turns the program's listening socket `fd` into a Slim listener with host listener `host`.
/// On any failure the program keeps its plain overlay listener.
pub fn install(
    fd: i32,
    host: OwnedFd,
    cookie: u64,
    family: i32,
    regs: [Option<EpollReg>; MAX_REGS],
) {
    let Some(i) = alloc_rec() else {
        slog!(
            WARN,
            "more than {MAX_LISTENERS} Slim listeners in one process; fd {fd} stays overlay-only"
        );
        return;
    };
    // SAFETY: fcntl queries on the program's valid descriptor.
    let (fdflags, flflags) = unsafe {
        (
            real::fcntl(fd, libc::F_GETFD, 0),
            real::fcntl(fd, libc::F_GETFL, 0),
        )
    };
    let cloexec = fdflags >= 0 && fdflags & libc::FD_CLOEXEC != 0;
    let ho = hide(fd, cloexec);
    let hh = hide(host.as_raw_fd(), cloexec);
    drop(host);
    // SAFETY: epoll_create1 has no memory arguments.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let fail = |what: &str| {
        slog!(
            WARN,
            "cannot set up Slim listener on fd {fd} ({what}, errno {}); it stays overlay-only",
            errno()
        );
        for h in [ho, hh, ep] {
            if h >= 0 {
                fdtable::clear(h);
                // SAFETY: our own descriptors.
                unsafe { real::close(h) };
            }
        }
        rec(i).refs.store(0, Ordering::Release);
    };
    if ho < 0 || hh < 0 || ep < 0 {
        return fail("descriptors");
    }
    if epoll_add(ep, ho, libc::EPOLLIN as u32, MAGIC | ROLE_OVERLAY) < 0
        || epoll_add(ep, hh, libc::EPOLLIN as u32, MAGIC | ROLE_HOST) < 0
    {
        return fail("epoll");
    }
    let r = rec(i);
    r.overlay_fd.store(ho, Ordering::Relaxed);
    r.host_fd.store(hh, Ordering::Relaxed);
    r.cookie.store(cookie, Ordering::Relaxed);
    r.waits.store(false, Ordering::Relaxed);
    r.family.store(family, Ordering::Relaxed);
    r.bound.store(addr::local_of(ho));
    r.host_local.store(addr::local_of(hh).map(addr::normalize));
    // SAFETY: dup3 onto the program's own descriptor number: atomically replaces the socket there
    // with the epoll instance (the socket lives on at `ho`).
    let d = unsafe { real::dup3(ep, fd, if cloexec { libc::O_CLOEXEC } else { 0 }) };
    // SAFETY: our temporary descriptor.
    unsafe { real::close(ep) };
    if d < 0 {
        r.overlay_fd.store(-1, Ordering::Relaxed);
        r.host_fd.store(-1, Ordering::Relaxed);
        return fail("dup3");
    }
    if flflags >= 0 && flflags & libc::O_NONBLOCK != 0 {
        // SAFETY: F_SETFL on the program's descriptor, now the epoll instance.
        unsafe { real::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK as usize) };
    }
    if let Some(s) = fdtable::get_or_alloc(fd) {
        s.set_listener(family, i);
    }
    // Registrations the program made on the socket before listen() follow it.
    for reg in regs.into_iter().flatten() {
        epoll_add(
            reg.epfd,
            fd,
            reg.events & !(libc::EPOLLEXCLUSIVE as u32),
            reg.data,
        );
    }
    slog!(
        DEBUG,
        "fd {fd}: Slim listener (overlay fd {ho}, host fd {hh}, cookie {cookie})"
    );
}

const OVERLAY_FIRST_EVERY: u32 = 8;

/// Which overlay connection an accepted host connection stands for: from the router's accept
/// table if it is there, else asked of the router (which waits for the announcement).
fn identify(child: i32, r: &ListenerRec, peer_host: SocketAddr) -> Option<Identity> {
    if link::secure() {
        // The child is restricted: it answers no host address, even to us. The module identified
        // it at accept if its client's port is leased (its peer is then set); else the router
        // finds its host endpoints itself and writes its overlay addresses into the module.
        if let (Some(local), Some(peer)) = (addr::local_of(child), addr::peer_of(child)) {
            if !peer.ip().is_unspecified() {
                return Some(Identity {
                    local: addr::normalize(local),
                    peer: Some(addr::normalize(peer)),
                });
            }
        }
        let req = Request::IdentifyChild {
            listener_cookie: r.cookie.load(Ordering::Relaxed),
        };
        let mut buf = [0u8; MAX_FRAME];
        let (n, _) = link::call_with_fd(&req, Some(child), &mut buf)?;
        return match Reply::decode(&buf[..n]) {
            Ok(Reply::Identity(id)) => Some(id),
            _ => None,
        };
    }
    let peer_host = addr::normalize(peer_host);
    let local_host = match r.host_local.load() {
        Some(l) => l,
        None => addr::normalize(addr::local_of(child)?),
    };
    // An announced connection first (it also holds connections pinned when their port changed
    // owner), then the lease of the client's port. A miss (an announcement still on its way, a
    // lease pushed out of its slot) asks the router, which waits for what is missing. No
    // sched_yield to give the router a moment: next to a SCHED_IDLE task a yield can hand it a
    // whole time slice.
    if let Some(e) = link::lookup_accepted(&peer_host, &local_host)
        .or_else(|| link::lookup_leased(&peer_host, &local_host))
    {
        return Some(Identity {
            local: e.server_overlay,
            peer: Some(e.client_overlay),
        });
    }
    let listener_cookie = r.cookie.load(Ordering::Relaxed);
    let child_cookie = crate::hooks::cookie_of(child)?;
    let req = Request::AcceptLookup(AcceptLookup {
        listener_cookie,
        child_cookie,
        local_host,
        peer_host,
    });
    let mut buf = [0u8; MAX_FRAME];
    let (n, _) = link::call(&req, &mut buf)?;
    match Reply::decode(&buf[..n]) {
        Ok(Reply::Identity(id)) => {
            slog!(
                DEBUG,
                "accept table miss for {peer_host} -> {local_host}; now: {:?}",
                link::lookup_accepted(&peer_host, &local_host)
            );
            Some(id)
        }
        _ => None,
    }
}

fn try_host(
    r: &ListenerRec,
    family: i32,
    out: *mut libc::sockaddr,
    outlen: *mut libc::socklen_t,
    flags: i32,
) -> Option<i32> {
    let hh = r.host_fd.load(Ordering::Relaxed);
    loop {
        // SAFETY: zeroed storage is valid; accept4 writes within `len`.
        let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
        let mut len = core::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: ss/len are valid; hh is our non-blocking host listener.
        let c = unsafe {
            real::accept4(
                hh,
                &mut ss as *mut _ as *mut libc::sockaddr,
                &mut len,
                flags,
            )
        };
        if c < 0 {
            return if errno() == libc::EAGAIN {
                None
            } else {
                Some(-1)
            };
        }
        // SAFETY: the kernel filled `len` bytes.
        let peer_host = unsafe { addr::read(&ss as *const _ as *const libc::sockaddr, len) };
        let id = peer_host.and_then(|p| identify(c, r, p));
        match id {
            Some(id) => {
                if let Some(s) = fdtable::get_or_alloc(c) {
                    s.set_conn(
                        family,
                        // Learned on the first getsockname/getpeername, if there is one.
                        0, id.local, id.peer,
                    );
                }
                if let Some(p) = id.peer {
                    // SAFETY: the program's (addr, len) pair, as given to accept.
                    unsafe { addr::write_out(p, family, out, outlen) };
                }
                return Some(c);
            }
            None => {
                // Not announced by any router: someone connected straight to the host port.
                slog!(
                    WARN,
                    "dropping an unannounced connection on a Slim listener"
                );
                // SAFETY: our own accepted descriptor.
                unsafe { real::close(c) };
            }
        }
    }
}

fn try_overlay(
    r: &ListenerRec,
    out: *mut libc::sockaddr,
    outlen: *mut libc::socklen_t,
    flags: i32,
) -> Option<i32> {
    let ho = r.overlay_fd.load(Ordering::Relaxed);
    // SAFETY: the program's (addr, len) pair, forwarded; ho is our non-blocking overlay listener.
    let c = unsafe { real::accept4(ho, out, outlen, flags) };
    if c < 0 {
        return if errno() == libc::EAGAIN {
            None
        } else {
            Some(-1)
        };
    }
    fdtable::clear(c);
    // A peer reached a Slim listener over the overlay: perhaps our router restarted.
    link::check_router_restart();
    Some(c)
}

/// Registers every listener of this process with a (restarted) router again.
pub fn reattach_all() {
    for r in RECS.iter() {
        if r.refs.load(Ordering::Acquire) == 0 {
            continue;
        }
        let (ho, hh) = (
            r.overlay_fd.load(Ordering::Relaxed),
            r.host_fd.load(Ordering::Relaxed),
        );
        let Some(bound) = r.bound.load() else {
            continue;
        };
        if hh < 0 || ho < 0 {
            continue;
        }
        let family = r.family.load(Ordering::Relaxed);
        let v6only = family == libc::AF_INET6
            && crate::hooks::sock_int(ho, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) == Some(1);
        let ips = if addr::normalize(bound).ip().is_unspecified() {
            crate::connect::overlay_ips()
        } else {
            Default::default()
        };
        let req = Request::Reattach(slim_uapi::proto::ListenReq {
            family,
            v6only,
            bound,
            ips,
            backlog: 0,
            opts: Default::default(),
        });
        let mut buf = [0u8; MAX_FRAME];
        let ok = link::call_with_fd(&req, Some(hh), &mut buf)
            .map(|(n, _)| matches!(Reply::decode(&buf[..n]), Ok(Reply::ListenOk { .. })))
            .unwrap_or(false);
        slog!(DEBUG, "listener {bound}: reattached to the router: {ok}");
    }
}

/// accept4 on a Slim listener (program descriptor `fd`, record `i`).
pub fn accept(
    fd: i32,
    i: usize,
    family: i32,
    out: *mut libc::sockaddr,
    outlen: *mut libc::socklen_t,
    flags: i32,
) -> i32 {
    let r = rec(i);
    let turn = r.turn.fetch_add(1, Ordering::Relaxed);
    // Slim connections first, and now and then the overlay first, so that a steady stream of one
    // kind never starves the other; trying the empty queue costs a system call.
    let mut host_first = !turn.is_multiple_of(OVERLAY_FIRST_EVERY);
    let mut nonblock = None;
    let mut is_nonblocking = || {
        *nonblock.get_or_insert_with(|| {
            // SAFETY: F_GETFL on the program's descriptor.
            let fl = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
            fl >= 0 && fl & libc::O_NONBLOCK != 0
        })
    };
    // A blocking accept that had to wait last time (a server that keeps up with its clients)
    // most likely waits again: wait first and take from the queue that is ready, rather than
    // try both empty queues and then wait. Every OVERLAY_FIRST_EVERYth call tries first, so a
    // server that falls behind goes back to taking without waiting.
    let mut wait = r.waits.load(Ordering::Relaxed) && host_first;
    if wait && is_nonblocking() {
        wait = false;
        r.waits.store(false, Ordering::Relaxed);
    }
    loop {
        if wait {
            match wait_ready(r) {
                Ok(host_ready) => host_first = host_ready,
                Err(()) => return -1,
            }
        }
        let got = if host_first {
            try_host(r, family, out, outlen, flags).or_else(|| try_overlay(r, out, outlen, flags))
        } else {
            try_overlay(r, out, outlen, flags).or_else(|| try_host(r, family, out, outlen, flags))
        };
        if let Some(c) = got {
            if !wait && r.waits.load(Ordering::Relaxed) {
                r.waits.store(false, Ordering::Relaxed);
            }
            return c;
        }
        // Asked only now: most accepts find a connection waiting.
        if is_nonblocking() {
            set_errno(libc::EAGAIN);
            return -1;
        }
        r.waits.store(true, Ordering::Relaxed);
        wait = true;
    }
}

/// Waits until either socket of a blocking Slim listener has a connection, for as long as
/// SO_RCVTIMEO allows: Ok(whether the host listener has one), Err with errno set (EINTR, as a
/// blocking accept interrupted by a signal reports it; EAGAIN when the time is up).
fn wait_ready(r: &ListenerRec) -> Result<bool, ()> {
    let ho = r.overlay_fd.load(Ordering::Relaxed);
    let mut pfd = [
        libc::pollfd {
            fd: ho,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: r.host_fd.load(Ordering::Relaxed),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: pfd is a valid array of two pollfds.
    let n = unsafe {
        libc::poll(
            pfd.as_mut_ptr(),
            2,
            crate::hooks::timeout_ms(ho, libc::SO_RCVTIMEO),
        )
    };
    if n < 0 {
        return Err(());
    }
    if n == 0 {
        set_errno(libc::EAGAIN);
        return Err(());
    }
    Ok(pfd[1].revents != 0 || pfd[0].revents == 0)
}

/// Finds the hidden sockets of a listener inherited across exec, from the epoll instance's
/// /proc/self/fdinfo entry (the tags put there by `install`). Returns the record, or None if `fd`
/// is not a Slim listener.
pub fn recover(fd: i32) -> Option<(usize, i32)> {
    let mut path = [0u8; 64];
    let p = {
        use core::fmt::Write;
        struct W<'a>(&'a mut [u8], usize);
        impl Write for W<'_> {
            fn write_str(&mut self, s: &str) -> core::fmt::Result {
                let b = s.as_bytes();
                if self.1 + b.len() >= self.0.len() {
                    return Err(core::fmt::Error);
                }
                self.0[self.1..self.1 + b.len()].copy_from_slice(b);
                self.1 += b.len();
                Ok(())
            }
        }
        let mut w = W(&mut path, 0);
        write!(w, "/proc/self/fdinfo/{fd}").ok()?;
        w.1
    };
    path[p] = 0;
    let text = std::fs::read_to_string(core::str::from_utf8(&path[..p]).ok()?).ok()?;
    let (mut ho, mut hh) = (-1, -1);
    for line in text.lines() {
        // "tfd:        5 events:       19 data: 534c494d00000001  pos:0 ino:1234 sdev:8"
        let Some(rest) = line.strip_prefix("tfd:") else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let tfd: i32 = it.next()?.parse().ok()?;
        let mut data = None;
        while let Some(tok) = it.next() {
            if tok == "data:" {
                data = it.next().and_then(|d| u64::from_str_radix(d, 16).ok());
            }
        }
        match data {
            Some(d) if d == MAGIC | ROLE_OVERLAY => ho = tfd,
            Some(d) if d == MAGIC | ROLE_HOST => hh = tfd,
            _ => {}
        }
    }
    if ho < 0 || hh < 0 {
        return None;
    }
    let i = alloc_rec()?;
    let r = rec(i);
    r.overlay_fd.store(ho, Ordering::Relaxed);
    r.host_fd.store(hh, Ordering::Relaxed);
    r.cookie
        .store(crate::hooks::cookie_of(hh).unwrap_or(0), Ordering::Relaxed);
    for h in [ho, hh] {
        if let Some(s) = fdtable::get_or_alloc(h) {
            s.set_hidden();
        }
    }
    let family = addr::local_of(ho).map(|a| {
        if a.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        }
    })?;
    if let Some(s) = fdtable::get_or_alloc(fd) {
        s.set_listener(family, i);
    }
    slog!(DEBUG, "fd {fd}: Slim listener recovered after exec");
    debug_assert_eq!(fdtable::kind(fd), LISTENER);
    Some((i, family))
}
