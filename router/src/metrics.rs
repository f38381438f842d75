//! Prometheus metrics (`--metrics-listen ADDR:PORT`, off by default): `GET /metrics` only.
//!
//! The router's own atomic counters stay the source of truth (its hot paths do not change); at
//! each scrape they are copied into a fresh `prometheus-client` registry (the Prometheus
//! project's Rust client) and encoded in the OpenMetrics text format. The HTTP side is hyper 1
//! with hyper-util's tokio glue: the standard HTTP/1 server of the tokio ecosystem this router
//! already runs on, with nothing more (no framework, no TLS: the listener is meant for
//! loopback or a node-local scraper).

use crate::router::Router;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

/// Sealed-channel refusals by kind.
pub fn sealed_refusals(c: &crate::router::Counters) -> Vec<(&'static str, u64)> {
    let s = &c.seal;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    vec![
        ("foreign", g(&s.foreign)),
        ("tampered", g(&s.tampered)),
        ("expired", g(&s.expired)),
        ("replayed", g(&s.replayed)),
        ("malformed", g(&s.malformed)),
        ("overloaded", g(&s.overloaded)),
        ("unsealed", g(&s.unsealed)),
    ]
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    r.register(name, help, c);
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    r.register(name, help, g);
}

fn counters_by(r: &mut Registry, name: &str, help: &str, label: &str, vals: &[(String, u64)]) {
    let f: Family<Labels, Counter> = Family::default();
    for (k, v) in vals {
        f.get_or_create(&vec![(label.to_string(), k.clone())])
            .inc_by(*v);
    }
    r.register(name, help, f);
}

fn gauges_by(r: &mut Registry, name: &str, help: &str, label: &str, vals: &[(String, i64)]) {
    let f: Family<Labels, Gauge> = Family::default();
    for (k, v) in vals {
        f.get_or_create(&vec![(label.to_string(), k.clone())])
            .set(*v);
    }
    r.register(name, help, f);
}

/// The exposition text of the router's state now.
pub fn render(router: &Router) -> String {
    let c = &router.counters;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut r = Registry::default();
    counter(&mut r, "slim_connections", "Slim connections set up through this router (connects it made, and connections announced from pooled sockets; connections from leased ports need no router and are not counted)", g(&c.connects));
    counter(
        &mut r,
        "slim_policy_denied",
        "Secure mode: connects the Slim policy denied (ECONNREFUSED)",
        g(&c.policy_denied),
    );
    counter(
        &mut r,
        "slim_fallbacks",
        "Requests answered with a fallback to the overlay",
        g(&c.fallbacks),
    );
    let reasons = [
        "no_listener",
        "outside_prefixes",
        "family_unsupported",
        "unavailable",
    ];
    let by: Vec<(String, u64)> = reasons
        .iter()
        .zip(&c.fallback_reasons)
        .map(|(k, v)| (k.to_string(), g(v)))
        .collect();
    counters_by(
        &mut r,
        "slim_fallbacks_by_reason",
        "Fallbacks to the overlay, by reason",
        "reason",
        &by,
    );
    counter(
        &mut r,
        "slim_listens",
        "Host listeners set up for containers",
        g(&c.listens),
    );
    counter(
        &mut r,
        "slim_accepts",
        "Accepted connections identified for containers",
        g(&c.accepts),
    );
    counter(
        &mut r,
        "slim_unknown_accepts",
        "Accepted connections nobody announced (served as the overlay would)",
        g(&c.unknown_accepts),
    );
    counter(
        &mut r,
        "slim_bad_frames",
        "Malformed requests from libraries",
        g(&c.bad_frames),
    );
    let refusals: Vec<(String, u64)> = c
        .refusals_by_reason()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    counters_by(
        &mut r,
        "slim_refusals",
        "Requests refused (secure mode, or administrator-only requests), by what was refused",
        "reason",
        &refusals,
    );
    counter(
        &mut r,
        "slim_peer_connections_refused",
        "Peer connections refused because their host is not in the peers file (nor --peer)",
        g(&c.peer_refusals),
    );
    counter(
        &mut r,
        "slim_sealed_frames_opened",
        "Sealed peer frames opened",
        g(&c.seal.opened),
    );
    let sealed: Vec<(String, u64)> = sealed_refusals(c)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    counters_by(
        &mut r,
        "slim_sealed_frames_refused",
        "Peer frames refused on the sealed channel, by kind",
        "kind",
        &sealed,
    );
    counter(
        &mut r,
        "slim_leases",
        "Ports leased to pooled sockets",
        g(&c.leases),
    );
    counter(
        &mut r,
        "slim_lease_changes",
        "Leases that moved a port to another owner",
        g(&c.lease_changes),
    );
    counter(
        &mut r,
        "slim_pinned",
        "Connections pinned to their old identity when their port changed owner",
        g(&c.pinned),
    );

    let (range, own) = match router.book().map(|b| b.range()) {
        Some((lo, hi)) => (
            hi as i64 - lo as i64 + 1,
            crate::status::held_leases(router, lo, hi).len() as i64,
        ),
        None => (0, 0),
    };
    gauge(
        &mut r,
        "slim_lease_range_ports",
        "Ports in the lease range (0: leases off)",
        range,
    );
    gauge(
        &mut r,
        "slim_leased_ports",
        "Ports of this host leased to an owner (overlay address) that a socket holds",
        own,
    );
    let (routes, locals, peer_leases) = {
        let t = router.tables();
        let routes = t.all_routes();
        (routes, t.local_all().len(), t.leases_by_host())
    };
    let peer_routes = routes
        .iter()
        .filter(|(_, r)| r.owner != crate::tables::Owner::Local)
        .count();
    gauges_by(
        &mut r,
        "slim_listeners",
        "Listeners known, by origin (this host's containers, or peers)",
        "origin",
        &[
            ("local".to_string(), locals as i64),
            ("peer".to_string(), peer_routes as i64),
        ],
    );
    let pl: Vec<(String, i64)> = peer_leases
        .iter()
        .map(|(h, n)| (h.to_string(), *n as i64))
        .collect();
    gauges_by(
        &mut r,
        "slim_peer_leased_ports",
        "Peers' leased ports whose owner this router knows, by peer host",
        "host",
        &pl,
    );
    let pooled: i64 = router.stashed().iter().map(|(_, n)| *n as i64).sum();
    gauge(
        &mut r,
        "slim_pooled_sockets_ready",
        "Leased sockets ready for containers' pools",
        pooled,
    );
    let peers: Vec<(String, i64)> = router
        .peers
        .configured()
        .into_iter()
        .map(|p| (p.addr.to_string(), p.connected as i64))
        .collect();
    gauges_by(
        &mut r,
        "slim_peer_up",
        "Configured peers: 1 if connected, 0 if not",
        "peer",
        &peers,
    );
    gauge(
        &mut r,
        "slim_peer_connections",
        "Live connections to peer routers",
        router.peers.connections().len() as i64,
    );
    gauge(
        &mut r,
        "slim_peer_channel_sealed",
        "1 if peer frames are sealed with a cluster key",
        router.seal.is_some() as i64,
    );
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &r) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

fn answer(router: &Router, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ct: &str, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = code;
        if let Ok(v) = hyper::header::HeaderValue::from_str(ct) {
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        resp
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics is served here\n".into(),
        );
    }
    if req.method() != Method::GET {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET"),
        );
        return r;
    }
    reply(StatusCode::OK, CONTENT_TYPE, render(router))
}

/// Serves the metrics at `addr` until the router stops.
pub async fn serve(router: Arc<Router>, addr: SocketAddr) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for metrics scrapes on {addr}; pick another --metrics-listen (metrics_listen)")
    })?;
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    tokio::spawn(async move {
        loop {
            let (stream, _) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let r = router.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let resp = answer(&r, &req);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await
                {
                    tracing::debug!(error = %e, "metrics connection ended");
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn router() -> Router {
        Router::new(
            crate::router::Settings {
                host_v4: Some("192.168.77.1".parse().unwrap()),
                host_v6: None,
                prefixes: vec!["10.32.0.0/12".parse().unwrap()],
                lease_ports: None,
                lease_uids: Default::default(),
                policy: None,
            },
            None,
            None,
        )
    }

    #[test]
    fn exposition_has_every_family_and_counts() {
        let r = router();
        r.counters.connects.fetch_add(3, Ordering::Relaxed);
        r.counters.seal.tampered.fetch_add(2, Ordering::Relaxed);
        r.counters
            .refusal("connect from an overlay address that is not this container's");
        let text = render(&r);
        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in [
            "# TYPE slim_connections counter",
            "slim_connections_total 3",
            "slim_sealed_frames_refused_total{kind=\"tampered\"} 2",
            "slim_refusals_total{reason=\"connect from an overlay address that is not this container's\"} 1",
            "slim_fallbacks_by_reason_total{reason=\"no_listener\"} 0",
            "slim_listeners{origin=\"local\"} 0",
            "slim_peer_channel_sealed 0",
            "slim_lease_range_ports 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }
}
