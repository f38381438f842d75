//! The router <-> preload protocol.
//!
//! Transport: a `SOCK_SEQPACKET` Unix socket, one message per packet, so that message boundaries and
//! the file descriptors attached with `SCM_RIGHTS` stay together. Every request gets exactly one reply,
//! except notifications ([`Request::Closed`]), which get none. Every frame carries the magic number and
//! the protocol version; a router and a library of different versions refuse each other at `Hello`
//! with a message that names both versions.
//!
//! Frame: `magic: u32 | version: u16 | kind: u16 | body`.

use crate::wire::{DecodeError, Overflow, Reader, Writer};
use core::net::{IpAddr, SocketAddr};

pub const MAGIC: u32 = 0x534C_494D; // "SLIM"
pub const PROTO_VERSION: u16 = 3;
/// [`Reply::HelloOk`] flag: the router runs in secure mode. Host sockets come restricted by the
/// kernel module (they answer overlay addresses themselves), no shared tables or socket pools are
/// offered, and accepted connections are identified with [`Request::IdentifyChild`].
pub const HELLO_SECURE: u32 = 1 << 0;
/// No frame of this protocol is larger; receivers use a buffer of this size.
pub const MAX_FRAME: usize = 2048;
pub const HEADER_LEN: usize = 8;
/// Options replayed onto a host socket: at most this many, each value at most [`MAX_OPT_LEN`] bytes.
pub const MAX_OPTS: usize = 16;
pub const MAX_OPT_LEN: usize = 16;
/// Overlay addresses a container may announce for a wildcard listener.
pub const MAX_IPS: usize = 16;
/// The format of the document [`Request::Status`] asks for: version 1 is a UTF-8 JSON object
/// (its fields are described in docs/operations.md). A router that knows another format
/// answers `Error` with `EPROTONOSUPPORT`.
pub const STATUS_FORMAT: u16 = 1;
/// Most bytes of the status document one [`Reply::Status`] carries.
pub const MAX_STATUS_CHUNK: usize = MAX_FRAME - 64;

mod kind {
    pub const HELLO: u16 = 1;
    pub const CONNECT: u16 = 2;
    pub const LISTEN: u16 = 3;
    pub const ACCEPT_LOOKUP: u16 = 4;
    pub const QUERY_TUPLE: u16 = 5;
    pub const CLOSED: u16 = 6;
    pub const REATTACH: u16 = 7;
    pub const ANNOUNCE: u16 = 8;
    pub const SOCKETS: u16 = 9;
    pub const IDENTIFY_CHILD: u16 = 10;
    pub const REVOKE: u16 = 11;
    pub const STATUS: u16 = 12;

    pub const HELLO_OK: u16 = 101;
    pub const CONNECT_OK: u16 = 102;
    pub const LISTEN_OK: u16 = 103;
    pub const IDENTITY: u16 = 104;
    pub const UNKNOWN: u16 = 105;
    pub const FALLBACK: u16 = 106;
    pub const ERROR: u16 = 107;
    pub const SOCKETS_OK: u16 = 108;
    pub const REVOKED: u16 = 109;
    pub const STATUS_CHUNK: u16 = 110;
}

/// A socket option the application set before Slim took the socket over; the router sets it again
/// on the host socket before connecting or listening, so buffer sizes and the like apply from the
/// first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockOpt {
    pub level: i32,
    pub name: i32,
    pub len: u8,
    pub value: [u8; MAX_OPT_LEN],
}

impl SockOpt {
    pub fn new(level: i32, name: i32, value: &[u8]) -> Option<SockOpt> {
        if value.len() > MAX_OPT_LEN {
            return None;
        }
        let mut v = [0u8; MAX_OPT_LEN];
        v[..value.len()].copy_from_slice(value);
        Some(SockOpt {
            level,
            name,
            len: value.len() as u8,
            value: v,
        })
    }

    pub fn value(&self) -> &[u8] {
        &self.value[..self.len as usize]
    }
}

/// A fixed-capacity list, so that the preload library can build requests without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct List<T: Copy, const N: usize> {
    len: usize,
    items: [Option<T>; N],
}

impl<T: Copy, const N: usize> Default for List<T, N> {
    fn default() -> Self {
        List {
            len: 0,
            items: [None; N],
        }
    }
}

impl<T: Copy, const N: usize> List<T, N> {
    /// Appends; returns false (and drops the item) when full.
    pub fn push(&mut self, item: T) -> bool {
        if self.len == N {
            return false;
        }
        self.items[self.len] = Some(item);
        self.len += 1;
        true
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.items[..self.len].iter().filter_map(|x| *x)
    }
}

pub type SockOpts = List<SockOpt, MAX_OPTS>;
pub type IpList = List<IpAddr, MAX_IPS>;
/// Most sockets one `SocketsOk` carries.
pub const MAX_POOL_SOCKETS: usize = 64;
pub type PortList = List<u16, MAX_POOL_SOCKETS>;

/// Ask for a host connection to an overlay destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectReq {
    /// Address family of the application's socket (`AF_INET` or `AF_INET6`); the host socket gets the same.
    pub family: i32,
    /// The overlay source address the container's routing would pick for this destination.
    pub src_ip: IpAddr,
    /// The overlay destination, IPv4-mapped addresses already turned into IPv4.
    pub dst: SocketAddr,
    pub opts: SockOpts,
}

/// Ask for a host listener standing in for an overlay listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenReq {
    pub family: i32,
    /// `IPV6_V6ONLY` of the application's socket (false for IPv4 sockets).
    pub v6only: bool,
    /// Where the application's socket is bound in the overlay (the IP may be unspecified).
    pub bound: SocketAddr,
    /// The container's overlay addresses: what a wildcard listener is reachable at.
    pub ips: IpList,
    pub backlog: i32,
    pub opts: SockOpts,
}

/// Which overlay connection an accepted host connection stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptLookup {
    pub listener_cookie: u64,
    pub child_cookie: u64,
    /// The accepted host socket's own address and its peer's, as the kernel reports them.
    pub local_host: SocketAddr,
    pub peer_host: SocketAddr,
}

// Requests live on the stack for one call; boxing the large variants would make the preload
// library allocate on every connect.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Hello {
        version: u16,
        pid: u32,
    },
    Connect(ConnectReq),
    Listen(ListenReq),
    AcceptLookup(AcceptLookup),
    /// What overlay identity does the host socket with these host endpoints (its own, its
    /// peer's, as getsockname/getpeername report them) carry? Used after `exec`, when the
    /// process that inherited a Slim socket no longer has its own records.
    QueryTuple {
        local_host: SocketAddr,
        peer_host: SocketAddr,
    },
    /// Notification, no reply: the library closed a descriptor of this socket.
    Closed {
        cookie: u64,
    },
    /// A host listener the library already holds (attached with `SCM_RIGHTS`), registered again
    /// because the router restarted and lost its tables. Answered like `Listen`, without a
    /// descriptor.
    Reattach(ListenReq),
    /// Notification, no reply: the library connected one of its pooled host sockets (see
    /// `Sockets`) towards a Slim listener; the router records it and tells the listener's router.
    Announce(crate::peer::Announce),
    /// Ready host sockets (bound to the host address, not connected) for the library's pool, so
    /// that a connect needs no round trip: up to `count`, of `family`. With `lease`, the library
    /// will connect them only from that overlay address: the router may then lease their ports
    /// to it (`SocketsOk::leased`), so that those connections need no announcement.
    Sockets {
        family: i32,
        count: u8,
        lease: Option<IpAddr>,
    },
    /// Secure mode: a connection the library accepted on the host listener `listener_cookie`
    /// (attached with `SCM_RIGHTS`). The router finds which overlay connection it stands for,
    /// records its overlay addresses in the kernel module and answers `Identity` (or `Unknown`:
    /// the library then drops it).
    IdentifyChild {
        listener_cookie: u64,
    },
    /// Secure mode, administrators only (root in the router's own network namespace): shut down
    /// every host socket of the container whose network namespace process `pid` runs in (policy
    /// change, container removed). Answered with `Revoked`.
    Revoke {
        pid: u32,
    },
    /// An administrator (root in the router's network namespace) asks for the router's status
    /// document in `format` ([`STATUS_FORMAT`]), from byte `offset` on. The router takes a
    /// snapshot at offset 0 and serves the later chunks of one session from that snapshot.
    Status {
        format: u16,
        offset: u32,
    },
}

/// Why the router declined to set up a Slim connection; the library then uses the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FallbackReason {
    /// No Slim listener is known at the destination (the server does not use Slim, or nothing listens).
    NoListener = 1,
    /// The destination is outside the router's overlay prefixes.
    OutsidePrefixes = 2,
    /// The host network cannot carry this family (e.g. an IPv4 socket and an IPv6-only underlay).
    FamilyUnsupported = 3,
    /// The router cannot serve this request right now (resources, peers unreachable).
    Unavailable = 4,
}

impl FallbackReason {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => FallbackReason::NoListener,
            2 => FallbackReason::OutsidePrefixes,
            3 => FallbackReason::FamilyUnsupported,
            4 => FallbackReason::Unavailable,
            _ => return Err(DecodeError::BadField("fallback reason")),
        })
    }
}

/// Overlay addresses standing in for a host socket's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub local: SocketAddr,
    /// None for a listener.
    pub peer: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    HelloOk {
        version: u16,
        /// `HELLO_*` flags.
        flags: u32,
    },
    /// A host socket is attached (`SCM_RIGHTS`), non-blocking, its connect already started.
    ConnectOk {
        id: Identity,
        cookie: u64,
    },
    /// A host listener is attached (`SCM_RIGHTS`), non-blocking, already listening.
    ListenOk {
        cookie: u64,
    },
    Identity(Identity),
    Unknown,
    Fallback(FallbackReason),
    /// `count` host sockets are attached (`SCM_RIGHTS`), bound, non-blocking, not connected.
    /// `leased`: their ports are leased to the overlay address the request named, and every
    /// peer router knows it; connections from them need no announcement (unless the
    /// destination's route is `shared`).
    SocketsOk {
        count: u8,
        leased: bool,
        /// The host port of each socket, in order (the library needs it to name the
        /// connection, and is spared a getsockname per connect).
        ports: PortList,
    },
    /// `sockets` host sockets of the container were shut down.
    Revoked {
        sockets: u32,
    },
    /// Bytes `offset..offset + chunk.len()` of a status document of `total` bytes.
    Status {
        total: u32,
        offset: u32,
        chunk: &'a [u8],
    },
    /// The request was refused; `errno` is what the application's call should fail with.
    Error {
        errno: i32,
        message: &'a str,
    },
}

fn header(w: &mut Writer<'_>, kind: u16) -> Result<(), Overflow> {
    w.u32(MAGIC)?;
    w.u16(PROTO_VERSION)?;
    w.u16(kind)
}

/// Reads the header and returns the message kind. A frame of another version is reported as
/// [`DecodeError::Version`] only if its magic is right, so the caller can name both versions.
pub fn read_header(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    if r.u32()? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u16()?;
    let kind = r.u16()?;
    if version != PROTO_VERSION {
        return Err(DecodeError::Version(version));
    }
    Ok(kind)
}

fn write_opts(w: &mut Writer<'_>, opts: &SockOpts) -> Result<(), Overflow> {
    w.u8(opts.len() as u8)?;
    for o in opts.iter() {
        w.i32(o.level)?;
        w.i32(o.name)?;
        w.blob(o.value())?;
    }
    Ok(())
}

fn read_opts(r: &mut Reader<'_>) -> Result<SockOpts, DecodeError> {
    let n = r.u8()? as usize;
    if n > MAX_OPTS {
        return Err(DecodeError::BadField("option count"));
    }
    let mut opts = SockOpts::default();
    for _ in 0..n {
        let level = r.i32()?;
        let name = r.i32()?;
        let value = r.blob()?;
        let opt = SockOpt::new(level, name, value).ok_or(DecodeError::BadField("option length"))?;
        opts.push(opt);
    }
    Ok(opts)
}

fn write_identity(w: &mut Writer<'_>, id: &Identity) -> Result<(), Overflow> {
    w.sockaddr(&id.local)?;
    match &id.peer {
        Some(p) => {
            w.bool(true)?;
            w.sockaddr(p)
        }
        None => w.bool(false),
    }
}

fn read_identity(r: &mut Reader<'_>) -> Result<Identity, DecodeError> {
    let local = r.sockaddr()?;
    let peer = if r.bool()? { Some(r.sockaddr()?) } else { None };
    Ok(Identity { local, peer })
}

fn family_ok(f: i32) -> Result<i32, DecodeError> {
    // AF_INET = 2, AF_INET6 = 10 on Linux.
    if f == 2 || f == 10 {
        Ok(f)
    } else {
        Err(DecodeError::BadField("socket family"))
    }
}

impl Request {
    /// Encodes into `buf`, returning the frame length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, Overflow> {
        let mut w = Writer::new(buf);
        match self {
            Request::Hello { version, pid } => {
                header(&mut w, kind::HELLO)?;
                w.u16(*version)?;
                w.u32(*pid)?;
            }
            Request::Connect(c) => {
                header(&mut w, kind::CONNECT)?;
                w.i32(c.family)?;
                w.ip(Some(c.src_ip))?;
                w.sockaddr(&c.dst)?;
                write_opts(&mut w, &c.opts)?;
            }
            Request::Listen(l) | Request::Reattach(l) => {
                let k = if matches!(self, Request::Listen(_)) {
                    kind::LISTEN
                } else {
                    kind::REATTACH
                };
                header(&mut w, k)?;
                w.i32(l.family)?;
                w.bool(l.v6only)?;
                w.sockaddr(&l.bound)?;
                w.u8(l.ips.len() as u8)?;
                for ip in l.ips.iter() {
                    w.ip(Some(ip))?;
                }
                w.i32(l.backlog)?;
                write_opts(&mut w, &l.opts)?;
            }
            Request::AcceptLookup(a) => {
                header(&mut w, kind::ACCEPT_LOOKUP)?;
                w.u64(a.listener_cookie)?;
                w.u64(a.child_cookie)?;
                w.sockaddr(&a.local_host)?;
                w.sockaddr(&a.peer_host)?;
            }
            Request::QueryTuple {
                local_host,
                peer_host,
            } => {
                header(&mut w, kind::QUERY_TUPLE)?;
                w.sockaddr(local_host)?;
                w.sockaddr(peer_host)?;
            }
            Request::Closed { cookie } => {
                header(&mut w, kind::CLOSED)?;
                w.u64(*cookie)?;
            }
            Request::Announce(a) => {
                header(&mut w, kind::ANNOUNCE)?;
                w.sockaddr(&a.client_host)?;
                w.sockaddr(&a.server_host)?;
                w.sockaddr(&a.client_overlay)?;
                w.sockaddr(&a.server_overlay)?;
            }
            Request::Sockets {
                family,
                count,
                lease,
            } => {
                header(&mut w, kind::SOCKETS)?;
                w.i32(*family)?;
                w.u8(*count)?;
                w.ip(*lease)?;
            }
            Request::IdentifyChild { listener_cookie } => {
                header(&mut w, kind::IDENTIFY_CHILD)?;
                w.u64(*listener_cookie)?;
            }
            Request::Revoke { pid } => {
                header(&mut w, kind::REVOKE)?;
                w.u32(*pid)?;
            }
            Request::Status { format, offset } => {
                header(&mut w, kind::STATUS)?;
                w.u16(*format)?;
                w.u32(*offset)?;
            }
        }
        Ok(w.position())
    }

    /// Decodes one frame. `Hello` of any version decodes (so the router can answer with both
    /// versions); other kinds require [`PROTO_VERSION`].
    pub fn decode(frame: &[u8]) -> Result<Request, DecodeError> {
        let mut r = Reader::new(frame);
        if r.u32()? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u16()?;
        let k = r.u16()?;
        if k == kind::HELLO {
            let v = r.u16()?;
            let pid = r.u32()?;
            r.finish()?;
            return Ok(Request::Hello { version: v, pid });
        }
        if version != PROTO_VERSION {
            return Err(DecodeError::Version(version));
        }
        let req = match k {
            kind::CONNECT => {
                let family = family_ok(r.i32()?)?;
                let src_ip = r.ip()?.ok_or(DecodeError::BadField("source address"))?;
                let dst = r.sockaddr()?;
                let opts = read_opts(&mut r)?;
                Request::Connect(ConnectReq {
                    family,
                    src_ip,
                    dst,
                    opts,
                })
            }
            kind::LISTEN | kind::REATTACH => {
                let family = family_ok(r.i32()?)?;
                let v6only = r.bool()?;
                let bound = r.sockaddr()?;
                let n = r.u8()? as usize;
                if n > MAX_IPS {
                    return Err(DecodeError::BadField("address count"));
                }
                let mut ips = IpList::default();
                for _ in 0..n {
                    ips.push(r.ip()?.ok_or(DecodeError::BadField("listener address"))?);
                }
                let backlog = r.i32()?;
                let opts = read_opts(&mut r)?;
                let l = ListenReq {
                    family,
                    v6only,
                    bound,
                    ips,
                    backlog,
                    opts,
                };
                if k == kind::LISTEN {
                    Request::Listen(l)
                } else {
                    Request::Reattach(l)
                }
            }
            kind::ACCEPT_LOOKUP => Request::AcceptLookup(AcceptLookup {
                listener_cookie: r.u64()?,
                child_cookie: r.u64()?,
                local_host: r.sockaddr()?,
                peer_host: r.sockaddr()?,
            }),
            kind::QUERY_TUPLE => Request::QueryTuple {
                local_host: r.sockaddr()?,
                peer_host: r.sockaddr()?,
            },
            kind::CLOSED => Request::Closed { cookie: r.u64()? },
            kind::ANNOUNCE => Request::Announce(crate::peer::Announce {
                client_host: r.sockaddr()?,
                server_host: r.sockaddr()?,
                client_overlay: r.sockaddr()?,
                server_overlay: r.sockaddr()?,
            }),
            kind::SOCKETS => Request::Sockets {
                family: family_ok(r.i32()?)?,
                count: r.u8()?,
                lease: r.ip()?,
            },
            kind::IDENTIFY_CHILD => Request::IdentifyChild {
                listener_cookie: r.u64()?,
            },
            kind::REVOKE => Request::Revoke { pid: r.u32()? },
            kind::STATUS => Request::Status {
                format: r.u16()?,
                offset: r.u32()?,
            },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(req)
    }

    /// Whether the router answers this message.
    pub fn expects_reply(&self) -> bool {
        !matches!(self, Request::Closed { .. } | Request::Announce(_))
    }
}

impl<'a> Reply<'a> {
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, Overflow> {
        let mut w = Writer::new(buf);
        match self {
            Reply::HelloOk { version, flags } => {
                header(&mut w, kind::HELLO_OK)?;
                w.u16(*version)?;
                w.u32(*flags)?;
            }
            Reply::ConnectOk { id, cookie } => {
                header(&mut w, kind::CONNECT_OK)?;
                write_identity(&mut w, id)?;
                w.u64(*cookie)?;
            }
            Reply::ListenOk { cookie } => {
                header(&mut w, kind::LISTEN_OK)?;
                w.u64(*cookie)?;
            }
            Reply::Identity(id) => {
                header(&mut w, kind::IDENTITY)?;
                write_identity(&mut w, id)?;
            }
            Reply::Unknown => header(&mut w, kind::UNKNOWN)?,
            Reply::SocketsOk {
                count,
                leased,
                ports,
            } => {
                header(&mut w, kind::SOCKETS_OK)?;
                w.u8(*count)?;
                w.u8(*leased as u8)?;
                w.u8(ports.len() as u8)?;
                for p in ports.iter() {
                    w.u16(p)?;
                }
            }
            Reply::Revoked { sockets } => {
                header(&mut w, kind::REVOKED)?;
                w.u32(*sockets)?;
            }
            Reply::Status {
                total,
                offset,
                chunk,
            } => {
                if chunk.len() > MAX_STATUS_CHUNK {
                    return Err(Overflow);
                }
                header(&mut w, kind::STATUS_CHUNK)?;
                w.u32(*total)?;
                w.u32(*offset)?;
                w.blob(chunk)?;
            }
            Reply::Fallback(reason) => {
                header(&mut w, kind::FALLBACK)?;
                w.u8(*reason as u8)?;
            }
            Reply::Error { errno, message } => {
                header(&mut w, kind::ERROR)?;
                w.i32(*errno)?;
                let m = message.as_bytes();
                // Messages are advisory: cut them rather than fail the reply.
                let m = &m[..m.len().min(MAX_FRAME - 64)];
                w.blob(m)?;
            }
        }
        Ok(w.position())
    }

    /// Decodes a reply. An `Error` reply is readable across versions so that a version refusal
    /// reaches the user intact.
    pub fn decode(frame: &'a [u8]) -> Result<Reply<'a>, DecodeError> {
        let mut r = Reader::new(frame);
        if r.u32()? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u16()?;
        let k = r.u16()?;
        if version != PROTO_VERSION && k != kind::ERROR && k != kind::HELLO_OK {
            return Err(DecodeError::Version(version));
        }
        let reply = match k {
            kind::HELLO_OK => {
                let version = r.u16()?;
                // A router of another version may lay HelloOk out differently: the caller
                // compares versions before it looks at anything else.
                if version != PROTO_VERSION {
                    return Ok(Reply::HelloOk { version, flags: 0 });
                }
                Reply::HelloOk {
                    version,
                    flags: r.u32()?,
                }
            }
            kind::CONNECT_OK => Reply::ConnectOk {
                id: read_identity(&mut r)?,
                cookie: r.u64()?,
            },
            kind::LISTEN_OK => Reply::ListenOk { cookie: r.u64()? },
            kind::IDENTITY => Reply::Identity(read_identity(&mut r)?),
            kind::UNKNOWN => Reply::Unknown,
            kind::SOCKETS_OK => {
                let (count, leased, n) = (r.u8()?, r.u8()? != 0, r.u8()? as usize);
                if n > MAX_POOL_SOCKETS {
                    return Err(DecodeError::BadField("ports"));
                }
                let mut ports = PortList::default();
                for _ in 0..n {
                    ports.push(r.u16()?);
                }
                Reply::SocketsOk {
                    count,
                    leased,
                    ports,
                }
            }
            kind::REVOKED => Reply::Revoked { sockets: r.u32()? },
            kind::STATUS_CHUNK => {
                let (total, offset, chunk) = (r.u32()?, r.u32()?, r.blob()?);
                if chunk.len() > MAX_STATUS_CHUNK
                    || offset as u64 + chunk.len() as u64 > total as u64
                {
                    return Err(DecodeError::BadField("status chunk"));
                }
                Reply::Status {
                    total,
                    offset,
                    chunk,
                }
            }
            kind::FALLBACK => Reply::Fallback(FallbackReason::from_u8(r.u8()?)?),
            kind::ERROR => {
                let errno = r.i32()?;
                let m = r.blob()?;
                let message =
                    core::str::from_utf8(m).map_err(|_| DecodeError::BadField("message"))?;
                Reply::Error { errno, message }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(req: Request) {
        let mut buf = [0u8; MAX_FRAME];
        let n = req.encode(&mut buf).unwrap();
        assert_eq!(Request::decode(&buf[..n]).unwrap(), req);
    }

    #[test]
    fn requests_round_trip() {
        let mut opts = SockOpts::default();
        opts.push(SockOpt::new(6, 1, &1i32.to_ne_bytes()).unwrap());
        let mut ips = IpList::default();
        ips.push("10.32.0.1".parse().unwrap());
        ips.push("fd00:32::1".parse().unwrap());
        rt(Request::Hello {
            version: PROTO_VERSION,
            pid: 42,
        });
        rt(Request::Connect(ConnectReq {
            family: 10,
            src_ip: "10.32.0.1".parse().unwrap(),
            dst: "10.32.0.2:5201".parse().unwrap(),
            opts,
        }));
        rt(Request::Listen(ListenReq {
            family: 10,
            v6only: false,
            bound: "[::]:5201".parse().unwrap(),
            ips,
            backlog: 128,
            opts,
        }));
        rt(Request::AcceptLookup(AcceptLookup {
            listener_cookie: 1,
            child_cookie: 2,
            local_host: "192.168.77.2:40000".parse().unwrap(),
            peer_host: "192.168.77.1:50000".parse().unwrap(),
        }));
        rt(Request::Reattach(ListenReq {
            family: 2,
            v6only: false,
            bound: "0.0.0.0:80".parse().unwrap(),
            ips: IpList::default(),
            backlog: 0,
            opts: SockOpts::default(),
        }));
        rt(Request::QueryTuple {
            local_host: "192.168.77.1:5000".parse().unwrap(),
            peer_host: "[::ffff:192.168.77.2]:6000".parse().unwrap(),
        });
        rt(Request::Closed { cookie: 9 });
        rt(Request::Announce(crate::peer::Announce {
            client_host: "192.168.77.1:50000".parse().unwrap(),
            server_host: "192.168.77.2:41000".parse().unwrap(),
            client_overlay: "10.32.0.1:50000".parse().unwrap(),
            server_overlay: "10.32.0.2:80".parse().unwrap(),
        }));
        rt(Request::Sockets {
            family: 10,
            count: 32,
            lease: None,
        });
        rt(Request::Sockets {
            family: 2,
            count: 8,
            lease: Some("10.32.0.1".parse().unwrap()),
        });
        rt(Request::IdentifyChild { listener_cookie: 5 });
        rt(Request::Revoke { pid: 77 });
        rt(Request::Status {
            format: STATUS_FORMAT,
            offset: 4096,
        });
    }

    #[test]
    fn replies_round_trip() {
        let id = Identity {
            local: "10.32.0.1:1".parse().unwrap(),
            peer: Some("10.32.0.2:2".parse().unwrap()),
        };
        for reply in [
            Reply::HelloOk {
                version: PROTO_VERSION,
                flags: HELLO_SECURE,
            },
            Reply::ConnectOk { id, cookie: 7 },
            Reply::ListenOk { cookie: 8 },
            Reply::Identity(Identity {
                local: id.local,
                peer: None,
            }),
            Reply::Unknown,
            Reply::SocketsOk {
                count: 2,
                leased: true,
                ports: {
                    let mut p = PortList::default();
                    p.push(40000);
                    p.push(65535);
                    p
                },
            },
            Reply::Revoked { sockets: 3 },
            Reply::Status {
                total: 11,
                offset: 4,
                chunk: b"{\"a\":1}",
            },
            Reply::Fallback(FallbackReason::NoListener),
            Reply::Error {
                errno: 13,
                message: "permission denied",
            },
        ] {
            let mut buf = [0u8; MAX_FRAME];
            let n = reply.encode(&mut buf).unwrap();
            assert_eq!(Reply::decode(&buf[..n]).unwrap(), reply);
        }
    }

    #[test]
    fn status_chunks_are_bounded() {
        let mut buf = [0u8; MAX_FRAME];
        let big = [b'x'; MAX_STATUS_CHUNK + 1];
        let r = Reply::Status {
            total: big.len() as u32,
            offset: 0,
            chunk: &big,
        };
        assert!(r.encode(&mut buf).is_err());
        let ok = Reply::Status {
            total: 4,
            offset: 0,
            chunk: &big[..MAX_STATUS_CHUNK],
        };
        let n = ok.encode(&mut buf).unwrap();
        assert_eq!(
            Reply::decode(&buf[..n]),
            Err(DecodeError::BadField("status chunk")),
            "a chunk past the document's end"
        );
    }

    #[test]
    fn other_versions_are_named() {
        let mut buf = [0u8; MAX_FRAME];
        let n = Request::Closed { cookie: 1 }.encode(&mut buf).unwrap();
        buf[4] = 99;
        assert_eq!(Request::decode(&buf[..n]), Err(DecodeError::Version(99)));
        assert_eq!(
            Request::decode(b"GET / HTTP/1.1"),
            Err(DecodeError::BadMagic)
        );
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: every prefix and every single-byte corruption of valid frames.
        let mut buf = [0u8; MAX_FRAME];
        let n = Request::Listen(ListenReq {
            family: 2,
            v6only: false,
            bound: "0.0.0.0:80".parse().unwrap(),
            ips: IpList::default(),
            backlog: 1,
            opts: SockOpts::default(),
        })
        .encode(&mut buf)
        .unwrap();
        for cut in 0..n {
            let _ = Request::decode(&buf[..cut]);
        }
        for i in 0..n {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = buf;
                b[i] = v;
                let _ = Request::decode(&b[..n]);
                let _ = Reply::decode(&b[..n]);
            }
        }
    }
}
