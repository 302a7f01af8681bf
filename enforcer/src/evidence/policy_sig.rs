//! Signed policies. `enforcer policy sign` writes `POLICY.toml.sig` beside a
//! policy: one JSON line with the signer's public key and its Ed25519
//! signature of the file's exact bytes. A daemon given `policy_keys` loads
//! a policy (from its directory, or a run's own) only with a signature by
//! one of them; so whoever can write the policy directory or the socket
//! still cannot put a policy in force that the key holders did not sign.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::keys;

/// The signature file of a policy: `POLICY.toml.sig`.
#[must_use]
pub fn sig_path(policy: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sig", policy.display()))
}

/// What is signed: a label (so it is no signature of anything else) and
/// the file's bytes.
fn message(text: &[u8]) -> Vec<u8> {
    const LABEL: &[u8] = b"enforcer policy v1\0";
    [LABEL, text].concat()
}

/// The signature file's one line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    /// The signer's public key (Ed25519, base64).
    key: String,
    /// Its signature (Ed25519, base64).
    sig: String,
}

/// The text of the signature file of `text` signed with `key`.
#[must_use]
pub fn sign(key: &SigningKey, text: &[u8]) -> String {
    let file = SignatureFile {
        key: keys::encode_public(&key.verifying_key()),
        sig: keys::encode_signature(&key.sign(&message(text))),
    };
    let mut line = serde_json::to_string(&file).unwrap_or_default();
    line.push('\n');
    line
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error(
        "is not signed (no {sig} beside it), and this daemon loads only policies signed by a key of its \
         `policy_keys`\nhint: sign it: `enforcer policy sign --key KEY {policy}`"
    )]
    Missing { policy: String, sig: String },
    #[error("{sig} is not a policy signature ({why})\nhint: sign it again: `enforcer policy sign --key KEY {policy}`")]
    Malformed { policy: String, sig: String, why: String },
    #[error(
        "is signed by key {fingerprint}, which is not one of the trusted `policy_keys`\nhint: sign it with a \
         trusted key, or add the key's .pub to `policy_keys`"
    )]
    Untrusted { fingerprint: String },
    #[error(
        "its signature by key {fingerprint} does not match its text (changed since it was signed?)\nhint: check \
         the change, then sign it again: `enforcer policy sign --key KEY {policy}`"
    )]
    Mismatch { policy: String, fingerprint: String },
}

/// Checks the signature file `sig` (its text, `None` if there is none) of
/// the policy `policy` whose bytes are `text` against the `trusted` keys:
/// the fingerprint of the key that signed it.
pub fn check(
    policy: &Path,
    text: &[u8],
    sig: Option<&str>,
    trusted: &[VerifyingKey],
) -> Result<String, SignatureError> {
    let names = || (policy.display().to_string(), sig_path(policy).display().to_string());
    let Some(sig) = sig else {
        let (policy, sig) = names();
        return Err(SignatureError::Missing { policy, sig });
    };
    let malformed = |why: &str| {
        let (policy, sig) = names();
        SignatureError::Malformed { policy, sig, why: why.to_owned() }
    };
    let file: SignatureFile = serde_json::from_str(sig.trim()).map_err(|e| malformed(&e.to_string()))?;
    let key = keys::decode_public(&file.key).ok_or_else(|| malformed("its key is no Ed25519 public key"))?;
    let signature = keys::decode_signature(&file.sig).ok_or_else(|| malformed("its sig is no Ed25519 signature"))?;
    let fingerprint = keys::fingerprint(&key);
    if !trusted.contains(&key) {
        return Err(SignatureError::Untrusted { fingerprint });
    }
    key.verify(&message(text), &signature).map_err(|_| SignatureError::Mismatch {
        policy: policy.display().to_string(),
        fingerprint: fingerprint.clone(),
    })?;
    Ok(fingerprint)
}

/// Reads the signature file of `policy`, if there is one.
pub fn read_sig(policy: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(sig_path(policy)) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_policy_passes_for_a_trusted_key_only_and_only_unchanged() {
        let signer = keys::generate().unwrap();
        let other = keys::generate().unwrap();
        let policy = Path::new("/etc/enforcer/policies/agent.toml");
        let text = b"name = \"agent\"\n";
        let sig = sign(&signer, text);
        let trusted = [other.verifying_key(), signer.verifying_key()];
        assert_eq!(check(policy, text, Some(&sig), &trusted), Ok(keys::fingerprint(&signer.verifying_key())));

        let changed = check(policy, b"name = \"agent2\"\n", Some(&sig), &trusted).unwrap_err();
        assert!(matches!(changed, SignatureError::Mismatch { .. }), "{changed}");
        let untrusted = check(policy, text, Some(&sig), &[other.verifying_key()]).unwrap_err();
        assert!(matches!(untrusted, SignatureError::Untrusted { .. }), "{untrusted}");
        let missing = check(policy, text, None, &trusted).unwrap_err().to_string();
        assert!(missing.contains("agent.toml.sig") && missing.contains("enforcer policy sign"), "{missing}");
        let malformed = check(policy, text, Some("{\"key\":1}"), &trusted).unwrap_err();
        assert!(matches!(malformed, SignatureError::Malformed { .. }), "{malformed}");
    }
}
