//! The CRDs committed under `crds/` are exactly what the code generates.

use std::path::Path;

#[test]
fn committed_crds_match_the_generated_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let generated = authplane::api::crds::crds();
    assert!(!generated.is_empty());
    for (name, yaml) in &generated {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            committed == *yaml,
            "crds/{name} is out of date: run `cargo run -- crdgen --out-dir crds` and commit the result"
        );
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = generated.into_iter().map(|(name, _)| name).collect();
    expected.sort();
    assert_eq!(
        files, expected,
        "crds/ holds a file the code no longer generates"
    );
}

#[test]
fn the_crd_carries_the_cel_rules_the_dev_mode_applies() {
    let (_, yaml) = &authplane::api::crds::crds()[0];
    for rule in [
        "duration(self.retainFor) >= duration(self.prePublish)",
        "duration(self.prePublish) < duration(self.every)",
        "self in [2048, 3072, 4096]",
    ] {
        assert!(yaml.contains(rule), "missing CEL rule {rule}");
    }
    assert!(yaml.contains("x-kubernetes-validations"));
}
