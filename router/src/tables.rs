//! The router's state: which host listener serves which overlay endpoint (this host's and the
//! peers'), which host connections are about to arrive, and what overlay identity each live host
//! socket carries.
//!
//! Kept behind one `std::sync::Mutex`, held only for map operations, never across an await.

use slim_uapi::peer::{Announce, ListenerEntry};
use slim_uapi::proto::Identity;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Who told us about a listener: ourselves, or the peer connection with this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    Local,
    Peer(u64),
}

#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub host: SocketAddr,
    pub cookie: u64,
    pub owner: Owner,
    /// See `ListenerEntry::shared`.
    pub shared: bool,
}

/// A listener of this host, as registered by a container.
#[derive(Debug, Clone)]
pub struct LocalListener {
    pub host: SocketAddr,
    pub keys: Vec<SocketAddr>,
    /// Where the application bound its overlay socket (for logs and status).
    pub bound: SocketAddr,
    /// Secure mode: the container (network namespace inode) that owns it; 0 otherwise.
    pub owner: u64,
}

type ConnKey = (SocketAddr, SocketAddr);

/// Where the listener, lease and identity tables are mirrored besides the shared-memory tables:
/// the kernel module in secure mode (`kmod_tables::KernelTables`). Each `set_*` call states the
/// whole truth for one key; [`TableSink::flush`] sends what changed since the last flush as one
/// batch. Called with the tables' lock held, so in the order the changes happened.
pub trait TableSink: Send {
    /// The host listeners (with their owner's tag, 0 for a peer's) serving `overlay`; none: gone.
    fn set_listeners(&mut self, overlay: SocketAddr, hosts: &[(SocketAddr, u64)]);
    /// The holder of the leased host port `host`; None: no lease (or "ask the router").
    fn set_lease(&mut self, host: SocketAddr, owner: Option<IpAddr>);
    /// The overlay addresses of the container `tag`; none: gone.
    fn set_identity(&mut self, tag: u64, ips: &[IpAddr]);
    fn flush(&mut self);
}

/// This host's TCP connections by their peer's endpoint, from one sock_diag dump taken when
/// first needed (a change of a port's owner pins the connections already made from it).
pub struct LiveConns {
    dump: Box<dyn FnMut() -> Vec<Tuple> + Send>,
    by_peer: Option<HashMap<SocketAddr, Vec<SocketAddr>>>,
}

impl LiveConns {
    pub fn new(dump: impl FnMut() -> Vec<Tuple> + Send + 'static) -> Self {
        LiveConns {
            dump: Box::new(dump),
            by_peer: None,
        }
    }

    /// From the kernel's sock_diag (a failed dump pins nothing, and says so).
    pub fn of_this_host() -> Self {
        LiveConns::new(|| match crate::sockdiag::live_tcp_tuples() {
            Ok(t) => t.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "sock_diag dump failed; connections from a re-leased port not pinned");
                Vec::new()
            }
        })
    }

    /// The local endpoints of the connections whose peer is `peer`.
    fn from(&mut self, peer: &SocketAddr) -> Vec<SocketAddr> {
        let by_peer = self.by_peer.get_or_insert_with(|| {
            let mut m: HashMap<SocketAddr, Vec<SocketAddr>> = HashMap::new();
            for (local, peer) in (self.dump)() {
                m.entry(peer).or_default().push(local);
            }
            m
        });
        by_peer.get(peer).cloned().unwrap_or_default()
    }
}

/// A shared-table entry that answers nothing: the library asks the router.
fn withdrawn() -> slim_uapi::accept_table::Entry {
    slim_uapi::accept_table::Entry {
        client_overlay: slim_uapi::accept_table::ANY,
        server_overlay: slim_uapi::accept_table::ANY,
    }
}

/// What peers are told about a local listener: one entry per overlay key.
fn entries_of(cookie: u64, l: &LocalListener) -> Vec<ListenerEntry> {
    l.keys
        .iter()
        .map(|k| ListenerEntry {
            overlay: *k,
            host: l.host,
            cookie,
            shared: l.keys.iter().filter(|o| o.is_ipv4() == k.is_ipv4()).count() > 1,
        })
        .collect()
}
/// A host socket as this host sees it: (its own endpoint, its peer's).
pub type Tuple = (SocketAddr, SocketAddr);

/// Announcements older than this are dropped. Most are never taken from here (the library finds
/// them in the shared accept table), and an accept that asks the router does so within a few
/// milliseconds of the connection's arrival.
const ANNOUNCE_TTL: Duration = Duration::from_secs(10);
/// An identity is kept at least this long, whether or not its socket exists yet.
const IDENTITY_GRACE: Duration = Duration::from_secs(10);
/// Identities are kept for at most this many live sockets; beyond it the oldest half is dropped.
const MAX_IDENTITIES: usize = 1 << 20;

#[derive(Default)]
pub struct Tables {
    routes: HashMap<SocketAddr, Vec<Route>>,
    next_pick: usize,
    local: HashMap<u64, LocalListener>,
    announces: HashMap<ConnKey, (Announce, Instant)>,
    waiters: HashMap<ConnKey, Vec<oneshot::Sender<Announce>>>,
    identities: HashMap<Tuple, (Identity, Instant)>,
    /// Port leases (peers' and our own): client host endpoint -> overlay address.
    leases: HashMap<SocketAddr, IpAddr>,
    /// Connections that arrived from a port before its lease changed hands, kept with the
    /// identity they had: (client host, server host) -> announcement.
    pins: HashMap<ConnKey, Announce>,
    /// Where announcements are published for the preload libraries (None if unavailable).
    pub accept_table: Option<crate::shm::SharedTable>,
    /// Where port leases and local listeners' overlay keys are published for the preload
    /// libraries (None if unavailable): apart from the announcements, which would crowd them
    /// out of their slots.
    pub lease_table: Option<crate::shm::SharedTable>,
    /// Where the routes are published for the preload libraries (None if unavailable).
    pub route_table: Option<crate::shm::SharedTable>,
    /// Where listeners, leases and identities are mirrored (secure mode: the kernel module).
    pub sink: Option<Box<dyn TableSink>>,
    /// Containers with a live library connection (secure mode): tag -> (connections, overlay
    /// addresses).
    containers: HashMap<u64, (usize, Vec<IpAddr>)>,
}

impl Tables {
    pub fn add_route(&mut self, overlay: SocketAddr, route: Route) {
        let v = self.routes.entry(overlay).or_default();
        v.retain(|r| !(r.cookie == route.cookie && r.owner == route.owner));
        v.push(route);
        self.publish(&overlay);
        self.flush_sink();
    }

    pub fn del_route(&mut self, overlay: &SocketAddr, cookie: u64, owner: Owner) {
        if let Some(v) = self.routes.get_mut(overlay) {
            v.retain(|r| !(r.cookie == cookie && r.owner == owner));
            if v.is_empty() {
                self.routes.remove(overlay);
            }
        }
        self.publish(overlay);
        self.flush_sink();
    }

    /// Forgets every route learned over one peer connection (it went away).
    pub fn drop_owner(&mut self, owner: Owner) {
        let mut touched = Vec::new();
        self.routes.retain(|k, v| {
            let before = v.len();
            v.retain(|r| r.owner != owner);
            if v.len() != before {
                touched.push(*k);
            }
            !v.is_empty()
        });
        for k in touched {
            self.publish(&k);
        }
        self.flush_sink();
        // Its leases stay: they remain true for the sockets they were made for, and a port of
        // that host changes owner only through a lease that reaches us before any connection
        // from the new socket can (a reconnecting peer sends its whole table first, and we use
        // its listeners only once we have acknowledged it... and it ours).
    }

    /// Withdraws the port leases of one peer host (it was removed from the peers file): its
    /// ports identify nobody any more. Returns how many went.
    pub fn drop_peer_leases(&mut self, host: IpAddr) -> usize {
        let host = crate::hostsock::normalize_ip(host);
        let gone: Vec<SocketAddr> = self
            .leases
            .keys()
            .filter(|c| crate::hostsock::normalize_ip(c.ip()) == host)
            .copied()
            .collect();
        for c in &gone {
            self.leases.remove(c);
            if let Some(t) = &self.lease_table {
                t.set_lease(c, None);
            }
            if let Some(s) = &mut self.sink {
                s.set_lease(*c, None);
            }
        }
        self.flush_sink();
        gone.len()
    }

    /// Port leases known, by the host whose ports they are.
    pub fn leases_by_host(&self) -> Vec<(IpAddr, usize)> {
        let mut by: std::collections::BTreeMap<IpAddr, usize> = Default::default();
        for c in self.leases.keys() {
            *by.entry(c.ip()).or_default() += 1;
        }
        by.into_iter().collect()
    }

    /// Every route: overlay endpoint, host listener, who told us.
    pub fn all_routes(&self) -> Vec<(SocketAddr, Route)> {
        let mut v: Vec<(SocketAddr, Route)> = self
            .routes
            .iter()
            .flat_map(|(k, rs)| rs.iter().map(move |r| (*k, *r)))
            .collect();
        v.sort_by_key(|(k, r)| (*k, r.host));
        v
    }

    /// Sends what changed to the sink (one batch).
    fn flush_sink(&mut self) {
        if let Some(s) = &mut self.sink {
            s.flush();
        }
    }

    /// A library connection of container `tag` (secure mode) was identified: its overlay
    /// addresses are its identity in the sink while any such connection lives.
    pub fn container_connected(&mut self, tag: u64, ips: &[IpAddr]) {
        let e = self.containers.entry(tag).or_default();
        e.0 += 1;
        if e.1 != ips {
            e.1 = ips.to_vec();
            if let Some(s) = &mut self.sink {
                s.set_identity(tag, ips);
            }
            self.flush_sink();
        }
    }

    /// A library connection of container `tag` ended; with its last one, its identity goes.
    pub fn container_disconnected(&mut self, tag: u64) {
        let Some(e) = self.containers.get_mut(&tag) else {
            return;
        };
        e.0 = e.0.saturating_sub(1);
        if e.0 == 0 {
            self.containers.remove(&tag);
            if let Some(s) = &mut self.sink {
                s.set_identity(tag, &[]);
            }
            self.flush_sink();
        }
    }

    /// Copies the routes of one overlay endpoint to the shared route table and the sink (distinct
    /// host listeners: two peer connections to the same router report the same listener).
    fn publish(&mut self, overlay: &SocketAddr) {
        if self.sink.is_some() {
            let mut hosts: Vec<(SocketAddr, u64)> = Vec::new();
            // Not a host listener that serves several overlay endpoints: a connection to it from a
            // leased port does not say which one it is for, so it must go through the router
            // (which announces it); without a row the module answers ENOENT and the library asks.
            for r in self.routes.get(overlay).into_iter().flatten() {
                if !r.shared && !hosts.iter().any(|(h, _)| *h == r.host) {
                    let tag = match r.owner {
                        Owner::Local => self.local.get(&r.cookie).map_or(0, |l| l.owner),
                        Owner::Peer(_) => 0,
                    };
                    hosts.push((r.host, tag));
                }
            }
            if let Some(s) = &mut self.sink {
                s.set_listeners(*overlay, &hosts);
            }
        }
        let Some(t) = &self.route_table else { return };
        let mut hosts: Vec<(SocketAddr, bool)> = Vec::new();
        for r in self.routes.get(overlay).into_iter().flatten() {
            if !hosts.iter().any(|(h, _)| *h == r.host) {
                hosts.push((r.host, r.shared));
            }
        }
        hosts.truncate(slim_uapi::route_table::MAX_ROUTES);
        t.set_routes(overlay, &hosts);
    }

    /// Who told us about the listener `host` serving `overlay`.
    pub fn owner_of(&self, overlay: &SocketAddr, host: &SocketAddr) -> Option<Owner> {
        self.routes
            .get(overlay)?
            .iter()
            .find(|r| r.host == *host)
            .map(|r| r.owner)
    }

    /// Picks a listener for an overlay destination; several listeners on one endpoint
    /// (SO_REUSEPORT) share the connections in turn.
    pub fn route(&mut self, overlay: &SocketAddr) -> Option<Route> {
        let v = self.routes.get(overlay)?;
        self.next_pick = self.next_pick.wrapping_add(1);
        Some(v[self.next_pick % v.len()])
    }

    pub fn add_local(&mut self, cookie: u64, l: LocalListener) -> Vec<ListenerEntry> {
        let entries = entries_of(cookie, &l);
        // Known before its routes are published (the sink wants the owner's tag).
        self.local.insert(cookie, l.clone());
        for e in &entries {
            self.add_route(
                e.overlay,
                Route {
                    host: e.host,
                    cookie,
                    owner: Owner::Local,
                    shared: e.shared,
                },
            );
        }
        if let Some(t) = &self.lease_table {
            let only = |v4: bool| {
                let mut it = l.keys.iter().filter(|k| k.is_ipv4() == v4);
                match (it.next(), it.next()) {
                    (Some(k), None) => Some(*k),
                    _ => None,
                }
            };
            t.set_listener_keys(&l.host, only(true), only(false));
        }
        entries
    }

    pub fn remove_local(&mut self, cookie: u64) -> Vec<ListenerEntry> {
        let Some(l) = self.local.remove(&cookie) else {
            return Vec::new();
        };
        let entries = entries_of(cookie, &l);
        for e in &entries {
            self.del_route(&e.overlay, cookie, Owner::Local);
        }
        entries
    }

    /// Whether any of `keys` already has a listener of this host.
    pub fn has_local_route(&self, keys: &[SocketAddr]) -> bool {
        keys.iter().any(|k| {
            self.routes
                .get(k)
                .is_some_and(|v| v.iter().any(|r| r.owner == Owner::Local))
        })
    }

    pub fn local_entries(&self) -> Vec<ListenerEntry> {
        self.local
            .iter()
            .flat_map(|(cookie, l)| entries_of(*cookie, l))
            .collect()
    }

    pub fn describe_local(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.local.values().map(|l| (l.bound, l.host)).collect()
    }

    /// The local listener with this cookie.
    pub fn local_listener(&self, cookie: u64) -> Option<&LocalListener> {
        self.local.get(&cookie)
    }

    /// This host's listeners, by cookie.
    pub fn local_all(&self) -> Vec<(u64, LocalListener)> {
        let mut v: Vec<(u64, LocalListener)> =
            self.local.iter().map(|(c, l)| (*c, l.clone())).collect();
        v.sort_by_key(|(c, _)| *c);
        v
    }

    pub fn local_listeners(&self) -> Vec<(u64, SocketAddr)> {
        self.local.iter().map(|(c, l)| (*c, l.host)).collect()
    }

    /// Records an announced connection, waking an accept that is already waiting for it.
    pub fn announce(&mut self, a: Announce) {
        let key = (a.client_host, a.server_host);
        if let Some(t) = &self.accept_table {
            let e = slim_uapi::accept_table::Entry {
                client_overlay: a.client_overlay,
                server_overlay: a.server_overlay,
            };
            t.insert(&a.client_host, &a.server_host, &e);
        }
        // The accepted socket will see itself as (server_host, client_host).
        self.set_identity(
            (a.server_host, a.client_host),
            Identity {
                local: a.server_overlay,
                peer: Some(a.client_overlay),
            },
        );
        if let Some(ws) = self.waiters.remove(&key) {
            let mut pending = Some(a);
            for w in ws {
                if let Some(x) = pending.take() {
                    if let Err(back) = w.send(x) {
                        pending = Some(back);
                    }
                }
            }
            if pending.is_none() {
                return;
            }
        }
        self.announces.insert(key, (a, Instant::now()));
    }

    /// Takes the announcement for a host connection (or what its port's lease says), or
    /// registers to be told when it arrives.
    pub fn take_announce(
        &mut self,
        client_host: SocketAddr,
        server_host: SocketAddr,
    ) -> Result<Announce, oneshot::Receiver<Announce>> {
        let key = (client_host, server_host);
        if let Some((a, _)) = self.announces.remove(&key) {
            return Ok(a);
        }
        if let Some(a) = self.derive(client_host, server_host) {
            return Ok(a);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.entry(key).or_default().push(tx);
        Err(rx)
    }

    /// The one overlay key of `client`'s family of the local listener at `server_host`.
    fn local_key(&self, server_host: &SocketAddr, client: IpAddr) -> Option<SocketAddr> {
        let l = self.local.values().find(|l| l.host == *server_host)?;
        let mut it = l.keys.iter().filter(|k| k.is_ipv4() == client.is_ipv4());
        match (it.next(), it.next()) {
            (Some(k), None) => Some(*k),
            _ => None,
        }
    }

    /// The one overlay endpoint of `client`'s family that a peer's host listener at `host`
    /// serves (the other end of a connection from one of our leased ports).
    pub fn route_key(&self, host: &SocketAddr, client: IpAddr) -> Option<SocketAddr> {
        let mut it = self
            .routes
            .iter()
            .filter(|(k, v)| {
                k.is_ipv4() == client.is_ipv4() && v.iter().any(|r| r.host == *host && !r.shared)
            })
            .map(|(k, _)| *k);
        match (it.next(), it.next()) {
            (Some(k), None) => Some(k),
            _ => None,
        }
    }

    /// A connection's identity without an announcement: pinned, or from its port's lease and
    /// the listener's only overlay key of that family.
    pub fn derive(&self, client_host: SocketAddr, server_host: SocketAddr) -> Option<Announce> {
        if let Some(a) = self.pins.get(&(client_host, server_host)) {
            return Some(*a);
        }
        let owner = self.leases.get(&client_host)?;
        Some(Announce {
            client_host,
            server_host,
            client_overlay: SocketAddr::new(*owner, client_host.port()),
            server_overlay: self.local_key(&server_host, *owner)?,
        })
    }

    /// Sends the sink the changes of the `lease_from_peer` calls since the last one, as one batch
    /// (a lease message covers a run of ports; one batch per port would copy the module's lease
    /// table once per port).
    pub fn leases_done(&mut self) {
        self.flush_sink();
    }

    /// A peer (or this router) leased the port of `client_host` to `owner`. Call
    /// [`Tables::leases_done`] after the last port of a message. Connections from
    /// that port that this host already has belonged to its previous owner: they are pinned to
    /// that identity first. `live` lists this host's TCP connections as (local, peer).
    pub fn lease_from_peer(
        &mut self,
        client_host: SocketAddr,
        owner: IpAddr,
        live: &mut LiveConns,
    ) -> usize {
        let prev = self.leases.get(&client_host).copied();
        let mut pinned = 0;
        if let Some(prev) = prev.filter(|p| *p != owner) {
            for local in live.from(&client_host) {
                let key = (client_host, local);
                if self.pins.contains_key(&key) {
                    continue;
                }
                // Announced (its listener is shared), or identified by the old lease.
                let announced = self.announces.get(&key).map(|(a, _)| *a);
                let Some(a) = announced.or_else(|| {
                    Some(Announce {
                        client_host,
                        server_host: local,
                        client_overlay: SocketAddr::new(prev, client_host.port()),
                        server_overlay: self.local_key(&local, prev)?,
                    })
                }) else {
                    continue;
                };
                self.pins.insert(key, a);
                self.announce(a);
                pinned += 1;
            }
            // Announcements of the previous owner's connections from this port (to shared
            // listeners) that are not pinned must not answer for the new owner's.
            let stale: Vec<ConnKey> = self
                .identities
                .keys()
                .map(|(s, c)| (*c, *s))
                .chain(self.announces.keys().copied())
                .filter(|(c, _)| *c == client_host)
                .filter(|k| !self.pins.contains_key(k))
                .collect();
            for key in stale {
                self.announces.remove(&key);
                if let Some(t) = &self.accept_table {
                    t.insert(&key.0, &key.1, &withdrawn());
                }
            }
        }
        self.leases.insert(client_host, owner);
        // With pins, the shared entry says "ask": a pinned connection's own entry in the shared
        // table could be overwritten, and the lease must then not answer for it.
        let ask = self.pins.keys().any(|(c, _)| *c == client_host);
        if let Some(t) = &self.lease_table {
            t.set_lease(&client_host, (!ask).then_some(owner));
        }
        if let Some(s) = &mut self.sink {
            s.set_lease(client_host, (!ask).then_some(owner));
        }
        // The sink's batch is sent by `leases_done`, once for all the ports of a lease message.
        // Accepts already waiting for a connection from this port.
        let waiting: Vec<ConnKey> = self
            .waiters
            .keys()
            .filter(|(c, _)| *c == client_host)
            .copied()
            .collect();
        for (c, s) in waiting {
            if let Some(a) = self.derive(c, s) {
                self.announce(a);
            }
        }
        pinned
    }

    /// Forgets pins of connections the kernel no longer has (`alive` takes (local, peer)).
    pub fn retain_pins(&mut self, alive: impl Fn(&Tuple) -> bool) {
        self.pins.retain(|(c, s), _| alive(&(*s, *c)));
    }

    pub fn set_identity(&mut self, tuple: Tuple, id: Identity) {
        if self.identities.len() >= MAX_IDENTITIES {
            let mut ages: Vec<Instant> = self.identities.values().map(|(_, t)| *t).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.identities.retain(|_, (_, t)| *t > cut);
        }
        self.identities.insert(tuple, (id, Instant::now()));
    }

    pub fn identity(&self, tuple: &Tuple) -> Option<Identity> {
        self.identities.get(tuple).map(|(id, _)| *id)
    }

    /// Whether a sweep could forget anything: pins, or identities past their grace period. A
    /// sock_diag dump walks every TCP socket of the host, TIME_WAIT ones included (tens of
    /// thousands under a high connection rate), so it is skipped when it cannot matter.
    pub fn sweep_needed(&self, now: Instant) -> bool {
        !self.pins.is_empty()
            || self
                .identities
                .values()
                .any(|(_, born)| now.duration_since(*born) >= IDENTITY_GRACE)
    }

    /// Keeps the identities whose socket `alive` says still exists, and young ones (announced
    /// connections whose socket may not exist yet); returns how many went.
    pub fn retain_identities(&mut self, alive: impl Fn(&Tuple) -> bool, now: Instant) -> usize {
        let before = self.identities.len();
        self.identities
            .retain(|t, (_, born)| alive(t) || now.duration_since(*born) < IDENTITY_GRACE);
        before - self.identities.len()
    }

    /// Drops state nobody will ask for any more.
    pub fn expire(&mut self, now: Instant) {
        self.announces
            .retain(|_, (_, t)| now.duration_since(*t) < ANNOUNCE_TTL);
        self.waiters.retain(|_, ws| {
            ws.retain(|w| !w.is_closed());
            !ws.is_empty()
        });
    }

    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.routes.len(),
            self.local.len(),
            self.announces.len(),
            self.identities.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn announce_before_and_after_accept() {
        let mut t = Tables::default();
        let a = Announce {
            client_host: sa("192.168.77.1:5000"),
            server_host: sa("192.168.77.2:6000"),
            client_overlay: sa("10.32.0.1:5000"),
            server_overlay: sa("10.32.0.2:80"),
        };
        t.announce(a);
        assert_eq!(t.take_announce(a.client_host, a.server_host).unwrap(), a);
        let mut rx = t.take_announce(a.client_host, a.server_host).unwrap_err();
        t.announce(a);
        assert_eq!(rx.try_recv().unwrap(), a);
    }

    /// The periodic sweep dumps every TCP socket of the host: only when something could go.
    #[test]
    fn sweeps_only_when_something_could_be_forgotten() {
        let mut t = Tables::default();
        let now = Instant::now();
        assert!(!t.sweep_needed(now));
        let tuple = (sa("192.168.77.2:6000"), sa("192.168.77.1:5000"));
        t.set_identity(
            tuple,
            Identity {
                local: sa("10.32.0.2:80"),
                peer: Some(sa("10.32.0.1:5000")),
            },
        );
        assert!(
            !t.sweep_needed(now),
            "identities within their grace period stay"
        );
        let later = Instant::now() + IDENTITY_GRACE;
        assert!(t.sweep_needed(later));
        assert_eq!(t.retain_identities(|_| false, later), 1);
        assert!(!t.sweep_needed(later));
    }

    #[test]
    fn routes_follow_their_owner() {
        let mut t = Tables::default();
        let r = Route {
            host: sa("192.168.77.2:6000"),
            cookie: 1,
            owner: Owner::Peer(3),
            shared: false,
        };
        t.add_route(sa("10.32.0.2:80"), r);
        assert!(t.route(&sa("10.32.0.2:80")).is_some());
        t.drop_owner(Owner::Peer(3));
        assert!(t.route(&sa("10.32.0.2:80")).is_none());
        let l = LocalListener {
            host: sa("192.168.77.1:7000"),
            keys: vec![sa("10.32.0.1:80")],
            bound: sa("0.0.0.0:80"),
            owner: 0,
        };
        assert_eq!(t.add_local(5, l).len(), 1);
        assert!(t.route(&sa("10.32.0.1:80")).is_some());
        assert_eq!(t.remove_local(5).len(), 1);
        assert!(t.route(&sa("10.32.0.1:80")).is_none());
    }
    #[test]
    fn leases_identify_and_pin() {
        let mut t = Tables::default();
        let l = LocalListener {
            host: sa("192.168.77.2:7000"),
            keys: vec![sa("10.32.0.2:80"), sa("[fd00:32::2]:80")],
            bound: sa("[::]:80"),
            owner: 0,
        };
        t.add_local(5, l);
        let c = sa("192.168.77.1:61000");
        let s = sa("192.168.77.2:7000");
        assert!(t.derive(c, s).is_none());
        let x: IpAddr = "10.32.0.1".parse().unwrap();
        let y: IpAddr = "10.32.0.3".parse().unwrap();
        assert_eq!(t.lease_from_peer(c, x, &mut LiveConns::new(Vec::new)), 0);
        let a = t.derive(c, s).unwrap();
        assert_eq!(a.client_overlay, sa("10.32.0.1:61000"));
        assert_eq!(a.server_overlay, sa("10.32.0.2:80"));
        // A connection waiting for its accept when the port goes to y keeps x's identity.
        let mut live = LiveConns::new(move || vec![(s, c)]);
        assert_eq!(t.lease_from_peer(c, y, &mut live), 1);
        assert_eq!(t.derive(c, s).unwrap().client_overlay.ip(), x);
        t.retain_pins(|_| false);
        assert_eq!(t.derive(c, s).unwrap().client_overlay.ip(), y);
        // A connection to another listener port is not this listener's.
        assert!(t.derive(c, sa("192.168.77.2:7001")).is_none());
        // The peer went away: its leases stay true for the sockets they were made for.
        t.drop_owner(Owner::Peer(1));
        assert_eq!(t.derive(c, s).unwrap().client_overlay.ip(), y);
        // It was removed from the peers file: its leases are withdrawn, other hosts' stay.
        let other = sa("192.168.77.3:61000");
        t.lease_from_peer(other, x, &mut LiveConns::new(Vec::new));
        assert_eq!(t.drop_peer_leases("192.168.77.1".parse().unwrap()), 1);
        t.retain_pins(|_| false);
        assert!(t.derive(c, s).is_none());
        assert_eq!(
            t.leases_by_host(),
            vec![("192.168.77.3".parse().unwrap(), 1)]
        );
    }

    /// Counts what reaches the sink: lease rows set and batches sent.
    struct CountingSink(std::sync::Arc<std::sync::Mutex<(usize, usize)>>);
    impl TableSink for CountingSink {
        fn set_listeners(&mut self, _: SocketAddr, _: &[(SocketAddr, u64)]) {}
        fn set_lease(&mut self, _: SocketAddr, _: Option<IpAddr>) {
            self.0.lock().unwrap().0 += 1;
        }
        fn set_identity(&mut self, _: u64, _: &[IpAddr]) {}
        fn flush(&mut self) {
            self.0.lock().unwrap().1 += 1;
        }
    }

    #[test]
    fn a_run_of_leased_ports_is_one_batch() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new((0, 0)));
        let mut t = Tables {
            sink: Some(Box::new(CountingSink(seen.clone()))),
            ..Tables::default()
        };
        let x: IpAddr = "10.32.0.1".parse().unwrap();
        let mut live = LiveConns::new(Vec::new);
        for port in 61000..61064 {
            t.lease_from_peer(
                SocketAddr::new("192.168.77.1".parse().unwrap(), port),
                x,
                &mut live,
            );
        }
        t.leases_done();
        assert_eq!(*seen.lock().unwrap(), (64, 1));
    }
}
