//! `libslim_preload.so`: loaded with LD_PRELOAD into unmodified container programs.
//!
//! It intercepts the control path of TCP sockets (socket, connect, bind, listen, accept,
//! getsockname, getpeername, socket options, close, dup, fcntl, epoll_ctl) and, for overlay
//! destinations that have a Slim listener, replaces the program's socket with a host-network
//! socket from the router, under the same descriptor number. Once a process's connections go
//! that way, socket() itself hands out the host socket, which becomes an ordinary overlay socket
//! again if the program uses it for anything else (see `connect::hosted_socket`). The data path
//! (send, recv, read, write, poll) is never touched: after setup the program talks to the
//! kernel directly. Whenever Slim cannot help (no router, a peer without Slim, a destination
//! outside the overlay prefixes, UDP, loopback, Unix sockets), the call goes to the C library
//! unchanged.
//!
//! Configuration: see [`config`].

pub mod addr;
pub mod config;
pub mod connect;
pub mod fdtable;
// The hooks have the C functions' contracts, documented once in the module.
#[allow(clippy::missing_safety_doc)]
pub mod hooks;
pub mod link;
pub mod listener;
pub mod log;
pub mod real;

extern "C" fn after_fork_in_child() {
    link::forget_pool();
}

extern "C" fn init() {
    real::resolve_all();
    let _ = config::get();
    // SAFETY: registers a handler that only touches atomics and closes descriptors.
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
}

/// Runs when the dynamic loader maps the library, before the program's main.
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;
