//! `slim-oci [runtime global flags] COMMAND [ARGS]`: called by a container engine in place of
//! crun or runc. `create` and `run` may edit the bundle's config.json first; then, for every
//! command, the real runtime replaces this process with the same arguments (minus
//! `--slim-config PATH`).

use slim_oci::args;
use slim_oci::log::Log;
use slim_oci::{config, create, exec, runtime};
use std::ffi::OsString;
use std::process::ExitCode;

const HELP: &str = "\
slim-oci: an OCI runtime that puts Slim into the containers that ask for it, then runs crun or runc

Usage: slim-oci [--slim-config PATH] [RUNTIME GLOBAL FLAGS] COMMAND [ARGS...]

Container engines call it in place of crun or runc (podman --runtime, containerd's BinaryName,
CRI-O's runtime_path, Docker's \"runtimes\"). Every command and flag goes to the real runtime
unchanged; before `create` and `run`, a container whose spec has the annotation
io.slim/enable=true (or none, with default = \"on\") gets, in its bundle's config.json:
  - the library, bind-mounted read-only at /run/slim-lib/libslim_preload.so, in LD_PRELOAD;
  - the router socket's directory, bind-mounted read-only at /run/slim, in SLIM_ROUTER_SOCKET;
  - SLIM_PREFIXES from the router's config;
  - with `secure = true` in the router's config, a seccomp rule denying ioctl(SIOCGIFCONF).
`exec --process FILE` in a container that got Slim gets the same variables.
A missing library or router socket starts the container without Slim and logs one line
(syslog, the runtime's --log or stderr, and `log` below).

Options:
  --slim-config PATH   slim-oci's config (podman: --runtime-flag slim-config=PATH);
                       default $SLIM_OCI_CONFIG, else /etc/slim/oci.toml
  -h, --help           this text (the real runtime's own: `crun --help`)

Config (TOML; every key optional):
  runtime = \"crun\"                    # path or name in PATH; default crun, else runc
  router_config = \"/etc/slim/router.toml\"
  library = \"/usr/local/lib/slim/libslim_preload.so\"
  default = \"off\"                     # \"on\": Slim unless io.slim/enable=false
  log = \"/var/log/slim-oci.log\"       # also log here

Documentation: docs/containers.md
";

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    if argv.len() == 1 && (argv[0] == "--help" || argv[0] == "-h") {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    let inv = args::parse(&argv);
    let mut log = Log {
        runtime_log: inv.log.clone(),
        runtime_log_json: inv.log_format.as_deref() == Some("json"),
        own_log: None,
        stderr: true,
        syslog: true,
    };
    let (path, explicit) = config::locate(inv.slim_config.as_deref());
    let config = match config::load(&path, explicit) {
        Ok(c) => Some(c),
        Err(e) => {
            if inv.creates() {
                log.warn(&format!(
                    "container {} starts WITHOUT Slim: {e}",
                    inv.container_id.as_deref().unwrap_or("(no id)")
                ));
            }
            None
        }
    };
    log.own_log = config.as_ref().and_then(|c| c.log.clone());
    let runtime = match runtime::resolve(config.as_ref().and_then(|c| c.runtime.as_deref())) {
        Ok(rt) => rt,
        Err(e) => return fail(&e.to_string(), &log),
    };
    match (&config, inv.command.as_deref()) {
        (Some(c), Some("create" | "run")) => {
            create::prepare(&inv, c, &log);
        }
        (Some(_), Some("exec")) => exec::prepare(&inv, &runtime, &log),
        _ => {}
    }
    let e = runtime::exec(&runtime, &inv.runtime_args);
    fail(&format!("cannot run {}: {e}", runtime.display()), &log)
}

/// The runtime could not be run: the engine sees exit code 127 and the reason.
fn fail(err: &str, log: &Log) -> ExitCode {
    log.warn(err);
    if log.runtime_log.is_some() {
        eprintln!("slim-oci: {err}");
    }
    ExitCode::from(127)
}
