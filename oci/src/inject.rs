//! The edit of a container's OCI spec that puts Slim into it: the library and the router's
//! socket directory bind-mounted read-only, `LD_PRELOAD`, `SLIM_PREFIXES` and
//! `SLIM_ROUTER_SOCKET` in the process environment, in secure mode the seccomp rule, and an
//! `io.slim/injected` annotation that says it happened. Applying it twice gives the same spec
//! (a restarted container runs `create` again on its bundle).

use crate::config::RouterSettings;
use crate::seccomp;
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Where the library appears in the container: a directory of its own under /run, which images
/// do not ship (it is a tmpfs at run time on most systems), so nothing of the image is shadowed.
pub const LIBRARY_IN_CONTAINER: &str = "/run/slim-lib/libslim_preload.so";
/// Where the router's socket directory appears in the container. The library's default socket
/// (/run/slim/router.sock) is in it when the router's socket is named router.sock.
pub const SOCKET_DIR_IN_CONTAINER: &str = "/run/slim";
/// Set on a spec that got Slim, so that an operator (`runc state`, `crun state`, the bundle's
/// config.json) sees it happened.
pub const INJECTED_ANNOTATION: &str = "io.slim/injected";

/// The variables besides LD_PRELOAD.
const SLIM_VARS: [&str; 2] = ["SLIM_PREFIXES", "SLIM_ROUTER_SOCKET"];

/// Host directories that must never be mounted into a container as "the socket's directory".
const SHARED_DIRS: &[&str] = &[
    "/", "/run", "/var/run", "/tmp", "/var/tmp", "/dev", "/etc", "/var",
];

/// What is injected, checked on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub library: PathBuf,
    pub socket_dir: PathBuf,
    pub socket_name: String,
    pub prefixes: Vec<IpNet>,
    pub secure: bool,
}

/// Why a container gets no Slim although it asked: each names the fix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Missing {
    #[error(
        "the Slim library {0} does not exist or is not a file; install libslim_preload.so there \
         or set `library` in slim-oci's config"
    )]
    Library(PathBuf),
    #[error(
        "the router socket {0} does not exist or is not a socket; start slim-router (its config \
         names this socket) or fix `socket` in the router's config"
    )]
    Socket(PathBuf),
    #[error(
        "the router socket {0} is directly in {1}, which would be mounted into containers whole; \
         give the router a socket in a directory of its own, such as /run/slim/router.sock"
    )]
    SharedDir(PathBuf, PathBuf),
    #[error("the router socket's file name {0:?} is not UTF-8; rename it")]
    SocketName(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("the spec has no `{0}` object")]
    NotObject(&'static str),
    #[error("`{0}` in the spec has an unexpected type")]
    BadType(&'static str),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}

impl Injection {
    /// Checks the host side: the library file and the router's socket exist.
    pub fn check(library: &Path, router: &RouterSettings) -> Result<Injection, Missing> {
        if !std::fs::metadata(library).is_ok_and(|m| m.is_file()) {
            return Err(Missing::Library(library.into()));
        }
        let socket = &router.socket;
        let dir = socket.parent().unwrap_or(Path::new("/"));
        let dir = if dir.as_os_str().is_empty() {
            Path::new("/")
        } else {
            dir
        };
        if SHARED_DIRS.iter().any(|d| Path::new(d) == dir) {
            return Err(Missing::SharedDir(socket.clone(), dir.into()));
        }
        let name = socket
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Missing::SocketName(socket.clone()))?;
        if !std::fs::metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
            return Err(Missing::Socket(socket.clone()));
        }
        Ok(Injection {
            library: library.into(),
            socket_dir: dir.into(),
            socket_name: name.into(),
            prefixes: router.prefixes.clone(),
            secure: router.secure,
        })
    }

    pub fn socket_in_container(&self) -> String {
        format!("{SOCKET_DIR_IN_CONTAINER}/{}", self.socket_name)
    }

    fn mounts(&self) -> [Value; 2] {
        [
            json!({
                "destination": LIBRARY_IN_CONTAINER,
                "type": "bind",
                "source": self.library,
                "options": ["bind", "ro", "nosuid", "nodev"]
            }),
            // Read-only is enough: connecting to a Unix socket needs write permission on the
            // socket's inode, which a read-only mount does not take away (only file creation).
            json!({
                "destination": SOCKET_DIR_IN_CONTAINER,
                "type": "bind",
                "source": self.socket_dir,
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"]
            }),
        ]
    }

    fn env(&self) -> [(&'static str, String); 2] {
        // Keep in the order of SLIM_VARS.
        let prefixes: Vec<String> = self.prefixes.iter().map(IpNet::to_string).collect();
        [
            ("SLIM_PREFIXES", prefixes.join(",")),
            ("SLIM_ROUTER_SOCKET", self.socket_in_container()),
        ]
    }
}

/// Edits the spec in place. Idempotent.
pub fn apply(spec: &mut Value, inj: &Injection) -> Result<(), SpecError> {
    let root = spec.as_object_mut().ok_or(SpecError::NotObject("(root)"))?;

    let mounts = array_entry(root, "mounts")?;
    let ours = inj.mounts();
    mounts.retain(|m| {
        !ours
            .iter()
            .any(|o| m.get("destination") == o.get("destination"))
    });
    mounts.extend(ours);

    let env = inj.env();
    set_env(object_entry(root, "process")?, &env)?;

    if inj.secure {
        seccomp::merge(object_entry(root, "linux")?)?;
    }

    object_entry(root, "annotations")?
        .insert(INJECTED_ANNOTATION.into(), Value::String("true".into()));
    Ok(())
}

/// Sets Slim's variables in a process object (a spec's `process`, or the process file of
/// `exec`): `LD_PRELOAD` gets the library appended unless it has it, the others are replaced.
pub fn set_env(
    process: &mut Map<String, Value>,
    slim_vars: &[(&str, String)],
) -> Result<(), SpecError> {
    let env = array_entry(process, "env")?;
    let mut vars: Vec<String> = Vec::with_capacity(env.len() + 3);
    for v in env.iter() {
        vars.push(
            v.as_str()
                .ok_or(SpecError::BadType("process.env"))?
                .to_string(),
        );
    }
    let preload = vars
        .iter()
        .find_map(|v| v.strip_prefix("LD_PRELOAD="))
        .map(str::to_string);
    let preload = match preload {
        Some(p) if p.split([' ', ':']).any(|item| item == LIBRARY_IN_CONTAINER) => p,
        Some(p) if !p.trim().is_empty() => format!("{p}:{LIBRARY_IN_CONTAINER}"),
        _ => LIBRARY_IN_CONTAINER.to_string(),
    };
    let set = std::iter::once(("LD_PRELOAD", preload))
        .chain(slim_vars.iter().map(|(k, v)| (*k, v.clone())));
    for (key, value) in set {
        let entry = format!("{key}={value}");
        let prefix = format!("{key}=");
        match vars.iter().position(|v| v.starts_with(&prefix)) {
            Some(i) => vars[i] = entry,
            None => vars.push(entry),
        }
    }
    *env = vars.into_iter().map(Value::String).collect();
    Ok(())
}

/// The values of Slim's variables (not LD_PRELOAD) in a spec that got Slim, for `exec`.
pub fn injected_vars(spec: &Value) -> Option<Vec<(&'static str, String)>> {
    if spec.get("annotations")?.get(INJECTED_ANNOTATION)? != "true" {
        return None;
    }
    let env = spec.get("process")?.get("env")?.as_array()?;
    SLIM_VARS
        .iter()
        .map(|k| {
            env.iter()
                .filter_map(Value::as_str)
                .find_map(|v| v.strip_prefix(k)?.strip_prefix('='))
                .map(|v| (*k, v.to_string()))
        })
        .collect()
}

/// `obj[key]` as an array, created (or replacing null) if absent.
fn array_entry<'a>(
    obj: &'a mut Map<String, Value>,
    key: &'static str,
) -> Result<&'a mut Vec<Value>, SpecError> {
    let v = obj.entry(key).or_insert_with(|| json!([]));
    if v.is_null() {
        *v = json!([]);
    }
    v.as_array_mut().ok_or(SpecError::BadType(key))
}

/// `obj[key]` as an object, created (or replacing null) if absent.
fn object_entry<'a>(
    obj: &'a mut Map<String, Value>,
    key: &'static str,
) -> Result<&'a mut Map<String, Value>, SpecError> {
    let v = obj.entry(key).or_insert_with(|| json!({}));
    if v.is_null() {
        *v = json!({});
    }
    v.as_object_mut().ok_or(SpecError::BadType(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRUN_SPEC: &str = include_str!("../fixtures/crun-1.8-spec.json");
    const PODMAN: &str = include_str!("../fixtures/podman-4.3.json");

    fn injection(secure: bool) -> Injection {
        Injection {
            library: "/usr/local/lib/slim/libslim_preload.so".into(),
            socket_dir: "/run/slim".into(),
            socket_name: "router.sock".into(),
            prefixes: vec![
                "10.32.0.0/12".parse().unwrap(),
                "fd00:32::/64".parse().unwrap(),
            ],
            secure,
        }
    }

    fn env(spec: &Value) -> Vec<&str> {
        spec["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect()
    }

    fn mount<'a>(spec: &'a Value, dest: &str) -> Vec<&'a Value> {
        spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["destination"] == dest)
            .collect()
    }

    #[test]
    fn crun_spec_gets_mounts_env_and_annotation() {
        let mut spec: Value = serde_json::from_str(CRUN_SPEC).unwrap();
        let before = spec.clone();
        apply(&mut spec, &injection(false)).unwrap();
        let lib = mount(&spec, LIBRARY_IN_CONTAINER);
        assert_eq!(lib.len(), 1);
        assert_eq!(lib[0]["source"], "/usr/local/lib/slim/libslim_preload.so");
        assert!(lib[0]["options"].as_array().unwrap().contains(&json!("ro")));
        let sock = mount(&spec, SOCKET_DIR_IN_CONTAINER);
        assert_eq!(sock[0]["source"], "/run/slim");
        assert!(sock[0]["options"]
            .as_array()
            .unwrap()
            .contains(&json!("ro")));
        let e = env(&spec);
        assert!(e.contains(&"LD_PRELOAD=/run/slim-lib/libslim_preload.so"));
        assert!(e.contains(&"SLIM_PREFIXES=10.32.0.0/12,fd00:32::/64"));
        assert!(e.contains(&"SLIM_ROUTER_SOCKET=/run/slim/router.sock"));
        assert!(e.contains(&"TERM=xterm"), "the image's variables stay");
        assert_eq!(spec["annotations"][INJECTED_ANNOTATION], "true");
        // Non-secure: the spec's seccomp (none in crun's template) is untouched.
        assert_eq!(spec["linux"], before["linux"]);
        // Everything else is as it was.
        for key in ["ociVersion", "root", "hostname"] {
            assert_eq!(spec[key], before[key]);
        }
        assert_eq!(spec["process"]["args"], before["process"]["args"]);
        assert_eq!(
            spec["mounts"].as_array().unwrap()[..before["mounts"].as_array().unwrap().len()],
            before["mounts"].as_array().unwrap()[..]
        );
    }

    #[test]
    fn existing_ld_preload_is_appended_to() {
        let mut spec: Value = serde_json::from_str(CRUN_SPEC).unwrap();
        spec["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("LD_PRELOAD=/usr/lib/libjemalloc.so.2"));
        apply(&mut spec, &injection(false)).unwrap();
        let e = env(&spec);
        assert!(
            e.contains(&"LD_PRELOAD=/usr/lib/libjemalloc.so.2:/run/slim-lib/libslim_preload.so")
        );
        assert_eq!(e.iter().filter(|v| v.starts_with("LD_PRELOAD=")).count(), 1);
    }

    #[test]
    fn twice_is_once() {
        for (fixture, secure) in [(CRUN_SPEC, false), (PODMAN, false), (PODMAN, true)] {
            let mut spec: Value = serde_json::from_str(fixture).unwrap();
            spec["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push(json!("LD_PRELOAD=/a.so /b.so"));
            apply(&mut spec, &injection(secure)).unwrap();
            let once = spec.clone();
            apply(&mut spec, &injection(secure)).unwrap();
            assert_eq!(spec, once);
            assert_eq!(
                serde_json::to_string(&spec).unwrap(),
                serde_json::to_string(&once).unwrap(),
                "same bytes too"
            );
        }
    }

    #[test]
    fn secure_mode_merges_seccomp() {
        let mut spec: Value = serde_json::from_str(PODMAN).unwrap();
        apply(&mut spec, &injection(true)).unwrap();
        let rules = spec["linux"]["seccomp"]["syscalls"].as_array().unwrap();
        assert!(rules.contains(&seccomp::deny_rule()));
        let mut plain: Value = serde_json::from_str(PODMAN).unwrap();
        apply(&mut plain, &injection(false)).unwrap();
        assert_eq!(
            plain["linux"]["seccomp"],
            serde_json::from_str::<Value>(PODMAN).unwrap()["linux"]["seccomp"]
        );
    }

    #[test]
    fn spec_without_env_or_mounts_gets_them() {
        let mut spec =
            json!({"ociVersion": "1.0.2", "process": {"args": ["/app"]}, "mounts": null});
        apply(&mut spec, &injection(false)).unwrap();
        assert_eq!(spec["mounts"].as_array().unwrap().len(), 2);
        assert_eq!(env(&spec).len(), 3);
        let mut bad = json!({"process": {"env": "LD_PRELOAD=x"}});
        assert_eq!(
            apply(&mut bad, &injection(false)),
            Err(SpecError::BadType("env"))
        );
    }

    #[test]
    fn exec_process_gets_the_containers_slim_vars() {
        let mut spec: Value = serde_json::from_str(PODMAN).unwrap();
        assert_eq!(injected_vars(&spec), None, "no Slim, nothing for exec");
        apply(&mut spec, &injection(false)).unwrap();
        let vars = injected_vars(&spec).unwrap();
        assert_eq!(
            vars,
            vec![
                ("SLIM_PREFIXES", "10.32.0.0/12,fd00:32::/64".to_string()),
                ("SLIM_ROUTER_SOCKET", "/run/slim/router.sock".to_string())
            ]
        );
        // A process file as podman writes it for `podman exec`: the container's env without Slim.
        let mut process = json!({"args": ["/bin/sh"], "env": ["PATH=/bin", "LD_PRELOAD=/x.so"]});
        set_env(process.as_object_mut().unwrap(), &vars).unwrap();
        assert_eq!(
            process["env"],
            json!([
                "PATH=/bin",
                "LD_PRELOAD=/x.so:/run/slim-lib/libslim_preload.so",
                "SLIM_PREFIXES=10.32.0.0/12,fd00:32::/64",
                "SLIM_ROUTER_SOCKET=/run/slim/router.sock"
            ])
        );
    }

    fn router(socket: &Path) -> RouterSettings {
        RouterSettings {
            prefixes: vec!["10.32.0.0/12".parse().unwrap()],
            socket: socket.into(),
            secure: false,
        }
    }

    #[test]
    fn check_names_what_is_missing() {
        let dir = std::env::temp_dir().join(format!("slim-oci-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join("libslim_preload.so");
        let sock = dir.join("router.sock");
        let _ = std::fs::remove_file(&sock);
        std::fs::write(&lib, b"").unwrap();
        assert_eq!(
            Injection::check(&dir.join("nope.so"), &router(&sock)),
            Err(Missing::Library(dir.join("nope.so")))
        );
        assert_eq!(
            Injection::check(&lib, &router(&sock)),
            Err(Missing::Socket(sock.clone()))
        );
        // A regular file where the socket should be is not a router.
        std::fs::write(&sock, b"").unwrap();
        assert_eq!(
            Injection::check(&lib, &router(&sock)),
            Err(Missing::Socket(sock.clone()))
        );
        std::fs::remove_file(&sock).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let inj = Injection::check(&lib, &router(&sock)).unwrap();
        assert_eq!(inj.socket_dir, dir);
        assert_eq!(inj.socket_in_container(), "/run/slim/router.sock");
        assert!(matches!(
            Injection::check(&lib, &router(Path::new("/run/router.sock"))),
            Err(Missing::SharedDir(..))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
