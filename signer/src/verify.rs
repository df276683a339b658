//! Verifying any of our executables by its own format, and the payload inside it: the one
//! check behind `openwork-signer verify`, `openwork-packager release --sign` and the
//! release workflow.

use std::time::SystemTime;

use openwork_payload::container::{self, ExecutableFormat};
use serde::Serialize;
use x509_certificate::CapturedX509Certificate;

use crate::authenticode::{self, TrustAnchors};
use crate::error::{PolicyError, Result, UnsupportedError, VerificationError};
use crate::macho::{self, MachOPolicy};

/// What a verification requires.
#[derive(Debug, Clone, Default)]
pub struct VerifyPolicy {
    /// The signer must chain to one of these; empty: the chain the signature carries is
    /// trusted as it is (integrity is checked, not who signed).
    pub roots: Vec<CapturedX509Certificate>,
    /// A time stamp must come from an authority chaining to one of these; empty: as above.
    pub tsa_roots: Vec<CapturedX509Certificate>,
    /// A time stamp must be present.
    pub require_timestamp: bool,
    /// A signature must be present (ELF files have none and pass with a note).
    pub require_signature: bool,
}

/// What was verified.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// `elf`, `pe` or `mach-o`.
    pub format: ExecutableFormat,
    /// `authenticode`, `codesign`, `ad-hoc` or `none`.
    pub signature: &'static str,
    /// The signer's certificate subject.
    pub signer: Option<String>,
    /// When the time-stamp authority saw the signature (RFC 3339).
    pub timestamp: Option<String>,
    /// Whether the signer's chain was checked against given roots.
    pub chain_checked: bool,
    /// Files the embedded payload's manifest lists, once the payload is found and its hash
    /// checked; `None` when the file carries no payload.
    pub payload_files: Option<usize>,
}

/// Verifies `data`: its signature as `policy` says, then, when it carries one, the
/// payload: found with the runtime's own locator (which checks the trailer and the
/// manifest's hash) and hashed against the trailer. Signing never touches the payload's
/// bytes, so that is enough to show they survived it; decoding every file again would
/// repeat the packer's self-check (and `openwork-packager inspect` does it on request).
pub fn verify(data: &[u8], policy: &VerifyPolicy) -> Result<Verification> {
    let format = container::identify(data)
        .map_err(UnsupportedError::NotExecutable)?
        .format;
    let chain_checked = !policy.roots.is_empty();
    let (signature, signer, timestamp) = match format {
        ExecutableFormat::Elf => {
            if policy.require_signature {
                return Err(VerificationError::NotSigned { format }.into());
            }
            ("none", None, None)
        }
        ExecutableFormat::Pe => {
            let trust = TrustAnchors {
                code_signing: policy.roots.clone(),
                time_stamping: policy.tsa_roots.clone(),
                embedded: true,
            };
            let verified = authenticode::verify(data, &trust)?;
            let time = verified.timestamp.map(|t| t.time);
            ("authenticode", Some(verified.signer), time)
        }
        ExecutableFormat::MachO => {
            let macho_policy = MachOPolicy {
                allow_adhoc: !policy.require_signature,
                roots: (!policy.roots.is_empty()).then(|| policy.roots.clone()),
                require_timestamp: policy.require_timestamp,
                tsa_roots: (!policy.tsa_roots.is_empty()).then(|| policy.tsa_roots.clone()),
                ..MachOPolicy::default()
            };
            let verified = macho::verify_macho(data, &macho_policy)?;
            let kind = if verified.signer.is_some() {
                "codesign"
            } else {
                "ad-hoc"
            };
            (kind, verified.signer, verified.timestamp)
        }
    };
    if policy.require_timestamp && timestamp.is_none() && format != ExecutableFormat::Elf {
        return Err(PolicyError::NoTimestamp { any_format: true }.into());
    }
    let payload_files = payload_files(data)?;
    Ok(Verification {
        format,
        signature,
        signer,
        timestamp: timestamp.map(rfc3339),
        chain_checked,
        payload_files,
    })
}

/// The embedded payload, found and its hash checked; `None` when there is none (a
/// sidecar).
fn payload_files(data: &[u8]) -> Result<Option<usize>> {
    match container::locate(data) {
        Ok((_, region)) => {
            region
                .verify_payload()
                .map_err(VerificationError::Payload)?;
            Ok(Some(region.manifest.files.len()))
        }
        Err(e) if e.kind() == openwork_payload::ErrorKind::NoPayload => Ok(None),
        Err(e) => Err(VerificationError::Payload(e).into()),
    }
}

/// `time` as an RFC 3339 UTC string, for reports and messages.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    der::DateTime::from_system_time(time)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{time:?}"))
}
