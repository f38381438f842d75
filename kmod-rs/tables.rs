// SPDX-License-Identifier: GPL-2.0

//! The tables a secure router keeps in the module (issue 15, points 1 and 4): listeners, leases,
//! identities and the policy's allow-lists, one [`TableSet`] per open file of `/dev/slim` (ABI and rules: `uapi/src/kabi_tables.rs`).
//!
//! Copy and swap: a set's current contents are an immutable [`Snapshot`] behind an `Arc`. An update
//! (serialised per set by `writer`, a sleeping mutex) builds the new snapshot with `GFP_KERNEL`
//! allocations while holding no spinlock, then swaps the pointer under `current`, a spinlock held only
//! for that swap (and for a reader's `Arc` clone); the old snapshot is dropped after the spinlock is
//! released (its last reference may free vmalloc'ed rows, which may sleep). Tables a batch does not
//! touch are shared between the old and the new snapshot (one `Arc` per table). Readers (DUMP,
//! STATS, and later the socket hooks of issue 15 points 2/3) take a snapshot and look up without any
//! lock held: they see the tables before or after a batch, never a part of it.
//!
//! Bounded: at most `table_limit` (module parameter) rows per table of one set; a batch that would
//! exceed it fails with ENOSPC and is counted. Nothing here panics: every index is checked, every
//! allocation is fallible.

use kernel::{
    alloc::KVVec,
    init::InPlaceInit,
    new_mutex, new_spinlock,
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        Arc, Mutex, SpinLock,
    },
    uaccess::{UserPtr, UserSlice},
};

use crate::kabi_tables::{
    self as kt, SlimTableDump, SlimTableOp, SlimTableStats, SlimTableUpdate, TableError,
};

/// Number of tables per set.
const NTABLES: usize = kt::SLIM_TABLES.len();

/// One table's rows, sorted by `kabi_tables::key_cmp`, no duplicate keys.
pub(crate) struct Table {
    rows: KVVec<SlimTableOp>,
}

/// The contents of a set at one generation. Immutable once published.
pub(crate) struct Snapshot {
    tables: [Arc<Table>; NTABLES],
    generation: u64,
}

impl Snapshot {
    /// The rows of table `i` (index into `kabi_tables::SLIM_TABLES`), in key order.
    pub(crate) fn rows(&self, i: usize) -> &[SlimTableOp] {
        self.tables.get(i).map_or(&[], |t| t.rows.as_slice())
    }
}

/// Rows of all sets, by table index (STATS `all_rows`), and live sets.
static ALL_ROWS: [Atomic<u64>; NTABLES] = [const { Atomic::new(0) }; NTABLES];
static SETS_LIVE: Atomic<u64> = Atomic::new(0);

/// The tables of one open file of `/dev/slim`.
#[pin_data(PinnedDrop)]
pub(crate) struct TableSet {
    /// The published snapshot; held only to clone or swap the `Arc`.
    #[pin]
    current: SpinLock<Arc<Snapshot>>,
    /// Serialises updates of this set (held across the sleeping allocations of a batch).
    #[pin]
    writer: Mutex<()>,
    ops_applied: Atomic<u64>,
    refused: Atomic<u64>,
    enospc: Atomic<u64>,
}

fn empty_table() -> Result<Arc<Table>> {
    Ok(Arc::new(Table { rows: KVVec::new() }, GFP_KERNEL)?)
}

impl TableSet {
    /// A new, empty set.
    pub(crate) fn new() -> Result<Arc<TableSet>> {
        let snap = Arc::new(
            Snapshot {
                tables: [empty_table()?, empty_table()?, empty_table()?, empty_table()?],
                generation: 0,
            },
            GFP_KERNEL,
        )?;
        let set = Arc::pin_init(
            try_pin_init!(TableSet {
                current <- new_spinlock!(snap, "slim_kern::TableSet::current"),
                writer <- new_mutex!((), "slim_kern::TableSet::writer"),
                ops_applied: Atomic::new(0),
                refused: Atomic::new(0),
                enospc: Atomic::new(0),
            }),
            GFP_KERNEL,
        )?;
        SETS_LIVE.fetch_add(1, Relaxed);
        Ok(set)
    }

    /// The current snapshot: an `Arc` clone under the spinlock, nothing else.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.current.lock().clone()
    }

    /// Publishes `next`; returns the previous snapshot, to be dropped by the caller outside the
    /// spinlock.
    fn publish(&self, next: Arc<Snapshot>) -> Arc<Snapshot> {
        let mut cur = self.current.lock();
        core::mem::replace(&mut *cur, next)
    }

    /// The router's file is closed: the set is emptied, so sockets restricted through it (which keep
    /// it alive) translate nothing more; a router that comes back loads a set of its own. Rows of a
    /// router that is gone would no longer follow listeners that close, and a host port could reach
    /// another program. On allocation failure the rows stay (nothing better can be done here).
    pub(crate) fn close(&self) {
        let Ok(tables) = (|| -> Result<[Arc<Table>; NTABLES]> {
            Ok([empty_table()?, empty_table()?, empty_table()?, empty_table()?])
        })() else {
            return;
        };
        let _w = self.writer.lock();
        let old = self.snapshot();
        let generation = old.generation.wrapping_add(1);
        let Ok(next) = Arc::new(Snapshot { tables, generation }, GFP_KERNEL) else {
            return;
        };
        for i in 0..NTABLES {
            ALL_ROWS[i].fetch_sub(old.rows(i).len() as u64, Relaxed);
        }
        // Dropped after the spinlock is released (it may free vmalloc'ed rows).
        let prev = self.publish(next);
        drop(prev);
        drop(old);
    }

    /// Counts a batch refused before it reached [`TableSet::update`] (a malformed header).
    pub(crate) fn count_refused(&self, e: TableError) {
        self.refused.fetch_add(1, Relaxed);
        if e == TableError::NoSpace {
            self.enospc.fetch_add(1, Relaxed);
        }
    }

    /// `SLIM_IOC_TABLE_UPDATE`: `hdr` has been validated (`count` ops at `hdr.ops`). Returns the new
    /// generation, or the error and the index of the op at fault.
    pub(crate) fn update(&self, hdr: &SlimTableUpdate, limit: usize) -> Result<u64, (Error, u32)> {
        let r = self.update_inner(hdr, limit);
        if let Err((e, _)) = &r {
            if *e != EFAULT && *e != EPERM {
                self.refused.fetch_add(1, Relaxed);
            }
            if *e == ENOSPC {
                self.enospc.fetch_add(1, Relaxed);
            }
        }
        r
    }

    fn update_inner(&self, hdr: &SlimTableUpdate, limit: usize) -> Result<u64, (Error, u32)> {
        let no = kt::SLIM_NO_INDEX;
        let count = hdr.count as usize;
        // Copy the ops in (sleeping allocation and user copies; no lock held yet).
        let mut ops = KVVec::with_capacity(count, GFP_KERNEL).map_err(|_| (ENOMEM, no))?;
        let mut reader = UserSlice::new(
            UserPtr::from_addr(hdr.ops as usize),
            count * size_of::<SlimTableOp>(),
        )
        .reader();
        for i in 0..count {
            let op: SlimTableOp = reader.read().map_err(|e| (e, no))?;
            op.validate().map_err(|e| (table_errno(e), i as u32))?;
            ops.push(op, GFP_KERNEL).map_err(|_| (ENOMEM, no))?;
        }
        let reset = hdr.flags & kt::SLIM_UPDATE_RESET != 0;
        if count == 0 && !reset {
            return Ok(self.snapshot().generation);
        }
        // Scratch for the planner: at most `count` rows added or removed per table.
        let mut added = KVVec::from_elem(SlimTableOp::zeroed(), count, GFP_KERNEL).map_err(|_| (ENOMEM, no))?;
        let mut removed = KVVec::from_elem(0u32, count, GFP_KERNEL).map_err(|_| (ENOMEM, no))?;

        let guard = self.writer.lock();
        let old = self.snapshot();
        let empty = if reset { Some(empty_table().map_err(|e| (e, no))?) } else { None };
        let mut next: [Option<Arc<Table>>; NTABLES] = [None, None, None, None];
        for (i, table) in kt::SLIM_TABLES.iter().enumerate() {
            let base_table = match &empty {
                Some(e) => e.clone(),
                None => old.tables[i].clone(),
            };
            let touched = ops.iter().any(|o| o.table == *table);
            if !touched {
                next[i] = Some(base_table);
                continue;
            }
            let base = base_table.rows.as_slice();
            let plan = kt::plan_table(base, &ops, *table, &mut added, &mut removed)
                .map_err(|(e, at)| (table_errno(e), at))?;
            let n = plan.rows_after(base.len());
            if n > limit {
                return Err((ENOSPC, no));
            }
            let mut rows = KVVec::with_capacity(n, GFP_KERNEL).map_err(|_| (ENOMEM, no))?;
            let complete = kt::merge_table(
                *table,
                base,
                &removed[..plan.n_removed],
                &added[..plan.n_added],
                |r| rows.push_within_capacity(r).is_ok(),
            );
            if !complete {
                return Err((ENOMEM, no));
            }
            next[i] = Some(Arc::new(Table { rows }, GFP_KERNEL).map_err(|_| (ENOMEM, no))?);
        }
        let [Some(t0), Some(t1), Some(t2), Some(t3)] = next else {
            return Err((EINVAL, no));
        };
        let generation = old.generation.wrapping_add(1);
        let snap = Arc::new(Snapshot { tables: [t0, t1, t2, t3], generation }, GFP_KERNEL)
            .map_err(|_| (ENOMEM, no))?;
        for i in 0..NTABLES {
            let (was, now) = (old.rows(i).len() as u64, snap.rows(i).len() as u64);
            ALL_ROWS[i].fetch_add(now.wrapping_sub(was), Relaxed);
        }
        let prev = self.publish(snap);
        drop(guard);
        // Outside every lock: may free the previous rows (vfree may sleep).
        drop(prev);
        drop(old);
        self.ops_applied.fetch_add(count as u64, Relaxed);
        Ok(generation)
    }

    /// `SLIM_IOC_TABLE_DUMP`: `req` validated, `ti` its table index. Copies one page of one snapshot
    /// to `req.rows` and fills in `count`, `total` and `generation`.
    pub(crate) fn dump(&self, req: &mut SlimTableDump, ti: usize) -> Result {
        let snap = self.snapshot();
        let rows = snap.rows(ti);
        let start = (req.start as usize).min(rows.len());
        let end = start.saturating_add(req.capacity as usize).min(rows.len());
        let page = rows.get(start..end).unwrap_or(&[]);
        let mut writer = UserSlice::new(
            UserPtr::from_addr(req.rows as usize),
            req.capacity as usize * size_of::<SlimTableOp>(),
        )
        .writer();
        for r in page {
            writer.write(r)?;
        }
        req.count = page.len() as u32;
        req.total = u32::try_from(rows.len()).unwrap_or(u32::MAX);
        req.generation = snap.generation;
        Ok(())
    }

    /// `SLIM_IOC_TABLE_STATS` for this set.
    pub(crate) fn stats(&self, limit: usize) -> SlimTableStats {
        let snap = self.snapshot();
        let mut s = SlimTableStats::zeroed();
        for (i, table) in kt::SLIM_TABLES.iter().enumerate() {
            s.rows[*table as usize] = snap.rows(i).len() as u64;
            s.all_rows[*table as usize] = ALL_ROWS[i].load(Relaxed);
        }
        s.limit = limit as u64;
        s.generation = snap.generation;
        s.ops_applied = self.ops_applied.load(Relaxed);
        s.refused_batches = self.refused.load(Relaxed);
        s.enospc = self.enospc.load(Relaxed);
        s.sets_live = SETS_LIVE.load(Relaxed);
        s.translated = crate::COUNTERS.translated.load(Relaxed);
        s.not_found = crate::COUNTERS.not_found.load(Relaxed);
        s.policy_denied = crate::COUNTERS.policy_denied.load(Relaxed);
        s
    }
}

#[pinned_drop]
impl PinnedDrop for TableSet {
    fn drop(self: Pin<&mut Self>) {
        // The last reference: no reader or writer can hold the locks any more.
        let snap = self.snapshot();
        for i in 0..NTABLES {
            ALL_ROWS[i].fetch_sub(snap.rows(i).len() as u64, Relaxed);
        }
        SETS_LIVE.fetch_sub(1, Relaxed);
    }
}

/// The errno of a refused batch.
pub(crate) fn table_errno(e: TableError) -> Error {
    match e {
        TableError::Invalid => EINVAL,
        TableError::TooBig => E2BIG,
        TableError::Exists => EEXIST,
        TableError::NotFound => ENOENT,
        TableError::NoSpace => ENOSPC,
    }
}
