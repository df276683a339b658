//! The PE facts Authenticode depends on, the image digest and the header checksum.
//!
//! goblin parses the DOS, COFF and optional headers; the offsets of the two fields the
//! digest skips (CheckSum and the Security directory entry) and the section table are
//! computed here, because goblin exposes their values but not where they are in the file.

use std::ops::Range;

use goblin::pe::header::Header;
use sha2::{Digest, Sha256};

use crate::error::{CoverageError, Error, PeProblem, Result, UnsupportedError};

// The PE header layout is defined once, beside the payload locator that reads it too.
pub(crate) use openwork_payload::container::pe::checksum;
use openwork_payload::container::pe::{
    CHECKSUM_OFFSET, COFF_HEADER_LEN, DATA_DIRECTORIES_OFFSET_PE32 as DATA_DIRECTORIES_PE32,
    DATA_DIRECTORIES_OFFSET_PE32_PLUS as DATA_DIRECTORIES_PE32_PLUS, SECTION_HEADER_LEN,
    SECURITY_DIRECTORY,
};

/// Certificate tables start on 8-byte boundaries (PE format, "The Attribute Certificate
/// Table").
pub(crate) const TABLE_ALIGN: usize = 8;

/// Where the parts of a PE file are, checked to lie inside the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeImage {
    /// File offset of the optional header's `CheckSum`.
    pub checksum_offset: usize,
    /// File offset of the 8-byte Security data-directory entry.
    pub security_entry_offset: usize,
    /// `SizeOfHeaders`: what the digest hashes before the first section.
    size_of_headers: usize,
    /// Raw data of every section that has any, in file-offset order.
    sections: Vec<Range<usize>>,
    /// The certificate table, if the file is signed. Always ends at the end of the file.
    pub certificate_table: Option<Range<usize>>,
    /// Length of the file.
    len: usize,
}

impl PeImage {
    /// Reads and checks the layout of `data`.
    ///
    /// Refuses (rather than hashing around) anything an Authenticode digest would leave
    /// uncovered or cover twice: a gap or an overlap between the headers and the sections'
    /// raw data, or bytes after the certificate table. Windows would accept some of those
    /// files, but the bytes in such holes could then change without breaking the signature.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let header = Header::parse(data).map_err(|e| malformed(format!("{e}")))?;
        let Some(optional) = header.optional_header else {
            return Err(UnsupportedError::Pe(PeProblem::NoOptionalHeader).into());
        };
        let optional_start = header.dos_header.pe_pointer as usize + 4 + COFF_HEADER_LEN;
        let optional_len = usize::from(header.coff_header.size_of_optional_header);
        let directories = match optional.standard_fields.magic {
            goblin::pe::optional_header::MAGIC_64 => DATA_DIRECTORIES_PE32_PLUS,
            _ => DATA_DIRECTORIES_PE32,
        };
        let security_entry_offset = optional_start + directories + SECURITY_DIRECTORY * 8;
        if (optional.windows_fields.number_of_rva_and_sizes as usize) <= SECURITY_DIRECTORY
            || directories + (SECURITY_DIRECTORY + 1) * 8 > optional_len
        {
            return Err(UnsupportedError::Pe(PeProblem::NoSecurityDirectory).into());
        }
        let size_of_headers = optional.windows_fields.size_of_headers as usize;
        let section_table_start = optional_start + optional_len;
        let section_table_end = section_table_start
            + usize::from(header.coff_header.number_of_sections) * SECTION_HEADER_LEN;
        if section_table_end > size_of_headers {
            return Err(malformed(format!(
                "the section table ends at {section_table_end:#x}, past SizeOfHeaders \
                 ({size_of_headers:#x})"
            )));
        }
        if size_of_headers > data.len() {
            return Err(malformed(format!(
                "SizeOfHeaders is {size_of_headers:#x} but the file has only {} bytes \
                 (truncated?)",
                data.len()
            )));
        }

        // Section headers are read by hand: the layout is fixed, and goblin would also
        // resolve long names through the COFF string table, which can fail for reasons
        // that have nothing to do with where the raw data is.
        let mut sections = Vec::new();
        for section in data[section_table_start..section_table_end].chunks_exact(SECTION_HEADER_LEN)
        {
            let size = u32::from_le_bytes(section[16..20].try_into().expect("4 bytes")) as usize;
            let pointer = u32::from_le_bytes(section[20..24].try_into().expect("4 bytes")) as usize;
            if size == 0 {
                continue;
            }
            let end = pointer.saturating_add(size);
            if end > data.len() {
                return Err(malformed(format!(
                    "section {} has raw data at {pointer:#x}..{end:#x}, past the end of the \
                     {}-byte file (truncated?)",
                    String::from_utf8_lossy(&section[..8]).trim_end_matches('\0'),
                    data.len()
                )));
            }
            sections.push(pointer..end);
        }
        sections.sort_by_key(|s| s.start);
        let mut covered = size_of_headers;
        for section in &sections {
            if section.start != covered {
                return Err(UnsupportedError::Pe(PeProblem::NotContiguous {
                    found: section.start,
                    expected: covered,
                })
                .into());
            }
            covered = section.end;
        }

        let certificate_table = match optional.data_directories.get_certificate_table() {
            Some(entry) if entry.size != 0 => {
                let start = entry.virtual_address as usize;
                let end = start.saturating_add(entry.size as usize);
                if end > data.len() {
                    return Err(CoverageError::TablePastEnd {
                        start,
                        end,
                        len: data.len(),
                    }
                    .into());
                }
                if start < covered {
                    return Err(CoverageError::TableInsideImage { start, covered }.into());
                }
                if end != data.len() {
                    return Err(CoverageError::AfterTable {
                        count: data.len() - end,
                    }
                    .into());
                }
                if !start.is_multiple_of(TABLE_ALIGN) {
                    return Err(CoverageError::TableMisaligned { start }.into());
                }
                Some(start..end)
            }
            _ => None,
        };

        Ok(Self {
            checksum_offset: optional_start + CHECKSUM_OFFSET,
            security_entry_offset,
            size_of_headers,
            sections,
            certificate_table,
            len: data.len(),
        })
    }

    /// Where the signed content ends: the start of the certificate table, or the end of
    /// the file.
    pub fn content_end(&self) -> usize {
        self.certificate_table
            .as_ref()
            .map_or(self.len, |table| table.start)
    }

    /// The Authenticode SHA-256 digest of `data` (the bytes this image was parsed from):
    /// the headers without CheckSum and the Security entry, the sections in file-offset
    /// order, then everything up to the certificate table (the overlay, where the payload
    /// lives). Headers and sections are contiguous ([`PeImage::parse`] checks), so the
    /// "remaining data" of the specification starts right after the last section.
    pub fn digest(&self, data: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(&data[..self.checksum_offset]);
        hasher.update(&data[self.checksum_offset + 4..self.security_entry_offset]);
        hasher.update(&data[self.security_entry_offset + 8..self.size_of_headers]);
        let mut end = self.size_of_headers;
        for section in &self.sections {
            hasher.update(&data[section.clone()]);
            end = section.end;
        }
        hasher.update(&data[end..self.content_end()]);
        hasher.finalize().into()
    }
}

fn malformed(problem: String) -> Error {
    UnsupportedError::MalformedPe { problem }.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    use openwork_payload::container::pe::testing::minimal_pe as synthetic;

    #[test]
    fn the_digest_skips_checksum_and_security_entry_but_covers_the_overlay() {
        let f = synthetic(b"overlay!");
        let image = PeImage::parse(&f).unwrap();
        let digest = image.digest(&f);
        let mut changed = f.clone();
        changed[image.checksum_offset] ^= 0xff;
        changed[image.security_entry_offset + 7] ^= 0xff;
        // The changed entry now names a table of 0xff000000 bytes: parse would refuse it,
        // so hash with the original layout.
        assert_eq!(image.digest(&changed), digest);
        let mut overlay = f.clone();
        *overlay.last_mut().unwrap() ^= 1;
        assert_ne!(image.digest(&overlay), digest);
    }

    #[test]
    fn a_truncated_section_is_an_error_naming_it() {
        let f = synthetic(&[]);
        let error = PeImage::parse(&f[..0x300]).unwrap_err().to_string();
        assert!(
            error.contains(".text") && error.contains("truncated"),
            "{error}"
        );
    }

    #[test]
    fn certificate_tables_must_be_last_inside_the_file_and_aligned() {
        let set = |f: &mut Vec<u8>, start: u32, size: u32| {
            let image = PeImage::parse(&synthetic(&[])).unwrap();
            let at = image.security_entry_offset;
            f[at..at + 4].copy_from_slice(&start.to_le_bytes());
            f[at + 4..at + 8].copy_from_slice(&size.to_le_bytes());
        };
        let mut f = synthetic(&[0; 16]);
        set(&mut f, 0x400, 0x100);
        let error = PeImage::parse(&f).unwrap_err().to_string();
        assert!(error.contains("past the end"), "{error}");
        set(&mut f, 0x400, 8);
        let error = PeImage::parse(&f).unwrap_err().to_string();
        assert!(error.contains("8 bytes follow"), "{error}");
        set(&mut f, 0x404, 12);
        let error = PeImage::parse(&f).unwrap_err().to_string();
        assert!(error.contains("aligned"), "{error}");
        set(&mut f, 0x300, 0x110);
        let error = PeImage::parse(&f).unwrap_err().to_string();
        assert!(error.contains("inside the headers or sections"), "{error}");
        set(&mut f, 0x408, 8);
        let image = PeImage::parse(&f).unwrap();
        assert_eq!(image.certificate_table, Some(0x408..0x410));
        assert_eq!(image.content_end(), 0x408);
    }

    #[test]
    fn checksum_ignores_its_own_field_and_counts_an_odd_last_byte() {
        let mut f = synthetic(&[1, 2, 3]);
        let image = PeImage::parse(&f).unwrap();
        let sum = checksum(&f, image.checksum_offset);
        f[image.checksum_offset..image.checksum_offset + 4].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(checksum(&f, image.checksum_offset), sum);
        f.push(0);
        assert_eq!(
            checksum(&f, image.checksum_offset),
            sum + 1,
            "only the length grew"
        );
    }
}
