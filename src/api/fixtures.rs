//! Test fixtures: subscriptions read from `tests/fixtures/*.yaml`.

use crate::api::WebhookSubscription;

/// Read a subscription fixture by file name.
pub fn subscription(file: &str) -> WebhookSubscription {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}
