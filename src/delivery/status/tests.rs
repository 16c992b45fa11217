use super::*;

fn report(success: bool, code: u16) -> AttemptReport {
    AttemptReport {
        last: LastDelivery {
            event_id: "e".into(),
            event_type: "t".into(),
            attempt: 1,
            time: Time(jiff::Timestamp::from_second(100).expect("ts")),
            success,
            status_code: Some(code),
            duration_ms: 5,
            error: None,
        },
        gave_up: false,
        gone: code == 410,
        generation: 1,
        enable: None,
        disable_after: None,
    }
}

fn healthy(board: &StatusBoard) -> (String, String) {
    let t = board.trackers.lock().expect("lock");
    let c = &t["u"].healthy[0];
    (c.status.clone(), c.reason.clone())
}

#[test]
fn healthy_turns_false_after_consecutive_failures_and_back_on_success() {
    let board = StatusBoard::default();
    board.attempt("u", "ns", "s", report(true, 200));
    assert_eq!(healthy(&board), ("True".into(), "Delivering".into()));
    for _ in 0..FAILING_AFTER - 1 {
        board.attempt("u", "ns", "s", report(false, 500));
    }
    assert_eq!(healthy(&board).0, "True", "a few failures are not yet unhealthy");
    board.attempt("u", "ns", "s", report(false, 500));
    assert_eq!(healthy(&board), ("False".into(), "DeliveryFailing".into()));
    board.attempt("u", "ns", "s", report(true, 200));
    assert_eq!(healthy(&board), ("True".into(), "Delivering".into()));
}

#[test]
fn gone_sticks_until_a_success() {
    let board = StatusBoard::default();
    board.attempt("u", "ns", "s", report(false, 410));
    assert_eq!(healthy(&board), ("False".into(), "EndpointGone".into()));
    board.attempt("u", "ns", "s", report(false, 500));
    assert_eq!(healthy(&board).1, "EndpointGone");
}

/// A failed attempt `secs` seconds in, under `enable`, with `disableAfter: 100s`.
fn failing_at(secs: i64, enable: Option<&str>) -> AttemptReport {
    let mut r = report(false, 500);
    r.last.time = Time(jiff::Timestamp::from_second(secs).expect("ts"));
    r.enable = enable.map(str::to_string);
    r.disable_after = Some(Duration::from_secs(100));
    r
}

#[test]
fn failing_for_disable_after_disables_once_until_enabled_again() {
    let board = StatusBoard::default();
    assert_eq!(board.attempt("u", "ns", "s", failing_at(1_000, None)), None);
    assert_eq!(board.attempt("u", "ns", "s", failing_at(1_099, None)), None);
    let disabled = board.attempt("u", "ns", "s", failing_at(1_100, None)).expect("disabled at 100s");
    assert_eq!((disabled.reason.as_str(), disabled.generation), (FAILING_TOO_LONG, 1));
    assert!(disabled.message.starts_with("No delivery succeeded for 1m 40s"), "{}", disabled.message);
    assert_eq!(board.attempt("u", "ns", "s", failing_at(1_200, None)), None, "disabled once");
    let patch = status_patch(&board.trackers.lock().expect("lock")["u"]);
    assert_eq!(patch["status"]["disabled"]["reason"], FAILING_TOO_LONG);
    assert_eq!(patch["status"]["deliveryStats"]["failingSince"], "1970-01-01T00:16:40Z");

    // Enabled again: failing counts from the next failure.
    assert_eq!(board.attempt("u", "ns", "s", failing_at(1_300, Some("1"))), None);
    let patch = status_patch(&board.trackers.lock().expect("lock")["u"]);
    assert!(patch["status"].get("disabled").is_none(), "the stale record is removed");
    assert!(board.attempt("u", "ns", "s", failing_at(1_400, Some("1"))).is_some());

    // A success in between restarts the count; so does 410, which disables at once.
    let board = StatusBoard::default();
    board.attempt("u", "ns", "s", failing_at(1_000, None));
    board.attempt("u", "ns", "s", report(true, 200));
    assert_eq!(board.attempt("u", "ns", "s", failing_at(1_150, None)), None);
    let gone = board.attempt("u", "ns", "s", report(false, 410)).expect("410 disables");
    assert_eq!(gone.reason, GONE);
}

#[test]
fn failing_since_and_disabled_continue_from_status() {
    let board = StatusBoard::default();
    board.attempt("u", "ns", "s", failing_at(5_000, None));
    let since = Time(jiff::Timestamp::from_second(4_950).expect("ts"));
    board.set_base("u", DeliveryStats { failing_since: Some(since), ..Default::default() }, 0, None);
    assert!(board.attempt("u", "ns", "s", failing_at(5_050, None)).is_some(), "failing since 4950");

    let board = StatusBoard::default();
    board.queue("u", "ns", "s", 3, None);
    let disabled = Disabled {
        reason: GONE.into(),
        message: "The endpoint answered 410 Gone".into(),
        time: Time(jiff::Timestamp::UNIX_EPOCH),
        generation: 1,
        enable_annotation: None,
    };
    board.set_base("u", DeliveryStats::default(), 0, Some(disabled));
    let patch = status_patch(&board.trackers.lock().expect("lock")["u"]);
    assert_eq!(patch["status"]["disabled"]["reason"], GONE, "a restart keeps it");
}

#[test]
fn many_attempts_make_one_pending_write_with_summed_counters() {
    let board = StatusBoard::default();
    for _ in 0..100 {
        board.attempt("u", "ns", "s", report(true, 200));
    }
    let dirty = board.take_dirty();
    assert_eq!(dirty.len(), 1, "coalesced into one write");
    assert!(board.take_dirty().is_empty());
    board.set_base("u", DeliveryStats { delivered: 5, ..Default::default() }, 0, None);
    let t = board.trackers.lock().expect("lock")["u"].clone();
    let patch = status_patch(&t);
    assert_eq!(patch["status"]["deliveryStats"]["delivered"], 105);
    assert_eq!(patch["status"]["conditions"][0]["type"], "Healthy");
}

fn uids(picked: &Picked) -> Vec<&str> {
    picked.writes.iter().map(|(uid, _)| uid.as_str()).collect()
}

fn urgent(picked: &Picked) -> usize {
    picked.writes.iter().filter(|(_, urgent)| *urgent).count()
}

#[test]
fn a_healthy_transition_is_written_first_and_without_waiting_for_the_interval() {
    let board = StatusBoard::default();
    let interval = Duration::from_secs(5);
    let start = Instant::now();
    for uid in ["a", "b", "c"] {
        board.attempt(uid, "ns", uid, report(true, 200));
    }
    assert_eq!(board.pick(3, interval, start).writes.len(), 3, "first results: all due");
    board.queue("a", "ns", "a", 7, None);
    board.queue("b", "ns", "b", 7, None);
    for _ in 0..FAILING_AFTER {
        board.attempt("c", "ns", "c", report(false, 500));
    }
    let soon = start + Duration::from_secs(1);
    let picked = board.pick(1, interval, soon);
    assert_eq!(uids(&picked), ["c"], "Healthy=False goes out at once, before the interval");
    assert_eq!(urgent(&picked), 1);
    assert!(board.pick(10, interval, soon).writes.is_empty(), "the others wait for the interval");
    assert_eq!(board.pick(10, interval, start + interval).writes.len(), 2);
}

#[test]
fn over_budget_the_longest_waiting_go_first_and_deferrals_count_once() {
    let board = StatusBoard::default();
    for uid in ["a", "b", "c"] {
        board.attempt(uid, "ns", uid, report(true, 200));
    }
    let now = Instant::now();
    let first = board.pick(1, Duration::ZERO, now);
    assert_eq!(uids(&first), ["a"], "the oldest change first");
    assert_eq!(first.newly_deferred, 2);
    assert!(first.oldest.is_some(), "b and c still wait");
    board.attempt("a", "ns", "a", report(true, 200));
    let second = board.pick(1, Duration::ZERO, now);
    assert_eq!(uids(&second), ["b"], "a changed again, but b waited longer");
    assert_eq!(second.newly_deferred, 1, "c counted once; a newly");
    assert_eq!(uids(&board.pick(5, Duration::ZERO, now)), ["c", "a"]);
    assert!(board.pick(5, Duration::ZERO, now).oldest.is_none(), "nothing waits");
}

#[test]
fn a_first_healthy_result_is_no_news_but_a_first_failure_is() {
    let board = StatusBoard::default();
    board.attempt("ok", "ns", "ok", report(true, 200));
    board.attempt("gone", "ns", "gone", report(false, 410));
    let picked = board.pick(1, Duration::ZERO, Instant::now());
    assert_eq!(uids(&picked), ["gone"], "EndpointGone first, although it changed last");
    assert_eq!(urgent(&picked), 1);
}
