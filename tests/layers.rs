//! The layers of `src/`: each part may use only the parts listed beside it in [`PARTS`], and
//! those lists form no cycle, so every dependency points one way: down. A `use crate::…` or an
//! inline `crate::…` path to any other part fails this test, naming the file and the part.
//!
//! When a lower part seems to need a higher one, a piece both want is hiding in the higher part:
//! move that piece down (as the retry schedule moved from the controller into `policy`), rather
//! than widening the table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every part of the library, the parts it may use, and why it sits where it does.
/// Floor 1 first; each later row may name only rows above it.
const PARTS: &[(&str, &[&str], &str)] = &[
    // Floor 1: values, no IO.
    ("report", &[], "an error and its sources on one line; used by every part that reports errors"),
    ("publisher", &[], "a client that publishes one CloudEvent: `hookline publish`, the chart's helm test"),
    ("event", &[], "CloudEvents and their wire formats; knows nothing of Kubernetes"),
    ("api", &["event"], "the CRD types; a FailedEvent holds an event within the event limits"),
    ("policy", &["api", "event"], "what a spec means: limits, retry schedule, matching, conditions"),
    // Floor 2: the resources everything above shares.
    ("metrics", &[], "a leaf: its labels are plain strings, so anything may count"),
    ("store", &["report"], "the durable queue; knows its rows, not the CRDs"),
    ("registry", &["api", "policy"], "the active subscriptions, parsed once, and readiness"),
    ("k8s", &["api"], "small Kubernetes helpers: cache readiness, status apply, Event reporter, backoff"),
    (
        "outbound",
        &["report", "api", "event", "policy"],
        "guarded HTTP clients, Secret-held keys, the signed request",
    ),
    (
        "ownership",
        &[],
        "which subscriptions this replica owns, its lease, and rendezvous hashing; state, no IO",
    ),
    ("telemetry", &["event"], "trace context carried by events, and OTLP span export"),
    ("catalog", &["api", "event", "policy"], "the EventTypes as last seen, schemas compiled; state, no IO"),
    // Floor 3: the engines, side by side.
    (
        "delivery",
        &[
            "report",
            "api",
            "event",
            "policy",
            "metrics",
            "store",
            "registry",
            "k8s",
            "outbound",
            "ownership",
            "telemetry",
        ],
        "dispatchers, attempts and delivery status",
    ),
    (
        "verify",
        &["report", "api", "event", "policy", "store", "outbound", "telemetry"],
        "the endpoint ownership handshakes",
    ),
    // Floor 4: the parts facing Kubernetes and publishers.
    (
        "controller",
        &[
            "report",
            "api",
            "policy",
            "metrics",
            "store",
            "registry",
            "k8s",
            "outbound",
            "ownership",
            "delivery",
            "verify",
            "catalog",
        ],
        "reconciles WebhookSubscriptions and EventTypes",
    ),
    (
        "deadletter",
        &["report", "api", "event", "policy", "metrics", "store", "registry", "k8s", "delivery"],
        "FailedEvents: creation, cap, TTL and replay",
    ),
    (
        "server",
        &["metrics", "registry"],
        "binding HTTP servers, and the operations server: probes and metrics",
    ),
    (
        "ingest",
        &[
            "report",
            "api",
            "event",
            "policy",
            "metrics",
            "store",
            "registry",
            "telemetry",
            "delivery",
            "server",
            "catalog",
        ],
        "the publish and delivery-log HTTP API",
    ),
    (
        "cluster",
        &["report", "api", "store", "registry", "ownership", "delivery"],
        "replicas sharing PostgreSQL: membership, claims, hand-over of work and of new jobs",
    ),
    (
        "cluster_tasks",
        &["store", "ownership", "controller", "deadletter", "cluster"],
        "what one replica at a time does for all: FailedEvents, EventType status, store upkeep",
    ),
];

/// The parts named after `crate::` in `source`: `use crate::a::…`, `crate::{a, b::…}` and inline
/// paths alike. `$crate` (inside macros) is not a path of this crate's modules.
fn parts_used(source: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let bytes = source.as_bytes();
    let mut from = 0;
    while let Some(at) = source[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        let before = start.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b == b'$' || b == b'_' || b.is_ascii_alphanumeric()) {
            continue;
        }
        let rest = &source[from..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group, up to its closing brace.
            let mut depth = 1;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start && depth == 1 => {
                        used.insert(identifier(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            used.insert(identifier(rest));
        }
    }
    used.remove("");
    used
}

fn identifier(s: &str) -> String {
    s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The part a file of `src/` belongs to: `src/delivery/x.rs` and `src/delivery.rs` are `delivery`.
/// `lib.rs`, `main.rs` and `bin/` are wiring and may use anything.
fn part_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next()?.as_os_str().to_str()?.trim_end_matches(".rs");
    (!matches!(first, "lib" | "main" | "bin")).then(|| first.to_string())
}

#[test]
fn every_part_uses_only_the_parts_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = PARTS.iter().map(|(part, uses, _)| (*part, *uses)).collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(part) = part_of(&src, file) else { continue };
        let Some(uses) = allowed.get(part.as_str()) else {
            wrong.push(format!(
                "{}: part `{part}` is not in the PARTS table of tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let source = std::fs::read_to_string(file).expect("readable source");
        for used in parts_used(&source) {
            if used != part && !uses.contains(&used.as_str()) {
                wrong.push(format!(
                    "{}: `{part}` uses `crate::{used}`, which is not below it",
                    file.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn the_table_points_only_down() {
    // Each row may name only rows above it: that order is the proof that there is no cycle.
    for (i, (part, uses, _)) in PARTS.iter().enumerate() {
        for used in *uses {
            let above = PARTS[..i].iter().any(|(p, _, _)| p == used);
            assert!(above, "`{part}` may use `{used}`, which is not a row above it");
        }
    }
}

#[test]
fn every_module_of_the_library_is_in_the_table() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).expect("lib.rs");
    let modules: BTreeSet<&str> =
        lib.lines().filter_map(|l| l.trim().strip_prefix("pub mod ")?.strip_suffix(';')).collect();
    let table: BTreeSet<&str> = PARTS.iter().map(|(part, _, _)| *part).collect();
    assert_eq!(modules, table, "src/lib.rs modules and the PARTS table differ");
}

#[test]
fn the_reader_finds_every_form_of_path() {
    let source = r#"
        use crate::store::{Store, now_ms};
        use crate::{api::WebhookSubscription, event::{CloudEvent, limits}, metrics};
        let ttl = crate::policy::spec::retry_schedule(&spec);
        macro_rules! m { () => { $crate::ignored::x } }
        let not_ours = other_crate::x;
    "#;
    let found: Vec<String> = parts_used(source).into_iter().collect();
    assert_eq!(found, ["api", "event", "metrics", "policy", "store"]);
}
