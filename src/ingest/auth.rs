//! Who may publish or read: the caller's bearer token is checked with TokenReview, and the action
//! with SubjectAccessReview, so plain RBAC decides. Decisions are cached briefly by token hash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::report::Chain;

/// How long an allow or deny decision is reused.
const CACHE_TTL: Duration = Duration::from_secs(10);
/// Cache entries kept at most; the cache is cleared when it grows past this.
const CACHE_MAX: usize = 10_000;

/// What a request wants to do, in RBAC terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Action {
    /// The SubjectAccessReview verb.
    pub verb: &'static str,
    /// The SubjectAccessReview resource (in `hookline.dev`).
    pub resource: &'static str,
}

/// Publish events: `create` on `events.hookline.dev`.
pub const PUBLISH: Action = Action { verb: "create", resource: "events" };
/// Read the delivery log: `get` on `webhooksubscriptions.hookline.dev`.
pub const READ_LOG: Action = Action { verb: "get", resource: "webhooksubscriptions" };
/// Read the delivery log of a whole namespace: `list` on `webhooksubscriptions.hookline.dev`.
pub const LIST_LOG: Action = Action { verb: "list", resource: "webhooksubscriptions" };
/// Send a test event: `update` on `webhooksubscriptions.hookline.dev`.
pub const SEND_TEST: Action = Action { verb: "update", resource: "webhooksubscriptions" };

type Key = ([u8; 32], String, Action);
type Decisions = HashMap<Key, (Instant, Result<(), ApiError>)>;

/// How callers are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// Anyone may do anything (`--ingest-auth none`, local development only).
    None,
    /// TokenReview + SubjectAccessReview.
    Kubernetes {
        /// The client the reviews are sent with.
        client: Client,
        /// Recent decisions, so that a publisher's every request is not reviewed again.
        cache: Arc<Mutex<Decisions>>,
    },
}

impl Auth {
    /// Kubernetes authentication and authorization.
    pub fn kubernetes(client: Client) -> Self {
        Auth::Kubernetes { client, cache: Arc::default() }
    }

    /// Allow the request or say why not (401 unauthenticated, 403 forbidden); `namespace` empty
    /// asks for `action` in all namespaces.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        namespace: &str,
        action: Action,
    ) -> Result<(), ApiError> {
        let Auth::Kubernetes { client, cache } = self else { return Ok(()) };
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "missing bearer token: send your ServiceAccount token as `Authorization: Bearer …`",
                )
            })?;
        let key: Key = (Sha256::digest(token.as_bytes()).into(), namespace.to_string(), action);
        if let Some((at, decision)) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return decision.clone();
        }
        let decision = review(client, token, namespace, action).await;
        // Transient API failures are not cached.
        if !matches!(&decision, Err(e) if e.status.is_server_error()) {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), decision.clone()));
        }
        decision
    }
}

async fn review(client: &Client, token: &str, namespace: &str, action: Action) -> Result<(), ApiError> {
    let tr = TokenReview {
        spec: TokenReviewSpec { token: Some(token.to_string()), ..TokenReviewSpec::default() },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &tr)
        .await
        .map_err(|e| ApiError::unavailable(format!("TokenReview failed: {}", Chain(&e))))?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(ApiError::unauthorized("the bearer token is not valid (TokenReview rejected it)"));
    }
    let user = status.user.unwrap_or_default();
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            groups: user.groups,
            uid: user.uid,
            extra: user.extra,
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_string()),
                verb: Some(action.verb.to_string()),
                group: Some(crate::api::GROUP.to_string()),
                resource: Some(action.resource.to_string()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let reviewed = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &sar)
        .await
        .map_err(|e| ApiError::unavailable(format!("SubjectAccessReview failed: {}", Chain(&e))))?;
    if reviewed.status.is_some_and(|s| s.allowed) {
        Ok(())
    } else {
        let place = if namespace.is_empty() {
            "in all namespaces".to_string()
        } else {
            format!("in namespace {namespace}")
        };
        Err(ApiError::forbidden(format!(
            "{} may not {} {}.{} {place}",
            user.username.unwrap_or_default(),
            action.verb,
            action.resource,
            crate::api::GROUP
        )))
    }
}
