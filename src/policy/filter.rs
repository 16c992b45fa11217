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

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::extractors::This;
use cel::objects::{Key, Map};
use cel::{Context, FunctionContext, Program, Value};
use regex::Regex;

use crate::api::MAX_CEL_LENGTH;
use crate::event::{CloudEvent, ExtValue, is_json_media_type};

/// The most steps (expression nodes evaluated, and values scanned) a filter may take on one
/// event: at most about 10 ms of one core at the speeds measured (see BENCHMARKS.md).
pub const MAX_COST: usize = 1_000_000;

/// A compiled `spec.filter.cel`.
pub struct CelFilter {
    source: String,
    program: Program,
    /// What the expression may cost.
    shape: Shape,
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
        shape.walk(program.expression(), None)?;
        if let Expr::Literal(_) | Expr::List(_) | Expr::Map(_) = &program.expression().expr
            && !matches!(
                &program.expression().expr,
                Expr::Literal(cel::common::ast::LiteralValue::Boolean(_))
            )
        {
            return Err("must return a bool, not a constant of another type".into());
        }
        Ok(CelFilter { source: source.to_string(), program, shape })
    }

    /// The most steps this filter can take on `event`.
    pub fn cost_bound(&self, event: &CelEvent<'_>) -> usize {
        let (widest, longest) = event.measures();
        self.shape.bound(widest, longest)
    }

    /// The expression as written.
    #[cfg(test)]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the event matches; an error (a missing field, a type mismatch, a result that is not
    /// a bool) is the caller's to count, and means no match.
    pub fn matches(&self, event: &CelEvent<'_>) -> Result<bool, String> {
        let cost = self.cost_bound(event);
        if cost > MAX_COST {
            return Err(format!(
                "could take up to {cost} steps on this event (its widest list or map has {} entries, \
                 its longest string {} bytes), more than the {MAX_COST} allowed",
                event.measures().0,
                event.measures().1
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

/// What compiling learns about an expression's cost, and the shapes it refuses. One evaluation
/// on an event takes at most
/// `steps + per_element × widest + (scans + scans_per_element × widest) × size` steps, where
/// `widest` is the number of entries of the event's widest list or map and `size` is `widest`
/// plus a quarter of its longest string in bytes (what one call that scans a value may touch).
#[derive(Default)]
struct Shape {
    /// Nodes evaluated once (a `matches` pattern weighs an eighth of its length more).
    steps: usize,
    /// Nodes evaluated once per element of the widest list or map (in macros).
    per_element: usize,
    /// Calls that may scan a whole value of the event (`matches`, `contains`, `size`, `string`,
    /// `in`, `+`, comparing two values that are not literals), each made once.
    scans: usize,
    /// Such calls made once per element, on a value that is the same in every iteration.
    scans_per_element: usize,
    /// Inside a macro: calls that scan only the current element, whose total over the macro is
    /// one scan of the list.
    element_scans: usize,
}

/// What one iteration of a macro costs beyond its body's nodes, in steps (the interpreter binds
/// its variables anew each time; measured with `hookline-bench --cel-worst-case`).
const ITERATION_STEPS: usize = 40;

/// Functions whose cost grows with the size of a value they get.
fn scans(c: &CallExpr) -> bool {
    match c.func_name.as_str() {
        "matches" | "contains" | "size" | "string" | "@in" | "_+_" => true,
        "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => {
            !c.args.iter().any(|a| matches!(a.expr, Expr::Literal(_)))
        }
        _ => false,
    }
}

/// Whether `e` is a literal, or a path from one of a macro's own variables (its element or its
/// accumulator): a value that changes with each iteration.
fn per_iteration(e: &IdedExpr, vars: (&str, &str)) -> bool {
    match &e.expr {
        Expr::Literal(_) => true,
        Expr::Ident(name) => name == vars.0 || name == vars.1,
        Expr::Select(s) => per_iteration(&s.operand, vars),
        Expr::Call(c) if c.func_name == "_[_]" => c.args.first().is_some_and(|a| per_iteration(a, vars)),
        _ => false,
    }
}

impl Shape {
    /// The most steps an evaluation can take on an event with these measures.
    fn bound(&self, widest: usize, longest: usize) -> usize {
        let size = widest.saturating_add(longest / 4);
        let per_scan = self.scans.saturating_add(self.scans_per_element.saturating_mul(widest));
        self.steps
            .saturating_add(self.per_element.saturating_mul(widest))
            .saturating_add(per_scan.saturating_mul(size))
    }

    /// Count `e`'s cost; refuse what costs more than linear time or cannot be evaluated.
    /// `in_macro`: the variables of the macro `e` is in.
    fn walk(&mut self, e: &IdedExpr, in_macro: Option<(&str, &str)>) -> Result<(), String> {
        self.steps += 1;
        match &e.expr {
            Expr::Unspecified | Expr::Struct(_) => Err("struct literals are not supported".into()),
            Expr::Ident(_) | Expr::Literal(_) => Ok(()),
            Expr::Select(s) => self.walk(&s.operand, in_macro),
            Expr::Call(c) => {
                if c.func_name == "matches" {
                    let Some(Expr::Literal(LiteralValue::String(p))) = c.args.last().map(|a| &a.expr) else {
                        return Err("matches() takes a literal pattern".into());
                    };
                    if let Err(e) = Regex::new(p) {
                        return Err(format!("the pattern {p:?} of matches() is not a valid regex: {e}"));
                    }
                    self.steps += p.len() / 8;
                }
                if scans(c) {
                    let mut operands = c.target.iter().map(AsRef::as_ref).chain(&c.args);
                    match in_macro {
                        Some(vars) if operands.all(|o| per_iteration(o, vars)) => self.element_scans += 1,
                        _ => self.scans += 1,
                    }
                }
                if let Some(t) = &c.target {
                    self.walk(t, in_macro)?;
                }
                c.args.iter().try_for_each(|a| self.walk(a, in_macro))
            }
            Expr::List(l) => l.elements.iter().try_for_each(|a| self.walk(a, in_macro)),
            Expr::Map(m) => m.entries.iter().try_for_each(|entry| match &entry.expr {
                EntryExpr::MapEntry(me) => {
                    self.walk(&me.key, in_macro)?;
                    self.walk(&me.value, in_macro)
                }
                EntryExpr::StructField(_) => Err("struct literals are not supported".into()),
            }),
            Expr::Comprehension(c) => {
                if in_macro.is_some() {
                    return Err("macros (all, exists, exists_one) may not be nested: the cost would grow \
                                with the product of the lists"
                        .into());
                }
                if matches!(c.accu_init.expr, Expr::List(_) | Expr::Map(_)) {
                    return Err("map() and filter() are not allowed: their cost grows with the square of \
                                the list; use all(), exists() or exists_one()"
                        .into());
                }
                let mut range = Shape::default();
                range.walk(&c.iter_range, None)?;
                let vars = (c.iter_var.as_str(), c.accu_var.as_str());
                let mut body = Shape::default();
                for part in [&c.loop_cond, &c.loop_step] {
                    body.walk(part, Some(vars))?;
                }
                let mut once = Shape::default();
                for part in [&c.accu_init, &c.result] {
                    once.walk(part, Some(vars))?;
                }
                // A range of k nodes (concatenated lists) has at most k times the widest
                // list's entries; each runs the condition and the step.
                let k = range.steps;
                self.steps += range.steps + once.steps;
                self.scans += range.scans + once.scans + once.element_scans + k * body.element_scans;
                self.per_element += range.per_element + k * (body.steps + ITERATION_STEPS);
                self.scans_per_element += k * body.scans;
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
    value: OnceCell<(Value, Measures)>,
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

    /// Entries of the event's widest list or map (the most times a macro can loop over it),
    /// and the bytes of its longest string (the most one call can scan).
    pub fn measures(&self) -> (usize, usize) {
        let m = &self.converted().1;
        (m.widest, m.longest)
    }

    fn converted(&self) -> &(Value, Measures) {
        self.value.get_or_init(|| {
            let mut m = Measures::default();
            let value = event_value(self.event, &mut m);
            (value, m)
        })
    }
}

/// The sizes an evaluation's cost depends on.
#[derive(Default)]
struct Measures {
    widest: usize,
    longest: usize,
}

fn key(k: &str) -> Key {
    Key::String(Arc::new(k.to_string()))
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

fn event_value(e: &CloudEvent, m: &mut Measures) -> Value {
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
            serde_json::from_slice::<serde_json::Value>(data).ok().map(|v| json_value(v, m))
        } else if ct.is_some_and(|ct| ct.starts_with("text/")) {
            std::str::from_utf8(data).ok().map(string)
        } else {
            None
        };
        if let Some(v) = value {
            map.insert(key("data"), v);
        }
    }
    m.widest = m.widest.max(map.len());
    for v in map.values() {
        if let Value::String(s) = v {
            m.longest = m.longest.max(s.len());
        }
    }
    Value::Map(Map { map: Arc::new(map) })
}

/// JSON as CEL values: integers that fit are `int` (so `event.data.n > 100` compares as written),
/// other numbers `uint` or `double`.
fn json_value(v: serde_json::Value, m: &mut Measures) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => {
            m.longest = m.longest.max(s.len());
            Value::String(Arc::new(s))
        }
        serde_json::Value::Array(a) => {
            m.widest = m.widest.max(a.len());
            Value::List(Arc::new(a.into_iter().map(|v| json_value(v, m)).collect()))
        }
        serde_json::Value::Object(o) => {
            m.widest = m.widest.max(o.len());
            let map = o
                .into_iter()
                .map(|(k, v)| {
                    m.longest = m.longest.max(k.len());
                    (Key::String(Arc::new(k)), json_value(v, m))
                })
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod tests;
