//! Ed25519 keys in the PEM files OpenSSL reads and writes: PKCS#8 for a
//! private key (0600), `SubjectPublicKeyInfo` for a public one (`KEY.pub`
//! beside it). The daemon's host key signs the event chain; other keys sign
//! policies.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use ed25519_dalek::{
    SigningKey, VerifyingKey,
    pkcs8::{
        DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
        spki::der::pem::LineEnding,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is not an Ed25519 {what} key in PEM ({detail})\nhint: make a key pair with `enforcer keygen {path}`"
    )]
    Format { path: PathBuf, what: &'static str, detail: String },
    #[error("cannot write the key {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} exists\nhint: keys are not overwritten; remove it first if you mean to replace it")]
    Exists { path: PathBuf },
    #[error("the system gave no random bytes for a key: {0}")]
    Random(getrandom::Error),
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Write { path: path.to_owned(), source }
}

/// A new key from the kernel's random bytes.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; ed25519_dalek::SECRET_KEY_LENGTH];
    getrandom::fill(&mut seed).map_err(KeyError::Random)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Where a private key's public half is written.
#[must_use]
pub fn public_path(private: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pub", private.display()))
}

/// Writes a new key pair: `path` (private, 0600, never overwritten) and
/// `path.pub`.
pub fn write_new_pair(path: &Path) -> Result<SigningKey, KeyError> {
    let key = generate()?;
    let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| KeyError::Format {
        path: path.to_owned(),
        what: "private",
        detail: e.to_string(),
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists { path: path.to_owned() }
        } else {
            KeyError::Write { path: path.to_owned(), source: e }
        }
    })?;
    file.write_all(pem.as_bytes()).and_then(|()| file.sync_all()).map_err(write_err(path))?;
    let public = public_path(path);
    std::fs::write(&public, public_pem(&key.verifying_key())).map_err(write_err(&public))?;
    Ok(key)
}

/// The key at `path`, made (with its `.pub`) if there is none yet.
pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), KeyError> {
    match write_new_pair(path) {
        Ok(key) => Ok((key, true)),
        Err(KeyError::Exists { .. }) => Ok((load_private(path)?, false)),
        Err(e) => Err(e),
    }
}

pub fn load_private(path: &Path) -> Result<SigningKey, KeyError> {
    let text = read(path)?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::Format {
        path: path.to_owned(),
        what: "private",
        detail: e.to_string(),
    })
}

/// A public key from `path`: its PEM, or (for convenience) the public half
/// of a private key's.
pub fn load_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = read(path)?;
    if text.contains("PRIVATE KEY") {
        return load_private(path).map(|key| key.verifying_key());
    }
    VerifyingKey::from_public_key_pem(&text).map_err(|e| KeyError::Format {
        path: path.to_owned(),
        what: "public",
        detail: e.to_string(),
    })
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })
}

#[must_use]
pub fn public_pem(key: &VerifyingKey) -> String {
    // Encoding 32 bytes in a fixed structure cannot fail.
    key.to_public_key_pem(LineEnding::LF).unwrap_or_default()
}

/// A public key as it is written in lines and signatures: its 32 bytes in
/// base64.
#[must_use]
pub fn encode_public(key: &VerifyingKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
}

pub fn decode_public(text: &str) -> Option<VerifyingKey> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    VerifyingKey::from_bytes(&bytes.try_into().ok()?).ok()
}

pub fn encode_signature(sig: &ed25519_dalek::Signature) -> String {
    base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
}

pub fn decode_signature(text: &str) -> Option<ed25519_dalek::Signature> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    Some(ed25519_dalek::Signature::from_bytes(&bytes.try_into().ok()?))
}

/// A short name for a key in messages: the first 16 hex digits of the
/// SHA-256 of its bytes.
#[must_use]
pub fn fingerprint(key: &VerifyingKey) -> String {
    crate::bpf::short_sha256(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_pair_loads_back_and_is_never_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/host.key");
        let (key, created) = load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(key.to_bytes(), again.to_bytes());
        assert_eq!(load_public(&public_path(&path)).unwrap(), key.verifying_key());
        assert_eq!(load_public(&path).unwrap(), key.verifying_key(), "the public half of a private key");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(write_new_pair(&path), Err(KeyError::Exists { .. })));
        assert_eq!(decode_public(&encode_public(&key.verifying_key())), Some(key.verifying_key()));
    }

    #[test]
    fn a_file_that_is_no_key_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pub");
        std::fs::write(&path, "not a key\n").unwrap();
        let message = load_public(&path).unwrap_err().to_string();
        assert!(message.contains("is not an Ed25519 public key") && message.contains("enforcer keygen"), "{message}");
    }
}
