//! `slim-testprog peer-attack`: plays a container that reached a node's address and talks to the
//! router's peer port, sending frames built with `slim_uapi::peer` and sealed (or not) with
//! `slim_uapi::seal`. `valid` must be accepted; every other mode must make the router drop the
//! connection. Succeeds (prints `ACCEPTED`/`REFUSED`, exits 0) when the router did what it should.

use anyhow::{bail, Context, Result};
use slim_uapi::peer::sealed::{open_frame, seal_frame};
use slim_uapi::peer::{ListenerEntry, PeerMsg, MAX_PEER_FRAME, SEALED_MAGIC};
use slim_uapi::proto::PROTO_VERSION;
use slim_uapi::seal::{ClusterKey, ReplayCache, TOKEN_TTL_MS};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

pub const MODES: &str = "valid|tamper|replay|expired|foreign|unsealed|malformed";

const WAIT: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Conn {
    s: TcpStream,
    local: IpAddr,
    remote: IpAddr,
    cache: ReplayCache,
}

impl Conn {
    fn open(to: SocketAddr) -> Result<Conn> {
        let s = TcpStream::connect_timeout(&to, WAIT).with_context(|| format!("connect {to}"))?;
        s.set_read_timeout(Some(WAIT))?;
        Ok(Conn {
            local: s.local_addr()?.ip(),
            remote: s.peer_addr()?.ip(),
            s,
            cache: ReplayCache::default(),
        })
    }

    /// A frame sealed from this end to the router.
    fn sealed(&self, key: &ClusterKey, m: &PeerMsg, expiry_ms: u64) -> Result<Vec<u8>> {
        let mut buf = [0u8; MAX_PEER_FRAME];
        let n = seal_frame(key, m, self.local, self.remote, expiry_ms, &mut buf)?;
        Ok(buf[..n].to_vec())
    }

    fn send(&mut self, frame: &[u8]) -> Result<()> {
        self.s.write_all(frame).context("send")
    }

    /// The next frame body, or None when the router closed the connection (EOF or reset).
    fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        let mut len = [0u8; 4];
        match self.s.read_exact(&mut len) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                return Ok(None)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("the router neither answered nor closed the connection within {WAIT:?}")
            }
            Err(e) => return Err(e).context("recv"),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_PEER_FRAME {
            bail!("router sent a frame of {len} bytes");
        }
        let mut body = vec![0u8; len];
        match self.s.read_exact(&mut body) {
            Ok(()) => Ok(Some(body)),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e).context("recv"),
        }
    }

    /// Opens a frame the router sealed for us.
    fn open_msg(&mut self, key: &ClusterKey, mut body: Vec<u8>) -> Result<PeerMsg> {
        open_frame(
            key,
            &mut body,
            self.remote,
            self.local,
            now_ms(),
            &mut self.cache,
        )
        .context("a frame from the router does not open with the cluster key")
    }

    /// Reads the router's Hello, checking that it opens with `key` when given.
    fn router_hello(&mut self, key: Option<&ClusterKey>) -> Result<()> {
        let body = self
            .recv()?
            .context("the router closed the connection before its Hello")?;
        if let Some(key) = key {
            let m = self.open_msg(key, body)?;
            if !matches!(m, PeerMsg::Hello { .. }) {
                bail!("the router's first frame is {m:?}, not Hello");
            }
            println!("router Hello opened with the cluster key: {m:?}");
        }
        Ok(())
    }

    /// Reads (and opens) frames until Ack `seq`.
    fn wait_ack(&mut self, key: &ClusterKey, seq: u64) -> Result<()> {
        loop {
            let body = self
                .recv()?
                .context("REFUSED: the router closed the connection instead of acknowledging")?;
            if let PeerMsg::Ack { seq: s } = self.open_msg(key, body)? {
                if s >= seq {
                    return Ok(());
                }
            }
        }
    }

    /// Drains until the router closes the connection: the attack was refused.
    fn expect_closed(&mut self) -> Result<()> {
        let until = Instant::now() + WAIT;
        while Instant::now() < until {
            if self.recv()?.is_none() {
                println!("REFUSED: the router closed the connection");
                return Ok(());
            }
        }
        bail!("NOT REFUSED: the router kept the connection open")
    }

    fn hello(&self) -> PeerMsg {
        PeerMsg::Hello {
            version: PROTO_VERSION,
            host: self.local,
        }
    }
}

/// The fake listener the attacker tries to install (a hijack, if it were accepted).
fn listener_add(seq: u64) -> PeerMsg {
    PeerMsg::ListenerAdd {
        seq,
        entry: ListenerEntry {
            overlay: "10.32.99.1:8080".parse().unwrap(),
            host: "127.0.0.1:9".parse().unwrap(),
            cookie: 0xa77ac,
            shared: false,
        },
    }
}

pub fn run(to: SocketAddr, key_file: &Path, mode: &str) -> Result<()> {
    let key = ClusterKey::from_file(key_file)?;
    let fresh = || now_ms() + TOKEN_TTL_MS;
    let mut c = Conn::open(to)?;
    match mode {
        "valid" => {
            c.router_hello(Some(&key))?;
            let hello = c.sealed(&key, &c.hello(), fresh())?;
            c.send(&hello)?;
            let add = c.sealed(&key, &listener_add(1), fresh())?;
            c.send(&add)?;
            c.wait_ack(&key, 1)?;
            println!("ACCEPTED: the router acknowledged the sealed listener");
            Ok(())
        }
        "tamper" => {
            c.router_hello(Some(&key))?;
            let hello = c.sealed(&key, &c.hello(), fresh())?;
            c.send(&hello)?;
            let mut add = c.sealed(&key, &listener_add(1), fresh())?;
            // A byte of the ciphertext (the listener's host endpoint, say).
            let i = add.len() - 30;
            add[i] ^= 0x40;
            c.send(&add)?;
            c.expect_closed()
        }
        "replay" => {
            // Record a frame the router accepts...
            c.router_hello(Some(&key))?;
            let hello = c.sealed(&key, &c.hello(), fresh())?;
            c.send(&hello)?;
            let add = c.sealed(&key, &listener_add(1), fresh())?;
            c.send(&add)?;
            c.wait_ack(&key, 1)?;
            println!("recorded an accepted ListenerAdd; replaying it on a new connection");
            drop(c);
            // ...and play it again on another connection, after a fresh Hello.
            let mut c = Conn::open(to)?;
            c.router_hello(Some(&key))?;
            let hello = c.sealed(&key, &c.hello(), fresh())?;
            c.send(&hello)?;
            c.send(&add)?;
            c.expect_closed()
        }
        "expired" => {
            c.router_hello(Some(&key))?;
            let hello = c.sealed(&key, &c.hello(), fresh())?;
            c.send(&hello)?;
            let add = c.sealed(&key, &listener_add(1), now_ms() - 1_000)?;
            c.send(&add)?;
            c.expect_closed()
        }
        "foreign" => {
            c.router_hello(None)?;
            let other = ClusterKey::random()?;
            let hello = c.sealed(&other, &c.hello(), fresh())?;
            c.send(&hello)?;
            c.expect_closed()
        }
        "unsealed" => {
            c.router_hello(None)?;
            let mut buf = [0u8; MAX_PEER_FRAME];
            let n = c
                .hello()
                .encode(&mut buf)
                .map_err(|_| anyhow::anyhow!("overflow"))?;
            c.send(&buf[..n])?;
            c.expect_closed()
        }
        "malformed" => {
            c.router_hello(None)?;
            // Sealed magic, Hello kind, then a token far too short to be one.
            let mut f = Vec::new();
            f.extend_from_slice(&16u32.to_le_bytes());
            f.extend_from_slice(&SEALED_MAGIC.to_le_bytes());
            f.extend_from_slice(&1u16.to_le_bytes());
            f.extend_from_slice(&[1u8; 10]);
            c.send(&f)?;
            c.expect_closed()
        }
        other => bail!("unknown mode `{other}`; one of {MODES}"),
    }
}
