//! What the router does for each request, independent of how requests arrive.

use crate::container::Caller;
use crate::hostsock::{self, normalize, normalize_ip};
use crate::peer_set::PeerSet;
use crate::tables::{LocalListener, Owner, Tables};
use ipnet::IpNet;
use slim_uapi::peer::{Announce, PeerMsg};
use slim_uapi::proto::{AcceptLookup, ConnectReq, FallbackReason, Identity, ListenReq, Reply};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// `addr` spelled for a socket of `family` (IPv4 as IPv4-mapped for an `AF_INET6` socket): the
/// kernel module answers virtual addresses verbatim, so they must be of the socket's own family.
pub fn in_family(addr: SocketAddr, family: i32) -> SocketAddr {
    match (family, addr) {
        (libc::AF_INET6, SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => addr,
    }
}

/// How long an accept waits for the announcement of a connection that already arrived. The
/// announcement left the client's router before the connection's SYN, so it is normally there first.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(3);
/// How long a listen waits for the peers to confirm they know the new listener.
/// Most ports leased at a time for one owner (see `leased_sockets`). Small: a restock is a burst
/// of socket/setsockopt/bind calls, and a long burst on a busy CPU delays whoever it preempts
/// (`make bench-quick --only conn1`: 0.7x the host network's one-client rate with 256, 0.8x with
/// 32 or 64).
const LEASE_CHUNK: usize = 64;
/// A stash its owner has not drawn from for this long is closed.
const STASH_IDLE: Duration = Duration::from_secs(30);
/// While an owner's new ports change owner (a fresh container, or a fresh router: every port is
/// new to it), its stash is refilled this many chunks further ahead: those sockets become usable
/// only once every peer has acknowledged them, and the stash must last that round trip.
const CHANGING_AHEAD: usize = 3;

/// Leased sockets ready for one owner (see `Router::leased_sockets`).
struct Stash {
    /// Each with its port.
    sockets: Vec<(OwnedFd, u16)>,
    used: std::time::Instant,
    /// The last restock moved ports to this owner (see `CHANGING_AHEAD`).
    changing: bool,
}

impl Default for Stash {
    fn default() -> Self {
        Stash {
            sockets: Vec::new(),
            used: std::time::Instant::now(),
            changing: false,
        }
    }
}
pub const PEER_ACK_WAIT: Duration = Duration::from_secs(2);
/// Most pooled sockets handed out in one reply (SCM_RIGHTS carries at most 253).
const MAX_POOL_BATCH: u8 = 64;

#[derive(Debug, Clone)]
pub struct Settings {
    pub host_v4: Option<std::net::Ipv4Addr>,
    pub host_v6: Option<std::net::Ipv6Addr>,
    pub prefixes: Vec<IpNet>,
    /// Ports leased to containers' pooled sockets (`leases`), if any.
    pub lease_ports: Option<(u16, u16)>,
    /// The uids of leased sockets (`leasewatch`).
    pub lease_uids: crate::leasewatch::LeaseUids,
    /// Secure mode: which destinations each container may reach through Slim (`policy`).
    pub policy: Option<crate::policy::Policy>,
}

impl Settings {
    pub fn in_overlay(&self, ip: IpAddr) -> bool {
        let ip = normalize_ip(ip);
        self.prefixes.iter().any(|p| p.contains(&ip))
    }

    fn host_for(&self, family_of: &SocketAddr) -> Option<IpAddr> {
        match family_of {
            SocketAddr::V4(_) => self.host_v4.map(IpAddr::V4),
            SocketAddr::V6(_) => self.host_v6.map(IpAddr::V6),
        }
    }

    /// The address a host listener of an application socket of `family` is bound to.
    pub fn listen_host(&self, family: i32) -> Option<IpAddr> {
        match (family, self.host_v4, self.host_v6) {
            (_, Some(v4), _) => Some(IpAddr::V4(v4)),
            (libc::AF_INET6, None, Some(v6)) => Some(IpAddr::V6(v6)),
            _ => None,
        }
    }
}

#[derive(Default)]
pub struct Counters {
    pub connects: AtomicU64,
    pub fallbacks: AtomicU64,
    pub listens: AtomicU64,
    pub accepts: AtomicU64,
    pub unknown_accepts: AtomicU64,
    pub bad_frames: AtomicU64,
    /// Secure mode: requests refused because they named an address or socket that is not the
    /// caller's, or asked for something secure mode does not offer.
    pub refused: AtomicU64,
    /// Ports leased to pooled sockets, and how many of those leases changed a port's owner.
    pub leases: AtomicU64,
    pub lease_changes: AtomicU64,
    /// Connections of this host pinned to their old identity when their client's port changed
    /// owner.
    pub pinned: AtomicU64,
    /// Peer frames opened and refused on the sealed channel (`--cluster-key`).
    pub seal: crate::peers::SealCounters,
    /// Fallbacks by reason (`FallbackReason as usize - 1`).
    pub fallback_reasons: [AtomicU64; 4],
    /// Refusals by what was refused (the message of `Router::refuse`).
    pub refusal_reasons: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Peer connections refused because their host is not listed (with a peers file).
    pub peer_refusals: AtomicU64,
    /// Secure mode: connects the policy denied (`policy`).
    pub policy_denied: AtomicU64,
}

impl Counters {
    /// Counts one refusal of `what`; returns the total of all refusals.
    pub fn refusal(&self, what: &'static str) -> u64 {
        *self
            .refusal_reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(what)
            .or_default() += 1;
        self.refused.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn refusals_by_reason(&self) -> Vec<(&'static str, u64)> {
        self.refusal_reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

pub struct Router {
    pub settings: Settings,
    /// Secure mode: the kernel module every host socket is restricted through.
    pub dev: Option<crate::kmod::SlimDev>,
    /// Secure mode, with a module that keeps tables: what loading them did (`kmod_tables`).
    pub kernel_tables: std::sync::OnceLock<std::sync::Arc<crate::kmod_tables::Counters>>,
    pub tables: Mutex<Tables>,
    pub peers: PeerSet,
    pub counters: Counters,
    /// The cluster key and replay cache when peer frames are sealed (`--cluster-key`).
    pub seal: Option<std::sync::Arc<crate::peers::PeerSeal>>,
    /// A program closed a Slim socket since the last sweep.
    pub sweep_due: std::sync::atomic::AtomicBool,
    /// Seeds the port choice of pooled sockets.
    seed: AtomicU64,
    /// The ports leased to containers (None: leasing is off).
    pub leases: Option<Mutex<crate::leases::LeaseBook>>,
    /// Leased sockets every peer knows about, ready for the next request of their owner.
    stash: Mutex<std::collections::HashMap<(IpAddr, i32), Stash>>,
    /// Per owner (and socket family), how many sockets wait for the peers to acknowledge their
    /// new lease.
    leasing: Mutex<std::collections::HashMap<(IpAddr, i32), usize>>,
    /// The uid host listeners and their port holds are created under (`porthold`); None: no
    /// holds (no CAP_SETUID).
    pub hold_uid: Option<u32>,
    /// The port holds of this host's listeners, by listener cookie (`porthold`).
    holds: Mutex<std::collections::HashMap<u64, std::os::fd::OwnedFd>>,
}

impl Router {
    pub fn new(
        settings: Settings,
        dev: Option<crate::kmod::SlimDev>,
        seal: Option<crate::peers::PeerSeal>,
    ) -> Self {
        let by_uid = crate::leasewatch::available(&settings.lease_uids);
        Router {
            stash: Default::default(),
            leasing: Default::default(),
            hold_uid: by_uid.then_some(settings.lease_uids.probe),
            holds: Default::default(),
            leases: settings.lease_ports.map(|(lo, hi)| {
                Mutex::new(if by_uid {
                    crate::leases::LeaseBook::by_bind(lo, hi, settings.lease_uids)
                } else {
                    crate::leases::LeaseBook::new(lo, hi)
                })
            }),
            settings,
            dev,
            kernel_tables: std::sync::OnceLock::new(),
            seal: seal.map(std::sync::Arc::new),
            tables: Mutex::new(Tables::default()),
            peers: PeerSet::default(),
            counters: Counters::default(),
            sweep_due: Default::default(),
            seed: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
                    ^ std::process::id() as u64,
            ),
        }
    }

    pub fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // more than stopping service would, so a poisoned lock is used as is.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Secure mode: the caller asked for something that is not its to ask; the program's call
    /// fails with EPERM.
    pub fn refuse(&self, c: &Caller, what: &'static str) -> (Reply<'static>, Option<OwnedFd>) {
        self.refuse_process(c.pid, c.netns, what)
    }

    /// The same for a caller known only by its process (plain mode identifies no container).
    pub fn refuse_process(
        &self,
        pid: i32,
        netns: u64,
        what: &'static str,
    ) -> (Reply<'static>, Option<OwnedFd>) {
        let n = self.counters.refusal(what);
        tracing::warn!(pid, netns, refused_total = n, "refused: {what}");
        (
            Reply::Error {
                errno: libc::EPERM,
                message: what,
            },
            None,
        )
    }

    fn fallback(&self, why: FallbackReason) -> (Reply<'static>, Option<OwnedFd>) {
        self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self
            .counters
            .fallback_reasons
            .get((why as usize).wrapping_sub(1))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        (Reply::Fallback(why), None)
    }

    /// Read-only descriptors of the shared tables, for a library's HelloOk: accept table, route
    /// table, lease table.
    pub fn shared_tables(&self) -> Vec<OwnedFd> {
        let t = self.tables();
        [&t.accept_table, &t.route_table, &t.lease_table]
            .into_iter()
            .filter_map(|x| x.as_ref().and_then(|x| x.read_only_fd().try_clone().ok()))
            .collect()
    }

    /// Leased sockets ready in the stashes, by owner (overlay address).
    pub fn stashed(&self) -> Vec<(IpAddr, usize)> {
        let stash = self.stash.lock().unwrap_or_else(|p| p.into_inner());
        let mut by: std::collections::BTreeMap<IpAddr, usize> = Default::default();
        for ((owner, _), s) in stash.iter() {
            *by.entry(*owner).or_default() += s.sockets.len();
        }
        by.into_iter().collect()
    }

    pub fn book(&self) -> Option<std::sync::MutexGuard<'_, crate::leases::LeaseBook>> {
        self.leases
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Pooled sockets on ports leased to `owner`, from a stash of sockets whose lease every
    /// peer knows. The stash is refilled ahead of need, a chunk at a time, after the reply has
    /// gone (a task of its own): only a stash that cannot serve the request is refilled before
    /// it. Ports that stay with their owner go into it at once; ports that change owner go to
    /// the peers in one burst in the background, and into the stash once all have
    /// acknowledged. So a slow or unreachable peer never holds up a connect: with an empty
    /// stash the request gets sockets without a lease (whose connections are announced).
    pub(crate) fn leased_sockets(
        self: &std::sync::Arc<Self>,
        family: i32,
        host: IpAddr,
        owner: IpAddr,
        count: u8,
    ) -> Option<Vec<(OwnedFd, u16)>> {
        if !self.settings.in_overlay(owner) {
            return None;
        }
        let owner = normalize_ip(owner);
        let key = (owner, family);
        let count = count.min(MAX_POOL_BATCH) as usize;
        let (chunk, low) = {
            let (lo, hi) = self.book()?.range();
            let span = hi as usize - lo as usize + 1;
            let chunk = (span / 64).clamp(count, LEASE_CHUNK);
            (chunk, chunk / 2)
        };
        let (stashed, changing) = self
            .stash()
            .get(&key)
            .map_or((0, false), |s| (s.sockets.len(), s.changing));
        let in_flight = self.leasing().get(&key).copied().unwrap_or(0);
        let want = low.max(count) + if changing { CHANGING_AHEAD * chunk } else { 0 };
        if stashed + in_flight < want {
            if stashed < count {
                self.restock(family, host, owner, chunk);
            } else {
                // Counted as in flight until done, so that requests meanwhile do not ask again.
                *self.leasing().entry(key).or_default() += chunk;
                let me = self.clone();
                tokio::spawn(async move {
                    me.restock(family, host, owner, chunk);
                    me.leasing_done(key, chunk);
                });
            }
        }
        let mut stash = self.stash();
        let s = stash.get_mut(&key)?;
        s.used = std::time::Instant::now();
        let n = s.sockets.len().saturating_sub(count);
        let out = s.sockets.split_off(n);
        (!out.is_empty()).then_some(out)
    }

    fn stash(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(IpAddr, i32), Stash>> {
        self.stash.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn leasing(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(IpAddr, i32), usize>> {
        self.leasing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leases `chunk` more ports to `owner` for its stash (see `leased_sockets`).
    fn restock(
        self: &std::sync::Arc<Self>,
        family: i32,
        host: IpAddr,
        owner: IpAddr,
        chunk: usize,
    ) {
        let key = (owner, family);
        let Some(leased) = self
            .book()
            .map(|mut b| b.lease(family, host, owner, chunk, crate::sockdiag::live_sockets_in))
        else {
            return;
        };
        self.counters
            .leases
            .fetch_add(leased.sockets.len() as u64, Ordering::Relaxed);
        self.counters
            .lease_changes
            .fetch_add(leased.changed.len() as u64, Ordering::Relaxed);
        let mut now = Vec::new();
        let mut later = Vec::new();
        for (fd, port) in leased.sockets {
            if leased.changed.contains(&port) {
                later.push((fd, port));
            } else {
                now.push((fd, port));
            }
        }
        {
            let mut stash = self.stash();
            let s = stash.entry(key).or_default();
            s.sockets.extend(now);
            s.changing = !later.is_empty();
        }
        if later.is_empty() {
            return;
        }
        let host = normalize_ip(host);
        let ports: Vec<SocketAddr> = leased
            .changed
            .iter()
            .map(|p| SocketAddr::new(host, *p))
            .collect();
        let waiting = later.len();
        *self.leasing().entry(key).or_default() += waiting;
        let me = self.clone();
        tokio::spawn(async move {
            tracing::debug!(%owner, ports = ports.len(), "ports leased");
            me.lease_locally(&ports, owner);
            if me.peers.lease(&ports, owner, PEER_ACK_WAIT).await {
                me.stash().entry(key).or_default().sockets.extend(later);
            }
            // Else a peer that has not applied the lease may still credit a port's previous
            // owner: these sockets must not connect (they close here; the peer applies the
            // lease later anyway).
            me.leasing_done(key, waiting);
        });
    }

    /// `n` sockets counted in flight for `key` are in its stash now, or never will be.
    fn leasing_done(&self, key: (IpAddr, i32), n: usize) {
        let mut leasing = self.leasing();
        if let Some(left) = leasing.get_mut(&key) {
            *left = left.saturating_sub(n);
            if *left == 0 {
                leasing.remove(&key);
            }
        }
    }

    /// Closes the stashed sockets of owners that stopped asking, so that their ports go back to
    /// the range.
    pub fn expire_stashes(&self) {
        self.stash()
            .retain(|_, s| s.used.elapsed() < STASH_IDLE && !s.sockets.is_empty());
    }

    /// Listeners of this host learn our own leases as a peer's learn them.
    fn lease_locally(&self, ports: &[SocketAddr], owner: IpAddr) {
        let mut live = crate::tables::LiveConns::of_this_host();
        let mut t = self.tables();
        for p in ports {
            let n = t.lease_from_peer(*p, owner, &mut live);
            self.counters.pinned.fetch_add(n as u64, Ordering::Relaxed);
        }
        t.leases_done();
    }

    /// Ready host sockets for a library's pool (see `Request::Sockets`).
    pub async fn sockets(
        self: &std::sync::Arc<Self>,
        family: i32,
        count: u8,
        lease: Option<IpAddr>,
    ) -> (Reply<'static>, Vec<OwnedFd>) {
        let Some(host) = self.settings.listen_host(family) else {
            return (
                Reply::Fallback(FallbackReason::FamilyUnsupported),
                Vec::new(),
            );
        };
        let reply = |out: Vec<(OwnedFd, u16)>, leased: bool| {
            let mut ports = slim_uapi::proto::PortList::default();
            for (_, p) in &out {
                ports.push(*p);
            }
            (
                Reply::SocketsOk {
                    count: out.len() as u8,
                    leased,
                    ports,
                },
                out.into_iter().map(|(fd, _)| fd).collect(),
            )
        };
        if let Some(owner) = lease {
            if let Some(out) = self.leased_sockets(family, host, owner, count) {
                return reply(out, true);
            }
        }
        let mut out = Vec::new();
        let ports = hostsock::ephemeral_ports();
        let mut seed = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            | 1;
        for _ in 0..count.min(MAX_POOL_BATCH) {
            match hostsock::bound_socket(family, host, ports, &mut seed) {
                Ok(fd) => out.push(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create pooled host sockets");
                    break;
                }
            }
        }
        reply(out, false)
    }

    /// A library connected a pooled socket: record it and tell the listener's router.
    pub fn client_announce(&self, a: &Announce) {
        let a = Announce {
            client_host: normalize(a.client_host),
            server_host: normalize(a.server_host),
            client_overlay: normalize(a.client_overlay),
            server_overlay: normalize(a.server_overlay),
        };
        if !self.settings.in_overlay(a.server_overlay.ip()) {
            return;
        }
        let owner = self.tables().owner_of(&a.server_overlay, &a.server_host);
        self.tables().set_identity(
            (a.client_host, a.server_host),
            Identity {
                local: a.client_overlay,
                peer: Some(a.server_overlay),
            },
        );
        match owner {
            Some(Owner::Local) => self.tables().announce(a),
            Some(Owner::Peer(conn)) => self.peers.send(conn, PeerMsg::Announce(a)),
            None => {
                tracing::debug!(server = %a.server_overlay, "announce for a listener no longer known")
            }
        }
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
    }

    /// `caller` is the identified container in secure mode (required there), None otherwise.
    pub fn connect(
        &self,
        caller: Option<&Caller>,
        req: &ConnectReq,
    ) -> (Reply<'static>, Option<OwnedFd>) {
        let dst = normalize(req.dst);
        if !self.settings.in_overlay(dst.ip()) {
            return self.fallback(FallbackReason::OutsidePrefixes);
        }
        if let Some(c) = caller {
            if !c.owns(req.src_ip) {
                return self.refuse(
                    c,
                    "connect from an overlay address that is not this container's",
                );
            }
        }
        let Some(route) = self.tables().route(&dst) else {
            return self.fallback(FallbackReason::NoListener);
        };
        if let (Some(p), Some(c)) = (&self.settings.policy, caller) {
            if !p.allows(&c.addrs, dst) {
                let n = self.counters.policy_denied.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(pid = c.pid, from = ?c.addrs, %dst, denied_total = n, "connect denied by the policy");
                return (
                    Reply::Error {
                        errno: libc::ECONNREFUSED,
                        message: "denied by the Slim policy",
                    },
                    None,
                );
            }
        }
        if req.family == libc::AF_INET && route.host.is_ipv6() {
            return self.fallback(FallbackReason::FamilyUnsupported);
        }
        let Some(bind_ip) = self.settings.host_for(&route.host) else {
            return self.fallback(FallbackReason::FamilyUnsupported);
        };
        let started = match hostsock::start_connect(req.family, bind_ip, route.host, &req.opts) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%dst, host = %route.host, error = %e, "host connect failed; overlay fallback");
                return self.fallback(FallbackReason::Unavailable);
            }
        };
        let src = normalize_ip(req.src_ip);
        let id = Identity {
            local: SocketAddr::new(src, started.local.port()),
            peer: Some(dst),
        };
        if let (Some(dev), Some(c)) = (&self.dev, caller) {
            // Restricted before the container sees it; the router started the connect itself, so
            // the socket needs no connect authorization.
            use std::os::fd::AsFd;
            if let Err(e) = dev.restrict(
                started.fd.as_fd(),
                c.netns,
                in_family(id.local, req.family),
                Some(in_family(dst, req.family)),
                false,
            ) {
                tracing::warn!(%dst, error = %e, "cannot restrict a host socket; overlay fallback");
                return self.fallback(FallbackReason::Unavailable);
            }
        }
        let ann = Announce {
            client_host: started.local,
            server_host: route.host,
            client_overlay: id.local,
            server_overlay: dst,
        };
        match route.owner {
            Owner::Local => self.tables().announce(ann),
            Owner::Peer(conn) => self.peers.send(conn, PeerMsg::Announce(ann)),
        }
        self.tables().set_identity((started.local, route.host), id);
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(local = %id.local, peer = %dst, host_local = %started.local, host_peer = %route.host, "connect");
        (
            Reply::ConnectOk {
                id,
                cookie: started.cookie,
            },
            Some(started.fd),
        )
    }

    pub fn listener_keys(&self, req: &ListenReq) -> Vec<SocketAddr> {
        let port = req.bound.port();
        let ip = normalize_ip(req.bound.ip());
        let candidates: Vec<IpAddr> = if ip.is_unspecified() {
            req.ips
                .iter()
                .map(normalize_ip)
                .filter(|ip| match (req.family, ip) {
                    (libc::AF_INET, IpAddr::V4(_)) => true,
                    (libc::AF_INET, IpAddr::V6(_)) => false,
                    (_, IpAddr::V4(_)) => !req.v6only,
                    (_, IpAddr::V6(_)) => true,
                })
                .collect()
        } else {
            vec![ip]
        };
        let mut keys: Vec<SocketAddr> = candidates
            .into_iter()
            .filter(|ip| self.settings.in_overlay(*ip))
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    pub async fn listen(
        &self,
        caller: Option<&Caller>,
        req: &ListenReq,
    ) -> (Reply<'static>, Option<OwnedFd>) {
        let mut req = req.clone();
        if let Some(c) = caller {
            // A container listens on its own addresses only, whatever it claims.
            let bound = normalize_ip(req.bound.ip());
            if !bound.is_unspecified() && !c.owns(bound) {
                if self.settings.in_overlay(bound) {
                    return self.refuse(
                        c,
                        "listen on an overlay address that is not this container's",
                    );
                }
                return self.fallback(FallbackReason::OutsidePrefixes);
            }
            req.ips = c.ip_list();
        }
        let req = &req;
        let keys = self.listener_keys(req);
        if keys.is_empty() {
            return self.fallback(FallbackReason::OutsidePrefixes);
        }
        let Some(host) = self.settings.listen_host(req.family) else {
            return self.fallback(FallbackReason::FamilyUnsupported);
        };
        if self.tables().has_local_route(&keys) {
            // A program that closes its listener and listens again on the same port (iperf3
            // between tests) must not leave the old, dead host listener in the tables: peers would
            // send connections there and get ECONNREFUSED. Ask the kernel which ones still exist;
            // the removals reach the peers before the new entries do (same connection, in order).
            self.sweep_listeners();
        }
        let started = match self.hold_uid {
            Some(uid) => {
                crate::porthold::start_listen(uid, req.family, host, req.backlog, &req.opts)
                    .map(|(l, hold)| (l, Some(hold)))
            }
            None => {
                hostsock::start_listen(req.family, host, req.backlog, &req.opts).map(|l| (l, None))
            }
        };
        let (l, hold) = match started {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(bound = %req.bound, error = %e, "host listen failed; overlay only");
                return self.fallback(FallbackReason::Unavailable);
            }
        };
        if let (Some(dev), Some(c)) = (&self.dev, caller) {
            use std::os::fd::AsFd;
            if let Err(e) = dev.restrict(
                l.fd.as_fd(),
                c.netns,
                in_family(req.bound, req.family),
                None,
                true,
            ) {
                tracing::warn!(bound = %req.bound, error = %e, "cannot restrict a host listener; overlay only");
                return self.fallback(FallbackReason::Unavailable);
            }
        }
        let entries = self.tables().add_local(
            l.cookie,
            LocalListener {
                host: l.local,
                keys: keys.clone(),
                bound: req.bound,
                owner: caller.map_or(0, |c| c.netns),
            },
        );
        if let Some(h) = hold {
            self.holds().insert(l.cookie, h);
        }
        self.counters.listens.fetch_add(1, Ordering::Relaxed);
        tracing::info!(?keys, host = %l.local, cookie = l.cookie, "listener registered");
        // Return only once every connected peer knows the listener: a client started after the
        // server's listen() returned then finds it, whichever host it runs on.
        self.peers.add_listeners(&entries, PEER_ACK_WAIT).await;
        (Reply::ListenOk { cookie: l.cookie }, Some(l.fd))
    }

    /// Registers again a host listener a container already holds (after this router restarted).
    /// The socket must be a TCP listener on this host's address: anything else is refused.
    pub async fn reattach(&self, req: &ListenReq, fd: Option<OwnedFd>) -> Reply<'static> {
        let Some(fd) = fd else {
            return Reply::Error {
                errno: libc::EINVAL,
                message: "reattach without a socket",
            };
        };
        // The router does not keep the descriptor (dropped on return): the container holds it.
        let (local, cookie) = match hostsock::inspect_listener(&fd) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "refused to reattach a socket that is not a host listener");
                return Reply::Error {
                    errno: libc::EINVAL,
                    message: "not a host listener of this router",
                };
            }
        };
        let ours = Some(local.ip()) == self.settings.host_v4.map(IpAddr::V4)
            || Some(local.ip()) == self.settings.host_v6.map(IpAddr::V6);
        if !ours {
            return Reply::Error {
                errno: libc::EINVAL,
                message: "not a host listener of this router",
            };
        }
        let keys = self.listener_keys(req);
        if keys.is_empty() {
            return Reply::Fallback(FallbackReason::OutsidePrefixes);
        }
        self.register_again(
            cookie,
            LocalListener {
                host: local,
                keys,
                bound: req.bound,
                owner: 0,
            },
        )
        .await
    }

    /// Registers a host listener a container already holds (after a router restart), unless it
    /// is registered already, and waits for the peers to know it.
    pub async fn register_again(&self, cookie: u64, l: LocalListener) -> Reply<'static> {
        if self.tables().local_listener(cookie).is_some() {
            return Reply::ListenOk { cookie };
        }
        let (keys, host) = (l.keys.clone(), l.host);
        if let Some(uid) = self.hold_uid {
            // A listener a former router made under the hold uid takes a hold again.
            let family = if host.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            match crate::porthold::hold(uid, family, host) {
                Ok(h) => {
                    self.holds().insert(cookie, h);
                }
                Err(e) => {
                    tracing::debug!(%host, error = %e, "no port hold for a reattached listener")
                }
            }
        }
        let entries = self.tables().add_local(cookie, l);
        tracing::info!(?keys, %host, cookie, "listener reattached");
        self.peers.add_listeners(&entries, PEER_ACK_WAIT).await;
        Reply::ListenOk { cookie }
    }

    /// The announcement of the host connection `peer_host -> local_host`, waiting a little if it
    /// has not arrived yet.
    pub async fn wait_announce(
        &self,
        peer_host: SocketAddr,
        local_host: SocketAddr,
    ) -> Option<Announce> {
        let waiting = self.tables().take_announce(peer_host, local_host);
        match waiting {
            Ok(ann) => Some(ann),
            Err(rx) => tokio::time::timeout(ANNOUNCE_WAIT, rx)
                .await
                .ok()
                .and_then(|r| r.ok()),
        }
    }

    pub async fn accept_lookup(&self, a: &AcceptLookup) -> Reply<'static> {
        let peer_host = normalize(a.peer_host);
        let local_host = normalize(a.local_host);
        let ann = self.wait_announce(peer_host, local_host).await;
        let Some(ann) = ann else {
            self.counters
                .unknown_accepts
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer_host, %local_host, "accepted host connection was never announced; refusing it");
            return Reply::Unknown;
        };
        let id = Identity {
            local: ann.server_overlay,
            peer: Some(ann.client_overlay),
        };
        // Its identity was recorded when the announcement arrived.
        self.counters.accepts.fetch_add(1, Ordering::Relaxed);
        Reply::Identity(id)
    }

    pub fn query_tuple(&self, local_host: SocketAddr, peer_host: SocketAddr) -> Reply<'static> {
        let (local, peer) = (normalize(local_host), normalize(peer_host));
        // A connection from one of our leased ports was never announced.
        let leased = self
            .book()
            .and_then(|b| b.owner(local.port()))
            .filter(|_| self.settings.host_for(&local) == Some(local.ip()));
        let t = self.tables();
        if let Some(id) = t.identity(&(local, peer)) {
            return Reply::Identity(id);
        }
        if let Some(owner) = leased {
            if let Some(server) = t.route_key(&peer, owner) {
                return Reply::Identity(Identity {
                    local: SocketAddr::new(owner, local.port()),
                    peer: Some(server),
                });
            }
        }
        // Or one accepted from a peer's leased port.
        match t.derive(peer, local) {
            Some(a) => Reply::Identity(Identity {
                local: a.server_overlay,
                peer: Some(a.client_overlay),
            }),
            None => Reply::Unknown,
        }
    }

    /// A program closed a descriptor of this socket. Other descriptors (dup, fork, SCM_RIGHTS)
    /// may still hold it, so nothing is forgotten here: the next sweep asks the kernel.
    pub fn closed(&self, cookie: u64) {
        if self
            .tables()
            .local_listeners()
            .iter()
            .any(|(c, _)| *c == cookie)
        {
            // Listeners are few and their removal must reach peers quickly.
            self.sweep_listeners();
        } else {
            self.sweep_due.store(true, Ordering::Relaxed);
        }
    }

    /// Forgets identities of host sockets the kernel no longer has.
    pub fn sweep_identities(&self) {
        if !self.tables().sweep_needed(std::time::Instant::now()) {
            return;
        }
        match crate::sockdiag::live_tcp_tuples() {
            Ok(live) => {
                let mut t = self.tables();
                t.retain_pins(|x| live.contains(x));
                let n = t.retain_identities(|x| live.contains(x), std::time::Instant::now());
                drop(t);
                if n > 0 {
                    tracing::debug!(forgotten = n, "closed sockets forgotten");
                }
            }
            Err(e) => tracing::warn!(error = %e, "sock_diag dump failed; socket state not swept"),
        }
    }

    /// Drops the registrations of host listeners that no longer exist in the kernel.
    pub fn sweep_listeners(&self) {
        let listening = match crate::sockdiag::listener_cookies() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "sock_diag dump failed; listener sweep skipped");
                return;
            }
        };
        let gone: Vec<u64> = self
            .tables()
            .local_listeners()
            .into_iter()
            .filter(|(cookie, _)| !listening.contains(cookie))
            .map(|(c, _)| c)
            .collect();
        for cookie in gone {
            let entries = self.tables().remove_local(cookie);
            tracing::info!(cookie, count = entries.len(), "listener closed");
            let acks = self.peers.del_listeners(&entries);
            let Some(hold) = self.holds().remove(&cookie) else {
                continue;
            };
            // The port stays held until every peer has withdrawn the routes, and a grace
            // period more (porthold.rs). Without a runtime (unit tests) it goes now.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    acks.wait(PEER_ACK_WAIT, "the withdrawal of a closed listener")
                        .await;
                    tokio::time::sleep(crate::porthold::GRACE).await;
                    drop(hold);
                });
            }
        }
    }

    fn holds(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, std::os::fd::OwnedFd>> {
        self.holds.lock().unwrap_or_else(|p| p.into_inner())
    }
}
