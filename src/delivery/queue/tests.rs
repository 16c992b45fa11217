use prometheus_client::metrics::gauge::Gauge;

use super::super::budget::EventBudget;
use super::super::cache::tests::{event, job};
use super::*;
use crate::api::Reason;
use crate::event::EventError;
use crate::store::{StoreError, now_ms};

fn loaded(job_id: i64) -> Loaded {
    let unparsed = EventError { attribute: "body".into(), problem: "not parsed in this test".into() };
    Loaded { job_id, attempts: 2, first_attempt_at: Some(900), event: Err(unparsed) }
}

fn subscription(max_concurrency: u32) -> ActiveSubscription {
    let mut sub = ActiveSubscription::test("ns", "s", Gate::Open);
    Arc::make_mut(&mut sub.spec).delivery.max_concurrency = max_concurrency;
    sub
}

fn queue(jobs: &[JobRef]) -> Queue {
    let budget = EventBudget::new(1 << 20, Gauge::default());
    Queue::new(jobs.to_vec(), budget.account(), Instant::now(), false)
}

fn due(job_id: i64, due_at: Millis) -> JobRef {
    JobRef { due_at, job_id, accepted_at: 0, partition: None }
}

fn fresh(job: JobRef) -> NewJob {
    NewJob { job, event: Some(event(&job.job_id.to_string(), 10)) }
}

fn started(plan: &Plan) -> Vec<i64> {
    plan.start
        .iter()
        .map(|s| match s {
            Start::Attempt(state, _) | Start::Unreadable(state, _) => state.job.job_id,
        })
        .collect()
}

#[test]
fn the_rate_limiter_spaces_sends() {
    let start = Instant::now();
    let mut l = RateLimiter { next: start };
    assert!(l.take(None, start).is_ok());
    assert!(l.take(Some(Duration::from_millis(100)), start).is_ok());
    let wait =
        l.take(Some(Duration::from_millis(100)), start + Duration::from_millis(30)).expect_err("too soon");
    assert_eq!(wait, Duration::from_millis(70));
    assert!(l.take(Some(Duration::from_millis(100)), start + Duration::from_millis(100)).is_ok());
}

#[test]
fn due_jobs_with_their_events_start_up_to_the_concurrency() {
    let sub = subscription(2);
    let mut q = queue(&[]);
    for id in 1..=3 {
        q.admit(fresh(due(id, 10)));
    }
    q.admit(fresh(due(4, 500)));
    let plan = q.plan(&sub, 100, Instant::now());
    assert_eq!(started(&plan), [1, 2], "two slots");
    assert!(plan.read.is_empty(), "their events are in memory");
    assert_eq!(q.depth(), 4, "two queued, two in flight");

    q.finished(&sub, Finished::SlotFree);
    let plan = q.plan(&sub, 100, Instant::now());
    assert_eq!(started(&plan), [3], "a slot freed");
    assert_eq!(plan.wake, None, "no slot left to wake for");
    q.finished(&sub, Finished::SlotFree);
    q.finished(&sub, Finished::SlotFree);
    let plan = q.plan(&sub, 100, Instant::now());
    assert!(plan.start.is_empty());
    assert_eq!(plan.wake, Some(Duration::from_millis(400)), "woken when job 4 falls due");
    assert_eq!(q.next_retry(100), Some(500));
    assert_eq!(q.outstanding(), 3, "three attempts not recorded yet");
}

#[test]
fn jobs_without_events_in_memory_are_read_in_one_read_then_started() {
    let sub = subscription(8);
    let mut q = queue(&[due(1, 10), due(2, 10), due(3, 900)]);
    let plan = q.plan(&sub, 100, Instant::now());
    assert!(plan.start.is_empty());
    assert_eq!(plan.read.iter().map(|j| j.job_id).collect::<Vec<_>>(), [1, 2], "the due ones");
    assert!(q.plan(&sub, 100, Instant::now()).read.is_empty(), "one read at a time");

    q.finished(&sub, Finished::Read(plan.read, Ok(vec![loaded(1), loaded(2)])));
    let plan = q.plan(&sub, 100, Instant::now());
    assert_eq!(started(&plan), [1, 2]);
    assert!(matches!(plan.start[0], Start::Unreadable(..)), "a stored event that does not parse is given up");
}

#[test]
fn a_closed_gate_or_disabled_delivery_starts_nothing() {
    let mut q = queue(&[]);
    q.admit(fresh(due(1, 0)));
    q.admit(fresh(due(2, 0)));
    let held = ActiveSubscription::test("ns", "s", Gate::Held(Reason::Suspended));
    assert!(q.plan(&held, 100, Instant::now()).start.is_empty());

    let sub = subscription(1);
    assert_eq!(started(&q.plan(&sub, 100, Instant::now())), [1]);
    q.finished(&sub, Finished::SlotFree);
    let disabled = crate::api::Disabled {
        reason: "EndpointGone".into(),
        message: "The endpoint answered 410 Gone".into(),
        time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        generation: sub.generation,
        enable_annotation: None,
    };
    q.finished(&sub, Finished::Disabled(disabled.clone()));
    q.finished(&sub, Finished::Done(due(1, 0)));
    assert_eq!(q.take_changes(), [HealthChange::Disabled(disabled)], "shown as a Warning Event");
    assert!(!q.is_open(&sub));
    assert!(q.plan(&sub, 100, Instant::now()).start.is_empty(), "disabled for this generation");
    let mut enabled = sub.clone();
    enabled.enable = Some("again".into());
    assert!(q.is_open(&enabled), "a new value of the enable annotation");
    let mut next = sub.clone();
    next.generation += 1;
    assert_eq!(started(&q.plan(&next, 100, Instant::now())), [2], "a new generation tries again");
}

#[test]
fn a_requeued_job_waits_for_its_new_due_time() {
    let sub = subscription(1);
    let mut q = queue(&[]);
    q.admit(fresh(due(1, 0)));
    assert_eq!(started(&q.plan(&sub, 100, Instant::now())), [1]);
    q.finished(&sub, Finished::SlotFree);
    q.finished(&sub, Finished::Requeue(due(1, 300)));
    assert_eq!(q.outstanding(), 0);
    let plan = q.plan(&sub, 100, Instant::now());
    assert_eq!(plan.wake, Some(Duration::from_millis(200)));
}

#[test]
fn expiry_takes_only_the_jobs_past_their_ttl_and_waits_for_their_records() {
    let mut q = queue(&[]);
    for (id, accepted_at) in [(1, 0), (2, 50), (3, 90)] {
        q.admit(fresh(JobRef { due_at: accepted_at, job_id: id, accepted_at, partition: None }));
    }
    let expired = q.expired(Duration::from_millis(50), 100);
    assert_eq!(expired.iter().map(|j| j.job_id).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(q.depth(), 1);
    assert_eq!(q.outstanding(), 2, "each expiry reports back like an attempt");
    for job in expired {
        q.finished(&subscription(1), Finished::Done(job));
    }
    assert_eq!(q.outstanding(), 0);
}

#[test]
fn a_read_ahead_keeps_queued_jobs_and_drops_those_the_store_lost() {
    let mut q = queue(&[job(1), job(2)]);
    // Job 3 was taken by the TTL sweep while the read was out; job 2 is gone from the store.
    let found = Ok(vec![loaded(1), loaded(3)]);
    q.read_back("s", vec![job(1), job(2), job(3)], found, 1);
    assert_eq!(q.jobs.iter().map(|j| j.job_id).collect::<Vec<_>>(), [1]);
    let Some(Cached::Loaded(one)) = q.cache.take(&job(1)) else { panic!("job 1 read back") };
    assert_eq!(one.attempts, 2, "the stored bookkeeping comes along");
}

#[test]
fn a_failed_read_ahead_retries_its_jobs_later() {
    let mut q = queue(&[job(1), job(2)]);
    q.read_back("s", vec![job(1)], Err(StoreError::Closed), 1);
    assert!(!q.cache.contains(&job(1)) && !q.cache.contains(&job(2)));
    let due: Vec<(i64, bool)> = q.jobs.iter().map(|j| (j.job_id, j.due_at > now_ms())).collect();
    assert_eq!(due, [(2, false), (1, true)], "job 1 waits; job 2 was not part of the read");
}

/// The breaker of `sub`: opens after `failures`, probes after 1 s, then 2 s.
fn with_breaker(mut sub: ActiveSubscription, failures: u32) -> ActiveSubscription {
    sub.schedule.breaker = Some(crate::policy::spec::Breaker {
        failures,
        cooldown: Duration::from_secs(1),
        max_cooldown: Duration::from_secs(2),
    });
    sub
}

fn answered(success: bool, at: Instant) -> Finished {
    Finished::Answered {
        job: due(0, 0),
        success,
        error: if success { String::new() } else { "HTTP 503".into() },
        at,
    }
}

#[test]
fn the_circuit_opens_after_failures_in_a_row_probes_alone_and_closes_on_success() {
    let sub = with_breaker(subscription(4), 2);
    let t0 = Instant::now();
    let mut q = queue(&[]);
    for id in 1..=8 {
        q.admit(fresh(due(id, 10)));
    }
    assert_eq!(started(&q.plan(&sub, 10, t0)), [1, 2, 3, 4]);
    q.finished(&sub, answered(true, t0));
    q.finished(&sub, answered(false, t0));
    assert!(q.take_changes().is_empty(), "one failure in a row is not enough");
    q.finished(&sub, answered(false, t0));
    let opened =
        HealthChange::Opened { failures: 2, error: "HTTP 503".into(), probe_in: Duration::from_secs(1) };
    assert_eq!(q.take_changes(), [opened]);
    assert!(!q.is_sending(&sub));
    for _ in 0..4 {
        q.finished(&sub, Finished::SlotFree);
    }
    // Open: nothing goes, however many slots are free, until the cooldown is over.
    let plan = q.plan(&sub, 10, t0 + Duration::from_millis(400));
    assert_eq!((started(&plan), plan.wake), (vec![], Some(Duration::from_millis(600))));
    // Then exactly one probe, which fails: open again, twice as long.
    assert_eq!(started(&q.plan(&sub, 10, t0 + Duration::from_secs(1))), [5]);
    assert!(started(&q.plan(&sub, 10, t0 + Duration::from_secs(1))).is_empty(), "one probe at a time");
    let t1 = t0 + Duration::from_millis(1100);
    q.finished(&sub, answered(false, t1));
    q.finished(&sub, Finished::SlotFree);
    let reopened =
        HealthChange::Opened { failures: 3, error: "HTTP 503".into(), probe_in: Duration::from_secs(2) };
    assert_eq!(q.take_changes(), [reopened]);
    assert!(started(&q.plan(&sub, 10, t1 + Duration::from_millis(1500))).is_empty());
    // The second probe succeeds: closed, and delivery resumes at full concurrency.
    assert_eq!(started(&q.plan(&sub, 10, t1 + Duration::from_secs(2))), [6]);
    q.finished(&sub, answered(true, t1 + Duration::from_secs(2)));
    q.finished(&sub, Finished::SlotFree);
    assert_eq!(q.take_changes(), [HealthChange::Closed]);
    assert!(q.is_sending(&sub));
    assert_eq!(started(&q.plan(&sub, 10, t1 + Duration::from_secs(2))), [7, 8]);
}

#[test]
fn a_probe_waits_for_the_requests_sent_before_the_circuit_opened_and_turning_it_off_closes_it() {
    let sub = with_breaker(subscription(2), 1);
    let t0 = Instant::now();
    let mut q = queue(&[]);
    for id in 1..=3 {
        q.admit(fresh(due(id, 10)));
    }
    assert_eq!(started(&q.plan(&sub, 10, t0)), [1, 2]);
    q.finished(&sub, answered(false, t0));
    q.finished(&sub, Finished::SlotFree);
    assert_eq!(q.take_changes().len(), 1, "opened");
    // Job 2's request is still out when the cooldown ends: no probe beside it.
    assert!(started(&q.plan(&sub, 10, t0 + Duration::from_secs(5))).is_empty());
    // Its failure, sent before the circuit opened, does not reopen it for longer.
    q.finished(&sub, answered(false, t0 + Duration::from_secs(5)));
    q.finished(&sub, Finished::SlotFree);
    assert!(q.take_changes().is_empty());
    assert_eq!(
        started(&q.plan(&sub, 10, t0 + Duration::from_secs(5))),
        [3],
        "the probe, once it is answered"
    );
    // A spec without a breaker closes it.
    let mut off = subscription(2);
    off.schedule.breaker = None;
    q.plan(&off, 10, t0 + Duration::from_secs(5));
    assert_eq!(q.take_changes(), [HealthChange::Closed]);
}

fn ordered(ordering: crate::api::Ordering, max_concurrency: u32) -> ActiveSubscription {
    let mut sub = subscription(max_concurrency);
    Arc::make_mut(&mut sub.spec).delivery.ordering = ordering;
    sub
}

fn keyed(job_id: i64, key: Option<&str>) -> JobRef {
    JobRef { due_at: 0, job_id, accepted_at: 0, partition: key.map(crate::store::PartitionKey::of) }
}

/// Plan at `now`, reading the events the plan asks for (as the store would give them), and plan
/// again: the jobs started.
fn go(q: &mut Queue, sub: &ActiveSubscription, now: Millis) -> Vec<i64> {
    let plan = q.plan(sub, now, Instant::now());
    let mut ids = started(&plan);
    if !plan.read.is_empty() {
        let found =
            plan.read.iter().map(|j| Loaded { event: Ok(event("e", 10)), ..loaded(j.job_id) }).collect();
        q.finished(sub, Finished::Read(plan.read, Ok(found)));
        ids.extend(started(&q.plan(sub, now, Instant::now())));
    }
    ids
}

/// Report a started job's request and outcome (`back`: its retry, due then).
fn answer(q: &mut Queue, sub: &ActiveSubscription, job: JobRef, back: Option<Millis>) {
    q.finished(sub, Finished::SlotFree);
    q.finished(
        sub,
        match back {
            Some(due_at) => Finished::Requeue(JobRef { due_at, ..job }),
            None => Finished::Done(job),
        },
    );
}

#[test]
fn a_partition_key_goes_one_at_a_time_in_id_order_and_a_retry_holds_back_only_its_key() {
    use crate::api::Ordering;
    let sub = ordered(Ordering::PartitionKey, 8);
    let mut q = queue(&[]);
    let jobs =
        [keyed(1, Some("a")), keyed(2, Some("a")), keyed(3, Some("b")), keyed(4, None), keyed(5, Some("a"))];
    for job in jobs {
        q.admit(fresh(job));
    }
    assert_eq!(go(&mut q, &sub, 100), [1, 3, 4], "one per key; no key: unordered");
    assert_eq!(q.depth(), 5);
    answer(&mut q, &sub, jobs[0], Some(500));
    answer(&mut q, &sub, jobs[2], None);
    q.admit(fresh(keyed(6, Some("b"))));
    assert_eq!(go(&mut q, &sub, 100), [6], "b flows while a backs off");
    assert!(q.plan(&sub, 400, Instant::now()).start.is_empty(), "2 and 5 wait behind 1's retry");
    assert_eq!(go(&mut q, &sub, 500), [1]);
    answer(&mut q, &sub, jobs[0], None);
    assert_eq!(go(&mut q, &sub, 500), [2]);
    // A 2xx lets the next of its key go before the outcome is recorded.
    let at = Instant::now();
    q.finished(&sub, Finished::Answered { job: jobs[1], success: true, error: String::new(), at });
    assert_eq!(go(&mut q, &sub, 500), [5]);
    answer(&mut q, &sub, jobs[1], None);
    assert!(go(&mut q, &sub, 500).is_empty(), "5 is out; the record of 2 changes nothing");
    assert_eq!(q.depth(), 3, "4, 5 and 6 are out");
    assert!(!q.has_waiting());
}

#[test]
fn strict_never_has_two_in_flight_and_an_earlier_job_arriving_late_goes_first() {
    use crate::api::Ordering;
    let sub = ordered(Ordering::Strict, 8);
    let mut q = queue(&[keyed(3, Some("x")), keyed(1, None)]);
    q.admit(fresh(keyed(4, None)));
    assert_eq!(go(&mut q, &sub, 100), [1], "lowest id first, whatever the key");
    answer(&mut q, &sub, keyed(1, None), None);
    q.admit(fresh(keyed(2, Some("y"))));
    assert_eq!(go(&mut q, &sub, 100), [2], "2 overtakes the released 3");
    for next in [3, 4] {
        assert!(q.plan(&sub, 100, Instant::now()).start.is_empty(), "one at a time");
        answer(&mut q, &sub, keyed(next - 1, None), None);
        assert_eq!(go(&mut q, &sub, 100), [next]);
    }
}

#[test]
fn with_replicas_a_job_heard_of_goes_only_after_the_store_was_asked_for_earlier_ones() {
    use crate::api::Ordering;
    let sub = ordered(Ordering::PartitionKey, 8);
    let budget = EventBudget::new(1 << 20, Gauge::default());
    let mut q = Queue::new(vec![], budget.account(), Instant::now(), true);
    q.admit(fresh(keyed(5, Some("a"))));
    let plan = q.plan(&sub, 100, Instant::now());
    assert!(plan.start.is_empty());
    assert_eq!(plan.check.iter().map(|j| j.job_id).collect::<Vec<_>>(), [5]);
    assert_eq!(q.question(&plan.check), [(Some(crate::store::PartitionKey::of("a")), 5)]);
    assert!(q.plan(&sub, 100, Instant::now()).check.is_empty(), "one check at a time");

    // Job 3 was accepted on another replica; its announcement is still on the way.
    q.finished(&sub, Finished::Checked(plan.check, Ok(vec![keyed(3, Some("a"))])));
    let plan = q.plan(&sub, 100, Instant::now());
    assert_eq!(plan.read.iter().map(|j| j.job_id).collect::<Vec<_>>(), [3], "its event is read first");
    q.finished(&sub, Finished::Read(plan.read, Ok(vec![loaded(3)])));
    assert_eq!(go(&mut q, &sub, 100), [3]);
    q.admit(NewJob { job: keyed(3, Some("a")), event: None });
    assert_eq!(q.depth(), 2, "the late announcement of 3 is not queued twice");
    answer(&mut q, &sub, keyed(3, Some("a")), None);
    assert_eq!(go(&mut q, &sub, 100), [5], "checked already");

    // A failed check is repeated later; nothing goes meanwhile.
    q.admit(fresh(keyed(7, Some("b"))));
    let plan = q.plan(&sub, 100, Instant::now());
    q.finished(&sub, Finished::Checked(plan.check, Err(StoreError::Closed)));
    let plan = q.plan(&sub, 100, Instant::now());
    assert!(plan.start.is_empty() && plan.check.is_empty());
    assert!(plan.wake.is_some_and(|w| w <= LOCAL_RETRY));
}

#[test]
fn a_change_of_ordering_rebuilds_the_lanes_around_what_is_out() {
    use crate::api::Ordering;
    let unordered = subscription(8);
    let mut q = queue(&[]);
    for id in 1..=4 {
        q.admit(fresh(keyed(id, None)));
    }
    q.plan(&ActiveSubscription::test("ns", "s", Gate::Held(Reason::Suspended)), 100, Instant::now());
    let plan = q.plan(&subscription(2), 100, Instant::now());
    assert_eq!(started(&plan), [1, 2]);
    let strict = ordered(Ordering::Strict, 8);
    assert!(q.plan(&strict, 100, Instant::now()).start.is_empty(), "1 and 2 are still out");
    answer(&mut q, &strict, keyed(1, None), None);
    assert!(q.plan(&strict, 100, Instant::now()).start.is_empty());
    answer(&mut q, &strict, keyed(2, None), None);
    assert_eq!(go(&mut q, &strict, 100), [3]);
    assert_eq!(go(&mut q, &unordered, 100), [4], "unordered again");
}

#[test]
fn expiry_takes_jobs_held_behind_their_lane_too() {
    use crate::api::Ordering;
    let sub = ordered(Ordering::Strict, 8);
    let mut q = queue(&[]);
    for id in 1..=3 {
        q.admit(fresh(JobRef { accepted_at: id * 10, ..keyed(id, None) }));
    }
    q.plan(&sub, 100, Instant::now());
    assert_eq!(q.oldest_waiting(), Some(20), "1 is out; 2 and 3 wait");
    let expired = q.expired(Duration::from_millis(75), 100);
    assert_eq!(expired.iter().map(|j| j.job_id).collect::<Vec<_>>(), [2]);
    assert_eq!(q.depth(), 2);
}
