//! Reserves header space in macOS executables for the payload's load command.
//!
//! The packager inserts a 152-byte `LC_SEGMENT_64` for the payload before `__LINKEDIT`,
//! and signing later adds a 16-byte `LC_CODE_SIGNATURE`. Both must fit between the end of
//! the load commands and the first section, in the padding the linker leaves there. Apple's
//! ld leaves as little as 32 bytes by default; `-headerpad` makes it reserve at least this
//! much (zig's linker, used for cross builds, honours the same flag). The cost is at most
//! this many zero bytes in `__TEXT`.

/// Minimum free header space, in bytes: room for the payload segment, the code signature
/// command and several more, on one 4 KiB page.
const MACOS_HEADER_PADDING: &str = "0x1000";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        println!("cargo:rustc-link-arg-bins=-Wl,-headerpad,{MACOS_HEADER_PADDING}");
    }
}
