// SPDX-License-Identifier: GPL-2.0

//! The restricted TCP `proto_ops` (milestone 2): every unsafe socket operation of the module lives here.
//!
//! `SLIM_IOC_RESTRICT` swaps `sock->ops` of a TCP socket (ops exactly `inet_stream_ops` or
//! `inet6_stream_ops`) for a restricted copy of that table. There is one copy per original table, a
//! `static` written once by [`init`] (before `/dev/slim` exists) and read-only afterwards; its
//! `owner` is this module. The copy refuses `connect`, `bind`, `listen` and `sendmsg(MSG_FASTOPEN)`
//! with `EPERM`, wraps `release` (forgets the socket) and `accept` (children inherit the copy, as
//! `net/socket.c: do_accept` copies `sock->ops`, and are recorded), and keeps every other entry of
//! the original table as it is.
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
//! `release`, which runs exactly once per socket (`__sock_release`).

use core::{cell::UnsafeCell, mem::MaybeUninit};

use kernel::{
    bindings,
    fs::LocalFile,
    prelude::*,
    sync::atomic::Relaxed,
};

use crate::{kabi, COUNTERS};

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
    #[allow(dead_code)]
    tag: u64,
    /// Virtual local address (validated: a family of this socket).
    local: kabi::SlimAddr,
    /// Virtual peer address, or NONE.
    peer: kabi::SlimAddr,
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
        // SAFETY: see `OpsCell`'s `Sync`: nothing else can access the cell yet (no socket points
        // at it and the device does not exist), so this write is exclusive.
        unsafe { (*cell.0.get()).write(RestrictedOps { ops, orig }) };
    }
}

fn is_restricted_ops(ops: *const bindings::proto_ops) -> bool {
    ops == RESTRICTED_V4.ptr() || ops == RESTRICTED_V6.ptr()
}

/// `SLIM_IOC_RESTRICT`: `req` has been copied from the caller and validated.
pub(crate) fn restrict(req: &kabi::SlimRestrict) -> Result {
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
        tag: req.tag,
        local: req.local,
        peer: req.peer,
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

unsafe extern "C" fn slim_connect(
    _sock: *mut bindings::socket,
    _addr: *mut bindings::sockaddr_unsized,
    _len: c_int,
    _flags: c_int,
) -> c_int {
    refuse(kabi::SLIM_REFUSED_CONNECT)
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
    // SAFETY: the socket layer passes a valid msghdr; `msg_flags` holds the caller's send flags.
    let flags = unsafe { (*msg).msg_flags };
    if flags & bindings::MSG_FASTOPEN != 0 {
        // A fast-open send on an unconnected socket is an implicit connect.
        return refuse(kabi::SLIM_REFUSED_FASTOPEN);
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
    // Record the child first (allocation may fail: then refuse the accept; the child is released
    // through our `release`, which tolerates a missing entry).
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
        let mut table = TABLE.lock();
        let parent = table.iter().find(|e| e.sock == sock as usize).map(|e| (e.tag, e.local));
        let (tag, local) = parent.unwrap_or((0, kabi::SlimAddr::NONE));
        // Until SET_CHILD_ADDRS: the listener's local address, no (all-zero) peer.
        let child = Entry {
            sock: newsock as usize,
            child: true,
            tag,
            local,
            peer: kabi::SlimAddr::NONE,
        };
        // Capacity may have been used by a concurrent restrict: then the child is not recorded
        // (still restricted; `release` tolerates it).
        if table.push_within_capacity(child).is_ok() {
            COUNTERS.restricted_live.fetch_add(1, Relaxed);
        }
        COUNTERS.children_total.fetch_add(1, Relaxed);
    }
    err
}

unsafe extern "C" fn slim_release(sock: *mut bindings::socket) -> c_int {
    // SAFETY: wrapper contract; `__sock_release` calls this exactly once, then sets `sock->ops` to
    // NULL and drops the module reference (after we return).
    let err = unsafe {
        match orig_ops(sock).release {
            Some(f) => f(sock),
            None => 0,
        }
    };
    let mut table = TABLE.lock();
    if let Some(i) = table.iter().position(|e| e.sock == sock as usize) {
        // Order does not matter; `swap_remove` would be enough but KVec's `remove` is fine too.
        let _ = table.remove(i);
        COUNTERS.restricted_live.fetch_sub(1, Relaxed);
    }
    err
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
        // Only a child that could not be recorded (allocation raced away): reveal nothing.
        return enotconn;
    };
    let mut a = if peer != 0 { e.peer } else { e.local };
    if a.is_none() {
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
