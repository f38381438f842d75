//! The Kubernetes API server, reached the way every in-cluster client does: the address from
//! KUBERNETES_SERVICE_HOST/PORT, the pod's service account token (re-read for every request:
//! the kubelet rotates bound tokens) and the cluster CA from the service account directory.
//! Two requests only: list nodes, and watch them from the list's resource version.

use crate::nodes::{NodeList, WatchEvent};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};

/// Bodies larger than this are refused (a NodeList of 5,000 nodes with their image lists stays
/// well below it).
const MAX_BODY: u64 = 1 << 30;

pub struct ApiServer {
    base: String,
    token_file: PathBuf,
    agent: ureq::Agent,
}

/// How a watch ended.
pub enum WatchEnd {
    /// The API server closed it (its timeoutSeconds ran out): resume from the last version.
    Closed,
    /// The handler asked for a fresh list (an ERROR event such as 410 Gone).
    Relist,
}

impl ApiServer {
    /// `server` overrides the address from KUBERNETES_SERVICE_HOST/PORT (e.g. for a proxy).
    pub fn in_cluster(
        server: Option<&str>,
        sa_dir: &Path,
        watch_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let base = match server {
            Some(s) => s.trim_end_matches('/').to_string(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").context(
                    "KUBERNETES_SERVICE_HOST is not set: run this in a pod (the kubelet sets it), \
                     or give --api-server",
                )?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        let ca_file = sa_dir.join("ca.crt");
        let pem = std::fs::read(&ca_file).with_context(|| {
            format!(
                "cannot read the cluster CA {}: mount the service account token \
                 (automountServiceAccountToken must not be false)",
                ca_file.display()
            )
        })?;
        let mut roots = Vec::new();
        for item in parse_pem(&pem) {
            if let PemItem::Certificate(c) =
                item.with_context(|| format!("{} is not valid PEM", ca_file.display()))?
            {
                roots.push(c);
            }
        }
        if roots.is_empty() {
            anyhow::bail!("{} holds no certificate", ca_file.display());
        }
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&roots))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .user_agent(concat!("slim-k8s-peers/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            // A watch body lasts up to its timeoutSeconds; a minute more covers a slow server.
            .timeout_recv_body(Some(watch_timeout + Duration::from_secs(60)))
            .build()
            .into();
        Ok(ApiServer {
            base,
            token_file: sa_dir.join("token"),
            agent,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn get(&self, path_and_query: &str) -> anyhow::Result<ureq::Body> {
        let token = std::fs::read_to_string(&self.token_file).with_context(|| {
            format!(
                "cannot read the service account token {}",
                self.token_file.display()
            )
        })?;
        let url = format!("{}{}", self.base, path_and_query);
        let resp = self
            .agent
            .get(&url)
            .header("Authorization", format!("Bearer {}", token.trim()))
            .header("Accept", "application/json")
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let text = body
                .with_config()
                .limit(64 * 1024)
                .read_to_string()
                .unwrap_or_default();
            let hint = match status.as_u16() {
                401 => "; the service account token was refused",
                403 => {
                    "; the ServiceAccount needs get/list/watch on nodes (ClusterRole slim-router)"
                }
                _ => "",
            };
            anyhow::bail!("GET {url}: HTTP {status}{hint}: {}", text.trim());
        }
        Ok(body)
    }

    /// Every node. `resourceVersion=0` lets the API server answer from its watch cache instead
    /// of a quorum read of etcd, as informers do: every node of the cluster runs this.
    pub fn list_nodes(&self) -> anyhow::Result<NodeList> {
        let body = self.get("/api/v1/nodes?resourceVersion=0")?;
        let reader = body.into_with_config().limit(MAX_BODY).reader();
        serde_json::from_reader(std::io::BufReader::new(reader))
            .context("the API server's NodeList does not parse")
    }

    /// Watches nodes from `resource_version` for at most `timeout`, handing each event to
    /// `on_event`, which says whether to go on.
    pub fn watch_nodes(
        &self,
        resource_version: &str,
        timeout: Duration,
        mut on_event: impl FnMut(WatchEvent) -> anyhow::Result<bool>,
    ) -> anyhow::Result<WatchEnd> {
        let body = self.get(&format!(
            "/api/v1/nodes?watch=1&allowWatchBookmarks=true&resourceVersion={}&timeoutSeconds={}",
            resource_version,
            timeout.as_secs().max(1)
        ))?;
        let reader = body.into_with_config().limit(u64::MAX).reader();
        let events = serde_json::Deserializer::from_reader(std::io::BufReader::new(reader))
            .into_iter::<WatchEvent>();
        for ev in events {
            let ev = ev.context("a watch event does not parse")?;
            if !on_event(ev)? {
                return Ok(WatchEnd::Relist);
            }
        }
        Ok(WatchEnd::Closed)
    }
}
