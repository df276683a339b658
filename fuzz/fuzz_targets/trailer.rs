//! The trailer parser on any bytes: an error or a trailer, never a panic; a trailer that
//! parses writes back to the same bytes, except the flags (reserved: 1.x readers ignore
//! them, so a writer puts zeros) and the check over them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openwork_payload::trailer::{TRAILER_LEN, Trailer};

/// Bytes of the flags field and the check that covers it (docs/FORMAT.md).
const FLAGS_AND_CHECK: std::ops::Range<usize> = 104..112;

fuzz_target!(|data: &[u8]| {
    if let Ok(trailer) = Trailer::parse_at_end(data) {
        assert!(data.len() >= TRAILER_LEN);
        let original = &data[data.len() - TRAILER_LEN..];
        let written = trailer.to_bytes();
        assert_eq!(
            written[..FLAGS_AND_CHECK.start],
            original[..FLAGS_AND_CHECK.start]
        );
        assert_eq!(
            written[FLAGS_AND_CHECK.end..],
            original[FLAGS_AND_CHECK.end..]
        );
    }
});
