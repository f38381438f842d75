//! A logger for code that runs inside arbitrary programs: in signal handlers, in a child between
//! fork and exec, while the program holds its own locks. So: no allocation, no lock, one write(2)
//! per line to stderr, and only when SLIM_LOG asks for it (the program's stderr is not ours).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, Ordering};

pub const ERROR: u8 = 1;
pub const WARN: u8 = 2;
pub const INFO: u8 = 3;
pub const DEBUG: u8 = 4;

/// Warnings are shown by default: they say why a program runs on the overlay instead of Slim.
static LEVEL: AtomicU8 = AtomicU8::new(WARN);

pub fn set_level_from(s: &str) {
    let l = match s.trim().to_ascii_lowercase().as_str() {
        "off" | "none" | "0" => 0,
        "error" => ERROR,
        "warn" | "warning" => WARN,
        "info" => INFO,
        "debug" | "trace" => DEBUG,
        _ => WARN,
    };
    LEVEL.store(l, Ordering::Relaxed);
}

#[inline]
pub fn enabled(level: u8) -> bool {
    level <= LEVEL.load(Ordering::Relaxed)
}

struct LineBuf {
    buf: [u8; 512],
    len: usize,
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

pub fn emit(level: u8, args: fmt::Arguments<'_>) {
    let mut line = LineBuf {
        buf: [0; 512],
        len: 0,
    };
    let tag = match level {
        ERROR => "error",
        WARN => "warn",
        INFO => "info",
        _ => "debug",
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let _ = write!(line, "slim[{pid}] {tag}: ");
    let _ = line.write_fmt(args);
    if line.len == line.buf.len() {
        line.len -= 1;
    }
    line.buf[line.len] = b'\n';
    line.len += 1;
    // SAFETY: the buffer holds `len` initialised bytes; a failed or short write to stderr is ignored.
    unsafe { libc::write(2, line.buf.as_ptr().cast(), line.len) };
}

macro_rules! slog {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::log::enabled($lvl) {
            $crate::log::emit($lvl, format_args!($($arg)*));
        }
    };
}
pub(crate) use slog;
