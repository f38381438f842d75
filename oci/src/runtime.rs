//! The real runtime: found from slim-oci's config (a path, or a name in PATH; default crun,
//! else runc), then run with execve so that its exit code, signals, stdio, inherited
//! descriptors (console socket, `--preserve-fds`) and process id are the engine's to see.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

const DEFAULT_RUNTIMES: &[&str] = &["crun", "runc"];
/// Searched when PATH is unset (some engines run runtimes with an empty environment).
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuntimeError {
    #[error(
        "the OCI runtime `{0}` was not found or is not executable; install it or set `runtime` \
         in slim-oci's config to its path"
    )]
    NotFound(String),
    #[error(
        "neither crun nor runc was found in PATH; install one or set `runtime` in slim-oci's config"
    )]
    NoDefault,
    #[error("`runtime` in slim-oci's config is slim-oci itself ({0}); name crun or runc")]
    Loop(PathBuf),
}

/// Resolves the configured runtime (or the default) to an executable path that is not
/// slim-oci itself.
pub fn resolve(configured: Option<&str>) -> Result<PathBuf, RuntimeError> {
    let path_var = std::env::var_os("PATH").unwrap_or_else(|| FALLBACK_PATH.into());
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok());
    let is_me = |p: &Path| me.is_some() && p.canonicalize().ok() == me;
    match configured {
        Some(name) => {
            let found = find(name, &path_var).ok_or_else(|| RuntimeError::NotFound(name.into()))?;
            if is_me(&found) {
                return Err(RuntimeError::Loop(found));
            }
            Ok(found)
        }
        None => DEFAULT_RUNTIMES
            .iter()
            .filter_map(|n| find(n, &path_var))
            .find(|p| !is_me(p))
            .ok_or(RuntimeError::NoDefault),
    }
}

/// A name with a slash is a path; otherwise it is looked up in `path_var`.
fn find(name: &str, path_var: &OsStr) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path_var)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Replaces this process with the runtime. Returns only on failure.
pub fn exec(runtime: &Path, args: &[OsString]) -> std::io::Error {
    std::process::Command::new(runtime).args(args).exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_errors() {
        let sh = find("sh", OsStr::new("/nonexistent:/bin:/usr/bin")).unwrap();
        assert!(sh.ends_with("sh"));
        assert_eq!(
            find("/bin/sh", OsStr::new("")),
            Some(PathBuf::from("/bin/sh"))
        );
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        assert_eq!(find(manifest, OsStr::new("")), None, "not executable");
        assert_eq!(find("no-such-runtime", OsStr::new("/bin")), None);
        assert_eq!(
            resolve(Some("no-such-runtime-xyz")),
            Err(RuntimeError::NotFound("no-such-runtime-xyz".into()))
        );
        let me = std::env::current_exe().unwrap();
        assert_eq!(
            resolve(Some(me.to_str().unwrap())),
            Err(RuntimeError::Loop(me.clone()))
        );
    }
}
