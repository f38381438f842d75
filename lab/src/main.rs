//! The `slim-lab` command line.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use std::path::PathBuf;

use slim_lab::network::byte_counters;
use slim_lab::podman::Options;
use slim_lab::router_cmd::{self, Action, RouterMode};
use slim_lab::runtime::Runtime;
use slim_lab::state::Mode;
use slim_lab::topology::Node;
use slim_lab::{container_cmd, containers, down, exec, status, up};

/// A local two-host Slim cluster: network namespaces joined by a real VXLAN overlay.
#[derive(Parser)]
#[command(name = "slim-lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab (idempotent: does nothing if it is already up in this mode).
    Up {
        /// Start the routers with --secure.
        #[arg(long)]
        secure: bool,
        /// Build only the network, without routers.
        #[arg(long)]
        no_routers: bool,
        /// What the containers are: network namespaces, or OCI containers run by podman with
        /// crun from the root filesystem of scripts/rootfs/build-rootfs.sh ($SLIM_ROOTFS).
        #[arg(long, value_enum, default_value_t = Runtime::Netns)]
        runtime: Runtime,
        /// With --runtime podman: the OCI runtime podman runs the containers with (e.g. an OCI
        /// runtime wrapper such as slim-oci) instead of crun.
        #[arg(
            long,
            value_name = "PATH",
            requires = "runtime",
            conflicts_with = "slim_oci"
        )]
        oci_runtime: Option<PathBuf>,
        /// With --runtime podman: run the containers through slim-oci (this PATH), configured per
        /// host with that host's router; containers annotated io.slim/enable=true get Slim.
        #[arg(long, value_name = "PATH", requires = "runtime")]
        slim_oci: Option<PathBuf>,
        /// With --runtime podman: an annotation on every container (repeatable), e.g.
        /// io.slim/enable=true.
        #[arg(long, value_name = "KEY=VALUE", requires = "runtime")]
        annotation: Vec<String>,
        /// With --runtime podman: podman's --security-opt on every container (repeatable), e.g.
        /// seccomp=unconfined to measure what podman's default seccomp filter costs.
        #[arg(long, value_name = "OPT", requires = "runtime")]
        security_opt: Vec<String>,
    },
    /// Remove everything the lab made; succeeds when nothing exists.
    Down,
    /// Show namespaces, addresses, routers and VXLAN counters; exit 1 unless fully up.
    Status,
    /// Print a node's address: overlay for a container (with podman, the one IPAM gave it),
    /// underlay for a host.
    Addr {
        node: Node,
        /// The IPv6 address instead of the IPv4 one.
        #[arg(long)]
        v6: bool,
    },
    /// Run a command inside a node's network namespace (a podman container: in all its
    /// namespaces, through `podman exec`).
    Exec {
        node: Node,
        /// Preload Slim and point it at the container's router (containers only).
        #[arg(long)]
        slim: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// Start, stop or restart one host's router, leaving the network and every other process be.
    Router {
        /// h1 or h2.
        host: Node,
        action: Action,
    },
    /// Restart both routers in plain or secure mode (secure needs the slim_kern module,
    /// /dev/slim) and record it; the network, the containers and their programs stay.
    Routers { mode: RouterMode },
    /// With --runtime podman: remove a container (`podman rm --force`: its processes killed, its
    /// address released, its network namespace gone) and its records. Succeeds if it is absent.
    Rm { node: Node },
    /// With --runtime podman: create a removed container again, as `up` does.
    Run {
        node: Node,
        #[command(flatten)]
        opts: RunArgs,
    },
    /// With --runtime podman: remove a container and create it again with the same addresses
    /// (`--ip`/`--ip6` to IPAM); its processes are new.
    Restart {
        node: Node,
        #[command(flatten)]
        opts: RunArgs,
    },
    /// Print `rx_bytes tx_bytes` of a device inside a node's namespace.
    Counters { node: Node, dev: String },
    /// List the nodes: name, kind, host, IPv4, IPv6, namespace.
    Nodes,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Without the lab's --annotation(s): slim-oci injects no Slim into this container.
    #[arg(long)]
    plain: bool,
    /// The IPv4 address to ask IPAM for (with --ip6).
    #[arg(long, value_name = "ADDR", requires = "ip6")]
    ip: Option<std::net::Ipv4Addr>,
    /// The IPv6 address to ask IPAM for (with --ip).
    #[arg(long, value_name = "ADDR", requires = "ip")]
    ip6: Option<std::net::Ipv6Addr>,
}

impl RunArgs {
    fn options(&self) -> container_cmd::RunOptions {
        container_cmd::RunOptions {
            plain: self.plain,
            v4: self.ip,
            v6: self.ip6,
        }
    }
}

fn container(node: Node) -> Result<&'static slim_lab::topology::Container> {
    match node {
        Node::Container(c) => Ok(c),
        Node::Host(h) => bail!(
            "{} is a host; rm, run and restart take a container (c1, c2, c3)",
            h.name
        ),
    }
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("slim-lab manages network namespaces and needs root; run it with sudo");
    }
    Ok(())
}

fn run(command: Cmd) -> Result<ExitCode> {
    match command {
        Cmd::Up {
            secure,
            no_routers,
            runtime,
            oci_runtime,
            slim_oci,
            annotation,
            security_opt,
        } => {
            require_root()?;
            if runtime != Runtime::Podman
                && (oci_runtime.is_some()
                    || slim_oci.is_some()
                    || !annotation.is_empty()
                    || !security_opt.is_empty())
            {
                bail!(
                    "--oci-runtime, --slim-oci, --annotation and --security-opt only apply to \
                     --runtime podman"
                );
            }
            let with_slim_oci = slim_oci.is_some();
            let oci_runtime = oci_runtime
                .or(slim_oci)
                .map(|p| {
                    std::fs::canonicalize(&p).map_err(|e| {
                        anyhow::anyhow!("--oci-runtime {}: {e}; give an existing path", p.display())
                    })
                })
                .transpose()?;
            up::up(
                Mode {
                    secure,
                    routers: !no_routers,
                    runtime,
                },
                &Options {
                    oci_runtime,
                    annotations: annotation,
                    security_opts: security_opt,
                    slim_oci: with_slim_oci,
                },
            )?;
        }
        Cmd::Down => {
            require_root()?;
            down::down()?;
        }
        Cmd::Status => {
            require_root()?;
            if !status::status()? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Addr { node, v6 } => println!("{}", containers::addr(node, v6)?),
        Cmd::Exec { node, slim, cmd } => {
            require_root()?;
            let failure = exec::exec(node, slim, &cmd);
            eprintln!("slim-lab: {:#}", failure.error);
            return Ok(ExitCode::from(failure.exit_code));
        }
        Cmd::Router { host, action } => {
            require_root()?;
            let Node::Host(host) = host else {
                bail!("{host} is a container; routers run on the hosts (h1, h2)");
            };
            router_cmd::router(host, action)?;
        }
        Cmd::Routers { mode } => {
            require_root()?;
            router_cmd::set_mode(mode)?;
        }
        Cmd::Rm { node } => {
            require_root()?;
            container_cmd::rm(container(node)?)?;
        }
        Cmd::Run { node, opts } => {
            require_root()?;
            container_cmd::run(container(node)?, opts.options())?;
        }
        Cmd::Restart { node, opts } => {
            require_root()?;
            container_cmd::restart(container(node)?, opts.options())?;
        }
        Cmd::Counters { node, dev } => {
            require_root()?;
            let (rx, tx) = byte_counters(node.netns(), &dev)?;
            println!("{rx} {tx}");
        }
        Cmd::Nodes => status::nodes()?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // SAFETY: runs first in main, before any thread exists; SIG_DFL installs no handler code.
    // Dying quietly on a closed pipe (`slim-lab status | head`) beats panicking in println!.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("slim-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
