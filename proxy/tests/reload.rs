//! Reloading manifests from disk: atomic swaps under load, refused reloads that keep
//! the serving config.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::StatusCode;
use support::*;
use switchboard_proxy::Proxy;

fn version(proxy: &Proxy) -> String {
    proxy
        .gateway
        .runtime
        .current()
        .unwrap()
        .version()
        .to_string()
}

/// Waits (bounded) until the serving version differs from `old`.
async fn wait_for_new_version(proxy: &Proxy, old: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = version(proxy);
        if now != old {
            return now;
        }
        assert!(Instant::now() < deadline, "no reload within 10s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits (bounded) until the serving config knows model `alias`.
async fn wait_for_alias(proxy: &Proxy, alias: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = post(proxy, "/v1/chat/completions", chat(alias, false)).await;
        if response.status() == StatusCode::OK {
            return;
        }
        assert!(Instant::now() < deadline, "{alias} not served within 10s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reloads the proxy counted as refused so far (0 before the first).
async fn refused_reloads(proxy: &Proxy) -> f64 {
    metric_or_zero(
        &scrape(proxy).await,
        "switchboard_config_reloads_total",
        &[("result", "refused")],
    )
}

/// Waits (bounded) until the proxy has refused `count` reloads in all: the signal that
/// the change just written was read and refused.
async fn wait_for_refusals(proxy: &Proxy, count: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = refused_reloads(proxy).await;
        if refused >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{refused} refused reloads within 10s, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn echo_provider(name: &str) -> String {
    format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: AIProvider\nmetadata: {{name: {name}}}\nspec:\n  type: echo\n  models: [{{name: echo}}]\n  echo: {{chunkInterval: 20ms}}\n"
    )
}

fn chat(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"one two three four five six"}}]}}"#
    )
}

#[tokio::test]
async fn reloads_under_concurrent_load_fail_no_request() {
    let a = FakeProvider::json(200, r#"{"from":"a"}"#).await;
    let b = FakeProvider::json(200, r#"{"from":"b"}"#).await;
    let manifests = Manifests::new();
    manifests
        .write(
            "a.yaml",
            &provider_yaml("a", "openai", &a.url(), &[("m", "m")], ""),
        )
        .write(
            "b.yaml",
            &provider_yaml("b", "openai", &b.url(), &[("m", "m")], ""),
        )
        .write("echo.yaml", &echo_provider("e"))
        .write(
            "stream-route.yaml",
            &route_yaml("s", &["slow"], "e", "echo", ""),
        )
        .write("route.yaml", &route_yaml("r", &["m"], "a", "m", ""))
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = Arc::new(proxy(&manifests).await);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for worker in 0..8 {
        let (proxy, stop, ok, failures) =
            (proxy.clone(), stop.clone(), ok.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            let client = client();
            // Bounded: at most 2,000 requests per worker, and stops when told.
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let streaming = worker % 4 == 0;
                let model = if streaming { "slow" } else { "m" };
                let response = client
                    .post(url(&proxy, "/v1/chat/completions"))
                    .bearer_auth(KEY)
                    .body(chat(model, streaming))
                    .send()
                    .await;
                let outcome = match response {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let body = r.bytes().await.map_err(|e| e.to_string());
                        match body {
                            Ok(body) if !streaming || body.ends_with(b"data: [DONE]\n\n") => Ok(()),
                            Ok(body) => Err(format!("stream cut short: {body:?}")),
                            Err(e) => Err(e),
                        }
                    }
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        0
                    }
                };
            }
        }));
    }

    // Change the config every 100 ms for 3 s while requests are in flight: swap the
    // route between providers and add aliases. Reloads coalesce bursts (200 ms), so
    // about every other change is served.
    let mut versions = vec![version(&proxy)];
    for round in 0..30 {
        let (provider, alias) = if round % 2 == 0 {
            ("b", format!("m-b-{round}"))
        } else {
            ("a", format!("m-a-{round}"))
        };
        let route = route_yaml("r", &["m", &alias], provider, "m", "");
        manifests.write("route.yaml", &route);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = version(&proxy);
        if versions.last() != Some(&now) {
            versions.push(now);
        }
    }
    // The last change applies too.
    let last = version(&proxy);
    wait_for_alias(&proxy, "m-a-29").await;
    if version(&proxy) != last {
        versions.push(version(&proxy));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load ran: {} requests",
        ok.load(Ordering::Relaxed)
    );
    assert!(
        a.hits.load(Ordering::SeqCst) > 0 && b.hits.load(Ordering::SeqCst) > 0,
        "both configs served"
    );
    // Reloads kept applying during the churn (how many depends on the machine's load).
    assert!(versions.len() >= 3, "served versions: {versions:?}");
    Arc::try_unwrap(proxy).unwrap().shutdown().await;
}

#[tokio::test]
async fn a_stream_in_flight_keeps_its_config_across_a_reload() {
    let manifests = Manifests::new();
    manifests
        .write("echo.yaml", &echo_provider("e"))
        .write("route.yaml", &route_yaml("r", &["slow"], "e", "echo", ""))
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    let old = version(&proxy);

    let response = post(&proxy, "/v1/chat/completions", chat("slow", true)).await;
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    // Remove the route the stream is using.
    manifests.write("route.yaml", &route_yaml("r", &["other"], "e", "echo", ""));
    wait_for_new_version(&proxy, &old).await;
    let mut rest = Vec::new();
    while let Some(piece) = stream.next().await {
        rest.extend_from_slice(&piece.unwrap());
    }
    assert!(
        rest.ends_with(b"data: [DONE]\n\n"),
        "the stream finished under its old config"
    );
    assert_error(
        post(&proxy, "/v1/chat/completions", chat("slow", false)).await,
        404,
        "model_not_found",
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_file_that_does_not_parse_keeps_the_serving_config() {
    let manifests = Manifests::new();
    manifests
        .write("echo.yaml", &echo_provider("e"))
        .write("route.yaml", &route_yaml("r", &["m"], "e", "echo", ""))
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    let serving = version(&proxy);
    assert_eq!(refused_reloads(&proxy).await, 0.0);

    manifests.write("route.yaml", "apiVersion: switchboard.dev/v1alpha1\nkind: AIRoute\nmetadata: {name: r}\nspec:\n  models: [m, new]\n  backends: [{provider: e, model: echo, weight: heavy}]\n");
    wait_for_refusals(&proxy, 1.0).await;
    assert_eq!(version(&proxy), serving);
    assert_eq!(
        post(&proxy, "/v1/chat/completions", chat("m", false))
            .await
            .status(),
        StatusCode::OK
    );

    manifests.write("route.yaml", "{not: yaml: at all");
    wait_for_refusals(&proxy, 2.0).await;
    assert_eq!(version(&proxy), serving);
    let samples = scrape(&proxy).await;
    let reloads = |result| {
        metric(
            &samples,
            "switchboard_config_reloads_total",
            &[("result", result)],
        )
    };
    assert!(reloads("refused") >= 2.0, "refused reloads are counted");
    assert_eq!(reloads("applied"), 1.0);
    assert_eq!(
        metric(
            &samples,
            "switchboard_config_info",
            &[("version", &serving)]
        ),
        1.0
    );

    // Fixing the file applies the change.
    manifests.write(
        "route.yaml",
        &route_yaml("r", &["m", "new"], "e", "echo", ""),
    );
    wait_for_new_version(&proxy, &serving).await;
    let samples = scrape(&proxy).await;
    // Only the version served is labelled.
    assert_absent(
        &samples,
        "switchboard_config_info",
        &[("version", &serving)],
    );
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.name == "switchboard_config_info")
            .count(),
        1,
        "one version labelled"
    );
    assert_eq!(
        metric(
            &samples,
            "switchboard_config_info",
            &[("version", &version(&proxy))]
        ),
        1.0
    );
    assert_eq!(
        post(&proxy, "/v1/chat/completions", chat("new", false))
            .await
            .status(),
        StatusCode::OK
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_would_reject_a_serving_object_is_refused() {
    let manifests = Manifests::new();
    manifests
        .write("echo.yaml", &echo_provider("e"))
        .write("route.yaml", &route_yaml("r", &["m"], "e", "echo", ""))
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    let serving = version(&proxy);

    // Parses, but the route now names a provider that does not exist.
    assert_eq!(refused_reloads(&proxy).await, 0.0);
    manifests.write(
        "route.yaml",
        &route_yaml("r", &["m"], "missing", "echo", ""),
    );
    wait_for_refusals(&proxy, 1.0).await;
    assert_eq!(version(&proxy), serving);
    assert_eq!(
        metric(
            &scrape(&proxy).await,
            "switchboard_config_reloads_total",
            &[("result", "applied")]
        ),
        1.0,
        "nothing applied"
    );
    assert_eq!(
        post(&proxy, "/v1/chat/completions", chat("m", false))
            .await
            .status(),
        StatusCode::OK
    );

    // A new object that never worked is left out, and does not block other changes.
    manifests.write(
        "route.yaml",
        &route_yaml("r", &["m", "m2"], "e", "echo", ""),
    );
    manifests.write(
        "broken.yaml",
        &route_yaml("broken", &["b"], "missing", "echo", ""),
    );
    wait_for_new_version(&proxy, &serving).await;
    assert_eq!(
        post(&proxy, "/v1/chat/completions", chat("m2", false))
            .await
            .status(),
        StatusCode::OK
    );
    assert_error(
        post(&proxy, "/v1/chat/completions", chat("b", false)).await,
        404,
        "model_not_found",
    )
    .await;
    proxy.shutdown().await;
}

/// A config caught while being replaced: a file truncated to nothing, then every file
/// gone. Both are refused like a broken file and the serving config keeps answering;
/// `--allow-empty-config` serves an empty directory on purpose.
#[tokio::test]
async fn an_emptied_file_or_directory_keeps_the_serving_config() {
    let manifests = Manifests::new();
    manifests
        .write("echo.yaml", &echo_provider("e"))
        .write("route.yaml", &route_yaml("r", &["m"], "e", "echo", ""))
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    let serving = version(&proxy);

    manifests.write("consumer.yaml", "");
    wait_for_refusals(&proxy, 1.0).await;
    assert_eq!(version(&proxy), serving);
    let ok = || async {
        post(&proxy, "/v1/chat/completions", chat("m", false))
            .await
            .status()
    };
    assert_eq!(ok().await, StatusCode::OK, "the consumer's key still works");

    for file in ["echo.yaml", "route.yaml", "consumer.yaml"] {
        std::fs::remove_file(manifests.path().join(file)).unwrap();
    }
    wait_for_refusals(&proxy, 2.0).await;
    assert_eq!(version(&proxy), serving);
    assert_eq!(ok().await, StatusCode::OK);
    drop(proxy);

    // Starting on an empty directory fails, unless asked for.
    let empty = Manifests::new();
    let settings = switchboard_proxy::Settings::for_manifests(empty.path());
    let Err(error) = switchboard_proxy::start(settings).await else {
        panic!("an empty directory is refused");
    };
    assert!(
        format!("{error:#}").contains("--allow-empty-config"),
        "{error:#}"
    );
    let mut settings = switchboard_proxy::Settings::for_manifests(empty.path());
    settings.allow_empty_config = true;
    let proxy = switchboard_proxy::start(settings).await.expect("allowed");
    assert_eq!(ok_with(&proxy).await, StatusCode::UNAUTHORIZED);
}

async fn ok_with(proxy: &Proxy) -> StatusCode {
    post(proxy, "/v1/chat/completions", chat("m", false))
        .await
        .status()
}
