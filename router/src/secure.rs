//! Requests that exist only in secure mode.

use crate::container::Caller;
use crate::hostsock::{self, normalize};
use crate::router::{in_family, Router};
use crate::tables::LocalListener;
use slim_uapi::proto::{FallbackReason, Identity, ListenReq, Reply};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;

impl Router {
    /// A connection the library accepted on its (restricted) host listener `listener_cookie`:
    /// which overlay connection is it? Restricted sockets answer overlay addresses even to the
    /// router, so the host endpoints come from the kernel's socket table (sock_diag) by cookie.
    /// The answer is written into the kernel module (the child's getsockname/getpeername) and
    /// returned. Only a child of one of the caller's own listeners is looked at.
    pub async fn identify_child(
        &self,
        caller: &Caller,
        listener_cookie: u64,
        child: Option<OwnedFd>,
    ) -> Reply<'static> {
        let (Some(dev), Some(child)) = (&self.dev, child) else {
            return self.refuse(caller, "IdentifyChild without a socket").0;
        };
        let listener = self
            .tables()
            .local_listener(listener_cookie)
            .map(|l| (l.host, l.keys.clone(), l.owner));
        let Some((listener_host, keys, owner)) = listener else {
            return self
                .refuse(
                    caller,
                    "IdentifyChild names a listener this router does not know",
                )
                .0;
        };
        if owner != caller.netns {
            return self
                .refuse(caller, "IdentifyChild names another container's listener")
                .0;
        }
        let tuple = hostsock::cookie(child.as_raw_fd()).and_then(crate::sockdiag::tuple_of_cookie);
        let (local_host, peer_host) = match tuple {
            Ok(Some((l, p))) => (normalize(l), normalize(p)),
            Ok(None) => return Reply::Unknown, // already closed (reset by the peer, ...)
            Err(e) => {
                tracing::warn!(error = %e, "sock_diag lookup failed; accepted connection dropped");
                return Reply::Unknown;
            }
        };
        if local_host != normalize(listener_host) {
            return self
                .refuse(
                    caller,
                    "IdentifyChild with a socket that is not a child of that listener",
                )
                .0;
        }
        let Some(ann) = self.wait_announce(peer_host, local_host).await else {
            self.counters
                .unknown_accepts
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer_host, %local_host, "accepted host connection was never announced; refusing it");
            return Reply::Unknown;
        };
        if !keys.contains(&normalize(ann.server_overlay)) {
            tracing::warn!(server = %ann.server_overlay, "announcement for another overlay endpoint; refusing it");
            return Reply::Unknown;
        }
        let family = if listener_host.is_ipv6() {
            libc::AF_INET6
        } else {
            libc::AF_INET
        };
        let family = hostsock::socket_family(child.as_raw_fd()).unwrap_or(family);
        if let Err(e) = dev.set_child_addrs(
            child.as_fd(),
            in_family(ann.server_overlay, family),
            in_family(ann.client_overlay, family),
        ) {
            tracing::warn!(error = %e, "cannot record an accepted connection's overlay addresses; refusing it");
            return Reply::Unknown;
        }
        self.counters.accepts.fetch_add(1, Ordering::Relaxed);
        Reply::Identity(Identity {
            local: ann.server_overlay,
            peer: Some(ann.client_overlay),
        })
    }

    /// Pooled sockets for a container in secure mode (issue 15, point 2): host sockets bound to
    /// ports leased to the caller's own overlay address `lease`, restricted with
    /// `SLIM_RESTRICT_TRANSLATE` under the container's tag. The library connects them to overlay
    /// endpoints and the module translates the destination from the listeners table this router
    /// loaded; the container never learns a host endpoint, and no connect needs the router. A
    /// lease identifies each connection to the listener's router as in plain mode.
    ///
    /// A container the Slim policy constrains gets sockets restricted with `SLIM_RESTRICT_POLICY`
    /// too: the module checks each translated connect against the container's allow-list, which
    /// this router loaded into the policy table with its identity (`kmod_tables.rs`).
    ///
    /// No pool (a fallback reply; the library then asks per connect, as before) when the module
    /// cannot translate, no ports are leased here, or the Slim policy constrains the container and
    /// the module cannot check a policy: its connects are then checked one by one by
    /// [`Router::connect`].
    pub async fn secure_sockets(
        self: &std::sync::Arc<Self>,
        caller: &Caller,
        family: i32,
        count: u8,
        lease: Option<IpAddr>,
    ) -> (Reply<'static>, Vec<OwnedFd>) {
        let Some(owner) = lease else {
            return (
                self.refuse(caller, "pooled sockets without a lease").0,
                Vec::new(),
            );
        };
        if !caller.owns(owner) {
            return (
                self.refuse(
                    caller,
                    "pooled sockets for an overlay address that is not this container's",
                )
                .0,
                Vec::new(),
            );
        }
        // Not counted as a fallback: no connect fell back; the library stops asking.
        let no_pool = |why| (Reply::Fallback(why), Vec::new());
        let Some(dev) = self.dev.as_ref().filter(|d| d.has_translate()) else {
            return no_pool(FallbackReason::Unavailable);
        };
        let constrained = self
            .settings
            .policy
            .as_ref()
            .is_some_and(|p| p.constrains(&caller.addrs));
        if constrained && !dev.has_policy() {
            return no_pool(FallbackReason::Unavailable);
        }
        let Some(host) = self.settings.listen_host(family) else {
            return no_pool(FallbackReason::FamilyUnsupported);
        };
        if self.book().is_none() {
            // No lease range: a connection from an unleased port could not be identified.
            return no_pool(FallbackReason::Unavailable);
        }
        let empty = || {
            (
                Reply::SocketsOk {
                    count: 0,
                    leased: true,
                    ports: Default::default(),
                },
                Vec::new(),
            )
        };
        // None: the first ports are being leased (every peer must know a lease before its socket
        // connects): none this time, ask again later. Plain mode hands out unleased sockets
        // meanwhile, whose connections the library announces; here nobody could announce them.
        let Some(out) = self.leased_sockets(family, host, owner, count) else {
            return empty();
        };
        let owner = hostsock::normalize_ip(owner);
        let mut ports = slim_uapi::proto::PortList::default();
        let mut fds = Vec::with_capacity(out.len());
        for (fd, port) in out {
            let local = in_family(std::net::SocketAddr::new(owner, port), family);
            if let Err(e) = dev.restrict_translate(fd.as_fd(), caller.netns, local, constrained) {
                // The lease goes back with the socket's close (found free by its next bind).
                tracing::warn!(%local, error = %e, "cannot restrict a pooled socket");
                continue;
            }
            ports.push(port);
            fds.push(fd);
        }
        if fds.is_empty() {
            return empty();
        }
        (
            Reply::SocketsOk {
                count: fds.len() as u8,
                leased: true,
                ports,
            },
            fds,
        )
    }

    /// A host listener the library already holds, registered again after this router restarted.
    /// Accepted only if the kernel says it is a listener of this host whose (virtual) address is
    /// the one the caller says it bound, on the caller's own overlay addresses. The router takes
    /// it over (`SLIM_RESTRICT_ADOPT`): a listener a plain router made (it answers its host
    /// address) is restricted now, and one a former secure router restricted is pointed at this
    /// router's tables, so that the module identifies its connections again. Without that
    /// feature only a restricted listener is taken back, and its connections are identified by
    /// asking this router.
    pub async fn secure_reattach(
        &self,
        caller: &Caller,
        req: &ListenReq,
        fd: Option<OwnedFd>,
    ) -> Reply<'static> {
        let Some(fd) = fd else {
            return self.refuse(caller, "reattach without a socket").0;
        };
        let Ok((virtual_local, cookie)) = hostsock::inspect_listener(&fd) else {
            return self
                .refuse(caller, "reattach of a socket that is not a listener")
                .0;
        };
        let host = match crate::sockdiag::listener_addr_of_cookie(cookie) {
            Ok(Some(h)) => normalize(h),
            Ok(None) => {
                return self
                    .refuse(caller, "reattach of a socket that is not a host listener")
                    .0
            }
            Err(e) => {
                tracing::warn!(error = %e, "sock_diag lookup failed; reattach refused");
                return Reply::Fallback(FallbackReason::Unavailable);
            }
        };
        let ours = Some(host.ip()) == self.settings.host_v4.map(IpAddr::V4)
            || Some(host.ip()) == self.settings.host_v6.map(IpAddr::V6);
        // A restricted listener answers its virtual address; one answering the host address is
        // not restricted (a plain router made it), and no container may keep such a socket in
        // secure mode: it is restricted below, or refused.
        let restricted = normalize(virtual_local) != host;
        let adopt = self.dev.as_ref().filter(|d| d.has_adopt());
        if !ours
            || (restricted && normalize(virtual_local) != normalize(req.bound))
            || (!restricted && adopt.is_none())
        {
            return self.refuse(caller, "reattach of a socket that is not a restricted listener of this router for that address").0;
        }
        let bound = crate::hostsock::normalize_ip(req.bound.ip());
        if !bound.is_unspecified() && !caller.owns(bound) {
            return self
                .refuse(
                    caller,
                    "reattach of a listener on another container's address",
                )
                .0;
        }
        let mut req = req.clone();
        req.ips = caller.ip_list();
        let keys = self.listener_keys(&req);
        if keys.is_empty() {
            return Reply::Fallback(FallbackReason::OutsidePrefixes);
        }
        if let Some(dev) = adopt {
            let local = in_family(req.bound, req.family);
            if let Err(e) = dev.adopt_listener(fd.as_fd(), caller.netns, local) {
                tracing::warn!(bound = %req.bound, %host, error = %e, "cannot take over a reattached listener");
                return self
                    .refuse(
                        caller,
                        "reattach of a listener this router cannot take over",
                    )
                    .0;
            }
        }
        self.register_again(
            cookie,
            LocalListener {
                host,
                keys,
                bound: req.bound,
                owner: caller.netns,
            },
        )
        .await
    }

    /// An administrator's request: shut down every host socket of the container that process
    /// `pid` runs in (its network namespace is the module tag), and forget its listeners.
    pub fn revoke(&self, pid: u32) -> Reply<'static> {
        let Some(dev) = &self.dev else {
            return Reply::Error {
                errno: libc::EINVAL,
                message: "revocation needs secure mode",
            };
        };
        use std::os::unix::fs::MetadataExt;
        let netns = match std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            Ok(m) => m.ino(),
            Err(e) => {
                tracing::warn!(pid, error = %e, "revoke: no such process");
                return Reply::Error {
                    errno: libc::ESRCH,
                    message: "no such process",
                };
            }
        };
        match dev.revoke(netns) {
            Ok(n) => {
                tracing::info!(
                    pid,
                    netns,
                    sockets = n,
                    "revoked the container's host sockets"
                );
                // Its listeners were shut down with the rest: tell the peers now.
                self.sweep_listeners();
                Reply::Revoked { sockets: n }
            }
            Err(e) => {
                tracing::warn!(pid, netns, error = %e, "REVOKE failed");
                Reply::Error {
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                    message: "the kernel module refused the revocation",
                }
            }
        }
    }
}
