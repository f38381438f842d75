//! CPU: what keeps the VM's vCPUs awake (idle polling by PM QoS, or busy loops), the check that
//! nothing else loads the machine, and the CPU accounting of a measurement.
//!
//! Accounting: whole-machine busy time from /proc/stat (user + nice + system + irq + softirq)
//! minus the *user* time of our busy loops (/proc/PID/stat utime). A busy loop makes no system
//! call, so its stime is interrupt and softirq work that tick-based accounting (this kernel has
//! no IRQ_TIME_ACCOUNTING) charges to whatever task was running, which is network work of the
//! measurement, and stays counted. Steal (the hypervisor running someone else while our vCPU
//! wanted to run; with busy loops every vCPU always wants to run) is left out of the CPU
//! figures, as it measures the neighbours, but counts as load in the busy check.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use crate::procs::Background;

/// The aggregate `cpu` line of /proc/stat, in USER_HZ ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stat {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl Stat {
    /// Work done by this machine (not counting steal).
    pub fn work(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq
    }
}

pub fn parse_stat(text: &str) -> Option<Stat> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    Some(Stat {
        user: v[0],
        nice: v[1],
        system: v[2],
        idle: v[3],
        iowait: v[4],
        irq: v[5],
        softirq: v[6],
        steal: v[7],
    })
}

pub fn read_stat() -> Result<Stat> {
    let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    parse_stat(&text).context("/proc/stat has no usable `cpu` line")
}

/// Ticks per second of /proc/stat and /proc/PID/stat.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// utime (field 14) of /proc/PID/stat, in ticks.
pub fn parse_pid_utime(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    // rest starts at field 3 (state); utime is field 14.
    rest.split_whitespace().nth(11)?.parse().ok()
}

/// A PM QoS request for zero wake-up latency, held while the value lives: the kernel's idle loop
/// then polls instead of halting the vCPU (cpuidle keeps to its POLL state), so an idle vCPU
/// answers a wake-up at once and without a task of ours competing for it. This is what
/// latency-tuned hosts use (tuned's latency-performance profile holds the same request).
pub struct IdlePoll {
    _fd: std::fs::File,
}

impl IdlePoll {
    pub fn hold() -> Result<IdlePoll> {
        use std::io::Write;
        let path = "/dev/cpu_dma_latency";
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| {
                format!(
                    "cannot open {path} (needs root and CONFIG_CPU_IDLE); \
                     use --keep-awake spin or none"
                )
            })?;
        // The request is a binary 32-bit latency bound in microseconds.
        f.write_all(&0i32.to_ne_bytes())
            .with_context(|| format!("cannot write a PM QoS request to {path}"))?;
        Ok(IdlePoll { _fd: f })
    }
}

/// One SCHED_IDLE busy loop per CPU, each pinned to its CPU: the `__spin` mode of this binary.
///
/// SCHED_IDLE alone does not make a loop yield to every other task. With autogroup (on in
/// this kernel, `kernel.sched_autogroup_enabled`), every session is a task group of its own,
/// and the scheduler first shares a CPU between groups at their full weight: a group whose
/// only runnable task is a SCHED_IDLE loop gets as much of the CPU as a router's session, and
/// does not yield to it on a wake-up. Traced here, a woken router waited up to 18.5 ms for
/// CPU. So the loops also go into a cpu cgroup marked idle (`cpu.idle` = 1), which is
/// SCHED_IDLE for the group as a whole.
pub struct Spinners {
    procs: Vec<Background>,
    /// Why the loops are not in an idle group, if they are not.
    pub not_grouped: Option<String>,
    _group: Option<IdleGroup>,
}

impl Spinners {
    /// No busy loops (`--keep-awake poll` or `none`).
    pub fn none() -> Spinners {
        Spinners {
            procs: Vec::new(),
            not_grouped: None,
            _group: None,
        }
    }

    pub fn start(exe: &Path, cpus: usize) -> Result<Spinners> {
        let mut procs = Vec::new();
        for cpu in 0..cpus {
            let mut cmd = Command::new(exe);
            cmd.args(["__spin", "--cpu", &cpu.to_string()]);
            procs.push(Background::start(cmd, None)?);
        }
        let (group, not_grouped) = match IdleGroup::create().and_then(|g| {
            for p in &procs {
                g.add(p.pid())?;
            }
            Ok(g)
        }) {
            Ok(g) => (Some(g), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let spinners = Spinners {
            procs,
            not_grouped,
            _group: group,
        };
        // Each sets its own policy first thing; check that it took.
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in &spinners.procs {
            loop {
                // SAFETY: sched_getscheduler only reads the scheduling policy of a pid.
                let policy = unsafe { libc::sched_getscheduler(p.pid()) };
                if policy == libc::SCHED_IDLE {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "busy loop {} did not switch to SCHED_IDLE (policy {policy})",
                        p.pid()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(spinners)
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn pause(&self) {
        for p in &self.procs {
            p.signal(Signal::SIGSTOP);
        }
    }

    pub fn resume(&self) {
        for p in &self.procs {
            p.signal(Signal::SIGCONT);
        }
    }

    /// Sum of the busy loops' user time, in ticks.
    pub fn user_ticks(&self) -> Result<u64> {
        let mut sum = 0;
        for p in &self.procs {
            let path = format!("/proc/{}/stat", p.pid());
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
            sum += parse_pid_utime(&text).with_context(|| format!("no utime in {path}"))?;
        }
        Ok(sum)
    }
}

/// A cpu cgroup with `cpu.idle` = 1, below our own cgroup in the hierarchy that has the cpu
/// controller (cgroup v1 or v2). Removed when dropped; one left behind by a killed run is
/// reused.
struct IdleGroup {
    dir: PathBuf,
}

impl IdleGroup {
    const NAME: &'static str = "slim-bench-busy-loops";

    fn create() -> Result<IdleGroup> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read /proc/self/mountinfo")?;
        let cgroups = std::fs::read_to_string("/proc/self/cgroup")
            .context("cannot read /proc/self/cgroup")?;
        let parent = cpu_cgroup_dir(&mountinfo, &cgroups, |root| {
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default()
        })
        .context("no cgroup hierarchy with the cpu controller is mounted")?;
        let dir = parent.join(Self::NAME);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create cgroup {}", dir.display()))
            }
        }
        let group = IdleGroup { dir };
        let idle = group.dir.join("cpu.idle");
        std::fs::write(&idle, "1").with_context(|| {
            format!(
                "cannot write 1 to {} (cpu.idle needs Linux 5.15 or later)",
                idle.display()
            )
        })?;
        Ok(group)
    }

    fn add(&self, pid: i32) -> Result<()> {
        let procs = self.dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .with_context(|| format!("cannot move busy loop {pid} into {}", procs.display()))
    }
}

impl Drop for IdleGroup {
    fn drop(&mut self) {
        // The loops are killed and reaped before this runs (fields drop in order), so the
        // group is empty; if not, it stays and the next run reuses it.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The directory of our own cgroup in the hierarchy that has the cpu controller: a cgroup v1
/// mount with the `cpu` option, or else the v2 mount if its root lists `cpu` among its
/// controllers (`v2_controllers` reads that list, given the mount point).
fn cpu_cgroup_dir(
    mountinfo: &str,
    self_cgroup: &str,
    v2_controllers: impl Fn(&Path) -> String,
) -> Option<PathBuf> {
    let mut v2_mount = None;
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or("");
        let super_opts = right.nth(1).unwrap_or("");
        if fstype == "cgroup" && super_opts.split(',').any(|o| o == "cpu") {
            let own = self_cgroup.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                ctrls.split(',').any(|c| c == "cpu").then_some(path)
            })?;
            return Some(Path::new(mount_point).join(own.trim_start_matches('/')));
        }
        if fstype == "cgroup2" && v2_mount.is_none() {
            v2_mount = Some(PathBuf::from(mount_point));
        }
    }
    let root = v2_mount?;
    if !v2_controllers(&root).split_whitespace().any(|c| c == "cpu") {
        return None;
    }
    let own = self_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root.join(own.trim_start_matches('/')))
}

/// The body of a busy loop (`slim-bench __spin --cpu N`): pin to the CPU, lower the policy to
/// SCHED_IDLE (runs only when the CPU has nothing else; preempted at once on any wakeup) and
/// spin. No PAUSE instruction: on a VM, pause loops make the hypervisor deschedule the vCPU,
/// the very thing the loop is there to prevent.
pub fn spin(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("CPU number out of range")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("cannot pin the busy loop to CPU {cpu}"))?;
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: param is a valid sched_param for the duration of the call; pid 0 is ourselves.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        bail!(
            "sched_setscheduler(SCHED_IDLE): {}",
            std::io::Error::last_os_error()
        );
    }
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// CPU use over `window`, in percent of one CPU (busy including steal, i.e. anything that
/// kept a CPU from us).
pub fn busy_pct(window: Duration) -> Result<f64> {
    let a = read_stat()?;
    let t = Instant::now();
    std::thread::sleep(window);
    let b = read_stat()?;
    let secs = t.elapsed().as_secs_f64();
    let ticks = (b.work() + b.steal).saturating_sub(a.work() + a.steal) as f64;
    Ok(ticks / clk_tck() / secs * 100.0)
}

/// The outcome of a load check.
pub struct Quiet {
    /// Busy percent of one CPU in the last sample.
    pub pct: f64,
    pub quiet: bool,
    pub waited: Duration,
}

/// Checks that the machine is idle apart from us: with the busy loops stopped, samples the CPU
/// use for `window`; while it is above `max_pct` (of one CPU), sleeps and samples again, up
/// to `max_wait`.
pub fn wait_quiet(
    spinners: &Spinners,
    max_pct: f64,
    window: Duration,
    max_wait: Duration,
) -> Result<Quiet> {
    let start = Instant::now();
    spinners.pause();
    // Let the stop land before sampling.
    std::thread::sleep(Duration::from_millis(20));
    let result = (|| loop {
        let pct = busy_pct(window)?;
        let waited = start.elapsed();
        if pct <= max_pct || waited >= max_wait {
            return Ok(Quiet {
                pct,
                quiet: pct <= max_pct,
                waited,
            });
        }
        std::thread::sleep(Duration::from_millis(700).min(max_wait - waited));
    })();
    spinners.resume();
    result
}

/// A point in time for CPU accounting.
#[derive(Clone, Copy)]
pub struct Mark {
    stat: Stat,
    spin_user: u64,
}

pub fn mark(spinners: &Spinners) -> Result<Mark> {
    Ok(Mark {
        spin_user: spinners.user_ticks()?,
        stat: read_stat()?,
    })
}

/// CPU-seconds the machine worked between two marks, the busy loops' spinning excluded.
pub fn work_secs(a: &Mark, b: &Mark) -> f64 {
    let work = b.stat.work().saturating_sub(a.stat.work());
    let spin = b.spin_user.saturating_sub(a.spin_user);
    work.saturating_sub(spin) as f64 / clk_tck()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_v1_cpu_hierarchy() {
        let own = "2:cpuacct:/\n1:cpu:/lab/bench\n0::/\n";
        let dir = cpu_cgroup_dir(MOUNTINFO_V1, own, |_| "cpu".into());
        assert_eq!(dir, Some(PathBuf::from("/sys/fs/cgroup/cpu/lab/bench")));
        // cpu and cpuacct co-mounted, as systemd does.
        let info = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let dir = cpu_cgroup_dir(info, "3:cpu,cpuacct:/\n", |_| String::new());
        assert_eq!(dir, Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
    }

    #[test]
    fn finds_the_v2_hierarchy_only_with_the_cpu_controller() {
        let info = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let own = "0::/user.slice/session-3.scope\n";
        let dir = cpu_cgroup_dir(info, own, |_| "cpuset cpu io memory pids".into());
        assert_eq!(
            dir,
            Some(PathBuf::from("/sys/fs/cgroup/user.slice/session-3.scope"))
        );
        assert_eq!(cpu_cgroup_dir(info, own, |_| "memory pids".into()), None);
        // The v1 cpu hierarchy wins over a v2 mount without cpu (this machine).
        let dir = cpu_cgroup_dir(MOUNTINFO_V1, "1:cpu:/\n0::/\n", |_| "hugetlb".into());
        assert_eq!(dir, Some(PathBuf::from("/sys/fs/cgroup/cpu")));
    }

    #[test]
    fn parses_proc_stat() {
        let s = parse_stat("cpu  10 1 20 300 4 5 6 7 0 0\ncpu0 5 0 10 150 2 2 3 3 0 0\nintr 1 2\n")
            .unwrap();
        assert_eq!(s.user, 10);
        assert_eq!(s.steal, 7);
        assert_eq!(s.work(), 10 + 1 + 20 + 5 + 6);
        assert!(parse_stat("cpu0 1 2 3\n").is_none());
    }

    #[test]
    fn parses_pid_utime() {
        let line = "1234 (a (b) c) R 1 1234 1234 0 -1 4194560 100 0 0 0 4321 17 0 0 20 0 1 0";
        assert_eq!(parse_pid_utime(line), Some(4321));
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_pid_utime(&own).is_some());
    }

    #[test]
    fn work_secs_subtracts_spinning() {
        let a = Mark {
            stat: Stat::default(),
            spin_user: 100,
        };
        let mut stat = Stat {
            user: 250,
            softirq: 50,
            steal: 1000,
            ..Stat::default()
        };
        stat.system = 100;
        let b = Mark {
            stat,
            spin_user: 300,
        };
        // 400 ticks of work, 200 of them spinning.
        assert!((work_secs(&a, &b) - 200.0 / clk_tck()).abs() < 1e-9);
    }
}
