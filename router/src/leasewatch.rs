//! Whether a leased port is free again, asked of the kernel for that port alone, by the bind of
//! the port's next socket: no sock_diag dump, no walk of the host's socket tables.
//!
//! A port may get a new lease only when no socket a program could still hold is on it
//! (docs/design.md, "Port leases"). TIME_WAIT leftovers do not count. The kernel's own bind
//! check can tell the two apart, port by port, if every leased socket carries SO_REUSEPORT: a
//! socket with SO_REUSEPORT (and no SO_REUSEADDR at bind time) may bind next to another such
//! socket only if that one is in TIME_WAIT or belongs to the same uid (the uid of a socket is
//! the fsuid of whoever created it). So the router creates the sockets of a port's successive
//! leases under two uids in turn (`LeaseUids::slots`): the bind of lease k fails with EADDRINUSE
//! exactly while the socket of lease k-1 is still alive (bound, connecting, connected,
//! listening, closing but not yet in TIME_WAIT), or while a socket of anybody else without
//! SO_REUSEPORT is on the port. Lease k-2's socket, of the same uid as lease k's, was gone
//! when lease k-1 bound. A port this router never leased may hold a socket of a former router
//! (or of anybody): its first lease is preceded by a probe bound under a third uid
//! (`LeaseUids::probe`), which no leased socket has.
//!
//! Cost: one set of fsuid switches per restock, and nothing per connection. It needs the router
//! to switch its fsuid (CAP_SETUID); without it `available` says no and leases fall back to
//! sock_diag sweeps (`leases.rs`).

use crate::fsuid::FsUid;
use crate::hostsock;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

/// The three uids leased sockets are created under (`--lease-uids PROBE,A,B`): two that
/// alternate from one lease of a port to the next, and the probes' (which no leased socket has).
/// Any uids do that no program on the host creates sockets under: nothing else may bind the
/// lease range with SO_REUSEPORT under them. The defaults lie just below 2^31, above the ranges
/// that distributions, container images (distroless `nonroot` is 65532, `nobody` 65534) and
/// systemd (container ranges up to 1879048191, its foreign range 2147352576-2147418111) hand
/// out, and below the values some programs read as negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseUids {
    pub probe: u32,
    pub slots: [u32; 2],
}

impl Default for LeaseUids {
    fn default() -> Self {
        LeaseUids {
            probe: 2_147_481_000,
            slots: [2_147_481_001, 2_147_481_002],
        }
    }
}

impl LeaseUids {
    /// Parses `PROBE,A,B`: three distinct uids, none of them root, `nobody` (65534) or the
    /// values that mean "no uid" (65535, 4294967295).
    pub fn parse(s: &str) -> Result<LeaseUids, String> {
        let bad = |why: &str| {
            format!("`{s}` {why}: give three distinct uids PROBE,A,B that no program on the host uses, e.g. 2147481000,2147481001,2147481002")
        };
        let v: Vec<u32> = s
            .split(',')
            .map(|x| x.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("is not three numbers"))?;
        let [probe, a, b] = v[..] else {
            return Err(bad("is not three numbers"));
        };
        if probe == a || probe == b || a == b {
            return Err(bad("repeats a uid"));
        }
        if v.iter().any(|&u| matches!(u, 0 | 65534 | 65535 | u32::MAX)) {
            return Err(bad("includes root, nobody (65534) or an invalid uid"));
        }
        Ok(LeaseUids {
            probe,
            slots: [a, b],
        })
    }
}

impl std::fmt::Display for LeaseUids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{}", self.probe, self.slots[0], self.slots[1])
    }
}

/// Which uid a port's next socket gets, and whether a probe must go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub probe_first: bool,
    pub slot: u8,
}

/// The plan for a port whose last lease here was made under `last` (None: never leased by this
/// router, so who holds it is unknown).
pub fn plan(last: Option<u8>) -> Plan {
    match last {
        Some(s) => Plan {
            probe_first: false,
            slot: 1 - (s & 1),
        },
        None => Plan {
            probe_first: true,
            slot: 0,
        },
    }
}

/// Why a port got no socket.
#[derive(Debug)]
pub enum Refused {
    /// A socket that a program may still hold is on the port.
    Busy,
    Other(io::Error),
}

impl From<io::Error> for Refused {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::EADDRINUSE) {
            Refused::Busy
        } else {
            Refused::Other(e)
        }
    }
}

/// A socket of the next lease of `port`, bound to `host`, made under the uid of `plan`
/// (preceded by a probe if it says so). It carries SO_REUSEPORT, and SO_REUSEADDR set after
/// the bind, as leased sockets always did (a program that reads it sees what it saw before).
pub fn bind_leased(
    uids: &LeaseUids,
    family: i32,
    host: IpAddr,
    port: u16,
    plan: Plan,
) -> Result<OwnedFd, Refused> {
    if plan.probe_first {
        drop(bind_as(uids.probe, family, host, port)?);
    }
    let fd = bind_as(uids.slots[plan.slot as usize & 1], family, host, port)?;
    hostsock::set_reuseaddr(fd.as_raw_fd())?;
    Ok(fd)
}

/// A socket with SO_REUSEPORT created under fsuid `uid` and bound to `host`:`port`.
fn bind_as(uid: u32, family: i32, host: IpAddr, port: u16) -> io::Result<OwnedFd> {
    let fd = {
        let _as = FsUid::switch(uid);
        hostsock::new_reuseport(family)?
    };
    hostsock::bind_exact(fd.as_raw_fd(), host, port, family)?;
    Ok(fd)
}

/// Whether this router can lease by bind: it can create sockets under the three uids, and this
/// kernel refuses a bind next to a live socket of another uid but allows it next to a socket of
/// the same uid (on loopback, port chosen by the kernel).
pub fn available(uids: &LeaseUids) -> bool {
    let check = || -> io::Result<bool> {
        let lo: IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
        for uid in uids.slots.iter().chain([&uids.probe]) {
            let fd = bind_as(*uid, libc::AF_INET, lo, 0)?;
            if hostsock::owner_uid(fd.as_raw_fd())? != *uid {
                return Ok(false);
            }
        }
        let a = bind_as(uids.slots[0], libc::AF_INET, lo, 0)?;
        let port = hostsock::local_addr(a.as_raw_fd())?.port();
        let same = bind_as(uids.slots[0], libc::AF_INET, lo, port).is_ok();
        let other = bind_as(uids.slots[1], libc::AF_INET, lo, port);
        let refused = matches!(&other, Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE));
        Ok(same && refused)
    };
    match check() {
        Ok(ok) => ok,
        Err(e) => {
            tracing::debug!(error = %e, "leasing by bind unavailable");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_uids_parse_and_refuse_what_is_not_three_spare_uids() {
        let u = LeaseUids::parse("4000000,4000001, 4000002").unwrap();
        assert_eq!((u.probe, u.slots), (4000000, [4000001, 4000002]));
        assert_eq!(
            LeaseUids::parse(&LeaseUids::default().to_string()),
            Ok(LeaseUids::default())
        );
        for bad in [
            "1,2",
            "1,2,3,4",
            "1,1,2",
            "0,1,2",
            "65534,1,2",
            "1,2,4294967295",
            "a,b,c",
        ] {
            assert!(LeaseUids::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slots_alternate_and_unknown_ports_are_probed() {
        assert_eq!(
            plan(None),
            Plan {
                probe_first: true,
                slot: 0
            }
        );
        let mut last = None;
        let mut slots = Vec::new();
        for _ in 0..4 {
            let p = plan(last);
            slots.push(p.slot);
            last = Some(p.slot);
        }
        assert_eq!(slots, vec![0, 1, 0, 1]);
        assert!(!plan(Some(0)).probe_first);
    }

    /// Connects `fd` to a new loopback listener; returns the server's side of the connection.
    fn connected_pair(fd: &OwnedFd) -> (std::net::TcpStream, std::net::TcpListener) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (ss, len) = hostsock::to_sockaddr(&l.local_addr().unwrap(), libc::AF_INET).unwrap();
        // SAFETY: ss holds a valid address of length len; fd is an open socket.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&ss as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        let e = io::Error::last_os_error();
        assert!(r == 0 || e.raw_os_error() == Some(libc::EINPROGRESS), "{e}");
        let (s, _) = l.accept().unwrap();
        (s, l)
    }

    fn reuseaddr(fd: &OwnedFd) -> bool {
        let mut v: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v and len are valid for writes; SO_REUSEADDR writes an int.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        r == 0 && v != 0
    }

    /// The kernel's answer, state by state, for the socket of a port's previous lease.
    #[test]
    fn a_port_is_busy_exactly_while_its_last_socket_lives() {
        if !available(&LeaseUids::default()) {
            eprintln!("cannot switch fsuid here (no CAP_SETUID); skipped");
            return;
        }
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let first = bind_leased(&LeaseUids::default(), libc::AF_INET, lo, 0, plan(None)).unwrap();
        let port = hostsock::local_addr(first.as_raw_fd()).unwrap().port();
        let p1 = plan(Some(0));
        // Only bound (a pooled socket waiting in a pool): busy.
        assert!(matches!(
            bind_leased(&LeaseUids::default(), libc::AF_INET, lo, port, p1),
            Err(Refused::Busy)
        ));
        // Connected: busy.
        let (server_side, _l) = connected_pair(&first);
        assert!(matches!(
            bind_leased(&LeaseUids::default(), libc::AF_INET, lo, port, p1),
            Err(Refused::Busy)
        ));
        // Closed by its program first, the peer closes too: TIME_WAIT, which holds nothing.
        drop(first);
        drop(server_side);
        let mut second = None;
        for _ in 0..200 {
            match bind_leased(&LeaseUids::default(), libc::AF_INET, lo, port, p1) {
                Ok(fd) => {
                    second = Some(fd);
                    break;
                }
                Err(Refused::Busy) => std::thread::sleep(std::time::Duration::from_millis(5)),
                Err(Refused::Other(e)) => panic!("{e}"),
            }
        }
        let second = second.expect("the port never came back after its socket closed");
        // The next lease (slot 0 again) is refused while the second socket lives: its
        // SO_REUSEADDR, set after the bind, does not let the next bind through.
        assert!(reuseaddr(&second));
        assert!(matches!(
            bind_leased(
                &LeaseUids::default(),
                libc::AF_INET,
                lo,
                port,
                plan(Some(1))
            ),
            Err(Refused::Busy)
        ));
        // A probe finds it too, whoever's it is.
        assert!(matches!(
            bind_leased(&LeaseUids::default(), libc::AF_INET, lo, port, plan(None)),
            Err(Refused::Busy)
        ));
        drop(second);
        // Closed while only bound: gone at once.
        assert!(bind_leased(
            &LeaseUids::default(),
            libc::AF_INET,
            lo,
            port,
            plan(Some(1))
        )
        .is_ok());
    }

    /// Anybody else's socket on the port (no SO_REUSEPORT) makes it busy for a probe.
    #[test]
    fn a_probe_sees_other_programs_sockets() {
        if !available(&LeaseUids::default()) {
            eprintln!("cannot switch fsuid here (no CAP_SETUID); skipped");
            return;
        }
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = other.local_addr().unwrap().port();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(matches!(
            bind_leased(&LeaseUids::default(), libc::AF_INET, lo, port, plan(None)),
            Err(Refused::Busy)
        ));
    }
}
