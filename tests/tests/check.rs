//! `--check`: validate manifests, print every object's status, exit non-zero on problems.

use std::time::Duration;

use switchboard_e2e::{
    TempDir, consumer, echo_provider, proxy_bin, route, run_command, workspace_root,
};

async fn check(dir: &std::path::Path) -> (bool, String) {
    let mut command = tokio::process::Command::new(proxy_bin());
    command
        .arg("--manifests")
        .arg(dir)
        .arg("--check")
        .env_remove("RUST_LOG");
    let output = run_command(command, Duration::from_secs(60)).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn check_accepts_the_quickstart() {
    let (ok, output) = check(&workspace_root().join("examples/quickstart")).await;
    assert!(ok, "--check failed on examples/quickstart:\n{output}");
    for object in [
        "AIProvider default/echo",
        "AIRoute default/echo",
        "AIConsumer default/quickstart",
    ] {
        assert!(
            output
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(object)),
            "no ok line for {object}:\n{output}"
        );
    }
    assert!(output.contains("config version"), "{output}");
}

#[tokio::test]
async fn check_rejects_a_route_to_a_missing_provider() {
    let dir = TempDir::new("check");
    dir.write("provider.yaml", &echo_provider("echo", "0ms", "0ms"));
    dir.write(
        "route.yaml",
        &route("lost", &["lost"], "no-such-provider", "echo-1"),
    );
    dir.write("consumer.yaml", &consumer("app", "sk-e2e-check-key-000001"));
    let (ok, output) = check(dir.path()).await;
    assert!(
        !ok,
        "--check passed a route to a missing provider:\n{output}"
    );
    let line = output
        .lines()
        .find(|l| l.contains("ProviderNotFound"))
        .unwrap_or_else(|| panic!("no ProviderNotFound in:\n{output}"));
    assert!(line.contains("AIRoute default/lost"), "{line}");
    assert!(line.contains("no-such-provider"), "{line}");
}

#[tokio::test]
async fn check_reports_unparsable_manifests() {
    let dir = TempDir::new("check-broken");
    dir.write("provider.yaml", &echo_provider("echo", "0ms", "0ms"));
    dir.write(
        "route.yaml",
        &(route("chat", &["chat"], "echo", "echo-1") + "      weight: \"abc\"\n"),
    );
    let (ok, output) = check(dir.path()).await;
    assert!(!ok, "--check passed a broken manifest:\n{output}");
    let line = output
        .lines()
        .find(|l| l.contains("route.yaml"))
        .unwrap_or_else(|| panic!("route.yaml not named in:\n{output}"));
    assert!(line.contains("AIRoute default/chat"), "{line}");
    assert!(line.contains("spec.backends[0].weight"), "{line}");
}
