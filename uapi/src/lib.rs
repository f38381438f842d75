//! Slim's contracts, with no dependencies and `no_std`:
//! - [`proto`]: the router <-> preload library protocol (Unix `SOCK_SEQPACKET`, fds by `SCM_RIGHTS`);
//! - [`peer`]: the router <-> router protocol (TCP over the underlay);
//! - [`accept_table`]: the shared-memory table in which a router publishes announced connections;
//! - [`route_table`]: the shared-memory copy of a router's listener routes;
//! - [`wire`]: the primitive encoding both use.
//!
//! Everything encodes into caller-provided buffers, so the preload library never allocates for it.
#![no_std]

pub mod accept_table;
pub mod kabi;
pub mod peer;
pub mod proto;
pub mod route_table;
pub mod seqslot;
pub mod wire;
