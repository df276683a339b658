//! Certificate repair: after apple-codesign has signed, the certificates in the CMS
//! signature and its time-stamp token are put back as they were issued (see
//! [`restore_certificates`]).

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{CertificateSet, SignedData, SignerInfos};
use der::asn1::{ObjectIdentifier, SetOfVec};
use der::{Any, Decode, Encode, Tagged};

use super::layout::code_signature_range;
use super::superblob::{CMS_SIGNATURE_SLOT, Superblob};
use crate::error::{Result, VerificationError};
use crate::key::SigningIdentity;
use crate::timestamp::oid::TIME_STAMP_TOKEN;

/// Puts back, in the signature of a file apple-codesign just signed, the certificates as
/// they were issued.
///
/// apple-codesign 0.29 re-encodes the certificates it embeds in the CMS signature, and
/// those in the time-stamp token it receives, through its own ASN.1 types, which write
/// ECDSA signature algorithm identifiers with NULL parameters (RFC 5758 §3.2: they must be
/// absent). That changes the signed bytes of every ECDSA-signed certificate, so its
/// signature no longer verifies and the token's ESS hash no longer names its TSA
/// certificate: macOS would reject the chain, and so does [`super::verify_macho`]. RSA
/// certificates come through unchanged. Certificates are outside what the CMS signature
/// and the code directory cover, so they can be replaced after signing: the signer's with
/// the identity's own bytes, the TSA's by removing the added NULLs (any other difference
/// would still fail the token's ESS check). The result is shorter, so it fits the space
/// apple-codesign reserved; the load commands and every hash stay as they are.
pub(crate) fn restore_certificates(signed: &mut [u8], identity: &SigningIdentity) -> Result<()> {
    let (start, size) = code_signature_range(signed)?;
    let region = &mut signed[start as usize..(start + size) as usize];
    let superblob = Superblob::parse(region)?;
    let Some(cms_index) = superblob
        .blobs
        .iter()
        .position(|(slot, _)| *slot == CMS_SIGNATURE_SLOT)
    else {
        return Ok(());
    };
    let cms_blob = superblob.blobs[cms_index].1;
    let cms = cms_blob.get(8..).unwrap_or_default();
    if cms.is_empty() {
        return Ok(());
    }
    let repaired = repair_cms(cms, identity).map_err(|e| VerificationError::Unreadable {
        what: "the CMS signature apple-codesign wrote".into(),
        source: e.into(),
    })?;
    let mut new_blob = Vec::with_capacity(repaired.len() + 8);
    new_blob.extend_from_slice(&cms_blob[..4]);
    new_blob.extend_from_slice(&((repaired.len() + 8) as u32).to_be_bytes());
    new_blob.extend_from_slice(&repaired);
    let mut blobs: Vec<(u32, &[u8])> = superblob.blobs.clone();
    blobs[cms_index].1 = &new_blob;
    let rebuilt = Superblob::write(superblob.magic, &blobs);
    if rebuilt.len() > region.len() {
        return Err(VerificationError::Structure {
            what: "the repaired signature",
            found: format!("{} bytes", rebuilt.len()),
            expected: "it must fit the bytes apple-codesign reserved for it",
        }
        .into());
    }
    region.fill(0);
    region[..rebuilt.len()].copy_from_slice(&rebuilt);
    Ok(())
}

/// The CMS signature with the identity's certificates as issued and the time-stamp
/// token's ECDSA certificates without the NULL parameters apple-codesign added.
fn repair_cms(cms: &[u8], identity: &SigningIdentity) -> der::Result<Vec<u8>> {
    let mut info = ContentInfo::from_der(cms)?;
    let mut signed: SignedData = info.content.decode_as()?;
    let certificates = std::iter::once(identity.certificate())
        .chain(identity.chain())
        .map(|c| {
            x509_cert::Certificate::from_der(c.constructed_data())
                .map(CertificateChoices::Certificate)
        })
        .collect::<der::Result<Vec<_>>>()?;
    signed.certificates = Some(CertificateSet(SetOfVec::try_from(certificates)?));
    let mut signers = signed.signer_infos.0.into_vec();
    for signer in &mut signers {
        let Some(attributes) = signer.unsigned_attrs.take() else {
            continue;
        };
        let mut attributes = attributes.into_vec();
        for attribute in &mut attributes {
            if attribute.oid == TIME_STAMP_TOKEN {
                let tokens = attribute
                    .values
                    .iter()
                    .map(repair_token)
                    .collect::<der::Result<Vec<_>>>()?;
                attribute.values = SetOfVec::try_from(tokens)?;
            }
        }
        signer.unsigned_attrs = Some(SetOfVec::try_from(attributes)?);
    }
    signed.signer_infos = SignerInfos(SetOfVec::try_from(signers)?);
    info.content = Any::encode_from(&signed)?;
    info.to_der()
}

fn repair_token(token: &Any) -> der::Result<Any> {
    let mut info: ContentInfo = token.decode_as()?;
    let mut signed: SignedData = info.content.decode_as()?;
    if let Some(set) = signed.certificates.take() {
        let certificates = set
            .0
            .into_vec()
            .into_iter()
            .map(|choice| match choice {
                CertificateChoices::Certificate(mut certificate) => {
                    drop_ecdsa_null(&mut certificate.signature_algorithm);
                    drop_ecdsa_null(&mut certificate.tbs_certificate.signature);
                    CertificateChoices::Certificate(certificate)
                }
                other => other,
            })
            .collect::<Vec<_>>();
        signed.certificates = Some(CertificateSet(SetOfVec::try_from(certificates)?));
    }
    info.content = Any::encode_from(&signed)?;
    Any::encode_from(&info)
}

/// ECDSA signature algorithms (1.2.840.10045.4.*) take no parameters.
fn drop_ecdsa_null(algorithm: &mut spki::AlgorithmIdentifierOwned) {
    let ecdsa_signatures = ObjectIdentifier::new_unwrap("1.2.840.10045.4");
    let is_ecdsa = algorithm
        .oid
        .as_bytes()
        .starts_with(ecdsa_signatures.as_bytes());
    if is_ecdsa
        && algorithm
            .parameters
            .as_ref()
            .is_some_and(|p| p.tag() == der::Tag::Null)
    {
        algorithm.parameters = None;
    }
}
