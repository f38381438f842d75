//! The command line of an OCI runtime (runc, crun), read only as far as slim-oci needs: the
//! command, the bundle of `create`/`run`, the container id, the runtime's log, and slim-oci's
//! own `--slim-config PATH`, which is the only argument taken out before the real runtime runs.
//!
//! Both runtimes take global flags before the command (`--root DIR`, `--log FILE`,
//! `--log-format json`, `--systemd-cgroup`, ...), written `--flag VALUE` or `--flag=VALUE`, and
//! runc (urfave/cli) also accepts a single dash (`-root DIR`). Flags this module does not know
//! are taken to have no value, which is true of every unknown flag of runc 1.1 and crun 1.8.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// slim-oci's own global flag: `podman --runtime-flag slim-config=PATH` passes it as
/// `--slim-config=PATH`.
pub const CONFIG_FLAG: &str = "slim-config";

/// Global flags of runc and crun that take a value.
const GLOBAL_WITH_VALUE: &[&str] = &[
    "log",
    "log-format",
    "log-level",
    "root",
    "criu",
    "rootless",
    "cgroup-manager",
    CONFIG_FLAG,
];

/// Flags of `create` and `run` (runc and crun) that take a value.
const CREATE_WITH_VALUE: &[&str] = &[
    "bundle",
    "b",
    "console-socket",
    "pid-file",
    "preserve-fds",
    "config",
    "f",
];

/// Flags of `exec` (runc and crun) that take a value.
const EXEC_WITH_VALUE: &[&str] = &[
    "process",
    "p",
    "console-socket",
    "pid-file",
    "cwd",
    "env",
    "e",
    "user",
    "u",
    "cap",
    "c",
    "apparmor",
    "process-label",
    "preserve-fds",
    "cgroup",
    "additional-gids",
    "g",
];

#[derive(Debug, Default, PartialEq)]
pub struct Invocation {
    /// The arguments for the real runtime: everything but `--slim-config`.
    pub runtime_args: Vec<OsString>,
    pub slim_config: Option<PathBuf>,
    /// The runtime's global flags (before the command), for a `state` query of our own.
    pub global_args: Vec<OsString>,
    /// The command (`create`, `start`, ...), if there is one (`--version` has none).
    pub command: Option<String>,
    /// `--bundle`/`-b` of `create` and `run`; None means the current directory.
    pub bundle: Option<PathBuf>,
    /// crun's `--config`/`-f`: the spec's file name inside the bundle (default config.json).
    pub config_file: Option<PathBuf>,
    pub container_id: Option<String>,
    /// `--process FILE` of `exec`: the process to run, as JSON.
    pub process_file: Option<PathBuf>,
    /// The runtime's `--log FILE` and `--log-format text|json`.
    pub log: Option<PathBuf>,
    pub log_format: Option<String>,
}

impl Invocation {
    /// Whether this command creates a container from a bundle, so the spec may be edited.
    pub fn creates(&self) -> bool {
        matches!(self.command.as_deref(), Some("create" | "run"))
    }
}

/// A flag's name without its dashes and its `=VALUE`, and the inline value.
fn split_flag(arg: &OsStr) -> Option<(String, Option<OsString>)> {
    let s = arg.to_str()?;
    if !s.starts_with('-') || s == "-" || s == "--" {
        return None;
    }
    let body = s.trim_start_matches('-');
    match body.split_once('=') {
        Some((name, value)) => Some((name.to_string(), Some(value.into()))),
        None => Some((body.to_string(), None)),
    }
}

/// Reads argv (without argv[0]). Never fails: what it does not understand goes to the
/// runtime unchanged, which then reports it.
pub fn parse(argv: &[OsString]) -> Invocation {
    let mut inv = Invocation::default();
    let mut i = 0;
    // Global flags, up to the command.
    while i < argv.len() {
        let arg = &argv[i];
        let Some((name, inline)) = split_flag(arg) else {
            break;
        };
        let takes_value = GLOBAL_WITH_VALUE.contains(&name.as_str());
        let value = match (&inline, takes_value) {
            (Some(v), _) => Some(v.clone()),
            (None, true) => argv.get(i + 1).cloned(),
            (None, false) => None,
        };
        let consumed = if takes_value && inline.is_none() {
            2
        } else {
            1
        };
        match name.as_str() {
            CONFIG_FLAG => inv.slim_config = value.map(PathBuf::from),
            "log" => inv.log = value.map(PathBuf::from),
            "log-format" => inv.log_format = value.map(|v| v.to_string_lossy().into_owned()),
            _ => {}
        }
        if name != CONFIG_FLAG {
            inv.runtime_args
                .extend(argv[i..(i + consumed).min(argv.len())].iter().cloned());
        }
        i += consumed;
    }
    inv.global_args = inv.runtime_args.clone();
    inv.runtime_args
        .extend(argv[i.min(argv.len())..].iter().cloned());
    let Some(command) = argv.get(i) else {
        return inv;
    };
    inv.command = Some(command.to_string_lossy().into_owned());
    let with_value = match inv.command.as_deref() {
        Some("create" | "run") => CREATE_WITH_VALUE,
        Some("exec") => EXEC_WITH_VALUE,
        _ => return inv,
    };
    // Options and the container id (the first operand; exec's command follows it).
    let mut j = i + 1;
    while j < argv.len() {
        let arg = &argv[j];
        if arg == "--" {
            if inv.container_id.is_none() {
                inv.container_id = argv.get(j + 1).map(|a| a.to_string_lossy().into_owned());
            }
            break;
        }
        let Some((name, inline)) = split_flag(arg) else {
            if inv.container_id.is_none() {
                inv.container_id = Some(arg.to_string_lossy().into_owned());
            }
            if inv.command.as_deref() == Some("exec") {
                break;
            }
            j += 1;
            continue;
        };
        let takes_value = with_value.contains(&name.as_str());
        let value = match (&inline, takes_value) {
            (Some(v), _) => Some(v.clone()),
            (None, true) => argv.get(j + 1).cloned(),
            (None, false) => None,
        };
        match name.as_str() {
            "bundle" | "b" => inv.bundle = value.map(PathBuf::from),
            "config" | "f" if with_value == CREATE_WITH_VALUE => {
                inv.config_file = value.map(PathBuf::from)
            }
            "process" | "p" => inv.process_file = value.map(PathBuf::from),
            _ => {}
        }
        j += if takes_value && inline.is_none() {
            2
        } else {
            1
        };
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn podman_create() {
        // What podman 4.3 (conmon) passes, with `--runtime-flag slim-config=/etc/slim/h1.toml`.
        let argv = args(
            "--slim-config=/etc/slim/h1.toml create --bundle /var/lib/c/userdata \
             --pid-file /run/c/pidfile 0123abcd",
        );
        let inv = parse(&argv);
        assert_eq!(inv.slim_config, Some("/etc/slim/h1.toml".into()));
        assert_eq!(inv.command.as_deref(), Some("create"));
        assert!(inv.creates());
        assert_eq!(inv.bundle, Some("/var/lib/c/userdata".into()));
        assert_eq!(inv.container_id.as_deref(), Some("0123abcd"));
        assert_eq!(inv.runtime_args, argv[1..].to_vec());
    }

    #[test]
    fn containerd_create_keeps_global_flags() {
        // What containerd's runc shim passes.
        let argv = args(
            "--root /run/containerd/runc/k8s.io --log /run/containerd/x/log.json \
             --log-format json --systemd-cgroup create --bundle /run/containerd/x \
             --pid-file /run/containerd/x/init.pid --console-socket /tmp/pty.sock ctr1",
        );
        let inv = parse(&argv);
        assert_eq!(inv.runtime_args, argv);
        assert_eq!(inv.log, Some("/run/containerd/x/log.json".into()));
        assert_eq!(inv.log_format.as_deref(), Some("json"));
        assert_eq!(inv.bundle, Some("/run/containerd/x".into()));
        assert_eq!(inv.container_id.as_deref(), Some("ctr1"));
        assert_eq!(inv.slim_config, None);
    }

    #[test]
    fn config_flag_with_separate_value_is_removed() {
        let argv = args("--root /r --slim-config /etc/slim/h2.toml -b=/b run --detach id7");
        let inv = parse(&argv);
        assert_eq!(inv.slim_config, Some("/etc/slim/h2.toml".into()));
        assert_eq!(inv.runtime_args, args("--root /r -b=/b run --detach id7"));
        // -b before the command is not a global flag of either runtime; it is passed on and the
        // bundle of `run` defaults to the current directory.
        assert_eq!(inv.bundle, None);
        assert_eq!(inv.container_id.as_deref(), Some("id7"));
    }

    #[test]
    fn crun_config_and_short_bundle() {
        let inv = parse(&args("run -b /bundle -f spec.json --preserve-fds 2 c9"));
        assert_eq!(inv.bundle, Some("/bundle".into()));
        assert_eq!(inv.config_file, Some("spec.json".into()));
        assert_eq!(inv.container_id.as_deref(), Some("c9"));
    }

    #[test]
    fn exec_process_file_and_id() {
        // conmon's exec for `podman exec`, and containerd's.
        let inv = parse(&args(
            "--root /run/r exec --pid-file /x/pid --process /x/exec.json --detach c1",
        ));
        assert_eq!(inv.command.as_deref(), Some("exec"));
        assert_eq!(inv.process_file, Some("/x/exec.json".into()));
        assert_eq!(inv.container_id.as_deref(), Some("c1"));
        assert_eq!(inv.global_args, args("--root /run/r"));
        // Without --process the command follows the id; its own flags are not exec's.
        let inv = parse(&args("exec -e A=1 c2 /bin/ls -p x"));
        assert_eq!(inv.container_id.as_deref(), Some("c2"));
        assert_eq!(inv.process_file, None);
    }

    #[test]
    fn other_commands_and_no_command() {
        let inv = parse(&args("--root /r delete --force c1"));
        assert_eq!(inv.command.as_deref(), Some("delete"));
        assert!(!inv.creates());
        assert_eq!(inv.bundle, None);
        let inv = parse(&args("--version"));
        assert_eq!(inv.command, None);
        assert_eq!(inv.runtime_args, args("--version"));
        let inv = parse(&args("--slim-config"));
        assert_eq!(inv.runtime_args, Vec::<OsString>::new());
    }
}
