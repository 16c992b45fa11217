//! Signing keys and secret headers, read from Secrets and cached briefly so that a rotated Secret
//! is picked up within seconds without a request per delivery. Values never reach logs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tracing::warn;

use super::signing::SigningKey;
use crate::report::Chain;

/// How long a Secret read is reused.
const TTL: Duration = Duration::from_secs(5);

/// Why a Secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Secret {0} not found")]
    /// The Secret does not exist.
    NotFound(String),
    #[error("Secret {0} holds no signing secret (a value starting with whsec_)")]
    /// The Secret holds no usable signing key.
    NoSigningKey(String),
    #[error("reading Secret {name}")]
    /// The API server could not be asked, and nothing was read before.
    Kube {
        /// The Secret's name.
        name: String,
        #[source]
        /// What the client said.
        source: kube::Error,
    },
}

/// A Secret's data by key.
pub type Data = Arc<BTreeMap<String, Vec<u8>>>;
type Entries = HashMap<(String, String), (Instant, Data)>;

/// A short-lived cache of Secret data.
#[derive(Clone)]
pub struct SecretCache {
    client: Client,
    entries: Arc<Mutex<Entries>>,
}

impl SecretCache {
    /// A cache that reads Secrets with `client`.
    pub fn new(client: Client) -> Self {
        Self { client, entries: Arc::default() }
    }

    /// A Secret's data (cached for a few seconds). When the API server cannot be reached, the
    /// last data read is used instead, so deliveries go on through an API-server outage; a
    /// Secret that is gone is gone.
    pub async fn data(&self, namespace: &str, name: &str) -> Result<Data, SecretError> {
        let key = (namespace.to_string(), name.to_string());
        let cached = self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        if let Some((at, data)) = &cached
            && at.elapsed() < TTL
        {
            return Ok(data.clone());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = match api.get_opt(name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                return Err(SecretError::NotFound(name.to_string()));
            }
            Err(source) => match cached {
                Some((_, data)) => {
                    // Try again after another TTL, not on every delivery meanwhile.
                    warn!(namespace, secret = name, error = %Chain(&source), "cannot re-read Secret; using the last value read");
                    self.put(key, data.clone());
                    return Ok(data);
                }
                None => return Err(SecretError::Kube { name: name.to_string(), source }),
            },
        };
        let data = data_of(&secret);
        self.put(key, data.clone());
        Ok(data)
    }

    /// Cache `data` under `key` for the next [`TTL`].
    fn put(&self, key: (String, String), data: Data) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (Instant::now(), data));
    }

    /// Remember a Secret this process has just written (the API server's answer), so that the
    /// handshake and first deliveries that follow do not read it back.
    pub fn remember(&self, secret: &Secret) {
        let (Some(namespace), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name) else {
            return;
        };
        self.put((namespace.clone(), name.clone()), data_of(secret));
    }

    /// The signing keys in a Secret: every value starting with `whsec_`, in key order. Two keys
    /// during a rotation yield two signatures.
    pub async fn signing_keys(&self, namespace: &str, name: &str) -> Result<Vec<SigningKey>, SecretError> {
        let data = self.data(namespace, name).await?;
        let keys = signing_keys(&data, name);
        if keys.is_empty() {
            return Err(SecretError::NoSigningKey(name.to_string()));
        }
        Ok(keys)
    }

    /// Headers from a Secret: each key is a header name, its value the header value.
    pub async fn headers(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, SecretError> {
        let data = self.data(namespace, name).await?;
        Ok(headers(&data, name))
    }
}

fn data_of(secret: &Secret) -> Data {
    Arc::new(secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect())
}

fn signing_keys(data: &BTreeMap<String, Vec<u8>>, secret: &str) -> Vec<SigningKey> {
    data.iter()
        .filter_map(|(k, v)| {
            let text = std::str::from_utf8(v).ok()?.trim();
            if !text.starts_with("whsec_") {
                return None;
            }
            match SigningKey::parse(text) {
                Ok(key) => Some(key),
                Err(e) => {
                    warn!(secret, key = %k, error = %Chain(&e), "ignoring an unusable signing secret");
                    None
                }
            }
        })
        .collect()
}

fn headers(data: &BTreeMap<String, Vec<u8>>, secret: &str) -> Vec<(HeaderName, HeaderValue)> {
    data.iter()
        .filter_map(|(k, v)| match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_bytes(v)) {
            (Ok(name), Ok(mut value)) => {
                value.set_sensitive(true);
                Some((name, value))
            }
            _ => {
                warn!(secret, key = %k, "ignoring a Secret key that is not a valid header name and value");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_remembered_secret_is_not_read_back() {
        // A client whose requests are never answered: any read would hang past the timeout.
        let (service, _handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let cache = SecretCache::new(Client::new(service, "default"));
        let mut secret = Secret::default();
        secret.metadata.namespace = Some("ns".into());
        secret.metadata.name = Some("s-signing".into());
        let key = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw3Wv1bHmSEsk=".to_vec();
        secret.data = Some(BTreeMap::from([("signingSecret".to_string(), k8s_openapi::ByteString(key))]));
        cache.remember(&secret);
        let keys = tokio::time::timeout(Duration::from_secs(1), cache.signing_keys("ns", "s-signing"))
            .await
            .expect("served from the cache, no API request")
            .expect("keys");
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn only_whsec_values_are_signing_keys_in_key_order() {
        let data = BTreeMap::from([
            ("b-next".to_string(), b"whsec_dXNlci1vd25lZC1zZWNyZXQtdGhhdC1tdXN0LXN0YXk=".to_vec()),
            ("a-current".to_string(), b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw3Wv1bHmSEsk=".to_vec()),
            ("note".to_string(), b"not a key".to_vec()),
        ]);
        let keys = signing_keys(&data, "s");
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys[0],
            SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw3Wv1bHmSEsk=").expect("key")
        );
    }

    #[test]
    fn secret_headers_are_marked_sensitive_and_bad_ones_skipped() {
        let data = BTreeMap::from([
            ("Authorization".to_string(), b"Bearer x".to_vec()),
            ("bad header".to_string(), b"x".to_vec()),
        ]);
        let h = headers(&data, "s");
        assert_eq!(h.len(), 1);
        assert!(h[0].1.is_sensitive());
    }
}
