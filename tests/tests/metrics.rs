//! The proxy's `/metrics` as Prometheus sees it: `promtool check metrics` accepts it, a
//! real Prometheus (Debian's `prometheus`, installed by scripts/test.sh) scraping the
//! proxy on loopback answers PromQL with the request count and cost the test made, and
//! every metric the Grafana dashboard queries is one the proxy exports.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_e2e::redis::RedisServer;
use switchboard_e2e::{
    Process, Proxy, TempDir, chat, consumer, free_port, http_client, route, workspace_root,
};

const KEY: &str = "sk-e2e-metrics-key-0001";
/// USD per million tokens: high, so that a few requests cost whole cents.
const INPUT_PRICE: f64 = 3000.0;
const OUTPUT_PRICE: f64 = 15000.0;

/// An echo provider with prices; route `echo`; route `fallback` whose first backend is
/// a port nobody listens on (so it retries and falls back to echo).
fn manifests() -> TempDir {
    let dir = TempDir::new("metrics");
    let closed = free_port();
    dir.write(
        "providers.yaml",
        &format!(
            "apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata: {{name: echo}}
spec:
  type: echo
  models:
    - name: echo-1
      pricing: {{inputPerMillion: {INPUT_PRICE}, outputPerMillion: {OUTPUT_PRICE}}}
    - name: echo-unpriced
---
apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata: {{name: down}}
spec:
  type: openai-compatible
  endpoint: http://127.0.0.1:{closed}/v1
  auth: {{secretRef: {{name: down-key, key: apiKey}}}}
  models: [{{name: m}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: down-key}}
stringData: {{apiKey: sk-e2e-down-provider-key}}
---
apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata: {{name: slow-echo}}
spec:
  type: echo
  models: [{{name: echo-slow, pricing: {{inputPerMillion: 1, outputPerMillion: 1}}}}]
  echo: {{latency: 300ms}}
---
apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata: {{name: cached}}
spec:
  models: [cached]
  backends: [{{provider: slow-echo, model: echo-slow}}]
  cache: {{ttl: 1h}}
---
apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata: {{name: fallback}}
spec:
  models: [fallback]
  backends:
    - {{provider: down, model: m}}
    - {{provider: echo, model: echo-1, priority: 1}}
"
        ),
    );
    dir.write("route.yaml", &route("echo", &["echo"], "echo", "echo-1"));
    dir.write(
        "free.yaml",
        &route("free", &["free"], "echo", "echo-unpriced"),
    );
    // Quotas: one request per hour on `free`, then its fallback route `spare`; one on
    // `capped`, then 429.
    dir.write(
        "spare.yaml",
        &route("spare", &["spare"], "echo", "echo-unpriced"),
    );
    dir.write(
        "capped.yaml",
        &route("capped", &["capped"], "echo", "echo-unpriced"),
    );
    dir.write(
        "quotas.yaml",
        "apiVersion: switchboard.dev/v1alpha1
kind: AIQuota
metadata: {name: free-budget}
spec:
  target: {routes: [free]}
  fallbackRoute: spare
  limits: [{metric: Requests, max: 1, window: Hour}]
---
apiVersion: switchboard.dev/v1alpha1
kind: AIQuota
metadata: {name: capped}
spec:
  target: {routes: [capped]}
  limits: [{metric: Requests, max: 1, window: Hour}]
",
    );
    dir.write("consumer.yaml", &consumer("metrics-app", KEY));
    dir
}

/// Sends whole and streamed requests, a fallback and an error; returns the number of
/// answered `echo` requests and what they cost, from the usage in their responses.
async fn traffic(proxy: &Proxy) -> (u32, f64) {
    let client = http_client();
    let mut cost = 0.0;
    let mut answered = 0;
    for i in 0..4 {
        let response = chat(&client, proxy, KEY, "echo", &format!("count me {i}"), false).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let usage = &body["usage"];
        let (input, output) = (
            usage["prompt_tokens"].as_f64().unwrap(),
            usage["completion_tokens"].as_f64().unwrap(),
        );
        assert!(input > 0.0 && output > 0.0, "echo reports usage: {body}");
        cost += (input * INPUT_PRICE + output * OUTPUT_PRICE) / 1e6;
        answered += 1;
    }
    // A stream (time to first token), asking for its usage to price it.
    let response = client
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({
            "model": "echo", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "stream me"}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let usage = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|c| c["usage"].is_object().then(|| c["usage"].clone()))
        .unwrap_or_else(|| panic!("a usage chunk in {text}"));
    cost += (usage["prompt_tokens"].as_f64().unwrap() * INPUT_PRICE
        + usage["completion_tokens"].as_f64().unwrap() * OUTPUT_PRICE)
        / 1e6;
    answered += 1;
    // An unpriced model (twice: the second goes to the quota's fallback route), a
    // request over a quota, a fallback, an unknown model.
    for _ in 0..2 {
        let response = chat(&client, proxy, KEY, "free", "no price", false).await;
        assert_eq!(response.status(), 200);
    }
    for status in [200, 429] {
        let response = chat(&client, proxy, KEY, "capped", "once", false).await;
        assert_eq!(response.status(), status);
    }
    let response = chat(&client, proxy, KEY, "fallback", "fall back", false).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchboard-attempts"], "2");
    let response = chat(&client, proxy, KEY, "no-such-model", "who", false).await;
    assert_eq!(response.status(), 404);
    // The cache: three identical requests at once (one goes upstream, two wait for it),
    // then a plain hit.
    let together = (0..3).map(|_| chat(&client, proxy, KEY, "cached", "cache me", false));
    for response in futures_util::future::join_all(together).await {
        assert_eq!(response.status(), 200);
    }
    let response = chat(&client, proxy, KEY, "cached", "cache me", false).await;
    assert_eq!(response.headers()["x-switchboard-cache"], "hit");
    (answered, cost)
}

async fn metrics_text(proxy: &Proxy) -> String {
    let response = http_client().get(proxy.metrics_url()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Metric family names in an exposition (from its `# TYPE` lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// A Debian-packaged Prometheus tool, or a panic saying how to get it.
fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = PathBuf::from(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} is not installed; scripts/test.sh installs Debian's prometheus package")
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let dir = manifests();
    let proxy = Proxy::start(dir.path(), &[]).await;
    traffic(&proxy).await;
    let text = metrics_text(&proxy).await;

    let mut child = tokio::process::Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, text.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("promtool finishes")
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\nexposition:\n{text}"
    );
}

/// A Prometheus server scraping `target` every second; killed on drop.
struct Prometheus {
    _process: Process,
    _dir: TempDir,
    url: String,
}

impl Prometheus {
    async fn start(target: &str) -> Self {
        let dir = TempDir::new("prometheus");
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: switchboard-proxy
    static_configs: [{{targets: ['{target}']}}]
"
            ),
        );
        let port = free_port();
        let args: Vec<String> = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        let process = Process::spawn(&tool("prometheus"), &args, &[]);
        let url = format!("http://127.0.0.1:{port}");
        let prometheus = Self {
            _process: process,
            _dir: dir,
            url,
        };
        // Ready once the target has been scraped.
        prometheus
            .wait_for("up", |v| v == 1.0, Duration::from_secs(60))
            .await;
        prometheus
    }

    /// The single value of an instant query, if it has one.
    async fn query(&self, promql: &str) -> Option<f64> {
        let url =
            url::Url::parse_with_params(&format!("{}/api/v1/query", self.url), [("query", promql)])
                .ok()?;
        let response = http_client().get(url).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        let result = body["data"]["result"].as_array()?;
        let [sample] = result.as_slice() else {
            return None;
        };
        sample["value"][1].as_str()?.parse().ok()
    }

    /// Polls `promql` until its value satisfies `done`; panics with the last value.
    async fn wait_for(&self, promql: &str, done: impl Fn(f64) -> bool, within: Duration) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let value = self.query(promql).await;
            if let Some(value) = value.filter(|v| done(*v)) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} = {value:?} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test]
async fn prometheus_scrapes_request_counts_and_cost() {
    let dir = manifests();
    let proxy = Proxy::start(dir.path(), &[]).await;
    let target = proxy.metrics_addr.unwrap().to_string();
    let prometheus = Prometheus::start(&target).await;

    let (answered, cost) = traffic(&proxy).await;
    let count = prometheus
        .wait_for(
            r#"sum(switchboard_requests_total{route="default/echo", status_class="2xx"})"#,
            |v| v >= f64::from(answered),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(count, f64::from(answered));
    // The fallback's echo answer is priced too: compare the echo route alone.
    let scraped = prometheus
        .wait_for(
            r#"sum(switchboard_cost_usd_total{route="default/echo"})"#,
            |v| v > 0.0,
            Duration::from_secs(30),
        )
        .await;
    assert!(
        (scraped - cost).abs() < 0.005,
        "PromQL cost {scraped} vs {cost} from the responses' usage"
    );
    assert!((scraped - cost).abs() < 1e-9, "and to far below the cent");
    let fallbacks = prometheus
        .wait_for(
            r#"sum(switchboard_fallbacks_total{route="default/fallback"})"#,
            |v| v >= 1.0,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(fallbacks, 1.0);
}

/// Every `switchboard_*` and `gen_ai_*` metric the dashboard's queries name.
fn dashboard_metrics(dashboard: &Value) -> BTreeSet<String> {
    let mut exprs = Vec::new();
    collect_exprs(dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has queries: {exprs:?}");
    let mut names = BTreeSet::new();
    for expr in exprs {
        let expr = metric_positions(&expr);
        let mut rest = expr.as_str();
        while let Some(at) = ["switchboard_", "gen_ai_"]
            .iter()
            .filter_map(|p| rest.find(p))
            .min()
        {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

/// `expr` with what can only hold label names removed: selectors (`{...}`), grouping
/// (`by (...)`, `without (...)`) and the label argument of `label_values(metric, label)`.
fn metric_positions(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(c) = rest.chars().next() {
        let skip_group = ["by (", "by(", "without (", "without("]
            .iter()
            .find(|g| rest.starts_with(**g));
        if c == '{' {
            rest = rest.find('}').map_or("", |end| &rest[end + 1..]);
        } else if let Some(group) = skip_group {
            let after = &rest[group.len()..];
            rest = after.find(')').map_or("", |end| &after[end + 1..]);
        } else if let Some(args) = rest.strip_prefix("label_values(") {
            let metric = args.split([',', ')']).next().unwrap_or_default();
            out.push_str(metric);
            rest = args.find(')').map_or("", |end| &args[end + 1..]);
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let path = workspace_root().join("charts/switchboard/dashboards/switchboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let wanted = dashboard_metrics(&dashboard);

    // With Redis, so that the shared store's health is exported too.
    let redis = RedisServer::start().await;
    let dir = manifests();
    let proxy = Proxy::start(dir.path(), &["--redis-url", &redis.url()]).await;
    traffic(&proxy).await;
    let exported = families(&metrics_text(&proxy).await);
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| {
            // Histograms are queried by their series: _bucket, _sum, _count.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            !exported.contains(family) && !exported.contains(name.as_str())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the proxy does not export: {missing:?}\nexported: {exported:?}"
    );
    // And the dashboard shows most of what there is.
    assert!(wanted.len() >= 12, "dashboard metrics: {wanted:?}");
}
