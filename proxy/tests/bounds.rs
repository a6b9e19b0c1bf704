//! Bounds on what a provider sends back: a whole body, one stream event, and silence
//! mid-stream. A hostile upstream on loopback must not grow the proxy (in this same
//! process) without bound nor hold the client forever; the proxy serves on afterwards.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use support::*;

const OK: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#;
const CHUNK: &str = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;

/// The limits the tests set: far below what the hostile upstreams send.
const MAX_BODY: usize = 1024 * 1024;
const MAX_EVENT: usize = 64 * 1024;
const IDLE: Duration = Duration::from_millis(300);

/// What the hostile upstreams send at most: 512 MiB, in 64 KiB pieces. Unbounded, the
/// proxy holds all of it.
const FLOOD_PIECES: usize = 8 * 1024;
/// How much the proxy's peak memory may grow while it fends one off.
const MAX_GROWTH_KB: u64 = 64 * 1024;

fn chat(model: &str, stream: bool) -> String {
    chat_saying(model, stream, "hi")
}

fn chat_saying(model: &str, stream: bool, content: &str) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"{content}"}}]}}"#
    )
}

fn messages(model: &str, stream: bool) -> String {
    messages_saying(model, stream, "hi")
}

fn messages_saying(model: &str, stream: bool, content: &str) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":16,"stream":{stream},"messages":[{{"role":"user","content":"{content}"}}]}}"#
    )
}

/// `FLOOD_PIECES` pieces of 64 KiB of `byte`, after `head`.
fn flood(head: &[Bytes], byte: u8) -> Vec<Bytes> {
    let piece = Bytes::from(vec![byte; 64 * 1024]);
    let mut pieces = head.to_vec();
    pieces.extend(std::iter::repeat_n(piece, FLOOD_PIECES));
    pieces
}

/// This process's peak resident memory (VmHWM), in KiB: the proxy runs in it.
fn peak_rss_kb() -> u64 {
    status_kb("VmHWM")
}

/// Hostile provider `a` (of type `kind`) behind model `m` (one attempt) and behind
/// `mf` with good provider `b` as its fallback; `b` alone behind `ok`. Small limits.
async fn serve(hostile: &FakeProvider, kind: &str) -> (Manifests, switchboard_proxy::Proxy) {
    let good = FakeProvider::start(|received| match received.json()["stream"] == true {
        true => Reply::Stream(vec![
            (Duration::ZERO, sse(CHUNK)),
            (Duration::ZERO, sse("[DONE]")),
        ]),
        false => Reply::Json(StatusCode::OK, Bytes::from_static(OK.as_bytes())),
    })
    .await;
    let manifests = Manifests::new();
    manifests.write("consumer.yaml", &consumer_yaml("app", ""));
    manifests.write(
        "a.yaml",
        &provider_yaml("a", kind, &hostile.url(), &[("m", "m-a")], ""),
    );
    manifests.write(
        "b.yaml",
        &provider_yaml("b", "openai-compatible", &good.url(), &[("m", "m-b")], ""),
    );
    manifests.write(
        "routes.yaml",
        r#"
apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata: {name: hostile}
spec:
  models: [m]
  backends: [{provider: a, model: m}]
  retry: {attempts: 1}
  timeouts: {request: 20s}
---
apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata: {name: fallback}
spec:
  models: [mf]
  backends: [{provider: a, model: m}, {provider: b, model: m, priority: 1}]
  timeouts: {request: 20s}
---
apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata: {name: good}
spec:
  models: [ok]
  backends: [{provider: b, model: m}]
"#,
    );
    let proxy = proxy_with(&manifests, |s| {
        s.max_upstream_body_bytes = MAX_BODY;
        s.max_stream_event_bytes = MAX_EVENT;
        s.stream_idle_timeout = IDLE;
    })
    .await;
    (manifests, proxy)
}

/// The whole response, within 10 s (a proxy without the bound holds it far longer).
async fn read_all(proxy: &switchboard_proxy::Proxy, path: &str, body: String) -> (u16, String) {
    let read = async {
        let response = post(proxy, path, body).await;
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the proxy answers within 10 s")
}

/// The proxy still answers a normal request, whole and streamed.
async fn still_serves(proxy: &switchboard_proxy::Proxy) {
    let (status, text) = read_all(proxy, "/v1/chat/completions", chat("ok", false)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""content":"ok""#), "{text}");
    let (status, text) = read_all(proxy, "/v1/chat/completions", chat("ok", true)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

fn assert_growth(before: u64, what: &str) {
    let after = peak_rss_kb();
    eprintln!("{what}: peak RSS {before} KiB before, {after} KiB after");
    assert!(
        after.saturating_sub(before) < MAX_GROWTH_KB,
        "{what}: peak RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test]
async fn an_endless_whole_body_fails_the_attempt_at_the_cap() {
    let hostile = FakeProvider::start(|_| {
        Reply::Pieces(
            StatusCode::OK,
            "application/json",
            flood(&[Bytes::from_static(b"{\"id\":\"")], b'a'),
        )
    })
    .await;
    let (_manifests, proxy) = serve(&hostile, "openai-compatible").await;
    let before = peak_rss_kb();

    let started = Instant::now();
    let response = post(&proxy, "/v1/chat/completions", chat("m", false)).await;
    let message = assert_error(response, 502, "upstream_response_too_large").await;
    assert!(message.contains(&MAX_BODY.to_string()), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // An Anthropic client gets the error in its format.
    let (status, text) = read_all(&proxy, "/v1/messages", messages("m", false)).await;
    assert_eq!(status, 502, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["type"], "error", "{text}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than the limit"),
        "{text}"
    );

    // It is an attempt failure: the fallback answers.
    let (status, text) = read_all(&proxy, "/v1/chat/completions", chat("mf", false)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""content":"ok""#), "{text}");

    assert_growth(before, "endless whole body");
    still_serves(&proxy).await;
}

#[tokio::test]
async fn a_stream_event_that_never_ends_ends_the_stream_at_the_cap() {
    // One good event, then an event with no blank line, ever.
    let hostile = FakeProvider::start(|_| {
        Reply::Pieces(
            StatusCode::OK,
            "text/event-stream",
            flood(&[sse(CHUNK), Bytes::from_static(b"data: ")], b'a'),
        )
    })
    .await;
    let (_manifests, proxy) = serve(&hostile, "openai-compatible").await;
    let before = peak_rss_kb();

    let started = Instant::now();
    let (status, text) = read_all(&proxy, "/v1/chat/completions", chat("m", true)).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.starts_with(&String::from_utf8(sse(CHUNK).to_vec()).unwrap()),
        "{text}"
    );
    assert!(text.contains("upstream_stream_error"), "{text}");
    assert!(text.contains("larger than the limit"), "{text}");
    assert!(text.len() < MAX_EVENT, "{} bytes relayed", text.len());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Translated for an Anthropic client: its error event.
    let (status, text) = read_all(&proxy, "/v1/messages", messages("m", true)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("larger than the limit"), "{text}");

    assert_growth(before, "endless stream event");
    still_serves(&proxy).await;
}

#[tokio::test]
async fn an_oversized_stream_event_is_not_relayed() {
    // An 8 MiB event, whole (blank line and all), then a proper end.
    let hostile = FakeProvider::start(|_| {
        let mut pieces = vec![sse(CHUNK)];
        pieces.push(Bytes::from_static(b"data: "));
        pieces.extend(std::iter::repeat_n(Bytes::from(vec![b'a'; 64 * 1024]), 128));
        pieces.push(Bytes::from_static(b"\n\n"));
        pieces.push(sse("[DONE]"));
        Reply::Pieces(StatusCode::OK, "text/event-stream", pieces)
    })
    .await;
    let (_manifests, proxy) = serve(&hostile, "openai-compatible").await;
    let before = peak_rss_kb();

    let (status, text) = read_all(&proxy, "/v1/chat/completions", chat("m", true)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""content":"hi""#), "{text}");
    assert!(text.contains("upstream_stream_error"), "{text}");
    assert!(text.contains("larger than the limit"), "{text}");
    assert!(
        !text.contains("[DONE]"),
        "the stream ends at the event: {text}"
    );
    assert!(text.len() < MAX_EVENT, "{} bytes relayed", text.len());

    let (status, text) = read_all(&proxy, "/v1/messages", messages("m", true)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("larger than the limit"), "{text}");
    assert!(text.len() < MAX_EVENT, "{} bytes relayed", text.len());

    assert_growth(before, "oversized stream event");
    still_serves(&proxy).await;
}

#[tokio::test]
async fn an_oversized_first_stream_event_fails_over() {
    // From the first byte: one event with no end.
    let hostile = FakeProvider::start(|_| {
        Reply::Pieces(
            StatusCode::OK,
            "text/event-stream",
            flood(&[Bytes::from_static(b"data: ")], b'a'),
        )
    })
    .await;
    let (_manifests, proxy) = serve(&hostile, "openai-compatible").await;
    let before = peak_rss_kb();

    // Nothing reached the client yet: the attempt fails, and the fallback answers.
    let (status, text) = read_all(&proxy, "/v1/chat/completions", chat("mf", true)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""content":"hi""#), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // Without a fallback: an error in the client's format, not a stream.
    let response = post(&proxy, "/v1/chat/completions", chat("m", true)).await;
    assert_error(response, 502, "upstream_bad_response").await;

    assert_growth(before, "oversized first stream event");
    still_serves(&proxy).await;
}

#[tokio::test]
async fn a_stream_that_goes_quiet_ends_at_the_idle_timeout() {
    // Headers and one event, then nothing (the connection stays open).
    let quiet_after_one = FakeProvider::start(|_| {
        Reply::Stream(vec![
            (Duration::ZERO, sse(CHUNK)),
            (Duration::from_secs(3600), sse("[DONE]")),
        ])
    })
    .await;
    let (_manifests, proxy) = serve(&quiet_after_one, "openai-compatible").await;
    for (path, body, error) in [
        (
            "/v1/chat/completions",
            chat("m", true),
            "upstream_stream_error",
        ),
        ("/v1/messages", messages("m", true), "event: error"),
    ] {
        let started = Instant::now();
        let (status, text) = read_all(&proxy, path, body).await;
        let took = started.elapsed();
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(error), "{path}: {text}");
        assert!(text.contains("sent nothing for"), "{path}: {text}");
        assert!(
            took >= IDLE && took < Duration::from_secs(3),
            "{path}: {took:?}"
        );
    }
    still_serves(&proxy).await;
}

#[tokio::test]
async fn a_stream_silent_after_its_headers_fails_over_at_the_idle_timeout() {
    // Headers, then nothing; the route sets no first-token timeout.
    let silent =
        FakeProvider::start(|_| Reply::Stream(vec![(Duration::from_secs(3600), sse(CHUNK))])).await;
    let (_manifests, proxy) = serve(&silent, "openai-compatible").await;
    let started = Instant::now();
    let (status, text) = read_all(&proxy, "/v1/chat/completions", chat("mf", true)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let response = post(&proxy, "/v1/chat/completions", chat("m", true)).await;
    assert_error(response, 502, "upstream_bad_response").await;
    still_serves(&proxy).await;
}

/// One provider API's answers with a byte that is never UTF-8 (0xFF) in their text:
/// a whole response, and a stream as the events before the bad one, the bad one, and
/// the events that would have ended it complete (skipped, the bad event would leave a
/// stream that looks complete with part of its answer missing).
struct NotUtf8 {
    whole: Bytes,
    before: Vec<Bytes>,
    bad: Bytes,
    after: Vec<Bytes>,
}

/// `text` with every `BAD` replaced by the byte 0xFF.
fn not_utf8(text: &str) -> Bytes {
    assert!(text.contains("BAD"), "{text}");
    let mut bytes = Vec::new();
    for (i, part) in text.split("BAD").enumerate() {
        if i > 0 {
            bytes.push(0xFF);
        }
        bytes.extend_from_slice(part.as_bytes());
    }
    Bytes::from(bytes)
}

fn named(event: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn not_utf8_answers(kind: &str) -> NotUtf8 {
    match kind {
        "openai-compatible" => NotUtf8 {
            whole: not_utf8(&OK.replace(r#""content":"ok""#, r#""content":"BAD""#)),
            before: vec![sse(CHUNK)],
            bad: not_utf8(&format!("data: {}\n\n", CHUNK.replace("hi", "BAD"))),
            after: vec![
                sse(
                    r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
                ),
                sse("[DONE]"),
            ],
        },
        "anthropic" => {
            let delta = |text: &str| {
                format!(
                    r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{text}"}}}}"#
                )
            };
            NotUtf8 {
                whole: not_utf8(
                    r#"{"id":"msg_1","type":"message","role":"assistant","model":"m-a","content":[{"type":"text","text":"BAD"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":2}}"#,
                ),
                before: vec![
                    named(
                        "message_start",
                        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"m-a","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}"#,
                    ),
                    named(
                        "content_block_start",
                        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
                    ),
                    named("content_block_delta", &delta("hi")),
                ],
                bad: not_utf8(&format!(
                    "event: content_block_delta\ndata: {}\n\n",
                    delta("BAD")
                )),
                after: vec![
                    named(
                        "content_block_stop",
                        r#"{"type":"content_block_stop","index":0}"#,
                    ),
                    named(
                        "message_delta",
                        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}"#,
                    ),
                    named("message_stop", r#"{"type":"message_stop"}"#),
                ],
            }
        }
        "gemini" => {
            let part = |text: &str| {
                format!(
                    r#"{{"candidates":[{{"content":{{"parts":[{{"text":"{text}"}}],"role":"model"}}}}],"modelVersion":"m-a"}}"#
                )
            };
            NotUtf8 {
                whole: not_utf8(
                    r#"{"candidates":[{"content":{"parts":[{"text":"BAD"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,"totalTokenCount":7},"modelVersion":"m-a"}"#,
                ),
                before: vec![sse(&part("hi"))],
                bad: not_utf8(&format!("data: {}\n\n", part("BAD"))),
                after: vec![sse(
                    r#"{"candidates":[{"content":{"parts":[{"text":"!"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,"totalTokenCount":7},"modelVersion":"m-a"}"#,
                )],
            }
        }
        other => panic!("no answers for {other}"),
    }
}

/// A provider of `kind` answering with `not_utf8_answers`: whole, or a stream whose bad
/// event comes after a good one (a read later), or first when the request says `first`.
async fn not_utf8_provider(kind: &'static str) -> FakeProvider {
    FakeProvider::start(move |received| {
        let answers = not_utf8_answers(kind);
        let stream =
            received.json()["stream"] == true || received.uri.contains("streamGenerateContent");
        if !stream {
            return Reply::Json(StatusCode::OK, answers.whole);
        }
        let first = received.body.windows(5).any(|w| w == b"first");
        let mut pieces = Vec::new();
        if !first {
            pieces.extend(answers.before.into_iter().map(|e| (Duration::ZERO, e)));
        }
        // Later than the events before it: those reach the client first.
        pieces.push((Duration::from_millis(50), answers.bad));
        pieces.extend(answers.after.into_iter().map(|e| (Duration::ZERO, e)));
        Reply::Stream(pieces)
    })
    .await
}

/// A provider's answer that is not UTF-8 fails the same whole and streamed, translated
/// or passed through, for both client APIs: a whole response is a 502 (a success that
/// cannot be read, `upstream_unreadable_response`), a stream's first event fails the
/// attempt (the fallback answers), and a later event ends the stream with an error
/// event in the client's format, never skipped. Each is counted.
#[tokio::test]
async fn an_answer_that_is_not_utf8_fails_whole_and_streamed() {
    for kind in ["openai-compatible", "anthropic", "gemini"] {
        let hostile = not_utf8_provider(kind).await;
        let (_manifests, proxy) = serve(&hostile, kind).await;

        // Whole: the attempt fails, as a body that is not JSON does.
        let response = post(&proxy, "/v1/chat/completions", chat("m", false)).await;
        let message = assert_error(response, 502, "upstream_unreadable_response").await;
        assert!(message.contains("not UTF-8 at byte"), "{kind}: {message}");
        let (status, text) = read_all(&proxy, "/v1/messages", messages("m", false)).await;
        assert_eq!(status, 502, "{kind}: {text}");
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["type"], "error", "{kind}: {text}");

        // Mid-stream: what came before, then an error event; nothing after it.
        let (status, text) = read_all(&proxy, "/v1/chat/completions", chat("m", true)).await;
        assert_eq!(status, 200, "{kind}: {text}");
        assert!(text.contains(r#""content":"hi""#), "{kind}: {text}");
        assert!(text.contains("upstream_stream_error"), "{kind}: {text}");
        assert!(text.contains("not valid UTF-8"), "{kind}: {text}");
        assert!(!text.contains("[DONE]"), "{kind}: {text}");
        assert!(!text.contains('\u{FFFD}'), "{kind}: relayed: {text}");
        let (status, text) = read_all(&proxy, "/v1/messages", messages("m", true)).await;
        assert_eq!(status, 200, "{kind}: {text}");
        assert!(text.contains(r#""text":"hi""#), "{kind}: {text}");
        assert!(text.contains("event: error"), "{kind}: {text}");
        assert!(text.contains("not valid UTF-8"), "{kind}: {text}");
        assert!(!text.contains("message_stop"), "{kind}: {text}");

        // From the first event: the client has nothing yet, so the fallback answers;
        // without one, an error in the client's format.
        let (status, text) = read_all(
            &proxy,
            "/v1/chat/completions",
            chat_saying("mf", true, "first"),
        )
        .await;
        assert_eq!(status, 200, "{kind}: {text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{kind}: {text}");
        let response = post(
            &proxy,
            "/v1/chat/completions",
            chat_saying("m", true, "first"),
        )
        .await;
        assert_error(response, 502, "upstream_bad_response").await;
        let (status, text) =
            read_all(&proxy, "/v1/messages", messages_saying("m", true, "first")).await;
        assert_eq!(status, 502, "{kind}: {text}");
        assert!(text.contains(r#""type":"error""#), "{kind}: {text}");

        // Counted: the failed attempts by their error, and every request with what its
        // client got (a stream that ended in an error event is 2xx, with the error).
        let samples = scrape(&proxy).await;
        let requests = |status_class: &str, error_type: &str| {
            metric_or_zero(
                &samples,
                "switchboard_requests_total",
                &[
                    ("route", "default/hostile"),
                    ("status_class", status_class),
                    ("error_type", error_type),
                ],
            )
        };
        assert_eq!(
            requests("5xx", "upstream_unreadable_response"),
            2.0,
            "{kind}"
        );
        assert_eq!(requests("5xx", "upstream_bad_response"), 2.0, "{kind}");
        assert_eq!(requests("2xx", "upstream_stream_error"), 2.0, "{kind}");
        assert_eq!(requests("2xx", ""), 0.0, "{kind}");
        assert_eq!(
            metric(
                &samples,
                "switchboard_upstream_attempts_total",
                &[
                    ("provider", "default/a"),
                    ("outcome", "upstream_bad_response")
                ]
            ),
            3.0,
            "{kind}"
        );
        assert_eq!(
            metric(
                &samples,
                "switchboard_upstream_attempts_total",
                &[
                    ("provider", "default/a"),
                    ("outcome", "upstream_unreadable_response")
                ]
            ),
            2.0,
            "{kind}"
        );

        still_serves(&proxy).await;
    }
}

/// A provider that streams an event every 20 ms for an hour.
async fn endless_trickle() -> FakeProvider {
    FakeProvider::start(|_| {
        Reply::Stream(
            std::iter::repeat_n((Duration::from_millis(20), sse(CHUNK)), 180_000).collect(),
        )
    })
    .await
}

#[tokio::test]
async fn a_stream_that_never_ends_is_cut_at_the_duration_cap() {
    let trickle = endless_trickle().await;
    let (manifests, _) = serve(&trickle, "openai-compatible").await;
    let proxy = proxy_with(&manifests, |s| {
        s.max_stream_duration = Duration::from_millis(800);
    })
    .await;
    for (path, body, error) in [
        (
            "/v1/chat/completions",
            chat("m", true),
            "upstream_stream_error",
        ),
        ("/v1/messages", messages("m", true), "event: error"),
    ] {
        let started = Instant::now();
        let (status, text) = read_all(&proxy, path, body).await;
        let took = started.elapsed();
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains("\"hi\""),
            "{path}: events before the cap: {text}"
        );
        assert!(text.contains(error), "{path}: {text}");
        assert!(text.contains("past the limit of 800ms"), "{path}: {text}");
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(5),
            "{path}: {took:?}"
        );
    }
    still_serves(&proxy).await;
}

#[tokio::test]
async fn a_stream_that_sends_too_much_is_cut_at_the_byte_cap() {
    let trickle = endless_trickle().await;
    let (manifests, _) = serve(&trickle, "openai-compatible").await;
    let proxy = proxy_with(&manifests, |s| s.max_stream_bytes = 4096).await;
    for (path, body) in [
        ("/v1/chat/completions", chat("m", true)),
        ("/v1/messages", messages("m", true)),
    ] {
        let (status, text) = read_all(&proxy, path, body).await;
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains("more than the limit of 4096 bytes"),
            "{path}: {text}"
        );
        // What was relayed before the cap is a little under it (the events the
        // client got), never the hour's worth.
        assert!(text.len() < 3 * 4096, "{path}: {} bytes", text.len());
    }
    still_serves(&proxy).await;
}

#[tokio::test]
async fn a_route_sets_its_own_stream_idle_timeout() {
    // One event, then ten seconds of silence, then the end: longer than the route
    // allows, shorter than the proxy-wide timeout.
    let pause = FakeProvider::start(|_| {
        Reply::Stream(vec![
            (Duration::ZERO, sse(CHUNK)),
            (Duration::from_secs(10), sse("[DONE]")),
        ])
    })
    .await;
    let (manifests, _) = serve(&pause, "openai-compatible").await;
    manifests.write(
        "patient.yaml",
        r#"
apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata: {name: impatient}
spec:
  models: [impatient]
  backends: [{provider: a, model: m}]
  timeouts: {streamIdle: 400ms}
"#,
    );
    let proxy = proxy_with(&manifests, |s| {
        s.stream_idle_timeout = Duration::from_secs(60);
    })
    .await;
    let started = Instant::now();
    let (status, text) = read_all(&proxy, "/v1/chat/completions", chat("impatient", true)).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("sent nothing for 400ms"), "{text}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}
