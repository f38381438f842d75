//! slim-k8s-peers: keeps the Slim router's peers file equal to the cluster's other nodes. Runs
//! as a sidecar of the slim-router DaemonSet (and once as an init container, so the file exists
//! before the router starts): lists the Node objects, then watches them, and rewrites the file
//! whenever the set of peers changes.

mod apiserver;
mod nodes;
mod peersfile;

use anyhow::Context;
use apiserver::{ApiServer, WatchEnd};
use clap::Parser;
use nodes::{Applied, Family, NodeSet, Selection};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "slim-k8s-peers",
    version,
    about = "Writes the Slim router's peers file from the Kubernetes cluster's Node objects",
    long_about = "Writes the Slim router's peers file (router.toml `peers_file`) from the Kubernetes \
                  cluster's Node objects: one line ADDR:PORT per other node, its InternalIP and the \
                  routers' peer port. Lists the nodes, then watches them (re-listing when the watch \
                  expires or fails), and replaces the file atomically whenever the peers change. \
                  Nodes stay peers while their Node object exists, Ready or not. Runs in a pod, with \
                  the pod's service account (it needs get, list and watch on nodes)."
)]
struct Args {
    /// The peers file to keep up to date (its directory must exist).
    #[arg(
        long,
        value_name = "PATH",
        env = "SLIM_PEERS_FILE",
        default_value = "/etc/slim/peers"
    )]
    peers_file: PathBuf,

    /// This node's name (left out of the peers); in a pod, from the downward API
    /// (`spec.nodeName`).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node_name: String,

    /// This node's address that the router listens for peers on; with --family auto the peers
    /// are of its family. In a pod, from the downward API (`status.hostIP`).
    #[arg(long, value_name = "IP", env = "HOST_IP")]
    host_ip: Option<IpAddr>,

    /// Which InternalIPs become peers: auto (the family of --host-ip, else all), all, ipv4 or
    /// ipv6.
    #[arg(long, value_name = "FAMILY", default_value = "auto")]
    family: FamilyArg,

    /// The routers' peer port (the port of `peer_listen` in router.toml).
    #[arg(long, value_name = "PORT", default_value_t = 7788)]
    peer_port: u16,

    /// The API server's URL [default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT].
    #[arg(long, value_name = "URL")]
    api_server: Option<String>,

    /// Where the pod's service account token and ca.crt are mounted.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    service_account_dir: PathBuf,

    /// How long one watch request lasts before it is renewed (seconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=3600))]
    watch_timeout: u64,

    /// Write the file once from one list of the nodes and exit (for an init container).
    #[arg(long)]
    once: bool,

    /// Log level (error, warn, info, debug, trace); RUST_LOG, if set, takes precedence.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FamilyArg {
    Auto,
    All,
    Ipv4,
    Ipv6,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_level)?;
    if args.node_name.is_empty() {
        anyhow::bail!(
            "--node-name (NODE_NAME) is empty: set it from the downward API field spec.nodeName"
        );
    }
    let family = match args.family {
        FamilyArg::Auto => args.host_ip.map(Family::of).unwrap_or(Family::All),
        FamilyArg::All => Family::All,
        FamilyArg::Ipv4 => Family::Ipv4,
        FamilyArg::Ipv6 => Family::Ipv6,
    };
    let sel = Selection {
        own_node: args.node_name.clone(),
        port: args.peer_port,
        family,
    };
    let timeout = Duration::from_secs(args.watch_timeout);
    let api = ApiServer::in_cluster(
        args.api_server.as_deref(),
        &args.service_account_dir,
        timeout,
    )?;
    tracing::info!(api = api.base(), node = %sel.own_node, family = ?sel.family, file = %args.peers_file.display(), "starting");
    if args.once {
        let set = NodeSet::from_list(api.list_nodes()?);
        publish(&args.peers_file, &set, &sel)?;
        return Ok(());
    }
    let mut backoff = Backoff::new();
    loop {
        match sync(&api, &args.peers_file, &sel, timeout, &mut backoff) {
            Ok(()) => {}
            Err(e) => {
                let wait = backoff.next();
                tracing::warn!(error = format!("{e:#}"), retry_in = ?wait, "node list/watch failed");
                std::thread::sleep(wait);
            }
        }
    }
}

/// One list, then watches until one must list again. An error ends it (the caller waits).
fn sync(
    api: &ApiServer,
    file: &Path,
    sel: &Selection,
    timeout: Duration,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let mut set = NodeSet::from_list(api.list_nodes()?);
    publish(file, &set, sel)?;
    backoff.reset();
    loop {
        let Some(rv) = set.resource_version.clone() else {
            anyhow::bail!("the API server's NodeList has no resourceVersion to watch from");
        };
        let mut changed = false;
        let end = api.watch_nodes(&rv, timeout, |ev| {
            let kind = ev.kind.clone();
            match set.apply(ev)? {
                Applied::Ok => {
                    if kind != "BOOKMARK" {
                        // Publish per event: a node's arrival should not wait for the watch to end.
                        changed |= publish(file, &set, sel)?;
                    }
                    Ok(true)
                }
                // 410 Gone: the resource version left the API server's window; list again now.
                Applied::Ended { code: 410, message } => {
                    tracing::info!(message, "node watch expired; listing again");
                    Ok(false)
                }
                // Any other error event: list again after the backoff, not in a tight loop.
                Applied::Ended { code, message } => {
                    anyhow::bail!("the node watch ended with an error (HTTP {code}): {message}")
                }
            }
        })?;
        tracing::debug!(changed, "node watch ended");
        if let WatchEnd::Relist = end {
            return Ok(());
        }
    }
}

/// Writes the peers of `set` if they changed; logs the new list when it did.
fn publish(file: &Path, set: &NodeSet, sel: &Selection) -> anyhow::Result<bool> {
    let peers = set.peers(sel);
    let written = peersfile::write_if_changed(file, &peersfile::render(&peers))?;
    if written {
        let list: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        tracing::info!(nodes = set.len(), peers = ?list, file = %file.display(), "peers file updated");
    }
    Ok(written)
}

/// Waits after failures: 1 s doubling to 60 s, plus up to a second derived from the pid so that
/// the nodes of a cluster do not all retry against a recovering API server at once.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn next(&mut self) -> Duration {
        let wait = self.next + Duration::from_millis(u64::from(std::process::id() % 1000));
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => {
            EnvFilter::try_new(v).context("RUST_LOG is not a valid filter")?
        }
        _ => EnvFilter::try_new(level)
            .with_context(|| format!("--log-level `{level}` is not a valid level"))?,
    };
    // Logs go to the container runtime's log files: no terminal colour codes.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn backoff_doubles_to_a_minute_and_resets() {
        let mut b = Backoff::new();
        let secs: Vec<u64> = (0..8).map(|_| b.next().as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        b.reset();
        assert_eq!(b.next().as_secs(), 1);
    }
}
