//! Socket addresses between C (`sockaddr_*`) and Rust, in the family the application's socket has.

use core::mem::size_of;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use libc::{sockaddr, socklen_t};

/// Reads the address a program passed in. None for anything but a well-formed IPv4/IPv6 address.
///
/// # Safety
/// `addr` must be null or point to `len` readable bytes.
pub unsafe fn read(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() || (len as usize) < size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: at least the family field is readable (checked above); read unaligned since
    // programs may pass any byte buffer.
    let family = unsafe { core::ptr::read_unaligned(addr as *const libc::sa_family_t) } as i32;
    match family {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: len covers a whole sockaddr_in.
            let sin = unsafe { core::ptr::read_unaligned(addr as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: len covers a whole sockaddr_in6.
            let s6 = unsafe { core::ptr::read_unaligned(addr as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(s6.sin6_addr.s6_addr),
                u16::from_be(s6.sin6_port),
                s6.sin6_flowinfo,
                s6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// IPv4-mapped IPv6 spelled as IPv4: what the overlay prefixes and the router compare against.
pub fn normalize(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => a,
        },
        _ => a,
    }
}

/// A `sockaddr_storage` for `a` as a socket of `family` would report it.
pub fn to_storage(a: SocketAddr, family: i32) -> (libc::sockaddr_storage, socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let a = match (family, a) {
        (libc::AF_INET6, SocketAddr::V4(v4)) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        (libc::AF_INET, SocketAddr::V6(_)) => normalize(a),
        _ => a,
    };
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            unsafe { core::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            (ss, size_of::<libc::sockaddr_in>() as socklen_t)
        }
        SocketAddr::V6(v6) => {
            let s6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            unsafe { core::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, s6) };
            (ss, size_of::<libc::sockaddr_in6>() as socklen_t)
        }
    }
}

/// Writes `a` into a program's (addr, len) pair with the kernel's truncation rule: copy what fits,
/// report the full length.
///
/// # Safety
/// `out` must be null or point to `*len` writable bytes; `len` must be null or valid.
pub unsafe fn write_out(a: SocketAddr, family: i32, out: *mut sockaddr, len: *mut socklen_t) {
    if out.is_null() || len.is_null() {
        return;
    }
    let (ss, n) = to_storage(a, family);
    // SAFETY: len is valid (checked non-null above, the caller vouches for it).
    let room = unsafe { *len } as usize;
    let copy = room.min(n as usize);
    // SAFETY: out has `room` writable bytes; we copy at most that many from a local.
    unsafe {
        core::ptr::copy_nonoverlapping(&ss as *const _ as *const u8, out as *mut u8, copy);
        *len = n;
    }
}

/// The kernel's view of a socket's own address.
pub fn local_of(fd: i32) -> Option<SocketAddr> {
    // SAFETY: zeroed storage is valid; getsockname writes within `len`.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: ss/len are valid for writes.
    let r = unsafe { crate::real::getsockname(fd, &mut ss as *mut _ as *mut sockaddr, &mut len) };
    if r < 0 {
        return None;
    }
    // SAFETY: the kernel filled `len` bytes of ss.
    unsafe { read(&ss as *const _ as *const sockaddr, len) }
}

pub fn peer_of(fd: i32) -> Option<SocketAddr> {
    // SAFETY: as in local_of.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: ss/len are valid for writes.
    let r = unsafe { crate::real::getpeername(fd, &mut ss as *mut _ as *mut sockaddr, &mut len) };
    if r < 0 {
        return None;
    }
    // SAFETY: the kernel filled `len` bytes of ss.
    unsafe { read(&ss as *const _ as *const sockaddr, len) }
}

pub fn is_local_only(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified() || ip.is_multicast()
}
