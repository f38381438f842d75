//! The `/dev/slim` ioctl ABI between `slim-router --secure` and the kernel module `slim_kern.ko`.
//!
//! This ONE file is compiled by both sides: by the `slim-uapi` crate (userspace) and by the module in
//! `kmod-rs/` (`#[path = "../../uapi/src/kabi.rs"] mod kabi;`). It therefore has no dependencies, uses
//! only `core`, and never allocates. Every struct is `#[repr(C)]` with explicit padding fields, so the
//! layout has no implicit holes (the kernel copies them from and to user memory byte for byte), and the
//! compile-time assertions at the bottom pin sizes and offsets on both sides.
//!
//! The table ioctls (`SLIM_IOC_TABLE_*`, numbers 6..=8) live in `kabi_tables.rs`, compiled the same
//! way by both sides.
//!
//! Versioning: [`KABI_VERSION`] is bumped on any incompatible change; new ioctls announced by a new
//! `SLIM_FEAT_*` bit are compatible and keep it. The router calls
//! [`SLIM_IOC_VERSION`] first and refuses to start when the module's version differs from its own.
//! Reserved fields and undefined flag bits must be zero; the module refuses anything else with
//! `EINVAL`, so they can be given a meaning later without a version bump.
//!
//! Access: the device node is root-only, and the module also checks `CAP_NET_ADMIN` (in the initial
//! user namespace) on open and on every ioctl; callers without it get `EPERM`. Unknown ioctl numbers
//! get `ENOTTY`; a bad user pointer `EFAULT`.

/// Incompatible changes of anything in this file (or `kabi_tables.rs`) bump this number.
/// 2: `SlimTableStats` grew (the policy table's rows, `policy_denied`), so `SLIM_IOC_TABLE_STATS`
/// has a new number.
pub const KABI_VERSION: u32 = 2;

/// Name of the misc device (`/dev/slim`).
pub const SLIM_DEVICE_NAME: &str = "slim";
/// Path of the device node.
pub const SLIM_DEVICE_PATH: &str = "/dev/slim";

/// The ioctl "type" byte of every Slim ioctl.
pub const SLIM_IOC_MAGIC: u8 = b'S';

// ---------------------------------------------------------------------------------------------
// ioctl number encoding: the same as the kernel's generic <asm-generic/ioctl.h> (x86, arm64, riscv).

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;

/// Direction bits: no data.
pub const IOC_NONE: u32 = 0;
/// Direction bits: userspace writes (the kernel reads user memory).
pub const IOC_WRITE: u32 = 1;
/// Direction bits: userspace reads (the kernel writes user memory).
pub const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`. Panics (at compile time, all uses are in consts) if `size` does not
/// fit the 14-bit size field.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(size < (1 << IOC_SIZEBITS));
    (dir << IOC_DIRSHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}
/// `_IO(type, nr)`.
pub const fn io(ty: u8, nr: u8) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}
/// `_IOR(type, nr, T)`: the kernel writes a `T` to the argument pointer.
pub const fn ior<T>(ty: u8, nr: u8) -> u32 {
    ioc(IOC_READ, ty, nr, core::mem::size_of::<T>())
}
/// `_IOW(type, nr, T)`: the kernel reads a `T` from the argument pointer.
pub const fn iow<T>(ty: u8, nr: u8) -> u32 {
    ioc(IOC_WRITE, ty, nr, core::mem::size_of::<T>())
}
/// `_IOWR(type, nr, T)`: both.
pub const fn iowr<T>(ty: u8, nr: u8) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, core::mem::size_of::<T>())
}
/// `_IOC_DIR(cmd)`.
pub const fn ioc_dir(cmd: u32) -> u32 {
    (cmd >> IOC_DIRSHIFT) & ((1 << 2) - 1)
}
/// `_IOC_TYPE(cmd)`.
pub const fn ioc_type(cmd: u32) -> u8 {
    ((cmd >> IOC_TYPESHIFT) & ((1 << IOC_TYPEBITS) - 1)) as u8
}
/// `_IOC_NR(cmd)`.
pub const fn ioc_nr(cmd: u32) -> u8 {
    ((cmd >> IOC_NRSHIFT) & ((1 << IOC_NRBITS) - 1)) as u8
}
/// `_IOC_SIZE(cmd)`.
pub const fn ioc_size(cmd: u32) -> usize {
    ((cmd >> IOC_SIZESHIFT) & ((1 << IOC_SIZEBITS) - 1)) as usize
}

// ---------------------------------------------------------------------------------------------
// Addresses

/// `AF_INET` (the same on every Linux architecture).
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;
/// `sizeof(struct sockaddr_in)`.
pub const SOCKADDR_IN_LEN: usize = 16;
/// `sizeof(struct sockaddr_in6)`.
pub const SOCKADDR_IN6_LEN: usize = 28;

/// A socket address in the kernel's own `sockaddr_in` / `sockaddr_in6` byte layout, in fixed 28-byte
/// storage (the size of `sockaddr_in6`), so the module can hand it to `getname` as it is:
/// - bytes 0..2: family, native endian (`AF_INET` or `AF_INET6`; 0 = no address);
/// - bytes 2..4: port, network order;
/// - `AF_INET`: bytes 4..8 the address, 8..28 zero;
/// - `AF_INET6`: bytes 4..8 flow info (network order), 8..24 the address, 24..28 scope id (native).
///
/// Alignment 1: it can sit at any offset of the ioctl structs without padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlimAddr {
    /// The raw `sockaddr_in` / `sockaddr_in6` bytes.
    pub raw: [u8; SOCKADDR_IN6_LEN],
}

impl SlimAddr {
    /// No address (family 0).
    pub const NONE: SlimAddr = SlimAddr {
        raw: [0; SOCKADDR_IN6_LEN],
    };

    /// An IPv4 address and port.
    pub const fn v4(ip: [u8; 4], port: u16) -> SlimAddr {
        let mut raw = [0u8; SOCKADDR_IN6_LEN];
        let fam = AF_INET.to_ne_bytes();
        let p = port.to_be_bytes();
        raw[0] = fam[0];
        raw[1] = fam[1];
        raw[2] = p[0];
        raw[3] = p[1];
        raw[4] = ip[0];
        raw[5] = ip[1];
        raw[6] = ip[2];
        raw[7] = ip[3];
        SlimAddr { raw }
    }

    /// An IPv6 address, port, flow info (host order) and scope id.
    pub const fn v6(ip: [u8; 16], port: u16, flowinfo: u32, scope_id: u32) -> SlimAddr {
        let mut raw = [0u8; SOCKADDR_IN6_LEN];
        let fam = AF_INET6.to_ne_bytes();
        let p = port.to_be_bytes();
        let fl = flowinfo.to_be_bytes();
        let sc = scope_id.to_ne_bytes();
        raw[0] = fam[0];
        raw[1] = fam[1];
        raw[2] = p[0];
        raw[3] = p[1];
        let mut i = 0;
        while i < 4 {
            raw[4 + i] = fl[i];
            raw[24 + i] = sc[i];
            i += 1;
        }
        let mut j = 0;
        while j < 16 {
            raw[8 + j] = ip[j];
            j += 1;
        }
        SlimAddr { raw }
    }

    /// The family field (`AF_INET`, `AF_INET6`, or 0 for none).
    pub const fn family(&self) -> u16 {
        u16::from_ne_bytes([self.raw[0], self.raw[1]])
    }

    /// The port, host order.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes([self.raw[2], self.raw[3]])
    }

    /// Whether this is "no address".
    pub const fn is_none(&self) -> bool {
        self.family() == 0
    }

    /// Checks the encoding and returns the length of the meaningful prefix (16 for IPv4, 28 for
    /// IPv6): the `addrlen` that `getsockname`/`getpeername` report. Unknown families, or an IPv4
    /// address with non-zero bytes after its 8 meaningful ones, are invalid (`EINVAL`).
    pub const fn sockaddr_len(&self) -> Result<usize, KabiError> {
        match self.family() {
            AF_INET => {
                let mut i = 8;
                while i < SOCKADDR_IN6_LEN {
                    if self.raw[i] != 0 {
                        return Err(KabiError::Invalid);
                    }
                    i += 1;
                }
                Ok(SOCKADDR_IN_LEN)
            }
            AF_INET6 => Ok(SOCKADDR_IN6_LEN),
            _ => Err(KabiError::Invalid),
        }
    }

    /// From a `core::net` socket address.
    pub const fn from_socket_addr(sa: &core::net::SocketAddr) -> SlimAddr {
        match sa {
            core::net::SocketAddr::V4(a) => SlimAddr::v4(a.ip().octets(), a.port()),
            core::net::SocketAddr::V6(a) => {
                SlimAddr::v6(a.ip().octets(), a.port(), a.flowinfo(), a.scope_id())
            }
        }
    }

    /// To a `core::net` socket address; `None` for "no address" or an invalid encoding.
    pub fn to_socket_addr(&self) -> Option<core::net::SocketAddr> {
        use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
        if self.sockaddr_len().is_err() {
            return None;
        }
        let r = &self.raw;
        match self.family() {
            AF_INET => Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(r[4], r[5], r[6], r[7]),
                self.port(),
            ))),
            _ => {
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&r[8..24]);
                let flow = u32::from_be_bytes([r[4], r[5], r[6], r[7]]);
                let scope = u32::from_ne_bytes([r[24], r[25], r[26], r[27]]);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(ip),
                    self.port(),
                    flow,
                    scope,
                )))
            }
        }
    }
}

/// Why a struct from userspace is refused (the module maps this to an errno).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KabiError {
    /// Bad family, non-zero reserved field or unknown flag: `EINVAL`.
    Invalid,
}

// ---------------------------------------------------------------------------------------------
// ioctl argument structs

/// [`SLIM_IOC_VERSION`] (read): the module's ABI version and features.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlimVersion {
    /// The module's [`KABI_VERSION`].
    pub kabi_version: u32,
    /// `SLIM_FEAT_*` bits the module implements.
    pub features: u32,
    /// Zero.
    pub reserved: [u32; 2],
}

/// Feature bit: [`SLIM_IOC_RESTRICT`] and the restricted `proto_ops` are implemented.
pub const SLIM_FEAT_RESTRICT: u32 = 1 << 0;
/// Feature bit: [`SLIM_IOC_AUTHORIZE_CONNECT`].
pub const SLIM_FEAT_AUTHORIZE: u32 = 1 << 1;
/// Feature bit: [`SLIM_IOC_SET_CHILD_ADDRS`].
pub const SLIM_FEAT_CHILD_ADDRS: u32 = 1 << 2;
/// Feature bit: [`SLIM_IOC_REVOKE`].
pub const SLIM_FEAT_REVOKE: u32 = 1 << 3;
/// Feature bit: [`SLIM_IOC_STATS`].
pub const SLIM_FEAT_STATS: u32 = 1 << 4;
/// Feature bit: the table ioctls of `kabi_tables.rs` (`SLIM_IOC_TABLE_UPDATE`, `_DUMP`, `_STATS`),
/// one table set per open file. A compatible extension: `KABI_VERSION` stays the same.
pub const SLIM_FEAT_TABLES: u32 = 1 << 5;
/// Feature bit: [`SLIM_RESTRICT_TRANSLATE`], connect by the module from the listeners table (issue
/// 15, point 2). A compatible extension: `KABI_VERSION` stays the same.
pub const SLIM_FEAT_TRANSLATE: u32 = 1 << 6;
/// Feature bit: the policy table ([`crate::kabi_tables::SLIM_TABLE_POLICY`]) and
/// [`SLIM_RESTRICT_POLICY`] (issue 15, point 4).
pub const SLIM_FEAT_POLICY: u32 = 1 << 7;
/// Feature bit: [`SLIM_RESTRICT_ADOPT`] (a restarted router takes over its containers' restricted
/// listeners). A compatible extension: `KABI_VERSION` stays the same.
pub const SLIM_FEAT_ADOPT: u32 = 1 << 8;

/// [`SLIM_IOC_RESTRICT`] (write): restrict the host socket `fd` (a TCP socket of the caller) before
/// any container sees it, and record its virtual (overlay) addresses. From then on `getsockname`
/// answers `local`, `getpeername` answers `peer`, and connect/bind/listen/... are refused (see the
/// `SLIM_REFUSED_*` kinds). Errors: `EBADF` bad fd, `ENOTSOCK` not a socket, `EPROTONOSUPPORT` not
/// TCP over IPv4/IPv6, `EEXIST` already restricted, `EINVAL` bad address/flags/reserved.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlimRestrict {
    /// The socket, a file descriptor of the calling process.
    pub fd: i32,
    /// `SLIM_RESTRICT_*` flags.
    pub flags: u32,
    /// The container (or any grouping the router chooses) this socket belongs to; [`SLIM_IOC_REVOKE`]
    /// shuts down all sockets of a tag. 0 is a valid tag.
    pub tag: u64,
    /// Virtual local address (`getsockname`). Required.
    pub local: SlimAddr,
    /// Virtual peer address (`getpeername`); [`SlimAddr::NONE`] for a listener or a socket not yet
    /// connected.
    pub peer: SlimAddr,
}

/// The socket is (or will be made, by the router, before the container gets it) a listener: its
/// accepted children inherit the restriction and the tag, with the child's addresses set by
/// [`SLIM_IOC_SET_CHILD_ADDRS`] (until then they answer the listener's local address and no peer).
pub const SLIM_RESTRICT_LISTENER: u32 = 1 << 0;
/// The socket connects to overlay endpoints, translated by the module ([`SLIM_FEAT_TRANSLATE`]):
/// `connect(overlay endpoint)` looks the endpoint up in the listeners table of the table set of the
/// `/dev/slim` file that restricted the socket (`kabi_tables.rs`), connects to its host endpoint
/// with the kernel's own connect (blocking and non-blocking semantics, `EINPROGRESS`, `SO_ERROR`
/// are the kernel's) and, once that connect has started, answers the overlay endpoint to
/// `getpeername`. An endpoint without a row fails with `ENOENT` (which a TCP connect never
/// returns otherwise: the caller takes the overlay), an IPv6 host endpoint for an IPv4 socket
/// too. An endpoint authorized by AUTHORIZE_CONNECT is connected to as it is. Not with
/// [`SLIM_RESTRICT_LISTENER`], nor with a `peer` (`EINVAL`).
pub const SLIM_RESTRICT_TRANSLATE: u32 = 1 << 1;
/// With [`SLIM_RESTRICT_TRANSLATE`] only ([`SLIM_FEAT_POLICY`]): the socket's container is
/// constrained by the Slim policy, so a translated connect must also match one of the rows of the
/// policy table (`kabi_tables.rs`, [`crate::kabi_tables::SLIM_TABLE_POLICY`]) under the socket's
/// tag; no row (none at all for the tag: it may reach nothing) refuses it with `ECONNREFUSED`
/// before anything is sent, counted in `SlimTableStats::policy_denied`. ECONNREFUSED is what the
/// router answers for a denied connect too: what an overlay firewall's REJECT gives a TCP client.
pub const SLIM_RESTRICT_POLICY: u32 = 1 << 2;
/// With [`SLIM_RESTRICT_LISTENER`] only ([`SLIM_FEAT_ADOPT`]): `fd` is already a restricted
/// listener, restricted by another `/dev/slim` file (a router that has since restarted) with the
/// same `tag` and `local`; from now on it and the children it accepts use the table set of this
/// file (accept by the module looks up there). Nothing else changes. `EEXIST` if `fd` is not
/// restricted so (not a restricted listener, another tag or local address, or revoked); a socket
/// that is not restricted at all is restricted as without the flag.
pub const SLIM_RESTRICT_ADOPT: u32 = 1 << 3;
/// All defined `SLIM_RESTRICT_*` bits.
pub const SLIM_RESTRICT_FLAGS: u32 =
    SLIM_RESTRICT_LISTENER | SLIM_RESTRICT_TRANSLATE | SLIM_RESTRICT_POLICY | SLIM_RESTRICT_ADOPT;

/// [`SLIM_IOC_AUTHORIZE_CONNECT`] (write): the one host endpoint the restricted socket `fd` may
/// `connect` to (the container's `connect` is refused for anything else). Replaces an earlier
/// authorization; refused with `EISCONN` once the socket is connected. Errors as for RESTRICT, plus
/// `ENOENT` if `fd` is not restricted.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlimAuthorizeConnect {
    /// The restricted socket, a file descriptor of the calling process.
    pub fd: i32,
    /// Zero (no flags defined).
    pub flags: u32,
    /// The host endpoint (real address and port) the socket may connect to.
    pub host: SlimAddr,
    /// Zero.
    pub reserved: u32,
}

/// [`SLIM_IOC_SET_CHILD_ADDRS`] (write): record the virtual addresses of `fd`, a socket accepted on a
/// restricted listener (so already restricted, with the listener's tag). Errors: `ENOENT` not
/// restricted, `EINVAL` bad addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlimChildAddrs {
    /// The accepted socket, a file descriptor of the calling process.
    pub fd: i32,
    /// Zero (no flags defined).
    pub flags: u32,
    /// Virtual local address.
    pub local: SlimAddr,
    /// Virtual peer address.
    pub peer: SlimAddr,
}

/// [`SLIM_IOC_REVOKE`] (read/write): shut down (both directions) every live restricted socket with
/// this tag; they stay restricted. `revoked` returns how many were shut down.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlimRevoke {
    /// In: the tag.
    pub tag: u64,
    /// In: zero (no flags defined).
    pub flags: u32,
    /// Out: number of sockets shut down.
    pub revoked: u32,
}

/// Indexes into [`SlimStats::refusals`]: which operation a restricted socket refused.
pub const SLIM_REFUSED_CONNECT: usize = 0;
/// `bind`.
pub const SLIM_REFUSED_BIND: usize = 1;
/// `listen`.
pub const SLIM_REFUSED_LISTEN: usize = 2;
/// `sendto`/`sendmsg` with a destination address.
pub const SLIM_REFUSED_SENDMSG_ADDR: usize = 3;
/// `sendmsg`/`sendto` with `MSG_FASTOPEN`.
pub const SLIM_REFUSED_FASTOPEN: usize = 4;
/// A steering `setsockopt` (`IPV6_ADDRFORM`, `SO_BINDTODEVICE`, `SO_MARK`, `IP_TRANSPARENT`, raising
/// `IP_TOS`/`SO_PRIORITY`, ...).
pub const SLIM_REFUSED_SETSOCKOPT: usize = 5;
/// A `SIOCGIF*` (or other refused) socket ioctl.
pub const SLIM_REFUSED_IOCTL: usize = 6;
/// `getsockopt` that would reveal a host address (answered virtually where possible).
pub const SLIM_REFUSED_GETSOCKOPT: usize = 7;
/// Number of refusal slots in [`SlimStats`] (kinds above the last defined one stay zero).
pub const SLIM_REFUSAL_SLOTS: usize = 16;

/// [`SLIM_IOC_STATS`] (read): counters since the module was loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlimStats {
    /// Restricted sockets alive now (including accepted children).
    pub restricted_live: u64,
    /// Sockets restricted by [`SLIM_IOC_RESTRICT`] so far.
    pub restricted_total: u64,
    /// Accepted children that inherited a restriction so far.
    pub children_total: u64,
    /// Sockets shut down by [`SLIM_IOC_REVOKE`] so far.
    pub revoked_total: u64,
    /// Refused operations by kind (`SLIM_REFUSED_*`).
    pub refusals: [u64; SLIM_REFUSAL_SLOTS],
}

macro_rules! zeroed_ctor {
    ($($t:ident { $($f:ident: $v:expr),* $(,)? })*) => {$(
        impl $t {
            /// All fields zero (reserved fields must stay zero).
            pub const fn zeroed() -> $t {
                $t { $($f: $v),* }
            }
        }
    )*};
}
/// Also used by `kabi_tables.rs` (compiled next to this file in the crate and in the module).
pub(crate) use zeroed_ctor;
zeroed_ctor! {
    SlimVersion { kabi_version: 0, features: 0, reserved: [0; 2] }
    SlimRestrict { fd: 0, flags: 0, tag: 0, local: SlimAddr::NONE, peer: SlimAddr::NONE }
    SlimAuthorizeConnect { fd: 0, flags: 0, host: SlimAddr::NONE, reserved: 0 }
    SlimChildAddrs { fd: 0, flags: 0, local: SlimAddr::NONE, peer: SlimAddr::NONE }
    SlimRevoke { tag: 0, flags: 0, revoked: 0 }
    SlimStats { restricted_live: 0, restricted_total: 0, children_total: 0, revoked_total: 0,
                refusals: [0; SLIM_REFUSAL_SLOTS] }
}

impl SlimRestrict {
    /// Checks flags and addresses (what the module checks before acting).
    pub const fn validate(&self) -> Result<(), KabiError> {
        if self.flags & !SLIM_RESTRICT_FLAGS != 0 {
            return Err(KabiError::Invalid);
        }
        if self.flags & SLIM_RESTRICT_TRANSLATE != 0
            && (self.flags & SLIM_RESTRICT_LISTENER != 0 || !self.peer.is_none())
        {
            return Err(KabiError::Invalid);
        }
        if self.flags & SLIM_RESTRICT_POLICY != 0 && self.flags & SLIM_RESTRICT_TRANSLATE == 0 {
            return Err(KabiError::Invalid);
        }
        if self.flags & SLIM_RESTRICT_ADOPT != 0
            && self.flags & (SLIM_RESTRICT_LISTENER | SLIM_RESTRICT_TRANSLATE)
                != SLIM_RESTRICT_LISTENER
        {
            return Err(KabiError::Invalid);
        }
        if let Err(e) = self.local.sockaddr_len() {
            return Err(e);
        }
        if !self.peer.is_none() {
            if let Err(e) = self.peer.sockaddr_len() {
                return Err(e);
            }
        }
        Ok(())
    }
}

impl SlimAuthorizeConnect {
    /// Checks flags, reserved field and address.
    pub const fn validate(&self) -> Result<(), KabiError> {
        if self.flags != 0 || self.reserved != 0 {
            return Err(KabiError::Invalid);
        }
        match self.host.sockaddr_len() {
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl SlimChildAddrs {
    /// Checks flags and addresses.
    pub const fn validate(&self) -> Result<(), KabiError> {
        if self.flags != 0 {
            return Err(KabiError::Invalid);
        }
        if let Err(e) = self.local.sockaddr_len() {
            return Err(e);
        }
        match self.peer.sockaddr_len() {
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl SlimRevoke {
    /// Checks flags and the out field (must come in as zero).
    pub const fn validate(&self) -> Result<(), KabiError> {
        if self.flags != 0 || self.revoked != 0 {
            return Err(KabiError::Invalid);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// ioctl numbers

/// Read the module's [`SlimVersion`].
pub const SLIM_IOC_VERSION: u32 = ior::<SlimVersion>(SLIM_IOC_MAGIC, 0);
/// Restrict a host socket ([`SlimRestrict`]).
pub const SLIM_IOC_RESTRICT: u32 = iow::<SlimRestrict>(SLIM_IOC_MAGIC, 1);
/// Authorize the host endpoint a restricted socket may connect to ([`SlimAuthorizeConnect`]).
pub const SLIM_IOC_AUTHORIZE_CONNECT: u32 = iow::<SlimAuthorizeConnect>(SLIM_IOC_MAGIC, 2);
/// Record the virtual addresses of an accepted child ([`SlimChildAddrs`]).
pub const SLIM_IOC_SET_CHILD_ADDRS: u32 = iow::<SlimChildAddrs>(SLIM_IOC_MAGIC, 3);
/// Shut down every restricted socket of a tag ([`SlimRevoke`]).
pub const SLIM_IOC_REVOKE: u32 = iowr::<SlimRevoke>(SLIM_IOC_MAGIC, 4);
/// Read the counters ([`SlimStats`]).
pub const SLIM_IOC_STATS: u32 = ior::<SlimStats>(SLIM_IOC_MAGIC, 5);

// ---------------------------------------------------------------------------------------------
// Layout assertions: checked by every compiler that builds this file (userspace and kernel).

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<SlimAddr>() == 28 && align_of::<SlimAddr>() == 1);

    assert!(size_of::<SlimVersion>() == 16 && align_of::<SlimVersion>() == 4);
    assert!(offset_of!(SlimVersion, features) == 4 && offset_of!(SlimVersion, reserved) == 8);

    assert!(size_of::<SlimRestrict>() == 72 && align_of::<SlimRestrict>() == 8);
    assert!(offset_of!(SlimRestrict, fd) == 0 && offset_of!(SlimRestrict, flags) == 4);
    assert!(offset_of!(SlimRestrict, tag) == 8 && offset_of!(SlimRestrict, local) == 16);
    assert!(offset_of!(SlimRestrict, peer) == 44);

    assert!(size_of::<SlimAuthorizeConnect>() == 40 && align_of::<SlimAuthorizeConnect>() == 4);
    assert!(
        offset_of!(SlimAuthorizeConnect, host) == 8
            && offset_of!(SlimAuthorizeConnect, reserved) == 36
    );

    assert!(size_of::<SlimChildAddrs>() == 64 && align_of::<SlimChildAddrs>() == 4);
    assert!(offset_of!(SlimChildAddrs, local) == 8 && offset_of!(SlimChildAddrs, peer) == 36);

    assert!(size_of::<SlimRevoke>() == 16 && align_of::<SlimRevoke>() == 8);
    assert!(offset_of!(SlimRevoke, flags) == 8 && offset_of!(SlimRevoke, revoked) == 12);

    assert!(size_of::<SlimStats>() == 160 && align_of::<SlimStats>() == 8);
    assert!(offset_of!(SlimStats, refusals) == 32);

    // The numbers a C header would give (_IOR('S', 0, 16 bytes) etc.).
    assert!(SLIM_IOC_VERSION == 0x8010_5300);
    assert!(SLIM_IOC_RESTRICT == 0x4048_5301);
    assert!(SLIM_IOC_AUTHORIZE_CONNECT == 0x4028_5302);
    assert!(SLIM_IOC_SET_CHILD_ADDRS == 0x4040_5303);
    assert!(SLIM_IOC_REVOKE == 0xC010_5304);
    assert!(SLIM_IOC_STATS == 0x80A0_5305);
};

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn ioctl_numbers_decode() {
        for (cmd, dir, nr, size) in [
            (SLIM_IOC_VERSION, IOC_READ, 0, size_of::<SlimVersion>()),
            (SLIM_IOC_RESTRICT, IOC_WRITE, 1, size_of::<SlimRestrict>()),
            (
                SLIM_IOC_AUTHORIZE_CONNECT,
                IOC_WRITE,
                2,
                size_of::<SlimAuthorizeConnect>(),
            ),
            (
                SLIM_IOC_SET_CHILD_ADDRS,
                IOC_WRITE,
                3,
                size_of::<SlimChildAddrs>(),
            ),
            (
                SLIM_IOC_REVOKE,
                IOC_READ | IOC_WRITE,
                4,
                size_of::<SlimRevoke>(),
            ),
            (SLIM_IOC_STATS, IOC_READ, 5, size_of::<SlimStats>()),
        ] {
            assert_eq!(ioc_dir(cmd), dir);
            assert_eq!(ioc_type(cmd), b'S');
            assert_eq!(ioc_nr(cmd), nr);
            assert_eq!(ioc_size(cmd), size);
        }
        assert_eq!(io(b'S', 9), 0x5309);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        // Sum of field sizes == struct size: every byte is a named field.
        assert_eq!(4 + 4 + 2 * 4, size_of::<SlimVersion>());
        assert_eq!(4 + 4 + 8 + 28 + 28, size_of::<SlimRestrict>());
        assert_eq!(4 + 4 + 28 + 4, size_of::<SlimAuthorizeConnect>());
        assert_eq!(4 + 4 + 28 + 28, size_of::<SlimChildAddrs>());
        assert_eq!(8 + 4 + 4, size_of::<SlimRevoke>());
        assert_eq!(4 * 8 + SLIM_REFUSAL_SLOTS * 8, size_of::<SlimStats>());
    }

    #[test]
    fn addr_matches_sockaddr_layout() {
        let a = SlimAddr::v4([10, 32, 0, 7], 8080);
        assert_eq!(
            &a.raw[..8],
            &[
                2u16.to_ne_bytes()[0],
                2u16.to_ne_bytes()[1],
                0x1f,
                0x90,
                10,
                32,
                0,
                7
            ]
        );
        assert_eq!(a.sockaddr_len(), Ok(16));
        assert_eq!(a.family(), AF_INET);
        assert_eq!(a.port(), 8080);

        let ip6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let b = SlimAddr::v6(ip6, 443, 0x12345, 3);
        assert_eq!(b.sockaddr_len(), Ok(28));
        assert_eq!(&b.raw[4..8], &0x12345u32.to_be_bytes());
        assert_eq!(&b.raw[8..24], &ip6);
        assert_eq!(&b.raw[24..28], &3u32.to_ne_bytes());

        for sa in ["10.32.0.7:8080", "[fd00::1]:443", "0.0.0.0:0"] {
            let sa: core::net::SocketAddr = sa.parse().unwrap();
            assert_eq!(SlimAddr::from_socket_addr(&sa).to_socket_addr(), Some(sa));
        }
        assert_eq!(SlimAddr::NONE.to_socket_addr(), None);
        assert!(SlimAddr::NONE.is_none());
    }

    #[test]
    fn validation() {
        let mut bad = SlimAddr::v4([1, 2, 3, 4], 5);
        bad.raw[20] = 1;
        assert_eq!(bad.sockaddr_len(), Err(KabiError::Invalid));
        let mut fam = SlimAddr::NONE;
        fam.raw[0] = 1; // AF_UNIX
        assert_eq!(fam.sockaddr_len(), Err(KabiError::Invalid));

        let mut r = SlimRestrict::zeroed();
        assert_eq!(
            r.validate(),
            Err(KabiError::Invalid),
            "local address required"
        );
        r.local = SlimAddr::v4([10, 32, 0, 1], 80);
        assert_eq!(r.validate(), Ok(()));
        r.flags = SLIM_RESTRICT_LISTENER;
        assert_eq!(r.validate(), Ok(()));
        r.flags = SLIM_RESTRICT_TRANSLATE;
        assert_eq!(r.validate(), Ok(()));
        r.flags = SLIM_RESTRICT_TRANSLATE | SLIM_RESTRICT_LISTENER;
        assert_eq!(
            r.validate(),
            Err(KabiError::Invalid),
            "a listener does not connect"
        );
        r.flags = SLIM_RESTRICT_TRANSLATE;
        r.peer = SlimAddr::v4([10, 32, 0, 2], 80);
        assert_eq!(
            r.validate(),
            Err(KabiError::Invalid),
            "the module sets the peer"
        );
        r.peer = SlimAddr::NONE;
        r.flags = SLIM_RESTRICT_TRANSLATE | SLIM_RESTRICT_POLICY;
        assert_eq!(r.validate(), Ok(()));
        r.flags = SLIM_RESTRICT_LISTENER | SLIM_RESTRICT_ADOPT;
        assert_eq!(r.validate(), Ok(()));
        r.flags = SLIM_RESTRICT_ADOPT;
        assert_eq!(
            r.validate(),
            Err(KabiError::Invalid),
            "only listeners are adopted"
        );
        r.flags = SLIM_RESTRICT_POLICY;
        assert_eq!(
            r.validate(),
            Err(KabiError::Invalid),
            "the policy is checked where the module connects"
        );
        r.flags = 1 << 7;
        assert_eq!(r.validate(), Err(KabiError::Invalid));
        r.flags = 0;
        r.peer = fam;
        assert_eq!(r.validate(), Err(KabiError::Invalid));

        let mut a = SlimAuthorizeConnect::zeroed();
        a.host = SlimAddr::v4([192, 168, 77, 2], 40000);
        assert_eq!(a.validate(), Ok(()));
        a.reserved = 1;
        assert_eq!(a.validate(), Err(KabiError::Invalid));

        let mut c = SlimChildAddrs::zeroed();
        c.local = SlimAddr::v4([10, 32, 0, 1], 80);
        assert_eq!(c.validate(), Err(KabiError::Invalid), "peer required");
        c.peer = SlimAddr::v4([10, 32, 0, 2], 5555);
        assert_eq!(c.validate(), Ok(()));

        let mut v = SlimRevoke::zeroed();
        assert_eq!(v.validate(), Ok(()));
        v.revoked = 1;
        assert_eq!(v.validate(), Err(KabiError::Invalid));
    }
}
