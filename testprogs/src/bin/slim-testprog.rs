//! An ordinary network program (it knows nothing of Slim) used by the tests to exercise the
//! socket API the way real servers and clients do: blocking and non-blocking connect, epoll
//! (level and edge triggered, registered before or after connect), poll, select, accept4 flags,
//! pre-fork servers, dup, fork and exec.
//!
//! Server protocol: on each accepted connection the server writes
//! `HELLO pid=<pid> peer=<addr> local=<addr>\n` (what getpeername/getsockname say), then echoes.
//! The client checks that the server saw the client's own address, and that every byte came back.

use slim_testprogs::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;

fn usage() -> ! {
    eprintln!(
        "usage:\n  slim-testprog serve PORT [--v6] [--v6only] [--workers N] [--accept block|epoll|epoll-et|poll|select] [--accept4-flags] [--close-range]\n  \
         slim-testprog client ADDR PORT [--style block|epoll-before|epoll-after|epoll-et|poll|select] [--conns N] [--procs P] [--bytes B] [--v6sock]\n  \
         slim-testprog inherit ADDR PORT   (connect, then dup2, fork and exec `check-fd`)\n  \
         slim-testprog check-fd FD ADDR    (exec'd: verify an inherited connection)\n  \
         slim-testprog fresh-sockets ADDR PORT --dead-port P   (fresh sockets once connections go the fast way: flags,\n    \
         options, bind, listen, loopback, dup, a refused connect, exec)\n  \
         slim-testprog fresh-inherited FD ADDR OVERLAY_IP   (exec'd by fresh-sockets)\n  \
         slim-testprog setup-storm ADDR PORT N (single-threaded epoll: N non-blocking connects, timer serviced meanwhile)\n  \
         slim-testprog rr-serve PORT          (epoll echo server for rr and connrate)\n  \
         slim-testprog rr ADDR PORT [--secs S] [--size B]   (one connection ping-pong: rate, p50, p99)\n  \
         slim-testprog connrate ADDR PORT [--secs S] [--procs P] (short connections per second)\n  \
         slim-testprog attack SERVER_ADDR:PORT LISTEN_PORT OTHER_CONTAINER_IP HOST_IP...   (secure mode: try what a container must not)\n  \
         slim-testprog seccomp-exec -- CMD ARGS...   (CMD with ioctl(SIOCGIFCONF) denied, as docs/seccomp.md asks of runtimes)\n  \
         slim-testprog oci-probe   (inside a container: what slim-oci injected, key=value lines)\n  \
         slim-testprog attack-fd FD SERVER_ADDR:PORT LISTEN_PORT OTHER_CONTAINER_IP HOST_IP...  (exec'd by attack)\n  \
         slim-testprog peer-attack --to ADDR:PORT --key FILE --mode MODE   (frames to a router's peer port, as a container\n    \
         that reached the node could send them; MODE: valid|tamper|replay|expired|foreign|unsealed|malformed;\n    \
         exits 0 when `valid` is accepted or the attack refused)"
    );
    std::process::exit(2)
}

fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { usage() };
    let result = match cmd.as_str() {
        "serve" => {
            let port: u16 = args
                .get(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| usage());
            let cfg = ServeCfg {
                port,
                v6: flag(&args, "--v6"),
                v6only: flag(&args, "--v6only"),
                workers: opt(&args, "--workers")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
                accept: opt(&args, "--accept").unwrap_or_else(|| "block".into()),
                accept4_flags: flag(&args, "--accept4-flags"),
                close_range: flag(&args, "--close-range"),
            };
            serve(&cfg)
        }
        "client" => {
            let addr = parse_target(&args);
            let cfg = ClientCfg {
                addr,
                style: opt(&args, "--style").unwrap_or_else(|| "block".into()),
                conns: opt(&args, "--conns")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
                bytes: opt(&args, "--bytes")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(4096),
                v6sock: flag(&args, "--v6sock"),
            };
            let procs: usize = opt(&args, "--procs")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            run_client_procs(&cfg, procs).map(|pids: BTreeSet<String>| {
                println!("OK conns={} server_pids={}", cfg.conns * procs, pids.len());
            })
        }
        "inherit" => inherit(parse_target(&args)),
        "check-fd" => {
            let fd: i32 = args
                .get(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage());
            let addr: SocketAddr = args
                .get(2)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage());
            check_fd(fd, addr)
        }
        "rr-serve" => {
            let port: u16 = args
                .get(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| usage());
            rr_serve(port)
        }
        "rr" => {
            let secs = opt(&args, "--secs")
                .and_then(|v| v.parse().ok())
                .unwrap_or(3.0);
            let size = opt(&args, "--size")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            rr_client(parse_target(&args), secs, size)
        }
        "connrate" => {
            let secs = opt(&args, "--secs")
                .and_then(|v| v.parse().ok())
                .unwrap_or(3.0);
            let procs = opt(&args, "--procs")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            conn_client(parse_target(&args), secs, procs)
        }
        "fresh-sockets" => {
            let dead: u16 = opt(&args, "--dead-port")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage());
            slim_testprogs::fresh::fresh_sockets(parse_target(&args), dead)
        }
        "fresh-inherited" => {
            let parse = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
            match (parse(1).parse(), parse(2).parse(), parse(3).parse()) {
                (Ok(fd), Ok(addr), Ok(ip)) => slim_testprogs::fresh::fresh_inherited(fd, addr, ip),
                _ => usage(),
            }
        }
        "setup-storm" => {
            let addr = parse_target(&args);
            let n: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(100);
            setup_storm(addr, n)
        }
        "attack" | "attack-fd" => attack_cmd(cmd, &args),
        "seccomp-exec" => {
            let at = args.iter().position(|a| a == "--").map_or(1, |i| i + 1);
            slim_testprogs::seccomp::seccomp_exec(&args[at..])
        }
        "oci-probe" => slim_testprogs::oci_probe::run(),
        "peer-attack" => {
            let to: SocketAddr = opt(&args, "--to")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage());
            let key = opt(&args, "--key").unwrap_or_else(|| usage());
            let mode = opt(&args, "--mode").unwrap_or_else(|| usage());
            slim_testprogs::peer_attack::run(to, std::path::Path::new(&key), &mode)
        }
        _ => usage(),
    };
    if let Err(e) = result {
        println!("FAIL {e:#}");
        std::process::exit(1);
    }
}

fn parse_target(args: &[String]) -> SocketAddr {
    let ip: std::net::IpAddr = args
        .get(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage());
    let port: u16 = args
        .get(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage());
    SocketAddr::new(ip, port)
}

fn attack_cmd(cmd: &str, args: &[String]) -> anyhow::Result<()> {
    use slim_testprogs::attack::{attack, attack_fd, AttackCfg};
    let skip = if cmd == "attack-fd" { 2 } else { 1 };
    let fd: i32 = if cmd == "attack-fd" {
        args.get(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage())
    } else {
        -1
    };
    let rest = &args[skip..];
    let server: SocketAddr = rest
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage());
    let listen_port: u16 = rest
        .get(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage());
    let other: std::net::IpAddr = rest
        .get(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage());
    let host_ips: Vec<std::net::IpAddr> = rest[3..]
        .iter()
        .map(|v| v.parse().unwrap_or_else(|_| usage()))
        .collect();
    if host_ips.is_empty() {
        usage();
    }
    let cfg = AttackCfg {
        server,
        listen_port,
        other,
        host_ips,
    };
    if cmd == "attack-fd" {
        attack_fd(fd, &cfg)
    } else {
        attack(&cfg)
    }
}
