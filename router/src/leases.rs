//! Port leases: host ports this router binds for the pooled sockets of one overlay address
//! only, and tells every peer router about before handing the sockets out. A peer then knows
//! who a connection from such a port is without any per-connection announcement, so no router
//! wakes up per connection on either host (docs/design.md, "Port leases").
//!
//! Why it is exact:
//! - Nobody else takes these ports: the range lies outside `ip_local_port_range`, so no
//!   automatic port choice uses it, and only this router binds there (the range is Slim's, as
//!   `--lease-ports` says).
//! - A port is bound for a new lease only when no socket on it is one that a program could hold
//!   (TIME_WAIT leftovers are not such sockets; sockets that are only bound are). The bind of
//!   the new lease's socket itself tells, port by port (`leasewatch`); where the router cannot
//!   do that (no CAP_SETUID), a sock_diag dump of the whole host does (sockets that are only
//!   bound are listed by Linux 6.8 and later). So the sockets of a port's previous lease are
//!   all gone.
//! - A port changes owner only after every connected peer has acknowledged the new lease, and
//!   a peer first pins the connections it already has from that port to their old identity
//!   (`Tables::lease_from_peer`).
//!
//! Leased sockets carry SO_REUSEADDR, as ports chosen by connect() effectively do: a new
//! lease's socket binds next to the previous one's TIME_WAIT leftover, and reaches the same
//! peer again once the kernel allows reusing that 4-tuple (net.ipv4.tcp_tw_reuse, after a
//! second). Ports are therefore handed out least recently leased first.

use crate::hostsock;
use crate::leasewatch::{self, Refused};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Sweeps (sock_diag dumps) at most this often when the range runs out.
const SWEEP_EVERY: Duration = Duration::from_millis(20);
/// Binds that may fail per call before giving up (ports a sweep found free may have been
/// taken since, e.g. by a listener; ports whose connections are still open).
const MAX_FAILED_BINDS: usize = 64;
/// Leasing by bind, a port goes to a new socket this long after its last lease at the
/// earliest, as long as other ports are left: a new connection to the same destination reuses
/// the 4-tuple of the old one's TIME_WAIT leftover only once that is over a second old
/// (net.ipv4.tcp_tw_reuse).
const REUSE_AFTER: Duration = Duration::from_secs(2);

struct Lease {
    owner: IpAddr,
    at: Instant,
    /// Which of `LeaseUids::slots` its socket was made under.
    slot: u8,
}

pub struct LeaseBook {
    lo: u16,
    hi: u16,
    /// Every port this router has leased: to whom, and when last.
    leases: HashMap<u16, Lease>,
    /// Ports to try, by their last owner here (so that an owner gets its own ports back and
    /// ports rarely change owner), least recently leased first: leasing by bind, every port
    /// leased here (the bind tells whether it is free); else the ports the last sweep found
    /// free.
    free: HashMap<IpAddr, VecDeque<u16>>,
    /// Ports this router never leased (sweeping: those the last sweep found free).
    unowned: VecDeque<u16>,
    last_sweep: Option<Instant>,
    /// Some: a port's next bind says if it is free (`leasewatch`), under these uids; None:
    /// sweeps do.
    by_bind: Option<leasewatch::LeaseUids>,
}

/// Sockets bound to leased ports, and which of those ports changed owner (to be told to peers).
pub struct Leased {
    /// Each with its port.
    pub sockets: Vec<(OwnedFd, u16)>,
    pub changed: Vec<u16>,
}

impl LeaseBook {
    /// The ports `lo..=hi`, found free by sock_diag sweeps of the whole host.
    pub fn new(lo: u16, hi: u16) -> Self {
        LeaseBook {
            lo,
            hi,
            leases: HashMap::new(),
            free: HashMap::new(),
            unowned: VecDeque::new(),
            last_sweep: None,
            by_bind: None,
        }
    }

    /// The ports `lo..=hi`, each found free by the bind of its next socket (`leasewatch`).
    pub fn by_bind(lo: u16, hi: u16, uids: leasewatch::LeaseUids) -> Self {
        LeaseBook {
            unowned: (lo..=hi).collect(),
            by_bind: Some(uids),
            ..Self::new(lo, hi)
        }
    }

    pub fn range(&self) -> (u16, u16) {
        (self.lo, self.hi)
    }

    /// Rebuilds the free lists from `live`: the (port, cookie) of every socket in the range
    /// that a program may still hold.
    fn sweep(&mut self, live: &[(u16, u64)]) {
        let busy: HashSet<u16> = live.iter().map(|(p, _)| *p).collect();
        self.unowned = (self.lo..=self.hi)
            .filter(|p| !busy.contains(p) && !self.leases.contains_key(p))
            .collect();
        let mut dead: Vec<(Instant, u16, IpAddr)> = self
            .leases
            .iter()
            .filter(|(port, _)| !busy.contains(port))
            .map(|(port, l)| (l.at, *port, l.owner))
            .collect();
        dead.sort_unstable();
        self.free.clear();
        for (_, port, owner) in &dead {
            self.free.entry(*owner).or_default().push_back(*port);
        }
        tracing::debug!(
            free = dead.len() + self.unowned.len(),
            busy = busy.len(),
            "lease sweep"
        );
    }

    /// A port to bind next for `owner`: its own free ports, then never-leased ones, then
    /// anybody's.
    fn next_port(&mut self, owner: IpAddr) -> Option<u16> {
        if let Some(p) = self.free.get_mut(&owner).and_then(|v| v.pop_front()) {
            return Some(p);
        }
        if let Some(p) = self.unowned.pop_front() {
            return Some(p);
        }
        self.free.values_mut().find_map(|v| v.pop_front())
    }

    /// Leasing by bind: the port to try next for `owner`. Its own ports leased long enough
    /// ago (`REUSE_AFTER`), then never-leased ones, then anybody's leased long enough ago, then
    /// the least recently leased of all.
    fn next_to_try(&mut self, owner: IpAddr) -> Option<u16> {
        let at = |p: Option<&u16>| p.and_then(|p| self.leases.get(p)).map(|l| l.at);
        let old = |p: Option<&u16>| at(p).is_some_and(|t| t.elapsed() >= REUSE_AFTER);
        if old(self.free.get(&owner).and_then(|v| v.front())) {
            return self.free.get_mut(&owner)?.pop_front();
        }
        if let Some(p) = self.unowned.pop_front() {
            return Some(p);
        }
        let pick = self
            .free
            .iter()
            .filter_map(|(o, v)| at(v.front()).map(|t| (old(v.front()), *o != owner, t, *o)))
            .min_by_key(|(is_old, others, t, _)| (!is_old, *others, *t))
            .map(|(_, _, _, o)| o)?;
        self.free.get_mut(&pick)?.pop_front()
    }

    /// Leasing by bind: binds up to `count` sockets (see `lease`).
    fn lease_by_bind(
        &mut self,
        uids: leasewatch::LeaseUids,
        family: i32,
        host: IpAddr,
        owner: IpAddr,
        count: usize,
    ) -> Leased {
        let mut out = Leased {
            sockets: Vec::new(),
            changed: Vec::new(),
        };
        // Ports found still held (or not bindable now), tried again in later calls, after the
        // others.
        let mut held: Vec<(Option<IpAddr>, u16)> = Vec::new();
        while out.sockets.len() < count && held.len() < MAX_FAILED_BINDS {
            let Some(port) = self.next_to_try(owner) else {
                break;
            };
            let prev = self.leases.get(&port).map(|l| (l.owner, l.slot));
            let plan = leasewatch::plan(prev.map(|(_, s)| s));
            match leasewatch::bind_leased(&uids, family, host, port, plan) {
                Ok(fd) => {
                    let lease = Lease {
                        owner,
                        at: Instant::now(),
                        slot: plan.slot,
                    };
                    self.leases.insert(port, lease);
                    self.free.entry(owner).or_default().push_back(port);
                    if prev.is_none_or(|(o, _)| o != owner) {
                        out.changed.push(port);
                    }
                    out.sockets.push((fd, port));
                }
                Err(e) => {
                    if let Refused::Other(e) = e {
                        tracing::debug!(port, error = %e, "leased port not bound");
                    }
                    held.push((prev.map(|(o, _)| o), port));
                }
            }
        }
        for (o, port) in held {
            match o {
                Some(o) => self.free.entry(o).or_default().push_back(port),
                None => self.unowned.push_back(port),
            }
        }
        out
    }

    /// Binds up to `count` sockets of `family` to `host` and ports leased to `owner`. Leasing
    /// by bind, each bind says whether its port is free and `live` is not called; else, when
    /// the free lists run out, `live` (see `sweep`) refills them.
    pub fn lease(
        &mut self,
        family: i32,
        host: IpAddr,
        owner: IpAddr,
        count: usize,
        live: impl FnOnce(u16, u16) -> io::Result<Vec<(u16, u64)>>,
    ) -> Leased {
        if let Some(uids) = self.by_bind {
            return self.lease_by_bind(uids, family, host, owner, count);
        }
        let mut out = Leased {
            sockets: Vec::new(),
            changed: Vec::new(),
        };
        let mut live = Some(live);
        let mut failed = 0;
        while out.sockets.len() < count && failed < MAX_FAILED_BINDS {
            let Some(port) = self.next_port(owner) else {
                let due = self.last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY);
                let Some(f) = live.take().filter(|_| due) else {
                    break;
                };
                self.last_sweep = Some(Instant::now());
                match f(self.lo, self.hi) {
                    Ok(l) => self.sweep(&l),
                    Err(e) => {
                        tracing::warn!(error = %e, "sock_diag dump failed; leased ports not reclaimed");
                        break;
                    }
                }
                continue;
            };
            let Ok(fd) = hostsock::reusable_socket(family, host, port) else {
                failed += 1;
                continue;
            };
            let prev = self.leases.insert(
                port,
                Lease {
                    owner,
                    at: Instant::now(),
                    slot: 0,
                },
            );
            if prev.is_none_or(|l| l.owner != owner) {
                out.changed.push(port);
            }
            out.sockets.push((fd, port));
        }
        out
    }

    pub fn owner(&self, port: u16) -> Option<IpAddr> {
        self.leases.get(&port).map(|l| l.owner)
    }

    /// Every lease, for a peer that just connected.
    pub fn all(&self) -> Vec<(u16, IpAddr)> {
        self.leases.iter().map(|(p, l)| (*p, l.owner)).collect()
    }

    /// The leases a socket still holds, by `live` (see `sweep`). A port whose sockets are all
    /// gone stays in the book under its last owner (its peers keep that owner until the port is
    /// leased again) but is held by nobody: a removed container holds none.
    pub fn held(&self, live: &[(u16, u64)]) -> Vec<(u16, IpAddr)> {
        let busy: HashSet<u16> = live.iter().map(|(p, _)| *p).collect();
        self.leases
            .iter()
            .filter(|(p, _)| busy.contains(p))
            .map(|(p, l)| (*p, l.owner))
            .collect()
    }
}

/// The lease range a router uses when none is given: the ports above the ephemeral range,
/// which no automatic port choice takes. None if there are too few.
pub fn default_range() -> Option<(u16, u16)> {
    let (_, hi) = hostsock::ephemeral_ports();
    let lo = hi.checked_add(1)?;
    (65535 - lo as u32 + 1 >= MIN_PORTS).then_some((lo, 65535))
}

/// Fewer ports than this make leasing pointless.
pub const MIN_PORTS: u32 = 64;

/// Checks a lease range given by the operator against this namespace's ephemeral range.
pub fn check_range(lo: u16, hi: u16) -> Result<(), String> {
    if lo == 0 || hi < lo || (hi as u32 - lo as u32 + 1) < MIN_PORTS {
        return Err(format!(
            "--lease-ports {lo}-{hi}: give a range of at least {MIN_PORTS} ports, e.g. 61000-65535"
        ));
    }
    let (elo, ehi) = hostsock::ephemeral_ports();
    if lo <= ehi && hi >= elo {
        return Err(format!(
            "--lease-ports {lo}-{hi} overlaps the ephemeral port range {elo}-{ehi} \
             (net.ipv4.ip_local_port_range): a connection from a port chosen by connect() there \
             could be taken for a leased one; pick ports outside it (or shrink that range)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ports_with_a_live_socket_are_held() {
        let mut book = LeaseBook::new(50000, 50003);
        let owner: IpAddr = "10.32.2.1".parse().unwrap();
        let host: IpAddr = "127.0.0.1".parse().unwrap();
        let leased = book.lease(libc::AF_INET, host, owner, 2, |_, _| Ok(Vec::new()));
        let ports: Vec<u16> = leased.sockets.iter().map(|(_, p)| *p).collect();
        assert_eq!(book.all().len(), 2);
        assert_eq!(book.held(&[(ports[0], 1)]), vec![(ports[0], owner)]);
        // Its sockets gone, the port is remembered for the owner but held by nobody.
        assert!(book.held(&[]).is_empty());
        assert_eq!(book.owner(ports[1]), Some(owner));
    }

    /// Leasing by bind on loopback ports: a port comes back only when its socket is gone, to
    /// its owner first, and changes owner only then; no sweep is asked for.
    #[test]
    fn by_bind_ports_come_back_only_when_their_socket_is_gone() {
        if !leasewatch::available(&leasewatch::LeaseUids::default()) {
            eprintln!("cannot switch fsuid here (no CAP_SETUID); skipped");
            return;
        }
        let host: IpAddr = "127.0.0.1".parse().unwrap();
        let (x, y): (IpAddr, IpAddr) = ("10.32.0.1".parse().unwrap(), "10.32.0.3".parse().unwrap());
        let lo = test_ports() + 10;
        let mut book = LeaseBook::by_bind(lo, lo + 3, leasewatch::LeaseUids::default());
        let no_sweep = |_, _| -> io::Result<Vec<(u16, u64)>> { panic!("swept") };
        let a = book.lease(libc::AF_INET, host, x, 4, no_sweep);
        assert_eq!(
            a.sockets.len(),
            4,
            "the test's ports {lo}-{} are busy",
            lo + 3
        );
        assert_eq!(a.changed.len(), 4);
        // All four are held: nothing for y.
        assert!(book
            .lease(libc::AF_INET, host, y, 1, no_sweep)
            .sockets
            .is_empty());
        // One socket goes: its port comes back, to y now, as a change of owner.
        let mut socks = a.sockets;
        let gone = socks.pop().unwrap().1;
        let c = book.lease(libc::AF_INET, host, y, 1, no_sweep);
        assert_eq!(c.changed, vec![gone]);
        assert_eq!(book.owner(gone), Some(y));
        // Held by y's socket now: x gets nothing.
        assert!(book
            .lease(libc::AF_INET, host, x, 1, no_sweep)
            .sockets
            .is_empty());
        // Back to x once y's socket is gone.
        drop(c);
        let d = book.lease(libc::AF_INET, host, x, 1, no_sweep);
        assert_eq!(d.changed, vec![gone]);
        // Every socket gone: x gets its own ports back, with no change of owner.
        drop(socks);
        drop(d);
        let e = book.lease(libc::AF_INET, host, x, 4, no_sweep);
        assert_eq!(e.sockets.len(), 4);
        assert!(e.changed.is_empty(), "{:?}", e.changed);
    }

    /// Ports outside this namespace's ephemeral range, for tests (the sweep test uses the
    /// first four, the bind test the next four after ten).
    fn test_ports() -> u16 {
        let (elo, ehi) = hostsock::ephemeral_ports();
        if ehi < 65535 - 200 {
            ehi + 100
        } else {
            elo - 200
        }
    }

    #[test]
    fn ranges_are_checked() {
        assert!(check_range(0, 100).is_err());
        assert!(check_range(5000, 5010).is_err());
        let (elo, ehi) = hostsock::ephemeral_ports();
        assert!(check_range(elo, ehi).is_err());
    }

    /// Leases on loopback ports: a port comes back only when its socket is gone, to its owner
    /// first, and changes owner only then.
    #[test]
    fn ports_come_back_only_when_their_socket_is_gone() {
        let host: IpAddr = "127.0.0.1".parse().unwrap();
        let (x, y): (IpAddr, IpAddr) = ("10.32.0.1".parse().unwrap(), "10.32.0.3".parse().unwrap());
        // Four ports outside this namespace's ephemeral range.
        let (elo, ehi) = hostsock::ephemeral_ports();
        let lo = if ehi < 65535 - 200 {
            ehi + 100
        } else {
            elo - 200
        };
        let mut book = LeaseBook::new(lo, lo + 3);
        let live = crate::sockdiag::live_sockets_in;
        let a = book.lease(libc::AF_INET, host, x, 4, live);
        assert_eq!(
            a.sockets.len(),
            4,
            "the test's ports {lo}-{} are busy",
            lo + 3
        );
        assert_eq!(a.changed.len(), 4);
        // All four are held: nothing for y, even after a sweep.
        book.last_sweep = None;
        assert!(book
            .lease(libc::AF_INET, host, y, 1, live)
            .sockets
            .is_empty());
        // One socket goes: its port comes back, to y now, as a change of owner.
        let mut socks = a.sockets;
        let gone = socks.pop().unwrap().1;
        book.last_sweep = None;
        let c = book.lease(libc::AF_INET, host, y, 1, live);
        assert_eq!(c.changed, vec![gone]);
        assert_eq!(book.owner(gone), Some(y));
        // Back to x once y's socket is gone: x's own port, without a change... of x's ports
        // none is free, so y's (formerly x's) port changes owner again.
        drop(c);
        book.last_sweep = None;
        let d = book.lease(libc::AF_INET, host, x, 1, live);
        assert_eq!(d.changed, vec![gone]);
        drop(socks);
        // Every socket gone: x gets its own ports back, with no change of owner.
        book.last_sweep = None;
        drop(d);
        let e = book.lease(libc::AF_INET, host, x, 3, live);
        assert_eq!(e.sockets.len(), 3);
        assert!(e.changed.is_empty(), "{:?}", e.changed);
    }
}
