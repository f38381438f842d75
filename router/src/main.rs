//! slim-router: one per host, in the host's network namespace. It gives the containers of its host
//! host-network sockets for their overlay TCP connections, and keeps the other hosts' routers
//! informed of this host's listeners.

mod admin;
mod check;
mod cli;
mod clients;
mod config;
mod container;
mod fsuid;
mod hostsock;
mod kmod;
mod kmod_tables;
mod leases;
mod leasewatch;
mod metrics;
mod peer_set;
mod peers;
mod peers_file;
mod policy;
mod porthold;
mod router;
mod secure;
mod shm;
mod sockdiag;
mod status;
mod tables;

use anyhow::Context;
use clap::Parser;
use config::Config;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn init_logging(level: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => {
            EnvFilter::try_new(v).context("RUST_LOG is not a valid filter")?
        }
        _ => EnvFilter::try_new(level)
            .with_context(|| format!("--log-level `{level}` is not a valid level"))?,
    };
    // Colour codes only for a terminal: a log file or the journal gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

async fn run_router(config: Config) -> anyhow::Result<()> {
    let checked = check::check(&config)?;
    // Peers-file lines are reported (and skipped) by its watcher.
    for w in &checked.warnings {
        tracing::warn!("{w}");
    }
    if let Some(f) = &config.file {
        tracing::info!(file = %f.display(), "configuration read");
    }
    let dev = if config.secure {
        let dev = kmod::SlimDev::open(std::path::Path::new(slim_uapi::kabi::SLIM_DEVICE_PATH))?;
        tracing::info!(
            "secure mode: host sockets are restricted by slim_kern ({})",
            slim_uapi::kabi::SLIM_DEVICE_PATH
        );
        Some(dev)
    } else {
        None
    };
    let mut settings = checked.settings;
    if let (Some(p), Some(f)) = (&settings.policy, &config.policy_file) {
        tracing::info!(
            file = %f.display(),
            rules = p.rule_count(),
            default = if p.default_allow() { "allow" } else { "deny" },
            "policy of Slim connections loaded (denied connects: ECONNREFUSED)"
        );
    }
    settings.lease_ports = settings.lease_ports.filter(|_| {
        if leasewatch::available(&settings.lease_uids) {
            return true;
        }
        let ok = sockdiag::lists_bound_sockets();
        if ok {
            tracing::warn!(
                "cannot create sockets under other uids (CAP_SETUID): leased ports are found free \
                 by sock_diag dumps of every TCP socket of the host, which a restock waits for"
            );
        } else {
            tracing::warn!("cannot create sockets under other uids (CAP_SETUID), and this kernel does not list sockets that are only bound (sock_diag, Linux 6.8+): port leases off");
        }
        ok
    });
    let peer_listen = config
        .peer_listen()
        .context("no peer listen address (give host_addrs or peer_listen)")?;
    let seal = match (checked.key, &config.cluster_key) {
        (Some(key), Some(path)) => {
            tracing::info!(
                key_id = %key.key_id_hex(),
                "peer frames are sealed with the cluster key in {}",
                path.display()
            );
            Some(peers::PeerSeal::new(key))
        }
        _ => {
            tracing::warn!(
                "peer frames are NOT sealed (--insecure-peer-channel): anything that reaches the peer \
                 port {peer_listen} can add listeners and take over other containers' connections; {}",
                check::MAKE_KEY
            );
            None
        }
    };
    let secure = dev.is_some();
    let router = Arc::new(router::Router::new(settings, dev, seal));
    if router.hold_uid.is_none() {
        tracing::warn!(
            "cannot create sockets under other uids (CAP_SETUID): no port holds, so for a few \
             seconds after a Slim listener closes, a program that binds its host port may receive \
             connections meant for it (docs/design.md, \"Port holds\"); give the router CAP_SETUID"
        );
    }
    match router.book().map(|b| b.range()) {
        Some((lo, hi)) => tracing::info!(
            "pooled sockets get ports leased from {lo}-{hi}: their connections need no announcement"
        ),
        None if !secure => tracing::info!(
            "port leases off (--lease-ports, or too few ports above the ephemeral range): every pooled connection is announced"
        ),
        None => {}
    }
    // Secure mode: the router's listeners, leases, containers' identities and their allow-lists
    // under the Slim policy are loaded into the module (one table set per open /dev/slim, this
    // router's own), then kept up to date.
    if let Some(sink) = router
        .dev
        .as_ref()
        .and_then(|d| kmod_tables::KernelTables::open(d, router.settings.policy.as_ref()))
    {
        let _ = router.kernel_tables.set(sink.counters());
        router.tables().sink = Some(Box::new(sink));
        tracing::info!(
            "slim_kern keeps this router's tables (listeners, leases, identities, policy allow-lists)"
        );
    }
    // Secure mode shares no tables with containers (they hold host endpoints).
    if !secure {
        match shm::SharedTable::create(c"slim-accept-table", slim_uapi::accept_table::TABLE_WORDS) {
            Ok(t) => router.tables().accept_table = Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "no shared accept table; every accept asks the router")
            }
        }
        match shm::SharedTable::create(
            c"slim-lease-table",
            slim_uapi::accept_table::LEASE_TABLE_WORDS,
        ) {
            Ok(t) => router.tables().lease_table = Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "no shared lease table; accepts from leased ports ask the router")
            }
        }
        match shm::SharedTable::create(c"slim-route-table", slim_uapi::route_table::TABLE_WORDS) {
            Ok(t) => router.tables().route_table = Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "no shared route table; every connect asks the router")
            }
        }
    }
    let listener = clients::bind_socket(&config.socket, config.socket_mode)?;
    peers::listen(router.clone(), peer_listen).await?;
    peers::start(&router, &config.peers, config.peers_file.is_some());
    if let Some(path) = &config.peers_file {
        peers_file::watch(router.clone(), path.clone());
    }
    if let Some(addr) = config.metrics_listen {
        metrics::serve(router.clone(), addr).await?;
    }
    tracing::info!(
        socket = %config.socket.display(),
        hosts = ?config.host_addrs,
        prefixes = ?config.prefixes,
        peers = ?config.peers,
        peers_file = ?config.peers_file,
        "slim-router {} ready (protocol {})",
        env!("CARGO_PKG_VERSION"),
        slim_uapi::proto::PROTO_VERSION
    );
    let sweeper = router.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            n += 1;
            // Forget closed sockets every few seconds (the kernel says which are gone, however
            // they went: close, exit, crash), and sooner when a program reported a close.
            // On a blocking thread: a dump walks every TCP socket of the host (TIME_WAIT ones
            // too), tens of milliseconds with 100k of them, and requests must not wait for it.
            if sweeper.sweep_due.swap(false, Ordering::Relaxed) || n.is_multiple_of(3) {
                let r = sweeper.clone();
                let swept = tokio::task::spawn_blocking(move || {
                    r.sweep_identities();
                    r.sweep_listeners();
                });
                if let Err(e) = swept.await {
                    tracing::warn!(error = %e, "sweep failed");
                }
            }
            if !n.is_multiple_of(5) {
                continue;
            }
            sweeper.tables().expire(std::time::Instant::now());
            sweeper.expire_stashes();
            let (routes, local, announces, ids) = sweeper.tables().counts();
            let c = &sweeper.counters;
            tracing::debug!(
                routes, local, announces, identities = ids, peers = ?sweeper.peers.describe(),
                listeners = ?sweeper.tables().describe_local(),
                connects = c.connects.load(Ordering::Relaxed),
                fallbacks = c.fallbacks.load(Ordering::Relaxed),
                accepts = c.accepts.load(Ordering::Relaxed),
                unknown_accepts = c.unknown_accepts.load(Ordering::Relaxed),
                bad_frames = c.bad_frames.load(Ordering::Relaxed),
                refused = c.refused.load(Ordering::Relaxed),
                sealed = %c.seal.summary(),
                "state"
            );
            if let Some(dev) = &sweeper.dev {
                match dev.stats() {
                    Ok(s) => tracing::debug!(
                        live = s.restricted_live,
                        restricted = s.restricted_total,
                        children = s.children_total,
                        refusals = ?&s.refusals[..8],
                        "slim_kern"
                    ),
                    Err(e) => tracing::warn!(error = %e, "slim_kern STATS failed"),
                }
            }
        }
    });
    let socket_path = config.socket.clone();
    let mut served = tokio::spawn(clients::serve(router.clone(), listener));
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            r = &mut served => { r??; break; }
            _ = int.recv() => { tracing::info!("interrupted"); break; }
            _ = term.recv() => { tracing::info!("terminated"); break; }
            _ = usr1.recv() => log_counters(&router),
        }
    }
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("slim-router stopped");
    Ok(())
}

/// SIGUSR1: the counters, at info.
fn log_counters(router: &router::Router) {
    let c = &router.counters;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    tracing::info!(
        connects = l(&c.connects),
        fallbacks = l(&c.fallbacks),
        listens = l(&c.listens),
        accepts = l(&c.accepts),
        unknown_accepts = l(&c.unknown_accepts),
        bad_frames = l(&c.bad_frames),
        leases = l(&c.leases),
        lease_changes = l(&c.lease_changes),
        pinned = l(&c.pinned),
        policy_denied = l(&c.policy_denied),
        sealed = router.seal.is_some(),
        "counters; sealed peer frames: {}",
        c.seal.summary()
    );
}

/// The configuration file and the command line, merged.
fn configuration(run: &cli::RunArgs) -> anyhow::Result<Config> {
    let (file, from) = config::load(run.config.as_deref())?;
    Ok(Config::merge(run, file, from)?)
}

/// The socket of the router an administrator's request goes to: --socket, else the
/// configuration file's `socket`, else the default.
fn admin_socket(
    run: &cli::RunArgs,
    config_path: Option<&std::path::Path>,
) -> anyhow::Result<std::path::PathBuf> {
    if let Some(s) = &run.socket {
        return Ok(s.clone());
    }
    let (file, _) = config::load(config_path.or(run.config.as_deref()))?;
    Ok(file
        .socket
        .unwrap_or_else(|| std::path::PathBuf::from(config::DEFAULT_SOCKET)))
}

/// `slim-router status`.
fn status(
    run: &cli::RunArgs,
    socket: Option<std::path::PathBuf>,
    config_path: Option<std::path::PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let socket = match socket {
        Some(s) => s,
        None => admin_socket(run, config_path.as_deref())?,
    };
    let s = status::fetch(&socket)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", status::render(&s));
    }
    Ok(())
}

/// `--check-config`: the merged configuration checked, and printed.
fn check_config(run: &cli::RunArgs) -> std::process::ExitCode {
    let result = configuration(run).and_then(|c| {
        let checked = check::check(&c)?;
        if !checked.problems.is_empty() {
            anyhow::bail!("{}", checked.problems.join("\n"));
        }
        Ok((c, checked.warnings))
    });
    match result {
        Ok((c, warnings)) => {
            match &c.file {
                Some(f) => println!(
                    "# slim-router: configuration {} and flags: valid",
                    f.display()
                ),
                None => println!(
                    "# slim-router: no configuration file ({} is absent); flags: valid",
                    config::DEFAULT_CONFIG
                ),
            }
            for w in warnings {
                println!("# note: {w}");
            }
            print!("{}", c.render());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("slim-router --check-config: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli::Args { run, cmd } = cli::Args::parse();
    if let Some(cli::Cmd::Status {
        socket,
        config,
        json,
    }) = cmd
    {
        return match status(&run, socket, config, json) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("slim-router status: {e:#}");
                std::process::ExitCode::from(1)
            }
        };
    }
    if let Some(pid) = run.revoke {
        let socket = admin_socket(&run, None);
        return match socket.and_then(|s| admin::revoke(&s, pid)) {
            Ok(n) => {
                println!("revoked {n} host sockets of the container of pid {pid}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("slim-router --revoke {pid}: {e:#}");
                std::process::ExitCode::from(1)
            }
        };
    }
    if run.check_config {
        return check_config(&run);
    }
    let config = match configuration(&run) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("slim-router: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&config.log_level) {
        eprintln!("slim-router: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let built = if run.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(run.threads as usize)
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slim-router: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run_router(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("slim-router: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
