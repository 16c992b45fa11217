//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' annotations and the
//! types they answer with (`hookline openapi`, served at `/openapi.json`, committed as
//! `docs/openapi.json`). `tests/integration/openapi.rs` fails when the committed document drifts, and
//! provokes every response it documents from a running Hookline.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Object, ObjectBuilder, Type};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use super::ErrorBody;
use crate::event::ExtValue;
use crate::store::OutcomeFilter;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hookline",
        description = "Publish CloudEvents to the WebhookSubscriptions of a namespace, send test events, \
            read the delivery log, and verify endpoints. Callers authenticate with a Kubernetes bearer \
            token; what they may do is what RBAC allows them on `hookline.dev` resources in the namespace. \
            Every refusal is an `ErrorBody` naming the problem.",
        license(name = "Apache-2.0"),
    ),
    modifiers(&BearerToken),
    tags(
        (name = "events", description = "Publishing CloudEvents."),
        (name = "deliveries", description = "The delivery log: every attempt, with its outcome."),
        (name = "webhooksubscriptions", description = "Test events and endpoint verification."),
        (name = "meta", description = "This document."),
    ),
)]
pub(super) struct ApiDoc;

/// The `bearer` security scheme the authenticated operations name.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A Kubernetes token (e.g. `kubectl create token <serviceaccount>`), checked with a \
                 TokenReview; each operation's RBAC verb is checked with a SubjectAccessReview: \
                 `create` on `events.hookline.dev` to publish, `list` (namespace log) or `get` \
                 (a subscription's log) on `webhooksubscriptions.hookline.dev`, `update` on it to \
                 send a test event. Not needed under `--ingest-auth none`.",
            ))
            .build();
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
        }
    }
}

/// The OpenAPI document, as `docs/openapi.json` holds it: [`ApiDoc`] with the routes.
pub fn document() -> String {
    let (_, doc) = super::routes().split_for_parts();
    let mut json = doc.to_pretty_json().expect("the OpenAPI document serializes");
    json.push('\n');
    json
}

static DOCUMENT: LazyLock<String> = LazyLock::new(document);

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", content_type = "application/json")),
)]
pub(super) async fn serve() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT.as_str()).into_response()
}

/// The refusals every authenticated operation may answer with before it looks at the request.
#[derive(IntoResponses)]
#[allow(dead_code, reason = "it only describes answers, which handlers give as `ApiError`s")]
pub enum Admission {
    /// No bearer token, or one the Kubernetes API server does not accept.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// RBAC does not allow the caller this operation in the namespace (the error names the verb
    /// and resource).
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The namespace, or the subscription the request names, does not exist.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// Hookline is not ready, a service it needs (the Kubernetes API, the store) cannot answer
    /// now, or the server holds its maximum of connections (`--max-connections`, or
    /// `--max-connections-per-client` from the caller's address; that answer closes the
    /// connection); nothing was done. Retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// One event in the CloudEvents 1.0 JSON format (structured mode, or an element of a batch).
/// The limits are those of ingest (`event::limits`, which a unit test holds them to); `data` or
/// `data_base64`, not both.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "specversion": "1.0",
    "id": "order-1042",
    "source": "/shop/orders",
    "type": "com.example.order.created",
    "subject": "eu/orders/1042",
    "time": "2026-12-02T09:00:00Z",
    "datacontenttype": "application/json",
    "partitionkey": "customer-7",
    "data": {"amount": 120}
}))]
pub struct StructuredEvent {
    /// The CloudEvents version.
    #[schema(pattern = "^1\\.0$")]
    pub specversion: String,
    /// Identifies the event; unique per `source` (a repeat within the deduplication window is
    /// accepted as a duplicate and not queued again).
    #[schema(min_length = 1, max_length = 1024)]
    pub id: String,
    /// The context in which the event happened (a URI reference).
    #[schema(min_length = 1, max_length = 2048)]
    pub source: String,
    /// The event type: what subscriptions' `eventTypes` match, and the EventType whose schema
    /// `data` must match.
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 1024)]
    pub type_: String,
    /// The subject within the source (what `filter.subjectPrefix` matches).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 2048)]
    pub subject: Option<String>,
    /// When the event happened (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, max_length = 64)]
    pub time: Option<String>,
    /// The media type of `data` (JSON when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 256)]
    pub datacontenttype: Option<String>,
    /// The schema `data` adheres to (a URI).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 2048)]
    pub dataschema: Option<String>,
    /// The payload: any JSON value, or a string for a text media type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// A binary payload, base64-encoded (instead of `data`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(content_encoding = "base64", max_length = 1398104)]
    pub data_base64: Option<String>,
    /// Extension attributes (at most 64; lower-case letters and digits, e.g. `partitionkey`,
    /// `traceparent`).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, ExtValue>,
}

/// The schema of the `outcome` filter: `delivered`, `failed`, or one exact outcome.
pub(super) fn outcome_filter_schema() -> Object {
    let mut values = vec!["delivered", "failed"];
    values.extend(&OutcomeFilter::OUTCOMES[1..]);
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values)).build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{CloudEvent, limits};

    #[test]
    fn the_documented_event_example_is_one_ingest_accepts() {
        let doc: serde_json::Value = serde_json::from_str(&document()).expect("JSON");
        let example = &doc["components"]["schemas"]["StructuredEvent"]["example"];
        let schema = serde_json::json!({
            "$ref": "#/components/schemas/StructuredEvent",
            "components": doc["components"],
        });
        let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
        assert!(validator.validate(example).is_ok(), "the example fits the documented schema");
        let bytes = serde_json::to_vec(example).expect("serializes");
        let parsed = CloudEvent::from_structured(&bytes).expect("ingest accepts the example");
        assert_eq!(parsed.type_, "com.example.order.created");
        assert!(parsed.extensions.contains_key("partitionkey"));
    }

    #[test]
    fn the_documented_limits_are_those_of_ingest() {
        let doc: serde_json::Value = serde_json::from_str(&document()).expect("JSON");
        let event = &doc["components"]["schemas"]["StructuredEvent"]["properties"];
        let max = |attribute: &str| event[attribute]["maxLength"].as_u64().map(|n| n as usize);
        assert_eq!(max("id"), Some(limits::ID));
        assert_eq!(max("type"), Some(limits::TYPE));
        for uri in ["source", "subject", "dataschema"] {
            assert_eq!(max(uri), Some(limits::URI), "{uri}");
        }
        assert_eq!(max("time"), Some(limits::TIME));
        assert_eq!(max("datacontenttype"), Some(limits::MEDIA_TYPE));
        assert_eq!(max("data_base64"), Some(limits::DATA_BASE64));
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_route() {
        let doc: serde_json::Value = serde_json::from_str(&document()).expect("JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths: Vec<&String> = doc["paths"].as_object().expect("paths").keys().collect();
        assert_eq!(
            paths,
            [
                "/openapi.json",
                "/v1/deliveries",
                "/v1/namespaces/{ns}/deliveries",
                "/v1/namespaces/{ns}/events",
                "/v1/namespaces/{ns}/webhooksubscriptions/{name}/deliveries",
                "/v1/namespaces/{ns}/webhooksubscriptions/{name}/test",
                "/v1/validate/{token}",
            ],
            "every route, in key order"
        );
    }
}
