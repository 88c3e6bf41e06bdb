//! The Helm chart and the kustomize base ship the CRDs as copies of the
//! generated `crds/`; `make crds` refreshes all three. This fails when a copy
//! is stale, missing, or when a copy holds a file `crds/` does not.

use std::collections::BTreeMap;
use std::path::Path;

fn yaml_files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml") && p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect()
}

#[test]
fn chart_and_kustomize_crds_are_copies_of_crds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let generated = yaml_files(&root.join("crds"));
    assert!(!generated.is_empty(), "crds/ holds no CRD");
    for copy in ["charts/baton/crds", "config/crd"] {
        let copied = yaml_files(&root.join(copy));
        assert_eq!(
            copied.keys().collect::<Vec<_>>(),
            generated.keys().collect::<Vec<_>>(),
            "{copy}/ does not hold the same files as crds/; run `make crds`"
        );
        for (name, text) in &generated {
            assert!(copied[name] == *text, "{copy}/{name} differs from crds/{name}; run `make crds`");
        }
    }
}
