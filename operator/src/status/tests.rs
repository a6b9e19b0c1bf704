//! The status writer against kube's mocked client (tower-test): which API calls it makes
//! for a given store state, in the style of kube-rs's controller-rs example.

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use switchboard_api::v1alpha1::{AIRoute, AIRouteSpec};
use tower_test::mock::{self, Handle};

use super::*;
use crate::proxies::ProxyReport;

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn route(status: Option<ObjectStatus>) -> AIRoute {
    let mut route = AIRoute::new(
        "chat",
        AIRouteSpec {
            models: vec!["m".into()],
            headers: Vec::new(),
            backends: Vec::new(),
            timeouts: None,
            retry: None,
            strategy: None,
            circuit_breaker: None,
            cache: None,
            allowed_consumers: None,
        },
    );
    route.metadata.namespace = Some("default".into());
    route.metadata.generation = Some(3);
    route.metadata.uid = Some("uid-1".into());
    route.status = status;
    route
}

fn key() -> ObjectKey {
    ObjectKey::new(ObjectKind::AIRoute, "default", "chat")
}

/// `Accepted` as compile gives it.
fn compiled(accepted: bool) -> ObjectStatus {
    let (status, reason, message) = if accepted {
        (ConditionStatus::True, "Accepted", "")
    } else {
        (
            ConditionStatus::False,
            "NoValidBackends",
            "spec.backends: none resolved",
        )
    };
    ObjectStatus {
        observed_generation: Some(3),
        conditions: vec![Condition::new(
            types::ACCEPTED,
            status,
            reason,
            message,
            Some(3),
        )],
    }
}

fn decided(accepted: bool) -> Decided {
    Decided {
        statuses: BTreeMap::from([(key(), compiled(accepted))]),
        programmable: if accepted {
            BTreeSet::from([key()])
        } else {
            BTreeSet::new()
        },
        version: "sha256:v2".into(),
        ..Decided::default()
    }
}

fn proxy(id: &str, version: &str) -> ProxyReport {
    ProxyReport {
        id: id.into(),
        version: version.into(),
        address: "127.0.0.1:1".into(),
        replica: "r".into(),
        connected_since: 1,
    }
}

/// A writer over a store holding `object`, and the mocked API server.
fn writer(object: AIRoute) -> (StatusWriter, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut routes: Writer<AIRoute> = Writer::default();
    routes.apply_watcher_event(&watcher::Event::Apply(object));
    let stores = Stores {
        providers: Vec::new(),
        routes: vec![routes.as_reader()],
        consumers: Vec::new(),
        quotas: Vec::new(),
        secrets: crate::watch::SecretStores::default(),
        namespaces: Vec::new(),
    };
    let recorder = Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "switchboard-operator".into(),
            instance: None,
        },
    );
    let metrics = Arc::new(Metrics::new().unwrap());
    (StatusWriter::new(client, stores, recorder, metrics), handle)
}

/// Answers the next request with `body` echoed back; returns method, path and body.
async fn expect_call(handle: &mut ApiHandle) -> (String, String, serde_json::Value) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("the writer made no API call")
        .expect("the client is gone");
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut answer = body.clone();
    // The events API returns the Event; the status API the object: echo is close enough.
    answer["metadata"]["name"] = "chat".into();
    send.send_response(Response::new(Body::from(
        serde_json::to_vec(&answer).unwrap(),
    )));
    (method, path, body)
}

#[tokio::test]
async fn patches_status_with_programmed_when_it_changed() {
    let (writer, mut api) = writer(route(None));
    let proxies = [proxy("p1", "sha256:v2"), proxy("p2", "sha256:v2")];
    let decided = decided(true);
    let write = tokio::spawn(async move {
        writer.write_all(&decided, &proxies).await;
        writer
    });
    let (method, path, body) = expect_call(&mut api).await;
    assert_eq!(method, "PATCH");
    assert_eq!(
        path,
        "/apis/switchboard.dev/v1alpha1/namespaces/default/airoutes/chat/status"
    );
    let conditions = body["status"]["conditions"].as_array().unwrap();
    let programmed = conditions
        .iter()
        .find(|c| c["type"] == "Programmed")
        .unwrap();
    assert_eq!(programmed["status"], "True");
    assert_eq!(programmed["reason"], "Programmed");
    assert_eq!(programmed["observedGeneration"], 3);
    assert!(programmed["lastTransitionTime"].is_string());
    let writer = write.await.unwrap();

    // The same decision again (the store has not caught up yet): no second write.
    let again = decided_for_test();
    tokio::time::timeout(
        Duration::from_secs(2),
        writer.write_all(
            &again,
            &[proxy("p1", "sha256:v2"), proxy("p2", "sha256:v2")],
        ),
    )
    .await
    .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), api.next_request())
            .await
            .is_err(),
        "no call expected"
    );
}

fn decided_for_test() -> Decided {
    decided(true)
}

#[tokio::test]
async fn writes_nothing_when_the_stored_status_already_matches() {
    let proxies = [proxy("p1", "sha256:v2")];
    let desired = desired_status(&key(), &compiled(true), &decided(true), &proxies);
    let stored = stamp_transitions(desired, &ObjectStatus::default());
    let (writer, mut api) = writer(route(Some(stored)));
    writer.write_all(&decided(true), &proxies).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), api.next_request())
            .await
            .is_err(),
        "no call expected"
    );
}

#[tokio::test]
async fn a_new_failure_is_patched_and_announced_with_a_warning_event() {
    let (writer, mut api) = writer(route(None));
    let decided = decided(false);
    let write = tokio::spawn(async move { writer.write_all(&decided, &[]).await });
    let (method, _, body) = expect_call(&mut api).await;
    assert_eq!(method, "PATCH");
    let accepted = &body["status"]["conditions"][0];
    assert_eq!(accepted["reason"], "NoValidBackends");
    let (method, path, event) = expect_call(&mut api).await;
    assert_eq!(method, "POST");
    assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/default/events");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "NoValidBackends");
    assert_eq!(event["regarding"]["kind"], "AIRoute");
    assert_eq!(event["regarding"]["name"], "chat");
    write.await.unwrap();
}

#[test]
fn programmed_follows_the_versions_connected_proxies_serve() {
    let reason = |proxies: &[ProxyReport], accepted: bool| {
        let status = desired_status(&key(), &compiled(accepted), &decided(accepted), proxies);
        let c = status.condition(types::PROGRAMMED).unwrap().clone();
        (c.status, c.reason, c.message)
    };
    let (status, r, _) = reason(&[proxy("a", "sha256:v2"), proxy("b", "sha256:v2")], true);
    assert_eq!(
        (status, r.as_str()),
        (ConditionStatus::True, programmed::PROGRAMMED)
    );
    let (status, r, message) = reason(&[proxy("a", "sha256:v2"), proxy("b", "sha256:v1")], true);
    assert_eq!(
        (status, r.as_str()),
        (ConditionStatus::False, programmed::PENDING)
    );
    assert!(message.starts_with("1 of 2"), "{message}");
    let (status, r, _) = reason(&[], true);
    assert_eq!(
        (status, r.as_str()),
        (ConditionStatus::False, programmed::NO_PROXIES)
    );
    let (status, r, _) = reason(&[proxy("a", "sha256:v2")], false);
    assert_eq!(
        (status, r.as_str()),
        (ConditionStatus::False, programmed::NOT_ACCEPTED)
    );
}

#[test]
fn transition_times_hold_while_a_condition_keeps_its_status() {
    let old = Time(Timestamp::from_second(1_700_000_000).unwrap());
    let mut current = compiled(true);
    current.conditions[0].last_transition_time = Some(old.clone());
    // Same status, new message: the time stays, and `same` sees the difference.
    let mut desired = compiled(true);
    desired.conditions[0].message = "different".into();
    assert!(!same(&current, &desired));
    let stamped = stamp_transitions(desired, &current);
    assert_eq!(
        stamped.conditions[0].last_transition_time,
        Some(old.clone())
    );
    // A flip gets a new time.
    let stamped = stamp_transitions(compiled(false), &current);
    assert_ne!(stamped.conditions[0].last_transition_time, Some(old));
    // Only times differ: the same.
    let mut timed = compiled(true);
    timed.conditions[0].last_transition_time = Some(Time(Timestamp::now()));
    assert!(same(&compiled(true), &timed));
}
