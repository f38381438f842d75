//! `--peers-file`: the peers listed in a file, one `ADDR:PORT` per line, kept in step with it.
//!
//! The file is re-read every second and its peers compared with the last good reading. Polling,
//! not inotify: the ways operators change such a file all replace it rather than write it in
//! place (an editor's save-and-rename, `mv`, a Kubernetes ConfigMap or Secret volume whose
//! `..data` symlink is swapped to a new directory), and an inotify watch on the file stays on
//! the old inode while one on the directory sees only the symlink swap; a re-read follows every
//! one of them, costs one small read a second, and needs no crate. A peer that joins is dialled
//! within a second or so; one that leaves is dropped as quickly.

use crate::router::Router;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub peers: BTreeSet<SocketAddr>,
    pub errors: Vec<LineError>,
}

/// One `ADDR:PORT` per line (IPv6 as `[ADDR]:PORT`); `#` starts a comment; blank lines skipped.
/// A malformed line is reported and skipped: the others still count.
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match line.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => {
                out.peers.insert(a);
            }
            _ => out.errors.push(LineError {
                line: i + 1,
                message: format!(
                    "`{line}` is not a peer address such as 192.168.1.12:7788 or [fd00::12]:7788"
                ),
            }),
        }
    }
    out
}

/// Watches `path` and tells the router which peers it lists whenever that changes (the first
/// reading included). A missing or unreadable file lists no peers, and says so once.
pub fn watch(router: Arc<Router>, path: PathBuf) {
    tokio::spawn(async move {
        let mut last_text: Option<String> = None;
        let mut missing_reported = false;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // A small local file: read in place (an `fs` feature of tokio for one read is not worth it).
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => {
                    missing_reported = false;
                    t
                }
                Err(e) => {
                    if !missing_reported {
                        tracing::warn!(file = %path.display(), error = %e, "cannot read the peers file; no peers from it until it can be read");
                        missing_reported = true;
                    }
                    String::new()
                }
            };
            if last_text.as_deref() == Some(text.as_str()) {
                continue;
            }
            let parsed = parse(&text);
            for e in &parsed.errors {
                tracing::warn!("{}:{}: {}; line skipped", path.display(), e.line, e.message);
            }
            tracing::info!(file = %path.display(), peers = ?parsed.peers, "peers file read");
            crate::peers::set_file_peers(&router, parsed.peers);
            last_text = Some(text);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_blanks_and_errors() {
        let p = parse(
            "# the cluster\n\n192.168.1.12:7788\n  192.168.1.13:7788   # rack 2\n\
             192.168.1.14\nnot-an-address:1\n[fd00::12]:7788\n0.0.0.0:7788\n192.168.1.12:7788\n",
        );
        let want: BTreeSet<SocketAddr> =
            ["192.168.1.12:7788", "192.168.1.13:7788", "[fd00::12]:7788"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
        assert_eq!(p.peers, want);
        let lines: Vec<usize> = p.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![5, 6, 8]);
        assert!(p.errors[0].message.contains("192.168.1.14"));
    }

    #[test]
    fn empty_file_lists_nobody() {
        assert_eq!(parse(""), Parsed::default());
        assert_eq!(parse("# nobody yet\n\n"), Parsed::default());
    }
}
