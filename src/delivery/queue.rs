//! A dispatcher's state and its transitions, without IO: which jobs are queued and in what order,
//! which events are in memory, what is in flight, and from these, what to start next. The
//! dispatcher ([`super::dispatcher`]) only carries out what [`Queue::plan`] returns and feeds the
//! results back through [`Queue::admit`], [`Queue::finished`] and [`Queue::expired`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::NewJob;
use super::budget::Account;
use super::cache::{Cache, Cached, READ_AHEAD};
use super::job::{Finished, JobState, LOCAL_RETRY, Loaded};
use crate::event::{CloudEvent, EventError};
use crate::policy::decision::Gate;
use crate::registry::ActiveSubscription;
use crate::report::Chain;
use crate::store::{JobRef, Millis};
use lanes::Lanes;

/// Spaces sends at least `1/rate` apart.
struct RateLimiter {
    next: Instant,
}

impl RateLimiter {
    /// `Ok` when a send may go at `now`; otherwise how long to wait. `spacing` is the least time
    /// between two sends (none: unlimited).
    fn take(&mut self, spacing: Option<Duration>, now: Instant) -> Result<(), Duration> {
        let Some(spacing) = spacing else { return Ok(()) };
        if now < self.next {
            return Err(self.next - now);
        }
        self.next = now + spacing;
        Ok(())
    }
}

/// The least time between two sends: the stricter of `rateLimitPerSecond` and the rate the
/// endpoint allowed in an Options handshake.
fn spacing(sub: &ActiveSubscription) -> Option<Duration> {
    let from_spec =
        sub.spec.delivery.rate_limit_per_second.filter(|r| *r > 0).map(|r| Duration::from_secs(1) / r);
    let from_endpoint = sub.rate_per_minute.filter(|r| *r > 0).map(|r| Duration::from_secs(60) / r);
    from_spec.max(from_endpoint)
}

/// Concurrency slots free for new attempts.
fn free_slots(sub: &ActiveSubscription, in_flight: usize) -> usize {
    (sub.spec.delivery.max_concurrency as usize).saturating_sub(in_flight)
}

/// Most attempts of one subscription whose outcome is not recorded yet (their requests are done,
/// their records wait for the store's next group commit). Each holds its event: without a bound,
/// a store that records more slowly than the endpoint answers (PostgreSQL under a backlog) would
/// gather them without limit. Enough for the store's groups to stay large.
fn unrecorded_limit(sub: &ActiveSubscription) -> usize {
    8 * sub.spec.delivery.max_concurrency as usize + 256
}

/// The endpoint's circuit breaker (`spec.delivery.circuitBreaker`, parsed as
/// [`crate::policy::spec::Breaker`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Circuit {
    Closed,
    /// Nothing is sent until `probe_at`, when one probe may go.
    Open {
        probe_at: Instant,
        cooldown: Duration,
    },
    /// The probe is out; its answer closes the breaker or opens it again.
    Probing {
        cooldown: Duration,
    },
}

/// A change of the endpoint's health for the dispatcher to show (condition, Event, metric): the
/// circuit breaker's, or delivery disabled.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum HealthChange {
    /// `failures` attempts in a row failed, the last with `error`; a probe goes in `probe_in`.
    Opened { failures: u32, error: String, probe_in: Duration },
    /// A probe succeeded (or the breaker was turned off): delivery resumes.
    Closed,
    /// Delivery is disabled (a 410 Gone, or failing for `disableAfter`).
    Disabled(crate::api::Disabled),
}

/// A job to start now, with its event or why its stored event could not be read.
#[derive(Debug)]
pub(super) enum Start {
    /// Send it.
    Attempt(JobState, Arc<CloudEvent>),
    /// Give it up: its stored event does not parse.
    Unreadable(JobState, EventError),
}

/// What the dispatcher does next, as [`Queue::plan`] decided it.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Attempts to start now.
    pub start: Vec<Start>,
    /// Due jobs whose events to read from the store, in one read.
    pub read: Vec<JobRef>,
    /// Jobs of ordered lanes to check (see [`lanes`]): the store is asked, in one read, for the
    /// jobs of their lanes with lower ids ([`Queue::question`]).
    pub check: Vec<JobRef>,
    /// When to plan again although nothing was heard: the next job falls due, or the rate
    /// limit lets the next send go.
    pub wake: Option<Duration>,
}

/// See the module docs.
pub(super) struct Queue {
    /// Jobs waiting for an attempt, due first; of ordered lanes only each lane's first.
    jobs: BTreeSet<JobRef>,
    /// Ordered delivery: the jobs of each lane, and what is out.
    lanes: Lanes,
    /// Their events in memory, where the budget allows.
    cache: Cache,
    /// A read of events from the store is out.
    reading: bool,
    /// The last read came back full: more due jobs wait in the store.
    more_to_read: bool,
    /// Attempts holding a concurrency slot (their request is out).
    in_flight: usize,
    /// Attempts and expiries whose outcome is not recorded yet (shutdown waits for them).
    outstanding: usize,
    /// Delivery is disabled for this generation and enable annotation (a 410 Gone, or failing
    /// for `disableAfter`).
    disabled: Option<crate::api::Disabled>,
    limiter: RateLimiter,
    /// Failed answers in a row.
    failures: u32,
    circuit: Circuit,
    /// Health changes not yet taken by the dispatcher.
    changes: Vec<HealthChange>,
}

impl Queue {
    /// A queue of the jobs the store has for a subscription, with `account` for their events;
    /// `check_earlier`: ordered jobs heard of from ingest are checked against the store before
    /// they go (several replicas; see [`lanes`]).
    pub fn new(jobs: Vec<JobRef>, account: Account, now: Instant, check_earlier: bool) -> Self {
        Queue {
            jobs: jobs.into_iter().collect(),
            lanes: Lanes::new(check_earlier),
            cache: Cache::new(account),
            reading: false,
            more_to_read: false,
            in_flight: 0,
            outstanding: 0,
            disabled: None,
            limiter: RateLimiter { next: now },
            failures: 0,
            circuit: Circuit::Closed,
            changes: Vec::new(),
        }
    }

    /// Whether requests may go to `sub`'s endpoint: it is open ([`Queue::is_open`]) and the
    /// circuit breaker is closed. Otherwise jobs only wait (and expire).
    pub fn is_sending(&self, sub: &ActiveSubscription) -> bool {
        self.is_open(sub) && self.circuit == Circuit::Closed
    }

    /// The health changes since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<HealthChange> {
        std::mem::take(&mut self.changes)
    }

    /// Whether events may be sent to `sub` now: its gate is open, and delivery was not disabled
    /// for this generation of it and this value of its enable annotation.
    pub fn is_open(&self, sub: &ActiveSubscription) -> bool {
        sub.gate == Gate::Open
            && self.disabled.as_ref().is_none_or(|d| !d.applies_to(sub.generation, sub.enable.as_deref()))
    }

    /// Queue a new job heard of from ingest, keeping its event in memory if it came along and
    /// the budget allows (unless it is queued already).
    pub fn admit(&mut self, NewJob { job, event }: NewJob) {
        let was_empty = self.jobs.is_empty();
        if !self.lanes.admit(job, &mut self.jobs, true) {
            return;
        }
        if let Some(event) = event {
            self.cache.behind &= !was_empty;
            self.cache.offer_fresh(job, event);
        }
    }

    /// Decide what to start at `now` (`clock` for the rate limit): the due jobs that free slots,
    /// the rate limit and the events in memory allow, and a read of the due events that are not.
    pub fn plan(&mut self, sub: &ActiveSubscription, now: Millis, clock: Instant) -> Plan {
        let open = self.is_open(sub);
        if !self.lanes.ordered_by(sub.spec.delivery.ordering) {
            self.lanes.reorder(sub.spec.delivery.ordering, &mut self.jobs);
        }
        self.cache.account.set_active(self.has_waiting() || self.in_flight > 0);
        let mut plan = Plan::default();
        if sub.schedule.breaker.is_none() && self.circuit != Circuit::Closed {
            self.circuit = Circuit::Closed;
            self.changes.push(HealthChange::Closed);
        }
        // An open breaker lets one probe go once its cooldown is over and the requests sent
        // before it opened are answered; until then nothing goes.
        let (sending, probe) = match self.circuit {
            Circuit::Closed => (open, false),
            Circuit::Open { probe_at, .. } if clock >= probe_at => (open && self.in_flight == 0, true),
            Circuit::Open { probe_at, .. } => {
                plan.wake = Some(probe_at - clock);
                (false, false)
            }
            Circuit::Probing { .. } => (false, false),
        };
        let mut head_unread = false;
        while sending && free_slots(sub, self.in_flight) > 0 && self.outstanding < unrecorded_limit(sub) {
            let Some(&head) = self.jobs.first() else { break };
            if head.due_at > now {
                plan.wake = Some(Duration::from_millis((head.due_at - now) as u64));
                break;
            }
            if !self.cache.contains(&head) {
                // Its event is on its way from the store, or a read starts below.
                head_unread = true;
                break;
            }
            if let Err(wait) = self.limiter.take(spacing(sub), clock) {
                plan.wake = Some(wait);
                break;
            }
            self.lanes.start(head, &mut self.jobs);
            self.in_flight += 1;
            self.outstanding += 1;
            if let (true, Circuit::Open { cooldown, .. }) = (probe, self.circuit) {
                self.circuit = Circuit::Probing { cooldown };
            }
            match self.cache.take(&head) {
                Some(Cached::Fresh(event)) => plan.start.push(Start::Attempt(JobState::fresh(head), event)),
                Some(Cached::Loaded(job)) => {
                    let state = JobState::loaded(head, &job);
                    plan.start.push(match job.event {
                        Ok(event) => Start::Attempt(state, event),
                        Err(e) => Start::Unreadable(state, e),
                    });
                }
                None => {}
            }
            if probe {
                break;
            }
        }
        let slots = free_slots(sub, self.in_flight);
        self.cache.shed(if open { slots } else { 0 });
        // Read due jobs whose events are not in memory: as many as the budget has room for, and
        // at least those that free concurrency slots would attempt at once.
        let read_ahead = self.more_to_read && self.cache.loaded < READ_AHEAD;
        if sending && !self.reading && (head_unread || read_ahead) {
            let size = self.cache.read_size(if head_unread { slots.max(1) } else { 0 }, head_unread);
            plan.read = self
                .jobs
                .iter()
                .take_while(|j| j.due_at <= now)
                .filter(|j| !self.cache.contains(j))
                .take(size)
                .copied()
                .collect();
            self.more_to_read = plan.read.len() == size;
            // This read takes every due job left in the store: fresh events may be kept again.
            self.cache.behind &= self.more_to_read;
            self.reading = !plan.read.is_empty();
        }
        let (check, check_in) = self.lanes.checks(clock);
        plan.check = check;
        plan.wake = match (plan.wake, check_in) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        plan
    }

    /// What the store is asked for the jobs of [`Plan::check`]: each one's lane (its
    /// `partitionkey`, or none for all of the subscription's jobs) and its id.
    pub fn question(&self, jobs: &[JobRef]) -> Vec<(Option<crate::store::PartitionKey>, i64)> {
        self.lanes.question(jobs)
    }

    /// Take in what a task reported back (see [`Finished`]).
    pub fn finished(&mut self, sub: &ActiveSubscription, finished: Finished) {
        match finished {
            Finished::SlotFree => self.in_flight -= 1,
            Finished::Done(job) => {
                self.outstanding -= 1;
                self.lanes.finished(job, None, &mut self.jobs);
            }
            Finished::Requeue(job) => {
                self.outstanding -= 1;
                self.lanes.finished(job, Some(job), &mut self.jobs);
            }
            Finished::Disabled(disabled) => {
                self.disabled = Some(disabled.clone());
                self.changes.push(HealthChange::Disabled(disabled));
            }
            Finished::Checked(asked, found) => {
                let found = found.map_err(|e| {
                    warn!(subscription = %sub.key.name, error = %Chain(&e), "checking for earlier jobs of ordered lanes; will retry");
                });
                self.lanes.checked(asked, found, &mut self.jobs, Instant::now(), LOCAL_RETRY);
            }
            Finished::Answered { job, success, error, at } => {
                if success {
                    self.lanes.delivered(job, &mut self.jobs);
                }
                self.answered(sub, success, error, at);
            }
            Finished::Read(asked, found) => {
                self.reading = false;
                let attempt_now = free_slots(sub, self.in_flight);
                self.read_back(&sub.key.name, asked, found, attempt_now);
            }
        }
    }

    /// Count an answer for the circuit breaker, and open or close it.
    fn answered(&mut self, sub: &ActiveSubscription, success: bool, error: String, at: Instant) {
        if success {
            self.failures = 0;
            if self.circuit != Circuit::Closed {
                self.circuit = Circuit::Closed;
                self.changes.push(HealthChange::Closed);
            }
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let Some(breaker) = sub.schedule.breaker else { return };
        let cooldown = match self.circuit {
            Circuit::Closed if self.failures >= breaker.failures => breaker.cooldown,
            Circuit::Probing { cooldown } => breaker.next_cooldown(cooldown),
            // Answers to requests sent before it opened, or too few failures yet.
            _ => return,
        };
        self.circuit = Circuit::Open { probe_at: at + cooldown, cooldown };
        self.changes.push(HealthChange::Opened { failures: self.failures, error, probe_in: cooldown });
    }

    /// Take the jobs whose event TTL passed by `now` out of the queue, to be given up in one
    /// batch; each reports back like an attempt.
    pub fn expired(&mut self, ttl: Duration, now: Millis) -> Vec<JobRef> {
        let ttl = ttl.as_millis() as Millis;
        let mut queued: Vec<JobRef> = self.jobs.iter().copied().collect();
        queued.extend(self.lanes.held_jobs(&self.jobs));
        let expired: Vec<JobRef> =
            queued.into_iter().filter(|j| j.accepted_at.saturating_add(ttl) <= now).collect();
        for job in &expired {
            self.lanes.start(*job, &mut self.jobs);
            self.cache.take(job);
        }
        self.outstanding += expired.len();
        expired
    }

    /// Jobs queued or in flight.
    pub fn depth(&self) -> usize {
        self.jobs.len() + self.lanes.held() + self.in_flight
    }

    /// Whether any job waits for an attempt (due, backing off, or behind its lane's first).
    pub fn has_waiting(&self) -> bool {
        !self.jobs.is_empty() || self.lanes.held() > 0
    }

    /// When the oldest event waiting for an attempt was accepted (a walk over the queue: call it
    /// at most every few seconds).
    pub fn oldest_waiting(&self) -> Option<Millis> {
        let held = self.lanes.held_jobs(&self.jobs);
        self.jobs.iter().chain(held.iter()).map(|j| j.accepted_at).min()
    }

    /// When the first queued job falls due, if that is after `now`.
    pub fn next_retry(&self, now: Millis) -> Option<Millis> {
        self.jobs.first().map(|j| j.due_at).filter(|due| *due > now)
    }

    /// Attempts and expiries whose outcome is not recorded yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Keep what a read found for the jobs still queued, as far as the budget allows (the first
    /// `attempt_now`, which go out at once, in any case); drop the jobs the store no longer has
    /// (their subscription was dropped meanwhile); if the read failed, try those jobs again later.
    fn read_back(
        &mut self,
        name: &str,
        asked: Vec<JobRef>,
        found: Result<Vec<Loaded>, crate::store::StoreError>,
        attempt_now: usize,
    ) {
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                warn!(subscription = %name, error = %Chain(&e), jobs = asked.len(), "reading jobs; will retry");
                let later = crate::store::now_ms() + LOCAL_RETRY.as_millis() as Millis;
                for job in asked {
                    self.lanes.reschedule(job, JobRef { due_at: later, ..job }, &mut self.jobs);
                }
                return;
            }
        };
        let mut found: HashMap<i64, Loaded> = found.into_iter().map(|j| (j.job_id, j)).collect();
        let mut kept = 0;
        for job in asked {
            match found.remove(&job.job_id) {
                // Still queued (the TTL sweep may have taken it meanwhile): keep it for its
                // attempt, unless the budget has no room (it is read again when due).
                Some(l) if self.jobs.contains(&job) => {
                    if self.cache.keep(job, Cached::Loaded(l), kept < attempt_now) {
                        kept += 1;
                    }
                }
                Some(_) => {}
                None => self.lanes.forget(job, &mut self.jobs),
            }
        }
    }
}

mod lanes;
#[cfg(test)]
mod tests;
