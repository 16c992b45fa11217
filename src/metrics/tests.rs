use super::*;

#[test]
fn counters_show_up_in_the_text_format() {
    let m = Metrics::default();
    drop(m.reconcile_started());
    m.reconcile_failed("kube");
    m.status_written();
    let text = m.encode();
    assert!(text.contains("hookline_reconciles_total 1"), "{text}");
    assert!(text.contains("hookline_reconcile_errors_total{error=\"kube\"} 1"), "{text}");
    assert!(text.contains("hookline_reconcile_duration_seconds_count 1"), "{text}");
    assert!(text.contains("hookline_status_writes_total 1"), "{text}");
}

#[test]
fn subscriptions_have_series_of_their_own_that_leave_with_them() {
    let m = Metrics::default();
    m.attempt_finished("shop", "orders", Some(503), std::time::Duration::from_millis(5));
    m.attempt_finished("shop", "orders", None, std::time::Duration::from_millis(5));
    m.dead_lettered("shop", "orders", "queued");
    m.set_queue("shop", "orders", 7, std::time::Duration::from_secs(90));
    m.set_ready("shop", "orders", false, "AwaitingValidation");
    m.set_ready("shop", "orders", true, "Active");
    m.status_write_failed("delivery");
    let text = m.encode();
    for line in [
        r#"hookline_deliveries_total{namespace="shop",name="orders",outcome="failure",class="5xx"} 1"#,
        r#"hookline_deliveries_total{namespace="shop",name="orders",outcome="failure",class="none"} 1"#,
        r#"hookline_dead_letters_total{namespace="shop",name="orders",disposition="queued"} 1"#,
        r#"hookline_queue_depth{namespace="shop",name="orders"} 7"#,
        r#"hookline_oldest_pending_job_age_seconds{namespace="shop",name="orders"} 90.0"#,
        r#"hookline_subscription_ready{namespace="shop",name="orders",reason="Active"} 1"#,
        r#"hookline_status_write_failures_total{writer="delivery"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    assert!(!text.contains("AwaitingValidation"), "a changed reason replaces the series: {text}");
    m.forget_subscription("shop", "orders");
    let text = m.encode();
    assert!(!text.contains("orders"), "a deleted subscription leaves no series: {text}");
}

#[test]
fn store_errors_are_counted_by_label() {
    let m = Metrics::default();
    m.store_failed("full");
    m.store_failed("closed");
    m.store_failed("closed");
    let text = m.encode();
    assert!(text.contains("hookline_store_errors_total{error=\"full\"} 1"), "{text}");
    assert!(text.contains("hookline_store_errors_total{error=\"closed\"} 2"), "{text}");
}
