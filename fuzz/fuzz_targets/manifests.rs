//! Manifest loading (standalone mode): arbitrary bytes as a multi-document YAML stream,
//! read as `load` reads each file, then compiled: errors or a Snapshot a proxy accepts
//! (also after the JSON round trip of the operator's push), never a panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use switchboard_proxy::sync::manifests;

fuzz_target!(|bytes: &[u8]| {
    // `load` reads files with `read_to_string`, so non-UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(inputs) = manifests::load_str(Path::new("fuzz.yaml"), text) else {
        return;
    };
    let compiled = switchboard_api::compile(&inputs);
    // Compile depends only on the objects: the same inputs give the same Snapshot.
    assert_eq!(
        switchboard_api::compile(&inputs).snapshot.version,
        compiled.snapshot.version
    );
    // What the operator sends is what a proxy accepts.
    compiled.snapshot.validate().unwrap();
    let json = serde_json::to_vec(&compiled.snapshot).unwrap();
    let received: switchboard_api::snapshot::Snapshot = serde_json::from_slice(&json).unwrap();
    received.validate().unwrap();
    let _ = manifests::accepted(&compiled);
    let _ = compiled.problems().count();
});
