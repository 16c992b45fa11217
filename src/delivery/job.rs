//! The jobs the dispatcher juggles, as values: a job's bookkeeping, a job read back from the
//! store, and what spawned tasks report back. The pure queue and cache use these without
//! touching the store or HTTP, which `attempt` does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::Disabled;
use crate::event::{CloudEvent, EventError};
use crate::store::{Job, JobRef, Millis, StoreError};

/// What the dispatcher hears back from the tasks it spawned: what to do with a job after its
/// attempt, or the jobs it asked the store for.
#[derive(Debug)]
pub enum Finished {
    /// The request is done (or none was made): its concurrency slot is free. Always sent first.
    SlotFree,
    /// The job left the queue: delivered, given up, or gone from the store.
    Done(JobRef),
    /// Put back in the queue.
    Requeue(JobRef),
    /// Delivery is disabled for this generation of the subscription and this value of its
    /// enable annotation (a 410 Gone, or failing for `disableAfter`): stop sending. Sent before
    /// the attempt's own outcome.
    Disabled(Disabled),
    /// `job`'s request was answered (`success`: 2xx) at `at`; `error` says how it failed. Sent
    /// before [`Finished::SlotFree`], for the circuit breaker and ordered delivery (a delivered
    /// job lets the next of its lane go before its outcome is recorded).
    Answered { job: JobRef, success: bool, error: String, at: Instant },
    /// A check of ordered lanes ([`check_earlier`](super::attempt::check_earlier)) is back: the jobs asked about, and the
    /// jobs of their lanes with lower ids (or why the store could not be read).
    Checked(Vec<JobRef>, Result<Vec<JobRef>, StoreError>),
    /// A read-ahead ([`read_ahead`](super::attempt::read_ahead)) is back: the jobs asked for, and those the store still has
    /// (or why it could not be read).
    Read(Vec<JobRef>, Result<Vec<Loaded>, StoreError>),
}

/// A queued job read back from the store, ready to attempt.
#[derive(Debug)]
pub struct Loaded {
    pub job_id: i64,
    pub attempts: u32,
    pub first_attempt_at: Option<Millis>,
    /// The parsed event, or why the stored event could not be parsed.
    pub event: Result<Arc<CloudEvent>, EventError>,
}

impl From<Job> for Loaded {
    fn from(job: Job) -> Self {
        Loaded {
            job_id: job.job_id,
            attempts: job.attempts,
            first_attempt_at: job.first_attempt_at,
            event: CloudEvent::from_structured(&job.event).map(Arc::new),
        }
    }
}

/// When a job could not be attempted for a reason that is ours, not the endpoint's.
pub(super) const LOCAL_RETRY: Duration = Duration::from_secs(5);

/// A job's bookkeeping, as an attempt needs it.
#[derive(Clone, Copy, Debug)]
pub struct JobState {
    pub job: JobRef,
    /// Attempts made so far.
    pub attempts: u32,
    pub first_attempt_at: Option<Millis>,
}

impl JobState {
    /// A job that was just accepted: no attempt yet.
    pub fn fresh(job: JobRef) -> Self {
        JobState { job, attempts: 0, first_attempt_at: None }
    }

    /// `job_ref` as read back from the store.
    pub fn loaded(job_ref: JobRef, job: &Loaded) -> Self {
        JobState { job: job_ref, attempts: job.attempts, first_attempt_at: job.first_attempt_at }
    }
}
