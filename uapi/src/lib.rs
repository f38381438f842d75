//! Slim's contracts, with no dependencies and `no_std`:
//! - [`proto`]: the router <-> preload library protocol (Unix `SOCK_SEQPACKET`, fds by `SCM_RIGHTS`);
//! - [`peer`]: the router <-> router protocol (TCP over the underlay);
//! - [`accept_table`]: the shared-memory table in which a router publishes announced connections;
//! - [`route_table`]: the shared-memory copy of a router's listener routes;
//! - [`kabi`], [`kabi_tables`]: the `/dev/slim` ioctl ABI of the kernel module (also compiled by it);
//! - [`wire`]: the primitive encoding both use;
//! - [`seal`] (feature `seal`): sealed tokens for the router <-> router channel (AEAD under the
//!   cluster key).
//!
//! Everything encodes into caller-provided buffers, so the preload library never allocates for it.
//! Without the `seal` feature the crate is `no_std` and has no dependencies; the feature needs
//! `std` (key files, the replay cache) and RustCrypto's `chacha20poly1305` and `blake2`.
#![cfg_attr(not(feature = "seal"), no_std)]

pub mod accept_table;
pub mod kabi;
pub mod kabi_tables;
pub mod peer;
pub mod proto;
pub mod route_table;
#[cfg(feature = "seal")]
pub mod seal;
pub mod seqslot;
pub mod wire;
