//! The archive inside the payload: a deterministic tar of the manifest's files, compressed
//! in zstd frames ([`frames`]).
//!
//! Writing sorts entries by size, then path (see [`write_tar`] for why), and fixes owner, group,
//! mtime and mode, so equal inputs give equal bytes. Reading is a single streaming pass: each file is hashed as it is written,
//! only regular files whose exact path and size the manifest names are accepted, and the
//! compressed bytes are hashed once decoding is done. Nothing written here is trusted until
//! [`extract`] returns `Ok`: the caller extracts into a private temporary directory and
//! renames it into place only then.
//!
//! The pass runs on several threads, as `zstd -d | tar -x` runs in two processes: frames are
//! decoded on threads of their own ([`frames`]) while the calling thread parses the tar,
//! hashes each file and writes it. Decoded bytes travel through a bounded queue and are
//! handed back for reuse, so memory stays at a few frames (or, for a payload in one frame,
//! the decoder's window plus a few chunks).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::manifest::{FileEntry, Manifest};
use crate::trailer::Trailer;

mod frames;

pub use frames::{FRAME_CONTENT, ZSTD_WINDOW_LOG, compress, compress_in_frames};

/// Default compression level for releases. Level 18, not 19: measured on the linux-x64
/// release tar (opencode 1.2.27 + router, 244.8 MB, long window, 2 threads on a 2-core
/// machine), 19 gives 19.3% of raw in 66.7 s and 18 gives 19.4% in 45.8 s: 0.36 MB more
/// for a third less time, which keeps a release under a minute. `--level 19` is there for
/// the last 0.1%.
pub const ZSTD_RELEASE_LEVEL: i32 = 18;
/// Compression level for quick development builds.
pub const ZSTD_FAST_LEVEL: i32 = 3;

/// Size of the buffer files are copied through: large enough that per-call overhead of the
/// decoder, hasher and `write` vanishes, small enough to stay in L2.
const COPY_BUFFER: usize = 256 * 1024;
/// Pieces of a file that may wait for its hashing thread.
const HASH_DEPTH: usize = 4;

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
    // Smallest first, then by path (deterministic either way). Both sidecars are Bun
    // executables, mostly the same runtime when built with the same Bun: with the smaller
    // file first, the distance from the larger file's copy back to the smaller's is about
    // the smaller file's size, inside the 128 MiB long window, so zstd stores the second
    // runtime as matches. Measured with opencode 1.2.27 and a router built with its Bun
    // (1.3.10): 19.3% of raw instead of 24.7% in path order.
    let mut sorted: Vec<&ArchiveInput> = inputs.iter().collect();
    sorted.sort_by(|a, b| (a.entry.size, &a.entry.path).cmp(&(b.entry.size, &b.entry.path)));
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
    compressed: &[u8],
    trailer: &Trailer,
    manifest: &Manifest,
    dest: &Path,
) -> Result<ExtractStats> {
    for_each_file(compressed, trailer, manifest, |reader, entry| {
        write_verified(reader, entry, dest)
    })
}

/// Decodes a payload and checks every file's size and SHA-256 without writing anything:
/// what `inspect` and `runtime verify` use.
pub fn verify_stream(
    compressed: &[u8],
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

/// The one reading loop behind [`extract`] and [`verify_stream`]: decodes the frames (on
/// threads of their own, see the module docs), accepts only regular files the manifest names
/// (each once, with the manifest's size), hands each to `consume` on the calling thread, and
/// finally checks that every manifest file was seen and that the payload's length, SHA-256 and
/// decoded length match the trailer.
fn for_each_file(
    compressed: &[u8],
    trailer: &Trailer,
    manifest: &Manifest,
    consume: impl FnMut(&mut dyn Read, &FileEntry) -> Result<()>,
) -> Result<ExtractStats> {
    std::thread::scope(|scope| {
        let (pipe, decoding) = frames::start(scope, compressed)?;
        // `read_archive` consumes the pipe: when it returns, early or not, the decoders'
        // next send fails and their threads end.
        let read = read_archive(pipe, manifest, consume);
        let decoded = decoding.join();
        // A decoder that could not start explains any error of the reader (it saw no data).
        let decoded = decoded?;
        let (uncompressed, files) = read?;
        // The reader saw the end of the stream without an error, so the decoder finished.
        let digest = decoded.ok_or_else(|| {
            Error::corrupt(
                "payload",
                "the decoder stopped before the end of the stream",
            )
        })?;
        let compressed_len = compressed.len() as u64;
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
            files,
        })
    })
}

/// The calling thread's side: parses the tar from `pipe` and hands each file to `consume`;
/// returns the decoded length and the number of files.
fn read_archive(
    pipe: frames::Pipe,
    manifest: &Manifest,
    mut consume: impl FnMut(&mut dyn Read, &FileEntry) -> Result<()>,
) -> Result<(u64, usize)> {
    let counting = CountingReader {
        inner: pipe,
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
    Ok((rest.count, seen.len()))
}

/// Writes one file of the manifest below `root` from `source`, hashing while writing:
/// creates it exclusively (never follows or replaces anything already there), checks size
/// and SHA-256, applies the mode and flushes it to disk. Shared by archive extraction and
/// by installing from a bundle directory.
///
/// The SHA-256 runs on a thread of its own, a piece behind the writing: hashing 185 MB took
/// 0.14 s of the 0.25 s this thread spent per opencode 1.18 on the 2-core build machine,
/// and this thread sets the pace of an extraction whose frames are decoded in parallel.
pub fn write_verified(source: &mut dyn Read, expected: &FileEntry, root: &Path) -> Result<()> {
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
    let (written, digest) = std::thread::scope(|scope| {
        let (to_hash, pieces) = mpsc::sync_channel::<Vec<u8>>(HASH_DEPTH);
        let (hashed, returned) = mpsc::channel::<Vec<u8>>();
        let hashing = std::thread::Builder::new()
            .name("payload-file-hash".into())
            .spawn_scoped(scope, move || {
                let mut hasher = Sha256::new();
                for piece in pieces {
                    hasher.update(&piece);
                    // The writer may have stopped; then the piece is simply freed.
                    let _ = hashed.send(piece);
                }
                <[u8; 32]>::from(hasher.finalize())
            })
            .map_err(|e| Error::io("start a hashing thread", e))?;
        let stopped = || {
            Error::io(
                "hash the file",
                io::Error::other("the hashing thread stopped"),
            )
        };
        let mut allocated = 0;
        let mut written = 0u64;
        let copied = loop {
            // A piece back from the hasher, or a new one while fewer than the queue holds.
            let mut piece = match returned.try_recv() {
                Ok(piece) => piece,
                Err(_) if allocated <= HASH_DEPTH => {
                    allocated += 1;
                    Vec::new()
                }
                Err(_) => match returned.recv() {
                    Ok(piece) => piece,
                    Err(_) => break Err(stopped()),
                },
            };
            piece.resize(COPY_BUFFER, 0);
            let read = loop {
                match source.read(&mut piece) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other,
                }
            };
            let n = match read {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(decode_error("payload", e)),
            };
            written += n as u64;
            if written > expected.size {
                break Err(Error::corrupt(
                    "payload",
                    format!(
                        "{} is longer than the manifest's {} bytes",
                        expected.path, expected.size
                    ),
                ));
            }
            piece.truncate(n);
            if let Err(e) = file.write_all(&piece) {
                break Err(Error::io(format!("write {}", target.display()), e));
            }
            if to_hash.send(piece).is_err() {
                break Err(stopped());
            }
        };
        // The end of the pieces: the hasher finishes the last one and returns.
        drop(to_hash);
        let digest = match hashing.join() {
            Ok(digest) => digest,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        copied.map(|()| (written, digest))
    })?;
    check_file(expected, written, digest)?;
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
            router_version: None,
            target: "linux-x64".into(),
            files: map,
        }
    }

    /// Compresses `tar` and extracts it with a trailer that matches it exactly, so that
    /// only the entry checks can refuse it.
    fn extract_raw(tar: &[u8], manifest: &Manifest) -> (Result<ExtractStats>, tempfile::TempDir) {
        let mut payload = Vec::new();
        compress(tar, &mut payload, 3, 0).unwrap();
        extract_payload(&payload, tar.len(), manifest)
    }

    /// A trailer that vouches for `payload` exactly.
    fn trailer_for(payload: &[u8], tar_len: usize) -> Trailer {
        Trailer {
            payload_distance: 0,
            payload_len: payload.len() as u64,
            manifest_distance: 0,
            manifest_len: 0,
            uncompressed_len: tar_len as u64,
            payload_sha256: Sha256::digest(payload).into(),
            manifest_sha256: [0; 32],
            format_minor: 0,
        }
    }

    fn extract_payload(
        payload: &[u8],
        tar_len: usize,
        manifest: &Manifest,
    ) -> (Result<ExtractStats>, tempfile::TempDir) {
        let trailer = trailer_for(payload, tar_len);
        let dest = tempfile::tempdir().unwrap();
        (extract(payload, &trailer, manifest, dest.path()), dest)
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

    /// Seeded bytes that compress a little: enough to make many decoded chunks.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if i % 64 < 16 { 0 } else { (state >> 56) as u8 }
            })
            .collect()
    }

    /// Many times the decoding queue's capacity, so both threads block on each other.
    const BIG: usize = frames::PIPE_CHUNK * frames::PIPE_DEPTH * 3 + 12345;

    #[test]
    fn an_archive_of_many_chunks_extracts_exactly() {
        let big = noise(BIG, 1);
        let small = noise(1000, 2);
        let manifest = manifest_for(&[
            ("opencode", "bin/opencode", &big),
            ("opencode-router", "bin/router", &small),
        ]);
        let mut tar = Vec::new();
        raw_entry(&mut tar, "bin/opencode", tar::EntryType::Regular, &big, "");
        raw_entry(&mut tar, "bin/router", tar::EntryType::Regular, &small, "");
        let tar = finish(tar);
        let (result, dest) = extract_raw(&tar, &manifest);
        let stats = result.unwrap();
        assert_eq!(stats.uncompressed, tar.len() as u64);
        assert_eq!(stats.files, 2);
        assert_eq!(fs::read(dest.path().join("bin/opencode")).unwrap(), big);
        assert_eq!(fs::read(dest.path().join("bin/router")).unwrap(), small);
    }

    #[test]
    fn refusing_early_while_the_decoder_is_ahead_neither_hangs_nor_writes() {
        let big = noise(BIG, 3);
        let manifest = manifest_for(&[("opencode", "bin/opencode", &big)]);
        let mut tar = Vec::new();
        raw_entry(&mut tar, "bin/extra", tar::EntryType::Regular, &big, "");
        raw_entry(&mut tar, "bin/opencode", tar::EntryType::Regular, &big, "");
        let (result, dest) = extract_raw(&finish(tar), &manifest);
        assert!(matches!(result, Err(Error::UnsafeEntry { .. })));
        assert!(!dest.path().join("bin/opencode").exists());
    }

    #[test]
    fn damage_in_the_middle_of_a_long_stream_is_refused() {
        let big = noise(BIG, 4);
        let manifest = manifest_for(&[("opencode", "bin/opencode", &big)]);
        let mut tar = Vec::new();
        raw_entry(&mut tar, "bin/opencode", tar::EntryType::Regular, &big, "");
        let tar = finish(tar);
        let mut payload = Vec::new();
        compress(tar.as_slice(), &mut payload, 3, 0).unwrap();
        let middle = payload.len() / 2;
        for flip in [0x01u8, 0x80, 0xff] {
            let mut damaged = payload.clone();
            damaged[middle] ^= flip;
            // A trailer that matches the damaged bytes: only decoding and the files'
            // checksums can catch it.
            let trailer = trailer_for(&damaged, tar.len());
            let dest = tempfile::tempdir().unwrap();
            assert!(extract(damaged.as_slice(), &trailer, &manifest, dest.path()).is_err());
            assert!(verify_stream(damaged.as_slice(), &trailer, &manifest).is_err());
        }
    }

    /// Frames small enough that a test archive makes many of them.
    const SMALL_FRAME: usize = 64 * 1024;

    /// A tar of one big and one small file in many small frames, with its manifest.
    fn framed(seed: u64) -> (Vec<u8>, Vec<u8>, Manifest, Vec<u8>) {
        let big = noise(BIG, seed);
        let small = noise(1000, seed + 1);
        let manifest = manifest_for(&[
            ("opencode", "bin/opencode", &big),
            ("opencode-router", "bin/router", &small),
        ]);
        let mut tar = Vec::new();
        raw_entry(&mut tar, "bin/router", tar::EntryType::Regular, &small, "");
        raw_entry(&mut tar, "bin/opencode", tar::EntryType::Regular, &big, "");
        let tar = finish(tar);
        let mut payload = Vec::new();
        compress_in_frames(&tar, &mut payload, 3, 2, SMALL_FRAME).unwrap();
        (tar, payload, manifest, big)
    }

    #[test]
    fn a_payload_in_frames_is_decoded_in_parallel_and_extracts_exactly() {
        let (tar, payload, manifest, big) = framed(5);
        let frames = frames::parallel_frames_for_tests(&payload);
        assert_eq!(
            frames,
            tar.len().div_ceil(SMALL_FRAME),
            "one frame per 64 KiB"
        );
        let (result, dest) = extract_payload(&payload, tar.len(), &manifest);
        let stats = result.unwrap();
        assert_eq!((stats.uncompressed, stats.files), (tar.len() as u64, 2));
        assert_eq!(fs::read(dest.path().join("bin/opencode")).unwrap(), big);
        let trailer = trailer_for(&payload, tar.len());
        verify_stream(&payload, &trailer, &manifest).unwrap();
    }

    #[test]
    fn frames_are_one_zstd_stream_for_any_decoder_and_the_same_bytes_for_any_thread_count() {
        let (tar, payload, _, _) = framed(6);
        // What `zstd -d` and the 1.0 readers do: one streaming pass over every frame.
        assert_eq!(zstd::stream::decode_all(payload.as_slice()).unwrap(), tar);
        for workers in [0, 1, 3, 8] {
            let mut again = Vec::new();
            compress_in_frames(&tar, &mut again, 3, workers, SMALL_FRAME).unwrap();
            assert_eq!(again, payload, "{workers} workers");
        }
        // A one-frame payload (1.0 packagers) still goes through the streaming reader.
        let one_frame = zstd::stream::encode_all(tar.as_slice(), 3).unwrap();
        assert_eq!(frames::parallel_frames_for_tests(&one_frame), 0);
        let manifest = framed(6).2;
        extract_payload(&one_frame, tar.len(), &manifest).0.unwrap();
    }

    #[test]
    fn damage_in_any_frame_is_refused_by_the_parallel_reader() {
        let (tar, payload, manifest, _) = framed(7);
        // Frame boundaries, to damage a header as well as a body.
        let mut starts = vec![0];
        let mut at = 0;
        while at < payload.len() {
            at += zstd::zstd_safe::find_frame_compressed_size(&payload[at..]).unwrap();
            starts.push(at);
        }
        let last = starts[starts.len() - 2];
        let positions = [
            starts[1] + 5,                     // second frame's header (content size)
            (starts[2] + starts[3]) / 2,       // inside the third frame
            last + (payload.len() - last) / 2, // inside the last frame
        ];
        for position in positions {
            for flip in [0x01u8, 0x80] {
                let mut damaged = payload.clone();
                damaged[position] ^= flip;
                let trailer = trailer_for(&damaged, tar.len());
                let dest = tempfile::tempdir().unwrap();
                let extracted = extract(&damaged, &trailer, &manifest, dest.path());
                assert!(extracted.is_err(), "byte {position} ^ {flip:#x} accepted");
                assert!(verify_stream(&damaged, &trailer, &manifest).is_err());
            }
        }
        // A whole frame left out, with a trailer that vouches for what is left.
        let mut shortened = payload[..starts[2]].to_vec();
        shortened.extend_from_slice(&payload[starts[3]..]);
        let (result, _dest) = extract_payload(&shortened, tar.len(), &manifest);
        assert!(result.is_err(), "a payload missing a frame was accepted");
        // Frames in the wrong order.
        let mut swapped = payload[..starts[1]].to_vec();
        swapped.extend_from_slice(&payload[starts[2]..starts[3]]);
        swapped.extend_from_slice(&payload[starts[1]..starts[2]]);
        swapped.extend_from_slice(&payload[starts[3]..]);
        let (result, _dest) = extract_payload(&swapped, tar.len(), &manifest);
        assert!(result.is_err(), "frames out of order were accepted");
    }

    #[test]
    fn refusing_early_with_frames_in_flight_neither_hangs_nor_writes() {
        let big = noise(BIG, 8);
        let manifest = manifest_for(&[("opencode", "bin/opencode", &big)]);
        let mut tar = Vec::new();
        raw_entry(&mut tar, "bin/extra", tar::EntryType::Regular, &big, "");
        raw_entry(&mut tar, "bin/opencode", tar::EntryType::Regular, &big, "");
        let tar = finish(tar);
        let mut payload = Vec::new();
        compress_in_frames(&tar, &mut payload, 3, 2, SMALL_FRAME).unwrap();
        let (result, dest) = extract_payload(&payload, tar.len(), &manifest);
        assert!(matches!(result, Err(Error::UnsafeEntry { .. })));
        assert!(!dest.path().join("bin/opencode").exists());
    }
}
