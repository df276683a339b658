//! What an executable is and whether it is signed, judged from its headers.

use apple_codesign::{CodeSignatureFlags, MachOBinary};
use openwork_payload::container::{Arch, ExecutableFormat};
use serde::Serialize;

use crate::error::{Result, UnsupportedError};

/// An executable's format, architecture and signature state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Container format.
    pub format: ExecutableFormat,
    /// CPU architecture.
    pub arch: Arch,
    /// Whether and how it is signed.
    pub signature: SignatureState,
}

/// Whether and how an executable is signed. Only presence and kind are reported; whether a
/// signature verifies is a separate question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureState {
    /// No signature (ELF has none in our targets).
    Unsigned,
    /// A Mach-O code directory without a certificate, made by a signing tool.
    AdHoc,
    /// A Mach-O ad-hoc signature made by the linker (flag `linker-signed`); tools
    /// replace it freely, and the packer removes it before injecting.
    LinkerSigned,
    /// A Mach-O signature with a CMS (certificate) blob.
    Certificate,
    /// A PE whose Security data directory (the certificate table) is not empty.
    Authenticode,
}

impl std::fmt::Display for SignatureState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignatureState::Unsigned => "unsigned",
            SignatureState::AdHoc => "ad-hoc signed",
            SignatureState::LinkerSigned => "ad-hoc signed by the linker",
            SignatureState::Certificate => "signed with a certificate",
            SignatureState::Authenticode => "Authenticode signed",
        })
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}, {}", self.format, self.arch, self.signature)
    }
}

/// Identifies an executable and whether it carries a signature: for Mach-O an
/// `LC_CODE_SIGNATURE` (and what kind), for PE a non-empty Security data directory.
pub fn identify(data: &[u8]) -> Result<Identity> {
    let info =
        openwork_payload::container::identify(data).map_err(UnsupportedError::NotExecutable)?;
    let signature = match info.format {
        ExecutableFormat::Elf => SignatureState::Unsigned,
        ExecutableFormat::Pe => pe_signature(data)?,
        ExecutableFormat::MachO => macho_signature(data)?,
    };
    Ok(Identity {
        format: info.format,
        arch: info.arch,
        signature,
    })
}

fn pe_signature(data: &[u8]) -> Result<SignatureState> {
    let header = goblin::pe::header::Header::parse(data)
        .map_err(|source| UnsupportedError::PeHeaders { source })?;
    let table = header
        .optional_header
        .and_then(|o| o.data_directories.get_certificate_table().copied());
    Ok(match table {
        Some(table) if table.size > 0 => SignatureState::Authenticode,
        _ => SignatureState::Unsigned,
    })
}

fn macho_signature(data: &[u8]) -> Result<SignatureState> {
    let binary = MachOBinary::parse(data)?;
    let Some(signature) = binary.code_signature()? else {
        return Ok(SignatureState::Unsigned);
    };
    if signature
        .signature_data()?
        .is_some_and(|cms| !cms.is_empty())
    {
        return Ok(SignatureState::Certificate);
    }
    let linker = signature
        .code_directory()?
        .is_some_and(|cd| cd.flags.contains(CodeSignatureFlags::LINKER_SIGNED));
    Ok(if linker {
        SignatureState::LinkerSigned
    } else {
        SignatureState::AdHoc
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::macho::{sign_adhoc, tests::unsigned_macho};

    #[test]
    fn macho_signature_is_seen() {
        let unsigned = unsigned_macho();
        let identity = identify(&unsigned).unwrap();
        assert_eq!(identity.format, ExecutableFormat::MachO);
        assert_eq!(identity.arch, Arch::Aarch64);
        assert_eq!(identity.signature, SignatureState::Unsigned);
        let signed = sign_adhoc(&unsigned, "test").unwrap();
        assert_eq!(identify(&signed).unwrap().signature, SignatureState::AdHoc);
        assert_eq!(
            identify(&signed).unwrap().to_string(),
            "mach-o aarch64, ad-hoc signed"
        );
    }

    #[test]
    fn pe_security_directory_decides() {
        let mut pe = minimal_pe();
        assert_eq!(identify(&pe).unwrap().signature, SignatureState::Unsigned);
        // Data directory 4 (certificate table): offset and size.
        let at = PE_OFFSET + 24 + 112 + 4 * 8;
        pe[at..at + 4].copy_from_slice(&0x1f0u32.to_le_bytes());
        pe[at + 4..at + 8].copy_from_slice(&0x10u32.to_le_bytes());
        // One WIN_CERTIFICATE: length, revision 2.0, type PKCS#7, 8 bytes of "signature".
        pe[0x1f0..0x1f4].copy_from_slice(&0x10u32.to_le_bytes());
        pe[0x1f4..0x1f6].copy_from_slice(&0x0200u16.to_le_bytes());
        pe[0x1f6..0x1f8].copy_from_slice(&0x0002u16.to_le_bytes());
        let identity = identify(&pe).unwrap();
        assert_eq!(identity.signature, SignatureState::Authenticode);
        assert_eq!(identity.to_string(), "pe x86_64, Authenticode signed");
    }

    #[test]
    fn unknown_files_are_unsupported() {
        assert!(matches!(
            identify(b"#!/bin/sh\n"),
            Err(crate::Error::Unsupported(_))
        ));
    }

    const PE_OFFSET: usize = 0x80;

    /// A PE32+ x86-64 header with no sections: enough for the header parsers.
    fn minimal_pe() -> Vec<u8> {
        let mut pe = vec![0u8; 0x200];
        pe[0..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&(PE_OFFSET as u32).to_le_bytes());
        let coff = PE_OFFSET;
        pe[coff..coff + 4].copy_from_slice(b"PE\0\0");
        pe[coff + 4..coff + 6].copy_from_slice(&0x8664u16.to_le_bytes()); // machine
        pe[coff + 20..coff + 22].copy_from_slice(&240u16.to_le_bytes()); // optional header size
        pe[coff + 22..coff + 24].copy_from_slice(&0x22u16.to_le_bytes()); // characteristics
        let opt = coff + 24;
        pe[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes()); // PE32+
        pe[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes()); // section alignment
        pe[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes()); // file alignment
        pe[opt + 56..opt + 60].copy_from_slice(&0x1000u32.to_le_bytes()); // size of image
        pe[opt + 60..opt + 64].copy_from_slice(&0x200u32.to_le_bytes()); // size of headers
        pe[opt + 68..opt + 70].copy_from_slice(&3u16.to_le_bytes()); // subsystem: console
        pe[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes()); // data directories
        pe
    }
}
