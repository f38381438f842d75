//! `/dev/slim`, the secure-mode kernel module's control device (ABI: `slim_uapi::kabi`).
//!
//! The router is the only program that drives it (the module checks CAP_NET_ADMIN on every
//! ioctl). Every host socket of secure mode is restricted here before any container sees it.

use slim_uapi::kabi::{self, SlimAddr};
use slim_uapi::kabi_tables::{self as kt, SlimTableOp};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

/// Why secure mode cannot start: each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path} does not exist: the slim_kern kernel module is not loaded; run `insmod slim_kern.ko` (built by `make kmod`) before `slim-router --secure`")]
    Missing { path: String },
    #[error(
        "cannot open {path}: {source}; slim-router --secure must run as root with CAP_NET_ADMIN"
    )]
    Open { path: String, source: io::Error },
    #[error("{path} does not answer the VERSION ioctl ({source}); it is not Slim's module, or a very old one: load the slim_kern.ko built with this router")]
    NoVersion { path: String, source: io::Error },
    #[error("slim_kern module speaks ABI version {module}, this router {router}: load the slim_kern.ko built with this slim-router (`rmmod slim_kern; insmod slim_kern.ko`)")]
    Version { module: u32, router: u32 },
    #[error("slim_kern module lacks features {missing:#x} this router needs: load the slim_kern.ko built with this slim-router")]
    Features { missing: u32 },
}

/// The features secure mode uses.
const NEEDED: u32 = kabi::SLIM_FEAT_RESTRICT
    | kabi::SLIM_FEAT_CHILD_ADDRS
    | kabi::SLIM_FEAT_REVOKE
    | kabi::SLIM_FEAT_STATS;

pub struct SlimDev {
    file: File,
    /// `SLIM_FEAT_*` bits of the loaded module.
    features: u32,
}

/// A refused TABLE_UPDATE: the errno and the index of the op at fault (if one was).
#[derive(Debug)]
pub struct TableUpdateError {
    pub error: io::Error,
    pub index: Option<u32>,
}

impl std::fmt::Display for TableUpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "{} (op {i} of the batch)", self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

fn ioctl<T>(fd: BorrowedFd<'_>, cmd: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: `cmd` is one of the kabi ioctl numbers, whose size field is size_of::<T>() (asserted
    // in kabi.rs), and `arg` is a valid, exclusively borrowed T for the duration of the call: the
    // module reads and/or writes exactly that many bytes.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as libc::c_ulong, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl SlimDev {
    pub fn open(path: &Path) -> Result<SlimDev, OpenError> {
        let p = path.display().to_string();
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(OpenError::Missing { path: p })
            }
            Err(source) => return Err(OpenError::Open { path: p, source }),
        };
        let mut dev = SlimDev { file, features: 0 };
        let mut v = kabi::SlimVersion::zeroed();
        ioctl(dev.fd(), kabi::SLIM_IOC_VERSION, &mut v)
            .map_err(|source| OpenError::NoVersion { path: p, source })?;
        if v.kabi_version != kabi::KABI_VERSION {
            return Err(OpenError::Version {
                module: v.kabi_version,
                router: kabi::KABI_VERSION,
            });
        }
        if v.features & NEEDED != NEEDED {
            return Err(OpenError::Features {
                missing: NEEDED & !v.features,
            });
        }
        dev.features = v.features;
        Ok(dev)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }

    /// Restricts the host socket `sock` (a descriptor of this process) for container `tag`.
    pub fn restrict(
        &self,
        sock: BorrowedFd<'_>,
        tag: u64,
        local: SocketAddr,
        peer: Option<SocketAddr>,
        listener: bool,
    ) -> io::Result<()> {
        let flags = if listener {
            kabi::SLIM_RESTRICT_LISTENER
        } else {
            0
        };
        self.restrict_flags(sock, tag, flags, local, peer)
    }

    /// `SLIM_RESTRICT_LISTENER | SLIM_RESTRICT_ADOPT`: the host listener `sock` that container
    /// `tag` holds becomes this router's: restricted now if a plain router made it, or taken over
    /// from the router that restricted it (same tag and `local`), whose table set is gone with it,
    /// so that the module identifies its children from this router's tables. Needs
    /// [`SlimDev::has_adopt`].
    pub fn adopt_listener(
        &self,
        sock: BorrowedFd<'_>,
        tag: u64,
        local: SocketAddr,
    ) -> io::Result<()> {
        let flags = kabi::SLIM_RESTRICT_LISTENER | kabi::SLIM_RESTRICT_ADOPT;
        self.restrict_flags(sock, tag, flags, local, None)
    }

    /// Whether the module takes `SLIM_RESTRICT_ADOPT`.
    pub fn has_adopt(&self) -> bool {
        self.features & kabi::SLIM_FEAT_ADOPT != 0
    }

    /// Restricts the unconnected host socket `sock` for container `tag` with
    /// `SLIM_RESTRICT_TRANSLATE`: its getsockname answers `local`, and its connect to an overlay
    /// endpoint is translated by the module from this file's listeners table. `policy`: with
    /// `SLIM_RESTRICT_POLICY` too (the container is constrained by the Slim policy; the module
    /// checks each connect against the tag's rows of this file's policy table).
    pub fn restrict_translate(
        &self,
        sock: BorrowedFd<'_>,
        tag: u64,
        local: SocketAddr,
        policy: bool,
    ) -> io::Result<()> {
        let flags = if policy {
            kabi::SLIM_RESTRICT_TRANSLATE | kabi::SLIM_RESTRICT_POLICY
        } else {
            kabi::SLIM_RESTRICT_TRANSLATE
        };
        self.restrict_flags(sock, tag, flags, local, None)
    }

    fn restrict_flags(
        &self,
        sock: BorrowedFd<'_>,
        tag: u64,
        flags: u32,
        local: SocketAddr,
        peer: Option<SocketAddr>,
    ) -> io::Result<()> {
        let mut r = kabi::SlimRestrict::zeroed();
        r.fd = sock.as_raw_fd();
        r.tag = tag;
        r.flags = flags;
        r.local = SlimAddr::from_socket_addr(&local);
        r.peer = peer.map_or(SlimAddr::NONE, |p| SlimAddr::from_socket_addr(&p));
        ioctl(self.fd(), kabi::SLIM_IOC_RESTRICT, &mut r)
    }

    /// Whether the module connects restricted sockets by itself (`SLIM_FEAT_TRANSLATE`).
    pub fn has_translate(&self) -> bool {
        self.features & kabi::SLIM_FEAT_TRANSLATE != 0 && self.has_tables()
    }

    /// Whether the module checks translated connects against a policy table
    /// (`SLIM_FEAT_POLICY`).
    pub fn has_policy(&self) -> bool {
        self.features & kabi::SLIM_FEAT_POLICY != 0 && self.has_translate()
    }

    /// Records the virtual addresses of a child accepted on a restricted listener.
    pub fn set_child_addrs(
        &self,
        sock: BorrowedFd<'_>,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> io::Result<()> {
        let mut c = kabi::SlimChildAddrs::zeroed();
        c.fd = sock.as_raw_fd();
        c.local = SlimAddr::from_socket_addr(&local);
        c.peer = SlimAddr::from_socket_addr(&peer);
        ioctl(self.fd(), kabi::SLIM_IOC_SET_CHILD_ADDRS, &mut c)
    }

    /// Shuts down every restricted socket of `tag`; returns how many.
    pub fn revoke(&self, tag: u64) -> io::Result<u32> {
        let mut v = kabi::SlimRevoke::zeroed();
        v.tag = tag;
        ioctl(self.fd(), kabi::SLIM_IOC_REVOKE, &mut v)?;
        Ok(v.revoked)
    }

    /// A device that is not one (`/dev/null`), for unit tests that must not reach the module.
    #[cfg(test)]
    pub fn for_tests() -> io::Result<SlimDev> {
        Ok(SlimDev {
            file: File::open("/dev/null")?,
            features: kabi::SLIM_FEAT_TABLES,
        })
    }

    /// Whether the module keeps tables (`SLIM_FEAT_TABLES`).
    pub fn has_tables(&self) -> bool {
        self.features & kabi::SLIM_FEAT_TABLES != 0
    }

    /// Another descriptor of the same open file: the same table set in the module (sets are per
    /// open file, not per descriptor).
    pub fn try_clone(&self) -> io::Result<SlimDev> {
        Ok(SlimDev {
            file: self.file.try_clone()?,
            features: self.features,
        })
    }

    /// One TABLE_UPDATE batch (at most `SLIM_TABLE_BATCH_MAX` ops), all or nothing; returns the
    /// set's new generation.
    pub fn table_update(&self, flags: u32, ops: &[SlimTableOp]) -> Result<u64, TableUpdateError> {
        let mut u = kt::SlimTableUpdate::zeroed();
        u.flags = flags;
        u.count = u32::try_from(ops.len()).unwrap_or(u32::MAX);
        u.ops = ops.as_ptr() as u64;
        match ioctl(self.fd(), kt::SLIM_IOC_TABLE_UPDATE, &mut u) {
            Ok(()) => Ok(u.generation),
            Err(error) => {
                // The module writes the header back on every refusal it gets to (not on EFAULT
                // or EPERM: then the input's zero stays, and no op is named).
                let named = u.error_index != kt::SLIM_NO_INDEX
                    && !matches!(error.raw_os_error(), Some(libc::EFAULT | libc::EPERM));
                Err(TableUpdateError {
                    error,
                    index: named
                        .then_some(u.error_index)
                        .filter(|i| (*i as usize) < ops.len()),
                })
            }
        }
    }

    /// Every row of one table, from one snapshot (pages again when the tables changed between
    /// pages); with the snapshot's generation.
    pub fn table_dump(&self, table: u16) -> io::Result<(Vec<SlimTableOp>, u64)> {
        const PAGE: usize = kt::SLIM_TABLE_BATCH_MAX as usize;
        'again: for _ in 0..100 {
            let mut rows: Vec<SlimTableOp> = Vec::new();
            let mut generation = None;
            loop {
                let mut buf = vec![SlimTableOp::zeroed(); PAGE];
                let mut d = kt::SlimTableDump::zeroed();
                d.table = table;
                d.start = rows.len() as u32;
                d.capacity = PAGE as u32;
                d.rows = buf.as_mut_ptr() as u64;
                ioctl(self.fd(), kt::SLIM_IOC_TABLE_DUMP, &mut d)?;
                if generation.is_some_and(|g| g != d.generation) {
                    continue 'again;
                }
                generation = Some(d.generation);
                buf.truncate(d.count as usize);
                rows.extend(buf);
                if rows.len() >= d.total as usize || d.count == 0 {
                    return Ok((rows, d.generation));
                }
            }
        }
        Err(io::Error::other(
            "the module's tables changed during every dump attempt",
        ))
    }

    pub fn table_stats(&self) -> io::Result<kt::SlimTableStats> {
        let mut s = kt::SlimTableStats::zeroed();
        ioctl(self.fd(), kt::SLIM_IOC_TABLE_STATS, &mut s)?;
        Ok(s)
    }

    pub fn stats(&self) -> io::Result<kabi::SlimStats> {
        let mut s = kabi::SlimStats::zeroed();
        ioctl(self.fd(), kabi::SLIM_IOC_STATS, &mut s)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_module_is_named_with_the_fix() {
        let e = SlimDev::open(Path::new("/nonexistent/slim"))
            .err()
            .expect("no device there");
        let msg = e.to_string();
        assert!(matches!(e, OpenError::Missing { .. }), "{msg}");
        assert!(msg.contains("insmod slim_kern.ko"), "{msg}");
    }

    #[test]
    fn a_device_that_is_not_slims_is_refused() {
        // /dev/null opens but answers no VERSION ioctl.
        let e = SlimDev::open(Path::new("/dev/null"))
            .err()
            .expect("/dev/null is not /dev/slim");
        assert!(matches!(e, OpenError::NoVersion { .. }), "{e}");
    }
}
