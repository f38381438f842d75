//! slim-lab: a local two-host Slim cluster made of network namespaces joined by a real VXLAN
//! overlay. `topology` holds the names and addresses for other crates' tests; the other
//! modules build, check and tear down the lab.

pub mod cni;
pub mod container_cmd;
pub mod containers;
pub mod down;
pub mod exec;
pub mod health;
pub mod ip;
pub mod network;
pub mod paths;
pub mod podman;
pub mod podman_cleanup;
pub mod processes;
pub mod router_cmd;
pub mod routers;
pub mod runtime;
pub mod state;
pub mod status;
pub mod topology;
pub mod up;
