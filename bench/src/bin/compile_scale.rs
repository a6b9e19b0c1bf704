//! `bench-compile`: how long `compile()` takes at scale: by default 200 providers
//! (5 models each), 1,000 routes (2 backends each) and 5,000 consumers (a key Secret
//! each). Prints the median and worst of several runs, and the Snapshot's size.
//!
//! Run: `cargo run --release -p switchboard-bench --bin bench-compile`

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use switchboard_api::compile;
use switchboard_api::compile::{Inputs, LastGood, Object, compile_keeping};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 200)]
    providers: usize,
    #[arg(long, default_value_t = 1000)]
    routes: usize,
    #[arg(long, default_value_t = 5000)]
    consumers: usize,
    /// Compiles to time.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// The worst case for tenancy: every consumer narrowed by its own `allowedModels`
    /// (no two share a route table), and every tenth route offered to every namespace
    /// with a consumer label selector, from a platform namespace.
    #[arg(long)]
    tenancy: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let inputs = inputs(&args)?;
    let mut plain = Vec::new();
    let mut keeping = Vec::new();
    let mut compiled = compile(&inputs);
    let last_good = LastGood::new(inputs.clone(), &compiled);
    for _ in 0..args.runs {
        let started = Instant::now();
        compiled = compile(&inputs);
        plain.push(started.elapsed());
        let started = Instant::now();
        let kept = compile_keeping(&inputs, Some(&last_good));
        keeping.push(started.elapsed());
        assert!(kept.kept.is_empty());
    }
    let problems = compiled.problems().count();
    anyhow::ensure!(problems == 0, "{problems} objects did not compile");
    let bytes = serde_json::to_vec(&compiled.snapshot)?.len();
    let started = Instant::now();
    compiled.snapshot.validate().map_err(anyhow::Error::msg)?;
    let validate = started.elapsed();
    println!(
        "objects: {} providers, {} routes, {} consumers (+{} Secrets)",
        args.providers,
        args.routes,
        args.consumers,
        inputs.secrets.len()
    );
    println!("compile():              {}", summary(&mut plain));
    println!(
        "compile_keeping():      {}  (what the operator runs)",
        summary(&mut keeping)
    );
    println!(
        "Snapshot::validate():   {:.1} ms  (what each proxy runs)",
        ms(validate)
    );
    println!(
        "Snapshot JSON:          {:.1} MiB",
        bytes as f64 / 1024.0 / 1024.0
    );
    Ok(())
}

fn summary(times: &mut [Duration]) -> String {
    times.sort();
    format!(
        "median {:.1} ms, worst {:.1} ms over {} runs",
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        times.len()
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Objects spread over ten namespaces, as several teams would have them.
fn inputs(args: &Args) -> anyhow::Result<Inputs> {
    let ns = |i: usize| format!("team-{}", i % 10);
    let mut objects = Vec::new();
    for p in 0..args.providers {
        objects.push(Object::Secret(serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("provider-{p}-key"), "namespace": ns(p)},
            "stringData": {"key": format!("sk-provider-{p:06}")}
        }))?));
        let models: Vec<_> = (0..5)
            .map(|m| json!({"name": format!("model-{m}"), "pricing": {"inputPerMillion": 1.0, "outputPerMillion": 2.0}}))
            .collect();
        objects.push(Object::Provider(serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIProvider",
            "metadata": {"name": format!("provider-{p}"), "namespace": ns(p)},
            "spec": {
                "type": "openai-compatible",
                "endpoint": format!("https://llm-{p}.example.com/v1"),
                "auth": {"secretRef": {"name": format!("provider-{p}-key"), "key": "key"}},
                "models": models
            }
        }))?));
    }
    for r in 0..args.routes {
        // Providers in the route's namespace: p ≡ r (mod 10).
        let first = (r % args.providers.max(1)) / 10 * 10 + r % 10;
        let second = (first + 10) % args.providers.max(1);
        let mut route = json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIRoute",
            "metadata": {"name": format!("route-{r}"), "namespace": ns(r)},
            "spec": {
                "models": [format!("public-{r}")],
                "backends": [
                    {"provider": format!("provider-{first}"), "model": format!("model-{}", r % 5)},
                    {"provider": format!("provider-{second}"), "model": format!("model-{}", (r + 1) % 5), "priority": 1}
                ]
            }
        });
        if args.tenancy && r % 10 == 0 {
            route["spec"]["allowedConsumers"] = json!({
                "namespaces": {"from": "All"},
                "selector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}
            });
        }
        objects.push(Object::Route(serde_json::from_value(route)?));
    }
    for c in 0..args.consumers {
        objects.push(Object::Secret(serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("consumer-{c}-key"), "namespace": ns(c)},
            "stringData": {"key": format!("sk-gateway-consumer-{c:08}")}
        }))?));
        let mut consumer = json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIConsumer",
            "metadata": {"name": format!("consumer-{c}"), "namespace": ns(c), "labels": {"team": ns(c)}},
            "spec": {"keys": [{"secretRef": {"name": format!("consumer-{c}-key"), "key": "key"}}]}
        });
        if args.tenancy {
            let models = [format!("public-{}", c % 1000), "public-0".to_string()];
            consumer["spec"]["allowedModels"] = json!(models);
        }
        objects.push(Object::Consumer(serde_json::from_value(consumer)?));
    }
    let mut inputs = Inputs::from_objects(objects);
    if args.tenancy {
        inputs.platform_namespace = Some(ns(0));
    }
    Ok(inputs)
}
