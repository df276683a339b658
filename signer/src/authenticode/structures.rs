//! Microsoft's Authenticode ASN.1 structures and object identifiers.
//!
//! The `cms` and `x509-cert` crates cover PKCS#7/CMS and X.509; Microsoft's own content
//! type and attributes (from "Windows Authenticode Portable Executable Signature Format")
//! are defined nowhere in that family, so they are written here: as `der` derive types
//! where they are both encoded and parsed, and as hand-encoded constants or short
//! TLV writers where the structure is a nest of optional tagged CHOICEs that only signing
//! produces.
//!
//! ```text
//! WIN_CERTIFICATE { u32 dwLength; u16 wRevision; u16 wCertificateType; u8 bCertificate[] }
//!
//! SpcIndirectDataContent ::= SEQUENCE {
//!     data          SpcAttributeTypeAndOptionalValue,  -- SPC_PE_IMAGE_DATA + SpcPeImageData
//!     messageDigest DigestInfo }                       -- SHA-256 of the PE image
//! SpcPeImageData ::= SEQUENCE { flags BIT STRING, file [0] EXPLICIT SpcLink OPTIONAL }
//! SpcSpOpusInfo ::= SEQUENCE {
//!     programName [0] EXPLICIT SpcString OPTIONAL,
//!     moreInfo    [1] EXPLICIT SpcLink OPTIONAL }
//! SpcLink   ::= CHOICE { url [0] IMPLICIT IA5String, … file [2] EXPLICIT SpcString }
//! SpcString ::= CHOICE { unicode [0] IMPLICIT BMPString, ascii [1] IMPLICIT IA5String }
//! ```

use der::asn1::{ObjectIdentifier, OctetString};
use der::{Any, Sequence};
use spki::AlgorithmIdentifierOwned;

use crate::error::{ConfigError, Result};

/// `SPC_INDIRECT_DATA_OBJID`: the content type of an Authenticode SignedData.
pub const SPC_INDIRECT_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.4");
/// `SPC_PE_IMAGE_DATAOBJ`: the `data` of SpcIndirectDataContent is about a PE image.
pub const SPC_PE_IMAGE_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.15");
/// `SPC_SP_OPUS_INFO_OBJID`: program name and "more info" URL, shown by Windows' prompts.
pub const SPC_SP_OPUS_INFO: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.12");
/// `SPC_STATEMENT_TYPE_OBJID`: what kind of publisher signed.
pub const SPC_STATEMENT_TYPE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.11");
/// `SPC_INDIVIDUAL_SP_KEY_PURPOSE_OBJID`: individual (not commercial) code signing.
pub const SPC_INDIVIDUAL_SP_KEY_PURPOSE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.21");
/// `szOID_RFC3161_counterSign`: an RFC 3161 TimeStampToken in the unsigned attributes,
/// as `signtool /tr` and `osslsigncode -ts` write it.
pub const RFC3161_COUNTER_SIGNATURE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.3.3.1");

/// `WIN_CERT_REVISION_2_0`: the WIN_CERTIFICATE revision every current signer writes.
pub const WIN_CERT_REVISION_2_0: u16 = 0x0200;
/// `WIN_CERT_TYPE_PKCS_SIGNED_DATA`: the WIN_CERTIFICATE holds a PKCS#7 SignedData.
pub const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;
/// Size of the WIN_CERTIFICATE header (`dwLength`, `wRevision`, `wCertificateType`, all
/// little-endian) before the SignedData.
pub const WIN_CERTIFICATE_HEADER_LEN: usize = 8;

/// PKCS#7 `signedData`.
pub const SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// PKCS#9 `contentType` attribute.
pub const CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
/// PKCS#9 `messageDigest` attribute.
pub const MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
/// SHA-256.
pub const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// `rsaEncryption`, which PKCS#7 signers (OpenSSL, signtool) put as the signature
/// algorithm of RSA SignerInfos.
pub const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `sha256WithRSAEncryption`.
pub const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
/// `ecdsa-with-SHA256`.
pub const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// `id-ecPublicKey`, which some signers put as an ECDSA SignerInfo's signature algorithm.
pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// Extended key usage `codeSigning`.
pub const KP_CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");

/// SpcPeImageData as every current signer writes it: no flags, and the `file` link set
/// to the unicode string `"<<<Obsolete>>>"`, as signtool and osslsigncode write it (the link
/// is a leftover of an old format; nothing reads it).
pub const SPC_PE_IMAGE_DATA_VALUE: &[u8] = &[
    0x30, 0x25, // SEQUENCE
    0x03, 0x01, 0x00, // flags: BIT STRING, no bits
    0xa0, 0x20, // file [0] EXPLICIT SpcLink
    0xa2, 0x1e, // file [2] EXPLICIT SpcString
    0x80, 0x1c, // unicode [0] IMPLICIT BMPString "<<<Obsolete>>>"
    0x00, 0x3c, 0x00, 0x3c, 0x00, 0x3c, 0x00, 0x4f, 0x00, 0x62, 0x00, 0x73, 0x00, 0x6f, 0x00, 0x6c,
    0x00, 0x65, 0x00, 0x74, 0x00, 0x65, 0x00, 0x3e, 0x00, 0x3e, 0x00, 0x3e,
];

/// The content of an Authenticode SignedData.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct SpcIndirectDataContent {
    /// What was signed: SPC_PE_IMAGE_DATA and its SpcPeImageData.
    pub data: SpcAttributeTypeAndOptionalValue,
    /// The image digest.
    pub message_digest: DigestInfo,
}

/// A type and its optional value (untagged ANY).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct SpcAttributeTypeAndOptionalValue {
    /// SPC_PE_IMAGE_DATA for PE files.
    pub value_type: ObjectIdentifier,
    /// SpcPeImageData for PE files.
    #[asn1(optional = "true")]
    pub value: Option<Any>,
}

/// PKCS#1 DigestInfo.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct DigestInfo {
    /// The digest algorithm (SHA-256 here).
    pub digest_algorithm: AlgorithmIdentifierOwned,
    /// The digest.
    pub digest: OctetString,
}

/// SHA-256 with the explicit NULL parameters OpenSSL and signtool write.
pub fn sha256_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: SHA256,
        parameters: Some(Any::null()),
    }
}

/// SpcSpOpusInfo with an optional program name (a unicode SpcString, so that any
/// language displays) and an optional "more info" URL.
pub fn spc_sp_opus_info(description: Option<&str>, url: Option<&str>) -> Result<Vec<u8>> {
    let mut fields = Vec::new();
    if let Some(description) = description {
        let utf16: Vec<u8> = description
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        fields.extend(tlv(0xa0, &tlv(0x80, &utf16)));
    }
    if let Some(url) = url {
        if !url.is_ascii() {
            return Err(ConfigError::UrlNotAscii {
                url: url.to_string(),
            }
            .into());
        }
        fields.extend(tlv(0xa1, &tlv(0x80, url.as_bytes())));
    }
    Ok(tlv(0x30, &fields))
}

/// The value of SPC_STATEMENT_TYPE: SEQUENCE OF { individual code signing }.
pub fn statement_type_individual() -> Vec<u8> {
    let oid = SPC_INDIVIDUAL_SP_KEY_PURPOSE.as_bytes();
    tlv(0x30, &tlv(0x06, oid))
}

/// One DER tag-length-value with a low tag number.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::{Decode, Encode};

    #[test]
    fn hand_encoded_structures_are_valid_der() {
        let pe_image = Any::from_der(SPC_PE_IMAGE_DATA_VALUE).unwrap();
        assert_eq!(pe_image.to_der().unwrap(), SPC_PE_IMAGE_DATA_VALUE);
        let long = "x".repeat(300);
        for (description, url) in [
            (None, None),
            (Some("openwork ✓"), Some("https://example.invalid/")),
            (Some(long.as_str()), None),
        ] {
            let opus = spc_sp_opus_info(description, url).unwrap();
            let any = Any::from_der(&opus).unwrap();
            assert_eq!(any.to_der().unwrap(), opus);
        }
        let statement = statement_type_individual();
        let oids: Vec<ObjectIdentifier> = Vec::from_der(&statement).unwrap();
        assert_eq!(oids, [SPC_INDIVIDUAL_SP_KEY_PURPOSE]);
    }

    #[test]
    fn a_non_ascii_url_is_a_configuration_error() {
        let error = spc_sp_opus_info(None, Some("https://exämple.invalid/")).unwrap_err();
        assert!(matches!(error, crate::Error::Config(_)), "{error}");
    }
}
