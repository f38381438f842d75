// SPDX-License-Identifier: GPL-2.0

//! The restricted TCP `proto_ops` (milestone 2): every unsafe socket operation of the module lives here.
//!
//! `SLIM_IOC_RESTRICT` swaps `sock->ops` of a TCP socket (ops exactly `inet_stream_ops` or
//! `inet6_stream_ops`) for a restricted copy of that table. There is one copy per original table, a
//! `static` written once by [`init`] (before `/dev/slim` exists) and read-only afterwards; its
//! `owner` is this module. The copy refuses `bind`, `listen`, `sendmsg(MSG_FASTOPEN)` and every
//! `connect` except to the endpoint of `AUTHORIZE_CONNECT` with `EPERM`, filters `setsockopt` (with `SOCK_CUSTOM_SOCKOPT` set on the socket, so SOL_SOCKET
//! options reach it too) and `ioctl`/`compat_ioctl` (see README.md for the rules), wraps `release`
//! (forgets the socket) and `accept` (children inherit the copy, as `net/socket.c: do_accept` copies
//! `sock->ops`, and are recorded), and keeps every other entry of the original table as it is.
//!
//! Module reference counting: `__sock_release()` ends with `module_put(sock->ops->owner)` and
//! `do_accept()` takes `__module_get(ops->owner)` for the child. RESTRICT therefore takes one
//! reference (`try_module_get`) for each socket it switches to our table (the original owner of the
//! built-in inet tables is NULL, so nothing is owed to it). While any restricted socket lives, `rmmod`
//! is refused, so the static tables and the wrapper code outlive every socket pointing at them.
//!
//! Per-socket state (tag, virtual addresses) is kept in a global table keyed by the `struct socket`
//! pointer (the bindings cannot reach `struct sock`'s `sk_user_data`, see README.md). An entry is
//! added under the table lock together with the `sock->ops` swap and removed by the wrapped
//! `release` (before the original release runs, so REVOKE may shut down any entry while it holds the
//! lock), which runs exactly once per socket (`__sock_release`).

use core::{cell::UnsafeCell, mem::MaybeUninit};

use kernel::{
    bindings,
    fs::LocalFile,
    sync::aref::ARef,
    prelude::*,
    sync::atomic::Relaxed,
};

use crate::{kabi, kabi_tables, tables::TableSet, COUNTERS};
use kernel::sync::Arc;

// The kernel's TCP tables (`EXPORT_SYMBOL(inet_stream_ops)`, `EXPORT_SYMBOL_GPL(inet6_stream_ops)`;
// CONFIG_IPV6=y in the test kernel). `net/inet_common.h` / `net/ipv6.h` are not part of the Rust
// bindings, so they are declared here with the bindings' `proto_ops` layout. (`improper_ctypes`:
// lint noise about opaque structs deep inside `struct module`; only the statics' addresses and the
// by-value copy in `init` are used, and `proto_ops` itself is a bindgen `repr(C)` struct.)
#[allow(improper_ctypes)]
extern "C" {
    static inet_stream_ops: bindings::proto_ops;
    static inet6_stream_ops: bindings::proto_ops;
}

// `sock_setsockopt()` (`net/core/sock.c`, `EXPORT_SYMBOL`): the generic SOL_SOCKET handler, which
// `do_sock_setsockopt` calls instead of `ops->setsockopt` when `SOCK_CUSTOM_SOCKOPT` is clear.
// Declared here because `net/sock.h` is not part of the bindings; the prototype is
// `int sock_setsockopt(struct socket *sock, int level, int op, sockptr_t optval, unsigned int optlen)`
// (`sockptr_t` is the bindings' `repr(C)` struct, passed by value as in C). `improper_ctypes`: the
// same lint noise as above, about opaque structs deep inside `struct socket` (only its address is
// passed).
#[allow(improper_ctypes)]
extern "C" {
    fn sock_setsockopt(
        sock: *mut bindings::socket,
        level: c_int,
        op: c_int,
        optval: bindings::sockptr_t,
        optlen: c_uint,
    ) -> c_int;
}

/// A restricted copy of one original table. `ops` is the first field of a `repr(C)` struct, so a
/// `sock->ops` pointing at it is also a pointer to the whole `RestrictedOps` (how the wrappers find
/// the original table).
#[repr(C)]
struct RestrictedOps {
    ops: bindings::proto_ops,
    orig: *const bindings::proto_ops,
}

/// Storage for one [`RestrictedOps`], written once by [`init`].
struct OpsCell(UnsafeCell<MaybeUninit<RestrictedOps>>);

// SAFETY: the cell is written only by `init`, before `/dev/slim` is registered (so before any
// socket can point at it or any other thread can read it); afterwards it is only read.
unsafe impl Sync for OpsCell {}

static RESTRICTED_V4: OpsCell = OpsCell(UnsafeCell::new(MaybeUninit::uninit()));
static RESTRICTED_V6: OpsCell = OpsCell(UnsafeCell::new(MaybeUninit::uninit()));

impl OpsCell {
    fn ptr(&'static self) -> *const bindings::proto_ops {
        // `ops` is at offset 0 of the repr(C) `RestrictedOps`.
        self.0.get().cast::<bindings::proto_ops>()
    }
}

/// State of one restricted socket.
struct Entry {
    sock: usize,
    /// Accepted on a restricted listener (its peer is unknown until SET_CHILD_ADDRS).
    child: bool,
    /// Restricted with `SLIM_RESTRICT_LISTENER` (AUTHORIZE_CONNECT refuses it).
    listener: bool,
    /// Restricted with `SLIM_RESTRICT_TRANSLATE`: `connect(overlay endpoint)` is translated from
    /// `tables` (see `slim_connect`).
    translate: bool,
    /// Restricted with `SLIM_RESTRICT_POLICY`: a translated connect must match a row of the policy
    /// table under `tag` (see [`translate`]).
    policy: bool,
    /// Shut down by REVOKE: every later `connect` is refused, whatever the authorization.
    revoked: bool,
    /// REVOKE shuts down every socket of a tag.
    tag: u64,
    /// The one host endpoint `connect` may reach (AUTHORIZE_CONNECT), or NONE.
    auth: kabi::SlimAddr,
    /// Virtual local address (validated: a family of this socket).
    local: kabi::SlimAddr,
    /// Virtual peer address, or NONE.
    peer: kabi::SlimAddr,
    /// The table set of the `/dev/slim` file that restricted the socket (a child: its listener's),
    /// where the connect and accept hooks of issue 15 (points 2 and 3) will look up. Keeps the set
    /// alive after that file is closed. `None` only for a child whose listener had no entry.
    tables: Option<Arc<TableSet>>,
}

kernel::sync::global_lock! {
    // SAFETY: initialised by `init()` (called once, from module init, before any other use).
    unsafe(uninit) static TABLE: Mutex<KVec<Entry>> = KVec::new();
}

/// Builds the restricted tables. Must be called exactly once, from module init, before `/dev/slim` is
/// registered.
pub(crate) fn init(module: &'static ThisModule) {
    // SAFETY: called once, from module init, before any other use of TABLE.
    unsafe { TABLE.init() };
    for (cell, orig) in [
        // (Taking the address of an extern static is safe; reading through it is not.)
        (&RESTRICTED_V4, &raw const inet_stream_ops),
        (&RESTRICTED_V6, &raw const inet6_stream_ops),
    ] {
        // SAFETY: `orig` points at a valid, initialised, immutable `proto_ops` (a kernel static).
        let mut ops = unsafe { *orig };
        ops.owner = module.as_ptr();
        ops.release = Some(slim_release);
        ops.bind = Some(slim_bind);
        ops.connect = Some(slim_connect);
        ops.accept = Some(slim_accept);
        ops.listen = Some(slim_listen);
        ops.sendmsg = Some(slim_sendmsg);
        ops.getname = Some(slim_getname);
        ops.setsockopt = Some(slim_setsockopt);
        ops.getsockopt = Some(slim_getsockopt);
        // `do_sock_getsockopt` prefers `getsockopt_iter` when set (inet's tables leave it NULL in
        // 7.3); clearing it keeps every protocol-level getsockopt going through ours.
        ops.getsockopt_iter = None;
        ops.ioctl = Some(slim_ioctl);
        // Called first by `compat_sock_ioctl` (32-bit callers), before its own translation table
        // (which would reach `dev_ioctl` without `ops->ioctl` for SIOCETHTOOL, SIOCWANDEV, ...).
        ops.compat_ioctl = Some(slim_compat_ioctl);
        // SAFETY: see `OpsCell`'s `Sync`: nothing else can access the cell yet (no socket points
        // at it and the device does not exist), so this write is exclusive.
        unsafe { (*cell.0.get()).write(RestrictedOps { ops, orig }) };
    }
}

fn is_restricted_ops(ops: *const bindings::proto_ops) -> bool {
    ops == RESTRICTED_V4.ptr() || ops == RESTRICTED_V6.ptr()
}

/// `SLIM_RESTRICT_ADOPT` of the restricted listener `sock`: from now on it (and the children it
/// accepts) refers to `tables`, the set of the router that adopts it. Under TABLE (a mutex): the
/// reference to the old set dropped here may be its last, and freeing a set may sleep.
fn adopt(
    table: &mut KVec<Entry>,
    sock: *mut bindings::socket,
    req: &kabi::SlimRestrict,
    tables: Arc<TableSet>,
) -> Result {
    let Some(e) = table.iter_mut().find(|e| e.sock == sock as usize) else {
        return Err(EEXIST);
    };
    if !e.listener || e.revoked || e.tag != req.tag || e.local.raw != req.local.raw {
        return Err(EEXIST);
    }
    e.tables = Some(tables);
    Ok(())
}

/// `SLIM_IOC_RESTRICT`: `req` has been copied from the caller and validated.
pub(crate) fn restrict(req: &kabi::SlimRestrict, tables: Arc<TableSet>) -> Result {
    let fd = u32::try_from(req.fd).map_err(|_| EBADF)?;
    // Holds a reference on the file (so on the socket) until the end of this function.
    let file = LocalFile::fget(fd)?;
    // SAFETY: `file.as_ptr()` is a valid `struct file` for as long as `file` lives.
    let sock = unsafe { bindings::sock_from_file(file.as_ptr()) };
    if sock.is_null() {
        return Err(ENOTSOCK);
    }
    // Allocate the entry before taking any decision, so the swap below cannot fail half-way.
    let mut table = TABLE.lock();
    table.reserve(1, GFP_KERNEL)?;
    // SAFETY: `sock` is the live socket of `file` (we hold a reference to the file). `sock->ops`
    // changes only under TABLE (our swap) or in `__sock_release` (impossible while we hold the file).
    let ops = unsafe { core::ptr::read_volatile(&raw const (*sock).ops) };
    let (v4, v6) = (&raw const inet_stream_ops, &raw const inet6_stream_ops);
    let new_ops = if ops == v4 {
        RESTRICTED_V4.ptr()
    } else if ops == v6 {
        RESTRICTED_V6.ptr()
    } else if is_restricted_ops(ops) {
        if req.flags & kabi::SLIM_RESTRICT_ADOPT != 0 {
            return adopt(&mut table, sock, req, tables);
        }
        return Err(EEXIST);
    } else {
        return Err(EPROTONOSUPPORT);
    };
    // The virtual addresses must be of the socket's own family (getname answers them verbatim).
    // SAFETY: `new_ops` is one of our initialised 'static tables.
    let family = unsafe { (*new_ops).family };
    if c_int::from(req.local.family()) != family
        || (!req.peer.is_none() && c_int::from(req.peer.family()) != family)
    {
        return Err(EINVAL);
    }
    // One module reference per socket on our table: dropped by `__sock_release`'s
    // `module_put(ops->owner)`. The module is live (we are inside its ioctl, whose file holds it).
    // SAFETY: `THIS_MODULE` of this module; `try_module_get` may be called from process context.
    let owner = unsafe { (*new_ops).owner };
    // SAFETY: `owner` is this module (set by `init`), live while its ioctl runs.
    if !unsafe { bindings::try_module_get(owner) } {
        return Err(ENODEV);
    }
    let entry = Entry {
        sock: sock as usize,
        child: false,
        listener: req.flags & kabi::SLIM_RESTRICT_LISTENER != 0,
        translate: req.flags & kabi::SLIM_RESTRICT_TRANSLATE != 0,
        policy: req.flags & kabi::SLIM_RESTRICT_POLICY != 0,
        revoked: false,
        tag: req.tag,
        auth: kabi::SlimAddr::NONE,
        local: req.local,
        peer: req.peer,
        tables: Some(tables),
    };
    if table.push_within_capacity(entry).is_err() {
        // Unreachable (capacity reserved above under the same lock); undo the reference anyway.
        // SAFETY: drops the reference taken just above.
        unsafe { bindings::module_put(owner) };
        return Err(ENOMEM);
    }
    // SAFETY: as above, `sock` is live; the new table is 'static and outlives the socket (module
    // reference). Other CPUs read `sock->ops` with READ_ONCE; a syscall already running keeps using
    // the original ops, which stay valid (kernel statics).
    unsafe { core::ptr::write_volatile(&raw mut (*sock).ops, new_ops) };
    // After the swap (still under TABLE): from now on SOL_SOCKET options reach our `setsockopt`.
    // Before this point a concurrent SOL_SOCKET setsockopt still goes to `sock_setsockopt` directly,
    // i.e. it is ordered before the restriction (never a spurious error from the original ops).
    // SAFETY: `sock` is live (see above).
    unsafe { set_custom_sockopt(sock) };
    drop(table);
    COUNTERS.restricted_live.fetch_add(1, Relaxed);
    COUNTERS.restricted_total.fetch_add(1, Relaxed);
    Ok(())
}

/// The original table of a restricted socket.
///
/// # Safety
/// `sock` must be a live socket whose `ops` is one of our restricted tables (true inside every
/// wrapper: they are only reachable through those tables).
unsafe fn orig_ops(sock: *mut bindings::socket) -> &'static bindings::proto_ops {
    // SAFETY: per the contract, `sock->ops` points at the `ops` field (offset 0) of a 'static
    // `RestrictedOps`, whose `orig` is a kernel static table.
    unsafe {
        let r = (*sock).ops.cast::<RestrictedOps>();
        &*(*r).orig
    }
}

fn refuse(kind: usize) -> c_int {
    COUNTERS.refusals[kind].fetch_add(1, Relaxed);
    -(bindings::EPERM as c_int)
}

/// A connect destination reduced to what decides where the connection goes: IPv4 (also an IPv6
/// v4-mapped `::ffff:a.b.c.d`, which `tcp_v6_connect` hands to `tcp_v4_connect`), or IPv6 address
/// and scope id (the scope picks the interface of a link-local address). Flow info is ignored.
#[derive(PartialEq, Eq)]
struct Dest {
    v4: bool,
    ip: [u8; 16],
    port: [u8; 2],
    scope: [u8; 4],
}

/// `b`: the first `min(len, 28)` bytes of a `sockaddr_in`/`sockaddr_in6` (kabi `SlimAddr` layout).
/// `None` for another family or a length the kernel's connect would refuse anyway.
fn dest_of(b: &[u8]) -> Option<Dest> {
    if b.len() < 2 {
        return None;
    }
    let mut d = Dest { v4: true, ip: [0; 16], port: [b.get(2).copied()?, b.get(3).copied()?], scope: [0; 4] };
    match u16::from_ne_bytes([b[0], b[1]]) {
        kabi::AF_INET if b.len() >= kabi::SOCKADDR_IN_LEN => d.ip[..4].copy_from_slice(&b[4..8]),
        // SIN6_LEN_RFC2133 (24): the shortest sockaddr_in6 `tcp_v6_connect` accepts (no scope id).
        kabi::AF_INET6 if b.len() >= 24 => {
            let ip = &b[8..24];
            if ip[..10].iter().all(|&x| x == 0) && ip[10] == 0xff && ip[11] == 0xff {
                d.ip[..4].copy_from_slice(&ip[12..16]);
            } else {
                d.v4 = false;
                d.ip.copy_from_slice(ip);
                if b.len() >= kabi::SOCKADDR_IN6_LEN {
                    d.scope.copy_from_slice(&b[24..28]);
                }
            }
        }
        _ => return None,
    }
    Some(d)
}

/// `connect`: to the endpoint authorized by AUTHORIZE_CONNECT, delegated to the original
/// `connect` as it is; on a socket restricted with `SLIM_RESTRICT_TRANSLATE`, to an overlay endpoint
/// of its table set's listeners table, translated to the row's host endpoint (see [`translate`]). In
/// both cases blocking / non-blocking semantics, EINPROGRESS, EALREADY, EISCONN and SO_ERROR are the
/// kernel's. Anything else (no authorization, another address, AF_UNSPEC "disconnect", a revoked
/// socket) is refused with EPERM; an overlay endpoint with no row, with ENOENT.
unsafe extern "C" fn slim_connect(
    sock: *mut bindings::socket,
    addr: *mut bindings::sockaddr_unsized,
    len: c_int,
    flags: c_int,
) -> c_int {
    let n = usize::try_from(len).unwrap_or(0).min(kabi::SOCKADDR_IN6_LEN);
    let mut buf = [0u8; kabi::SOCKADDR_IN6_LEN];
    if !addr.is_null() {
        // SAFETY: the socket layer passes the kernel copy of the caller's address (`move_addr_to_kernel`
        // into a `sockaddr_storage`), valid for `len` bytes; we read at most `min(len, 28)` of them
        // into a local array.
        unsafe { core::ptr::copy_nonoverlapping(addr.cast::<u8>(), buf.as_mut_ptr(), n) };
    }
    let want = dest_of(&buf[..n]);
    let (allowed, tables) = {
        let table = TABLE.lock();
        match table.iter().find(|e| e.sock == sock as usize) {
            Some(e) if !e.revoked => {
                let authorized = !e.auth.is_none()
                    && want.is_some()
                    && want == dest_of(&e.auth.raw[..e.auth.sockaddr_len().unwrap_or(0)]);
                // A translating socket translates its one connect: once it has a peer, any other
                // connect is refused like one of an authorized socket to another endpoint (the
                // library answers a program's repeated connect itself, from SO_ERROR).
                let translate = e.translate && e.peer.is_none();
                let policy = e.policy.then_some(e.tag);
                (authorized, if translate { e.tables.clone().map(|t| (t, policy)) } else { None })
            }
            _ => (false, None),
        }
    };
    if allowed {
        // SAFETY: wrapper contract (see `orig_ops`); the arguments are passed on unchanged.
        return unsafe { orig_connect(sock, addr, len, flags) };
    }
    match (tables, want) {
        // SAFETY: wrapper contract, as above.
        (Some((t, policy)), Some(d)) => unsafe { translate(sock, &t, policy, &d, flags) },
        _ => refuse(kabi::SLIM_REFUSED_CONNECT),
    }
}

/// The original `connect` of a restricted socket.
///
/// # Safety
/// As for [`orig_ops`]; `addr` valid for `len` bytes.
unsafe fn orig_connect(
    sock: *mut bindings::socket,
    addr: *mut bindings::sockaddr_unsized,
    len: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: per the contract.
    unsafe {
        match orig_ops(sock).connect {
            Some(f) => f(sock, addr, len, flags),
            None => -(bindings::EOPNOTSUPP as c_int),
        }
    }
}

/// A translated connect (issue 15, point 2): the overlay endpoint `d` is looked up in the listeners
/// table of `tables` (one snapshot, no lock held during the connect); the first row's host endpoint
/// (rows of one endpoint are spread over by socket) is connected to by the original `connect`, in
/// this socket's family (v4-mapped for an IPv6 socket). Once that connect has started (0 or
/// EINPROGRESS), `getpeername` answers `d`. ENOENT: no row, or an IPv6 host endpoint for an IPv4
/// socket (the caller takes the overlay). `policy`: the socket's tag if it was restricted with
/// `SLIM_RESTRICT_POLICY`; then `d` must also be allowed by a row of the same snapshot's policy
/// table under that tag (issue 15, point 4), else ECONNREFUSED before anything is sent, counted.
///
/// # Safety
/// As for [`orig_ops`].
unsafe fn translate(
    sock: *mut bindings::socket,
    tables: &TableSet,
    policy: Option<u64>,
    d: &Dest,
    flags: c_int,
) -> c_int {
    let enoent = -(bindings::ENOENT as c_int);
    let port = u16::from_be_bytes(d.port);
    let key = if d.v4 {
        kabi::SlimAddr::v4([d.ip[0], d.ip[1], d.ip[2], d.ip[3]], port)
    } else {
        kabi::SlimAddr::v6(d.ip, port, 0, 0)
    };
    let snap = tables.snapshot();
    if let Some(tag) = policy {
        if !kabi_tables::policy_allows(snap.rows(3), tag, &key) {
            COUNTERS.policy_denied.fetch_add(1, Relaxed);
            return -(bindings::ECONNREFUSED as c_int);
        }
    }
    let rows = snap.rows(0);
    let range = kabi_tables::key_range(rows, &key);
    let count = range.len();
    if count == 0 {
        COUNTERS.not_found.fetch_add(1, Relaxed);
        return enoent;
    }
    let pick = range.start + (sock as usize >> 6) % count;
    let Some(host) = rows.get(pick).map(|r| r.value) else {
        return enoent;
    };
    // SAFETY: `sock->ops` is one of our initialised 'static tables (wrapper contract).
    let family = unsafe { (*(*sock).ops).family };
    let Some(host) = in_family(&host, family) else {
        return enoent;
    };
    let Some(peer) = in_family(&key, family) else {
        return enoent;
    };
    drop(snap);
    let mut sa = host.raw;
    let len = host.sockaddr_len().unwrap_or(0) as c_int;
    // SAFETY: wrapper contract; `sa` is a local `sockaddr_in`/`sockaddr_in6` of `len` bytes.
    let r = unsafe { orig_connect(sock, sa.as_mut_ptr().cast(), len, flags) };
    if r == 0 || r == -(bindings::EINPROGRESS as c_int) {
        let mut table = TABLE.lock();
        if let Some(e) = table.iter_mut().find(|e| e.sock == sock as usize) {
            e.peer = peer;
        }
        COUNTERS.translated.fetch_add(1, Relaxed);
    }
    r
}

/// `a` (an IPv4 or IPv6 address of the tables' canonical form) as an address of a socket of
/// `family`: IPv4 in an IPv6 socket as v4-mapped; None for IPv6 in an IPv4 socket.
fn in_family(a: &kabi::SlimAddr, family: c_int) -> Option<kabi::SlimAddr> {
    let fam = c_int::from(a.family());
    if fam == family {
        return Some(*a);
    }
    if fam == kabi::AF_INET as c_int && family == kabi::AF_INET6 as c_int {
        let mut ip = [0u8; 16];
        ip[10] = 0xff;
        ip[11] = 0xff;
        ip[12..16].copy_from_slice(&a.raw[4..8]);
        return Some(kabi::SlimAddr::v6(ip, a.port(), 0, 0));
    }
    None
}

/// The restricted socket of `fd` (holding the file) and the family of its restricted table.
/// `ENOENT` if `fd` is a socket that is not restricted.
fn restricted_sock(fd: i32) -> Result<(ARef<LocalFile>, *mut bindings::socket, c_int)> {
    let fd = u32::try_from(fd).map_err(|_| EBADF)?;
    let file = LocalFile::fget(fd)?;
    // SAFETY: `file.as_ptr()` is a valid `struct file` for as long as `file` lives.
    let sock = unsafe { bindings::sock_from_file(file.as_ptr()) };
    if sock.is_null() {
        return Err(ENOTSOCK);
    }
    // SAFETY: `sock` is live while we hold `file`; `ops` is only swapped by RESTRICT (to one of
    // our 'static tables) and cleared in `__sock_release` (impossible while we hold the file).
    let ops = unsafe { core::ptr::read_volatile(&raw const (*sock).ops) };
    if !is_restricted_ops(ops) {
        return Err(ENOENT);
    }
    // SAFETY: `ops` is one of our initialised 'static tables.
    let family = unsafe { (*ops).family };
    Ok((file, sock, family))
}

/// `SLIM_IOC_AUTHORIZE_CONNECT` (`req` validated): the one endpoint `fd` may connect to.
pub(crate) fn authorize_connect(req: &kabi::SlimAuthorizeConnect) -> Result {
    let (_file, sock, family) = restricted_sock(req.fd)?;
    // An IPv4 socket can only reach an IPv4 endpoint; an IPv6 one either (v4-mapped for IPv4).
    if family == c_int::from(kabi::AF_INET) && req.host.family() != kabi::AF_INET {
        return Err(EINVAL);
    }
    let mut table = TABLE.lock();
    let e = table.iter_mut().find(|e| e.sock == sock as usize).ok_or(ENOENT)?;
    if e.listener {
        return Err(EINVAL);
    }
    // SAFETY: `sock` is live (we hold its file); `state` is an int the socket layer updates under
    // the socket lock; a racy read only decides between EISCONN and a (harmless) re-authorization.
    let state = unsafe { core::ptr::read_volatile(&raw const (*sock).state) };
    if e.child || state != bindings::socket_state_SS_UNCONNECTED {
        return Err(EISCONN);
    }
    e.auth = req.host;
    Ok(())
}

/// `SLIM_IOC_SET_CHILD_ADDRS` (`req` validated): the virtual addresses of an accepted child.
pub(crate) fn set_child_addrs(req: &kabi::SlimChildAddrs) -> Result {
    let (_file, sock, family) = restricted_sock(req.fd)?;
    if c_int::from(req.local.family()) != family || c_int::from(req.peer.family()) != family {
        return Err(EINVAL);
    }
    let mut table = TABLE.lock();
    let e = table.iter_mut().find(|e| e.sock == sock as usize).ok_or(ENOENT)?;
    if !e.child {
        return Err(EINVAL);
    }
    e.local = req.local;
    e.peer = req.peer;
    Ok(())
}

/// `SLIM_IOC_REVOKE` (`req` validated): shuts down (both directions) every restricted socket of
/// `tag`; returns how many.
pub(crate) fn revoke(tag: u64) -> u32 {
    let mut n = 0u32;
    let mut table = TABLE.lock();
    for e in table.iter_mut().filter(|e| e.tag == tag) {
        e.revoked = true;
        // SAFETY: an entry names a live socket: entries are removed by `slim_release` before the
        // original release frees anything, and that removal needs TABLE, which we hold. The
        // socket's ops are our table, whose `shutdown` is the original `inet_shutdown` (takes the
        // socket lock; TABLE -> socket lock is the only order between the two). Its result is not
        // needed: an unconnected socket answers ENOTCONN but still gets `sk_shutdown` set.
        let _ = unsafe {
            bindings::kernel_sock_shutdown(e.sock as *mut bindings::socket, bindings::sock_shutdown_cmd_SHUT_RDWR)
        };
        n += 1;
    }
    drop(table);
    COUNTERS.revoked_total.fetch_add(u64::from(n), Relaxed);
    n
}

unsafe extern "C" fn slim_bind(
    _sock: *mut bindings::socket,
    _addr: *mut bindings::sockaddr_unsized,
    _len: c_int,
) -> c_int {
    refuse(kabi::SLIM_REFUSED_BIND)
}

unsafe extern "C" fn slim_listen(_sock: *mut bindings::socket, _backlog: c_int) -> c_int {
    refuse(kabi::SLIM_REFUSED_LISTEN)
}

unsafe extern "C" fn slim_sendmsg(
    sock: *mut bindings::socket,
    msg: *mut bindings::msghdr,
    len: usize,
) -> c_int {
    // SAFETY: the socket layer passes a valid msghdr; `msg_flags` holds the caller's send flags,
    // `msg_name`/`msg_namelen` the destination of sendto/sendmsg (NULL/0 without one).
    let (flags, name, namelen) = unsafe { ((*msg).msg_flags, (*msg).msg_name, (*msg).msg_namelen) };
    if flags & bindings::MSG_FASTOPEN != 0 {
        // A fast-open send on an unconnected socket is an implicit connect.
        return refuse(kabi::SLIM_REFUSED_FASTOPEN);
    }
    if !name.is_null() && namelen > 0 {
        // TCP ignores a destination on a connected socket and treats one on an unconnected socket
        // as an error, but a restricted socket names nothing but its one peer: refuse any.
        return refuse(kabi::SLIM_REFUSED_SENDMSG_ADDR);
    }
    // SAFETY: wrapper contract (see `orig_ops`); the arguments are passed on unchanged.
    unsafe {
        match orig_ops(sock).sendmsg {
            Some(f) => f(sock, msg, len),
            None => -(bindings::EOPNOTSUPP as c_int),
        }
    }
}

unsafe extern "C" fn slim_accept(
    sock: *mut bindings::socket,
    newsock: *mut bindings::socket,
    arg: *mut bindings::proto_accept_arg,
) -> c_int {
    // `do_accept` has already set `newsock->ops` to our table and taken a module reference for it.
    // It does not copy `sock->flags`: the child needs SOCK_CUSTOM_SOCKOPT too, set before it is
    // installed in any fd table (as `mptcp_stream_accept` / `unix_accept` do).
    // SAFETY: `newsock` is the live, not yet published socket `do_accept` allocated.
    unsafe { set_custom_sockopt(newsock) };
    // Room for the child's entry, allocated before the original accept dequeues a connection (an
    // allocation failure here refuses the accept with the connection still queued).
    let mut table = TABLE.lock();
    if table.reserve(1, GFP_KERNEL).is_err() {
        return -(bindings::ENOMEM as c_int);
    }
    drop(table);
    // SAFETY: wrapper contract; arguments passed on unchanged.
    let err = unsafe {
        match orig_ops(sock).accept {
            Some(f) => f(sock, newsock, arg),
            None => -(bindings::EOPNOTSUPP as c_int),
        }
    };
    if err >= 0 {
        let tables = {
            let table = TABLE.lock();
            table.iter().find(|e| e.sock == sock as usize).and_then(|e| e.tables.clone())
        };
        // Accept by the module: outside TABLE (the original getname takes the socket lock).
        // SAFETY: `newsock` is the live child the original accept just filled in; its ops are ours.
        let found = tables.as_ref().and_then(|t| unsafe { identify_by_tables(newsock, t) });
        let mut table = TABLE.lock();
        let parent = table
            .iter()
            .find(|e| e.sock == sock as usize)
            .map(|e| (e.tag, e.local, e.revoked, e.tables.clone()));
        let (tag, local, revoked, tables) = parent.unwrap_or((0, kabi::SlimAddr::NONE, false, None));
        // Identified from the tables, or until SET_CHILD_ADDRS: the listener's local address, no
        // (all-zero) peer.
        let (local, peer) = found.unwrap_or((local, kabi::SlimAddr::NONE));
        let child = Entry {
            sock: newsock as usize,
            child: true,
            translate: false,
            policy: false,
            listener: false,
            revoked,
            tag,
            auth: kabi::SlimAddr::NONE,
            local,
            peer,
            tables,
        };
        // The capacity reserved above may have been taken by a concurrent RESTRICT or accept: then
        // grow the table here. TABLE is a mutex, so a sleeping allocation under it is allowed. If
        // even that fails, the accept fails with ENOMEM: `do_accept` releases the child (through
        // our `release`, which tolerates the missing entry) and the client sees the connection
        // closed; a child without an entry would have no address, and REVOKE would miss it. The
        // entry `push` drops on failure is dropped under TABLE: its set reference may be the last,
        // and freeing a set may sleep.
        if table.push(child, GFP_KERNEL).is_err() {
            return -(bindings::ENOMEM as c_int);
        }
        COUNTERS.restricted_live.fetch_add(1, Relaxed);
        COUNTERS.children_total.fetch_add(1, Relaxed);
        if revoked {
            // A REVOKE of the listener's tag ran while the original accept was dequeuing this child
            // (after it, the listener is shut down and accept fails): the child was not in the table
            // for REVOKE to find, so shut it down here, as REVOKE would have. Under TABLE, so with
            // REVOKE's lock order (TABLE -> socket lock); either REVOKE's walk sees the child or we
            // see the listener's `revoked`. Not added to `revoked_total`: REVOKE has already
            // answered its count.
            // SAFETY: `newsock` is the live child (not yet published); its ops are our table,
            // whose `shutdown` is the original `inet_shutdown`.
            let _ = unsafe {
                bindings::kernel_sock_shutdown(newsock, bindings::sock_shutdown_cmd_SHUT_RDWR)
            };
        }
    }
    err
}

/// Accept by the module (issue 15, point 3): the virtual addresses of a child accepted on a
/// restricted listener, from the tables of the listener's set. The client's host endpoint must be a
/// leased port (leases table: the holder's overlay address; the overlay port is the leased port, as
/// the client's getsockname answers), and the child's host endpoint the host listener of exactly one
/// overlay endpoint of the client's family (listeners table, by value). Returns (local, peer) in the
/// child's family. None, a miss: no lease (a connection the router announced, or one from a port
/// nobody leased), a host listener that serves several overlay endpoints, or no row: the library
/// asks the router (IdentifyChild), which identifies it or refuses it.
///
/// # Safety
/// `newsock` is the live child the original accept returned (not yet published); its `ops` is one of
/// our tables.
unsafe fn identify_by_tables(
    newsock: *mut bindings::socket,
    tables: &TableSet,
) -> Option<(kabi::SlimAddr, kabi::SlimAddr)> {
    // SAFETY: per the contract.
    let peer_host = canonical(unsafe { orig_getname(newsock, 1) }?)?;
    // SAFETY: per the contract.
    let local_host = canonical(unsafe { orig_getname(newsock, 0) }?)?;
    let snap = tables.snapshot();
    let leases = snap.rows(table_index(kabi_tables::SLIM_TABLE_LEASES)?);
    let range = kabi_tables::key_range(leases, &peer_host);
    if range.len() != 1 {
        return None;
    }
    let owner = leases.get(range.start)?.value;
    let mut key = None;
    for row in snap.rows(table_index(kabi_tables::SLIM_TABLE_LISTENERS)?) {
        if row.value.raw == local_host.raw && row.key.family() == owner.family() {
            if key.is_some() {
                return None;
            }
            key = Some(row.key);
        }
    }
    let local = key?;
    let peer = match owner.family() {
        kabi::AF_INET => {
            kabi::SlimAddr::v4([owner.raw[4], owner.raw[5], owner.raw[6], owner.raw[7]], peer_host.port())
        }
        _ => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&owner.raw[8..24]);
            kabi::SlimAddr::v6(ip, peer_host.port(), 0, 0)
        }
    };
    drop(snap);
    // SAFETY: `newsock->ops` is one of our initialised 'static tables (per the contract).
    let family = unsafe { (*(*newsock).ops).family };
    Some((in_family(&local, family)?, in_family(&peer, family)?))
}

/// The index of table id `id` in a snapshot's rows.
fn table_index(id: u16) -> Option<usize> {
    kabi_tables::SLIM_TABLES.iter().position(|&t| t == id)
}

/// A host endpoint as the original `getname` of a restricted socket answers it (`peer`: 0 local,
/// 1 peer), as a `SlimAddr`. None on an error (not connected).
///
/// # Safety
/// As for [`orig_ops`]; `sock` is live. May sleep (the original takes the socket lock).
unsafe fn orig_getname(sock: *mut bindings::socket, peer: c_int) -> Option<kabi::SlimAddr> {
    let mut a = kabi::SlimAddr::NONE;
    // SAFETY: per the contract; `a.raw` holds 28 bytes, what `inet6_getname` writes at most
    // (`inet_getname` 16). The buffer is suitably aligned for `sockaddr` (alignment 2 or less).
    let n = unsafe {
        match orig_ops(sock).getname {
            Some(f) => f(sock, a.raw.as_mut_ptr().cast(), peer),
            None => return None,
        }
    };
    (n > 0).then_some(a)
}

/// `a` in the tables' canonical form: an IPv4-mapped IPv6 address as IPv4, IPv6 flow info and
/// scope id dropped (see `kabi_tables.rs`). None for another family.
fn canonical(a: kabi::SlimAddr) -> Option<kabi::SlimAddr> {
    let d = dest_of(&a.raw[..a.sockaddr_len().ok()?])?;
    let port = u16::from_be_bytes(d.port);
    Some(if d.v4 {
        kabi::SlimAddr::v4([d.ip[0], d.ip[1], d.ip[2], d.ip[3]], port)
    } else {
        kabi::SlimAddr::v6(d.ip, port, 0, 0)
    })
}

unsafe extern "C" fn slim_release(sock: *mut bindings::socket) -> c_int {
    // Forget the socket BEFORE the original release frees `sock->sk`: REVOKE calls
    // `kernel_sock_shutdown` on table entries while holding TABLE, so an entry must never name a
    // socket whose `sk` is gone (or going). Lock order: inode lock (held by `__sock_release`) ->
    // TABLE here; TABLE -> socket lock in REVOKE; nothing takes TABLE under the socket lock.
    let mut table = TABLE.lock();
    let mut gone = None;
    if let Some(i) = table.iter().position(|e| e.sock == sock as usize) {
        // Order does not matter; `swap_remove` would be enough but KVec's `remove` is fine too.
        gone = table.remove(i).ok();
        COUNTERS.restricted_live.fetch_sub(1, Relaxed);
    }
    drop(table);
    // Outside TABLE: the entry may hold the last reference to a closed file's table set.
    drop(gone);
    // SAFETY: wrapper contract; `__sock_release` calls this exactly once, then sets `sock->ops` to
    // NULL and drops the module reference (after we return).
    unsafe {
        match orig_ops(sock).release {
            Some(f) => f(sock),
            None => 0,
        }
    }
}

/// `getsockname` (`peer == 0`), `getpeername` (1) and `SO_PEERNAME` / `accept`'s address (2): the
/// recorded virtual addresses, never the host's. An accepted child whose peer is not yet recorded
/// answers the all-zero address of its family (an error would make `accept()` fail with
/// `ECONNABORTED`, see `do_accept`); an unconnected socket without a peer answers `ENOTCONN`.
unsafe extern "C" fn slim_getname(
    sock: *mut bindings::socket,
    addr: *mut bindings::sockaddr,
    peer: c_int,
) -> c_int {
    let enotconn = -(bindings::ENOTCONN as c_int);
    let table = TABLE.lock();
    let Some(e) = table.iter().find(|e| e.sock == sock as usize) else {
        // Not in the table (never for a socket with our ops: RESTRICT records it before the swap,
        // `slim_accept` a child before `do_accept` asks): reveal nothing.
        return enotconn;
    };
    let mut a = if peer != 0 { e.peer } else { e.local };
    if peer == 0 && e.translate && e.peer.is_none() && !e.local.is_none() {
        // A translating socket before its connect: what the program sees of it is a fresh
        // socket's (the wildcard address of its family, port 0), as the library hands it out
        // from socket() (a hosted socket); its address is its own from the connect on.
        a = kabi::SlimAddr::NONE;
        a.raw[..2].copy_from_slice(&e.local.raw[..2]);
    } else if a.is_none() {
        if !(peer != 0 && e.child) || e.local.is_none() {
            return enotconn;
        }
        a = kabi::SlimAddr::NONE;
        a.raw[..2].copy_from_slice(&e.local.raw[..2]);
    }
    drop(table);
    let Ok(len) = a.sockaddr_len() else {
        return enotconn;
    };
    // SAFETY: `a` has this socket's family (checked by RESTRICT; a child's comes from its listener),
    // so `len` is exactly what the original `inet_getname` / `inet6_getname` writes (16 or 28 bytes):
    // every caller's buffer holds that much (`net/socket.c` and `sk_getsockopt` pass a
    // `sockaddr_storage`). `a.raw` is a local array, so the ranges cannot overlap.
    unsafe { core::ptr::copy_nonoverlapping(a.raw.as_ptr(), addr.cast::<u8>(), len) };
    len as c_int
}

/// Sets `SOCK_CUSTOM_SOCKOPT` in `sock->flags`, so that `do_sock_setsockopt` passes SOL_SOCKET options
/// to `ops->setsockopt` (ours) instead of calling `sock_setsockopt` itself (`net/socket.c`).
/// `sock->flags` holds other bits changed concurrently with atomic bitops (`SOCK_NOSPACE`, ...),
/// so this is the kernel's atomic `set_bit` (through its Rust helper), never a plain read-modify-write.
///
/// # Safety
/// `sock` must be a live socket.
unsafe fn set_custom_sockopt(sock: *mut bindings::socket) {
    // SAFETY: `sock` is live, so `&sock->flags` is a valid `unsigned long`; `set_bit` is atomic.
    unsafe {
        bindings::set_bit(
            bindings::socket_flags_SOCK_CUSTOM_SOCKOPT as c_ulong,
            (&raw mut (*sock).flags).cast::<c_ulong>(),
        )
    };
}

// Option numbers (Linux uapi, the same on every architecture for these; asm-generic/socket.h,
// linux/in.h, linux/in6.h). Not all of them are in the bindings.
const SO_PRIORITY: c_int = 12;
const SO_BINDTODEVICE: c_int = 25;
const SO_MARK: c_int = 36;
const SO_BINDTOIFINDEX: c_int = 62;
const IP_TOS: c_int = 1;
const IP_FREEBIND: c_int = 15;
const IP_TRANSPARENT: c_int = 19;
const IPV6_ADDRFORM: c_int = 1;
const IPV6_TCLASS: c_int = 67;
const IPV6_TRANSPARENT: c_int = 75;
const IPV6_FREEBIND: c_int = 78;
const _: () = {
    assert!(SO_MARK as u32 == bindings::SO_MARK);
    assert!(IP_TRANSPARENT as u32 == bindings::IP_TRANSPARENT);
    assert!(IPV6_ADDRFORM as u32 == bindings::IPV6_ADDRFORM);
};

/// The highest `SO_PRIORITY` a restricted socket may set: 0..=6 is what `sk_setsockopt` allows
/// without CAP_NET_ADMIN/CAP_NET_RAW anyway; anything else (higher or negative) is refused.
const MAX_PRIORITY: c_int = 6;
/// IP precedence bits of a TOS / traffic class byte (IPTOS_PREC_MASK). A restricted socket may set
/// the low bits (ECN, the old low-delay/throughput/reliability bits) but never a precedence/DSCP
/// class above best effort (CS1..CS7, AF*, EF all have one of these bits set).
const TOS_PREC_MASK: c_int = 0xE0;

/// Reads an option value the way `ip_setsockopt` does: an `int` if `optlen >= 4`, else one byte
/// if `optlen >= 1`; `None` when `optlen == 0` (or < 4 with `int_only`): then the original handler
/// decides (it answers EINVAL or treats it as 0, never a raise).
fn read_optval(optval: &bindings::sockptr_t, optlen: c_uint, int_only: bool) -> Result<Option<c_int>> {
    let len = if optlen >= 4 { 4 } else if optlen >= 1 && !int_only { 1 } else { return Ok(None) };
    let mut buf = [0u8; 4];
    if optval.is_kernel() {
        // SAFETY: a kernel sockptr (io_uring, a BPF-rewritten option) points at `optlen` readable
        // bytes; `len <= optlen`; `buf` is a local array, so the ranges do not overlap.
        unsafe {
            let p = optval.__bindgen_anon_1.kernel.cast::<u8>();
            core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), len);
        }
    } else {
        // SAFETY: reading the union field as the user pointer is what `copy_from_sockptr` does when
        // `is_kernel` is false; the pointer itself is only used through the checked `UserSlice`.
        let p = unsafe { optval.__bindgen_anon_1.user } as usize;
        kernel::uaccess::UserSlice::new(UserPtr::from_addr(p), len)
            .reader()
            .read_slice(&mut buf[..len])?;
    }
    Ok(Some(if len == 4 { c_int::from_ne_bytes(buf) } else { c_int::from(buf[0]) }))
}

/// Whether a restricted socket may set this option (`Ok(false)`: refuse with EPERM).
fn setsockopt_allowed(level: c_int, optname: c_int, optval: &bindings::sockptr_t, optlen: c_uint) -> Result<bool> {
    const SOL_SOCKET: c_int = bindings::SOL_SOCKET as c_int;
    const SOL_IP: c_int = bindings::SOL_IP as c_int;
    const SOL_IPV6: c_int = bindings::SOL_IPV6 as c_int;
    // By level, whatever the socket's family: an IPv6 socket also accepts SOL_IP options.
    Ok(match (level, optname) {
        (SOL_SOCKET, SO_BINDTODEVICE | SO_BINDTOIFINDEX | SO_MARK) => false,
        (SOL_SOCKET, SO_PRIORITY) => match read_optval(optval, optlen, true)? {
            Some(v) => (0..=MAX_PRIORITY).contains(&v),
            None => true,
        },
        (SOL_IP, IP_TRANSPARENT | IP_FREEBIND) => false,
        (SOL_IP, IP_TOS) => match read_optval(optval, optlen, false)? {
            Some(v) => v & TOS_PREC_MASK == 0 || !(0..=255).contains(&v),
            None => true,
        },
        (SOL_IPV6, IPV6_ADDRFORM | IPV6_TRANSPARENT | IPV6_FREEBIND) => false,
        // -1 means "the default" (0); values outside -1..=255 get EINVAL from ipv6_setsockopt.
        (SOL_IPV6, IPV6_TCLASS) => match read_optval(optval, optlen, true)? {
            Some(v) => v & TOS_PREC_MASK == 0 || !(0..=255).contains(&v),
            None => true,
        },
        _ => true,
    })
}

unsafe extern "C" fn slim_setsockopt(
    sock: *mut bindings::socket,
    level: c_int,
    optname: c_int,
    optval: bindings::sockptr_t,
    optlen: c_uint,
) -> c_int {
    match setsockopt_allowed(level, optname, &optval, optlen) {
        Ok(true) => {}
        Ok(false) => return refuse(kabi::SLIM_REFUSED_SETSOCKOPT),
        Err(e) => return e.to_errno(),
    }
    if level == bindings::SOL_SOCKET as c_int {
        // What `do_sock_setsockopt` would have called without SOCK_CUSTOM_SOCKOPT (the inet
        // tables' own `sock_common_setsockopt` only handles the protocol levels).
        // SAFETY: `sock` is live (we are called from its setsockopt); arguments unchanged.
        return unsafe { sock_setsockopt(sock, level, optname, optval, optlen) };
    }
    // SAFETY: wrapper contract (see `orig_ops`); the arguments are passed on unchanged.
    unsafe {
        match orig_ops(sock).setsockopt {
            Some(f) => f(sock, level, optname, optval, optlen),
            None => -(bindings::ENOPROTOOPT as c_int),
        }
    }
}

/// `IP_PKTOPTIONS` (`linux/in.h`): answers an `IP_PKTINFO` message holding the socket's own (host)
/// address. `IPV6_2292PKTOPTIONS` (`linux/in6.h`): the options of the last received packet, which
/// can include its (host) destination address.
const IP_PKTOPTIONS: c_int = 9;
const IPV6_2292PKTOPTIONS: c_int = 6;

/// `getsockopt` below SOL_SOCKET (SOL_SOCKET itself is answered by `sk_getsockopt` without the
/// ops; its `SO_PEERNAME` goes through our `getname`): refuses the options that would reveal a
/// host address, delegates the rest.
unsafe extern "C" fn slim_getsockopt(
    sock: *mut bindings::socket,
    level: c_int,
    optname: c_int,
    optval: *mut c_char,
    optlen: *mut c_int,
) -> c_int {
    // By level, whatever the socket's family (an IPv6 socket also answers SOL_IP options).
    if matches!(
        (level, optname),
        (L_IP, IP_PKTOPTIONS) | (L_IPV6, IPV6_2292PKTOPTIONS)
    ) {
        return refuse(kabi::SLIM_REFUSED_GETSOCKOPT);
    }
    // SAFETY: wrapper contract (see `orig_ops`); the user pointers are passed on unchanged.
    unsafe {
        match orig_ops(sock).getsockopt {
            Some(f) => f(sock, level, optname, optval, optlen),
            None => -(bindings::EOPNOTSUPP as c_int),
        }
    }
}
const L_IP: c_int = bindings::SOL_IP as c_int;
const L_IPV6: c_int = bindings::SOL_IPV6 as c_int;

/// Socket ioctls a restricted socket may not use: the interface / routing / ARP / bridge / device
/// range `SIOCADDRT` (0x890B) ..= `SIOCDEVPRIVATE + 15` (0x89FF), which covers every SIOCGIF* and
/// SIOCSIF*, SIOCGIFINDEX, SIOCGIFNAME, SIOCGARP, SIOCETHTOOL, SIOCGMIIPHY, SIOCGHWTSTAMP, ...: they
/// act on the host's network namespace (`sock_net(sk)`). Except `SIOCOUTQNSD` (0x894B, this socket's
/// unsent bytes). FIONREAD/SIOCINQ (0x541B), SIOCOUTQ (0x5411), SIOCATMARK (0x8905) and the
/// timestamp ioctls are outside the range and delegated.
///
/// Not reachable here (64-bit callers): `sock_ioctl` (`net/socket.c`) answers SIOCGIFCONF
/// (`dev_ifconf`), SIOCGIFBR/SIOCSIFBR and the SIOCBR* bridge ioctls, SIOCGIFVLAN/SIOCSIFVLAN,
/// SIOCGSKNS (CAP_NET_ADMIN), SIOCDEVPRIVATE.. (CAP_NET_ADMIN in dev_ioctl) and the wireless-extension
/// range itself, before `ops->ioctl`. 32-bit callers go through `ops->compat_ioctl` first, where
/// all of these in the range are refused.
fn ioctl_refused(cmd: c_uint) -> bool {
    const SIOCADDRT: c_uint = 0x890B;
    const LAST: c_uint = 0x89FF;
    (SIOCADDRT..=LAST).contains(&cmd) && cmd != bindings::SIOCOUTQNSD
}

unsafe extern "C" fn slim_ioctl(sock: *mut bindings::socket, cmd: c_uint, arg: c_ulong) -> c_int {
    if ioctl_refused(cmd) {
        return refuse(kabi::SLIM_REFUSED_IOCTL);
    }
    // SAFETY: wrapper contract; arguments passed on unchanged.
    unsafe {
        match orig_ops(sock).ioctl {
            Some(f) => f(sock, cmd, arg),
            None => -(bindings::ENOIOCTLCMD as c_int),
        }
    }
}

unsafe extern "C" fn slim_compat_ioctl(sock: *mut bindings::socket, cmd: c_uint, arg: c_ulong) -> c_int {
    if ioctl_refused(cmd) {
        return refuse(kabi::SLIM_REFUSED_IOCTL);
    }
    // SAFETY: wrapper contract; arguments passed on unchanged.
    unsafe {
        match orig_ops(sock).compat_ioctl {
            Some(f) => f(sock, cmd, arg),
            None => -(bindings::ENOIOCTLCMD as c_int),
        }
    }
}
