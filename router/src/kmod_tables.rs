//! The secure router's tables in the kernel module (issue 15, points 1 and 4): the cluster's Slim
//! listeners, the port leases, this host's containers' identities and the Slim policy's
//! allow-list of each of them it constrains, loaded into `slim_kern`
//! through the table ioctls (`slim_uapi::kabi_tables`), so that the module can later set
//! connections up by itself.
//!
//! [`KernelTables`] is the [`TableSink`] the router's [`crate::tables::Tables`] reports its
//! changes to: it keeps the state the module should hold, turns each change into INSERT/REMOVE ops
//! and sends them as one batch per change (all or nothing in the module; a run of leased ports is
//! one change, see `Tables::leases_done`). On start, and after any
//! refused batch, it loads everything again: one RESET batch, then inserts in batches of
//! `SLIM_TABLE_BATCH_MAX`. A refusal is logged with its errno and a hint and never stops the
//! router; a module without `SLIM_FEAT_TABLES` is logged once and the router runs without tables.
//!
//! The module keeps one table set per open file of `/dev/slim`; this router's set is the one of its
//! own open file (the sink works on a duplicate descriptor of it), so another router on the same
//! kernel never touches it.

use crate::kmod::SlimDev;
use crate::policy::Policy;
use crate::tables::TableSink;
use ipnet::IpNet;
use slim_uapi::kabi_tables::{
    SlimTableOp, SLIM_TABLE_BATCH_MAX, SLIM_TOP_INSERT, SLIM_TOP_REMOVE, SLIM_UPDATE_RESET,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

/// What the router did with the module's tables (for status and metrics; the sizes come from the
/// module itself, `SLIM_IOC_TABLE_STATS`).
#[derive(Default)]
pub struct Counters {
    /// Batches the module applied.
    pub batches: AtomicU64,
    /// Batches the module refused.
    pub refused: AtomicU64,
    /// Full loads (RESET + everything): the first one, and one after each refusal.
    pub loads: AtomicU64,
    /// The module holds exactly the router's state.
    pub in_sync: AtomicBool,
    /// errno of the last refusal (0: none).
    pub last_errno: AtomicI32,
}

/// The router's side of its table set in the module.
pub struct KernelTables {
    dev: SlimDev,
    /// What the module should hold: overlay endpoint -> (host listener, owner tag).
    listeners: BTreeMap<SocketAddr, Vec<(SocketAddr, u64)>>,
    /// Host endpoint -> overlay address of its holder.
    leases: BTreeMap<SocketAddr, IpAddr>,
    /// Container tag -> its overlay addresses.
    identities: BTreeMap<u64, Vec<IpAddr>>,
    /// The Slim policy, if any: a constrained container's allow-list goes with its identity.
    policy: Option<Policy>,
    /// Container tag -> its allow-list (prefix, lowest port, highest port), for the containers
    /// the policy constrains.
    allow_lists: BTreeMap<u64, Vec<(IpNet, u16, u16)>>,
    /// Ops not yet sent (one batch per change).
    pending: Vec<SlimTableOp>,
    /// A refusal was logged and no load has succeeded since (log once per streak).
    failing: bool,
    counters: Arc<Counters>,
}

/// A host or overlay endpoint as the module's tables spell it (IPv4-mapped IPv6 as IPv4).
fn canonical(sa: SocketAddr) -> SocketAddr {
    SocketAddr::new(sa.ip().to_canonical(), sa.port())
}

/// Makes `new` the rows of `key` in `map` (none: the key goes); returns the rows it had.
fn replace_rows<K: Ord, T: Clone>(map: &mut BTreeMap<K, Vec<T>>, key: K, new: &[T]) -> Vec<T> {
    if new.is_empty() {
        map.remove(&key).unwrap_or_default()
    } else {
        map.insert(key, new.to_vec()).unwrap_or_default()
    }
}

/// A policy table op: container `tag` may reach `net` on ports `lo..=hi`.
fn policy_op(op: u16, tag: u64, (net, lo, hi): (IpNet, u16, u16)) -> SlimTableOp {
    SlimTableOp::policy(op, tag, net.addr(), net.prefix_len(), (lo, hi))
}

/// What an errno from TABLE_UPDATE most likely means for an operator.
pub fn hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::ENOSPC) => "more rows than the module's table_limit: load slim_kern with a larger limit (insmod slim_kern.ko table_limit=N, rows per table)",
        Some(libc::EINVAL) | Some(libc::EEXIST) | Some(libc::ENOENT) | Some(libc::E2BIG) => {
            "the module refused a batch this router built: load the slim_kern.ko built with this slim-router"
        }
        Some(libc::ENOMEM) => "the kernel is short of memory",
        Some(libc::EPERM) => "the router needs CAP_NET_ADMIN",
        _ => "see the module's kernel log",
    }
}

impl KernelTables {
    /// A mirror of nothing yet, on `dev`.
    fn empty(dev: SlimDev, policy: Option<Policy>) -> KernelTables {
        KernelTables {
            dev,
            listeners: BTreeMap::new(),
            leases: BTreeMap::new(),
            identities: BTreeMap::new(),
            policy,
            allow_lists: BTreeMap::new(),
            pending: Vec::new(),
            failing: false,
            counters: Arc::default(),
        }
    }

    /// The sink for the table set of `dev`'s open file, fully loaded (empty at start); `None` if
    /// the module keeps no tables (logged once) or the descriptor cannot be duplicated. `policy`:
    /// the router's Slim policy, whose allow-lists are loaded if the module can check them.
    pub fn open(dev: &SlimDev, policy: Option<&Policy>) -> Option<KernelTables> {
        if !dev.has_tables() {
            tracing::info!("slim_kern has no tables (no SLIM_FEAT_TABLES in VERSION): running without them; every connect and accept asks this router");
            return None;
        }
        let dev = match dev.try_clone() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot duplicate the /dev/slim descriptor: running without kernel tables");
                return None;
            }
        };
        let policy = policy.filter(|_| dev.has_policy()).cloned();
        let mut t = KernelTables::empty(dev, policy);
        t.load();
        Some(t)
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Every row the module should hold, as INSERT ops.
    fn all_rows(&self) -> Vec<SlimTableOp> {
        let mut ops = Vec::new();
        for (overlay, hosts) in &self.listeners {
            for (host, tag) in hosts {
                ops.push(SlimTableOp::listener(
                    SLIM_TOP_INSERT,
                    *overlay,
                    *host,
                    *tag,
                ));
            }
        }
        for (host, owner) in &self.leases {
            ops.push(SlimTableOp::lease(SLIM_TOP_INSERT, *host, *owner, 0));
        }
        for (tag, ips) in &self.identities {
            for ip in ips {
                ops.push(SlimTableOp::identity(SLIM_TOP_INSERT, *tag, *ip));
            }
        }
        for (tag, list) in &self.allow_lists {
            for row in list {
                ops.push(policy_op(SLIM_TOP_INSERT, *tag, *row));
            }
        }
        ops
    }

    /// Rows the router holds now, by table (listeners, leases, identities, policy).
    pub fn sizes(&self) -> [usize; 4] {
        [
            self.listeners.values().map(Vec::len).sum(),
            self.leases.len(),
            self.identities.values().map(Vec::len).sum(),
            self.allow_lists.values().map(Vec::len).sum(),
        ]
    }

    fn refused(&mut self, what: &str, e: &crate::kmod::TableUpdateError) {
        let errno = e.error.raw_os_error();
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        self.counters
            .last_errno
            .store(errno.unwrap_or(-1), Ordering::Relaxed);
        self.counters.in_sync.store(false, Ordering::Relaxed);
        if !self.failing {
            let [l, d, i, p] = self.sizes();
            tracing::warn!(
                error = %e, listeners = l, leases = d, identities = i, policy = p,
                "slim_kern refused the {what} of this router's tables; {}; the module's tables are \
                 reloaded at the next change",
                hint(errno)
            );
        }
        self.failing = true;
    }

    /// Loads everything again: RESET with the first batch, the rest in further batches.
    fn load(&mut self) {
        self.pending.clear();
        self.counters.loads.fetch_add(1, Ordering::Relaxed);
        let ops = self.all_rows();
        let mut chunks: Vec<&[SlimTableOp]> = ops.chunks(SLIM_TABLE_BATCH_MAX as usize).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for (n, chunk) in chunks.into_iter().enumerate() {
            let flags = if n == 0 { SLIM_UPDATE_RESET } else { 0 };
            if let Err(e) = self.dev.table_update(flags, chunk) {
                self.refused("full load", &e);
                return;
            }
            self.counters.batches.fetch_add(1, Ordering::Relaxed);
        }
        if self.failing {
            let [l, d, i, p] = self.sizes();
            tracing::info!(
                listeners = l,
                leases = d,
                identities = i,
                policy = p,
                "slim_kern holds this router's tables again"
            );
        }
        self.failing = false;
        self.counters.in_sync.store(true, Ordering::Relaxed);
    }

    /// Queues the ops that turn `old` into `new` (each a list of rows of one key): removes first.
    fn diff<T: PartialEq + Copy>(
        &mut self,
        old: &[T],
        new: &[T],
        op: impl Fn(u16, T) -> SlimTableOp,
    ) {
        for x in old.iter().filter(|x| !new.contains(x)) {
            self.pending.push(op(SLIM_TOP_REMOVE, *x));
        }
        for x in new.iter().filter(|x| !old.contains(x)) {
            self.pending.push(op(SLIM_TOP_INSERT, *x));
        }
    }
}

impl TableSink for KernelTables {
    fn set_listeners(&mut self, overlay: SocketAddr, hosts: &[(SocketAddr, u64)]) {
        let overlay = canonical(overlay);
        let mut new: Vec<(SocketAddr, u64)> = Vec::new();
        for (h, tag) in hosts {
            let h = canonical(*h);
            // One row per (overlay, host): the first tag seen wins.
            if !new.iter().any(|(x, _)| *x == h) {
                new.push((h, *tag));
            }
        }
        let old = replace_rows(&mut self.listeners, overlay, &new);
        self.diff(&old, &new, |op, (h, tag)| {
            SlimTableOp::listener(op, overlay, h, tag)
        });
    }

    fn set_lease(&mut self, host: SocketAddr, owner: Option<IpAddr>) {
        let host = canonical(host);
        let owner = owner.map(|o| o.to_canonical());
        let old = match owner {
            Some(o) => self.leases.insert(host, o),
            None => self.leases.remove(&host),
        };
        let (old, new): (Vec<IpAddr>, Vec<IpAddr>) =
            (old.into_iter().collect(), owner.into_iter().collect());
        self.diff(&old, &new, |op, o| SlimTableOp::lease(op, host, o, 0));
    }

    fn set_identity(&mut self, tag: u64, ips: &[IpAddr]) {
        let mut new: Vec<IpAddr> = ips.iter().map(|i| i.to_canonical()).collect();
        new.sort();
        new.dedup();
        let old = replace_rows(&mut self.identities, tag, &new);
        self.diff(&old, &new, |op, ip| SlimTableOp::identity(op, tag, ip));
        // The allow-list follows the identity: loaded with it, gone with it.
        let list = match &self.policy {
            Some(p) if !new.is_empty() => p.allow_list(&new).unwrap_or_default(),
            _ => Vec::new(),
        };
        let old = replace_rows(&mut self.allow_lists, tag, &list);
        self.diff(&old, &list, |op, row| policy_op(op, tag, row));
    }

    fn flush(&mut self) {
        if self.failing {
            // A batch was refused earlier: the module's rows are not known; start over.
            self.load();
            return;
        }
        let ops = std::mem::take(&mut self.pending);
        for chunk in ops.chunks(SLIM_TABLE_BATCH_MAX as usize) {
            if let Err(e) = self.dev.table_update(0, chunk) {
                self.refused("update", &e);
                // Try once right away: the refused batch may have been the only problem (a row
                // over the limit that another change has since removed comes back at the next).
                self.load();
                return;
            }
            self.counters.batches.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slim_uapi::kabi_tables::{SLIM_TABLE_LEASES, SLIM_TABLE_LISTENERS, SLIM_TABLE_POLICY};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hints_name_the_fix() {
        assert!(hint(Some(libc::ENOSPC)).contains("table_limit"));
        assert!(hint(Some(libc::EINVAL)).contains("built with this slim-router"));
    }

    #[test]
    fn changes_become_minimal_batches() {
        // /dev/null stands in for the device: no ioctl is made (nothing is flushed).
        let Ok(dev) = crate::kmod::SlimDev::for_tests() else {
            return;
        };
        // The diffing without a device: the pending ops are inspected, never sent.
        let mut t = KernelTables::empty(dev, None);
        let o = sa("10.32.0.2:80");
        t.set_listeners(
            o,
            &[
                (sa("192.168.77.2:40000"), 7),
                (sa("[::ffff:192.168.77.2]:40000"), 7),
            ],
        );
        assert_eq!(
            t.pending.len(),
            1,
            "the v4-mapped spelling is the same listener"
        );
        t.set_listeners(
            o,
            &[(sa("192.168.77.2:40000"), 7), (sa("192.168.77.2:40001"), 7)],
        );
        assert_eq!(t.pending.len(), 2);
        assert_eq!(t.pending[1].op, SLIM_TOP_INSERT);
        t.set_listeners(o, &[]);
        assert_eq!(t.pending.len(), 4);
        assert!(t.pending[2..]
            .iter()
            .all(|x| x.op == SLIM_TOP_REMOVE && x.table == SLIM_TABLE_LISTENERS));
        assert!(t.listeners.is_empty());
        let h = sa("192.168.77.1:61000");
        t.set_lease(h, Some("10.32.0.1".parse().unwrap()));
        t.set_lease(h, Some("10.32.0.1".parse().unwrap()));
        assert_eq!(t.pending.len(), 5, "an unchanged lease sends nothing");
        t.set_lease(h, Some("10.32.0.3".parse().unwrap()));
        assert_eq!(
            t.pending[5..]
                .iter()
                .map(|x| (x.op, x.table))
                .collect::<Vec<_>>(),
            vec![
                (SLIM_TOP_REMOVE, SLIM_TABLE_LEASES),
                (SLIM_TOP_INSERT, SLIM_TABLE_LEASES)
            ],
            "a change of owner is a remove and an insert in one batch"
        );
        t.set_identity(
            9,
            &["10.32.0.1".parse().unwrap(), "10.32.0.1".parse().unwrap()],
        );
        assert_eq!(t.sizes(), [0, 1, 1, 0]);
        assert_eq!(t.all_rows().len(), 2);
        assert!(t.all_rows().iter().all(|r| r.validate().is_ok()));
        t.set_identity(9, &[]);
        assert_eq!(t.sizes(), [0, 1, 0, 0]);
        // With a policy: a constrained container's allow-list comes and goes with its identity;
        // a container the policy does not constrain gets none.
        t.policy = Some(
            Policy::parse(
                "[[allow]]\nfrom = [\"10.32.0.1/32\"]\nto = [\"10.32.0.2/32:80\", \"all\"]\n",
            )
            .unwrap(),
        );
        t.pending.clear();
        t.set_identity(9, &["10.32.0.1".parse().unwrap()]);
        assert_eq!(t.sizes(), [0, 1, 1, 3]);
        assert!(t
            .pending
            .iter()
            .all(|r| r.op == SLIM_TOP_INSERT && r.validate().is_ok()));
        assert_eq!(
            t.pending
                .iter()
                .filter(|r| r.table == SLIM_TABLE_POLICY)
                .count(),
            3
        );
        t.set_identity(5, &["10.32.0.3".parse().unwrap()]);
        assert_eq!(t.sizes(), [0, 1, 2, 3]);
        t.pending.clear();
        t.set_identity(9, &[]);
        assert_eq!(t.sizes(), [0, 1, 1, 0]);
        assert_eq!(
            t.pending.iter().filter(|r| r.op == SLIM_TOP_REMOVE).count(),
            4
        );
    }
}
