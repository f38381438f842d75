//! Connections to the other hosts' routers: listener tables replicated both ways, connection
//! announcements sent ahead of the connections themselves.

use crate::router::Router;
use crate::tables::{Owner, Route};
use slim_uapi::peer::{ListenerEntry, PeerMsg, MAX_PEER_FRAME};
use slim_uapi::proto::PROTO_VERSION;
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

struct PeerConn {
    host: IpAddr,
    tx: mpsc::UnboundedSender<PeerMsg>,
    acked: watch::Receiver<u64>,
}

#[derive(Default)]
pub struct PeerSet {
    conns: Mutex<HashMap<u64, PeerConn>>,
    next_id: AtomicU64,
    seq: AtomicU64,
}

impl PeerSet {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PeerConn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn send(&self, conn: u64, msg: PeerMsg) {
        if let Some(c) = self.conns().get(&conn) {
            let _ = c.tx.send(msg);
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Sends new listeners to every peer and waits (bounded) until each has acknowledged them.
    pub async fn add_listeners(&self, entries: &[ListenerEntry], wait: Duration) {
        let mut waits = Vec::new();
        {
            let conns = self.conns();
            for (id, c) in conns.iter() {
                let mut last = 0;
                for e in entries {
                    last = self.next_seq();
                    let _ = c.tx.send(PeerMsg::ListenerAdd {
                        seq: last,
                        entry: *e,
                    });
                }
                if last != 0 {
                    waits.push((*id, c.host, c.acked.clone(), last));
                }
            }
        }
        for (id, host, mut acked, want) in waits {
            let r = tokio::time::timeout(wait, acked.wait_for(|a| *a >= want)).await;
            if !matches!(r, Ok(Ok(_))) {
                tracing::warn!(peer = %host, conn = id, "peer did not confirm a new listener in time");
            }
        }
    }

    pub fn del_listeners(&self, entries: &[ListenerEntry]) {
        let conns = self.conns();
        for c in conns.values() {
            for e in entries {
                let _ = c.tx.send(PeerMsg::ListenerDel {
                    seq: self.next_seq(),
                    entry: *e,
                });
            }
        }
    }

    pub fn describe(&self) -> Vec<(u64, IpAddr)> {
        self.conns().iter().map(|(id, c)| (*id, c.host)).collect()
    }
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
                    let r = router.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(r, s).await {
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

/// Keeps a connection to one peer, redialling with backoff whenever it drops.
pub fn dial(router: Arc<Router>, peer: SocketAddr) {
    tokio::spawn(async move {
        let mut backoff = REDIAL_MIN;
        let mut reported = false;
        loop {
            match TcpStream::connect(peer).await {
                Ok(s) => {
                    backoff = REDIAL_MIN;
                    reported = false;
                    if let Err(e) = serve(router.clone(), s).await {
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
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(REDIAL_MAX);
        }
    });
}

async fn read_msg<R: AsyncReadExt + Unpin>(r: &mut R) -> anyhow::Result<PeerMsg> {
    let len = r.read_u32_le().await? as usize;
    if len > MAX_PEER_FRAME {
        anyhow::bail!("peer frame of {len} bytes exceeds the limit");
    }
    let mut buf = [0u8; MAX_PEER_FRAME];
    r.read_exact(&mut buf[..len]).await?;
    PeerMsg::decode(&buf[..len]).map_err(|e| anyhow::anyhow!("bad peer frame: {e}"))
}

async fn write_msg<W: AsyncWriteExt + Unpin>(w: &mut W, m: &PeerMsg) -> std::io::Result<()> {
    let mut buf = [0u8; MAX_PEER_FRAME];
    let n = m
        .encode(&mut buf)
        .map_err(|_| std::io::Error::other("peer frame overflow"))?;
    w.write_all(&buf[..n]).await
}

async fn serve(router: Arc<Router>, stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let local_host = stream.local_addr()?.ip();
    let (mut rd, wr) = stream.into_split();
    let mut wr = BufWriter::new(wr);
    write_msg(
        &mut wr,
        &PeerMsg::Hello {
            version: PROTO_VERSION,
            host: local_host,
        },
    )
    .await?;
    wr.flush().await?;
    let hello = tokio::time::timeout(HELLO_WAIT, read_msg(&mut rd)).await??;
    let PeerMsg::Hello { version, host } = hello else {
        anyhow::bail!("peer did not start with Hello");
    };
    if version != PROTO_VERSION {
        anyhow::bail!("peer router at {host} speaks protocol {version}, this router {PROTO_VERSION}; run the same Slim version on every host");
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<PeerMsg>();
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let id = router.peers.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    {
        // Register and queue the full table under one lock so that no listener added meanwhile
        // is missed or sent twice out of order.
        let mut conns = router.peers.conns();
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
                tx: tx.clone(),
                acked: ack_rx,
            },
        );
    }
    tracing::info!(peer = %host, conn = id, "peer router connected");
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if write_msg(&mut wr, &m).await.is_err() {
                break;
            }
            // Batch whatever is queued, then flush once.
            while let Ok(m) = rx.try_recv() {
                if write_msg(&mut wr, &m).await.is_err() {
                    return;
                }
            }
            if wr.flush().await.is_err() {
                break;
            }
        }
    });
    let owner = Owner::Peer(id);
    let result: anyhow::Result<()> = async {
        loop {
            match read_msg(&mut rd).await? {
                PeerMsg::ListenerAdd { seq, entry } => {
                    tracing::debug!(peer = %host, overlay = %entry.overlay, host_ep = %entry.host, "peer listener added");
                    router.tables().add_route(
                        entry.overlay,
                        Route {
                            host: entry.host,
                            cookie: entry.cookie,
                            owner,
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
                PeerMsg::Ack { seq } => {
                    ack_tx.send_modify(|a| *a = (*a).max(seq));
                }
                PeerMsg::Announce(a) => router.tables().announce(a),
                PeerMsg::Hello { .. } => {}
            }
        }
    }
    .await;
    router.peers.conns().remove(&id);
    router.tables().drop_owner(owner);
    writer.abort();
    tracing::info!(peer = %host, conn = id, "peer router disconnected; its listeners are forgotten");
    result
}
