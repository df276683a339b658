//! The pairing exchange, both sides: SPAKE2 (Ed25519 group, the `spake2` crate, which
//! interoperates with Python's `spake2` package) over the pairing code, with the server's
//! certificate fingerprint in the server's identity, and a key confirmation in each
//! direction. docs/RUNTIME.md ("Pairing, the protocol") is the specification a phone app
//! implements; this module is the one place the code defines it.
//!
//! Why a PAKE and not "send the code over TLS": a device that found the server by mDNS
//! (whose TXT anyone on the LAN can forge) or by a typed address has no fingerprint to pin,
//! so it accepts whatever certificate answers. A relay on the LAN can then terminate TLS
//! with its own certificate, forward a typed code to the real server and pair in the
//! device's place. Here the code never crosses the wire: each side proves it holds the
//! code, and the proof covers the fingerprint the *device saw*. Behind a relay the device
//! saw the relay's certificate and the server its own, so the two derive different keys,
//! the server refuses the device's proof (one wrong guess for the relay's address), and no
//! token is issued. Without the code, a peer learns nothing it could test guesses against
//! offline: the server sends nothing derived from the key before the device has proven it.
//!
//! | step | device (A) | server (B) |
//! |---|---|---|
//! | 1 | `msgA = SPAKE2_A(code, CLIENT_ID, server_id(fp seen))` | |
//! | 2 | | `msgB = SPAKE2_B(code, CLIENT_ID, server_id(own fp))`, `K` from `msgA` |
//! | 3 | `K` from `msgB`; sends `HMAC(K, CLIENT_CONFIRM ‖ msgA ‖ msgB)` | |
//! | 4 | | checks it in constant time; only then pairs and sends `HMAC(K, SERVER_CONFIRM ‖ msgA ‖ msgB)` |
//! | 5 | checks it before keeping the token, then pins `fp` | |

use hmac::{Hmac, Mac};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};

/// The device's SPAKE2 identity (`idA`).
pub const CLIENT_ID: &[u8] = b"openwork-pair-v1 client";
/// The start of the server's SPAKE2 identity (`idB`): followed by its certificate's SHA-256
/// as 64 lowercase hex digits (nothing on a server without TLS, which only loopback has).
pub const SERVER_ID_PREFIX: &[u8] = b"openwork-pair-v1 server ";
/// What the device's confirmation MACs before the two messages.
pub const CLIENT_CONFIRM_LABEL: &[u8] = b"openwork-pair-v1 client confirm";
/// What the server's confirmation MACs before the two messages.
pub const SERVER_CONFIRM_LABEL: &[u8] = b"openwork-pair-v1 server confirm";
/// Bytes of a SPAKE2 message: the side (`A` = 0x41, `B` = 0x42) and a compressed Ed25519
/// point.
pub const MESSAGE_LEN: usize = 33;
/// Bytes of a confirmation (HMAC-SHA256).
pub const CONFIRM_LEN: usize = 32;

/// A SPAKE2 message.
pub type Message = [u8; MESSAGE_LEN];
/// A key confirmation.
pub type Confirm = [u8; CONFIRM_LEN];

/// Why a SPAKE2 message from the other side was not usable: an input error (the sender's
/// bug or a forgery), never a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not [`MESSAGE_LEN`] bytes.
    #[error("a SPAKE2 message is {MESSAGE_LEN} bytes, this one is {0}")]
    WrongLength(usize),
    /// The first byte does not name the expected side.
    #[error("the SPAKE2 message must start with the byte {0:?}, its side")]
    WrongSide(char),
    /// The point does not decode.
    #[error("the SPAKE2 message does not hold an Ed25519 point")]
    NotAPoint,
}

/// The server's SPAKE2 identity for a certificate fingerprint (`None`: no TLS).
pub fn server_id(fingerprint: Option<&str>) -> Vec<u8> {
    let mut id = SERVER_ID_PREFIX.to_vec();
    if let Some(fingerprint) = fingerprint {
        id.extend(fingerprint.trim().to_ascii_lowercase().bytes());
    }
    id
}

/// What both sides hold after the exchange: the key and the two messages, from which each
/// confirmation is computed. The key never leaves this type (and its `Debug` hides it).
pub struct Transcript {
    key: Vec<u8>,
    msg_a: Message,
    msg_b: Message,
}

impl std::fmt::Debug for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcript").finish_non_exhaustive()
    }
}

impl Transcript {
    fn mac(&self, label: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(label);
        mac.update(&self.msg_a);
        mac.update(&self.msg_b);
        mac
    }

    /// The device's confirmation: `HMAC-SHA256(K, CLIENT_CONFIRM_LABEL ‖ msgA ‖ msgB)`.
    pub fn client_confirm(&self) -> Confirm {
        self.mac(CLIENT_CONFIRM_LABEL)
            .finalize()
            .into_bytes()
            .into()
    }

    /// The server's confirmation: `HMAC-SHA256(K, SERVER_CONFIRM_LABEL ‖ msgA ‖ msgB)`.
    pub fn server_confirm(&self) -> Confirm {
        self.mac(SERVER_CONFIRM_LABEL)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `confirm` is the device's confirmation (constant time).
    pub fn verify_client(&self, confirm: &Confirm) -> bool {
        self.mac(CLIENT_CONFIRM_LABEL).verify_slice(confirm).is_ok()
    }

    /// Whether `confirm` is the server's confirmation (constant time).
    pub fn verify_server(&self, confirm: &[u8]) -> bool {
        self.mac(SERVER_CONFIRM_LABEL).verify_slice(confirm).is_ok()
    }
}

/// The server's side: answers the device's message. Returns the transcript (kept until the
/// device's confirmation arrives) and `msgB` (sent back; nothing derived from the key is).
pub fn respond(
    code: &str,
    fingerprint: Option<&str>,
    msg_a: &[u8],
) -> Result<(Transcript, Message), MessageError> {
    check_form(msg_a, b'A')?;
    let (state, msg_b) = Spake2::<Ed25519Group>::start_b(
        &Password::new(code.as_bytes()),
        &Identity::new(CLIENT_ID),
        &Identity::new(&server_id(fingerprint)),
    );
    let key = state.finish(msg_a).map_err(|_| MessageError::NotAPoint)?;
    let msg_b: Message = msg_b.try_into().expect("SPAKE2 messages are 33 bytes");
    let msg_a: Message = msg_a.try_into().expect("checked above");
    Ok((Transcript { key, msg_a, msg_b }, msg_b))
}

/// The device's side, between sending `msgA` and receiving `msgB`.
pub struct ClientStart {
    state: Spake2<Ed25519Group>,
    msg_a: Message,
}

impl std::fmt::Debug for ClientStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStart").finish_non_exhaustive()
    }
}

impl ClientStart {
    /// Starts with the typed code (normalised here) and the fingerprint of the certificate
    /// this device saw in its TLS handshake (`None` over plain HTTP). Returns `msgA` to send.
    pub fn new(code: &str, seen_fingerprint: Option<&str>) -> (ClientStart, Message) {
        let (state, msg_a) = Spake2::<Ed25519Group>::start_a(
            &Password::new(normalize(code).as_bytes()),
            &Identity::new(CLIENT_ID),
            &Identity::new(&server_id(seen_fingerprint)),
        );
        let msg_a: Message = msg_a.try_into().expect("SPAKE2 messages are 33 bytes");
        (ClientStart { state, msg_a }, msg_a)
    }

    /// Takes the server's `msgB`: the transcript, whose [`Transcript::client_confirm`] is
    /// sent next.
    pub fn finish(self, msg_b: &[u8]) -> Result<Transcript, MessageError> {
        check_form(msg_b, b'B')?;
        let key = self
            .state
            .finish(msg_b)
            .map_err(|_| MessageError::NotAPoint)?;
        Ok(Transcript {
            key,
            msg_a: self.msg_a,
            msg_b: msg_b.try_into().expect("checked above"),
        })
    }
}

/// What a person typed, as the code it means: upper case, without whitespace and dashes.
/// This is the SPAKE2 password.
pub fn normalize(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Length and side byte: what can be said about a message before any arithmetic.
fn check_form(message: &[u8], side: u8) -> Result<(), MessageError> {
    if message.len() != MESSAGE_LEN {
        return Err(MessageError::WrongLength(message.len()));
    }
    if message[0] != side {
        return Err(MessageError::WrongSide(side as char));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: &str = "3b1f5e0c9d2a4b6c8e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f";

    #[test]
    fn the_same_code_and_fingerprint_agree_and_each_side_confirms_the_other() {
        let (client, msg_a) = ClientStart::new("7kq4-m2xh", Some(FINGERPRINT));
        let (server, msg_b) = respond("7KQ4M2XH", Some(FINGERPRINT), &msg_a).unwrap();
        let client = client.finish(&msg_b).unwrap();
        assert!(server.verify_client(&client.client_confirm()));
        assert!(client.verify_server(&server.server_confirm()));
        // The two directions are apart: neither confirmation passes for the other.
        assert!(!server.verify_client(&server.server_confirm()));
        assert!(!client.verify_server(&client.client_confirm()));
    }

    #[test]
    fn another_certificate_or_another_code_gives_another_key() {
        let relay = "00".repeat(32);
        let (client, msg_a) = ClientStart::new("7KQ4-M2XH", Some(&relay));
        let (server, msg_b) = respond("7KQ4M2XH", Some(FINGERPRINT), &msg_a).unwrap();
        let client = client.finish(&msg_b).unwrap();
        assert!(!server.verify_client(&client.client_confirm()), "relayed");

        let (client, msg_a) = ClientStart::new("7KQ4-M2XJ", Some(FINGERPRINT));
        let (server, msg_b) = respond("7KQ4M2XH", Some(FINGERPRINT), &msg_a).unwrap();
        let client = client.finish(&msg_b).unwrap();
        assert!(
            !server.verify_client(&client.client_confirm()),
            "wrong code"
        );
        assert!(!client.verify_server(&server.server_confirm()));
    }

    #[test]
    fn malformed_messages_are_input_errors() {
        assert_eq!(
            respond("X", None, &[0x41; 5]).unwrap_err(),
            MessageError::WrongLength(5)
        );
        let (_, msg_a) = ClientStart::new("X", None);
        let mut reflected = msg_a;
        reflected[0] = b'B';
        assert_eq!(
            respond("X", None, &reflected).unwrap_err(),
            MessageError::WrongSide('A')
        );
        // y = 2 is not on the curve.
        let mut not_a_point = [0u8; MESSAGE_LEN];
        not_a_point[0] = b'A';
        not_a_point[1] = 2;
        assert_eq!(
            respond("X", None, &not_a_point).unwrap_err(),
            MessageError::NotAPoint
        );
    }

    /// The test vector docs/RUNTIME.md gives for the confirmations, so an implementer can
    /// check labels, order and encoding apart from SPAKE2 itself.
    #[test]
    fn the_documented_test_vector_holds() {
        let key: Vec<u8> = (0u8..32).collect();
        let mut msg_a = [0xaa; MESSAGE_LEN];
        msg_a[0] = b'A';
        let mut msg_b = [0xbb; MESSAGE_LEN];
        msg_b[0] = b'B';
        let transcript = Transcript { key, msg_a, msg_b };
        assert_eq!(
            hex::encode(transcript.client_confirm()),
            "f3817986123fb2d674f9044824632bf73d51588844474dd14c101d21da8cc2e9"
        );
        assert_eq!(
            hex::encode(transcript.server_confirm()),
            "6d9c8bf8945e49d34eaf634ea51beeca7155e32ad6e151f4122a6deebb54b629"
        );
        assert_eq!(
            String::from_utf8(server_id(Some(&FINGERPRINT.to_ascii_uppercase()))).unwrap(),
            format!("openwork-pair-v1 server {FINGERPRINT}")
        );
    }
}
