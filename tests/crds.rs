//! The committed CRDs are exactly what `hookline crds` prints: generated, never hand-edited.

#[test]
fn committed_crds_match_the_generated_ones() {
    let generated = hookline::api::crds_yaml().expect("CRDs render");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/hookline.dev.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/hookline.dev.yaml exists");
    assert!(
        committed == generated,
        "crds/hookline.dev.yaml is stale: run `cargo run -- crds > crds/hookline.dev.yaml` and commit it"
    );
}
