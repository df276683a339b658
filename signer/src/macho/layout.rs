//! Where things are in a thin 64-bit Mach-O, as signing and verification need them:
//! `__LINKEDIT` last, the code signature last in it, nothing after. Every other module of
//! [`crate::macho`] reads the file through here.

use goblin::mach::load_command::CommandVariant;
use goblin::mach::{Mach, MachO};

use crate::error::{Error, Result};

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
        .ok_or_else(|| Error::Layout("there is no __LINKEDIT segment".into()))?;
    let linkedit_end = linkedit.fileoff.saturating_add(linkedit.filesize);
    for segment in macho.segments.iter() {
        if segment.fileoff == linkedit.fileoff && segment.name().ok() == Some(LINKEDIT) {
            continue;
        }
        if segment.filesize > 0
            && segment.fileoff.saturating_add(segment.filesize) > linkedit.fileoff
        {
            return Err(Error::Layout(format!(
                "segment {} ends after __LINKEDIT starts; __LINKEDIT must be the last segment",
                segment.name().unwrap_or("(unnamed)")
            )));
        }
    }
    let len = data.len() as u64;
    if len > linkedit_end {
        return Err(Error::Layout(format!(
            "{} bytes follow the end of __LINKEDIT; signing would drop them and signature verification would not cover them",
            len - linkedit_end
        )));
    }
    if len < linkedit_end {
        return Err(Error::Layout(format!(
            "__LINKEDIT ends at byte {linkedit_end} but the file has only {len} bytes (truncated?)"
        )));
    }
    for command in &macho.load_commands {
        if let CommandVariant::CodeSignature(signature) = &command.command {
            let end = u64::from(signature.dataoff) + u64::from(signature.datasize);
            if end != linkedit_end {
                return Err(Error::Layout(format!(
                    "the code signature ends at byte {end} but __LINKEDIT ends at byte {linkedit_end}; the signature must be last"
                )));
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
        .ok_or_else(|| Error::Verification("the file has no code signature".into()))?;
    if data.len() < (start + size) as usize {
        return Err(Error::Layout(
            "the code signature extends past the end of the file".into(),
        ));
    }
    Ok((start, size))
}

/// Parses a thin 64-bit Mach-O, refusing anything else by name.
pub(crate) fn parse_thin(data: &[u8]) -> Result<MachO<'_>> {
    match Mach::parse(data) {
        Ok(Mach::Binary(macho)) if macho.is_64 => Ok(macho),
        Ok(Mach::Binary(_)) => Err(Error::Unsupported(
            "32-bit Mach-O files are not supported".into(),
        )),
        Ok(Mach::Fat(_)) => Err(Error::Unsupported(
            "universal (fat) Mach-O files are not supported: sign each architecture's thin file"
                .into(),
        )),
        Err(e) => Err(Error::Unsupported(format!(
            "not a Mach-O file goblin can parse: {e}"
        ))),
    }
}
