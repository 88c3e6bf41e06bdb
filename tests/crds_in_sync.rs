//! `crds/` must be exactly what `crdgen` prints from the Rust types.

#[test]
fn checked_in_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for (file, generated) in baton::crds::render() {
        let checked_in = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(checked_in == generated, "crds/{file} is stale: run `make crds` and commit the result");
    }
}
