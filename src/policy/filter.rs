//! `spec.filter.cel`: a CEL expression over the event that decides, with the other filters,
//! whether a subscription wants it. Compiled once per generation; evaluated at publish.
//!
//! The `cel` crate has no cost limit of its own, so one is kept here. At compile time: at most
//! [`MAX_CEL_LENGTH`] bytes (also in the CRD schema), no macro that builds a list (`map`,
//! `filter`: each step copies the list so far, so their cost grows with the square of the list),
//! no macro inside another, `matches` only with a literal pattern (compiled once, not per call),
//! and no struct literals (the crate cannot evaluate them). What is left loops only in its
//! macros, each at most as often as the widest list or map of the event (times the size of the
//! expression giving the range, which could concatenate lists). Before each evaluation that
//! bound, times the size of the loop bodies, is checked against [`MAX_COST`]: a filter that
//! could cost more on this event does not run (an error: no match, counted).

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::extractors::This;
use cel::objects::{Key, Map};
use cel::{Context, FunctionContext, Program, Value};
use regex::Regex;

use crate::api::MAX_CEL_LENGTH;
use crate::event::{CloudEvent, ExtValue, is_json_media_type};

/// The most steps (expression nodes evaluated) a filter may take on one event: about 10 ms of
/// one core at the speed measured for the worst shapes (see BENCHMARKS.md).
pub const MAX_COST: usize = 200_000;

/// A compiled `spec.filter.cel`.
pub struct CelFilter {
    source: String,
    program: Program,
    /// Nodes of the expression: the cost of evaluating it once without its loops.
    nodes: usize,
    /// Per element of the widest list or map of the event, the steps its macros take.
    loop_cost: usize,
}

impl std::fmt::Debug for CelFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CelFilter").field(&self.source).finish()
    }
}

impl PartialEq for CelFilter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl CelFilter {
    /// Compile an expression, or say what is wrong with it and where.
    pub fn compile(source: &str) -> Result<CelFilter, String> {
        if source.len() > MAX_CEL_LENGTH {
            return Err(format!("is {} bytes long, more than the {MAX_CEL_LENGTH} allowed", source.len()));
        }
        let program = Program::compile(source).map_err(|errors| {
            let first = errors.errors.first();
            match first {
                Some(e) => format!(
                    "does not compile: line {}, column {}: {}{}",
                    e.pos.0,
                    e.pos.1 + 1,
                    e.msg,
                    match errors.errors.len() {
                        1 => String::new(),
                        n => format!(" (and {} more)", n - 1),
                    }
                ),
                None => "does not compile".to_string(),
            }
        })?;
        let mut shape = Shape::default();
        shape.walk(program.expression(), false)?;
        if let Expr::Literal(_) | Expr::List(_) | Expr::Map(_) = &program.expression().expr
            && !matches!(
                &program.expression().expr,
                Expr::Literal(cel::common::ast::LiteralValue::Boolean(_))
            )
        {
            return Err("must return a bool, not a constant of another type".into());
        }
        Ok(CelFilter { source: source.to_string(), program, nodes: shape.nodes, loop_cost: shape.loop_cost })
    }

    /// The most steps this filter can take on `event`.
    pub fn cost_bound(&self, event: &CelEvent<'_>) -> usize {
        self.nodes.saturating_add(self.loop_cost.saturating_mul(event.widest()))
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the event matches; an error (a missing field, a type mismatch, a result that is not
    /// a bool) is the caller's to count, and means no match.
    pub fn matches(&self, event: &CelEvent<'_>) -> Result<bool, String> {
        let cost = self.cost_bound(event);
        if cost > MAX_COST {
            return Err(format!(
                "could take up to {cost} steps on this event (its widest list or map has {} entries), \
                 more than the {MAX_COST} allowed",
                event.widest()
            ));
        }
        let value = event.event_value().clone();
        let run = std::panic::AssertUnwindSafe(|| {
            ROOT.with(|root| {
                let mut ctx = root.new_inner_scope();
                ctx.add_variable_from_value("event", value);
                self.program.execute(&ctx)
            })
        });
        // The crate panics on a few expressions it cannot evaluate; one must not take down a
        // publish. (The known ones are refused at compile time.)
        match std::panic::catch_unwind(run) {
            Ok(Ok(Value::Bool(b))) => Ok(b),
            Ok(Ok(other)) => Err(format!("returned {:?}, not a bool", other.type_of())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the CEL interpreter failed".into()),
        }
    }
}

thread_local! {
    /// The built-in functions, registered once per thread rather than once per evaluation, with
    /// `matches` replaced by one that reuses compiled patterns.
    static ROOT: Context<'static> = {
        let mut root = Context::default();
        root.add_function("matches", matches);
        root
    };
    /// Compiled `matches` patterns (literals of the filters this thread ran).
    static PATTERNS: RefCell<HashMap<String, Regex>> = RefCell::new(HashMap::new());
}

/// How many compiled patterns a thread keeps.
const PATTERN_CACHE: usize = 256;

/// `s.matches(pattern)`, compiling each pattern once per thread.
fn matches(ftx: &FunctionContext, This(this): This<Arc<String>>, pattern: Arc<String>) -> cel::ResolveResult {
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(pattern.as_str()) {
            let re = Regex::new(&pattern)
                .map_err(|e| ftx.error(format!("{pattern:?} is not a valid regex: {e}")))?;
            if cache.len() >= PATTERN_CACHE {
                cache.clear();
            }
            cache.insert(pattern.to_string(), re);
        }
        Ok(Value::Bool(cache.get(pattern.as_str()).is_some_and(|re| re.is_match(&this))))
    })
}

/// What compiling learns about an expression's cost, and the shapes it refuses.
#[derive(Default)]
struct Shape {
    nodes: usize,
    loop_cost: usize,
}

fn nodes(e: &IdedExpr) -> usize {
    let mut shape = Shape::default();
    // Only called on parts `walk` already accepted.
    let _ = shape.walk(e, true);
    shape.nodes
}

impl Shape {
    /// Count `e`'s nodes and its macros' cost per element; refuse what costs more than linear
    /// time or cannot be evaluated. `in_loop`: `e` is inside a macro.
    fn walk(&mut self, e: &IdedExpr, in_loop: bool) -> Result<(), String> {
        self.nodes += 1;
        match &e.expr {
            Expr::Unspecified | Expr::Struct(_) => Err("struct literals are not supported".into()),
            Expr::Ident(_) | Expr::Literal(_) => Ok(()),
            Expr::Select(s) => self.walk(&s.operand, in_loop),
            Expr::Call(c) => {
                if c.func_name == "matches" {
                    let Some(Expr::Literal(LiteralValue::String(p))) = c.args.last().map(|a| &a.expr) else {
                        return Err("matches() takes a literal pattern".into());
                    };
                    if let Err(e) = Regex::new(p) {
                        return Err(format!("the pattern {p:?} of matches() is not a valid regex: {e}"));
                    }
                }
                if let Some(t) = &c.target {
                    self.walk(t, in_loop)?;
                }
                c.args.iter().try_for_each(|a| self.walk(a, in_loop))
            }
            Expr::List(l) => l.elements.iter().try_for_each(|a| self.walk(a, in_loop)),
            Expr::Map(m) => m.entries.iter().try_for_each(|entry| match &entry.expr {
                EntryExpr::MapEntry(me) => {
                    self.walk(&me.key, in_loop)?;
                    self.walk(&me.value, in_loop)
                }
                EntryExpr::StructField(_) => Err("struct literals are not supported".into()),
            }),
            Expr::Comprehension(c) => {
                if in_loop {
                    return Err("macros (all, exists, exists_one) may not be nested: the cost would grow \
                                with the product of the lists"
                        .into());
                }
                if matches!(c.accu_init.expr, Expr::List(_) | Expr::Map(_)) {
                    return Err("map() and filter() are not allowed: their cost grows with the square of \
                                the list; use all(), exists() or exists_one()"
                        .into());
                }
                self.walk(&c.iter_range, in_loop)?;
                for part in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                    self.walk(part, true)?;
                }
                // Each element evaluates the condition and the step; a range built of k nodes
                // (concatenated lists) has at most k times the widest list's elements.
                let per_element = nodes(&c.loop_cond) + nodes(&c.loop_step);
                self.loop_cost += nodes(&c.iter_range) * per_element;
                Ok(())
            }
        }
    }
}

/// An event as CEL sees it, built when a filter first asks: `event.id`, `event.source`,
/// `event.type`, `event.subject`, `event.time` (a string), `event.datacontenttype`,
/// `event.dataschema`, every extension by name, and `event.data` for JSON data (parsed) or text
/// data (a string). Absent attributes are absent: `has(event.subject)` tests for one.
pub struct CelEvent<'e> {
    event: &'e CloudEvent,
    value: OnceCell<(Value, usize)>,
}

impl<'e> CelEvent<'e> {
    /// Wrap an event; nothing is converted until a filter runs.
    pub fn new(event: &'e CloudEvent) -> Self {
        Self { event, value: OnceCell::new() }
    }

    /// The event.
    pub fn event(&self) -> &CloudEvent {
        self.event
    }

    /// The event as CEL values (built on first use); public for benchmarks.
    pub fn event_value(&self) -> &Value {
        &self.converted().0
    }

    /// Entries of the event's widest list or map: the most times a macro can loop over it.
    pub fn widest(&self) -> usize {
        self.converted().1
    }

    fn converted(&self) -> &(Value, usize) {
        self.value.get_or_init(|| {
            let mut widest = 0;
            let value = event_value(self.event, &mut widest);
            (value, widest)
        })
    }
}

fn key(k: &str) -> Key {
    Key::String(Arc::new(k.to_string()))
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

fn event_value(e: &CloudEvent, widest: &mut usize) -> Value {
    let mut map: HashMap<Key, Value> = HashMap::new();
    for (name, value) in &e.extensions {
        let value = match value {
            ExtValue::String(s) => string(s),
            ExtValue::Integer(i) => Value::Int(*i),
            ExtValue::Boolean(b) => Value::Bool(*b),
        };
        map.insert(key(name), value);
    }
    map.insert(key("specversion"), string("1.0"));
    map.insert(key("id"), string(&e.id));
    map.insert(key("source"), string(&e.source));
    map.insert(key("type"), string(&e.type_));
    for (name, value) in [
        ("subject", &e.subject),
        ("time", &e.time),
        ("datacontenttype", &e.datacontenttype),
        ("dataschema", &e.dataschema),
    ] {
        if let Some(v) = value {
            map.insert(key(name), string(v));
        }
    }
    if let Some(data) = &e.data {
        let ct = e.datacontenttype.as_deref();
        let value = if ct.is_none_or(is_json_media_type) {
            serde_json::from_slice::<serde_json::Value>(data).ok().map(|v| json_value(v, widest))
        } else if ct.is_some_and(|ct| ct.starts_with("text/")) {
            std::str::from_utf8(data).ok().map(string)
        } else {
            None
        };
        if let Some(v) = value {
            map.insert(key("data"), v);
        }
    }
    *widest = (*widest).max(map.len());
    Value::Map(Map { map: Arc::new(map) })
}

/// JSON as CEL values: integers that fit are `int` (so `event.data.n > 100` compares as written),
/// other numbers `uint` or `double`.
fn json_value(v: serde_json::Value, widest: &mut usize) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s)),
        serde_json::Value::Array(a) => {
            *widest = (*widest).max(a.len());
            Value::List(Arc::new(a.into_iter().map(|v| json_value(v, widest)).collect()))
        }
        serde_json::Value::Object(o) => {
            *widest = (*widest).max(o.len());
            Value::Map(Map {
                map: Arc::new(
                    o.into_iter().map(|(k, v)| (Key::String(Arc::new(k)), json_value(v, widest))).collect(),
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert!(
            eval("event.data.amount", r#"{"amount": 1}"#).expect_err("not a bool").contains("not a bool")
        );
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
        assert_eq!(seen.widest(), 8, "the event's own attributes are the widest map");
        assert_eq!(f.matches(&seen), Ok(true));
        let per_element = (f.cost_bound(&seen) - f.nodes) / seen.widest();
        let wide = format!(r#"{{"a": [{}1]}}"#, "1, ".repeat(MAX_COST / per_element + 1));
        let big = event(&wide);
        let refused = f.matches(&CelEvent::new(&big)).expect_err("over the limit");
        assert!(refused.contains("more than the"), "{refused}");
        // Without macros there is no loop: any event is fine.
        assert_eq!(
            CelFilter::compile("has(event.data.a)").expect("c").matches(&CelEvent::new(&big)),
            Ok(true)
        );
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
}
