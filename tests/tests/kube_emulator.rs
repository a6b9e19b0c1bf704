//! Tests of the `KubeEmulator` test fixture itself: kube-rs clients, watchers,
//! the event recorder and `kubectl` against it. Every test is bounded by a timeout.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use switchboard_api::v1alpha1::AIRoute;
use switchboard_e2e::kube_emulator::{KubeEmulator, RequestRecord};
use switchboard_e2e::{TempDir, http_client, workspace_root};

/// Upper bound for a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Upper bound for one condition to become true.
const CONVERGE_WITHIN: Duration = Duration::from_secs(20);

const ROUTES: &str = "switchboard.dev/v1alpha1";

async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test did not finish in time");
}

/// Polls `condition` until it holds; panics naming `what` after `CONVERGE_WITHIN`.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + CONVERGE_WITHIN;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn route_json(name: &str, models: &[&str]) -> Value {
    json!({
        "apiVersion": ROUTES,
        "kind": "AIRoute",
        "metadata": {"name": name, "namespace": "default", "labels": {"team": "a"}},
        "spec": {"models": models, "backends": [{"provider": "openai", "model": "gpt-4o"}]},
    })
}

fn api_status(error: kube::Error) -> kube::core::Status {
    match error {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Starts a reflector over `api`, driven by a background task; returns its store.
async fn reflect(api: Api<AIRoute>) -> (Store<AIRoute>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    let task = tokio::spawn(stream.for_each(|_| std::future::ready(())));
    tokio::time::timeout(CONVERGE_WITHIN, reader.wait_until_ready())
        .await
        .expect("the reflector became ready in time")
        .expect("the reflector's writer is alive");
    (reader, task)
}

fn models_in(store: &Store<AIRoute>, name: &str) -> Option<Vec<String>> {
    store
        .get(&ObjectRef::new(name).within("default"))
        .map(|route| route.spec.models.clone())
}

fn count(requests: &[RequestRecord], method: &str, path_end: &str, watch: bool) -> usize {
    requests
        .iter()
        .filter(|r| r.method == method && r.path.ends_with(path_end) && r.is_watch() == watch)
        .count()
}

#[tokio::test]
async fn kube_rs_round_trip() {
    bounded(async {
        let emulator = KubeEmulator::start().await;
        let client = emulator.kube_client();

        // A Secret: stringData is folded into base64 data.
        let secrets: Api<Secret> = Api::default_namespaced(client.clone());
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": "openai-key"}, "stringData": {"key": "sk-test"}}))
                .unwrap();
        let created = secrets.create(&PostParams::default(), &secret).await.unwrap();
        let data = created.data.expect("data");
        assert_eq!(data["key"], ByteString(b"sk-test".to_vec()));
        assert!(created.string_data.is_none());
        assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
        let again = secrets.create(&PostParams::default(), &secret).await.unwrap_err();
        assert_eq!(api_status(again).code, 409);

        // An AIRoute: create ignores status, get and list find it.
        let routes: Api<AIRoute> = Api::default_namespaced(client.clone());
        let mut with_status = route_json("chat", &["gpt"]);
        with_status["status"] = json!({"conditions": [], "observedGeneration": 7});
        let created = routes
            .create(&PostParams::default(), &serde_json::from_value(with_status).unwrap())
            .await
            .unwrap();
        assert_eq!(created.metadata.generation, Some(1));
        assert!(created.status.is_none(), "status is a subresource: {:?}", created.status);
        let fetched = routes.get("chat").await.unwrap();
        assert_eq!(fetched.spec.models, ["gpt"]);
        let listed = routes.list(&ListParams::default()).await.unwrap();
        assert_eq!(listed.items.len(), 1);
        let list_rv: u64 = listed.metadata.resource_version.unwrap().parse().unwrap();
        assert!(list_rv >= 2, "the list's resourceVersion is the global one: {list_rv}");
        let none = routes.list(&ListParams::default().labels("team=b")).await.unwrap();
        assert!(none.items.is_empty());
        let by_name = routes
            .list(&ListParams::default().labels("team").fields("metadata.name=chat"))
            .await
            .unwrap();
        assert_eq!(by_name.items.len(), 1);
        let all: Api<AIRoute> = Api::all(client.clone());
        assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 1);

        // Metadata changes keep the generation; spec changes bump it.
        let labelled = routes
            .patch("chat", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"tier": "1"}}})))
            .await
            .unwrap();
        assert_eq!(labelled.metadata.generation, Some(1));
        assert_eq!(labelled.metadata.labels.unwrap()["tier"], "1");
        let patched = routes
            .patch(
                "chat",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"models": ["gpt", "fast"]}, "status": {"observedGeneration": 9}})),
            )
            .await
            .unwrap();
        assert_eq!(patched.metadata.generation, Some(2));
        assert_eq!(patched.spec.models, ["gpt", "fast"]);
        assert!(patched.status.is_none(), "the main resource ignores status");

        // patch_status changes the status only.
        let status = json!({"status": {
            "observedGeneration": 2,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}],
        }, "spec": {"models": ["ignored"]}});
        let with_status = routes
            .patch_status("chat", &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
        assert_eq!(with_status.metadata.generation, Some(2));
        assert_eq!(with_status.spec.models, ["gpt", "fast"]);
        let conditions = &with_status.status.as_ref().unwrap().conditions;
        assert_eq!(conditions[0].type_, "Accepted");
        assert_eq!(emulator.get(ROUTES, "AIRoute", Some("default"), "chat").unwrap()["status"]["observedGeneration"], 2);

        // JSON patch and server-side apply.
        let json_patched = routes
            .patch(
                "chat",
                &PatchParams::default(),
                &Patch::Json::<()>(serde_json::from_value(json!([
                    {"op": "test", "path": "/spec/models/0", "value": "gpt"},
                    {"op": "add", "path": "/spec/models/-", "value": "smart"},
                ])).unwrap()),
            )
            .await
            .unwrap();
        assert_eq!(json_patched.spec.models, ["gpt", "fast", "smart"]);
        let applied = routes
            .patch("applied", &PatchParams::apply("emulator-test"), &Patch::Apply(route_json("applied", &["x"])))
            .await
            .unwrap();
        assert_eq!(applied.spec.models, ["x"]);

        // Optimistic concurrency: a stale resourceVersion is a 409.
        let mut stale = fetched.clone();
        stale.spec.models = vec!["stale".into()];
        let conflict = routes.replace("chat", &PostParams::default(), &stale).await.unwrap_err();
        let conflict = api_status(conflict);
        assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
        let mut current = routes.get("chat").await.unwrap();
        current.spec.models = vec!["fresh".into()];
        let replaced = routes.replace("chat", &PostParams::default(), &current).await.unwrap();
        assert_eq!(replaced.spec.models, ["fresh"]);
        assert_eq!(replaced.metadata.generation, Some(4));
        assert!(replaced.status.is_some(), "replace keeps the stored status");

        // Delete returns the object; then it is gone.
        routes.delete("chat", &DeleteParams::default()).await.unwrap();
        assert_eq!(api_status(routes.get("chat").await.unwrap_err()).code, 404);
        assert!(emulator.get(ROUTES, "AIRoute", Some("default"), "chat").is_none());
        let missing = routes.delete("chat", &DeleteParams::default()).await.unwrap_err();
        assert_eq!(api_status(missing).reason, "NotFound");
        assert_eq!(emulator.list(ROUTES, "AIRoute").len(), 1);
    })
    .await;
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    bounded(async {
        let emulator = KubeEmulator::start().await;
        let routes: Api<AIRoute> = Api::default_namespaced(emulator.kube_client());
        let mut held = route_json("held", &["m"]);
        held["metadata"]["finalizers"] = json!(["switchboard.dev/cleanup"]);
        routes
            .create(
                &PostParams::default(),
                &serde_json::from_value(held).unwrap(),
            )
            .await
            .unwrap();
        routes
            .delete("held", &DeleteParams::default())
            .await
            .unwrap();
        let terminating = routes.get("held").await.unwrap();
        assert!(terminating.metadata.deletion_timestamp.is_some());
        let release = json!({"metadata": {"finalizers": null}});
        routes
            .patch("held", &PatchParams::default(), &Patch::Merge(release))
            .await
            .unwrap();
        assert_eq!(api_status(routes.get("held").await.unwrap_err()).code, 404);
    })
    .await;
}

#[tokio::test]
async fn watcher_follows_changes_and_relists_after_expiry() {
    bounded(async {
        let emulator = KubeEmulator::start().await;
        let api: Api<AIRoute> = Api::default_namespaced(emulator.kube_client());
        let (store, task) = reflect(api).await;

        emulator.apply(route_json("a", &["one"]));
        eventually("the store has a", || models_in(&store, "a").is_some()).await;
        emulator.apply(route_json("a", &["one", "two"]));
        eventually("the store sees a modified", || {
            models_in(&store, "a") == Some(vec!["one".into(), "two".into()])
        })
        .await;
        assert!(emulator.delete(ROUTES, "AIRoute", Some("default"), "a"));
        eventually("the store drops a", || models_in(&store, "a").is_none()).await;

        let lists_before = count(&emulator.requests(), "GET", "/airoutes", false);
        emulator.expire_watches();
        emulator.apply(route_json("b", &["created-while-expired"]));
        eventually("the store has b", || models_in(&store, "b").is_some()).await;
        eventually("the watcher lists again", || {
            count(&emulator.requests(), "GET", "/airoutes", false) > lists_before
        })
        .await;
        emulator.apply(route_json("c", &["after"]));
        eventually("the new watch delivers c", || {
            models_in(&store, "c").is_some()
        })
        .await;
        assert_eq!(store.state().len(), 2);
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn streaming_list_watcher_sees_existing_objects() {
    bounded(async {
        let emulator = KubeEmulator::start().await;
        emulator.apply(route_json("existing", &["m"]));
        let api: Api<AIRoute> = Api::default_namespaced(emulator.kube_client());
        let (reader, writer) = reflector::store();
        let config = watcher::Config::default().streaming_lists();
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
        let task = tokio::spawn(stream.for_each(|_| std::future::ready(())));
        eventually("the streamed list has existing", || {
            models_in(&reader, "existing").is_some()
        })
        .await;
        emulator.apply(route_json("new", &["m"]));
        eventually("the watch has new", || models_in(&reader, "new").is_some()).await;
        let requests = emulator.requests();
        assert!(
            requests.iter().all(RequestRecord::is_watch),
            "a streaming list does not list: {requests:?}"
        );
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn recorder_publishes_events() {
    bounded(async {
        let emulator = KubeEmulator::start().await;
        let reporter = Reporter {
            controller: "switchboard-test".into(),
            instance: Some("test-0".into()),
        };
        let recorder = Recorder::new(emulator.kube_client(), reporter);
        let reference = ObjectReference {
            api_version: Some(ROUTES.into()),
            kind: Some("AIRoute".into()),
            name: Some("chat".into()),
            namespace: Some("default".into()),
            uid: Some("1234".into()),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "ProviderNotFound".into(),
            note: Some("AIProvider openai does not exist".into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        recorder.publish(&event, &reference).await.unwrap();
        recorder.publish(&event, &reference).await.unwrap();

        let events = emulator.list("events.k8s.io/v1", "Event");
        assert_eq!(events.len(), 1, "{events:#?}");
        let stored = &events[0];
        assert_eq!(stored["reason"], "ProviderNotFound");
        assert_eq!(stored["regarding"]["name"], "chat");
        assert_eq!(
            stored["series"]["count"], 2,
            "the second publish patched the series"
        );
        let requests = emulator.requests();
        assert_eq!(
            count(&requests, "POST", "/namespaces/default/events", false),
            1
        );
        let patch = requests
            .iter()
            .find(|r| r.method == "PATCH")
            .expect("a PATCH");
        assert_eq!(
            patch.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
    })
    .await;
}

#[tokio::test]
async fn unavailable_server_answers_503_and_watchers_recover() {
    bounded(async {
        let emulator = KubeEmulator::start().await;
        let api: Api<AIRoute> = Api::default_namespaced(emulator.kube_client());
        let (store, task) = reflect(api.clone()).await;

        emulator.set_unavailable(true);
        // kube-rs retries 503s by default; without that the error shows at once.
        let mut config = emulator.kube_config();
        config.default_retry = false;
        let no_retry: Api<AIRoute> =
            Api::default_namespaced(kube::Client::try_from(config).unwrap());
        let error = api_status(no_retry.get("x").await.unwrap_err());
        assert_eq!(
            (error.code, error.reason.as_str()),
            (503, "ServiceUnavailable")
        );
        let raw = http_client()
            .get(format!(
                "{}/api/v1/namespaces/default/secrets",
                emulator.url()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), 503);
        assert_eq!(raw.json::<Value>().await.unwrap()["kind"], "Status");

        // Changed while the watcher could not see it.
        emulator.apply(route_json("x", &["during-outage"]));
        let watches = count(&emulator.requests(), "GET", "/airoutes", true);
        eventually("the watcher retries", || {
            count(&emulator.requests(), "GET", "/airoutes", true) > watches
        })
        .await;
        assert!(models_in(&store, "x").is_none());

        emulator.set_unavailable(false);
        eventually("the watcher recovers and sees x", || {
            models_in(&store, "x").is_some()
        })
        .await;
        emulator.apply(route_json("y", &["after-outage"]));
        eventually("the watcher sees y", || models_in(&store, "y").is_some()).await;
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn http_errors_tables_and_watch_history() {
    bounded(async {
        let emulator = KubeEmulator::start().await;
        let http = http_client();
        let base = emulator.url();
        let routes = format!("{base}/apis/switchboard.dev/v1alpha1/namespaces/default/airoutes");
        let send = |request: reqwest::RequestBuilder| async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)))
        };

        let (code, body) = send(http.post(&routes).body("{not json")).await;
        assert_eq!((code, body["kind"].as_str(), body["reason"].as_str()), (400, Some("Status"), Some("BadRequest")));
        let (code, _) = send(http.get(format!("{base}/apis/nope/v1/things"))).await;
        assert_eq!(code, 404);
        let (code, body) = send(http.post(&routes).json(&route_json("Not_A_Name", &["m"]))).await;
        assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));
        let mut elsewhere = route_json("elsewhere", &["m"]);
        elsewhere["metadata"]["namespace"] = json!("other");
        assert_eq!(send(http.post(&routes).json(&elsewhere)).await.0, 400);
        assert_eq!(send(http.post(&routes).json(&route_json("chat", &["m"]))).await.0, 201);
        let patch = http.patch(format!("{routes}/chat")).body("{}");
        let (code, _) = send(patch.try_clone().unwrap().header("content-type", "text/plain")).await;
        assert_eq!(code, 415);
        let (code, _) = send(patch.header("content-type", "application/apply-patch+yaml")).await;
        assert_eq!(code, 400, "server-side apply needs a fieldManager");

        // Discovery.
        let (_, resources) = send(http.get(format!("{base}/apis/switchboard.dev/v1alpha1"))).await;
        let names: Vec<&str> = resources["resources"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
        assert!(names.contains(&"airoutes") && names.contains(&"airoutes/status"), "{names:?}");

        // Tables evaluate the CRD's printer columns.
        let status = json!({"status": {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}]}});
        let merge = http.patch(format!("{routes}/chat/status")).header("content-type", "application/merge-patch+json");
        assert_eq!(send(merge.json(&status)).await.0, 200);
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
        let (_, table) = send(http.get(&routes).header("accept", accept)).await;
        assert_eq!(table["kind"], "Table");
        let columns: Vec<&str> = table["columnDefinitions"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(columns, ["Name", "Models", "Accepted", "Refs", "Reason", "Programmed", "Age"]);
        let cells = &table["rows"][0]["cells"];
        assert_eq!(cells[0], "chat");
        assert_eq!(cells[1], r#"["m"]"#);
        assert_eq!(cells[2], "True");
        assert_eq!(cells[3], Value::Null);

        // A watch replays history after its resourceVersion; expired history is a 410.
        let (_, list) = send(http.get(&routes)).await;
        let list_rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        emulator.apply(route_json("later", &["m"]));
        let watch = |rv: String| http.get(format!("{routes}?watch=true&resourceVersion={rv}&timeoutSeconds=1"));
        let replay = watch(list_rv.clone()).send().await.unwrap();
        assert_eq!(replay.status(), 200);
        let lines = replay.text().await.unwrap();
        let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!((first["type"].as_str(), first["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("later")));
        emulator.expire_watches();
        let (_, expired) = send(watch(list_rv)).await;
        assert_eq!((expired["type"].as_str(), expired["object"]["code"].as_i64()), (Some("ERROR"), Some(410)));
        assert_eq!(expired["object"]["reason"], "Expired");
    })
    .await;
}

// === kubectl ===

fn kubectl_binary() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("kubectl"))
        .find(|path| path.is_file())
        .expect("kubectl is not on PATH: install kubectl (v1.30 or later) to run this test")
}

/// Runs kubectl against the emulator's kubeconfig, with its own discovery cache.
async fn kubectl(dir: &Path, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(kubectl_binary());
    command
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--request-timeout=10s")
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy");
    let described = format!("kubectl {}", args.join(" "));
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .unwrap_or_else(|_| panic!("{described} did not finish in time"))
    .expect("the kubectl thread")
    .unwrap_or_else(|e| panic!("cannot run {described}: {e}"));
    assert!(
        output.status.success(),
        "{described} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test]
async fn kubectl_apply_get_delete() {
    bounded(async {
        let emulator = KubeEmulator::start().await;
        let dir = TempDir::new("kube-emulator-kubectl");
        emulator
            .write_kubeconfig(&dir.path().join("kubeconfig"))
            .unwrap();
        let quickstart = workspace_root().join("examples/quickstart");
        let quickstart = quickstart.to_str().unwrap();

        let applied = kubectl(dir.path(), &["apply", "-f", quickstart]).await;
        let applied = String::from_utf8_lossy(&applied.stdout);
        assert!(
            applied.contains("airoute.switchboard.dev/echo created"),
            "{applied}"
        );
        let key = emulator
            .get("v1", "Secret", Some("default"), "quickstart-key")
            .expect("the Secret");
        assert_eq!(key["data"]["key"], "c2stc3dpdGNoYm9hcmQtcXVpY2tzdGFydA==");
        assert!(key.get("stringData").is_none());

        let table = kubectl(dir.path(), &["get", "airoutes", "-A"]).await;
        let table = String::from_utf8_lossy(&table.stdout);
        assert!(
            table.contains("NAMESPACE") && table.contains("MODELS"),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("default") && l.contains("echo")),
            "{table}"
        );

        let yaml = kubectl(dir.path(), &["get", "aiproviders", "-o", "yaml"]).await;
        let yaml: Value = serde_yaml_ng::from_slice(&yaml.stdout).expect("kubectl printed YAML");
        assert_eq!(yaml["items"][0]["spec"]["type"], "echo");
        assert_eq!(yaml["items"][0]["metadata"]["name"], "echo");

        // Applying again leaves the route alone (the Secret gets a strategic merge patch,
        // as from a real server, because its stringData became data). Short names and
        // categories resolve.
        let again = kubectl(dir.path(), &["apply", "-f", quickstart]).await;
        let again = String::from_utf8_lossy(&again.stdout);
        assert!(
            again.contains("airoute.switchboard.dev/echo unchanged"),
            "{again}"
        );
        let short = kubectl(dir.path(), &["get", "aic", "-o", "name"]).await;
        assert_eq!(
            String::from_utf8_lossy(&short.stdout).trim(),
            "aiconsumer.switchboard.dev/quickstart"
        );
        let category = kubectl(dir.path(), &["get", "switchboard", "-o", "name"]).await;
        assert_eq!(String::from_utf8_lossy(&category.stdout).lines().count(), 3);

        let deleted = kubectl(dir.path(), &["delete", "-f", quickstart]).await;
        let deleted = String::from_utf8_lossy(&deleted.stdout);
        assert!(deleted.contains("deleted"), "{deleted}");
        assert!(emulator.list(ROUTES, "AIRoute").is_empty());
        assert!(emulator.list("v1", "Secret").is_empty());

        // Server-side apply goes through PATCH application/apply-patch+yaml.
        let applied = kubectl(dir.path(), &["apply", "--server-side", "-f", quickstart]).await;
        assert!(String::from_utf8_lossy(&applied.stdout).contains("serverside-applied"));
        assert_eq!(emulator.list(ROUTES, "AIRoute").len(), 1);
        let apply_patches = emulator.requests();
        let apply_patches = apply_patches.iter().filter(|r| {
            r.method == "PATCH" && r.query_param("fieldManager").as_deref() == Some("kubectl")
        });
        assert_eq!(apply_patches.count(), 4);
    })
    .await;
}
