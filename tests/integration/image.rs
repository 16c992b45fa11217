//! The Dockerfile, what CI builds from it (`hack/image.sh`) and what the chart expects of the image
//! stay in step. CI cannot run `docker build` (no registry), so it builds the Dockerfile's own
//! runtime stage with buildah, swapping in two build arguments; this test fails when a change to
//! one side would make CI test an image users never get.

use std::collections::BTreeMap;

const DOCKERFILE: &str = include_str!("../../Dockerfile");
const IMAGE_SH: &str = include_str!("../../hack/image.sh");
const DEPLOYMENT: &str = include_str!("../../charts/hookline/templates/deployment.yaml");

/// The Dockerfile's stages by name: their instructions, continuation lines joined.
fn stages() -> BTreeMap<String, Vec<String>> {
    let mut stages = BTreeMap::new();
    let mut current: Option<String> = None;
    let joined = DOCKERFILE.replace("\\\n", " ");
    for line in joined.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some(from) = line.strip_prefix("FROM ") {
            let name =
                from.split_once(" AS ").map(|(_, n)| n.trim().to_string()).expect("every stage is named");
            stages.insert(name.clone(), vec![line.to_string()]);
            current = Some(name);
        } else if let Some(name) = &current {
            stages.get_mut(name).expect("stage").push(line.to_string());
        }
    }
    stages
}

fn arg_default(name: &str) -> String {
    DOCKERFILE
        .lines()
        .find_map(|l| l.strip_prefix(&format!("ARG {name}=")))
        .unwrap_or_else(|| panic!("the Dockerfile declares ARG {name} with a default"))
        .to_string()
}

#[test]
fn users_get_the_release_build_on_distroless_and_ci_swaps_only_base_and_binary() {
    let stages = stages();
    assert_eq!(arg_default("RUNTIME_BASE"), "gcr.io/distroless/cc-debian12:nonroot");
    assert_eq!(arg_default("BINARY_FROM"), "build", "a plain `docker build` compiles from source");
    assert_eq!(
        stages.keys().last().map(String::as_str),
        Some("runtime"),
        "the default target is the runtime stage"
    );
    assert_eq!(stages["runtime"][0], "FROM ${RUNTIME_BASE} AS runtime");
    assert_eq!(stages["binary"][0], "FROM ${BINARY_FROM} AS binary");
    // Both sources leave the binary where the runtime stage takes it.
    let path = "/src/target/release/hookline";
    assert!(stages["build"].iter().any(|l| l.contains("cargo build --release --locked --bin hookline")));
    assert!(stages["prebuilt"].iter().any(|l| l == &format!("COPY target/release/hookline {path}")));
    assert!(
        stages["runtime"].iter().any(|l| l == &format!("COPY --from=binary {path} /usr/local/bin/hookline"))
    );
    // CI: that runtime stage, from this Dockerfile, with exactly those two arguments.
    for needed in [
        "--target runtime",
        "--build-arg \"RUNTIME_BASE=$BASE_IMAGE\"",
        "--build-arg BINARY_FROM=prebuilt",
        "-f \"$ROOT/Dockerfile\"",
        "cargo build --quiet --release --locked --bin hookline",
        "context/target/release/hookline",
    ] {
        assert!(IMAGE_SH.contains(needed), "hack/image.sh builds with {needed}");
    }
    assert_eq!(IMAGE_SH.matches("--build-arg").count(), 2, "hack/image.sh changes nothing else");
}

#[test]
fn the_image_runs_as_the_user_and_on_the_ports_the_chart_expects() {
    let runtime = &stages()["runtime"];
    assert!(runtime.contains(&"USER 65532:65532".to_string()));
    for id in ["runAsUser: 65532", "runAsGroup: 65532", "fsGroup: 65532"] {
        assert!(DEPLOYMENT.contains(id), "the chart's securityContext has {id}");
    }
    assert!(runtime.contains(&"EXPOSE 8080 9090".to_string()));
    for port in ["containerPort: 8080", "containerPort: 9090"] {
        assert!(DEPLOYMENT.contains(port), "the chart's pod has {port}");
    }
    assert!(runtime.contains(&"VOLUME [\"/var/lib/hookline\"]".to_string()));
    assert!(
        DEPLOYMENT.contains("mountPath: /var/lib/hookline")
            && DEPLOYMENT.contains("value: /var/lib/hookline")
    );
    assert!(runtime.contains(&"ENTRYPOINT [\"/usr/local/bin/hookline\"]".to_string()));
    assert!(DEPLOYMENT.contains("args: [\"run\"]"));
}
