//! Tables in shared memory (`slim_uapi::accept_table`, `slim_uapi::route_table`): sealed memfds
//! the router maps read-write and hands to the preload libraries read-only.

use slim_uapi::accept_table::{AcceptTable, Entry};
use slim_uapi::route_table::RouteTable;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;

pub struct SharedTable {
    words: &'static [AtomicU64],
    read_only: OwnedFd,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl SharedTable {
    /// A zeroed table of `words` 64-bit words, named `name` in /proc/PID/maps.
    pub fn create(name: &std::ffi::CStr, words: usize) -> io::Result<Self> {
        let bytes = words * 8;
        // SAFETY: memfd_create with a NUL-terminated name; checked below.
        let fd = cvt(unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        })?;
        // SAFETY: fd was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain calls on our own descriptor.
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), bytes as libc::off_t) })?;
        // Readers may rely on the size never changing under their mapping.
        // SAFETY: as above.
        cvt(unsafe {
            libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        })?;
        // SAFETY: a fresh shared mapping of the whole memfd; checked for failure.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping is `bytes` long, page-aligned (so aligned for u64), lives for the
        // rest of the process (never unmapped), and is only accessed through atomics.
        let words = unsafe { std::slice::from_raw_parts(p as *const AtomicU64, words) };
        // Containers get a read-only descriptor: they can map the table but not write to it.
        let path = format!("/proc/self/fd/{}\0", fd.as_raw_fd());
        // SAFETY: path is NUL-terminated.
        let ro =
            cvt(unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
        // SAFETY: ro was just opened and is owned by nobody else.
        let read_only = unsafe { OwnedFd::from_raw_fd(ro) };
        Ok(SharedTable { words, read_only })
    }

    /// As an accept table: publishes an announced connection.
    pub fn insert(&self, client_host: &SocketAddr, server_host: &SocketAddr, e: &Entry) {
        if let Some(t) = AcceptTable::new(self.words) {
            t.insert(client_host, server_host, e);
        }
    }

    /// As an accept table: publishes a peer's port lease (None: ask the router).
    pub fn set_lease(&self, client_host: &SocketAddr, owner: Option<std::net::IpAddr>) {
        if let Some(t) = AcceptTable::for_leases(self.words) {
            t.set_lease(client_host, owner);
        }
    }

    /// As an accept table: publishes the overlay keys of a local host listener.
    pub fn set_listener_keys(
        &self,
        host: &SocketAddr,
        v4: Option<SocketAddr>,
        v6: Option<SocketAddr>,
    ) {
        if let Some(t) = AcceptTable::for_leases(self.words) {
            t.set_listener_keys(host, v4, v6);
        }
    }

    /// As a route table: sets the host listeners of an overlay endpoint (and whether each is
    /// shared).
    pub fn set_routes(&self, overlay: &SocketAddr, hosts: &[(SocketAddr, bool)]) {
        if let Some(t) = RouteTable::new(self.words) {
            if !t.set(overlay, hosts) {
                tracing::warn!(%overlay, "route table full; this endpoint is reached over the overlay");
            }
        }
    }

    pub fn read_only_fd(&self) -> &OwnedFd {
        &self.read_only
    }
}
