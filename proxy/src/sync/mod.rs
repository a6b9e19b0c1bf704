//! Where config comes from. Standalone: YAML files on disk (`manifests`).

pub mod manifests;
