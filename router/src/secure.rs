//! Requests that exist only in secure mode.

use crate::container::Caller;
use crate::hostsock::{self, normalize};
use crate::router::{in_family, Router};
use slim_uapi::proto::{Identity, Reply};
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
}
