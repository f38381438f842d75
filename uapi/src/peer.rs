//! The router <-> router protocol, over TCP between hosts' underlay addresses.
//!
//! Stream framing: `len: u32` (of what follows) then `magic: u32 | version: u16 | kind: u16 | body`.
//! Each router replicates the table of its Slim listeners to every peer (full table after `Hello`,
//! then changes, each acknowledged), and announces every connection it starts towards a peer's
//! listener, so the receiving router can tell the accepting container which overlay peer it is.

use crate::proto::{MAGIC, PROTO_VERSION};
use crate::wire::{DecodeError, Overflow, Reader, Writer};
use core::net::{IpAddr, SocketAddr};

pub const MAX_PEER_FRAME: usize = 256;

mod kind {
    pub const HELLO: u16 = 1;
    pub const LISTENER_ADD: u16 = 2;
    pub const LISTENER_DEL: u16 = 3;
    pub const ACK: u16 = 4;
    pub const ANNOUNCE: u16 = 5;
}

/// One overlay endpoint served by a host listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerEntry {
    pub overlay: SocketAddr,
    pub host: SocketAddr,
    pub cookie: u64,
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
    Hello { version: u16, host: IpAddr },
    ListenerAdd { seq: u64, entry: ListenerEntry },
    ListenerDel { seq: u64, entry: ListenerEntry },
    Ack { seq: u64 },
    Announce(Announce),
}

impl PeerMsg {
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
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
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
        ] {
            let mut buf = [0u8; MAX_PEER_FRAME];
            let n = m.encode(&mut buf).unwrap();
            let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
            assert_eq!(len + 4, n);
            assert_eq!(PeerMsg::decode(&buf[4..n]).unwrap(), m);
        }
    }
}
