//! Signed succession statements: how a device that pinned the old certificate learns to
//! trust its replacement without pairing again.
//!
//! When the server replaces its generated certificate (renewal before expiry, or `tls
//! rotate`), the **old** key signs a statement naming the new certificate's fingerprint.
//! The server keeps the last [`MAX_STATEMENTS`] in `<data dir>/tls/succession.json` and
//! serves them without a token (`GET /tls/succession?from=<fingerprint>`): they hold no
//! secret and prove themselves. A device whose pin fails connects once more accepting any
//! certificate, fetches the statements *over that connection*, and re-pins only if
//! [`verify`] leads from its pin to the certificate that connection presented. A LAN
//! attacker can relay the statements but cannot present the certificate they lead to (it
//! lacks the key), nor sign one from the old certificate (it lacks that key too).
//!
//! The format, byte for byte (docs/RUNTIME.md says the same, for implementers on phones):
//!
//! ```text
//! body      = {"format": 1, "statements": [statement, …]}            oldest first
//! statement = {"oldCertificate": base64(DER of the replaced certificate),
//!              "newFingerprint": hex(SHA-256 of the new certificate's DER), 64 lowercase digits,
//!              "issuedMs":       Unix time in milliseconds,
//!              "signature":      base64(DER ECDSA-Sig-Value)}
//! signed    = "openwork-server-v2 certificate succession v1" 0x00     (45 bytes, CONTEXT)
//!             || SHA-256(oldCertificate)                             (32 bytes)
//!             || newFingerprint as bytes                             (32 bytes)
//!             || issuedMs as an unsigned 64-bit big-endian integer   (8 bytes)
//! signature = ECDSA P-256 with SHA-256 over `signed`, by the key of oldCertificate
//!             (Android: SHA256withECDSA; Apple: ecdsaSignatureMessageX962SHA256)
//! ```
//!
//! `tls rotate --forget` (a key that may be compromised) writes no statement and clears the
//! chain: every device pairs again.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::SignatureScheme;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::trust;

/// The format this server writes and reads.
pub const FORMAT: u32 = 1;
/// Statements kept (and served): a device that missed more renewals than this pairs again.
/// At one renewal a year, that is sixteen years; `tls rotate` adds one each time.
pub const MAX_STATEMENTS: usize = 16;
/// What every signed message starts with, so that no signature made for anything else (a
/// TLS handshake signs other bytes with the same key) can pass for a statement.
pub const CONTEXT: &[u8] = b"openwork-server-v2 certificate succession v1\0";

/// The statements, oldest first: the body of `GET /tls/succession` and the content of
/// `<data dir>/tls/succession.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = TlsSuccession))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Succession {
    /// Always 1.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1))]
    pub format: u32,
    /// Oldest first; each leads from its `oldCertificate` to `newFingerprint`.
    pub statements: Vec<Statement>,
}

/// One replacement of the certificate, signed by the key of the certificate it replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = SuccessionStatement))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Statement {
    /// The replaced certificate, DER in standard base64: a device checks that its SHA-256
    /// is the fingerprint it pinned, and verifies `signature` with its public key.
    pub old_certificate: String,
    /// SHA-256 of the new certificate's DER, 64 lowercase hex digits.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{64}$"))]
    pub new_fingerprint: String,
    /// When it was signed, Unix time in milliseconds.
    pub issued_ms: u64,
    /// ECDSA P-256 SHA-256 signature (DER, standard base64) over the signed message (see
    /// docs/RUNTIME.md, "Following a new certificate").
    pub signature: String,
}

/// Why a device must not follow the statements it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuccessionError {
    /// The pin given is not a SHA-256 fingerprint.
    #[error("{0:?} is not a certificate fingerprint (64 hex digits of SHA-256)")]
    NotAFingerprint(String),
    /// The statements are of a format this code does not read.
    #[error("succession format {0} is not 1; update this client")]
    UnknownFormat(u32),
    /// Nothing leads from the pinned certificate.
    #[error(
        "no statement leads from the certificate {0}: it was replaced without one (`tls rotate --forget`) or too many renewals ago; pair again"
    )]
    NoStatement(String),
    /// A statement is not signed by the key of the certificate it claims to replace.
    #[error(
        "the statement leading from {from} is not signed by that certificate's key ({problem}): refusing it"
    )]
    BadSignature {
        /// The certificate it claims to replace.
        from: String,
        /// What is wrong.
        problem: String,
    },
    /// The statements lead somewhere, but not to the certificate this connection presents.
    #[error(
        "the statements lead to {reached}, not to the certificate this connection presents ({presented}): refusing them"
    )]
    EndsElsewhere {
        /// Where they lead.
        reached: String,
        /// What the server presented.
        presented: String,
    },
}

/// The bytes a statement's signature covers (see the module's format).
pub fn signed_message(
    old_certificate: &[u8],
    new_fingerprint: &[u8; 32],
    issued_ms: u64,
) -> Vec<u8> {
    let mut message = Vec::with_capacity(CONTEXT.len() + 32 + 32 + 8);
    message.extend_from_slice(CONTEXT);
    message.extend_from_slice(&Sha256::digest(old_certificate));
    message.extend_from_slice(new_fingerprint);
    message.extend_from_slice(&issued_ms.to_be_bytes());
    message
}

/// A fingerprint as its 32 bytes (hex, either case), if it is one.
fn fingerprint_bytes(text: &str) -> Option<[u8; 32]> {
    hex::decode(text.trim()).ok()?.try_into().ok()
}

impl Statement {
    /// A statement that `old_certificate` (DER) is replaced by the certificate with
    /// `new_fingerprint`, signed with `key` (the old certificate's own, when the server
    /// makes one; tests also sign with others, to see them refused).
    pub fn sign(
        old_certificate: &[u8],
        key: &dyn rustls::sign::SigningKey,
        new_fingerprint: &str,
        issued_ms: u64,
    ) -> std::result::Result<Statement, String> {
        let new = fingerprint_bytes(new_fingerprint)
            .ok_or_else(|| format!("{new_fingerprint:?} is not a SHA-256 fingerprint"))?;
        let signer = key
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .ok_or("the old key is not an ECDSA P-256 key")?;
        let signature = signer
            .sign(&signed_message(old_certificate, &new, issued_ms))
            .map_err(|e| format!("signing failed: {e}"))?;
        Ok(Statement {
            old_certificate: STANDARD.encode(old_certificate),
            new_fingerprint: hex::encode(new),
            issued_ms,
            signature: STANDARD.encode(signature),
        })
    }

    /// The replaced certificate's fingerprint, or `None` when `oldCertificate` is not
    /// base64 (such a statement leads from nowhere).
    pub fn old_fingerprint(&self) -> Option<String> {
        STANDARD
            .decode(&self.old_certificate)
            .ok()
            .map(|der| super::fingerprint(&der))
    }

    /// Checks the signature with the old certificate's key; the new fingerprint, lower case.
    fn check(&self, from: &str) -> std::result::Result<String, SuccessionError> {
        let bad = |problem: &str| SuccessionError::BadSignature {
            from: from.to_string(),
            problem: problem.to_string(),
        };
        let old = STANDARD
            .decode(&self.old_certificate)
            .map_err(|_| bad("oldCertificate is not base64"))?;
        let new = fingerprint_bytes(&self.new_fingerprint)
            .ok_or_else(|| bad("newFingerprint is not 64 hex digits"))?;
        let signature = STANDARD
            .decode(&self.signature)
            .map_err(|_| bad("signature is not base64"))?;
        let old_der = CertificateDer::from(old.as_slice());
        let cert = webpki::EndEntityCert::try_from(&old_der)
            .map_err(|e| bad(&format!("oldCertificate is not a certificate: {e}")))?;
        cert.verify_signature(
            webpki::ring::ECDSA_P256_SHA256,
            &signed_message(&old, &new, self.issued_ms),
            &signature,
        )
        .map_err(|e| bad(&format!("{e}")))?;
        Ok(hex::encode(new))
    }
}

impl Default for Succession {
    fn default() -> Succession {
        Succession {
            format: FORMAT,
            statements: Vec::new(),
        }
    }
}

impl Succession {
    /// The statements that lead on from `fingerprint`, in order (following each one's new
    /// fingerprint to the next); empty when none does.
    pub fn leading_from(&self, fingerprint: &str) -> Vec<Statement> {
        let mut at = fingerprint.trim().to_ascii_lowercase();
        let mut path: Vec<Statement> = Vec::new();
        // Bounded: a loop in the statements (A to B to A) ends when every one was used.
        while path.len() < self.statements.len() {
            let Some(next) = self.find(&at) else { break };
            at = next.new_fingerprint.to_ascii_lowercase();
            path.push(next.clone());
        }
        path
    }

    /// The newest statement leading from `fingerprint`.
    fn find(&self, fingerprint: &str) -> Option<&Statement> {
        self.statements
            .iter()
            .rev()
            .find(|s| s.old_fingerprint().as_deref() == Some(fingerprint))
    }

    /// Adds a statement: one from the same certificate (a renewal that crashed before it
    /// was committed) is replaced, and only the newest [`MAX_STATEMENTS`] are kept.
    pub fn push(&mut self, statement: Statement) {
        let from = statement.old_fingerprint();
        self.statements.retain(|s| s.old_fingerprint() != from);
        self.statements.push(statement);
        let extra = self.statements.len().saturating_sub(MAX_STATEMENTS);
        self.statements.drain(..extra);
    }

    /// Reads the statements kept at `path` (none when there is no file). The file must be
    /// ours (exit 15 otherwise, as for every file of the data dir); one that cannot be
    /// parsed is logged and treated as empty: the statements only help devices follow, the
    /// server runs without them.
    pub fn read(path: &Path) -> Result<Succession> {
        let Some(file) = trust::open_trusted(path, "the certificate succession file")? else {
            return Ok(Succession::default());
        };
        match serde_json::from_reader::<_, Succession>(std::io::BufReader::new(file)) {
            Ok(read) if read.format == FORMAT => Ok(read),
            Ok(read) => {
                tracing::warn!(file = %path.display(), format = read.format, "ignoring certificate succession statements of another format; paired devices must pair again after the next renewal");
                Ok(Succession::default())
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable certificate succession file; it is rewritten at the next renewal");
                Ok(Succession::default())
            }
        }
    }

    /// Writes the statements to `path` (0600, through a temp file and a rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        trust::write_private_atomic(path, &bytes)
    }
}

/// Follows `succession` from the certificate a device pinned (`pinned`, its SHA-256 in hex)
/// to the certificate the server presented on this very connection (`presented`, DER):
/// every statement on the way must lead from the previous certificate and be signed by that
/// certificate's key, and the last must name `presented`. Returns the fingerprint to pin
/// from now on. Statements beyond `presented` (renewals after this connection began) are
/// ignored.
///
/// This is the one verifier in Rust: the tests and any Rust client use it, and
/// docs/RUNTIME.md specifies the same steps for clients in other languages.
pub fn verify(
    pinned: &str,
    presented: &[u8],
    succession: &Succession,
) -> std::result::Result<String, SuccessionError> {
    if succession.format != FORMAT {
        return Err(SuccessionError::UnknownFormat(succession.format));
    }
    let target = super::fingerprint(presented);
    let mut at = fingerprint_bytes(pinned)
        .map(hex::encode)
        .ok_or_else(|| SuccessionError::NotAFingerprint(pinned.to_string()))?;
    let mut followed = 0;
    while at != target {
        // Each statement can be used once: a loop cannot keep this going.
        if followed == succession.statements.len() {
            return Err(SuccessionError::EndsElsewhere {
                reached: at,
                presented: target,
            });
        }
        let Some(link) = succession.find(&at) else {
            return Err(if followed == 0 {
                SuccessionError::NoStatement(at)
            } else {
                SuccessionError::EndsElsewhere {
                    reached: at,
                    presented: target,
                }
            });
        };
        at = link.check(&at)?;
        followed += 1;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A fresh self-signed P-256 certificate (DER) and its key.
    fn identity() -> (Vec<u8>, Arc<dyn rustls::sign::SigningKey>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = super::super::provider()
            .key_provider
            .load_private_key(private)
            .unwrap();
        (cert.der().to_vec(), signing)
    }

    fn fp(der: &[u8]) -> String {
        super::super::fingerprint(der)
    }

    #[test]
    fn the_signed_message_is_exactly_the_documented_bytes() {
        let message = signed_message(b"old", &[0xab; 32], 0x0102_0304_0506_0708);
        assert_eq!(CONTEXT.len(), 45);
        assert_eq!(message.len(), 45 + 32 + 32 + 8);
        assert_eq!(
            &message[..45],
            b"openwork-server-v2 certificate succession v1\0"
        );
        // SHA-256("old")
        assert_eq!(
            hex::encode(&message[45..77]),
            "cba06b5736faf67e54b07b561eae94395e774c517a7d910a54369e1263ccfbd4"
        );
        assert_eq!(&message[77..109], &[0xab; 32]);
        assert_eq!(&message[109..], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn a_chain_of_statements_leads_a_pin_to_the_presented_certificate() {
        let (a, a_key) = identity();
        let (b, b_key) = identity();
        let (c, _) = identity();
        let mut chain = Succession::default();
        chain.push(Statement::sign(&a, a_key.as_ref(), &fp(&b), 1).unwrap());
        chain.push(Statement::sign(&b, b_key.as_ref(), &fp(&c), 2).unwrap());
        // Through the JSON a device receives.
        let chain: Succession =
            serde_json::from_str(&serde_json::to_string(&chain).unwrap()).unwrap();
        assert_eq!(verify(&fp(&a), &c, &chain), Ok(fp(&c)));
        assert_eq!(verify(&fp(&a).to_uppercase(), &c, &chain), Ok(fp(&c)));
        assert_eq!(verify(&fp(&b), &c, &chain), Ok(fp(&c)));
        // A connection that began before the second renewal: the first link is enough.
        assert_eq!(verify(&fp(&a), &b, &chain), Ok(fp(&b)));
        assert_eq!(verify(&fp(&c), &c, &chain), Ok(fp(&c)), "nothing to follow");
        assert_eq!(chain.leading_from(&fp(&a)).len(), 2);
        assert_eq!(chain.leading_from(&fp(&b)).len(), 1);
        assert!(chain.leading_from(&fp(&c)).is_empty());
    }

    #[test]
    fn forged_or_misleading_statements_are_refused() {
        let (a, a_key) = identity();
        let (b, _) = identity();
        let (attacker, attacker_key) = identity();
        let genuine = Statement::sign(&a, a_key.as_ref(), &fp(&b), 1).unwrap();
        let chain = |statements: Vec<Statement>| Succession {
            format: FORMAT,
            statements,
        };

        // An attacker's certificate with a statement from the pinned one, signed by the
        // attacker's own key.
        let forged = Statement::sign(&a, attacker_key.as_ref(), &fp(&attacker), 1).unwrap();
        let refused = verify(&fp(&a), &attacker, &chain(vec![forged])).unwrap_err();
        assert!(
            matches!(refused, SuccessionError::BadSignature { .. }),
            "{refused}"
        );
        // The genuine statement relayed by an attacker presenting its own certificate.
        let refused = verify(&fp(&a), &attacker, &chain(vec![genuine.clone()])).unwrap_err();
        assert!(
            matches!(refused, SuccessionError::EndsElsewhere { ref reached, .. } if *reached == fp(&b)),
            "{refused}"
        );
        // The genuine statement with its target changed.
        let mut retargeted = genuine.clone();
        retargeted.new_fingerprint = fp(&attacker);
        let refused = verify(&fp(&a), &attacker, &chain(vec![retargeted])).unwrap_err();
        assert!(
            matches!(refused, SuccessionError::BadSignature { .. }),
            "{refused}"
        );
        // Or its time.
        let mut retimed = genuine.clone();
        retimed.issued_ms += 1;
        assert!(verify(&fp(&a), &b, &chain(vec![retimed])).is_err());
        // A statement from another certificate does not lead from the pin.
        let refused = verify(&fp(&b), &attacker, &chain(vec![genuine.clone()])).unwrap_err();
        assert_eq!(refused, SuccessionError::NoStatement(fp(&b)));
        // A loop ends.
        let (x, x_key) = identity();
        let (y, y_key) = identity();
        let looped = chain(vec![
            Statement::sign(&x, x_key.as_ref(), &fp(&y), 1).unwrap(),
            Statement::sign(&y, y_key.as_ref(), &fp(&x), 2).unwrap(),
        ]);
        assert!(matches!(
            verify(&fp(&x), &attacker, &looped),
            Err(SuccessionError::EndsElsewhere { .. })
        ));
        assert_eq!(looped.leading_from(&fp(&x)).len(), 2);
        // Garbage.
        let mut garbage = genuine;
        garbage.signature = "not base64!".into();
        assert!(verify(&fp(&a), &b, &chain(vec![garbage])).is_err());
        assert!(matches!(
            verify("abc", &b, &Succession::default()),
            Err(SuccessionError::NotAFingerprint(_))
        ));
        let newer = Succession {
            format: 2,
            statements: Vec::new(),
        };
        assert_eq!(
            verify(&fp(&a), &b, &newer),
            Err(SuccessionError::UnknownFormat(2))
        );
    }

    #[test]
    fn a_statement_from_the_same_certificate_replaces_the_older_and_few_are_kept() {
        let (a, a_key) = identity();
        let (b, _) = identity();
        let (c, _) = identity();
        let mut chain = Succession::default();
        chain.push(Statement::sign(&a, a_key.as_ref(), &fp(&b), 1).unwrap());
        chain.push(Statement::sign(&a, a_key.as_ref(), &fp(&c), 2).unwrap());
        assert_eq!(chain.statements.len(), 1);
        assert_eq!(verify(&fp(&a), &c, &chain), Ok(fp(&c)));
        for n in 0..MAX_STATEMENTS + 3 {
            let (old, key) = identity();
            chain.push(Statement::sign(&old, key.as_ref(), &fp(&b), n as u64).unwrap());
        }
        assert_eq!(chain.statements.len(), MAX_STATEMENTS);
    }
}
