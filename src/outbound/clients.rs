//! The HTTP clients deliveries and handshakes use: one shared client that trusts the system's
//! roots, and one per distinct CA bundle that subscriptions name in `endpoint.caBundleFrom`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::{Certificate, Client};
use sha2::{Digest, Sha256};

use super::http::{self, ClientError};
use super::secrets::{SecretCache, SecretError};
use super::ssrf::Guard;
use crate::api::Endpoint;

/// Distinct CA bundles kept at most; beyond that the cache starts over (clients are cheap to
/// rebuild, and this bounds memory if bundles churn).
const MAX_BUNDLES: usize = 256;

/// Why an endpoint's client could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    /// The Secret could not be read.
    Secret(#[from] SecretError),
    /// The Secret lacks the key `endpoint.caBundleFrom` names.
    #[error("Secret {secret} has no key {key:?} (endpoint.caBundleFrom)")]
    MissingKey {
        /// The Secret.
        secret: String,
        /// The key.
        key: String,
    },
    /// The key holds no PEM certificate.
    #[error("Secret {secret} key {key:?} holds no PEM certificate (endpoint.caBundleFrom)")]
    NoCertificates {
        /// The Secret.
        secret: String,
        /// The key.
        key: String,
    },
    #[error(transparent)]
    /// The client could not be built.
    Client(#[from] ClientError),
}

/// See the module docs.
#[derive(Clone)]
pub struct Clients {
    default: Client,
    guard: Arc<Guard>,
    secrets: SecretCache,
    /// By the SHA-256 of the PEM bundle, so subscriptions sharing a CA share a pool.
    by_bundle: Arc<Mutex<HashMap<[u8; 32], Client>>>,
}

impl Clients {
    /// Clients that resolve through `guard` and read CA bundles from `secrets`.
    pub fn new(guard: Arc<Guard>, secrets: SecretCache) -> Result<Self, ClientError> {
        let default = http::client(guard.clone())?;
        Ok(Clients { default, guard, secrets, by_bundle: Arc::default() })
    }

    /// The client for `endpoint` of a subscription in `namespace`. A changed bundle is picked up
    /// within the Secret cache's few seconds.
    pub async fn for_endpoint(&self, namespace: &str, endpoint: &Endpoint) -> Result<Client, BundleError> {
        let Some(from) = &endpoint.ca_bundle_from else { return Ok(self.default.clone()) };
        let secret = &from.secret_ref.name;
        let data = self.secrets.data(namespace, secret).await?;
        let pem = data
            .get(&from.key)
            .ok_or_else(|| BundleError::MissingKey { secret: secret.clone(), key: from.key.clone() })?;
        let digest: [u8; 32] = Sha256::digest(pem).into();
        if let Some(client) = self.by_bundle.lock().unwrap_or_else(|e| e.into_inner()).get(&digest) {
            return Ok(client.clone());
        }
        let roots = Certificate::from_pem_bundle(pem)
            .ok()
            .filter(|certs| !certs.is_empty())
            .ok_or_else(|| BundleError::NoCertificates { secret: secret.clone(), key: from.key.clone() })?;
        let client = http::client_trusting(self.guard.clone(), roots)?;
        let mut clients = self.by_bundle.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_BUNDLES {
            clients.clear();
        }
        clients.insert(digest, client.clone());
        Ok(client)
    }
}
