//! Bun's stale tail: bytes a Bun-compiled executable carries after its signature, which
//! re-signing may drop (see [`stale_tail`]).

use goblin::mach::load_command::CommandVariant;

use super::layout::{LINKEDIT, parse_thin};
use crate::error::Result;

/// The segment `bun build --compile` keeps its program in on macOS (the module graph, in
/// section `__bun`).
const BUN_SEGMENT: &str = "__BUN";

/// How many bytes at the end of a Bun-compiled Mach-O are a stale tail that re-signing may
/// drop, or `None` when there is none (or the file is not one this applies to).
///
/// `bun build --compile` writes its program into the `__BUN` segment and a fresh signature
/// over a copy of the Bun template, but (Bun 1.3.x, fixed upstream in 2026) never truncates
/// the copy: when the template's own signature was longer, its end is left behind after the
/// new one, outside `__LINKEDIT`. Such a file fails `codesign --verify --strict`, and
/// opencode's darwin builds ship like that (opencode issue 46313). Nothing reads those
/// bytes: dyld maps segments only, and Bun reads its program from `__BUN`. So for a file
/// that has both a `__BUN` segment and a code signature, the tail is dropped before signing
/// (and reported); anywhere else bytes after `__LINKEDIT` may be a payload someone appended
/// on purpose, and [`check_macho_layout`] refuses them.
pub fn stale_tail(data: &[u8]) -> Result<Option<u64>> {
    let macho = parse_thin(data)?;
    let has_segment = |name: &str| macho.segments.iter().any(|s| s.name().ok() == Some(name));
    let signed = macho
        .load_commands
        .iter()
        .any(|c| matches!(c.command, CommandVariant::CodeSignature(_)));
    let Some(linkedit) = macho
        .segments
        .iter()
        .find(|s| s.name().ok() == Some(LINKEDIT))
    else {
        return Ok(None);
    };
    let linkedit_end = linkedit.fileoff.saturating_add(linkedit.filesize);
    let len = data.len() as u64;
    Ok((has_segment(BUN_SEGMENT) && signed && len > linkedit_end).then(|| len - linkedit_end))
}
