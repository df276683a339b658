//! The embedded signature's SuperBlob, read and written just enough to swap one blob (the
//! CMS signature) for another of the same slot. apple-codesign has a reader too, but it
//! re-encodes what it reads; this one keeps every other blob's bytes as they are.

use crate::error::{Result, VerificationError};

/// The code signature superblob's slot of the CMS signature.
pub(crate) const CMS_SIGNATURE_SLOT: u32 = 0x10000;

/// An embedded signature superblob: magic, total length, an index of (slot, offset), then
/// the blobs, each starting with its magic and length (big-endian).
pub(crate) struct Superblob<'a> {
    pub(crate) magic: [u8; 4],
    pub(crate) blobs: Vec<(u32, &'a [u8])>,
}

impl<'a> Superblob<'a> {
    pub(crate) fn parse(region: &'a [u8]) -> Result<Self> {
        let truncated = || VerificationError::Truncated {
            what: "the code signature superblob",
        };
        let be = |at: usize| -> Result<u32> {
            region
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| truncated().into())
        };
        let magic = region
            .get(..4)
            .and_then(|m| <[u8; 4]>::try_from(m).ok())
            .ok_or_else(truncated)?;
        let length = be(4)? as usize;
        let count = be(8)? as usize;
        let superblob = region.get(..length).ok_or_else(truncated)?;
        let mut blobs = Vec::with_capacity(count);
        for index in 0..count {
            let slot = be(12 + index * 8)?;
            let offset = be(16 + index * 8)? as usize;
            let blob_length = be(offset + 4)? as usize;
            let blob = superblob
                .get(offset..offset + blob_length)
                .ok_or_else(truncated)?;
            blobs.push((slot, blob));
        }
        Ok(Self { magic, blobs })
    }

    pub(crate) fn write(magic: [u8; 4], blobs: &[(u32, &[u8])]) -> Vec<u8> {
        let header = 12 + 8 * blobs.len();
        let total = header + blobs.iter().map(|(_, b)| b.len()).sum::<usize>();
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&magic);
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&(blobs.len() as u32).to_be_bytes());
        let mut offset = header;
        for (slot, blob) in blobs {
            out.extend_from_slice(&slot.to_be_bytes());
            out.extend_from_slice(&(offset as u32).to_be_bytes());
            offset += blob.len();
        }
        for (_, blob) in blobs {
            out.extend_from_slice(blob);
        }
        out
    }
}
