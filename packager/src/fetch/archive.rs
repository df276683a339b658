//! Taking the one executable out of a release asset (`.tar.gz` or `.zip`), or taking a
//! bare executable as it is.
//!
//! Release assets come from places the packager does not control (a mirror, a copied
//! file), so extraction is defensive: every member's path is checked, and any member whose
//! path is absolute or climbs out with `..` makes the whole archive refused, even if it is
//! not the one we want, because an archive built like that is not a release asset. Only one
//! member is ever written: the regular file named `opencode[.exe]` at the top level or
//! inside one top-level directory; a link of that name, or two candidates, are refused
//! rather than guessed between. Its size is bounded so that a decompression bomb cannot
//! fill the disk.

use std::io::{self, BufReader, Read};
use std::path::{Component, Path};

use flate2::read::GzDecoder;

use super::cache::{create_executable, finish_executable};
use super::error::{FetchError, Result, io_err};

/// Larger than any opencode build (about 140 MB today) by a wide margin, small enough that
/// a bomb cannot take the disk.
pub(crate) const MAX_EXECUTABLE: u64 = 1 << 30;

/// What a downloaded or given file is, by its first bytes (not its name: mirrors rename).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    TarGz,
    Zip,
    /// Not an archive: taken to be the executable itself.
    Bare,
}

impl Kind {
    pub(crate) fn sniff(path: &Path) -> Result<Kind> {
        let mut head = [0u8; 4];
        let mut file = fs_err::File::open(path)?;
        let mut len = 0;
        while len < head.len() {
            match file.read(&mut head[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("read", path)(e)),
            }
        }
        Ok(match &head[..len] {
            [0x1f, 0x8b, ..] => Kind::TarGz,
            [b'P', b'K', 3, 4] | [b'P', b'K', 5, 6] => Kind::Zip,
            _ => Kind::Bare,
        })
    }
}

/// What [`extract`] wrote.
#[derive(Debug)]
pub(crate) struct Extracted {
    /// The member's path in the archive (the file name for a bare executable).
    pub member: String,
    /// Lower-case hex SHA-256 of the executable.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Writes the executable `file_name` from `src` (of kind `kind`) to `dest`, mode 0755.
/// `what` names the source in errors.
pub(crate) fn extract(
    src: &Path,
    kind: Kind,
    file_name: &str,
    dest: &Path,
    what: &str,
) -> Result<Extracted> {
    let bad = |detail: String| FetchError::BadArchive {
        what: what.to_owned(),
        detail,
    };
    match kind {
        Kind::Bare => {
            let mut file = fs_err::File::open(src)?;
            let (sha256, size) = write_bounded(&mut file, dest, what)?;
            let member = src.file_name().map_or_else(
                || file_name.to_owned(),
                |n| n.to_string_lossy().into_owned(),
            );
            Ok(Extracted {
                member,
                sha256,
                size,
            })
        }
        Kind::TarGz => {
            let file = fs_err::File::open(src)?;
            let mut archive =
                tar::Archive::new(GzDecoder::new(BufReader::with_capacity(1 << 20, file)));
            let unreadable = |e: io::Error| bad(format!("not a readable .tar.gz ({e})"));
            let mut found: Option<Extracted> = None;
            for entry in archive.entries().map_err(unreadable)? {
                let mut entry = entry.map_err(unreadable)?;
                let path = entry.path().map_err(unreadable)?.into_owned();
                let shown = path.display().to_string();
                check_member_path(&path).map_err(|why| bad(format!("member {shown:?} {why}")))?;
                if !is_candidate(&path, file_name) {
                    continue;
                }
                let kind = entry.header().entry_type();
                if !kind.is_file() {
                    return Err(bad(format!(
                        "member {shown:?} is a {kind:?}, not a regular file"
                    )));
                }
                if let Some(first) = &found {
                    return Err(two_candidates(&bad, &first.member, &shown));
                }
                let (sha256, size) = write_bounded(&mut entry, dest, what)?;
                found = Some(Extracted {
                    member: shown,
                    sha256,
                    size,
                });
            }
            found.ok_or_else(|| missing(&bad, file_name))
        }
        Kind::Zip => {
            let file = fs_err::File::open(src)?;
            let mut archive = zip::ZipArchive::new(BufReader::new(file))
                .map_err(|e| bad(format!("not a readable .zip ({e})")))?;
            let mut found: Option<Extracted> = None;
            for i in 0..archive.len() {
                let mut member = archive
                    .by_index(i)
                    .map_err(|e| bad(format!("not a readable .zip ({e})")))?;
                let shown = member.name().to_owned();
                let path = member.enclosed_name().ok_or_else(|| {
                    bad(format!(
                        "member {shown:?} has a path outside the archive's directory"
                    ))
                })?;
                check_member_path(&path).map_err(|why| bad(format!("member {shown:?} {why}")))?;
                if !is_candidate(&path, file_name) {
                    continue;
                }
                if member.is_symlink() || !member.is_file() {
                    return Err(bad(format!("member {shown:?} is not a regular file")));
                }
                if let Some(first) = &found {
                    return Err(two_candidates(&bad, &first.member, &shown));
                }
                let (sha256, size) = write_bounded(&mut member, dest, what)?;
                found = Some(Extracted {
                    member: shown,
                    sha256,
                    size,
                });
            }
            found.ok_or_else(|| missing(&bad, file_name))
        }
    }
}

/// `Err(why)` for a member path that could land outside the extraction directory.
fn check_member_path(path: &Path) -> std::result::Result<(), &'static str> {
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("climbs out of the archive's directory (..)"),
            Component::RootDir | Component::Prefix(_) => return Err("has an absolute path"),
        }
    }
    // Windows separators and drive letters inside a Unix-built name: hostile on Windows.
    let text = path.to_string_lossy();
    if text.contains('\\') || text.contains(':') {
        return Err("has a path with a backslash or a colon");
    }
    Ok(())
}

/// `opencode` or `<dir>/opencode`: the layouts opencode's assets have used.
fn is_candidate(path: &Path, file_name: &str) -> bool {
    let names: Vec<_> = path
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    match names.as_slice() {
        [Component::Normal(name)] | [Component::Normal(_), Component::Normal(name)] => {
            *name == file_name
        }
        _ => false,
    }
}

fn two_candidates(bad: &impl Fn(String) -> FetchError, first: &str, second: &str) -> FetchError {
    bad(format!(
        "two members could be the executable ({first:?} and {second:?})"
    ))
}

fn missing(bad: &impl Fn(String) -> FetchError, file_name: &str) -> FetchError {
    bad(format!(
        "no regular file {file_name:?} at its top level or in one top-level directory"
    ))
}

/// Copies at most [`MAX_EXECUTABLE`] bytes of `reader` to `dest`, hashing them, and makes
/// the result executable.
fn write_bounded(reader: &mut impl Read, dest: &Path, what: &str) -> Result<(String, u64)> {
    let mut writer = create_executable(dest)?;
    let copied = io::copy(&mut reader.take(MAX_EXECUTABLE + 1), &mut writer)
        .map_err(io_err("extract into", dest))?;
    if copied > MAX_EXECUTABLE {
        return Err(FetchError::BadArchive {
            what: what.to_owned(),
            detail: format!(
                "the executable is larger than {} bytes, far more than any opencode build",
                MAX_EXECUTABLE
            ),
        });
    }
    finish_executable(writer, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths() {
        assert!(check_member_path(Path::new("opencode")).is_ok());
        assert!(check_member_path(Path::new("./dir/opencode")).is_ok());
        assert!(check_member_path(Path::new("../opencode")).is_err());
        assert!(check_member_path(Path::new("a/../../opencode")).is_err());
        assert!(check_member_path(Path::new("/etc/opencode")).is_err());
        assert!(check_member_path(Path::new("c:\\x\\opencode")).is_err());
        assert!(is_candidate(Path::new("opencode"), "opencode"));
        assert!(is_candidate(Path::new("./opencode"), "opencode"));
        assert!(is_candidate(Path::new("bin/opencode"), "opencode"));
        assert!(!is_candidate(Path::new("a/b/opencode"), "opencode"));
        assert!(!is_candidate(Path::new("opencode.exe"), "opencode"));
    }
}
