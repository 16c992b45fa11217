//! `EventType`: one entry of a namespace's event catalog, with an optional JSON Schema its
//! events' `data` must match at publish.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::conditions::conditions_schema;
use crate::event::limits;

/// The longest description of an event type, in bytes.
pub const MAX_DESCRIPTION_LENGTH: usize = 1024;

/// An event type that can be published and subscribed to in this namespace: the catalog entry
/// `kubectl get eventtypes` lists, and the schema of its events' `data`.
// kube's printcolumn(...) repeats `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "hookline.dev",
    version = "v1alpha1",
    kind = "EventType",
    namespaced,
    status = "EventTypeStatus",
    category = "hookline",
    derive = "PartialEq",
    doc = "An event type of this namespace's catalog: what it means and, optionally, the JSON Schema its data must match when published.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Description", type_ = "string", json_path = ".spec.description"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct EventTypeSpec {
    /// The CloudEvents `type` attribute this entry describes, e.g. `com.shop.order.created`.
    /// One EventType per type and namespace: when several name the same type, the oldest is used.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = limits::TYPE))]
    pub type_: String,
    /// What an event of this type means and when it is published.
    #[schemars(length(min = 1, max = MAX_DESCRIPTION_LENGTH))]
    pub description: String,
    /// A JSON Schema (draft 2020-12 unless `$schema` names another draft) that the `data` of
    /// every event of this type published in this namespace must match; an event without data
    /// is checked as `null`. A publish whose data does not match is refused with 400 and nothing
    /// of it is stored. `$ref` may only point into this schema: nothing is ever fetched. A
    /// schema that does not compile makes the EventType `Ready=False` and checks nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "json_schema_object")]
    pub schema: Option<serde_json::Value>,
    /// An example of this type's `data`, shown to subscribers; it must match `schema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub example: Option<serde_json::Value>,
}

fn json_schema_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A JSON Schema (draft 2020-12 unless `$schema` names another draft) that the `data` of every event of this type published in this namespace must match; an event without data is checked as `null`. A publish whose data does not match is refused with 400 and nothing of it is stored. `$ref` may only point into this schema: nothing is ever fetched. A schema that does not compile makes the EventType `Ready=False` and checks nothing.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

fn any_json(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "An example of this type's `data`, shown to subscribers; it must match `schema`.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// What Hookline found about an EventType. Written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTypeStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the schema compiles and the example matches it, and no older EventType of the
    /// namespace names the same type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
