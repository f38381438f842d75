//! The preload's own cost: instructions per intercepted call that is not about an overlay
//! socket, counted by callgrind (deterministic, unlike time on a shared VM) with and without
//! the library.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::json::Json;
use crate::parse;
use crate::procs;

pub const CALLS: [&str; 3] = ["close", "fcntl", "setsockopt"];
pub const LIMIT: f64 = 100.0;

pub struct CallCost {
    pub call: &'static str,
    pub without: f64,
    pub with: f64,
}

impl CallCost {
    pub fn overhead(&self) -> f64 {
        self.with - self.without
    }

    pub fn json(&self, n: u64) -> Json {
        Json::obj()
            .with("overhead", self.overhead())
            .with("without_preload", self.without)
            .with("with_preload", self.with)
            .with("unit", "instructions/call")
            .with("higher_is_better", false)
            .with("limit", LIMIT)
            .with("ok", self.overhead() <= LIMIT)
            .with("calls_counted", n)
    }
}

pub fn what(call: &str) -> &'static str {
    match call {
        "close" => "close() of a regular file",
        "fcntl" => "fcntl(F_GETFL) of a pipe",
        _ => "setsockopt(SO_RCVBUF) of a UDP socket",
    }
}

/// Instructions per call of `slim-callcost CALL n`, counted inside its loop only.
fn per_call(
    callcost: &Path,
    call: &str,
    n: u64,
    preload: Option<&Path>,
    dir: &Path,
) -> Result<f64> {
    let out = dir.join(format!(
        "callgrind.{call}.{}",
        if preload.is_some() { "with" } else { "without" }
    ));
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=slim_callcost_loop",
    ])
    .arg(format!("--callgrind-out-file={}", out.display()))
    .arg(callcost)
    .args([call, &n.to_string()]);
    cmd.env_remove("LD_PRELOAD");
    if let Some(lib) = preload {
        cmd.env("LD_PRELOAD", lib);
        // No router: these calls must not need one. The path does not exist.
        cmd.env("SLIM_ROUTER_SOCKET", dir.join("no-router.sock"));
        cmd.env("SLIM_PREFIXES", "10.32.0.0/12,fd00:32::/64");
    }
    let f = procs::run(cmd, Duration::from_secs(300))?;
    if !f.status.success() {
        bail!("callgrind run failed: {}", f.report());
    }
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("cannot read {}", out.display()))?;
    let total =
        parse::callgrind_total(&text).with_context(|| format!("no totals in {}", out.display()))?;
    Ok(total / n as f64)
}

pub fn measure(callcost: &Path, preload: &Path, n: u64, dir: &Path) -> Result<Vec<CallCost>> {
    let preload = std::fs::canonicalize(preload)
        .with_context(|| format!("no preload library at {}", preload.display()))?;
    CALLS
        .iter()
        .map(|call| {
            Ok(CallCost {
                call,
                without: per_call(callcost, call, n, None, dir)?,
                with: per_call(callcost, call, n, Some(&preload), dir)?,
            })
        })
        .collect()
}
