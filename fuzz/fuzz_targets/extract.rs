//! Archive extraction into a temp dir: the input is taken as a tar, compressed and given a
//! trailer and a manifest that vouch for it, so the tar reader, the path checks and the
//! per-file verification all see hostile entries. Whatever happens, nothing may be written
//! outside the directory. Both readers are reached: the frame-parallel one and the
//! streaming one.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use openwork_payload::archive;
use openwork_payload::manifest::{FileEntry, MANIFEST_VERSION, Manifest};
use openwork_payload::region;
use sha2::{Digest, Sha256};

fuzz_target!(|tar: &[u8]| {
    let mut payload = Vec::new();
    // Frames of 512 bytes: inputs longer than that take the parallel reader, shorter ones
    // the streaming one.
    if archive::compress_in_frames(tar, &mut payload, 1, 0, 512).is_err() {
        return;
    }
    // A manifest naming the one file a valid input could carry, hashed as the input's
    // first 64 bytes, so that short well-formed archives can get all the way through.
    let content = &tar[..tar.len().min(64)];
    let mut files = BTreeMap::new();
    files.insert(
        "opencode".to_string(),
        FileEntry {
            path: "bin/opencode".into(),
            size: content.len() as u64,
            sha256: hex(&Sha256::digest(content)),
            mode: 0o755,
        },
    );
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        server_version: "0.0.0".into(),
        opencode_version: "0.0.0".into(),
        router_version: None,
        target: "linux-x64".into(),
        files,
    };
    let manifest_json = manifest.to_json();
    let bytes = region::build_region(&payload, &manifest_json, tar.len() as u64);
    let Ok(region) = region::parse_region(&bytes, 0..bytes.len()) else {
        return;
    };
    let scratch = tempfile::tempdir().expect("temp dir");
    let dest = scratch.path().join("runtime");
    std::fs::create_dir(&dest).expect("dest");
    let _ = archive::extract(region.payload, &region.trailer, &region.manifest, &dest);
    // Only the destination may have gained entries.
    let outside: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("read scratch")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("runtime")]);
});

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
