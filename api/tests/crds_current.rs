//! `crds/` must match the types. Regenerate with `cargo run -p switchboard-api --bin crdgen`.

use std::path::Path;

#[test]
fn checked_in_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut stale = Vec::new();
    for (file, crd) in switchboard_api::crds::all() {
        let expected = switchboard_api::crds::to_yaml(&crd).unwrap();
        let actual = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if actual != expected {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "crds/ is stale ({stale:?}); run `cargo run -p switchboard-api --bin crdgen` and commit"
    );
    let extra: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !switchboard_api::crds::all().iter().any(|(f, _)| f == name))
        .collect();
    assert!(
        extra.is_empty(),
        "crds/ holds files no type generates: {extra:?}"
    );
}

#[test]
fn every_crd_is_namespaced_v1alpha1_with_status() {
    for (_, crd) in switchboard_api::crds::all() {
        assert_eq!(crd.spec.group, "switchboard.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns = version.additional_printer_columns.as_ref().unwrap();
        assert!(columns.iter().any(|c| c.name == "Accepted"));
    }
}
