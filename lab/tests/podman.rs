//! The lab with real OCI containers: `slim-lab up --runtime podman` (podman, crun, CNI bridge
//! with host-local IPAM, the root filesystem of scripts/rootfs/build-rootfs.sh). Checks that the
//! containers are containers, that their addresses come from IPAM, that TCP works over the
//! overlay without Slim and bypasses it with Slim, and that `down` leaves nothing behind.
//!
//! Servers here serve one client and exit (`iperf3 -1`, one `accept`) and run under `timeout`
//! inside the container: killing a `podman exec` client does not stop its command.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use common::podman::{one_shot_server, podman_lab, rootfs, send, wait_listening};
use common::{bytes, lab_bin, lab_cmd, ok, run, text};

const VX: &str = "slim-vx";
const STATE: &str = "/run/slim-lab/containers";
const STORAGE: &str = "/var/lib/slim-lab/podman";

/// One recorded container: name, init pid, id, IPv4, IPv6, podman's namespace file.
struct Recorded {
    pid: u32,
    v4: String,
    v6: String,
}

fn recorded(name: &str) -> Recorded {
    let text = std::fs::read_to_string(STATE).expect("the containers file of a podman lab");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} is not recorded in {STATE}:\n{text}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    Recorded {
        pid: w[1].parse().expect("pid"),
        v4: w[3].to_string(),
        v6: w[4].to_string(),
    }
}

fn addr(node: &str, v6: bool) -> String {
    let mut args = vec!["addr", node];
    if v6 {
        args.push("--v6");
    }
    lab_cmd(&args).trim().to_string()
}

fn ns_inode(path: &str) -> String {
    std::fs::read_link(path)
        .unwrap_or_else(|e| panic!("readlink {path}: {e}"))
        .display()
        .to_string()
}

#[test]
fn containers_have_their_own_namespaces_and_an_overlay_root() {
    let _lab = podman_lab(&[]);
    let h1_net = {
        // The host's network namespace, as a process in it sees it.
        let out = ok("h1", false, &["readlink", "/proc/self/ns/net"]);
        out.trim().to_string()
    };
    for name in ["c1", "c2", "c3"] {
        let r = recorded(name);
        for ns in ["mnt", "pid", "ipc", "uts"] {
            assert_ne!(
                ns_inode(&format!("/proc/{}/ns/{ns}", r.pid)),
                ns_inode(&format!("/proc/self/ns/{ns}")),
                "{name} shares the {ns} namespace of the host"
            );
        }
        let net = ns_inode(&format!("/proc/{}/ns/net", r.pid));
        assert_ne!(net, h1_net, "{name} shares h1's network namespace");
        assert_ne!(net, ns_inode("/proc/self/ns/net"));
        // The init podman started (--init: catatonit, mounted as /run/podman-init) is pid 1 of
        // the container's pid namespace.
        let status = std::fs::read_to_string(format!("/proc/{}/status", r.pid)).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert!(
            nspid.ends_with("\t1"),
            "{name}: init is not pid 1 inside: {nspid}"
        );
        // exec runs inside: the container's hostname, its pid namespace, its root filesystem.
        let inside = ok(
            name,
            false,
            &[
                "sh",
                "-c",
                "hostname; readlink /proc/self/ns/mnt; cat /proc/1/comm",
            ],
        );
        let lines: Vec<&str> = inside.lines().collect();
        assert_eq!(lines[0], name, "{inside}");
        assert_eq!(lines[1], ns_inode(&format!("/proc/{}/ns/mnt", r.pid)));
        assert_eq!(lines[2], "podman-init", "{inside}");
    }
    // The root filesystem is an overlay over the cached tree: writes stay in the container.
    let marker = "/slim-lab-podman-test-marker";
    ok("c1", false, &["touch", marker]);
    ok("c1", false, &["test", "-e", marker]);
    assert!(!Path::new(&format!("{}{marker}", rootfs().display())).exists());
    let o = run("c3", false, &["test", "-e", marker]);
    assert!(!o.status.success(), "c3 sees c1's file");
    // Exit statuses pass through podman exec.
    assert_eq!(
        run("c1", false, &["sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
    assert_eq!(
        run("c1", false, &["no-such-program-here"]).status.code(),
        Some(127)
    );
}

#[test]
fn addresses_come_from_ipam_in_per_host_ranges() {
    let _lab = podman_lab(&[]);
    for (name, host_n) in [("c1", 1), ("c2", 2), ("c3", 1)] {
        let r = recorded(name);
        let v4: IpAddr = addr(name, false).parse().unwrap();
        let v6: IpAddr = addr(name, true).parse().unwrap();
        assert_eq!(v4.to_string(), r.v4);
        assert_eq!(v6.to_string(), r.v6);
        assert!(
            r.v4.starts_with(&format!("10.32.{host_n}.")),
            "{name}: {} is outside h{host_n}'s range 10.32.{host_n}.0/24",
            r.v4
        );
        assert!(
            r.v6.starts_with(&format!("fd00:32::{host_n}:")),
            "{name}: {} is outside h{host_n}'s range",
            r.v6
        );
        // What the container itself has: the same addresses on eth0, and no way out.
        let inside = ok(name, false, &["ip", "-o", "addr", "show", "dev", "eth0"]);
        assert!(inside.contains(&format!("inet {}/12 ", r.v4)), "{inside}");
        assert!(inside.contains(&format!("inet6 {}/64 ", r.v6)), "{inside}");
        let routes = ok(name, false, &["sh", "-c", "ip route; ip -6 route"]);
        assert!(
            !routes.contains("default"),
            "{name} has a default route:\n{routes}"
        );
    }
    assert_ne!(recorded("c1").v4, recorded("c3").v4);
    let nodes = lab_cmd(&["nodes"]);
    assert!(nodes.contains(&recorded("c2").v4), "{nodes}");
    let status = lab_cmd(&["status"]);
    assert!(status.contains("runtime podman"), "{status}");
    // The bridge CNI attached the containers to is the lab's, has no address (isGateway
    // false), and is where the VXLAN device is enslaved.
    let h1 = ok(
        "h1",
        false,
        &[
            "ip", "-o", "addr", "show", "dev", "slim-br", "scope", "global",
        ],
    );
    assert!(h1.trim().is_empty(), "the bridge got an address: {h1}");
    let vx = ok("h1", false, &["ip", "-o", "link", "show", "dev", VX]);
    assert!(vx.contains("master slim-br"), "{vx}");
}

#[test]
fn tcp_over_the_overlay_crosses_vxlan_between_hosts_and_not_on_one_host() {
    let _lab = podman_lab(&[]);
    const N: usize = 2_000_000;
    // c1 -> c2: across the VXLAN device.
    let c2 = addr("c2", false);
    let server = one_shot_server("c2", false, 7001);
    let before = bytes("h1", VX);
    send("c1", false, &c2, 7001, N);
    let out = server.join().unwrap();
    let crossed = bytes("h1", VX) - before;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(line, format!("{} {N}", addr("c1", false)), "{}", text(&out));
    assert!(
        crossed >= N as u64,
        "only {crossed} bytes crossed {VX} for {N} sent"
    );

    // c1 -> c3: both on h1's bridge, nothing of it on the VXLAN device.
    let c3 = addr("c3", false);
    let script_port = 7002;
    let server = one_shot_server("c3", false, script_port);
    let before = bytes("h1", VX);
    send("c1", false, &c3, script_port, N);
    let out = server.join().unwrap();
    let crossed = bytes("h1", VX) - before;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(line, format!("{} {N}", addr("c1", false)), "{}", text(&out));
    assert!(
        crossed < (N / 10) as u64,
        "{crossed} bytes crossed {VX} for a connection inside h1"
    );
}

#[test]
fn iperf3_with_slim_bypasses_the_overlay_and_the_server_sees_the_ipam_address() {
    let _lab = podman_lab(&[]);
    iperf3_bypasses_the_overlay(true, 5301);
}

/// iperf3 c1 -> c2 (100 MB): the payload must not cross slim-vx, and the server must see c1's
/// IPAM address. `slim`: whether `exec --slim` preloads the library (false when slim-oci
/// injected it into the containers).
fn iperf3_bypasses_the_overlay(slim: bool, port: u16) {
    let c2 = addr("c2", false);
    let port_s = port.to_string();
    let server = {
        let port_s = port_s.clone();
        std::thread::spawn(move || {
            common::run(
                "c2",
                slim,
                &[
                    "timeout",
                    "60",
                    "iperf3",
                    "-s",
                    "-1",
                    "-p",
                    &port_s,
                    "--forceflush",
                ],
            )
        })
    };
    wait_listening("c2", port);
    let before = bytes("h1", VX);
    let client = ok(
        "c1",
        slim,
        &["iperf3", "-c", &c2, "-p", &port_s, "-n", "100M", "--json"],
    );
    let crossed = bytes("h1", VX) - before;
    let out = server.join().unwrap();
    assert!(out.status.success(), "iperf3 -s failed:\n{}", text(&out));
    let sent = client
        .split("\"sum_sent\"")
        .nth(1)
        .and_then(|s| s.split("\"bytes\":").nth(1))
        .and_then(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .find(|w| !w.is_empty())
        })
        .and_then(|w| w.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no sum_sent in iperf3's report:\n{client}"));
    assert!(sent >= 100 << 20, "sent only {sent} bytes");
    assert!(
        crossed < sent / 20,
        "{crossed} bytes crossed {VX} for {sent} bytes of payload: not bypassed"
    );
    let server_text = String::from_utf8_lossy(&out.stdout);
    let c1 = addr("c1", false);
    assert!(
        server_text.contains(&format!("Accepted connection from {c1},")),
        "the server did not see c1's IPAM address {c1}:\n{server_text}"
    );
}

/// `up --slim-oci`: podman runs the containers through slim-oci, which injects Slim into the
/// annotated ones from each host's own configuration; programs then use Slim with no `--slim`.
#[test]
fn slim_oci_injects_slim_into_annotated_containers() {
    let guard = common::serial();
    let rootfs = rootfs();
    let out = Command::new(lab_bin())
        .args(["up", "--runtime", "podman", "--slim-oci"])
        .arg(common::bin("slim-oci"))
        .args(["--annotation", "io.slim/enable=true"])
        .env("SLIM_ROOTFS", &rootfs)
        .output()
        .expect("run slim-lab up --slim-oci");
    assert!(
        out.status.success(),
        "slim-lab up --slim-oci failed:\n{}",
        text(&out)
    );
    for (name, host) in [("c1", "h1"), ("c2", "h2")] {
        let id = std::fs::read_to_string(STATE)
            .unwrap()
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
            .expect("recorded id");
        let bundle = format!("{STORAGE}/{host}/overlay-containers/{id}/userdata/config.json");
        let config = std::fs::read_to_string(&bundle).expect("config.json");
        assert!(
            config.contains("io.slim/injected"),
            "slim-oci did not inject into {name}"
        );
        assert!(
            config.contains("/run/slim-lib/libslim_preload.so"),
            "{bundle}"
        );
        // What the container's own processes get, through podman exec.
        let env = ok(
            name,
            false,
            &["sh", "-c", "echo $LD_PRELOAD; echo $SLIM_ROUTER_SOCKET"],
        );
        assert!(
            env.contains("/run/slim-lib/libslim_preload.so"),
            "{name}: {env}"
        );
        assert!(env.contains("/run/slim/router.sock"), "{name}: {env}");
    }
    iperf3_bypasses_the_overlay(false, 5302);
    drop(guard);
}

/// No process of the lab's podman storage, no mount under its directories, no CNI state.
fn podman_traces() -> Vec<String> {
    let mut traces = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.parse::<u32>().is_err() {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cmd.contains("/var/lib/slim-lab") || cmd.contains("/run/slim-lab") {
            traces.push(format!("process {name}: {cmd}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mounts.lines() {
        if l.contains("/var/lib/slim-lab") || l.contains(" /run/slim-lab") {
            traces.push(format!("mount: {l}"));
        }
    }
    for dir in [
        STORAGE,
        "/run/slim-lab",
        "/run/netns/slim-c1",
        "/run/netns/slim-h1",
    ] {
        if Path::new(dir).exists() {
            traces.push(format!("{dir} exists"));
        }
    }
    for e in std::fs::read_dir("/var/lib/cni/results")
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("slim-overlay-") {
            traces.push(format!("CNI result {}", e.path().display()));
        }
    }
    for e in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.path().join("slim-lab").exists() {
            traces.push(format!("cgroup {}/slim-lab", e.path().display()));
        }
    }
    traces
}

#[test]
fn switching_runtime_and_down_leave_nothing_behind() {
    let _lab = podman_lab(&[]);
    let sandboxes: Vec<String> = std::fs::read_to_string(STATE)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5).map(str::to_string))
        .collect();
    assert_eq!(sandboxes.len(), 3);
    let pids: Vec<u32> = ["c1", "c2", "c3"].iter().map(|c| recorded(c).pid).collect();

    // `up` in the other runtime tears the podman lab down and builds namespaces.
    let out = lab_cmd(&["up"]);
    assert!(out.contains("runtime netns"), "{out}");
    assert!(!Path::new(STORAGE).exists(), "podman storage survived `up`");
    assert!(!Path::new(STATE).exists());

    lab_cmd(&["down"]);
    let traces = podman_traces();
    assert!(traces.is_empty(), "left behind:\n{}", traces.join("\n"));
    for s in &sandboxes {
        assert!(!Path::new(s).exists(), "podman's namespace {s} is left");
    }
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "container init {pid} runs"
        );
    }
    let links = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    assert!(
        !links.contains("slim-"),
        "a lab device in the initial namespace:\n{links}"
    );

    // And from a podman lab straight to down.
    drop(_lab);
    let _lab = podman_lab(&[]);
    lab_cmd(&["down"]);
    let traces = podman_traces();
    assert!(traces.is_empty(), "left behind:\n{}", traces.join("\n"));
}

/// The hook for an OCI runtime wrapper (slim-oci): `--oci-runtime PATH --annotation K=V` reach
/// the OCI bundle podman hands the runtime, and every later podman call names the same runtime.
#[test]
fn another_oci_runtime_and_annotations_reach_the_bundle() {
    let guard = common::serial();
    let rootfs = rootfs();
    let crun = std::fs::canonicalize("/usr/bin/crun").expect("crun is installed");
    let up = |extra: &[&str]| {
        let out = Command::new(lab_bin())
            .args(["up", "--runtime", "podman"])
            .args(extra)
            .env("SLIM_ROOTFS", &rootfs)
            .output()
            .expect("run slim-lab up");
        assert!(out.status.success(), "slim-lab up failed:\n{}", text(&out));
    };
    up(&[
        "--oci-runtime",
        crun.to_str().unwrap(),
        "--annotation",
        "io.slim/enable=true",
    ]);
    let text = std::fs::read_to_string(STATE).unwrap();
    let id = text
        .lines()
        .find(|l| l.starts_with("c1 "))
        .and_then(|l| l.split_whitespace().nth(2))
        .expect("c1's id")
        .to_string();
    let bundle = format!("{STORAGE}/h1/overlay-containers/{id}/userdata/config.json");
    let config = std::fs::read_to_string(&bundle).expect("the OCI bundle's config.json");
    assert!(
        config.contains(r#""io.slim/enable":"true""#)
            || config.contains(r#""io.slim/enable": "true""#),
        "no annotation in {bundle}"
    );
    // The runtime recorded for exec, rm and conmon's cleanup command.
    let options = std::fs::read_to_string("/run/slim-lab/podman/options").unwrap();
    assert!(
        options.contains(&format!("oci-runtime {}", crun.display())),
        "{options}"
    );
    let cleanup_args: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .filter(|c| c.starts_with("/usr/bin/conmon") && c.contains(&id))
        .collect();
    assert_eq!(cleanup_args.len(), 1, "{cleanup_args:?}");
    assert!(
        cleanup_args[0].contains(&format!(
            "--exit-command-arg --runtime --exit-command-arg {}",
            crun.display()
        )),
        "{}",
        cleanup_args[0]
    );
    assert_eq!(ok("c1", false, &["hostname"]).trim(), "c1");
    // Options are part of the mode: without them `up` rebuilds, with plain crun.
    up(&[]);
    assert!(!std::fs::read_to_string("/run/slim-lab/podman/options")
        .unwrap()
        .contains("oci-runtime"));
    drop(guard);
}
