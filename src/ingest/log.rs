//! The delivery log: `GET …/deliveries` of a namespace or of one subscription, newest attempt
//! first, paged by an opaque cursor.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kube::Api;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{LIST_LOG, READ_LOG};
use super::error::{ApiError, ErrorBody};
use super::{IngestState, openapi};
use crate::api::WebhookSubscription;
use crate::report::Chain;
use crate::store::{LogCursor, LogEntry, LogQuery, LogScope, OutcomeFilter};

/// The query of a delivery-log request: paging and filters. Anything else is refused.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct LogParams {
    /// Attempts per page (default 50; clamped to 1–500).
    limit: Option<u32>,
    /// Where the page starts: `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Only the attempts of this subscription (by name; not on the subscription's own log; on
    /// `/v1/deliveries` with `namespace`).
    subscription: Option<String>,
    /// Only the attempts in this namespace (on `/v1/deliveries` only: the other logs' paths name it).
    namespace: Option<String>,
    /// `delivered`, `failed` (any attempt that did not deliver), or one exact outcome.
    #[param(schema_with = openapi::outcome_filter_schema)]
    outcome: Option<String>,
    /// Only attempts of events of this `type`.
    event_type: Option<String>,
    /// Only attempts of the event with this `id` (as a publish or test answered it).
    event_id: Option<String>,
    /// Only attempts that ended at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only attempts that ended before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
}

/// A page of the delivery log, newest attempt first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPage {
    /// The attempts.
    pub items: Vec<LogEntry>,
    /// The `cursor` of the next page; `null` on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// Read a delivery-log query, naming the parameter at fault.
fn log_params(uri: &axum::http::Uri) -> Result<LogParams, ApiError> {
    Query::<LogParams>::try_from_uri(uri).map(|q| q.0).map_err(|e| {
        bad_query(format!(
            "{}; the parameters are limit, cursor, subscription, namespace (cluster-wide only), outcome, \
             eventType, eventId, since and until",
            e.body_text()
        ))
    })
}

impl LogParams {
    /// Refuse `namespace` where the path names the namespace.
    fn no_namespace(&self) -> Result<(), ApiError> {
        match self.namespace {
            Some(_) => Err(bad_query("namespace: the path names the namespace already")),
            None => Ok(()),
        }
    }

    /// The store query for `scope`.
    fn query(&self, scope: LogScope) -> Result<LogQuery, ApiError> {
        let time = |name: &str, value: &Option<String>| -> Result<Option<i64>, ApiError> {
            value
                .as_deref()
                .map(|v| {
                    v.parse::<jiff::Timestamp>().map(|t| t.as_millisecond()).map_err(|e| {
                        bad_query(format!(
                            "{name}: {v:?} is not an RFC 3339 time, e.g. 2026-12-02T09:00:00Z ({e})"
                        ))
                    })
                })
                .transpose()
        };
        let outcome = self
            .outcome
            .as_deref()
            .map(|o| {
                OutcomeFilter::parse(o).ok_or_else(|| {
                    bad_query(format!(
                        "outcome: {o:?} is not one of delivered, failed (any attempt that did not deliver), {}",
                        OutcomeFilter::OUTCOMES[1..].join(", ")
                    ))
                })
            })
            .transpose()?;
        let after = self
            .cursor
            .as_deref()
            .map(|c| LogCursor::decode(c).ok_or_else(|| bad_query("cursor: not one this server issued")))
            .transpose()?;
        let nonempty = |name: &str, v: &Option<String>| match v.as_deref() {
            Some("") => Err(bad_query(format!("{name}: must not be empty"))),
            _ => Ok(v.clone()),
        };
        Ok(LogQuery {
            scope,
            outcome,
            event_type: nonempty("eventType", &self.event_type)?,
            event_id: nonempty("eventId", &self.event_id)?,
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            after,
            limit: self.limit.unwrap_or(50).clamp(1, 500),
        })
    }
}

/// Run a log query and answer with its page and the cursor of the next one.
async fn log_page(state: &IngestState, query: LogQuery, name: Option<&str>) -> Result<Response, ApiError> {
    let limit = query.limit;
    let mut entries = state
        .store
        .deliveries(query)
        .await
        .map_err(|e| ApiError::unavailable(format!("reading the delivery log: {}", Chain(&e))))?;
    // Attempts logged before the log named their subscription: the path names it.
    if let Some(name) = name {
        for e in entries.iter_mut().filter(|e| e.subscription.is_none()) {
            e.subscription = Some(name.to_string());
        }
    }
    let next = (entries.len() as u32 == limit)
        .then(|| entries.last().map(|e| LogCursor::after(e).encode()))
        .flatten();
    Ok(axum::Json(DeliveryPage { items: entries, next_cursor: next }).into_response())
}

pub(super) async fn subscription_uid(state: &IngestState, ns: &str, name: &str) -> Result<String, ApiError> {
    let api: Api<WebhookSubscription> = Api::namespaced(state.client.clone(), ns);
    match api.get_metadata_opt(name).await {
        Ok(Some(meta)) => {
            meta.metadata.uid.ok_or_else(|| ApiError::unavailable("the subscription has no uid"))
        }
        Ok(None) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, format!("webhooksubscription {ns}/{name} not found")))
        }
        Err(e) => {
            Err(ApiError::unavailable(format!("reading webhooksubscription {ns}/{name}: {}", Chain(&e))))
        }
    }
}

/// The delivery log of one subscription: every attempt to deliver an event to it.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{ns}/webhooksubscriptions/{name}/deliveries",
    tag = "deliveries",
    operation_id = "listSubscriptionDeliveries",
    params(
        ("ns" = String, Path, description = "The subscription's namespace."),
        ("name" = String, Path, description = "The subscription's name."),
        LogParams,
    ),
    responses(
        (status = 200, description = "A page of the subscription's delivery log (the caller may `get` it).", body = DeliveryPage),
        (status = 400, description = "An unknown parameter, a bad value (named), `subscription` (the path names it), or an invalid namespace name.", body = ErrorBody),
        openapi::Admission,
    ),
    security(("bearer" = [])),
)]
pub(super) async fn deliveries(
    State(state): State<IngestState>,
    Path((ns, name)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.admit(&headers, &ns, READ_LOG).await?;
    let params = log_params(&uri)?;
    if params.subscription.is_some() {
        return Err(bad_query("subscription: the path names the subscription already"));
    }
    params.no_namespace()?;
    let uid = subscription_uid(&state, &ns, &name).await?;
    let query = params.query(LogScope::Subscription(uid))?;
    log_page(&state, query, Some(&name)).await
}

/// The delivery log of every subscription of a namespace (or of one, by name).
#[utoipa::path(
    get,
    path = "/v1/namespaces/{ns}/deliveries",
    tag = "deliveries",
    operation_id = "listDeliveries",
    params(
        ("ns" = String, Path, description = "The namespace."),
        LogParams,
    ),
    responses(
        (status = 200, description = "A page of the namespace's delivery log (the caller may `list` its subscriptions).", body = DeliveryPage),
        (status = 400, description = "An unknown parameter, a bad value (named), or an invalid namespace name.", body = ErrorBody),
        openapi::Admission,
    ),
    security(("bearer" = [])),
)]
pub(super) async fn namespace_deliveries(
    State(state): State<IngestState>,
    Path(ns): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.admit(&headers, &ns, LIST_LOG).await?;
    let params = log_params(&uri)?;
    params.no_namespace()?;
    let (scope, name) = match &params.subscription {
        Some(name) => {
            (LogScope::Subscription(subscription_uid(&state, &ns, name).await?), Some(name.as_str()))
        }
        None => (LogScope::Namespace(ns.clone()), None),
    };
    let query = params.query(scope)?;
    log_page(&state, query, name).await
}

/// The delivery log of every namespace, for administrators (or of one namespace, or one
/// subscription, by `namespace` and `subscription`).
#[utoipa::path(
    get,
    path = "/v1/deliveries",
    tag = "deliveries",
    operation_id = "listClusterDeliveries",
    params(LogParams),
    responses(
        (status = 200, description = "A page of the delivery log of every namespace (the caller may `list` webhooksubscriptions in all namespaces); each attempt names its namespace.", body = DeliveryPage),
        (status = 400, description = "An unknown parameter, a bad value (named), an invalid `namespace`, or `subscription` without `namespace`.", body = ErrorBody),
        openapi::Admission,
    ),
    security(("bearer" = [])),
)]
pub(super) async fn cluster_deliveries(
    State(state): State<IngestState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.admit_cluster_wide(&headers, LIST_LOG).await?;
    let params = log_params(&uri)?;
    if let Some(ns) = &params.namespace {
        super::valid_namespace(ns).map_err(|e| bad_query(format!("namespace: {}", e.message)))?;
    }
    let (scope, name) = match (&params.namespace, &params.subscription) {
        (Some(ns), Some(name)) => {
            (LogScope::Subscription(subscription_uid(&state, ns, name).await?), Some(name.as_str()))
        }
        (None, Some(_)) => return Err(bad_query("subscription: name its namespace too (namespace=…)")),
        (Some(ns), None) => (LogScope::Namespace(ns.clone()), None),
        (None, None) => (LogScope::All, None),
    };
    let query = params.query(scope)?;
    log_page(&state, query, name).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> Result<LogQuery, String> {
        let uri: axum::http::Uri = format!("/v1/namespaces/ns/deliveries?{q}").parse().expect("uri");
        log_params(&uri).and_then(|p| p.query(LogScope::Namespace("ns".into()))).map_err(|e| {
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
            e.message
        })
    }

    #[test]
    fn no_parameters_is_the_newest_page_of_fifty() {
        assert_eq!(query(""), Ok(LogQuery::page(LogScope::Namespace("ns".into()), 50)));
    }

    #[test]
    fn the_limit_is_clamped() {
        for (given, used) in [("0", 1), ("1", 1), ("500", 500), ("501", 500), ("4000000000", 500)] {
            assert_eq!(query(&format!("limit={given}")).map(|q| q.limit), Ok(used), "limit={given}");
        }
        assert!(query("limit=-1").expect_err("negative").contains("limit"));
    }

    #[test]
    fn filters_reach_the_store_query() {
        let cursor = LogCursor { at: 1_000, seq: 7 };
        let q = query(&format!(
            "outcome=failed&eventType=order.created&eventId=e-1&since=2026-12-02T09:00:00Z\
             &until=2026-12-02T10:00:00%2B01:00&cursor={}",
            cursor.encode()
        ))
        .expect("valid");
        assert_eq!(q.outcome, Some(OutcomeFilter::Failed));
        assert_eq!(q.event_type.as_deref(), Some("order.created"));
        assert_eq!(q.event_id.as_deref(), Some("e-1"));
        assert_eq!(q.since, Some(1_796_202_000_000));
        assert_eq!(q.until, Some(1_796_202_000_000));
        assert_eq!(q.after, Some(cursor));
    }

    #[test]
    fn bad_values_are_refused_naming_the_parameter() {
        for (q, named) in [
            ("since=yesterday", "since: \"yesterday\" is not an RFC 3339 time"),
            ("until=2026-12-02", "until: \"2026-12-02\" is not an RFC 3339 time"),
            ("eventId=", "eventId: must not be empty"),
            ("eventType=", "eventType: must not be empty"),
            ("outcome=lost", "outcome: \"lost\" is not one of delivered, failed"),
            ("cursor=MTIz", "cursor: not one this server issued"),
            ("colour=red", "the parameters are limit, cursor"),
        ] {
            let message = query(q).expect_err(q);
            assert!(message.contains(named), "{q}: {message}");
        }
    }

    #[test]
    fn only_the_cluster_wide_log_takes_a_namespace() {
        let params = |q: &str| {
            let uri: axum::http::Uri = format!("/v1/deliveries?{q}").parse().expect("uri");
            log_params(&uri).map_err(|e| e.message).expect("parameters")
        };
        assert_eq!(params("namespace=shop").namespace.as_deref(), Some("shop"));
        let refused = params("namespace=shop").no_namespace().expect_err("the path names it");
        assert!(refused.message.contains("namespace: the path names the namespace"), "{}", refused.message);
        assert!(params("limit=5").no_namespace().is_ok());
    }
}
