//! Durable storage of accepted events, their delivery jobs, the delivery log and the dead-letter
//! outbox, behind one trait: [`SqliteStore`] (embedded, the default, one replica) and
//! [`PostgresStore`] (shared by several replicas).

mod log;
mod maintenance;
mod postgres;
mod records;
mod sqlite;

#[cfg(test)]
mod contract_tests;
mod error;

use futures::future::BoxFuture;

pub use error::StoreError;
use error::is_full;
pub use log::{Dialect, LOG_COLUMNS, LogCursor, LogQuery, LogScope, OutcomeFilter, SqlParam};
pub use maintenance::prune;
pub use postgres::{Claim, Listener, Member, Notice, PostgresStore, with_ca_file};
pub use sqlite::SqliteStore;

/// Payloads up to this size stay in their event's row after delivery, until the row is pruned:
/// they live in the row's page, so emptying them frees little, and it cost a third more store
/// time per event (measured with `hookline-bench --store-events`).
const KEEP_PAYLOAD_UP_TO: usize = 1024;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    jiff::Timestamp::now().as_millisecond()
}

/// A stored time as the delivery log shows it: RFC 3339 in UTC with exactly three fractional
/// digits, so that the strings sort as the times do (the shortest form, `…09.24Z`, would sort
/// after `…09.241Z`).
fn rfc3339(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| format!("{t:.3}")).unwrap_or_default()
}

/// An event to store, with the subscriptions (by UID) it must be delivered to.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The namespace it was published in.
    pub namespace: String,
    /// Its `source`.
    pub source: String,
    /// Its `id`.
    pub event_id: String,
    /// Its `type`.
    pub event_type: String,
    /// The event in the CloudEvents JSON format.
    pub body: Vec<u8>,
    /// The subscriptions (by UID) to queue a job for.
    pub targets: Vec<String>,
    /// When it was accepted.
    pub accepted_at: Millis,
    /// Its CloudEvents `partitionkey`, hashed.
    pub partition: Option<PartitionKey>,
}

/// An event's CloudEvents `partitionkey` extension as the store keeps it with each job: the first
/// eight bytes of its SHA-256. Ordered delivery holds jobs of one key back behind each other; two
/// keys that hash alike would only share their order, never lose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionKey(pub i64);

impl PartitionKey {
    /// The stored form of `key`: the same in every process and version.
    pub fn of(key: &str) -> PartitionKey {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        PartitionKey(i64::from_be_bytes(first))
    }
}

/// What became of one stored event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The same `source` + `id` was accepted before (within the dedup window): nothing enqueued.
    pub duplicate: bool,
    /// The jobs created: (subscription UID, job id).
    pub jobs: Vec<(String, i64)>,
}

/// Most jobs [`Store::earlier`] returns per lane: more are found when these are done.
pub const EARLIER_LIMIT: i64 = 100;

/// A pending delivery job, as a dispatcher schedules it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct JobRef {
    /// When the next attempt is due.
    pub due_at: Millis,
    /// The job's id.
    pub job_id: i64,
    /// When the event was accepted (its TTL counts from here).
    pub accepted_at: Millis,
    /// The event's `partitionkey`, for ordered delivery.
    pub partition: Option<PartitionKey>,
}

/// Everything needed to attempt one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// The job's id.
    pub job_id: i64,
    /// The subscription's UID.
    pub sub_uid: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the first attempt was made.
    pub first_attempt_at: Option<Millis>,
    /// When the event was accepted.
    pub accepted_at: Millis,
    /// The event in the CloudEvents JSON format.
    pub event: Vec<u8>,
    /// The FailedEvent this job replays (`namespace/name/uid`), if it is a replay.
    pub replay_of: Option<String>,
}

/// A replay of a FailedEvent to enqueue.
#[derive(Clone, Debug)]
pub struct Replay {
    /// The event, with the one subscription to replay it to.
    pub event: NewEvent,
    /// `namespace/name/uid` of the FailedEvent.
    pub replay_of: String,
}

/// How a replay ended, waiting to be applied to its FailedEvent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayResult {
    /// The replay's job.
    pub job_id: i64,
    /// `namespace/name/uid` of the FailedEvent.
    pub replay_of: String,
    /// Whether the replay was delivered.
    pub delivered: bool,
    /// Attempts made.
    pub attempts: u32,
    /// HTTP status of the last attempt.
    pub status: Option<u16>,
    /// What went wrong in the last attempt.
    pub error: Option<String>,
    /// When it ended.
    pub at: Millis,
}

/// Where one subscription's endpoint stands in the ownership handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// The subscription's UID.
    pub sub_uid: String,
    /// The URL this record is about; a different URL needs its own verification.
    pub url: String,
    /// `Event` or `Options`.
    pub method: String,
    /// When the endpoint proved ownership of `url`.
    pub verified_at: Option<Millis>,
    /// Secret part of the validation URL, while one is outstanding.
    pub token: Option<String>,
    /// The code the endpoint must echo, while one is outstanding.
    pub code: Option<String>,
    /// When the outstanding code and URL stop being accepted.
    pub expires_at: Option<Millis>,
    /// Handshake attempts made.
    pub attempts: u32,
    /// When the next handshake attempt is due.
    pub next_attempt_at: Millis,
    /// What the last attempt found, for the condition message.
    pub message: String,
    /// `WebHook-Allowed-Rate` from an Options handshake, per minute.
    pub rate_per_minute: Option<u32>,
    /// The `hookline.dev/revalidate` value this record has acted on.
    pub revalidate: Option<String>,
}

/// The statement that stores a [`Verification`], in both stores. Its parameters, in order:
/// `sub_uid, url, method, verified_at, token, code, expires_at, attempts, next_attempt_at,
/// message, rate_per_minute, revalidate`. An unverified record never replaces a verified one for
/// the same URL, method and revalidation: the handshake attempt whose validation URL was opened
/// while it was in flight writes its record afterwards.
fn put_verification_sql(dialect: Dialect) -> String {
    let values: Vec<String> = (1..=12).map(|n| dialect.placeholder(n)).collect();
    format!(
        "INSERT INTO verifications (sub_uid, url, method, verified_at_ms, token, code, expires_at_ms,
           attempts, next_attempt_ms, message, rate_per_minute, revalidate)
         VALUES ({})
         ON CONFLICT (sub_uid) DO UPDATE SET url = excluded.url, method = excluded.method,
           verified_at_ms = excluded.verified_at_ms, token = excluded.token, code = excluded.code,
           expires_at_ms = excluded.expires_at_ms, attempts = excluded.attempts,
           next_attempt_ms = excluded.next_attempt_ms, message = excluded.message,
           rate_per_minute = excluded.rate_per_minute, revalidate = excluded.revalidate
         WHERE NOT (verifications.verified_at_ms IS NOT NULL AND excluded.verified_at_ms IS NULL
           AND verifications.url = excluded.url AND verifications.method = excluded.method
           AND verifications.revalidate IS NOT DISTINCT FROM excluded.revalidate)",
        values.join(", ")
    )
}

/// What happens to a job after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobUpdate {
    /// Delivered: the job is finished.
    Delivered,
    /// Retry later.
    Retry {
        /// When.
        due_at: Millis,
    },
    /// Given up: the job leaves the queue and a dead letter is queued for the FailedEvent writer.
    DeadLetter(DeadLetter),
    /// Given up and dropped (dead-lettering is off, or the subscription is gone).
    Dropped,
}

/// A dead letter waiting to become a FailedEvent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The subscription's namespace.
    pub namespace: String,
    /// The subscription's name.
    pub subscription: String,
    /// The failure record as JSON (`FailureRecord`).
    pub failure: String,
}

/// One delivery attempt, for the delivery log and the job's bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The job's id.
    pub job_id: i64,
    /// The subscription's UID.
    pub sub_uid: String,
    /// The event's `id`.
    pub event_id: String,
    /// The event's `type`.
    pub event_type: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// When the attempt ended.
    pub at: Millis,
    /// HTTP status, when the endpoint answered.
    pub status: Option<u16>,
    /// How long the request took (0 when none was sent).
    pub duration_ms: u64,
    /// What went wrong, when no status tells it.
    pub error: Option<String>,
    /// What happens to the job.
    pub update: JobUpdate,
    /// Where the attempt went, for the delivery log.
    pub sent_to: SentTo,
    /// Size of the event in bytes (0 when unknown): a finished job frees a large event's space.
    pub payload_bytes: usize,
    /// The claim it was made under, when replicas share the store: the outcome is recorded only
    /// while that claim is current ([`StoreError::Fenced`] otherwise).
    pub fence: Option<Fence>,
}

/// The subscription an attempt was made for, and where it was sent, as the delivery log shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SentTo {
    /// The subscription's namespace.
    pub namespace: String,
    /// The subscription's name.
    pub subscription: String,
    /// The endpoint URL the request went to.
    pub url: String,
}

/// An owner's claim on a subscription: the member that owns it and the epoch of its claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The owning member's identity.
    pub owner: String,
    /// The epoch of its claim; a new owner's claim has a higher one.
    pub epoch: i64,
}

/// One row of the delivery log: one attempt to deliver an event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = DeliveryAttempt)]
pub struct LogEntry {
    #[serde(skip)]
    /// Position in the log (for paging).
    pub seq: i64,
    #[serde(skip)]
    /// When the attempt ended, in ms (for paging).
    pub at_ms: i64,
    /// When the attempt ended (RFC 3339).
    #[schema(format = DateTime)]
    pub time: String,
    /// The event's `id`.
    pub event_id: String,
    /// The event's `type`.
    pub event_type: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    /// HTTP status, when the endpoint answered.
    pub status_code: Option<u16>,
    /// How long the request took.
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    /// What went wrong, when no status tells it.
    pub error: Option<String>,
    /// `delivered`, `retry`, `deadLettered` or `dropped`.
    #[schema(schema_with = log::outcome_schema)]
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// When the next attempt is due, for `retry`.
    #[schema(format = DateTime, nullable = false)]
    pub next_retry_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    /// The subscription's namespace (absent in attempts logged by versions before delivery
    /// queries).
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    /// The subscription's name (absent likewise).
    pub subscription: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    /// Where the request was sent (absent likewise).
    pub url: Option<String>,
}

/// A queued dead letter with its event, as the FailedEvent writer reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedDeadLetter {
    /// The job that was given up.
    pub job_id: i64,
    /// The subscription's UID.
    pub sub_uid: String,
    /// Where it goes and why it failed.
    pub letter: DeadLetter,
    /// The event in the CloudEvents JSON format.
    pub event: Vec<u8>,
}

/// The storage Hookline needs. Every write is durable when its future resolves.
pub trait Store: Send + Sync + 'static {
    /// Store events and their jobs in one durable commit; duplicates (same namespace, source, id
    /// within the dedup window) are reported and not enqueued again.
    fn accept(&self, events: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Accepted>, StoreError>>;
    /// The pending jobs of a subscription (used when its dispatcher starts).
    fn pending(&self, sub_uid: &str) -> BoxFuture<'_, Result<Vec<JobRef>, StoreError>>;
    /// Of each lane (a subscription's jobs of one `partitionkey`, or all of them for `None`),
    /// the pending jobs with an id below the given one, lowest first (at most
    /// [`EARLIER_LIMIT`] per lane). Ordered delivery asks before it sends a job it heard of from
    /// ingest: with several replicas, the earlier job of its key may have been accepted on
    /// another replica and still be on its way.
    fn earlier(
        &self,
        sub_uid: &str,
        lanes: Vec<(Option<PartitionKey>, i64)>,
    ) -> BoxFuture<'_, Result<Vec<JobRef>, StoreError>>;
    /// The jobs with these ids that still exist, with their events, in one read.
    fn jobs(&self, job_ids: Vec<i64>) -> BoxFuture<'_, Result<Vec<Job>, StoreError>>;
    /// One job with its event, if it still exists.
    #[cfg(test)]
    fn job(&self, job_id: i64) -> BoxFuture<'_, Result<Option<Job>, StoreError>> {
        Box::pin(async move { Ok(self.jobs(vec![job_id]).await?.pop()) })
    }
    /// Record an attempt and apply its consequence to the job, atomically.
    fn record(&self, attempt: Attempt) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Drop every queued job of a deleted subscription; returns how many were dropped.
    fn drop_subscription(&self, sub_uid: &str) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// One page of a delivery log (a namespace's or a subscription's), newest first.
    fn deliveries(&self, query: LogQuery) -> BoxFuture<'_, Result<Vec<LogEntry>, StoreError>>;
    /// Dead letters not yet turned into FailedEvents.
    fn dead_letters(&self, limit: u32) -> BoxFuture<'_, Result<Vec<QueuedDeadLetter>, StoreError>>;
    /// Forget a dead letter once its FailedEvent exists (or it was dropped).
    fn dead_letter_done(&self, job_id: i64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Enqueue a replay for `replay.event.targets[0]`; `None` when one is already pending.
    fn replay(&self, replay: Replay) -> BoxFuture<'_, Result<Option<JobRef>, StoreError>>;
    /// Finished replays not yet applied to their FailedEvents.
    fn replay_results(&self, limit: u32) -> BoxFuture<'_, Result<Vec<ReplayResult>, StoreError>>;
    /// Forget a replay result once applied.
    fn replay_result_done(&self, job_id: i64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The verification record of a subscription.
    fn verification(&self, sub_uid: &str) -> BoxFuture<'_, Result<Option<Verification>, StoreError>>;
    /// Replace the verification record of a subscription.
    fn put_verification(&self, v: Verification) -> BoxFuture<'_, Result<(), StoreError>>;
    /// A GET of a validation URL: verify the outstanding handshake with this token if it has not
    /// expired. Returns the subscription UID when it did.
    fn confirm_validation(
        &self,
        token: &str,
        now: Millis,
    ) -> BoxFuture<'_, Result<Option<String>, StoreError>>;
    /// Delete at most `limit` log entries older than `log_before` and at most `limit` finished
    /// events older than `events_before`; returns how many rows went. Callers repeat while it
    /// returns `limit` or more, so one call never holds the writer for long.
    fn prune(
        &self,
        log_before: Millis,
        events_before: Millis,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Bytes the store can still write: free space on its volume, plus space it can reuse inside
    /// its files. The count may stop at `enough` (the caller only asks whether there is that much).
    /// `None` when the store cannot tell (a database server's volume is not ours to read; a full
    /// one fails writes with [`StoreError::Full`]).
    fn free_bytes(&self, enough: u64) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_have_three_fractional_digits_and_sort_as_strings() {
        assert_eq!(rfc3339(1_764_669_909_240), "2025-12-02T10:05:09.240Z");
        assert_eq!(rfc3339(1_764_669_909_000), "2025-12-02T10:05:09.000Z");
        assert!(rfc3339(1_764_669_909_241) > rfc3339(1_764_669_909_240));
    }
}
