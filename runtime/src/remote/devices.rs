//! Paired devices, each with a token of its own that can be revoked alone.
//!
//! - **Stored hashed.** `<data dir>/devices.json` (0600, written through a temp file and a
//!   rename, read without following links and only when ours) keeps each device's id, name,
//!   times and the SHA-256 of its token, never the token: a copy of the file opens nothing.
//! - **Compared in constant time**, against every device every time, as the client and host
//!   tokens are ([`crate::http::auth`]).
//! - **Revoked at once, streams included.** Revoking removes the device (the next request
//!   gets 401), closes every connection its token authenticated (which ends its event
//!   streams and proxied streams with them), and tells its upgraded connections
//!   (WebSockets, which have left their HTTP connection) through a watch channel that the
//!   splice in [`crate::http::proxy`] listens to.
//! - **Last seen** is updated in memory on every request and written at most once a minute
//!   ([`Devices::persist_if_changed`]) and at stop.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::http::connections::ConnectionTicket;
use crate::http::model;
use crate::supervisor::events::unix_ms;
use crate::trust;

/// The longest device name kept.
pub const MAX_NAME_CHARS: usize = 64;
const FORMAT: u32 = 1;

/// The paired devices of this data dir.
pub struct Devices {
    file: PathBuf,
    devices: Mutex<Vec<Device>>,
    /// A last-seen time changed since the file was written.
    changed: AtomicBool,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

struct Device {
    stored: StoredDevice,
    digest: [u8; 32],
    /// Turns true when revoked: upgraded connections listen.
    revoked: watch::Sender<bool>,
    /// Connections its token authenticated (closed when it is revoked).
    connections: Vec<Weak<ConnectionTicket>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredDevice {
    id: String,
    name: String,
    /// SHA-256 of the token, hex.
    token_sha256: String,
    created_ms: u64,
    last_seen_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct DevicesFile {
    format: u32,
    devices: Vec<StoredDevice>,
}

/// A request made with a device's token.
#[derive(Debug, Clone)]
pub struct DeviceSession {
    /// The device.
    pub id: String,
    /// Turns true when the device is revoked.
    pub revoked: watch::Receiver<bool>,
}

/// Why pairing a device failed.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The name is empty, too long, or has a character that is not printable.
    #[error("{0}")]
    BadName(BadName),
    /// The file could not be written: nothing was paired.
    #[error("the device could not be saved ({0}); nothing was paired, try again")]
    NotSaved(String),
}

/// What is allowed in a device name, for every refusal.
const NAME_RULE: &str = "a device name is 1 to 64 printable characters (letters, marks, digits, punctuation, symbols, spaces), with no control, bidirectional, zero-width or other invisible characters, e.g. \"Ana's phone\"";

/// What is wrong with a device name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    /// Nothing but spaces.
    #[error("deviceName is empty: {NAME_RULE}")]
    Empty,
    /// Over [`MAX_NAME_CHARS`].
    #[error("deviceName has {0} characters: {NAME_RULE}")]
    TooLong(usize),
    /// A character that could hide or disguise what the name says.
    #[error("deviceName has U+{code:04X} ({kind}) at character {at}: {NAME_RULE}", code = u32::from(*.ch))]
    Forbidden {
        /// The character.
        ch: char,
        /// Where (1 = the first character of the trimmed name).
        at: usize,
        /// What kind of character it is.
        kind: &'static str,
    },
}

/// Invisible characters whose general category does not say so: Hangul fillers (letters
/// that render as nothing), the braille blank, the combining grapheme joiner and Khmer's
/// inherent vowels (marks that Unicode itself advises against using).
const INVISIBLE: &[char] = &[
    '\u{115F}', '\u{1160}', '\u{3164}', '\u{FFA0}', '\u{2800}', '\u{034F}', '\u{17B4}', '\u{17B5}',
];

/// Bidirectional controls: they reorder what follows (`phone\u{202E}gnp.exe` shows as
/// `phoneexe.png`).
fn is_bidi_control(ch: char) -> bool {
    matches!(ch, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Variation selectors: they pick how the character before them is drawn (the emoji form of
/// ❤ in ❤️), and show nothing of their own.
fn is_variation_selector(ch: char) -> bool {
    matches!(ch, '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}' | '\u{180B}'..='\u{180D}' | '\u{180F}')
}

/// Checks a device name wherever one enters (pairing): trimmed, 1 to [`MAX_NAME_CHARS`]
/// characters, each printable. Refused: controls (Unicode category Cc), bidirectional
/// controls, format characters (Cf: zero-width spaces and joiners, the byte order mark,
/// tags, …), line and paragraph separators (Zl, Zp), private use (Co) and unassigned code
/// points (Cn, as of Unicode 16), invisible fillers ([`INVISIBLE`]), and a variation
/// selector that follows no visible character (one after a character, as in ❤️, is
/// kept). Names stored before these rules are shown as stored.
pub fn check_name(name: &str) -> std::result::Result<String, BadName> {
    use unicode_general_category::{GeneralCategory, get_general_category};
    let name = name.trim();
    let count = name.chars().count();
    if count == 0 {
        return Err(BadName::Empty);
    }
    if count > MAX_NAME_CHARS {
        return Err(BadName::TooLong(count));
    }
    let mut previous: Option<char> = None;
    for (index, ch) in name.chars().enumerate() {
        let kind = if is_bidi_control(ch) {
            Some("a bidirectional control")
        } else if INVISIBLE.contains(&ch) {
            Some("an invisible character")
        } else if is_variation_selector(ch) {
            previous
                .filter(|p| !p.is_whitespace() && !is_variation_selector(*p))
                .is_none()
                .then_some("a variation selector that follows no visible character")
        } else {
            match get_general_category(ch) {
                GeneralCategory::Control => Some("a control character"),
                GeneralCategory::Format => Some("an invisible formatting character"),
                GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
                    Some("a line or paragraph separator")
                }
                GeneralCategory::PrivateUse => Some("a private-use character"),
                GeneralCategory::Unassigned | GeneralCategory::Surrogate => {
                    Some("an unassigned code point")
                }
                _ => None,
            }
        };
        if let Some(kind) = kind {
            return Err(BadName::Forbidden {
                ch,
                at: index + 1,
                kind,
            });
        }
        previous = Some(ch);
    }
    Ok(name.to_string())
}

impl Devices {
    /// The devices in `file` (none when it does not exist). A file that is not ours, or not
    /// ours alone, is refused (exit 15); one that cannot be parsed is an error that says how
    /// to start over.
    pub fn load(file: &Path) -> Result<Devices> {
        let mut stored = Vec::new();
        if let Some(mut opened) = trust::open_trusted(file, "the paired devices file")? {
            let mut text = String::new();
            opened
                .read_to_string(&mut text)
                .map_err(|e| Error::io(format!("read {}", file.display()), e))?;
            let parsed: DevicesFile = serde_json::from_str(&text).map_err(|e| {
                Error::BadInput(format!(
                    "{} is not a paired devices file ({e}); remove it to forget every paired device (they must pair again)",
                    file.display()
                ))
            })?;
            if parsed.format != FORMAT {
                return Err(Error::BadInput(format!(
                    "{} has format {}, this server reads {FORMAT}; remove it to forget every paired device",
                    file.display(),
                    parsed.format
                )));
            }
            stored = parsed.devices;
        }
        let devices = stored
            .into_iter()
            .filter_map(|stored| {
                let digest: [u8; 32] = hex::decode(&stored.token_sha256).ok()?.try_into().ok()?;
                Some(Device {
                    stored,
                    digest,
                    revoked: watch::channel(false).0,
                    connections: Vec::new(),
                })
            })
            .collect();
        Ok(Devices {
            file: file.to_path_buf(),
            devices: Mutex::new(devices),
            changed: AtomicBool::new(false),
        })
    }

    /// Pairs a new device: its entry is written before its token is returned, so a token
    /// that was handed out always works after a restart.
    pub fn add(&self, name: &str) -> std::result::Result<(model::Device, String), AddError> {
        let name = check_name(name).map_err(AddError::BadName)?;
        let token = crate::supervisor::random_secret();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let stored = StoredDevice {
            id: crate::supervisor::random_secret()[..16].to_string(),
            name,
            token_sha256: hex::encode(digest),
            created_ms: unix_ms(),
            last_seen_ms: None,
        };
        let mut devices = self.lock();
        devices.push(Device {
            stored: stored.clone(),
            digest,
            revoked: watch::channel(false).0,
            connections: Vec::new(),
        });
        if let Err(e) = self.write(&devices) {
            devices.pop();
            return Err(AddError::NotSaved(e.to_string()));
        }
        Ok((public(&stored), token))
    }

    /// Every device, oldest first.
    pub fn list(&self) -> Vec<model::Device> {
        self.lock().iter().map(|d| public(&d.stored)).collect()
    }

    /// Revokes a device: `Ok(false)` when there is none with this id. Its token fails from
    /// now on, and its connections and upgraded streams are closed.
    pub fn revoke(&self, id: &str) -> std::io::Result<bool> {
        let mut devices = self.lock();
        let Some(at) = devices.iter().position(|d| d.stored.id == id) else {
            return Ok(false);
        };
        let device = devices.remove(at);
        if let Err(e) = self.write(&devices) {
            devices.insert(at, device);
            return Err(e);
        }
        drop(devices);
        device.revoked.send_replace(true);
        for ticket in device.connections.iter().filter_map(Weak::upgrade) {
            ticket.close();
        }
        Ok(true)
    }

    /// The device whose token has this SHA-256, if any, compared in constant time with every
    /// device's; its last-seen time is updated.
    pub fn authenticate(&self, digest: &[u8; 32]) -> Option<DeviceSession> {
        let mut devices = self.lock();
        let mut found = None;
        for (at, device) in devices.iter().enumerate() {
            if bool::from(device.digest.ct_eq(digest)) {
                found = Some(at);
            }
        }
        let device = &mut devices[found?];
        device.stored.last_seen_ms = Some(unix_ms());
        self.changed.store(true, Ordering::Relaxed);
        Some(DeviceSession {
            id: device.stored.id.clone(),
            revoked: device.revoked.subscribe(),
        })
    }

    /// Remembers that `ticket`'s connection carried the device's token, so revoking the
    /// device closes it.
    pub fn bind_connection(&self, id: &str, ticket: &Arc<ConnectionTicket>) {
        let mut devices = self.lock();
        let Some(device) = devices.iter_mut().find(|d| d.stored.id == id) else {
            return;
        };
        device.connections.retain(|c| c.strong_count() > 0);
        if !device
            .connections
            .iter()
            .any(|c| std::ptr::eq(c.as_ptr(), Arc::as_ptr(ticket)))
        {
            device.connections.push(Arc::downgrade(ticket));
        }
    }

    /// Devices seen since `since_ms` (Unix ms).
    pub fn seen_since(&self, since_ms: u64) -> Vec<model::Device> {
        self.lock()
            .iter()
            .filter(|d| d.stored.last_seen_ms.is_some_and(|at| at >= since_ms))
            .map(|d| public(&d.stored))
            .collect()
    }

    /// Writes the file if a last-seen time changed since it was last written.
    pub fn persist_if_changed(&self) {
        if self.changed.swap(false, Ordering::Relaxed) {
            let devices = self.lock();
            if let Err(e) = self.write(&devices) {
                tracing::warn!(error = %e, file = %self.file.display(), "could not save the paired devices' last-seen times");
            }
        }
    }

    fn write(&self, devices: &[Device]) -> std::io::Result<()> {
        let file = DevicesFile {
            format: FORMAT,
            devices: devices.iter().map(|d| d.stored.clone()).collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        trust::write_private_atomic(&self.file, &bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Device>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn public(stored: &StoredDevice) -> model::Device {
    model::Device {
        id: stored.id.clone(),
        name: stored.name.clone(),
        created_ms: stored.created_ms,
        last_seen_ms: stored.last_seen_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    #[test]
    fn a_device_token_is_stored_hashed_survives_a_restart_and_dies_when_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("devices.json");
        let devices = Devices::load(&file).unwrap();
        let (phone, token) = devices.add("  Ana's phone ").unwrap();
        assert_eq!(phone.name, "Ana's phone");
        let on_disk = std::fs::read_to_string(&file).unwrap();
        assert!(
            !on_disk.contains(&token),
            "the token itself is never stored"
        );
        assert!(on_disk.contains(&hex::encode(digest(&token))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let reloaded = Devices::load(&file).unwrap();
        let session = reloaded.authenticate(&digest(&token)).expect("known");
        assert_eq!(session.id, phone.id);
        assert!(reloaded.list()[0].last_seen_ms.is_some());
        assert!(reloaded.authenticate(&digest("not-a-token")).is_none());

        assert!(reloaded.revoke(&phone.id).unwrap());
        assert!(*session.revoked.borrow(), "told");
        assert!(reloaded.authenticate(&digest(&token)).is_none());
        assert!(!reloaded.revoke(&phone.id).unwrap(), "already gone");
        assert!(Devices::load(&file).unwrap().list().is_empty(), "written");
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let devices = Devices::load(&dir.path().join("devices.json")).unwrap();
        for bad in ["", "   ", "a\nb", &"x".repeat(MAX_NAME_CHARS + 1)] {
            assert!(
                matches!(devices.add(bad), Err(AddError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(devices.add(&"é".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(devices.list().iter().all(|d| !d.name.contains('\n')));
    }

    #[test]
    fn names_with_bidi_invisible_or_unassigned_characters_are_refused_and_say_what_is_allowed() {
        let refused = [
            ("phone\u{202E}gnp.exe", 0x202E, 6, "bidirectional"),
            ("\u{2067}phone", 0x2067, 1, "bidirectional"),
            ("pho\u{200F}ne", 0x200F, 4, "bidirectional"),
            ("ph\u{061C}one", 0x061C, 3, "bidirectional"),
            ("Ana\u{200B}phone", 0x200B, 4, "invisible formatting"),
            ("Ana\u{200D}phone", 0x200D, 4, "invisible formatting"),
            ("\u{FEFF}phone", 0xFEFF, 1, "invisible formatting"),
            ("phone\u{E0041}", 0xE0041, 6, "invisible formatting"),
            ("pho\u{00AD}ne", 0x00AD, 4, "invisible formatting"),
            ("\u{3164}", 0x3164, 1, "invisible character"),
            ("a\u{115F}b", 0x115F, 2, "invisible character"),
            ("a\u{2800}", 0x2800, 2, "invisible character"),
            ("a\u{2028}b", 0x2028, 2, "separator"),
            ("a\u{2029}b", 0x2029, 2, "separator"),
            ("a\tb", 0x9, 2, "control"),
            ("a\u{85}b", 0x85, 2, "control"),
            ("a\u{E000}", 0xE000, 2, "private-use"),
            ("a\u{F0000}", 0xF0000, 2, "private-use"),
            ("a\u{0378}", 0x0378, 2, "unassigned"),
            ("a\u{E0080}", 0xE0080, 2, "unassigned"),
            ("\u{FE0F}phone", 0xFE0F, 1, "variation selector"),
            ("a \u{FE0F}", 0xFE0F, 3, "variation selector"),
            ("\u{2764}\u{FE0F}\u{FE0F}", 0xFE0F, 3, "variation selector"),
        ];
        for (name, code, at, kind) in refused {
            let err = check_name(name).unwrap_err();
            let BadName::Forbidden { ch, at: found, .. } = &err else {
                panic!("{name:?}: {err:?}");
            };
            assert_eq!((u32::from(*ch), *found), (code, at), "{name:?}");
            let message = err.to_string();
            assert!(message.contains(kind), "{name:?}: {message}");
            assert!(
                message.contains(&format!("U+{code:04X}")) && message.contains("1 to 64 printable"),
                "says what is wrong and what is allowed: {message}"
            );
            assert!(!message.contains(name), "never echoes the name: {message}");
        }
        for fine in [
            "Ana's phone",
            "Ana’s iPhone",
            "  Büro-Laptop (2)  ",
            "研究室のMac",
            "هاتف علي",
            "नमस्ते फ़ोन",
            "Ana's \u{2764}\u{FE0F} phone",
            "tablet\u{00A0}2",
            "e\u{0301}te\u{0301}",
        ] {
            assert_eq!(check_name(fine), Ok(fine.trim().to_string()), "{fine:?}");
        }
        assert_eq!(check_name(" \t "), Err(BadName::Empty));
        assert_eq!(check_name(&"x".repeat(65)), Err(BadName::TooLong(65)));
    }

    #[test]
    fn names_stored_before_the_rules_are_shown_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("devices.json");
        let stored = "phone\u{202E}gnp.exe";
        let text = serde_json::json!({
            "format": FORMAT,
            "devices": [{"id": "0123456789abcdef", "name": stored, "tokenSha256": "00".repeat(32), "createdMs": 1, "lastSeenMs": null}],
        });
        trust::write_private_atomic(&file, text.to_string().as_bytes()).unwrap();
        let devices = Devices::load(&file).unwrap();
        assert_eq!(devices.list()[0].name, stored);
    }
}
