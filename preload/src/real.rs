//! The C library's own functions, found with dlsym(RTLD_NEXT) behind our interposed symbols.

use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicUsize, Ordering};
use libc::{sockaddr, socklen_t};

macro_rules! real_fns {
    ($( $name:ident : fn($($arg:ident : $ty:ty),*) -> $ret:ty ;)*) => {
        #[allow(non_upper_case_globals)]
        mod slots {
            use core::sync::atomic::AtomicUsize;
            $( pub static $name: AtomicUsize = AtomicUsize::new(0); )*
        }

        /// Resolves every real function; called from the library constructor, and lazily if a
        /// hook runs before it (another library's constructor).
        pub fn resolve_all() {
            $( let _ = lookup(&slots::$name, concat!(stringify!($name), "\0")); )*
        }

        $(
            #[doc = concat!("The C library's `", stringify!($name), "`.\n\n# Safety\nSame contract as the C function.")]
            #[inline]
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                let p = lookup(&slots::$name, concat!(stringify!($name), "\0"));
                // SAFETY: p is the address dlsym returned for this very symbol, whose C signature
                // is the one declared here.
                let f: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { core::mem::transmute(p) };
                // SAFETY: forwarded under the caller's contract.
                unsafe { f($($arg),*) }
            }
        )*
    };
}

fn lookup(slot: &AtomicUsize, name: &'static str) -> usize {
    let p = slot.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: name is NUL-terminated; RTLD_NEXT finds the next definition after this library.
    let mut f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr() as *const c_char) } as usize;
    if f == 0 {
        // Nothing after us defines it: the C library comes *before* this library in the lookup
        // order (LD_PRELOAD="libc.so.6:libslim_preload.so", which an engine may produce by
        // appending us to an image's own LD_PRELOAD). Its functions then win over our hooks, so
        // Slim is inactive in this program, but the program must run: take the C library's own
        // definition from its handle.
        f = from_libc(name);
    }
    if f == 0 {
        // Without the real function nothing can work; say which one and stop the program the way
        // a failed symbol lookup by the dynamic loader would.
        crate::log::emit(
            crate::log::ERROR,
            format_args!(
                "cannot find the C library's {}",
                name.trim_end_matches('\0')
            ),
        );
        // SAFETY: abort has no preconditions.
        unsafe { libc::abort() };
    }
    slot.store(f, Ordering::Relaxed);
    f
}

/// `name` looked up in the already loaded C library itself (glibc's soname, then musl's), or 0.
fn from_libc(name: &'static str) -> usize {
    for soname in [c"libc.so.6", c"libc.so"] {
        // SAFETY: soname is NUL-terminated; RTLD_NOLOAD only returns a library already mapped
        // (it loads nothing and runs no constructor).
        let h = unsafe { libc::dlopen(soname.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
        if h.is_null() {
            continue;
        }
        // SAFETY: h is a live handle, name is NUL-terminated.
        let f = unsafe { libc::dlsym(h, name.as_ptr() as *const c_char) } as usize;
        // SAFETY: h came from dlopen above; RTLD_NOLOAD took a reference that this drops.
        unsafe { libc::dlclose(h) };
        if f != 0 {
            return f;
        }
    }
    0
}

real_fns! {
    socket: fn(domain: c_int, ty: c_int, proto: c_int) -> c_int;
    connect: fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    bind: fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    listen: fn(fd: c_int, backlog: c_int) -> c_int;
    accept: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    accept4: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    getsockname: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getpeername: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getsockopt: fn(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    setsockopt: fn(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    close: fn(fd: c_int) -> c_int;
    dup: fn(fd: c_int) -> c_int;
    dup2: fn(old: c_int, new: c_int) -> c_int;
    dup3: fn(old: c_int, new: c_int, flags: c_int) -> c_int;
    fcntl: fn(fd: c_int, cmd: c_int, arg: usize) -> c_int;
    fcntl64: fn(fd: c_int, cmd: c_int, arg: usize) -> c_int;
    epoll_ctl: fn(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int;
    shutdown: fn(fd: c_int, how: c_int) -> c_int;

}

/// close_range(2), straight to the kernel: older C libraries lack the wrapper, and a missing
/// symbol must not stop the library from loading.
///
/// # Safety
/// Same contract as the system call.
pub unsafe fn close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int {
    // SAFETY: the system call takes three integers; forwarded under the caller's contract.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) as c_int }
}
