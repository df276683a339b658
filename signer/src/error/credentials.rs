//! Keys, certificates and secrets that cannot be used, by where they come from.

use std::path::PathBuf;

use super::BoxError;

/// A key, certificate or secret that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A key or certificate that does not decode.
    #[error("cannot read {what} ({source}){hint}")]
    Unreadable {
        /// What (`the PKCS#8 private key`, `the certificate`).
        what: String,
        /// The decoder's error.
        #[source]
        source: BoxError,
        /// What was expected, as `; expected …`, or empty.
        hint: &'static str,
    },
    /// A key file in none of the formats read here.
    #[error(
        "cannot read the private key: expected PEM, or DER PKCS#8, PKCS#1 RSA or SEC1 EC, \
         unencrypted, holding RSA, ECDSA P-256/P-384 or Ed25519"
    )]
    UnknownKeyFormat,
    /// A PEM key file without a private key block.
    #[error(
        "the key file holds no private key (found: {found}); expected PEM \"BEGIN PRIVATE \
         KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\""
    )]
    NoPrivateKey {
        /// The PEM labels that were there (`none`).
        found: String,
    },
    /// An encrypted private key.
    #[error(
        "the private key is encrypted; give the key and certificate as a .p12/.pfx file with \
         its password instead, or decrypt the key (openssl pkey -in <key> -out <decrypted>) \
         and keep the result out of version control"
    )]
    EncryptedKey,
    /// A key of a type or curve that cannot sign here.
    #[error("{key} cannot sign here; use {supported}")]
    UnsupportedKey {
        /// The key (`DSA private keys`, `EC keys on curve P-521`).
        key: String,
        /// What can sign.
        supported: &'static str,
    },
    /// An EC key without its curve.
    #[error("{what} names no curve")]
    NoCurve {
        /// The key.
        what: &'static str,
    },
    /// A SEC1 EC key without its public half.
    #[error(
        "the SEC1 EC private key lacks its public key; rewrite it with openssl pkey -in <key> \
         -out <key.pem>"
    )]
    NoPublicKey,
    /// A certificate file without certificates.
    #[error("{what} holds no certificate")]
    NoCertificate {
        /// The file.
        what: &'static str,
    },
    /// A private key that is not the certificate's.
    #[error("the private key does not belong to the certificate for {certificate}")]
    KeyMismatch {
        /// The certificate, described.
        certificate: String,
    },
    /// The key failed to sign.
    #[error("the key of {signer} could not sign: {source}")]
    CannotSign {
        /// The identity, described.
        signer: String,
        /// The key's error.
        #[source]
        source: BoxError,
    },
    /// A key whose signature algorithm Authenticode signing here does not make.
    #[error(
        "the key of {signer} signs with {algorithm}; Authenticode signatures made here use \
         SHA-256 with RSA or ECDSA P-256 keys"
    )]
    AuthenticodeAlgorithm {
        /// The identity, described.
        signer: String,
        /// Its algorithm.
        algorithm: String,
    },
    /// A PKCS#12 file that cannot be used.
    #[error(transparent)]
    Pkcs12(#[from] Pkcs12Error),
    /// A PKCS#11 module, token or key that cannot be used.
    #[error(transparent)]
    Pkcs11(#[from] Pkcs11Error),
    /// A remote signing or notary service that refuses the credentials, or signs wrongly.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A secret that the configuration names but is not there, and policy says fail.
    #[error(
        "[{section}] {missing}; provide it, or set on-missing-secret = \"skip\" to go on \
         without {section}"
    )]
    SecretMissing {
        /// The configuration section.
        section: String,
        /// The references that are missing, described.
        missing: String,
    },
    /// A secret that is there but not text.
    #[error("{what} is not valid UTF-8")]
    SecretNotUtf8 {
        /// The variable's name, or `a text secret`.
        what: String,
    },
    /// A secret file that cannot be read.
    #[error("cannot read the secret: {source}")]
    SecretUnreadable {
        /// The I/O error (fs-err: it names the file).
        #[source]
        source: std::io::Error,
    },
    /// A `base64:` secret that is not base64. The value is never shown.
    #[error(
        "{reference} is not base64 (the reference says base64:); store the output of \
         `base64 < file` or drop the base64: prefix"
    )]
    SecretNotBase64 {
        /// The inner reference (`env:NAME`).
        reference: String,
    },
}

/// A PKCS#12 (.p12/.pfx) file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs12Error {
    /// The MAC does not verify.
    #[error("the PKCS#12 password is wrong (its integrity check fails)")]
    WrongPassword,
    /// Without a MAC, a wrong password shows as undecryptable content.
    #[error("cannot decrypt the PKCS#12 file: the password is wrong, or the file is damaged")]
    Undecryptable,
    /// Encryption or MAC algorithms this reader lacks.
    #[error(
        "the PKCS#12 file is protected with an algorithm this signer does not support \
         ({source}); re-export it with OpenSSL 3's defaults (openssl pkcs12 -export)"
    )]
    UnsupportedProtection {
        /// The reader's error.
        #[source]
        source: p12_keystore::error::Error,
    },
    /// Not a PKCS#12 file.
    #[error("cannot read the PKCS#12 file ({source}); is it a .p12/.pfx file?")]
    Unreadable {
        /// The reader's error.
        #[source]
        source: p12_keystore::error::Error,
    },
    /// A certificate inside that does not decode.
    #[error("a certificate in the PKCS#12 cannot be read ({source})")]
    Certificate {
        /// The decoder's error.
        #[source]
        source: BoxError,
    },
    /// No key with a certificate.
    #[error(
        "the PKCS#12 file holds no private key with a certificate; export it with the key \
         (openssl pkcs12 -export -inkey <key> -in <certificate>)"
    )]
    NoKey,
    /// More than one key.
    #[error(
        "the PKCS#12 file holds {count} private keys ({names}); give a file with one signing identity"
    )]
    SeveralKeys {
        /// How many.
        count: usize,
        /// Their friendly names.
        names: String,
    },
    /// No certificate for the key.
    #[error("none of the {count} certificates in the PKCS#12 file belongs to its private key")]
    NoMatchingCertificate {
        /// How many certificates there are.
        count: usize,
    },
}

/// A PKCS#11 module, token or key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    /// `C_Initialize` failed.
    #[error("the PKCS#11 module {module} does not start ({source})")]
    ModuleStart {
        /// The module's path.
        module: String,
        /// The module's error.
        #[source]
        source: cryptoki::error::Error,
    },
    /// The slot list cannot be read.
    #[error("the PKCS#11 module {module} lists no slots ({source})")]
    Slots {
        /// The module's path.
        module: String,
        /// The module's error.
        #[source]
        source: cryptoki::error::Error,
    },
    /// A token's information cannot be read.
    #[error("cannot read the token in slot {slot} ({source})")]
    TokenInfo {
        /// The slot's ID.
        slot: u64,
        /// The module's error.
        #[source]
        source: cryptoki::error::Error,
    },
    /// No token matches the configuration.
    #[error("no PKCS#11 token{}{} in module {module} (tokens: {tokens})",
        label.as_ref().map(|l| format!(" labelled \"{l}\"")).unwrap_or_default(),
        slot.map(|s| format!(" in slot {s}")).unwrap_or_default())]
    NoToken {
        /// The configured label.
        label: Option<String>,
        /// The configured slot.
        slot: Option<u64>,
        /// The module's path.
        module: String,
        /// The tokens there are, described.
        tokens: String,
    },
    /// Several tokens match the configuration.
    #[error("{count} PKCS#11 tokens match ({tokens}); set the token label or the slot")]
    SeveralTokens {
        /// How many.
        count: usize,
        /// Those tokens, described.
        tokens: String,
    },
    /// The PIN is wrong.
    #[error("the PIN for PKCS#11 token \"{token}\" is wrong")]
    WrongPin {
        /// The token's label.
        token: String,
    },
    /// The PIN is locked.
    #[error(
        "the PIN of PKCS#11 token \"{token}\" is locked (too many wrong PINs); unlock it with \
         the security officer PIN"
    )]
    PinLocked {
        /// The token's label.
        token: String,
    },
    /// No key matches the configuration.
    #[error("no private key {wanted} on PKCS#11 token \"{token}\" (keys there: {keys})")]
    NoKey {
        /// The configured label and ID, described.
        wanted: String,
        /// The token's label.
        token: String,
        /// The keys there are, described (`none`).
        keys: String,
    },
    /// Several keys match the configuration.
    #[error(
        "{count} private keys {wanted} on PKCS#11 token \"{token}\"; set the key label and ID \
         so that one matches"
    )]
    SeveralKeys {
        /// How many.
        count: usize,
        /// The configured label and ID, described.
        wanted: String,
        /// The token's label.
        token: String,
    },
    /// A key of a type or curve that cannot sign here.
    #[error(
        "the {kind}key {key} on PKCS#11 token \"{token}\" is {found}; only {supported} can sign here"
    )]
    UnsupportedKey {
        /// `EC ` for a curve, empty for a key type.
        kind: &'static str,
        /// The key, described.
        key: String,
        /// The token's label.
        token: String,
        /// `of type …` or `on curve …`.
        found: String,
        /// What can sign.
        supported: &'static str,
    },
    /// No certificate for the key on the token.
    #[error(
        "PKCS#11 token \"{token}\" holds no certificate for the key {key}; give the \
         certificate file instead"
    )]
    NoCertificate {
        /// The token's label.
        token: String,
        /// The key, described.
        key: String,
    },
    /// The key is not the certificate's.
    #[error(
        "the key {key} on PKCS#11 token \"{token}\" does not belong to the certificate {certificate}"
    )]
    KeyMismatch {
        /// The key, described.
        key: String,
        /// The token's label.
        token: String,
        /// The certificate, described.
        certificate: String,
    },
    /// A token operation failed.
    #[error("PKCS#11 token \"{token}\": {what} ({source})")]
    Token {
        /// The token's label.
        token: String,
        /// What was being done.
        what: String,
        /// The module's error.
        #[source]
        source: cryptoki::error::Error,
    },
}

/// A remote signing or notary service that refuses the credentials, or answers wrongly.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The service refused (HTTP 4xx).
    #[error("{refusal} (HTTP {status}): {message}{hint}")]
    Refused {
        /// Who refused what (`Entra ID refused the signer's credentials`).
        refusal: String,
        /// The HTTP status.
        status: u16,
        /// What the service said (redacted).
        message: String,
        /// What to check, as `; …`, or empty.
        hint: &'static str,
    },
    /// A signing operation ended without a signature.
    #[error("{service} did not sign: operation {operation} ended {status}: {why}")]
    NotSigned {
        /// The service.
        service: String,
        /// The operation's ID.
        operation: String,
        /// Its final status.
        status: String,
        /// What the service said.
        why: String,
    },
    /// An answer that lacks or contradicts what signing needs.
    #[error("{service}: {problem}")]
    Answer {
        /// The service.
        service: String,
        /// What is wrong with the answer.
        problem: String,
    },
    /// The App Store Connect API key cannot be used.
    #[error("{0}")]
    AppStoreConnectKey(&'static str),
    /// The App Store Connect key file named on the command line does not exist.
    #[error("the App Store Connect key file {} does not exist", path.display())]
    KeyFileMissing {
        /// The path.
        path: PathBuf,
    },
}
