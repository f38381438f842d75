//! The router as a service, on the lab: a configuration file (and `--check-config`), a watched
//! peers file that adds and removes h2, `slim-router status` (for root in the host's namespace
//! only, never for a container) and the Prometheus metrics listener. h1's lab router is replaced
//! by one started from a configuration file for the test, and restored afterwards.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const C2: &str = "10.32.0.2";
const MB: u64 = 1 << 20;
const PORT: u16 = 7301;
const METRICS: &str = "127.0.0.1:19788";
const H2_PEER: &str = "192.168.77.2:7788";

/// The test's own router on h1, killed (by its pid) when dropped; then the lab's router of h1
/// comes back.
struct OwnRouter {
    child: Option<Child>,
    log: PathBuf,
}

impl Drop for OwnRouter {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling the router process this test started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        let _ = Command::new(lab_bin())
            .args(["router", "h1", "start"])
            .output();
    }
}

impl OwnRouter {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn in_h1(args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", "slim-h1"])
        .args(args)
        .output()
        .expect("run ip netns exec")
}

fn router_cmd(args: &[&str]) -> Output {
    let bin = bin("slim-router").display().to_string();
    let mut full = vec![bin.as_str()];
    full.extend_from_slice(args);
    in_h1(&full)
}

/// Replaces the peers file the way editors and `mv` do: write a new file, rename it over.
fn write_peers(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn status_json() -> Option<serde_json::Value> {
    let o = router_cmd(&["status", "--socket", "/run/slim-lab/h1.sock", "--json"]);
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

fn h2_connected(s: &serde_json::Value) -> bool {
    s["peers"].as_array().is_some_and(|ps| {
        ps.iter()
            .any(|p| p["addr"] == H2_PEER && p["connected"] == true)
    })
}

fn h2_listener(s: &serde_json::Value) -> bool {
    s["listeners"].as_array().is_some_and(|ls| {
        ls.iter().any(|l| {
            l["overlay"] == format!("{C2}:{PORT}").as_str() && l["origin"] == "192.168.77.2"
        })
    })
}

/// Bytes the VXLAN device carried while c1 sent a megabyte to c2 under Slim.
fn overlay_bytes_of_a_megabyte() -> u64 {
    let before = bytes("h1", "slim-vx");
    let o = run(
        "c1",
        true,
        &[
            &testprog(),
            "client",
            C2,
            &PORT.to_string(),
            "--bytes",
            "1000000",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    bytes("h1", "slim-vx") - before
}

/// GET `path` from the metrics listener (inside h1: it listens on h1's loopback).
fn scrape(path: &str) -> (u16, String) {
    let script = format!(
        "import urllib.request, urllib.error\n\
         try:\n    r = urllib.request.urlopen('http://{METRICS}{path}', timeout=10)\n    print(r.status); print(r.read().decode(), end='')\n\
         except urllib.error.HTTPError as e:\n    print(e.code)\n"
    );
    let o = in_h1(&["python3", "-c", &script]);
    assert!(o.status.success(), "scrape failed: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (code, body) = out.split_once('\n').unwrap_or((&out, ""));
    (code.trim().parse().unwrap(), body.to_string())
}

/// Parses OpenMetrics text: `# TYPE/HELP/UNIT` lines, samples `name{labels} value`, `# EOF` last.
/// Returns the samples as (name with labels, value).
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "no # EOF:\n{text}");
    let mut out = Vec::new();
    for l in &lines[..lines.len() - 1] {
        if let Some(rest) = l.strip_prefix("# ") {
            let word = rest.split(' ').next().unwrap();
            assert!(
                ["TYPE", "HELP", "UNIT"].contains(&word),
                "bad comment line {l:?}"
            );
            continue;
        }
        let (name, value) = l.rsplit_once(' ').expect("sample line");
        let bare = name.split('{').next().unwrap();
        assert!(
            bare.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {l:?}"
        );
        if let Some(labels) = name.strip_prefix(bare) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {l:?}"
            );
        }
        out.push((name.to_string(), value.parse().expect("numeric value")));
    }
    out
}

#[test]
fn config_file_peers_file_status_and_metrics() {
    let _g = lab();
    let secure = fs::read_to_string("/run/slim-lab/mode").is_ok_and(|m| m.trim() == "secure");
    let dir = PathBuf::from(format!("/run/slim-lab/service-test-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let peers = dir.join("peers");
    let config = dir.join("router.toml");
    fs::write(&peers, "# h2 joins later\n").unwrap();
    fs::write(
        &config,
        format!(
            "host_addrs = [\"192.168.77.1\"]\n\
             prefixes = [\"10.32.0.0/12\", \"fd00:32::/64\"]\n\
             socket = \"/run/slim-lab/h1.sock\"\n\
             cluster_key = \"/run/slim-lab/cluster.key\"\n\
             peers_file = \"{}\"\n\
             metrics_listen = \"{METRICS}\"\n\
             secure = {secure}\n\
             log_level = \"info\"\n",
            peers.display()
        ),
    )
    .unwrap();
    let cfg = config.display().to_string();

    // --check-config: a valid file is printed back; a typo is named; a missing file is named.
    let o = router_cmd(&["--check-config", "--config", &cfg]);
    assert!(o.status.success(), "{}", text(&o));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(
        printed.contains(&format!("peers_file = \"{}\"", peers.display()))
            && printed.contains("metrics_listen = \"127.0.0.1:19788\""),
        "{printed}"
    );
    // A malformed peers line fails the check (the running router skips it, below).
    fs::write(&peers, "# h2 joins later\nnot-a-peer\n").unwrap();
    let o = router_cmd(&["--check-config", "--config", &cfg]);
    assert!(
        !o.status.success() && text(&o).contains(&format!("{}:2:", peers.display())),
        "{}",
        text(&o)
    );
    let typo = dir.join("typo.toml");
    fs::write(
        &typo,
        "host_addrs = [\"192.168.77.1\"]\npeer_file = \"/x\"\n",
    )
    .unwrap();
    let o = router_cmd(&["--check-config", "--config", &typo.display().to_string()]);
    assert!(
        !o.status.success() && text(&o).contains("peer_file"),
        "{}",
        text(&o)
    );
    let o = router_cmd(&["--check-config", "--config", "/nonexistent/router.toml"]);
    assert!(
        !o.status.success() && text(&o).contains("/nonexistent/router.toml"),
        "{}",
        text(&o)
    );
    // A flag wins over the file: an address that is not h1's is refused.
    let o = router_cmd(&[
        "--check-config",
        "--config",
        &cfg,
        "--host-addr",
        "192.168.77.9",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("not an address of this host"),
        "{}",
        text(&o)
    );

    // h1's router, now from the configuration file.
    lab_cmd(&["router", "h1", "stop"]);
    let log = dir.join("h1.log");
    let child = Command::new("ip")
        .args(["netns", "exec", "slim-h1"])
        .arg(bin("slim-router"))
        .args(["--config", &cfg])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start slim-router");
    let r = OwnRouter {
        child: Some(child),
        log,
    };
    assert!(
        eventually(Duration::from_secs(10), || status_json().is_some()),
        "the router never answered status:\n{}",
        r.log()
    );
    assert!(
        eventually(Duration::from_secs(5), || r.log().contains(&format!(
            "{}:2: `not-a-peer` is not a peer address",
            peers.display()
        ))),
        "the malformed line is not reported with file:line:\n{}",
        r.log()
    );

    // h2 is not listed: its router's connections are refused, and its listeners stay unknown.
    let _server = {
        let tp = testprog();
        let p = PORT.to_string();
        let bg = spawn("c2", true, &[tp.as_str(), "serve", p.as_str()]);
        assert!(bg.first_line.starts_with("LISTENING"), "{}", bg.first_line);
        bg
    };
    assert!(
        eventually(Duration::from_secs(10), || status_json()
            .is_some_and(|s| s["counters"]["peer_connections_refused"]
                .as_u64()
                > Some(0))),
        "h2's router was not refused:\n{}",
        r.log()
    );
    let s = status_json().unwrap();
    assert!(!h2_connected(&s) && !h2_listener(&s), "{s:#}");
    if !secure {
        assert!(
            overlay_bytes_of_a_megabyte() >= MB / 2,
            "without h2 as a peer the connection must take the overlay"
        );
    }

    // h2 joins: dialled, sealed, its listener learnt, and Slim connections bypass the overlay.
    write_peers(&peers, &format!("# the cluster\n{H2_PEER}\n"));
    assert!(
        eventually(Duration::from_secs(15), || status_json()
            .is_some_and(|s| h2_connected(&s) && h2_listener(&s))),
        "h2 did not join:\n{:#}\n{}",
        status_json().unwrap_or_default(),
        r.log()
    );
    let s = status_json().unwrap();
    assert_eq!(s["sealed"], true, "{s:#}");
    assert!(
        s["peers"][0]["sealed"] == true && s["peers"][0]["source"] == "file",
        "{s:#}"
    );
    assert!(
        eventually(Duration::from_secs(20), || overlay_bytes_of_a_megabyte()
            < MB / 4),
        "Slim connections still cross the overlay after h2 joined"
    );
    let o = router_cmd(&["status", "--socket", "/run/slim-lab/h1.sock"]);
    let human = text(&o);
    assert!(o.status.success(), "{human}");
    assert!(
        human
            .lines()
            .any(|l| l.contains(H2_PEER) && l.contains("connected")),
        "{human}"
    );
    assert!(human.contains("peer channel sealed"), "{human}");
    assert!(
        human.contains(&format!("{C2}:{PORT}")) && human.contains("counters:"),
        "{human}"
    );

    // A container (root, but in its own network namespace) is refused the status.
    let o = run(
        "c1",
        false,
        &[
            &bin("slim-router").display().to_string(),
            "status",
            "--socket",
            "/run/slim-lab/h1.sock",
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("administrators"),
        "a container got the status:\n{}",
        text(&o)
    );

    // Metrics: well-formed exposition, h2 up, connections counted; only /metrics is served.
    let (code, body) = scrape("/metrics");
    assert_eq!(code, 200, "{body}");
    let samples = parse_exposition(&body);
    let get = |name: &str| {
        samples
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
    };
    assert_eq!(get(&format!("slim_peer_up{{peer=\"{H2_PEER}\"}}")), 1.0);
    assert_eq!(get("slim_peer_channel_sealed"), 1.0);
    assert!(get("slim_peer_connections") >= 1.0);
    assert!(get("slim_listeners{origin=\"peer\"}") >= 1.0);
    assert!(get("slim_peer_connections_refused_total") >= 1.0);
    assert!(body.contains("slim_connections_total ") && body.contains("slim_fallbacks_total "));
    assert!(body.contains("slim_sealed_frames_refused_total{kind=\"foreign\"}"));
    assert_eq!(scrape("/other").0, 404);

    // h2 leaves: disconnected, its listeners withdrawn, connections back on the overlay.
    write_peers(&peers, "# h2 left\n");
    assert!(
        eventually(Duration::from_secs(15), || status_json().is_some_and(
            |s| !h2_connected(&s)
                && !h2_listener(&s)
                && s["connections"].as_array().is_some_and(|c| c.is_empty())
        )),
        "h2's listeners were not withdrawn:\n{:#}\n{}",
        status_json().unwrap_or_default(),
        r.log()
    );
    assert!(
        r.log().contains("peer removed from the peers file"),
        "{}",
        r.log()
    );
    if !secure {
        assert!(
            overlay_bytes_of_a_megabyte() >= MB / 2,
            "after h2 left, connections must take the overlay"
        );
    }
    assert!(
        !r.log().contains('\x1b'),
        "colour codes in a log written to a file:\n{}",
        r.log()
    );
    let before = fs::metadata("/run/slim-lab/h1.log").map_or(0, |m| m.len() as usize);
    drop(r);
    // The lab's own router of h1 is back, and what it logged to its file has no colour codes.
    let lab_log = fs::read("/run/slim-lab/h1.log").unwrap_or_default();
    let new = &lab_log[before.min(lab_log.len())..];
    assert!(
        String::from_utf8_lossy(new).contains("ready"),
        "the lab's router of h1 did not come back"
    );
    assert!(!new.contains(&0x1b), "colour codes in /run/slim-lab/h1.log");
    let _ = fs::remove_dir_all(&dir);
}
