//! Packages of a Debian suite that is not an apt source of this host (bullseye-security,
//! trixie-backports), so its packages never mix with the host's: the suite's signed
//! `InRelease` is checked with gpgv against the host's Debian archive keyring, its
//! package index against the SHA-256 that `InRelease` gives, and each `.deb` against the
//! SHA-256 the index gives.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const INDEX: &str = "main/binary-amd64/Packages.xz";

/// A suite on a mirror, e.g. `http://deb.debian.org/debian` and `trixie-backports`.
pub struct Suite {
    pub mirror: &'static str,
    pub name: &'static str,
}

/// One package stanza of an index.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// Path below the mirror, e.g. `pool/main/l/linux-signed-amd64/...deb`.
    pub filename: String,
    pub sha256: String,
}

/// The suite's verified package index.
pub struct Index {
    packages: Vec<Package>,
}

impl Suite {
    /// Downloads and verifies the suite's index into `scratch`.
    pub fn index(&self, scratch: &Path) -> Result<Index> {
        let dists = format!("{}/dists/{}", self.mirror, self.name);
        let release = scratch.join("InRelease");
        download(&format!("{dists}/InRelease"), &release)?;
        let verified = cmd::output(Command::new("gpgv").args(["--keyring", KEYRING, "--output", "-"]).arg(&release))
            .with_context(|| {
                format!(
                    "the signature of {dists}/InRelease does not verify against {KEYRING} (package \
                         debian-archive-keyring)"
                )
            })?;
        let sha256 =
            index_sha256(&verified).with_context(|| format!("{dists}/InRelease lists no SHA-256 for {INDEX}"))?;
        let xz = scratch.join("Packages.xz");
        download(&format!("{dists}/{INDEX}"), &xz)?;
        check_sha256(&xz, &sha256)?;
        let text = cmd::output(Command::new("xz").arg("-dc").arg(&xz))
            .with_context(|| format!("could not decompress {}", xz.display()))?;
        Ok(Index { packages: parse(&text) })
    }

    /// Downloads `package` into `dir` and checks it; returns the file.
    pub fn fetch(&self, package: &Package, dir: &Path) -> Result<PathBuf> {
        let file_name = package.filename.rsplit('/').next().unwrap_or(&package.filename);
        let path = dir.join(file_name);
        // `+` in a pool path is a space to some servers unless it is escaped.
        let url = format!("{}/{}", self.mirror, package.filename.replace('+', "%2B"));
        download(&url, &path)?;
        check_sha256(&path, &package.sha256)?;
        Ok(path)
    }
}

impl Index {
    /// The newest version of the packages whose name `matches`.
    pub fn newest(&self, matches: impl Fn(&str) -> bool) -> Option<&Package> {
        self.packages
            .iter()
            .filter(|p| matches(&p.name))
            .reduce(|best, p| if newer(&p.version, &best.version) { p } else { best })
    }

    /// The package `name` at `version`.
    pub fn exact(&self, name: &str, version: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.name == name && p.version == version)
    }
}

/// Whether Debian version `a` is newer than `b`.
pub fn newer(a: &str, b: &str) -> bool {
    cmd::succeeds(Command::new("dpkg").args(["--compare-versions", a, "gt", b]))
}

fn download(url: &str, to: &Path) -> Result<()> {
    cmd::run(Command::new("curl").args(["-sSfL", "--retry", "3", "-o"]).arg(to).arg(url))
        .with_context(|| format!("could not download {url}; check the network"))
}

fn check_sha256(path: &Path, expected: &str) -> Result<()> {
    let out = cmd::output(Command::new("sha256sum").arg(path))?;
    let actual = out.split_whitespace().next().unwrap_or_default();
    if actual != expected {
        bail!("{} has SHA-256 {actual}, the signed index says {expected}; delete it and retry", path.display());
    }
    Ok(())
}

/// The SHA-256 of the index in a verified `InRelease` (its `SHA256:` section).
fn index_sha256(release: &str) -> Option<String> {
    let section = release.split("\nSHA256:").nth(1)?;
    section.lines().skip(1).take_while(|l| l.starts_with(' ')).find_map(|l| {
        let mut fields = l.split_whitespace();
        let (sha, _size, name) = (fields.next()?, fields.next()?, fields.next()?);
        (name == INDEX).then(|| sha.to_string())
    })
}

fn parse(text: &str) -> Vec<Package> {
    text.split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| stanza.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
            Some(Package {
                name: field("Package:")?,
                version: field("Version:")?,
                filename: field("Filename:")?,
                sha256: field("SHA256:")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_index_hash_in_the_sha256_section() {
        let release = "Suite: x\nMD5Sum:\n 00 1 main/binary-amd64/Packages.xz\nSHA256:\n aa 10 \
                       main/binary-amd64/Packages\n bb 20 main/binary-amd64/Packages.xz\nOther: y\n";
        assert_eq!(index_sha256(release).as_deref(), Some("bb"));
    }

    #[test]
    fn parses_stanzas_with_every_field() {
        let text = "Package: a\nVersion: 1\nFilename: pool/a.deb\nSHA256: 11\n\nPackage: b\nVersion: 2\n";
        let packages = parse(text);
        assert_eq!(packages.len(), 1);
        assert_eq!(packages[0].filename, "pool/a.deb");
    }
}
