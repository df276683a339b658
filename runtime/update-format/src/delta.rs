//! The encodings of update contents: zstd, and zstd with the old content as a reference
//! prefix (what `zstd --patch-from=OLD --long` writes).
//!
//! A delta is one zstd frame compressed with `OLD` referenced as a prefix of the input:
//! matches reach back into the old content as if it preceded the new one. Two parameters
//! make that work for executables of 185 MB:
//!
//! - the window is at least as large as the larger content (`window_log` of
//!   [`window_log_for`]: its bit length, as zstd's own `--patch-from` chooses, at least
//!   [`MIN_WINDOW_LOG`]), so a match from any place of the new content back to the same
//!   place of the old one (about one old content's length away) is in reach;
//! - long-distance matching, which finds those far matches at a cost of memory and not of
//!   ratio.
//!
//! The decoder must allow that window ([`MAX_WINDOW_LOG`]; zstd refuses frames with windows
//! above 128 MiB by default). It decodes into a buffer of exactly the size the signed
//! metadata names, never more: a delta that would produce more, or less, is an error,
//! and what it produced is checked against the signed SHA-256 ([`reconstruct`]).
//!
//! Level [`LEVEL`] (19) is what the floor was measured with (`zstd --patch-from -19
//! --long=28`); the publisher's time for it is in docs/UPDATES.md.

use sha2::{Digest, Sha256};
use zstd::zstd_safe::{CParameter, DCtx, DParameter};

use crate::custom::{Content, Encoding};
use crate::error::{Error, Result};

/// The zstd level of deltas and compressed contents.
pub const LEVEL: i32 = 19;
/// The smallest window: zstd's `--long` default (128 MiB).
pub const MIN_WINDOW_LOG: u32 = 27;
/// The largest window a decoder accepts (2 GiB, zstd's limit on 64-bit hosts is 31): the
/// contents are executables of a few hundred MB.
pub const MAX_WINDOW_LOG: u32 = 31;

/// The window for a delta from `reference_len` bytes to `new_len` bytes: the bit length of
/// the larger, as zstd's `--patch-from` chooses it (`highbit(max) + 1`).
pub fn window_log_for(reference_len: usize, new_len: usize) -> u32 {
    let larger = reference_len.max(new_len).max(1) as u64;
    let bits = 64 - larger.leading_zeros();
    bits.clamp(MIN_WINDOW_LOG, MAX_WINDOW_LOG)
}

/// A delta from `reference` to `new` (`reference` empty: plain compression with the same
/// parameters).
///
/// Through zstd's streaming encoder, fed in 128 KiB pieces as the zstd CLI feeds it, with
/// the size pledged: measured on opencode 1.18.29 -> 1.18.30 (185 MB each), the one-shot
/// `ZSTD_compress2` with the same parameters and reference gave 983 KB in 28 s, the
/// streaming encoder 236 KB in 15 s.
pub fn diff(reference: &[u8], new: &[u8], level: i32) -> Result<Vec<u8>> {
    use std::io::Write;
    let fail = |what: &str, e: std::io::Error| Error::Decode {
        what: format!("the zstd encoder ({what})"),
        reason: e.to_string(),
    };
    let window_log = window_log_for(reference.len(), new.len());
    let out = Vec::with_capacity(new.len() / 8);
    let mut encoder = if reference.is_empty() {
        zstd::stream::write::Encoder::new(out, level)
    } else {
        zstd::stream::write::Encoder::with_ref_prefix(out, level, reference)
    }
    .map_err(|e| fail("starting", e))?;
    for parameter in [
        CParameter::WindowLog(window_log),
        CParameter::EnableLongDistanceMatching(true),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(true),
    ] {
        encoder
            .set_parameter(parameter)
            .map_err(|e| fail("parameters", e))?;
    }
    encoder
        .set_pledged_src_size(Some(new.len() as u64))
        .map_err(|e| fail("parameters", e))?;
    for piece in new.chunks(128 * 1024) {
        encoder
            .write_all(piece)
            .map_err(|e| fail("compressing", e))?;
    }
    encoder.finish().map_err(|e| fail("compressing", e))
}

/// Plain compression of `content` (a `stub` or `sidecar` target).
pub fn compress(content: &[u8], level: i32) -> Result<Vec<u8>> {
    diff(&[], content, level)
}

/// Decodes `patch` against `reference` into exactly `size` bytes.
pub fn apply(reference: &[u8], patch: &[u8], size: u64) -> Result<Vec<u8>> {
    let what = if reference.is_empty() {
        "the compressed content"
    } else {
        "the delta"
    };
    let fail = |code: usize| Error::Decode {
        what: what.into(),
        reason: zstd::zstd_safe::get_error_name(code).to_owned(),
    };
    let size = usize::try_from(size).map_err(|_| Error::Decode {
        what: what.into(),
        reason: format!("{size} bytes do not fit in memory on this host"),
    })?;
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .map_err(fail)?;
    if !reference.is_empty() {
        dctx.ref_prefix(reference).map_err(fail)?;
    }
    let mut out = Vec::with_capacity(size);
    // Decoding into a buffer of the signed size: zstd stops with "destination buffer too
    // small" rather than write past it.
    let written = dctx.decompress(&mut out, patch).map_err(fail)?;
    if written != size {
        return Err(Error::Length {
            what: format!("{what}'s output"),
            found: written as u64,
            expected: format!("the metadata says {size}"),
        });
    }
    Ok(out)
}

/// Decompresses a `stub` or `sidecar` target into exactly `size` bytes.
pub fn decompress(compressed: &[u8], size: u64) -> Result<Vec<u8>> {
    apply(&[], compressed, size)
}

/// Decodes a target's bytes into its `to` content and checks it: the reference must be
/// `from` (for deltas), the output exactly `to`'s size and SHA-256.
pub fn reconstruct(
    encoding: Encoding,
    from: Option<(&Content, &[u8])>,
    bytes: &[u8],
    to: &Content,
) -> Result<Vec<u8>> {
    let output = match (encoding, from) {
        (Encoding::Identity, _) => bytes.to_vec(),
        (Encoding::Zstd, _) => decompress(bytes, to.size)?,
        (Encoding::ZstdPatch, Some((from, reference))) => {
            check_content("the delta's reference", from, reference)?;
            apply(reference, bytes, to.size)?
        }
        (Encoding::ZstdPatch, None) => {
            return Err(Error::Decode {
                what: "the delta".into(),
                reason: "no reference content was given".into(),
            });
        }
    };
    check_content("the reconstructed content", to, &output)?;
    Ok(output)
}

/// `bytes` are `content`: size and SHA-256.
pub fn check_content(what: &str, content: &Content, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 != content.size {
        return Err(Error::Length {
            what: what.into(),
            found: bytes.len() as u64,
            expected: format!("the metadata says {}", content.size),
        });
    }
    let computed = hex::encode(Sha256::digest(bytes));
    if computed != content.sha256 {
        return Err(Error::HashMismatch {
            what: what.into(),
            expected: content.sha256.clone(),
            computed,
        });
    }
    Ok(())
}

/// The content `bytes` are.
pub fn content_of(bytes: &[u8]) -> Content {
    Content {
        sha256: hex::encode(Sha256::digest(bytes)),
        size: bytes.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn a_delta_of_a_small_change_is_small_and_reconstructs() {
        let old = pseudo_random(4 << 20, 7);
        let mut new = old.clone();
        new[1000..1100].copy_from_slice(&pseudo_random(100, 9));
        new.extend_from_slice(b"appended");
        let patch = diff(&old, &new, 3).unwrap();
        assert!(patch.len() < 16 * 1024, "{} bytes of 4 MiB", patch.len());
        let from = content_of(&old);
        let to = content_of(&new);
        let rebuilt = reconstruct(Encoding::ZstdPatch, Some((&from, &old)), &patch, &to).unwrap();
        assert_eq!(rebuilt, new);
    }

    #[test]
    fn a_delta_applied_to_other_content_or_with_a_wrong_size_is_refused() {
        let old = pseudo_random(1 << 20, 1);
        let new = [&old[..], b"more"].concat();
        let patch = diff(&old, &new, 3).unwrap();
        let other = pseudo_random(1 << 20, 2);
        let error = reconstruct(
            Encoding::ZstdPatch,
            Some((&content_of(&old), &other)),
            &patch,
            &content_of(&new),
        )
        .unwrap_err();
        assert!(matches!(error, Error::HashMismatch { .. }), "{error}");
        // The metadata says fewer bytes than the delta produces: stopped, not grown.
        let error = apply(&old, &patch, new.len() as u64 - 1).unwrap_err();
        assert!(matches!(error, Error::Decode { .. }), "{error}");
        let error = apply(&old, &patch, new.len() as u64 + 1).unwrap_err();
        assert!(matches!(error, Error::Length { .. }), "{error}");
    }

    #[test]
    fn the_window_covers_the_larger_content() {
        assert_eq!(window_log_for(0, 10), MIN_WINDOW_LOG);
        // opencode 1.18.33 (185 MB) to 1.19.5 (214 MB): 2^28 = 268 MB.
        assert_eq!(window_log_for(184_700_000, 214_000_000), 28);
        assert_eq!(window_log_for(usize::MAX, 1), MAX_WINDOW_LOG);
    }
}
