//! One writer for both forms of a stream: a provider's own events passed through and
//! IR events written by the client API are metered, cut, ended and failed alike.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;

use super::*;
use crate::cache::Cache;
use crate::gateway::Gateway;
use crate::ir::chat::{Finish, FinishReason};
use crate::ir::record::RequestRecord;
use crate::ir::{ClientApi, Operation};
use crate::quota::Quotas;
use crate::settings::Settings;

/// A streamed OpenAI request whose client asked for usage; 40 bytes, so its input is
/// estimated at 10 tokens.
fn request() -> Request {
    Request {
        api: ClientApi::OpenAI,
        operation: Operation::ChatCompletions,
        model: "m".into(),
        stream: true,
        client_wants_usage: true,
        body: Bytes::from_static(&[b' '; 40]),
        fields: Default::default(),
        api_headers: Vec::new(),
        chat: None,
        trace: Default::default(),
    }
}

fn end() -> RequestEnd {
    crate::tls::install_crypto_provider();
    let gateway = Arc::new(Gateway::new(
        Settings::for_manifests("/nonexistent"),
        None,
        Arc::new(Quotas::new(None, None)),
        Arc::new(Cache::new(None, 1 << 20, None)),
    ));
    let pending = RequestEnd::begin(gateway, tracing::Span::none(), RequestRecord::default());
    let end = pending.end.clone();
    // The response is never sent: what is checked is the stream's end.
    std::mem::forget(pending);
    end
}

const WORDS: [&str; 5] = ["abcdefgh", "ijklmnop", "qrstuvwx", "yz012345", "6789ABCD"];

/// The same answer as the provider's own chunks, one per read.
fn native() -> Reply {
    let chunk = |delta: &str, finish: &str| {
        Bytes::from(format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        ))
    };
    let mut events = vec![chunk(r#"{"role":"assistant","content":""}"#, "null")];
    events.extend(WORDS.map(|w| chunk(&format!(r#"{{"content":"{w}"}}"#), "null")));
    events.push(chunk("{}", r#""stop""#));
    events.push(Bytes::from_static(
        b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":10,\"total_tokens\":13}}\n\n",
    ));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    // The relay reads the usage chunk's usage as it passes (`providers::openai`).
    let chunks = events.into_iter().map(|e| NativeChunk::Events {
        usage: e
            .starts_with(b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[],")
            .then(|| Usage::new(3, 10, 0)),
        events: vec![e],
    });
    Reply::NativeStream(Box::pin(futures_util::stream::iter(
        chunks.collect::<Vec<_>>(),
    )))
}

/// The same answer as IR events, one batch per read.
fn translated() -> Reply {
    let mut batches = vec![vec![StreamEvent::Start {
        id: "c1".into(),
        model: "m".into(),
        usage: None,
    }]];
    batches.extend(WORDS.map(|w| vec![StreamEvent::Text(w.into())]));
    batches.push(vec![StreamEvent::Finish(Finish {
        reason: FinishReason::Stop,
        stop_sequence: None,
    })]);
    batches.push(vec![
        StreamEvent::Usage(Usage::new(3, 10, 0)),
        StreamEvent::Done,
    ]);
    Reply::ChatStream(Box::pin(futures_util::stream::iter(batches)))
}

/// The client's bytes, read back as IR events with the proxy's own OpenAI decoder.
async fn write(reply: Reply, budget: Option<StreamBudget>) -> (Vec<StreamEvent>, StreamEnd) {
    let end = end();
    let taps = Taps {
        budget,
        recorder: None,
    };
    let body = response(reply, &request(), taps, &end).into_body();
    let bytes = body.collect().await.unwrap().to_bytes();
    let mut decoder = SseDecoder::new(openai_format::StreamDecoder::default());
    let mut events = Vec::new();
    decoder.push(&bytes, &mut events);
    decoder.finish(&mut events);
    (
        events,
        end.stream_end().expect("the stream reported its end"),
    )
}

fn text(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn both_forms_are_cut_at_the_same_output_with_the_same_ending() {
    // 5 tokens: 20 bytes, reached by the third 8-byte word (24 bytes, 6 tokens).
    let budget = Some(StreamBudget::new(5));
    let (native, native_end) = write(native(), budget).await;
    let (translated, translated_end) = write(translated(), budget).await;
    for (events, end) in [(&native, native_end), (&translated, translated_end)] {
        assert_eq!(text(events), "abcdefghijklmnopqrstuvwx", "{events:?}");
        let cut_usage = Usage::new(10, 6, 0);
        assert_eq!(
            events[events.len() - 3..],
            [
                StreamEvent::Finish(Finish {
                    reason: FinishReason::Length,
                    stop_sequence: None
                }),
                StreamEvent::Usage(cut_usage),
                StreamEvent::Done
            ],
            "{events:?}"
        );
        assert_eq!(
            end,
            StreamEnd {
                usage: Some(cut_usage),
                outcome: StreamOutcome::Complete
            }
        );
    }
}

#[tokio::test]
async fn both_forms_pass_whole_when_the_budget_holds() {
    for reply in [native(), translated()] {
        let (events, end) = write(reply, Some(StreamBudget::new(1000))).await;
        assert_eq!(text(&events), WORDS.concat());
        assert!(events.contains(&StreamEvent::Finish(Finish {
            reason: FinishReason::Stop,
            stop_sequence: None
        })));
        assert_eq!(events.last(), Some(&StreamEvent::Done));
        assert_eq!(
            end,
            StreamEnd {
                usage: Some(Usage::new(3, 10, 0)),
                outcome: StreamOutcome::Complete
            }
        );
    }
}

#[tokio::test]
async fn a_broken_upstream_reads_the_same_in_both_forms() {
    let word = |w: &str| {
        Bytes::from(format!(
            "data: {{\"id\":\"c1\",\"created\":7,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{w}\"}}}}]}}\n\n"
        ))
    };
    let native = Reply::NativeStream(Box::pin(futures_util::stream::iter([
        NativeChunk::Events {
            events: vec![word("abc")],
            usage: None,
        },
        NativeChunk::Broken,
    ])));
    let translated = Reply::ChatStream(Box::pin(futures_util::stream::iter([
        vec![StreamEvent::Text("abc".into())],
        vec![StreamEvent::Error(StreamError::broken())],
    ])));
    let mut errors = Vec::new();
    for reply in [native, translated] {
        let end = end();
        let body = response(reply, &request(), Taps::default(), &end).into_body();
        let bytes = body.collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let last = text.trim_end().rsplit("\n\n").next().unwrap().to_string();
        assert!(last.contains("upstream_stream_error"), "{text}");
        errors.push(last);
        let end = end.stream_end().expect("the stream reported its end");
        assert_eq!(end.outcome, StreamOutcome::UpstreamError);
    }
    assert_eq!(errors[0], errors[1], "one error event for both forms");
}

#[tokio::test]
async fn a_client_that_leaves_ends_the_stream_as_gone() {
    let end = end();
    let body = response(native(), &request(), Taps::default(), &end).into_body();
    drop(body);
    assert_eq!(
        end.stream_end(),
        Some(StreamEnd {
            usage: None,
            outcome: StreamOutcome::ClientGone
        })
    );
}
