//! The fixed-size trailer that ends every payload region.
//!
//! Byte layout (all integers little-endian), [`TRAILER_LEN`] = 128 bytes:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0   | 8  | `payload_distance`: trailer start − payload start |
//! | 8   | 8  | `payload_len`: bytes of the zstd frame |
//! | 16  | 8  | `manifest_distance`: trailer start − manifest start |
//! | 24  | 8  | `manifest_len`: bytes of the manifest JSON |
//! | 32  | 8  | `uncompressed_len`: bytes of the tar inside the zstd frame |
//! | 40  | 32 | `payload_sha256`: SHA-256 of the zstd frame |
//! | 72  | 32 | `manifest_sha256`: SHA-256 of the manifest JSON |
//! | 104 | 4  | `flags`: reserved, written as 0, ignored by 1.x readers |
//! | 108 | 4  | `trailer_check`: first 4 bytes of SHA-256 over bytes 0..108 and 112..128 |
//! | 112 | 4  | `trailer_len`: 128 for format 1 |
//! | 116 | 2  | `format_major` |
//! | 118 | 2  | `format_minor` |
//! | 120 | 8  | [`MAGIC`] |
//!
//! The version and the magic sit at the very end so that a reader can always find them by
//! reading the last 16 bytes, whatever size a later major version gives the trailer. Offsets
//! are distances back from the trailer, not file offsets: signing a PE or Mach-O moves or
//! grows other parts of the file, never the region itself.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Eight bytes that end every region: `OWSV2PL` and a format-independent marker byte.
pub const MAGIC: [u8; 8] = *b"OWSV2PL\x01";
/// Size of a format-1 trailer.
pub const TRAILER_LEN: usize = 128;
/// Bytes at the end of any trailer that every format version keeps: length, version, magic.
pub const TRAILER_TAIL_LEN: usize = 16;
/// The major format version this crate reads and writes.
pub const FORMAT_MAJOR: u16 = 1;
/// The minor format version this crate writes (readers accept any minor of their major).
/// 1.1: the payload is a run of zstd frames with their content sizes, which readers may
/// decode in parallel; 1.0 wrote one frame. Either reads as one zstd stream.
pub const FORMAT_MINOR: u16 = 1;

/// A decoded, checksum-verified trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    /// Trailer start minus payload start.
    pub payload_distance: u64,
    /// Length of the zstd frame.
    pub payload_len: u64,
    /// Trailer start minus manifest start.
    pub manifest_distance: u64,
    /// Length of the manifest JSON.
    pub manifest_len: u64,
    /// Length of the tar stream once decompressed.
    pub uncompressed_len: u64,
    /// SHA-256 of the zstd frame.
    pub payload_sha256: [u8; 32],
    /// SHA-256 of the manifest JSON.
    pub manifest_sha256: [u8; 32],
    /// Minor version the writer used.
    pub format_minor: u16,
}

impl Trailer {
    /// Encodes the trailer as format 1.
    pub fn to_bytes(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[0..8].copy_from_slice(&self.payload_distance.to_le_bytes());
        out[8..16].copy_from_slice(&self.payload_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.manifest_distance.to_le_bytes());
        out[24..32].copy_from_slice(&self.manifest_len.to_le_bytes());
        out[32..40].copy_from_slice(&self.uncompressed_len.to_le_bytes());
        out[40..72].copy_from_slice(&self.payload_sha256);
        out[72..104].copy_from_slice(&self.manifest_sha256);
        // 104..108: flags, zero.
        out[112..116].copy_from_slice(&(TRAILER_LEN as u32).to_le_bytes());
        out[116..118].copy_from_slice(&FORMAT_MAJOR.to_le_bytes());
        out[118..120].copy_from_slice(&self.format_minor.to_le_bytes());
        out[120..128].copy_from_slice(&MAGIC);
        let check = trailer_check(&out);
        out[108..112].copy_from_slice(&check);
        out
    }

    /// Reads the version tail from the last [`TRAILER_TAIL_LEN`] bytes of `region_prefix`
    /// (everything up to the region's end) and decodes the trailer that ends there.
    pub fn parse_at_end(region_prefix: &[u8]) -> Result<Trailer> {
        if region_prefix.len() < TRAILER_TAIL_LEN {
            return Err(Error::NoPayload {
                detail: "file too small to hold a payload trailer".into(),
            });
        }
        let tail = &region_prefix[region_prefix.len() - TRAILER_TAIL_LEN..];
        if tail[8..16] != MAGIC {
            return Err(Error::NoPayload {
                detail: "no payload trailer magic at the end of the payload region".into(),
            });
        }
        let trailer_len = u32::from_le_bytes(tail[0..4].try_into().unwrap()) as usize;
        let major = u16::from_le_bytes(tail[4..6].try_into().unwrap());
        let minor = u16::from_le_bytes(tail[6..8].try_into().unwrap());
        if major > FORMAT_MAJOR {
            return Err(Error::NewerFormat {
                found_major: major,
                found_minor: minor,
                supported_major: FORMAT_MAJOR,
            });
        }
        if major != FORMAT_MAJOR || trailer_len != TRAILER_LEN {
            return Err(Error::Corrupt {
                what: "trailer",
                detail: format!(
                    "format {major}.{minor} with a {trailer_len}-byte trailer is not a valid format {FORMAT_MAJOR} trailer"
                ),
            });
        }
        if region_prefix.len() < TRAILER_LEN {
            return Err(Error::Corrupt {
                what: "trailer",
                detail: "file ends inside the trailer (truncated)".into(),
            });
        }
        let raw: &[u8; TRAILER_LEN] = region_prefix[region_prefix.len() - TRAILER_LEN..]
            .try_into()
            .unwrap();
        if raw[108..112] != trailer_check(raw) {
            return Err(Error::Corrupt {
                what: "trailer",
                detail: "trailer checksum mismatch".into(),
            });
        }
        let u64_at = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().unwrap());
        Ok(Trailer {
            payload_distance: u64_at(0),
            payload_len: u64_at(8),
            manifest_distance: u64_at(16),
            manifest_len: u64_at(24),
            uncompressed_len: u64_at(32),
            payload_sha256: raw[40..72].try_into().unwrap(),
            manifest_sha256: raw[72..104].try_into().unwrap(),
            format_minor: minor,
        })
    }
}

/// SHA-256 over the trailer minus its own check field, cut to 4 bytes. It catches a flipped
/// offset or length before anything is read through it; the payload and manifest have
/// full SHA-256 sums of their own.
fn trailer_check(raw: &[u8; TRAILER_LEN]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(&raw[0..108]);
    hasher.update(&raw[112..TRAILER_LEN]);
    hasher.finalize()[0..4].try_into().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trailer {
        Trailer {
            payload_distance: 1000,
            payload_len: 900,
            manifest_distance: 100,
            manifest_len: 100,
            uncompressed_len: 4096,
            payload_sha256: [7; 32],
            manifest_sha256: [9; 32],
            format_minor: FORMAT_MINOR,
        }
    }

    #[test]
    fn round_trips() {
        let bytes = sample().to_bytes();
        assert_eq!(Trailer::parse_at_end(&bytes).unwrap(), sample());
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let bytes = sample().to_bytes();
        for at in 0..TRAILER_LEN {
            let mut flipped = bytes;
            flipped[at] ^= 0x20;
            assert!(
                Trailer::parse_at_end(&flipped).is_err(),
                "flip at {at} accepted"
            );
        }
    }

    #[test]
    fn newer_major_says_so() {
        let mut bytes = sample().to_bytes();
        bytes[116..118].copy_from_slice(&2u16.to_le_bytes());
        let err = Trailer::parse_at_end(&bytes).unwrap_err();
        assert!(
            matches!(err, Error::NewerFormat { found_major: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
