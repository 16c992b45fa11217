//! The Argo CD health checks in `integrations/argocd/hookline.dev/<Kind>/` pass their own test
//! cases (`health_test.yaml`, Argo CD's format, over objects captured from a real Hookline by
//! `integrations/argocd/capture-testdata.sh`), run as Argo CD runs them: `obj` set to the object,
//! the script's returned table read, in a Lua 5.1 interpreter (Argo CD uses gopher-lua, Lua 5.1).
//! The interpreter is `lua5.1` on the PATH, or `HOOKLINE_LUA`; `hack/test.sh` installs it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/integrations/argocd/hookline.dev");

#[derive(Deserialize)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    health_status: Health,
    input_path: String,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Health {
    status: String,
    message: String,
}

/// `value` as a Lua table constructor, as Argo CD hands objects to scripts (JSON null is nil).
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if c.is_ascii_graphic() || c == ' ' => out.push(c),
                    // Any other character byte by byte, as decimal escapes.
                    c => {
                        let mut buf = [0; 4];
                        for b in c.encode_utf8(&mut buf).bytes() {
                            out.push_str(&format!("\\{b}"));
                        }
                    }
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua(&Value::from(k.as_str())), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn interpreter() -> String {
    std::env::var("HOOKLINE_LUA").unwrap_or_else(|_| "lua5.1".into())
}

/// Run `script` on `object` and return what it answered.
fn health(script: &str, object: &Value) -> Health {
    let program = format!(
        "obj = {}\nlocal function health()\n{script}\nend\nlocal hs = health()\nio.write(hs.status, \"\\n\", hs.message or \"\", \"\\n\")\n",
        lua(object)
    );
    let mut child = Command::new(interpreter())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{}: {e} (install lua5.1, or set HOOKLINE_LUA; hack/test.sh does)", interpreter())
        });
    child.stdin.take().expect("stdin").write_all(program.as_bytes()).expect("write the program");
    let out = child.wait_with_output().expect("lua");
    assert!(out.status.success(), "the script failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let mut lines = text.lines();
    Health {
        status: lines.next().unwrap_or_default().to_string(),
        message: lines.next().unwrap_or_default().to_string(),
    }
}

fn kinds() -> Vec<PathBuf> {
    let mut kinds: Vec<PathBuf> =
        std::fs::read_dir(ROOT).expect("integrations/argocd").map(|e| e.expect("entry").path()).collect();
    kinds.sort();
    kinds
}

#[test]
fn every_health_check_passes_its_argo_cd_test_cases() {
    let mut ran = 0;
    for kind in kinds() {
        let script = std::fs::read_to_string(kind.join("health.lua")).expect("health.lua");
        let tests: HealthTests = serde_yaml::from_str(
            &std::fs::read_to_string(kind.join("health_test.yaml")).expect("health_test.yaml"),
        )
        .expect("health_test.yaml in Argo CD's format");
        let mut used = Vec::new();
        for test in tests.tests {
            let object: Value = serde_yaml::from_str(
                &std::fs::read_to_string(kind.join(&test.input_path)).expect("test data"),
            )
            .expect("test data is YAML (or JSON)");
            assert_eq!(
                health(&script, &object),
                test.health_status,
                "{} {}",
                kind.display(),
                test.input_path
            );
            used.push(test.input_path);
            ran += 1;
        }
        // Every captured object is a test case.
        for data in std::fs::read_dir(kind.join("testdata")).expect("testdata") {
            let name = format!("testdata/{}", data.expect("entry").file_name().to_string_lossy());
            assert!(used.contains(&name), "{}: {name} is in no test case", kind.display());
        }
    }
    assert!(ran >= 18, "only {ran} cases ran");
}

/// Argo CD shows WebhookSubscriptions and EventTypes, and the FailedEvents a subscription owns
/// under it: each kind it shows has a check, and each check a kind Hookline serves.
#[test]
fn each_kind_argo_cd_shows_has_a_health_check() {
    let names: Vec<String> =
        kinds().iter().map(|k| k.file_name().expect("name").to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["EventType", "FailedEvent", "WebhookSubscription"]);
    let crds = hookline::api::crds_yaml().expect("crds");
    for name in &names {
        assert!(crds.contains(&format!("kind: {name}\n")), "{name} is not a kind Hookline serves");
    }
}

/// The `argocd-cm` snippet in the README is the scripts as they are, indented under their keys.
#[test]
fn the_readmes_argocd_cm_snippet_is_the_scripts() {
    let readme =
        std::fs::read_to_string(Path::new(ROOT).join("../README.md")).expect("integrations/argocd/README.md");
    for kind in kinds() {
        let name = kind.file_name().expect("name").to_string_lossy().into_owned();
        let script = std::fs::read_to_string(kind.join("health.lua")).expect("health.lua");
        let indented: String = script
            .lines()
            .map(|l| if l.is_empty() { "\n".to_string() } else { format!("    {l}\n") })
            .collect();
        let block = format!("  resource.customizations.health.hookline.dev_{name}: |\n{indented}");
        assert!(
            readme.contains(&block),
            "integrations/argocd/README.md: the {name} snippet differs from its health.lua"
        );
    }
}
