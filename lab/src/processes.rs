//! Finding and stopping the processes that live in the lab's namespaces.

use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::ip;

const POLL: Duration = Duration::from_millis(20);

/// True while the process exists and is not a zombie (a zombie no longer holds sockets or
/// namespaces; it only waits for a parent that may never reap it).
pub fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name, which may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The process's command line with NULs turned into spaces, or empty if it is gone.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

/// Pids of every process whose network namespace is `netns` (per `ip netns pids`). A stale or
/// half-made namespace file yields none rather than an error: teardown must go on.
pub fn netns_pids(netns: &str) -> Vec<u32> {
    ip::run(&["netns", "pids", netns])
        .map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGTERM, then SIGKILL whatever is still running after `grace`. Never signals this process.
pub fn terminate(pids: &[u32], grace: Duration) {
    let me = std::process::id();
    let mut pids: Vec<u32> = pids.iter().copied().filter(|&p| p != me).collect();
    pids.sort_unstable();
    pids.dedup();
    signal_all(&pids, Signal::SIGTERM);
    if wait_gone(&pids, grace) {
        return;
    }
    signal_all(&pids, Signal::SIGKILL);
    // SIGKILL cannot be refused, but exit takes a moment to release sockets and namespaces.
    wait_gone(&pids, Duration::from_secs(2));
}

fn signal_all(pids: &[u32], signal: Signal) {
    for &pid in pids {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        // ESRCH just means it is already gone.
        let _ = kill(Pid::from_raw(raw), signal);
    }
}

fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|&p| !is_running(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_running() {
        assert!(is_running(std::process::id()));
        assert!(!cmdline(std::process::id()).is_empty());
    }
}
