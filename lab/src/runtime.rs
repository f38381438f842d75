//! How the lab's containers are made: bare network namespaces (the default, also inside the QEMU
//! guest) or real OCI containers run by podman (see `podman`).

use std::fmt;

use crate::paths::runtime_file;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Runtime {
    /// Each container is a network namespace with a veth pair that slim-lab makes itself.
    #[default]
    Netns,
    /// Each container is an OCI container run by podman with crun, attached by CNI (bridge plugin,
    /// host-local IPAM) to its host's bridge.
    Podman,
}

impl Runtime {
    pub fn name(&self) -> &'static str {
        match self {
            Runtime::Netns => "netns",
            Runtime::Podman => "podman",
        }
    }

    pub fn parse(s: &str) -> Option<Runtime> {
        match s {
            "netns" => Some(Runtime::Netns),
            "podman" => Some(Runtime::Podman),
            _ => None,
        }
    }
}

/// The runtime the lab was built with (`up` records it first); a missing file means a lab
/// built before runtimes existed, or none at all: namespaces.
pub fn recorded() -> Runtime {
    std::fs::read_to_string(runtime_file())
        .ok()
        .and_then(|s| Runtime::parse(s.trim()))
        .unwrap_or_default()
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in [Runtime::Netns, Runtime::Podman] {
            assert_eq!(Runtime::parse(r.name()), Some(r));
        }
        assert_eq!(Runtime::parse("docker"), None);
    }
}
