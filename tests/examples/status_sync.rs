//! How long a freshly started operator takes to write the status of every object:
//! N AIRoutes (default 1,000) in the Kubernetes API emulator, one operator, one proxy.
//! `SWITCHBOARD_OPERATOR_BIN` picks the operator binary (for before/after runs).
//!
//! Run: `cargo run --release -p switchboard-e2e --example status_sync -- [routes]`

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_e2e::TempDir;
use switchboard_e2e::cluster::Cluster;

#[tokio::main]
async fn main() {
    let routes: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let cluster = Cluster::start().await;
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIProvider",
        "metadata": {"name": "echo", "namespace": "bench"},
        "spec": {"type": "echo", "models": [{"name": "m"}]}
    }));
    for i in 0..routes {
        cluster.api.apply(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIRoute",
            "metadata": {"name": format!("route-{i}"), "namespace": "bench"},
            "spec": {"models": [format!("model-{i}")], "backends": [{"provider": "echo", "model": "m"}]}
        }));
    }
    let started = Instant::now();
    let operator = cluster.operator("operator-1").await;
    let caches = TempDir::new("status-sync");
    let _proxy = cluster
        .proxy("proxy-1", &operator, &caches.path().join("p.json"))
        .await;
    let programmed = |route: &serde_json::Value| {
        route["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Programmed" && c["status"] == "True")
        })
    };
    let deadline = started + Duration::from_secs(300);
    loop {
        let done = cluster
            .api
            .list("switchboard.dev/v1alpha1", "AIRoute")
            .iter()
            .filter(|r| programmed(r))
            .count();
        if done == routes {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {routes} programmed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{routes} routes: operator start to every status Programmed=True in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
