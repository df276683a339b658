//! ELF: the region is appended at the end of the file.
//!
//! The loader maps only what the program headers name, so trailing bytes are inert. `strip`
//! would drop them: strip the stub before packing, never the packed file.

use std::ops::Range;

use crate::error::Result;

/// The whole file: the trailer ends at end of file.
pub fn region_bounds(data: &[u8]) -> Result<Range<usize>> {
    Ok(0..data.len())
}

/// Appends `region` to `stub`.
pub fn inject(stub: &[u8], region: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(stub.len() + region.len());
    out.extend_from_slice(stub);
    out.extend_from_slice(region);
    Ok(out)
}
