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
    warn_if_shadowed();
    // SAFETY: registers a handler that only touches atomics and closes descriptors.
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
}

/// The program's calls reach our hooks only if no library before us in the lookup order defines
/// them; with the C library preloaded ahead of us they never do. Say so once: the program then
/// runs on the overlay, which is correct but not what the operator asked for.
fn warn_if_shadowed() {
    // SAFETY: the name is NUL-terminated; RTLD_DEFAULT searches the global scope.
    let first = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"socket".as_ptr()) };
    // A reference to our own exported `socket` would itself be resolved through the global scope,
    // so compare the objects that hold the two addresses instead: INIT is local to this library.
    if !first.is_null() && object_of(first) != object_of(core::ptr::addr_of!(INIT).cast()) {
        log::emit(
            log::WARN,
            format_args!(
                "socket() resolves to a library loaded before libslim_preload.so (LD_PRELOAD \
                 order?): this program runs without Slim; put libslim_preload.so first"
            ),
        );
    }
}

/// The base address of the loaded object that holds `addr` (null if none does).
fn object_of(addr: *const core::ffi::c_void) -> *mut core::ffi::c_void {
    // SAFETY: Dl_info is plain data; all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads addr's value and fills info.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 {
        return core::ptr::null_mut();
    }
    info.dli_fbase
}

/// Runs when the dynamic loader maps the library, before the program's main.
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;
