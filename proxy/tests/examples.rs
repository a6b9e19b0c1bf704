//! Every directory under examples/ loads and compiles as shipped, and the only thing a
//! user must change is the gateway keys: every shipped key is a placeholder that is
//! refused (except the quickstart's, in the standalone proxy with echo providers).

use std::path::Path;

use switchboard_api::compile::{Inputs, ObjectKind, compile};
use switchboard_api::v1alpha1::condition::reasons;
use switchboard_proxy::sync::manifests;

#[test]
fn every_example_compiles_cleanly_once_its_gateway_keys_are_replaced() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let mut inputs =
            manifests::load(&dir).unwrap_or_else(|errors| panic!("{}: {errors:?}", dir.display()));

        // As shipped: only the consumers' keys are refused, each as a placeholder.
        let compiled = compile(&inputs);
        for (key, status) in compiled.problems() {
            assert_eq!(
                key.kind,
                ObjectKind::AIConsumer,
                "{}: {key}: {status:?}",
                dir.display()
            );
            assert!(
                status
                    .problems()
                    .any(|c| c.reason == reasons::PLACEHOLDER_KEY),
                "{}: {key}: {status:?}",
                dir.display()
            );
        }
        let quickstart = dir.ends_with("quickstart") || dir.ends_with("cache");
        assert_eq!(
            compiled.problems().next().is_none(),
            quickstart,
            "{}: only the echo demos run with their shipped key",
            dir.display()
        );

        // With real keys, everything is accepted.
        replace_gateway_keys(&mut inputs);
        let compiled = compile(&inputs);
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

/// Puts a distinct random-looking key in every Secret an AIConsumer reads.
fn replace_gateway_keys(inputs: &mut Inputs) {
    let references: Vec<_> = inputs
        .consumers
        .iter()
        .flat_map(|(key, consumer)| {
            consumer.spec.keys.iter().map(move |k| {
                (
                    key.sibling(ObjectKind::Secret, &k.secret_ref.name),
                    k.secret_ref.key.clone(),
                )
            })
        })
        .collect();
    for (n, (secret, field)) in references.into_iter().enumerate() {
        let secret = inputs
            .secrets
            .get_mut(&secret)
            .expect("referenced Secret exists");
        let value = format!("sk-sb-{n}-Qx8vT1mZ0rL3kP9wYb2NcE5uHf7JgAd4");
        secret
            .string_data
            .get_or_insert_default()
            .insert(field, value);
    }
}
