//! `slim-testprog seccomp-exec -- CMD...`: runs CMD under the seccomp rule secure mode asks
//! container runtimes to add (docs/seccomp.md): `ioctl(SIOCGIFCONF)` fails with EPERM. The kernel
//! answers SIOCGIFCONF in the socket layer itself, before the socket's operations, for the
//! socket's own network namespace; on a host socket that lists the host's interfaces and IPv4
//! addresses, and the module cannot refuse it. The test VM plays the container runtime with this.

use anyhow::{bail, Result};
use std::ffi::CString;

/// BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20).
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP (5) | BPF_JEQ (0x10) | BPF_K (0).
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// `struct seccomp_data`: nr at 0, arch at 4, instruction pointer at 8, args at 16.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG1_LOW: u32 = 16 + 8; // little endian: the low half of args[1] (the request)

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: BPF_JMP_JEQ_K,
        jt,
        jf,
        k,
    }
}

/// Installs the filter and execs `cmd`.
pub fn seccomp_exec(cmd: &[String]) -> Result<()> {
    if cmd.is_empty() {
        bail!("seccomp-exec: no command");
    }
    let filter = [
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
        stmt(BPF_LD_W_ABS, OFF_NR),
        jump(libc::SYS_ioctl as u32, 0, 3),
        stmt(BPF_LD_W_ABS, OFF_ARG1_LOW),
        jump(libc::SIOCGIFCONF as u32, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        bail!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error());
    }
    // SAFETY: prog points to `filter`, alive for the call; the kernel copies it.
    if unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    } != 0
    {
        bail!("PR_SET_SECCOMP: {}", std::io::Error::last_os_error());
    }
    let args: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: argv is a NULL-terminated array of valid C strings that outlive the call.
    unsafe { libc::execvp(argv[0], argv.as_ptr()) };
    bail!("exec {}: {}", cmd[0], std::io::Error::last_os_error())
}
