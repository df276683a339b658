//! npm specifics: the version document (`<registry>/<name>/<version>`), Subresource
//! Integrity strings (`dist.integrity`, `sha512-<base64>`), and taking one executable out
//! of a package tarball (`package/bin/<file>`).

use std::io::{self, BufReader, Write};
use std::path::{Component, Path};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use flate2::read::GzDecoder;
use reqwest::Url;
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::cache::{create_executable, finish_executable};
use super::error::{FetchError, Result, io_err};
use super::http::Http;
use super::registry::{Registry, redact_url};

/// Where a package version's tarball is and what it must hash to.
#[derive(Debug)]
pub(crate) struct Dist {
    /// `dist.tarball`.
    pub tarball: Url,
    /// `dist.integrity`, the strongest hash it lists.
    pub integrity: Integrity,
}

#[derive(Deserialize)]
struct VersionDoc {
    name: String,
    version: String,
    dist: DistDoc,
}

#[derive(Deserialize)]
struct DistDoc {
    tarball: String,
    integrity: Option<String>,
}

/// Asks the registry for `package@version`'s tarball URL and integrity.
pub(crate) fn version_dist(
    http: &Http<'_>,
    registry: &Registry,
    package: &str,
    version: &str,
) -> Result<Dist> {
    let url = registry.version_url(package, version)?;
    let body = match http.get_bytes(&url, registry.credential_for(&url), "application/json") {
        Err(FetchError::HttpStatus {
            status: 404, url, ..
        }) => {
            return Err(FetchError::VersionNotFound {
                package: package.into(),
                version: version.into(),
                url,
            });
        }
        other => other?,
    };
    parse_version_doc(&body, &url, package, version)
}

fn parse_version_doc(body: &[u8], url: &Url, package: &str, version: &str) -> Result<Dist> {
    let bad = |detail: String| FetchError::BadMetadata {
        url: redact_url(url),
        detail,
    };
    let doc: VersionDoc =
        serde_json::from_slice(body).map_err(|e| bad(format!("not a version document: {e}")))?;
    if doc.name != package || doc.version != version {
        return Err(bad(format!(
            "asked for {package}@{version}, got {}@{}",
            doc.name, doc.version
        )));
    }
    let integrity = doc.dist.integrity.as_deref().ok_or_else(|| {
        bad("no dist.integrity (only a SHA-1 shasum?); refusing an unverifiable download".into())
    })?;
    let integrity = Integrity::parse(integrity).ok_or_else(|| {
        bad(format!(
            "dist.integrity {integrity:?} lists no sha512, sha384 or sha256 hash"
        ))
    })?;
    // Relative tarball URLs are resolved against the document, as a browser would.
    let tarball = url
        .join(&doc.dist.tarball)
        .map_err(|e| bad(format!("dist.tarball {:?}: {e}", doc.dist.tarball)))?;
    if !matches!(tarball.scheme(), "http" | "https") {
        return Err(bad(format!(
            "dist.tarball {} is not an http(s) URL",
            redact_url(&tarball)
        )));
    }
    Ok(Dist { tarball, integrity })
}

/// The hash algorithms of Subresource Integrity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha384 => 48,
            Algorithm::Sha512 => 64,
        }
    }
}

/// One Subresource Integrity hash: `<algorithm>-<base64 digest>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Integrity {
    algorithm: Algorithm,
    digest: Vec<u8>,
}

impl Integrity {
    /// The strongest well-formed hash in a space-separated SRI string (options after `?`
    /// are ignored), or `None` if it has none we support.
    pub(crate) fn parse(sri: &str) -> Option<Integrity> {
        sri.split_whitespace()
            .filter_map(|item| {
                let (algorithm, rest) = item.split_once('-')?;
                let algorithm = match algorithm {
                    "sha256" => Algorithm::Sha256,
                    "sha384" => Algorithm::Sha384,
                    "sha512" => Algorithm::Sha512,
                    _ => return None,
                };
                let encoded = rest.split_once('?').map_or(rest, |(digest, _)| digest);
                let digest = BASE64.decode(encoded).ok()?;
                (digest.len() == algorithm.digest_len()).then_some(Integrity { algorithm, digest })
            })
            .max_by_key(|i| i.algorithm)
    }

    /// A hasher of the same algorithm.
    pub(crate) fn hasher(&self) -> IntegrityHasher {
        match self.algorithm {
            Algorithm::Sha256 => IntegrityHasher::Sha256(Sha256::new()),
            Algorithm::Sha384 => IntegrityHasher::Sha384(Sha384::new()),
            Algorithm::Sha512 => IntegrityHasher::Sha512(Sha512::new()),
        }
    }
}

impl std::fmt::Display for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{}",
            self.algorithm.name(),
            BASE64.encode(&self.digest)
        )
    }
}

/// Computes an [`Integrity`] of the bytes written to it.
pub(crate) enum IntegrityHasher {
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

impl IntegrityHasher {
    pub(crate) fn finish(self) -> Integrity {
        let (algorithm, digest) = match self {
            IntegrityHasher::Sha256(h) => (Algorithm::Sha256, h.finalize().to_vec()),
            IntegrityHasher::Sha384(h) => (Algorithm::Sha384, h.finalize().to_vec()),
            IntegrityHasher::Sha512(h) => (Algorithm::Sha512, h.finalize().to_vec()),
        };
        Integrity { algorithm, digest }
    }
}

impl Write for IntegrityHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            IntegrityHasher::Sha256(h) => h.update(buf),
            IntegrityHasher::Sha384(h) => h.update(buf),
            IntegrityHasher::Sha512(h) => h.update(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What [`extract_bin`] wrote.
#[derive(Debug)]
pub(crate) struct Extracted {
    /// The entry's path in the tarball.
    pub member: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Writes the regular file `<top>/bin/<file_name>` of a `.tgz` to `dest` (mode 0755 on
/// Unix), hashing it on the way. `<top>` is `package` in every npm tarball, but npm itself
/// accepts any single top-level directory, so this does too. `None` if there is no such file.
pub(crate) fn extract_bin(tgz: &Path, file_name: &str, dest: &Path) -> Result<Option<Extracted>> {
    let file = fs_err::File::open(tgz)?;
    let mut archive = tar::Archive::new(GzDecoder::new(BufReader::with_capacity(1 << 20, file)));
    let corrupt = io_err("read the package tarball", tgz);
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(io_err("read the package tarball", tgz))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(io_err("read the package tarball", tgz))?
            .into_owned();
        let names: Vec<_> = path.components().collect();
        let wanted = matches!(
            names.as_slice(),
            [Component::Normal(_), Component::Normal(bin), Component::Normal(name)]
                if *bin == "bin" && *name == file_name
        );
        if !wanted {
            continue;
        }
        let mut writer = create_executable(dest)?;
        io::copy(&mut entry, &mut writer)
            .map_err(io_err("extract the package tarball into", dest))?;
        let (sha256, size) = finish_executable(writer, dest)?;
        return Ok(Some(Extracted {
            member: path.display().to_string(),
            sha256,
            size,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_picks_the_strongest_valid_hash() {
        let sha512 = Integrity {
            algorithm: Algorithm::Sha512,
            digest: vec![7; 64],
        };
        let sha256 = Integrity {
            algorithm: Algorithm::Sha256,
            digest: vec![1; 32],
        };
        let sri = format!("{sha256} {sha512}?opt sha1-AAAA sha512-tooShort==");
        assert_eq!(Integrity::parse(&sri), Some(sha512.clone()));
        assert_eq!(Integrity::parse(&sha512.to_string()), Some(sha512));
        assert_eq!(Integrity::parse("sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk="), None);
        assert_eq!(Integrity::parse(""), None);

        let mut h = Integrity::parse("sha512-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==")
            .unwrap()
            .hasher();
        h.write_all(b"").unwrap();
        assert_eq!(
            h.finish().to_string(),
            "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="
        );
    }

    #[test]
    fn version_document_checks() {
        let url = Url::parse("http://127.0.0.1:9/pkg/1.0.0").unwrap();
        let good = br#"{"name":"pkg","version":"1.0.0","dist":{"tarball":"/pkg/-/pkg-1.0.0.tgz",
            "integrity":"sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="}}"#;
        let dist = parse_version_doc(good, &url, "pkg", "1.0.0").unwrap();
        assert_eq!(
            dist.tarball.as_str(),
            "http://127.0.0.1:9/pkg/-/pkg-1.0.0.tgz"
        );
        let wrong_version = parse_version_doc(good, &url, "pkg", "1.0.1").unwrap_err();
        assert!(
            wrong_version.to_string().contains("got pkg@1.0.0"),
            "{wrong_version}"
        );
        let sha1_only =
            br#"{"name":"pkg","version":"1.0.0","dist":{"tarball":"x.tgz","shasum":"00"}}"#;
        let err = parse_version_doc(sha1_only, &url, "pkg", "1.0.0").unwrap_err();
        assert!(err.to_string().contains("no dist.integrity"), "{err}");
        assert!(parse_version_doc(b"<html>", &url, "pkg", "1.0.0").is_err());
    }
}
