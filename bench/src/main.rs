//! `slim-bench`: host network, VXLAN overlay and Slim side by side on the lab, in one run,
//! interleaved (A B C A B C ...), with medians, ratios and the goals of the benchmark issue.
//! See bench/README.md.

mod callcost;
mod cpu;
mod json;
mod lab;
mod parse;
mod procs;
mod report;
mod secure;
mod secure_report;
mod window;
mod workloads;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::json::Json;
use crate::lab::{Lab, Mode};
use crate::report::{Results, State};
use crate::workloads::{Ctx, Family, Group, Metric, GROUPS};

/// Host network, VXLAN overlay and Slim side by side on the lab (`slim-lab`), with ratios.
/// Needs root. Writes a table to stdout, OUT/latest.json and OUT/latest.png.
#[derive(Parser)]
#[command(name = "slim-bench", version)]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    /// Fewer and shorter runs (3 runs of about 1 s, 4 modes): under 3 minutes.
    #[arg(long)]
    quick: bool,
    /// Runs per cell [default: 5, --quick: 3].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    runs: Option<u32>,
    /// Seconds per run [default: 4, --quick: 1].
    #[arg(long)]
    secs: Option<f64>,
    /// Modes, comma separated, from host, overlay, slim, slim_same_host, overlay_same_host,
    /// host_same_host, slim_secure [default: the first six; --quick: host, overlay, slim,
    /// slim_same_host]. slim_secure (routers in secure mode) needs the slim_kern module:
    /// `make vm-bench` runs it in the QEMU guest.
    #[arg(long, value_delimiter = ',')]
    modes: Option<Vec<String>>,
    /// Only these measurements (group names rr, conn1, conn4, tput1, tput4, nginx_keepalive,
    /// nginx_close, memcached, redis, or metric keys), comma separated.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where latest.json and latest.png go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// slim-lab [default: next to this executable]; the routers and the preload library it
    /// uses are the ones next to it.
    #[arg(long)]
    lab: Option<PathBuf>,
    /// How the lab runs c1, c2, c3: `netns` (network namespaces, Slim by `slim-lab exec
    /// --slim`) or `podman` (podman + crun containers through slim-oci, annotated
    /// io.slim/enable=true, addresses from CNI's IPAM: the overlay and Slim modes run inside
    /// the containers, Slim injected by slim-oci; the host network stays the hosts'
    /// namespaces). The lab is rebuilt if it runs the other way.
    #[arg(long, value_enum, default_value_t = lab::Runtime::Netns)]
    runtime: lab::Runtime,
    /// slim-oci, for --runtime podman [default: next to this executable].
    #[arg(long)]
    slim_oci: Option<PathBuf>,
    /// With --runtime podman: podman's --security-opt on every container (repeatable), e.g.
    /// seccomp=unconfined to measure what podman's default seccomp filter costs. The lab is
    /// rebuilt if it runs with other options.
    #[arg(long, value_name = "OPT")]
    security_opt: Vec<String>,
    /// slim-testprog [default: next to this executable; with --runtime podman it must be in
    /// slim-lab's directory, which the lab mounts in the containers].
    #[arg(long)]
    testprog: Option<PathBuf>,
    /// libslim_preload.so for the call-cost measurement [default: next to this executable].
    #[arg(long)]
    preload: Option<PathBuf>,
    /// slim-callcost [default: next to this executable].
    #[arg(long)]
    callcost: Option<PathBuf>,
    /// A Python with matplotlib, for the chart (Debian's python3-matplotlib).
    #[arg(long, default_value = "/usr/bin/python3")]
    python: PathBuf,
    /// CPU for the server side (taskset).
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// CPU for the client side (taskset).
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// Do not pin clients and servers.
    #[arg(long)]
    no_pin: bool,
    /// How idle vCPUs are kept awake during the measurements (idle vCPUs of this VM type wake
    /// slowly, and without care results come out bimodal): `spin` runs a SCHED_IDLE busy loop
    /// per CPU, in a cpu cgroup marked idle so that it yields to every woken task; `poll`
    /// holds a PM QoS request for zero wake-up latency, so the kernel polls instead of halting
    /// an idle vCPU (no reschedule interrupts: ping-pongs run about twice as fast as with
    /// `spin`, see bench/README.md); `none` leaves the machine as it is.
    #[arg(long, value_enum, default_value_t = KeepAwake::Spin)]
    keep_awake: KeepAwake,
    /// The load check refuses when others use more than this percent of one CPU.
    #[arg(long, default_value_t = 20.0)]
    max_busy_pct: f64,
    /// How long the load check waits for the machine to calm down [default: 30, --quick: 15].
    #[arg(long)]
    max_wait_secs: Option<f64>,
    /// Measure even on a loaded machine; the results say so (env SLIM_BENCH_IGNORE_LOAD=1).
    #[arg(long, env = "SLIM_BENCH_IGNORE_LOAD",
          value_parser = clap::builder::FalseyValueParser::new())]
    ignore_load: bool,
    /// Skip the callgrind measurement of the preload's own cost.
    #[arg(long)]
    no_callcost: bool,
    /// Calls per callgrind run.
    #[arg(long, default_value_t = 100_000)]
    callcost_calls: u64,
    /// Skip the chart.
    #[arg(long)]
    no_chart: bool,
    /// Restart the lab's routers if they do not run the build next to slim-lab (a debug
    /// build, or a binary rebuilt since they started); otherwise that is only reported.
    #[arg(long)]
    restart_routers: bool,
    /// First port of the benchmark's servers (it uses base+0..6, +100..106, ..., +400..406).
    /// Keep them out of the lab's ephemeral range (10000-39999), where the routers' host
    /// listeners take their ports.
    #[arg(long, default_value_t = 8400)]
    port_base: u16,
    /// With mode slim_secure: seconds of the untimed run of a measurement after the routers
    /// were switched between plain and secure (a restarted router relearns the listeners and
    /// refills its pool of leased ports).
    #[arg(long, default_value_t = 2.0)]
    switch_warmup_secs: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KeepAwake {
    Poll,
    Spin,
    None,
}

impl KeepAwake {
    fn name(self) -> &'static str {
        match self {
            KeepAwake::Poll => "poll",
            KeepAwake::Spin => "spin",
            KeepAwake::None => "none",
        }
    }
}

#[derive(Subcommand)]
enum Internal {
    /// A SCHED_IDLE busy loop pinned to one CPU (started by the benchmark itself).
    #[command(name = "__spin", hide = true)]
    Spin {
        #[arg(long)]
        cpu: usize,
    },
}

fn main() -> ExitCode {
    if let Err(e) = procs::install_signal_cleanup() {
        eprintln!("slim-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    if let Some(Internal::Spin { cpu }) = cli.internal {
        if let Err(e) = cpu::spin(cpu) {
            eprintln!("slim-bench __spin: {e:#}");
        }
        return ExitCode::FAILURE;
    }
    let result = run(cli);
    procs::kill_all();
    procs::remove_temp_paths();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("slim-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Next to this executable (target/release/).
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find my own executable")?;
    Ok(exe.with_file_name(name))
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            let p = d.join(program);
            p.is_file()
        })
    })
}

struct Config {
    quick: bool,
    runs: u32,
    secs: f64,
    modes: Vec<Mode>,
    groups: Vec<Group>,
    max_wait: Duration,
}

fn config(cli: &Cli) -> Result<Config> {
    let quick = cli.quick;
    let modes = match &cli.modes {
        Some(keys) => keys
            .iter()
            .map(|k| {
                lab::mode_by_key(k).with_context(|| {
                    format!(
                        "unknown mode `{k}`; modes: {}",
                        lab::KNOWN_MODES.map(|m| m.key).join(", ")
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?,
        None if quick => vec![lab::HOST, lab::OVERLAY, lab::SLIM, lab::SLIM_SAME_HOST],
        None => lab::ALL_MODES.to_vec(),
    };
    for needed in ["host", "overlay", "slim"] {
        if !modes.iter().any(|m| m.key == needed) {
            eprintln!("slim-bench: without mode `{needed}` some ratios and goals stay empty");
        }
    }
    let groups: Vec<Group> = if cli.only.is_empty() {
        GROUPS.to_vec()
    } else {
        for name in &cli.only {
            if !GROUPS.iter().any(|g| g.matches(name)) {
                bail!(
                    "--only {name}: no such measurement; groups: {}",
                    GROUPS.map(|g| g.name()).join(", ")
                );
            }
        }
        GROUPS
            .iter()
            .copied()
            .filter(|g| cli.only.iter().any(|n| g.matches(n)))
            .collect()
    };
    let secs = cli.secs.unwrap_or(if quick { 1.0 } else { 4.0 });
    if !(secs > 0.0 && secs <= 600.0) {
        bail!("--secs must be in (0, 600]");
    }
    Ok(Config {
        quick,
        runs: cli.runs.unwrap_or(if quick { 3 } else { 5 }),
        secs,
        modes,
        groups,
        max_wait: Duration::from_secs_f64(cli.max_wait_secs.unwrap_or(if quick {
            15.0
        } else {
            30.0
        })),
    })
}

/// The load check before each round, with its memory: after a check gave up, the next ones
/// wait only briefly (the machine is evidently busy for a while) until one passes.
struct LoadCheck {
    max_pct: f64,
    max_wait: Duration,
    ignore: bool,
    gave_up: bool,
    worst_ignored: f64,
}

enum Load {
    Quiet,
    /// Busy, measured anyway (override): the percentage.
    Ignored(f64),
    /// Busy: do not report.
    Refused(f64),
}

impl LoadCheck {
    fn check(&mut self, spinners: &cpu::Spinners) -> Result<Load> {
        let window = Duration::from_millis(300);
        let wait = if self.ignore {
            Duration::ZERO
        } else if self.gave_up {
            Duration::from_secs(3)
        } else {
            self.max_wait
        };
        let q = cpu::wait_quiet(spinners, self.max_pct, window, wait)?;
        if q.quiet {
            self.gave_up = false;
            if q.waited > Duration::from_secs(1) {
                eprintln!(
                    "  (waited {:.0} s for the machine to calm down)",
                    q.waited.as_secs_f64()
                );
            }
            return Ok(Load::Quiet);
        }
        if self.ignore {
            self.worst_ignored = self.worst_ignored.max(q.pct);
            return Ok(Load::Ignored(q.pct));
        }
        self.gave_up = true;
        Ok(Load::Refused(q.pct))
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let started = Instant::now();
    if !nix::unistd::geteuid().is_root() {
        bail!("slim-bench runs programs in the lab's network namespaces and needs root");
    }
    let cfg = config(&cli)?;
    let lab_bin = match &cli.lab {
        Some(p) => p.clone(),
        None => sibling("slim-lab")?,
    };
    let testprog = std::fs::canonicalize(match &cli.testprog {
        Some(p) => p.clone(),
        None => sibling("slim-testprog")?,
    })
    .context("no slim-testprog; build the workspace (`cargo build --release --workspace`)")?;
    let mut tools: Vec<&str> = vec!["taskset"];
    for g in &cfg.groups {
        tools.extend(match g.family() {
            Family::Rr => &[][..],
            Family::Iperf => &["iperf3"][..],
            Family::Nginx => &["nginx", "wrk"][..],
            Family::Memcached => &["memcached", "memcaslap"][..],
            Family::Redis => &["redis-server", "redis-benchmark"][..],
        });
    }
    if !cli.no_callcost {
        tools.push("valgrind");
    }
    let missing: Vec<&str> = tools.into_iter().filter(|t| !in_path(t)).collect();
    if !missing.is_empty() {
        bail!(
            "not installed: {}; `make deps` installs them",
            missing.join(", ")
        );
    }

    let dir = std::env::temp_dir().join(format!("slim-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    procs::remove_on_exit(&dir);
    std::fs::create_dir_all(&cli.out)
        .with_context(|| format!("cannot create {}", cli.out.display()))?;

    let mut notes: Vec<String> = Vec::new();
    let nproc = cpu::online_cpus();
    let (server_cpu, client_cpu) = if cli.no_pin {
        notes.push("clients and servers not pinned (--no-pin)".into());
        (None, None)
    } else if cli.server_cpu >= nproc || cli.client_cpu >= nproc {
        bail!(
            "--server-cpu {} / --client-cpu {}: this machine has {nproc} CPUs (use --no-pin)",
            cli.server_cpu,
            cli.client_cpu
        );
    } else {
        notes.push(format!(
            "servers pinned to CPU {}, clients to CPU {} (taskset); the routers float",
            cli.server_cpu, cli.client_cpu
        ));
        (Some(cli.server_cpu), Some(cli.client_cpu))
    };

    eprintln!("slim-bench: bringing the lab up (slim-lab up)");
    let slim_oci = match &cli.slim_oci {
        Some(p) => p.clone(),
        None => sibling("slim-oci")?,
    };
    if cli.runtime != lab::Runtime::Podman && !cli.security_opt.is_empty() {
        bail!("--security-opt only applies to --runtime podman");
    }
    let lab = Lab::open(
        &lab_bin,
        cli.runtime,
        &slim_oci,
        &cli.security_opt,
        server_cpu,
        client_cpu,
    )
    .with_context(|| format!("slim-lab up --runtime {} failed", cli.runtime.name()))?;
    if cli.runtime == lab::Runtime::Podman {
        check_container_tools(&lab, &container_tools(&cfg))?;
        notes.push(format!(
            "runtime podman: c1 ({}), c2 ({}), c3 ({}) are podman + crun containers run through \
             slim-oci with io.slim/enable=true (addresses from CNI's IPAM); the Slim modes run \
             with the library slim-oci injected, the overlay modes with it removed (`env -u \
             LD_PRELOAD`); clients and servers start through `podman exec`, and the CPU figures' \
             window opens and closes inside the container, around the client program itself",
            lab.addr("c1"),
            lab.addr("c2"),
            lab.addr("c3")
        ));
    }
    let routers = check_routers(&lab, cli.restart_routers, &mut notes)?;
    if !(cli.switch_warmup_secs > 0.0 && cli.switch_warmup_secs <= 60.0) {
        bail!("--switch-warmup-secs must be in (0, 60]");
    }
    let mut router_modes = secure::RouterModes::new(&lab, &cfg.modes, cli.switch_warmup_secs)?;
    if lab.lab_mode() != "plain" && !cfg.modes.iter().any(|m| m.secure) {
        notes.push(format!(
            "the lab runs in `{}` mode (routers --secure), not plain",
            lab.lab_mode()
        ));
    }

    let mut results = Results::default();
    let mut load = LoadCheck {
        max_pct: cli.max_busy_pct,
        max_wait: cfg.max_wait,
        ignore: cli.ignore_load,
        gave_up: false,
        worst_ignored: 0.0,
    };
    let mut idle_poll = None;
    let spinners = match cli.keep_awake {
        KeepAwake::None => {
            notes.push(
                "idle vCPUs were left to halt (--keep-awake none): they wake slowly here".into(),
            );
            cpu::Spinners::none()
        }
        KeepAwake::Poll => {
            idle_poll = Some(cpu::IdlePoll::hold()?);
            notes.push(
                "idle vCPUs polled instead of halting during the measurements (a PM QoS \
                 request for zero wake-up latency on /dev/cpu_dma_latency), to keep them awake"
                    .into(),
            );
            cpu::Spinners::none()
        }
        KeepAwake::Spin => {
            let s = cpu::Spinners::start(&std::env::current_exe()?, nproc)?;
            notes.push(format!(
                "one SCHED_IDLE busy loop per CPU ({nproc}) ran during the measurements, to keep \
                 idle vCPUs awake{}; the CPU figures exclude their spinning",
                if s.not_grouped.is_none() {
                    ", in a cpu cgroup marked idle"
                } else {
                    ""
                }
            ));
            if let Some(why) = &s.not_grouped {
                notes.push(format!(
                    "the busy loops are not in an idle cgroup ({why}): with autogroup on, they \
                     take CPU from woken tasks of other sessions, the routers included"
                ));
            }
            s
        }
    };
    println!(
        "slim-bench: {} run: {} runs of {} s per cell, modes {}; {}",
        if cfg.quick { "quick" } else { "full" },
        cfg.runs,
        cfg.secs,
        cfg.modes
            .iter()
            .map(|m| m.key)
            .collect::<Vec<_>>()
            .join(", "),
        match cli.keep_awake {
            KeepAwake::Spin => format!(
                "a SCHED_IDLE busy loop on each of the {} CPUs during measurements",
                spinners.len()
            ),
            KeepAwake::Poll => "idle vCPUs poll (PM QoS) during measurements".into(),
            KeepAwake::None => "idle vCPUs left to halt".into(),
        }
    );
    if cli.ignore_load {
        println!(
            "slim-bench: SLIM_BENCH_IGNORE_LOAD: measuring even if the machine is loaded; \
             such results are marked"
        );
    }
    if cfg.runs < 3 {
        notes.push(format!(
            "only {} run(s) per cell: fewer than the 3 the method asks for",
            cfg.runs
        ));
    }

    let ctx = Ctx {
        lab: &lab,
        testprog,
        spinners: &spinners,
        secs: cfg.secs,
        port_base: cli.port_base,
        dir: dir.clone(),
    };
    let mut families: Vec<Family> = Vec::new();
    for g in &cfg.groups {
        if !families.contains(&g.family()) {
            families.push(g.family());
        }
    }
    for family in families {
        run_family(
            &ctx,
            &cfg,
            family,
            &mut results,
            &mut load,
            &mut router_modes,
        )?;
    }
    drop(ctx);
    router_modes.restore()?;
    notes.extend(router_modes.note());
    let router_switches = router_modes.switch_count();
    drop(router_modes);
    let busy_loops = spinners.len();
    let busy_loops_idle_cgroup = busy_loops > 0 && spinners.not_grouped.is_none();
    drop(spinners);
    drop(idle_poll);

    let mut callcosts = Vec::new();
    if !cli.no_callcost {
        eprintln!(
            "slim-bench: the preload's own cost (callgrind, {} calls each)",
            cli.callcost_calls
        );
        let callcost_bin = match &cli.callcost {
            Some(p) => p.clone(),
            None => sibling("slim-callcost")?,
        };
        let preload = match &cli.preload {
            Some(p) => p.clone(),
            None => sibling("libslim_preload.so")?,
        };
        match callcost::measure(&callcost_bin, &preload, cli.callcost_calls, &dir) {
            Ok(c) => callcosts = c,
            Err(e) => {
                eprintln!("slim-bench: callgrind measurement failed: {e:#}");
                notes.push(format!(
                    "the callgrind measurement failed: {}",
                    first_line(&e)
                ));
            }
        }
    }

    if load.worst_ignored > 0.0 {
        notes.push(format!(
            "measured on a loaded machine (SLIM_BENCH_IGNORE_LOAD): up to {:.0}% of one CPU was \
             busy with other work before a round; these numbers are not comparable",
            load.worst_ignored
        ));
    }

    // Output.
    let metrics: Vec<&Metric> = workloads::METRICS
        .iter()
        .filter(|m| cfg.groups.iter().any(|g| g.metrics().contains(&m.key)))
        .collect();
    println!();
    print!("{}", report::table(&metrics, &cfg.modes, &results));
    print!("{}", secure_report::table(&metrics, &cfg.modes, &results));
    if !callcosts.is_empty() {
        println!(
            "\nThe preload's own cost (callgrind, instructions per call, {} calls):",
            cli.callcost_calls
        );
        for c in &callcosts {
            println!(
                "  {:<40} without {:>7.1}  with {:>7.1}  overhead {:>6.1}  {}",
                callcost::what(c.call),
                c.without,
                c.with,
                c.overhead(),
                if c.overhead() <= callcost::LIMIT {
                    "ok (<= 100)".to_string()
                } else {
                    "OVER 100".to_string()
                }
            );
        }
    }
    let problems = problems(&metrics, &cfg.modes, &results);
    if !problems.is_empty() {
        println!();
        for p in &problems {
            println!("{p}");
        }
    }
    println!();
    for n in &notes {
        println!("note: {n}");
    }

    let (mut res_json, mut goals) = report::results_json(&metrics, &cfg.modes, &results);
    secure_report::add_goals(&mut goals, &cfg.modes, &results);
    if !callcosts.is_empty() {
        let pre = res_json.entry("preload_overhead_instr");
        for c in &callcosts {
            pre.set(c.call, c.json(cli.callcost_calls));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let doc = Json::obj()
        .with("date", iso_date(SystemTime::now()))
        .with("machine", machine())
        .with("commit", git(&["rev-parse", "HEAD"]))
        .with(
            "commit_dirty",
            git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
        )
        .with("quick", cfg.quick)
        .with(
            "command",
            std::env::args().collect::<Vec<_>>().join(" ").as_str(),
        )
        .with(
            "config",
            Json::obj()
                .with("runtime", cli.runtime.name())
                .with("security_opt", cli.security_opt.join(",").as_str())
                .with("runs", cfg.runs as u64)
                .with("secs", cfg.secs)
                .with("keep_awake", cli.keep_awake.name())
                .with("busy_loops", busy_loops as u64)
                .with("busy_loops_idle_cgroup", busy_loops_idle_cgroup)
                .with("server_cpu", server_cpu)
                .with("client_cpu", client_cpu)
                .with("max_busy_pct", cli.max_busy_pct)
                .with("router_switches", router_switches as u64)
                .with("switch_warmup_secs", cli.switch_warmup_secs)
                .with("ignore_load", cli.ignore_load),
        )
        .with(
            "modes",
            cfg.modes
                .iter()
                .fold(Json::obj(), |j, m| j.with(m.key, m.what)),
        )
        .with("routers", routers)
        .with("tools", tool_versions())
        .with("notes", notes.clone())
        .with("elapsed_s", elapsed.round())
        .with("results", res_json)
        .with("goals", goals);
    let json_path = cli.out.join("latest.json");
    report::write_atomic(&json_path, doc.pretty().as_bytes())?;
    println!("wrote {}", json_path.display());
    if !cli.no_chart {
        let png = cli.out.join("latest.png");
        match report::chart(&cli.python, &json_path, &png) {
            Ok(()) => println!("wrote {}", png.display()),
            Err(e) => println!("no chart: {e:#}"),
        }
    }
    println!(
        "slim-bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let errors = problems.iter().any(|p| p.starts_with("error"));
    Ok(if errors {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The first line of an error chain, at most 300 bytes, for the JSON.
fn first_line(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line.to_string(),
    }
}

/// Refused and failed cells, one line per metric and reason.
fn problems(metrics: &[&Metric], modes: &[Mode], r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    for m in metrics {
        // (kind, reason) -> modes, in mode order.
        let mut seen: Vec<(&str, &str, Vec<&str>)> = Vec::new();
        for mode in modes {
            let (kind, why) = match r.get(m.key, mode.key).map(|c| &c.state) {
                Some(State::Refused(why)) => ("refused", why.as_str()),
                Some(State::Error(why)) => ("error", why.as_str()),
                _ => continue,
            };
            match seen.iter_mut().find(|(k, w, _)| *k == kind && *w == why) {
                Some((_, _, ms)) => ms.push(mode.key),
                None => seen.push((kind, why, vec![mode.key])),
            }
        }
        for (kind, why, ms) in seen {
            out.push(format!("{kind}: {} ({}): {why}", m.key, ms.join(", ")));
        }
    }
    out
}

/// Starts a family's servers (one per mode), then runs each of its groups, interleaved.
fn run_family(
    ctx: &Ctx,
    cfg: &Config,
    family: Family,
    results: &mut Results,
    load: &mut LoadCheck,
    router_modes: &mut secure::RouterModes,
) -> Result<()> {
    let groups: Vec<Group> = cfg
        .groups
        .iter()
        .copied()
        .filter(|g| g.family() == family)
        .collect();
    eprintln!("slim-bench: starting {} in each mode", family.name());
    // One server per mode; a mode whose server does not start is left out of this family.
    let mut servers: Vec<(Mode, procs::Background)> = Vec::new();
    for mode in &cfg.modes {
        // A Slim server registers its listener with the routers of its own mode.
        let started = router_modes
            .ensure(mode)
            .and_then(|_| workloads::start_server(ctx, family, mode));
        match started {
            Ok(s) => servers.push((*mode, s)),
            Err(e) => {
                eprintln!("slim-bench: {} in mode {}: {e:#}", family.name(), mode.key);
                for g in &groups {
                    for k in g.metrics() {
                        results.cell(k, mode.key).state =
                            State::Error(format!("the server did not start: {}", first_line(&e)));
                    }
                }
            }
        }
    }
    let modes: Vec<Mode> = servers.iter().map(|(m, _)| *m).collect();
    let mut failed: Vec<&'static str> = Vec::new();
    if let Some(first) = groups.first() {
        for mode in &modes {
            let warmed = router_modes
                .ensure(mode)
                .and_then(|_| workloads::warm_up(ctx, *first, mode));
            if let Err(e) = warmed {
                eprintln!("slim-bench: warm-up in mode {}: {e:#}", mode.key);
            }
        }
    }
    for group in &groups {
        failed.clear();
        'rounds: for r in 0..cfg.runs {
            match load.check(ctx.spinners)? {
                Load::Quiet => {}
                Load::Ignored(pct) => {
                    eprintln!(
                        "  {} round {}: machine busy ({pct:.0}% CPU), measuring anyway \
                         (SLIM_BENCH_IGNORE_LOAD)",
                        group.name(),
                        r + 1
                    );
                    for mode in &modes {
                        for k in group.metrics() {
                            let c = results.cell(k, mode.key);
                            c.loaded = Some(c.loaded.unwrap_or(0.0).max(pct));
                        }
                    }
                }
                Load::Refused(pct) => {
                    let why = format!("machine busy ({pct:.0}% CPU)");
                    println!(
                        "slim-bench: {}: not reported: {why} by something else, still after \
                         waiting (SLIM_BENCH_IGNORE_LOAD=1 measures anyway, marked as such)",
                        group.name()
                    );
                    for mode in &modes {
                        for k in group.metrics() {
                            let c = results.cell(k, mode.key);
                            if !matches!(c.state, State::Error(_)) {
                                c.state = State::Refused(why.clone());
                            }
                        }
                    }
                    break 'rounds;
                }
            }
            for (mode, server) in servers.iter_mut() {
                if procs::shutting_down() {
                    bail!("interrupted");
                }
                if failed.contains(&mode.key) {
                    continue;
                }
                let t = Instant::now();
                // A server that died (or was killed: `slim-lab down` by someone else ends
                // every process in the lab's namespaces) fails its mode, with its output.
                let measured = server
                    .check_running()
                    .context("the server is gone")
                    .and_then(|()| router_modes.prepare(ctx, *group, mode))
                    .and_then(|()| workloads::measure(ctx, *group, mode));
                match measured {
                    Ok(values) => {
                        let mut line = String::new();
                        for (k, v) in group.metrics().iter().zip(&values) {
                            results.cell(k, mode.key).runs.push(*v);
                            line.push_str(&format!(" {k}={}", report::num(*v)));
                        }
                        eprintln!(
                            "  {} {}/{} {:<17}{line}  ({:.1} s)",
                            group.name(),
                            r + 1,
                            cfg.runs,
                            mode.key,
                            t.elapsed().as_secs_f64()
                        );
                    }
                    Err(_) if procs::shutting_down() => bail!("interrupted"),
                    Err(e) => {
                        eprintln!(
                            "  {} {}/{} {}: FAILED: {e:#}",
                            group.name(),
                            r + 1,
                            cfg.runs,
                            mode.key
                        );
                        failed.push(mode.key);
                        for k in group.metrics() {
                            results.cell(k, mode.key).state = State::Error(first_line(&e));
                        }
                    }
                }
            }
        }
    }
    drop(servers);
    for mode in &modes {
        workloads::stop_server(ctx, family, mode);
    }
    Ok(())
}

/// The programs the groups run in the containers.
fn container_tools(cfg: &Config) -> Vec<&'static str> {
    let mut tools = vec!["sh", "env", "bash", "pkill", "pgrep"];
    for g in &cfg.groups {
        for t in match g.family() {
            Family::Rr => &[][..],
            Family::Iperf => &["iperf3"][..],
            Family::Nginx => &["nginx", "wrk"][..],
            Family::Memcached => &["memcached", "memcaslap"][..],
            Family::Redis => &["redis-server", "redis-benchmark"][..],
        } {
            if !tools.contains(t) {
                tools.push(t);
            }
        }
    }
    tools
}

/// Fails, naming them, if programs are missing from c1's or c2's root filesystem.
fn check_container_tools(lab: &Lab, tools: &[&str]) -> Result<()> {
    for node in ["c1", "c2"] {
        let mut argv = vec![
            "sh",
            "-c",
            "for t; do command -v \"$t\" >/dev/null || echo \"$t\"; done",
            "sh",
        ];
        argv.extend(tools);
        let f = procs::run(
            lab.command(None, node, false, &argv),
            Duration::from_secs(30),
        )?;
        if !f.status.success() {
            bail!("cannot look for programs in {node}: {}", f.report());
        }
        let missing: Vec<&str> = f.stdout.split_whitespace().collect();
        if !missing.is_empty() {
            bail!(
                "not in the containers' root filesystem ({node}): {}; add their Debian packages \
                 to scripts/rootfs/build-rootfs.sh and run it (`make bench` does), then \
                 `slim-lab down`",
                missing.join(", ")
            );
        }
    }
    Ok(())
}

/// Finds routers that do not run the build next to slim-lab and restarts them if told to, or
/// warns; returns what runs, for the JSON.
fn check_routers(lab: &Lab, restart: bool, notes: &mut Vec<String>) -> Result<Json> {
    let own = std::fs::canonicalize(lab.own_router()).ok();
    for (host, pid, exe) in lab.routers() {
        let current = exe.as_ref().map(|e| e.display().to_string());
        let same = exe.is_some() && exe == own;
        if same {
            continue;
        }
        let what = match (&current, pid) {
            (Some(e), _) if e.ends_with(" (deleted)") => format!(
                "router {host} runs an older build ({e}: replaced since the router started)"
            ),
            (Some(e), _) => format!("router {host} runs {e}"),
            (None, Some(p)) => format!("router {host} (pid {p}) is not running"),
            (None, None) => format!("router {host} has no pid file"),
        };
        let own_text = own
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(none)".into());
        if restart {
            eprintln!("slim-bench: {what}; restarting it with {own_text}");
            lab.restart_router(&host)?;
            notes.push(format!(
                "{what}; restarted with {own_text} before measuring"
            ));
        } else {
            let warning = format!(
                "WARNING: {what}, not {own_text}: Slim's numbers are those of that build \
                 (--restart-routers replaces it)"
            );
            eprintln!("slim-bench: {warning}");
            notes.push(warning);
        }
    }
    let mut list = Vec::new();
    for (host, pid, exe) in lab.routers() {
        list.push(
            Json::obj()
                .with("host", host.as_str())
                .with("pid", pid.map(|p| p as u64))
                .with("exe", exe.map(|e| e.display().to_string())),
        );
    }
    Ok(Json::Arr(list))
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn machine() -> Json {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let hypervisor = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().any(|f| f == "hypervisor"));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string());
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| parse::number_after(&m, "MemTotal:"));
    Json::obj()
        .with("cpu_model", model)
        .with("nproc", cpu::online_cpus())
        .with("kernel", kernel)
        .with("mem_total_kb", mem_kb)
        .with("virtual_machine", hypervisor)
}

/// First line of each tool's version output (best effort).
fn tool_versions() -> Json {
    let mut j = Json::obj();
    for (tool, args) in [
        ("iperf3", &["--version"][..]),
        ("nginx", &["-v"][..]),
        ("wrk", &["-v"][..]),
        ("memcached", &["-V"][..]),
        ("redis-server", &["--version"][..]),
        ("valgrind", &["--version"][..]),
    ] {
        if let Ok(out) = Command::new(tool).args(args).output() {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if let Some(line) = text.lines().find(|l| !l.trim().is_empty()) {
                j.set(tool, line.trim());
            }
        }
    }
    j
}

/// `2026-01-31T12:34:56Z`.
fn iso_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso_date(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // a leap day
        assert_eq!(iso_date(t), "2024-02-29T12:34:56Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_767_225_599);
        assert_eq!(iso_date(t), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from(["slim-bench", "--quick", "--only", "rr,redis"]).unwrap();
        let cfg = config(&cli).unwrap();
        assert_eq!(cfg.runs, 3);
        assert_eq!(cfg.groups, vec![Group::Rr, Group::Redis]);
        assert_eq!(cfg.modes.len(), 4);
        let cli = Cli::try_parse_from(["slim-bench", "--modes", "host,bogus"]).unwrap();
        assert!(config(&cli).is_err());
        assert!(!cli.ignore_load || std::env::var_os("SLIM_BENCH_IGNORE_LOAD").is_some());
        let cli = Cli::try_parse_from(["slim-bench", "--ignore-load"]).unwrap();
        assert!(cli.ignore_load);
        let cli = Cli::try_parse_from(["slim-bench", "__spin", "--cpu", "1"]).unwrap();
        assert!(matches!(cli.internal, Some(Internal::Spin { cpu: 1 })));
        assert_eq!(cli.keep_awake, KeepAwake::Spin);
        let cli = Cli::try_parse_from(["slim-bench", "--keep-awake", "poll"]).unwrap();
        assert_eq!(cli.keep_awake, KeepAwake::Poll);
        assert!(Cli::try_parse_from(["slim-bench", "--keep-awake", "sleep"]).is_err());
    }
}
