//! How long an object change takes to reach every proxy: the Kubernetes API emulator,
//! one operator and N proxies (default 10) in `--operator` mode, on loopback. Each
//! round applies a new AIRoute and times until every proxy routes its model.
//!
//! Run with `bench/propagation.sh` (builds the release binaries first).

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_e2e::TempDir;
use switchboard_e2e::cluster::Cluster;
use switchboard_e2e::fake_upstream::FakeUpstream;
use switchboard_e2e::http_client;

const KEY: &str = "sk-gateway-key-for-the-bench";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let proxies: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);

    let cluster = Cluster::start().await;
    let upstream = FakeUpstream::start().await;
    for object in base(&upstream) {
        cluster.api.apply(object);
    }
    let operator = cluster.operator("operator-1").await;
    let caches = TempDir::new("bench-caches");
    let mut running = Vec::new();
    for i in 0..proxies {
        let cache = caches.path().join(format!("{i}.json"));
        running.push(
            cluster
                .proxy(&format!("proxy-{i}"), &operator, &cache)
                .await,
        );
    }
    let client = http_client();

    let mut times = Vec::new();
    for round in 0..rounds {
        let model = format!("bench-{round}");
        let applied = Instant::now();
        cluster.api.apply(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIRoute",
            "metadata": {"name": model, "namespace": "bench"},
            "spec": {"models": [model], "backends": [{"provider": "fake", "model": "fake-model"}]}
        }));
        let waits = running.iter().map(|proxy| {
            let client = client.clone();
            let url = proxy.url("/v1/chat/completions");
            let model = model.clone();
            async move {
                let deadline = applied + Duration::from_secs(10);
                while Instant::now() < deadline {
                    let status = client
                        .post(&url)
                        .bearer_auth(KEY)
                        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    if status == 200 {
                        return applied.elapsed();
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                panic!("a proxy did not serve {model} within 10 s");
            }
        });
        let all = futures_util::future::join_all(waits).await;
        let slowest = all.into_iter().max().unwrap_or_default();
        times.push(slowest);
        // Let the operator settle (status writes) before the next change.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{proxies} proxies, {rounds} changes: time from apply to every proxy serving it: \
         median {:.0} ms, p90 {:.0} ms, max {:.0} ms (includes the operator's 50 ms debounce)",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 9 / 10]),
        ms(times[times.len() - 1]),
    );
}

fn base(upstream: &FakeUpstream) -> Vec<serde_json::Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "provider-key", "namespace": "bench"}, "stringData": {"key": "sk-bench-provider"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gateway-key", "namespace": "bench"}, "stringData": {"key": KEY}}),
        json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "AIProvider", "metadata": {"name": "fake", "namespace": "bench"},
               "spec": {"type": "openai-compatible", "endpoint": upstream.endpoint(),
                        "auth": {"secretRef": {"name": "provider-key", "key": "key"}}, "models": [{"name": "fake-model"}]}}),
        json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "AIConsumer", "metadata": {"name": "bench", "namespace": "bench"},
               "spec": {"keys": [{"secretRef": {"name": "gateway-key", "key": "key"}}]}}),
    ]
}
