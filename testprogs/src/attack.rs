//! `slim-testprog attack`: what an untrusted container can try with the host sockets Slim gave it
//! in secure mode. Run unprivileged inside a container namespace with the preload library, it
//! gets restricted host sockets the ordinary way (connect, listen, accept through the library),
//! then goes around the library with raw system calls and tries everything secure mode forbids,
//! on the socket itself, a dup of it, a fork+exec'd child that inherited it and another process
//! that received it with SCM_RIGHTS. One line per check: `ok   - ...` or `FAIL - ...`.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

/// The underlay addresses the container must never see, and where to connect.
pub struct AttackCfg {
    pub server: SocketAddr,
    pub listen_port: u16,
    /// Another container's overlay address, which the router must not act on for us.
    pub other: IpAddr,
    pub host_ips: Vec<IpAddr>,
}

struct Tally {
    failed: usize,
}

impl Tally {
    fn check(&mut self, name: &str, ok: bool, detail: String) {
        if ok {
            println!("ok   - {name}: {detail}");
        } else {
            self.failed += 1;
            println!("FAIL - {name}: {detail}");
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn ename(e: i32) -> String {
    match e {
        0 => "success".into(),
        libc::EPERM => "EPERM".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EISCONN => "EISCONN".into(),
        libc::ENOTCONN => "ENOTCONN".into(),
        libc::EOPNOTSUPP => "EOPNOTSUPP".into(),
        libc::ENOPROTOOPT => "ENOPROTOOPT".into(),
        libc::ENODEV => "ENODEV".into(),
        libc::ENOTTY => "ENOTTY".into(),
        libc::EADDRINUSE => "EADDRINUSE".into(),
        libc::EALREADY => "EALREADY".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EACCES => "EACCES".into(),
        e => format!("errno {e}"),
    }
}

/// `r` as "success" or the errno name (raw syscall results: -1 and errno).
fn outcome(r: libc::c_long) -> String {
    if r < 0 {
        ename(errno())
    } else {
        "success".into()
    }
}

fn storage(a: SocketAddr, family: i32) -> (libc::sockaddr_storage, libc::socklen_t) {
    crate::to_storage(a, family == libc::AF_INET6)
}

fn family_of(fd: RawFd) -> i32 {
    sock_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(libc::AF_INET)
}

fn sock_int(fd: RawFd, level: i32, name: i32) -> Option<i32> {
    let mut v: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: raw getsockopt into a local int.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            level,
            name,
            &mut v as *mut i32,
            &mut len as *mut libc::socklen_t,
        )
    };
    (r == 0).then_some(v)
}

/// getsockname/getpeername/SO_PEERNAME by raw system call (the library is not asked).
fn raw_name(fd: RawFd, which: &str) -> Result<SocketAddr, i32> {
    // SAFETY: all-zero storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    if which == "SO_PEERNAME" {
        // SO_PEERNAME refuses (EINVAL) a buffer longer than the address.
        len = if family_of(fd) == libc::AF_INET6 {
            28
        } else {
            16
        };
    }
    let p = &mut ss as *mut libc::sockaddr_storage;
    // SAFETY: ss/len are valid for writes of len bytes.
    let r = unsafe {
        match which {
            "getsockname" => libc::syscall(libc::SYS_getsockname, fd, p, &mut len),
            "getpeername" => libc::syscall(libc::SYS_getpeername, fd, p, &mut len),
            _ => libc::syscall(
                libc::SYS_getsockopt,
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERNAME,
                p,
                &mut len,
            ),
        }
    };
    if r < 0 {
        return Err(errno());
    }
    crate::from_storage(&ss).ok_or(libc::EAFNOSUPPORT)
}

fn is_host(cfg: &AttackCfg, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    cfg.host_ips.contains(&ip)
}

/// Every refusal and every virtual answer on one restricted socket. `what` names the path the
/// socket took to get here (original, dup, fork+exec, SCM_RIGHTS). `peer` is the overlay peer
/// the socket must report; `None` for a listener.
fn check_socket(t: &mut Tally, cfg: &AttackCfg, fd: RawFd, what: &str, peer: Option<SocketAddr>) {
    let fam = family_of(fd);
    for which in ["getsockname", "getpeername", "SO_PEERNAME"] {
        match (raw_name(fd, which), peer) {
            (Ok(a), _) if is_host(cfg, a.ip()) => t.check(
                &format!("{what}: {which}"),
                false,
                format!("reveals host address {a}"),
            ),
            (Ok(a), Some(p)) if which != "getsockname" => t.check(
                &format!("{what}: {which}"),
                crate::same_endpoint(a, p),
                format!("{a} (overlay peer {p})"),
            ),
            (Ok(a), _) => t.check(
                &format!("{what}: {which}"),
                which == "getsockname",
                format!("{a}"),
            ),
            (Err(e), None) if which != "getsockname" => t.check(
                &format!("{what}: {which} on a listener"),
                e == libc::ENOTCONN,
                ename(e),
            ),
            (Err(e), _) => t.check(&format!("{what}: {which}"), false, ename(e)),
        }
    }
    let mut targets: Vec<SocketAddr> = cfg
        .host_ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, cfg.server.port()))
        .collect();
    targets.push(cfg.server);
    raw_connects(t, fd, fam, &targets, what, "refused", "EPERM");
    bind_listen_refused(t, fd, fam, what);
    if peer.is_some() {
        let dst = SocketAddr::new(cfg.host_ips[0], 9);
        let (ss, len) = storage(dst, fam);
        let b = b"X";
        // SAFETY: b and ss are valid for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                fd,
                b.as_ptr(),
                1usize,
                libc::MSG_DONTWAIT,
                &ss as *const _,
                len,
            )
        };
        let o = outcome(r);
        t.check(
            &format!("{what}: sendto with an address refused"),
            o == "EPERM",
            o,
        );
        // SAFETY: as above; MSG_FASTOPEN without an address.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                fd,
                b.as_ptr(),
                1usize,
                libc::MSG_FASTOPEN | libc::MSG_DONTWAIT,
                &ss as *const _,
                len,
            )
        };
        let o = outcome(r);
        t.check(
            &format!("{what}: sendto MSG_FASTOPEN refused"),
            o == "EPERM",
            o,
        );
    }
    let dev = *b"lo\0\0";
    let mut opts: Vec<(&str, i32, i32, Vec<u8>)> = vec![
        (
            "SO_BINDTODEVICE lo",
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.to_vec(),
        ),
        (
            "SO_MARK 1",
            libc::SOL_SOCKET,
            libc::SO_MARK,
            1i32.to_ne_bytes().to_vec(),
        ),
        (
            "SO_PRIORITY 7",
            libc::SOL_SOCKET,
            libc::SO_PRIORITY,
            7i32.to_ne_bytes().to_vec(),
        ),
        (
            "IP_TRANSPARENT",
            libc::IPPROTO_IP,
            libc::IP_TRANSPARENT,
            1i32.to_ne_bytes().to_vec(),
        ),
        (
            "IP_FREEBIND",
            libc::IPPROTO_IP,
            libc::IP_FREEBIND,
            1i32.to_ne_bytes().to_vec(),
        ),
        (
            "IP_TOS 0xe0",
            libc::IPPROTO_IP,
            libc::IP_TOS,
            0xe0i32.to_ne_bytes().to_vec(),
        ),
    ];
    if fam == libc::AF_INET6 {
        opts.push((
            "IPV6_ADDRFORM",
            libc::IPPROTO_IPV6,
            libc::IPV6_ADDRFORM,
            libc::AF_INET.to_ne_bytes().to_vec(),
        ));
    }
    for (name, level, opt, val) in opts {
        // SAFETY: val is valid for val.len() bytes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_setsockopt,
                fd,
                level,
                opt,
                val.as_ptr(),
                val.len() as libc::socklen_t,
            )
        };
        let o = outcome(r);
        t.check(
            &format!("{what}: setsockopt {name} refused"),
            o == "EPERM",
            o,
        );
    }
    let one = 1i32.to_ne_bytes();
    // SAFETY: one is a valid int.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setsockopt,
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            one.as_ptr(),
            4 as libc::socklen_t,
        )
    };
    let o = outcome(r);
    t.check(
        &format!("{what}: harmless setsockopt TCP_NODELAY works"),
        o == "success",
        o,
    );
    for (name, req) in [
        ("SIOCGIFADDR", libc::SIOCGIFADDR),
        ("SIOCGIFFLAGS", libc::SIOCGIFFLAGS),
        ("SIOCGIFINDEX", libc::SIOCGIFINDEX),
        ("SIOCGIFHWADDR", libc::SIOCGIFHWADDR),
        ("SIOCGIFNETMASK", libc::SIOCGIFNETMASK),
        ("SIOCGIFNAME", libc::SIOCGIFNAME),
    ] {
        // SAFETY: ifreq is plain data; the ioctl reads/writes within it.
        let mut ifr: libc::ifreq = unsafe { zeroed() };
        for (i, b) in b"slim-u1\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        // SAFETY: ifr is a valid ifreq for the duration of the call.
        let r = unsafe { libc::syscall(libc::SYS_ioctl, fd, req, &mut ifr as *mut libc::ifreq) };
        let o = outcome(r);
        t.check(&format!("{what}: ioctl {name} refused"), o == "EPERM", o);
    }
    ifconf(t, cfg, fd, what);
    pktoptions(t, cfg, fd, what);
}

/// SIOCGIFCONF is answered by `sock_ioctl` itself, before the socket's operations, for the
/// socket's own (host) namespace: the module cannot refuse it; secure mode asks the container
/// runtime to deny it with seccomp (docs/seccomp.md), and the test VM runs this suite that way.
fn ifconf(t: &mut Tally, cfg: &AttackCfg, fd: RawFd, what: &str) {
    let mut buf = [0u8; 40 * 16];
    // SAFETY: ifconf is plain data.
    let mut ifc: libc::ifconf = unsafe { zeroed() };
    ifc.ifc_len = buf.len() as i32;
    ifc.ifc_ifcu.ifcu_buf = buf.as_mut_ptr().cast();
    // SAFETY: ifc points to buf, valid for ifc_len bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd,
            libc::SIOCGIFCONF,
            &mut ifc as *mut libc::ifconf,
        )
    };
    let leaked = r == 0
        && cfg.host_ips.iter().any(|ip| match ip {
            IpAddr::V4(v4) => buf.windows(4).any(|w| w == v4.octets()),
            IpAddr::V6(_) => false,
        });
    t.check(
        &format!("{what}: ioctl SIOCGIFCONF reveals no host address (needs the seccomp rule of docs/seccomp.md)"),
        !leaked,
        outcome(r),
    );
}

/// IP_PKTOPTIONS (and IPv6's) would hand back the host address in an IP_PKTINFO message.
fn pktoptions(t: &mut Tally, cfg: &AttackCfg, fd: RawFd, what: &str) {
    let one = 1i32.to_ne_bytes();
    // SAFETY: one is a valid int; a refusal is fine too, the getsockopt below is what matters.
    unsafe {
        libc::syscall(
            libc::SYS_setsockopt,
            fd,
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            one.as_ptr(),
            4 as libc::socklen_t,
        );
    }
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf/len are valid for writes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            libc::IPPROTO_IP,
            libc::IP_PKTOPTIONS,
            buf.as_mut_ptr(),
            &mut len,
        )
    };
    let got = &buf[..if r == 0 { len as usize } else { 0 }];
    let leaked = cfg.host_ips.iter().any(|ip| match ip {
        IpAddr::V4(v4) => got.windows(4).any(|w| w == v4.octets()),
        IpAddr::V6(v6) => got.windows(16).any(|w| w == v6.octets()),
    });
    t.check(
        &format!("{what}: getsockopt IP_PKTOPTIONS reveals no host address"),
        !leaked,
        format!("{} ({} bytes)", outcome(r), got.len()),
    );
}

/// send/recv still work: the echo server sends back what we write.
fn echo(t: &mut Tally, fd: RawFd, what: &str) {
    let msg = format!("ping from {what}\n");
    // SAFETY: msg valid for its length.
    let w = unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < msg.len() && w == msg.len() as isize {
        // A socket an attack did manage to steer (the control run without secure mode) may
        // never answer: give up after 5 s instead of hanging.
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: p is a valid pollfd.
        if unsafe { libc::poll(&mut p, 1, 5_000) } != 1 {
            break;
        }
        // SAFETY: buf valid for writes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        got.extend_from_slice(&buf[..n as usize]);
    }
    t.check(
        &format!("{what}: send/recv still work"),
        got == msg.as_bytes(),
        format!("wrote {w}, read back {:?}", String::from_utf8_lossy(&got)),
    );
}

/// Reads the server's greeting line (see `serve`).
fn greeting(fd: RawFd) -> Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        // SAFETY: b valid for one byte.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if n <= 0 {
            bail!("connection closed before the greeting");
        }
        line.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&line).trim().to_string())
}

/// Nothing the container can read names a host address.
fn scan_files(t: &mut Tally, cfg: &AttackCfg) {
    let hexes: Vec<String> = cfg
        .host_ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(format!("{:08X}", u32::from_le_bytes(v4.octets()))),
            IpAddr::V6(_) => None,
        })
        .collect();
    let mut files: Vec<String> = [
        "/proc/net/tcp",
        "/proc/net/tcp6",
        "/proc/net/route",
        "/proc/net/fib_trie",
        "/proc/net/if_inet6",
        "/proc/net/arp",
        "/proc/self/maps",
        "/proc/self/environ",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(d) = std::fs::read_dir("/proc/self/fdinfo") {
        files.extend(d.flatten().map(|e| e.path().display().to_string()));
    }
    let mut hits = Vec::new();
    for f in &files {
        let mut s = String::new();
        if std::fs::File::open(f)
            .and_then(|mut h| h.read_to_string(&mut s))
            .is_err()
        {
            continue;
        }
        for ip in &cfg.host_ips {
            if s.contains(&ip.to_string()) {
                hits.push(format!("{f}: {ip}"));
            }
        }
        for h in &hexes {
            if s.contains(h.as_str()) {
                hits.push(format!("{f}: {h}"));
            }
        }
    }
    t.check(
        "no host address in /proc/net/*, /proc/self/{maps,environ,fdinfo}",
        hits.is_empty(),
        if hits.is_empty() {
            format!("{} files read", files.len())
        } else {
            hits.join(", ")
        },
    );
}

/// Raw connect(2) of `fd` to each of `targets` (of its family): each must answer `want`.
fn raw_connects(
    t: &mut Tally,
    fd: RawFd,
    fam: i32,
    targets: &[SocketAddr],
    what: &str,
    how: &str,
    want: &str,
) {
    for dst in targets {
        if fam == libc::AF_INET && dst.is_ipv6() {
            continue;
        }
        let (ss, len) = storage(*dst, fam);
        // SAFETY: ss holds a valid address of len bytes.
        let o = outcome(unsafe { libc::syscall(libc::SYS_connect, fd, &ss as *const _, len) });
        t.check(&format!("{what}: connect to {dst} {how}"), o == want, o);
    }
}

/// Raw bind(2) to the wildcard address and listen(2) on `fd`: both refused with EPERM.
fn bind_listen_refused(t: &mut Tally, fd: RawFd, fam: i32, what: &str) {
    let any = if fam == libc::AF_INET6 {
        "[::]:0".parse().unwrap()
    } else {
        "0.0.0.0:0".parse().unwrap()
    };
    let (ss, len) = storage(any, fam);
    // SAFETY: ss holds a valid address of len bytes.
    let o = outcome(unsafe { libc::syscall(libc::SYS_bind, fd, &ss as *const _, len) });
    t.check(&format!("{what}: bind refused"), o == "EPERM", o);
    // SAFETY: listen on a descriptor of ours.
    let o = outcome(unsafe { libc::syscall(libc::SYS_listen, fd, 16) });
    t.check(&format!("{what}: listen refused"), o == "EPERM", o);
}

/// This process's unconnected, non-listening TCP sockets (from /proc/self/fd).
fn unconnected_tcp_fds() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.into_iter()
        .filter(|&fd| {
            // SAFETY: all-zero is a valid `stat`.
            let mut st: libc::stat = unsafe { zeroed() };
            let fam = family_of(fd);
            // SAFETY: fstat into a local struct; a closed fd gives EBADF.
            let stat_ok = unsafe { libc::fstat(fd, &mut st) } == 0;
            stat_ok
                && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
                && (fam == libc::AF_INET || fam == libc::AF_INET6)
                && sock_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
                && sock_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(0)
                && raw_name(fd, "getpeername") == Err(libc::ENOTCONN)
        })
        .collect()
}

/// The library's pool, as an attacker finds it: unconnected, non-listening TCP sockets this
/// program never made. In secure mode each is restricted to translate one connect to a Slim
/// listener of the table: a destination the table does not list (another port of the server, or a
/// host endpoint) gets ENOENT and is not reached, and bind and listen are refused. Returns how many
/// it found.
fn attack_pooled(t: &mut Tally, cfg: &AttackCfg) -> usize {
    let mut found = 0;
    for fd in unconnected_tcp_fds() {
        let fam = family_of(fd);
        found += 1;
        let what = format!("pooled socket fd {fd}");
        let mut targets: Vec<SocketAddr> = cfg
            .host_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, cfg.server.port()))
            .collect();
        targets.push(SocketAddr::new(
            cfg.server.ip(),
            cfg.server.port().wrapping_add(50),
        ));
        raw_connects(
            t,
            fd,
            fam,
            &targets,
            &what,
            "(not a listed overlay endpoint) gets ENOENT",
            "ENOENT",
        );
        bind_listen_refused(t, fd, fam, &what);
        if found >= 3 {
            break;
        }
    }
    found
}

/// Every socket descriptor of this process: none answers a host address; every listening one
/// that is not the program's own overlay socket refuses listen/bind/connect.
fn scan_fds(t: &mut Tally, cfg: &AttackCfg) -> usize {
    let mut restricted_listeners = 0;
    for fd in 0..1024 {
        // SAFETY: fstat into a local struct; a closed fd gives EBADF.
        let mut st: libc::stat = unsafe { zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            continue;
        }
        let fam = family_of(fd);
        if fam != libc::AF_INET && fam != libc::AF_INET6 {
            continue;
        }
        for which in ["getsockname", "getpeername"] {
            if let Ok(a) = raw_name(fd, which) {
                if is_host(cfg, a.ip()) {
                    t.check(
                        &format!("fd {fd}: {which}"),
                        false,
                        format!("reveals host address {a}"),
                    );
                }
            }
        }
        if sock_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1) {
            // The program's own overlay listener may listen again (harmless); a restricted host
            // listener refuses.
            // SAFETY: listen on a descriptor of ours.
            let r = unsafe { libc::syscall(libc::SYS_listen, fd, 16) };
            if r < 0 && errno() == libc::EPERM {
                restricted_listeners += 1;
                let mut sub = Tally { failed: 0 };
                check_socket(
                    &mut sub,
                    cfg,
                    fd,
                    &format!("hidden host listener fd {fd}"),
                    None,
                );
                t.failed += sub.failed;
            }
        }
    }
    restricted_listeners
}

fn connect_overlay(addr: SocketAddr) -> Result<RawFd> {
    let fam = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2) through libc (the preload library sees it).
    let fd = unsafe { libc::socket(fam, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    let (ss, len) = storage(addr, fam);
    // SAFETY: through libc, so Slim sets the connection up.
    if unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) } != 0 {
        bail!("connect {addr}: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// The attack, from the top.
pub fn attack(cfg: &AttackCfg) -> Result<()> {
    let mut t = Tally { failed: 0 };
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    println!(
        "attack: uid {uid}, server {}, host addresses {:?}",
        cfg.server, cfg.host_ips
    );

    // 1. A connection through Slim.
    let fd = connect_overlay(cfg.server)?;
    let hello = greeting(fd)?;
    println!("attack: connected, server says {hello:?}");
    t.check(
        "server sees the overlay address",
        !cfg.host_ips
            .iter()
            .any(|ip| hello.contains(&ip.to_string())),
        hello.clone(),
    );
    check_socket(&mut t, cfg, fd, "connection", Some(cfg.server));
    echo(&mut t, fd, "connection");
    // 1b. The library's pool. The first connect of a process asks the router (the library learns
    // the router's mode then); later ones fill the pool once the router's leases are ready.
    for _ in 0..50 {
        if !unconnected_tcp_fds().is_empty() {
            break;
        }
        let c = connect_overlay(cfg.server)?;
        let _ = greeting(c);
        // SAFETY: our descriptor.
        unsafe { libc::close(c) };
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pooled = attack_pooled(&mut t, cfg);
    t.check(
        "the library's pooled sockets were found and attacked",
        pooled >= 1,
        format!("{pooled} attacked"),
    );

    // 2. A dup of it.
    // SAFETY: dup of our descriptor.
    let d = unsafe { libc::dup(fd) };
    check_socket(&mut t, cfg, d, "dup", Some(cfg.server));
    echo(&mut t, d, "dup");
    // SAFETY: our descriptor.
    unsafe { libc::close(d) };

    // 3. fork + exec: the child checks the inherited descriptor itself.
    let exe = std::env::current_exe().context("current_exe")?;
    let mut args = vec![
        "attack-fd".to_string(),
        fd.to_string(),
        cfg.server.to_string(),
        cfg.listen_port.to_string(),
        cfg.other.to_string(),
    ];
    args.extend(cfg.host_ips.iter().map(|ip| ip.to_string()));
    let st = std::process::Command::new(&exe).args(&args).status()?;
    t.check(
        "fork+exec child: all its checks passed",
        st.success(),
        format!("{st}"),
    );

    // 4. SCM_RIGHTS to another process.
    scm_rights(&mut t, cfg, fd)?;
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };

    // 5. A listener through Slim, and a connection accepted on it.
    // SAFETY: plain socket/bind/listen through libc: Slim adds a restricted host listener.
    let l = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    let bind_to: SocketAddr = SocketAddr::new("0.0.0.0".parse().unwrap(), cfg.listen_port);
    let (ss, len) = storage(bind_to, libc::AF_INET);
    // SAFETY: ss valid for len bytes.
    let ok = unsafe { libc::bind(l, &ss as *const _ as *const libc::sockaddr, len) } == 0
        && unsafe { libc::listen(l, 16) } == 0;
    t.check(
        "listen through Slim",
        ok,
        format!("port {}", cfg.listen_port),
    );
    let hidden = scan_fds(&mut t, cfg);
    t.check(
        "a restricted host listener was handed out and refuses listen/bind/connect",
        hidden >= 1,
        format!("{hidden} found"),
    );
    let own = crate::name(l, false).context("getsockname of the listener")?;
    let me = SocketAddr::new(
        crate::name(connect_overlay(cfg.server)?, false)?.ip(),
        own.port(),
    );
    let c = connect_overlay(me)?;
    // SAFETY: accept through libc (Slim identifies the child).
    let child = unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
    t.check("accept through Slim", child >= 0, format!("fd {child}"));
    if child >= 0 {
        let peer = crate::name(c, false)?;
        check_socket(&mut t, cfg, child, "accepted child", Some(peer));
    }
    scan_files(&mut t, cfg);
    router_attacks(&mut t, cfg, child)?;
    if t.failed > 0 {
        bail!("{} checks failed", t.failed);
    }
    Ok(())
}

/// Talks to the router directly (its socket is reachable from the container: that is how the
/// library reaches it), asking it to act for another container or to reveal host endpoints.
fn router_attacks(t: &mut Tally, cfg: &AttackCfg, child: RawFd) -> Result<()> {
    use slim_uapi::proto::{
        AcceptLookup, ConnectReq, ListenReq, Reply, Request, HELLO_SECURE, MAX_FRAME, PROTO_VERSION,
    };
    let path =
        std::env::var("SLIM_ROUTER_SOCKET").unwrap_or_else(|_| "/run/slim/router.sock".into());
    // SOCK_SEQPACKET, as the library uses.
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    let addr = nix::sys::socket::UnixAddr::new(path.as_str()).context("router socket path")?;
    nix::sys::socket::connect(fd, &addr).with_context(|| format!("connect {path}"))?;
    let call = |req: &Request, attach: Option<RawFd>| -> Result<String> {
        use nix::sys::socket::{recv, sendmsg, ControlMessage, MsgFlags};
        let mut buf = [0u8; MAX_FRAME];
        let n = req
            .encode(&mut buf)
            .map_err(|e| anyhow::anyhow!("encode: {e:?}"))?;
        let iov = [std::io::IoSlice::new(&buf[..n])];
        let fds: Vec<RawFd> = attach.into_iter().collect();
        let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&fds)]
        };
        sendmsg::<()>(fd, &iov, &cmsgs, MsgFlags::empty(), None).context("sendmsg")?;
        let mut rbuf = [0u8; MAX_FRAME];
        let m = recv(fd, &mut rbuf, MsgFlags::empty()).context("recv")?;
        Ok(match Reply::decode(&rbuf[..m]) {
            Ok(Reply::Error { errno, message }) => format!("error {} ({message})", ename(errno)),
            Ok(Reply::HelloOk { flags, .. }) => {
                format!("HelloOk secure={}", flags & HELLO_SECURE != 0)
            }
            Ok(r) => format!("{r:?}"),
            Err(e) => format!("undecodable reply: {e:?}"),
        })
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let hello = call(
        &Request::Hello {
            version: PROTO_VERSION,
            pid,
        },
        None,
    )?;
    t.check(
        "router: says it runs in secure mode",
        hello == "HelloOk secure=true",
        hello,
    );
    let fam = if cfg.other.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let r = call(
        &Request::Connect(ConnectReq {
            family: fam,
            src_ip: cfg.other,
            dst: cfg.server,
            opts: Default::default(),
        }),
        None,
    )?;
    t.check(
        &format!(
            "router: connect as another container ({}) refused",
            cfg.other
        ),
        r.starts_with("error EPERM"),
        r,
    );
    let r = call(
        &Request::Listen(ListenReq {
            family: fam,
            v6only: false,
            bound: SocketAddr::new(cfg.other, cfg.listen_port + 1),
            ips: Default::default(),
            backlog: 16,
            opts: Default::default(),
        }),
        None,
    )?;
    t.check(
        &format!(
            "router: listen on another container's address ({}) refused",
            cfg.other
        ),
        r.starts_with("error EPERM"),
        r,
    );
    let host = SocketAddr::new(cfg.host_ips[0], cfg.listen_port);
    for (what, req) in [
        (
            "AcceptLookup (host endpoints in, identities out)",
            Request::AcceptLookup(AcceptLookup {
                listener_cookie: 1,
                child_cookie: 2,
                local_host: host,
                peer_host: host,
            }),
        ),
        (
            "QueryTuple",
            Request::QueryTuple {
                local_host: host,
                peer_host: host,
            },
        ),
        (
            "Sockets without a lease (unrestricted pooled host sockets)",
            Request::Sockets {
                family: libc::AF_INET,
                count: 4,
                lease: None,
            },
        ),
        (
            "Sockets leased to another container's address",
            Request::Sockets {
                family: libc::AF_INET,
                count: 4,
                lease: Some(cfg.other),
            },
        ),
    ] {
        let r = call(&req, None)?;
        t.check(
            &format!("router: {what} refused"),
            r.starts_with("error EPERM"),
            r,
        );
    }
    let r = call(&Request::Revoke { pid }, None)?;
    t.check(
        "router: revocation (for administrators) refused to a container",
        r.starts_with("error EPERM"),
        r,
    );
    // A socket of ours, presented as the child of a listener that is not ours (cookie 1 is the
    // first listener the router registered: the server's, in another container).
    for cookie in [1u64, 2, 3].into_iter().filter(|_| child >= 0) {
        let r = call(
            &Request::IdentifyChild {
                listener_cookie: cookie,
            },
            Some(child),
        )?;
        t.check(
            &format!("router: IdentifyChild naming listener {cookie} refused"),
            r.starts_with("error EPERM") || r == "Unknown",
            r,
        );
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Passes `fd` to a forked child over a Unix socket; the child (which never had it) checks it.
fn scm_rights(t: &mut Tally, cfg: &AttackCfg, fd: RawFd) -> Result<()> {
    let mut sv = [0; 2];
    // SAFETY: sv is valid for two ints.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) } != 0 {
        bail!("socketpair: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the child only does raw system calls and prints, then _exit()s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: our own descriptor.
        unsafe { libc::close(sv[0]) };
        let got = recv_fd(sv[1]);
        let mut sub = Tally { failed: 0 };
        match got {
            Some(g) => {
                check_socket(&mut sub, cfg, g, "SCM_RIGHTS receiver", Some(cfg.server));
                echo(&mut sub, g, "SCM_RIGHTS receiver");
            }
            None => sub.check("SCM_RIGHTS receive", false, "no descriptor".into()),
        }
        // SAFETY: leave the forked child without running the parent's destructors.
        unsafe { libc::_exit(if sub.failed == 0 { 0 } else { 1 }) };
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(sv[1]) };
    send_fd(sv[0], fd)?;
    let mut status = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    t.check(
        "SCM_RIGHTS receiver: all its checks passed",
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        format!("status {status:#x}"),
    );
    // SAFETY: our own descriptor.
    unsafe { libc::close(sv[0]) };
    Ok(())
}

fn send_fd(sock: RawFd, fd: RawFd) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(b"F")];
    let fds = [fd];
    sendmsg::<()>(
        sock,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("sendmsg SCM_RIGHTS")?;
    Ok(())
}

fn recv_fd(sock: RawFd) -> Option<RawFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut b = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut b)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::empty()).ok()?;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(f) = c {
            return f.first().copied();
        }
    }
    None
}

/// `attack-fd FD SERVER LISTEN_PORT HOST_IP...`: the exec'd child's side of check 3.
pub fn attack_fd(fd: RawFd, cfg: &AttackCfg) -> Result<()> {
    let mut t = Tally { failed: 0 };
    check_socket(&mut t, cfg, fd, "fork+exec child", Some(cfg.server));
    echo(&mut t, fd, "fork+exec child");
    if t.failed > 0 {
        bail!("{} checks failed", t.failed);
    }
    Ok(())
}
