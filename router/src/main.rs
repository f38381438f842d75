//! slim-router: one per host, in the host's network namespace. It gives the containers of its host
//! host-network sockets for their overlay TCP connections, and keeps the other hosts' routers
//! informed of this host's listeners.

mod clients;
mod container;
mod hostsock;
mod kmod;
mod leases;
mod peers;
mod router;
mod secure;
mod shm;
mod sockdiag;
mod tables;

use anyhow::Context;
use clap::Parser;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "slim-router",
    version,
    about = "Slim's per-host router: hands host-network sockets to the containers of this host",
    long_about = "Slim's per-host router. Run one per host, in the host's network namespace. Containers \
                  (processes started with LD_PRELOAD=libslim_preload.so) ask it over a Unix socket for \
                  host-network sockets standing in for their overlay TCP connections. The routers of \
                  all hosts connect to each other (--peer) to share which overlay endpoints listen where."
)]
struct Args {
    /// This host's address on the host network (underlay). Host sockets are bound to it. Give it
    /// once per family (one IPv4 and/or one IPv6); it must be an address of this host.
    #[arg(
        long = "host-addr",
        required_unless_present = "revoke",
        value_name = "IP"
    )]
    host_addr: Vec<IpAddr>,

    /// Unix socket the containers' preload library connects to (it must be reachable from the
    /// containers, e.g. bind-mounted).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/slim/router.sock",
        env = "SLIM_ROUTER_SOCKET"
    )]
    socket: PathBuf,

    /// Permissions of the Unix socket (octal).
    #[arg(long, value_name = "MODE", default_value = "666", value_parser = parse_mode)]
    socket_mode: u32,

    /// Overlay prefix (CIDR) whose addresses Slim serves; repeat for several (IPv4 and IPv6).
    #[arg(long = "prefix", value_name = "CIDR", default_value = "10.32.0.0/12")]
    prefixes: Vec<IpNet>,

    /// Another host's router (its host address and peer port); repeat for every other host.
    #[arg(long = "peer", value_name = "ADDR:PORT")]
    peers: Vec<SocketAddr>,

    /// Where this router accepts connections from the other routers [default: first --host-addr, port 7788].
    #[arg(long, value_name = "ADDR:PORT")]
    peer_listen: Option<SocketAddr>,

    /// Seal the router <-> router channel with the cluster key in FILE: every peer frame
    /// (Hello, listener changes, acknowledgements, connection announcements) is sealed with
    /// XChaCha20-Poly1305, bound to the two hosts' addresses and the message kind, valid for 10 s
    /// and accepted once; a peer frame that does not open is refused, counted by kind (foreign,
    /// tampered, expired, replayed, malformed, overloaded, unsealed), logged at warn and its
    /// connection dropped. FILE holds 32 random bytes, or 64 hex digits and a newline (e.g.
    /// `head -c 32 /dev/urandom > FILE`), must be accessible by its owner only (`chmod 600
    /// FILE`), and must be the same on every router: a router with another key or none is refused.
    /// The hosts' clocks must agree within a few seconds, and the routers must reach each other
    /// without address translation. Without this option peer frames are neither sealed nor
    /// checked. SIGUSR1 logs the counters.
    #[arg(long, value_name = "FILE")]
    cluster_key: Option<PathBuf>,

    /// Secure mode: restrict every host socket through the slim_kern kernel module (/dev/slim) and
    /// never show host addresses to containers.
    #[arg(long)]
    secure: bool,

    /// Instead of running a router: ask the one serving --socket (in secure mode; as root in its
    /// network namespace) to shut down every host socket of the container that process PID runs
    /// in, e.g. after a policy change or before removing the container; print how many and exit.
    #[arg(long, value_name = "PID", conflicts_with_all = ["secure", "peers", "cluster_key"])]
    revoke: Option<u32>,

    /// Host ports leased to containers for their pooled sockets, as LO-HI, or `off`. A leased
    /// port is bound by one container's sockets only, and every peer router learns its owner
    /// before the container gets it, so connections from it need no per-connection announcement
    /// (no router wakes up per connection). The range must lie outside the ephemeral port range
    /// (net.ipv4.ip_local_port_range). [default: the ports above the ephemeral range, if at
    /// least 64; else off]
    #[arg(long, value_name = "LO-HI|off", value_parser = parse_lease_ports)]
    lease_ports: Option<LeasePorts>,

    /// Worker threads. One is the default: each request is a few system calls, and a single
    /// thread avoids waking (and migrating between) CPUs on every request.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,

    /// Log level (error, warn, info, debug, trace); RUST_LOG, if set, takes precedence.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,
}

#[derive(Debug, Clone, Copy)]
enum LeasePorts {
    Off,
    Range(u16, u16),
}

fn parse_lease_ports(s: &str) -> Result<LeasePorts, String> {
    if s == "off" {
        return Ok(LeasePorts::Off);
    }
    let bad = || format!("`{s}` is not a port range such as 61000-65535, or `off`");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = a.trim().parse().map_err(|_| bad())?;
    let hi: u16 = b.trim().parse().map_err(|_| bad())?;
    Ok(LeasePorts::Range(lo, hi))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|_| format!("`{s}` is not an octal mode such as 666 or 660"))
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

fn settings(args: &Args) -> anyhow::Result<router::Settings> {
    let lease_ports = match args.lease_ports {
        // Secure mode hands out no pooled sockets.
        _ if args.secure => None,
        Some(LeasePorts::Off) => None,
        Some(LeasePorts::Range(lo, hi)) => {
            leases::check_range(lo, hi).map_err(anyhow::Error::msg)?;
            Some((lo, hi))
        }
        None => leases::default_range(),
    };
    let lease_ports = lease_ports.filter(|_| {
        let ok = sockdiag::lists_bound_sockets();
        if !ok {
            tracing::warn!("this kernel does not list sockets that are only bound (sock_diag, Linux 6.8+): port leases off");
        }
        ok
    });
    let mut s = router::Settings {
        host_v4: None,
        host_v6: None,
        prefixes: args.prefixes.clone(),
        lease_ports,
    };
    for ip in &args.host_addr {
        if ip.is_unspecified() || ip.is_loopback() {
            anyhow::bail!("--host-addr {ip}: give this host's address on the host network, not a wildcard or loopback address");
        }
        hostsock::check_local_address(*ip).with_context(|| {
            format!("--host-addr {ip} is not an address of this host (network namespace); check `ip addr`")
        })?;
        let dup = match ip {
            IpAddr::V4(v4) => s.host_v4.replace(*v4).is_some(),
            IpAddr::V6(v6) => s.host_v6.replace(*v6).is_some(),
        };
        if dup {
            anyhow::bail!("--host-addr given twice for one address family");
        }
        if args.prefixes.iter().any(|p| p.contains(ip)) {
            anyhow::bail!("--host-addr {ip} lies inside an overlay --prefix; the host network and the overlay must not overlap");
        }
    }
    Ok(s)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dev = if args.secure {
        let dev = kmod::SlimDev::open(std::path::Path::new(slim_uapi::kabi::SLIM_DEVICE_PATH))?;
        tracing::info!(
            "secure mode: host sockets are restricted by slim_kern ({})",
            slim_uapi::kabi::SLIM_DEVICE_PATH
        );
        Some(dev)
    } else {
        None
    };
    let settings = settings(&args)?;
    let peer_listen = match args.peer_listen {
        Some(a) => a,
        None => SocketAddr::new(args.host_addr[0], 7788),
    };
    if dev.is_some() && args.cluster_key.is_none() {
        anyhow::bail!(
            "--secure needs --cluster-key FILE: in secure mode the routers seal what they tell each other \
             (create the key once with `head -c 32 /dev/urandom > FILE; chmod 600 FILE` and give every router the same file)"
        );
    }
    let seal = match &args.cluster_key {
        Some(path) => {
            let key = slim_uapi::seal::ClusterKey::from_file(path)
                .with_context(|| format!("--cluster-key {}", path.display()))?;
            tracing::info!(
                key_id = %key.key_id_hex(),
                "peer frames are sealed with the cluster key in {}",
                path.display()
            );
            Some(peers::PeerSeal::new(key))
        }
        None => {
            tracing::info!(
                "peer frames are not sealed (no --cluster-key): anything that reaches the peer port \
                 can add listeners and announce connections"
            );
            None
        }
    };
    let secure = dev.is_some();
    let router = Arc::new(router::Router::new(settings, dev, seal));
    match router.book().map(|b| b.range()) {
        Some((lo, hi)) => tracing::info!(
            "pooled sockets get ports leased from {lo}-{hi}: their connections need no announcement"
        ),
        None if !secure => tracing::info!(
            "port leases off (--lease-ports, or too few ports above the ephemeral range): every pooled connection is announced"
        ),
        None => {}
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
    let listener = clients::bind_socket(&args.socket, args.socket_mode)?;
    peers::listen(router.clone(), peer_listen).await?;
    for p in &args.peers {
        peers::dial(router.clone(), *p);
    }
    tracing::info!(
        socket = %args.socket.display(),
        hosts = ?args.host_addr,
        prefixes = ?args.prefixes,
        peers = ?args.peers,
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
            if sweeper.sweep_due.swap(false, Ordering::Relaxed) || n.is_multiple_of(3) {
                sweeper.sweep_identities();
                sweeper.sweep_listeners();
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
    let socket_path = args.socket.clone();
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
        sealed = router.seal.is_some(),
        "counters; sealed peer frames: {}",
        c.seal.summary()
    );
}

/// `--revoke PID`: one administrator's request to the running router.
fn revoke(path: &std::path::Path, pid: u32) -> anyhow::Result<u32> {
    use nix::sys::socket::{
        connect, recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
    };
    use slim_uapi::proto::{Reply, Request, MAX_FRAME, PROTO_VERSION};
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr).with_context(|| {
        format!(
            "no router answers on {}; start slim-router --secure or give its --socket",
            path.display()
        )
    })?;
    let ask = |req: &Request| -> anyhow::Result<(usize, [u8; MAX_FRAME])> {
        let mut buf = [0u8; MAX_FRAME];
        let n = req.encode(&mut buf).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        send(fd.as_raw_fd(), &buf[..n], MsgFlags::empty())?;
        let mut rbuf = [0u8; MAX_FRAME];
        let m = recv(fd.as_raw_fd(), &mut rbuf, MsgFlags::empty())?;
        Ok((m, rbuf))
    };
    let (m, b) = ask(&Request::Hello {
        version: PROTO_VERSION,
        pid: std::process::id(),
    })?;
    match Reply::decode(&b[..m]) {
        Ok(Reply::HelloOk { .. }) => {}
        Ok(Reply::Error { message, .. }) => anyhow::bail!("the router refused: {message}"),
        other => anyhow::bail!("unexpected answer from the router: {other:?}"),
    }
    let (m, b) = ask(&Request::Revoke { pid })?;
    match Reply::decode(&b[..m]) {
        Ok(Reply::Revoked { sockets }) => Ok(sockets),
        Ok(Reply::Error { errno, message }) => {
            anyhow::bail!(
                "the router refused: {message} ({})",
                std::io::Error::from_raw_os_error(errno)
            )
        }
        other => anyhow::bail!("unexpected answer from the router: {other:?}"),
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(pid) = args.revoke {
        return match revoke(&args.socket, pid) {
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
    if let Err(e) = init_logging(&args.log_level) {
        eprintln!("slim-router: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let built = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads as usize)
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
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("slim-router: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
