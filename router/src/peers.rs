//! Connections to the other hosts' routers: listener tables replicated both ways, connection
//! announcements sent ahead of the connections themselves.
//!
//! With a cluster key (`--cluster-key`) every frame, `Hello` included, is sealed on send and
//! opened on receive (`slim_uapi::peer::sealed`). A frame that does not open (foreign key,
//! tampered, expired, replayed, malformed, unsealed) is counted by kind, logged at warn, and the
//! connection is dropped: a real peer router never sends such a frame, so whoever did is not
//! trusted with the rest of the stream, and the routes learnt on that connection are forgotten
//! (a real peer redials and resends its table). Without a key (`--insecure-peer-channel`, the
//! explicit opt-out) nothing is sealed or checked.

use crate::peer_set::{runs, PeerConn, ToDial};
use crate::router::Router;
use crate::tables::{Owner, Route};
use slim_uapi::peer::sealed::{self, FrameError};
use slim_uapi::peer::{PeerMsg, MAX_PEER_FRAME};
use slim_uapi::proto::PROTO_VERSION;
use slim_uapi::seal::{ClusterKey, OpenError, ReplayCache, TOKEN_TTL_MS};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const HELLO_WAIT: Duration = Duration::from_secs(5);
const REDIAL_MIN: Duration = Duration::from_millis(100);
const REDIAL_MAX: Duration = Duration::from_secs(2);
const SAME_KEY: &str = "start every router with the same --cluster-key";

/// The sealed channel's state, shared by all peer connections: one replay cache, so a frame
/// recorded on one connection is refused on any other while it is valid.
pub struct PeerSeal {
    pub key: ClusterKey,
    replay: Mutex<ReplayCache>,
}

impl PeerSeal {
    pub fn new(key: ClusterKey) -> Self {
        PeerSeal {
            key,
            replay: Mutex::new(ReplayCache::default()),
        }
    }
}

/// Sealed frames opened, and refused by why.
#[derive(Default)]
pub struct SealCounters {
    pub opened: AtomicU64,
    pub foreign: AtomicU64,
    pub tampered: AtomicU64,
    pub expired: AtomicU64,
    pub replayed: AtomicU64,
    pub malformed: AtomicU64,
    pub overloaded: AtomicU64,
    pub unsealed: AtomicU64,
}

impl SealCounters {
    fn refused(&self, e: &FrameError) -> &AtomicU64 {
        match e {
            FrameError::Unsealed => &self.unsealed,
            FrameError::Decode(_) => &self.malformed,
            FrameError::Open(o) => match o {
                OpenError::Foreign => &self.foreign,
                OpenError::Tampered => &self.tampered,
                OpenError::Expired => &self.expired,
                OpenError::Replayed => &self.replayed,
                OpenError::Malformed => &self.malformed,
                OpenError::Overloaded => &self.overloaded,
            },
        }
    }

    /// `opened N, foreign N, ...`: running totals, for logs.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "opened {}, foreign {}, tampered {}, expired {}, replayed {}, malformed {}, overloaded {}, unsealed {}",
            g(&self.opened),
            g(&self.foreign),
            g(&self.tampered),
            g(&self.expired),
            g(&self.replayed),
            g(&self.malformed),
            g(&self.overloaded),
            g(&self.unsealed)
        )
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One peer connection as this end sees it: what seals its frames, and its two host addresses
/// (the ones a sealed frame is bound to).
#[derive(Clone)]
struct Link {
    seal: Option<Arc<PeerSeal>>,
    local: IpAddr,
    remote: SocketAddr,
}

/// Accepts connections from peers that dial us.
pub async fn listen(router: Arc<Router>, addr: SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context;
    let l = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for peer routers on {addr}; pick another --peer-listen")
    })?;
    tracing::info!(%addr, "listening for peer routers");
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, from)) => {
                    if !router.peers.admits(from.ip()) {
                        let n = router
                            .counters
                            .peer_refusals
                            .fetch_add(1, Ordering::Relaxed)
                            + 1;
                        // A removed host that still runs redials every few seconds: the 1st,
                        // 2nd, 4th, 8th... refusal is logged.
                        if n.is_power_of_two() {
                            tracing::warn!(%from, refused_total = n, "peer connection refused: its host is not in the peers file (nor --peer)");
                        }
                        continue;
                    }
                    let r = router.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(r, s, false, None).await {
                            tracing::info!(%from, error = %e, "peer connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(REDIAL_MIN).await;
                }
            }
        }
    });
    Ok(())
}

/// Dials the peers of the command line (and the configuration's `peers`), for good.
pub fn start(router: &Arc<Router>, peers: &[SocketAddr], with_file: bool) {
    for (p, stop) in router.peers.start(peers, with_file) {
        dial(router.clone(), p, stop);
    }
}

/// The peers file now lists `peers` (see `PeerSet::set_file_peers`).
pub fn set_file_peers(router: &Arc<Router>, peers: std::collections::BTreeSet<SocketAddr>) {
    let to_dial: Vec<ToDial> = router.peers.set_file_peers(router, peers);
    for (p, stop) in to_dial {
        tracing::info!(peer = %p, "peer added by the peers file; dialling");
        dial(router.clone(), p, stop);
    }
}

/// Keeps a connection to one peer, redialling with backoff whenever it drops, until `stop`.
fn dial(router: Arc<Router>, peer: SocketAddr, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut backoff = REDIAL_MIN;
        let mut reported = false;
        loop {
            let connected = tokio::select! {
                c = TcpStream::connect(peer) => c,
                _ = stop.wait_for(|s| *s) => return,
            };
            match connected {
                Ok(s) => {
                    backoff = REDIAL_MIN;
                    reported = false;
                    if let Err(e) = serve(router.clone(), s, true, Some(stop.clone())).await {
                        tracing::info!(%peer, error = %e, "peer connection ended");
                    }
                }
                Err(e) => {
                    if !reported {
                        tracing::info!(%peer, error = %e, "peer router not reachable yet; retrying");
                        reported = true;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(REDIAL_MAX);
        }
    });
}

/// Forgets a registered peer connection however its task ends (error, removal, or cancellation).
struct Registered {
    router: Arc<Router>,
    id: u64,
    host: IpAddr,
    writer: tokio::task::JoinHandle<()>,
    /// Its peer was removed from the peers file: its leases go too.
    removed: bool,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.router.peers.conns().remove(&self.id);
        self.router.tables().drop_owner(Owner::Peer(self.id));
        self.writer.abort();
        if self.removed {
            self.router.tables().drop_peer_leases(self.host);
            tracing::info!(peer = %self.host, conn = self.id, "peer router removed; its listeners and port leases are withdrawn");
        } else {
            tracing::info!(peer = %self.host, conn = self.id, "peer router disconnected; its listeners are forgotten");
        }
    }
}

/// Counts, logs and returns the refusal of a frame on a sealed connection.
fn refuse(router: &Router, link: &Link, e: FrameError) -> anyhow::Error {
    let c = &router.counters.seal;
    c.refused(&e).fetch_add(1, Ordering::Relaxed);
    let hint = match e {
        FrameError::Unsealed => {
            format!(" (the peer has no --cluster-key, or is not a router): {SAME_KEY}")
        }
        FrameError::Open(OpenError::Foreign) => {
            format!(" (the peer has another --cluster-key, or is not a router): {SAME_KEY}")
        }
        FrameError::Open(OpenError::Tampered) => {
            "; if this repeats between two routers, they may reach \
             each other through address translation, which the sealed channel does not support"
                .to_string()
        }
        FrameError::Open(OpenError::Expired) => {
            "; if this repeats between two routers, check that the hosts' clocks agree (NTP)"
                .to_string()
        }
        _ => String::new(),
    };
    tracing::warn!(
        kind = %e.name(),
        peer = %link.remote,
        "peer frame refused: {e}{hint}; dropping the connection; sealed frames so far: {}",
        c.summary()
    );
    anyhow::anyhow!("peer frame refused: {e}")
}

async fn read_msg<R: AsyncReadExt + Unpin>(
    router: &Router,
    link: &Link,
    r: &mut R,
) -> anyhow::Result<PeerMsg> {
    let len = r.read_u32_le().await? as usize;
    if len > MAX_PEER_FRAME {
        if link.seal.is_some() {
            return Err(refuse(router, link, FrameError::Open(OpenError::Malformed)));
        }
        anyhow::bail!("peer frame of {len} bytes exceeds the limit");
    }
    let mut buf = [0u8; MAX_PEER_FRAME];
    let body = &mut buf[..len];
    r.read_exact(body).await?;
    let Some(seal) = &link.seal else {
        return match PeerMsg::decode(body) {
            Ok(m) => Ok(m),
            Err(_) if slim_uapi::peer::is_sealed(body) => {
                tracing::warn!(
                    peer = %link.remote,
                    "the peer router seals its frames (it has a --cluster-key) and this router has no key: \
                     {SAME_KEY}; dropping the connection"
                );
                anyhow::bail!("peer seals its frames; this router has no --cluster-key")
            }
            Err(e) => anyhow::bail!("bad peer frame: {e}"),
        };
    };
    let opened = {
        let mut cache = seal.replay.lock().unwrap_or_else(|p| p.into_inner());
        sealed::open_frame(
            &seal.key,
            body,
            link.remote.ip(),
            link.local,
            now_ms(),
            &mut cache,
        )
    };
    match opened {
        Ok(m) => {
            router.counters.seal.opened.fetch_add(1, Ordering::Relaxed);
            Ok(m)
        }
        Err(e) => Err(refuse(router, link, e)),
    }
}

async fn write_msg<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    link: &Link,
    m: &PeerMsg,
) -> std::io::Result<()> {
    let mut buf = [0u8; MAX_PEER_FRAME];
    let n = match &link.seal {
        None => m
            .encode(&mut buf)
            .map_err(|_| std::io::Error::other("peer frame overflow"))?,
        Some(seal) => sealed::seal_frame(
            &seal.key,
            m,
            link.local,
            link.remote.ip(),
            now_ms() + TOKEN_TTL_MS,
            &mut buf,
        )
        .map_err(|e| std::io::Error::other(format!("cannot seal a peer frame: {e}")))?,
    };
    w.write_all(&buf[..n]).await
}

async fn serve(
    router: Arc<Router>,
    stream: TcpStream,
    dialled: bool,
    dial_stop: Option<watch::Receiver<bool>>,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let local_host = stream.local_addr()?.ip();
    let link = Link {
        seal: router.seal.clone(),
        local: local_host,
        remote: stream.peer_addr()?,
    };
    let (mut rd, wr) = stream.into_split();
    let mut wr = BufWriter::new(wr);
    write_msg(
        &mut wr,
        &link,
        &PeerMsg::Hello {
            version: PROTO_VERSION,
            host: local_host,
        },
    )
    .await?;
    wr.flush().await?;
    let hello = tokio::time::timeout(HELLO_WAIT, read_msg(&router, &link, &mut rd)).await??;
    let PeerMsg::Hello { version, host } = hello else {
        anyhow::bail!("peer did not start with Hello");
    };
    if version != PROTO_VERSION {
        anyhow::bail!("peer router at {host} speaks protocol {version}, this router {PROTO_VERSION}; run the same Slim version on every host");
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<PeerMsg>();
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let id = router.peers.new_id();
    let mut initial_leases = 0u64;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    {
        // Register and queue the full table under one lock so that no listener added meanwhile
        // is missed or sent twice out of order.
        let mut conns = router.peers.conns();
        // Checked again under the lock: a peers-file removal stops the registered connections
        // of that host after updating who is admitted.
        if !router.peers.admits(link.remote.ip()) || dial_stop.as_ref().is_some_and(|d| *d.borrow())
        {
            anyhow::bail!("peer {} is no longer listed", link.remote);
        }
        // Leases first: the peer must know them before it learns a listener of ours that a
        // connection from a leased port could reach... and before we use its listeners
        // (see `leases_acked` below).
        if let Some(book) = router.book() {
            let host = router
                .settings
                .host_v4
                .map(IpAddr::V4)
                .or(router.settings.host_v6.map(IpAddr::V6));
            let mut by_owner: HashMap<IpAddr, Vec<SocketAddr>> = HashMap::new();
            for (port, owner) in book.all() {
                let Some(host) = host else { break };
                by_owner
                    .entry(owner)
                    .or_default()
                    .push(SocketAddr::new(host, port));
            }
            for (owner, ports) in by_owner {
                for (start, count) in runs(&ports) {
                    initial_leases = router.peers.next_seq();
                    let _ = tx.send(PeerMsg::Lease {
                        seq: initial_leases,
                        client_host: start,
                        count,
                        overlay: owner,
                    });
                }
            }
        }
        for e in router.tables().local_entries() {
            let _ = tx.send(PeerMsg::ListenerAdd {
                seq: router.peers.next_seq(),
                entry: e,
            });
        }
        conns.insert(
            id,
            PeerConn {
                host,
                remote: link.remote,
                dialled,
                tx: tx.clone(),
                acked: ack_rx,
                stop: stop_tx,
            },
        );
    }
    tracing::info!(peer = %host, conn = id, sealed = link.seal.is_some(), "peer router connected");
    let wlink = link.clone();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if write_msg(&mut wr, &wlink, &m).await.is_err() {
                break;
            }
            // Batch whatever is queued, then flush once.
            while let Ok(m) = rx.try_recv() {
                if write_msg(&mut wr, &wlink, &m).await.is_err() {
                    return;
                }
            }
            if wr.flush().await.is_err() {
                break;
            }
        }
    });
    let mut registered = Registered {
        router: router.clone(),
        id,
        host,
        writer,
        removed: false,
    };
    let owner = Owner::Peer(id);
    // The peer's listener changes wait until it has acknowledged our leases: until then a
    // connection from a port we leased while it was away could reach it before the lease.
    let mut leases_acked = initial_leases == 0;
    let mut held: Vec<PeerMsg> = Vec::new();
    let apply = |m: PeerMsg| match m {
        PeerMsg::ListenerAdd { seq, entry } => {
            tracing::debug!(peer = %host, overlay = %entry.overlay, host_ep = %entry.host, shared = entry.shared, "peer listener added");
            router.tables().add_route(
                entry.overlay,
                Route {
                    host: entry.host,
                    cookie: entry.cookie,
                    owner,
                    shared: entry.shared,
                },
            );
            let _ = tx.send(PeerMsg::Ack { seq });
        }
        PeerMsg::ListenerDel { seq, entry } => {
            tracing::debug!(peer = %host, overlay = %entry.overlay, host_ep = %entry.host, "peer listener removed");
            router
                .tables()
                .del_route(&entry.overlay, entry.cookie, owner);
            let _ = tx.send(PeerMsg::Ack { seq });
        }
        _ => {}
    };
    let body = async {
        loop {
            match read_msg(&router, &link, &mut rd).await? {
                m @ (PeerMsg::ListenerAdd { .. } | PeerMsg::ListenerDel { .. }) => {
                    if leases_acked {
                        apply(m);
                    } else {
                        held.push(m);
                    }
                }
                PeerMsg::Ack { seq } => {
                    ack_tx.send_modify(|a| *a = (*a).max(seq));
                    if !leases_acked && seq >= initial_leases {
                        leases_acked = true;
                        for m in held.drain(..) {
                            apply(m);
                        }
                    }
                }
                PeerMsg::Announce(a) => router.tables().announce(a),
                PeerMsg::Lease {
                    seq,
                    client_host,
                    count,
                    overlay,
                } => {
                    let start = crate::hostsock::normalize(client_host);
                    let mut live = crate::tables::LiveConns::of_this_host();
                    let mut pinned = 0;
                    {
                        let mut t = router.tables();
                        for port in start.port() as u32..start.port() as u32 + count as u32 {
                            let c = SocketAddr::new(start.ip(), port as u16);
                            pinned += t.lease_from_peer(c, overlay, &mut live);
                        }
                        // Applied (the module's rows in one batch) before the ack below.
                        t.leases_done();
                    }
                    router
                        .counters
                        .pinned
                        .fetch_add(pinned as u64, Ordering::Relaxed);
                    if pinned > 0 {
                        tracing::debug!(peer = %host, %start, count, %overlay, pinned, "ports changed owner; earlier connections pinned");
                    }
                    let _ = tx.send(PeerMsg::Ack { seq });
                }
                PeerMsg::Hello { .. } => {}
            }
        }
    };
    let removed = async {
        match dial_stop {
            Some(mut d) => tokio::select! {
                _ = stop_rx.wait_for(|s| *s) => {}
                _ = d.wait_for(|s| *s) => {}
            },
            None => {
                let _ = stop_rx.wait_for(|s| *s).await;
            }
        }
    };
    let result: anyhow::Result<()> = tokio::select! {
        r = body => r,
        _ = removed => {
            registered.removed = true;
            Ok(())
        }
    };
    result
}
