//! Who is calling, in secure mode: the container (network namespace) of the process at the other
//! end of a library connection, and the overlay addresses that container owns.
//!
//! The kernel vouches for both: the peer's pid comes from `SO_PEERCRED` (set at connect time),
//! its namespace from `/proc/<pid>/ns/net`, and `SO_PEERPIDFD` proves afterwards that the pid was
//! not reused in between (a dead peer's pid could name another container's process). The overlay
//! addresses are the ones configured inside that namespace, read by entering it; a container
//! without CAP_NET_ADMIN in its namespace (the default of Docker and Kubernetes) cannot change them.

use ipnet::IpNet;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

#[derive(Debug, Clone)]
pub struct Caller {
    pub pid: i32,
    /// Inode of the caller's network namespace: the container's identity and its module tag.
    pub netns: u64,
    /// The container's overlay addresses (inside the router's prefixes).
    pub addrs: Vec<IpAddr>,
}

impl Caller {
    /// The container's overlay addresses, as a listen request carries them (what a wildcard
    /// listener of the container is reachable at).
    pub fn ip_list(&self) -> slim_uapi::proto::IpList {
        let mut l = slim_uapi::proto::IpList::default();
        for ip in &self.addrs {
            l.push(*ip);
        }
        l
    }

    pub fn owns(&self, ip: IpAddr) -> bool {
        let ip = crate::hostsock::normalize_ip(ip);
        self.addrs.contains(&ip)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    #[error("cannot read the peer credentials of the library connection: {0}")]
    Creds(io::Error),
    #[error("cannot open /proc/{pid}/ns/net: {source}")]
    Netns { pid: i32, source: io::Error },
    #[error("process {pid} exited while being identified (its pid may now name another process)")]
    Gone { pid: i32 },
    #[error(
        "the caller (pid {pid}) runs in the router's own network namespace, not in a container"
    )]
    HostNamespace { pid: i32 },
    #[error("cannot list the addresses of the network namespace of pid {pid}: {source}")]
    Addrs { pid: i32, source: io::Error },
}

fn peer_pidfd(conn: &OwnedFd) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd/len are valid for writes; SO_PEERPIDFD writes one int (a new descriptor).
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel installed a new descriptor that we now own.
    (r == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 only checks that the process exists.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// Identifies the process at the other end of `conn` (a connected Unix socket).
pub fn identify(conn: &OwnedFd, prefixes: &[IpNet]) -> Result<Caller, CallerError> {
    let creds = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| CallerError::Creds(e.into()))?;
    let pid = creds.pid();
    let pidfd = peer_pidfd(conn);
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|source| CallerError::Netns { pid, source })?;
    if let Some(p) = &pidfd {
        if !alive(p) {
            return Err(CallerError::Gone { pid });
        }
    }
    let netns = ns
        .metadata()
        .map_err(|source| CallerError::Netns { pid, source })?
        .ino();
    let own = std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    if netns == own {
        return Err(CallerError::HostNamespace { pid });
    }
    let addrs =
        addresses_in(ns.as_fd(), prefixes).map_err(|source| CallerError::Addrs { pid, source })?;
    Ok(Caller { pid, netns, addrs })
}

/// The addresses inside `prefixes` configured in the network namespace `ns`, read from a thread
/// that enters it (a thread's namespace is its own; the thread then ends).
fn addresses_in(ns: std::os::fd::BorrowedFd<'_>, prefixes: &[IpNet]) -> io::Result<Vec<IpAddr>> {
    let ns = ns.try_clone_to_owned()?;
    let prefixes = prefixes.to_vec();
    std::thread::scope(|s| {
        s.spawn(move || -> io::Result<Vec<IpAddr>> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let mut out = Vec::new();
            for ifa in nix::ifaddrs::getifaddrs()? {
                let Some(a) = ifa.address else { continue };
                let ip = if let Some(v4) = a.as_sockaddr_in() {
                    IpAddr::V4(v4.ip())
                } else if let Some(v6) = a.as_sockaddr_in6() {
                    IpAddr::V6(v6.ip())
                } else {
                    continue;
                };
                let ip = crate::hostsock::normalize_ip(ip);
                if prefixes.iter().any(|p| p.contains(&ip)) && !out.contains(&ip) {
                    out.push(ip);
                }
            }
            Ok(out)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("address lister panicked")))
    })
}

/// Whether the process at the other end of `conn` is an administrator: root in the router's own
/// network namespace (containers have the router's socket mounted, but run in namespaces of
/// their own). Status and revocation are for administrators only.
pub fn is_admin(conn: &OwnedFd) -> bool {
    let Ok(creds) = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
    else {
        return false;
    };
    if creds.uid() != 0 {
        return false;
    }
    let pidfd = peer_pidfd(conn);
    let Ok(ns) = std::fs::metadata(format!("/proc/{}/ns/net", creds.pid())) else {
        return false;
    };
    if pidfd.as_ref().is_some_and(|p| !alive(p)) {
        return false;
    }
    let own = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino());
    own.is_ok_and(|own| own == ns.ino())
}

/// The network namespace inode of `pid`, if it can be read (for logs naming a caller that could
/// not be identified).
pub fn netns_of(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}
