//! The set of peer routers: the live connections (to broadcast listener changes and leases to,
//! and wait for their acknowledgements), the peers this router dials (from --peer and the peers
//! file), and which hosts may connect. The connections themselves are `peers.rs`.

use crate::router::Router;
use slim_uapi::peer::{ListenerEntry, PeerMsg};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// One registered peer connection (see `peers::serve`).
pub struct PeerConn {
    pub host: IpAddr,
    /// The other end of the TCP connection.
    pub remote: SocketAddr,
    /// Whether this router dialled it (else the peer did).
    pub dialled: bool,
    pub tx: mpsc::UnboundedSender<PeerMsg>,
    pub acked: watch::Receiver<u64>,
    /// Set to true to close the connection (its peer was removed from the peers file).
    pub stop: watch::Sender<bool>,
}

/// A peer to dial, and what tells its dialler to stop.
pub type ToDial = (SocketAddr, watch::Receiver<bool>);

/// A peer this router keeps dialling, and why.
struct Dialer {
    stop: watch::Sender<bool>,
    from_flag: bool,
    from_file: bool,
}

impl Dialer {
    /// A dialer for `addr` and the stop signal the dialling task waits on.
    fn new(addr: SocketAddr, from_flag: bool, from_file: bool) -> (Dialer, ToDial) {
        let (stop, rx) = watch::channel(false);
        let d = Dialer {
            stop,
            from_flag,
            from_file,
        };
        (d, (addr, rx))
    }
}

/// One peer connection, for status.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub id: u64,
    pub host: IpAddr,
    pub remote: SocketAddr,
    pub dialled: bool,
}

/// One configured peer (--peer or the peers file), for status and metrics.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub from_flag: bool,
    pub from_file: bool,
    pub connected: bool,
}

#[derive(Default)]
pub struct PeerSet {
    conns: Mutex<HashMap<u64, PeerConn>>,
    next_id: AtomicU64,
    seq: AtomicU64,
    dialers: Mutex<HashMap<SocketAddr, Dialer>>,
    /// With a peers file: the hosts whose connections are accepted (--peer and the file's).
    /// `None`: anybody's (sealing decides who is a router).
    admitted: Mutex<Option<std::collections::HashSet<IpAddr>>>,
}

impl PeerSet {
    pub fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PeerConn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn send(&self, conn: u64, msg: PeerMsg) {
        if let Some(c) = self.conns().get(&conn) {
            let _ = c.tx.send(msg);
        }
    }

    /// An id for a new connection.
    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Sends `n` messages (`make(i, seq)`) to every peer and waits (bounded) until each has
    /// acknowledged them all. False if one did not in time (`what` says what, in the warning).
    async fn send_acked(
        &self,
        n: usize,
        make: impl Fn(usize, u64) -> PeerMsg,
        wait: Duration,
        what: &str,
    ) -> bool {
        self.send_all(n, make).wait(wait, what).await
    }

    /// Sends `n` messages (`make(i, seq)`) to every peer now; what each peer must acknowledge.
    fn send_all(&self, n: usize, make: impl Fn(usize, u64) -> PeerMsg) -> Acks {
        let mut waits = Vec::new();
        let conns = self.conns();
        for (id, c) in conns.iter() {
            let mut last = 0;
            for i in 0..n {
                last = self.next_seq();
                let _ = c.tx.send(make(i, last));
            }
            if last != 0 {
                waits.push((*id, c.host, c.acked.clone(), last));
            }
        }
        Acks(waits)
    }

    /// Sends new listeners to every peer and waits (bounded) until each has acknowledged them.
    pub async fn add_listeners(&self, entries: &[ListenerEntry], wait: Duration) {
        let make = |i: usize, seq| PeerMsg::ListenerAdd {
            seq,
            entry: entries[i],
        };
        self.send_acked(entries.len(), make, wait, "a new listener")
            .await;
    }

    /// Tells every peer that connections from these host endpoints (ports of ours) are from
    /// `owner`, and waits (bounded) until each has acknowledged. False if one did not in time.
    pub async fn lease(&self, ports: &[SocketAddr], owner: IpAddr, wait: Duration) -> bool {
        let runs = runs(ports);
        let make = |i: usize, seq| PeerMsg::Lease {
            seq,
            client_host: runs[i].0,
            count: runs[i].1,
            overlay: owner,
        };
        self.send_acked(
            runs.len(),
            make,
            wait,
            "a port lease (pooled sockets without a lease meanwhile)",
        )
        .await
    }

    /// Withdraws listeners from every peer, sent now (before anything sent later on the same
    /// connections); the returned [`Acks`] says when each peer has applied the withdrawal.
    pub fn del_listeners(&self, entries: &[ListenerEntry]) -> Acks {
        let make = |i: usize, seq| PeerMsg::ListenerDel {
            seq,
            entry: entries[i],
        };
        self.send_all(entries.len(), make)
    }

    pub fn describe(&self) -> Vec<(u64, IpAddr)> {
        self.conns().iter().map(|(id, c)| (*id, c.host)).collect()
    }

    fn dialers(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Dialer>> {
        self.dialers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admitted(&self) -> std::sync::MutexGuard<'_, Option<std::collections::HashSet<IpAddr>>> {
        self.admitted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a connection from `ip` may become a peer connection.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = crate::hostsock::normalize_ip(ip);
        self.admitted().as_ref().is_none_or(|s| s.contains(&ip))
    }

    /// The peers of the command line (and the configuration file's `peers`), to be dialled for
    /// good. With a peers file, connections are accepted only from listed hosts from now on.
    pub fn start(&self, peers: &[SocketAddr], with_file: bool) -> Vec<ToDial> {
        if with_file {
            *self.admitted() = Some(
                peers
                    .iter()
                    .map(|p| crate::hostsock::normalize_ip(p.ip()))
                    .collect(),
            );
        }
        let mut d = self.dialers();
        let mut to_dial = Vec::new();
        for p in peers {
            if let Some(x) = d.get_mut(p) {
                x.from_flag = true;
                continue;
            }
            let (dialer, dial) = Dialer::new(*p, true, false);
            to_dial.push(dial);
            d.insert(*p, dialer);
        }
        to_dial
    }

    /// The peers file now lists `peers`: returns the new ones to dial; disconnects the ones that
    /// left (unless --peer names them too) and withdraws their listeners and port leases.
    pub fn set_file_peers(
        &self,
        router: &Router,
        peers: std::collections::BTreeSet<SocketAddr>,
    ) -> Vec<ToDial> {
        let mut removed = Vec::new();
        let mut to_dial = Vec::new();
        {
            let mut d = self.dialers();
            for (addr, x) in d.iter_mut() {
                x.from_file = peers.contains(addr);
            }
            d.retain(|addr, x| {
                let keep = x.from_flag || x.from_file;
                if !keep {
                    let _ = x.stop.send(true);
                    removed.push(*addr);
                }
                keep
            });
            for p in &peers {
                if d.contains_key(p) {
                    continue;
                }
                let (dialer, dial) = Dialer::new(*p, false, true);
                to_dial.push(dial);
                d.insert(*p, dialer);
            }
            let ips = d
                .keys()
                .map(|a| crate::hostsock::normalize_ip(a.ip()))
                .collect();
            *self.admitted() = Some(ips);
        }
        for addr in removed {
            let ip = crate::hostsock::normalize_ip(addr.ip());
            if self.admits(ip) {
                // Another port of the same host is still listed.
                continue;
            }
            let mut hosts = vec![ip];
            for c in self.conns().values() {
                if crate::hostsock::normalize_ip(c.remote.ip()) == ip || c.host == ip {
                    let _ = c.stop.send(true);
                    hosts.push(c.host);
                }
            }
            let mut leases = 0;
            for h in hosts {
                leases += router.tables().drop_peer_leases(h);
            }
            tracing::info!(peer = %addr, leases, "peer removed from the peers file: disconnected, its listeners and port leases withdrawn");
        }
        to_dial
    }

    /// The peer connections, for status.
    pub fn connections(&self) -> Vec<ConnInfo> {
        let mut v: Vec<ConnInfo> = self
            .conns()
            .iter()
            .map(|(id, c)| ConnInfo {
                id: *id,
                host: c.host,
                remote: c.remote,
                dialled: c.dialled,
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// The configured peers and whether each has a connection, for status and metrics.
    pub fn configured(&self) -> Vec<PeerInfo> {
        let conns = self.connections();
        let mut v: Vec<PeerInfo> = self
            .dialers()
            .iter()
            .map(|(addr, d)| {
                let ip = crate::hostsock::normalize_ip(addr.ip());
                PeerInfo {
                    addr: *addr,
                    from_flag: d.from_flag,
                    from_file: d.from_file,
                    connected: conns.iter().any(|c| {
                        c.host == ip || crate::hostsock::normalize_ip(c.remote.ip()) == ip
                    }),
                }
            })
            .collect();
        v.sort_by_key(|p| p.addr);
        v
    }
}

/// Host endpoints of one address as runs of consecutive ports: (first, count).
pub fn runs(ports: &[SocketAddr]) -> Vec<(SocketAddr, u16)> {
    let mut sorted: Vec<SocketAddr> = ports.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<(SocketAddr, u16)> = Vec::new();
    for p in sorted {
        match out.last_mut() {
            Some((start, n))
                if start.ip() == p.ip() && start.port() as u32 + *n as u32 == p.port() as u32 =>
            {
                *n += 1
            }
            _ => out.push((p, 1)),
        }
    }
    out
}

/// What the peers must acknowledge of messages sent: per peer connection, the last sequence
/// number sent to it.
pub struct Acks(
    Vec<(
        u64,
        std::net::IpAddr,
        tokio::sync::watch::Receiver<u64>,
        u64,
    )>,
);

impl Acks {
    /// Waits (bounded) until every peer has acknowledged. False if one did not in time (`what`
    /// says what, in the warning); a peer whose connection ended counts as not in time.
    pub async fn wait(self, wait: Duration, what: &str) -> bool {
        let mut all = true;
        for (id, host, mut acked, want) in self.0 {
            let r = tokio::time::timeout(wait, acked.wait_for(|a| *a >= want)).await;
            if !matches!(r, Ok(Ok(_))) {
                tracing::warn!(peer = %host, conn = id, "peer did not confirm {what} in time");
                all = false;
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_go_as_runs() {
        let h = |p: u16| SocketAddr::new("192.168.77.1".parse().unwrap(), p);
        assert_eq!(
            runs(&[h(40002), h(40000), h(40001), h(40005), h(65535)]),
            vec![(h(40000), 3), (h(40005), 1), (h(65535), 1)]
        );
        assert!(runs(&[]).is_empty());
    }
}
