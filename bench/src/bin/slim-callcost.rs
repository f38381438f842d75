//! `slim-callcost CALL N`: makes N calls of one kind that Slim's library intercepts but that do
//! not concern an overlay socket, for counting their instructions under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=slim_callcost_loop`, with
//! and without `LD_PRELOAD=libslim_preload.so`. Only the loop is counted: setup (opening the
//! file, the pipe, the socket) happens outside it.
//!
//! CALL is one of:
//! - `close`: close() of a regular file's descriptor. Each iteration first makes the descriptor
//!   with a raw dup system call (`syscall(SYS_dup)`, which no library intercepts), so the only
//!   intercepted call in the loop is close().
//! - `fcntl`: fcntl(F_GETFL) of a pipe.
//! - `setsockopt`: setsockopt(SOL_SOCKET, SO_RCVBUF) of a UDP socket.

use std::hint::black_box;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Call {
    Close,
    Fcntl,
    Setsockopt,
}

/// Count the instructions of non-overlay calls that Slim's library intercepts.
#[derive(Parser)]
#[command(name = "slim-callcost")]
struct Cli {
    call: Call,
    /// How many calls.
    n: u64,
}

/// The measured loop: callgrind counts from entry to return, callees included. Not inlined
/// and not mangled, so that `--toggle-collect=slim_callcost_loop` finds it.
#[no_mangle]
#[inline(never)]
pub extern "C" fn slim_callcost_loop(call: u32, fd: libc::c_int, n: u64) -> i64 {
    let mut acc: i64 = 0;
    let one: libc::c_int = 1 << 16;
    for _ in 0..n {
        // SAFETY: plain system calls on a descriptor this process owns; `one` outlives the
        // setsockopt call that reads it.
        let r = unsafe {
            match call {
                0 => {
                    let d = libc::syscall(libc::SYS_dup, fd) as libc::c_int;
                    libc::close(black_box(d))
                }
                1 => libc::fcntl(black_box(fd), libc::F_GETFL),
                _ => libc::setsockopt(
                    black_box(fd),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                ),
            }
        };
        acc += i64::from(r);
    }
    acc
}

fn setup(call: Call) -> Result<(u32, libc::c_int)> {
    // SAFETY: plain system calls; the descriptors stay open until the process exits.
    unsafe {
        match call {
            Call::Close => {
                let exe = std::env::current_exe().context("cannot find my own executable")?;
                let file = std::fs::File::open(&exe)
                    .with_context(|| format!("cannot open {}", exe.display()))?;
                Ok((0, std::os::fd::IntoRawFd::into_raw_fd(file)))
            }
            Call::Fcntl => {
                let mut p = [0; 2];
                if libc::pipe(p.as_mut_ptr()) != 0 {
                    bail!("pipe: {}", std::io::Error::last_os_error());
                }
                Ok((1, p[0]))
            }
            Call::Setsockopt => {
                let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                if s < 0 {
                    bail!("socket: {}", std::io::Error::last_os_error());
                }
                Ok((2, s))
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = setup(cli.call).map(|(call, fd)| slim_callcost_loop(call, fd, cli.n));
    match result {
        // Every call returns 0 on success (F_GETFL of a pipe's read end: O_RDONLY = 0).
        Ok(0) => ExitCode::SUCCESS,
        Ok(sum) => {
            eprintln!("slim-callcost: the calls failed (sum of results {sum})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("slim-callcost: {e:#}");
            ExitCode::FAILURE
        }
    }
}
