//! The `/dev/slim` table ioctls: the tables a secure router keeps in `slim_kern.ko` (issue 15,
//! point 1), so that the module can later set connections up without asking the router.
//!
//! Like `kabi.rs`, this ONE file is compiled by the `slim-uapi` crate and by the module
//! (`#[path = "../uapi/src/kabi_tables.rs"] mod kabi_tables;`): only `core`, no allocation,
//! `#[repr(C)]` structs with explicit padding and compile-time size/offset assertions. The pure
//! decoding, validation and batch-planning functions below are what the module runs; they are
//! unit-tested in userspace (`cargo test -p slim-uapi`).
//!
//! # The tables
//!
//! Four tables, each a set of [`SlimTableOp`] rows (`op` = [`SLIM_TOP_INSERT`] in a row):
//! - [`SLIM_TABLE_LISTENERS`]: the cluster's Slim listeners, overlay endpoint (`key`) -> host
//!   endpoint (`value`); `tag` is the owning container's tag on this host, 0 for a peer's listener.
//!   The pair (`key`, `value`) is the row's key: one overlay endpoint may be served by several host
//!   listeners (`SO_REUSEPORT`), rows are sorted by `key` then `value`.
//! - [`SLIM_TABLE_LEASES`]: port leases, host endpoint (`key`, the client's host address and
//!   leased port) -> overlay address of the container that holds it (`value`, port 0); `tag` the
//!   holder's tag if it is on this host, else 0. Key: `key`.
//! - [`SLIM_TABLE_IDENTITIES`]: each container's own identity: its tag (`tag`, the network
//!   namespace inode the router uses as its REVOKE tag) and one of its overlay addresses (`key`,
//!   port 0); `value` is [`SlimAddr::NONE`]. Key: (`tag`, `key`); a container with an IPv4 and an
//!   IPv6 address has two rows.
//! - [`SLIM_TABLE_POLICY`] ([`SLIM_FEAT_POLICY`]): the Slim policy's allow-list of each container
//!   of this host that the policy constrains (issue 15, point 4): container `tag` may connect to
//!   destinations in the prefix `key` (the network address, host bits zero; its port the lowest
//!   port allowed) whose length is given by `value`, the prefix's netmask as an address of the same
//!   family (its port the highest port allowed). "All destinations" is two rows, `0.0.0.0/0` and
//!   `::/0`, ports 0-65535. Key: (`tag`, `key`, `value`). Consulted only for sockets restricted with
//!   `SLIM_RESTRICT_POLICY`: a tag with no row may reach nothing ([`policy_allows`]).
//!
//! Addresses are canonical: IPv4 as `AF_INET` (never an IPv4-mapped IPv6 address), IPv6 flow info
//! zero. Endpoints have a non-zero port; overlay addresses of leases and identities have port 0.
//!
//! # Scope: one table set per open file
//!
//! Each open file of `/dev/slim` has its own table set (a router opens the device once). An update
//! or a RESET only touches the caller's set; a socket restricted through a file refers to that
//! file's set (so a later connect hook finds the right tables); the set is freed when the file is
//! closed and no restricted socket refers to it any more. Two routers on one kernel (the lab's h1
//! and h2 in the test VM) therefore never see each other's rows.
//!
//! # Updates: [`SLIM_IOC_TABLE_UPDATE`]
//!
//! A batch of up to [`SLIM_TABLE_BATCH_MAX`] ops, applied all-or-nothing: the module copies the
//! tables the batch touches, applies the ops in order to the copy (sleeping allocation, outside any
//! spinlock), then publishes the copy with one pointer swap. A concurrent reader sees the tables
//! before or after the whole batch, never a part of it. With [`SLIM_UPDATE_RESET`] the batch
//! starts from empty tables (all of them). A load larger than one batch (RESET, then more batches) is
//! seen in steps by concurrent readers: only each batch is atomic.
//!
//! Errors (the batch changes nothing; `error_index` names the op at fault, or [`SLIM_NO_INDEX`]):
//! - `E2BIG`: `count` > [`SLIM_TABLE_BATCH_MAX`] (an oversized batch is not malformed input of a
//!   known shape, so it gets its own errno; split it);
//! - `EINVAL`: unknown `flags` bits, a non-zero reserved field or out field on input, an unknown
//!   `op` or `table`, non-zero op flags, a bad address (family, encoding, port rule, not canonical);
//! - `EEXIST`: an INSERT of a key already present (in the tables or earlier in the batch);
//! - `ENOENT`: a REMOVE of a key not present;
//! - `ENOSPC`: a table would hold more rows than the module parameter `table_limit` (per table, per
//!   set; default [`SLIM_TABLE_LIMIT_DEFAULT`]); counted in [`SlimTableStats::enospc`];
//! - `EFAULT` a bad `ops` pointer, `ENOMEM` no memory, `EPERM` no `CAP_NET_ADMIN`.
//!
//! Every refused batch except `EPERM`/`EFAULT` is counted in [`SlimTableStats::refused_batches`].
//!
//! # Reading back: [`SLIM_IOC_TABLE_DUMP`], [`SLIM_IOC_TABLE_STATS`]
//!
//! DUMP copies rows `start..start+capacity` of one table (in key order) of one snapshot and
//! reports that snapshot's `generation`; a paged reader whose pages do not all carry the same
//! generation restarts (the tables changed in between). STATS reports the caller's table sizes,
//! the limit and counters, and the row totals of all sets of the module.
//!
//! Versioning: these are new ioctl numbers and a new feature bit ([`SLIM_FEAT_TABLES`] in
//! `VERSION`), a compatible extension: `KABI_VERSION` stays 1 (kabi.rs's rule bumps it only for
//! incompatible changes). A router checks the feature bit and runs without tables if it is absent.

use crate::kabi::{ior, iowr, zeroed_ctor, SlimAddr, AF_INET, AF_INET6, SLIM_IOC_MAGIC};

pub use crate::kabi::SLIM_FEAT_POLICY;
use core::cmp::Ordering;

pub use crate::kabi::SLIM_FEAT_TABLES;

/// Table ids ([`SlimTableOp::table`], [`SlimTableDump::table`]); also the index into
/// [`SlimTableStats::rows`].
pub const SLIM_TABLE_LISTENERS: u16 = 1;
/// See the module documentation.
pub const SLIM_TABLE_LEASES: u16 = 2;
/// See the module documentation.
pub const SLIM_TABLE_IDENTITIES: u16 = 3;
/// See the module documentation.
pub const SLIM_TABLE_POLICY: u16 = 4;
/// The table ids, in the order the module processes them.
pub const SLIM_TABLES: [u16; 4] = [
    SLIM_TABLE_LISTENERS,
    SLIM_TABLE_LEASES,
    SLIM_TABLE_IDENTITIES,
    SLIM_TABLE_POLICY,
];
/// Length of the by-table-id arrays of [`SlimTableStats`] (index 0 unused).
pub const SLIM_TABLE_SLOTS: usize = SLIM_TABLES.len() + 1;

/// [`SlimTableOp::op`]: add a row.
pub const SLIM_TOP_INSERT: u16 = 1;
/// [`SlimTableOp::op`]: remove the row with this key.
pub const SLIM_TOP_REMOVE: u16 = 2;

/// Most ops in one [`SLIM_IOC_TABLE_UPDATE`] batch (and rows in one DUMP page).
pub const SLIM_TABLE_BATCH_MAX: u32 = 1024;
/// Default of the module parameter `table_limit`: most rows per table of one set.
pub const SLIM_TABLE_LIMIT_DEFAULT: u32 = 65536;

/// [`SlimTableUpdate::flags`]: empty the caller's three tables before applying the batch.
pub const SLIM_UPDATE_RESET: u32 = 1 << 0;
/// All defined `SLIM_UPDATE_*` bits.
pub const SLIM_UPDATE_FLAGS: u32 = SLIM_UPDATE_RESET;
/// [`SlimTableUpdate::error_index`] when no single op is at fault (or none failed).
pub const SLIM_NO_INDEX: u32 = u32::MAX;

/// One op of a batch, and one row of a table (with `op` = [`SLIM_TOP_INSERT`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlimTableOp {
    /// [`SLIM_TOP_INSERT`] or [`SLIM_TOP_REMOVE`].
    pub op: u16,
    /// `SLIM_TABLE_*`.
    pub table: u16,
    /// Zero (no flags defined).
    pub flags: u32,
    /// Container tag (see the module documentation per table).
    pub tag: u64,
    /// The row's key address.
    pub key: SlimAddr,
    /// The row's value address (or part of the key, for listeners).
    pub value: SlimAddr,
}

/// [`SLIM_IOC_TABLE_UPDATE`] (read/write): a batch of `count` ops at user address `ops`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlimTableUpdate {
    /// In: `SLIM_UPDATE_*`.
    pub flags: u32,
    /// In: number of [`SlimTableOp`]s at `ops` (at most [`SLIM_TABLE_BATCH_MAX`]).
    pub count: u32,
    /// In: user address of the ops array.
    pub ops: u64,
    /// Out: the set's generation after the batch (unchanged if it failed); in: zero.
    pub generation: u64,
    /// Out: index of the op at fault, or [`SLIM_NO_INDEX`]; in: zero.
    pub error_index: u32,
    /// Zero.
    pub reserved: u32,
}

/// [`SLIM_IOC_TABLE_DUMP`] (read/write): one page of one table of the caller's set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlimTableDump {
    /// In: `SLIM_TABLE_*`.
    pub table: u16,
    /// Zero.
    pub reserved0: u16,
    /// In: zero (no flags defined).
    pub flags: u32,
    /// In: index of the first row to copy.
    pub start: u32,
    /// In: room for this many [`SlimTableOp`]s at `rows` (at most [`SLIM_TABLE_BATCH_MAX`]).
    pub capacity: u32,
    /// In: user address of the row buffer.
    pub rows: u64,
    /// Out: rows copied; in: zero.
    pub count: u32,
    /// Out: rows in the table; in: zero.
    pub total: u32,
    /// Out: generation of the snapshot the page comes from; in: zero.
    pub generation: u64,
}

/// [`SLIM_IOC_TABLE_STATS`] (read).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlimTableStats {
    /// Rows of the caller's set, by table id (index 0 unused, zero).
    pub rows: [u64; SLIM_TABLE_SLOTS],
    /// The module parameter `table_limit` (rows per table per set).
    pub limit: u64,
    /// The caller's set: generation (successful batches since the file was opened).
    pub generation: u64,
    /// The caller's set: ops applied by successful batches.
    pub ops_applied: u64,
    /// The caller's set: refused batches (any errno but EPERM/EFAULT).
    pub refused_batches: u64,
    /// The caller's set: batches refused with ENOSPC (also in `refused_batches`).
    pub enospc: u64,
    /// Table sets alive in the module (open files, and closed ones sockets still refer to).
    pub sets_live: u64,
    /// Rows of all sets of the module, by table id (index 0 unused, zero).
    pub all_rows: [u64; SLIM_TABLE_SLOTS],
    /// Connects translated by the module from a listeners table (`SLIM_RESTRICT_TRANSLATE`),
    /// all sets.
    pub translated: u64,
    /// Translating connects refused with ENOENT (no row for the endpoint), all sets.
    pub not_found: u64,
    /// Translating connects of `SLIM_RESTRICT_POLICY` sockets that no policy row allowed
    /// (refused with ECONNREFUSED), all sets.
    pub policy_denied: u64,
}

/// Why a batch is refused; [`TableError::errno`] is the errno the module answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// Malformed input: `EINVAL`.
    Invalid,
    /// More than [`SLIM_TABLE_BATCH_MAX`] ops: `E2BIG`.
    TooBig,
    /// INSERT of a key already present: `EEXIST`.
    Exists,
    /// REMOVE of a key not present: `ENOENT`.
    NotFound,
    /// Over `table_limit`: `ENOSPC`.
    NoSpace,
}

impl TableError {
    /// The Linux errno (the generic numbers, the same on x86, arm64 and riscv).
    pub const fn errno(self) -> i32 {
        match self {
            TableError::Invalid => 22, // EINVAL
            TableError::TooBig => 7,   // E2BIG
            TableError::Exists => 17,  // EEXIST
            TableError::NotFound => 2, // ENOENT
            TableError::NoSpace => 28, // ENOSPC
        }
    }
}

/// A refused batch: why, and which op ([`SLIM_NO_INDEX`] if none in particular).
pub type BatchError = (TableError, u32);

zeroed_ctor! {
    SlimTableOp { op: 0, table: 0, flags: 0, tag: 0, key: SlimAddr::NONE, value: SlimAddr::NONE }
    SlimTableUpdate { flags: 0, count: 0, ops: 0, generation: 0, error_index: 0, reserved: 0 }
    SlimTableDump { table: 0, reserved0: 0, flags: 0, start: 0, capacity: 0, rows: 0, count: 0,
                    total: 0, generation: 0 }
    SlimTableStats { rows: [0; SLIM_TABLE_SLOTS], limit: 0, generation: 0, ops_applied: 0,
                     refused_batches: 0, enospc: 0, sets_live: 0, all_rows: [0; SLIM_TABLE_SLOTS],
                     translated: 0, not_found: 0, policy_denied: 0 }
}

/// Whether `a` is a canonical address: valid encoding, IPv4 as `AF_INET`, IPv6 flow info zero
/// and not IPv4-mapped.
const fn canonical(a: &SlimAddr) -> bool {
    if a.sockaddr_len().is_err() {
        return false;
    }
    if a.family() == AF_INET6 {
        let r = &a.raw;
        if r[4] != 0 || r[5] != 0 || r[6] != 0 || r[7] != 0 {
            return false;
        }
        // IPv4-mapped (::ffff:a.b.c.d): ten zero bytes, then 0xff 0xff.
        let mut i = 8;
        let mut zero_prefix = true;
        while i < 18 {
            if r[i] != 0 {
                zero_prefix = false;
            }
            i += 1;
        }
        if zero_prefix && r[18] == 0xff && r[19] == 0xff {
            return false;
        }
    }
    true
}

/// A policy row's prefix and ports: `net` canonical, `mask` of the same family, a netmask (ones
/// then zeros, flow info and scope zero for IPv6), `net` without host bits, lowest port `net`'s
/// not above highest port `mask`'s.
const fn policy_row(net: &SlimAddr, mask: &SlimAddr) -> bool {
    if !canonical(net) || mask.family() != net.family() || mask.sockaddr_len().is_err() {
        return false;
    }
    if net.port() > mask.port() {
        return false;
    }
    let (off, n) = addr_bytes(net.family());
    let (r, m) = (&net.raw, &mask.raw);
    if net.family() == AF_INET6 {
        let mut i = 0;
        while i < 4 {
            if m[4 + i] != 0 || m[24 + i] != 0 {
                return false;
            }
            i += 1;
        }
    }
    let mut ones = true;
    let mut i = 0;
    while i < n {
        let b = m[off + i];
        if !ones && b != 0 {
            return false;
        }
        if b != 0xff {
            // The first byte that is not all ones ends the run: it must be ones then zeros.
            if b.leading_ones() + b.trailing_zeros() != 8 {
                return false;
            }
            ones = false;
        }
        if r[off + i] & !b != 0 {
            return false;
        }
        i += 1;
    }
    true
}

/// Offset and length of the address bytes of a [`SlimAddr`] of `family` (IPv4: 4 at 4, IPv6: 16
/// at 8).
const fn addr_bytes(family: u16) -> (usize, usize) {
    if family == AF_INET {
        (4, 4)
    } else {
        (8, 16)
    }
}

/// A host or overlay endpoint: canonical, port non-zero.
const fn endpoint(a: &SlimAddr) -> bool {
    canonical(a) && a.port() != 0
}

/// An overlay address without a port: canonical, port zero.
const fn bare_ip(a: &SlimAddr) -> bool {
    canonical(a) && a.port() == 0
}

impl SlimTableOp {
    /// Checks one op (what the module checks before planning the batch): `EINVAL` for anything
    /// the module documentation does not allow.
    pub const fn validate(&self) -> Result<(), TableError> {
        let insert = match self.op {
            SLIM_TOP_INSERT => true,
            SLIM_TOP_REMOVE => false,
            _ => return Err(TableError::Invalid),
        };
        if self.flags != 0 {
            return Err(TableError::Invalid);
        }
        let ok = match self.table {
            SLIM_TABLE_LISTENERS => endpoint(&self.key) && endpoint(&self.value),
            SLIM_TABLE_LEASES => {
                endpoint(&self.key)
                    && if insert {
                        bare_ip(&self.value)
                    } else {
                        self.value.is_none() && self.tag == 0
                    }
            }
            SLIM_TABLE_IDENTITIES => bare_ip(&self.key) && self.value.is_none(),
            SLIM_TABLE_POLICY => policy_row(&self.key, &self.value),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(TableError::Invalid)
        }
    }

    /// A listener row op: `overlay` served by the host listener `host`, owned by `tag`.
    pub fn listener(
        op: u16,
        overlay: core::net::SocketAddr,
        host: core::net::SocketAddr,
        tag: u64,
    ) -> SlimTableOp {
        SlimTableOp {
            op,
            table: SLIM_TABLE_LISTENERS,
            tag,
            key: canonical_addr(overlay),
            value: canonical_addr(host),
            ..SlimTableOp::zeroed()
        }
    }

    /// A lease op: the host endpoint `host` leased to overlay address `owner` (insert), or the
    /// lease of `host` withdrawn (remove: `owner` and `tag` are not part of the key).
    pub fn lease(
        op: u16,
        host: core::net::SocketAddr,
        owner: core::net::IpAddr,
        tag: u64,
    ) -> SlimTableOp {
        let insert = op == SLIM_TOP_INSERT;
        SlimTableOp {
            op,
            table: SLIM_TABLE_LEASES,
            tag: if insert { tag } else { 0 },
            key: canonical_addr(host),
            value: if insert {
                canonical_addr(core::net::SocketAddr::new(owner, 0))
            } else {
                SlimAddr::NONE
            },
            ..SlimTableOp::zeroed()
        }
    }

    /// An identity op: container `tag` has overlay address `ip`.
    pub fn identity(op: u16, tag: u64, ip: core::net::IpAddr) -> SlimTableOp {
        SlimTableOp {
            op,
            table: SLIM_TABLE_IDENTITIES,
            tag,
            key: canonical_addr(core::net::SocketAddr::new(ip, 0)),
            ..SlimTableOp::zeroed()
        }
    }
}

impl SlimTableOp {
    /// A policy op: container `tag` may reach `net/prefix_len` on ports `ports.0..=ports.1`
    /// (`net`'s host bits are cleared; a `prefix_len` over the family's width is taken as the
    /// width).
    pub fn policy(
        op: u16,
        tag: u64,
        net: core::net::IpAddr,
        prefix_len: u8,
        ports: (u16, u16),
    ) -> SlimTableOp {
        let (key, value) = match net.to_canonical() {
            core::net::IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len.min(32)))
                    .unwrap_or(0);
                let net = u32::from(v4) & mask;
                (
                    SlimAddr::v4(net.to_be_bytes(), ports.0),
                    SlimAddr::v4(mask.to_be_bytes(), ports.1),
                )
            }
            core::net::IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix_len.min(128)))
                    .unwrap_or(0);
                let net = u128::from(v6) & mask;
                (
                    SlimAddr::v6(net.to_be_bytes(), ports.0, 0, 0),
                    SlimAddr::v6(mask.to_be_bytes(), ports.1, 0, 0),
                )
            }
        };
        SlimTableOp {
            op,
            table: SLIM_TABLE_POLICY,
            tag,
            key,
            value,
            ..SlimTableOp::zeroed()
        }
    }
}

/// Whether the policy rows `rows` (the policy table, sorted by [`key_cmp`]) let container `tag`
/// connect to `dst` (a canonical endpoint): one of the tag's rows has `dst`'s family, `dst`'s
/// address in its prefix and `dst`'s port in its range. A tag without rows may reach nothing.
/// For the module's translated connects of `SLIM_RESTRICT_POLICY` sockets.
pub fn policy_allows(rows: &[SlimTableOp], tag: u64, dst: &SlimAddr) -> bool {
    let lo = rows.partition_point(|r| r.tag < tag);
    let hi = lo + rows[lo..].partition_point(|r| r.tag == tag);
    let fam = dst.family();
    let (off, n) = addr_bytes(fam);
    let port = dst.port();
    rows[lo..hi].iter().any(|r| {
        r.key.family() == fam
            && (r.key.port()..=r.value.port()).contains(&port)
            && (0..n).all(|i| dst.raw[off + i] & r.value.raw[off + i] == r.key.raw[off + i])
    })
}

/// `sa` in the tables' canonical form (IPv4-mapped IPv6 as IPv4; flow info and scope id dropped
/// for IPv6, which the tables do not compare).
pub fn canonical_addr(sa: core::net::SocketAddr) -> SlimAddr {
    match sa.ip().to_canonical() {
        core::net::IpAddr::V4(v4) => SlimAddr::v4(v4.octets(), sa.port()),
        core::net::IpAddr::V6(v6) => SlimAddr::v6(v6.octets(), sa.port(), 0, 0),
    }
}

impl SlimTableUpdate {
    /// Checks the header; returns the number of ops. `EINVAL` for unknown flags or non-zero
    /// reserved/out fields, `E2BIG` for more than [`SLIM_TABLE_BATCH_MAX`] ops.
    pub const fn validate(&self) -> Result<usize, TableError> {
        if self.flags & !SLIM_UPDATE_FLAGS != 0
            || self.reserved != 0
            || self.generation != 0
            || self.error_index != 0
        {
            return Err(TableError::Invalid);
        }
        if self.count > SLIM_TABLE_BATCH_MAX {
            return Err(TableError::TooBig);
        }
        Ok(self.count as usize)
    }
}

impl SlimTableDump {
    /// Checks the request; returns the table's index (0..4) into [`SLIM_TABLES`]. `EINVAL` for an
    /// unknown table, flags, non-zero reserved/out fields, or a capacity of 0 or over
    /// [`SLIM_TABLE_BATCH_MAX`].
    pub const fn validate(&self) -> Result<usize, TableError> {
        if self.reserved0 != 0
            || self.flags != 0
            || self.count != 0
            || self.total != 0
            || self.generation != 0
            || self.capacity == 0
            || self.capacity > SLIM_TABLE_BATCH_MAX
        {
            return Err(TableError::Invalid);
        }
        match table_index(self.table) {
            Some(i) => Ok(i),
            None => Err(TableError::Invalid),
        }
    }
}

/// Index (0..4) of a table id into [`SLIM_TABLES`].
pub const fn table_index(table: u16) -> Option<usize> {
    match table {
        SLIM_TABLE_LISTENERS => Some(0),
        SLIM_TABLE_LEASES => Some(1),
        SLIM_TABLE_IDENTITIES => Some(2),
        SLIM_TABLE_POLICY => Some(3),
        _ => None,
    }
}

/// The order of rows of `table` (by their key; see the module documentation).
pub fn key_cmp(table: u16, a: &SlimTableOp, b: &SlimTableOp) -> Ordering {
    match table {
        SLIM_TABLE_LISTENERS => a
            .key
            .raw
            .cmp(&b.key.raw)
            .then(a.value.raw.cmp(&b.value.raw)),
        SLIM_TABLE_IDENTITIES => a.tag.cmp(&b.tag).then(a.key.raw.cmp(&b.key.raw)),
        SLIM_TABLE_POLICY => a
            .tag
            .cmp(&b.tag)
            .then(a.key.raw.cmp(&b.key.raw))
            .then(a.value.raw.cmp(&b.value.raw)),
        _ => a.key.raw.cmp(&b.key.raw),
    }
}

/// The row an INSERT op adds.
fn row_of(op: &SlimTableOp) -> SlimTableOp {
    SlimTableOp {
        op: SLIM_TOP_INSERT,
        ..*op
    }
}

/// What one batch does to one table: rows to add and indexes of `base` rows to drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `added[..n_added]` holds the new rows, sorted by [`key_cmp`].
    pub n_added: usize,
    /// `removed[..n_removed]` holds indexes into `base`, sorted ascending.
    pub n_removed: usize,
}

impl Plan {
    /// Rows of the table after the batch.
    pub const fn rows_after(&self, base_len: usize) -> usize {
        base_len - self.n_removed + self.n_added
    }
}

/// Applies, in order, the ops of `ops` that belong to `table` to `base` (its current rows, sorted
/// by [`key_cmp`], no duplicate keys), without changing `base`: the rows to add go to `added`, the
/// indexes of rows to drop to `removed` (scratch buffers of at least as many entries as `ops` has
/// ops of this table; fewer gives `E2BIG`). `ops` must have been validated. Sequential semantics:
/// INSERT then REMOVE of one key in one batch cancel out; REMOVE then INSERT replaces the row.
/// Errors: `EEXIST` / `ENOENT` with the op's index.
pub fn plan_table(
    base: &[SlimTableOp],
    ops: &[SlimTableOp],
    table: u16,
    added: &mut [SlimTableOp],
    removed: &mut [u32],
) -> Result<Plan, BatchError> {
    let (mut na, mut nr) = (0usize, 0usize);
    for (i, op) in ops.iter().enumerate() {
        if op.table != table {
            continue;
        }
        let idx = u32::try_from(i).unwrap_or(SLIM_NO_INDEX);
        let in_base = base
            .binary_search_by(|r| key_cmp(table, r, op))
            .ok()
            .and_then(|b| u32::try_from(b).ok())
            .filter(|b| !removed[..nr].contains(b));
        let in_added = added[..na]
            .iter()
            .position(|r| key_cmp(table, r, op) == Ordering::Equal);
        if op.op == SLIM_TOP_INSERT {
            if in_base.is_some() || in_added.is_some() {
                return Err((TableError::Exists, idx));
            }
            let Some(slot) = added.get_mut(na) else {
                return Err((TableError::TooBig, idx));
            };
            *slot = row_of(op);
            na += 1;
        } else if let Some(j) = in_added {
            added[j] = added[na - 1];
            na -= 1;
        } else if let Some(b) = in_base {
            let Some(slot) = removed.get_mut(nr) else {
                return Err((TableError::TooBig, idx));
            };
            *slot = b;
            nr += 1;
        } else {
            return Err((TableError::NotFound, idx));
        }
    }
    added[..na].sort_unstable_by(|a, b| key_cmp(table, a, b));
    removed[..nr].sort_unstable();
    Ok(Plan {
        n_added: na,
        n_removed: nr,
    })
}

/// Emits the rows of the table after a [`plan_table`]: `base` without `removed` (sorted
/// indexes), merged with `added` (sorted rows), in key order. Stops with `false` as soon as `out`
/// does (the caller's buffer is full).
pub fn merge_table(
    table: u16,
    base: &[SlimTableOp],
    removed: &[u32],
    added: &[SlimTableOp],
    mut out: impl FnMut(SlimTableOp) -> bool,
) -> bool {
    let (mut r, mut a) = (0usize, 0usize);
    for (i, row) in base.iter().enumerate() {
        if removed.get(r).is_some_and(|&x| x as usize == i) {
            r += 1;
            continue;
        }
        while let Some(n) = added.get(a) {
            if key_cmp(table, n, row) != Ordering::Less {
                break;
            }
            if !out(*n) {
                return false;
            }
            a += 1;
        }
        if !out(*row) {
            return false;
        }
    }
    added[a..].iter().all(|n| out(*n))
}

/// The rows of `table` whose key address is `key` (for listeners: every host listener of an
/// overlay endpoint), as a range of `rows` (sorted by [`key_cmp`]). For the module's lookups.
pub fn key_range(rows: &[SlimTableOp], key: &SlimAddr) -> core::ops::Range<usize> {
    let lo = rows.partition_point(|r| r.key.raw < key.raw);
    let hi = lo + rows[lo..].partition_point(|r| r.key.raw == key.raw);
    lo..hi
}

// ---------------------------------------------------------------------------------------------
// ioctl numbers (6.. after kabi.rs's 0..5)

/// Apply a batch of table ops ([`SlimTableUpdate`]).
pub const SLIM_IOC_TABLE_UPDATE: u32 = iowr::<SlimTableUpdate>(SLIM_IOC_MAGIC, 6);
/// Read one page of one table ([`SlimTableDump`]).
pub const SLIM_IOC_TABLE_DUMP: u32 = iowr::<SlimTableDump>(SLIM_IOC_MAGIC, 7);
/// Read the table sizes and counters ([`SlimTableStats`]).
pub const SLIM_IOC_TABLE_STATS: u32 = ior::<SlimTableStats>(SLIM_IOC_MAGIC, 8);

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<SlimTableOp>() == 72 && align_of::<SlimTableOp>() == 8);
    assert!(offset_of!(SlimTableOp, table) == 2 && offset_of!(SlimTableOp, flags) == 4);
    assert!(offset_of!(SlimTableOp, tag) == 8 && offset_of!(SlimTableOp, key) == 16);
    assert!(offset_of!(SlimTableOp, value) == 44);

    assert!(size_of::<SlimTableUpdate>() == 32 && align_of::<SlimTableUpdate>() == 8);
    assert!(offset_of!(SlimTableUpdate, count) == 4 && offset_of!(SlimTableUpdate, ops) == 8);
    assert!(offset_of!(SlimTableUpdate, generation) == 16);
    assert!(
        offset_of!(SlimTableUpdate, error_index) == 24
            && offset_of!(SlimTableUpdate, reserved) == 28
    );

    assert!(size_of::<SlimTableDump>() == 40 && align_of::<SlimTableDump>() == 8);
    assert!(offset_of!(SlimTableDump, reserved0) == 2 && offset_of!(SlimTableDump, flags) == 4);
    assert!(offset_of!(SlimTableDump, start) == 8 && offset_of!(SlimTableDump, capacity) == 12);
    assert!(offset_of!(SlimTableDump, rows) == 16 && offset_of!(SlimTableDump, count) == 24);
    assert!(offset_of!(SlimTableDump, total) == 28 && offset_of!(SlimTableDump, generation) == 32);

    assert!(size_of::<SlimTableStats>() == 152 && align_of::<SlimTableStats>() == 8);
    assert!(offset_of!(SlimTableStats, limit) == 40);
    assert!(offset_of!(SlimTableStats, sets_live) == 80);
    assert!(offset_of!(SlimTableStats, all_rows) == 88);
    assert!(offset_of!(SlimTableStats, translated) == 128);
    assert!(offset_of!(SlimTableStats, not_found) == 136);
    assert!(offset_of!(SlimTableStats, policy_denied) == 144);

    assert!(SLIM_IOC_TABLE_UPDATE == 0xC020_5306);
    assert!(SLIM_IOC_TABLE_DUMP == 0xC028_5307);
    assert!(SLIM_IOC_TABLE_STATS == 0x8098_5308);
    assert!(SLIM_TABLE_BATCH_MAX as usize * size_of::<SlimTableOp>() <= 128 * 1024);
    assert!(AF_INET != AF_INET6);
};

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::kabi::{ioc_dir, ioc_nr, ioc_size, IOC_READ, IOC_WRITE};
    use core::mem::size_of;
    use std::vec;
    use std::vec::Vec;

    fn sa(s: &str) -> core::net::SocketAddr {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> core::net::IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ioctl_numbers_decode() {
        for (cmd, dir, nr, size) in [
            (
                SLIM_IOC_TABLE_UPDATE,
                IOC_READ | IOC_WRITE,
                6,
                size_of::<SlimTableUpdate>(),
            ),
            (
                SLIM_IOC_TABLE_DUMP,
                IOC_READ | IOC_WRITE,
                7,
                size_of::<SlimTableDump>(),
            ),
            (
                SLIM_IOC_TABLE_STATS,
                IOC_READ,
                8,
                size_of::<SlimTableStats>(),
            ),
        ] {
            assert_eq!((ioc_dir(cmd), ioc_nr(cmd), ioc_size(cmd)), (dir, nr, size));
        }
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(2 + 2 + 4 + 8 + 28 + 28, size_of::<SlimTableOp>());
        assert_eq!(4 + 4 + 8 + 8 + 4 + 4, size_of::<SlimTableUpdate>());
        assert_eq!(
            2 + 2 + 4 + 4 + 4 + 8 + 4 + 4 + 8,
            size_of::<SlimTableDump>()
        );
        assert_eq!(19 * 8, size_of::<SlimTableStats>());
    }

    #[test]
    fn ops_are_validated() {
        let l = SlimTableOp::listener(
            SLIM_TOP_INSERT,
            sa("10.32.0.2:80"),
            sa("192.168.77.2:40000"),
            7,
        );
        assert_eq!(l.validate(), Ok(()));
        let mut bad = l;
        bad.op = 3;
        assert_eq!(bad.validate(), Err(TableError::Invalid), "unknown op");
        bad = l;
        bad.table = 9;
        assert_eq!(bad.validate(), Err(TableError::Invalid), "unknown table");
        bad = l;
        bad.flags = 1;
        assert_eq!(bad.validate(), Err(TableError::Invalid), "flags");
        bad = l;
        bad.key.raw[0] = 1; // AF_UNIX
        bad.key.raw[1] = 0;
        assert_eq!(bad.validate(), Err(TableError::Invalid), "bad family");
        bad = l;
        bad.value.raw[20] = 1; // junk after an IPv4 address
        assert_eq!(bad.validate(), Err(TableError::Invalid), "IPv4 tail");
        let no_port =
            SlimTableOp::listener(SLIM_TOP_INSERT, sa("10.32.0.2:0"), sa("192.168.77.2:1"), 0);
        assert_eq!(
            no_port.validate(),
            Err(TableError::Invalid),
            "endpoint without port"
        );
        let mut mapped = l;
        mapped.key = SlimAddr::from_socket_addr(&sa("[::ffff:10.32.0.2]:80"));
        assert_eq!(
            mapped.validate(),
            Err(TableError::Invalid),
            "v4-mapped is not canonical"
        );
        let mut flow = l;
        flow.key = SlimAddr::v6(
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            80,
            5,
            0,
        );
        assert_eq!(flow.validate(), Err(TableError::Invalid), "flow info");
        // The constructors canonicalize.
        let m = SlimTableOp::listener(
            SLIM_TOP_INSERT,
            sa("[::ffff:10.32.0.2]:80"),
            sa("[fd00::1]:9"),
            0,
        );
        assert_eq!(m.key, SlimAddr::v4([10, 32, 0, 2], 80));
        assert_eq!(m.validate(), Ok(()));

        let lease = SlimTableOp::lease(
            SLIM_TOP_INSERT,
            sa("192.168.77.1:61000"),
            ip("10.32.0.1"),
            3,
        );
        assert_eq!(lease.validate(), Ok(()));
        let unlease = SlimTableOp::lease(
            SLIM_TOP_REMOVE,
            sa("192.168.77.1:61000"),
            ip("10.32.0.1"),
            3,
        );
        assert_eq!((unlease.value, unlease.tag), (SlimAddr::NONE, 0));
        assert_eq!(unlease.validate(), Ok(()));
        let mut lp = lease;
        lp.value = SlimAddr::v4([10, 32, 0, 1], 5);
        assert_eq!(
            lp.validate(),
            Err(TableError::Invalid),
            "lease owner has no port"
        );
        let mut ur = unlease;
        ur.tag = 1;
        assert_eq!(
            ur.validate(),
            Err(TableError::Invalid),
            "remove names the key only"
        );

        let id = SlimTableOp::identity(SLIM_TOP_INSERT, 4026532000, ip("fd00:32::2"));
        assert_eq!(id.validate(), Ok(()));
        let mut idv = id;
        idv.value = SlimAddr::v4([1, 2, 3, 4], 0);
        assert_eq!(
            idv.validate(),
            Err(TableError::Invalid),
            "identity has no value"
        );
    }

    #[test]
    fn headers_are_validated() {
        let mut u = SlimTableUpdate::zeroed();
        assert_eq!(u.validate(), Ok(0));
        u.count = SLIM_TABLE_BATCH_MAX;
        u.flags = SLIM_UPDATE_RESET;
        assert_eq!(u.validate(), Ok(1024));
        u.count = SLIM_TABLE_BATCH_MAX + 1;
        assert_eq!(u.validate(), Err(TableError::TooBig));
        assert_eq!(TableError::TooBig.errno(), 7);
        u.count = 1;
        u.flags = 2;
        assert_eq!(u.validate(), Err(TableError::Invalid));
        u.flags = 0;
        u.reserved = 1;
        assert_eq!(u.validate(), Err(TableError::Invalid));
        u.reserved = 0;
        u.error_index = 5;
        assert_eq!(
            u.validate(),
            Err(TableError::Invalid),
            "out field set on input"
        );

        let mut d = SlimTableDump::zeroed();
        d.table = SLIM_TABLE_LEASES;
        assert_eq!(d.validate(), Err(TableError::Invalid), "capacity 0");
        d.capacity = 16;
        assert_eq!(d.validate(), Ok(1));
        d.table = 0;
        assert_eq!(d.validate(), Err(TableError::Invalid));
        d.table = SLIM_TABLE_IDENTITIES;
        d.capacity = SLIM_TABLE_BATCH_MAX + 1;
        assert_eq!(d.validate(), Err(TableError::Invalid));
    }

    /// Runs a batch on `base` the way the module does (without the limit).
    fn apply(
        base: &[SlimTableOp],
        ops: &[SlimTableOp],
        table: u16,
    ) -> Result<Vec<SlimTableOp>, BatchError> {
        let mut added = vec![SlimTableOp::zeroed(); ops.len()];
        let mut removed = vec![0u32; ops.len()];
        let p = plan_table(base, ops, table, &mut added, &mut removed)?;
        let mut out = Vec::new();
        assert!(merge_table(
            table,
            base,
            &removed[..p.n_removed],
            &added[..p.n_added],
            |r| {
                out.push(r);
                true
            }
        ));
        assert_eq!(out.len(), p.rows_after(base.len()));
        Ok(out)
    }

    fn lst(o: &str, h: &str) -> SlimTableOp {
        SlimTableOp::listener(SLIM_TOP_INSERT, sa(o), sa(h), 0)
    }
    fn rm(mut op: SlimTableOp) -> SlimTableOp {
        op.op = SLIM_TOP_REMOVE;
        op
    }

    #[test]
    fn batches_apply_in_order_and_keep_rows_sorted() {
        let t = SLIM_TABLE_LISTENERS;
        let a = lst("10.32.0.2:80", "192.168.77.2:40000");
        let b = lst("10.32.0.2:80", "192.168.77.2:40001"); // same overlay, second listener
        let c = lst("10.32.0.1:22", "192.168.77.1:40000");
        let rows = apply(&[], &[a, b, c], t).unwrap();
        assert_eq!(rows, vec![c, a, b]);
        assert_eq!(key_range(&rows, &a.key), 1..3);
        // Rows are in the order of their raw bytes (family, port, address): a missing key gives
        // an empty range.
        assert!(key_range(&rows, &SlimAddr::v4([10, 32, 0, 9], 1)).is_empty());
        // Duplicate insert: EEXIST with the index of the op at fault.
        assert_eq!(
            apply(&rows, &[lst("10.1.1.1:1", "1.1.1.1:1"), a], t),
            Err((TableError::Exists, 1))
        );
        assert_eq!(apply(&[], &[a, a], t), Err((TableError::Exists, 1)));
        // Remove of a missing key: ENOENT.
        assert_eq!(
            apply(&rows, &[rm(lst("10.9.9.9:9", "1.1.1.1:1"))], t),
            Err((TableError::NotFound, 0))
        );
        // Sequential: insert+remove cancel, remove+insert replaces, remove twice fails.
        assert_eq!(
            apply(
                &rows,
                &[
                    lst("10.5.5.5:5", "1.1.1.1:1"),
                    rm(lst("10.5.5.5:5", "1.1.1.1:1"))
                ],
                t
            )
            .unwrap(),
            rows
        );
        assert_eq!(apply(&rows, &[rm(a), a], t).unwrap(), rows);
        assert_eq!(
            apply(&rows, &[rm(a), rm(a)], t),
            Err((TableError::NotFound, 1))
        );
        assert_eq!(apply(&rows, &[rm(c), rm(b)], t).unwrap(), vec![a]);
        // Ops of other tables are not this table's business.
        let lease = SlimTableOp::lease(
            SLIM_TOP_INSERT,
            sa("192.168.77.1:61000"),
            ip("10.32.0.1"),
            0,
        );
        assert_eq!(apply(&rows, &[lease], t).unwrap(), rows);
        // Leases are keyed by the host endpoint only: a second owner is a duplicate.
        let l2 = SlimTableOp::lease(
            SLIM_TOP_INSERT,
            sa("192.168.77.1:61000"),
            ip("10.32.0.3"),
            0,
        );
        let leases = apply(&[], &[lease], SLIM_TABLE_LEASES).unwrap();
        assert_eq!(
            apply(&leases, &[l2], SLIM_TABLE_LEASES),
            Err((TableError::Exists, 0))
        );
        let unlease = SlimTableOp::lease(
            SLIM_TOP_REMOVE,
            sa("192.168.77.1:61000"),
            ip("10.32.0.1"),
            0,
        );
        assert_eq!(
            apply(&leases, &[unlease, l2], SLIM_TABLE_LEASES).unwrap(),
            vec![l2]
        );
        // Identities by (tag, address).
        let i1 = SlimTableOp::identity(SLIM_TOP_INSERT, 2, ip("10.32.0.1"));
        let i2 = SlimTableOp::identity(SLIM_TOP_INSERT, 1, ip("10.32.0.1"));
        assert_eq!(
            apply(&[], &[i1, i2], SLIM_TABLE_IDENTITIES).unwrap(),
            vec![i2, i1]
        );
    }

    #[test]
    fn scratch_too_small_is_refused_not_a_panic() {
        let a = lst("10.32.0.2:80", "192.168.77.2:40000");
        let mut added: [SlimTableOp; 0] = [];
        let mut removed = [0u32; 0];
        assert_eq!(
            plan_table(&[], &[a], SLIM_TABLE_LISTENERS, &mut added, &mut removed),
            Err((TableError::TooBig, 0))
        );
        assert_eq!(
            plan_table(
                &[a],
                &[rm(a)],
                SLIM_TABLE_LISTENERS,
                &mut added,
                &mut removed
            ),
            Err((TableError::TooBig, 0))
        );
    }

    #[test]
    fn a_full_buffer_stops_the_merge() {
        let a = lst("10.32.0.2:80", "192.168.77.2:40000");
        let mut n = 0;
        assert!(!merge_table(SLIM_TABLE_LISTENERS, &[a], &[], &[], |_| {
            n += 1;
            false
        }));
        assert_eq!(n, 1);
    }

    #[test]
    fn policy_rows_are_prefixes_with_port_ranges() {
        let p = |net: &str, len: u8, ports: (u16, u16)| {
            SlimTableOp::policy(SLIM_TOP_INSERT, 7, ip(net), len, ports)
        };
        // Host bits are cleared by the constructor; every row it makes is valid.
        let r = p("10.32.1.9", 24, (8000, 8100));
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(r.key, SlimAddr::v4([10, 32, 1, 0], 8000));
        assert_eq!(r.value, SlimAddr::v4([255, 255, 255, 0], 8100));
        for (net, len) in [
            ("0.0.0.0", 0),
            ("10.32.0.2", 32),
            ("::", 0),
            ("fd00:32::2", 128),
        ] {
            assert_eq!(p(net, len, (0, u16::MAX)).validate(), Ok(()), "{net}/{len}");
        }
        assert_eq!(p("fd00:32::", 64, (443, 443)).validate(), Ok(()));
        // Malformed rows: host bits set, a mask that is not ones then zeros, another family, ports
        // the wrong way round, flow info in the mask.
        let mut bad = r;
        bad.key = SlimAddr::v4([10, 32, 1, 9], 8000);
        assert_eq!(bad.validate(), Err(TableError::Invalid), "host bits");
        bad = r;
        bad.value = SlimAddr::v4([255, 0, 255, 0], 8100);
        assert_eq!(bad.validate(), Err(TableError::Invalid), "mask");
        bad.value = SlimAddr::v4([255, 255, 0b1011_0000, 0], 8100);
        assert_eq!(bad.validate(), Err(TableError::Invalid), "mask");
        bad = r;
        bad.value = SlimAddr::v6([0; 16], 8100, 0, 0);
        assert_eq!(bad.validate(), Err(TableError::Invalid), "family");
        bad = p("10.32.1.0", 24, (8100, 8000));
        assert_eq!(bad.validate(), Err(TableError::Invalid), "ports");
        bad = p("fd00:32::", 64, (0, 1));
        bad.value = SlimAddr::v6(
            bad.value
                .to_socket_addr()
                .map(|a| match a.ip() {
                    core::net::IpAddr::V6(v) => v.octets(),
                    _ => [0; 16],
                })
                .unwrap(),
            1,
            5,
            0,
        );
        assert_eq!(bad.validate(), Err(TableError::Invalid), "flow info");
    }

    #[test]
    fn policy_lookup_matches_prefix_port_and_tag() {
        let pol = |tag: u64, net: &str, len: u8, ports: (u16, u16)| {
            SlimTableOp::policy(SLIM_TOP_INSERT, tag, ip(net), len, ports)
        };
        let mut rows = vec![
            pol(7, "10.32.0.2", 32, (8080, 8080)),
            pol(7, "10.32.1.0", 24, (0, u16::MAX)),
            pol(7, "fd00:32::", 64, (443, 444)),
            pol(9, "0.0.0.0", 0, (0, u16::MAX)),
            pol(3, "10.32.0.3", 32, (22, 22)),
        ];
        rows.sort_by(|a, b| key_cmp(SLIM_TABLE_POLICY, a, b));
        let d = |s: &str| canonical_addr(sa(s));
        assert!(policy_allows(&rows, 7, &d("10.32.0.2:8080")));
        assert!(!policy_allows(&rows, 7, &d("10.32.0.2:8081")));
        assert!(policy_allows(&rows, 7, &d("10.32.1.200:1")));
        assert!(!policy_allows(&rows, 7, &d("10.32.2.1:1")));
        assert!(policy_allows(&rows, 7, &d("[fd00:32::9]:444")));
        assert!(!policy_allows(&rows, 7, &d("[fd00:32::9]:445")));
        assert!(!policy_allows(&rows, 7, &d("[fd00:33::9]:443")));
        // Another tag's rows do not count; "all" of IPv4 is not IPv6; no rows: nothing.
        assert!(!policy_allows(&rows, 7, &d("10.32.0.3:22")));
        assert!(policy_allows(&rows, 9, &d("10.99.0.1:1")));
        assert!(!policy_allows(&rows, 9, &d("[fd00:32::9]:443")));
        assert!(!policy_allows(&rows, 8, &d("10.32.0.2:8080")));
        assert!(!policy_allows(&[], 7, &d("10.32.0.2:8080")));
    }
}
