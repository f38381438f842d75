//! The router <-> router protocol, over TCP between hosts' underlay addresses.
//!
//! Stream framing: `len: u32` (of what follows) then `magic: u32 | version: u16 | kind: u16 | body`.
//! Each router replicates the table of its Slim listeners to every peer (full table after `Hello`,
//! then changes, each acknowledged), and announces every connection it starts towards a peer's
//! listener, so the receiving router can tell the accepting container which overlay peer it is.
//!
//! Routers started with a cluster key seal every frame (feature `seal`, [`sealed`]): the body is
//! then `SEALED_MAGIC: u32 | kind: u16 | token`, where the token ([`crate::seal`]) holds the plain
//! body above.

use crate::proto::{MAGIC, PROTO_VERSION};
use crate::wire::{DecodeError, Overflow, Reader, Writer};
use core::net::{IpAddr, SocketAddr};

pub const MAX_PEER_FRAME: usize = 256;

/// First word of a sealed frame's body, where a plain one has [`MAGIC`] ("SLMS").
pub const SEALED_MAGIC: u32 = 0x534C_4D53;

/// Whether a frame body is sealed (checked without the `seal` feature too, so that a router
/// without a key can say why it does not understand its peer).
pub fn is_sealed(body: &[u8]) -> bool {
    body.len() >= 4 && body[..4] == SEALED_MAGIC.to_le_bytes()
}

mod kind {
    pub const HELLO: u16 = 1;
    pub const LISTENER_ADD: u16 = 2;
    pub const LISTENER_DEL: u16 = 3;
    pub const ACK: u16 = 4;
    pub const ANNOUNCE: u16 = 5;
    pub const LEASE: u16 = 6;
}

/// One overlay endpoint served by a host listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerEntry {
    pub overlay: SocketAddr,
    pub host: SocketAddr,
    pub cookie: u64,
    /// The host listener serves more than one overlay endpoint of this one's family, so the
    /// receiving router cannot tell from the host connection alone which of them a client
    /// dialled: clients must announce every connection to it, leased port or not.
    pub shared: bool,
}

/// A host connection about to arrive at the receiver's listener, and the overlay endpoints it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    pub client_host: SocketAddr,
    pub server_host: SocketAddr,
    pub client_overlay: SocketAddr,
    pub server_overlay: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMsg {
    Hello {
        version: u16,
        host: IpAddr,
    },
    ListenerAdd {
        seq: u64,
        entry: ListenerEntry,
    },
    ListenerDel {
        seq: u64,
        entry: ListenerEntry,
    },
    Ack {
        seq: u64,
    },
    Announce(Announce),
    /// From now on every connection from the host endpoints `client_host` .. (`count` ports
    /// from its port up) is from the overlay address `overlay` (port: the host port): the
    /// sender leased those ports to a container with that address. Acknowledged; the sender
    /// hands the sockets out only then.
    Lease {
        seq: u64,
        client_host: SocketAddr,
        count: u16,
        overlay: IpAddr,
    },
}

impl PeerMsg {
    /// The message kind, as on the wire.
    pub fn kind(&self) -> u16 {
        match self {
            PeerMsg::Hello { .. } => kind::HELLO,
            PeerMsg::ListenerAdd { .. } => kind::LISTENER_ADD,
            PeerMsg::ListenerDel { .. } => kind::LISTENER_DEL,
            PeerMsg::Ack { .. } => kind::ACK,
            PeerMsg::Announce(_) => kind::ANNOUNCE,
            PeerMsg::Lease { .. } => kind::LEASE,
        }
    }

    /// Encodes the frame including its length prefix; returns the total length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, Overflow> {
        let mut w = Writer::new(buf);
        w.u32(0)?;
        w.u32(MAGIC)?;
        w.u16(PROTO_VERSION)?;
        match self {
            PeerMsg::Hello { version, host } => {
                w.u16(kind::HELLO)?;
                w.u16(*version)?;
                w.ip(Some(*host))?;
            }
            PeerMsg::ListenerAdd { seq, entry } | PeerMsg::ListenerDel { seq, entry } => {
                let k = if matches!(self, PeerMsg::ListenerAdd { .. }) {
                    kind::LISTENER_ADD
                } else {
                    kind::LISTENER_DEL
                };
                w.u16(k)?;
                w.u64(*seq)?;
                w.sockaddr(&entry.overlay)?;
                w.sockaddr(&entry.host)?;
                w.u64(entry.cookie)?;
                w.u8(entry.shared as u8)?;
            }
            PeerMsg::Ack { seq } => {
                w.u16(kind::ACK)?;
                w.u64(*seq)?;
            }
            PeerMsg::Announce(a) => {
                w.u16(kind::ANNOUNCE)?;
                w.sockaddr(&a.client_host)?;
                w.sockaddr(&a.server_host)?;
                w.sockaddr(&a.client_overlay)?;
                w.sockaddr(&a.server_overlay)?;
            }
            PeerMsg::Lease {
                seq,
                client_host,
                count,
                overlay,
            } => {
                w.u16(kind::LEASE)?;
                w.u64(*seq)?;
                w.sockaddr(client_host)?;
                w.u16(*count)?;
                w.ip(Some(*overlay))?;
            }
        }
        let n = w.position();
        w.patch(0, &((n - 4) as u32).to_le_bytes())?;
        Ok(n)
    }

    /// Decodes a frame body (without the length prefix). `Hello` of any version decodes.
    pub fn decode(body: &[u8]) -> Result<PeerMsg, DecodeError> {
        let mut r = Reader::new(body);
        if r.u32()? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u16()?;
        let k = r.u16()?;
        if k != kind::HELLO && version != PROTO_VERSION {
            return Err(DecodeError::Version(version));
        }
        let msg = match k {
            kind::HELLO => PeerMsg::Hello {
                version: r.u16()?,
                host: r.ip()?.ok_or(DecodeError::BadField("host"))?,
            },
            kind::LISTENER_ADD | kind::LISTENER_DEL => {
                let seq = r.u64()?;
                let entry = ListenerEntry {
                    overlay: r.sockaddr()?,
                    host: r.sockaddr()?,
                    cookie: r.u64()?,
                    shared: r.u8()? != 0,
                };
                if k == kind::LISTENER_ADD {
                    PeerMsg::ListenerAdd { seq, entry }
                } else {
                    PeerMsg::ListenerDel { seq, entry }
                }
            }
            kind::ACK => PeerMsg::Ack { seq: r.u64()? },
            kind::ANNOUNCE => PeerMsg::Announce(Announce {
                client_host: r.sockaddr()?,
                server_host: r.sockaddr()?,
                client_overlay: r.sockaddr()?,
                server_overlay: r.sockaddr()?,
            }),
            kind::LEASE => {
                let (seq, client_host, count) = (r.u64()?, r.sockaddr()?, r.u16()?);
                if count == 0 || client_host.port() as u32 + count as u32 > 65536 {
                    return Err(DecodeError::BadField("count"));
                }
                PeerMsg::Lease {
                    seq,
                    client_host,
                    count,
                    overlay: r.ip()?.ok_or(DecodeError::BadField("overlay"))?,
                }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Sealed peer frames: every frame between routers started with a cluster key.
///
/// A token is bound to the connection it is for by its AAD: a label, the sender's host address,
/// the receiver's host address (as each end of the TCP connection sees them, IPv4-mapped IPv6
/// addresses as IPv4) and the message kind (also in clear in the frame, and checked against the
/// decrypted message). A frame recorded on one connection does not open on a connection between
/// other hosts or in the other direction, nor as another kind; within its few seconds of validity
/// the receiver's replay cache refuses it a second time.
#[cfg(feature = "seal")]
pub mod sealed {
    use super::*;
    use crate::seal::{self, ClusterKey, OpenError, ReplayCache, SealError};

    const AAD_LABEL: &[u8] = b"slim peer frame v1\0";
    const AAD_LEN: usize = AAD_LABEL.len() + 17 + 17 + 2;
    const HEADER_LEN: usize = 6;

    /// Why a frame that had to be sealed was refused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum FrameError {
        /// A plain frame: the peer has no cluster key (or is not a router at all).
        #[error("unsealed frame")]
        Unsealed,
        #[error("{0}")]
        Open(#[from] OpenError),
        /// Authentic, but not a message this version understands (a router of another version).
        #[error("authentic frame that does not decode: {0}")]
        Decode(DecodeError),
    }

    impl FrameError {
        /// A short name for logs and counters.
        pub fn name(&self) -> &'static str {
            match self {
                FrameError::Unsealed => "unsealed",
                FrameError::Open(e) => e.name(),
                FrameError::Decode(_) => "malformed",
            }
        }
    }

    fn put_ip(out: &mut [u8], ip: IpAddr) {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                out[0] = 4;
                out[1..5].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out[0] = 6;
                out[1..17].copy_from_slice(&a.octets());
            }
        }
    }

    /// The AAD of a frame of `kind` sent by host `sender` to host `receiver`.
    pub fn aad(sender: IpAddr, receiver: IpAddr, kind: u16) -> [u8; AAD_LEN] {
        let mut a = [0u8; AAD_LEN];
        let l = AAD_LABEL.len();
        a[..l].copy_from_slice(AAD_LABEL);
        put_ip(&mut a[l..l + 17], sender);
        put_ip(&mut a[l + 17..l + 34], receiver);
        a[l + 34..].copy_from_slice(&kind.to_le_bytes());
        a
    }

    /// Encodes and seals `msg` (valid until `expiry_ms`) into `out`, length prefix included;
    /// returns the frame's total length.
    pub fn seal_frame(
        key: &ClusterKey,
        msg: &PeerMsg,
        sender: IpAddr,
        receiver: IpAddr,
        expiry_ms: u64,
        out: &mut [u8],
    ) -> Result<usize, SealError> {
        let mut plain = [0u8; MAX_PEER_FRAME];
        let n = msg.encode(&mut plain).map_err(|_| SealError::Overflow)?;
        if out.len() < 4 + HEADER_LEN {
            return Err(SealError::Overflow);
        }
        let kind = msg.kind();
        let t = seal::seal(
            key,
            &aad(sender, receiver, kind),
            &plain[4..n],
            expiry_ms,
            &mut out[4 + HEADER_LEN..],
        )?;
        let body = HEADER_LEN + t;
        out[..4].copy_from_slice(&(body as u32).to_le_bytes());
        out[4..8].copy_from_slice(&SEALED_MAGIC.to_le_bytes());
        out[8..10].copy_from_slice(&kind.to_le_bytes());
        Ok(4 + body)
    }

    /// Opens a sealed frame body (without its length prefix; decrypted in place) that `sender`
    /// sent to `receiver`.
    pub fn open_frame(
        key: &ClusterKey,
        body: &mut [u8],
        sender: IpAddr,
        receiver: IpAddr,
        now_ms: u64,
        cache: &mut ReplayCache,
    ) -> Result<PeerMsg, FrameError> {
        if !is_sealed(body) {
            return Err(if body.len() >= 4 && body[..4] == MAGIC.to_le_bytes() {
                FrameError::Unsealed
            } else {
                FrameError::Open(OpenError::Malformed)
            });
        }
        if body.len() < HEADER_LEN {
            return Err(FrameError::Open(OpenError::Malformed));
        }
        let kind = u16::from_le_bytes([body[4], body[5]]);
        let plain = seal::open(
            key,
            &aad(sender, receiver, kind),
            &mut body[HEADER_LEN..],
            now_ms,
            cache,
        )?;
        let msg = PeerMsg::decode(plain).map_err(FrameError::Decode)?;
        if msg.kind() != kind {
            return Err(FrameError::Open(OpenError::Malformed));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_messages_round_trip() {
        let entry = ListenerEntry {
            overlay: "10.32.0.2:80".parse().unwrap(),
            host: "192.168.77.2:41000".parse().unwrap(),
            cookie: 77,
            shared: true,
        };
        for m in [
            PeerMsg::Hello {
                version: PROTO_VERSION,
                host: "192.168.77.1".parse().unwrap(),
            },
            PeerMsg::ListenerAdd { seq: 1, entry },
            PeerMsg::ListenerDel { seq: 2, entry },
            PeerMsg::Ack { seq: 2 },
            PeerMsg::Announce(Announce {
                client_host: "192.168.77.1:50000".parse().unwrap(),
                server_host: "192.168.77.2:41000".parse().unwrap(),
                client_overlay: "10.32.0.1:50000".parse().unwrap(),
                server_overlay: "[fd00:32::2]:80".parse().unwrap(),
            }),
            PeerMsg::Lease {
                seq: 3,
                client_host: "192.168.77.1:61000".parse().unwrap(),
                count: 4536,
                overlay: "10.32.0.1".parse().unwrap(),
            },
        ] {
            let mut buf = [0u8; MAX_PEER_FRAME];
            let n = m.encode(&mut buf).unwrap();
            let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
            assert_eq!(len + 4, n);
            assert_eq!(PeerMsg::decode(&buf[4..n]).unwrap(), m);
        }
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;

    #[test]
    fn a_lease_past_the_last_port_does_not_decode() {
        for (port, count, ok) in [(65535u16, 1u16, true), (65535, 2, false), (40000, 0, false)] {
            let m = PeerMsg::Lease {
                seq: 1,
                client_host: SocketAddr::new("192.168.77.1".parse().unwrap(), port),
                count,
                overlay: "10.32.0.1".parse().unwrap(),
            };
            let mut buf = [0u8; MAX_PEER_FRAME];
            let n = m.encode(&mut buf).unwrap();
            assert_eq!(PeerMsg::decode(&buf[4..n]).is_ok(), ok, "{port} + {count}");
        }
    }
}

#[cfg(all(test, feature = "seal"))]
mod sealed_tests {
    use super::sealed::*;
    use super::*;
    use crate::seal::{ClusterKey, OpenError, ReplayCache, OVERHEAD};

    const NOW: u64 = 1_800_000_000_000;

    fn biggest() -> PeerMsg {
        let v6: SocketAddr = "[fd00:32::1234:5678]:65535".parse().unwrap();
        PeerMsg::Announce(Announce {
            client_host: v6,
            server_host: v6,
            client_overlay: v6,
            server_overlay: v6,
        })
    }

    #[test]
    fn sealed_frames_round_trip_and_fit() {
        let key = ClusterKey::from_bytes(&[9; 32]);
        let (a, b): (IpAddr, IpAddr) = (
            "192.168.77.1".parse().unwrap(),
            "192.168.77.2".parse().unwrap(),
        );
        let mut cache = ReplayCache::default();
        let msg = biggest();
        let mut plain = [0u8; MAX_PEER_FRAME];
        let plain_len = msg.encode(&mut plain).unwrap();
        let mut buf = [0u8; MAX_PEER_FRAME];
        let n = seal_frame(&key, &msg, a, b, NOW + 1000, &mut buf).unwrap();
        assert_eq!(n, plain_len + 6 + OVERHEAD);
        assert!(
            n <= MAX_PEER_FRAME,
            "largest sealed frame ({n} bytes) must fit MAX_PEER_FRAME"
        );
        assert!(is_sealed(&buf[4..n]));
        assert!(!is_sealed(&plain[4..plain_len]));
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len + 4, n);
        // The receiver sees the sender's address as IPv4-mapped: the same connection.
        let mapped: IpAddr = "::ffff:192.168.77.1".parse().unwrap();
        let got = open_frame(&key, &mut buf[4..n].to_vec(), mapped, b, NOW, &mut cache).unwrap();
        assert_eq!(got, msg);
    }

    #[test]
    fn bound_to_direction_hosts_and_kind() {
        let key = ClusterKey::from_bytes(&[9; 32]);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "192.168.77.1".parse().unwrap(),
            "192.168.77.2".parse().unwrap(),
            "192.168.77.3".parse().unwrap(),
        );
        let msg = PeerMsg::Ack { seq: 3 };
        let mut buf = [0u8; MAX_PEER_FRAME];
        let n = seal_frame(&key, &msg, a, b, NOW + 1000, &mut buf).unwrap();
        let frame = buf[4..n].to_vec();
        let mut cache = ReplayCache::default();
        for (s, r) in [(b, a), (c, b), (a, c)] {
            let e = open_frame(&key, &mut frame.clone(), s, r, NOW, &mut cache);
            assert_eq!(e, Err(FrameError::Open(OpenError::Tampered)));
        }
        // Relabelled as another kind in clear.
        let mut k = frame.clone();
        k[4] = 2;
        let e = open_frame(&key, &mut k, a, b, NOW, &mut cache);
        assert_eq!(e, Err(FrameError::Open(OpenError::Tampered)));
        assert!(open_frame(&key, &mut frame.clone(), a, b, NOW, &mut cache).is_ok());
        let e = open_frame(&key, &mut frame.clone(), a, b, NOW, &mut cache);
        assert_eq!(e, Err(FrameError::Open(OpenError::Replayed)));
        // A plain frame is told apart from garbage.
        let mut plain = [0u8; MAX_PEER_FRAME];
        let n = msg.encode(&mut plain).unwrap();
        let e = open_frame(&key, &mut plain[4..n], a, b, NOW, &mut cache);
        assert_eq!(e, Err(FrameError::Unsealed));
        assert_eq!(e.unwrap_err().name(), "unsealed");
        let e = open_frame(&key, &mut [1, 2, 3], a, b, NOW, &mut cache);
        assert_eq!(e, Err(FrameError::Open(OpenError::Malformed)));
        let mut short = SEALED_MAGIC.to_le_bytes().to_vec();
        let e = open_frame(&key, &mut short, a, b, NOW, &mut cache);
        assert_eq!(e, Err(FrameError::Open(OpenError::Malformed)));
    }
}
