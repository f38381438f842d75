//! `slim-router status`: what the running router knows, as a JSON document (format
//! `STATUS_FORMAT`) that the router serves in chunks over its Unix socket to an administrator
//! (root in its network namespace: containers have that socket mounted and must never learn host
//! addresses), and the client that fetches and prints it.

use crate::router::Router;
use crate::tables::Owner;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub format: u16,
    pub version: String,
    pub pid: u32,
    pub secure: bool,
    /// Whether peer frames are sealed with a cluster key.
    pub sealed: bool,
    pub host_addrs: Vec<IpAddr>,
    pub prefixes: Vec<String>,
    pub peers: Vec<PeerStatus>,
    pub connections: Vec<ConnStatus>,
    pub listeners: Vec<ListenerStatus>,
    pub containers: Vec<ContainerStatus>,
    pub leases: LeaseStatus,
    pub counters: BTreeMap<String, u64>,
    /// Secure mode with a module that keeps tables: this router's tables in the module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_tables: Option<KernelTablesStatus>,
}

/// This router's table set in slim_kern, as the module reports it (TABLE_STATS, TABLE_DUMP).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KernelTablesStatus {
    pub listeners: u64,
    pub leases: u64,
    pub identities: u64,
    /// The module parameter `table_limit` (rows per table).
    pub limit: u64,
    pub generation: u64,
    /// Batches the module refused (its count), and how many for ENOSPC.
    pub refused_batches: u64,
    pub enospc: u64,
    /// Whether the module holds exactly the router's state (false after a refusal, until a
    /// reload succeeds).
    pub in_sync: bool,
    /// Full loads (the first, and one after each refusal).
    pub loads: u64,
    /// Connects the module translated from a listeners table, and those it answered ENOENT (no
    /// row): module-wide counts, all routers' sets together.
    #[serde(default)]
    pub translated: u64,
    #[serde(default)]
    pub not_found: u64,
    /// Policy allow-list rows of this router's set, and translated connects the module refused
    /// for the Slim policy (module-wide).
    #[serde(default)]
    pub policy_rows: u64,
    #[serde(default)]
    pub policy_denied: u64,
    /// The listener rows, read back from the module: overlay endpoint -> host endpoint.
    pub listener_rows: Vec<(SocketAddr, SocketAddr)>,
    /// Why the module's tables could not be read, if they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The module's word on this router's table set (None: no secure mode or no tables).
pub fn kernel_tables(router: &Router) -> Option<KernelTablesStatus> {
    let counters = router.kernel_tables.get()?;
    let dev = router.dev.as_ref()?;
    let mut k = KernelTablesStatus {
        in_sync: counters.in_sync.load(Ordering::Relaxed),
        loads: counters.loads.load(Ordering::Relaxed),
        ..Default::default()
    };
    let read = dev.table_stats().and_then(|st| {
        let rows = dev
            .table_dump(slim_uapi::kabi_tables::SLIM_TABLE_LISTENERS)?
            .0;
        Ok((st, rows))
    });
    match read {
        Ok((st, rows)) => {
            use slim_uapi::kabi_tables::{
                SLIM_TABLE_IDENTITIES, SLIM_TABLE_LEASES, SLIM_TABLE_LISTENERS, SLIM_TABLE_POLICY,
            };
            k.listeners = st.rows[SLIM_TABLE_LISTENERS as usize];
            k.leases = st.rows[SLIM_TABLE_LEASES as usize];
            k.identities = st.rows[SLIM_TABLE_IDENTITIES as usize];
            k.policy_rows = st.rows[SLIM_TABLE_POLICY as usize];
            k.policy_denied = st.policy_denied;
            k.limit = st.limit;
            k.generation = st.generation;
            k.refused_batches = st.refused_batches;
            k.enospc = st.enospc;
            k.translated = st.translated;
            k.not_found = st.not_found;
            k.listener_rows = rows
                .iter()
                .filter_map(|r| Some((r.key.to_socket_addr()?, r.value.to_socket_addr()?)))
                .collect();
        }
        Err(e) => k.error = Some(e.to_string()),
    }
    Some(k)
}

/// A configured peer.
#[derive(Debug, Serialize, Deserialize)]
pub struct PeerStatus {
    pub addr: SocketAddr,
    /// `flag` (--peer or `peers`), `file` (the peers file), or `flag+file`.
    pub source: String,
    pub connected: bool,
    pub sealed: bool,
}

/// A live connection to a peer router.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConnStatus {
    pub id: u64,
    /// The peer's host address (from its Hello).
    pub host: IpAddr,
    pub remote: SocketAddr,
    /// `out` (this router dialled) or `in`.
    pub direction: String,
    pub sealed: bool,
}

/// An overlay endpoint and the host listener that serves it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub overlay: SocketAddr,
    pub host: SocketAddr,
    /// `local` or the peer host that told us.
    pub origin: String,
    pub shared: bool,
}

/// An overlay address of this host that uses Slim: its listeners and leased ports.
#[derive(Debug, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub overlay: IpAddr,
    /// Secure mode: the network namespace inode that owns its listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    pub listeners: usize,
    pub leased_ports: usize,
    pub pooled_ready: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// `LO-HI`, or `off`.
    pub range: String,
    /// Ports of this host leased, by owner (overlay address), that a socket still holds; ports
    /// whose sockets are gone are remembered for their last owner but not counted.
    pub own: BTreeMap<IpAddr, usize>,
    /// Peers' ports whose owner this router knows, by peer host.
    pub peers: BTreeMap<IpAddr, usize>,
}

/// The leased ports of this host that a socket holds now (a sock_diag dump of the range, taken
/// before the book's lock); every lease in the book if the dump fails.
pub fn held_leases(router: &Router, lo: u16, hi: u16) -> Vec<(u16, IpAddr)> {
    let live = crate::sockdiag::live_sockets_in(lo, hi);
    let Some(book) = router.book() else {
        return Vec::new();
    };
    match live {
        Ok(live) => book.held(&live),
        Err(e) => {
            tracing::warn!(error = %e, "sock_diag dump failed; reporting every lease as held");
            book.all()
        }
    }
}

/// The document the router serves now.
pub fn snapshot(router: &Router) -> Status {
    let conns = router.peers.connections();
    let host_of: BTreeMap<u64, IpAddr> = conns.iter().map(|c| (c.id, c.host)).collect();
    let sealed = router.seal.is_some();
    let (routes, locals, peer_leases) = {
        let t = router.tables();
        (t.all_routes(), t.local_all(), t.leases_by_host())
    };
    let mut listeners: Vec<ListenerStatus> = routes
        .iter()
        .map(|(overlay, r)| ListenerStatus {
            overlay: *overlay,
            host: r.host,
            origin: match r.owner {
                Owner::Local => "local".to_string(),
                Owner::Peer(id) => host_of
                    .get(&id)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| format!("peer connection {id}")),
            },
            shared: r.shared,
        })
        .collect();
    // Two connections to one peer (one dialled, one accepted) each bring its listeners: one
    // route per connection in the tables, the same listener to an administrator. `routes` is
    // sorted by (overlay, host), so the copies are next to each other.
    listeners.dedup_by(|a, b| {
        (a.overlay, a.host, &a.origin, a.shared) == (b.overlay, b.host, &b.origin, b.shared)
    });
    let mut containers: BTreeMap<IpAddr, ContainerStatus> = BTreeMap::new();
    fn entry(m: &mut BTreeMap<IpAddr, ContainerStatus>, ip: IpAddr) -> &mut ContainerStatus {
        m.entry(ip).or_insert_with(|| ContainerStatus {
            overlay: ip,
            netns: None,
            listeners: 0,
            leased_ports: 0,
            pooled_ready: 0,
        })
    }
    for (_, l) in &locals {
        let mut ips: Vec<IpAddr> = l.keys.iter().map(|k| k.ip()).collect();
        ips.dedup();
        for ip in ips {
            let c = entry(&mut containers, ip);
            c.listeners += 1;
            if l.owner != 0 {
                c.netns = Some(l.owner);
            }
        }
    }
    let mut leases = LeaseStatus {
        range: "off".to_string(),
        peers: peer_leases.into_iter().collect(),
        ..Default::default()
    };
    if let Some(range) = router.book().map(|b| b.range()) {
        let (lo, hi) = range;
        leases.range = format!("{lo}-{hi}");
        for (_, owner) in held_leases(router, lo, hi) {
            *leases.own.entry(owner).or_default() += 1;
        }
    }
    for (owner, n) in &leases.own {
        entry(&mut containers, *owner).leased_ports = *n;
    }
    for (owner, n) in router.stashed() {
        entry(&mut containers, owner).pooled_ready = n;
    }
    let peers = router
        .peers
        .configured()
        .into_iter()
        .map(|p| PeerStatus {
            addr: p.addr,
            source: match (p.from_flag, p.from_file) {
                (true, true) => "flag+file",
                (false, true) => "file",
                _ => "flag",
            }
            .to_string(),
            connected: p.connected,
            sealed,
        })
        .collect();
    let connections = conns
        .iter()
        .map(|c| ConnStatus {
            id: c.id,
            host: c.host,
            remote: c.remote,
            direction: if c.dialled { "out" } else { "in" }.to_string(),
            sealed,
        })
        .collect();
    let s = &router.settings;
    Status {
        format: slim_uapi::proto::STATUS_FORMAT,
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        secure: router.dev.is_some(),
        sealed,
        host_addrs: s
            .host_v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(s.host_v6.map(IpAddr::V6))
            .collect(),
        prefixes: s.prefixes.iter().map(|p| p.to_string()).collect(),
        peers,
        connections,
        listeners,
        containers: containers.into_values().collect(),
        leases,
        counters: counters(router),
        kernel_tables: kernel_tables(router),
    }
}

/// Every counter by name (the same names as the metrics, without `slim_` and `_total`).
pub fn counters(router: &Router) -> BTreeMap<String, u64> {
    let c = &router.counters;
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut m = BTreeMap::new();
    for (k, v) in [
        ("connections", g(&c.connects)),
        ("fallbacks", g(&c.fallbacks)),
        ("listens", g(&c.listens)),
        ("accepts", g(&c.accepts)),
        ("unknown_accepts", g(&c.unknown_accepts)),
        ("bad_frames", g(&c.bad_frames)),
        ("refusals", g(&c.refused)),
        ("policy_denied", g(&c.policy_denied)),
        ("leases", g(&c.leases)),
        ("lease_changes", g(&c.lease_changes)),
        ("pinned", g(&c.pinned)),
        ("peer_connections_refused", g(&c.peer_refusals)),
        ("sealed_frames_opened", g(&c.seal.opened)),
    ] {
        m.insert(k.to_string(), v);
    }
    if let Some(k) = router.kernel_tables.get() {
        m.insert("kernel_table_batches".to_string(), g(&k.batches));
        m.insert("kernel_table_batches_refused".to_string(), g(&k.refused));
        m.insert("kernel_table_loads".to_string(), g(&k.loads));
    }
    for (kind, v) in crate::metrics::sealed_refusals(c) {
        m.insert(format!("sealed_frames_refused_{kind}"), v);
    }
    m
}

/// The document, encoded for the wire.
pub fn encode(router: &Router) -> Vec<u8> {
    serde_json::to_vec(&snapshot(router))
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode the status: {e}\"}}").into_bytes())
}

/// Human-readable text of a status document.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "slim-router {} (pid {}), {} mode, peer channel {}",
        s.version,
        s.pid,
        if s.secure { "secure" } else { "plain" },
        if s.sealed { "sealed" } else { "NOT sealed" }
    );
    let hosts: Vec<String> = s.host_addrs.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(
        o,
        "host addresses: {}; overlay prefixes: {}",
        hosts.join(", "),
        s.prefixes.join(", ")
    );
    let _ = writeln!(o, "\npeers ({}):", s.peers.len());
    for p in &s.peers {
        let _ = writeln!(
            o,
            "  {:<40} {:<12} from {}{}",
            p.addr.to_string(),
            if p.connected { "connected" } else { "down" },
            p.source,
            if p.connected && p.sealed {
                ", sealed"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(o, "\npeer connections ({}):", s.connections.len());
    for c in &s.connections {
        let _ = writeln!(
            o,
            "  #{:<5} {:<40} {:<4} via {}{}",
            c.id,
            c.host.to_string(),
            c.direction,
            c.remote,
            if c.sealed { ", sealed" } else { "" }
        );
    }
    let _ = writeln!(o, "\nlisteners ({}):", s.listeners.len());
    for l in &s.listeners {
        let _ = writeln!(
            o,
            "  {:<40} -> {:<40} {}{}",
            l.overlay.to_string(),
            l.host.to_string(),
            l.origin,
            if l.shared { ", shared" } else { "" }
        );
    }
    let _ = writeln!(o, "\ncontainers ({}):", s.containers.len());
    for c in &s.containers {
        let _ = writeln!(
            o,
            "  {:<40} listeners {}, leased ports {}, pooled sockets ready {}{}",
            c.overlay.to_string(),
            c.listeners,
            c.leased_ports,
            c.pooled_ready,
            c.netns.map(|n| format!(", netns {n}")).unwrap_or_default()
        );
    }
    let _ = writeln!(o, "\nleases (range {}):", s.leases.range);
    let own: usize = s.leases.own.values().sum();
    let _ = writeln!(o, "  this host's ports leased: {own}");
    for (h, n) in &s.leases.peers {
        let _ = writeln!(o, "  ports of {h} known: {n}");
    }
    if let Some(k) = &s.kernel_tables {
        let _ = writeln!(
            o,
            "\nkernel tables (slim_kern): listeners {}, leases {}, identities {}, policy rows {} (limit {} per table), generation {}, {}, {} loads, {} batches refused ({} ENOSPC); connects translated {}, without a row {}, denied by the policy {} (module-wide){}",
            k.listeners,
            k.leases,
            k.identities,
            k.policy_rows,
            k.limit,
            k.generation,
            if k.in_sync { "in sync" } else { "NOT in sync" },
            k.loads,
            k.refused_batches,
            k.enospc,
            k.translated,
            k.not_found,
            k.policy_denied,
            k.error.as_ref().map(|e| format!("; cannot read them: {e}")).unwrap_or_default()
        );
        for (overlay, host) in &k.listener_rows {
            let _ = writeln!(o, "  {:<40} -> {}", overlay.to_string(), host);
        }
    }
    let _ = writeln!(o, "\ncounters:");
    for (k, v) in &s.counters {
        let _ = writeln!(o, "  {k:<36} {v}");
    }
    o
}

/// Fetches the status document from the router serving `socket`.
pub fn fetch(socket: &std::path::Path) -> anyhow::Result<Status> {
    use anyhow::Context;
    use slim_uapi::proto::{Reply, Request, STATUS_FORMAT};
    let conn = crate::admin::connect(socket)?;
    let mut doc: Vec<u8> = Vec::new();
    loop {
        let (m, b) = crate::admin::ask(
            &conn,
            &Request::Status {
                format: STATUS_FORMAT,
                offset: doc.len() as u32,
            },
        )?;
        match Reply::decode(&b[..m]) {
            Ok(Reply::Status {
                total,
                offset,
                chunk,
            }) => {
                if offset as usize != doc.len() {
                    anyhow::bail!("the router answered the wrong part of its status");
                }
                doc.extend_from_slice(chunk);
                if doc.len() >= total as usize {
                    break;
                }
                if chunk.is_empty() {
                    anyhow::bail!("the router's status ended early");
                }
            }
            Ok(Reply::Error { errno, message }) => anyhow::bail!(
                "the router refused: {message} ({})",
                std::io::Error::from_raw_os_error(errno)
            ),
            other => anyhow::bail!("unexpected answer from the router: {other:?}"),
        }
    }
    serde_json::from_slice(&doc).context(
        "the router's status is not the JSON this slim-router reads; run matching versions",
    )
}

#[cfg(test)]
mod tests {
    use crate::metrics::tests::router;

    #[test]
    fn status_document_reads_back_and_renders() {
        let r = router();
        let doc = super::encode(&r);
        let s: super::Status = serde_json::from_slice(&doc).unwrap();
        assert_eq!(s.format, slim_uapi::proto::STATUS_FORMAT);
        assert_eq!(
            s.host_addrs,
            vec!["192.168.77.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(!s.sealed && s.peers.is_empty());
        let text = super::render(&s);
        assert!(
            text.contains("peer channel NOT sealed") && text.contains("counters:"),
            "{text}"
        );
    }
}
