//! Delivery-log queries: one statement per combination of filters, shared by both stores, each
//! on an index that serves its scope and its order (newest first) without sorting.
//!
//! Every attempt is added to each index, so they are few, and none is keyed by scattered values:
//! the scope's log in time order (`attempts_by_sub`, `attempts_by_ns`, and `attempts_by_time`
//! for the cluster-wide log, which pruning reads too), the failed attempts only
//! (partial indexes: a healthy system adds almost nothing to them), and a namespace's log by type.
//! Other filters (`eventId`, a type within one subscription, `delivered`) are checked on the
//! entries of the scope's index within `since`/`until`, newest first, until a page is full. An
//! index keyed by event id (random UUIDs) made each attempt insert 3.5 times as costly on SQLite
//! (9.6 → 34 µs per row, measured), for a query that is rare and narrowed by time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::Millis;

/// Whose attempts a query reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogScope {
    /// Every subscription of a namespace (attempts recorded by this version or later).
    Namespace(String),
    /// One subscription, by UID.
    Subscription(String),
    /// Every namespace's (the cluster-wide log).
    All,
}

/// Attempts by outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeFilter {
    /// `delivered`.
    Delivered,
    /// Any attempt that did not deliver (`retry`, `deadLettered`, `dropped`).
    Failed,
    /// One failed outcome exactly.
    Exactly(&'static str),
}

/// The schema of a logged attempt's `outcome`: one of [`OutcomeFilter::OUTCOMES`].
pub fn outcome_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(OutcomeFilter::OUTCOMES))
        .description(Some("`delivered`, or a failed attempt: `retry` (tried again later), `deadLettered` (given up, kept as a FailedEvent) or `dropped` (given up and not kept: dead-lettering off or its cap reached)."))
        .build()
}

impl OutcomeFilter {
    /// The outcomes an attempt is logged with.
    pub const OUTCOMES: [&'static str; 4] = ["delivered", "retry", "deadLettered", "dropped"];

    /// Parse a filter value: `delivered`, `failed`, or one outcome.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => Self::OUTCOMES.iter().find(|o| **o == value).map(|o| Self::Exactly(o)),
        }
    }
}

/// Where a page ends: the next page starts after it. Callers see it only as the opaque text of
/// [`LogCursor::encode`], which [`LogCursor::decode`] reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogCursor {
    /// The last entry's time.
    pub at: Millis,
    /// The last entry's sequence number.
    pub seq: i64,
}

impl LogCursor {
    /// The cursor of a page that ends with `entry`.
    pub fn after(entry: &super::LogEntry) -> Self {
        Self { at: entry.at_ms, seq: entry.seq }
    }

    /// The text a caller passes back as `cursor`: URL-safe, no padding.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}.{}", self.at, self.seq))
    }

    /// A cursor [`LogCursor::encode`] wrote; `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(text).ok()?).ok()?;
        let (at, seq) = text.split_once('.')?;
        Some(Self { at: at.parse().ok()?, seq: seq.parse().ok()? })
    }
}

/// One page of a delivery log, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogQuery {
    /// Whose attempts.
    pub scope: LogScope,
    /// Only these outcomes.
    pub outcome: Option<OutcomeFilter>,
    /// Only attempts of events of this type.
    pub event_type: Option<String>,
    /// Only attempts of the event with this id.
    pub event_id: Option<String>,
    /// Only attempts that ended at or after this time.
    pub since: Option<Millis>,
    /// Only attempts that ended before this time.
    pub until: Option<Millis>,
    /// Only entries after this one (the previous page's last).
    pub after: Option<LogCursor>,
    /// At most this many entries.
    pub limit: u32,
}

/// A query parameter, in either store's types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlParam {
    /// A string.
    Text(String),
    /// An integer.
    Int(i64),
}

/// The SQL dialect a statement is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `?1` placeholders; the index is named (`INDEXED BY`), so the plan does not depend on
    /// statistics the planner may lack.
    Sqlite,
    /// `$1` placeholders; the planner picks among the same indexes.
    Postgres,
}

impl Dialect {
    /// The `n`th parameter of a statement (from 1).
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }
}

/// The columns a log entry is read from, in this order.
pub const LOG_COLUMNS: &str = "seq, at_ms, event_id, event_type, attempt, status, duration_ms, error, outcome, next_retry_ms, subscription, url, namespace";

impl LogQuery {
    /// The newest `limit` entries of `scope`'s log, unfiltered.
    #[cfg(test)]
    pub fn page(scope: LogScope, limit: u32) -> Self {
        LogQuery {
            scope,
            outcome: None,
            event_type: None,
            event_id: None,
            since: None,
            until: None,
            after: None,
            limit,
        }
    }

    /// Whether the query reads failed attempts only (a partial index holds just those).
    fn failed_only(&self) -> bool {
        match self.outcome {
            Some(OutcomeFilter::Failed) => true,
            Some(OutcomeFilter::Exactly(o)) => o != "delivered",
            _ => false,
        }
    }

    /// The index that serves this query: failed attempts first (usually the fewest), then a
    /// namespace's type, else the scope's whole log. The cluster-wide log reads every attempt in
    /// time order and checks its filters on each: an index per filter across all namespaces
    /// would cost every attempt's insert for a view only administrators use.
    pub fn index(&self) -> &'static str {
        let ns = match self.scope {
            LogScope::All => return "attempts_by_time",
            LogScope::Namespace(_) => true,
            LogScope::Subscription(_) => false,
        };
        match (self.failed_only(), self.event_type.is_some(), ns) {
            (true, _, true) => "attempts_by_ns_failed",
            (true, _, false) => "attempts_by_sub_failed",
            (false, true, true) => "attempts_by_ns_type",
            (false, _, true) => "attempts_by_ns",
            (false, _, false) => "attempts_by_sub",
        }
    }

    /// The statement and its parameters.
    pub fn sql(&self, dialect: Dialect) -> (String, Vec<SqlParam>) {
        let mut params = Vec::new();
        let mut next = |p: SqlParam| {
            params.push(p);
            dialect.placeholder(params.len())
        };
        let mut filters = Vec::new();
        match &self.scope {
            LogScope::Namespace(ns) => {
                filters.push(format!("namespace = {}", next(SqlParam::Text(ns.clone()))))
            }
            LogScope::Subscription(uid) => {
                filters.push(format!("sub_uid = {}", next(SqlParam::Text(uid.clone()))))
            }
            LogScope::All => {}
        }
        // The failed-only indexes are partial: the statement states their condition as written.
        if self.failed_only() {
            filters.push("outcome <> 'delivered'".to_string());
        }
        match self.outcome {
            None | Some(OutcomeFilter::Failed) => {}
            Some(OutcomeFilter::Delivered) => filters.push("outcome = 'delivered'".to_string()),
            Some(OutcomeFilter::Exactly(o)) => {
                filters.push(format!("outcome = {}", next(SqlParam::Text(o.to_string()))));
            }
        }
        if let Some(t) = &self.event_type {
            filters.push(format!("event_type = {}", next(SqlParam::Text(t.clone()))));
        }
        if let Some(id) = &self.event_id {
            filters.push(format!("event_id = {}", next(SqlParam::Text(id.clone()))));
        }
        if let Some(since) = self.since {
            filters.push(format!("at_ms >= {}", next(SqlParam::Int(since))));
        }
        if let Some(until) = self.until {
            filters.push(format!("at_ms < {}", next(SqlParam::Int(until))));
        }
        if let Some(c) = self.after {
            let (at, seq) = (next(SqlParam::Int(c.at)), next(SqlParam::Int(c.seq)));
            filters.push(format!("(at_ms, seq) < ({at}, {seq})"));
        }
        let limit = next(SqlParam::Int(i64::from(self.limit)));
        let indexed = match dialect {
            Dialect::Sqlite => format!(" INDEXED BY {}", self.index()),
            Dialect::Postgres => String::new(),
        };
        let filtered =
            if filters.is_empty() { String::new() } else { format!(" WHERE {}", filters.join(" AND ")) };
        let sql = format!(
            "SELECT {LOG_COLUMNS} FROM attempts{indexed}{filtered} ORDER BY at_ms DESC, seq DESC LIMIT {limit}"
        );
        (sql, params)
    }

    /// Every combination of filters a test must see served by an index: each filter alone and
    /// with the other scope, the time range, and a cursor.
    #[cfg(test)]
    pub fn combinations() -> Vec<LogQuery> {
        let mut all = Vec::new();
        for scope in [LogScope::Namespace("shop".into()), LogScope::Subscription("uid".into()), LogScope::All]
        {
            let base = LogQuery::page(scope, 50);
            let variants = [
                base.clone(),
                LogQuery { outcome: Some(OutcomeFilter::Delivered), ..base.clone() },
                LogQuery { outcome: Some(OutcomeFilter::Failed), ..base.clone() },
                LogQuery { outcome: Some(OutcomeFilter::Exactly("retry")), ..base.clone() },
                LogQuery { event_type: Some("t".into()), ..base.clone() },
                LogQuery { event_id: Some("e".into()), ..base.clone() },
                LogQuery {
                    event_type: Some("t".into()),
                    outcome: Some(OutcomeFilter::Delivered),
                    ..base.clone()
                },
                LogQuery { since: Some(1), until: Some(2), ..base.clone() },
                LogQuery {
                    outcome: Some(OutcomeFilter::Failed),
                    event_type: Some("t".into()),
                    since: Some(1),
                    ..base.clone()
                },
            ];
            for v in variants {
                all.push(LogQuery { after: Some(LogCursor { at: 5, seq: 9 }), ..v.clone() });
                all.push(v);
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_wrote() {
        for cursor in [
            LogCursor { at: 0, seq: 0 },
            LogCursor { at: 1_796_000_000_123, seq: 42 },
            LogCursor { at: -5, seq: i64::MAX },
        ] {
            let text = cursor.encode();
            assert!(text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{text}");
            assert_eq!(LogCursor::decode(&text), Some(cursor));
        }
    }

    #[test]
    fn a_cursor_not_written_here_is_refused() {
        let wrote = |s: &str| URL_SAFE_NO_PAD.encode(s);
        for text in
            ["", "!!", "MTIz", &wrote("12"), &wrote("a.1"), &wrote("1.b"), &wrote("1.2.3"), &wrote("1.")]
        {
            assert_eq!(LogCursor::decode(text), None, "{text:?}");
        }
    }

    #[test]
    fn outcomes_parse() {
        assert_eq!(OutcomeFilter::parse("failed"), Some(OutcomeFilter::Failed));
        assert_eq!(OutcomeFilter::parse("deadLettered"), Some(OutcomeFilter::Exactly("deadLettered")));
        assert_eq!(OutcomeFilter::parse("delivered"), Some(OutcomeFilter::Delivered));
        assert_eq!(OutcomeFilter::parse("lost"), None);
    }

    #[test]
    fn statements_number_their_parameters_in_order() {
        let q = LogQuery {
            scope: LogScope::Namespace("shop".into()),
            outcome: Some(OutcomeFilter::Exactly("retry")),
            event_type: Some("t".into()),
            event_id: None,
            since: Some(1),
            until: None,
            after: Some(LogCursor { at: 5, seq: 9 }),
            limit: 10,
        };
        let (sql, params) = q.sql(Dialect::Postgres);
        assert_eq!(
            sql,
            "SELECT seq, at_ms, event_id, event_type, attempt, status, duration_ms, error, outcome, next_retry_ms, \
             subscription, url, namespace FROM attempts WHERE namespace = $1 AND outcome <> 'delivered' AND outcome = $2 \
             AND event_type = $3 AND at_ms >= $4 AND (at_ms, seq) < ($5, $6) ORDER BY at_ms DESC, seq DESC LIMIT $7"
        );
        assert_eq!(params.len(), 7);
        assert!(
            q.sql(Dialect::Sqlite)
                .0
                .contains("FROM attempts INDEXED BY attempts_by_ns_failed WHERE namespace = ?1")
        );
    }
}
