//! Every directory under examples/ loads and compiles with no problem, as shipped.

use std::path::Path;

use switchboard_proxy::sync::manifests;

#[test]
fn every_example_compiles_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let compiled = manifests::load_and_compile(&dir)
            .unwrap_or_else(|errors| panic!("{}: {errors:?}", dir.display()));
        let problems: Vec<_> = compiled.problems().collect();
        assert!(problems.is_empty(), "{}: {problems:?}", dir.display());
        assert!(
            !compiled.snapshot.routes.is_empty(),
            "{} has routes",
            dir.display()
        );
        assert!(
            !compiled.snapshot.consumers.is_empty(),
            "{} has consumers",
            dir.display()
        );
        checked += 1;
    }
    assert!(checked >= 5, "found {checked} example directories");
}
