//! Mach-O: the region lives in its own segment. (Implementation in progress.)

use std::ops::Range;

use crate::error::{Error, Result};

/// Bounds of the region in a Mach-O file.
pub fn region_bounds(_data: &[u8]) -> Result<Range<usize>> {
    Err(Error::Executable("Mach-O payloads are not implemented yet".into()))
}

/// Puts the region into its own segment.
pub fn inject(_stub: &[u8], _region: &[u8]) -> Result<Vec<u8>> {
    Err(Error::Executable("Mach-O payloads are not implemented yet".into()))
}
