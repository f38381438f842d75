//! Holds on the host ports of Slim listeners (issue 15, point 5): once a listener closes, its
//! host port must not reach another program while a route to it may still be used anywhere.
//!
//! Routes to a host listener live in every peer router's tables, in the shared route tables of
//! their libraries and in their modules; a listener's close is seen by its router only at the
//! next sweep, and its withdrawal reaches the peers a round trip later. Meanwhile a client that
//! still has the route connects to the host port directly. If another program had bound that
//! port (the kernel hands ephemeral ports out again at once), the client would be connected to
//! the wrong program.
//!
//! So the router creates each host listener under the hold uid (`LeaseUids::probe`) with
//! SO_REUSEPORT, and next to it a socket of its own bound to the same address and port that
//! never listens: the hold. While the hold lives, the kernel refuses every other bind of the
//! port: a bind next to a bound socket without SO_REUSEADDR needs SO_REUSEPORT on both and the
//! same uid, whatever options the other program sets (and the kernel's own choice of a port, for
//! bind to port 0 and connect, never shares one). A connection to the port after the listener
//! closed is refused: nobody listens there. The router drops the hold only once every peer has
//! acknowledged the withdrawal of the listener's routes (or did not in time: a peer that is gone
//! forgets the routes it learned from us), and a grace period later, for a program that read the
//! route just before its withdrawal.
//!
//! Needs CAP_SETUID, like leases by bind; without it host listeners are created as before, with
//! no hold (logged once at start).

use crate::fsuid::FsUid;
use crate::hostsock::{self, Listening};
use slim_uapi::proto::SockOpts;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// How long a hold outlives the peers' acknowledgement: a library that read a route just before
/// the withdrawal has connected by then.
pub const GRACE: Duration = Duration::from_secs(1);

/// A host listener created under `uid`, and its hold.
pub fn start_listen(
    uid: u32,
    family: i32,
    host: IpAddr,
    backlog: i32,
    opts: &SockOpts,
) -> io::Result<(Listening, OwnedFd)> {
    let fd = {
        let _as = FsUid::switch(uid);
        hostsock::new_reuseport(family)?
    };
    let l = hostsock::start_listen_on(fd, family, host, backlog, opts, true)?;
    let hold = hold(uid, family, l.local)?;
    Ok((l, hold))
}

/// A hold on `local`, the address of a host listener created under `uid` with SO_REUSEPORT
/// (also for a listener a container hands back after a router restart). Fails with EADDRINUSE
/// for any other listener.
pub fn hold(uid: u32, family: i32, local: SocketAddr) -> io::Result<OwnedFd> {
    let fd = {
        let _as = FsUid::switch(uid);
        hostsock::new_reuseport(family)?
    };
    if hostsock::owner_uid(fd.as_raw_fd())? != uid {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    hostsock::bind_exact(fd.as_raw_fd(), local.ip(), local.port(), family)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leasewatch::{available, LeaseUids};

    /// While the hold lives, nobody else binds the port, with any options; the closed
    /// listener's port refuses connections; once the hold is gone the port is free.
    #[test]
    fn a_held_port_refuses_other_binds_until_the_hold_goes() {
        let uids = LeaseUids::default();
        if !available(&uids) {
            eprintln!("cannot switch fsuid here (no CAP_SETUID); skipped");
            return;
        }
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let (l, h) = start_listen(uids.probe, libc::AF_INET, lo, 16, &SockOpts::default()).unwrap();
        let addr = l.local;
        // The listener works.
        let c = std::net::TcpStream::connect(addr).unwrap();
        drop(c);
        drop(l);
        // Closed: connections are refused, not accepted by anybody.
        let e = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        // Other programs' binds: plain, SO_REUSEADDR, SO_REUSEPORT (as root, another uid).
        assert!(std::net::TcpListener::bind(addr).is_err());
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            let s = socket2_like(opt);
            let (ss, len) = hostsock::to_sockaddr(&addr, libc::AF_INET).unwrap();
            // SAFETY: ss holds a valid address of length len; s is an open socket.
            let r = unsafe {
                libc::bind(
                    s.as_raw_fd(),
                    (&ss as *const libc::sockaddr_storage).cast(),
                    len,
                )
            };
            assert_eq!(r, -1, "bind with option {opt} went through the hold");
        }
        drop(h);
        assert!(std::net::TcpListener::bind(addr).is_ok());
    }

    /// A TCP socket with one option set to 1.
    fn socket2_like(opt: i32) -> OwnedFd {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) with constant arguments, checked below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0);
        // SAFETY: fd was just created and is owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: one is a valid int for the option's length.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        fd
    }
}
