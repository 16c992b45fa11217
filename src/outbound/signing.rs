//! Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// A decoded signing key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Why a Secret value is not a usable signing secret (never includes the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a signing secret must start with whsec_")]
    /// The value does not start with `whsec_`.
    MissingPrefix,
    #[error("the part after whsec_ is not valid base64")]
    /// The rest is not base64.
    NotBase64,
    #[error("a signing secret must hold between 24 and 64 bytes")]
    /// The key is shorter than 24 or longer than 64 bytes.
    BadLength,
}

impl SigningKey {
    /// Parse `whsec_<base64>`.
    pub fn parse(secret: &str) -> Result<SigningKey, KeyError> {
        let b64 = secret.trim().strip_prefix("whsec_").ok_or(KeyError::MissingPrefix)?;
        let key = STANDARD.decode(b64).map_err(|_| KeyError::NotBase64)?;
        if !(24..=64).contains(&key.len()) {
            return Err(KeyError::BadLength);
        }
        Ok(SigningKey(key))
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header value: one signature per key, separated by spaces.
pub fn signature_header(keys: &[SigningKey], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter().map(|k| k.sign(msg_id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Computed by the reference implementation (PyPI `standardwebhooks`, `Webhook.sign`).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw3Wv1bHmSEsk=";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,+1Gku7uCPaGOmcXC66UYKw4iDeJdug2s9EZCSNbmyYQ=";

    #[test]
    fn matches_the_reference_implementation() {
        let key = SigningKey::parse(SPEC_SECRET).expect("valid");
        assert_eq!(key.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
    }

    #[test]
    fn two_keys_give_two_signatures() {
        let a = SigningKey::parse(SPEC_SECRET).expect("valid");
        let b = SigningKey::parse("whsec_dXNlci1vd25lZC1zZWNyZXQtdGhhdC1tdXN0LXN0YXk=").expect("valid");
        let header = signature_header(&[a, b], SPEC_ID, SPEC_TS, SPEC_BODY);
        let parts: Vec<_> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], SPEC_SIG);
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_them() {
        assert_eq!(
            SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw3Wv1bHmSEsk="),
            Err(KeyError::MissingPrefix)
        );
        assert_eq!(SigningKey::parse("whsec_!!!"), Err(KeyError::NotBase64));
        assert_eq!(SigningKey::parse("whsec_AAAA"), Err(KeyError::BadLength));
        let key = SigningKey::parse(SPEC_SECRET).expect("valid");
        assert!(!format!("{key:?}").contains("MfKQ"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// The specification's construction, written out independently of `SigningKey::sign`.
    fn reference(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn signatures_match_the_construction_and_bind_every_part(
            key in proptest::collection::vec(any::<u8>(), 24..64),
            id in "[ -~]{1,40}", ts in 0i64..4_000_000_000, body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let k = SigningKey::parse(&format!("whsec_{}", STANDARD.encode(&key))).expect("valid key");
            let sig = k.sign(&id, ts, &body);
            prop_assert_eq!(&sig, &reference(&key, &id, ts, &body));
            prop_assert_ne!(&sig, &k.sign(&id, ts + 1, &body));
            let mut other = body.clone();
            other.push(0);
            prop_assert_ne!(&sig, &k.sign(&id, ts, &other));
            let header = signature_header(&[k.clone(), k.clone()], &id, ts, &body);
            prop_assert_eq!(header, format!("{sig} {sig}"));
        }
    }
}
