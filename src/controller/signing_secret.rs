//! The signing Secret a subscription gets when it names none.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use rand::RngCore;

use crate::api::{WebhookSubscription, labels};

/// The key under which a generated Secret holds its signing secret.
pub const SECRET_KEY: &str = "signingSecret";

/// A fresh Standard Webhooks signing secret: `whsec_` and 32 random bytes in base64.
pub fn new_signing_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("whsec_{}", STANDARD.encode(key))
}

/// The Secret generated for `sub`, owned by it so it is garbage-collected with it.
pub fn generated_secret(sub: &WebhookSubscription, name: &str) -> Secret {
    let owner = sub.controller_owner_ref(&()).into_iter().collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: sub.namespace(),
            owner_references: Some(owner),
            labels: Some(BTreeMap::from([
                (labels::MANAGED_BY.to_string(), labels::MANAGED_BY_VALUE.to_string()),
                (labels::SUBSCRIPTION.to_string(), sub.name_any()),
            ])),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([(SECRET_KEY.to_string(), new_signing_secret())])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fixtures::subscription;

    #[test]
    fn signing_secrets_are_whsec_with_32_random_bytes() {
        let a = new_signing_secret();
        let b = new_signing_secret();
        assert_ne!(a, b);
        let raw = STANDARD.decode(a.strip_prefix("whsec_").expect("prefix")).expect("base64");
        assert_eq!(raw.len(), 32);
    }

    #[test]
    fn generated_secret_is_owned_by_its_subscription() {
        let sub = subscription("minimal.yaml");
        let secret = generated_secret(&sub, "orders-signing");
        let owner = &secret.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "WebhookSubscription");
        assert_eq!(owner.uid, sub.uid().expect("fixture has a uid"));
        assert_eq!(owner.controller, Some(true));
        assert_eq!(secret.metadata.namespace, sub.namespace());
        assert!(secret.string_data.expect("data")[SECRET_KEY].starts_with("whsec_"));
    }
}
