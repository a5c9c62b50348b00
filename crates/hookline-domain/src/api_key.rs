//! Tenant API keys: their format, generation, hashing and the record kept of them.
//!
//! A key reads `hk_<ULID>_<43 base64url chars>`: a recognisable prefix (for secret
//! scanners), the key's public id, and 32 random bytes. Only its SHA-256 is stored,
//! in an [`ApiKeyRecord`]; a presented key is checked against the record of its id,
//! comparing hashes in constant time. The key itself is shown once, on creation.

use std::collections::BTreeSet;

use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64_URL};
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::access::{Principal, Role};
use crate::event::{validate_name, FieldError};

/// Prefix of every API key.
pub const KEY_PREFIX: &str = "hk_";
/// Prefix of an API key's public id.
pub const KEY_ID_PREFIX: &str = "key_";
/// Random bytes in a key.
const SECRET_BYTES: usize = 32;
/// Characters of a ULID.
const ULID_LEN: usize = 26;
/// Characters of [`SECRET_BYTES`] in unpadded base64url.
const SECRET_LEN: usize = 43;
/// Longest key description.
const MAX_DESCRIPTION_BYTES: usize = 1024;

/// A freshly generated API key. Its `Debug` output never shows the secret.
pub struct ApiKey {
    id: String,
    token: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}, <redacted>)", self.id)
    }
}

impl ApiKey {
    /// A new key: a fresh id and 32 bytes from the OS generator.
    pub fn generate() -> Self {
        let ulid = ulid::Ulid::new().to_string();
        let mut secret = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut secret);
        Self {
            id: format!("{KEY_ID_PREFIX}{ulid}"),
            token: format!("{KEY_PREFIX}{ulid}_{}", BASE64_URL.encode(secret)),
        }
    }

    /// The key's public id (`key_…`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key as handed to its owner, once.
    pub fn expose(&self) -> &str {
        &self.token
    }
}

/// The id of the key `presented`, when it has the shape of an API key (it may still be
/// unknown or wrong). Anything else, such as an admin token, gives `None`.
pub fn key_id_of(presented: &str) -> Option<String> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    if rest.len() != ULID_LEN + 1 + SECRET_LEN || !rest.is_char_boundary(ULID_LEN) {
        return None;
    }
    let (ulid, secret) = rest.split_at(ULID_LEN);
    let secret = secret.strip_prefix('_')?;
    let ulid = ulid::Ulid::from_string(ulid).ok()?;
    let decoded = BASE64_URL.decode(secret).ok()?;
    (decoded.len() == SECRET_BYTES).then(|| format!("{KEY_ID_PREFIX}{ulid}"))
}

/// The stored form of a key: base64 of its SHA-256.
fn hash_of(token: &str) -> String {
    BASE64.encode(Sha256::digest(token.as_bytes()))
}

/// What is kept of an API key, on the compacted API keys topic (keyed by id; a
/// revoked key is a tombstone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id (`key_…`).
    pub id: String,
    /// The one tenant the key acts for.
    pub tenant: String,
    /// What the key may do.
    pub roles: BTreeSet<Role>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The owner's note, e.g. where the key is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Base64 of the SHA-256 of the key.
    pub sha256: String,
}

impl ApiKeyRecord {
    /// Whether `presented` is this record's key. Compares hashes in constant time.
    pub fn verifies(&self, presented: &str) -> bool {
        hash_of(presented)
            .as_bytes()
            .ct_eq(self.sha256.as_bytes())
            .into()
    }

    /// The principal a request with this key acts as.
    pub fn principal(&self) -> Principal {
        Principal::Tenant {
            key_id: self.id.clone(),
            tenant: self.tenant.clone(),
            roles: self.roles.clone(),
        }
    }
}

/// A request for a new key, as the API reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// Role names, e.g. `["events:publish"]`.
    pub roles: Option<Vec<String>>,
    /// Optional note.
    pub description: Option<String>,
}

impl NewApiKey {
    /// Validates the request for `tenant` and makes the key and its record.
    pub fn into_key(
        self,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> Result<(ApiKey, ApiKeyRecord), FieldError> {
        validate_name(tenant).map_err(|message| FieldError::new("tenant", message))?;
        let names = self
            .roles
            .ok_or_else(|| FieldError::new("roles", "is required"))?;
        if names.is_empty() {
            return Err(FieldError::new("roles", "give at least one role"));
        }
        let mut roles = BTreeSet::new();
        for (i, name) in names.iter().enumerate() {
            let role = Role::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                FieldError::new(
                    format!("roles[{i}]"),
                    format!("unknown role; expected one of {}", known.join(", ")),
                )
            })?;
            roles.insert(role);
        }
        if let Some(description) = &self.description {
            if description.len() > MAX_DESCRIPTION_BYTES {
                return Err(FieldError::new(
                    "description",
                    format!("must be at most {MAX_DESCRIPTION_BYTES} bytes"),
                ));
            }
        }
        let key = ApiKey::generate();
        let record = ApiKeyRecord {
            id: key.id().to_owned(),
            tenant: tenant.to_owned(),
            roles,
            created_at: now,
            description: self.description,
            sha256: hash_of(key.expose()),
        };
        Ok((key, record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(roles: &[&str]) -> NewApiKey {
        NewApiKey {
            roles: Some(roles.iter().map(|r| r.to_string()).collect()),
            description: None,
        }
    }

    #[test]
    fn keys_are_prefixed_random_and_name_their_id() {
        let a = ApiKey::generate();
        let b = ApiKey::generate();
        assert!(a.expose().starts_with("hk_"));
        assert_eq!(a.expose().len(), 3 + 26 + 1 + 43);
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.id(), b.id());
        assert!(a.id().starts_with("key_"));
        assert_eq!(key_id_of(a.expose()).as_deref(), Some(a.id()));
        assert!(
            !format!("{a:?}").contains(a.expose()),
            "Debug hides the key"
        );
    }

    #[test]
    fn only_well_formed_keys_have_an_id() {
        let key = ApiKey::generate();
        let token = key.expose();
        assert_eq!(key_id_of("an-admin-token"), None);
        assert_eq!(key_id_of(""), None);
        assert_eq!(key_id_of(&token[..token.len() - 1]), None, "too short");
        assert_eq!(key_id_of(&format!("{token}A")), None, "too long");
        assert_eq!(key_id_of(&token.replacen("hk_", "hx_", 1)), None);
        let no_separator = format!("{}-{}", &token[..29], &token[30..]);
        assert_eq!(key_id_of(&no_separator), None);
        let bad_ulid = format!("hk_{}{}", "!".repeat(26), &token[29..]);
        assert_eq!(key_id_of(&bad_ulid), None);
        let multibyte = format!("hk_{}é{}", "0".repeat(25), &token[29..]);
        assert_eq!(key_id_of(&multibyte), None);
    }

    #[test]
    fn a_record_verifies_its_key_only_and_holds_no_key() {
        let now = Utc::now();
        let (key, record) = request(&["events:publish"]).into_key("acme", now).unwrap();
        assert!(record.verifies(key.expose()));
        let (other, _) = request(&["events:publish"]).into_key("acme", now).unwrap();
        assert!(!record.verifies(other.expose()));
        assert!(!record.verifies(""));
        let stored = serde_json::to_string(&record).unwrap();
        assert!(!stored.contains(key.expose()));
        assert!(
            !stored.contains(&key.expose()[30..]),
            "not even the secret part"
        );
        let read: ApiKeyRecord = serde_json::from_str(&stored).unwrap();
        assert_eq!(read, record);
        assert!(stored.contains("\"events:publish\""));
        assert_eq!(
            record.principal(),
            Principal::Tenant {
                key_id: key.id().to_owned(),
                tenant: "acme".into(),
                roles: [Role::EventsPublish].into_iter().collect(),
            }
        );
    }

    #[test]
    fn requests_name_the_field_at_fault() {
        let now = Utc::now();
        let field =
            |request: NewApiKey, tenant: &str| request.into_key(tenant, now).unwrap_err().field;
        assert_eq!(
            field(
                NewApiKey {
                    roles: None,
                    description: None
                },
                "acme"
            ),
            "roles"
        );
        assert_eq!(field(request(&[]), "acme"), "roles");
        assert_eq!(
            field(request(&["events:publish", "root"]), "acme"),
            "roles[1]"
        );
        assert_eq!(field(request(&["events:publish"]), "a b"), "tenant");
        let long = NewApiKey {
            roles: Some(vec!["attempts:read".into()]),
            description: Some("x".repeat(1025)),
        };
        assert_eq!(field(long, "acme"), "description");
        let (_, record) = request(&["attempts:read", "attempts:read"])
            .into_key("acme", now)
            .unwrap();
        assert_eq!(record.roles.len(), 1, "duplicates collapse");
    }
}
