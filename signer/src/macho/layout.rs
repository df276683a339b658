//! Where things are in a thin 64-bit Mach-O, as signing and verification need them:
//! `__LINKEDIT` last, the code signature last in it, nothing after. Every other module of
//! [`crate::macho`] reads the file through here.

use goblin::mach::load_command::CommandVariant;
use goblin::mach::{Mach, MachO};

use openwork_payload::container::ExecutableFormat;

use crate::error::{LayoutError, MachOKind, Result, UnsupportedError, VerificationError};

pub(crate) const LINKEDIT: &str = "__LINKEDIT";

/// Checks that a thin 64-bit Mach-O is laid out the way signing and verification need:
/// `__LINKEDIT` is the last segment, the file ends exactly where `__LINKEDIT` ends, and a
/// code signature, if present, is the last thing in `__LINKEDIT`.
pub fn check_macho_layout(data: &[u8]) -> Result<()> {
    let macho = parse_thin(data)?;
    let linkedit = macho
        .segments
        .iter()
        .find(|s| s.name().ok() == Some(LINKEDIT))
        .ok_or(LayoutError::NoLinkedit)?;
    let linkedit_end = linkedit.fileoff.saturating_add(linkedit.filesize);
    for segment in macho.segments.iter() {
        if segment.fileoff == linkedit.fileoff && segment.name().ok() == Some(LINKEDIT) {
            continue;
        }
        if segment.filesize > 0
            && segment.fileoff.saturating_add(segment.filesize) > linkedit.fileoff
        {
            return Err(LayoutError::LinkeditNotLast {
                segment: segment.name().unwrap_or("(unnamed)").to_owned(),
            }
            .into());
        }
    }
    let len = data.len() as u64;
    if len > linkedit_end {
        return Err(LayoutError::AfterLinkedit {
            count: len - linkedit_end,
        }
        .into());
    }
    if len < linkedit_end {
        return Err(LayoutError::Truncated { linkedit_end, len }.into());
    }
    for command in &macho.load_commands {
        if let CommandVariant::CodeSignature(signature) = &command.command {
            let end = u64::from(signature.dataoff) + u64::from(signature.datasize);
            if end != linkedit_end {
                return Err(LayoutError::SignatureNotLast {
                    signature_end: end,
                    linkedit_end,
                }
                .into());
            }
        }
    }
    Ok(())
}

/// The file range of the code signature (`LC_CODE_SIGNATURE`): start and size.
pub(crate) fn code_signature_range(data: &[u8]) -> Result<(u64, u64)> {
    let macho = parse_thin(data)?;
    let (start, size) = macho
        .load_commands
        .iter()
        .find_map(|c| match &c.command {
            CommandVariant::CodeSignature(s) => Some((u64::from(s.dataoff), u64::from(s.datasize))),
            _ => None,
        })
        .ok_or(VerificationError::NotSigned {
            format: ExecutableFormat::MachO,
        })?;
    if data.len() < (start + size) as usize {
        return Err(LayoutError::SignaturePastEnd.into());
    }
    Ok((start, size))
}

/// Parses a thin 64-bit Mach-O, refusing anything else by name.
pub(crate) fn parse_thin(data: &[u8]) -> Result<MachO<'_>> {
    match Mach::parse(data) {
        Ok(Mach::Binary(macho)) if macho.is_64 => Ok(macho),
        Ok(Mach::Binary(_)) => Err(UnsupportedError::MachO {
            kind: MachOKind::ThirtyTwoBit,
        }
        .into()),
        Ok(Mach::Fat(_)) => Err(UnsupportedError::MachO {
            kind: MachOKind::Fat,
        }
        .into()),
        Err(source) => Err(UnsupportedError::NotMachO { source }.into()),
    }
}
