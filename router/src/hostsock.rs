//! Host-network sockets, made by the router on behalf of containers. The one place in the router
//! with raw socket system calls.

use slim_uapi::proto::SockOpts;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Options that must never be replayed onto a host socket: they would change what the socket is
/// (family behaviour) or where it goes, rather than how it behaves.
/// Options of the application's socket that the router (root, CAP_NET_ADMIN) sets again on the
/// host socket. A list of what is known harmless, not a list of what is known harmful: the
/// router's privileges must not lend a container anything (SO_SNDBUFFORCE, SO_MARK,
/// SO_BINDTODEVICE, IP_TRANSPARENT, TCP_REPAIR, a restricted congestion control, ...).
const SO_RCVTIMEO_NEW: i32 = 66;
const SO_SNDTIMEO_NEW: i32 = 67;

fn replayable(level: i32, name: i32, value: &[u8]) -> bool {
    let int = || {
        value
            .get(..4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    match level {
        libc::SOL_SOCKET => match name {
            libc::SO_SNDBUF
            | libc::SO_RCVBUF
            | libc::SO_KEEPALIVE
            | libc::SO_LINGER
            | libc::SO_OOBINLINE
            | libc::SO_RCVLOWAT
            | libc::SO_REUSEADDR
            | libc::SO_REUSEPORT
            | libc::SO_RCVTIMEO
            | libc::SO_SNDTIMEO
            | SO_RCVTIMEO_NEW
            | SO_SNDTIMEO_NEW
            | libc::SO_MAX_PACING_RATE
            | libc::SO_ZEROCOPY => true,
            // 0..=6 is what an unprivileged socket may set itself.
            libc::SO_PRIORITY => matches!(int(), Some(0..=6)),
            _ => false,
        },
        libc::IPPROTO_TCP => matches!(
            name,
            libc::TCP_NODELAY
                | libc::TCP_MAXSEG
                | libc::TCP_CORK
                | libc::TCP_KEEPIDLE
                | libc::TCP_KEEPINTVL
                | libc::TCP_KEEPCNT
                | libc::TCP_SYNCNT
                | libc::TCP_LINGER2
                | libc::TCP_DEFER_ACCEPT
                | libc::TCP_WINDOW_CLAMP
                | libc::TCP_QUICKACK
                | libc::TCP_USER_TIMEOUT
                | libc::TCP_NOTSENT_LOWAT
                | libc::TCP_FASTOPEN
                | libc::TCP_INQ
                | libc::TCP_THIN_LINEAR_TIMEOUTS
        ),
        // Precedence bits (the top three) need CAP_NET_ADMIN: only DSCP/ECN below them.
        libc::IPPROTO_IP => name == libc::IP_TOS && matches!(int(), Some(v) if v & 0xe0 == 0),
        libc::IPPROTO_IPV6 => {
            name == libc::IPV6_TCLASS
                && matches!(int(), Some(v) if (0..256).contains(&v) && v & 0xe0 == 0)
        }
        _ => false,
    }
}

/// The address family (`SO_DOMAIN`) of a socket.
pub fn socket_family(fd: RawFd) -> io::Result<i32> {
    let mut v: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: v/len valid for writes; SO_DOMAIN writes an int.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A `sockaddr_storage` holding `addr` in the form a socket of `family` expects (IPv4 addresses
/// become IPv4-mapped IPv6 for `AF_INET6` sockets).
pub fn to_sockaddr(
    addr: &SocketAddr,
    family: i32,
) -> io::Result<(libc::sockaddr_storage, libc::socklen_t)> {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let addr = match (family, addr) {
        (libc::AF_INET6, SocketAddr::V4(v4)) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        (libc::AF_INET, SocketAddr::V6(v6)) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
        },
        _ => *addr,
    };
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe {
                (&mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr_in).write(sin)
            };
            Ok((ss, size_of::<libc::sockaddr_in>() as libc::socklen_t))
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe {
                (&mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6).write(sin6)
            };
            Ok((ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t))
        }
    }
}

/// Reads a socket address back; IPv4-mapped IPv6 addresses come back as IPv4 so that tables have
/// one spelling per endpoint.
pub fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(normalize(SocketAddr::V6(SocketAddrV6::new(
                ip,
                port,
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            ))))
        }
        _ => None,
    }
}

/// IPv4-mapped IPv6 endpoints spelled as IPv4.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn new_socket(family: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = cvt(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn setsockopt_raw(fd: RawFd, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: value points to value.len() readable bytes for the duration of the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn set_int(fd: RawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    setsockopt_raw(fd, level, name, &v.to_ne_bytes())
}

fn replay(fd: RawFd, opts: &SockOpts) {
    for o in opts.iter() {
        if !replayable(o.level, o.name, o.value()) {
            continue;
        }
        if let Err(e) = setsockopt_raw(fd, o.level, o.name, o.value()) {
            // The application's own setsockopt succeeded on its socket; one that the host socket
            // refuses is reported and skipped rather than failing the connection.
            tracing::debug!(level = o.level, name = o.name, error = %e, "option not replayed");
        }
    }
}

pub fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: zeroed sockaddr_storage is valid; getsockname writes at most `len` bytes into it.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss and len are valid for writes for the duration of the call.
    cvt(unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    from_sockaddr(&ss).ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

pub fn cookie(fd: RawFd) -> io::Result<u64> {
    let mut v: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes; SO_COOKIE writes a u64.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

fn bind_host(fd: RawFd, family: i32, host: IpAddr) -> io::Result<()> {
    if family == libc::AF_INET6 {
        // A v6 socket reaches IPv4 hosts through IPv4-mapped addresses.
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    }
    bind_to(fd, SocketAddr::new(host, 0), family)
}

/// bind(2) of `fd` to `addr`, spelled for a socket of `family`.
fn bind_to(fd: RawFd, addr: SocketAddr, family: i32) -> io::Result<()> {
    let (ss, len) = to_sockaddr(&addr, family)?;
    // SAFETY: ss holds a valid address of length len.
    cvt(unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) })?;
    Ok(())
}

/// A host socket bound to `host` and a port of its own, not connected: what a library's socket
/// pool holds. The port is known before the connect, so the connection can be announced before
/// its SYN leaves. SO_REUSEADDR lets the port be shared with other connections (to other
/// destinations) and with TIME_WAIT leftovers, as ports chosen by connect() are; a connect
/// that would duplicate a live 4-tuple fails with EADDRNOTAVAIL and the library takes another.
pub fn bound_socket(
    family: i32,
    host: IpAddr,
    ports: (u16, u16),
    seed: &mut u64,
) -> io::Result<(OwnedFd, u16)> {
    let fd = new_reusable(family)?;
    let raw = fd.as_raw_fd();
    let span = (ports.1.saturating_sub(ports.0) as u64).max(1);
    let mut last = io::Error::from_raw_os_error(libc::EADDRINUSE);
    for _ in 0..16 {
        // xorshift: cheap, and good enough to spread ports.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let port = ports.0 + (*seed % span) as u16;
        match bind_to(raw, SocketAddr::new(host, port), family) {
            Ok(()) => return Ok((fd, port)),
            Err(e) => last = e,
        }
        if last.raw_os_error() != Some(libc::EADDRINUSE) {
            break;
        }
    }
    Err(last)
}

/// A host socket with SO_REUSEADDR bound to `host` and exactly `port`, not connected.
pub fn reusable_socket(family: i32, host: IpAddr, port: u16) -> io::Result<OwnedFd> {
    let fd = new_reusable(family)?;
    bind_to(fd.as_raw_fd(), SocketAddr::new(host, port), family)?;
    Ok(fd)
}

/// A new host socket with SO_REUSEADDR (and, for IPv6, reaching IPv4 hosts too), not bound.
fn new_reusable(family: i32) -> io::Result<OwnedFd> {
    let fd = new_socket(family)?;
    let raw = fd.as_raw_fd();
    set_int(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if family == libc::AF_INET6 {
        set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    }
    Ok(fd)
}

/// A new host socket with SO_REUSEPORT (and, for IPv6, reaching IPv4 hosts too), not bound: a
/// leased socket before its bind (`leasewatch`).
pub fn new_reuseport(family: i32) -> io::Result<OwnedFd> {
    let fd = new_socket(family)?;
    let raw = fd.as_raw_fd();
    set_int(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if family == libc::AF_INET6 {
        set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    }
    Ok(fd)
}

/// bind(2) of `fd` to `host` and exactly `port` (0: the kernel's choice).
pub fn bind_exact(fd: RawFd, host: IpAddr, port: u16, family: i32) -> io::Result<()> {
    bind_to(fd, SocketAddr::new(host, port), family)
}

pub fn set_reuseaddr(fd: RawFd) -> io::Result<()> {
    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
}

/// The uid a socket belongs to (the fsuid of the thread that created it).
pub fn owner_uid(fd: RawFd) -> io::Result<u32> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is valid for writes of a stat; fstat fills it on success, checked by cvt.
    cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so st is initialised.
    Ok(unsafe { st.assume_init() }.st_uid)
}

/// The ephemeral port range of this network namespace.
pub fn ephemeral_ports() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .filter_map(|x| x.parse::<u16>().ok());
    match (it.next(), it.next()) {
        (Some(a), Some(b)) if a < b => (a, b),
        _ => (32768, 60999),
    }
}

/// A host socket whose connect to `dst` has been started (non-blocking), bound to `host`.
pub struct Started {
    pub fd: OwnedFd,
    pub local: SocketAddr,
    pub cookie: u64,
}

pub fn start_connect(
    family: i32,
    host: IpAddr,
    dst: SocketAddr,
    opts: &SockOpts,
) -> io::Result<Started> {
    let fd = new_socket(family)?;
    let raw = fd.as_raw_fd();
    replay(raw, opts);
    // Let connect choose the port together with the 4-tuple: binding port 0 first would reserve a
    // port for every possible peer and run out under high connection rates.
    set_int(raw, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
    bind_host(raw, family, host)?;
    let (ss, len) = to_sockaddr(&dst, family)?;
    // SAFETY: ss holds a valid address of length len.
    let r = unsafe { libc::connect(raw, (&ss as *const libc::sockaddr_storage).cast(), len) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    let local = local_addr(raw)?;
    let cookie = cookie(raw)?;
    Ok(Started { fd, local, cookie })
}

pub struct Listening {
    pub fd: OwnedFd,
    pub local: SocketAddr,
    pub cookie: u64,
}

pub fn start_listen(
    family: i32,
    host: IpAddr,
    backlog: i32,
    opts: &SockOpts,
) -> io::Result<Listening> {
    start_listen_on(new_socket(family)?, family, host, backlog, opts, false)
}

/// `start_listen` on a socket the caller created (`porthold`: under another uid);
/// `reuseport`: SO_REUSEPORT set again after the program's options are replayed.
pub fn start_listen_on(
    fd: OwnedFd,
    family: i32,
    host: IpAddr,
    backlog: i32,
    opts: &SockOpts,
    reuseport: bool,
) -> io::Result<Listening> {
    let raw = fd.as_raw_fd();
    replay(raw, opts);
    if reuseport {
        set_int(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    bind_host(raw, family, host)?;
    // SAFETY: listen(2) on a socket we own.
    cvt(unsafe { libc::listen(raw, backlog) })?;
    let local = local_addr(raw)?;
    let cookie = cookie(raw)?;
    Ok(Listening { fd, local, cookie })
}

/// What a socket handed to us is: must be a listening TCP socket. Returns its address and cookie.
pub fn inspect_listener(fd: &OwnedFd) -> io::Result<(SocketAddr, u64)> {
    let raw = fd.as_raw_fd();
    let int = |level, name| -> io::Result<i32> {
        let mut v: i32 = 0;
        let mut len = size_of::<i32>() as libc::socklen_t;
        // SAFETY: v/len valid for writes.
        cvt(unsafe { libc::getsockopt(raw, level, name, (&mut v as *mut i32).cast(), &mut len) })?;
        Ok(v)
    };
    if int(libc::SOL_SOCKET, libc::SO_PROTOCOL)? != libc::IPPROTO_TCP
        || int(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 1
    {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok((local_addr(raw)?, cookie(raw)?))
}

/// Checks that `ip` is an address of this network namespace, by binding a throw-away socket to it.
pub fn check_local_address(ip: IpAddr) -> io::Result<()> {
    let family = if ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = new_socket(family)?;
    bind_to(fd.as_raw_fd(), SocketAddr::new(ip, 0), family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip_and_mapping() {
        let a: SocketAddr = "10.32.0.2:80".parse().unwrap();
        let (ss, _) = to_sockaddr(&a, libc::AF_INET6).unwrap();
        assert_eq!(ss.ss_family as i32, libc::AF_INET6);
        assert_eq!(from_sockaddr(&ss), Some(a));
        let b: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert!(to_sockaddr(&b, libc::AF_INET).is_err());
    }

    #[test]
    fn listen_and_connect_on_loopback() {
        let l = start_listen(
            libc::AF_INET6,
            "127.0.0.1".parse().unwrap(),
            8,
            &SockOpts::default(),
        )
        .unwrap();
        assert_eq!(l.local.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
        let c = start_connect(
            libc::AF_INET,
            "127.0.0.1".parse().unwrap(),
            l.local,
            &SockOpts::default(),
        )
        .unwrap();
        assert_ne!(c.cookie, l.cookie);
        assert_eq!(c.local.ip(), l.local.ip());
    }
}
