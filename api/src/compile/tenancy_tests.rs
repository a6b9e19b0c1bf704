//! Namespaces as tenant boundaries: each case that let one team in where it did not
//! belong, compiled with two or three namespaces.

use std::collections::BTreeSet;

use super::fixtures::*;
use super::{Compiled, ObjectKey, ObjectKind};
use crate::keys::QUICKSTART_KEY;
use crate::v1alpha1::condition::{reasons, types};
use crate::v1alpha1::{Condition, ConditionStatus};

/// An echo provider, its route for `models` and a probe consumer, in `namespace`.
fn team(
    builder: InputsBuilder,
    namespace: &str,
    route_name: &str,
    models: &[&str],
) -> InputsBuilder {
    builder
        .with(provider("echo").namespace(namespace).model("m"))
        .with(team_route(namespace, route_name, models))
        .probe(namespace)
}

fn team_route(namespace: &str, name: &str, models: &[&str]) -> RouteBuilder {
    route(name)
        .namespace(namespace)
        .models(models.iter().copied())
        .backend("echo", "m")
}

/// A consumer `name` in `namespace` with a key of its own.
fn member(builder: InputsBuilder, namespace: &str, name: &str) -> (InputsBuilder, ConsumerBuilder) {
    let secret_name = format!("{name}-key");
    let builder = builder.with(
        secret(&secret_name)
            .namespace(namespace)
            .string("key", &format!("sk-{namespace}-{name}-Zq8Lw2Xc9Rv4Tb7M")),
    );
    let consumer = consumer(name).namespace(namespace).key(&secret_name, "key");
    (builder, consumer)
}

fn object(kind: ObjectKind, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey::new(kind, namespace, name)
}

#[track_caller]
fn condition<'a>(compiled: &'a Compiled, key: &ObjectKey, type_: &str) -> &'a Condition {
    compiled.statuses[key].condition(type_).unwrap_or_else(|| {
        panic!(
            "{key} has no {type_} condition: {:#?}",
            compiled.statuses[key]
        )
    })
}

fn routes_of(compiled: &Compiled, namespace: &str, name: &str) -> BTreeSet<String> {
    table_of(compiled, namespace, name)
        .into_values()
        .flatten()
        .collect()
}

#[test]
fn a_consumer_reaches_only_its_own_namespaces_routes_by_default() {
    // The quickstart's consumer in `default` got an answer from team-a's route.
    let compiled = team(inputs(), "team-a", "chat", &["gpt-4o"])
        .with(provider("echo").model("m"))
        .with(team_route("default", "demo", &["demo"]))
        .probe("default")
        .compile();
    assert_eq!(
        routes_of(&compiled, "default", "probe"),
        BTreeSet::from(["default/demo".into()])
    );
    assert!(!served(&compiled, "default").contains_key("gpt-4o"));
    assert_eq!(served(&compiled, "team-a")["gpt-4o"], ["team-a/chat"]);
}

#[test]
fn a_catch_all_header_route_of_another_namespace_cannot_capture_traffic() {
    // team-b's route for the same model with a catch-all header match, offered to
    // everyone, used to take team-a's traffic (more header matches went first).
    let compiled = team(inputs(), "team-a", "chat", &["gpt-4o"])
        .with(provider("echo").namespace("team-b").model("m"))
        .with(
            team_route("team-b", "grabber", &["gpt-4o"])
                .header_regex("content-type", ".*")
                .allow_all_namespaces(),
        )
        .probe("team-b")
        .compile();
    assert_eq!(served(&compiled, "team-a")["gpt-4o"], ["team-a/chat"]);
    assert_eq!(served(&compiled, "team-b")["gpt-4o"], ["team-b/grabber"]);
    for route in [("team-a", "chat"), ("team-b", "grabber")] {
        let key = object(ObjectKind::AIRoute, route.0, route.1);
        assert!(
            compiled.statuses[&key].is_accepted(),
            "{key}: no conflict across namespaces"
        );
    }

    // Even as the platform namespace's, a route comes after a namespace's own.
    let compiled = team(inputs(), "team-a", "chat", &["gpt-4o"])
        .with(provider("echo").namespace("platform").model("m"))
        .with(
            team_route("platform", "shared", &["gpt-4o"])
                .header_regex("content-type", ".*")
                .allow_all_namespaces(),
        )
        .platform("platform")
        .compile();
    assert_eq!(
        served(&compiled, "team-a")["gpt-4o"],
        ["team-a/chat", "platform/shared"]
    );
}

#[test]
fn the_platform_namespace_offers_routes_to_the_namespaces_it_allows() {
    let world = team(inputs(), "team-a", "own", &["gpt-4o"])
        .probe("team-b")
        .with(provider("echo").namespace("platform").model("m"))
        .with(team_route("platform", "shared", &["gpt-4o"]).allow_all_namespaces())
        .with(
            team_route("platform", "gold", &["gold-model"])
                .allow_namespaces_labelled("tier", "gold"),
        )
        .with(team_route("platform", "internal", &["internal"]))
        .namespace_label("team-a", "tier", "gold");

    let compiled = world.clone().platform("platform").compile();
    assert_eq!(
        served(&compiled, "team-a")["gpt-4o"],
        ["team-a/own"],
        "the namespace's own route comes first, and the platform's with the same match \
         could never serve after it"
    );
    assert_eq!(served(&compiled, "team-a")["gold-model"], ["platform/gold"]);
    assert_eq!(served(&compiled, "team-b")["gpt-4o"], ["platform/shared"]);
    assert!(
        !served(&compiled, "team-b").contains_key("gold-model"),
        "team-b's namespace is not labelled tier=gold"
    );
    for ns in ["team-a", "team-b"] {
        assert!(
            !served(&compiled, ns).contains_key("internal"),
            "a platform route without allowedConsumers stays in its namespace"
        );
    }

    // Without a platform namespace, a grant alone does not bring a route to anyone.
    let compiled = world.compile();
    assert_eq!(served(&compiled, "team-b").len(), 0);
    assert_eq!(served(&compiled, "team-a")["gpt-4o"], ["team-a/own"]);
}

#[test]
fn another_teams_route_serves_only_consumers_it_grants_that_also_choose_it() {
    let world = team(inputs(), "team-b", "research", &["research"]);
    let world = inputs_with_objects(world, |b| {
        b.with(
            team_route("team-b", "shared-research", &["deep"])
                .allow_namespaces_labelled("kubernetes.io/metadata.name", "team-a"),
        )
    });
    let (world, chooser) = member(world, "team-a", "chooser");
    let world = world.with(chooser.allowed_route_in("team-b", "shared-research"));
    let (world, bystander) = member(world, "team-a", "bystander");
    let world = world.with(bystander);
    let (world, outsider) = member(world, "team-c", "outsider");
    let compiled = world
        .with(outsider.allowed_route_in("team-b", "shared-research"))
        .compile();

    assert_eq!(
        table_of(&compiled, "team-a", "chooser")["deep"],
        ["team-b/shared-research"]
    );
    assert!(
        routes_of(&compiled, "team-a", "bystander").is_empty(),
        "granted, but its owner did not choose the route"
    );
    assert!(routes_of(&compiled, "team-c", "outsider").is_empty());
    let refs = condition(
        &compiled,
        &object(ObjectKind::AIConsumer, "team-c", "outsider"),
        types::RESOLVED_REFS,
    );
    assert_eq!(refs.status, ConditionStatus::False);
    assert_eq!(refs.reason, reasons::REF_NOT_PERMITTED);
    assert!(
        refs.message
            .contains("does not exist or does not allow consumers of namespace \"team-c\"")
    );

    // A route that does not exist looks the same from another namespace.
    let (world, prober) = member(inputs(), "team-c", "prober");
    let compiled = world
        .with(prober.allowed_route_in("team-b", "ghost"))
        .compile();
    let refs = condition(
        &compiled,
        &object(ObjectKind::AIConsumer, "team-c", "prober"),
        types::RESOLVED_REFS,
    );
    assert_eq!(refs.reason, reasons::REF_NOT_PERMITTED);
}

/// Adds objects to a builder (keeps the test's chain readable).
fn inputs_with_objects(
    builder: InputsBuilder,
    add: impl FnOnce(InputsBuilder) -> InputsBuilder,
) -> InputsBuilder {
    add(builder)
}

#[test]
fn a_consumer_selector_narrows_a_route_in_its_own_namespace_too() {
    let world = inputs()
        .with(provider("echo").namespace("team-a").model("m"))
        .with(team_route("team-a", "gold", &["gold"]).allow_consumers_labelled("tier", "gold"));
    let (world, gold) = member(world, "team-a", "gold-app");
    let (world, basic) = member(
        world.with(gold.label("tier", "gold")),
        "team-a",
        "basic-app",
    );
    let compiled = world.with(basic.allowed_route("gold")).compile();
    assert_eq!(
        table_of(&compiled, "team-a", "gold-app")["gold"],
        ["team-a/gold"]
    );
    assert!(routes_of(&compiled, "team-a", "basic-app").is_empty());
    let refs = condition(
        &compiled,
        &object(ObjectKind::AIConsumer, "team-a", "basic-app"),
        types::RESOLVED_REFS,
    );
    assert_eq!(refs.reason, reasons::REF_NOT_PERMITTED);
    assert!(
        refs.message.contains("selector does not match"),
        "{}",
        refs.message
    );
}

#[test]
fn a_granted_route_behind_one_with_the_same_match_is_marked_shadowed() {
    let world = inputs()
        .with(provider("echo").namespace("platform").model("m"))
        .with(team_route("platform", "platform-chat", &["gpt-4o"]).allow_all_namespaces())
        .with(provider("echo").namespace("team-b").model("m"))
        .with(team_route("team-b", "b-chat", &["gpt-4o", "b-only"]).allow_all_namespaces());
    let (world, app) = member(world, "team-a", "app");
    let compiled = world
        .with(
            app.allowed_route_in("team-b", "b-chat")
                .allowed_route_in("platform", "platform-chat"),
        )
        .platform("platform")
        .compile();
    let table = table_of(&compiled, "team-a", "app");
    assert_eq!(table["gpt-4o"], ["platform/platform-chat"]);
    assert_eq!(table["b-only"], ["team-b/b-chat"]);

    let reachable = condition(
        &compiled,
        &object(ObjectKind::AIRoute, "team-b", "b-chat"),
        types::REACHABLE,
    );
    assert_eq!(reachable.status, ConditionStatus::False);
    assert_eq!(reachable.reason, reasons::SHADOWED);
    assert!(
        reachable
            .message
            .contains("\"gpt-4o\" for consumers in namespace \"team-a\"")
    );
    assert!(
        !reachable.message.contains("platform-chat"),
        "the route that comes first is not named: {}",
        reachable.message
    );
    let platform = condition(
        &compiled,
        &object(ObjectKind::AIRoute, "platform", "platform-chat"),
        types::REACHABLE,
    );
    assert_eq!(platform.status, ConditionStatus::True);
}

#[test]
fn quotas_limit_only_their_own_namespace_unless_they_are_the_platforms() {
    let (world, a) = member(inputs(), "team-a", "app");
    let (world, b) = member(world.with(a.label("tier", "free")), "team-b", "app");
    let world = world
        .with(b.label("tier", "free"))
        .with(
            quota("everyone")
                .namespace("team-b")
                .requests_per_minute(1.0),
        )
        .with(
            quota("free-tier")
                .namespace("team-b")
                .selector_label("tier", "free")
                .requests_per_minute(1.0),
        )
        .with(
            quota("cluster")
                .namespace("platform")
                .requests_per_minute(100.0),
        )
        .with(
            quota("cluster-free")
                .namespace("platform")
                .selector_label("tier", "free")
                .requests_per_minute(10.0),
        )
        .platform("platform");
    let compiled = world.compile();
    let quotas = &compiled.snapshot.quotas;
    let only_b = Some(BTreeSet::from(["team-b/app".to_string()]));
    assert_eq!(
        quotas["team-b/everyone"].consumers, only_b,
        "an empty target stays in team-b"
    );
    assert_eq!(
        quotas["team-b/free-tier"].consumers, only_b,
        "a selector stays in team-b"
    );
    assert_eq!(
        quotas["platform/cluster"].consumers, None,
        "the platform's reaches everyone"
    );
    assert_eq!(
        quotas["platform/cluster-free"].consumers,
        Some(BTreeSet::from([
            "team-a/app".to_string(),
            "team-b/app".to_string()
        ]))
    );
}

#[test]
fn placeholder_published_and_weak_keys_are_refused() {
    for (value, reason) in [
        (
            "sk-switchboard-REPLACE-WITH-A-LONG-RANDOM-KEY",
            reasons::PLACEHOLDER_KEY,
        ),
        (
            "sk-switchboard-my-app-key-change-me",
            reasons::PLACEHOLDER_KEY,
        ),
        ("an-example-key-for-the-docs-1234", reasons::PLACEHOLDER_KEY),
        (QUICKSTART_KEY, reasons::PLACEHOLDER_KEY),
        ("abababababababababababab", reasons::WEAK_KEY),
    ] {
        let compiled = inputs()
            .with(secret("k").string("key", value))
            .with(consumer("app").key("k", "key"))
            .compile();
        let refs = condition(
            &compiled,
            &object(ObjectKind::AIConsumer, "default", "app"),
            types::RESOLVED_REFS,
        );
        assert_eq!(refs.reason, reason, "{value}");
        assert!(!refs.message.contains(value), "the key is not echoed");
        assert!(
            compiled.snapshot.consumers.is_empty(),
            "{value} works as a key"
        );
    }
}

#[test]
fn the_quickstart_key_works_only_standalone_with_echo_providers() {
    let world = inputs()
        .with(provider("echo").model("m"))
        .with(secret("k").string("key", QUICKSTART_KEY))
        .with(consumer("app").key("k", "key"));
    assert!(
        world
            .clone()
            .standalone()
            .compile()
            .snapshot
            .consumers
            .contains_key("default/app")
    );
    assert!(
        world.clone().compile().snapshot.consumers.is_empty(),
        "through the operator"
    );
    let with_a_real_provider = world
        .standalone()
        .with(secret("openai-key").string("apiKey", "sk-provider-key-for-tests"))
        .with(
            provider("openai")
                .openai()
                .secret("openai-key", "apiKey")
                .models(["gpt-4o"]),
        );
    let compiled = with_a_real_provider.compile();
    assert!(
        compiled.snapshot.consumers.is_empty(),
        "a real provider could be spent"
    );
    let refs = condition(
        &compiled,
        &object(ObjectKind::AIConsumer, "default", "app"),
        types::RESOLVED_REFS,
    );
    assert!(
        refs.message
            .contains("only in the standalone proxy with echo providers"),
        "{}",
        refs.message
    );
}

#[test]
fn a_key_conflict_does_not_name_another_namespaces_consumer() {
    let shared = "sk-shared-key-Zq8Lw2Xc9Rv4Tb7M";
    let compiled = inputs()
        .with(secret("k").namespace("team-a").string("key", shared))
        .with(
            consumer("secret-project")
                .namespace("team-a")
                .key("k", "key")
                .created(1),
        )
        .with(secret("k").namespace("team-b").string("key", shared))
        .with(
            consumer("app")
                .namespace("team-b")
                .key("k", "key")
                .created(2),
        )
        .compile();
    let accepted = condition(
        &compiled,
        &object(ObjectKind::AIConsumer, "team-b", "app"),
        types::ACCEPTED,
    );
    assert_eq!(accepted.reason, reasons::KEY_CONFLICT);
    assert!(
        !accepted.message.contains("secret-project") && !accepted.message.contains("team-a"),
        "{}",
        accepted.message
    );
}

#[test]
fn an_invalid_grant_rejects_the_route() {
    let mut bad = team_route("default", "r", &["m"]).allow_all_namespaces();
    if let Some(allowed) = bad.0.spec.allowed_consumers.as_mut() {
        allowed.namespaces.as_mut().unwrap().from = crate::v1alpha1::NamespacesFrom::Selector;
    }
    let compiled = inputs()
        .with(provider("echo").model("m"))
        .with(bad)
        .compile();
    let accepted = condition(
        &compiled,
        &object(ObjectKind::AIRoute, "default", "r"),
        types::ACCEPTED,
    );
    assert_eq!(accepted.status, ConditionStatus::False);
    assert!(
        accepted.message.contains("namespaces.selector"),
        "{}",
        accepted.message
    );
}
