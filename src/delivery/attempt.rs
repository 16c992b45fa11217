//! One delivery attempt of one job, from the store to the wire and back into the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Shared;
use super::job::{Finished, JobState, LOCAL_RETRY, Loaded};
use super::sender::{Target, send};
use super::status::AttemptReport;
use crate::api::{FailureReason, FailureRecord, LastDelivery, MAX_ERROR_LENGTH};
use crate::event::{CloudEvent, EventError};
use crate::policy::retry::{Answer, Next, next};
use crate::registry::ActiveSubscription;
use crate::report::Chain;
use crate::store::{
    Attempt, DeadLetter, Fence, Job, JobRef, JobUpdate, Millis, PartitionKey, SentTo, now_ms,
};
use crate::telemetry;

/// When a job could not be attempted because this replica's lease was about to run out.
const LEASE_RETRY: Duration = Duration::from_millis(500);
/// Room kept between the end of an attempt and the end of the lease (clocks drift, requests
/// take a moment to be torn down).
const LEASE_MARGIN: Duration = Duration::from_secs(1);
/// The shortest attempt worth starting.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// The attempt's timeout: the endpoint's, cut to what is left of the lease; `None` when too
/// little is left.
fn attempt_timeout(shared: &Shared, sub: &ActiveSubscription) -> Option<Duration> {
    let endpoint = Duration::from_secs(sub.spec.endpoint.timeout_seconds.into());
    let left = shared.ownership.lease_left()?.saturating_sub(LEASE_MARGIN);
    Some(endpoint.min(left)).filter(|t| *t >= MIN_ATTEMPT.min(endpoint))
}

fn time(ms: Millis) -> Time {
    Time(jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

fn requeue_in(job: JobRef, delay: Duration) -> Finished {
    Finished::Requeue(JobRef { due_at: now_ms() + delay.as_millis() as Millis, ..job })
}

/// Attempt `job` for `sub` and report back on `done`: first [`Finished::SlotFree`] when the
/// concurrency slot is free, then the outcome once it is recorded.
pub async fn attempt(
    shared: Arc<Shared>,
    sub: Arc<ActiveSubscription>,
    job: JobState,
    event: Arc<CloudEvent>,
    done: mpsc::UnboundedSender<Finished>,
) {
    let finished = run(&shared, &sub, job, &event, &done).await;
    let _ = done.send(finished);
}

/// Read queued jobs whose events are not in memory from the store, in one read, and parse their
/// events here rather than on the dispatcher; reports back with [`Finished::Read`].
pub async fn read_ahead(shared: Arc<Shared>, jobs: Vec<JobRef>, done: mpsc::UnboundedSender<Finished>) {
    let found = shared.store.jobs(jobs.iter().map(|j| j.job_id).collect()).await;
    if let Err(e) = &found {
        shared.metrics.store_failed(e.metric_label());
    }
    let loaded = found.map(|found| found.into_iter().map(Loaded::from).collect());
    let _ = done.send(Finished::Read(jobs, loaded));
}

/// Ask the store for the earlier jobs of ordered lanes (`question`, for the jobs `asked`);
/// reports back with [`Finished::Checked`].
pub async fn check_earlier(
    shared: Arc<Shared>,
    uid: String,
    asked: Vec<JobRef>,
    question: Vec<(Option<PartitionKey>, i64)>,
    done: mpsc::UnboundedSender<Finished>,
) {
    let found = shared.store.earlier(&uid, question).await;
    if let Err(e) = &found {
        shared.metrics.store_failed(e.metric_label());
    }
    let _ = done.send(Finished::Checked(asked, found));
}

/// A stored event that cannot be parsed (which events this process accepted never are): give the
/// job up rather than retry garbage forever. Reports back like [`attempt`].
pub async fn unreadable(
    shared: Arc<Shared>,
    sub: Arc<ActiveSubscription>,
    job: JobState,
    error: EventError,
    done: mpsc::UnboundedSender<Finished>,
) {
    warn!(subscription = %sub.key.name, job = job.job.job_id, error = %error, "stored event unreadable; dropping");
    let _ = done.send(Finished::SlotFree);
    let outcome = Answer::NoAnswer(format!("stored event unreadable: {error}"));
    let next = Next::Drop;
    let _ = done.send(finish(&shared, &sub, &job, None, (outcome, next), None, &done).await);
}

/// The concurrency slot of one attempt, released once (at the latest when dropped).
struct Slot<'a>(Option<&'a mpsc::UnboundedSender<Finished>>);

impl Slot<'_> {
    fn release(&mut self) {
        if let Some(done) = self.0.take() {
            let _ = done.send(Finished::SlotFree);
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

async fn run(
    shared: &Shared,
    sub: &ActiveSubscription,
    job: JobState,
    event: &CloudEvent,
    done: &mpsc::UnboundedSender<Finished>,
) -> Finished {
    let mut slot = Slot(Some(done));
    let ns = sub.key.namespace.as_deref().unwrap_or_default();
    let schedule = &sub.schedule;
    let now = now_ms();
    let age = Duration::from_millis(now.saturating_sub(job.job.accepted_at).max(0) as u64);
    if age >= schedule.event_ttl {
        let outcome = Answer::NoAnswer("eventTTL passed before delivery".into());
        return finish(
            shared,
            sub,
            &job,
            Some(event),
            (outcome, Next::GiveUp(FailureReason::TtlExpired)),
            None,
            done,
        )
        .await;
    }

    let keys = match shared.secrets.signing_keys(ns, &sub.signing_secret).await {
        Ok(keys) => keys,
        Err(e) => {
            warn!(subscription = %sub.key.name, error = %Chain(&e), "no signing key; delivery waits");
            return requeue_in(job.job, LOCAL_RETRY);
        }
    };
    let mut headers = Vec::new();
    for (k, v) in &sub.spec.endpoint.headers {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v)) {
            headers.push((k, v));
        }
    }
    if let Some(from) = &sub.spec.endpoint.headers_from {
        match shared.secrets.headers(ns, &from.secret_ref.name).await {
            Ok(h) => headers.extend(h),
            Err(e) => {
                warn!(subscription = %sub.key.name, error = %Chain(&e), "secret headers unavailable; delivery waits");
                return requeue_in(job.job, LOCAL_RETRY);
            }
        }
    }
    // An attempt never outlives this replica's lease: once it may have run out, another replica
    // can own the subscription and send too (with one replica the lease never runs out).
    let Some(timeout) = attempt_timeout(shared, sub) else {
        debug!(subscription = %sub.key.name, "the lease is too short for an attempt; waiting for its renewal");
        return requeue_in(job.job, LEASE_RETRY);
    };
    let http = match shared.clients.for_endpoint(ns, &sub.spec.endpoint).await {
        Ok(http) => http,
        Err(e) => {
            warn!(subscription = %sub.key.name, error = %Chain(&e), "no HTTP client for the endpoint; delivery waits");
            return requeue_in(job.job, LOCAL_RETRY);
        }
    };
    let attempt_no = job.attempts + 1;
    let span = telemetry::attempt(event, ns, &sub.key.name, attempt_no, &sub.spec.endpoint.url);
    headers.extend(span.headers.iter().cloned());
    let target = Target {
        url: &sub.spec.endpoint.url,
        mode: sub.spec.delivery.mode,
        timeout,
        static_headers: &headers,
        keys: &keys,
    };
    let sent = send(&http, &target, event).await;
    let error = match &sent.outcome {
        Answer::NoAnswer(why) => Some(why.as_str()),
        Answer::Status { .. } => None,
    };
    let success = sent.outcome.status_code().is_some_and(|c| (200..300).contains(&c));
    let cause = match (sent.outcome.status_code(), error) {
        (Some(code), _) => format!("HTTP {code}"),
        (None, e) => e.unwrap_or("no answer").to_string(),
    };
    let _ = done.send(Finished::Answered { job: job.job, success, error: cause, at: Instant::now() });
    slot.release();
    span.end(sent.outcome.status_code(), error);
    let decision = next(&sent.outcome, attempt_no, age, schedule, rand::rng().random());
    shared.metrics.attempt_finished(ns, &sub.key.name, sent.outcome.status_code(), sent.duration);
    let took = Some(sent.duration.as_millis() as u64);
    finish(shared, sub, &job, Some(event), (sent.outcome, decision), took, done).await
}

/// The claim an outcome is recorded under: this replica's, while it owns the subscription (an
/// epoch no claim has once it does not); none with one replica.
fn fence(shared: &Shared, uid: &str) -> Option<Fence> {
    let o = &shared.ownership;
    (!o.is_solo()).then(|| Fence { owner: o.member().to_string(), epoch: o.epoch(uid).unwrap_or(-1) })
}

/// Record the attempt durably, update status, and tell the dispatcher what follows.
async fn finish(
    shared: &Shared,
    sub: &ActiveSubscription,
    job: &JobState,
    event: Option<&CloudEvent>,
    (outcome, decision): (Answer, Next),
    sent: Option<u64>,
    done: &mpsc::UnboundedSender<Finished>,
) -> Finished {
    let now = now_ms();
    // `sent` is the attempt's duration when a request went out; `None` when none did.
    let attempted = sent.is_some();
    let duration_ms = sent.unwrap_or(0);
    let attempt_no = if attempted { job.attempts + 1 } else { job.attempts };
    let (status_code, error) = match &outcome {
        Answer::Status { code, .. } => (Some(*code), None),
        Answer::NoAnswer(e) => (None, Some(e.clone())),
    };
    let update = match &decision {
        Next::Done => JobUpdate::Delivered,
        Next::Retry(delay) => JobUpdate::Retry { due_at: now + delay.as_millis() as Millis },
        Next::GiveUp(reason) => give_up(sub, job, *reason, attempt_no, status_code, error.clone(), now),
        Next::Gone => {
            give_up(sub, job, FailureReason::EndpointGone, attempt_no, status_code, error.clone(), now)
        }
        Next::Drop => JobUpdate::Dropped,
    };
    let record = Attempt {
        job_id: job.job.job_id,
        sub_uid: sub.uid.clone(),
        event_id: event.map(|e| e.id.clone()).unwrap_or_default(),
        event_type: event.map(|e| e.type_.clone()).unwrap_or_default(),
        attempt: attempt_no,
        at: now,
        status: status_code,
        duration_ms,
        error: error.clone(),
        update: update.clone(),
        sent_to: SentTo {
            namespace: sub.key.namespace.clone().unwrap_or_default(),
            subscription: sub.key.name.clone(),
            url: sub.spec.endpoint.url.clone(),
        },
        payload_bytes: event.map_or(0, CloudEvent::size),
        fence: fence(shared, &sub.uid),
    };
    if let Err(e) = shared.store.record(record).await {
        // Not recorded means not done: the job stays queued and is attempted again (at-least-once).
        shared.metrics.store_failed(e.metric_label());
        warn!(subscription = %sub.key.name, error = %Chain(&e), "recording an attempt failed; the event will be retried");
        return requeue_in(job.job, LOCAL_RETRY);
    }
    let gave_up = matches!(update, JobUpdate::DeadLetter(_) | JobUpdate::Dropped);
    let ns = sub.key.namespace.clone().unwrap_or_default();
    if attempted {
        let report = AttemptReport {
            last: LastDelivery {
                event_id: event.map(|e| e.id.clone()).unwrap_or_default(),
                event_type: event.map(|e| e.type_.clone()).unwrap_or_default(),
                attempt: attempt_no,
                time: time(now),
                success: matches!(decision, Next::Done),
                status_code,
                duration_ms,
                error,
            },
            gave_up,
            gone: matches!(decision, Next::Gone),
            generation: sub.generation,
            enable: sub.enable.clone(),
            disable_after: sub.schedule.disable_after,
        };
        if let Some(disabled) = shared.board.attempt(&sub.uid, &ns, &sub.key.name, report) {
            let _ = done.send(Finished::Disabled(disabled));
        }
    } else if gave_up {
        shared.board.gave_up(&sub.uid, &ns, &sub.key.name);
    }
    match &update {
        JobUpdate::DeadLetter(_) => shared.metrics.dead_lettered(&ns, &sub.key.name, "queued"),
        JobUpdate::Dropped => {
            shared.metrics.dead_lettered(&ns, &sub.key.name, "dropped");
            shared.board.dead_letter_dropped(&sub.uid, &ns, &sub.key.name);
        }
        _ => {}
    }
    if gave_up {
        shared.dead_letters_waiting.notify_one();
    }
    debug!(subscription = %sub.key.name, job = job.job.job_id, attempt = attempt_no, ?decision, "attempt recorded");
    match (decision, update) {
        (_, JobUpdate::Retry { due_at }) => Finished::Requeue(JobRef { due_at, ..job.job }),
        _ => Finished::Done(job.job),
    }
}

fn give_up(
    sub: &ActiveSubscription,
    job: &JobState,
    reason: FailureReason,
    attempts: u32,
    last_status_code: Option<u16>,
    last_error: Option<String>,
    now: Millis,
) -> JobUpdate {
    if !sub.spec.dead_letter.enabled {
        return JobUpdate::Dropped;
    }
    let failure = FailureRecord {
        reason,
        attempts,
        first_attempt_time: job.first_attempt_at.or((attempts > 0).then_some(now)).map(time),
        last_attempt_time: (attempts > 0).then(|| time(now)),
        last_status_code,
        last_error: last_error.map(|e| cut_to(e, MAX_ERROR_LENGTH)),
    };
    JobUpdate::DeadLetter(DeadLetter {
        namespace: sub.key.namespace.clone().unwrap_or_default(),
        subscription: sub.key.name.clone(),
        failure: serde_json::to_string(&failure).unwrap_or_default(),
    })
}

/// `text` cut to at most `max` bytes, on a character boundary (the FailedEvent schema bounds it).
fn cut_to(mut text: String, max: usize) -> String {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// Give up on held jobs whose TTL passed without an attempt: one read for all of them, then each
/// recorded and reported back like an attempt ([`Finished::Done`], or [`Finished::Requeue`] when
/// it could not be read or recorded, for the next sweep).
pub async fn expire(
    shared: Arc<Shared>,
    sub: Arc<ActiveSubscription>,
    jobs: Vec<JobRef>,
    done: mpsc::UnboundedSender<Finished>,
) {
    let mut found: HashMap<i64, Job> = match shared.store.jobs(jobs.iter().map(|j| j.job_id).collect()).await
    {
        Ok(found) => found.into_iter().map(|j| (j.job_id, j)).collect(),
        Err(e) => {
            shared.metrics.store_failed(e.metric_label());
            warn!(subscription = %sub.key.name, error = %Chain(&e), jobs = jobs.len(), "reading expired jobs; will retry");
            for job in jobs {
                let _ = done.send(requeue_in(job, LOCAL_RETRY));
            }
            return;
        }
    };
    for job_ref in jobs {
        let Some(job) = found.remove(&job_ref.job_id) else {
            // Gone from the store meanwhile (its subscription was dropped).
            let _ = done.send(Finished::Done(job_ref));
            continue;
        };
        let job = Loaded::from(job);
        let state = JobState::loaded(job_ref, &job);
        let outcome = Answer::NoAnswer("eventTTL passed while delivery was held".into());
        let event = job.event.as_deref().ok();
        let next = Next::GiveUp(FailureReason::TtlExpired);
        let _ = done.send(finish(&shared, &sub, &state, event, (outcome, next), None, &done).await);
    }
}

#[cfg(test)]
mod tests {
    use super::cut_to;

    #[test]
    fn errors_are_cut_on_a_character_boundary() {
        assert_eq!(cut_to("short".into(), 1024), "short");
        assert_eq!(cut_to("aé".into(), 2), "a", "never in the middle of a character");
        assert_eq!(cut_to("x".repeat(5000), 1024).len(), 1024);
    }
}
