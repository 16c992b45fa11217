use super::*;

fn event(data: &str) -> CloudEvent {
    let body = format!(
        r#"{{"specversion":"1.0","id":"1","source":"/shop","type":"order.created","subject":"eu/42","region":"eu","attempt":3,"data":{data}}}"#
    );
    CloudEvent::from_structured(body.as_bytes()).expect("event")
}

fn eval(expr: &str, data: &str) -> Result<bool, String> {
    let e = event(data);
    CelFilter::compile(expr).expect("compiles").matches(&CelEvent::new(&e))
}

#[test]
fn attributes_extensions_and_json_data_are_there() {
    let data = r#"{"amount": 150.5, "count": 3, "items": [{"sku": "a"}, {"sku": "b"}], "big": 18446744073709551615}"#;
    assert_eq!(eval(r#"event.data.amount > 100 && event.subject.startsWith("eu/")"#, data), Ok(true));
    assert_eq!(eval("event.data.count > 2 && event.data.count < 3.5", data), Ok(true));
    assert_eq!(eval(r#"event.data.items.exists(i, i.sku == "b")"#, data), Ok(true));
    assert_eq!(
        eval(r#"event.region == "eu" && event.attempt == 3 && event.type == "order.created""#, data),
        Ok(true)
    );
    assert_eq!(eval("event.data.big > 1", data), Ok(true));
    assert_eq!(eval("has(event.time)", data), Ok(false));
    assert_eq!(eval(r#"event.source.matches("^/sh")"#, data), Ok(true));
}

#[test]
fn evaluation_errors_are_errors_not_matches() {
    assert!(eval("event.data.missing > 1", "{}").is_err());
    assert!(eval("event.data.amount", r#"{"amount": 1}"#).expect_err("not a bool").contains("not a bool"));
    assert!(eval("event.data.s > 1", r#"{"s": "x"}"#).is_err());
    // Text data is a string; binary data is absent.
    let mut e = event("null");
    e.datacontenttype = Some("text/plain".into());
    e.data = Some(bytes::Bytes::from_static(b"hello"));
    let f = CelFilter::compile(r#"event.data == "hello""#).expect("compiles");
    assert_eq!(f.matches(&CelEvent::new(&e)), Ok(true));
    e.datacontenttype = Some("application/octet-stream".into());
    assert_eq!(CelFilter::compile("has(event.data)").expect("c").matches(&CelEvent::new(&e)), Ok(false));
}

#[test]
fn a_filter_that_could_cost_too_much_on_an_event_does_not_run() {
    let f = CelFilter::compile("event.data.a.all(x, x > 0)").expect("compiles");
    let small = event(r#"{"a": [1, 2, 3]}"#);
    let seen = CelEvent::new(&small);
    assert_eq!(seen.measures().0, 8, "the event's own attributes are the widest map");
    assert_eq!(f.matches(&seen), Ok(true));
    let per_element = f.shape.per_element;
    let wide = format!(r#"{{"a": [{}1]}}"#, "1, ".repeat(MAX_COST / per_element + 1));
    let big = event(&wide);
    let refused = f.matches(&CelEvent::new(&big)).expect_err("over the limit");
    assert!(refused.contains("more than the"), "{refused}");
    // Without macros there is no loop: any event is fine.
    assert_eq!(CelFilter::compile("has(event.data.a)").expect("c").matches(&CelEvent::new(&big)), Ok(true));
}

#[test]
fn scanning_one_large_value_in_every_iteration_counts_in_every_iteration() {
    let long = "x".repeat(100_000);
    let items = (0..100).map(|_| format!(r#"{{"s": "{}"}}"#, "y".repeat(900))).collect::<Vec<_>>().join(",");
    let e = event(&format!(r#"{{"s": "{long}", "a": [{items}]}}"#));
    let seen = CelEvent::new(&e);
    // Each element's own string: the scans add up to one pass over the list.
    let own = CelFilter::compile(r#"event.data.a.exists(x, x.s.contains("z"))"#).expect("c");
    assert_eq!(own.matches(&seen), Ok(false));
    // The same long string in each of 100 iterations: 100 passes over it.
    let fixed = CelFilter::compile(r#"event.data.a.exists(x, event.data.s.contains("z"))"#).expect("c");
    assert!(fixed.cost_bound(&seen) > 10 * own.cost_bound(&seen));
    assert!(fixed.matches(&seen).expect_err("over the limit").contains("longest string"));
    // Outside a macro, one scan of it is fine.
    assert_eq!(CelFilter::compile(r#"event.data.s.contains("z")"#).expect("c").matches(&seen), Ok(false));
}

#[test]
fn what_costs_more_than_linear_time_or_cannot_run_is_refused() {
    let refused = |expr: &str| CelFilter::compile(expr).expect_err(expr);
    assert!(refused("event.data.a > ").contains("line 1, column"), "{}", refused("event.data.a > "));
    assert!(refused("event.data.items.map(i, i.n).size() > 0").contains("map() and filter()"));
    assert!(refused("event.data.items.filter(i, i.n > 1).size() > 0").contains("map() and filter()"));
    assert!(refused("event.data.a.all(x, event.data.b.exists(y, x == y))").contains("nested"));
    assert!(refused("Foo{a: 1} == 1").contains("struct"));
    assert!(refused("event.id.matches(event.source)").contains("literal pattern"));
    assert!(refused(r#"event.id.matches("(")"#).contains("not a valid regex"));
    assert!(refused(r#""yes""#).contains("bool"));
    assert!(refused(&format!("{}true", "true && ".repeat(200))).contains("more than"));
    assert!(CelFilter::compile("true").is_ok());
    assert!(CelFilter::compile("event.data.a.all(x, x > 0) && event.data.b.exists(y, y < 0)").is_ok());
}
