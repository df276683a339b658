//! PE: the region lives in the overlay, after the last section and before any Authenticode
//! certificate table.
//!
//! ```text
//! [ headers ][ sections … ][ other overlay? ][ 0-7 zero bytes ][ region ][ certificate table ]
//!                                                                ^ 8-aligned         ^ only once signed
//! ```
//!
//! Why the overlay: the Windows loader maps only what the section table names, so bytes past
//! the last section's raw data are inert, and the Authenticode hash covers them (everything
//! but the CheckSum field, the Security directory entry and the certificate table itself).
//! A signature made after packing therefore protects the payload too; a payload appended
//! after signing would be outside the signature, which is why [`inject`] refuses a signed
//! stub: sign after packing, never before.
//!
//! Signing appends the certificate table at the end of the file and records it in the
//! Security data directory (entry 4 of the optional header), whose "virtual address" is,
//! unlike every other directory, a *file offset*. Signers pad the file to 8 bytes before
//! the table; regions are a multiple of [`REGION_ALIGN`] and are placed 8-aligned, so in
//! practice the trailer ends right at the table, and [`region_bounds`] tolerates up to 7
//! zero bytes in between anyway (the trailer's magic ends in a non-zero byte, so the
//! padding cannot be confused with it).
//!
//! [`region_bounds`] runs on the runtime's own (≈150 MB) file at every start, so it reads
//! only the fixed-size headers and the section table, never imports, resources or the
//! certificate contents.

use std::ops::Range;

use goblin::pe::header::Header;

use crate::error::{Error, Result};
use crate::region::REGION_ALIGN;

/// Index of the Security (certificate table) directory among the optional header's data
/// directories.
pub const SECURITY_DIRECTORY: usize = 4;
/// Size of the COFF file header that follows the `PE\0\0` signature.
pub const COFF_HEADER_LEN: usize = 20;
/// Size of one section header.
pub const SECTION_HEADER_LEN: usize = 40;
/// Offset of `CheckSum` inside the optional header (the same for PE32 and PE32+).
pub const CHECKSUM_OFFSET: usize = 64;
/// Offset of the first data directory inside a PE32 optional header.
pub const DATA_DIRECTORIES_OFFSET_PE32: usize = 96;
/// Offset of the first data directory inside a PE32+ optional header (64-bit ImageBase and
/// stack/heap sizes make it 16 bytes longer).
pub const DATA_DIRECTORIES_OFFSET_PE32_PLUS: usize = 112;
/// Most zero bytes a signer puts between the overlay and the certificate table.
const MAX_TABLE_PADDING: usize = 7;

/// The layout facts the region depends on, read from the headers alone.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    /// First byte past the headers, the section table and every section's raw data: the
    /// overlay starts here.
    overlay_start: usize,
    /// File range of the certificate table, if the file is signed.
    certificate_table: Option<Range<usize>>,
    /// File offset of the optional header's `CheckSum` field.
    checksum_offset: usize,
}

/// The bytes within which the region lies: from the end of the last section's raw data to
/// the start of the certificate table (less up to 7 bytes of zero padding) when signed, or
/// to the end of the file when not.
///
/// A certificate table that lies outside the file or overlaps the sections is
/// [`Error::Corrupt`], and so is one that does not end at the end of the file: Authenticode
/// signers always put it last, and whatever follows it is covered by no signature, so bytes
/// after it mean the file was changed after signing (or cut and re-joined).
pub fn region_bounds(data: &[u8]) -> Result<Range<usize>> {
    let layout = read_layout(data)?;
    let Some(table) = layout.certificate_table else {
        return Ok(layout.overlay_start..data.len());
    };
    let floor = layout
        .overlay_start
        .max(table.start.saturating_sub(MAX_TABLE_PADDING));
    let mut end = table.start;
    while end > floor && data[end - 1] == 0 {
        end -= 1;
    }
    Ok(layout.overlay_start..end)
}

/// The stub with `region` appended to its overlay, 8-aligned (zero bytes before it as
/// needed). No header changes, except that a non-zero `CheckSum` is recomputed so that it
/// stays true.
///
/// About the checksum: Windows checks it only for drivers and boot-time DLLs, and signers
/// (osslsigncode, signtool) recompute it because the Authenticode hash skips that field, so
/// for a signed release it does not matter what we write. An unsigned (dev) build keeps a
/// correct value though, because PE validators and some malware scanners count a wrong
/// checksum as a red flag. A zero checksum means "not computed" (the usual for linkers'
/// default output) and stays zero: writing one would be the only header change we make to
/// such a stub, for no reader's benefit.
///
/// Refuses a stub that is already signed: the payload would land outside the signature,
/// and every verifier would then reject (or, worse, ignore) it.
pub fn inject(stub: &[u8], region: &[u8]) -> Result<Vec<u8>> {
    let layout = read_layout(stub)?;
    if let Some(table) = layout.certificate_table {
        return Err(Error::Executable(format!(
            "the PE stub is already Authenticode-signed (certificate table of {} bytes at offset {:#x}): \
             sign after packing, never before; pack the unsigned stub and sign the packed executable",
            table.len(),
            table.start
        )));
    }
    if !region.len().is_multiple_of(REGION_ALIGN) {
        return Err(Error::Executable(format!(
            "payload region of {} bytes is not a multiple of {REGION_ALIGN}; build it with region::build_region",
            region.len()
        )));
    }
    let start = stub.len().next_multiple_of(REGION_ALIGN);
    let total = start + region.len();
    // The Security directory holds 32-bit file offsets: a larger file could not be signed.
    if u32::try_from(total).is_err() {
        return Err(Error::Executable(format!(
            "the packed PE would be {total} bytes; Authenticode cannot sign files of 4 GiB or more"
        )));
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(stub);
    out.resize(start, 0);
    out.extend_from_slice(region);
    let at = layout.checksum_offset;
    if out[at..at + 4] != [0; 4] {
        let sum = checksum(&out, at);
        out[at..at + 4].copy_from_slice(&sum.to_le_bytes());
    }
    Ok(out)
}

/// The PE image checksum of `data` (as `CheckSumMappedFile` computes it), reading the
/// CheckSum field at `checksum_offset` as zero: the one's-complement sum of the
/// little-endian 16-bit words, folded to 16 bits, plus the file length. Shared with the
/// signer, which rewrites it after appending a signature.
pub fn checksum(data: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(2);
    for (i, word) in words.by_ref().enumerate() {
        let at = i * 2;
        if at >= checksum_offset && at < checksum_offset + 4 {
            continue;
        }
        sum += u64::from(u16::from_le_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last);
    }
    // Folding once at the end equals folding after every addition (one's-complement
    // addition is associative), and a u64 cannot overflow below 2^48 words.
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (sum as u32).wrapping_add(data.len() as u32)
}

/// Reads the headers, the section table and the Security directory, and checks that they
/// describe a file that fits in `data`.
fn read_layout(data: &[u8]) -> Result<Layout> {
    let header = Header::parse(data)
        .map_err(|e| Error::Executable(format!("not a valid PE executable: {e}")))?;
    let Some(optional) = header.optional_header else {
        return Err(Error::Executable(
            "PE file has no optional header (an object file, not an executable)".into(),
        ));
    };
    let pe = header.dos_header.pe_pointer as usize;
    let optional_start = pe + 4 + COFF_HEADER_LEN;
    let optional_len = usize::from(header.coff_header.size_of_optional_header);
    let section_table_start = optional_start + optional_len;
    let sections = usize::from(header.coff_header.number_of_sections);
    let section_table_end = section_table_start + sections * SECTION_HEADER_LEN;
    let section_table = data
        .get(section_table_start..section_table_end)
        .ok_or_else(|| {
            Error::corrupt(
                "executable",
                "the PE section table extends past the end of the file (truncated)",
            )
        })?;

    // Section headers are read by hand: their layout is fixed, and goblin would also
    // resolve long section names through the COFF string table, which costs allocations
    // and can fail for reasons that have nothing to do with where the overlay starts.
    let mut overlay_start = section_table_end.max(optional.windows_fields.size_of_headers as usize);
    for section in section_table.chunks_exact(SECTION_HEADER_LEN) {
        let size = u32::from_le_bytes(section[16..20].try_into().unwrap()) as usize;
        let pointer = u32::from_le_bytes(section[20..24].try_into().unwrap()) as usize;
        if size != 0 {
            overlay_start = overlay_start.max(pointer.saturating_add(size));
        }
    }
    if overlay_start > data.len() {
        return Err(Error::corrupt(
            "executable",
            format!(
                "PE sections end at offset {overlay_start:#x}, past the end of the {}-byte file (truncated)",
                data.len()
            ),
        ));
    }

    let directories_offset = match optional.standard_fields.magic {
        goblin::pe::optional_header::MAGIC_64 => DATA_DIRECTORIES_OFFSET_PE32_PLUS,
        _ => DATA_DIRECTORIES_OFFSET_PE32,
    };
    let security_entry_end = directories_offset + (SECURITY_DIRECTORY + 1) * 8;
    let has_security_entry =
        optional.windows_fields.number_of_rva_and_sizes as usize > SECURITY_DIRECTORY;
    if has_security_entry && security_entry_end > optional_len {
        return Err(Error::corrupt(
            "executable",
            "the PE optional header is too small for the data directories it declares",
        ));
    }
    let certificate_table = match optional.data_directories.get_certificate_table() {
        Some(directory) if has_security_entry && directory.size != 0 => {
            let start = directory.virtual_address as usize;
            let end = start.saturating_add(directory.size as usize);
            if end > data.len() {
                return Err(Error::corrupt(
                    "executable",
                    format!(
                        "the Authenticode certificate table ({start:#x}..{end:#x}) extends past the end of the {}-byte file (truncated)",
                        data.len()
                    ),
                ));
            }
            if start < overlay_start {
                return Err(Error::corrupt(
                    "executable",
                    format!(
                        "the Authenticode certificate table starts at {start:#x}, inside the headers or sections (which end at {overlay_start:#x})"
                    ),
                ));
            }
            if end != data.len() {
                return Err(Error::corrupt(
                    "executable",
                    format!(
                        "{} bytes follow the Authenticode certificate table; signers put it last, so the file was changed after signing",
                        data.len() - end
                    ),
                ));
            }
            Some(start..end)
        }
        _ => None,
    };
    Ok(Layout {
        overlay_start,
        certificate_table,
        checksum_offset: optional_start + CHECKSUM_OFFSET,
    })
}

/// Test support (also for the signer's tests, with the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::{COFF_HEADER_LEN, SECTION_HEADER_LEN};

    /// Offset of the PE header in [`minimal_pe`]'s files.
    pub const PE: usize = 0x40;
    /// Offset of the optional header.
    pub const OPTIONAL: usize = PE + 4 + COFF_HEADER_LEN;
    /// Size of the PE32+ optional header with 16 data directories.
    pub const OPTIONAL_LEN: usize = 240;

    /// A minimal PE32+ file: headers to 0x200, one section whose raw data fills
    /// 0x200..0x400, then `overlay`.
    pub fn minimal_pe(overlay: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x400];
        f[0..2].copy_from_slice(b"MZ");
        f[0x3c..0x40].copy_from_slice(&(PE as u32).to_le_bytes());
        f[PE..PE + 4].copy_from_slice(b"PE\0\0");
        f[PE + 4..PE + 6].copy_from_slice(&0x8664u16.to_le_bytes());
        f[PE + 6..PE + 8].copy_from_slice(&1u16.to_le_bytes());
        f[PE + 20..PE + 22].copy_from_slice(&(OPTIONAL_LEN as u16).to_le_bytes());
        f[PE + 22..PE + 24].copy_from_slice(&0x22u16.to_le_bytes());
        f[OPTIONAL..OPTIONAL + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        // SizeOfHeaders, NumberOfRvaAndSizes.
        f[OPTIONAL + 60..OPTIONAL + 64].copy_from_slice(&0x200u32.to_le_bytes());
        f[OPTIONAL + 108..OPTIONAL + 112].copy_from_slice(&16u32.to_le_bytes());
        let section = OPTIONAL + OPTIONAL_LEN;
        debug_assert!(section + SECTION_HEADER_LEN <= 0x200);
        f[section..section + 5].copy_from_slice(b".text");
        f[section + 8..section + 12].copy_from_slice(&0x200u32.to_le_bytes());
        f[section + 12..section + 16].copy_from_slice(&0x1000u32.to_le_bytes());
        f[section + 16..section + 20].copy_from_slice(&0x200u32.to_le_bytes());
        f[section + 20..section + 24].copy_from_slice(&0x200u32.to_le_bytes());
        f[0x200..0x400].fill(0xcc);
        f.extend_from_slice(overlay);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{OPTIONAL, PE};
    use super::*;
    use crate::manifest::tests_support::sample_manifest;
    use crate::region::{build_region, parse_region};

    const SECURITY_ENTRY: usize =
        OPTIONAL + DATA_DIRECTORIES_OFFSET_PE32_PLUS + SECURITY_DIRECTORY * 8;

    fn synthetic(overlay: &[u8]) -> Vec<u8> {
        testing::minimal_pe(overlay)
    }

    fn set_security(f: &mut [u8], start: usize, size: usize) {
        f[SECURITY_ENTRY..SECURITY_ENTRY + 4].copy_from_slice(&(start as u32).to_le_bytes());
        f[SECURITY_ENTRY + 4..SECURITY_ENTRY + 8].copy_from_slice(&(size as u32).to_le_bytes());
    }

    /// Signs as a signer would: zero padding to 8, then a fake certificate table.
    fn fake_sign(mut f: Vec<u8>, padding: usize) -> Vec<u8> {
        f.resize(f.len() + padding, 0);
        let start = f.len();
        let table = [0x30u8; 64];
        f.extend_from_slice(&table);
        set_security(&mut f, start, table.len());
        f
    }

    fn region() -> Vec<u8> {
        build_region(&[0xab; 100], &sample_manifest().to_json(), 4096)
    }

    #[test]
    fn unsigned_bounds_run_from_the_sections_to_eof() {
        let f = synthetic(b"overlay");
        assert_eq!(region_bounds(&f).unwrap(), 0x400..f.len());
        let bare = synthetic(&[]);
        assert_eq!(region_bounds(&bare).unwrap(), 0x400..0x400);
    }

    #[test]
    fn inject_then_parse_unsigned() {
        for odd in 0..REGION_ALIGN {
            let stub = synthetic(&vec![0x11; odd]);
            let packed = inject(&stub, &region()).unwrap();
            assert_eq!(&packed[..stub.len()], &stub[..], "stub bytes changed");
            let start = stub.len().next_multiple_of(REGION_ALIGN);
            assert!(packed[stub.len()..start].iter().all(|b| *b == 0));
            let parsed = parse_region(&packed, region_bounds(&packed).unwrap()).unwrap();
            assert_eq!(parsed.payload_offset as usize, start);
            assert_eq!(parsed.payload_offset % REGION_ALIGN as u64, 0);
            parsed.verify_payload().unwrap();
        }
    }

    #[test]
    fn signed_bounds_skip_up_to_seven_zero_bytes() {
        let packed = inject(&synthetic(&[]), &region()).unwrap();
        let trailer_end = packed.len();
        for padding in 0..=MAX_TABLE_PADDING {
            let signed = fake_sign(packed.clone(), padding);
            let bounds = region_bounds(&signed).unwrap();
            assert_eq!(bounds, 0x400..trailer_end, "padding {padding}");
            let parsed = parse_region(&signed, bounds).unwrap();
            parsed.verify_payload().unwrap();
        }
    }

    #[test]
    fn eight_zero_bytes_before_the_table_are_not_padding() {
        let signed = fake_sign(inject(&synthetic(&[]), &region()).unwrap(), 8);
        let bounds = region_bounds(&signed).unwrap();
        let err = parse_region(&signed, bounds).unwrap_err();
        assert!(matches!(err, Error::NoPayload { .. }), "{err}");
    }

    #[test]
    fn signed_stub_without_payload_has_no_payload() {
        let signed = fake_sign(synthetic(&[]), 0);
        let bounds = region_bounds(&signed).unwrap();
        assert_eq!(bounds, 0x400..0x400);
        assert!(matches!(
            parse_region(&signed, bounds).unwrap_err(),
            Error::NoPayload { .. }
        ));
    }

    #[test]
    fn zero_padding_never_reaches_into_the_sections() {
        // Sections that end in zero bytes, a table right after them: the padding scan must
        // stop at the overlay start.
        let mut f = synthetic(&[]);
        f[0x3f8..0x400].fill(0);
        let signed = fake_sign(f, 0);
        assert_eq!(region_bounds(&signed).unwrap(), 0x400..0x400);
    }

    #[test]
    fn certificate_table_outside_the_file_is_corrupt() {
        let signed = fake_sign(inject(&synthetic(&[]), &region()).unwrap(), 0);
        let len = signed.len();
        let cases = [
            ("past eof", len - 64, 65),
            ("start past eof", len + 8, 8),
            ("u32 overflow", 0xffff_fff0, 0x20),
            ("inside the sections", 0x300, len - 0x300),
            ("inside the headers", 0, len),
            ("not at eof", len - 64, 56),
        ];
        for (what, start, size) in cases {
            let mut f = signed.clone();
            set_security(&mut f, start, size);
            let err = region_bounds(&f).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err}");
        }
    }

    #[test]
    fn truncation_is_an_error_not_a_panic() {
        let signed = fake_sign(inject(&synthetic(&[]), &region()).unwrap(), 0);
        for cut in 0..signed.len() {
            let f = &signed[..cut];
            assert!(
                region_bounds(f).and_then(|b| parse_region(f, b)).is_err(),
                "cut at {cut} accepted"
            );
        }
    }

    #[test]
    fn sections_past_eof_are_corrupt() {
        let f = synthetic(&[]);
        let err = region_bounds(&f[..0x3ff]).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn security_entry_beyond_a_short_optional_header_is_corrupt() {
        let mut f = synthetic(&[]);
        // Claim a 128-byte optional header (ends before entry 4) but 16 directories.
        f[PE + 20..PE + 22].copy_from_slice(&128u16.to_le_bytes());
        assert!(matches!(
            region_bounds(&f).unwrap_err(),
            Error::Corrupt { .. }
        ));
        // With only 4 directories there is no Security entry: unsigned, fine.
        f[OPTIONAL + 108..OPTIONAL + 112].copy_from_slice(&4u32.to_le_bytes());
        f[PE + 20..PE + 22].copy_from_slice(&(112u16 + 32).to_le_bytes());
        assert_eq!(region_bounds(&f).unwrap().end, f.len());
    }

    #[test]
    fn inject_refuses_a_signed_stub() {
        let signed = fake_sign(synthetic(&[]), 0);
        let err = inject(&signed, &region()).unwrap_err();
        assert!(
            err.to_string().contains("sign after packing, never before"),
            "{err}"
        );
    }

    #[test]
    fn inject_refuses_an_unaligned_region() {
        assert!(inject(&synthetic(&[]), &[1, 2, 3]).is_err());
    }

    #[test]
    fn not_a_pe_is_an_executable_error() {
        for data in [&b"MZ"[..], b"MZ\0\0\0\0", &[0u8; 0x100]] {
            assert!(matches!(
                region_bounds(data).unwrap_err(),
                Error::Executable(_)
            ));
        }
        let mut f = synthetic(&[]);
        f[PE] = b'X';
        assert!(matches!(
            region_bounds(&f).unwrap_err(),
            Error::Executable(_)
        ));
    }

    #[test]
    fn zero_checksum_stays_zero_and_a_set_one_is_recomputed() {
        let stub = synthetic(&[]);
        let packed = inject(&stub, &region()).unwrap();
        assert_eq!(packed[OPTIONAL + 64..OPTIONAL + 68], [0; 4]);

        let mut stub = synthetic(&[]);
        stub[OPTIONAL + 64..OPTIONAL + 68].copy_from_slice(&1u32.to_le_bytes());
        let packed = inject(&stub, &region()).unwrap();
        let stored = u32::from_le_bytes(packed[OPTIONAL + 64..OPTIONAL + 68].try_into().unwrap());
        assert_eq!(stored, checksum(&packed, OPTIONAL + 64));
        assert_ne!(stored, 0);
    }

    #[test]
    fn checksum_matches_hand_computation() {
        // Words 0x0201 + 0x0403 + last byte 0x05 = 0x0609, plus length 5 (the field read
        // as zero lies past the end here).
        assert_eq!(checksum(&[1, 2, 3, 4, 5], 8), 0x0609 + 5);
        // Carries fold back in: 0xffff + 0x0002 = 0x1_0001 → 0x0002.
        assert_eq!(checksum(&[0xff, 0xff, 0x02, 0x00], 8), 0x0002 + 4);
        // The field's own four bytes count as zero.
        assert_eq!(checksum(&[9, 9, 9, 9, 1, 0], 0), 0x0001 + 6);
    }
}
