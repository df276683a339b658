//! The payload locators (ELF, PE with and without a certificate table, Mach-O with our
//! segment) on any bytes, as the runtime runs them on its own file: an error or a region
//! that lies inside the file, never a panic or an out-of-bounds read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openwork_payload::container;

fuzz_target!(|data: &[u8]| {
    let _ = container::identify(data);
    if let Ok((_, region)) = container::locate(data) {
        let span = region.span();
        assert!(span.start <= span.end && span.end <= data.len() as u64);
        let _ = region.verify_payload();
    }
});
