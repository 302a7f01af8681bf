//! The commands that make and check evidence: `verify`, `keygen`,
//! `policy sign` and `policy check --key`. Each returns its exit code: 0
//! good, 1 the evidence fails, 2 the command could not run.

use std::path::{Path, PathBuf};

use super::{keys, policy_sig, verify};

/// `enforcer verify [--key PUBLIC] FILE...`.
#[must_use]
pub fn verify(key: Option<&Path>, files: &[PathBuf]) -> i32 {
    let key = match key.map(keys::load_public).transpose() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("enforcer verify: {e}");
            return 2;
        }
    };
    let outcome = match verify::verify(files, key.as_ref()) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("enforcer verify: {e}");
            return 2;
        }
    };
    let summary = outcome.report.summary(key.is_some());
    match outcome.broken {
        None => {
            println!("intact\n{summary}");
            0
        }
        Some(broken) => {
            println!("BROKEN at {}: {}\n  checked before it:\n{summary}", broken.at, broken.what);
            1
        }
    }
}

/// `enforcer keygen FILE`.
#[must_use]
pub fn keygen(file: &Path) -> i32 {
    match keys::write_new_pair(file) {
        Ok(key) => {
            println!(
                "{}: private key (keep it secret)\n{}: public key {}",
                file.display(),
                keys::public_path(file).display(),
                keys::fingerprint(&key.verifying_key())
            );
            0
        }
        Err(e) => {
            eprintln!("enforcer keygen: {e}");
            2
        }
    }
}

/// `enforcer policy sign --key PRIVATE FILE...`.
#[must_use]
pub fn sign(key: &Path, files: &[PathBuf]) -> i32 {
    let key = match keys::load_private(key) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("enforcer policy sign: {e}");
            return 2;
        }
    };
    for file in files {
        let signed = std::fs::read(file)
            .and_then(|text| std::fs::write(policy_sig::sig_path(file), policy_sig::sign(&key, &text)));
        match signed {
            Ok(()) => println!(
                "{}: signed by key {}",
                policy_sig::sig_path(file).display(),
                keys::fingerprint(&key.verifying_key())
            ),
            Err(e) => {
                eprintln!("enforcer policy sign: {}: {e}", file.display());
                return 2;
            }
        }
    }
    0
}

/// `enforcer policy check --key PUBLIC... FILE`: its signature.
#[must_use]
pub fn check_signature(file: &Path, public: &[PathBuf]) -> i32 {
    let trusted = match public.iter().map(|p| keys::load_public(p)).collect::<Result<Vec<_>, _>>() {
        Ok(trusted) => trusted,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let checked = std::fs::read(file).and_then(|text| Ok((policy_sig::read_sig(file)?, text)));
    match checked {
        Ok((sig, text)) => match policy_sig::check(file, &text, sig.as_deref(), &trusted) {
            Ok(fingerprint) => {
                println!("{}: signed by key {fingerprint}", file.display());
                0
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                1
            }
        },
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            2
        }
    }
}
