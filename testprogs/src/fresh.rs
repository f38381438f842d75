//! `fresh-sockets`: what a socket fresh from socket() looks like, and what it can still become,
//! once the process's connections go Slim's fast way (from then on the library may hand out a
//! host socket at socket() time). Each check is one a program relies on without thinking.

use crate::{cvt, errno, exchange, name, open_conn, setsockopt_int, to_storage};
use anyhow::{bail, Context, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;

fn tcp_socket(flags: i32) -> Result<RawFd> {
    // SAFETY: plain socket(2).
    cvt(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | flags, 0) },
        "socket",
    )
}

fn close(fd: RawFd) {
    // SAFETY: closes a descriptor this module opened.
    unsafe { libc::close(fd) };
}

fn connect(fd: RawFd, to: SocketAddr) -> Result<()> {
    let (ss, len) = to_storage(to, false);
    // SAFETY: ss holds a valid address of `len` bytes.
    let r = unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) };
    cvt(r, "connect").map(|_| ())
}

fn bind(fd: RawFd, at: SocketAddr) -> Result<()> {
    let (ss, len) = to_storage(at, false);
    // SAFETY: ss holds a valid address of `len` bytes.
    let r = unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) };
    cvt(r, "bind").map(|_| ())
}

fn get_int(fd: RawFd, level: i32, opt: i32) -> Result<i32> {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: v/len valid for writes.
    let r = unsafe { libc::getsockopt(fd, level, opt, &mut v as *mut i32 as *mut _, &mut len) };
    cvt(r, "getsockopt").map(|_| v)
}

/// A fresh socket: unbound and unconnected as far as the program can tell.
fn looks_fresh(fd: RawFd, what: &str) -> Result<()> {
    let me = name(fd, false)?;
    if me != SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0) {
        bail!("{what}: getsockname of a fresh socket says {me}");
    }
    if name(fd, true).is_ok() || errno() != libc::ENOTCONN {
        bail!("{what}: getpeername of a fresh socket did not fail with ENOTCONN");
    }
    Ok(())
}

/// One connection to the Slim server at `addr`, checked end to end (the server saw our
/// address); returns our overlay address.
fn one_conn(fd: RawFd, addr: SocketAddr, what: &str) -> Result<IpAddr> {
    let me = name(fd, false).with_context(|| what.to_string())?;
    exchange(fd, addr, 1000).with_context(|| what.to_string())?;
    Ok(me.ip())
}

pub fn fresh_sockets(addr: SocketAddr, dead_port: u16) -> Result<()> {
    // Connections the ordinary way (the first also maps the router's tables): the process's
    // connections now go the fast way.
    let overlay_ip = one_conn(open_conn(addr, "block", false)?, addr, "first connection")?;
    one_conn(open_conn(addr, "block", false)?, addr, "second connection")?;
    if overlay_ip != IpAddr::from([10, 32, 0, 1]) {
        bail!("first connection: our address is {overlay_ip}, not c1's overlay address");
    }

    // Flags from socket() hold, and a fresh socket looks fresh.
    let s = tcp_socket(0)?;
    looks_fresh(s, "plain socket")?;
    // SAFETY: fcntl queries on our descriptor.
    let (fl, fdfl) = unsafe { (libc::fcntl(s, libc::F_GETFL), libc::fcntl(s, libc::F_GETFD)) };
    if fl & libc::O_NONBLOCK != 0 || fdfl & libc::FD_CLOEXEC != 0 {
        bail!("socket(SOCK_STREAM) came non-blocking or close-on-exec (fl {fl:#x}, fd {fdfl:#x})");
    }
    close(s);
    let s = tcp_socket(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    // SAFETY: as above.
    let (fl, fdfl) = unsafe { (libc::fcntl(s, libc::F_GETFL), libc::fcntl(s, libc::F_GETFD)) };
    if fl & libc::O_NONBLOCK == 0 || fdfl & libc::FD_CLOEXEC == 0 {
        bail!("SOCK_NONBLOCK | SOCK_CLOEXEC not honoured (fl {fl:#x}, fd {fdfl:#x})");
    }
    if get_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN)? != libc::AF_INET {
        bail!("SO_DOMAIN of an AF_INET socket is not AF_INET");
    }
    close(s);

    // Options set before connect are there after it.
    let s = tcp_socket(0)?;
    setsockopt_int(s, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    setsockopt_int(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    connect(s, addr)?;
    if get_int(s, libc::IPPROTO_TCP, libc::TCP_NODELAY)? != 1
        || get_int(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE)? != 1
    {
        bail!("options set before connect were lost");
    }
    if one_conn(s, addr, "connection with options")? != overlay_ip {
        bail!("a connection with options has another source address");
    }

    // bind to our own overlay address (a host socket could not be).
    let s = tcp_socket(0)?;
    bind(s, SocketAddr::new(overlay_ip, 0)).context("bind to our overlay address")?;
    let me = name(s, false)?;
    if me.ip() != overlay_ip || me.port() == 0 {
        bail!("bound to {overlay_ip}:0, getsockname says {me}");
    }
    connect(s, addr)?;
    one_conn(s, addr, "connection from a bound socket")?;

    // listen without bind, and a connect to it over this namespace's loopback.
    let l = tcp_socket(0)?;
    // SAFETY: listen on our socket.
    cvt(unsafe { libc::listen(l, 4) }, "listen without bind")?;
    let lport = name(l, false)?.port();
    let s = tcp_socket(0)?;
    connect(s, SocketAddr::new(Ipv4Addr::LOCALHOST.into(), lport))
        .context("connect to our own listener over loopback")?;
    // SAFETY: accept on our listener; no address wanted.
    let a = cvt(
        unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) },
        "accept",
    )?;
    if name(s, false)?.ip() != IpAddr::from(Ipv4Addr::LOCALHOST) {
        bail!("a loopback connection has a non-loopback source");
    }
    close(a);
    close(s);
    close(l);

    // dup before connect: both descriptors are the same socket, before and after. (The
    // loopback connect above went elsewhere, which ends hosting until a connection goes the
    // fast way again.)
    one_conn(open_conn(addr, "block", false)?, addr, "fast again")?;
    let s = tcp_socket(0)?;
    // SAFETY: dup of our descriptor.
    let d = cvt(unsafe { libc::dup(s) }, "dup")?;
    looks_fresh(d, "dup of a fresh socket")?;
    connect(s, addr)?;
    if name(d, true).context("getpeername of the dup")? != addr {
        bail!("the dup of a connected socket is not connected to {addr}");
    }
    close(d);
    one_conn(s, addr, "connection through a dup'ed socket")?;

    // A port nobody listens on: refused, as without Slim; the next connection works.
    let s = tcp_socket(0)?;
    match connect(s, SocketAddr::new(addr.ip(), dead_port)) {
        Ok(()) => bail!("a connect to port {dead_port}, where nothing listens, succeeded"),
        Err(_) if errno() == libc::ECONNREFUSED => {}
        Err(e) => bail!("a connect to a closed port: {e:#}, not ECONNREFUSED"),
    }
    close(s);
    one_conn(open_conn(addr, "block", false)?, addr, "after a refusal")?;
    one_conn(open_conn(addr, "block", false)?, addr, "fast again")?;

    // A fresh socket inherited across exec, connected by the new program.
    let s = tcp_socket(0)?;
    // SAFETY: fork; the child only execs (or exits).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let exe = std::env::current_exe().unwrap_or_default();
        let err = std::os::unix::process::CommandExt::exec(std::process::Command::new(exe).args([
            "fresh-inherited",
            &s.to_string(),
            &addr.to_string(),
            &overlay_ip.to_string(),
        ]));
        eprintln!("exec failed: {err}");
        std::process::exit(3);
    }
    close(s);
    let mut st = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
        bail!("the exec'd program could not use the fresh socket it inherited");
    }
    println!("OK fresh-sockets");
    Ok(())
}

/// Runs in the exec'd child: connect the inherited fresh socket; it must have our overlay address.
pub fn fresh_inherited(fd: RawFd, addr: SocketAddr, overlay_ip: IpAddr) -> Result<()> {
    looks_fresh(fd, "inherited socket")?;
    connect(fd, addr).context("connect of an inherited fresh socket")?;
    let me = one_conn(fd, addr, "inherited socket")?;
    if me != overlay_ip {
        bail!("the inherited socket connected from {me}, not {overlay_ip}");
    }
    println!("OK fresh-inherited");
    Ok(())
}
