//! The payload region: `[zstd payload][manifest JSON][zero padding][trailer]`.
//!
//! [`build_region`] writes it; [`parse_region`] finds and validates it given the bounds the
//! executable format allows (see [`crate::container`]). Parsing checks the trailer checksum,
//! every bound and the manifest's SHA-256, all cheap; the payload's own SHA-256 is checked
//! while it is decoded (see [`crate::archive`]) or by [`PayloadRegion::verify_payload`].

use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::trailer::{FORMAT_MINOR, MAGIC, TRAILER_LEN, Trailer};

/// Regions are padded so that their length is a multiple of this, so that a region that
/// starts aligned also ends aligned (Authenticode wants the certificate table 8-aligned and
/// would otherwise pad between the region and the table).
pub const REGION_ALIGN: usize = 8;

/// A located payload region inside an executable's bytes.
#[derive(Debug, Clone)]
pub struct PayloadRegion<'a> {
    /// The decoded trailer.
    pub trailer: Trailer,
    /// File offset of the zstd payload.
    pub payload_offset: u64,
    /// The zstd payload.
    pub payload: &'a [u8],
    /// File offset of the manifest JSON.
    pub manifest_offset: u64,
    /// The manifest JSON exactly as stored (its SHA-256 has been checked).
    pub manifest_bytes: &'a [u8],
    /// The parsed, validated manifest.
    pub manifest: Manifest,
    /// File offset of the trailer.
    pub trailer_offset: u64,
}

impl PayloadRegion<'_> {
    /// Hex SHA-256 of the manifest: the content digest that names a runtime directory.
    pub fn manifest_sha256_hex(&self) -> String {
        hex::encode(self.trailer.manifest_sha256)
    }

    /// Hex SHA-256 of the zstd payload, as recorded.
    pub fn payload_sha256_hex(&self) -> String {
        hex::encode(self.trailer.payload_sha256)
    }

    /// Hashes the whole payload and compares it with the trailer.
    pub fn verify_payload(&self) -> Result<()> {
        check_sha256("payload", self.payload, &self.trailer.payload_sha256)
    }

    /// The file range the region occupies, from payload start to trailer end.
    pub fn span(&self) -> Range<u64> {
        self.payload_offset..self.trailer_offset + TRAILER_LEN as u64
    }
}

/// Builds a region from a zstd frame and manifest JSON.
pub fn build_region(payload: &[u8], manifest_json: &[u8], uncompressed_len: u64) -> Vec<u8> {
    let unpadded = payload.len() + manifest_json.len() + TRAILER_LEN;
    let padding = (REGION_ALIGN - unpadded % REGION_ALIGN) % REGION_ALIGN;
    let trailer = Trailer {
        payload_distance: (payload.len() + manifest_json.len() + padding) as u64,
        payload_len: payload.len() as u64,
        manifest_distance: (manifest_json.len() + padding) as u64,
        manifest_len: manifest_json.len() as u64,
        uncompressed_len,
        payload_sha256: Sha256::digest(payload).into(),
        manifest_sha256: Sha256::digest(manifest_json).into(),
        format_minor: FORMAT_MINOR,
    };
    let mut out = Vec::with_capacity(unpadded + padding);
    out.extend_from_slice(payload);
    out.extend_from_slice(manifest_json);
    out.resize(out.len() + padding, 0);
    out.extend_from_slice(&trailer.to_bytes());
    out
}

/// Parses the region whose trailer ends exactly at `bounds.end`; no part of it may lie
/// before `bounds.start`.
pub fn parse_region(file: &[u8], bounds: Range<usize>) -> Result<PayloadRegion<'_>> {
    if bounds.end > file.len() || bounds.start > bounds.end {
        return Err(Error::corrupt(
            "executable",
            "payload bounds lie outside the file",
        ));
    }
    let trailer = Trailer::parse_at_end(&file[bounds.start..bounds.end])?;
    let trailer_offset = bounds.end - TRAILER_LEN;
    let span = |what: &'static str, distance: u64, len: u64| -> Result<Range<usize>> {
        let start = (trailer_offset as u64)
            .checked_sub(distance)
            .filter(|s| *s >= bounds.start as u64)
            .ok_or_else(|| {
                Error::corrupt(
                    "trailer",
                    format!("{what} would start before the payload region (truncated file?)"),
                )
            })?;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= trailer_offset as u64)
            .ok_or_else(|| {
                Error::corrupt("trailer", format!("{what} would overlap the trailer"))
            })?;
        Ok(start as usize..end as usize)
    };
    let payload = span("payload", trailer.payload_distance, trailer.payload_len)?;
    let manifest = span("manifest", trailer.manifest_distance, trailer.manifest_len)?;
    // The writer lays the parts out back to back; demanding exactly that means every byte
    // of the region is covered by a check (the padding must be the writer's zeros).
    if payload.end != manifest.start {
        return Err(Error::corrupt(
            "trailer",
            "payload and manifest are not adjacent",
        ));
    }
    let padding = &file[manifest.end..trailer_offset];
    if padding.len() >= REGION_ALIGN || padding.iter().any(|b| *b != 0) {
        return Err(Error::corrupt(
            "payload region",
            "unexpected bytes between the manifest and the trailer",
        ));
    }
    let manifest_bytes = &file[manifest.clone()];
    check_sha256("manifest", manifest_bytes, &trailer.manifest_sha256)?;
    let parsed = Manifest::from_json(manifest_bytes)?;
    Ok(PayloadRegion {
        payload_offset: payload.start as u64,
        payload: &file[payload],
        manifest_offset: manifest.start as u64,
        manifest_bytes,
        manifest: parsed,
        trailer_offset: trailer_offset as u64,
        trailer,
    })
}

/// Whether `bytes` end with a trailer magic (a cheap test for "already packed").
pub fn ends_with_magic(bytes: &[u8]) -> bool {
    bytes.ends_with(&MAGIC)
}

fn check_sha256(what: &str, bytes: &[u8], expected: &[u8; 32]) -> Result<()> {
    let computed: [u8; 32] = Sha256::digest(bytes).into();
    if &computed != expected {
        return Err(Error::ChecksumMismatch {
            what: what.to_string(),
            expected: hex::encode(expected),
            computed: hex::encode(computed),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests_support::sample_manifest;

    #[test]
    fn round_trip_and_alignment() {
        let manifest = sample_manifest().to_json();
        for payload_len in [0usize, 1, 7, 8, 1000] {
            let payload = vec![0xAB; payload_len];
            let region = build_region(&payload, &manifest, 42);
            assert_eq!(region.len() % REGION_ALIGN, 0);
            let mut file = b"stub bytes".to_vec();
            let start = file.len();
            file.extend_from_slice(&region);
            let parsed = parse_region(&file, start..file.len()).unwrap();
            assert_eq!(parsed.payload, &payload[..]);
            assert_eq!(parsed.manifest, sample_manifest());
            assert_eq!(parsed.payload_offset as usize, start);
            parsed.verify_payload().unwrap();
        }
    }

    #[test]
    fn truncation_is_corrupt_not_a_panic() {
        let manifest = sample_manifest().to_json();
        let region = build_region(&[1; 100], &manifest, 42);
        for cut in 1..region.len() {
            // Keep the end (where the trailer is) and drop a prefix, as a truncated
            // download that lost the middle would.
            let tail = &region[cut..];
            assert!(parse_region(tail, 0..tail.len()).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn flipped_manifest_byte_is_a_checksum_error() {
        let manifest = sample_manifest().to_json();
        let mut region = build_region(&[1; 100], &manifest, 42);
        region[100 + 3] ^= 1;
        let err = parse_region(&region, 0..region.len()).unwrap_err();
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    }
}
