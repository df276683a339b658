//! Building the PKCS#7 SignedData and writing it into the PE file.

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo,
};
use der::asn1::{OctetString, SetOfVec};
use der::{Any, Decode, Encode};
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::attr::Attribute;
use x509_certificate::{SignatureAlgorithm, Signer};

use super::SignOptions;
use super::image::{PeImage, TABLE_ALIGN, checksum};
use super::structures::{
    CONTENT_TYPE, DigestInfo, ECDSA_WITH_SHA256, MESSAGE_DIGEST, RFC3161_COUNTER_SIGNATURE,
    SHA256_WITH_RSA, SIGNED_DATA, SPC_INDIRECT_DATA, SPC_PE_IMAGE_DATA, SPC_PE_IMAGE_DATA_VALUE,
    SPC_SP_OPUS_INFO, SPC_STATEMENT_TYPE, SpcAttributeTypeAndOptionalValue, SpcIndirectDataContent,
    WIN_CERT_REVISION_2_0, WIN_CERT_TYPE_PKCS_SIGNED_DATA, WIN_CERTIFICATE_HEADER_LEN,
    sha256_algorithm, spc_sp_opus_info, statement_type_individual,
};
use super::{AttributeSigner, Signature};
use crate::error::{BoxError, CredentialsError, Error, NetworkError, Result, UnsupportedError};
use crate::key::SigningIdentity;
use crate::timestamp;

pub(crate) fn sign(
    pe: &[u8],
    signer: &dyn AttributeSigner,
    options: &SignOptions,
) -> Result<Vec<u8>> {
    let image = PeImage::parse(pe)?;
    // Re-signing replaces: the old table is dropped (it is last, PeImage::parse checks),
    // and the bytes before it are already 8-aligned, so signing a signed file gives the
    // same bytes as signing the unsigned one.
    let mut out = pe[..image.content_end()].to_vec();
    out.resize(out.len().next_multiple_of(TABLE_ALIGN), 0);
    let security = image.security_entry_offset;
    out[security..security + 8].fill(0);
    let image = PeImage::parse(&out)?;
    let digest = image.digest(&out);

    let signature = signed_data(&digest, signer, options)?;
    let table_len = (WIN_CERTIFICATE_HEADER_LEN + signature.len()).next_multiple_of(TABLE_ALIGN);
    let table_start = out.len();
    let (Ok(start), Ok(len), Ok(_)) = (
        u32::try_from(table_start),
        u32::try_from(table_len),
        u32::try_from(table_start + table_len),
    ) else {
        return Err(UnsupportedError::PeTooLarge {
            size: table_start + table_len,
        }
        .into());
    };
    // dwLength counts the padding too, as osslsigncode writes it, so that the entry
    // covers the whole table.
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
    out.extend_from_slice(&signature);
    out.resize(table_start + table_len, 0);
    out[security..security + 4].copy_from_slice(&start.to_le_bytes());
    out[security + 4..security + 8].copy_from_slice(&len.to_le_bytes());

    // Always written, also where the input had none: osslsigncode does the same (the
    // tests check it), the digest does not cover the field, and PE validators count a
    // wrong checksum in a signed release as a red flag.
    let at = image.checksum_offset;
    let sum = checksum(&out, at);
    out[at..at + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// The DER ContentInfo holding the SignedData for an image `digest`.
fn signed_data(
    digest: &[u8; 32],
    signer: &dyn AttributeSigner,
    options: &SignOptions,
) -> Result<Vec<u8>> {
    let indirect = SpcIndirectDataContent {
        data: SpcAttributeTypeAndOptionalValue {
            value_type: SPC_PE_IMAGE_DATA,
            value: Some(Any::from_der(SPC_PE_IMAGE_DATA_VALUE).map_err(encoding)?),
        },
        message_digest: DigestInfo {
            digest_algorithm: sha256_algorithm(),
            digest: OctetString::new(digest.as_slice()).map_err(encoding)?,
        },
    };
    let content = Any::encode_from(&indirect).map_err(encoding)?;
    // Authenticode's quirk (from PKCS#7 v1.5): messageDigest is over the content's value
    // octets, without the SEQUENCE tag and length.
    let content_digest = Sha256::digest(content.value());

    let opus = spc_sp_opus_info(options.description.as_deref(), options.url.as_deref())?;
    let signed_attributes = SetOfVec::try_from(vec![
        attribute(
            CONTENT_TYPE,
            Any::encode_from(&SPC_INDIRECT_DATA).map_err(encoding)?,
        )?,
        attribute(
            MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(content_digest.as_slice()).map_err(encoding)?)
                .map_err(encoding)?,
        )?,
        attribute(SPC_SP_OPUS_INFO, Any::from_der(&opus).map_err(encoding)?)?,
        attribute(
            SPC_STATEMENT_TYPE,
            Any::from_der(&statement_type_individual()).map_err(encoding)?,
        )?,
    ])
    .map_err(encoding)?;
    // Signed as a DER SET OF (tag 0x31), not as the [0] IMPLICIT it is stored as (RFC 5652
    // §5.4).
    let to_sign = signed_attributes.to_der().map_err(encoding)?;
    let Signature {
        value: signature,
        algorithm,
        certificate,
        chain,
    } = signer.sign_attributes(&to_sign)?;
    let signature_algorithm = match algorithm {
        // RFC 4055: the parameters of the RSA algorithms are an explicit NULL.
        SignatureAlgorithm::RsaSha256 => AlgorithmIdentifierOwned {
            oid: SHA256_WITH_RSA,
            parameters: Some(Any::null()),
        },
        SignatureAlgorithm::EcdsaSha256 => AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA256,
            parameters: None,
        },
        other => {
            return Err(CredentialsError::AuthenticodeAlgorithm {
                signer: signer.describe(),
                algorithm: format!("{other:?}"),
            }
            .into());
        }
    };

    let unsigned_attributes = match &options.timestamp {
        Some(config) => {
            // An RFC 3161 time-stamp over the signature value, as `signtool /tr` and
            // `osslsigncode -ts` add it: it keeps the signature valid after the signing
            // certificate expires.
            let token = timestamp::request_token(config, &signature)?;
            let token =
                Any::from_der(&token).map_err(|source| NetworkError::TimestampToken { source })?;
            Some(
                SetOfVec::try_from(vec![attribute(RFC3161_COUNTER_SIGNATURE, token)?])
                    .map_err(encoding)?,
            )
        }
        None => None,
    };

    let leaf = x509_cert::Certificate::from_der(certificate.constructed_data())
        .map_err(|e| unreadable_certificate("the signing certificate", e))?;
    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: leaf.tbs_certificate.issuer.clone(),
            serial_number: leaf.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: sha256_algorithm(),
        signed_attrs: Some(signed_attributes),
        signature_algorithm,
        signature: OctetString::new(signature).map_err(encoding)?,
        unsigned_attrs: unsigned_attributes,
    };

    let mut certificates = vec![CertificateChoices::Certificate(leaf)];
    for certificate in &chain {
        let certificate = x509_cert::Certificate::from_der(certificate.constructed_data())
            .map_err(|e| unreadable_certificate("a chain certificate", e))?;
        let choice = CertificateChoices::Certificate(certificate);
        if !certificates.contains(&choice) {
            certificates.push(choice);
        }
    }
    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![sha256_algorithm()]).map_err(encoding)?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: SPC_INDIRECT_DATA,
            // The SpcIndirectDataContent itself, not wrapped in an OCTET STRING as CMS
            // would: Authenticode follows PKCS#7, where content is ANY.
            econtent: Some(content),
        },
        certificates: Some(CertificateSet(
            SetOfVec::try_from(certificates).map_err(encoding)?,
        )),
        crls: None,
        signer_infos: SetOfVec::try_from(vec![signer_info])
            .map_err(encoding)?
            .into(),
    };
    ContentInfo {
        content_type: SIGNED_DATA,
        content: Any::encode_from(&signed_data).map_err(encoding)?,
    }
    .to_der()
    .map_err(encoding)
}

fn attribute(oid: der::asn1::ObjectIdentifier, value: Any) -> Result<Attribute> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value]).map_err(encoding)?,
    })
}

fn encoding(error: der::Error) -> Error {
    UnsupportedError::Encoding { source: error }.into()
}

fn unreadable_certificate(what: &str, error: der::Error) -> Error {
    CredentialsError::Unreadable {
        what: what.to_owned(),
        source: error.into(),
        hint: "",
    }
    .into()
}

impl AttributeSigner for SigningIdentity {
    fn describe(&self) -> String {
        SigningIdentity::describe(self)
    }

    fn sign_attributes(&self, message: &[u8]) -> Result<Signature> {
        let key = self.key();
        let cannot_sign = |source: BoxError| CredentialsError::CannotSign {
            signer: self.describe(),
            source,
        };
        let algorithm = key
            .signature_algorithm()
            .map_err(|e| cannot_sign(e.into()))?;
        let value: Vec<u8> = Signer::try_sign(key, message)
            .map_err(|e| cannot_sign(e.into()))?
            .into();
        Ok(Signature {
            value,
            algorithm,
            certificate: self.certificate().clone(),
            chain: self.chain().to_vec(),
        })
    }
}
