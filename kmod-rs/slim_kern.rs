// SPDX-License-Identifier: GPL-2.0

//! `slim_kern`: Slim's secure-mode kernel module, driven by `slim-router --secure` through `/dev/slim`.
//!
//! Milestone 2 (`sockops.rs`): `RESTRICT` and the restricted TCP `proto_ops` (with the setsockopt and
//! ioctl filters); see README.md.
//! Milestone 3 (`sockops.rs`): `AUTHORIZE_CONNECT`, `SET_CHILD_ADDRS` and `REVOKE`.
//!
//! Milestone 1 (this file): the misc device `/dev/slim`, usable only with `CAP_NET_ADMIN` in the
//! initial user namespace (checked on open AND on every ioctl, so an fd leaked into a container is
//! useless there), and the `VERSION` and `STATS` ioctls of the shared ABI in `uapi/src/kabi.rs`;
//! `VERSION` reports which features exist. Unknown ioctls get `ENOTTY`.
//!
//! Tables (`tables.rs`, issue 15 point 1): `TABLE_UPDATE`, `TABLE_DUMP`, `TABLE_STATS` of
//! `uapi/src/kabi_tables.rs`, one table set per open file (the file's private data); sockets restricted
//! through a file keep a reference to its set.
//!
//! Everything in this file is safe Rust over the kernel crate's abstractions, except the capability check:
//! 7.3's kernel crate has no wrapper for `capable()`, so it is called through `kernel::bindings`.

use kernel::{
    bindings,
    fs::File,
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        Arc, ArcBorrow,
    },
    uaccess::UserSlice,
};

/// The ABI shared with userspace: the very same source file the `slim-uapi` crate compiles.
#[allow(dead_code, unreachable_pub)]
#[path = "../uapi/src/kabi.rs"]
mod kabi;

/// The table ioctls, also shared with userspace (`kabi_tables.rs` refers to `crate::kabi`).
#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "../uapi/src/kabi_tables.rs"]
mod kabi_tables;

use kabi::{SlimStats, SlimVersion};

mod sockops;
mod tables;

use tables::TableSet;

module! {
    type: SlimKern,
    name: "slim_kern",
    authors: ["Slim developers"],
    description: "Slim secure mode: restricted host sockets for containers (/dev/slim)",
    license: "GPL",
    params: {
        table_limit: u32 {
            default: 65536,
            description: "Most rows per table of one table set (one open /dev/slim); over it TABLE_UPDATE fails with ENOSPC",
        },
    },
}

/// The `table_limit` module parameter, as a row count.
fn table_limit() -> usize {
    module_parameters::table_limit.value() as usize
}

// The kabi ioctl numbers must be exactly what the kernel's own _IOR/_IOW/_IOWR compute.
const _: () = {
    use kernel::ioctl::{_IOR, _IOW, _IOWR};
    let m = kabi::SLIM_IOC_MAGIC as u32;
    assert!(kabi::SLIM_IOC_VERSION == _IOR::<kabi::SlimVersion>(m, 0));
    assert!(kabi::SLIM_IOC_RESTRICT == _IOW::<kabi::SlimRestrict>(m, 1));
    assert!(kabi::SLIM_IOC_AUTHORIZE_CONNECT == _IOW::<kabi::SlimAuthorizeConnect>(m, 2));
    assert!(kabi::SLIM_IOC_SET_CHILD_ADDRS == _IOW::<kabi::SlimChildAddrs>(m, 3));
    assert!(kabi::SLIM_IOC_REVOKE == _IOWR::<kabi::SlimRevoke>(m, 4));
    assert!(kabi::SLIM_IOC_STATS == _IOR::<kabi::SlimStats>(m, 5));
    assert!(kabi_tables::SLIM_IOC_TABLE_UPDATE == _IOWR::<kabi_tables::SlimTableUpdate>(m, 6));
    assert!(kabi_tables::SLIM_IOC_TABLE_DUMP == _IOWR::<kabi_tables::SlimTableDump>(m, 7));
    assert!(kabi_tables::SLIM_IOC_TABLE_STATS == _IOR::<kabi_tables::SlimTableStats>(m, 8));
    assert!(kabi_tables::SLIM_TABLE_LIMIT_DEFAULT == 65536);
};

// SAFETY: `SlimVersion` is `repr(C)`, made of `u32`s only, and has no padding (size and offsets are
// asserted in kabi.rs), so every byte of it is initialised and any bit pattern is valid.
unsafe impl kernel::transmute::AsBytes for SlimVersion {}
// SAFETY: as above: `repr(C)`, `u64` fields and a `u64` array, no padding (asserted in kabi.rs).
unsafe impl kernel::transmute::AsBytes for SlimStats {}
// SAFETY: the input structs are `repr(C)` and consist of integers and byte arrays only, so any bit
// pattern read from user memory is a valid value (flags and addresses are validated before use).
unsafe impl kernel::transmute::FromBytes for kabi::SlimRestrict {}
// SAFETY: as above.
unsafe impl kernel::transmute::FromBytes for kabi::SlimAuthorizeConnect {}
// SAFETY: as above.
unsafe impl kernel::transmute::FromBytes for kabi::SlimChildAddrs {}
// SAFETY: as above.
unsafe impl kernel::transmute::FromBytes for kabi::SlimRevoke {}
// SAFETY: `SlimRevoke` has no padding and only integer fields (asserted in kabi.rs).
unsafe impl kernel::transmute::AsBytes for kabi::SlimRevoke {}
// SAFETY: the table structs are `repr(C)`, made of integers and byte arrays only, with no padding
// (sizes and offsets asserted in kabi_tables.rs): every byte is initialised and any bit pattern is a
// valid value (contents are validated before use).
unsafe impl kernel::transmute::FromBytes for kabi_tables::SlimTableOp {}
// SAFETY: as above.
unsafe impl kernel::transmute::AsBytes for kabi_tables::SlimTableOp {}
// SAFETY: as above.
unsafe impl kernel::transmute::FromBytes for kabi_tables::SlimTableUpdate {}
// SAFETY: as above.
unsafe impl kernel::transmute::AsBytes for kabi_tables::SlimTableUpdate {}
// SAFETY: as above.
unsafe impl kernel::transmute::FromBytes for kabi_tables::SlimTableDump {}
// SAFETY: as above.
unsafe impl kernel::transmute::AsBytes for kabi_tables::SlimTableDump {}
// SAFETY: as above (`u64` fields and arrays only).
unsafe impl kernel::transmute::AsBytes for kabi_tables::SlimTableStats {}

/// Features implemented so far (reported by `VERSION`).
const FEATURES: u32 = kabi::SLIM_FEAT_STATS
    | kabi::SLIM_FEAT_RESTRICT
    | kabi::SLIM_FEAT_AUTHORIZE
    | kabi::SLIM_FEAT_CHILD_ADDRS
    | kabi::SLIM_FEAT_REVOKE
    | kabi::SLIM_FEAT_TABLES
    | kabi::SLIM_FEAT_TRANSLATE
    | kabi::SLIM_FEAT_POLICY
    | kabi::SLIM_FEAT_ADOPT;

/// Module-wide counters (`STATS`). Relaxed atomics: they are statistics, not synchronisation.
pub(crate) struct Counters {
    pub(crate) restricted_live: Atomic<u64>,
    pub(crate) restricted_total: Atomic<u64>,
    pub(crate) children_total: Atomic<u64>,
    pub(crate) revoked_total: Atomic<u64>,
    pub(crate) refusals: [Atomic<u64>; kabi::SLIM_REFUSAL_SLOTS],
    /// Connects translated from a listeners table, and those refused with ENOENT (TABLE_STATS).
    pub(crate) translated: Atomic<u64>,
    pub(crate) not_found: Atomic<u64>,
    /// Translating connects of `SLIM_RESTRICT_POLICY` sockets no policy row allowed (TABLE_STATS).
    pub(crate) policy_denied: Atomic<u64>,
}

pub(crate) static COUNTERS: Counters = Counters {
    restricted_live: Atomic::new(0),
    restricted_total: Atomic::new(0),
    children_total: Atomic::new(0),
    revoked_total: Atomic::new(0),
    refusals: [const { Atomic::new(0) }; kabi::SLIM_REFUSAL_SLOTS],
    translated: Atomic::new(0),
    not_found: Atomic::new(0),
    policy_denied: Atomic::new(0),
};

impl Counters {
    fn snapshot(&self) -> SlimStats {
        let mut s = SlimStats::zeroed();
        s.restricted_live = self.restricted_live.load(Relaxed);
        s.restricted_total = self.restricted_total.load(Relaxed);
        s.children_total = self.children_total.load(Relaxed);
        s.revoked_total = self.revoked_total.load(Relaxed);
        for (out, c) in s.refusals.iter_mut().zip(self.refusals.iter()) {
            *out = c.load(Relaxed);
        }
        s
    }
}

/// Whether the current task has `CAP_NET_ADMIN` in the initial user namespace. A container's root
/// (in its own user namespace, or without the capability) does not.
fn current_has_net_admin() -> bool {
    // SAFETY: `capable()` may be called from any process context (open and ioctl run in the caller's
    // context); it only reads the current task's credentials, and CAP_NET_ADMIN is a valid capability.
    unsafe { bindings::capable(bindings::CAP_NET_ADMIN as c_int) }
}

#[pin_data(PinnedDrop)]
struct SlimKern {
    #[pin]
    _dev: MiscDeviceRegistration<SlimDev>,
}

impl kernel::InPlaceModule for SlimKern {
    fn init(module: &'static ThisModule) -> impl PinInit<Self, Error> {
        // Before the device exists: the restricted tables are only reachable through it.
        sockops::init(module);
        pr_info!("loading: /dev/{}, kabi version {}\n", kabi::SLIM_DEVICE_NAME, kabi::KABI_VERSION);
        let options = MiscDeviceOptions { name: c"slim" };
        try_pin_init!(Self {
            _dev <- MiscDeviceRegistration::register(options),
        })
    }
}

/// An open `/dev/slim`: its private data is its own table set (see tables.rs); the socket state
/// and the counters are module-wide.
struct SlimDev;

#[vtable]
impl MiscDevice for SlimDev {
    type Ptr = Arc<TableSet>;

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<Arc<TableSet>> {
        if !current_has_net_admin() {
            return Err(EPERM);
        }
        TableSet::new()
    }

    fn release(me: Arc<TableSet>, _file: &File) {
        me.close();
    }

    fn ioctl(me: ArcBorrow<'_, TableSet>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        // Checked again here: the fd may have been passed (SCM_RIGHTS) or inherited to a process that
        // lacks the capability.
        if !current_has_net_admin() {
            return Err(EPERM);
        }
        let ptr = UserPtr::from_addr(arg);
        match cmd {
            kabi::SLIM_IOC_VERSION => {
                let v = SlimVersion {
                    kabi_version: kabi::KABI_VERSION,
                    features: FEATURES,
                    reserved: [0; 2],
                };
                UserSlice::new(ptr, core::mem::size_of::<SlimVersion>()).writer().write(&v)?;
                Ok(0)
            }
            kabi::SLIM_IOC_STATS => {
                let s = COUNTERS.snapshot();
                UserSlice::new(ptr, core::mem::size_of::<SlimStats>()).writer().write(&s)?;
                Ok(0)
            }
            kabi::SLIM_IOC_RESTRICT => {
                let req: kabi::SlimRestrict =
                    UserSlice::new(ptr, core::mem::size_of::<kabi::SlimRestrict>()).reader().read()?;
                req.validate().map_err(|_| EINVAL)?;
                sockops::restrict(&req, Arc::from(me))?;
                Ok(0)
            }
            kabi::SLIM_IOC_AUTHORIZE_CONNECT => {
                let req: kabi::SlimAuthorizeConnect =
                    UserSlice::new(ptr, core::mem::size_of::<kabi::SlimAuthorizeConnect>()).reader().read()?;
                req.validate().map_err(|_| EINVAL)?;
                sockops::authorize_connect(&req)?;
                Ok(0)
            }
            kabi::SLIM_IOC_SET_CHILD_ADDRS => {
                let req: kabi::SlimChildAddrs =
                    UserSlice::new(ptr, core::mem::size_of::<kabi::SlimChildAddrs>()).reader().read()?;
                req.validate().map_err(|_| EINVAL)?;
                sockops::set_child_addrs(&req)?;
                Ok(0)
            }
            kabi::SLIM_IOC_REVOKE => {
                let slice = UserSlice::new(ptr, core::mem::size_of::<kabi::SlimRevoke>());
                let (mut reader, mut writer) = slice.reader_writer();
                let mut req: kabi::SlimRevoke = reader.read()?;
                req.validate().map_err(|_| EINVAL)?;
                req.revoked = sockops::revoke(req.tag);
                writer.write(&req)?;
                Ok(0)
            }
            kabi_tables::SLIM_IOC_TABLE_UPDATE => {
                let slice = UserSlice::new(ptr, size_of::<kabi_tables::SlimTableUpdate>());
                let (mut reader, mut writer) = slice.reader_writer();
                let mut req: kabi_tables::SlimTableUpdate = reader.read()?;
                // A malformed header is refused before anything else (and counted like a batch).
                if let Err(e) = req.validate() {
                    me.count_refused(e);
                    req.error_index = kabi_tables::SLIM_NO_INDEX;
                    let _ = writer.write(&req);
                    return Err(tables::table_errno(e));
                }
                let r = me.update(&req, table_limit());
                match r {
                    Ok(generation) => {
                        req.generation = generation;
                        req.error_index = kabi_tables::SLIM_NO_INDEX;
                        writer.write(&req)?;
                        Ok(0)
                    }
                    Err((e, at)) => {
                        // Tell the caller which op was at fault; the errno is what matters.
                        req.error_index = at;
                        let _ = writer.write(&req);
                        Err(e)
                    }
                }
            }
            kabi_tables::SLIM_IOC_TABLE_DUMP => {
                let slice = UserSlice::new(ptr, size_of::<kabi_tables::SlimTableDump>());
                let (mut reader, mut writer) = slice.reader_writer();
                let mut req: kabi_tables::SlimTableDump = reader.read()?;
                let ti = req.validate().map_err(tables::table_errno)?;
                me.dump(&mut req, ti)?;
                writer.write(&req)?;
                Ok(0)
            }
            kabi_tables::SLIM_IOC_TABLE_STATS => {
                let s = me.stats(table_limit());
                UserSlice::new(ptr, size_of::<kabi_tables::SlimTableStats>()).writer().write(&s)?;
                Ok(0)
            }
            _ => Err(ENOTTY),
        }
    }
}

#[pinned_drop]
impl PinnedDrop for SlimKern {
    fn drop(self: Pin<&mut Self>) {
        pr_info!(
            "unloading: {} sockets restricted in total\n",
            COUNTERS.restricted_total.load(Relaxed)
        );
    }
}
