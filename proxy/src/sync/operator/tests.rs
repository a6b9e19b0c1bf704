use std::os::unix::fs::PermissionsExt;

use switchboard_api::compile::{Inputs, Object};
use switchboard_api::v1alpha1::AIProvider;

use super::*;
use crate::Settings;

fn gateway() -> Gateway {
    crate::install_crypto_provider();
    Gateway::new(
        Settings::for_manifests("/nonexistent"),
        None,
        std::sync::Arc::new(crate::quota::Quotas::new(None, None)),
        std::sync::Arc::new(crate::cache::Cache::new(None, 1 << 20, None)),
    )
}

/// A compiled Snapshot with one echo provider.
fn snapshot() -> Snapshot {
    let provider: AIProvider = serde_json::from_value(serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "AIProvider",
        "metadata": {"name": "echo", "namespace": "default"},
        "spec": {"type": "echo", "models": [{"name": "m"}]}
    }))
    .unwrap();
    let compiled = switchboard_api::compile(&Inputs::from_objects([Object::Provider(provider)]));
    assert_eq!(compiled.snapshot.providers.len(), 1);
    compiled.snapshot
}

fn body(snapshot: &Snapshot) -> Bytes {
    Bytes::from(serde_json::to_vec(snapshot).unwrap())
}

#[test]
fn accepts_a_valid_snapshot_and_refuses_garbage_tampering_and_dangling_references() {
    let gateway = gateway();
    let good = snapshot();
    let runtime = accept(&body(&good), &gateway).unwrap();
    assert_eq!(runtime.version(), good.version);

    let error = accept(&Bytes::from_static(b"{not json"), &gateway).unwrap_err();
    assert!(error.contains("not a Snapshot"), "{error}");

    let mut tampered = good.clone();
    tampered.providers.get_mut("default/echo").unwrap().endpoint = "http://evil".into();
    let error = accept(&body(&tampered), &gateway).unwrap_err();
    assert!(error.contains("does not match"), "{error}");

    let mut dangling = good.clone();
    dangling.routes.insert(
        "default/r".into(),
        switchboard_api::snapshot::Route {
            models: ["m".to_string()].into(),
            headers: Vec::new(),
            backends: vec![switchboard_api::snapshot::Backend {
                provider: "default/missing".into(),
                model: "m".into(),
                weight: 1,
                priority: 0,
            }],
            request_timeout_ms: None,
            total_timeout_ms: None,
            first_token_timeout_ms: None,
            stream_idle_timeout_ms: None,
            retry: Default::default(),
            strategy: Default::default(),
            circuit: Default::default(),
            cache: None,
        },
    );
    let error = accept(&body(&dangling.seal()), &gateway).unwrap_err();
    assert!(error.contains("unknown provider"), "{error}");
}

#[test]
fn the_cache_file_is_private_and_replaced_atomically() {
    let dir = std::env::temp_dir().join(format!("sb-cache-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let path = dir.join("nested").join("snapshot.json");
    write_private(&path, b"first").unwrap();
    write_private(&path, b"second").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"second");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let dir_mode = fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700, "{dir_mode:o}");
    assert!(!path.with_extension("tmp").exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn backoff_grows_is_jittered_and_capped() {
    for failures in 1..40 {
        let step = BACKOFF_MIN
            .saturating_mul(1u32 << failures.min(16))
            .min(BACKOFF_MAX);
        let delay = backoff(failures);
        assert!(delay >= step / 2 && delay <= step, "{failures}: {delay:?}");
        assert!(delay <= BACKOFF_MAX);
    }
    let samples: std::collections::BTreeSet<Duration> = (0..20).map(|_| backoff(5)).collect();
    assert!(samples.len() > 1, "jittered");
}
