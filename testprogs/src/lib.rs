//! The logic of `slim-testprog`: plain libc socket calls, as C programs make them.

pub mod fresh;
pub mod oci_probe;
pub mod peer_attack;

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{FromRawFd, RawFd};

fn cvt(r: i32, what: &str) -> Result<i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error()).with_context(|| what.to_string())
    } else {
        Ok(r)
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub fn to_storage(a: SocketAddr, v6sock: bool) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let a = match (v6sock, a) {
        (true, SocketAddr::V4(v4)) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        _ => a,
    };
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: storage is big enough and aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            (ss, size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(v6) => {
            let s6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: storage is big enough and aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, s6) };
            (ss, size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

pub mod attack;

/// The pending error of a socket (`SO_ERROR`): how a non-blocking connect ended; 0 if it did not fail.
fn so_error(fd: RawFd) -> i32 {
    let mut err: i32 = 0;
    let mut l = size_of::<i32>() as libc::socklen_t;
    // SAFETY: err/l are valid for writes; SO_ERROR writes an int.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut i32 as *mut libc::c_void,
            &mut l,
        )
    };
    err
}
pub mod seccomp;

/// Whether two endpoints are the same, an IPv4-mapped IPv6 address equal to its IPv4 spelling.
pub fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    let n = |x: SocketAddr| match x {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => x,
        },
        _ => x,
    };
    n(a) == n(b)
}

pub fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: family checked.
            let s = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(s.sin_addr.s_addr).into(),
                u16::from_be(s.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: family checked.
            let s = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(s.sin6_addr.s6_addr);
            let port = u16::from_be(s.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
            })
        }
        _ => None,
    }
}

pub fn name(fd: RawFd, peer: bool) -> Result<SocketAddr> {
    // SAFETY: zeroed storage valid.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as u32;
    // SAFETY: ss/len valid for writes.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len)
        } else {
            libc::getsockname(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len)
        }
    };
    cvt(r, if peer { "getpeername" } else { "getsockname" })?;
    from_storage(&ss).ok_or_else(|| anyhow!("unexpected address family"))
}

fn set_nonblock(fd: RawFd, on: bool) {
    // SAFETY: fcntl on a valid fd.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(
            fd,
            libc::F_SETFL,
            if on {
                fl | libc::O_NONBLOCK
            } else {
                fl & !libc::O_NONBLOCK
            },
        );
    }
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, v: i32) -> Result<()> {
    // SAFETY: v is a valid int.
    let r =
        unsafe { libc::setsockopt(fd, level, name, &v as *const i32 as *const libc::c_void, 4) };
    cvt(r, "setsockopt").map(|_| ())
}

pub struct ServeCfg {
    pub port: u16,
    pub v6: bool,
    pub v6only: bool,
    pub workers: usize,
    pub accept: String,
    pub accept4_flags: bool,
    /// Close every descriptor above the listener after listen(), as daemons do on start.
    pub close_range: bool,
}

fn handle(fd: RawFd, expect_flags: bool) {
    let check = || -> Result<()> {
        if expect_flags {
            // SAFETY: fcntl queries on a valid fd.
            let (fl, fdfl) = unsafe {
                (
                    libc::fcntl(fd, libc::F_GETFL),
                    libc::fcntl(fd, libc::F_GETFD),
                )
            };
            if fl & libc::O_NONBLOCK == 0 || fdfl & libc::FD_CLOEXEC == 0 {
                bail!("accept4 flags not applied");
            }
            set_nonblock(fd, false);
        }
        let peer = name(fd, true)?;
        let local = name(fd, false)?;
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        // SAFETY: fd is ours; File takes ownership and closes it.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        f.write_all(format!("HELLO pid={pid} peer={peer} local={local}\n").as_bytes())?;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            f.write_all(&buf[..n])?;
        }
    };
    if let Err(e) = check() {
        eprintln!("server: connection error: {e:#}");
    }
}

fn wait_readable(listen_fd: RawFd, style: &str, ep: RawFd) -> Result<()> {
    match style {
        "block" => Ok(()),
        "epoll" | "epoll-et" => {
            let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: evs valid array.
            let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 4, -1) };
            cvt(n, "epoll_wait").map(|_| ())
        }
        "poll" => {
            let mut p = libc::pollfd {
                fd: listen_fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: p valid.
            cvt(unsafe { libc::poll(&mut p, 1, -1) }, "poll").map(|_| ())
        }
        "select" => {
            // SAFETY: fd_set manipulation on a zeroed set; listen_fd < FD_SETSIZE in tests.
            unsafe {
                let mut set: libc::fd_set = zeroed();
                libc::FD_ZERO(&mut set);
                libc::FD_SET(listen_fd, &mut set);
                cvt(
                    libc::select(
                        listen_fd + 1,
                        &mut set,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    ),
                    "select",
                )?;
                if !libc::FD_ISSET(listen_fd, &set) {
                    bail!("select returned without the listener");
                }
            }
            Ok(())
        }
        other => bail!("unknown accept style {other}"),
    }
}

fn worker(l: RawFd, cfg: &ServeCfg) -> Result<()> {
    let style = cfg.accept.as_str();
    let mut ep = -1;
    if style.starts_with("epoll") {
        // SAFETY: plain syscalls.
        ep = cvt(
            unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
            "epoll_create1",
        )?;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32
                | if style == "epoll-et" {
                    libc::EPOLLET as u32
                } else {
                    0
                },
            u64: l as u64,
        };
        if style == "epoll-et" {
            ev.events &= !(libc::EPOLLEXCLUSIVE as u32);
        }
        // SAFETY: ev valid.
        cvt(
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, l, &mut ev) },
            "epoll_ctl",
        )?;
    }
    if style != "block" {
        set_nonblock(l, true);
    }
    loop {
        wait_readable(l, style, ep)?;
        loop {
            let flags = if cfg.accept4_flags {
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
            } else {
                0
            };
            // SAFETY: null address is allowed.
            let c = unsafe { libc::accept4(l, std::ptr::null_mut(), std::ptr::null_mut(), flags) };
            if c < 0 {
                let e = errno();
                if e == libc::EAGAIN || e == libc::EINTR {
                    break;
                }
                bail!("accept: {}", std::io::Error::from_raw_os_error(e));
            }
            let expect = cfg.accept4_flags;
            std::thread::spawn(move || handle(c, expect));
            if style == "block" {
                break;
            }
        }
    }
}

pub fn serve(cfg: &ServeCfg) -> Result<()> {
    let family = if cfg.v6 {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket call.
    let l = cvt(
        unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )?;
    setsockopt_int(l, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if cfg.v6 {
        setsockopt_int(l, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, cfg.v6only as i32)?;
    }
    let any: IpAddr = if cfg.v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let (ss, len) = to_storage(SocketAddr::new(any, cfg.port), false);
    // SAFETY: ss valid of len bytes.
    cvt(
        unsafe { libc::bind(l, &ss as *const _ as *const libc::sockaddr, len) },
        "bind",
    )?;
    // SAFETY: plain listen.
    cvt(unsafe { libc::listen(l, 1024) }, "listen")?;
    let local = name(l, false)?;
    if cfg.close_range {
        // SAFETY: closes descriptors this program does not use (everything above the listener).
        cvt(
            unsafe { libc::close_range(l as u32 + 1, u32::MAX, 0) },
            "close_range",
        )?;
        // And take some high numbers for itself (a shell's `exec 900>file` does this).
        for n in 895..910 {
            // SAFETY: dup2 of stderr onto numbers this program then owns, then closes.
            unsafe {
                cvt(libc::dup2(2, n), "dup2")?;
                libc::close(n);
            }
        }
    }
    let mut children = Vec::new();
    for _ in 1..cfg.workers {
        // SAFETY: fork in a single-threaded process (no threads started yet).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let r = worker(l, cfg);
            eprintln!("worker ended: {r:?}");
            std::process::exit(1);
        }
        children.push(pid);
    }
    // Ready only once every worker exists.
    println!("LISTENING {local} workers={}", cfg.workers);
    std::io::stdout().flush()?;
    worker(l, cfg)
}

pub struct ClientCfg {
    pub addr: SocketAddr,
    pub style: String,
    pub conns: usize,
    pub bytes: usize,
    pub v6sock: bool,
}

fn wait_fd(fd: RawFd, style: &str, ep: RawFd, events: u32) -> Result<()> {
    match style {
        "epoll-before" | "epoll-after" | "epoll-et" => {
            let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 1];
            loop {
                // SAFETY: evs valid.
                let n = cvt(
                    unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 1, 10_000) },
                    "epoll_wait",
                )?;
                if n == 0 {
                    bail!("epoll_wait timed out waiting for the connection");
                }
                if evs[0].events & (events | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) != 0 {
                    return Ok(());
                }
            }
        }
        "poll" => {
            let mut p = libc::pollfd {
                fd,
                events: events as i16,
                revents: 0,
            };
            // SAFETY: p valid.
            let n = cvt(unsafe { libc::poll(&mut p, 1, 10_000) }, "poll")?;
            if n == 0 {
                bail!("poll timed out");
            }
            Ok(())
        }
        "select" => {
            // SAFETY: fd_set on a zeroed set; fd < FD_SETSIZE in tests.
            unsafe {
                let mut set: libc::fd_set = zeroed();
                libc::FD_ZERO(&mut set);
                libc::FD_SET(fd, &mut set);
                let mut tv = libc::timeval {
                    tv_sec: 10,
                    tv_usec: 0,
                };
                let n = cvt(
                    libc::select(
                        fd + 1,
                        std::ptr::null_mut(),
                        &mut set,
                        std::ptr::null_mut(),
                        &mut tv,
                    ),
                    "select",
                )?;
                if n == 0 {
                    bail!("select timed out");
                }
            }
            Ok(())
        }
        other => bail!("unknown style {other}"),
    }
}

/// Opens one connection in the given style and returns the fd, connected and in blocking mode.
pub fn open_conn(addr: SocketAddr, style: &str, v6sock: bool) -> Result<RawFd> {
    let family = if v6sock || addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket call.
    let fd = cvt(
        unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )?;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    let (ss, len) = to_storage(addr, family == libc::AF_INET6);
    if style == "block" {
        // SAFETY: ss valid.
        cvt(
            unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) },
            "connect",
        )?;
        return Ok(fd);
    }
    set_nonblock(fd, true);
    let mut ep = -1;
    let mut ev_mask = libc::EPOLLOUT as u32;
    if style.starts_with("epoll") {
        // SAFETY: plain syscall.
        ep = cvt(
            unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
            "epoll_create1",
        )?;
        if style == "epoll-et" {
            ev_mask |= libc::EPOLLET as u32 | libc::EPOLLIN as u32;
        }
    }
    let register = |ep: RawFd| -> Result<()> {
        let mut ev = libc::epoll_event {
            events: ev_mask,
            u64: fd as u64,
        };
        // SAFETY: ev valid.
        cvt(
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) },
            "epoll_ctl add",
        )
        .map(|_| ())
    };
    if style == "epoll-before" || style == "epoll-et" {
        register(ep)?;
    }
    // SAFETY: ss valid.
    let r = unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) };
    if r < 0 && errno() != libc::EINPROGRESS {
        bail!("non-blocking connect: {}", std::io::Error::last_os_error());
    }
    if style == "epoll-after" {
        register(ep)?;
    }
    wait_fd(fd, style, ep, libc::POLLOUT as u32)?;
    let err = so_error(fd);
    if err != 0 {
        bail!(
            "connect completed with {}",
            std::io::Error::from_raw_os_error(err)
        );
    }
    if style == "epoll-et" {
        // EPOLL_CTL_MOD after connect: now wait for the greeting, edge triggered.
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32 | libc::EPOLLET as u32,
            u64: fd as u64,
        };
        // SAFETY: ev valid.
        cvt(
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, &mut ev) },
            "epoll_ctl mod",
        )?;
        wait_fd(fd, style, ep, libc::EPOLLIN as u32)?;
    }
    if ep >= 0 {
        // SAFETY: our epoll fd.
        unsafe { libc::close(ep) };
    }
    set_nonblock(fd, false);
    Ok(fd)
}

fn read_line(f: &mut std::fs::File) -> Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if f.read(&mut b)? == 0 {
            bail!(
                "connection closed before the greeting (got {:?})",
                String::from_utf8_lossy(&line)
            );
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
}

fn field<'a>(line: &'a str, key: &str) -> Result<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .ok_or_else(|| anyhow!("greeting {line:?} has no {key}"))
}

/// Checks the greeting and the echo on a connected fd; returns the server's pid. Closes the fd.
pub fn exchange(fd: RawFd, addr: SocketAddr, bytes: usize) -> Result<String> {
    let me = name(fd, false)?;
    let them = name(fd, true)?;
    if them != addr {
        bail!("getpeername says {them}, connected to {addr}");
    }
    // SAFETY: fd is ours; File closes it.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let line = read_line(&mut f)?;
    let seen_peer: SocketAddr = field(&line, "peer=")?.parse()?;
    let seen_local: SocketAddr = field(&line, "local=")?.parse()?;
    if seen_peer != me {
        bail!("server saw peer {seen_peer}, but this connection is {me} (greeting {line:?})");
    }
    if seen_local != addr {
        bail!("server's local address {seen_local} is not {addr}");
    }
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut w = f.try_clone()?;
    let to_send = data.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        w.write_all(&to_send)?;
        // SAFETY: shutdown on our fd.
        unsafe { libc::shutdown(w.as_raw_fd_compat(), libc::SHUT_WR) };
        Ok(())
    });
    let mut back = Vec::with_capacity(bytes);
    f.read_to_end(&mut back)?;
    writer.join().map_err(|_| anyhow!("writer panicked"))??;
    if back != data {
        bail!(
            "echo mismatch: sent {} bytes, got {} back",
            data.len(),
            back.len()
        );
    }
    Ok(field(&line, "pid=")?.to_string())
}

trait RawCompat {
    fn as_raw_fd_compat(&self) -> RawFd;
}
impl RawCompat for std::fs::File {
    fn as_raw_fd_compat(&self) -> RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

/// Opens all connections first (so they are concurrent), then checks each.
pub fn run_client(cfg: &ClientCfg) -> Result<BTreeSet<String>> {
    let mut fds = Vec::new();
    for i in 0..cfg.conns {
        fds.push(
            open_conn(cfg.addr, &cfg.style, cfg.v6sock)
                .with_context(|| format!("connection {i}"))?,
        );
    }
    let mut pids = BTreeSet::new();
    for (i, fd) in fds.into_iter().enumerate() {
        pids.insert(exchange(fd, cfg.addr, cfg.bytes).with_context(|| format!("connection {i}"))?);
    }
    Ok(pids)
}

pub fn run_client_procs(cfg: &ClientCfg, procs: usize) -> Result<BTreeSet<String>> {
    if procs <= 1 {
        return run_client(cfg);
    }
    let mut kids = Vec::new();
    for _ in 0..procs {
        // SAFETY: fork; the child only runs the client and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = match run_client(cfg) {
                Ok(_) => 0,
                Err(e) => {
                    println!("FAIL {e:#}");
                    1
                }
            };
            std::process::exit(code);
        }
        kids.push(pid);
    }
    let mut failed = 0;
    for k in kids {
        let mut st = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(k, &mut st, 0) };
        if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {procs} client processes failed");
    }
    Ok(BTreeSet::new())
}

/// Connects, then moves the connection around the ways programs do: dup2 to another number,
/// F_DUPFD, fork (both use it), and exec of a program that inherits it.
pub fn inherit(addr: SocketAddr) -> Result<()> {
    let fd = open_conn(addr, "block", false)?;
    // SAFETY: plain dup3/dup2/fcntl on our fd.
    let via3 = cvt(unsafe { libc::dup3(fd, 76, libc::O_CLOEXEC) }, "dup3")?;
    // SAFETY: as above.
    let moved = cvt(unsafe { libc::dup2(via3, 77) }, "dup2")?;
    // SAFETY: as above.
    unsafe {
        libc::close(fd);
        libc::close(via3);
    }
    // SAFETY: as above.
    let dupped = cvt(unsafe { libc::fcntl(moved, libc::F_DUPFD, 100) }, "F_DUPFD")?;
    if name(dupped, true)? != addr {
        bail!("F_DUPFD copy reports another peer");
    }
    // SAFETY: close our extra copy.
    unsafe { libc::close(dupped) };
    // SAFETY: fork; the child only uses async-signal-safe calls plus exec.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let exe = std::env::current_exe().unwrap_or_default();
        let err = std::os::unix::process::CommandExt::exec(std::process::Command::new(exe).args([
            "check-fd",
            "77",
            &addr.to_string(),
        ]));
        eprintln!("exec failed: {err}");
        std::process::exit(3);
    }
    let mut st = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
        bail!("exec'd child failed on the inherited connection");
    }
    // The parent still uses the same connection after the child is done with it.
    if name(moved, true)? != addr {
        bail!("parent: getpeername changed after the child's exec");
    }
    // SAFETY: our fd; File closes it.
    let mut f = unsafe { std::fs::File::from_raw_fd(moved) };
    f.write_all(b"pong")?;
    let mut b = [0u8; 4];
    f.read_exact(&mut b).context("parent after child")?;
    if &b != b"pong" {
        bail!("parent: echo after the child's exec mismatched");
    }
    println!("OK inherit");
    Ok(())
}

/// Runs in the exec'd child: the inherited connection must still report overlay addresses and work.
pub fn check_fd(fd: RawFd, addr: SocketAddr) -> Result<()> {
    let peer = name(fd, true)?;
    if peer != addr {
        bail!("after exec getpeername says {peer}, expected {addr}");
    }
    let me = name(fd, false)?;
    // SAFETY: the inherited fd; not closed by us (the parent goes on using it).
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let line = read_line(&mut f)?;
    let seen: SocketAddr = field(&line, "peer=")?.parse()?;
    if seen != me {
        bail!("after exec: server saw {seen}, we are {me}");
    }
    f.write_all(b"ping")?;
    let mut b = [0u8; 4];
    f.read_exact(&mut b)?;
    if &b != b"ping" {
        bail!("echo after exec mismatched");
    }
    println!("OK check-fd {me} -> {peer}");
    Ok(())
}

/// A single-threaded event loop that starts `n` non-blocking connects while it keeps servicing a
/// 1 ms timer. Every connect must return EINPROGRESS at once and still be unconnected right after
/// the call (the lab delays the underlay, so a call that waited for the handshake would return
/// connected); then all must complete.
pub fn setup_storm(addr: SocketAddr, n: usize) -> Result<()> {
    // SAFETY: plain syscalls throughout; buffers are locals.
    unsafe {
        let ep = cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC), "epoll_create1")?;
        let tfd = cvt(
            libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK),
            "timerfd",
        )?;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            },
            it_value: libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            },
        };
        cvt(
            libc::timerfd_settime(tfd, 0, &spec, std::ptr::null_mut()),
            "timerfd_settime",
        )?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: u64::MAX,
        };
        cvt(
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, tfd, &mut ev),
            "epoll_ctl timer",
        )?;
        let mut pending = 0usize;
        let mut connected_in_call = 0usize;
        for i in 0..n {
            let fd = cvt(
                libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0),
                "socket",
            )?;
            let (ss, len) = to_storage(addr, false);
            let r = libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len);
            if r == 0 {
                connected_in_call += 1;
            } else if errno() != libc::EINPROGRESS {
                bail!("connect {i}: {}", std::io::Error::last_os_error());
            }
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            if libc::poll(&mut p, 1, 0) > 0 && p.revents & libc::POLLOUT != 0 {
                connected_in_call += 1;
            }
            let mut ev = libc::epoll_event {
                events: libc::EPOLLOUT as u32,
                u64: fd as u64,
            };
            cvt(
                libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev),
                "epoll_ctl",
            )?;
            pending += 1;
        }
        if connected_in_call > 0 {
            bail!("{connected_in_call} of {n} connects were already connected when the call returned: connect waited for the network");
        }
        println!("ISSUED {n}");
        std::io::stdout().flush()?;
        let mut ticks_while_pending = 0u64;
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
        while pending > 0 {
            let k = cvt(
                libc::epoll_wait(ep, evs.as_mut_ptr(), 64, 20_000),
                "epoll_wait",
            )?;
            if k == 0 {
                bail!("{pending} connections never completed");
            }
            for e in &evs[..k as usize] {
                if e.u64 == u64::MAX {
                    let mut x = 0u64;
                    libc::read(tfd, &mut x as *mut u64 as *mut libc::c_void, 8);
                    ticks_while_pending += x;
                    continue;
                }
                let fd = e.u64 as i32;
                let err = so_error(fd);
                if err != 0 {
                    bail!(
                        "connection failed: {}",
                        std::io::Error::from_raw_os_error(err)
                    );
                }
                libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut());
                libc::close(fd);
                pending -= 1;
            }
        }
        if ticks_while_pending == 0 {
            bail!("the timer was never serviced while connections were being set up");
        }
        println!("OK storm n={n} timer_ticks_meanwhile={ticks_while_pending}");
    }
    Ok(())
}

/// A single-threaded epoll echo server for request/response and connection-rate measurements:
/// non-blocking accept, echo whatever arrives, close when the peer does.
pub fn rr_serve(port: u16) -> Result<()> {
    // SAFETY: plain syscalls on descriptors this function owns; buffers are locals.
    unsafe {
        let l = cvt(
            libc::socket(
                libc::AF_INET6,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            ),
            "socket",
        )?;
        setsockopt_int(l, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        setsockopt_int(l, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        let (ss, len) = to_storage(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port), false);
        cvt(
            libc::bind(l, &ss as *const _ as *const libc::sockaddr, len),
            "bind",
        )?;
        cvt(libc::listen(l, 4096), "listen")?;
        let ep = cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC), "epoll_create1")?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: u64::MAX,
        };
        cvt(
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, l, &mut ev),
            "epoll_ctl",
        )?;
        println!("LISTENING [::]:{port}");
        std::io::stdout().flush()?;
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut buf = [0u8; 65536];
        loop {
            let n = libc::epoll_wait(ep, evs.as_mut_ptr(), 256, -1);
            if n < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                bail!("epoll_wait: {}", std::io::Error::last_os_error());
            }
            for e in &evs[..n as usize] {
                if e.u64 == u64::MAX {
                    loop {
                        let c = libc::accept4(
                            l,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        );
                        if c < 0 {
                            break;
                        }
                        setsockopt_int(c, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
                        let mut ev = libc::epoll_event {
                            events: libc::EPOLLIN as u32,
                            u64: c as u64,
                        };
                        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c, &mut ev);
                    }
                    continue;
                }
                let c = e.u64 as i32;
                let r = libc::read(c, buf.as_mut_ptr().cast(), buf.len());
                if r > 0 {
                    // Small messages: a blocking-free write of what was read fits the socket buffer.
                    libc::write(c, buf.as_ptr().cast(), r as usize);
                } else if r == 0 || errno() != libc::EAGAIN {
                    libc::close(c);
                }
            }
        }
    }
}

/// One connection, `size`-byte ping-pong for `secs` seconds. Prints the transaction rate and
/// latency percentiles.
pub fn rr_client(addr: SocketAddr, secs: f64, size: usize) -> Result<()> {
    let fd = open_conn(addr, "block", false)?;
    // SAFETY: fd is ours; File closes it.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let msg = vec![b'x'; size];
    let mut back = vec![0u8; size];
    let mut lat: Vec<u32> = Vec::with_capacity(1 << 20);
    let start = std::time::Instant::now();
    let limit = std::time::Duration::from_secs_f64(secs);
    while start.elapsed() < limit {
        let t = std::time::Instant::now();
        f.write_all(&msg)?;
        f.read_exact(&mut back)?;
        lat.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
    }
    let el = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "RR transactions={} secs={el:.3} rate={:.1} p50_us={:.2} p99_us={:.2}",
        lat.len(),
        lat.len() as f64 / el,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

/// `procs` processes each set up short connections for `secs` seconds: connect, send one byte,
/// read it back, close. Prints the total rate.
pub fn conn_client(addr: SocketAddr, secs: f64, procs: usize) -> Result<()> {
    let (ss, len) = to_storage(addr, false);
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let mut pipes = Vec::new();
    for _ in 0..procs {
        let mut p = [0i32; 2];
        // SAFETY: p is a valid 2-int array.
        cvt(unsafe { libc::pipe(p.as_mut_ptr()) }, "pipe")?;
        // SAFETY: fork; the child runs the loop and exits without returning.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let start = std::time::Instant::now();
            let limit = std::time::Duration::from_secs_f64(secs);
            let mut n: u64 = 0;
            let mut errors: u64 = 0;
            // Stalls show here, not in the rate: the slowest connection and how many took
            // over 10 ms.
            let (mut slowest, mut slow) = (0f64, 0u64);
            let mut b = [b'c'; 1];
            while start.elapsed() < limit {
                let t0 = std::time::Instant::now();
                // SAFETY: plain socket calls on our own descriptor.
                unsafe {
                    let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                    if fd < 0 {
                        errors += 1;
                        continue;
                    }
                    let ok = libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) == 0
                        && libc::write(fd, b.as_ptr().cast(), 1) == 1
                        && libc::read(fd, b.as_mut_ptr().cast(), 1) == 1;
                    libc::close(fd);
                    if ok {
                        n += 1;
                    } else {
                        errors += 1;
                    }
                }
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                slowest = slowest.max(ms);
                slow += (ms > 10.0) as u64;
            }
            let line = format!(
                "{n} {errors} {} {slowest} {slow}\n",
                start.elapsed().as_secs_f64()
            );
            // SAFETY: writing our result to the pipe, then leaving without running destructors.
            unsafe {
                libc::write(p[1], line.as_ptr().cast(), line.len());
                libc::_exit(0);
            }
        }
        // SAFETY: the parent's copy of the write end.
        unsafe { libc::close(p[1]) };
        pipes.push((pid, p[0]));
    }
    let (mut total, mut errors, mut longest) = (0u64, 0u64, 0f64);
    let (mut slowest, mut slow) = (0f64, 0u64);
    for (pid, rfd) in pipes {
        // SAFETY: rfd is our read end; File closes it.
        let mut f = unsafe { std::fs::File::from_raw_fd(rfd) };
        let mut s = String::new();
        f.read_to_string(&mut s)?;
        let mut st = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        let v: Vec<f64> = s
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() != 5 {
            bail!("a client process reported nothing");
        }
        total += v[0] as u64;
        errors += v[1] as u64;
        longest = longest.max(v[2]);
        slowest = slowest.max(v[3]);
        slow += v[4] as u64;
    }
    println!(
        "CONN count={total} errors={errors} secs={longest:.3} rate={:.1} slowest_ms={slowest:.2} over_10ms={slow}",
        total as f64 / longest
    );
    if errors > 0 {
        bail!("{errors} connections failed");
    }
    Ok(())
}
