//! Standard Webhooks signatures (HMAC-SHA256 over `"{id}.{timestamp}.{body}"`).
//!
//! The signing key is a `whsec_`-prefixed base64 string, as in the Standard Webhooks
//! specification; the signature header holds one or more space-separated
//! `v1,<base64>` entries (several during secret rotation).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

const SECRET_PREFIX: &str = "whsec_";
/// Number of random bytes in a generated secret (the spec allows 24–64).
const GENERATED_SECRET_BYTES: usize = 32;

/// Why a signing secret or a signature could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The secret is not `whsec_` followed by base64 of 24–64 bytes.
    #[error("secret must be \"whsec_\" followed by base64 of 24 to 64 bytes")]
    InvalidSecret,
    /// No `v1` signature in the header matched.
    #[error("no matching v1 signature")]
    NoMatch,
    /// The timestamp is outside the accepted tolerance.
    #[error("timestamp outside the tolerance window")]
    StaleTimestamp,
}

/// A webhook signing secret. Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// A new secret of 32 random bytes from the OS generator.
    pub fn generate() -> Self {
        let mut key = vec![0u8; GENERATED_SECRET_BYTES];
        rand::rng().fill_bytes(&mut key);
        Self { key }
    }

    /// Parses a `whsec_<base64>` secret.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SignatureError::InvalidSecret)?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| SignatureError::InvalidSecret)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SignatureError::InvalidSecret);
        }
        Ok(Self { key })
    }

    /// The secret as shown to its owner: `whsec_<base64>`.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.key))
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", BASE64.encode(self.mac(msg_id, timestamp, body)))
    }

    /// The `webhook-signature` header value of one message signed with each of
    /// `secrets` (several during a rotation's overlap window): space-separated
    /// `v1,<base64>` entries, as the specification has it.
    pub fn sign_all(secrets: &[Self], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        secrets
            .iter()
            .map(|secret| secret.sign(msg_id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Checks a `webhook-signature` header value (space-separated `v1,<sig>` entries)
    /// in constant time per entry; the timestamp must be within `tolerance_secs` of `now`.
    ///
    /// A receiver's check (docs/receivers.md): the raw body as it arrived, the
    /// `webhook-id`, `webhook-timestamp` and `webhook-signature` headers, the receiver's
    /// clock and a tolerance of a few minutes.
    ///
    /// ```
    /// use hookline_domain::signing::{SignatureError, WebhookSecret};
    ///
    /// let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    /// let (id, sent_at, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
    /// let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    /// let now = sent_at + 2;
    ///
    /// assert_eq!(secret.verify(id, sent_at, body, signature, now, 300), Ok(()));
    /// assert_eq!(
    ///     secret.verify(id, sent_at, br#"{"test": 1}"#, signature, now, 300),
    ///     Err(SignatureError::NoMatch),
    ///     "a tampered body"
    /// );
    /// assert_eq!(
    ///     secret.verify(id, sent_at, body, signature, sent_at + 600, 300),
    ///     Err(SignatureError::StaleTimestamp),
    ///     "played back ten minutes later"
    /// );
    /// ```
    pub fn verify(
        &self,
        msg_id: &str,
        timestamp: i64,
        body: &[u8],
        signature_header: &str,
        now: i64,
        tolerance_secs: i64,
    ) -> Result<(), SignatureError> {
        if (now - timestamp).abs() > tolerance_secs {
            return Err(SignatureError::StaleTimestamp);
        }
        let expected = self.mac(msg_id, timestamp, body);
        let matched = signature_header
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|sig| BASE64.decode(sig).ok())
            .any(|sig| bool::from(sig.as_slice().ct_eq(expected.as_slice())));
        if matched {
            Ok(())
        } else {
            Err(SignatureError::NoMatch)
        }
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC-SHA256 takes keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published Standard Webhooks test vector (used by every official library).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &str = r#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_published_vector() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(MSG_ID, TIMESTAMP, BODY.as_bytes()), SIGNATURE);
    }

    #[test]
    fn verifies_published_vector_among_several_signatures() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        let header = format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {SIGNATURE}");
        assert_eq!(
            secret.verify(MSG_ID, TIMESTAMP, BODY.as_bytes(), &header, TIMESTAMP, 300),
            Ok(())
        );
    }

    #[test]
    fn signs_with_several_secrets_each_verifying() {
        let published = WebhookSecret::parse(SECRET).unwrap();
        let other = WebhookSecret::generate();
        let header = WebhookSecret::sign_all(
            &[other.clone(), published.clone()],
            MSG_ID,
            TIMESTAMP,
            BODY.as_bytes(),
        );
        let (first, second) = header.split_once(' ').unwrap();
        assert_eq!(second, SIGNATURE, "the published vector, unchanged");
        assert_eq!(first, other.sign(MSG_ID, TIMESTAMP, BODY.as_bytes()));
        for secret in [&published, &other] {
            assert_eq!(
                secret.verify(MSG_ID, TIMESTAMP, BODY.as_bytes(), &header, TIMESTAMP, 300),
                Ok(())
            );
        }
        let stranger = WebhookSecret::generate();
        assert_eq!(
            stranger.verify(MSG_ID, TIMESTAMP, BODY.as_bytes(), &header, TIMESTAMP, 300),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn rejects_tampered_body_wrong_id_and_stale_timestamp() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        let verify = |id: &str, body: &str, now: i64| {
            secret.verify(id, TIMESTAMP, body.as_bytes(), SIGNATURE, now, 300)
        };
        assert_eq!(
            verify(MSG_ID, r#"{"test": 2432232315}"#, TIMESTAMP),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify("msg_other", BODY, TIMESTAMP),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(MSG_ID, BODY, TIMESTAMP + 301),
            Err(SignatureError::StaleTimestamp)
        );
    }

    #[test]
    fn generated_secret_round_trips_and_has_spec_length() {
        let secret = WebhookSecret::generate();
        let text = secret.expose();
        assert!(text.starts_with("whsec_"));
        let decoded = BASE64.decode(&text[6..]).unwrap();
        assert_eq!(decoded.len(), GENERATED_SECRET_BYTES);
        assert_eq!(WebhookSecret::parse(&text).unwrap(), secret);
        assert_ne!(WebhookSecret::generate(), secret);
    }

    #[test]
    fn rejects_malformed_secrets() {
        for bad in [
            "",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_c2hvcnQ=",
        ] {
            assert_eq!(
                WebhookSecret::parse(bad),
                Err(SignatureError::InvalidSecret),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_output_redacts_the_key() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert!(!format!("{secret:?}").contains("MfKQ"));
    }
}
