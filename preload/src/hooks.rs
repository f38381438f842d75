//! The interposed C functions. Control path only: send, recv, read, write, poll and friends are
//! never touched. Each hook catches panics so that none unwinds into C; after one, the call goes
//! to the C library unchanged.
//!
//! # Safety
//! Every hook has exactly the contract of the C function of the same name (pointers valid for
//! the lengths given, and so on); programs call them as they would call the C library.

use crate::addr;
use crate::connect;
use crate::fdtable::{self, CANDIDATE, CONN, HIDDEN, HOSTED, LISTENER, NONE, PLAIN};
use crate::link;
use crate::listener;
use crate::real;
use core::ffi::{c_int, c_void};
use libc::{sockaddr, socklen_t};
use slim_uapi::proto::{Reply, Request, MAX_FRAME};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub fn errno() -> i32 {
    // SAFETY: __errno_location always returns the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(e: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e };
}

/// An int-valued socket option, read with the C library's getsockopt.
pub fn sock_int(fd: i32, level: i32, name: i32) -> Option<i32> {
    let mut v: c_int = 0;
    let mut len = core::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: v/len valid for writes.
    let r = unsafe {
        real::getsockopt(
            fd,
            level,
            name,
            &mut v as *mut c_int as *mut c_void,
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

/// A socket timeout option (SO_RCVTIMEO / SO_SNDTIMEO) as a poll(2) timeout: -1 when unset.
pub fn timeout_ms(fd: i32, opt: i32) -> i32 {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = core::mem::size_of::<libc::timeval>() as socklen_t;
    // SAFETY: tv/len are valid for writes.
    let r = unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &mut tv as *mut _ as *mut c_void,
            &mut len,
        )
    };
    if r < 0 || (tv.tv_sec == 0 && tv.tv_usec == 0) {
        -1
    } else {
        (tv.tv_sec * 1000 + tv.tv_usec / 1000).clamp(1, i32::MAX as i64) as i32
    }
}

pub fn cookie_of(fd: i32) -> Option<u64> {
    let mut v: u64 = 0;
    let mut len = core::mem::size_of::<u64>() as socklen_t;
    // SAFETY: v/len valid for writes.
    let r = unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            &mut v as *mut u64 as *mut c_void,
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

/// Runs a hook body: panics fall back to the C library, and a successful call leaves errno as
/// the program had it (the body may have seen EAGAIN and such on the way, and programs do print
/// errno after a later, unrelated failure).
macro_rules! guarded {
    ($fallback:expr, $body:expr) => {{
        let saved = errno();
        let r = match catch_unwind(AssertUnwindSafe(|| $body)) {
            Ok(v) => v,
            Err(_) => $fallback,
        };
        if r >= 0 {
            set_errno(saved);
        }
        r
    }};
}

/// Forgets `fd`'s state before the descriptor goes away or is replaced. Async-signal-safe.
fn release(fd: c_int) {
    let Some(s) = fdtable::get(fd) else { return };
    match s.kind() {
        NONE => {}
        // The router learns that a connection went away from the kernel (its periodic sweep), so
        // closing one costs the program nothing more than the close itself.
        CONN => s.clear(),
        LISTENER => {
            let i = s.listener();
            s.clear();
            listener::release(i);
        }
        _ => s.clear(),
    }
}

/// `new` now refers to what `old` refers to (dup family).
fn duplicated(old: c_int, new: c_int) {
    let Some(src) = fdtable::get(old) else {
        fdtable::clear(new);
        return;
    };
    if src.kind() == NONE || src.kind() == HIDDEN || src.kind() == CANDIDATE {
        fdtable::clear(new);
        return;
    }
    if let Some(dst) = fdtable::get_or_alloc(new) {
        if dst.copy_from(src) == LISTENER {
            listener::retain(dst.listener());
        }
    }
}

/// The listener record of `fd`, also for a listener inherited across exec.
fn listener_of(fd: c_int) -> Option<(usize, i32)> {
    let s = fdtable::get(fd)?;
    (s.kind() == LISTENER).then(|| (s.listener(), s.family()))
}

fn recover_listener(fd: c_int) -> Option<(usize, i32)> {
    if fdtable::kind(fd) != NONE {
        return None;
    }
    listener::recover(fd)
}

/// After exec the process has no records: ask the router whether this host socket is a Slim one.
fn recover_conn(fd: c_int, kernel_view: core::net::SocketAddr) -> bool {
    let ip = addr::normalize(kernel_view).ip();
    if addr::is_local_only(ip) || crate::config::get().in_overlay(ip) || !link::available() {
        return false;
    }
    let Some(peer_host) = addr::peer_of(fd) else {
        // Unconnected: a fresh socket from before exec, if it lives in the host's namespace.
        return connect::recover_hosted(fd);
    };
    let (Some(cookie), Some(local_host)) = (cookie_of(fd), addr::local_of(fd)) else {
        return false;
    };
    let mut buf = [0u8; MAX_FRAME];
    let Some((n, _)) = link::call(
        &Request::QueryTuple {
            local_host,
            peer_host,
        },
        &mut buf,
    ) else {
        return false;
    };
    let Some(slot) = fdtable::get_or_alloc(fd) else {
        return false;
    };
    match Reply::decode(&buf[..n]) {
        Ok(Reply::Identity(id)) => {
            let family = if kernel_view.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            slot.set_conn(family, cookie, id.local, id.peer);
            true
        }
        _ => {
            slot.set_plain();
            false
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
    if domain == libc::AF_INET
        && ty & 0xf == libc::SOCK_STREAM
        && (proto == 0 || proto == libc::IPPROTO_TCP)
    {
        let saved = errno();
        if let Ok(Some(fd)) = catch_unwind(AssertUnwindSafe(|| connect::hosted_socket(ty))) {
            set_errno(saved);
            return fd;
        }
        set_errno(saved);
    }
    // SAFETY: forwarded unchanged.
    let fd = unsafe { real::socket(domain, ty, proto) };
    if fd >= 0 {
        let saved = errno();
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let tcp = (domain == libc::AF_INET || domain == libc::AF_INET6)
                && ty & 0xf == libc::SOCK_STREAM
                && (proto == 0 || proto == libc::IPPROTO_TCP);
            if tcp {
                if let Some(s) = fdtable::get_or_alloc(fd) {
                    s.set_candidate();
                }
            } else {
                fdtable::clear(fd);
            }
        }));
        set_errno(saved);
    }
    fd
}

#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, a: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: the caller passes a valid (addr, len) pair, as connect(2) requires.
    let fallback = || unsafe { real::connect(fd, a, len) };
    guarded!(fallback(), {
        // SAFETY: as above.
        match unsafe { addr::read(a, len) } {
            Some(dst) => connect::connect(fd, dst).unwrap_or_else(fallback),
            None => fallback(),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, a: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: forwarded under bind(2)'s contract.
    guarded!(unsafe { real::bind(fd, a, len) }, {
        match fdtable::kind(fd) {
            HOSTED if !connect::unhost(fd, false) => return -1,
            NONE => {
                // SAFETY: as above.
                let r = unsafe { real::bind(fd, a, len) };
                if r < 0 && errno() == libc::EINVAL {
                    if connect::recover_hosted(fd) {
                        // SAFETY: as above, now on an overlay socket.
                        return unsafe { real::bind(fd, a, len) };
                    }
                    set_errno(libc::EINVAL);
                }
                return r;
            }
            _ => {}
        }
        // SAFETY: as above.
        unsafe { real::bind(fd, a, len) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    guarded!(unsafe { real::listen(fd, backlog) }, {
        let mut kind = fdtable::kind(fd);
        if kind == HOSTED {
            if !connect::unhost(fd, false) {
                return -1;
            }
            kind = CANDIDATE;
        } else if kind == NONE && connect::recover_hosted(fd) {
            kind = CANDIDATE;
        }
        if let Some((i, _)) = listener_of(fd) {
            let r = listener::rec(i);
            // SAFETY: our hidden listeners; adjusts their backlog like a repeated listen().
            unsafe {
                real::listen(
                    r.host_fd.load(core::sync::atomic::Ordering::Relaxed),
                    backlog,
                );
                real::listen(
                    r.overlay_fd.load(core::sync::atomic::Ordering::Relaxed),
                    backlog,
                )
            }
        } else {
            // SAFETY: forwarded unchanged.
            let r = unsafe { real::listen(fd, backlog) };
            if r == 0 {
                let saved = errno();
                connect::after_listen(fd, backlog, kind);
                set_errno(saved);
            }
            r
        }
    })
}

unsafe fn accept_common(fd: c_int, a: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    if let Some((i, family)) = listener_of(fd) {
        return listener::accept(fd, i, family, a, len, flags);
    }
    // SAFETY: the caller's (addr, len) pair, forwarded.
    let c = unsafe { real::accept4(fd, a, len, flags) };
    if c >= 0 {
        fdtable::clear(c);
        return c;
    }
    let e = errno();
    if e == libc::ENOTSOCK || e == libc::EINVAL {
        if let Some((i, family)) = recover_listener(fd) {
            return listener::accept(fd, i, family, a, len, flags);
        }
    }
    set_errno(e);
    -1
}

#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, a: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarded under accept(2)'s contract.
    guarded!(unsafe { real::accept(fd, a, len) }, unsafe {
        accept_common(fd, a, len, 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    a: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: forwarded under accept4(2)'s contract.
    guarded!(unsafe { real::accept4(fd, a, len, flags) }, unsafe {
        accept_common(fd, a, len, flags)
    })
}

/// getsockname / getpeername: overlay addresses for Slim sockets, whatever the kernel would say.
unsafe fn name_common(fd: c_int, a: *mut sockaddr, len: *mut socklen_t, peer: bool) -> c_int {
    let real_call = |fd: c_int| {
        // SAFETY: the caller's (addr, len) pair, forwarded.
        unsafe {
            if peer {
                real::getpeername(fd, a, len)
            } else {
                real::getsockname(fd, a, len)
            }
        }
    };
    let slot = fdtable::get(fd);
    let mut kind = slot.map(|s| s.kind()).unwrap_or(NONE);
    if let (CONN, Some(s)) = (kind, slot) {
        // The descriptor may have been closed behind our back (close_range, a stdio fclose) and
        // its number reused: the socket's cookie tells.
        let known = s.cookie();
        let now = cookie_of(fd);
        if known == 0 {
            // Set up without learning its cookie (the fast path): this is its first question.
            if let Some(c) = now {
                s.set_cookie(c);
            }
        } else if now != Some(known) {
            s.clear();
            kind = NONE;
        }
    }
    if let (HOSTED, Some(s)) = (kind, slot) {
        if addr::peer_of(fd).is_some() {
            // Connected through another descriptor of it (a dup): find out as after exec.
            s.clear();
            kind = NONE;
        } else if !peer {
            // Not bound as far as the program knows: the wildcard address with port 0.
            let any = core::net::SocketAddr::new(core::net::Ipv4Addr::UNSPECIFIED.into(), 0);
            // SAFETY: the caller's (addr, len) pair.
            unsafe { addr::write_out(any, libc::AF_INET, a, len) };
            return 0;
        }
    }
    if kind == LISTENER {
        if let Some((i, _)) = listener_of(fd) {
            return real_call(
                listener::rec(i)
                    .overlay_fd
                    .load(core::sync::atomic::Ordering::Relaxed),
            );
        }
    }
    if let (CONN, Some(s)) = (kind, slot) {
        if peer && addr::peer_of(fd).is_none() {
            // Not connected (yet, or any more): the kernel's answer (ENOTCONN) is the right one.
            return real_call(fd);
        }
        let v = if peer { s.peer.load() } else { s.local.load() };
        if let Some(v) = v {
            // SAFETY: the caller's (addr, len) pair.
            unsafe { addr::write_out(v, s.family(), a, len) };
            return 0;
        }
    }
    let r = real_call(fd);
    if kind == PLAIN || kind == HIDDEN {
        return r;
    }
    if r < 0 {
        if errno() == libc::ENOTSOCK {
            if let Some((i, _)) = recover_listener(fd) {
                return real_call(
                    listener::rec(i)
                        .overlay_fd
                        .load(core::sync::atomic::Ordering::Relaxed),
                );
            }
            set_errno(libc::ENOTSOCK);
        }
        return r;
    }
    // SAFETY: the kernel filled the caller's buffer (up to its size).
    let seen = unsafe { addr::read(a, *len) };
    if let Some(seen) = seen {
        if kind == NONE && recover_conn(fd, seen) {
            // SAFETY: recursion once, now with a CONN slot.
            return unsafe { name_common(fd, a, len, peer) };
        }
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn getsockname(fd: c_int, a: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarded under getsockname(2)'s contract.
    guarded!(unsafe { real::getsockname(fd, a, len) }, unsafe {
        name_common(fd, a, len, false)
    })
}

#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, a: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarded under getpeername(2)'s contract.
    guarded!(unsafe { real::getpeername(fd, a, len) }, unsafe {
        name_common(fd, a, len, true)
    })
}

#[no_mangle]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    v: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: forwarded under getsockopt(2)'s contract.
    guarded!(unsafe { real::getsockopt(fd, level, name, v, len) }, {
        let target = match listener_of(fd) {
            Some((i, _)) => listener::rec(i)
                .overlay_fd
                .load(core::sync::atomic::Ordering::Relaxed),
            None => fd,
        };
        // SAFETY: as above.
        unsafe { real::getsockopt(target, level, name, v, len) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    v: *const c_void,
    len: socklen_t,
) -> c_int {
    // SAFETY: forwarded under setsockopt(2)'s contract.
    guarded!(unsafe { real::setsockopt(fd, level, name, v, len) }, {
        let slot = fdtable::get(fd);
        match slot.map(|s| s.kind()).unwrap_or(NONE) {
            LISTENER => {
                let i = slot.map(|s| s.listener()).unwrap_or(0);
                let r = listener::rec(i);
                let o = r.overlay_fd.load(core::sync::atomic::Ordering::Relaxed);
                let h = r.host_fd.load(core::sync::atomic::Ordering::Relaxed);
                // Accepted sockets inherit many options from their listener: set both.
                // SAFETY: as above, on our hidden listeners.
                unsafe {
                    real::setsockopt(h, level, name, v, len);
                    real::setsockopt(o, level, name, v, len)
                }
            }
            k @ (CANDIDATE | HOSTED) => {
                // A device is named in the container's namespace: only an overlay socket can
                // be bound to it.
                if k == HOSTED
                    && level == libc::SOL_SOCKET
                    && (name == libc::SO_BINDTODEVICE || name == libc::SO_BINDTOIFINDEX)
                    && !connect::unhost(fd, false)
                {
                    return -1;
                }
                // SAFETY: as above.
                let mut r = unsafe { real::setsockopt(fd, level, name, v, len) };
                // Secure mode: slim_kern refuses on a restricted socket what acts on the host
                // (SO_MARK, IP_TRANSPARENT, a TOS with precedence bits, ...) with EPERM. The
                // program asked for an ordinary socket: it gets one, and the option on it.
                if r < 0
                    && k == HOSTED
                    && errno() == libc::EPERM
                    && link::secure()
                    && connect::unhost(fd, false)
                {
                    // SAFETY: as above, now on the overlay socket.
                    r = unsafe { real::setsockopt(fd, level, name, v, len) };
                }
                if r == 0 && !v.is_null() && (len as usize) <= slim_uapi::proto::MAX_OPT_LEN {
                    // SAFETY: the kernel just read `len` bytes from v.
                    let bytes =
                        unsafe { core::slice::from_raw_parts(v as *const u8, len as usize) };
                    if let Some(s) = slot {
                        s.record_opt(level, name, bytes);
                    }
                }
                r
            }
            // SAFETY: as above.
            _ => unsafe { real::setsockopt(fd, level, name, v, len) },
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    // SAFETY: forwarded under shutdown(2)'s contract.
    guarded!(unsafe { real::shutdown(fd, how) }, {
        match listener_of(fd) {
            Some((i, _)) => {
                let r = listener::rec(i);
                // SAFETY: our hidden listeners; wakes blocked accepts as on a plain listener.
                unsafe {
                    real::shutdown(r.host_fd.load(core::sync::atomic::Ordering::Relaxed), how);
                    real::shutdown(
                        r.overlay_fd.load(core::sync::atomic::Ordering::Relaxed),
                        how,
                    )
                }
            }
            // SAFETY: as above.
            None => unsafe { real::shutdown(fd, how) },
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    // SAFETY: forwarded under close(2)'s contract.
    guarded!(unsafe { real::close(fd) }, {
        if fdtable::kind(fd) == HIDDEN {
            // The program closing descriptors it never opened (a close-all loop): keep ours.
            return 0;
        }
        release(fd);
        // SAFETY: as above.
        unsafe { real::close(fd) }
    })
}

/// close_range(2) (glibc 2.34+): forget what the range held, and keep the library's own hidden
/// descriptors (behind Slim listeners) out of it, as `close` does.
#[no_mangle]
pub unsafe extern "C" fn close_range(
    first: libc::c_uint,
    last: libc::c_uint,
    flags: c_int,
) -> c_int {
    // SAFETY: forwarded under close_range(2)'s contract.
    guarded!(unsafe { real::close_range(first, last, flags) }, {
        let top = (last as u64).min(fdtable::MAX_FD as u64 - 1);
        let mut start = first as u64;
        let mut fd = start;
        let cloexec_only = flags & libc::CLOSE_RANGE_CLOEXEC as c_int != 0;
        while fd <= top {
            let next = fdtable::next_in_table(fd as usize) as u64;
            if next != fd {
                fd = next;
                continue;
            }
            match fdtable::kind(fd as c_int) {
                HIDDEN => {
                    if fd > start {
                        // SAFETY: as above, on the part of the range before our descriptor.
                        let r = unsafe {
                            real::close_range(
                                start as libc::c_uint,
                                (fd - 1) as libc::c_uint,
                                flags,
                            )
                        };
                        if r < 0 {
                            return r;
                        }
                    }
                    start = fd + 1;
                }
                NONE => {}
                _ if !cloexec_only => release(fd as c_int),
                _ => {}
            }
            fd += 1;
        }
        if start > last as u64 {
            return 0;
        }
        // SAFETY: as above, on what remains of the range.
        unsafe { real::close_range(start as libc::c_uint, last, flags) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: forwarded under dup(2)'s contract.
    guarded!(unsafe { real::dup(fd) }, {
        // SAFETY: as above.
        let n = unsafe { real::dup(fd) };
        if n >= 0 {
            duplicated(fd, n);
        }
        n
    })
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: forwarded under dup2(2)'s contract.
    guarded!(unsafe { real::dup2(old, new) }, {
        if old == new {
            // SAFETY: as above.
            return unsafe { real::dup2(old, new) };
        }
        make_room(new);
        // SAFETY: as above.
        let n = unsafe { real::dup2(old, new) };
        if n >= 0 {
            release(new);
            duplicated(old, new);
        }
        n
    })
}

/// Before a dup2/dup3 onto `new`: if the library itself uses that number, get out of the way.
fn make_room(new: c_int) {
    if fdtable::kind(new) == HIDDEN && !link::evict(new) {
        listener::evict(new);
    }
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarded under dup3(2)'s contract.
    guarded!(unsafe { real::dup3(old, new, flags) }, {
        if old != new {
            make_room(new);
        }
        // SAFETY: as above.
        let n = unsafe { real::dup3(old, new, flags) };
        if n >= 0 {
            release(new);
            duplicated(old, new);
        }
        n
    })
}

unsafe fn fcntl_common(
    fd: c_int,
    cmd: c_int,
    arg: usize,
    f: unsafe fn(c_int, c_int, usize) -> c_int,
) -> c_int {
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            // SAFETY: forwarded.
            let n = unsafe { f(fd, cmd, arg) };
            if n >= 0 {
                duplicated(fd, n);
            }
            n
        }
        libc::F_SETFD => {
            // SAFETY: forwarded.
            let r = unsafe { f(fd, cmd, arg) };
            if r == 0 {
                if let Some((i, _)) = listener_of(fd) {
                    listener::mirror_cloexec(i, arg as c_int & libc::FD_CLOEXEC != 0);
                }
            }
            r
        }
        // SAFETY: forwarded.
        _ => unsafe { f(fd, cmd, arg) },
    }
}

/// fcntl is variadic in C; on x86-64 and aarch64 a variadic integer or pointer argument travels
/// exactly like a fixed one, so taking it as `usize` reads whatever the caller passed (or an
/// unused register when the command takes no argument, which the kernel then ignores).
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: forwarded under fcntl(2)'s contract.
    guarded!(unsafe { real::fcntl(fd, cmd, arg) }, unsafe {
        fcntl_common(fd, cmd, arg, real::fcntl)
    })
}

#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: forwarded under fcntl(2)'s contract.
    guarded!(unsafe { real::fcntl64(fd, cmd, arg) }, unsafe {
        fcntl_common(fd, cmd, arg, real::fcntl64)
    })
}

/// epoll_ctl on a Slim listener, whose descriptor is an epoll instance holding the overlay and
/// the host listener. A registration watches the two listeners themselves, with the program's
/// event data, rather than the instance: a wake-up through nested epoll instances costs the
/// server a second wake-up per connection, and EPOLLEXCLUSIVE may not watch an epoll instance
/// at all (EINVAL), while on the listeners it makes the workers of a pre-fork server (nginx)
/// wake one at a time, as on a plain socket. If that cannot be done (the same listeners are
/// already in this epoll set under another descriptor number, say), the instance is watched,
/// without EPOLLEXCLUSIVE.
fn listener_epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut libc::epoll_event,
    i: usize,
) -> c_int {
    use core::sync::atomic::Ordering::Relaxed;
    let exclusive = libc::EPOLLEXCLUSIVE as u32;
    let r = listener::rec(i);
    let inner = [r.host_fd.load(Relaxed), r.overlay_fd.load(Relaxed)];
    // SAFETY: ev is null or valid, as the program's epoll_ctl call requires.
    let wanted = (!ev.is_null()).then(|| unsafe { *ev });
    match (op, wanted) {
        (libc::EPOLL_CTL_ADD, Some(e)) if inner.iter().all(|f| *f >= 0) => {
            let mut added = 0;
            for f in inner {
                let mut e = e;
                // SAFETY: e is a valid local copy; f is our hidden listener.
                if unsafe { real::epoll_ctl(epfd, op, f, &mut e) } == 0 {
                    added += 1;
                } else {
                    break;
                }
            }
            if added == inner.len() {
                return 0;
            }
            for f in &inner[..added] {
                // SAFETY: undoing our own registration.
                unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, *f, core::ptr::null_mut()) };
            }
            // Watch the instance instead, without the flag.
            let mut e = e;
            e.events &= !exclusive;
            // SAFETY: e is a valid local copy.
            unsafe { real::epoll_ctl(epfd, op, fd, &mut e) }
        }
        _ => {
            let mut e = wanted.unwrap_or(libc::epoll_event { events: 0, u64: 0 });
            e.events &= !exclusive;
            let arg = if ev.is_null() {
                core::ptr::null_mut()
            } else {
                &mut e as *mut _
            };
            // SAFETY: arg is null or a valid local copy.
            let res = unsafe { real::epoll_ctl(epfd, op, fd, arg) };
            if res == 0 || errno() != libc::ENOENT || op == libc::EPOLL_CTL_ADD {
                return res;
            }
            // Registered exclusively: the two listeners stand for the descriptor.
            let mut ok = 0;
            let mut err = libc::ENOENT;
            for f in inner.iter().filter(|f| **f >= 0) {
                // SAFETY: as above, on our hidden listener.
                if unsafe { real::epoll_ctl(epfd, op, *f, arg) } == 0 {
                    ok += 1;
                } else {
                    err = errno();
                }
            }
            if ok > 0 {
                0
            } else {
                set_errno(err);
                -1
            }
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut libc::epoll_event,
) -> c_int {
    // SAFETY: forwarded under epoll_ctl(2)'s contract.
    guarded!(unsafe { real::epoll_ctl(epfd, op, fd, ev) }, {
        let slot = fdtable::get(fd);
        let kind = slot.map(|s| s.kind()).unwrap_or(NONE);
        let exclusive = libc::EPOLLEXCLUSIVE as u32;
        if kind == LISTENER {
            let i = slot.map(|s| s.listener()).unwrap_or(0);
            return listener_epoll_ctl(epfd, op, fd, ev, i);
        }
        // SAFETY: as above.
        let r = unsafe { real::epoll_ctl(epfd, op, fd, ev) };
        if r == 0 && (kind == CANDIDATE || kind == HOSTED) {
            if let Some(s) = slot {
                // SAFETY: ev is valid for ADD/MOD; DEL may pass null.
                let (events, data) = if ev.is_null() {
                    (0, 0)
                } else {
                    unsafe { ((*ev).events, (*ev).u64) }
                };
                s.track_epoll(op, epfd, events, data);
            }
        }
        if r < 0
            && errno() == libc::EINVAL
            && op == libc::EPOLL_CTL_ADD
            && !ev.is_null()
            && kind == NONE
        {
            // SAFETY: ev valid as above.
            let e0 = unsafe { *ev };
            // A listener inherited across exec, met for the first time: registered as any.
            if e0.events & exclusive != 0 {
                if let Some((i, _)) = recover_listener(fd) {
                    return listener_epoll_ctl(epfd, op, fd, ev, i);
                }
            }
            set_errno(libc::EINVAL);
        }
        r
    })
}
