//! Checking an Authenticode signature: the image digest, the signer's signature, the
//! certificate chain and the time-stamp.

use std::time::SystemTime;

use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Any, Decode, Encode, Reader, SliceReader};
use openwork_payload::container::ExecutableFormat;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::ext::pkix::ExtendedKeyUsage;
use x509_certificate::{CapturedX509Certificate, KeyAlgorithm, SignatureAlgorithm};

use super::image::{PeImage, TABLE_ALIGN};
use super::structures::{
    CONTENT_TYPE, EC_PUBLIC_KEY, ECDSA_WITH_SHA256, KP_CODE_SIGNING, MESSAGE_DIGEST,
    RFC3161_COUNTER_SIGNATURE, RSA_ENCRYPTION, SHA256, SHA256_WITH_RSA, SIGNED_DATA,
    SPC_INDIRECT_DATA, SPC_PE_IMAGE_DATA, SpcIndirectDataContent, WIN_CERT_REVISION_2_0,
    WIN_CERT_TYPE_PKCS_SIGNED_DATA, WIN_CERTIFICATE_HEADER_LEN,
};
use super::{Timestamp, TrustAnchors, Verified};
use crate::chain::{self, Anchors};

use crate::error::{
    CertificateError, CoverageError, Error, Result, UnsupportedError, VerificationError,
};
use crate::timestamp;

/// X.509 extKeyUsage extension.
const EXTENDED_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");

pub(crate) fn verify(pe: &[u8], trust: &TrustAnchors) -> Result<Verified> {
    let image = PeImage::parse(pe)?;
    let Some(table) = image.certificate_table.clone() else {
        return Err(VerificationError::NotSigned {
            format: ExecutableFormat::Pe,
        }
        .into());
    };
    let signed_data = read_table(&pe[table])?;
    let digest = image.digest(pe);

    let content = check_content(&signed_data, &digest)?;
    let signer_info = single_signer(&signed_data)?;
    check_signed_attributes(signer_info, content.value())?;
    let certificates: Vec<Certificate> = signed_data
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|choice| match choice {
            CertificateChoices::Certificate(certificate) => Some(certificate.clone()),
            CertificateChoices::Other(_) => None,
        })
        .collect();
    let leaf = find_signer_certificate(signer_info, &certificates)?;
    check_signer_signature(signer_info, &leaf)?;

    let timestamp = check_timestamp(signer_info, trust.anchors(&trust.time_stamping))?;
    // Certificates must have been valid when the file was signed. Only a time-stamp says
    // when that was; without one, the time is now, as Windows does.
    let time = timestamp
        .as_ref()
        .map_or_else(SystemTime::now, |timestamp| timestamp.time);
    check_chain(
        &leaf,
        &certificates,
        trust.anchors(&trust.code_signing),
        time,
    )?;
    check_code_signing_usage(&leaf)?;

    Ok(Verified {
        signer: leaf.tbs_certificate.subject.to_string(),
        issuer: leaf.tbs_certificate.issuer.to_string(),
        digest,
        timestamp,
    })
}

/// The SignedData's header and content: versions, digest algorithms, and an
/// SpcIndirectDataContent for a PE image whose SHA-256 digest is `digest`. Returns the
/// content.
fn check_content<'a>(signed_data: &'a SignedData, digest: &[u8; 32]) -> Result<&'a Any> {
    // The Authenticode specification fixes both versions at 1; the signature does not
    // cover them, so a verifier that did not check would accept any.
    if signed_data.version != CmsVersion::V1 {
        return Err(structure(
            "the SignedData's version",
            format!("{:?}", signed_data.version),
            "Authenticode requires 1",
        ));
    }
    if !signed_data
        .digest_algorithms
        .iter()
        .any(|a| a.oid == SHA256)
    {
        return Err(structure(
            "the SignedData's list of digest algorithms",
            "without SHA-256".into(),
            "it must list its signer's, SHA-256",
        ));
    }
    let encapsulated = &signed_data.encap_content_info;
    if encapsulated.econtent_type != SPC_INDIRECT_DATA {
        return Err(structure(
            "the signature's content type",
            encapsulated.econtent_type.to_string(),
            "Authenticode's is SpcIndirectDataContent",
        ));
    }
    let content = encapsulated
        .econtent
        .as_ref()
        .ok_or(VerificationError::Missing {
            what: "SpcIndirectDataContent",
        })?;
    let indirect: SpcIndirectDataContent = content
        .decode_as()
        .map_err(unreadable("the SpcIndirectDataContent"))?;
    if indirect.data.value_type != SPC_PE_IMAGE_DATA {
        return Err(structure(
            "the signed object's type",
            indirect.data.value_type.to_string(),
            "Authenticode here signs PE images",
        ));
    }
    if indirect.message_digest.digest_algorithm.oid != SHA256 {
        return Err(UnsupportedError::Algorithm {
            what: "the file's Authenticode digest",
            kind: "digest",
            algorithm: indirect.message_digest.digest_algorithm.oid.to_string(),
            supported: "only SHA-256 is supported",
        }
        .into());
    }
    let signed_digest = indirect.message_digest.digest.as_bytes();
    if signed_digest != digest.as_slice() {
        return Err(VerificationError::DigestMismatch {
            computed: hex::encode(digest),
            signed: hex::encode(signed_digest),
        }
        .into());
    }

    Ok(content)
}

/// The SignedData of a certificate table holding exactly one WIN_CERTIFICATE.
fn read_table(table: &[u8]) -> Result<SignedData> {
    if table.len() < WIN_CERTIFICATE_HEADER_LEN {
        return Err(CoverageError::TableTooShort { len: table.len() }.into());
    }
    let length = u32::from_le_bytes(table[0..4].try_into().expect("4 bytes")) as usize;
    let revision = u16::from_le_bytes([table[4], table[5]]);
    let kind = u16::from_le_bytes([table[6], table[7]]);
    if revision != WIN_CERT_REVISION_2_0 || kind != WIN_CERT_TYPE_PKCS_SIGNED_DATA {
        return Err(UnsupportedError::WinCertificate { revision, kind }.into());
    }
    if length < WIN_CERTIFICATE_HEADER_LEN
        || length > table.len()
        || length.next_multiple_of(TABLE_ALIGN) != table.len()
    {
        return Err(CoverageError::EntryLength {
            claimed: length,
            len: table.len(),
        }
        .into());
    }
    let der = &table[WIN_CERTIFICATE_HEADER_LEN..length];
    let mut reader = SliceReader::new(der).map_err(unreadable("the signature"))?;
    let content_info =
        ContentInfo::decode(&mut reader).map_err(unreadable("the signature (as DER PKCS#7)"))?;
    let rest = reader
        .read_slice(reader.remaining_len())
        .map_err(unreadable("the signature"))?;
    // Some signers count the alignment padding in dwLength, others do not.
    if rest.iter().any(|b| *b != 0) {
        return Err(CoverageError::AfterSignature { count: rest.len() }.into());
    }
    if content_info.content_type != SIGNED_DATA {
        return Err(structure(
            "the signature's PKCS#7 content type",
            content_info.content_type.to_string(),
            "Authenticode's is SignedData",
        ));
    }
    content_info
        .content
        .decode_as()
        .map_err(unreadable("the PKCS#7 SignedData"))
}

fn single_signer(signed_data: &SignedData) -> Result<&SignerInfo> {
    let signers = signed_data.signer_infos.0.as_slice();
    let [signer] = signers else {
        return Err(structure(
            "the number of signers",
            signers.len().to_string(),
            "Authenticode requires exactly one",
        ));
    };
    if signer.version != CmsVersion::V1 {
        return Err(structure(
            "the SignerInfo's version",
            format!("{:?}", signer.version),
            "Authenticode requires 1",
        ));
    }
    if signer.digest_alg.oid != SHA256 {
        return Err(UnsupportedError::Algorithm {
            what: "the signer",
            kind: "digest",
            algorithm: signer.digest_alg.oid.to_string(),
            supported: "only SHA-256 is supported",
        }
        .into());
    }
    Ok(signer)
}

/// contentType must be SpcIndirectDataContent and messageDigest the SHA-256 of the
/// content's value octets (Authenticode's PKCS#7 rule).
fn check_signed_attributes(signer: &SignerInfo, content_value: &[u8]) -> Result<()> {
    let attributes = signer
        .signed_attrs
        .as_ref()
        .ok_or(VerificationError::Missing {
            what: "signed attributes",
        })?;
    let single = |oid: ObjectIdentifier, name: &'static str| {
        let mut matching = attributes.iter().filter(|a| a.oid == oid);
        match (matching.next(), matching.next()) {
            (Some(attribute), None) if attribute.values.len() == 1 => {
                Ok(attribute.values.get(0).expect("one value"))
            }
            _ => Err(structure(
                name,
                "not one attribute with one value".into(),
                "the signed attributes must hold exactly one",
            )),
        }
    };
    let content_type: ObjectIdentifier = single(CONTENT_TYPE, "the signed contentType")?
        .decode_as()
        .map_err(unreadable("the contentType attribute"))?;
    if content_type != SPC_INDIRECT_DATA {
        return Err(structure(
            "the signed contentType",
            content_type.to_string(),
            "it must be SpcIndirectDataContent",
        ));
    }
    let message_digest: OctetString = single(MESSAGE_DIGEST, "the signed messageDigest")?
        .decode_as()
        .map_err(unreadable("the messageDigest attribute"))?;
    if message_digest.as_bytes() != Sha256::digest(content_value).as_slice() {
        return Err(VerificationError::ContentDigest {
            what: "the signed messageDigest does not match the SpcIndirectDataContent",
            source: None,
        }
        .into());
    }
    Ok(())
}

fn find_signer_certificate(
    signer: &SignerInfo,
    certificates: &[Certificate],
) -> Result<Certificate> {
    let SignerIdentifier::IssuerAndSerialNumber(id) = &signer.sid else {
        return Err(UnsupportedError::SignerIdentifier.into());
    };
    certificates
        .iter()
        .find(|c| {
            c.tbs_certificate.issuer == id.issuer
                && c.tbs_certificate.serial_number == id.serial_number
        })
        .cloned()
        .ok_or_else(|| {
            CertificateError::NotEmbedded {
                signer: format!(
                    "the signer's certificate (issuer {}, serial {})",
                    id.issuer, id.serial_number
                ),
            }
            .into()
        })
}

/// The signer's signature over the DER SET OF its signed attributes.
fn check_signer_signature(signer: &SignerInfo, leaf_certificate: &Certificate) -> Result<()> {
    let leaf = captured(leaf_certificate)?;
    let key_algorithm = leaf
        .key_algorithm()
        .ok_or_else(|| UnsupportedError::Algorithm {
            what: "the signer's certificate",
            kind: "key",
            algorithm: leaf.key_algorithm_oid().to_string(),
            supported: "only RSA and ECDSA keys are supported",
        })?;
    let oid = signer.signature_algorithm.oid;
    let algorithm = match key_algorithm {
        KeyAlgorithm::Rsa if oid == RSA_ENCRYPTION || oid == SHA256_WITH_RSA => {
            SignatureAlgorithm::RsaSha256
        }
        KeyAlgorithm::Ecdsa(_) if oid == ECDSA_WITH_SHA256 || oid == EC_PUBLIC_KEY => {
            SignatureAlgorithm::EcdsaSha256
        }
        _ => {
            return Err(UnsupportedError::Algorithm {
                what: "the signer",
                kind: "signature",
                algorithm: format!("{oid} with a {key_algorithm:?} key"),
                supported: "SHA-256 with RSA or ECDSA is supported",
            }
            .into());
        }
    };
    let verification = algorithm
        .resolve_verification_algorithm(key_algorithm)
        .map_err(|e| UnsupportedError::VerifyingKey { source: e.into() })?;
    let signed = signer
        .signed_attrs
        .as_ref()
        .expect("checked by check_signed_attributes")
        .to_der()
        .map_err(unreadable("the signed attributes (encoded again)"))?;
    leaf.verify_signed_data_with_algorithm(signed, signer.signature.as_bytes(), verification)
        .map_err(|_| {
            VerificationError::Signature {
                what: "the signer's signature",
                key: Some(leaf_certificate.tbs_certificate.subject.to_string()),
                source: None,
            }
            .into()
        })
}

/// The RFC 3161 time-stamp in the unsigned attributes, verified, if there is one. Its
/// imprint is over the signer's signature value.
fn check_timestamp(signer: &SignerInfo, anchors: Anchors<'_>) -> Result<Option<Timestamp>> {
    let mut tokens = signer
        .unsigned_attrs
        .iter()
        .flat_map(|attributes| attributes.iter())
        .filter(|a| a.oid == RFC3161_COUNTER_SIGNATURE)
        .flat_map(|a| a.values.iter());
    let Some(token) = tokens.next() else {
        return Ok(None);
    };
    if tokens.next().is_some() {
        return Err(structure(
            "the number of RFC 3161 time-stamps",
            "more than one".into(),
            "a signature carries one at most",
        ));
    }
    let token = token.to_der().map_err(unreadable("the time-stamp token"))?;
    let info = timestamp::verify_token_with(&token, signer.signature.as_bytes(), anchors).map_err(
        |e| match e {
            Error::Verification(why) => VerificationError::InTimestamp(Box::new(why)).into(),
            other => other,
        },
    )?;
    Ok(Some(Timestamp {
        time: info.gen_time,
        authority: info.tsa_subject,
    }))
}

/// The signer's certificate chains through the signature's certificates to one of
/// `anchors`, each valid at `time` ([`crate::chain`]).
fn check_chain(
    leaf: &Certificate,
    certificates: &[Certificate],
    anchors: Anchors<'_>,
    time: SystemTime,
) -> Result<()> {
    let carried = certificates
        .iter()
        .map(captured)
        .collect::<Result<Vec<_>>>()?;
    chain::check_chain(&captured(leaf)?, &carried, anchors, time).map_err(|source| {
        CertificateError::Chain {
            certificate: format!("the certificate of {}", leaf.tbs_certificate.subject),
            anchor: "a trusted CA",
            source,
        }
        .into()
    })
}

fn check_code_signing_usage(leaf: &Certificate) -> Result<()> {
    let usage = leaf
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == EXTENDED_KEY_USAGE)
        .and_then(|e| ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok());
    match usage {
        Some(usage) if usage.0.contains(&KP_CODE_SIGNING) => Ok(()),
        _ => Err(CertificateError::Usage {
            certificate: format!("the signer's certificate {}", leaf.tbs_certificate.subject),
            usage: "code signing",
            detail: ": it lacks codeSigning",
        }
        .into()),
    }
}

fn captured(certificate: &Certificate) -> Result<CapturedX509Certificate> {
    let der = certificate
        .to_der()
        .map_err(unreadable("a certificate (encoded again)"))?;
    CapturedX509Certificate::from_der(der).map_err(|e| {
        VerificationError::Unreadable {
            what: "a certificate".into(),
            source: e.into(),
        }
        .into()
    })
}

/// A part of the signature found to be other than Authenticode prescribes.
fn structure(what: &'static str, found: String, expected: &'static str) -> Error {
    VerificationError::Structure {
        what,
        found,
        expected,
    }
    .into()
}

/// A DER error as a part of the signature that cannot be read.
fn unreadable(what: &'static str) -> impl Fn(der::Error) -> Error {
    move |e| {
        VerificationError::Unreadable {
            what: what.into(),
            source: e.into(),
        }
        .into()
    }
}
