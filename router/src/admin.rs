//! An administrator's requests to the running router over its Unix socket (`--revoke`,
//! `status`). The router serves them only to root in its own network namespace
//! (`container::is_admin`).

use anyhow::Context;
use nix::sys::socket::{
    connect as connect_unix, recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use slim_uapi::proto::{Reply, Request, MAX_FRAME, PROTO_VERSION};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// A session with the router serving `path`.
pub fn connect(path: &Path) -> anyhow::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect_unix(fd.as_raw_fd(), &addr).with_context(|| {
        format!(
            "no router answers on {}; start slim-router, or give its --socket (or the --config that names it)",
            path.display()
        )
    })?;
    Ok(fd)
}

/// Sends one request and returns the reply frame (its length and bytes).
pub fn ask(fd: &OwnedFd, req: &Request) -> anyhow::Result<(usize, [u8; MAX_FRAME])> {
    let mut buf = [0u8; MAX_FRAME];
    let n = req.encode(&mut buf).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    send(fd.as_raw_fd(), &buf[..n], MsgFlags::empty())?;
    let mut rbuf = [0u8; MAX_FRAME];
    let m = recv(fd.as_raw_fd(), &mut rbuf, MsgFlags::empty())?;
    Ok((m, rbuf))
}

/// `--revoke PID`: shuts down every host socket of the container of `pid`.
pub fn revoke(path: &Path, pid: u32) -> anyhow::Result<u32> {
    let fd = connect(path)?;
    let (m, b) = ask(
        &fd,
        &Request::Hello {
            version: PROTO_VERSION,
            pid: std::process::id(),
        },
    )?;
    match Reply::decode(&b[..m]) {
        Ok(Reply::HelloOk { .. }) => {}
        Ok(Reply::Error { message, .. }) => anyhow::bail!("the router refused: {message}"),
        other => anyhow::bail!("unexpected answer from the router: {other:?}"),
    }
    let (m, b) = ask(&fd, &Request::Revoke { pid })?;
    match Reply::decode(&b[..m]) {
        Ok(Reply::Revoked { sockets }) => Ok(sockets),
        Ok(Reply::Error { errno, message }) => {
            anyhow::bail!(
                "the router refused: {message} ({})",
                std::io::Error::from_raw_os_error(errno)
            )
        }
        other => anyhow::bail!("unexpected answer from the router: {other:?}"),
    }
}
