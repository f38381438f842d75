//! slim-oci with a real engine and runtime: podman 4.3 runs `slim-testprog oci-probe` in a
//! container through `podman --runtime slim-oci`, slim-oci runs crun, and the probe reports from
//! inside what it got (environment, mounts, the library mapped, a connect to the router
//! socket, ioctl results). Root; podman, crun and conmon from `make deps`.
//!
//! Each test has its own directory (podman storage, root filesystem, configs, a Unix socket
//! standing in for the router's), never the machine's podman storage, and uses
//! `--network none`. This machine's podman needs a private mount namespace without
//! /sys/fs/cgroup/unified (crun refuses the hybrid layout) and explicit ulimits.

use std::collections::BTreeMap;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SLIM_OCI: &str = env!("CARGO_BIN_EXE_slim-oci");
const PREFIXES: &str = "10.32.0.0/12,fd00:32::/64";
/// No network; limits podman cannot raise here to its defaults.
const CONTAINER_OPTS: &[&str] = &[
    "--network",
    "none",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// Built next to slim-oci by `cargo build --workspace` (same profile).
fn built(name: &str) -> PathBuf {
    let path = Path::new(SLIM_OCI).parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (make build)",
        path.display()
    );
    path
}

struct Lab {
    dir: PathBuf,
    rootfs: PathBuf,
    socket: PathBuf,
    oci_conf: PathBuf,
    oci_log: PathBuf,
    _router: UnixListener,
}

impl Lab {
    /// A directory with a root filesystem (slim-testprog and the libraries it and the Slim
    /// library need), a listening socket where the router's would be, a router config and a
    /// slim-oci config with the given extra lines.
    fn new(name: &str, secure: bool, oci_extra: &str) -> Lab {
        assert_eq!(
            unsafe_geteuid(),
            0,
            "the podman tests run as root (podman with crun)"
        );
        for tool in ["podman", "crun", "conmon"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .output()
                    .unwrap()
                    .status
                    .success(),
                "{tool} is not installed: run `make deps`"
            );
        }
        let dir = std::env::temp_dir().join(format!("slim-oci-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("router")).unwrap();
        let rootfs = dir.join("rootfs");
        build_rootfs(&rootfs);
        let socket = dir.join("router/router.sock");
        let router = UnixListener::bind(&socket).unwrap();
        let router_conf = dir.join("router.toml");
        // Keys slim-oci does not read are there too, as in a real router config.
        std::fs::write(
            &router_conf,
            format!(
                "host_addrs = [\"192.168.77.1\"]\nprefixes = [\"10.32.0.0/12\", \"fd00:32::/64\"]\n\
                 socket = \"{}\"\nsocket_mode = \"666\"\nsecure = {secure}\nlog_level = \"info\"\n",
                socket.display()
            ),
        )
        .unwrap();
        let oci_log = dir.join("slim-oci.log");
        let oci_conf = dir.join("oci.toml");
        std::fs::write(
            &oci_conf,
            format!(
                "runtime = \"crun\"\nrouter_config = \"{}\"\nlibrary = \"{}\"\nlog = \"{}\"\n{oci_extra}\n",
                router_conf.display(),
                built("libslim_preload.so").display(),
                oci_log.display()
            ),
        )
        .unwrap();
        // podman reads only these files, not the machine's /etc/containers.
        std::fs::write(dir.join("containers.conf"), "").unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                dir.join("runroot").display(),
                dir.join("storage").display()
            ),
        )
        .unwrap();
        Lab {
            dir,
            rootfs,
            socket,
            oci_conf,
            oci_log,
            _router: router,
        }
    }

    /// `podman run --rm` of the probe through slim-oci; `opts` go before `--rootfs`.
    fn run(&self, opts: &[&str]) -> Output {
        let mut cmd = self.podman();
        cmd.args(["run", "--rm"])
            .args(CONTAINER_OPTS)
            .arg(format!("--cgroup-parent=/{}", self.cgroup_parent()))
            .args(opts)
            .arg("--rootfs")
            .arg(&self.rootfs)
            .args(["/bin/slim-testprog", "oci-probe"]);
        cmd.output().unwrap()
    }

    /// podman with this test's storage and configs, and slim-oci as its runtime.
    fn podman(&self) -> Command {
        let d = &self.dir;
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(
                "if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi; \
                 exec \"$@\"",
            )
            .arg("sh")
            .arg("podman")
            .arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("libpod-tmp"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file", "--runtime", SLIM_OCI])
            .arg("--runtime-flag")
            .arg(format!("slim-config={}", self.oci_conf.display()))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"));
        cmd
    }

    /// Runs the probe and returns its report; the container must have started and exited 0.
    fn probe(&self, opts: &[&str]) -> (BTreeMap<String, String>, String) {
        report(&format!("podman run {opts:?}"), self.run(opts))
    }

    fn oci_log(&self) -> String {
        std::fs::read_to_string(&self.oci_log).unwrap_or_default()
    }
}

impl Lab {
    /// The cgroup the containers go under (podman's default, /libpod_parent, would stay behind
    /// in every hierarchy after the test): one per test directory, removed with it.
    fn cgroup_parent(&self) -> String {
        let name = self.dir.file_name().unwrap_or_default().to_string_lossy();
        format!("slim-oci-test-{name}")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // vfs storage holds no mounts once `run --rm` returned; remove everything.
        let _ = std::fs::remove_dir_all(&self.dir);
        // The containers' cgroups went with them; their (empty) parent in each hierarchy stays.
        let parent = self.cgroup_parent();
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            remove_empty_cgroup(&hierarchy.path().join(&parent));
            // conmon goes under podman's /libpod_parent/conmon whatever the containers'
            // parent; removed when empty (another podman's live containers keep it).
            remove_empty_cgroup(&hierarchy.path().join("libpod_parent"));
        }
    }
}

/// rmdir of a cgroup and its (empty) children, deepest first; whatever still has tasks stays.
fn remove_empty_cgroup(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_cgroup(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The probe's report from its output; it must have run and exited 0.
fn report(what: &str, out: Output) -> (BTreeMap<String, String>, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let report: BTreeMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(
        report.contains_key("siocgifindex"),
        "incomplete probe report:\n{stdout}\nstderr:\n{stderr}"
    );
    (report, stderr)
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// slim-testprog at /bin, plus every shared object it and libslim_preload.so load, at their
/// host paths (as `ldd` lists them).
fn build_rootfs(rootfs: &Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let prog = built("slim-testprog");
    std::fs::copy(&prog, rootfs.join("bin/slim-testprog")).unwrap();
    // Something that stays up, for `podman exec`.
    let sleep = PathBuf::from("/bin/sleep");
    std::fs::copy(&sleep, rootfs.join("bin/sleep")).unwrap();
    for obj in [prog, built("libslim_preload.so"), sleep] {
        let out = Command::new("ldd").arg(&obj).output().unwrap();
        assert!(out.status.success(), "ldd {}", obj.display());
        for lib in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let dest = rootfs.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, &dest).unwrap();
        }
    }
}

/// The path of a library slim-testprog loads (so the root filesystem has it), as `ldd` says.
fn host_lib(name: &str) -> String {
    let out = Command::new("ldd")
        .arg(built("slim-testprog"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with('/') && w.contains(&format!("/{name}")))
        .unwrap_or_else(|| panic!("slim-testprog does not load {name}"))
        .to_string()
}

fn get<'a>(r: &'a BTreeMap<String, String>, k: &str) -> &'a str {
    r.get(k).map(String::as_str).unwrap_or("(missing)")
}

fn assert_injected(r: &BTreeMap<String, String>, lab: &Lab) {
    assert_eq!(get(r, "SLIM_PREFIXES"), PREFIXES, "{r:?}");
    assert_eq!(
        get(r, "SLIM_ROUTER_SOCKET"),
        "/run/slim/router.sock",
        "{r:?}"
    );
    assert_eq!(get(r, "preload_mapped"), "yes", "{r:?}");
    assert_eq!(
        get(r, "mount:/run/slim-lib/libslim_preload.so"),
        "ro",
        "{r:?}"
    );
    assert_eq!(get(r, "mount:/run/slim"), "ro", "{r:?}");
    // The host socket is reachable through the read-only directory mount.
    assert_eq!(get(r, "router_connect"), "ok", "{r:?}");
    assert!(lab.socket.exists());
}

fn assert_plain(r: &BTreeMap<String, String>) {
    for k in [
        "LD_PRELOAD",
        "SLIM_PREFIXES",
        "SLIM_ROUTER_SOCKET",
        "router_connect",
    ] {
        assert_eq!(get(r, k), "-", "{k} in {r:?}");
    }
    assert_eq!(get(r, "preload_mapped"), "no", "{r:?}");
    assert_eq!(
        get(r, "mount:/run/slim-lib/libslim_preload.so"),
        "absent",
        "{r:?}"
    );
    assert_eq!(get(r, "mount:/run/slim"), "absent", "{r:?}");
}

#[test]
fn annotated_container_gets_slim_and_keeps_its_ld_preload() {
    let lab = Lab::new("annotated", false, "");
    let (r, _) = lab.probe(&["--annotation", "io.slim/enable=true"]);
    assert_injected(&r, &lab);
    assert_eq!(
        get(&r, "LD_PRELOAD"),
        "/run/slim-lib/libslim_preload.so",
        "{r:?}"
    );
    // Not secure mode: podman's own seccomp profile is untouched and allows SIOCGIFCONF.
    assert_eq!(get(&r, "siocgifconf"), "ok", "{r:?}");
    let log = lab.oci_log();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("Slim injected"), "{log}");

    // A program that has its own LD_PRELOAD keeps it; Slim's library comes after.
    let other = host_lib("libgcc_s.so");
    let (r, _) = lab.probe(&[
        "--annotation",
        "io.slim/enable=true",
        "--env",
        &format!("LD_PRELOAD={other}"),
    ]);
    assert_injected(&r, &lab);
    assert_eq!(
        get(&r, "LD_PRELOAD"),
        format!("{other}:/run/slim-lib/libslim_preload.so"),
        "{r:?}"
    );
}

#[test]
fn podman_exec_in_a_slim_container_gets_slim() {
    let lab = Lab::new("exec", false, "");
    for (name, annotation) in [
        ("slim", "io.slim/enable=true"),
        ("plain", "io.slim/enable=false"),
    ] {
        let ctr = format!("slim-oci-test-exec-{name}-{}", std::process::id());
        let out = lab
            .podman()
            .args(["run", "-d", "--name", &ctr])
            .args(CONTAINER_OPTS)
            .args(["--annotation", annotation, "--rootfs"])
            .arg(&lab.rootfs)
            .args(["/bin/sleep", "600"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let exec = lab
            .podman()
            .args(["exec", &ctr, "/bin/slim-testprog", "oci-probe"])
            .output()
            .unwrap();
        let rm = lab
            .podman()
            .args(["rm", "-f", "-t", "0", &ctr])
            .output()
            .unwrap();
        let (r, _) = report("podman exec", exec);
        assert!(
            rm.status.success(),
            "{}",
            String::from_utf8_lossy(&rm.stderr)
        );
        if name == "slim" {
            assert_injected(&r, &lab);
            assert_eq!(get(&r, "LD_PRELOAD"), "/run/slim-lib/libslim_preload.so");
        } else {
            assert_plain(&r);
        }
    }
}

#[test]
fn containers_that_do_not_ask_are_untouched() {
    let lab = Lab::new("plain", false, "");
    let (r, stderr) = lab.probe(&[]);
    assert_plain(&r);
    let (r, _) = lab.probe(&["--annotation", "io.slim/enable=false"]);
    assert_plain(&r);
    assert_eq!(
        lab.oci_log(),
        "",
        "nothing to say about containers that did not ask"
    );
    assert!(!stderr.contains("slim-oci"), "{stderr}");

    // With the host-wide default on, the annotation opts out, and its absence opts in.
    let lab = Lab::new("default-on", false, "default = \"on\"");
    let (r, _) = lab.probe(&["--annotation", "io.slim/enable=false"]);
    assert_plain(&r);
    let (r, _) = lab.probe(&[]);
    assert_injected(&r, &lab);
}

#[test]
fn missing_library_or_bad_annotation_starts_without_slim_and_says_why() {
    let lab = Lab::new("missing", false, "");
    // The library named in the config does not exist.
    let conf = std::fs::read_to_string(&lab.oci_conf).unwrap();
    let missing = lab.dir.join("no/libslim_preload.so");
    let conf: String = conf
        .lines()
        .map(|l| {
            if l.starts_with("library") {
                format!("library = \"{}\"\n", missing.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&lab.oci_conf, conf).unwrap();
    let (r, _) = lab.probe(&["--annotation", "io.slim/enable=true"]);
    assert_plain(&r);
    let log = lab.oci_log();
    assert_eq!(log.lines().count(), 1, "one line: {log}");
    assert!(log.contains("WITHOUT Slim"), "{log}");
    assert!(log.contains(&missing.display().to_string()), "{log}");

    // A malformed annotation: the same, naming the value.
    std::fs::remove_file(&lab.oci_log).unwrap();
    let (r, _) = lab.probe(&["--annotation", "io.slim/enable=yes"]);
    assert_plain(&r);
    let log = lab.oci_log();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("io.slim/enable=yes"), "{log}");
}

#[test]
fn missing_router_socket_starts_without_slim() {
    let lab = Lab::new("nosocket", false, "");
    std::fs::remove_file(&lab.socket).unwrap();
    let (r, _) = lab.probe(&["--annotation", "io.slim/enable=true"]);
    assert_plain(&r);
    let log = lab.oci_log();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("start slim-router"), "{log}");
}

#[test]
fn secure_mode_denies_siocgifconf_and_allows_other_ioctls() {
    let lab = Lab::new("secure", true, "");
    // podman's default profile, merged.
    let (r, _) = lab.probe(&["--annotation", "io.slim/enable=true"]);
    assert_injected(&r, &lab);
    assert_eq!(get(&r, "siocgifconf"), "EPERM", "{r:?}");
    assert_eq!(get(&r, "siocgifconf_high"), "EPERM", "{r:?}");
    assert_eq!(get(&r, "siocgifindex"), "ok", "{r:?}");
    // A privileged container has no profile: it gets one that denies only that ioctl.
    let (r, _) = lab.probe(&["--privileged", "--annotation", "io.slim/enable=true"]);
    assert_injected(&r, &lab);
    assert_eq!(get(&r, "siocgifconf"), "EPERM", "{r:?}");
    assert_eq!(get(&r, "siocgifconf_high"), "EPERM", "{r:?}");
    assert_eq!(get(&r, "siocgifindex"), "ok", "{r:?}");
    // Without Slim, secure mode changes nothing.
    let (r, _) = lab.probe(&["--privileged"]);
    assert_plain(&r);
    assert_eq!(get(&r, "siocgifconf"), "ok", "{r:?}");
}
