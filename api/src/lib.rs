//! Switchboard's API: the Kubernetes types (`v1alpha1`), the compiled `Snapshot` the
//! proxies serve from, and `compile()`, the one function that turns objects into a
//! Snapshot. Pure: no I/O, no clock, no Kubernetes client.

// Library code handles every error; tests may unwrap (see .clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod compile;
pub mod crds;
pub mod keys;
pub mod quota;
pub mod snapshot;
pub mod v1alpha1;

pub use compile::{Compiled, Inputs, ObjectKey, ObjectKind, compile};
pub use snapshot::Snapshot;
