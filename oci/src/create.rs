//! `create` and `run`: the decision and the edit of the bundle's spec, before the real runtime
//! runs. Nothing here can fail the container's start: every problem is one log line naming
//! it and its fix, and the spec stays as the engine wrote it.

use crate::args::Invocation;
use crate::bundle;
use crate::config::{self, OciConfig};
use crate::inject::{self, Injection};
use crate::log::Log;
use crate::request::{self, Request};
use std::path::PathBuf;

/// What happened to the container's spec.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    NotAsked,
    /// Asked for, not injected; the reason was logged.
    Skipped,
}

pub fn prepare(inv: &Invocation, config: &OciConfig, log: &Log) -> Outcome {
    let id = inv.container_id.as_deref().unwrap_or("(no id)");
    let skip = |why: String| {
        log.warn(&format!("container {id} starts WITHOUT Slim: {why}"));
        Outcome::Skipped
    };
    let bundle = inv.bundle.clone().unwrap_or_else(|| PathBuf::from("."));
    let path = bundle::spec_path(&bundle, inv.config_file.as_deref());
    let mut spec = match bundle::read(&path) {
        Ok(s) => s,
        // The runtime will report an unreadable spec itself; say only what it means for Slim.
        Err(e) => return skip(e.to_string()),
    };
    match request::of(&spec.value, config.default) {
        Request::NoSlim => return Outcome::NotAsked,
        Request::Malformed(v) => {
            return skip(format!(
                "its annotation {}={v} is neither \"true\" nor \"false\"",
                request::ANNOTATION
            ))
        }
        Request::Slim => {}
    }
    let router = match config::load_router(&config.router_config) {
        Ok(r) => r,
        Err(e) => {
            return skip(format!(
                "the router's config is needed for the prefixes and the socket: {e} (set \
                 `router_config` in slim-oci's config if the router reads another file)"
            ))
        }
    };
    let injection = match Injection::check(&config.library, &router) {
        Ok(i) => i,
        Err(e) => return skip(e.to_string()),
    };
    if let Err(e) = inject::apply(&mut spec.value, &injection) {
        return skip(format!("{}: {e}", path.display()));
    }
    if let Err(e) = spec.write() {
        return skip(e.to_string());
    }
    log.info(&format!(
        "container {id}: Slim injected: {} at {}, {} at {}, SLIM_PREFIXES={}{}",
        injection.library.display(),
        inject::LIBRARY_IN_CONTAINER,
        injection.socket_dir.display(),
        inject::SOCKET_DIR_IN_CONTAINER,
        injection
            .prefixes
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(","),
        if injection.secure {
            ", seccomp denies ioctl(SIOCGIFCONF)"
        } else {
            ""
        }
    ));
    Outcome::Injected
}
