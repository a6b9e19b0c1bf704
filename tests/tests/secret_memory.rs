//! Thousands of Secrets Switchboard does not use cost the operator nothing: the
//! release operator process against the API emulator, once with a working config alone
//! (the baseline) and once with 5,000 unrelated Secrets of 2 KiB beside it (10 MB).
//! The second run must read no unrelated Secret (every Secret request names a
//! referenced one), receive no more Secret bytes than the referenced ones, and stay
//! within a small margin of the baseline's resident memory, current and peak; the
//! config still compiles and a rotated key still propagates.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_e2e::cluster::{Cluster, Operator, eventually};
use switchboard_e2e::fake_upstream::FakeUpstream;
use switchboard_e2e::{Proxy, TempDir, http_client};

const NS: &str = "team-a";
const GATEWAY_KEY: &str = "sk-memory-gateway-key-0001";
const ROTATED_KEY: &str = "sk-memory-gateway-key-0002";
const UNRELATED: usize = 5_000;
const SECRET_BYTES: usize = 2048;
const MIB: u64 = 1024 * 1024;
/// How far the loaded run may be above the baseline. Watching every Secret holds the
/// 10 MB of unrelated data (and briefly the ~14 MB list response that carried it), so
/// a design that reads them all lands well above this.
const MARGIN: u64 = 5 * MIB;

fn secret(namespace: &str, name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"key": value}
    })
}

fn apply_config(cluster: &Cluster, upstream: &FakeUpstream) {
    cluster
        .api
        .apply(secret(NS, "provider-key", "sk-memory-provider-key-0001"));
    cluster.api.apply(secret(NS, "gateway-key", GATEWAY_KEY));
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIProvider",
        "metadata": {"name": "fake", "namespace": NS},
        "spec": {
            "type": "openai-compatible",
            "endpoint": upstream.endpoint(),
            "auth": {"secretRef": {"name": "provider-key", "key": "key"}},
            "models": [{"name": "fake-model"}]
        }
    }));
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIRoute",
        "metadata": {"name": "chat", "namespace": NS},
        "spec": {"models": ["chat"], "backends": [{"provider": "fake", "model": "fake-model"}]}
    }));
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIConsumer",
        "metadata": {"name": "app", "namespace": NS},
        "spec": {"keys": [{"secretRef": {"name": "gateway-key", "key": "key"}}]}
    }));
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"));
        kib * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn chat(proxy: &Proxy, key: &str) -> u16 {
    http_client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Starts an operator and a proxy, waits until the proxy serves the config, and
/// returns the operator's memory then (current, peak), with both still running.
async fn serve(cluster: &Cluster, name: &str, caches: &TempDir) -> (Operator, Proxy, (u64, u64)) {
    let operator = cluster.operator(name).await;
    let proxy = cluster
        .proxy(
            &format!("{name}-proxy"),
            &operator,
            &caches.path().join(format!("{name}.json")),
        )
        .await;
    eventually("the config served", Duration::from_secs(10), || async {
        (chat(&proxy, GATEWAY_KEY).await == 200).then_some(())
    })
    .await;
    let memory = memory(operator.process.pid());
    (operator, proxy, memory)
}

#[tokio::test]
async fn thousands_of_unrelated_secrets_cost_the_operator_no_memory() {
    let cluster = Cluster::start().await;
    let upstream = FakeUpstream::start().await;
    apply_config(&cluster, &upstream);
    let caches = TempDir::new("memory-caches");

    let (mut baseline, proxy, (base_rss, base_peak)) =
        serve(&cluster, "operator-baseline", &caches).await;
    drop(proxy);
    baseline.process.sigterm();
    assert!(
        baseline
            .process
            .wait_exit(Duration::from_secs(10))
            .await
            .is_some()
    );

    // 5,000 Secrets of 2 KiB nobody references, half beside the config, half in
    // another namespace.
    for i in 0..UNRELATED {
        let namespace = if i % 2 == 0 { NS } else { "unrelated" };
        let filler: String = format!("{i:08}").repeat(SECRET_BYTES / 8);
        cluster
            .api
            .apply(secret(namespace, &format!("unrelated-{i}"), &filler));
    }
    let requests_before = cluster.api.requests().len();
    let bytes_before = cluster.api.bytes_served("v1", "Secret");

    let (operator, proxy, (rss, peak)) = serve(&cluster, "operator-loaded", &caches).await;
    let mib = |bytes: u64| bytes as f64 / MIB as f64;
    eprintln!(
        "operator memory: baseline {:.1} MiB (peak {:.1}), with {UNRELATED} unrelated Secrets {:.1} MiB (peak {:.1})",
        mib(base_rss),
        mib(base_peak),
        mib(rss),
        mib(peak)
    );

    // What it read: no Secret but the two referenced ones.
    let requests = cluster.api.requests();
    let unscoped: Vec<_> = requests[requests_before..]
        .iter()
        .filter(|r| r.path.contains("/secrets"))
        .filter(|r| {
            let selector = r.query_param("fieldSelector").unwrap_or_default();
            !(r.path == format!("/api/v1/namespaces/{NS}/secrets")
                && ["metadata.name=provider-key", "metadata.name=gateway-key"]
                    .contains(&selector.as_str()))
        })
        .collect();
    assert!(
        unscoped.is_empty(),
        "Secret requests beyond the referenced ones: {} (first {:?})",
        unscoped.len(),
        unscoped.first()
    );
    let served = cluster.api.bytes_served("v1", "Secret") - bytes_before;
    assert!(
        served < 64 * 1024,
        "{served} bytes of Secrets served to the operator"
    );
    // What it holds: about what the baseline held.
    assert!(
        rss <= base_rss + MARGIN,
        "resident memory {:.1} MiB with unrelated Secrets, baseline {:.1} MiB",
        mib(rss),
        mib(base_rss)
    );
    assert!(
        peak <= base_peak + MARGIN,
        "peak resident memory {:.1} MiB with unrelated Secrets, baseline {:.1} MiB",
        mib(peak),
        mib(base_peak)
    );

    // Still a working operator: a rotated gateway key takes over.
    cluster.api.apply(secret(NS, "gateway-key", ROTATED_KEY));
    eventually(
        "the rotated key accepted",
        Duration::from_secs(5),
        || async {
            (chat(&proxy, ROTATED_KEY).await == 200 && chat(&proxy, GATEWAY_KEY).await == 401)
                .then_some(())
        },
    )
    .await;
    drop(operator);
}
