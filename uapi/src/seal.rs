//! Sealed tokens: what the routers put on anything that crosses a path a container can reach
//! (today the router <-> router channel, see [`crate::peer`]).
//!
//! A token is an AEAD ciphertext under the cluster key (a file every router of the cluster is
//! started with), laid out as
//!
//! ```text
//! version: u8 | key_id: [u8; 8] | nonce: [u8; 24] | ciphertext(expiry_ms: u64 LE || plaintext) | tag: [u8; 16]
//! ```
//!
//! - `key_id` (the first 8 bytes of BLAKE2s-256 over a label and the key) travels in clear, so a
//!   receiver can tell a token sealed under another cluster key ([`OpenError::Foreign`]) from one
//!   that was modified ([`OpenError::Tampered`]). It reveals nothing usable about the key.
//! - The AAD (not carried; both ends build it) binds a token to the context it is for; the peer
//!   protocol binds sender host address, receiver host address and message kind.
//! - The expiry (sender's wall clock, Unix milliseconds) is inside the ciphertext: a token is
//!   refused once it has passed ([`OpenError::Expired`]), or when it lies further in the future than
//!   [`MAX_VALIDITY_MS`] (a sender whose clock runs far ahead).
//! - A [`ReplayCache`] remembers every nonce it accepted until the token's expiry, so each token is
//!   accepted once ([`OpenError::Replayed`]). It is bounded; when full of live tokens it refuses
//!   rather than forgets ([`OpenError::Overloaded`]): fail closed.
//!
//! # Why XChaCha20-Poly1305
//!
//! Its 192-bit nonce is large enough to draw at random for every token: the chance of two random
//! nonces colliding stays negligible for far more tokens than a cluster key will ever seal (2^80
//! tokens for a 2^-32 collision chance). A 96-bit-nonce AEAD (AES-GCM, ChaCha20-Poly1305) would need
//! a counter instead, i.e. state kept across router restarts and coordinated between the routers
//! sharing the key; getting that wrong (a restart reusing counter values) breaks confidentiality
//! and authenticity. Random nonces need no state at all, and they double as the token's identity
//! in the replay cache. It is also constant-time in pure Rust without AES hardware, and the
//! RustCrypto implementation (`chacha20poly1305`) is audited and widely used.

use blake2::{Blake2s256, Digest};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The token format's version (first byte).
pub const SEAL_VERSION: u8 = 1;
pub const KEY_LEN: usize = 32;
pub const KEY_ID_LEN: usize = 8;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
const EXPIRY_LEN: usize = 8;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// Bytes a token adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + EXPIRY_LEN + TAG_LEN;

/// How long a token stays valid after it is sealed. Short: long enough for a frame to cross a
/// loaded host network and a router's queue, and for the hosts' clocks to differ by a few seconds.
pub const TOKEN_TTL_MS: u64 = 10_000;
/// How far a sender's clock may run ahead of the receiver's before its fresh tokens are refused
/// (as lying too far in the future).
pub const MAX_CLOCK_AHEAD_MS: u64 = 5_000;
/// A token whose expiry lies further than this beyond the receiver's clock is refused as
/// [`OpenError::Expired`] (outside its validity window). This also bounds how long the replay
/// cache must remember a nonce.
pub const MAX_VALIDITY_MS: u64 = TOKEN_TTL_MS + MAX_CLOCK_AHEAD_MS;
/// Default bound of a [`ReplayCache`]: about 17,000 tokens per second for [`MAX_VALIDITY_MS`]
/// (a router announces every connection it starts; the benchmark's Slim connection rates are below
/// this);
/// about 25 MB when full, allocated only as it fills.
pub const REPLAY_CACHE_CAPACITY: usize = 1 << 18;

const KEY_ID_LABEL: &[u8] = b"slim cluster key id v1\0";

/// Why a cluster key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read cluster key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cluster key file {path} is accessible by group or others (mode {mode:03o}); \
         a cluster key must be readable by its owner only: run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "cluster key file {path} holds {len} bytes; it must hold exactly 32 random bytes, or 64 \
         hexadecimal characters optionally followed by a newline (make one with \
         `head -c 32 /dev/urandom > {path} && chmod 600 {path}`)"
    )]
    Size { path: PathBuf, len: usize },
    #[error("cluster key file {path} holds 64 characters that are not all hexadecimal digits")]
    BadHex { path: PathBuf },
    #[error("cluster key file {path} holds an all-zero key; fill it with random bytes")]
    Zero { path: PathBuf },
}

/// The cluster key: every router of a cluster is started with the same one.
pub struct ClusterKey {
    cipher: XChaCha20Poly1305,
    id: [u8; KEY_ID_LEN],
}

impl core::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ClusterKey(id {})", self.key_id_hex())
    }
}

impl ClusterKey {
    pub fn from_bytes(key: &[u8; KEY_LEN]) -> ClusterKey {
        let mut h = Blake2s256::new();
        h.update(KEY_ID_LABEL);
        h.update(key);
        let digest = h.finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        ClusterKey {
            cipher: XChaCha20Poly1305::new(key.into()),
            id,
        }
    }

    /// A fresh random key (for tests and tools; clusters use [`ClusterKey::from_file`]).
    pub fn random() -> Result<ClusterKey, getrandom::Error> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut *k)?;
        Ok(ClusterKey::from_bytes(&k))
    }

    /// Loads a key file: exactly 32 raw bytes, or 64 hex digits and an optional newline. The file
    /// must not be accessible by group or others.
    pub fn from_file(path: &Path) -> Result<ClusterKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // Check the file actually opened, not the path (which could change in between).
        let mode = file.metadata().map_err(io)?.mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        let mut raw = Zeroizing::new(Vec::with_capacity(80));
        file.take(80).read_to_end(&mut raw).map_err(io)?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        let text = raw
            .strip_suffix(b"\n")
            .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
            .unwrap_or(&raw);
        if raw.len() == KEY_LEN {
            key.copy_from_slice(&raw);
        } else if text.len() == 2 * KEY_LEN {
            for (i, pair) in text.chunks_exact(2).enumerate() {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(pair[0]), hex(pair[1])) {
                    (Some(h), Some(l)) => key[i] = (h * 16 + l) as u8,
                    _ => {
                        return Err(KeyError::BadHex {
                            path: path.to_path_buf(),
                        })
                    }
                }
            }
        } else {
            return Err(KeyError::Size {
                path: path.to_path_buf(),
                len: raw.len(),
            });
        }
        if key.iter().all(|b| *b == 0) {
            return Err(KeyError::Zero {
                path: path.to_path_buf(),
            });
        }
        Ok(ClusterKey::from_bytes(&key))
    }

    /// Identifies the key without revealing it: sent in clear in every token.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        self.id
    }

    pub fn key_id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Why a token could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed token does not fit the output buffer")]
    Overflow,
    #[error("no random numbers from the operating system: {0}")]
    Random(getrandom::Error),
    #[error("the AEAD refused the message")]
    Aead,
}

/// Why a token was refused. Every variant means the token is not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Sealed under another cluster key (the key id differs).
    #[error("sealed with another cluster key")]
    Foreign,
    /// The key id is ours but the tag does not verify: modified, or sealed for another context
    /// (other sender, receiver or message kind).
    #[error("does not authenticate (modified, or sealed for another connection or message kind)")]
    Tampered,
    /// Authentic, but outside its validity window (expired, or from a clock far ahead).
    #[error("expired (or sealed by a clock far ahead)")]
    Expired,
    /// Authentic and valid, but already accepted once.
    #[error("replayed (already accepted once)")]
    Replayed,
    /// Not a token of this version: too short, or an unknown version byte.
    #[error("malformed (not a sealed frame of version 1)")]
    Malformed,
    /// Authentic, but the replay cache is full of live tokens: refused rather than forgetting
    /// a nonce that could then be replayed.
    #[error("refused because the replay cache is full of live tokens")]
    Overloaded,
}

impl OpenError {
    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            OpenError::Foreign => "foreign",
            OpenError::Tampered => "tampered",
            OpenError::Expired => "expired",
            OpenError::Replayed => "replayed",
            OpenError::Malformed => "malformed",
            OpenError::Overloaded => "overloaded",
        }
    }
}

/// Seals `plaintext` for the context `aad`, valid until `expiry_ms` (Unix milliseconds), into
/// `out`; returns the token's length (`plaintext.len() + OVERHEAD`).
pub fn seal(
    key: &ClusterKey,
    aad: &[u8],
    plaintext: &[u8],
    expiry_ms: u64,
    out: &mut [u8],
) -> Result<usize, SealError> {
    let total = plaintext.len() + OVERHEAD;
    if out.len() < total {
        return Err(SealError::Overflow);
    }
    let out = &mut out[..total];
    out[0] = SEAL_VERSION;
    out[1..1 + KEY_ID_LEN].copy_from_slice(&key.id);
    let (header, rest) = out.split_at_mut(HEADER_LEN);
    let nonce = &mut header[1 + KEY_ID_LEN..];
    getrandom::fill(nonce).map_err(SealError::Random)?;
    let nonce = XNonce::try_from(&*nonce).map_err(|_| SealError::Overflow)?;
    let (body, tag_out) = rest.split_at_mut(EXPIRY_LEN + plaintext.len());
    body[..EXPIRY_LEN].copy_from_slice(&expiry_ms.to_le_bytes());
    body[EXPIRY_LEN..].copy_from_slice(plaintext);
    let tag = key
        .cipher
        .encrypt_inout_detached(&nonce, aad, body.into())
        .map_err(|_| SealError::Aead)?;
    tag_out.copy_from_slice(&tag);
    Ok(total)
}

/// Opens a token sealed for the context `aad`, decrypting in place; returns the plaintext (a
/// part of `sealed`). `now_ms` is the receiver's wall clock (Unix milliseconds). The checks run
/// in this order: layout, key id, tag, validity window, replay cache, so only authentic tokens
/// ever reach the cache.
pub fn open<'a>(
    key: &ClusterKey,
    aad: &[u8],
    sealed: &'a mut [u8],
    now_ms: u64,
    cache: &mut ReplayCache,
) -> Result<&'a [u8], OpenError> {
    if sealed.len() < OVERHEAD || sealed[0] != SEAL_VERSION {
        return Err(OpenError::Malformed);
    }
    if sealed[1..1 + KEY_ID_LEN] != key.id {
        return Err(OpenError::Foreign);
    }
    let (header, rest) = sealed.split_at_mut(HEADER_LEN);
    let mut nonce_bytes = [0u8; NONCE_LEN];
    nonce_bytes.copy_from_slice(&header[1 + KEY_ID_LEN..]);
    let nonce = XNonce::from(nonce_bytes);
    let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    let tag = Tag::try_from(&*tag).map_err(|_| OpenError::Malformed)?;
    key.cipher
        .decrypt_inout_detached(&nonce, aad, (&mut *body).into(), &tag)
        .map_err(|_| OpenError::Tampered)?;
    let mut exp = [0u8; EXPIRY_LEN];
    exp.copy_from_slice(&body[..EXPIRY_LEN]);
    let expiry_ms = u64::from_le_bytes(exp);
    if expiry_ms < now_ms || expiry_ms > now_ms.saturating_add(MAX_VALIDITY_MS) {
        return Err(OpenError::Expired);
    }
    cache.accept(nonce_bytes, expiry_ms, now_ms)?;
    Ok(&body[EXPIRY_LEN..])
}

/// The nonces of the tokens accepted and not yet expired. Bounded: when full of live tokens it
/// refuses new ones ([`OpenError::Overloaded`]) rather than forget one that could be replayed.
#[derive(Debug)]
pub struct ReplayCache {
    seen: HashMap<[u8; NONCE_LEN], u64>,
    /// In order of acceptance; pruned from the front. Expiries are nearly in order (each is
    /// at most [`MAX_VALIDITY_MS`] ahead of the clock when accepted), so an entry outlives its
    /// expiry by at most that much.
    order: VecDeque<(u64, [u8; NONCE_LEN])>,
    capacity: usize,
}

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache::with_capacity(REPLAY_CACHE_CAPACITY)
    }
}

impl ReplayCache {
    pub fn with_capacity(capacity: usize) -> ReplayCache {
        ReplayCache {
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Forgets the nonces of tokens that expired before `now_ms` (they are refused as expired
    /// anyway).
    pub fn prune(&mut self, now_ms: u64) {
        while let Some(&(expiry, nonce)) = self.order.front() {
            if expiry >= now_ms {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&nonce);
        }
    }

    fn accept(
        &mut self,
        nonce: [u8; NONCE_LEN],
        expiry_ms: u64,
        now_ms: u64,
    ) -> Result<(), OpenError> {
        self.prune(now_ms);
        if self.seen.contains_key(&nonce) {
            return Err(OpenError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(OpenError::Overloaded);
        }
        self.seen.insert(nonce, expiry_ms);
        self.order.push_back((expiry_ms, nonce));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    const NOW: u64 = 1_800_000_000_000;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes(&[b; KEY_LEN])
    }

    fn sealed(k: &ClusterKey, aad: &[u8], msg: &[u8], expiry: u64) -> Vec<u8> {
        let mut out = vec![0u8; msg.len() + OVERHEAD];
        let n = seal(k, aad, msg, expiry, &mut out).unwrap();
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn round_trip() {
        let k = key(7);
        let mut cache = ReplayCache::default();
        let mut t = sealed(&k, b"ctx", b"hello peer", NOW + TOKEN_TTL_MS);
        assert_eq!(t[0], SEAL_VERSION);
        assert_eq!(t[1..9], k.key_id());
        assert!(
            !t.windows(10).any(|w| w == b"hello peer"),
            "plaintext visible"
        );
        let p = open(&k, b"ctx", &mut t, NOW, &mut cache).unwrap();
        assert_eq!(p, b"hello peer");
        assert_eq!(cache.len(), 1);
        // Empty plaintext too.
        let mut t = sealed(&k, b"", b"", NOW + 1);
        assert_eq!(open(&k, b"", &mut t, NOW, &mut cache).unwrap(), b"");
    }

    #[test]
    fn nonces_are_random() {
        let k = key(7);
        let a = sealed(&k, b"ctx", b"same", NOW);
        let b = sealed(&k, b"ctx", b"same", NOW);
        assert_ne!(a[9..33], b[9..33]);
        assert_ne!(a, b);
    }

    #[test]
    fn foreign_key() {
        let mut t = sealed(&key(1), b"ctx", b"m", NOW + 1000);
        let r = open(&key(2), b"ctx", &mut t, NOW, &mut ReplayCache::default());
        assert_eq!(r, Err(OpenError::Foreign));
        assert_ne!(key(1).key_id(), key(2).key_id());
    }

    #[test]
    fn tampered_anywhere() {
        let k = key(3);
        let t = sealed(&k, b"ctx", b"listener 10.32.0.2:80", NOW + 1000);
        // Every byte after the key id (nonce, ciphertext, tag).
        for i in 1 + KEY_ID_LEN..t.len() {
            let mut bad = t.clone();
            bad[i] ^= 0x01;
            let r = open(&k, b"ctx", &mut bad, NOW, &mut ReplayCache::default());
            assert_eq!(r, Err(OpenError::Tampered), "byte {i}");
        }
        // Another context (e.g. the token was sealed for another connection or kind).
        let mut other = t.clone();
        let r = open(&k, b"cty", &mut other, NOW, &mut ReplayCache::default());
        assert_eq!(r, Err(OpenError::Tampered));
        // A token with a key id byte flipped reads as foreign.
        let mut bad = t.clone();
        bad[1] ^= 1;
        let r = open(&k, b"ctx", &mut bad, NOW, &mut ReplayCache::default());
        assert_eq!(r, Err(OpenError::Foreign));
    }

    #[test]
    fn expired_and_far_future() {
        let k = key(4);
        let mut cache = ReplayCache::default();
        let mut t = sealed(&k, b"c", b"m", NOW - 1);
        assert_eq!(
            open(&k, b"c", &mut t, NOW, &mut cache),
            Err(OpenError::Expired)
        );
        let mut t = sealed(&k, b"c", b"m", NOW + MAX_VALIDITY_MS + 1);
        assert_eq!(
            open(&k, b"c", &mut t, NOW, &mut cache),
            Err(OpenError::Expired)
        );
        // The edges are valid.
        let mut t = sealed(&k, b"c", b"m", NOW);
        assert!(open(&k, b"c", &mut t, NOW, &mut cache).is_ok());
        let mut t = sealed(&k, b"c", b"m", NOW + MAX_VALIDITY_MS);
        assert!(open(&k, b"c", &mut t, NOW, &mut cache).is_ok());
        assert_eq!(cache.len(), 2, "refused tokens never reach the cache");
    }

    #[test]
    fn replayed() {
        let k = key(5);
        let mut cache = ReplayCache::default();
        let t = sealed(&k, b"c", b"m", NOW + 1000);
        assert!(open(&k, b"c", &mut t.clone(), NOW, &mut cache).is_ok());
        assert_eq!(
            open(&k, b"c", &mut t.clone(), NOW + 10, &mut cache),
            Err(OpenError::Replayed)
        );
        // After its expiry it is refused as expired, and the cache forgot it.
        assert_eq!(
            open(&k, b"c", &mut t.clone(), NOW + 1001, &mut cache),
            Err(OpenError::Expired)
        );
        cache.prune(NOW + 1001);
        assert!(cache.is_empty());
    }

    #[test]
    fn malformed() {
        let k = key(6);
        let mut cache = ReplayCache::default();
        for len in 0..OVERHEAD {
            let mut t = vec![SEAL_VERSION; len];
            assert_eq!(
                open(&k, b"c", &mut t, NOW, &mut cache),
                Err(OpenError::Malformed)
            );
        }
        let mut t = sealed(&k, b"c", b"m", NOW + 1000);
        t[0] = 2;
        assert_eq!(
            open(&k, b"c", &mut t, NOW, &mut cache),
            Err(OpenError::Malformed)
        );
        assert!(matches!(
            seal(&k, b"c", b"too long", NOW, &mut [0u8; OVERHEAD]),
            Err(SealError::Overflow)
        ));
    }

    #[test]
    fn full_cache_refuses_until_tokens_expire() {
        let k = key(8);
        let mut cache = ReplayCache::with_capacity(2);
        for _ in 0..2 {
            let mut t = sealed(&k, b"c", b"m", NOW + 100);
            assert!(open(&k, b"c", &mut t, NOW, &mut cache).is_ok());
        }
        let t = sealed(&k, b"c", b"m", NOW + 500);
        assert_eq!(
            open(&k, b"c", &mut t.clone(), NOW, &mut cache),
            Err(OpenError::Overloaded)
        );
        // Once the first two have expired there is room again.
        assert!(open(&k, b"c", &mut t.clone(), NOW + 101, &mut cache).is_ok());
        assert_eq!(cache.len(), 1);
    }

    fn key_file(name: &str, content: &[u8], mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("slim-uapi-seal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn key_files() {
        let raw = [0x5au8; 32];
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let want = ClusterKey::from_bytes(&raw).key_id();
        for (name, content) in [
            ("raw", raw.to_vec()),
            ("hex", hex.clone().into_bytes()),
            ("hexnl", format!("{hex}\n").into_bytes()),
            (
                "hexcrlf",
                format!("{}\r\n", hex.to_uppercase()).into_bytes(),
            ),
        ] {
            let p = key_file(name, &content, 0o600);
            assert_eq!(ClusterKey::from_file(&p).unwrap().key_id(), want, "{name}");
        }
        let p = key_file("open", &raw, 0o644);
        let e = ClusterKey::from_file(&p).unwrap_err();
        assert!(matches!(e, KeyError::Permissions { mode: 0o644, .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("chmod 600") && msg.contains(&p.display().to_string()),
            "{msg}"
        );
        for (name, content) in [
            ("short", vec![1u8; 31]),
            ("long", vec![1u8; 33]),
            ("empty", vec![]),
            ("hex63", hex.as_bytes()[..63].to_vec()),
        ] {
            let p = key_file(name, &content, 0o600);
            let e = ClusterKey::from_file(&p).unwrap_err();
            assert!(matches!(e, KeyError::Size { .. }), "{name}: {e}");
        }
        let p = key_file("nothex", &[b'g'; 64], 0o600);
        assert!(matches!(
            ClusterKey::from_file(&p),
            Err(KeyError::BadHex { .. })
        ));
        let p = key_file("zero", &[0u8; 32], 0o400);
        assert!(matches!(
            ClusterKey::from_file(&p),
            Err(KeyError::Zero { .. })
        ));
        assert!(matches!(
            ClusterKey::from_file(Path::new("/nonexistent/slim.key")),
            Err(KeyError::Io { .. })
        ));
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}
