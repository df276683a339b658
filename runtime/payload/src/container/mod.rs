//! Where each executable format keeps the payload region, behind one interface.
//!
//! Every format module has the same two functions:
//!
//! - `region_bounds(data) -> Result<Range<usize>>`: the bytes within which the region must
//!   lie, ending exactly where its trailer ends. Used by the runtime on its own file and by
//!   `inspect`.
//! - `inject(stub, region) -> Result<Vec<u8>>`: the stub with the region placed where that
//!   format can keep it and still be signed afterwards. Used by the packager only. Writers
//!   never rewrite the stub's code or data, only the headers that describe the layout.
//!
//! | format | where | why |
//! |---|---|---|
//! | ELF | appended at end of file | the loader ignores bytes past the last segment |
//! | PE | overlay after the last section, before any certificate table | Authenticode hashes the overlay and appends its table at the end; the Security directory says where the table starts |
//! | Mach-O | a segment of its own before `__LINKEDIT` | codesign requires `__LINKEDIT` last with the signature last, and drops anything after it |

use std::ops::Range;

use crate::error::{Error, Result};
use crate::region::{PayloadRegion, parse_region};

pub mod elf;
pub mod macho;
pub mod pe;

/// The executable formats a stub can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutableFormat {
    /// Linux.
    Elf,
    /// Windows.
    Pe,
    /// macOS (thin, 64-bit).
    MachO,
}

/// The CPU architectures targets use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// x86-64 / AMD64.
    X86_64,
    /// AArch64 / ARM64.
    Aarch64,
}

impl std::fmt::Display for ExecutableFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExecutableFormat::Elf => "elf",
            ExecutableFormat::Pe => "pe",
            ExecutableFormat::MachO => "mach-o",
        })
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

/// What an executable is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinaryInfo {
    /// Its container format.
    pub format: ExecutableFormat,
    /// Its CPU architecture.
    pub arch: Arch,
}

/// Identifies an executable's format and architecture with goblin. Refuses what no target
/// uses (32-bit, fat Mach-O, other CPUs), naming what it found.
pub fn identify(data: &[u8]) -> Result<BinaryInfo> {
    use goblin::Object;
    let object = Object::parse(data)
        .map_err(|e| Error::Executable(format!("not an executable goblin can parse: {e}")))?;
    let (format, machine) = match &object {
        Object::Elf(elf) => {
            if !elf.is_64 {
                return Err(Error::Executable(
                    "32-bit ELF is not a supported target".into(),
                ));
            }
            let arch = match elf.header.e_machine {
                goblin::elf::header::EM_X86_64 => Arch::X86_64,
                goblin::elf::header::EM_AARCH64 => Arch::Aarch64,
                other => {
                    return Err(Error::Executable(format!(
                        "ELF for unsupported machine {other}"
                    )));
                }
            };
            (ExecutableFormat::Elf, arch)
        }
        Object::PE(pe) => {
            let arch = match pe.header.coff_header.machine {
                goblin::pe::header::COFF_MACHINE_X86_64 => Arch::X86_64,
                goblin::pe::header::COFF_MACHINE_ARM64 => Arch::Aarch64,
                other => {
                    return Err(Error::Executable(format!(
                        "PE for unsupported machine {other:#x}"
                    )));
                }
            };
            (ExecutableFormat::Pe, arch)
        }
        Object::Mach(goblin::mach::Mach::Binary(macho)) => {
            if !macho.is_64 {
                return Err(Error::Executable(
                    "32-bit Mach-O is not a supported target".into(),
                ));
            }
            let arch = match macho.header.cputype {
                goblin::mach::cputype::CPU_TYPE_X86_64 => Arch::X86_64,
                goblin::mach::cputype::CPU_TYPE_ARM64 => Arch::Aarch64,
                other => {
                    return Err(Error::Executable(format!(
                        "Mach-O for unsupported CPU type {other:#x}"
                    )));
                }
            };
            (ExecutableFormat::MachO, arch)
        }
        Object::Mach(goblin::mach::Mach::Fat(_)) => {
            return Err(Error::Executable(
                "universal (fat) Mach-O files are not supported: pack each architecture's thin stub".into(),
            ));
        }
        _ => {
            return Err(Error::Executable(
                "not an ELF, PE or Mach-O executable".into(),
            ));
        }
    };
    Ok(BinaryInfo {
        format,
        arch: machine,
    })
}

/// The format of `data`, judged from its magic bytes alone (cheap: no parsing).
pub fn sniff_format(data: &[u8]) -> Result<ExecutableFormat> {
    match data.get(0..4) {
        Some([0x7f, b'E', b'L', b'F']) => Ok(ExecutableFormat::Elf),
        Some([b'M', b'Z', ..]) => Ok(ExecutableFormat::Pe),
        Some([0xcf, 0xfa, 0xed, 0xfe]) | Some([0xfe, 0xed, 0xfa, 0xcf]) => {
            Ok(ExecutableFormat::MachO)
        }
        _ => Err(Error::Executable(
            "not an ELF, PE or 64-bit Mach-O executable".into(),
        )),
    }
}

/// Finds and validates the payload region in an executable's bytes.
pub fn locate(data: &[u8]) -> Result<(ExecutableFormat, PayloadRegion<'_>)> {
    let format = sniff_format(data)?;
    let bounds = region_bounds(format, data)?;
    Ok((format, parse_region(data, bounds)?))
}

/// The bounds within which `format` keeps the region (see the module docs).
pub fn region_bounds(format: ExecutableFormat, data: &[u8]) -> Result<Range<usize>> {
    match format {
        ExecutableFormat::Elf => elf::region_bounds(data),
        ExecutableFormat::Pe => pe::region_bounds(data),
        ExecutableFormat::MachO => macho::region_bounds(data),
    }
}

/// Puts `region` into `stub`. Refuses a stub that already carries a payload.
pub fn inject(stub: &[u8], region: &[u8]) -> Result<Vec<u8>> {
    let format = sniff_format(stub)?;
    if locate(stub).is_ok() {
        return Err(Error::Executable(
            "the stub already contains a payload: pack a freshly built stub".into(),
        ));
    }
    match format {
        ExecutableFormat::Elf => elf::inject(stub, region),
        ExecutableFormat::Pe => pe::inject(stub, region),
        ExecutableFormat::MachO => macho::inject(stub, region),
    }
}
