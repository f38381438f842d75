//! The cookies of every TCP socket alive in this network namespace, from the kernel's sock_diag
//! netlink interface. The router keeps state per host socket (its overlay identity); sockets the
//! kernel no longer has are forgotten, however their last holder let go (close, exit, crash).

use std::collections::HashSet;
use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    ifindex: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// A netlink request: header, then body.
#[repr(C)]
struct Request<T> {
    nlh: libc::nlmsghdr,
    body: T,
}

/// The original inet_diag request (TCPDIAG_GETSOCK), still served by every kernel with
/// sock_diag. Its dumps cover both families in one walk of the kernel's socket tables, where
/// SOCK_DIAG_BY_FAMILY needs one walk per family.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReq {
    family: u8,
    src_len: u8,
    dst_len: u8,
    ext: u8,
    id: InetDiagSockId,
    states: u32,
    dbs: u32,
}

const TCPDIAG_GETSOCK: u16 = 18;

/// Whether the kernel serves TCPDIAG_GETSOCK dumps: 0 not tried yet, 1 yes, 2 no.
static COMPAT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Every TCP socket of this network namespace in one of `states`, IPv4 and IPv6 alike.
fn dump_tcp(states: u32, out: &mut dyn FnMut(&InetDiagMsg)) -> io::Result<()> {
    use std::sync::atomic::Ordering;
    if COMPAT.load(Ordering::Relaxed) != 2 {
        let req = InetDiagReq {
            states,
            ..Default::default()
        };
        let mut answers = 0usize;
        match dump(TCPDIAG_GETSOCK, req, &mut |m| {
            answers += 1;
            out(m)
        }) {
            Ok(()) => {
                COMPAT.store(1, Ordering::Relaxed);
                return Ok(());
            }
            // Refused before any answer (a kernel without it): ask family by family from now on.
            Err(e) if COMPAT.load(Ordering::Relaxed) == 0 && answers == 0 => {
                tracing::debug!(error = %e, "TCPDIAG_GETSOCK dump refused; dumping per family");
                COMPAT.store(2, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    for fam in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        dump_family(fam, states, out)?;
    }
    Ok(())
}

fn dump_family(family: u8, states: u32, out: &mut dyn FnMut(&InetDiagMsg)) -> io::Result<()> {
    let req = InetDiagReqV2 {
        family,
        protocol: libc::IPPROTO_TCP as u8,
        states,
        ..Default::default()
    };
    dump(SOCK_DIAG_BY_FAMILY, req, out)
}

/// Sends one sock_diag dump request of type `kind` and hands every answer to `out`.
fn dump<T: Copy>(kind: u16, body: T, out: &mut dyn FnMut(&InetDiagMsg)) -> io::Result<()> {
    let req = Request {
        nlh: libc::nlmsghdr {
            nlmsg_len: size_of::<Request<T>>() as u32,
            nlmsg_type: kind,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        body,
    };
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: req is a #[repr(C)] struct of plain data, valid for reads of its size.
    let r = unsafe {
        libc::send(
            fd.as_raw_fd(),
            (&req as *const Request<T>).cast(),
            size_of::<Request<T>>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut off = 0usize;
        let n = n as usize;
        while off + size_of::<libc::nlmsghdr>() <= n {
            // SAFETY: bounds checked above; read_unaligned copes with any alignment.
            let h: libc::nlmsghdr = unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            let len = h.nlmsg_len as usize;
            if len < size_of::<libc::nlmsghdr>() || off + len > n {
                return Err(io::Error::other("malformed sock_diag reply"));
            }
            match h.nlmsg_type as i32 {
                libc::NLMSG_DONE => return Ok(()),
                libc::NLMSG_ERROR => return Err(io::Error::other("sock_diag dump refused")),
                _ => {
                    let body = off + size_of::<libc::nlmsghdr>();
                    if body + size_of::<InetDiagMsg>() <= off + len {
                        // SAFETY: bounds checked; plain data.
                        let m: InetDiagMsg =
                            unsafe { std::ptr::read_unaligned(buf[body..].as_ptr().cast()) };
                        out(&m);
                    }
                }
            }
            off += (len + 3) & !3;
        }
    }
}

const TCP_TIME_WAIT: u32 = 6;
const TCP_CLOSE: u32 = 7;
/// Bound, neither listening nor connected: listed by Linux 6.8 and later.
const TCP_BOUND_INACTIVE: u32 = 13;

fn cookie_of(m: &InetDiagMsg) -> u64 {
    m.id.cookie[0] as u64 | (m.id.cookie[1] as u64) << 32
}

/// The TCP sockets of this network namespace bound to a port in `lo..=hi` that a program may
/// still hold, as (port, cookie): connecting, connected, listening, or only bound (the state a
/// pooled socket waits in). TIME_WAIT leftovers are not sockets anybody holds and are left out.
pub fn live_sockets_in(lo: u16, hi: u16) -> io::Result<Vec<(u16, u64)>> {
    let states = !(1 << TCP_TIME_WAIT) & !(1 << TCP_CLOSE);
    let mut out = Vec::new();
    dump_tcp(states, &mut |m| {
        let port = u16::from_be(m.id.sport);
        if (lo..=hi).contains(&port) {
            out.push((port, cookie_of(m)));
        }
    })?;
    Ok(out)
}

/// Whether this kernel lists sockets that are only bound (Linux 6.8+), which port leases need
/// to tell when a leased socket is gone.
pub fn lists_bound_sockets() -> bool {
    let Ok(fd) = crate::hostsock::reusable_socket(libc::AF_INET, Ipv4Addr::LOCALHOST.into(), 0)
    else {
        return false;
    };
    let Ok(cookie) = crate::hostsock::cookie(fd.as_raw_fd()) else {
        return false;
    };
    let mut found = false;
    let _ = dump_tcp(1 << TCP_BOUND_INACTIVE, &mut |m| {
        found |= cookie_of(m) == cookie;
    });
    found
}

/// Cookies of the TCP sockets of this network namespace that a program may still hold: every
/// state but TIME_WAIT and CLOSE, which the kernel filters out (under a high connection rate
/// TIME_WAIT sockets outnumber the live ones by far).
pub fn live_tcp_tuples() -> io::Result<HashSet<(SocketAddr, SocketAddr)>> {
    let states = !(1 << TCP_TIME_WAIT) & !(1 << TCP_CLOSE);
    let mut out = HashSet::new();
    dump_tcp(states, &mut |m| {
        out.insert((
            endpoint(m.family, &m.id.src, m.id.sport),
            endpoint(m.family, &m.id.dst, m.id.dport),
        ));
    })?;
    Ok(out)
}

/// The host endpoints (its own, its peer's) of the connected TCP socket with this cookie. Secure
/// mode needs this for sockets restricted by the kernel module, whose getsockname/getpeername
/// answer overlay addresses even to the router.
pub fn tuple_of_cookie(cookie: u64) -> io::Result<Option<(SocketAddr, SocketAddr)>> {
    let states = !(1 << TCP_TIME_WAIT) & !(1 << TCP_CLOSE) & !(1 << TCP_LISTEN);
    let mut found = None;
    dump_tcp(states, &mut |m| {
        if cookie_of(m) == cookie {
            found = Some((
                endpoint(m.family, &m.id.src, m.id.sport),
                endpoint(m.family, &m.id.dst, m.id.dport),
            ));
        }
    })?;
    Ok(found)
}

/// An endpoint from sock_diag's words (network byte order), IPv4-mapped spelled as IPv4.
fn endpoint(family: u8, words: &[u32; 4], port_be: u16) -> SocketAddr {
    let port = u16::from_be(port_be);
    let mut b = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    if family as i32 == libc::AF_INET {
        SocketAddr::new(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into(), port)
    } else {
        crate::hostsock::normalize(SocketAddr::new(Ipv6Addr::from(b).into(), port))
    }
}

const TCP_LISTEN: u32 = 10;

/// The host address of the listening TCP socket with this cookie (secure mode: a restricted
/// listener answers its overlay address to getsockname, even to the router).
pub fn listener_addr_of_cookie(cookie: u64) -> io::Result<Option<SocketAddr>> {
    let mut found = None;
    dump_tcp(1 << TCP_LISTEN, &mut |m| {
        if cookie_of(m) == cookie {
            found = Some(endpoint(m.family, &m.id.src, m.id.sport));
        }
    })?;
    Ok(found)
}

/// Cookies of the listening TCP sockets of this network namespace. The kernel filters by state,
/// so this stays cheap however many connections (TIME_WAIT included) the host has.
pub fn listener_cookies() -> io::Result<HashSet<u64>> {
    let mut out = HashSet::new();
    dump_tcp(1 << TCP_LISTEN, &mut |m| {
        out.insert(cookie_of(m));
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_live_socket_and_forgets_a_closed_one() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let cookie = crate::hostsock::cookie(std::os::fd::AsRawFd::as_raw_fd(&c)).unwrap();
        let tuple = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        assert!(live_tcp_tuples().unwrap().contains(&tuple));
        assert_eq!(tuple_of_cookie(cookie).unwrap(), Some(tuple));
        let lc = crate::hostsock::cookie(std::os::fd::AsRawFd::as_raw_fd(&l)).unwrap();
        assert!(listener_cookies().unwrap().contains(&lc));
        assert_eq!(
            listener_addr_of_cookie(lc).unwrap(),
            Some(l.local_addr().unwrap())
        );
        assert!(!listener_cookies().unwrap().contains(&cookie));
        drop(l);
        assert!(!listener_cookies().unwrap().contains(&lc));
        drop(c);
    }

    /// The both-families dump (TCPDIAG_GETSOCK) sees what the per-family dumps see.
    #[test]
    fn one_dump_covers_both_families() {
        let l4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let Ok(l6) = std::net::TcpListener::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        };
        let c4 = crate::hostsock::cookie(std::os::fd::AsRawFd::as_raw_fd(&l4)).unwrap();
        let c6 = crate::hostsock::cookie(std::os::fd::AsRawFd::as_raw_fd(&l6)).unwrap();
        let both = listener_cookies().unwrap();
        assert!(both.contains(&c4) && both.contains(&c6), "{both:?}");
        assert_eq!(
            COMPAT.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "this kernel refused TCPDIAG_GETSOCK"
        );
        let mut per_family = HashSet::new();
        for fam in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            dump_family(fam, 1 << TCP_LISTEN, &mut |m| {
                per_family.insert(cookie_of(m));
            })
            .unwrap();
        }
        assert!(per_family.contains(&c4) && per_family.contains(&c6));
    }

    /// How long a lease sweep takes in this namespace (run it inside a lab host after a burst of
    /// connections: `ip netns exec slim-h1 <test binary> --ignored --nocapture sweep_cost`).
    #[test]
    #[ignore]
    fn sweep_cost() {
        let states = !(1 << TCP_TIME_WAIT) & !(1 << TCP_CLOSE);
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let n = live_sockets_in(1, 65535).unwrap().len();
            let one = t.elapsed();
            let t = std::time::Instant::now();
            let mut m = 0;
            for fam in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                dump_family(fam, states, &mut |_| m += 1).unwrap();
            }
            let two = t.elapsed();
            eprintln!("one dump: {one:?} ({n} sockets); per family: {two:?} ({m} sockets)");
        }
    }

    #[test]
    fn lists_sockets_that_are_only_bound() {
        if !lists_bound_sockets() {
            eprintln!("this kernel does not list bound sockets (Linux < 6.8); skipped");
            return;
        }
        let fd = crate::hostsock::reusable_socket(libc::AF_INET, "127.0.0.1".parse().unwrap(), 0)
            .unwrap();
        let cookie = crate::hostsock::cookie(std::os::fd::AsRawFd::as_raw_fd(&fd)).unwrap();
        let port = crate::hostsock::local_addr(std::os::fd::AsRawFd::as_raw_fd(&fd))
            .unwrap()
            .port();
        assert_eq!(live_sockets_in(port, port).unwrap(), vec![(port, cookie)]);
        drop(fd);
        assert!(live_sockets_in(port, port).unwrap().is_empty());
    }
}
