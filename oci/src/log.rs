//! Where slim-oci's lines go. stdout is never written: during `create` it may be the
//! container's own. A line goes to:
//! - syslog (`/dev/log`, read by journald or rsyslog), when the host has one;
//! - slim-oci's own log file, if its config names one;
//! - warnings also to the runtime's log (`--log FILE`, in its `--log-format`), which containerd
//!   and CRI-O pass and show when a start fails; without `--log` (podman 4.3: conmon passes none),
//!   to stderr, which conmon relays to podman's terminal and never into the container's log.
//!
//! This is not a `tracing` subscriber: each sink has its own format (the runtime's log is JSON
//! or logrus text, syslog has a header) and a failed write must change nothing, so the sinks are
//! written directly.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

const SYSLOG_SOCKET: &str = "/dev/log";
const TAG: &str = "slim-oci";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
        }
    }

    /// Facility daemon (3) * 8 + severity (info 6, warning 4).
    fn syslog_priority(self) -> u8 {
        match self {
            Level::Info => 3 * 8 + 6,
            Level::Warning => 3 * 8 + 4,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Log {
    pub runtime_log: Option<PathBuf>,
    pub runtime_log_json: bool,
    pub own_log: Option<PathBuf>,
    /// Off in tests that would otherwise write to the test's stderr.
    pub stderr: bool,
    pub syslog: bool,
}

impl Log {
    pub fn info(&self, msg: &str) {
        self.line(Level::Info, msg);
    }

    pub fn warn(&self, msg: &str) {
        self.line(Level::Warning, msg);
    }

    fn line(&self, level: Level, msg: &str) {
        let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let pid = std::process::id();
        if self.syslog {
            let _ = send_syslog(&format!("<{}>{TAG}[{pid}]: {msg}", level.syslog_priority()));
        }
        if let Some(path) = &self.own_log {
            append(
                path,
                &format!("{now} {TAG}[{pid}] {}: {msg}\n", level.name()),
            );
        }
        if level == Level::Info {
            return;
        }
        match &self.runtime_log {
            Some(path) => append(path, &runtime_line(self.runtime_log_json, &now, level, msg)),
            None if self.stderr => {
                let _ = writeln!(std::io::stderr(), "{TAG}: {msg}");
            }
            None => {}
        }
    }
}

/// A line in the runtime's log format: runc and crun write JSON objects with `level`, `msg`
/// and `time`, or logrus text (`time="..." level=warning msg="..."`).
fn runtime_line(json: bool, now: &str, level: Level, msg: &str) -> String {
    let msg = format!("{TAG}: {msg}");
    if json {
        let obj = serde_json::json!({"level": level.name(), "msg": msg, "time": now});
        format!("{obj}\n")
    } else {
        // A JSON string is a valid logrus quoted value.
        let quoted = serde_json::Value::String(msg).to_string();
        format!("time=\"{now}\" level={} msg={quoted}\n", level.name())
    }
}

fn append(path: &Path, text: &str) {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    if let Ok(mut f) = f {
        let _ = f.write_all(text.as_bytes());
    }
}

fn send_syslog(line: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.send_to(line.as_bytes(), SYSLOG_SOCKET)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_reach_both_files_info_only_our_own() {
        let dir = std::env::temp_dir().join(format!("slim-oci-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = Log {
            runtime_log: Some(dir.join("log.json")),
            runtime_log_json: true,
            own_log: Some(dir.join("oci.log")),
            stderr: false,
            syslog: false,
        };
        log.info("injected");
        log.warn("no \"router\"");
        let own = std::fs::read_to_string(dir.join("oci.log")).unwrap();
        assert_eq!(own.lines().count(), 2);
        assert!(own
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("warning: no \"router\""));
        let rt = std::fs::read_to_string(dir.join("log.json")).unwrap();
        assert_eq!(rt.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(rt.trim()).unwrap();
        assert_eq!(v["level"], "warning");
        assert_eq!(v["msg"], "slim-oci: no \"router\"");
        let text = runtime_line(false, "T", Level::Warning, "a \"b\"");
        assert_eq!(
            text,
            "time=\"T\" level=warning msg=\"slim-oci: a \\\"b\\\"\"\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
