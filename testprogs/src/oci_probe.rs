//! `slim-testprog oci-probe`: run inside a container, reports what slim-oci put into it, one
//! `key=value` line each, for slim-oci's podman tests (oci/tests/podman.rs):
//! - `LD_PRELOAD`, `SLIM_PREFIXES`, `SLIM_ROUTER_SOCKET`: the environment (`-` when unset);
//! - `preload_mapped`: whether libslim_preload.so is mapped into this process (the dynamic
//!   loader found it where LD_PRELOAD says);
//! - `mount:PATH`: `ro`, `rw` or `absent`, for /run/slim-lib/libslim_preload.so and /run/slim
//!   (from /proc/self/mountinfo);
//! - `router_connect`: `ok` or the error of connecting to `SLIM_ROUTER_SOCKET` (`-` when unset);
//! - `siocgifconf`, `siocgifconf_high`: the result of `ioctl(SIOCGIFCONF)` on a UDP socket, the
//!   second with bit 32 of the request set (the kernel ignores the upper half, a seccomp filter
//!   must not); `siocgifindex`: another socket ioctl, which must keep working.

use anyhow::Result;
use std::io::Error;

/// <linux/sockios.h>; as u64, the width of the request argument syscall(2) passes.
const SIOCGIFCONF: u64 = 0x8912;
const SIOCGIFINDEX: u64 = 0x8933;
const MOUNTS: &[&str] = &["/run/slim-lib/libslim_preload.so", "/run/slim"];

pub fn run() -> Result<()> {
    for var in ["LD_PRELOAD", "SLIM_PREFIXES", "SLIM_ROUTER_SOCKET"] {
        println!(
            "{var}={}",
            std::env::var(var).unwrap_or_else(|_| "-".into())
        );
    }
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    println!(
        "preload_mapped={}",
        if maps.contains("libslim_preload.so") {
            "yes"
        } else {
            "no"
        }
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    for m in MOUNTS {
        println!("mount:{m}={}", mount_mode(&mountinfo, m));
    }
    let connect = match std::env::var("SLIM_ROUTER_SOCKET") {
        Ok(path) => match std::os::unix::net::UnixStream::connect(&path) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string().replace(' ', "_"),
        },
        Err(_) => "-".into(),
    };
    println!("router_connect={connect}");
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        anyhow::bail!("socket: {}", Error::last_os_error());
    }
    println!("siocgifconf={}", ifconf(fd, SIOCGIFCONF));
    println!("siocgifconf_high={}", ifconf(fd, SIOCGIFCONF | 1 << 32));
    println!("siocgifindex={}", ifindex_lo(fd));
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    Ok(())
}

/// `ro`/`rw` from the mount options of the last mount at `path`, or `absent`.
fn mount_mode(mountinfo: &str, path: &str) -> &'static str {
    let last = mountinfo
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(path));
    match last.and_then(|l| l.split(' ').nth(5)) {
        Some(opts) if opts.split(',').any(|o| o == "ro") => "ro",
        Some(_) => "rw",
        None => "absent",
    }
}

fn outcome(r: libc::c_long) -> String {
    if r == 0 {
        "ok".into()
    } else {
        match Error::last_os_error().raw_os_error() {
            Some(libc::EPERM) => "EPERM".into(),
            Some(e) => format!("errno{e}"),
            None => "error".into(),
        }
    }
}

/// ioctl(fd, request, &ifconf) through syscall(2), so the full 64-bit request reaches the
/// kernel (glibc's ioctl() would pass it as is too, but says so less plainly).
fn ifconf(fd: i32, request: u64) -> String {
    let mut buf = [0u8; 4096];
    let mut ifc = libc::ifconf {
        ifc_len: buf.len() as i32,
        ifc_ifcu: libc::__c_anonymous_ifc_ifcu {
            ifcu_buf: buf.as_mut_ptr().cast(),
        },
    };
    // SAFETY: ifc points to a buffer of ifc_len bytes, alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_ioctl, fd, request, &mut ifc as *mut libc::ifconf) };
    outcome(r)
}

fn ifindex_lo(fd: i32) -> String {
    // SAFETY: all-zero ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: ifr is a valid ifreq with a NUL-terminated name.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd,
            SIOCGIFINDEX,
            &mut ifr as *mut libc::ifreq,
        )
    };
    outcome(r)
}
