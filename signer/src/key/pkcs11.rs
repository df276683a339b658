//! Keys that stay on a PKCS#11 token or HSM (a smart card, a cloud HSM's module, SoftHSM in
//! tests): the module signs, this process only ever sees public data.
//!
//! The key is found by token (label or slot) and key label and/or ID; its certificate comes
//! from the token (the certificate object with the key's ID) unless the caller gives one.
//! Loading signs a probe message and checks it with the certificate, so a key that is not
//! the certificate's fails here rather than producing signatures no verifier accepts.
//!
//! Mechanisms: RSA keys sign with `CKM_SHA256_RSA_PKCS` (the module hashes); EC keys with
//! `CKM_ECDSA` over a digest made here (SHA-256 for P-256, SHA-384 for P-384, as the
//! signature algorithm says), converted from the module's raw `r || s` to the DER that CMS
//! carries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use der::Encode;
use der::asn1::Uint;
use der::oid::ObjectIdentifier;
use sha2::Digest;
use x509_certificate::{
    CapturedX509Certificate, EcdsaCurve, KeyAlgorithm, KeyInfoSigner, Sign, Signature,
    SignatureAlgorithm, Signer, X509CertificateError,
};

use super::{SigningIdentity, describe_certificate};
use crate::error::{ConfigError, CredentialsError, Error, Pkcs11Error, Result};

/// Which module, token and key to sign with.
#[derive(Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library) of the token's vendor.
    pub module: PathBuf,
    /// The token's label; with `slot` unset, required when more than one token is present.
    pub token_label: Option<String>,
    /// The slot ID, as `pkcs11-tool --list-slots` shows it.
    pub slot: Option<u64>,
    /// The private key's label (`CKA_LABEL`).
    pub key_label: Option<String>,
    /// The private key's ID (`CKA_ID`); also finds its certificate on the token.
    pub key_id: Option<Vec<u8>>,
    /// The user PIN. Never printed; zeroed when the configuration is dropped.
    pub pin: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("slot", &self.slot)
            .field("key_label", &self.key_label)
            .field("key_id", &self.key_id.as_ref().map(hex::encode))
            .field("pin", &"<redacted>")
            .finish()
    }
}

/// Logs in to the token and returns its key with the certificate: `certificates` (leaf
/// first, then its chain) when given, otherwise the token's certificate for the key.
pub fn load(
    config: &Pkcs11Config,
    certificates: Option<Vec<CapturedX509Certificate>>,
) -> Result<SigningIdentity> {
    let context = module(&config.module)?;
    let (slot, token) = find_token(&context, config)?;
    let session = context
        .open_ro_session(slot)
        .map_err(|e| token_error(&token, "cannot open a session", e))?;
    login(&session, &config.pin, &token)?;
    let found = find_key(&session, config, &token)?;
    let (certificate, chain) = match certificates {
        Some(mut given) if !given.is_empty() => {
            let leaf = given.remove(0);
            (leaf, given)
        }
        Some(_) => {
            return Err(CredentialsError::NoCertificate {
                what: "the certificate file for the PKCS#11 key",
            }
            .into());
        }
        None => (token_certificate(&session, &found, &token)?, Vec::new()),
    };
    let key = Pkcs11Key {
        kind: found.kind,
        public_key: certificate.public_key_data(),
        handle: found.handle,
        session: Mutex::new(session),
    };
    key.check_pair(&certificate, &found.name, &token)?;
    SigningIdentity::new(Box::new(key), certificate, chain)
}

/// Logs in to the token and returns its key alone, without a certificate: for signatures
/// over messages (the update channel's metadata) rather than files. The public key is the
/// token's public-key object with the key's ID (or, for a key without one, its label), as
/// `pkcs11-tool --keypairgen` and every HSM's key generation leave it; the pair is checked
/// by signing a probe and verifying it with that public key. Only EC P-256 keys.
pub fn load_key(config: &Pkcs11Config) -> Result<Box<dyn KeyInfoSigner + Send + Sync>> {
    let context = module(&config.module)?;
    let (slot, token) = find_token(&context, config)?;
    let session = context
        .open_ro_session(slot)
        .map_err(|e| token_error(&token, "cannot open a session", e))?;
    login(&session, &config.pin, &token)?;
    let found = find_key(&session, config, &token)?;
    if !matches!(found.kind, KeyKind::Ecdsa(EcdsaCurve::Secp256r1)) {
        return Err(Pkcs11Error::UnsupportedKey {
            kind: "",
            key: found.name,
            token,
            found: format!("{:?}", found.kind),
            supported: "EC P-256 keys (update metadata is signed with ECDSA P-256)",
        }
        .into());
    }
    let point = token_public_point(&session, &found, &token)?;
    let key = Pkcs11Key {
        kind: found.kind,
        public_key: bytes::Bytes::from(point.clone()),
        handle: found.handle,
        session: Mutex::new(session),
    };
    let probe = b"openwork-signer: does this key belong to this public key?";
    let signature = key
        .sign_on_token(probe)
        .map_err(|e| token_error(&token, &format!("the key {} cannot sign", found.name), e))?;
    let holds = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
        .ok()
        .zip(p256::ecdsa::Signature::from_der(&signature).ok())
        .is_some_and(|(public, signature)| {
            p256::ecdsa::signature::Verifier::verify(&public, probe, &signature).is_ok()
        });
    if !holds {
        return Err(Pkcs11Error::KeyMismatch {
            key: found.name,
            token,
            certificate: "public key object with its ID".into(),
        }
        .into());
    }
    Ok(Box::new(key))
}

/// The uncompressed EC point of the public-key object that goes with `key`.
fn token_public_point(session: &Session, key: &FoundKey, token: &str) -> Result<Vec<u8>> {
    let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
    if key.id.is_empty() {
        template.push(Attribute::Label(key.label.clone()));
    } else {
        template.push(Attribute::Id(key.id.clone()));
    }
    let found = session
        .find_objects(&template)
        .map_err(|e| token_error(token, "cannot search for public keys", e))?;
    let no_public_key = || -> Error {
        Pkcs11Error::NoCertificate {
            token: token.to_owned(),
            key: format!(
                "{} (nor its public key object, which signing update metadata needs)",
                key.name
            ),
        }
        .into()
    };
    let handle = found.first().ok_or_else(no_public_key)?;
    let attributes = session
        .get_attributes(*handle, &[AttributeType::EcPoint])
        .map_err(|e| token_error(token, "cannot read the public key", e))?;
    let point = attributes
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(no_public_key)?;
    // PKCS#11 says CKA_EC_POINT is the DER OCTET STRING of the point; some modules give
    // the bare point.
    match point.as_slice() {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => Ok(rest.to_vec()),
        bare if bare.len() == 65 && bare[0] == 0x04 => Ok(bare.to_vec()),
        _ => Err(no_public_key()),
    }
}

/// The module at `path`, loaded and initialized once for the process and never unloaded:
/// PKCS#11 allows one `C_Initialize` per process, and a module unloaded while another
/// identity still uses it takes that identity's sessions with it (SoftHSM then crashes).
fn module(path: &Path) -> Result<Pkcs11> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(context) = modules.get(path) {
        return Ok(context.clone());
    }
    let shown = path.display().to_string();
    let context = Pkcs11::new(path).map_err(|source| ConfigError::Pkcs11Module {
        module: shown.clone(),
        source,
    })?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Initialized by other code in this process (an OpenSSL engine, say).
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(source) => {
            return Err(Pkcs11Error::ModuleStart {
                module: shown,
                source,
            }
            .into());
        }
    }
    modules.insert(path.to_owned(), context.clone());
    Ok(context)
}

/// A private key on a token. The session is the module's handle to the logged-in token;
/// PKCS#11 sessions are single-threaded, hence the mutex.
struct Pkcs11Key {
    session: Mutex<Session>,
    handle: ObjectHandle,
    kind: KeyKind,
    /// The certificate's public key, checked against the token's key when loading.
    public_key: bytes::Bytes,
}

#[derive(Debug, Clone, Copy)]
enum KeyKind {
    Rsa,
    Ecdsa(EcdsaCurve),
}

impl Pkcs11Key {
    fn sign_on_token(&self, message: &[u8]) -> std::result::Result<Vec<u8>, CkError> {
        let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        match self.kind {
            KeyKind::Rsa => session.sign(&Mechanism::Sha256RsaPkcs, self.handle, message),
            KeyKind::Ecdsa(curve) => {
                let digest = match curve {
                    EcdsaCurve::Secp256r1 => sha2::Sha256::digest(message).to_vec(),
                    EcdsaCurve::Secp384r1 => sha2::Sha384::digest(message).to_vec(),
                };
                let raw = session.sign(&Mechanism::Ecdsa, self.handle, &digest)?;
                ecdsa_raw_to_der(&raw).ok_or(CkError::InvalidValue)
            }
        }
    }

    /// Signs a probe and verifies it with `certificate`: the only check that works with
    /// every module, since EC private key objects do not carry their public key.
    fn check_pair(
        &self,
        certificate: &CapturedX509Certificate,
        key_name: &str,
        token: &str,
    ) -> Result<()> {
        let probe = b"openwork-signer: does this key belong to this certificate?";
        let signature = self
            .sign_on_token(probe)
            .map_err(|e| token_error(token, &format!("the key {key_name} cannot sign"), e))?;
        let mismatch = || -> Error {
            Pkcs11Error::KeyMismatch {
                key: key_name.to_owned(),
                token: token.to_owned(),
                certificate: describe_certificate(certificate),
            }
            .into()
        };
        let key_algorithm = certificate.key_algorithm().ok_or_else(mismatch)?;
        let verification = self
            .signature_algorithm()
            .and_then(|a| a.resolve_verification_algorithm(key_algorithm))
            .map_err(|_| mismatch())?;
        certificate
            .verify_signed_data_with_algorithm(probe, &signature, verification)
            .map_err(|_| mismatch())
    }
}

impl Signer<Signature> for Pkcs11Key {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Signature, rsa::signature::Error> {
        self.sign_on_token(message)
            .map(Signature::from)
            .map_err(rsa::signature::Error::from_source)
    }
}

impl Sign for Pkcs11Key {
    fn sign(
        &self,
        message: &[u8],
    ) -> std::result::Result<(Vec<u8>, SignatureAlgorithm), X509CertificateError> {
        let signature = self.try_sign(message)?;
        Ok((signature.into(), self.signature_algorithm()?))
    }

    fn key_algorithm(&self) -> Option<KeyAlgorithm> {
        Some(match self.kind {
            KeyKind::Rsa => KeyAlgorithm::Rsa,
            KeyKind::Ecdsa(curve) => KeyAlgorithm::Ecdsa(curve),
        })
    }

    fn public_key_data(&self) -> bytes::Bytes {
        self.public_key.clone()
    }

    fn signature_algorithm(&self) -> std::result::Result<SignatureAlgorithm, X509CertificateError> {
        Ok(match self.kind {
            KeyKind::Rsa => SignatureAlgorithm::RsaSha256,
            KeyKind::Ecdsa(EcdsaCurve::Secp256r1) => SignatureAlgorithm::EcdsaSha256,
            KeyKind::Ecdsa(EcdsaCurve::Secp384r1) => SignatureAlgorithm::EcdsaSha384,
        })
    }

    fn private_key_data(&self) -> Option<der::zeroize::Zeroizing<Vec<u8>>> {
        None
    }

    fn rsa_primes(
        &self,
    ) -> std::result::Result<
        Option<(
            der::zeroize::Zeroizing<Vec<u8>>,
            der::zeroize::Zeroizing<Vec<u8>>,
        )>,
        X509CertificateError,
    > {
        Ok(None)
    }
}

impl KeyInfoSigner for Pkcs11Key {}

/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 3279 §2.2.3).
#[derive(der::Sequence)]
struct EcdsaSignature {
    r: Uint,
    s: Uint,
}

fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    EcdsaSignature {
        r: Uint::new(r).ok()?,
        s: Uint::new(s).ok()?,
    }
    .to_der()
    .ok()
}

fn find_token(context: &Pkcs11, config: &Pkcs11Config) -> Result<(Slot, String)> {
    let module = config.module.display().to_string();
    let slots = context
        .get_slots_with_initialized_token()
        .map_err(|source| Pkcs11Error::Slots {
            module: module.clone(),
            source,
        })?;
    let mut tokens = Vec::new();
    for slot in slots {
        let info = context
            .get_token_info(slot)
            .map_err(|source| Pkcs11Error::TokenInfo {
                slot: slot.id(),
                source,
            })?;
        tokens.push((slot, info.label().trim_end().to_owned()));
    }
    let describe = |tokens: &[(Slot, String)]| {
        if tokens.is_empty() {
            "none".to_owned()
        } else {
            tokens
                .iter()
                .map(|(slot, label)| format!("\"{label}\" in slot {}", slot.id()))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let matching: Vec<_> = tokens
        .iter()
        .filter(|(slot, label)| {
            config.slot.is_none_or(|id| slot.id() == id)
                && config.token_label.as_ref().is_none_or(|l| l == label)
        })
        .cloned()
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Pkcs11Error::NoToken {
            label: config.token_label.clone(),
            slot: config.slot,
            module,
            tokens: describe(&tokens),
        }
        .into()),
        several => Err(Pkcs11Error::SeveralTokens {
            count: several.len(),
            tokens: describe(several),
        }
        .into()),
    }
}

fn login(session: &Session, pin: &str, token: &str) -> Result<()> {
    let pin = AuthPin::new(pin.into());
    match session.login(UserType::User, Some(&pin)) {
        // PKCS#11 logins are per process and token: another identity already logged in.
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(
            RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
            _,
        )) => Err(Pkcs11Error::WrongPin {
            token: token.to_owned(),
        }
        .into()),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(Pkcs11Error::PinLocked {
            token: token.to_owned(),
        }
        .into()),
        Err(e) => Err(token_error(token, "cannot log in", e)),
    }
}

/// The private key the configuration names, with what signing needs to know about it.
struct FoundKey {
    handle: ObjectHandle,
    kind: KeyKind,
    id: Vec<u8>,
    label: Vec<u8>,
    /// How messages name it: label and ID.
    name: String,
}

fn find_key(session: &Session, config: &Pkcs11Config, token: &str) -> Result<FoundKey> {
    let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
    if let Some(label) = &config.key_label {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &config.key_id {
        template.push(Attribute::Id(id.clone()));
    }
    let search_error = |e| token_error(token, "cannot search for keys", e);
    let found = session.find_objects(&template).map_err(search_error)?;
    let wanted = name_of(
        config.key_label.as_ref().map(|l| l.as_bytes()),
        config.key_id.as_deref(),
    );
    let handle = match found.as_slice() {
        [one] => *one,
        [] => {
            let all = session
                .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
                .map_err(search_error)?;
            let names = all
                .iter()
                .map(|h| identify(session, *h).map(|(label, id)| name_of(Some(&label), Some(&id))))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(search_error)?;
            return Err(Pkcs11Error::NoKey {
                wanted,
                token: token.to_owned(),
                keys: if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                },
            }
            .into());
        }
        several => {
            return Err(Pkcs11Error::SeveralKeys {
                count: several.len(),
                wanted,
                token: token.to_owned(),
            }
            .into());
        }
    };
    let (label, id) = identify(session, handle).map_err(search_error)?;
    let name = name_of(Some(&label), Some(&id));
    let attributes = session
        .get_attributes(handle, &[AttributeType::KeyType])
        .map_err(|e| token_error(token, "cannot read the key's type", e))?;
    let key_type = attributes.iter().find_map(|a| match a {
        Attribute::KeyType(t) => Some(*t),
        _ => None,
    });
    let kind = match key_type {
        Some(KeyType::RSA) => KeyKind::Rsa,
        Some(KeyType::EC) => KeyKind::Ecdsa(ec_curve(session, handle, &name, token)?),
        other => {
            return Err(Pkcs11Error::UnsupportedKey {
                kind: "",
                key: name,
                token: token.to_owned(),
                found: format!(
                    "of type {}",
                    other.map_or("unknown".to_owned(), |t| t.to_string())
                ),
                supported: "RSA and EC P-256/P-384 keys",
            }
            .into());
        }
    };
    Ok(FoundKey {
        handle,
        kind,
        id,
        label,
        name,
    })
}

fn identify(
    session: &Session,
    handle: ObjectHandle,
) -> std::result::Result<(Vec<u8>, Vec<u8>), CkError> {
    let attributes = session.get_attributes(handle, &[AttributeType::Label, AttributeType::Id])?;
    let mut label = Vec::new();
    let mut id = Vec::new();
    for attribute in attributes {
        match attribute {
            Attribute::Label(l) => label = l,
            Attribute::Id(i) => id = i,
            _ => {}
        }
    }
    Ok((label, id))
}

/// `"label" (ID 01)` for messages.
fn name_of(label: Option<&[u8]>, id: Option<&[u8]>) -> String {
    let mut parts = Vec::new();
    if let Some(label) = label.filter(|l| !l.is_empty()) {
        parts.push(format!("\"{}\"", String::from_utf8_lossy(label)));
    }
    if let Some(id) = id.filter(|i| !i.is_empty()) {
        parts.push(format!("(ID {})", hex::encode(id)));
    }
    if parts.is_empty() {
        "without label or ID".to_owned()
    } else {
        parts.join(" ")
    }
}

const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

fn ec_curve(
    session: &Session,
    handle: ObjectHandle,
    name: &str,
    token: &str,
) -> Result<EcdsaCurve> {
    let attributes = session
        .get_attributes(handle, &[AttributeType::EcParams])
        .map_err(|e| token_error(token, "cannot read the EC key's curve", e))?;
    let params = attributes.into_iter().find_map(|a| match a {
        Attribute::EcParams(p) => Some(p),
        _ => None,
    });
    let curve = params.and_then(|p| <ObjectIdentifier as der::Decode>::from_der(&p).ok());
    match curve {
        Some(P256) => Ok(EcdsaCurve::Secp256r1),
        Some(P384) => Ok(EcdsaCurve::Secp384r1),
        other => Err(Pkcs11Error::UnsupportedKey {
            kind: "EC ",
            key: name.to_owned(),
            token: token.to_owned(),
            found: format!(
                "on curve {}",
                other.map_or("unknown".to_owned(), |c| c.to_string())
            ),
            supported: "P-256 and P-384",
        }
        .into()),
    }
}

/// The X.509 certificate object with the key's ID (or, for a key without one, its label).
fn token_certificate(
    session: &Session,
    key: &FoundKey,
    token: &str,
) -> Result<CapturedX509Certificate> {
    let mut template = vec![
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(CertificateType::X_509),
    ];
    if key.id.is_empty() {
        template.push(Attribute::Label(key.label.clone()));
    } else {
        template.push(Attribute::Id(key.id.clone()));
    }
    let found = session
        .find_objects(&template)
        .map_err(|e| token_error(token, "cannot search for certificates", e))?;
    let Some(handle) = found.first() else {
        return Err(Pkcs11Error::NoCertificate {
            token: token.to_owned(),
            key: key.name.clone(),
        }
        .into());
    };
    let attributes = session
        .get_attributes(*handle, &[AttributeType::Value])
        .map_err(|e| token_error(token, "cannot read the certificate", e))?;
    let der = attributes
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        })
        .unwrap_or_default();
    CapturedX509Certificate::from_der(der).map_err(|e| {
        CredentialsError::Unreadable {
            what: format!(
                "the certificate for the key {} on PKCS#11 token \"{token}\"",
                key.name
            ),
            source: e.into(),
            hint: "",
        }
        .into()
    })
}

fn token_error(token: &str, what: &str, source: CkError) -> Error {
    Pkcs11Error::Token {
        token: token.to_owned(),
        what: what.to_owned(),
        source,
    }
    .into()
}
