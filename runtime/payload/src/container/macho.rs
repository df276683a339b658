//! Mach-O: the region is the content of a segment of its own, `__OWPAYLOAD`, with one
//! section, `__payload`, placed just before `__LINKEDIT`.
//!
//! # Why a segment, and why there
//!
//! `codesign` (and apple-codesign) require `__LINKEDIT` to be the last segment and the code
//! signature to be the last thing in it and in the file; apple-codesign silently drops
//! anything appended after `__LINKEDIT`. So the region must sit *inside* the file's segment
//! layout, before `__LINKEDIT`, where signing hashes it like any other page and never moves
//! it. The runtime then finds it by reading its own load commands, which costs the same
//! whatever the region's size.
//!
//! # What [`inject`] changes
//!
//! ```text
//! before: [header+cmds][__TEXT][__DATA…][__LINKEDIT: fixups, symbols, strings, (signature)]
//! after:  [header+cmds'][__TEXT][__DATA…][__OWPAYLOAD: region, zero pad][__LINKEDIT: same bytes]
//! ```
//!
//! 1. A linker's ad-hoc signature (zig and ld sign arm64 output) is removed: its load
//!    command is dropped and its bytes are cut off the end of `__LINKEDIT`. The artifact is
//!    signed again after packing.
//! 2. A new `LC_SEGMENT_64` is inserted right before `__LINKEDIT`'s load command, using
//!    the free header padding the linker left between the load commands and the first
//!    section. Its file offset and address are `__LINKEDIT`'s old ones; its size is the
//!    region rounded up to [`PAGE_SIZE`].
//! 3. `__LINKEDIT` moves up by that size, in the file and in memory, and every load command
//!    field holding a file offset at or after the old `__LINKEDIT` start moves with it.
//! 4. If the stub uses chained fixups, their per-segment table gets an empty entry for the
//!    new segment (`add_segment_to_chained_fixups` says how and why).
//!
//! The code and data of `__TEXT` and `__DATA` are never rewritten, and `__LINKEDIT`'s bytes
//! are copied unchanged apart from step 4. Section ordinals do not change (`__LINKEDIT` has
//! no sections), so the symbol table stays valid.
//!
//! # Why this is hand-written
//!
//! No crate edits the load commands of a linked Mach-O safely: goblin and object only read
//! them (object's writer emits relocatable objects), apple-codesign rewrites only the
//! signature, and Deno's libsui, which does insert a segment on arm64, appends the data
//! after `__LINKEDIT` on x86_64, shells out to `codesign` on macOS and leaves the chained
//! fixups table one segment short. Newer dyld (macOS 26 and later) rejects that
//! ("chained fixups, seg_count does not match number of segments"): the tolerance that
//! Apple's `ctf_insert` relied on was narrowed to a trailing `__CTF` segment. The edit
//! itself is small and fully checked: unknown load commands are refused rather than guessed
//! at, and the result is re-read with the same locator the runtime uses.

use std::ops::Range;

use goblin::container::Endian;
use goblin::mach::constants::{
    S_GB_ZEROFILL, S_REGULAR, S_THREAD_LOCAL_ZEROFILL, S_ZEROFILL, SECTION_TYPE, VM_PROT_READ,
};
use goblin::mach::header::{Header64, MH_EXECUTE, SIZEOF_HEADER_64};
use goblin::mach::load_command::{self as lc, CommandVariant, LoadCommand};

use crate::error::{Error, Result};

/// Name of the segment that holds the region.
pub const SEGMENT_NAME: &str = "__OWPAYLOAD";
/// Name of the one section of [`SEGMENT_NAME`]; its content is exactly the region.
pub const SECTION_NAME: &str = "__payload";
/// Granule of the new segment's size and of `__LINKEDIT`'s move: the 16 KiB page of arm64
/// macOS, a multiple of x86_64's 4 KiB page, so one value keeps both aligned.
pub const PAGE_SIZE: u64 = 0x4000;
/// Bytes of load command space [`inject`] needs: one `segment_command_64` and one
/// `section_64`.
pub const SEGMENT_COMMAND_LEN: usize = SEGMENT_COMMAND_64_LEN + SECTION_64_LEN;
/// Bytes of load command space a signer adds for `LC_CODE_SIGNATURE`. [`inject`] keeps
/// this much free so that the packed file can still be signed.
pub const CODE_SIGNATURE_COMMAND_LEN: usize = 16;

const LINKEDIT: &str = "__LINKEDIT";
const SEGMENT_COMMAND_64_LEN: usize = 72;
const SECTION_64_LEN: usize = 80;
/// log2 of the section alignment: the region is built 8-aligned.
const SECTION_ALIGN_LOG2: u32 = 3;
/// Bytes added to the chained fixups blob: one `seg_info_offset` entry and 4 bytes that
/// keep what follows 8-aligned.
const CHAINED_FIXUPS_GROWTH: usize = 8;

// Load commands goblin 0.10 does not name.
const LC_ATOM_INFO: u32 = 0x36;
const LC_FUNCTION_VARIANTS: u32 = 0x37;
const LC_FUNCTION_VARIANT_FIXUPS: u32 = 0x38;
const LC_TARGET_TRIPLE: u32 = 0x39;

/// Bounds of the region: the file range of the `__payload` section of `__OWPAYLOAD`. Reads
/// only the header and load commands, so it costs the same for any payload size.
pub fn region_bounds(data: &[u8]) -> Result<Range<usize>> {
    let image = Image::parse(data).map_err(|e| e.into_error(Kind::Corrupt))?;
    let Some(segment) = image.segment(SEGMENT_NAME) else {
        return Err(Error::NoPayload {
            detail: format!("the Mach-O has no {SEGMENT_NAME} segment"),
        });
    };
    let section = (0..segment.nsects)
        .map(|i| image.section(segment, i))
        .find(|s| s.sectname == name16(SECTION_NAME))
        .ok_or_else(|| {
            Error::corrupt(
                "executable",
                format!("the {SEGMENT_NAME} segment has no {SECTION_NAME} section"),
            )
        })?;
    let start = u64::from(section.offset);
    let end = start.saturating_add(section.size);
    if end > data.len() as u64 {
        return Err(Error::corrupt(
            "executable",
            format!(
                "the {SECTION_NAME} section ends at byte {end} but the file has only {} bytes (truncated download?)",
                data.len()
            ),
        ));
    }
    if start < segment.fileoff || end > segment.fileoff.saturating_add(segment.filesize) {
        return Err(Error::corrupt(
            "executable",
            format!("the {SECTION_NAME} section lies outside its segment"),
        ));
    }
    Ok(start as usize..end as usize)
}

/// Puts the region into a new `__OWPAYLOAD` segment before `__LINKEDIT` (see the module
/// docs). Removes a linker's ad-hoc signature; sign the result afterwards.
pub fn inject(stub: &[u8], region: &[u8]) -> Result<Vec<u8>> {
    let image = Image::parse(stub).map_err(|e| e.into_error(Kind::Executable))?;
    let plan = Plan::new(&image, region.len()).map_err(Error::Executable)?;
    let packed = plan.write(&image, region).map_err(Error::Executable)?;
    // Read the result back with the runtime's own locator.
    let at = plan.linkedit.fileoff as usize;
    if region_bounds(&packed)? != (at..at + region.len()) {
        return Err(Error::Executable(
            "the packed Mach-O does not read back with the region where it was put (a packer bug)"
                .into(),
        ));
    }
    Ok(packed)
}

/// How a parse failure is reported: the runtime reading itself calls damage `Corrupt`; the
/// packager reading a stub calls anything unusable an `Executable` error.
#[derive(Clone, Copy)]
enum Kind {
    Corrupt,
    Executable,
}

/// A parse failure: either a kind of file this module never handles (always an
/// `Executable` error) or a damaged structure.
enum ParseError {
    Unsupported(String),
    Malformed(String),
}

impl ParseError {
    fn into_error(self, kind: Kind) -> Error {
        match (self, kind) {
            (ParseError::Unsupported(m), _) | (ParseError::Malformed(m), Kind::Executable) => {
                Error::Executable(m)
            }
            (ParseError::Malformed(m), Kind::Corrupt) => Error::corrupt("executable", m),
        }
    }
}

/// The header and load commands of a thin, little-endian, 64-bit Mach-O.
struct Image<'a> {
    data: &'a [u8],
    header: Header64,
    commands: Vec<LoadCommand>,
    segments: Vec<Segment>,
}

/// The fields of an `LC_SEGMENT_64` this module uses.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Index of its load command in [`Image::commands`].
    command: usize,
    /// File offset of its load command.
    offset: usize,
    segname: [u8; 16],
    vmaddr: u64,
    vmsize: u64,
    fileoff: u64,
    filesize: u64,
    nsects: u32,
}

/// The fields of a `section_64` this module uses.
#[derive(Debug, Clone, Copy)]
struct Section {
    sectname: [u8; 16],
    size: u64,
    offset: u32,
    flags: u32,
}

impl<'a> Image<'a> {
    fn parse(data: &'a [u8]) -> std::result::Result<Self, ParseError> {
        use ParseError::{Malformed, Unsupported};
        match data.get(0..4) {
            Some([0xcf, 0xfa, 0xed, 0xfe]) => {}
            Some([0xca, 0xfe, 0xba, 0xbe | 0xbf]) => {
                return Err(Unsupported(
                    "universal (fat) Mach-O files are not supported: pack each architecture's thin stub".into(),
                ));
            }
            Some([0xce, 0xfa, 0xed, 0xfe] | [0xfe, 0xed, 0xfa, 0xce]) => {
                return Err(Unsupported(
                    "32-bit Mach-O is not a supported target".into(),
                ));
            }
            Some([0xfe, 0xed, 0xfa, 0xcf]) => {
                return Err(Unsupported(
                    "big-endian Mach-O is not a supported target".into(),
                ));
            }
            _ => return Err(Unsupported("not a 64-bit Mach-O file".into())),
        }
        let header_bytes: &[u8; SIZEOF_HEADER_64] = data
            .get(..SIZEOF_HEADER_64)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Malformed("the file ends inside the Mach-O header".into()))?;
        let header = *Header64::from_bytes(header_bytes);
        let commands_end = SIZEOF_HEADER_64
            .checked_add(header.sizeofcmds as usize)
            .filter(|end| *end <= data.len())
            .ok_or_else(|| Malformed("the load commands run past the end of the file".into()))?;
        // Commands are parsed from a slice that ends with them, so that no command can read
        // into section contents.
        let area = &data[..commands_end];
        // Each command takes at least 8 bytes: this bounds the loop and the allocation.
        if header.ncmds as usize > header.sizeofcmds as usize / 8 {
            return Err(Malformed(format!(
                "{} load commands cannot fit in {} bytes",
                header.ncmds, header.sizeofcmds
            )));
        }
        let mut commands = Vec::with_capacity(header.ncmds as usize);
        let mut segments = Vec::new();
        let mut offset = SIZEOF_HEADER_64;
        for index in 0..header.ncmds as usize {
            let start = offset;
            if start + 8 > commands_end {
                return Err(Malformed(format!(
                    "load command {index} starts past the end of the load commands"
                )));
            }
            let size = u32_at(data, start + 4) as usize;
            if size < 8 || !size.is_multiple_of(8) || size > commands_end - start {
                return Err(Malformed(format!(
                    "load command {index} has an invalid size {size}"
                )));
            }
            let cmd = u32_at(data, start);
            if size < min_command_len(cmd) {
                return Err(Malformed(format!(
                    "load command {index} ({}) is too short ({size} bytes)",
                    command_name(cmd)
                )));
            }
            let command = LoadCommand::parse(area, &mut offset, Endian::Little)
                .map_err(|e| Malformed(format!("load command {index} is unreadable: {e}")))?;
            if let CommandVariant::Segment64(seg) = &command.command {
                if size != SEGMENT_COMMAND_64_LEN + SECTION_64_LEN * seg.nsects as usize {
                    return Err(Malformed(format!(
                        "segment command {index} has size {size} for {} sections",
                        seg.nsects
                    )));
                }
                segments.push(Segment {
                    command: index,
                    offset: start,
                    segname: seg.segname,
                    vmaddr: seg.vmaddr,
                    vmsize: seg.vmsize,
                    fileoff: seg.fileoff,
                    filesize: seg.filesize,
                    nsects: seg.nsects,
                });
            }
            commands.push(command);
        }
        Ok(Image {
            data,
            header,
            commands,
            segments,
        })
    }

    fn segment(&self, name: &str) -> Option<&Segment> {
        let name = name16(name);
        self.segments.iter().find(|s| s.segname == name)
    }

    /// Section `index` of `segment` (the command's size was checked against `nsects`).
    fn section(&self, segment: &Segment, index: u32) -> Section {
        let at = segment.offset + SEGMENT_COMMAND_64_LEN + SECTION_64_LEN * index as usize;
        Section {
            sectname: self.data[at..at + 16].try_into().unwrap(),
            size: u64_at(self.data, at + 40),
            offset: u32_at(self.data, at + 48),
            flags: u32_at(self.data, at + 64),
        }
    }

    fn command_bytes(&self, command: &LoadCommand) -> &'a [u8] {
        &self.data[command.offset..command.offset + command.command.cmdsize()]
    }

    /// End of the load commands.
    fn commands_end(&self) -> usize {
        SIZEOF_HEADER_64 + self.header.sizeofcmds as usize
    }

    /// Where the first segment or section content begins: the load commands may grow up
    /// to here.
    fn content_start(&self) -> u64 {
        let mut start = self.data.len() as u64;
        for segment in &self.segments {
            if segment.fileoff > 0 && segment.filesize > 0 {
                start = start.min(segment.fileoff);
            }
            for index in 0..segment.nsects {
                let section = self.section(segment, index);
                let kind = section.flags & SECTION_TYPE;
                let zero_fill =
                    matches!(kind, S_ZEROFILL | S_GB_ZEROFILL | S_THREAD_LOCAL_ZEROFILL);
                if !zero_fill && section.size > 0 && section.offset > 0 {
                    start = start.min(u64::from(section.offset));
                }
            }
        }
        start
    }
}

/// Everything [`inject`] decided before writing a byte.
struct Plan {
    /// `__LINKEDIT` as found.
    linkedit: Segment,
    /// Where the kept part of `__LINKEDIT` ends: the signature's offset if one is removed.
    linkedit_cut: u64,
    /// How far `__LINKEDIT` moves: the region rounded up to [`PAGE_SIZE`].
    shift: u64,
    /// The chained fixups blob `(dataoff, datasize)` and its rewritten bytes, if any.
    chained_fixups: Option<(u64, u64, Vec<u8>)>,
    /// Index of the `LC_CODE_SIGNATURE` command being removed.
    signature: Option<usize>,
}

impl Plan {
    fn new(image: &Image<'_>, region_len: usize) -> std::result::Result<Plan, String> {
        if image.header.filetype != MH_EXECUTE {
            return Err(format!(
                "the stub is a Mach-O of file type {}, not an executable (MH_EXECUTE)",
                image.header.filetype
            ));
        }
        if image.segment(SEGMENT_NAME).is_some() {
            return Err(format!(
                "the stub already has a {SEGMENT_NAME} segment: pack a freshly built stub"
            ));
        }
        let Some(linkedit) = image.segment(LINKEDIT).copied() else {
            return Err("the stub has no __LINKEDIT segment".into());
        };
        if image.segments.last().map(|s| s.command) != Some(linkedit.command) {
            return Err("__LINKEDIT is not the last segment command; the stub's layout is not one a linker writes".into());
        }
        let linkedit_end = linkedit.fileoff.saturating_add(linkedit.filesize);
        for other in image
            .segments
            .iter()
            .filter(|s| s.command != linkedit.command)
        {
            if other.filesize > 0 && other.fileoff.saturating_add(other.filesize) > linkedit.fileoff
            {
                return Err(format!(
                    "segment {} lies after the start of __LINKEDIT in the file",
                    display_name(&other.segname)
                ));
            }
            if other.vmsize > 0 && other.vmaddr.saturating_add(other.vmsize) > linkedit.vmaddr {
                return Err(format!(
                    "segment {} lies after the start of __LINKEDIT in memory",
                    display_name(&other.segname)
                ));
            }
        }
        if !linkedit.fileoff.is_multiple_of(0x1000) || !linkedit.vmaddr.is_multiple_of(0x1000) {
            return Err("__LINKEDIT does not start on a page boundary".into());
        }
        let file_len = image.data.len() as u64;
        if file_len > linkedit_end {
            return Err(format!(
                "the stub has {} bytes after the end of __LINKEDIT (data appended after linking?); Mach-O signing requires __LINKEDIT to end the file, pack a freshly linked stub",
                file_len - linkedit_end
            ));
        }
        if file_len < linkedit_end {
            return Err("__LINKEDIT runs past the end of the file (truncated stub?)".into());
        }

        // The linker's signature, if any, must be the last thing in __LINKEDIT.
        let mut signature = None;
        let mut linkedit_cut = linkedit_end;
        for (index, command) in image.commands.iter().enumerate() {
            if command.command.cmd() == lc::LC_CODE_SIGNATURE {
                if signature.is_some() {
                    return Err("the stub has two LC_CODE_SIGNATURE commands".into());
                }
                let bytes = image.command_bytes(command);
                let dataoff = u64::from(u32_at(bytes, 8));
                let datasize = u64::from(u32_at(bytes, 12));
                if dataoff < linkedit.fileoff || dataoff + datasize > linkedit_end {
                    return Err("the stub's code signature lies outside __LINKEDIT".into());
                }
                signature = Some(index);
                linkedit_cut = dataoff;
            }
        }
        // Nothing but the signature may start at or after the cut: it is all dropped.
        for (index, command) in image.commands.iter().enumerate() {
            // Segments were checked above.
            if Some(index) == signature || command.command.cmd() == lc::LC_SEGMENT_64 {
                continue;
            }
            let mut bytes = image.command_bytes(command).to_vec();
            rewrite_file_offsets(command.command.cmd(), &mut bytes, |v| {
                if v >= linkedit_cut && linkedit_cut < linkedit_end {
                    Err(format!(
                        "load command {} points at byte {v}, inside or after the code signature",
                        command_name(command.command.cmd())
                    ))
                } else {
                    Ok(v)
                }
            })?;
        }

        // Room for our command, and for the signature command signing adds back.
        let removed = if signature.is_some() {
            CODE_SIGNATURE_COMMAND_LEN
        } else {
            0
        };
        let needed_end =
            image.commands_end() - removed + SEGMENT_COMMAND_LEN + CODE_SIGNATURE_COMMAND_LEN;
        let content_start = image.content_start();
        if needed_end as u64 > content_start {
            let free = content_start.saturating_sub(image.commands_end() as u64);
            let needed = SEGMENT_COMMAND_LEN + CODE_SIGNATURE_COMMAND_LEN - removed;
            return Err(format!(
                "the stub has {free} bytes of free space after its load commands but {needed} are needed ({SEGMENT_COMMAND_LEN} for the {SEGMENT_NAME} segment, {CODE_SIGNATURE_COMMAND_LEN} for the code signature added when signing); link the stub with more header padding (-Wl,-headerpad,0x1000; runtime/build.rs passes it for macOS targets)"
            ));
        }

        let shift = (region_len as u64).div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE;

        let mut chained_fixups = None;
        if let Some(command) = image
            .commands
            .iter()
            .find(|c| c.command.cmd() == lc::LC_DYLD_CHAINED_FIXUPS)
        {
            let bytes = image.command_bytes(command);
            let dataoff = u64::from(u32_at(bytes, 8));
            let datasize = u64::from(u32_at(bytes, 12));
            if dataoff < linkedit.fileoff || dataoff + datasize > linkedit_cut {
                return Err("the stub's chained fixups lie outside __LINKEDIT".into());
            }
            let blob = &image.data[dataoff as usize..(dataoff + datasize) as usize];
            let insert_at = image.segments.len() - 1;
            let rewritten = add_segment_to_chained_fixups(blob, insert_at, image.segments.len())?;
            chained_fixups = Some((dataoff, datasize, rewritten));
        }

        if linkedit
            .vmaddr
            .checked_add(shift)
            .and_then(|v| {
                v.checked_add(linkedit.vmsize.max(linkedit_cut - linkedit.fileoff) + PAGE_SIZE)
            })
            .is_none()
        {
            return Err("__LINKEDIT would move past the end of the address space".into());
        }
        let growth = match chained_fixups {
            Some(_) => CHAINED_FIXUPS_GROWTH as u64,
            None => 0,
        };
        let new_linkedit_end = linkedit_cut + shift + growth;
        if new_linkedit_end > u64::from(u32::MAX) {
            return Err(format!(
                "the packed file would be {new_linkedit_end} bytes; Mach-O file offsets are 32-bit, so it must stay under 4 GiB"
            ));
        }
        Ok(Plan {
            linkedit,
            linkedit_cut,
            shift,
            chained_fixups,
            signature,
        })
    }

    /// Bytes the chained fixups blob grows by.
    fn chained_growth(&self) -> u64 {
        match self.chained_fixups {
            Some(_) => CHAINED_FIXUPS_GROWTH as u64,
            None => 0,
        }
    }

    /// Where a file offset of the stub ends up in the packed file.
    fn map_offset(&self, v: u64) -> u64 {
        if v < self.linkedit.fileoff {
            return v;
        }
        let mut mapped = v + self.shift;
        if let Some((dataoff, datasize, _)) = &self.chained_fixups
            && v >= dataoff + datasize
        {
            mapped += CHAINED_FIXUPS_GROWTH as u64;
        }
        mapped
    }

    fn write(&self, image: &Image<'_>, region: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let linkedit = &self.linkedit;
        let mut commands =
            Vec::with_capacity(image.header.sizeofcmds as usize + SEGMENT_COMMAND_LEN);
        let mut ncmds = 0u32;
        for (index, command) in image.commands.iter().enumerate() {
            if Some(index) == self.signature {
                continue;
            }
            let cmd = command.command.cmd();
            let mut bytes = image.command_bytes(command).to_vec();
            if index == linkedit.command {
                commands.extend_from_slice(&self.payload_segment_command(region.len()));
                ncmds += 1;
                let filesize = self.linkedit_cut - linkedit.fileoff + self.chained_growth();
                put_u64(&mut bytes, 24, linkedit.vmaddr + self.shift);
                put_u64(&mut bytes, 32, filesize.div_ceil(PAGE_SIZE) * PAGE_SIZE);
                put_u64(&mut bytes, 48, filesize);
            }
            if cmd == lc::LC_DYLD_CHAINED_FIXUPS {
                let datasize = u32_at(&bytes, 12) + CHAINED_FIXUPS_GROWTH as u32;
                put_u32(&mut bytes, 12, datasize);
            }
            rewrite_file_offsets(cmd, &mut bytes, |v| Ok(self.map_offset(v)))?;
            commands.extend_from_slice(&bytes);
            ncmds += 1;
        }

        let old_linkedit = linkedit.fileoff as usize;
        let cut = self.linkedit_cut as usize;
        let new_len = old_linkedit
            + self.shift as usize
            + (cut - old_linkedit)
            + self.chained_growth() as usize;
        let mut out = Vec::with_capacity(new_len);
        out.extend_from_slice(&image.data[..old_linkedit]);

        // The new header and load commands; the old ones are shorter, and whatever follows
        // the new ones up to the first content is header padding, which must be zero.
        let commands_area_end = image.commands_end().max(SIZEOF_HEADER_64 + commands.len());
        out[SIZEOF_HEADER_64..commands_area_end].fill(0);
        out[SIZEOF_HEADER_64..SIZEOF_HEADER_64 + commands.len()].copy_from_slice(&commands);
        put_u32(&mut out, 16, ncmds);
        put_u32(&mut out, 20, commands.len() as u32);

        out.extend_from_slice(region);
        out.resize(old_linkedit + self.shift as usize, 0);
        match &self.chained_fixups {
            Some((dataoff, datasize, rewritten)) => {
                let (start, end) = (*dataoff as usize, (dataoff + datasize) as usize);
                out.extend_from_slice(&image.data[old_linkedit..start]);
                out.extend_from_slice(rewritten);
                out.extend_from_slice(&image.data[end..cut]);
            }
            None => out.extend_from_slice(&image.data[old_linkedit..cut]),
        }
        debug_assert_eq!(out.len(), new_len);
        Ok(out)
    }

    /// The `LC_SEGMENT_64` + `section_64` for the region.
    fn payload_segment_command(&self, region_len: usize) -> [u8; SEGMENT_COMMAND_LEN] {
        let mut c = [0u8; SEGMENT_COMMAND_LEN];
        let (vmaddr, fileoff) = (self.linkedit.vmaddr, self.linkedit.fileoff);
        put_u32(&mut c, 0, lc::LC_SEGMENT_64);
        put_u32(&mut c, 4, SEGMENT_COMMAND_LEN as u32);
        c[8..24].copy_from_slice(&name16(SEGMENT_NAME));
        put_u64(&mut c, 24, vmaddr);
        put_u64(&mut c, 32, self.shift);
        put_u64(&mut c, 40, fileoff);
        put_u64(&mut c, 48, self.shift);
        put_u32(&mut c, 56, VM_PROT_READ);
        put_u32(&mut c, 60, VM_PROT_READ);
        put_u32(&mut c, 64, 1);
        put_u32(&mut c, 68, 0);
        let s = &mut c[SEGMENT_COMMAND_64_LEN..];
        s[0..16].copy_from_slice(&name16(SECTION_NAME));
        s[16..32].copy_from_slice(&name16(SEGMENT_NAME));
        put_u64(s, 32, vmaddr);
        put_u64(s, 40, region_len as u64);
        put_u32(s, 48, fileoff as u32);
        put_u32(s, 52, SECTION_ALIGN_LOG2);
        put_u32(s, 64, S_REGULAR);
        c
    }
}

/// Applies `map` to every field of a load command that holds a file offset, writing back
/// the result. Zero means "absent" and stays zero. Commands whose layout this module does
/// not know are refused: a file offset left unshifted would break the packed binary
/// silently.
fn rewrite_file_offsets(
    cmd: u32,
    bytes: &mut [u8],
    mut map: impl FnMut(u64) -> std::result::Result<u64, String>,
) -> std::result::Result<(), String> {
    let name = command_name(cmd);
    for field in offset_fields(cmd, bytes.len())? {
        let (at, width) = match field {
            Field::U32(at) => (at, 4),
            Field::U64(at) => (at, 8),
        };
        if at + width > bytes.len() {
            return Err(format!(
                "load command {name} is too short ({} bytes)",
                bytes.len()
            ));
        }
        let old = match field {
            Field::U32(_) => u64::from(u32_at(bytes, at)),
            Field::U64(_) => u64_at(bytes, at),
        };
        if old == 0 {
            continue;
        }
        let new = map(old)?;
        match field {
            Field::U32(_) => {
                let new = u32::try_from(new).map_err(|_| {
                    format!("load command {name} would need a file offset of {new}, past 4 GiB")
                })?;
                put_u32(bytes, at, new);
            }
            Field::U64(_) => put_u64(bytes, at, new),
        }
    }
    Ok(())
}

/// A file offset field of a load command, by its position in the command.
#[derive(Clone, Copy)]
enum Field {
    U32(usize),
    U64(usize),
}

/// The load commands that are a `linkedit_data_command` (cmd, cmdsize, dataoff, datasize):
/// 16 bytes, one file offset at byte 8.
const LINKEDIT_DATA_COMMANDS: [u32; 11] = [
    lc::LC_CODE_SIGNATURE,
    lc::LC_SEGMENT_SPLIT_INFO,
    lc::LC_FUNCTION_STARTS,
    lc::LC_DATA_IN_CODE,
    lc::LC_DYLIB_CODE_SIGN_DRS,
    lc::LC_LINKER_OPTIMIZATION_HINT,
    lc::LC_DYLD_EXPORTS_TRIE,
    lc::LC_DYLD_CHAINED_FIXUPS,
    LC_ATOM_INFO,
    LC_FUNCTION_VARIANTS,
    LC_FUNCTION_VARIANT_FIXUPS,
];

/// The file offset fields of a load command of kind `cmd` and `len` bytes.
fn offset_fields(cmd: u32, len: usize) -> std::result::Result<Vec<Field>, String> {
    use Field::{U32, U64};
    Ok(match cmd {
        lc::LC_SEGMENT_64 => {
            // The segment's fileoff, then each section's `offset` and `reloff`.
            let nsects = len.saturating_sub(SEGMENT_COMMAND_64_LEN) / SECTION_64_LEN;
            let mut fields = vec![U64(40)];
            for i in 0..nsects {
                let at = SEGMENT_COMMAND_64_LEN + SECTION_64_LEN * i;
                fields.extend([U32(at + 48), U32(at + 56)]);
            }
            fields
        }
        // symoff, stroff.
        lc::LC_SYMTAB => vec![U32(8), U32(16)],
        // tocoff, modtaboff, extrefsymoff, indirectsymoff, extreloff, locreloff.
        lc::LC_DYSYMTAB => [32, 40, 48, 56, 64, 72].map(U32).to_vec(),
        // rebase, bind, weak_bind, lazy_bind and export offsets.
        lc::LC_DYLD_INFO | lc::LC_DYLD_INFO_ONLY => [8, 16, 24, 32, 40].map(U32).to_vec(),
        // linkedit_data_command: dataoff.
        cmd if LINKEDIT_DATA_COMMANDS.contains(&cmd) => vec![U32(8)],
        // twolevel_hints_command.offset; encryption_info's cryptoff (inside __TEXT).
        lc::LC_TWOLEVEL_HINTS | lc::LC_ENCRYPTION_INFO | lc::LC_ENCRYPTION_INFO_64 => vec![U32(8)],
        // note_command.offset.
        lc::LC_NOTE => vec![U64(24)],
        // Commands without file offsets.
        lc::LC_UUID
        | lc::LC_BUILD_VERSION
        | lc::LC_VERSION_MIN_MACOSX
        | lc::LC_VERSION_MIN_IPHONEOS
        | lc::LC_VERSION_MIN_TVOS
        | lc::LC_VERSION_MIN_WATCHOS
        | lc::LC_SOURCE_VERSION
        | lc::LC_MAIN
        | lc::LC_LOAD_DYLINKER
        | lc::LC_ID_DYLINKER
        | lc::LC_DYLD_ENVIRONMENT
        | lc::LC_LOAD_DYLIB
        | lc::LC_LOAD_WEAK_DYLIB
        | lc::LC_REEXPORT_DYLIB
        | lc::LC_LAZY_LOAD_DYLIB
        | lc::LC_LOAD_UPWARD_DYLIB
        | lc::LC_ID_DYLIB
        | lc::LC_RPATH
        | lc::LC_UNIXTHREAD
        | lc::LC_THREAD
        | lc::LC_LINKER_OPTION
        | lc::LC_SUB_FRAMEWORK
        | lc::LC_SUB_UMBRELLA
        | lc::LC_SUB_CLIENT
        | lc::LC_SUB_LIBRARY
        | lc::LC_PREBOUND_DYLIB
        | lc::LC_PREBIND_CKSUM
        | lc::LC_ROUTINES_64
        | lc::LC_IDENT
        | LC_TARGET_TRIPLE => Vec::new(),
        _ => {
            return Err(format!(
                "the stub has load command {}, which this packer does not know; it cannot tell whether it holds file offsets that must move with __LINKEDIT",
                command_name(cmd)
            ));
        }
    })
}

/// The smallest valid size of a load command of kind `cmd`, for the fields this module
/// reads; commands it only copies need just their 8-byte header.
fn min_command_len(cmd: u32) -> usize {
    match cmd {
        lc::LC_SEGMENT_64 => SEGMENT_COMMAND_64_LEN,
        lc::LC_SYMTAB => 24,
        lc::LC_DYSYMTAB => 80,
        lc::LC_DYLD_INFO | lc::LC_DYLD_INFO_ONLY => 48,
        lc::LC_NOTE => 40,
        lc::LC_ENCRYPTION_INFO => 20,
        lc::LC_ENCRYPTION_INFO_64 => 24,
        lc::LC_TWOLEVEL_HINTS => 16,
        cmd if LINKEDIT_DATA_COMMANDS.contains(&cmd) => 16,
        _ => 8,
    }
}

/// Gives the chained fixups of a stub an empty entry for a segment inserted at segment
/// index `insert_at` (`__LINKEDIT`'s index; it moves up by one).
///
/// `dyld_chained_starts_in_image` holds one `seg_info_offset` per segment, and dyld since
/// macOS 26 refuses an image whose `seg_count` differs from its number of segments (unless
/// the extra one is a trailing `__CTF`). The entries from `insert_at` on belong to
/// `__LINKEDIT`, which never has fixups, so they are all zero and the new table is the old
/// one plus a zero. The table grows by [`CHAINED_FIXUPS_GROWTH`] bytes (entry and padding,
/// keeping what follows 8-aligned); every offset in the blob that points past the table
/// moves by the same amount. Page starts, imports and symbol names are copied unchanged.
fn add_segment_to_chained_fixups(
    blob: &[u8],
    insert_at: usize,
    segment_count: usize,
) -> std::result::Result<Vec<u8>, String> {
    let bad =
        |what: &str| format!("the stub's chained fixups are not laid out as expected: {what}");
    if blob.len() < 28 {
        return Err(bad("header truncated"));
    }
    if u32_at(blob, 0) != 0 {
        return Err(bad("unknown fixups_version"));
    }
    let starts = u32_at(blob, 4) as usize;
    let imports = u32_at(blob, 8) as usize;
    let symbols = u32_at(blob, 12) as usize;
    if starts < 28 || starts + 4 > blob.len() {
        return Err(bad("starts_offset out of range"));
    }
    let seg_count = u32_at(blob, starts) as usize;
    if seg_count != segment_count {
        return Err(bad(&format!(
            "seg_count is {seg_count} but the stub has {segment_count} segments"
        )));
    }
    let table_end = starts + 4 + 4 * seg_count;
    if table_end > blob.len() || imports < table_end || symbols < table_end {
        return Err(bad("the segment table overlaps imports or symbols"));
    }
    let entry = |i: usize| u32_at(blob, starts + 4 + 4 * i) as usize;
    for i in 0..seg_count {
        let e = entry(i);
        if i >= insert_at && e != 0 {
            return Err(bad("__LINKEDIT has fixups"));
        }
        if e != 0 && starts + e < table_end {
            return Err(bad("a segment's starts lie inside the segment table"));
        }
    }
    let grow = CHAINED_FIXUPS_GROWTH;
    let mut out = Vec::with_capacity(blob.len() + grow);
    out.extend_from_slice(&blob[..table_end]);
    out.extend_from_slice(&[0u8; CHAINED_FIXUPS_GROWTH]);
    out.extend_from_slice(&blob[table_end..]);
    put_u32(&mut out, 8, (imports + grow) as u32);
    put_u32(&mut out, 12, (symbols + grow) as u32);
    put_u32(&mut out, starts, (seg_count + 1) as u32);
    for i in 0..seg_count {
        let e = entry(i);
        if e != 0 {
            put_u32(&mut out, starts + 4 + 4 * i, (e + grow) as u32);
        }
    }
    Ok(out)
}

/// A segment or section name as the 16 NUL-padded bytes Mach-O stores.
fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..name.len()].copy_from_slice(name.as_bytes());
    out
}

fn display_name(name: &[u8; 16]) -> String {
    let end = name.iter().position(|b| *b == 0).unwrap_or(16);
    String::from_utf8_lossy(&name[..end]).into_owned()
}

fn command_name(cmd: u32) -> String {
    match lc::cmd_to_str(cmd) {
        "LC_UNKNOWN" | "" => format!("{cmd:#x}"),
        name => name.to_string(),
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests_support::sample_manifest;
    use crate::region::{build_region, parse_region};

    const TEXT_VM: u64 = 0x1_0000_0000;
    const LINKEDIT_OFF: usize = 0x8000;

    /// What the synthetic stub carries.
    #[derive(Clone, Copy)]
    struct Shape {
        signature: bool,
        chained_fixups: bool,
        /// Free bytes between the load commands and `__text`.
        padding: usize,
    }

    const SIGNED: Shape = Shape {
        signature: true,
        chained_fixups: false,
        padding: 0x400,
    };

    /// Builds a small arm64 executable as a linker lays it out: `__PAGEZERO`, `__TEXT`
    /// (header, load commands, padding, `__text`), `__DATA`, and `__LINKEDIT` holding
    /// fixups, function starts, symbols, strings and optionally a signature, last.
    fn synthetic(shape: Shape) -> Vec<u8> {
        let mut linkedit = Vec::new();
        // Fixups: chained fixups or dyld info rebase opcodes.
        let fixups_len = if shape.chained_fixups {
            linkedit.extend_from_slice(&chained_fixups_blob());
            linkedit.len()
        } else {
            linkedit.extend_from_slice(&[0x11, 0x22, 0x33, 0x00, 0, 0, 0, 0]);
            8
        };
        let starts_at = linkedit.len();
        linkedit.extend_from_slice(&[0x80, 0x02, 0x10, 0, 0, 0, 0, 0]);
        let symbols_at = linkedit.len();
        linkedit.extend((0..32u8).map(|i| i ^ 0x5a));
        let strings_at = linkedit.len();
        linkedit.extend_from_slice(b"\0_main\0_helper\0\0\0");
        let strings_len = linkedit.len() - strings_at;
        linkedit.resize(linkedit.len().next_multiple_of(16), 0);
        let signature_at = linkedit.len();
        if shape.signature {
            linkedit.extend_from_slice(&[0xfa, 0xde, 0x0c, 0xc0]);
            linkedit.resize(linkedit.len() + 60, 0xee);
        }
        let abs = |at: usize| (LINKEDIT_OFF + at) as u32;

        let mut cmds: Vec<Vec<u8>> = vec![
            segment("__PAGEZERO", 0, TEXT_VM, 0, 0, &[]),
            // __text's offset is patched below, once the commands' size is known.
            segment(
                "__TEXT",
                TEXT_VM,
                0x4000,
                0,
                0x4000,
                &[("__text", 0, 0x100)],
            ),
            segment(
                "__DATA",
                TEXT_VM + 0x4000,
                0x4000,
                0x4000,
                0x4000,
                &[("__data", 0x4000, 0x80)],
            ),
            segment(
                "__LINKEDIT",
                TEXT_VM + 0x8000,
                (linkedit.len() as u64).next_multiple_of(0x4000),
                LINKEDIT_OFF as u64,
                linkedit.len() as u64,
                &[],
            ),
        ];
        if shape.chained_fixups {
            cmds.push(words(&[
                lc::LC_DYLD_CHAINED_FIXUPS,
                16,
                abs(0),
                fixups_len as u32,
            ]));
        } else {
            cmds.push(words(&[
                lc::LC_DYLD_INFO_ONLY,
                48,
                abs(0),
                fixups_len as u32,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ]));
        }
        cmds.push(words(&[lc::LC_FUNCTION_STARTS, 16, abs(starts_at), 8]));
        cmds.push(words(&[lc::LC_DATA_IN_CODE, 16, abs(starts_at + 8), 0]));
        cmds.push(words(&[
            lc::LC_SYMTAB,
            24,
            abs(symbols_at),
            2,
            abs(strings_at),
            strings_len as u32,
        ]));
        let mut dysymtab = vec![0u32; 20];
        dysymtab[0] = lc::LC_DYSYMTAB;
        dysymtab[1] = 80;
        dysymtab[14] = abs(symbols_at + 16); // indirectsymoff
        dysymtab[15] = 2;
        cmds.push(words(&dysymtab));
        cmds.push(words(&[lc::LC_MAIN, 24, 0x1000, 0, 0, 0]));
        cmds.push(words(&[lc::LC_UUID, 24, 1, 2, 3, 4]));
        if shape.signature {
            cmds.push(words(&[
                lc::LC_CODE_SIGNATURE,
                16,
                abs(signature_at),
                (linkedit.len() - signature_at) as u32,
            ]));
        }
        let sizeofcmds: usize = cmds.iter().map(Vec::len).sum();
        let text_start = SIZEOF_HEADER_64 + sizeofcmds + shape.padding;
        // Patch __text's offset and address.
        let text = &mut cmds[1];
        put_u64(
            text,
            SEGMENT_COMMAND_64_LEN + 32,
            TEXT_VM + text_start as u64,
        );
        put_u32(text, SEGMENT_COMMAND_64_LEN + 48, text_start as u32);

        let mut out = words(&[
            0xfeed_facf,
            0x0100_000c,
            0,
            MH_EXECUTE,
            cmds.len() as u32,
            sizeofcmds as u32,
            0x0020_0085,
            0,
        ]);
        for cmd in &cmds {
            out.extend_from_slice(cmd);
        }
        out.resize(text_start, 0);
        out.extend((0..0x100u32).map(|i| (i * 7 + 3) as u8));
        out.resize(0x4000, 0);
        out.extend((0..0x80u32).map(|i| (i * 13 + 1) as u8));
        out.resize(LINKEDIT_OFF, 0);
        out.extend_from_slice(&linkedit);
        out
    }

    /// Chained fixups for the four segments, with starts for `__DATA` (index 2).
    fn chained_fixups_blob() -> Vec<u8> {
        let mut b = words(&[0, 32, 80, 84, 1, 1, 0, 0]);
        b.extend(words(&[4, 0, 0, 24, 0])); // starts_in_image at 32; ends at 52
        b.resize(56, 0);
        b.extend(words(&[24])); // starts_in_segment at 56: size
        b.extend_from_slice(&0x4000u16.to_le_bytes());
        b.extend_from_slice(&6u16.to_le_bytes());
        b.extend_from_slice(&0x4000u64.to_le_bytes());
        b.extend(words(&[0]));
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0x10u16.to_le_bytes());
        b.resize(80, 0);
        b.extend(words(&[1 | (1 << 9)])); // one import: ordinal 1, name at 1
        b.extend_from_slice(b"\0_foo\0");
        b.resize(96, 0);
        b
    }

    fn words(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn segment(
        name: &str,
        vmaddr: u64,
        vmsize: u64,
        fileoff: u64,
        filesize: u64,
        sections: &[(&str, u32, u64)],
    ) -> Vec<u8> {
        let mut c = vec![0u8; SEGMENT_COMMAND_64_LEN + SECTION_64_LEN * sections.len()];
        put_u32(&mut c, 0, lc::LC_SEGMENT_64);
        let len = c.len() as u32;
        put_u32(&mut c, 4, len);
        c[8..24].copy_from_slice(&name16(name));
        put_u64(&mut c, 24, vmaddr);
        put_u64(&mut c, 32, vmsize);
        put_u64(&mut c, 40, fileoff);
        put_u64(&mut c, 48, filesize);
        put_u32(&mut c, 56, 3);
        put_u32(&mut c, 60, 3);
        put_u32(&mut c, 64, sections.len() as u32);
        for (i, (sect, offset, size)) in sections.iter().enumerate() {
            let s = &mut c[SEGMENT_COMMAND_64_LEN + SECTION_64_LEN * i..];
            s[0..16].copy_from_slice(&name16(sect));
            s[16..32].copy_from_slice(&name16(name));
            put_u64(s, 32, vmaddr + u64::from(*offset) - fileoff);
            put_u64(s, 40, *size);
            put_u32(s, 48, *offset);
        }
        c
    }

    fn region() -> Vec<u8> {
        build_region(&[0xab; 5000], &sample_manifest().to_json(), 42)
    }

    fn command(image: &Image<'_>, cmd: u32) -> Option<Vec<u8>> {
        image
            .commands
            .iter()
            .find(|c| c.command.cmd() == cmd)
            .map(|c| image.command_bytes(c).to_vec())
    }

    fn segment_names(image: &Image<'_>) -> Vec<String> {
        image
            .segments
            .iter()
            .map(|s| display_name(&s.segname))
            .collect()
    }

    #[test]
    fn injected_region_is_found_and_parses() {
        let stub = synthetic(SIGNED);
        let region = region();
        let packed = inject(&stub, &region).unwrap();
        let bounds = region_bounds(&packed).unwrap();
        assert_eq!(bounds, LINKEDIT_OFF..LINKEDIT_OFF + region.len());
        assert_eq!(&packed[bounds.clone()], &region[..]);
        let parsed = parse_region(&packed, bounds).unwrap();
        parsed.verify_payload().unwrap();
        assert_eq!(parsed.manifest, sample_manifest());
    }

    #[test]
    fn code_and_data_bytes_are_unchanged() {
        for shape in [
            SIGNED,
            Shape {
                signature: false,
                chained_fixups: true,
                padding: 0x400,
            },
        ] {
            let stub = synthetic(shape);
            let packed = inject(&stub, &region()).unwrap();
            let content_start = Image::parse(&stub).ok().unwrap().content_start() as usize;
            // __TEXT after the header padding, and __DATA, byte for byte.
            assert_eq!(
                packed[content_start..LINKEDIT_OFF],
                stub[content_start..LINKEDIT_OFF]
            );
            // The header keeps everything but the command count and size.
            assert_eq!(packed[..16], stub[..16]);
            assert_eq!(packed[24..32], stub[24..32]);
            // Header padding is zero after the new commands.
            let commands_end = Image::parse(&packed).ok().unwrap().commands_end();
            assert!(packed[commands_end..content_start].iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn linkedit_moves_intact_and_every_offset_follows() {
        let stub = synthetic(SIGNED);
        let region = region();
        let packed = inject(&stub, &region).unwrap();
        let shift = region.len().next_multiple_of(PAGE_SIZE as usize);
        let old = Image::parse(&stub).ok().unwrap();
        let new = Image::parse(&packed).ok().unwrap();

        assert_eq!(
            segment_names(&new),
            ["__PAGEZERO", "__TEXT", "__DATA", SEGMENT_NAME, "__LINKEDIT"]
        );
        assert!(
            command(&new, lc::LC_CODE_SIGNATURE).is_none(),
            "signature removed"
        );
        assert_eq!(new.commands.len(), old.commands.len());

        let signature = command(&old, lc::LC_CODE_SIGNATURE).unwrap();
        let cut = u32_at(&signature, 8) as usize;
        let new_linkedit = *new.segment(LINKEDIT).unwrap();
        let old_linkedit = *old.segment(LINKEDIT).unwrap();
        assert_eq!(new_linkedit.fileoff as usize, LINKEDIT_OFF + shift);
        assert_eq!(new_linkedit.vmaddr, old_linkedit.vmaddr + shift as u64);
        assert_eq!(new_linkedit.filesize as usize, cut - LINKEDIT_OFF);
        assert_eq!(new_linkedit.vmsize % PAGE_SIZE, 0);
        assert_eq!(packed.len(), LINKEDIT_OFF + shift + cut - LINKEDIT_OFF);
        assert_eq!(packed[LINKEDIT_OFF + shift..], stub[LINKEDIT_OFF..cut]);

        let payload = *new.segment(SEGMENT_NAME).unwrap();
        assert_eq!(payload.fileoff as usize, LINKEDIT_OFF);
        assert_eq!(payload.vmaddr, old_linkedit.vmaddr);
        assert_eq!(payload.filesize as usize, shift);
        assert_eq!(payload.vmsize as usize, shift);

        for (cmd, fields) in [
            (lc::LC_SYMTAB, &[8usize, 16][..]),
            (lc::LC_DYSYMTAB, &[56]),
            (lc::LC_DYLD_INFO_ONLY, &[8]),
            (lc::LC_FUNCTION_STARTS, &[8]),
            (lc::LC_DATA_IN_CODE, &[8]),
        ] {
            let before = command(&old, cmd).unwrap();
            let after = command(&new, cmd).unwrap();
            for &at in fields {
                assert_eq!(
                    u32_at(&after, at) as usize,
                    u32_at(&before, at) as usize + shift,
                    "{} field {at}",
                    command_name(cmd)
                );
            }
        }
        // Absent (zero) offsets stay zero.
        assert_eq!(
            u32_at(&command(&new, lc::LC_DYLD_INFO_ONLY).unwrap(), 16),
            0
        );
        // goblin reads the result as a whole.
        let macho = goblin::mach::MachO::parse(&packed, 0).unwrap();
        assert_eq!(macho.segments.len(), 5);
    }

    #[test]
    fn every_region_size_lands_on_a_page() {
        let stub = synthetic(SIGNED);
        for len in [
            8,
            PAGE_SIZE as usize - 8,
            PAGE_SIZE as usize,
            PAGE_SIZE as usize + 8,
        ] {
            let region: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let packed = inject(&stub, &region).unwrap();
            assert_eq!(
                region_bounds(&packed).unwrap(),
                LINKEDIT_OFF..LINKEDIT_OFF + len
            );
            let linkedit = *Image::parse(&packed)
                .ok()
                .unwrap()
                .segment(LINKEDIT)
                .unwrap();
            assert_eq!(linkedit.fileoff % PAGE_SIZE, 0);
            assert_eq!(
                linkedit.fileoff as usize,
                LINKEDIT_OFF + len.next_multiple_of(PAGE_SIZE as usize)
            );
        }
    }

    #[test]
    fn chained_fixups_gain_an_empty_entry_for_the_new_segment() {
        let stub = synthetic(Shape {
            signature: false,
            chained_fixups: true,
            padding: 0x400,
        });
        let region = region();
        let packed = inject(&stub, &region).unwrap();
        let shift = region.len().next_multiple_of(PAGE_SIZE as usize);
        let new = Image::parse(&packed).ok().unwrap();
        let old = Image::parse(&stub).ok().unwrap();
        let cmd = command(&new, lc::LC_DYLD_CHAINED_FIXUPS).unwrap();
        let (dataoff, datasize) = (u32_at(&cmd, 8) as usize, u32_at(&cmd, 12) as usize);
        assert_eq!(dataoff, LINKEDIT_OFF + shift);
        let old_blob = chained_fixups_blob();
        assert_eq!(datasize, old_blob.len() + CHAINED_FIXUPS_GROWTH);
        let blob = &packed[dataoff..dataoff + datasize];
        // seg_count matches the five segments; only __DATA has starts, 8 bytes further on.
        assert_eq!(u32_at(blob, 32), 5);
        let entries: Vec<u32> = (0..5).map(|i| u32_at(blob, 36 + 4 * i)).collect();
        assert_eq!(entries, [0, 0, 32, 0, 0]);
        assert_eq!(u32_at(blob, 8), 88, "imports_offset");
        assert_eq!(u32_at(blob, 12), 92, "symbols_offset");
        // Starts, imports and symbols are the same bytes, 8 further on.
        assert_eq!(blob[64..], old_blob[56..]);
        // What follows the blob moved by the growth too.
        let before = command(&old, lc::LC_FUNCTION_STARTS).unwrap();
        let after = command(&new, lc::LC_FUNCTION_STARTS).unwrap();
        assert_eq!(
            u32_at(&after, 8) as usize,
            u32_at(&before, 8) as usize + shift + CHAINED_FIXUPS_GROWTH
        );
        let end = dataoff + datasize;
        assert_eq!(packed[end..], stub[LINKEDIT_OFF + old_blob.len()..]);
        let linkedit = new.segment(LINKEDIT).unwrap();
        assert_eq!(
            linkedit.filesize as usize,
            packed.len() - linkedit.fileoff as usize
        );
    }

    #[test]
    fn chained_fixups_with_linkedit_fixups_are_refused() {
        let mut blob = chained_fixups_blob();
        put_u32(&mut blob, 36 + 12, 24); // __LINKEDIT's entry
        let err = add_segment_to_chained_fixups(&blob, 3, 4).unwrap_err();
        assert!(err.contains("__LINKEDIT has fixups"), "{err}");
        let err = add_segment_to_chained_fixups(&chained_fixups_blob(), 3, 5).unwrap_err();
        assert!(err.contains("seg_count"), "{err}");
    }

    #[test]
    fn too_little_header_padding_says_how_to_link() {
        // Enough for the segment once the signature command is gone, but not for the
        // signature signing adds back.
        let stub = synthetic(Shape {
            padding: 144,
            ..SIGNED
        });
        let err = inject(&stub, &region()).unwrap_err().to_string();
        assert!(err.contains("headerpad"), "{err}");
        assert!(err.contains("144 bytes of free space"), "{err}");
        let stub = synthetic(Shape {
            padding: 152,
            ..SIGNED
        });
        inject(&stub, &region()).unwrap();
        let stub = synthetic(Shape {
            signature: false,
            chained_fixups: false,
            padding: 160,
        });
        assert!(inject(&stub, &region()).is_err());
        let stub = synthetic(Shape {
            signature: false,
            chained_fixups: false,
            padding: 168,
        });
        inject(&stub, &region()).unwrap();
    }

    #[test]
    fn bytes_after_linkedit_are_refused() {
        let mut stub = synthetic(SIGNED);
        stub.extend_from_slice(b"appended");
        let err = inject(&stub, &region()).unwrap_err().to_string();
        assert!(err.contains("8 bytes after the end of __LINKEDIT"), "{err}");
    }

    #[test]
    fn fat_32_bit_and_big_endian_files_are_refused() {
        for (magic, expected) in [
            ([0xca, 0xfe, 0xba, 0xbe], "universal"),
            ([0xce, 0xfa, 0xed, 0xfe], "32-bit"),
            ([0xfe, 0xed, 0xfa, 0xcf], "big-endian"),
        ] {
            let mut stub = synthetic(SIGNED);
            stub[..4].copy_from_slice(&magic);
            let err = inject(&stub, &region()).unwrap_err();
            assert!(matches!(err, Error::Executable(_)), "{err}");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn second_injection_is_refused() {
        let packed = inject(&synthetic(SIGNED), &region()).unwrap();
        let err = inject(&packed, &region()).unwrap_err().to_string();
        assert!(err.contains("already has a __OWPAYLOAD segment"), "{err}");
    }

    #[test]
    fn unknown_load_commands_are_refused() {
        let mut stub = synthetic(SIGNED);
        // Turn LC_UUID into a command number nobody has assigned.
        let image = Image::parse(&stub).ok().unwrap();
        let uuid = image
            .commands
            .iter()
            .find(|c| c.command.cmd() == lc::LC_UUID)
            .unwrap()
            .offset;
        put_u32(&mut stub, uuid, 0x7777);
        let err = inject(&stub, &region()).unwrap_err().to_string();
        assert!(err.contains("0x7777"), "{err}");
    }

    #[test]
    fn a_stub_without_payload_has_none() {
        let err = region_bounds(&synthetic(SIGNED)).unwrap_err();
        assert!(matches!(err, Error::NoPayload { .. }), "{err}");
    }

    #[test]
    fn truncation_is_corrupt_not_a_panic() {
        let packed = inject(&synthetic(SIGNED), &region()).unwrap();
        let bounds = region_bounds(&packed).unwrap();
        let err = region_bounds(&packed[..bounds.end - 1]).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        for len in [0, 3, 4, 31, 32, 100, 1000] {
            assert!(region_bounds(&packed[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn garbage_load_commands_are_errors_not_panics() {
        let stubs = [
            synthetic(SIGNED),
            synthetic(Shape {
                signature: false,
                chained_fixups: true,
                padding: 0x400,
            }),
        ];
        let region = region();
        for stub in stubs {
            let packed = inject(&stub, &region).unwrap();
            // Every word of the header and load commands, set to awkward values: sizes
            // that are too small or too large, counts that overflow, offsets past the end.
            // Whatever is accepted must still read back.
            for file in [&stub, &packed] {
                let commands_end = Image::parse(file).ok().unwrap().commands_end();
                for at in (16..commands_end).step_by(4) {
                    for value in [0u32, 1, 7, 8, 16, 0xffff_fff8, 0x8000_0000] {
                        let mut bad = file.clone();
                        put_u32(&mut bad, at, value);
                        let _ = region_bounds(&bad);
                        if let Ok(repacked) = inject(&bad, &region) {
                            let bounds = region_bounds(&repacked).unwrap();
                            assert!(repacked[bounds] == region[..], "word {at} = {value:#x}");
                        }
                    }
                }
            }
        }
    }
}
