//! `--cel-worst-case`: the costliest CEL filters the schema allows, timed.

use std::time::Instant;

use serde_json::{Value, json};

/// Time the costliest CEL filters the subscription schema and checks allow (1,024 bytes, one
/// level of `all`/`exists`/`exists_one`, no `map`/`filter`), each over the largest event of at
/// most `bytes` bytes on which its cost bound lets it run, and print one JSON line per case: the
/// cost bound, the median and worst of several evaluations, and the result. The event's
/// conversion to CEL values is timed on its own (once per event, whatever the filters).
pub fn cel_worst_case(bytes: usize) {
    use hookline::api::MAX_CEL_LENGTH;
    use hookline::event::CloudEvent;
    use hookline::policy::filter::{CelEvent, CelFilter, MAX_COST};

    /// `head` + `step` repeated + `tail`, as long as the limit allows.
    fn padded(head: &str, step: &str, tail: &str) -> String {
        let n = (MAX_CEL_LENGTH - head.len() - tail.len()) / step.len();
        format!("{head}{}{tail}", step.repeat(n))
    }
    /// An event whose JSON form is at most `bytes` long, with `data` made by `fill(n)` for the
    /// largest `n` that fits.
    fn event(bytes: usize, fill: &dyn Fn(usize) -> Value) -> CloudEvent {
        let envelope = json!({"specversion": "1.0", "id": "1", "source": "/bench", "type": "t", "subject": "s", "data": null});
        let room = bytes - envelope.to_string().len();
        let (mut lo, mut hi) = (1, room);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fill(mid).to_string().len() <= room { lo = mid } else { hi = mid - 1 }
        }
        let mut e = envelope;
        e["data"] = fill(lo);
        CloudEvent::from_structured(e.to_string().as_bytes()).expect("bench event")
    }
    let ints = |n: usize| json!({"a": vec![1; n]});
    let objects =
        |n: usize| json!({"a": (0..n).map(|i| json!({"k": i % 10, "v": "ab"})).collect::<Vec<_>>()});
    let text = |n: usize| json!({"s": "a".repeat(n)});
    let ors = padded("event.data.a.all(x, ", "x == 1 && ", "true)");
    let regex = padded(r#"event.data.a.exists(x, string(x).matches("^("#, "a|", r#"b)+$"))"#);
    let strings = padded("event.data.a.exists_one(o, ", r#"o.v + "#, r#""" == "z")"#);
    let short = "event.data.a.exists(x, x == 2)".to_string();
    let long_regex = padded(r#"event.data.s.matches("("#, "a|", r#"b)*c")"#);
    let contains = padded("event.data.s.contains(", r#""aaaa" + "#, r#""b")"#);
    let both = |n: usize| json!({"a": vec![1; 1 + n / 64], "b": vec![2; 1 + n / 64], "s": "a".repeat(n)});
    let scan_each = r#"event.data.a.exists(x, event.data.s.contains("b"))"#.to_string();
    let in_each = "event.data.a.exists(x, x in event.data.b)".to_string();
    type Fill<'a> = &'a dyn Fn(usize) -> Value;
    let cases: [(&str, Fill, &str); 8] = [
        ("all over ints, 1 KiB of comparisons per element", &ints, &ors),
        ("exists over ints, a 1 KiB regex per element", &ints, &regex),
        ("exists_one over objects, string concatenation per element", &objects, &strings),
        ("a short exists over ints", &ints, &short),
        ("a 1 KiB regex over one long string", &text, &long_regex),
        ("contains over one long string", &text, &contains),
        ("exists scanning one long string per element", &both, &scan_each),
        ("exists with `in` over another list per element", &both, &in_each),
    ];
    let runs = 7;
    for (case, fill, expr) in cases {
        let filter = CelFilter::compile(expr).unwrap_or_else(|e| panic!("{case}: {e}"));
        // The largest event (at most `bytes`) on which the filter is allowed to run.
        let mut size = bytes;
        let mut ev = event(size, fill);
        while filter.cost_bound(&CelEvent::new(&ev)) > MAX_COST {
            size = size * 9 / 10;
            ev = event(size, fill);
        }
        let mut convert = Vec::new();
        let mut eval = Vec::new();
        let mut result = None;
        for _ in 0..runs {
            let seen = CelEvent::new(&ev);
            let started = Instant::now();
            let _ = seen.event_value();
            convert.push(started.elapsed().as_secs_f64() * 1e3);
            let started = Instant::now();
            result = Some(filter.matches(&seen));
            eval.push(started.elapsed().as_secs_f64() * 1e3);
        }
        eval.sort_by(f64::total_cmp);
        convert.sort_by(f64::total_cmp);
        let seen = CelEvent::new(&ev);
        println!(
            "{}",
            json!({"case": case, "event_bytes": ev.to_json_bytes().len(), "widest": seen.measures().0, "longest": seen.measures().1,
                   "expression_bytes": expr.len(), "cost_bound": filter.cost_bound(&seen),
                   "convert_ms": convert[runs / 2], "eval_median_ms": eval[runs / 2], "eval_max_ms": eval[runs - 1],
                   "result": format!("{:?}", result.expect("ran"))})
        );
    }
}
