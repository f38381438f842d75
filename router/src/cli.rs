//! The command line. Options that the configuration file also has are `Option`s (or empty lists)
//! here, so that `config::Config::merge` can tell a flag given on the command line (which wins)
//! from one left out (the file's key, else the default).

use clap::{Parser, Subcommand};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "slim-router",
    version,
    about = "Slim's per-host router: hands host-network sockets to the containers of this host",
    long_about = "Slim's per-host router. Run one per host, in the host's network namespace. Containers \
                  (processes started with LD_PRELOAD=libslim_preload.so) ask it over a Unix socket for \
                  host-network sockets standing in for their overlay TCP connections. The routers of \
                  all hosts connect to each other (--peer, --peers-file) to share which overlay \
                  endpoints listen where, over a channel sealed with a shared cluster key.\n\n\
                  Every option but --threads, --check-config and --revoke can also be set in the \
                  configuration file (--config, default /etc/slim/router.toml); a flag given on the \
                  command line wins over the file, and a repeatable flag given at least once replaces \
                  the file's list. The keys are described in docs/operations.md."
)]
pub struct Args {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Ask the running router (as root in its network namespace) what it knows: peers (address,
    /// connected, sealed), listeners, containers, leases and counters. Human-readable, or JSON.
    Status {
        /// The router's Unix socket [default: SLIM_ROUTER_SOCKET, else `socket` of the
        /// configuration file, else /run/slim/router.sock].
        #[arg(long, value_name = "PATH", conflicts_with = "config")]
        socket: Option<PathBuf>,
        /// The configuration file whose `socket` to ask [default: /etc/slim/router.toml].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug, Default)]
pub struct RunArgs {
    /// The configuration file (TOML). A missing default file is fine (flags only); a file named
    /// here (or in SLIM_ROUTER_CONFIG) must exist. [default: /etc/slim/router.toml]
    #[arg(long, value_name = "PATH", env = "SLIM_ROUTER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Check the configuration (file and flags merged: addresses are this host's, the cluster
    /// key is readable by its owner only and 32 bytes, prefixes and the lease range are valid,
    /// the peers file parses), print it as TOML, and exit: 0 if it is valid.
    #[arg(long, conflicts_with = "revoke")]
    pub check_config: bool,

    /// This host's address on the host network (underlay). Host sockets are bound to it. Give it
    /// once per family (one IPv4 and/or one IPv6); it must be an address of this host.
    /// Required, here or as `host_addrs` in the configuration file.
    #[arg(long = "host-addr", value_name = "IP")]
    pub host_addr: Vec<IpAddr>,

    /// Unix socket the containers' preload library connects to (it must be reachable from the
    /// containers, e.g. bind-mounted). [default: /run/slim/router.sock]
    #[arg(long, value_name = "PATH", env = "SLIM_ROUTER_SOCKET")]
    pub socket: Option<PathBuf>,

    /// Permissions of the Unix socket (octal). [default: 666]
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,

    /// Overlay prefix (CIDR) whose addresses Slim serves; repeat for several (IPv4 and IPv6).
    /// [default: 10.32.0.0/12]
    #[arg(long = "prefix", value_name = "CIDR")]
    pub prefixes: Vec<IpNet>,

    /// Another host's router (its host address and peer port); repeat for every other host.
    /// Merged with the peers of --peers-file.
    #[arg(long = "peer", value_name = "ADDR:PORT")]
    pub peers: Vec<SocketAddr>,

    /// A file of peers, one ADDR:PORT per line (`#` starts a comment, blank lines are skipped),
    /// re-read every second: peers that appear are dialled, peers that disappear are
    /// disconnected and their listeners and port leases withdrawn. With a peers file, peer
    /// connections are accepted only from the hosts it (or --peer) lists. A malformed line is
    /// logged with its file and line number and skipped. A missing file means no peers from it
    /// until it appears.
    #[arg(long, value_name = "PATH")]
    pub peers_file: Option<PathBuf>,

    /// Secure mode: a policy file saying which overlay destinations each container may reach
    /// through Slim (selectors by overlay address; docs/operations.md, "Policy"). A denied
    /// connect fails with ECONNREFUSED and is counted. Read at start. [default: none, every
    /// Slim connection allowed]
    #[arg(long, value_name = "PATH")]
    pub policy_file: Option<PathBuf>,

    /// Where this router accepts connections from the other routers [default: first --host-addr, port 7788].
    #[arg(long, value_name = "ADDR:PORT")]
    pub peer_listen: Option<SocketAddr>,

    /// Seal the router <-> router channel with the cluster key in FILE (required unless
    /// --insecure-peer-channel): every peer frame (Hello, listener changes, acknowledgements,
    /// connection announcements) is sealed with XChaCha20-Poly1305, bound to the two hosts'
    /// addresses and the message kind, valid for 10 s and accepted once; a peer frame that does
    /// not open is refused, counted by kind (foreign, tampered, expired, replayed, malformed,
    /// overloaded, unsealed), logged at warn and its connection dropped. FILE holds 32 random
    /// bytes, or 64 hex digits and a newline (e.g. `head -c 32 /dev/urandom > FILE`), must be
    /// accessible by its owner only (`chmod 600 FILE`), and must be the same on every router: a
    /// router with another key or none is refused. The hosts' clocks must agree within a few
    /// seconds, and the routers must reach each other without address translation. SIGUSR1 logs
    /// the counters.
    #[arg(long, value_name = "FILE")]
    pub cluster_key: Option<PathBuf>,

    /// Run the peer channel unsealed, without a cluster key: anything that reaches the peer port
    /// can then add listeners and take over other containers' connections. Logged at warn.
    #[arg(long, conflicts_with = "cluster_key")]
    pub insecure_peer_channel: bool,

    /// Secure mode: restrict every host socket through the slim_kern kernel module (/dev/slim) and
    /// never show host addresses to containers.
    #[arg(long)]
    pub secure: bool,

    /// Instead of running a router: ask the one serving --socket (in secure mode; as root in its
    /// network namespace) to shut down every host socket of the container that process PID runs
    /// in, e.g. after a policy change or before removing the container; print how many and exit.
    #[arg(long, value_name = "PID", conflicts_with_all = ["secure", "peers", "cluster_key"])]
    pub revoke: Option<u32>,

    /// Host ports leased to containers for their pooled sockets, as LO-HI, or `off`. A leased
    /// port is bound by one container's sockets only, and every peer router learns its owner
    /// before the container gets it, so connections from it need no per-connection announcement
    /// (no router wakes up per connection). The range must lie outside the ephemeral port range
    /// (net.ipv4.ip_local_port_range). [default: the ports above the ephemeral range, if at
    /// least 64; else off]
    #[arg(long, value_name = "LO-HI|off", value_parser = parse_lease_ports)]
    pub lease_ports: Option<LeasePorts>,

    /// The three uids leased sockets are created under, as PROBE,A,B: a port's successive leases
    /// alternate between A and B, so that the kernel's bind check tells, port by port, whether
    /// the previous lease's socket is gone (needs CAP_SETUID; without it, sock_diag sweeps of
    /// the whole host do). Give uids that no program on the host creates sockets under.
    /// [default: 2147481000,2147481001,2147481002]
    #[arg(long, value_name = "PROBE,A,B", value_parser = crate::leasewatch::LeaseUids::parse)]
    pub lease_uids: Option<crate::leasewatch::LeaseUids>,

    /// Worker threads. One is the default: each request is a few system calls, and a single
    /// thread avoids waking (and migrating between) CPUs on every request.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,

    /// Log level (error, warn, info, debug, trace); RUST_LOG, if set, takes precedence.
    /// [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (e.g. 127.0.0.1:9788). Off unless
    /// given.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeasePorts {
    Off,
    Range(u16, u16),
}

pub fn parse_lease_ports(s: &str) -> Result<LeasePorts, String> {
    if s == "off" {
        return Ok(LeasePorts::Off);
    }
    let bad = || format!("`{s}` is not a port range such as 61000-65535, or `off`");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = a.trim().parse().map_err(|_| bad())?;
    let hi: u16 = b.trim().parse().map_err(|_| bad())?;
    Ok(LeasePorts::Range(lo, hi))
}

pub fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("`{s}` is not an octal mode such as 666 or 660")),
    }
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
    fn status_takes_its_own_socket_or_config() {
        let a = Args::try_parse_from(["slim-router", "status", "--socket", "/x.sock", "--json"])
            .unwrap();
        assert!(matches!(
            a.cmd,
            Some(Cmd::Status {
                socket: Some(_),
                json: true,
                ..
            })
        ));
        assert!(Args::try_parse_from([
            "slim-router",
            "status",
            "--socket",
            "/x.sock",
            "--config",
            "/y.toml"
        ])
        .is_err());
    }

    #[test]
    fn modes_and_ranges() {
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert!(parse_mode("8").is_err() && parse_mode("7777").is_err());
        assert_eq!(parse_lease_ports("off"), Ok(LeasePorts::Off));
        assert_eq!(
            parse_lease_ports("61000-65535"),
            Ok(LeasePorts::Range(61000, 65535))
        );
        assert!(parse_lease_ports("61000").is_err());
    }
}
