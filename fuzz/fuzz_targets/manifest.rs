//! The manifest reader on any bytes: an error or a manifest whose paths all pass the
//! path check (no `..`, no absolute path), and which survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openwork_payload::manifest::{Manifest, validate_relative_path};

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::from_json(data) {
        if manifest.validate().is_ok() {
            for entry in manifest.files.values() {
                assert!(
                    validate_relative_path(&entry.path).is_ok(),
                    "{}",
                    entry.path
                );
            }
            let again = Manifest::from_json(&manifest.to_json()).expect("round trip");
            assert_eq!(again.files.len(), manifest.files.len());
        }
    }
});
