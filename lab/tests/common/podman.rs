//! Helpers for the tests on the podman runtime (lab/tests/podman.rs, podman_apps.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::MutexGuard;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{eventually, lab_bin, ok, run, serial, text};

/// Serializes tests and brings the lab up with `--runtime podman` plus `extra` options
/// (idempotent: an identical lab is left as it is).
pub fn podman_lab(extra: &[&str]) -> MutexGuard<'static, ()> {
    let guard = serial();
    let out = Command::new(lab_bin())
        .args(["up", "--runtime", "podman"])
        .args(extra)
        .env("SLIM_ROOTFS", rootfs())
        .output()
        .expect("run slim-lab up --runtime podman");
    assert!(
        out.status.success(),
        "slim-lab up --runtime podman {extra:?} failed:\n{}",
        text(&out)
    );
    guard
}

/// The project's script builds (or finds cached) the root filesystem and prints its path last,
/// so `make e2e` on a fresh machine builds the tree (minutes, once).
pub fn rootfs() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rootfs/build-rootfs.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/rootfs/build-rootfs.sh");
    assert!(out.status.success(), "build-rootfs.sh failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("build-rootfs.sh prints the path")
            .trim(),
    )
}

/// Waits until something listens on TCP `port` in `node`.
pub fn wait_listening(node: &str, port: u16) {
    let listening = eventually(Duration::from_secs(30), || {
        let o = run(node, false, &["ss", "-Hltn", &format!("sport = :{port}")]);
        !String::from_utf8_lossy(&o.stdout).trim().is_empty()
    });
    assert!(listening, "nothing listens on port {port} in {node}");
}

/// A python server that accepts one connection, prints the peer address, reads to EOF and
/// prints the byte count. Returns its thread (stdout) once it listens.
pub fn one_shot_server(node: &str, slim: bool, port: u16) -> JoinHandle<Output> {
    let script = format!(
        "import socket,sys\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_STREAM)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('0.0.0.0',{port}));s.listen(1)\n\
         c,a=s.accept();n=0\n\
         while True:\n d=c.recv(65536)\n if not d: break\n n+=len(d)\n\
         print(a[0],n,flush=True)\n"
    );
    let owned = node.to_string();
    let handle =
        std::thread::spawn(move || run(&owned, slim, &["timeout", "60", "python3", "-c", &script]));
    wait_listening(node, port);
    handle
}

/// Sends `n` bytes from `node` to `dst`:`port` with python and closes.
pub fn send(node: &str, slim: bool, dst: &str, port: u16, n: usize) {
    let script = format!(
        "import socket\n\
         s=socket.create_connection(('{dst}',{port}))\n\
         s.sendall(b'x'*{n});s.close()\n"
    );
    ok(node, slim, &["python3", "-c", &script]);
}
