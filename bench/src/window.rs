//! The CPU window around one client run (`cpu_s_per_gb`, `cpu_us_per_conn`): whole-machine
//! busy time from just before the client program starts to just after it ends.
//!
//! On this machine the window is opened and closed by the benchmark around `slim-lab exec`,
//! which costs next to nothing. In a podman container the client starts through `podman exec`
//! (podman, conmon, crun: tens of CPU-milliseconds before and after the program), which that
//! window would count. There the program is run by a small `sh` in the container that reports
//! over a FIFO in the container's /tmp (made by the benchmark through the container's root,
//! `/proc/PID/root`): `s` once it is about to start the program, `e` once the program has
//! ended. The benchmark takes its marks on those lines, so the window holds the program's run
//! and not podman's start-up and tear-down: the figures keep their meaning.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::cpu::{self, Mark};
use crate::lab::Mode;
use crate::procs::{self, Finished};
use crate::workloads::Ctx;

/// Runs the mode's client with `argv` and returns what it printed and the CPU marks taken
/// right before and right after the program itself.
pub fn run_client_marked(ctx: &Ctx, mode: &Mode, argv: &[&str]) -> Result<(Finished, Mark, Mark)> {
    let Some(root) = ctx.lab.container_root(mode.client) else {
        let before = cpu::mark(ctx.spinners)?;
        let f = procs::run(ctx.lab.client(mode, argv), ctx.timeout())?;
        let after = cpu::mark(ctx.spinners)?;
        return Ok((f, before, after));
    };
    let inside = format!("/tmp/slim-bench-{}-cpu.fifo", std::process::id());
    let host: PathBuf = root.join(inside.trim_start_matches('/'));
    let _ = std::fs::remove_file(&host);
    nix::unistd::mkfifo(&host, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .with_context(|| format!("cannot make the FIFO {}", host.display()))?;
    let script = "exec 3>\"$1\"; shift; echo s >&3; \"$@\"; rc=$?; echo e >&3; exit $rc";
    let mut wrapped: Vec<&str> = vec!["sh", "-c", script, "sh", &inside];
    wrapped.extend(argv);
    let cmd = ctx.lab.client(mode, &wrapped);
    let result = std::thread::scope(|scope| {
        let reader = scope.spawn(|| marks_from(&host, ctx.spinners));
        let finished = procs::run(cmd, ctx.timeout());
        if !reader.is_finished() {
            // The wrapper never opened the FIFO (podman exec failed): unblock our open.
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&host);
        }
        let marks = reader
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the FIFO reader panicked")));
        (finished, marks)
    });
    let _ = std::fs::remove_file(&host);
    let (finished, marks) = result;
    let finished = finished?;
    match marks {
        Ok((before, after)) => Ok((finished, before, after)),
        Err(e) => bail!("{e:#}: {}", finished.report()),
    }
}

/// Reads `s` and `e` from the FIFO and takes a mark on each.
fn marks_from(fifo: &PathBuf, spinners: &cpu::Spinners) -> Result<(Mark, Mark)> {
    let file = File::open(fifo).with_context(|| format!("cannot open {}", fifo.display()))?;
    let mut lines = BufReader::new(file);
    let mut line = String::new();
    lines.read_line(&mut line)?;
    if line != "s\n" {
        bail!("the client's wrapper did not start (FIFO said {line:?})");
    }
    let before = cpu::mark(spinners)?;
    line.clear();
    lines.read_line(&mut line)?;
    if line != "e\n" {
        bail!("the client's wrapper did not finish (FIFO said {line:?})");
    }
    let after = cpu::mark(spinners)?;
    Ok((before, after))
}
