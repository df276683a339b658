//! The entitlements each of our Mach-O executables is signed with under the hardened
//! runtime.
//!
//! The hardened runtime (required for notarization) forbids writable-and-executable memory,
//! loading libraries signed by another team, and `DYLD_*` variables, unless the signature
//! carries an entitlement that lifts the restriction. Entitlements are granted per
//! executable, never inherited by child processes, so each binary gets exactly what it
//! needs:
//!
//! - the Rust stub (`openwork-server-v2`) needs none: no JIT, no plug-ins, no dyld tricks.
//!   It is signed without an entitlements blob, so nothing is lifted by accident.
//! - Bun-compiled sidecars (`opencode`, `opencode-router`) are the Bun runtime with the
//!   application appended: JavaScriptCore JIT-compiles, so they need what Bun itself is
//!   signed with. [`BUN_SIDECAR`] is the set of Bun's own release `entitlements.plist`, and
//!   the set Bun's guide "Codesign a single-file JavaScript executable on macOS" tells
//!   users of `bun build --compile` to sign with. We keep Bun's exact set rather than a
//!   smaller guess: a missing entitlement shows up only on macOS, at run time, as a
//!   `SIGKILL (Code Signature Invalid)` in the JIT, which no Linux CI run can catch.

/// Which of our executables is being signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The Rust runtime stub, `openwork-server-v2`.
    Stub,
    /// An executable compiled with `bun build --compile` (opencode, opencode-router).
    BunSidecar,
}

/// Entitlements of a Bun-compiled executable under the hardened runtime.
///
/// - `com.apple.security.cs.allow-jit`: JavaScriptCore's JIT maps its code with `MAP_JIT`;
///   without this the map fails and Bun cannot run JavaScript at speed (or at all).
/// - `com.apple.security.cs.allow-unsigned-executable-memory`: JavaScriptCore and Bun's
///   native code also create executable pages without `MAP_JIT` (the x86-64 JIT, FFI
///   trampolines); the hardened runtime kills the process on the first such page.
/// - `com.apple.security.cs.disable-executable-page-protection`: lets those pages be
///   changed after they were made executable; Bun ships with it, so its JIT is tested with
///   it.
/// - `com.apple.security.cs.disable-library-validation`: Bun loads native add-ons
///   (`.node`, `bun:ffi` libraries) that are not signed by our team; library validation
///   would refuse them.
/// - `com.apple.security.cs.allow-dyld-environment-variables`: Bun's runtime honours
///   `DYLD_*` variables for such libraries (and Bun's release keeps them); the hardened
///   runtime would strip them.
pub const BUN_SIDECAR: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>com.apple.security.cs.allow-jit</key>
	<true/>
	<key>com.apple.security.cs.allow-unsigned-executable-memory</key>
	<true/>
	<key>com.apple.security.cs.disable-executable-page-protection</key>
	<true/>
	<key>com.apple.security.cs.disable-library-validation</key>
	<true/>
	<key>com.apple.security.cs.allow-dyld-environment-variables</key>
	<true/>
</dict>
</plist>
"#;

/// The entitlements plist (XML) to sign an executable of `role` with; `None` for no
/// entitlements at all (no entitlements blob), which is what the stub needs.
pub fn for_role(role: Role) -> Option<&'static str> {
    match role {
        Role::Stub => None,
        Role::BunSidecar => Some(BUN_SIDECAR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// apple-codesign parses the sidecar's set, and the stub lifts nothing.
    #[test]
    fn the_sidecar_set_parses_and_the_stub_has_none() {
        assert_eq!(for_role(Role::Stub), None);
        let mut settings = apple_codesign::SigningSettings::default();
        settings
            .set_entitlements_xml(
                apple_codesign::SettingsScope::Main,
                for_role(Role::BunSidecar).unwrap(),
            )
            .unwrap();
        for key in [
            "allow-jit",
            "allow-unsigned-executable-memory",
            "disable-executable-page-protection",
            "disable-library-validation",
            "allow-dyld-environment-variables",
        ] {
            assert!(
                BUN_SIDECAR.contains(&format!("<key>com.apple.security.cs.{key}</key>")),
                "{key}"
            );
        }
        assert_eq!(BUN_SIDECAR.matches("<key>").count(), 5);
    }
}
