//! The hash chain of the daemon's event lines. Each numbered line carries
//! `"prev_hash"`, the SHA-256 of the line before it (its bytes without the
//! newline), right after its `"seq"`; so a line changed, removed or moved
//! breaks the chain at the next line. Now and then, at rotation and at stop
//! the daemon writes a `chain_head` line that signs the head (the last
//! line's number and hash) with its host key, which makes the lines up to
//! it impossible to rewrite without the key, and a cut tail visible.

use std::time::{Duration, Instant};

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::Digest as _;

use super::keys;

pub type Hash = [u8; 32];

/// The `prev_hash` of the first line ever written.
pub const GENESIS: Hash = [0; 32];

/// The field, as it follows `{"seq":N,`.
pub const PREV_FIELD: &[u8] = b"\"prev_hash\":\"";

/// The kind of a signed head's line.
pub const HEAD_KIND: &str = "chain_head";

/// Where the daemon copies the last signed head of the events file
/// `events` (`enforcer verify` finds a cut tail with it).
#[must_use]
pub fn head_path(events: &std::path::Path) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}.head", events.display()))
}

/// The hash of a line: of its bytes, without the newline.
#[must_use]
pub fn hash_line(line: &[u8]) -> Hash {
    sha2::Sha256::digest(line).into()
}

#[must_use]
pub fn to_hex(hash: &Hash) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 64];
    for (i, byte) in hash.iter().enumerate() {
        hex[2 * i] = DIGITS[usize::from(byte >> 4)];
        hex[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
    }
    hex
}

#[must_use]
pub fn hex_string(hash: &Hash) -> String {
    String::from_utf8_lossy(&to_hex(hash)).into_owned()
}

/// A hash from 64 lowercase hex digits (as [`to_hex`] writes them).
#[must_use]
pub fn from_hex(hex: &[u8]) -> Option<Hash> {
    // A digit's value, or 0xff: one table load per digit (verify decodes
    // a hash per line).
    const VALUES: [u8; 256] = {
        let mut values = [0xff; 256];
        let mut c: u8 = 0;
        while c < 10 {
            values[(b'0' + c) as usize] = c;
            c += 1;
        }
        let mut c: u8 = 0;
        while c < 6 {
            values[(b'a' + c) as usize] = 10 + c;
            c += 1;
        }
        values
    };
    let hex: &[u8; 64] = hex.try_into().ok()?;
    let mut hash = [0u8; 32];
    let mut bad = 0;
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let (high, low) = (VALUES[usize::from(pair[0])], VALUES[usize::from(pair[1])]);
        bad |= high | low;
        hash[i] = high << 4 | low;
    }
    (bad & 0xf0 == 0).then_some(hash)
}

/// What a head's signature signs: a label (so it is no signature of
/// anything else), the head line's number and its hash.
#[must_use]
fn head_message(seq: u64, hash: &Hash) -> [u8; 64] {
    const LABEL: &[u8; 24] = b"enforcer chain head v1\0\0";
    let mut message = [0u8; 64];
    message[..24].copy_from_slice(LABEL);
    message[24..32].copy_from_slice(&seq.to_be_bytes());
    message[32..].copy_from_slice(hash);
    message
}

/// Whether `sig` (base64) is `key`'s signature of the head `seq`, `hash`.
#[must_use]
pub fn head_signed_by(key: &VerifyingKey, seq: u64, hash: &Hash, sig: &str) -> bool {
    keys::decode_signature(sig).is_some_and(|sig| key.verify(&head_message(seq, hash), &sig).is_ok())
}

/// Where the chain is: the hash the next line carries, and what is not
/// signed yet.
pub struct Chain {
    pub prev: Hash,
    signer: Option<HeadSigner>,
    /// Lines written since the last signed head.
    unsigned: u64,
    last_head: Instant,
}

/// The host key and how often it signs.
pub struct HeadSigner {
    pub key: SigningKey,
    pub every: Duration,
}

/// A signed head, ready to be written as a `chain_head` line.
pub struct SignedHead {
    pub seq: u64,
    pub hash: String,
    pub key: String,
    pub sig: String,
}

impl Chain {
    /// A chain going on from a line whose hash is `prev` ([`GENESIS`] for
    /// none).
    #[must_use]
    pub fn resume(prev: Hash, signer: Option<HeadSigner>) -> Self {
        Self { prev, signer, unsigned: 0, last_head: Instant::now() }
    }

    /// The line just written (without its newline) is the head now.
    pub fn advance(&mut self, line: &[u8]) {
        self.prev = hash_line(line);
        self.unsigned += 1;
    }

    /// Whether a head should be signed now: lines are unsigned, and it is
    /// time, or `now` is asked for (a rotation, the daemon stopping).
    #[must_use]
    pub fn head_due(&self, now: bool) -> bool {
        self.signer.as_ref().is_some_and(|s| self.unsigned > 0 && (now || self.last_head.elapsed() >= s.every))
    }

    /// Signs the head, line `seq` (the one just written).
    pub fn sign(&mut self, seq: u64) -> Option<SignedHead> {
        let signer = self.signer.as_ref()?;
        let sig = signer.key.sign(&head_message(seq, &self.prev));
        self.unsigned = 0;
        self.last_head = Instant::now();
        Some(SignedHead {
            seq,
            hash: hex_string(&self.prev),
            key: keys::encode_public(&signer.key.verifying_key()),
            sig: keys::encode_signature(&sig),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_goes_both_ways() {
        let hash = hash_line(b"{\"seq\":1}");
        assert_eq!(from_hex(&to_hex(&hash)), Some(hash));
        assert_eq!(from_hex(b"zz"), None);
        assert_eq!(from_hex(&[b'g'; 64]), None);
    }

    #[test]
    fn a_head_verifies_for_its_key_seq_and_hash_only() {
        let key = keys::generate().unwrap();
        let mut chain = Chain::resume(GENESIS, Some(HeadSigner { key: key.clone(), every: Duration::from_mins(1) }));
        assert!(!chain.head_due(true), "nothing to sign");
        chain.advance(b"{\"seq\":1}");
        assert!(chain.head_due(true) && !chain.head_due(false));
        let head = chain.sign(1).unwrap();
        let hash = from_hex(head.hash.as_bytes()).unwrap();
        let public = key.verifying_key();
        assert!(head_signed_by(&public, 1, &hash, &head.sig));
        assert!(!head_signed_by(&public, 2, &hash, &head.sig), "another line number");
        assert!(!head_signed_by(&public, 1, &GENESIS, &head.sig), "another hash");
        let other = keys::generate().unwrap().verifying_key();
        assert!(!head_signed_by(&other, 1, &hash, &head.sig), "another key");
        assert!(!chain.head_due(true), "signed");
    }
}
