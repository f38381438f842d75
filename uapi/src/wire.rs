//! Primitive encoding shared by every Slim protocol: little-endian integers and socket addresses
//! written into caller-provided buffers, so that the preload library can encode without allocating.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Why a frame could not be decoded. Every variant means the peer sent something this version does
/// not understand: the connection is answered with an error or dropped, never trusted further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame ended before a field did.
    Truncated,
    /// The frame does not start with the Slim magic number: not a Slim peer at all.
    BadMagic,
    /// The peer speaks another protocol version (carried here).
    Version(u16),
    /// A message kind this version does not know.
    UnknownKind(u16),
    /// A field holds a value outside its domain (an address family, a flag, a length).
    BadField(&'static str),
    /// Bytes left over after the message: the two sides disagree on the layout.
    TrailingBytes,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "frame truncated"),
            DecodeError::BadMagic => write!(f, "not a Slim frame (bad magic)"),
            DecodeError::Version(v) => write!(f, "protocol version {v} is not supported"),
            DecodeError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            DecodeError::BadField(name) => write!(f, "invalid field `{name}`"),
            DecodeError::TrailingBytes => write!(f, "trailing bytes after message"),
        }
    }
}

/// The buffer given to an encoder was too small for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "message does not fit in the frame buffer")
    }
}

/// Appends fields to a byte buffer.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    /// Overwrites bytes already written (used to patch a length once it is known).
    pub fn patch(&mut self, at: usize, bytes: &[u8]) -> Result<(), Overflow> {
        let end = at.checked_add(bytes.len()).ok_or(Overflow)?;
        if end > self.pos {
            return Err(Overflow);
        }
        self.buf[at..end].copy_from_slice(bytes);
        Ok(())
    }

    pub fn bytes(&mut self, b: &[u8]) -> Result<(), Overflow> {
        let end = self.pos.checked_add(b.len()).ok_or(Overflow)?;
        if end > self.buf.len() {
            return Err(Overflow);
        }
        self.buf[self.pos..end].copy_from_slice(b);
        self.pos = end;
        Ok(())
    }

    pub fn u8(&mut self, v: u8) -> Result<(), Overflow> {
        self.bytes(&[v])
    }
    pub fn u16(&mut self, v: u16) -> Result<(), Overflow> {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u32(&mut self, v: u32) -> Result<(), Overflow> {
        self.bytes(&v.to_le_bytes())
    }
    pub fn i32(&mut self, v: i32) -> Result<(), Overflow> {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> Result<(), Overflow> {
        self.bytes(&v.to_le_bytes())
    }
    pub fn bool(&mut self, v: bool) -> Result<(), Overflow> {
        self.u8(v as u8)
    }

    /// An IP address: a family byte (4 or 6, 0 for "none") then 4 or 16 bytes.
    pub fn ip(&mut self, ip: Option<IpAddr>) -> Result<(), Overflow> {
        match ip {
            None => self.u8(0),
            Some(IpAddr::V4(a)) => {
                self.u8(4)?;
                self.bytes(&a.octets())
            }
            Some(IpAddr::V6(a)) => {
                self.u8(6)?;
                self.bytes(&a.octets())
            }
        }
    }

    /// A socket address: an IP, a port and, for IPv6, flow info and scope id.
    pub fn sockaddr(&mut self, sa: &SocketAddr) -> Result<(), Overflow> {
        self.ip(Some(sa.ip()))?;
        self.u16(sa.port())?;
        if let SocketAddr::V6(v6) = sa {
            self.u32(v6.flowinfo())?;
            self.u32(v6.scope_id())?;
        }
        Ok(())
    }

    /// A length-prefixed (u16) byte string.
    pub fn blob(&mut self, b: &[u8]) -> Result<(), Overflow> {
        let len = u16::try_from(b.len()).map_err(|_| Overflow)?;
        self.u16(len)?;
        self.bytes(b)
    }
}

/// Reads fields back, in the order a [`Writer`] wrote them.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        if end > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadField("bool")),
        }
    }

    pub fn ip(&mut self) -> Result<Option<IpAddr>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            4 => Ok(Some(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)))),
            6 => Ok(Some(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)))),
            _ => Err(DecodeError::BadField("address family")),
        }
    }

    pub fn sockaddr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = self.ip()?.ok_or(DecodeError::BadField("socket address"))?;
        let port = self.u16()?;
        Ok(match ip {
            IpAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(a, port)),
            IpAddr::V6(a) => {
                let flow = self.u32()?;
                let scope = self.u32()?;
                SocketAddr::V6(SocketAddrV6::new(a, port, flow, scope))
            }
        })
    }

    pub fn blob(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        let addrs: [SocketAddr; 3] = [
            "10.32.0.1:80".parse().unwrap(),
            "[fd00:32::1]:443".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 7, 9, 3)),
        ];
        let mut buf = [0u8; 128];
        let mut w = Writer::new(&mut buf);
        for a in &addrs {
            w.sockaddr(a).unwrap();
        }
        let n = w.position();
        let mut r = Reader::new(&buf[..n]);
        for a in &addrs {
            assert_eq!(r.sockaddr().unwrap(), *a);
        }
        r.finish().unwrap();
    }

    #[test]
    fn overflow_and_truncation_are_errors() {
        let mut buf = [0u8; 3];
        let mut w = Writer::new(&mut buf);
        assert_eq!(w.u32(1), Err(Overflow));
        let mut r = Reader::new(&[1, 2]);
        assert_eq!(r.u32(), Err(DecodeError::Truncated));
        let mut r = Reader::new(&[9]);
        assert_eq!(r.ip(), Err(DecodeError::BadField("address family")));
    }
}
