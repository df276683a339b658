//! Link-time additions the stub needs per platform.
//!
//! **macOS: header space for the payload's load command.** The packager inserts a 152-byte
//! `LC_SEGMENT_64` for the payload before `__LINKEDIT`, and signing later adds a 16-byte
//! `LC_CODE_SIGNATURE`. Both must fit between the end of the load commands and the first
//! section, in the padding the linker leaves there. Apple's ld leaves as little as 32 bytes
//! by default; `-headerpad` makes it reserve at least this much (zig's linker, used for
//! cross builds, honours the same flag). The cost is at most this many zero bytes in
//! `__TEXT`.
//!
//! **Windows: a VERSIONINFO resource and an application manifest.** Explorer's file
//! properties, SmartScreen reputation and signing services read the product, company and
//! version from VERSIONINFO; the manifest runs the server as the invoking user (never
//! elevated by installer detection), with UTF-8 as its code page and long paths allowed.
//! The resource script is compiled with the MinGW `windres` (Debian's `mingw-w64`; the
//! Windows runners' MinGW has it as `windres`): as a COFF object for x64, and as a `.res`
//! file, which carries no machine type, for Arm64, whose linker (zig's lld) takes it as is.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Minimum free header space, in bytes: room for the payload segment, the code signature
/// command and several more, on one 4 KiB page.
const MACOS_HEADER_PADDING: &str = "0x1000";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WINDRES");
    match std::env::var("CARGO_CFG_TARGET_OS").as_deref() {
        Ok("macos") => println!("cargo:rustc-link-arg-bins=-Wl,-headerpad,{MACOS_HEADER_PADDING}"),
        Ok("windows") => windows_resources(),
        _ => {}
    }
}

fn windows_resources() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    let manifest = out_dir.join("openwork-server-v2.manifest");
    std::fs::write(&manifest, MANIFEST).expect("write the application manifest");
    let script = out_dir.join("openwork-server-v2.rc");
    std::fs::write(&script, resource_script(&version, &manifest))
        .expect("write the resource script");

    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    // A COFF object links with GNU ld and lld alike, but windres writes x86 objects only;
    // a .res file has no machine type, and lld (which links Arm64 here) converts it.
    let (format, output) = if arch == "x86_64" {
        ("coff", out_dir.join("openwork-server-v2-resources.o"))
    } else {
        ("res", out_dir.join("openwork-server-v2.res"))
    };
    let windres = windres();
    let status = Command::new(&windres)
        .args(["--input-format", "rc", "--output-format", format, "--input"])
        .arg(&script)
        .arg("--output")
        .arg(&output)
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("{windres} failed ({status}) on {}", script.display()),
        Err(e) => panic!(
            "cannot run {windres} ({e}): the Windows stub carries a VERSIONINFO resource and \
             an application manifest, compiled by MinGW's windres; install it (Debian: apt \
             install mingw-w64) or name it in WINDRES"
        ),
    }
    println!("cargo:rustc-link-arg-bins={}", output.display());
}

/// `WINDRES`, else the MinGW cross windres for x64, else `windres` from PATH (what the
/// Windows runners' MinGW calls it).
fn windres() -> String {
    if let Ok(program) = std::env::var("WINDRES") {
        return program;
    }
    let cross = "x86_64-w64-mingw32-windres";
    if Command::new(cross).arg("--version").output().is_ok() {
        cross.to_owned()
    } else {
        "windres".to_owned()
    }
}

/// The resource script: VERSIONINFO (language-neutral US English, Unicode) and the manifest
/// as resource 1 of type 24 (RT_MANIFEST), by number so that no SDK header is needed.
fn resource_script(version: &str, manifest: &Path) -> String {
    let numeric: Vec<u16> = version
        .split(['-', '+'])
        .next()
        .unwrap_or_default()
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .chain(std::iter::repeat(0))
        .take(4)
        .collect();
    let numeric = numeric
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let manifest = manifest.display().to_string().replace('\\', "/");
    format!(
        r#"1 VERSIONINFO
FILEVERSION {numeric}
PRODUCTVERSION {numeric}
FILEFLAGSMASK 0x3f
FILEFLAGS 0x0
FILEOS 0x40004
FILETYPE 0x1
FILESUBTYPE 0x0
BEGIN
  BLOCK "StringFileInfo"
  BEGIN
    BLOCK "040904b0"
    BEGIN
      VALUE "CompanyName", "OpenWork"
      VALUE "FileDescription", "OpenWork server: carries and supervises opencode behind one port and token"
      VALUE "FileVersion", "{version}"
      VALUE "InternalName", "openwork-server-v2"
      VALUE "OriginalFilename", "openwork-server-v2.exe"
      VALUE "ProductName", "OpenWork Server"
      VALUE "ProductVersion", "{version}"
    END
  END
  BLOCK "VarFileInfo"
  BEGIN
    VALUE "Translation", 0x409, 1200
  END
END

1 24 "{manifest}"
"#
    )
}

/// asInvoker: never elevated (installer detection would otherwise prompt for a file named
/// like a setup program); UTF-8 as the process code page; paths past MAX_PATH; Windows 10
/// and 11 as the supported OS.
const MANIFEST: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<assembly xmlns="urn:schemas-microsoft-com:asm.v1" manifestVersion="1.0">
  <assemblyIdentity type="win32" name="OpenWork.Server" version="1.0.0.0"/>
  <trustInfo xmlns="urn:schemas-microsoft-com:asm.v3">
    <security>
      <requestedPrivileges>
        <requestedExecutionLevel level="asInvoker" uiAccess="false"/>
      </requestedPrivileges>
    </security>
  </trustInfo>
  <compatibility xmlns="urn:schemas-microsoft-com:compatibility.v1">
    <application>
      <supportedOS Id="{8e0f7a12-bfb3-4fe8-b9a5-48fd50a15a9a}"/>
    </application>
  </compatibility>
  <application xmlns="urn:schemas-microsoft-com:asm.v3">
    <windowsSettings>
      <activeCodePage xmlns="http://schemas.microsoft.com/SMI/2019/WindowsSettings">UTF-8</activeCodePage>
      <longPathAware xmlns="http://schemas.microsoft.com/SMI/2016/WindowsSettings">true</longPathAware>
    </windowsSettings>
  </application>
</assembly>
"#;
