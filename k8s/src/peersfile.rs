//! The peers file the router watches (`peers_file` in router.toml, `--peers-file`): one
//! ADDR:PORT per line, `#` comments. It is replaced atomically (a temporary file in the same
//! directory, synced, then renamed over it), so the router never reads half a list, and only
//! when its content changes, so the router is not woken for nothing.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const HEADER: &str =
    "# Written by slim-k8s-peers from the cluster's Node objects (each other node's \
                      InternalIP); every change is overwritten.\n";

/// The file's content for `peers` (sorted: the same peers always give the same bytes).
pub fn render(peers: &BTreeSet<SocketAddr>) -> String {
    let mut s = String::from(HEADER);
    for p in peers {
        s.push_str(&p.to_string());
        s.push('\n');
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "cannot write the peers file {path}: {source}; its directory must exist and be writable \
         (in the DaemonSet: the `peers` emptyDir mounted read-write into this container)"
    )]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the peers file path {0} has no file name or no parent directory")]
    BadPath(String),
}

/// Replaces `path` with `content` unless it already holds exactly that. Returns whether it wrote.
pub fn write_if_changed(path: &Path, content: &str) -> Result<bool, WriteError> {
    let io = |source| WriteError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(path) {
        Ok(old) if old == content.as_bytes() => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let dir = match path.parent() {
        Some(d) if path.file_name().is_some() => {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        }
        _ => return Err(WriteError::BadPath(path.display().to_string())),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".peers.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(content.as_bytes()).map_err(io)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    // The rename itself is durable once the directory is synced.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn peers(v: &[&str]) -> BTreeSet<SocketAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn render_is_sorted_and_parses_back() {
        let s = render(&peers(&[
            "[fd00:1::14]:7788",
            "192.168.1.12:7788",
            "192.168.1.10:7788",
        ]));
        let lines: Vec<&str> = s.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "192.168.1.10:7788",
                "192.168.1.12:7788",
                "[fd00:1::14]:7788"
            ]
        );
        for l in lines {
            l.parse::<SocketAddr>().unwrap();
        }
        assert!(render(&BTreeSet::new()).lines().all(|l| l.starts_with('#')));
    }

    #[test]
    fn writes_atomically_and_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers");
        let a = render(&peers(&["192.168.1.10:7788"]));
        let b = render(&peers(&["192.168.1.10:7788", "192.168.1.12:7788"]));

        assert!(write_if_changed(&path, &a).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), a);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o644);
        let first = meta.ino();

        // Same content: not touched (same inode, not rewritten).
        assert!(!write_if_changed(&path, &a).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), first);

        // A reader holding the old file keeps reading the old, whole content: the new one is a
        // new file renamed over the name, never the old one rewritten in place.
        let held = std::fs::File::open(&path).unwrap();
        assert!(write_if_changed(&path, &b).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), b);
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), first);
        assert_eq!(std::io::read_to_string(held).unwrap(), a);

        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["peers"]);
    }

    #[test]
    fn missing_directory_names_the_path_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("peers");
        let e = write_if_changed(&path, "x\n").unwrap_err().to_string();
        assert!(e.contains("absent/peers") && e.contains("emptyDir"), "{e}");
    }
}
