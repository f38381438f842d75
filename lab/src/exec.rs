//! `slim-lab exec`: run a command inside a node's network namespace, optionally under Slim.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::paths::{netns_path, preload_lib, router_socket};
use crate::runtime::Runtime;
use crate::state::recorded_runtime;
use crate::topology::{Node, OVERLAY_PREFIXES};

/// Why exec failed, with the exit status to report. As with `docker run`, 125 means slim-lab
/// itself failed, 126 that the command could not be run, 127 that it was not found, so that
/// callers can tell these from any status of the command itself.
pub struct ExecError {
    pub error: anyhow::Error,
    pub exit_code: u8,
}

impl From<anyhow::Error> for ExecError {
    fn from(error: anyhow::Error) -> Self {
        ExecError {
            error,
            exit_code: 125,
        }
    }
}

/// The environment that makes a container's processes use Slim.
fn slim_env(node: Node) -> Result<Vec<(&'static str, OsString)>> {
    let Node::Container(c) = node else {
        bail!("--slim only applies to containers (c1, c2, c3); {node} is a host");
    };
    let lib = preload_lib()?;
    let mut preload = lib.into_os_string();
    // Keep whatever the caller preloads (sanitizers, tracers) after our library.
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(existing);
    }
    Ok(vec![
        ("LD_PRELOAD", preload),
        (
            "SLIM_ROUTER_SOCKET",
            router_socket(c.host()).into_os_string(),
        ),
        ("SLIM_PREFIXES", OVERLAY_PREFIXES.join(",").into()),
    ])
}

/// Enters the namespace with setns and execs in place: the command keeps this pid, inherits
/// stdio untouched and its exit status becomes ours. Unlike `ip netns exec`, /sys stays the
/// initial namespace's view. Returns only on failure.
/// In a podman container, execs `podman exec` instead (see `podman::exec_command`): the command
/// then runs in every namespace of the container, with its exit status.
pub fn exec(node: Node, slim: bool, cmd: &[OsString]) -> ExecError {
    let prepared = (|| -> Result<Command> {
        let Some((program, args)) = cmd.split_first() else {
            bail!("no command given; usage: slim-lab exec NODE [--slim] -- CMD ARGS...");
        };
        if let Node::Container(c) = node {
            if recorded_runtime() == Runtime::Podman {
                return Ok(crate::podman::exec_command(c, slim, cmd));
            }
        }
        let mut command = Command::new(program);
        command.args(args);
        if slim {
            command.envs(slim_env(node)?);
        }
        let path = netns_path(node.netns());
        let ns = File::open(&path).with_context(|| {
            format!(
                "cannot open {}; is the lab up (`slim-lab up`)?",
                path.display()
            )
        })?;
        setns(&ns, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("cannot enter {}; run as root", node.netns()))?;
        Ok(command)
    })();
    let mut command = match prepared {
        Ok(command) => command,
        Err(e) => return e.into(),
    };
    let err = command.exec();
    ExecError {
        exit_code: if err.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
        error: anyhow::Error::new(err).context(format!(
            "cannot run `{}` in {}",
            cmd[0].to_string_lossy(),
            node.netns()
        )),
    }
}
