//! The archive inside the payload: a deterministic tar of the manifest's files, compressed
//! as a single zstd frame.
//!
//! Writing sorts entries by path and fixes owner, group, mtime and mode, so equal inputs give
//! equal bytes. Reading is a single streaming pass: the compressed bytes are hashed as they
//! are read, each file is hashed as it is written, and only regular files whose exact path
//! and size the manifest names are accepted. Nothing written here is trusted until
//! [`extract`] returns `Ok`: the caller extracts into a private temporary directory and
//! renames it into place only then.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::manifest::{FileEntry, Manifest};
use crate::trailer::Trailer;

/// zstd window the packager writes with (`--long=27`, 128 MiB) and the largest the runtime
/// accepts. A 140 MB sidecar gets most of its long-range matches within 128 MiB (about 23%
/// of raw size at level 19, against 31% for the level's default 8 MiB window); the decoder
/// needs at most this much memory for the window, and 27 is the largest window the zstd
/// command-line tool decodes without a flag, so `zstd -d` can still inspect a payload by hand.
pub const ZSTD_WINDOW_LOG: u32 = 27;
/// Default compression level for releases.
pub const ZSTD_RELEASE_LEVEL: i32 = 19;
/// Compression level for quick development builds.
pub const ZSTD_FAST_LEVEL: i32 = 3;

/// Size of the buffer files are copied through: large enough that per-call overhead of the
/// decoder, hasher and `write` vanishes, small enough to stay in L2.
const COPY_BUFFER: usize = 256 * 1024;

/// One file to put into an archive.
#[derive(Debug, Clone)]
pub struct ArchiveInput {
    /// Where the file goes, as recorded in the manifest.
    pub entry: FileEntry,
    /// Where to read it from now.
    pub source: PathBuf,
}

/// Writes the deterministic tar of `inputs` into `out`; returns its length.
pub fn write_tar(out: impl Write, inputs: &[ArchiveInput], mtime: u64) -> Result<u64> {
    let mut sorted: Vec<&ArchiveInput> = inputs.iter().collect();
    sorted.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    let mut counter = CountingWriter {
        inner: out,
        count: 0,
    };
    {
        let mut builder = tar::Builder::new(&mut counter);
        builder.mode(tar::HeaderMode::Deterministic);
        for input in sorted {
            let file = File::open(&input.source)
                .map_err(|e| Error::io(format!("open {}", input.source.display()), e))?;
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(input.entry.size);
            header.set_mode(input.entry.mode & 0o777);
            header.set_mtime(mtime);
            header.set_uid(0);
            header.set_gid(0);
            builder
                .append_data(&mut header, &input.entry.path, file.take(input.entry.size))
                .map_err(|e| {
                    Error::io(format!("add {} to the archive", input.source.display()), e)
                })?;
        }
        builder
            .finish()
            .map_err(|e| Error::io("finish the archive", e))?;
    }
    Ok(counter.count)
}

/// Compresses a tar with zstd at `level` with the long window, using `workers` threads
/// (with the `multithread` feature; one otherwise).
pub fn compress(tar: impl Read, out: impl Write, level: i32, workers: u32) -> Result<()> {
    let mut encoder =
        zstd::stream::write::Encoder::new(out, level).map_err(|e| Error::io("start zstd", e))?;
    let mut setup = || -> io::Result<()> {
        encoder.long_distance_matching(true)?;
        encoder.window_log(ZSTD_WINDOW_LOG)?;
        encoder.include_checksum(false)?;
        encoder.include_contentsize(false)?;
        #[cfg(feature = "multithread")]
        if workers > 0 {
            encoder.multithread(workers)?;
        }
        #[cfg(not(feature = "multithread"))]
        let _ = workers;
        Ok(())
    };
    setup().map_err(|e| Error::io("configure zstd", e))?;
    let mut tar = tar;
    io::copy(&mut tar, &mut encoder).map_err(|e| Error::io("compress the archive", e))?;
    encoder.finish().map_err(|e| Error::io("finish zstd", e))?;
    Ok(())
}

/// Statistics of one extraction.
#[derive(Debug, Clone, Default)]
pub struct ExtractStats {
    /// Compressed bytes read.
    pub compressed: u64,
    /// Tar bytes decoded.
    pub uncompressed: u64,
    /// Files written.
    pub files: usize,
}

/// Extracts a payload into `dest` (an empty directory the caller owns), verifying every
/// file against `manifest` and the whole stream against `trailer`. Files are flushed to
/// disk; `dest` itself is not (the caller fsyncs directories before renaming).
pub fn extract(
    compressed: impl Read,
    trailer: &Trailer,
    manifest: &Manifest,
    dest: &Path,
) -> Result<ExtractStats> {
    let mut buffer = vec![0u8; COPY_BUFFER];
    for_each_file(compressed, trailer, manifest, |reader, entry| {
        write_verified(reader, entry, dest, &mut buffer)
    })
}

/// Decodes a payload and checks every file's size and SHA-256 without writing anything:
/// what `inspect` and `runtime verify` use.
pub fn verify_stream(
    compressed: impl Read,
    trailer: &Trailer,
    manifest: &Manifest,
) -> Result<ExtractStats> {
    let mut buffer = vec![0u8; COPY_BUFFER];
    for_each_file(compressed, trailer, manifest, |reader, entry| {
        let (size, digest) =
            hash_reader(reader, &mut buffer).map_err(|e| decode_error("payload", e))?;
        check_file(entry, size, digest)
    })
}

/// The one reading loop behind [`extract`] and [`verify_stream`]: decodes the frame, accepts
/// only regular files the manifest names (each once, with the manifest's size), hands each to
/// `consume`, and finally checks that every manifest file was seen and that the frame's length,
/// SHA-256 and decoded length match the trailer.
fn for_each_file(
    compressed: impl Read,
    trailer: &Trailer,
    manifest: &Manifest,
    mut consume: impl FnMut(&mut dyn Read, &FileEntry) -> Result<()>,
) -> Result<ExtractStats> {
    let hashing = HashingReader::new(compressed);
    let mut decoder =
        zstd::stream::read::Decoder::new(hashing).map_err(|e| Error::io("start zstd", e))?;
    decoder
        .window_log_max(ZSTD_WINDOW_LOG)
        .map_err(|e| Error::io("configure zstd", e))?;
    let counting = CountingReader {
        inner: decoder,
        count: 0,
    };
    let mut archive = tar::Archive::new(counting);
    let mut seen = std::collections::BTreeSet::new();
    let entries = archive.entries().map_err(|e| decode_error("archive", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| decode_error("archive", e))?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let entry_type = entry.header().entry_type();
        if entry_type != tar::EntryType::Regular {
            return Err(Error::UnsafeEntry {
                entry: raw_path,
                reason: format!("it is a {entry_type:?}, only regular files are allowed"),
            });
        }
        let Some((name, expected)) = manifest.entry_by_path(&raw_path) else {
            return Err(Error::UnsafeEntry {
                entry: raw_path,
                reason: "the manifest does not name this path".into(),
            });
        };
        if !seen.insert(name.to_string()) {
            return Err(Error::UnsafeEntry {
                entry: raw_path,
                reason: "it appears twice in the archive".into(),
            });
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| decode_error("archive", e))?;
        if size != expected.size {
            return Err(Error::corrupt(
                "archive",
                format!(
                    "{raw_path} is {size} bytes, the manifest says {}",
                    expected.size
                ),
            ));
        }
        consume(&mut entry, expected)?;
    }
    if let Some(missing) = manifest.files.keys().find(|n| !seen.contains(n.as_str())) {
        return Err(Error::corrupt(
            "archive",
            format!("the manifest's file {missing:?} is missing from the archive"),
        ));
    }
    // Read what is left (tar end blocks) so that the whole frame is hashed and checked.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| decode_error("payload", e))?;
    let uncompressed = rest.count;
    let (compressed_len, digest) = rest.inner.finish().into_inner().finish();
    if compressed_len != trailer.payload_len || digest != trailer.payload_sha256 {
        return Err(Error::ChecksumMismatch {
            what: "payload".into(),
            expected: hex::encode(trailer.payload_sha256),
            computed: hex::encode(digest),
        });
    }
    if uncompressed != trailer.uncompressed_len {
        return Err(Error::corrupt(
            "payload",
            format!(
                "decoded {uncompressed} bytes, the trailer says {}",
                trailer.uncompressed_len
            ),
        ));
    }
    Ok(ExtractStats {
        compressed: compressed_len,
        uncompressed,
        files: seen.len(),
    })
}

/// Writes one file of the manifest below `root` from `source`, hashing while writing:
/// creates it exclusively (never follows or replaces anything already there), checks size
/// and SHA-256, applies the mode and flushes it to disk. Shared by archive extraction and
/// by installing from a bundle directory.
pub fn write_verified(
    source: &mut dyn Read,
    expected: &FileEntry,
    root: &Path,
    buffer: &mut [u8],
) -> Result<()> {
    let target = expected.path_in(root);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("create directory {}", parent.display()), e))?;
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&target)
        .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    loop {
        let n = match source.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(decode_error("payload", e)),
        };
        written += n as u64;
        if written > expected.size {
            return Err(Error::corrupt(
                "payload",
                format!(
                    "{} is longer than the manifest's {} bytes",
                    expected.path, expected.size
                ),
            ));
        }
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n])
            .map_err(|e| Error::io(format!("write {}", target.display()), e))?;
    }
    check_file(expected, written, hasher.finalize().into())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Never setuid/setgid/sticky, never writable by others.
        file.set_permissions(fs::Permissions::from_mode(expected.mode & 0o755))
            .map_err(|e| Error::io(format!("set mode of {}", target.display()), e))?;
    }
    file.sync_all()
        .map_err(|e| Error::io(format!("flush {}", target.display()), e))?;
    Ok(())
}

/// Hashes a file on disk and checks it against its manifest entry.
pub fn verify_file(expected: &FileEntry, root: &Path) -> Result<()> {
    let path = expected.path_in(root);
    let mut file =
        File::open(&path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut buffer = vec![0u8; COPY_BUFFER];
    let (size, digest) = hash_reader(&mut file, &mut buffer)
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    check_file(expected, size, digest)
}

fn hash_reader(reader: &mut dyn Read, buffer: &mut [u8]) -> io::Result<(u64, [u8; 32])> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = match reader.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        size += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok((size, hasher.finalize().into()))
}

fn check_file(expected: &FileEntry, size: u64, digest: [u8; 32]) -> Result<()> {
    if size != expected.size {
        return Err(Error::corrupt(
            "payload",
            format!(
                "{} has {size} bytes, the manifest says {}",
                expected.path, expected.size
            ),
        ));
    }
    let computed = hex::encode(digest);
    if computed != expected.sha256 {
        return Err(Error::ChecksumMismatch {
            what: expected.path.clone(),
            expected: expected.sha256.clone(),
            computed,
        });
    }
    Ok(())
}

/// Decoder errors carry no path; anything the zstd or tar layer reports is damage.
fn decode_error(what: &'static str, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error().is_some() {
        return Error::io(format!("read the {what}"), e);
    }
    Error::corrupt(what, e.to_string())
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    fn finish(self) -> (u64, [u8; 32]) {
        (self.count, self.hasher.finalize().into())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::MANIFEST_VERSION;
    use std::collections::BTreeMap;

    /// A raw tar entry: any name and type, bypassing the tar crate's own path checks, as an
    /// attacker's archive would.
    fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, data: &[u8], link: &str) {
        let mut header = tar::Header::new_ustar();
        let raw = header.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn manifest_for(files: &[(&str, &str, &[u8])]) -> Manifest {
        let mut map = BTreeMap::new();
        for (name, path, data) in files {
            map.insert(
                name.to_string(),
                FileEntry {
                    path: path.to_string(),
                    size: data.len() as u64,
                    sha256: hex::encode(Sha256::digest(data)),
                    mode: 0o755,
                },
            );
        }
        Manifest {
            manifest_version: MANIFEST_VERSION,
            server_version: "0.1.0".into(),
            opencode_version: "1".into(),
            router_version: "1".into(),
            target: "linux-x64".into(),
            files: map,
        }
    }

    /// Compresses `tar` and extracts it with a trailer that matches it exactly, so that
    /// only the entry checks can refuse it.
    fn extract_raw(tar: &[u8], manifest: &Manifest) -> (Result<ExtractStats>, tempfile::TempDir) {
        let mut payload = Vec::new();
        compress(tar, &mut payload, 3, 0).unwrap();
        let trailer = Trailer {
            payload_distance: 0,
            payload_len: payload.len() as u64,
            manifest_distance: 0,
            manifest_len: 0,
            uncompressed_len: tar.len() as u64,
            payload_sha256: Sha256::digest(&payload).into(),
            manifest_sha256: [0; 32],
            format_minor: 0,
        };
        let dest = tempfile::tempdir().unwrap();
        (
            extract(payload.as_slice(), &trailer, manifest, dest.path()),
            dest,
        )
    }

    fn finish(mut tar: Vec<u8>) -> Vec<u8> {
        tar.extend_from_slice(&[0; 1024]);
        tar
    }

    const DATA: &[u8] = b"#!/bin/sh\necho sidecar\n";

    #[test]
    fn a_well_formed_archive_extracts() {
        let manifest = manifest_for(&[("opencode", "bin/opencode", DATA)]);
        let mut tar = Vec::new();
        raw_entry(&mut tar, "bin/opencode", tar::EntryType::Regular, DATA, "");
        let (result, dest) = extract_raw(&finish(tar), &manifest);
        result.unwrap();
        assert_eq!(fs::read(dest.path().join("bin/opencode")).unwrap(), DATA);
    }

    #[test]
    fn hostile_entries_are_refused_and_nothing_escapes() {
        use tar::EntryType::*;
        let manifest = manifest_for(&[("opencode", "bin/opencode", DATA)]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("dot-dot", {
                let mut t = Vec::new();
                raw_entry(&mut t, "../escaped", Regular, DATA, "");
                t
            }),
            ("dot-dot inside", {
                let mut t = Vec::new();
                raw_entry(&mut t, "bin/../../escaped", Regular, DATA, "");
                t
            }),
            ("absolute", {
                let mut t = Vec::new();
                raw_entry(&mut t, "/tmp/escaped", Regular, DATA, "");
                t
            }),
            ("symlink at the manifest's path", {
                let mut t = Vec::new();
                raw_entry(&mut t, "bin/opencode", Symlink, b"", "/etc/passwd");
                t
            }),
            ("hard link", {
                let mut t = Vec::new();
                raw_entry(&mut t, "bin/opencode", Link, b"", "/etc/passwd");
                t
            }),
            ("character device", {
                let mut t = Vec::new();
                raw_entry(&mut t, "bin/opencode", Char, b"", "");
                t
            }),
            ("directory", {
                let mut t = Vec::new();
                raw_entry(&mut t, "bin/opencode", Directory, b"", "");
                t
            }),
            ("duplicate", {
                let mut t = Vec::new();
                raw_entry(&mut t, "bin/opencode", Regular, DATA, "");
                raw_entry(&mut t, "bin/opencode", Regular, DATA, "");
                t
            }),
            ("not in the manifest", {
                let mut t = Vec::new();
                raw_entry(&mut t, "bin/opencode", Regular, DATA, "");
                raw_entry(&mut t, "bin/extra", Regular, DATA, "");
                t
            }),
        ];
        for (what, tar) in cases {
            let (result, dest) = extract_raw(&finish(tar), &manifest);
            let err = result.expect_err(what);
            assert!(matches!(err, Error::UnsafeEntry { .. }), "{what}: {err}");
            assert!(
                !dest.path().parent().unwrap().join("escaped").exists(),
                "{what}"
            );
            let link = dest.path().join("bin/opencode");
            assert!(
                fs::symlink_metadata(&link)
                    .map(|m| m.is_file())
                    .unwrap_or(true),
                "{what}: something other than a regular file was created"
            );
        }
    }

    #[test]
    fn wrong_size_content_or_missing_files_are_refused() {
        let manifest = manifest_for(&[
            ("opencode", "bin/opencode", DATA),
            ("opencode-router", "bin/router", DATA),
        ]);
        let mut tar = Vec::new();
        raw_entry(&mut tar, "bin/opencode", tar::EntryType::Regular, DATA, "");
        let (result, _d) = extract_raw(&finish(tar), &manifest);
        assert!(
            matches!(result, Err(Error::Corrupt { .. })),
            "missing file accepted"
        );

        let mut tar = Vec::new();
        let mut evil = DATA.to_vec();
        evil[0] ^= 1;
        raw_entry(&mut tar, "bin/opencode", tar::EntryType::Regular, &evil, "");
        raw_entry(&mut tar, "bin/router", tar::EntryType::Regular, DATA, "");
        let (result, _d) = extract_raw(&finish(tar), &manifest);
        assert!(
            matches!(result, Err(Error::ChecksumMismatch { .. })),
            "changed content accepted"
        );

        let mut tar = Vec::new();
        raw_entry(
            &mut tar,
            "bin/opencode",
            tar::EntryType::Regular,
            &DATA[1..],
            "",
        );
        let (result, _d) = extract_raw(&finish(tar), &manifest);
        assert!(
            matches!(result, Err(Error::Corrupt { .. })),
            "short file accepted"
        );
    }

    #[test]
    fn trailing_garbage_and_wrong_payload_hash_are_refused() {
        let manifest = manifest_for(&[("opencode", "bin/opencode", DATA)]);
        let mut tar = Vec::new();
        raw_entry(&mut tar, "bin/opencode", tar::EntryType::Regular, DATA, "");
        let tar = finish(tar);
        let mut payload = Vec::new();
        compress(tar.as_slice(), &mut payload, 3, 0).unwrap();
        let mut trailer = Trailer {
            payload_distance: 0,
            payload_len: payload.len() as u64,
            manifest_distance: 0,
            manifest_len: 0,
            uncompressed_len: tar.len() as u64,
            payload_sha256: [1; 32],
            manifest_sha256: [0; 32],
            format_minor: 0,
        };
        let dest = tempfile::tempdir().unwrap();
        let err = extract(payload.as_slice(), &trailer, &manifest, dest.path()).unwrap_err();
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");

        payload.extend_from_slice(b"garbage after the frame");
        trailer.payload_len = payload.len() as u64;
        trailer.payload_sha256 = Sha256::digest(&payload).into();
        let dest = tempfile::tempdir().unwrap();
        assert!(extract(payload.as_slice(), &trailer, &manifest, dest.path()).is_err());
    }

    #[test]
    fn deterministic_tar_is_byte_identical() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, DATA).unwrap();
        let manifest = manifest_for(&[("opencode", "bin/opencode", DATA)]);
        let input = ArchiveInput {
            entry: manifest.files["opencode"].clone(),
            source: a,
        };
        let mut first = Vec::new();
        let mut second = Vec::new();
        write_tar(&mut first, std::slice::from_ref(&input), 0).unwrap();
        write_tar(&mut second, &[input], 0).unwrap();
        assert_eq!(first, second);
    }
}
