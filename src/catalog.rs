//! The event catalog: every namespace's `EventType`s as this replica last saw them, each schema
//! compiled once per generation, and the check a publish's `data` passes against them.
//!
//! State only: the EventType watch (`controller::event_types`) keeps it current; ingest reads it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jsonschema::{PatternOptions, Retrieve, Uri, Validator};
use kube::ResourceExt;
use serde_json::Value;

use crate::api::{EventType, EventTypeSpec, Reason};
use crate::event::CloudEvent;
use crate::event::is_json_media_type;
use crate::policy::matching::type_matches;

/// What compiling an EventType's spec found.
#[derive(Clone, Debug)]
pub enum Compiled {
    /// The schema compiles (or there is none) and the example matches it.
    Valid(Option<Arc<Validator>>),
    /// The schema does not compile, or would fetch something.
    InvalidSchema(String),
    /// The example does not match the schema.
    InvalidExample(String),
}

impl Compiled {
    /// The `Ready` condition this gives: status, reason, message.
    pub fn condition(&self) -> (bool, Reason, String) {
        match self {
            Compiled::Valid(Some(_)) => {
                (true, Reason::Valid, "the schema compiles; published data is checked against it".into())
            }
            Compiled::Valid(None) => (true, Reason::Valid, "no schema: published data is not checked".into()),
            Compiled::InvalidSchema(m) => (false, Reason::InvalidSchema, m.clone()),
            Compiled::InvalidExample(m) => (false, Reason::InvalidExample, m.clone()),
        }
    }

    fn validator(&self) -> Option<&Validator> {
        match self {
            Compiled::Valid(Some(v)) => Some(v),
            _ => None,
        }
    }
}

/// Refuses every remote `$ref` (and remote `$schema`): a schema may point only into itself, so
/// compiling one never reaches the network or the file system.
struct NoFetch;

impl Retrieve for NoFetch {
    fn retrieve(&self, uri: &Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("{uri} is outside the schema, and schemas may not fetch anything").into())
    }
}

/// Compile a spec's schema and check its example against it.
pub fn compile(spec: &EventTypeSpec) -> Compiled {
    let Some(schema) = &spec.schema else { return Compiled::Valid(None) };
    // `regex` runs in time linear in the input: a schema's `pattern` cannot stall publishing.
    let built = jsonschema::options()
        .with_retriever(NoFetch)
        .with_pattern_options(PatternOptions::regex())
        .build(schema);
    let validator = match built {
        Ok(v) => v,
        Err(e) => {
            let at = e.instance_path().as_str();
            let at = if at.is_empty() { String::new() } else { format!(" at {at:?}") };
            return Compiled::InvalidSchema(format!("spec.schema does not compile{at}: {}", e.masked()));
        }
    };
    if let Some(example) = &spec.example
        && let Err(e) = validator.validate(example)
    {
        return Compiled::InvalidExample(format!(
            "spec.example does not match spec.schema at {:?}: {}",
            e.instance_path().as_str(),
            e.masked()
        ));
    }
    Compiled::Valid(Some(Arc::new(validator)))
}

/// One EventType as last seen.
#[derive(Debug)]
struct Entry {
    name: String,
    uid: String,
    generation: i64,
    type_: String,
    /// Creation time and name: the oldest EventType of a type is the one used.
    age_key: (i64, String),
    compiled: Compiled,
}

/// Why a publish's data was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRefusal {
    /// JSON pointer into `data` of the value that failed (`""` for `data` itself).
    pub pointer: String,
    /// What failed, naming the EventType.
    pub message: String,
}

#[derive(Default)]
struct Inner {
    /// Namespace → EventType name → entry.
    entries: HashMap<String, HashMap<String, Arc<Entry>>>,
    /// Namespace → type → the entry used for it (the oldest).
    used: HashMap<String, HashMap<String, Arc<Entry>>>,
}

impl Inner {
    fn rebuild(&mut self, ns: &str) {
        let mut used: HashMap<String, Arc<Entry>> = HashMap::new();
        for entry in self.entries.get(ns).into_iter().flat_map(|m| m.values()) {
            match used.get(&entry.type_) {
                Some(other) if other.age_key <= entry.age_key => {}
                _ => {
                    used.insert(entry.type_.clone(), entry.clone());
                }
            }
        }
        if used.is_empty() {
            self.used.remove(ns);
            self.entries.remove(ns);
        } else {
            self.used.insert(ns.to_string(), used);
        }
    }
}

/// The catalog, shared by the EventType watch and ingest. Cheap to clone.
#[derive(Clone, Default)]
pub struct Catalog {
    inner: Arc<RwLock<Inner>>,
}

/// What decides which of several EventTypes of one type is used: the oldest (creation time,
/// then name).
pub fn age_key(et: &EventType) -> (i64, String) {
    (et.creation_timestamp().map_or(i64::MAX, |t| t.0.as_millisecond()), et.name_any())
}

impl Catalog {
    /// Take an EventType as created or changed; its schema is compiled again only when its
    /// generation moved. Returns what compiling found.
    pub fn upsert(&self, et: &EventType) -> Compiled {
        let ns = et.namespace().unwrap_or_default();
        let name = et.name_any();
        let uid = et.uid().unwrap_or_default();
        let generation = et.metadata.generation.unwrap_or_default();
        let known = self.read().entries.get(&ns).and_then(|m| m.get(&name)).cloned();
        let compiled = match known {
            Some(e) if e.uid == uid && e.generation == generation => e.compiled.clone(),
            _ => compile(&et.spec),
        };
        let entry = Entry {
            name: name.clone(),
            uid,
            generation,
            type_: et.spec.type_.clone(),
            age_key: age_key(et),
            compiled: compiled.clone(),
        };
        let mut inner = self.write();
        inner.entries.entry(ns.clone()).or_default().insert(name, Arc::new(entry));
        inner.rebuild(&ns);
        compiled
    }

    /// Forget a deleted EventType.
    pub fn remove(&self, namespace: &str, name: &str) {
        let mut inner = self.write();
        if let Some(m) = inner.entries.get_mut(namespace) {
            m.remove(name);
        }
        inner.rebuild(namespace);
    }

    /// Replace everything with a fresh list (after the watch listed again).
    pub fn replace_all(&self, listed: &[EventType]) {
        let keep: std::collections::HashSet<(String, String)> =
            listed.iter().map(|et| (et.namespace().unwrap_or_default(), et.name_any())).collect();
        let gone: Vec<(String, String)> = self
            .read()
            .entries
            .iter()
            .flat_map(|(ns, m)| m.keys().map(move |n| (ns.clone(), n.clone())))
            .filter(|k| !keep.contains(k))
            .collect();
        for (ns, name) in gone {
            self.remove(&ns, &name);
        }
        for et in listed {
            self.upsert(et);
        }
    }

    /// How many namespaces have EventTypes.
    pub fn namespaces(&self) -> usize {
        self.read().entries.len()
    }

    /// The name of the EventType used for `type_` in `namespace`, if any.
    #[cfg(test)]
    pub fn used_for(&self, namespace: &str, type_: &str) -> Option<String> {
        self.read().used.get(namespace).and_then(|m| m.get(type_)).map(|e| e.name.clone())
    }

    /// Of a subscription's type patterns, the exact types the namespace's catalog lacks (none
    /// when the namespace has no catalog). Prefix patterns are not checked.
    pub fn lacks(&self, namespace: &str, patterns: &[String]) -> Vec<String> {
        let inner = self.read();
        let Some(types) = inner.used.get(namespace) else { return Vec::new() };
        patterns
            .iter()
            .filter(|p| !p.ends_with('*') && !types.keys().any(|t| type_matches(p, t)))
            .cloned()
            .collect()
    }

    /// Check an event's `data` against the schema its type has in `namespace`, if any.
    pub fn check(&self, namespace: &str, event: &CloudEvent) -> Result<(), DataRefusal> {
        let entry = {
            let inner = self.read();
            match inner.used.get(namespace).and_then(|m| m.get(&event.type_)) {
                Some(e) if e.compiled.validator().is_some() => e.clone(),
                _ => return Ok(()),
            }
        };
        let Some(validator) = entry.compiled.validator() else { return Ok(()) };
        let refuse = |pointer: &str, what: String| DataRefusal {
            pointer: pointer.to_string(),
            message: format!(
                "data does not match the schema of EventType {namespace}/{}: {what}",
                entry.name
            ),
        };
        let data = match (&event.data, event.datacontenttype.as_deref()) {
            (None, _) => Value::Null,
            (Some(bytes), ct) if ct.is_none_or(is_json_media_type) => serde_json::from_slice(bytes)
                .map_err(|e| refuse("", format!("data is not valid JSON ({e})")))?,
            (Some(_), ct) => {
                let ct = ct.unwrap_or_default();
                return Err(refuse("", format!("data is {ct:?}, and only JSON data can match a schema")));
            }
        };
        validator.validate(&data).map_err(|e| {
            let pointer = e.instance_path().as_str().to_string();
            let at = if pointer.is_empty() { "data".to_string() } else { format!("at {pointer:?}") };
            refuse(&pointer, format!("{at}: {}", e.masked()))
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn event_type(
        name: &str,
        created: i64,
        type_: &str,
        schema: Option<Value>,
        example: Option<Value>,
    ) -> EventType {
        let mut et = EventType::new(
            name,
            EventTypeSpec { type_: type_.into(), description: "d".into(), schema, example },
        );
        et.metadata.namespace = Some("shop".into());
        et.metadata.uid = Some(format!("uid-{name}"));
        et.metadata.generation = Some(1);
        et.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).expect("time")));
        et
    }

    fn event(type_: &str, data: Option<&str>, ct: Option<&str>) -> CloudEvent {
        CloudEvent {
            id: "1".into(),
            source: "/s".into(),
            type_: type_.into(),
            subject: None,
            time: None,
            datacontenttype: ct.map(Into::into),
            dataschema: None,
            extensions: Default::default(),
            data: data.map(|d| bytes::Bytes::from(d.to_string())),
        }
    }

    fn order_schema() -> Value {
        json!({"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}})
    }

    #[test]
    fn data_is_checked_against_the_schema_of_its_type_and_namespace() {
        let catalog = Catalog::default();
        assert!(matches!(
            catalog.upsert(&event_type("order", 1, "order.created", Some(order_schema()), None)),
            Compiled::Valid(Some(_))
        ));
        assert_eq!(catalog.check("shop", &event("order.created", Some(r#"{"amount": 3}"#), None)), Ok(()));
        let refused = catalog
            .check("shop", &event("order.created", Some(r#"{"amount": "x"}"#), None))
            .expect_err("refused");
        assert_eq!(refused.pointer, "/amount");
        assert!(refused.message.contains("EventType shop/order"), "{}", refused.message);
        assert!(!refused.message.contains("\"x\""), "the value is masked: {}", refused.message);
        // Absent data is checked as null; non-JSON data cannot match.
        assert_eq!(
            catalog.check("shop", &event("order.created", None, None)).expect_err("refused").pointer,
            ""
        );
        assert!(catalog.check("shop", &event("order.created", Some("hi"), Some("text/plain"))).is_err());
        assert!(catalog.check("shop", &event("order.created", Some("{"), Some("application/json"))).is_err());
        // Other types and other namespaces are not checked.
        assert_eq!(catalog.check("shop", &event("order.paid", Some("1"), None)), Ok(()));
        assert_eq!(catalog.check("other", &event("order.created", Some("1"), None)), Ok(()));
        catalog.remove("shop", "order");
        assert_eq!(catalog.check("shop", &event("order.created", Some("1"), None)), Ok(()));
    }

    #[test]
    fn the_oldest_event_type_of_a_type_is_used() {
        let catalog = Catalog::default();
        catalog.upsert(&event_type("newer", 20, "order.created", None, None));
        catalog.upsert(&event_type("older", 10, "order.created", Some(order_schema()), None));
        assert_eq!(catalog.used_for("shop", "order.created").as_deref(), Some("older"));
        assert!(catalog.check("shop", &event("order.created", Some("1"), None)).is_err());
        catalog.replace_all(&[event_type("newer", 20, "order.created", None, None)]);
        assert_eq!(catalog.used_for("shop", "order.created").as_deref(), Some("newer"));
        assert_eq!(catalog.check("shop", &event("order.created", Some("1"), None)), Ok(()));
    }

    #[test]
    fn bad_schemas_and_examples_are_named_and_check_nothing() {
        let bad = compile(&event_type("a", 1, "t", Some(json!({"type": "nonsense"})), None).spec);
        assert!(matches!(&bad, Compiled::InvalidSchema(m) if m.contains("does not compile")), "{bad:?}");
        let remote =
            compile(&event_type("a", 1, "t", Some(json!({"$ref": "https://example.com/s.json"})), None).spec);
        assert!(matches!(&remote, Compiled::InvalidSchema(m) if m.contains("may not fetch")), "{remote:?}");
        let local = json!({"$defs": {"n": {"type": "number"}}, "properties": {"a": {"$ref": "#/$defs/n"}}});
        assert!(matches!(
            compile(&event_type("a", 1, "t", Some(local), None).spec),
            Compiled::Valid(Some(_))
        ));
        let example =
            compile(&event_type("a", 1, "t", Some(order_schema()), Some(json!({"amount": "x"}))).spec);
        assert!(matches!(&example, Compiled::InvalidExample(m) if m.contains("\"/amount\"")), "{example:?}");
        let catalog = Catalog::default();
        catalog.upsert(&event_type("a", 1, "t", Some(json!({"type": "nonsense"})), None));
        assert_eq!(catalog.check("shop", &event("t", Some("1"), None)), Ok(()));
    }

    #[test]
    fn the_example_event_type_is_valid() {
        let et: EventType = serde_yaml::from_str(include_str!("../examples/eventtype.yaml"))
            .expect("examples/eventtype.yaml");
        assert!(matches!(compile(&et.spec), Compiled::Valid(Some(_))));
    }

    #[test]
    fn a_subscription_s_exact_types_missing_from_the_catalog_are_named() {
        let catalog = Catalog::default();
        let patterns = vec!["order.created".to_string(), "order.*".into(), "order.lost".into()];
        assert!(catalog.lacks("shop", &patterns).is_empty(), "no catalog, nothing lacks");
        catalog.upsert(&event_type("a", 1, "order.created", None, None));
        assert_eq!(catalog.lacks("shop", &patterns), ["order.lost"]);
    }
}
