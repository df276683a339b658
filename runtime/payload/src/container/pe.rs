//! PE: the region lives in the overlay. (Implementation in progress.)

use std::ops::Range;

use crate::error::{Error, Result};

/// Bounds of the region in a PE file.
pub fn region_bounds(_data: &[u8]) -> Result<Range<usize>> {
    Err(Error::Executable("PE payloads are not implemented yet".into()))
}

/// Puts the region into the overlay.
pub fn inject(_stub: &[u8], _region: &[u8]) -> Result<Vec<u8>> {
    Err(Error::Executable("PE payloads are not implemented yet".into()))
}
