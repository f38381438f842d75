//! Port leases: host ports this router binds for the pooled sockets of one overlay address
//! only, and tells every peer router about before handing the sockets out. A peer then knows
//! who a connection from such a port is without any per-connection announcement, so no router
//! wakes up per connection on either host (docs/design.md, "Port leases").
//!
//! Why it is exact:
//! - Nobody else takes these ports: the range lies outside `ip_local_port_range`, so no
//!   automatic port choice uses it, and only this router binds there.
//! - A port is bound for a new socket only once the socket it was last leased with is gone:
//!   the first time (this router's life) only if a bind without SO_REUSEADDR succeeds, i.e. no
//!   socket at all holds it; afterwards only when sock_diag no longer lists the previous
//!   socket's cookie in any state a program could hold (TIME_WAIT leftovers are not).
//! - A port changes owner only after every connected peer has acknowledged the new lease, and
//!   a peer first pins the connections it already has from that port to their old identity
//!   (`Tables::lease_from_peer`).
//!
//! Leased sockets carry SO_REUSEADDR, as ports chosen by connect() effectively do: a new
//! lease's socket may bind next to the previous one's TIME_WAIT leftover, and reach the same
//! peer again once the kernel allows reusing that 4-tuple (net.ipv4.tcp_tw_reuse).

use crate::hostsock;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Sweeps (sock_diag dumps) at most this often when the range runs out.
const SWEEP_EVERY: Duration = Duration::from_millis(20);

struct Lease {
    owner: IpAddr,
    cookie: u64,
    at: Instant,
}

pub struct LeaseBook {
    lo: u16,
    hi: u16,
    /// Next port never leased in this router's life to try.
    fresh: u32,
    /// Ports of this range never leased yet that are worth trying (not known busy).
    fresh_left: u32,
    /// Every port this router has leased, with the socket it was last leased with.
    leases: HashMap<u16, Lease>,
    /// Leased ports whose socket is gone, by their last owner (so that an owner gets its own
    /// ports back and ports rarely change owner), least recently leased first: a port's
    /// previous connection may have left a TIME_WAIT behind, and the kernel lets a new
    /// connection to the same peer reuse that 4-tuple only a second or so later.
    free: HashMap<IpAddr, VecDeque<u16>>,
    last_sweep: Option<Instant>,
}

/// Sockets bound to leased ports, and which of those ports changed owner (to be told to peers).
pub struct Leased {
    pub sockets: Vec<OwnedFd>,
    pub changed: Vec<u16>,
}

impl LeaseBook {
    /// The ports `lo..=hi`.
    pub fn new(lo: u16, hi: u16) -> Self {
        LeaseBook {
            lo,
            hi,
            fresh: 0,
            fresh_left: hi as u32 - lo as u32 + 1,
            leases: HashMap::new(),
            free: HashMap::new(),
            last_sweep: None,
        }
    }

    pub fn range(&self) -> (u16, u16) {
        (self.lo, self.hi)
    }

    fn span(&self) -> u32 {
        self.hi as u32 - self.lo as u32 + 1
    }

    /// Moves the ports whose socket no longer exists to the free lists. `live` lists the
    /// cookies of the sockets in the range that still exist.
    fn sweep(&mut self, live: &HashSet<u64>) {
        let free: HashSet<u16> = self.free.values().flatten().copied().collect();
        let mut dead: Vec<(Instant, u16, IpAddr)> = self
            .leases
            .iter()
            .filter(|(port, l)| !live.contains(&l.cookie) && !free.contains(port))
            .map(|(port, l)| (l.at, *port, l.owner))
            .collect();
        dead.sort_unstable();
        tracing::debug!(
            freed = dead.len(),
            leased = self.leases.len(),
            "lease sweep"
        );
        for (_, port, owner) in dead {
            self.free.entry(owner).or_default().push_back(port);
        }
    }

    /// A port to bind next for `owner`: its own free ports, then fresh ones, then anybody's.
    fn next_port(&mut self, owner: IpAddr) -> Option<(u16, bool)> {
        if let Some(p) = self.free.get_mut(&owner).and_then(|v| v.pop_front()) {
            return Some((p, false));
        }
        while self.fresh_left > 0 {
            self.fresh_left -= 1;
            let p = self.lo as u32 + self.fresh % self.span();
            self.fresh += 1;
            if !self.leases.contains_key(&(p as u16)) {
                return Some((p as u16, true));
            }
        }
        let other = self.free.values_mut().find(|v| !v.is_empty())?;
        other.pop_front().map(|p| (p, false))
    }

    /// Binds up to `count` sockets of `family` to `host` and ports leased to `owner`. When the
    /// range runs out, `live` (the cookies of the sockets in the range that still exist) tells
    /// which leased ports are free again.
    pub fn lease(
        &mut self,
        family: i32,
        host: IpAddr,
        owner: IpAddr,
        count: usize,
        live: impl FnOnce(u16, u16) -> io::Result<HashSet<u64>>,
    ) -> Leased {
        let mut out = Leased {
            sockets: Vec::new(),
            changed: Vec::new(),
        };
        let mut live = Some(live);
        // Each port is tried at most once per call, however the lists shuffle.
        let mut budget = self.span() as usize + count;
        while out.sockets.len() < count && budget > 0 {
            budget -= 1;
            let Some((port, fresh)) = self.next_port(owner) else {
                let due = self.last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY);
                let Some(f) = live.take().filter(|_| due) else {
                    break;
                };
                self.last_sweep = Some(Instant::now());
                match f(self.lo, self.hi) {
                    Ok(cookies) => self.sweep(&cookies),
                    Err(e) => {
                        tracing::warn!(error = %e, "sock_diag dump failed; leased ports not reclaimed");
                        break;
                    }
                }
                // Fresh ports that were busy before may be free by now.
                self.fresh_left = self.span();
                continue;
            };
            // A fresh port must be held by nobody at all (TIME_WAIT included); a reclaimed one
            // only by its previous socket's TIME_WAIT leftovers.
            let bound = if fresh {
                hostsock::exclusive_socket(family, host, port).and_then(|fd| {
                    hostsock::set_reuseaddr(fd.as_raw_fd())?;
                    Ok(fd)
                })
            } else {
                hostsock::reusable_socket(family, host, port)
            };
            let Ok(fd) = bound else { continue };
            let Ok(cookie) = hostsock::cookie(fd.as_raw_fd()) else {
                continue;
            };
            let prev = self.leases.insert(
                port,
                Lease {
                    owner,
                    cookie,
                    at: Instant::now(),
                },
            );
            if prev.is_none_or(|l| l.owner != owner) {
                out.changed.push(port);
            }
            out.sockets.push(fd);
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
    fn ranges_are_checked() {
        assert!(check_range(0, 100).is_err());
        assert!(check_range(5000, 5010).is_err());
        let (elo, ehi) = hostsock::ephemeral_ports();
        assert!(check_range(elo, ehi).is_err());
    }

    /// Leases on loopback ports: owners keep their ports, a port comes back only when its
    /// socket is gone, and changes owner only then.
    #[test]
    fn ports_come_back_only_when_their_socket_is_gone() {
        let host: IpAddr = "127.0.0.1".parse().unwrap();
        let (x, y): (IpAddr, IpAddr) = ("10.32.0.1".parse().unwrap(), "10.32.0.3".parse().unwrap());
        // 64 ports above the ephemeral range of this namespace... or below it, if none.
        let (elo, ehi) = hostsock::ephemeral_ports();
        let lo = if ehi < 65535 - 200 {
            ehi + 100
        } else {
            elo - 200
        };
        let mut book = LeaseBook::new(lo, lo + 3);
        let live = |lo, hi| crate::sockdiag::live_cookies_in(lo, hi);
        let a = book.lease(libc::AF_INET, host, x, 4, live);
        assert_eq!(
            a.sockets.len(),
            4,
            "the test's ports {lo}-{} are busy",
            lo + 3
        );
        assert_eq!(a.changed.len(), 4);
        // All four are held: nothing for y.
        let b = book.lease(libc::AF_INET, host, y, 1, live);
        assert!(b.sockets.is_empty());
        // One socket goes: its port comes back, to y now, as a change of owner.
        let mut socks = a.sockets;
        let gone = hostsock::local_addr(socks.pop().unwrap().as_raw_fd())
            .unwrap()
            .port();
        book.last_sweep = None;
        let c = book.lease(libc::AF_INET, host, y, 1, live);
        assert_eq!(c.changed, vec![gone]);
        assert_eq!(book.owner(gone), Some(y));
        drop(c);
        drop(socks);
    }
}
