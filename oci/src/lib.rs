//! slim-oci: an OCI runtime wrapper that puts Slim into the containers that ask for it
//! (annotation `io.slim/enable=true`, or a host-wide default), then runs the real runtime
//! (crun or runc) with the same arguments. See docs/containers.md.

pub mod args;
pub mod bundle;
pub mod config;
pub mod create;
pub mod exec;
pub mod inject;
pub mod log;
pub mod request;
pub mod runtime;
pub mod seccomp;
