//! Secrets at rest: values sealed with an operator key (XChaCha20-Poly1305), the key's
//! id stored beside the ciphertext so that keys can rotate.
//!
//! The operator gives a [`Keyring`] as `id:base64key,id:base64key…` (32-byte keys);
//! the first key seals, every key opens. Each sealed value is bound to where it
//! belongs (its subscription and field, the associated data), so a ciphertext copied
//! into another record or field does not open.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Bytes of a key.
const KEY_BYTES: usize = 32;
/// Bytes of a nonce (XChaCha20: random nonces are safe at any volume).
const NONCE_BYTES: usize = 24;
/// Longest key id.
const MAX_KEY_ID: usize = 64;

/// Why a keyring or a sealed value could not be used. Never holds key material or
/// plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The keyring setting is malformed.
    #[error("secrets keys: {0}")]
    InvalidKeyring(String),
    /// The value was sealed with a key id the keyring does not hold.
    #[error("sealed with key {0:?}, which is not among the configured keys")]
    UnknownKey(String),
    /// The key with that id does not open the value: a wrong key, or a damaged or
    /// misplaced ciphertext.
    #[error("does not open with key {0:?} (wrong key, or a damaged or misplaced value)")]
    WrongKey(String),
    /// The sealed value is not base64 of a nonce and a ciphertext.
    #[error("malformed sealed value")]
    Malformed,
}

/// One operator key. Its `Debug` output shows only the id.
#[derive(Clone)]
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// The operator's keys: the first seals, all open. `Debug` shows key ids only.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("ids", &self.ids()).finish()
    }
}

impl Keyring {
    /// Parses `id:base64key[,id:base64key…]`; each key is 32 bytes of standard base64.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let invalid = |m: String| SealError::InvalidKeyring(m);
        let mut keys: Vec<Key> = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, encoded) = entry
                .split_once(':')
                .ok_or_else(|| invalid("each entry is id:base64key".into()))?;
            let id = id.trim();
            let valid_id = !id.is_empty()
                && id.len() <= MAX_KEY_ID
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid_id {
                return Err(invalid(format!(
                    "key id {id:?} must be 1 to {MAX_KEY_ID} of A-Z a-z 0-9 - _ ."
                )));
            }
            // The decoded bytes are never echoed: only their length.
            let bytes = BASE64
                .decode(encoded.trim())
                .map_err(|_| invalid(format!("key {id:?} is not standard base64")))?;
            if bytes.len() != KEY_BYTES {
                return Err(invalid(format!(
                    "key {id:?} holds {} bytes, not {KEY_BYTES}",
                    bytes.len()
                )));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(invalid(format!("key id {id:?} given twice")));
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
                .map_err(|_| invalid(format!("key {id:?} is unusable")))?;
            keys.push(Key {
                id: id.to_owned(),
                cipher,
            });
        }
        if keys.is_empty() {
            return Err(invalid("no key given".into()));
        }
        Ok(Self { keys })
    }

    /// A fresh random key in the form [`parse`](Self::parse) reads, `id:base64key`
    /// (tests, demos).
    pub fn generate_entry(id: &str) -> String {
        let mut key = [0u8; KEY_BYTES];
        rand::rng().fill_bytes(&mut key);
        format!("{id}:{}", BASE64.encode(key))
    }

    /// The key ids, the sealing one first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Seals `plaintext` with the first key, bound to `context` (where it belongs).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Sealed {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: context.as_bytes(),
        };
        // Encryption fails only for inputs of gigabytes; values here are small.
        let ciphertext = key
            .cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut data = nonce.to_vec();
        data.extend_from_slice(&ciphertext);
        Sealed {
            kid: key.id.clone(),
            data: BASE64.encode(data),
        }
    }

    /// Opens a value sealed for `context`.
    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<Vec<u8>, SealError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == sealed.kid)
            .ok_or_else(|| SealError::UnknownKey(sealed.kid.clone()))?;
        let data = BASE64
            .decode(&sealed.data)
            .map_err(|_| SealError::Malformed)?;
        if data.len() < NONCE_BYTES {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = data.split_at(NONCE_BYTES);
        let payload = Payload {
            msg: ciphertext,
            aad: context.as_bytes(),
        };
        key.cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| SealError::WrongKey(sealed.kid.clone()))
    }

    /// Opens a text value (see [`AtRest`]): a sealed one with the keyring, one stored in
    /// clear (records written before encryption at rest) as it is.
    pub fn open_text(&self, value: &AtRest, context: &str) -> Result<String, SealError> {
        match value {
            AtRest::Clear(text) => Ok(text.clone()),
            AtRest::Sealed(sealed) => {
                String::from_utf8(self.open(sealed, context)?).map_err(|_| SealError::Malformed)
            }
        }
    }

    /// Seals a text value.
    pub fn seal_text(&self, text: &str, context: &str) -> AtRest {
        AtRest::Sealed(self.seal(text.as_bytes(), context))
    }

    /// The value sealed again with the first key (a value in clear gets sealed).
    pub fn reseal(&self, value: &AtRest, context: &str) -> Result<AtRest, SealError> {
        match value {
            AtRest::Sealed(sealed) if sealed.kid == self.keys[0].id => Ok(value.clone()),
            _ => Ok(self.seal_text(&self.open_text(value, context)?, context)),
        }
    }
}

/// A value sealed with an operator key: `{"kid": "…", "box": "<base64 nonce‖ciphertext>"}`.
/// `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Id of the key that sealed it.
    kid: String,
    /// Base64 of the nonce followed by the ciphertext and its tag.
    #[serde(rename = "box")]
    data: String,
}

impl Sealed {
    /// Id of the key that sealed it.
    pub fn key_id(&self) -> &str {
        &self.kid
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed(kid={:?})", self.kid)
    }
}

/// A secret value as a record stores it: sealed, or in clear in records written before
/// encryption at rest (read for compatibility; sealed when the API next writes the
/// record). `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AtRest {
    /// Sealed with an operator key.
    Sealed(Sealed),
    /// In clear (older records only).
    Clear(String),
}

impl AtRest {
    /// Whether the value is stored in clear.
    pub fn is_clear(&self) -> bool {
        matches!(self, Self::Clear(_))
    }
}

impl std::fmt::Debug for AtRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sealed(sealed) => sealed.fmt(f),
            Self::Clear(_) => f.write_str("Clear(<redacted>)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> Keyring {
        Keyring::parse(text).unwrap()
    }

    #[test]
    fn seals_with_the_first_key_and_opens_with_any() {
        let (new, old) = (Keyring::generate_entry("k2"), Keyring::generate_entry("k1"));
        let old_only = ring(&old);
        let both = ring(&format!("{new},{old}"));
        assert_eq!(both.ids(), ["k2", "k1"]);
        let by_old = old_only.seal(b"whsec_abc", "sub_1/secret");
        assert_eq!(by_old.key_id(), "k1");
        assert_eq!(both.open(&by_old, "sub_1/secret").unwrap(), b"whsec_abc");
        let by_new = both.seal(b"whsec_abc", "sub_1/secret");
        assert_eq!(by_new.key_id(), "k2");
        assert_ne!(
            by_new,
            both.seal(b"whsec_abc", "sub_1/secret"),
            "fresh nonce"
        );
        assert_eq!(
            old_only.open(&by_new, "sub_1/secret"),
            Err(SealError::UnknownKey("k2".into()))
        );
        // Resealing moves a value to the first key; one in clear gets sealed.
        let moved = both
            .reseal(&AtRest::Sealed(by_old), "sub_1/secret")
            .unwrap();
        assert!(matches!(&moved, AtRest::Sealed(s) if s.key_id() == "k2"));
        let sealed = both
            .reseal(&AtRest::Clear("v".into()), "sub_1/headers/x")
            .unwrap();
        assert!(!sealed.is_clear());
        assert_eq!(both.open_text(&sealed, "sub_1/headers/x").unwrap(), "v");
    }

    #[test]
    fn a_wrong_key_a_misplaced_or_damaged_value_does_not_open() {
        let right = ring(&Keyring::generate_entry("k1"));
        let wrong = ring(&Keyring::generate_entry("k1"));
        let sealed = right.seal(b"secret", "sub_1/secret");
        assert_eq!(
            wrong.open(&sealed, "sub_1/secret"),
            Err(SealError::WrongKey("k1".into()))
        );
        assert_eq!(
            right.open(&sealed, "sub_2/secret"),
            Err(SealError::WrongKey("k1".into())),
            "bound to its place"
        );
        let mut damaged = sealed.clone();
        damaged.data = BASE64.encode(b"short");
        assert_eq!(
            right.open(&damaged, "sub_1/secret"),
            Err(SealError::Malformed)
        );
    }

    #[test]
    fn malformed_keyrings_are_refused_without_echoing_keys() {
        let short = BASE64.encode([7u8; 16]);
        for bad in [
            "".to_owned(),
            "nocolon".to_owned(),
            format!(":{}", BASE64.encode([1u8; 32])),
            "k1:!!!notbase64".to_owned(),
            format!("k1:{short}"),
            format!("bad id:{}", BASE64.encode([1u8; 32])),
            format!(
                "k1:{},k1:{}",
                BASE64.encode([1u8; 32]),
                BASE64.encode([2u8; 32])
            ),
        ] {
            let err = Keyring::parse(&bad).unwrap_err();
            assert!(matches!(err, SealError::InvalidKeyring(_)), "{bad}");
            assert!(!err.to_string().contains(&short), "{err}");
        }
    }

    #[test]
    fn debug_and_stored_form_never_show_key_or_plaintext() {
        let entry = Keyring::generate_entry("k1");
        let keyring = ring(&entry);
        let key = entry.split_once(':').unwrap().1;
        assert!(!format!("{keyring:?}").contains(key));
        let sealed = keyring.seal_text("hunter2", "ctx");
        let stored = serde_json::to_string(&sealed).unwrap();
        assert!(!stored.contains("hunter2") && stored.contains("\"kid\":\"k1\""));
        assert_eq!(serde_json::from_str::<AtRest>(&stored).unwrap(), sealed);
        let clear: AtRest = serde_json::from_str("\"hunter2\"").unwrap();
        assert!(clear.is_clear());
        assert!(!format!("{clear:?} {sealed:?}").contains("hunter2"));
    }
}
