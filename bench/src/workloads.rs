//! What is measured: the metrics (JSON keys, units, goals), the server families (one server per
//! mode, started once for all the measurements that use it) and the measurement groups (one
//! client run yields one or more metrics).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cpu;
use crate::lab::{Lab, Mode};
use crate::parse;
use crate::procs::{self, Background, Finished};
use crate::window;

/// The goal for a metric, as a ratio of Slim to the host network (or the overlay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Within this fraction of host (not worse by more than it; better is fine).
    NearHost(f64),
    /// At least the overlay's; `aim` is the hoped-for ratio to host.
    AtLeastOverlay { aim: f64 },
    /// Value at most this many times host (lower is better).
    AtMostHost(f64),
    /// Value at least this many times host (higher is better).
    AtLeastHost(f64),
    /// No goal: for information.
    Info,
}

pub struct Metric {
    pub key: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub goal: Goal,
}

const fn m(
    key: &'static str,
    title: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    goal: Goal,
) -> Metric {
    Metric {
        key,
        title,
        unit,
        higher_is_better,
        goal,
    }
}

const NEAR: Goal = Goal::NearHost(0.03);

/// Every metric, in table order.
pub const METRICS: &[Metric] = &[
    m(
        "tcp_throughput_1",
        "TCP throughput, 1 stream",
        "Gbit/s",
        true,
        NEAR,
    ),
    m(
        "tcp_throughput_4",
        "TCP throughput, 4 streams",
        "Gbit/s",
        true,
        NEAR,
    ),
    m(
        "cpu_s_per_gb",
        "CPU per GB (1 stream)",
        "CPU-s/GB",
        false,
        NEAR,
    ),
    m("rr_rate", "1-byte request/response", "trans/s", true, NEAR),
    m("rr_p50_us", "  its latency, p50", "us", false, Goal::Info),
    m("rr_p99_us", "  its latency, p99", "us", false, NEAR),
    m(
        "conn_rate_1",
        "connections/s, 1 client",
        "conn/s",
        true,
        Goal::AtLeastOverlay { aim: 0.9 },
    ),
    m(
        "conn_rate_4",
        "connections/s, 4 clients",
        "conn/s",
        true,
        Goal::AtLeastOverlay { aim: 0.9 },
    ),
    m(
        "cpu_us_per_conn",
        "CPU per connection (1 client)",
        "CPU-us",
        false,
        Goal::AtMostHost(1.5),
    ),
    // Stalls show here, not in the rate (issue 15: under 2 ms in a 4 s run).
    m(
        "conn_slowest_ms_1",
        "  slowest connection (1 client)",
        "ms",
        false,
        Goal::Info,
    ),
    m(
        "nginx_keepalive",
        "nginx, keep-alive (wrk)",
        "req/s",
        true,
        NEAR,
    ),
    m(
        "nginx_close",
        "nginx, Connection: close",
        "req/s",
        true,
        Goal::AtLeastHost(0.8),
    ),
    m("memcached", "memcached (memaslap)", "ops/s", true, NEAR),
    m("redis_get", "redis GET", "req/s", true, NEAR),
    m("redis_set", "redis SET", "req/s", true, NEAR),
];

#[cfg(test)]
pub fn metric(key: &str) -> &'static Metric {
    METRICS
        .iter()
        .find(|m| m.key == key)
        .expect("every metric key used is in METRICS")
}

/// Server families: one server per mode, shared by the groups of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Rr,
    Iperf,
    Nginx,
    Memcached,
    Redis,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Rr => "slim-testprog rr-serve",
            Family::Iperf => "iperf3 -s",
            Family::Nginx => "nginx (2 workers)",
            Family::Memcached => "memcached -t 2",
            Family::Redis => "redis-server",
        }
    }

    /// Offset of the family's ports from the base port.
    fn port_offset(self) -> u16 {
        match self {
            Family::Iperf => 0,
            Family::Rr => 100,
            Family::Nginx => 200,
            Family::Memcached => 300,
            Family::Redis => 400,
        }
    }

    pub fn port(self, base: u16, mode: &Mode) -> u16 {
        base + self.port_offset() + mode.index
    }
}

/// One kind of client run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Rr,
    Conn1,
    Conn4,
    Tput1,
    Tput4,
    NginxKeepalive,
    NginxClose,
    Memcached,
    Redis,
}

/// Groups in run order, families kept together so each family's servers start once.
pub const GROUPS: [Group; 9] = [
    Group::Rr,
    Group::Conn1,
    Group::Conn4,
    Group::Tput1,
    Group::Tput4,
    Group::NginxKeepalive,
    Group::NginxClose,
    Group::Memcached,
    Group::Redis,
];

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Group::Rr => "rr",
            Group::Conn1 => "conn1",
            Group::Conn4 => "conn4",
            Group::Tput1 => "tput1",
            Group::Tput4 => "tput4",
            Group::NginxKeepalive => "nginx_keepalive",
            Group::NginxClose => "nginx_close",
            Group::Memcached => "memcached",
            Group::Redis => "redis",
        }
    }

    pub fn family(self) -> Family {
        match self {
            Group::Rr | Group::Conn1 | Group::Conn4 => Family::Rr,
            Group::Tput1 | Group::Tput4 => Family::Iperf,
            Group::NginxKeepalive | Group::NginxClose => Family::Nginx,
            Group::Memcached => Family::Memcached,
            Group::Redis => Family::Redis,
        }
    }

    /// The metrics one run yields, in the order `measure` returns them.
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Group::Rr => &["rr_rate", "rr_p50_us", "rr_p99_us"],
            Group::Conn1 => &["conn_rate_1", "cpu_us_per_conn", "conn_slowest_ms_1"],
            Group::Conn4 => &["conn_rate_4"],
            Group::Tput1 => &["tcp_throughput_1", "cpu_s_per_gb"],
            Group::Tput4 => &["tcp_throughput_4"],
            Group::NginxKeepalive => &["nginx_keepalive"],
            Group::NginxClose => &["nginx_close"],
            Group::Memcached => &["memcached"],
            Group::Redis => &["redis_get", "redis_set"],
        }
    }

    /// Whether `--only NAME` selects this group: its name, one of its metrics, or its family
    /// (`nginx`).
    pub fn matches(self, name: &str) -> bool {
        self.name() == name
            || self.metrics().contains(&name)
            || (name == "nginx" && self.family() == Family::Nginx)
    }
}

/// What a measurement needs besides the mode.
pub struct Ctx<'a> {
    pub lab: &'a Lab,
    pub testprog: PathBuf,
    pub spinners: &'a cpu::Spinners,
    pub secs: f64,
    pub port_base: u16,
    pub dir: PathBuf,
}

impl Ctx<'_> {
    /// Generous: the tools' own durations plus start-up, never the normal end of a run.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.secs * 4.0 + 60.0)
    }

    fn run_client(&self, mode: &Mode, argv: &[&str]) -> Result<Finished> {
        procs::run(self.lab.client(mode, argv), self.timeout())
    }
}

/// The small file nginx serves.
const NGINX_FILE: &str = "1k.bin";
const NGINX_FILE_SIZE: usize = 1024;

/// Starts the family's server for a mode and waits until it is ready.
pub fn start_server(ctx: &Ctx, family: Family, mode: &Mode) -> Result<Background> {
    let port = family.port(ctx.port_base, mode);
    let p = port.to_string();
    let dir = ctx
        .dir
        .join(format!("{:?}-{}", family, mode.key).to_lowercase());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log = dir.join("server.log");
    let testprog = ctx.lab.program_path(mode.server, &ctx.testprog)?;
    let d = dir.display().to_string();
    // A server left in a container by an interrupted run would hold the port.
    ctx.lab
        .kill_in_container(mode.server, &server_pattern(ctx, family, mode));
    let argv: Vec<String> = match family {
        Family::Rr => vec![testprog, "rr-serve".into(), p.clone()],
        Family::Iperf => ["iperf3", "-s", "-p", &p, "--forceflush"]
            .map(String::from)
            .to_vec(),
        Family::Nginx => {
            let conf = nginx_conf(ctx.lab, mode.server, &dir, port)?;
            let error_log = dir.join("error.log").display().to_string();
            vec![
                "nginx".into(),
                "-c".into(),
                conf.display().to_string(),
                "-e".into(),
                error_log,
            ]
        }
        Family::Memcached => ["memcached", "-u", "root", "-p", &p, "-U", "0", "-t", "2"]
            .map(String::from)
            .to_vec(),
        Family::Redis => [
            "redis-server",
            "--port",
            &p,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            &d,
        ]
        .map(String::from)
        .to_vec(),
    };
    if family == Family::Redis {
        ctx.lab.write_files(mode.server, &dir, &[])?;
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut server = Background::start(ctx.lab.server(mode, &argv), Some(&log))?;
    let timeout = Duration::from_secs(30);
    match family {
        // A probe connection would disturb iperf3 (a failed test); it says when it listens.
        Family::Iperf => {
            server.wait_for("`Server listening`", timeout, |s| {
                s.log_text().contains("Server listening")
            })?;
        }
        Family::Rr => {
            server.wait_for("`LISTENING`", timeout, |s| {
                s.log_text().contains("LISTENING")
            })?;
        }
        _ => {}
    }
    // And from the client's side: reachable (this also resolves neighbours and routes).
    server.wait_for(
        &format!(
            "{}:{port} to accept from {}",
            ctx.lab.target(mode),
            mode.client
        ),
        timeout,
        |_| ctx.lab.connectable(mode, port),
    )?;
    Ok(server)
}

/// A pattern (`pkill -f`) for the family's server of a mode, from this or an earlier run.
fn server_pattern(ctx: &Ctx, family: Family, mode: &Mode) -> String {
    let port = family.port(ctx.port_base, mode);
    match family {
        Family::Rr => format!("slim-testprog rr-serve {port}( |$)"),
        Family::Iperf => format!("iperf3 -s -p {port}( |$)"),
        // The master's title keeps its arguments; TERM makes it stop its workers.
        Family::Nginx => format!(
            "nginx -c .*/slim-bench-[0-9]+/nginx-{}/nginx.conf",
            mode.key
        ),
        Family::Memcached => format!("memcached -u root -p {port}( |$)"),
        // redis-server retitles itself `redis-server *:PORT`.
        Family::Redis => format!("redis-server .*:{port}( |$)"),
    }
}

/// Stops a mode's server where killing its `slim-lab exec` does not (a podman container).
pub fn stop_server(ctx: &Ctx, family: Family, mode: &Mode) {
    ctx.lab
        .kill_in_container(mode.server, &server_pattern(ctx, family, mode));
}

/// nginx: master and 2 workers, all files under `dir` (as lab/tests/apps.rs runs it), written
/// where `node` sees them. `open_file_cache` keeps the served file open: without it every request
/// opens it again, and in a podman container `dir` is on the container's overlayfs root, whose
/// open costs more than the host's ext4 (keep-alive Slim/host 0.78-0.91x in containers against
/// 0.96-1.09x with the cache, 3 interleaved rounds each; bench/README.md "In podman containers").
/// The benchmark measures the network path, not the file system under the server.
fn nginx_conf(lab: &Lab, node: &str, dir: &Path, port: u16) -> Result<PathBuf> {
    let d = dir.display();
    let conf = format!(
        "worker_processes 2;\n\
         daemon off;\n\
         master_process on;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
           access_log off;\n\
           keepalive_requests 1000000;\n\
           open_file_cache max=16 inactive=60s;\n\
           client_body_temp_path {d}/body;\n\
           proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n\
           scgi_temp_path {d}/scgi;\n\
           server {{ listen {port}; listen [::]:{port}; root {d}/www; }}\n\
         }}\n"
    );
    let file = vec![b'x'; NGINX_FILE_SIZE];
    let www_file = format!("www/{NGINX_FILE}");
    lab.write_files(
        node,
        dir,
        &[("nginx.conf", conf.as_bytes()), (&www_file, &file)],
    )?;
    Ok(dir.join("nginx.conf"))
}

fn ok(f: Finished) -> Result<Finished> {
    if !f.status.success() {
        bail!("{}", f.report());
    }
    Ok(f)
}

/// A short untimed run against a mode's server (first connections resolve neighbours, load
/// the library from disk, fill the routers' tables).
pub fn warm_up(ctx: &Ctx, group: Group, mode: &Mode) -> Result<()> {
    let port = group.family().port(ctx.port_base, mode).to_string();
    let addr = ctx.lab.target(mode);
    let tp = ctx.lab.program_path(mode.client, &ctx.testprog)?;
    if group.family() == Family::Rr {
        ok(ctx.run_client(mode, &[&tp, "rr", addr, &port, "--secs", "0.2"])?)?;
        ok(ctx.run_client(
            mode,
            &[
                &tp, "connrate", addr, &port, "--secs", "0.2", "--procs", "1",
            ],
        )?)?;
    }
    Ok(())
}

/// One client run of a group in a mode; returns the group's metrics in order.
pub fn measure(ctx: &Ctx, group: Group, mode: &Mode) -> Result<Vec<f64>> {
    let port = group.family().port(ctx.port_base, mode).to_string();
    let addr = ctx.lab.target(mode);
    let secs = format!("{}", ctx.secs);
    let whole_secs = format!("{}", ctx.secs.round().max(1.0) as u64);
    let tp = ctx.lab.program_path(mode.client, &ctx.testprog)?;
    match group {
        Group::Rr => {
            let f = ok(ctx.run_client(mode, &[&tp, "rr", addr, &port, "--secs", &secs])?)?;
            let get = |k| parse::fields(&f.stdout, "RR", k);
            match (get("rate"), get("p50_us"), get("p99_us")) {
                (Some(r), Some(p50), Some(p99)) => Ok(vec![r, p50, p99]),
                _ => bail!("no RR line: {}", f.report()),
            }
        }
        Group::Conn1 | Group::Conn4 => {
            let procs = if group == Group::Conn1 { "1" } else { "4" };
            let (f, before, after) = window::run_client_marked(
                ctx,
                mode,
                &[
                    &tp, "connrate", addr, &port, "--secs", &secs, "--procs", procs,
                ],
            )?;
            let f = ok(f)?;
            let get = |k| parse::fields(&f.stdout, "CONN", k);
            let (Some(rate), Some(count)) = (get("rate"), get("count")) else {
                bail!("no CONN line: {}", f.report());
            };
            if count <= 0.0 {
                bail!("no connection made: {}", f.report());
            }
            if group == Group::Conn1 {
                let us_per_conn = cpu::work_secs(&before, &after) * 1e6 / count;
                let Some(slowest) = get("slowest_ms") else {
                    bail!("no slowest_ms in the CONN line: {}", f.report());
                };
                Ok(vec![rate, us_per_conn, slowest])
            } else {
                Ok(vec![rate])
            }
        }
        Group::Tput1 | Group::Tput4 => {
            let mut argv = vec![
                "iperf3",
                "-c",
                addr,
                "-p",
                &port,
                "-t",
                &whole_secs,
                "--json",
            ];
            if group == Group::Tput4 {
                argv.extend(["-P", "4"]);
            }
            let (f, before, after) = window::run_client_marked(ctx, mode, &argv)?;
            if let Some(e) = parse::iperf3_error(&f.stdout) {
                bail!("iperf3: {e}: {}", f.report());
            }
            let f = ok(f)?;
            let Some((bps, bytes)) = parse::iperf3_received(&f.stdout) else {
                bail!("no sum_received in iperf3's report: {}", f.report());
            };
            if bytes <= 0.0 {
                bail!("iperf3 received nothing: {}", f.report());
            }
            if group == Group::Tput1 {
                let cpu_s_per_gb = cpu::work_secs(&before, &after) / (bytes / 1e9);
                Ok(vec![bps / 1e9, cpu_s_per_gb])
            } else {
                Ok(vec![bps / 1e9])
            }
        }
        Group::NginxKeepalive | Group::NginxClose => {
            let url = format!("http://{}/{NGINX_FILE}", host_port(addr, &port));
            let d = format!("{whole_secs}s");
            let mut argv = vec!["wrk", "-t2", "-c32", "-d", &d];
            if group == Group::NginxClose {
                argv.extend(["-H", "Connection: close"]);
            }
            argv.push(&url);
            let f = ok(ctx.run_client(mode, &argv)?)?;
            if let Some(p) = parse::wrk_problems(&f.stdout) {
                bail!("wrk: {p}: {}", f.report());
            }
            match parse::wrk_rate(&f.stdout) {
                Some(r) => Ok(vec![r]),
                None => bail!("no Requests/sec from wrk: {}", f.report()),
            }
        }
        Group::Memcached => {
            let server = format!("{}:{port}", addr);
            // A count rather than `-t`: in time mode memaslap's main thread sleeps in whole
            // seconds and a 1 s run takes 2 s. Sized for about `secs` at the host network's
            // rate here; memaslap reports TPS over its own run time.
            let n = ((60_000.0 * ctx.secs) as u64).max(10_000).to_string();
            let f = ok(ctx.run_client(
                mode,
                &["memcaslap", "-s", &server, "-x", &n, "-T", "1", "-c", "16"],
            )?)?;
            let all = format!("{}{}", f.stdout, f.stderr).to_lowercase();
            if all.contains("error") || all.contains("fail") {
                bail!("memaslap reported errors: {}", f.report());
            }
            match parse::memaslap_tps(&f.stdout) {
                Some(t) => Ok(vec![t]),
                None => bail!("no TPS from memaslap: {}", f.report()),
            }
        }
        Group::Redis => {
            // Request counts sized for about `secs` per test at the host network's rate here.
            let n = ((50_000.0 * ctx.secs) as u64).max(10_000).to_string();
            let f = ok(ctx.run_client(
                mode,
                &[
                    "redis-benchmark",
                    "-h",
                    addr,
                    "-p",
                    &port,
                    "-c",
                    "32",
                    "-P",
                    "1",
                    "-n",
                    &n,
                    "-t",
                    "get,set",
                    "-q",
                ],
            )?)?;
            if f.stdout.contains("Error") || f.stderr.contains("Error") {
                bail!("redis-benchmark reported errors: {}", f.report());
            }
            match (
                parse::redis_rps(&f.stdout, "GET"),
                parse::redis_rps(&f.stdout, "SET"),
            ) {
                (Some(g), Some(s)) => Ok(vec![g, s]),
                _ => bail!("no GET/SET result from redis-benchmark: {}", f.report()),
            }
        }
    }
}

fn host_port(addr: &str, port: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::KNOWN_MODES;

    #[test]
    fn every_group_metric_is_known_and_listed_once() {
        let mut seen = Vec::new();
        for g in GROUPS {
            for k in g.metrics() {
                let _ = metric(k);
                assert!(!seen.contains(k), "{k} in two groups");
                seen.push(k);
            }
        }
        assert_eq!(seen.len(), METRICS.len());
    }

    #[test]
    fn ports_are_distinct() {
        let mut ports = Vec::new();
        for f in [
            Family::Rr,
            Family::Iperf,
            Family::Nginx,
            Family::Memcached,
            Family::Redis,
        ] {
            for m in &KNOWN_MODES {
                let p = f.port(8400, m);
                assert!(!ports.contains(&p));
                ports.push(p);
            }
        }
    }

    #[test]
    fn groups_by_name() {
        assert!(Group::Rr.matches("rr"));
        assert!(Group::Tput1.matches("cpu_s_per_gb"));
        assert!(Group::NginxKeepalive.matches("nginx"));
        assert!(Group::NginxClose.matches("nginx"));
        assert!(!GROUPS.iter().any(|g| g.matches("bogus")));
    }
}
