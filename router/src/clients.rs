//! The Unix socket the containers' preload libraries talk to: `SOCK_SEQPACKET`, one request per
//! packet, one task per connected process, so that a slow or hostile client stalls nobody else.

use crate::container;
use crate::router::Router;
use anyhow::Context;
use nix::sys::socket::{
    accept4, bind, getsockopt, listen, recvmsg, sendmsg, socket, sockopt, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use slim_uapi::proto::{Reply, Request, HELLO_SECURE, MAX_FRAME, PROTO_VERSION};
use slim_uapi::wire::DecodeError;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Binds the socket path, refusing to steal it from a live router and cleaning up a stale one.
pub fn bind_socket(path: &Path, mode: u32) -> anyhow::Result<OwnedFd> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket; remove it or pick another --socket",
                path.display()
            );
        }
        let probe = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let addr = UnixAddr::new(path)?;
        if nix::sys::socket::connect(probe.as_raw_fd(), &addr).is_ok() {
            let who = getsockopt(&probe, sockopt::PeerCredentials)
                .map(|c| c.pid())
                .unwrap_or(0);
            anyhow::bail!(
                "{} is busy: another slim-router (pid {who}) is serving it; stop that one or pick another --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    bind(fd.as_raw_fd(), &addr).with_context(|| format!("cannot bind {}", path.display()))?;
    // Containers run as any user; who may use the router is decided by who can reach the path.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    listen(&fd, Backlog::new(1024)?)?;
    Ok(fd)
}

pub async fn serve(router: Arc<Router>, listener: OwnedFd) -> anyhow::Result<()> {
    // SAFETY: an OwnedFd's descriptor stays open and unchanged until the AsyncFd drops it.
    let listener = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    loop {
        let mut guard = listener.readable().await?;
        match accept4(
            listener.get_ref().as_raw_fd(),
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        ) {
            Ok(fd) => {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                let r = router.clone();
                tokio::spawn(async move {
                    if let Err(e) = client(r, fd).await {
                        tracing::debug!(error = %e, "client connection ended");
                    }
                });
            }
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept on router socket failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

enum Received {
    /// A frame of this many bytes, and the first descriptor attached to it, if any.
    Frame(usize, Option<OwnedFd>),
    Eof,
}

fn recv_frame(fd: RawFd, buf: &mut [u8]) -> nix::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    // The first descriptor goes with the request; any others are closed at once, not leaked.
    let mut first = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for f in fds {
                // SAFETY: the kernel just installed these descriptors for us; we own them.
                let owned = unsafe { OwnedFd::from_raw_fd(f) };
                if first.is_none() {
                    first = Some(owned);
                }
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(nix::errno::Errno::EMSGSIZE);
    }
    if msg.bytes == 0 {
        return Ok(Received::Eof);
    }
    Ok(Received::Frame(msg.bytes, first))
}

async fn send_reply(
    conn: &AsyncFd<OwnedFd>,
    reply: &Reply<'_>,
    fds: &[OwnedFd],
) -> anyhow::Result<()> {
    let mut buf = [0u8; MAX_FRAME];
    let n = reply.encode(&mut buf).map_err(|e| anyhow::anyhow!("{e}"))?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    loop {
        let mut guard = conn.writable().await?;
        let iov = [IoSlice::new(&buf[..n])];
        let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&raw)]
        };
        match sendmsg::<()>(
            conn.get_ref().as_raw_fd(),
            &iov,
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(e) => return Err(e.into()),
        }
    }
}

/// A library connection of an identified container (secure mode), for as long as it lives.
struct ContainerSession<'a> {
    router: &'a Router,
    netns: u64,
}

impl<'a> ContainerSession<'a> {
    fn new(router: &'a Router, c: &container::Caller) -> Self {
        router.tables().container_connected(c.netns, &c.addrs);
        ContainerSession {
            router,
            netns: c.netns,
        }
    }
}

impl Drop for ContainerSession<'_> {
    fn drop(&mut self) {
        self.router.tables().container_disconnected(self.netns);
    }
}

async fn client(router: Arc<Router>, fd: OwnedFd) -> anyhow::Result<()> {
    let pid = getsockopt(&fd, sockopt::PeerCredentials)
        .map(|c| c.pid())
        .unwrap_or(0);
    // Secure mode: which container this is, decided once, by the kernel's word (see container.rs).
    // Root in the router's own namespace is an administrator, who may only revoke.
    let mut admin = false;
    let caller = match router.dev.is_some() {
        false => None,
        true => {
            let probe = fd.try_clone()?;
            let prefixes = router.settings.prefixes.clone();
            let who = tokio::task::spawn_blocking(move || container::identify(&probe, &prefixes))
                .await
                .map_err(|e| anyhow::anyhow!("identification task failed: {e}"))?;
            match who {
                Ok(c) => {
                    tracing::debug!(pid = c.pid, netns = c.netns, addrs = ?c.addrs, "container identified");
                    Some(c)
                }
                Err(container::CallerError::HostNamespace { .. })
                    if getsockopt(&fd, sockopt::PeerCredentials).is_ok_and(|c| c.uid() == 0) =>
                {
                    admin = true;
                    None
                }
                Err(e) => {
                    let total = router
                        .counters
                        .refusal("library connection of an unidentified caller");
                    tracing::warn!(
                        pid,
                        netns = container::netns_of(pid).unwrap_or(0),
                        refused_total = total,
                        error = %e,
                        "refused: a library connection whose container cannot be identified"
                    );
                    // SAFETY: an OwnedFd's descriptor stays open until the AsyncFd drops it.
                    let conn = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
                    let message =
                        format!("secure mode: cannot identify the calling container: {e}");
                    let r = Reply::Error {
                        errno: libc::EPERM,
                        message: &message,
                    };
                    send_reply(&conn, &r, &[]).await?;
                    return Ok(());
                }
            }
        }
    };
    let secure = caller.as_ref();
    // While this connection lives, its container's identity is in the router's tables (and in
    // the module's, see kmod_tables.rs); it goes with the container's last connection.
    let _session = secure.map(|c| ContainerSession::new(&router, c));
    // SAFETY: an OwnedFd's descriptor stays open and unchanged until the AsyncFd drops it.
    let conn = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
    let mut buf = [0u8; MAX_FRAME];
    // The status document of this session (taken when a client asks for its first byte).
    let mut status_doc: Vec<u8> = Vec::new();
    loop {
        let got = {
            let mut guard = conn.readable().await?;
            match recv_frame(conn.get_ref().as_raw_fd(), &mut buf) {
                Ok(r) => r,
                Err(nix::errno::Errno::EAGAIN) => {
                    guard.clear_ready();
                    continue;
                }
                Err(nix::errno::Errno::EMSGSIZE) => {
                    router.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                    let r = Reply::Error {
                        errno: libc::EMSGSIZE,
                        message: "frame too large",
                    };
                    send_reply(&conn, &r, &[]).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (n, passed) = match got {
            Received::Eof => return Ok(()),
            Received::Frame(n, passed) => (n, passed),
        };
        let req = match Request::decode(&buf[..n]) {
            Ok(r) => r,
            Err(e) => {
                router.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pid, error = %e, "bad frame from client");
                let message = match e {
                    DecodeError::Version(_) => "protocol version mismatch: update libslim_preload.so and slim-router together",
                    DecodeError::BadMagic => "not a Slim frame",
                    _ => "malformed request",
                };
                send_reply(
                    &conn,
                    &Reply::Error {
                        errno: libc::EPROTO,
                        message,
                    },
                    &[],
                )
                .await?;
                if matches!(e, DecodeError::BadMagic | DecodeError::Version(_)) {
                    return Ok(());
                }
                continue;
            }
        };
        if let Request::Status { format, offset } = req {
            // Administrators only: the document holds host addresses.
            let allowed = admin || (secure.is_none() && container::is_admin(conn.get_ref()));
            let reply = if !allowed {
                let (pid, netns) = match secure {
                    Some(c) => (c.pid, c.netns),
                    None => (pid, container::netns_of(pid).unwrap_or(0)),
                };
                router
                    .refuse_process(
                        pid,
                        netns,
                        "status is for administrators (root in the router's network namespace)",
                    )
                    .0
            } else if format != slim_uapi::proto::STATUS_FORMAT {
                Reply::Error {
                    errno: libc::EPROTONOSUPPORT,
                    message: "this router serves another status format; run matching slim-router versions",
                }
            } else {
                if offset == 0 {
                    status_doc = crate::status::encode(&router);
                }
                let at = (offset as usize).min(status_doc.len());
                let end = (at + slim_uapi::proto::MAX_STATUS_CHUNK).min(status_doc.len());
                Reply::Status {
                    total: status_doc.len() as u32,
                    offset: at as u32,
                    chunk: &status_doc[at..end],
                }
            };
            send_reply(&conn, &reply, &[]).await?;
            continue;
        }
        if admin {
            let reply = match &req {
                Request::Hello { .. } => Reply::HelloOk {
                    version: PROTO_VERSION,
                    flags: HELLO_SECURE,
                },
                Request::Revoke { pid: target } => {
                    tracing::info!(admin_pid = pid, target, "revocation requested");
                    router.revoke(*target)
                }
                _ => Reply::Error {
                    errno: libc::EPERM,
                    message: "an administrator's session (root in the router's namespace) may only revoke",
                },
            };
            send_reply(&conn, &reply, &[]).await?;
            continue;
        }
        let (reply, fd) = match (&req, secure) {
            (Request::Hello { version, .. }, _) if *version != PROTO_VERSION => {
                let message = format!(
                    "slim-router speaks protocol {PROTO_VERSION} but libslim_preload.so speaks {version}; install matching versions"
                );
                tracing::warn!(pid, "{message}");
                send_reply(
                    &conn,
                    &Reply::Error {
                        errno: libc::EPROTO,
                        message: &message,
                    },
                    &[],
                )
                .await?;
                return Ok(());
            }
            (Request::Hello { .. }, None) => (
                Reply::HelloOk {
                    version: PROTO_VERSION,
                    flags: 0,
                },
                router.shared_tables(),
            ),
            // Secure mode shares no tables: they hold host endpoints.
            (Request::Hello { .. }, Some(_)) => (
                Reply::HelloOk {
                    version: PROTO_VERSION,
                    flags: HELLO_SECURE,
                },
                Vec::new(),
            ),
            (Request::Connect(c), who) => {
                let (r, fd) = router.connect(who, c);
                (r, fd.into_iter().collect())
            }
            (Request::Listen(l), who) => {
                let (r, fd) = router.listen(who, l).await;
                (r, fd.into_iter().collect())
            }
            (Request::IdentifyChild { listener_cookie }, Some(c)) => (
                router.identify_child(c, *listener_cookie, passed).await,
                Vec::new(),
            ),
            (Request::Revoke { .. }, Some(c)) => (
                router
                    .refuse(
                        c,
                        "revocation is for administrators (root in the router's namespace)",
                    )
                    .0,
                Vec::new(),
            ),
            (Request::Revoke { .. }, None) => (
                Reply::Error {
                    errno: libc::EINVAL,
                    message: "revocation needs secure mode",
                },
                Vec::new(),
            ),
            (Request::IdentifyChild { .. }, None) => (
                Reply::Error {
                    errno: libc::EINVAL,
                    message: "IdentifyChild is only used in secure mode",
                },
                Vec::new(),
            ),
            // Pooled sockets restricted by the module, which connects them itself.
            (
                Request::Sockets {
                    family,
                    count,
                    lease,
                },
                Some(c),
            ) => router.secure_sockets(c, *family, *count, *lease).await,
            // Host endpoints: not for containers in secure mode.
            (Request::AcceptLookup(_) | Request::QueryTuple { .. }, Some(c)) => (
                router
                    .refuse(
                        c,
                        "request not available in secure mode (it would reveal host endpoints)",
                    )
                    .0,
                Vec::new(),
            ),
            (Request::Announce(_), Some(c)) => {
                // One-way: no reply, but counted and logged.
                let _ = router.refuse(c, "connection announcement from a container in secure mode");
                continue;
            }
            (Request::Reattach(l), Some(c)) => {
                (router.secure_reattach(c, l, passed).await, Vec::new())
            }
            (Request::Reattach(l), None) => (router.reattach(l, passed).await, Vec::new()),
            (Request::AcceptLookup(a), None) => (router.accept_lookup(a).await, Vec::new()),
            (
                Request::QueryTuple {
                    local_host,
                    peer_host,
                },
                None,
            ) => (router.query_tuple(*local_host, *peer_host), Vec::new()),
            (
                Request::Sockets {
                    family,
                    count,
                    lease,
                },
                None,
            ) => router.sockets(*family, *count, *lease).await,
            (Request::Announce(a), None) => {
                router.client_announce(a);
                continue;
            }
            (Request::Closed { cookie }, _) => {
                router.closed(*cookie);
                continue;
            }
            // Answered above.
            (Request::Status { .. }, _) => continue,
        };
        send_reply(&conn, &reply, &fd).await?;
    }
}
