//! The official SDKs of every client API (`openai`, `anthropic`, `google-genai`, as
//! installed by scripts/test.sh) against the gateway in front of a fake of every
//! provider API: nine pairs, whole and streamed. The fakes answer with recorded
//! answers from the conformance corpus (`tests/corpus/`).

mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use http::StatusCode;
use support::*;

const SCRIPT: &str = r#"
import json, os
import anthropic, openai
from google import genai
from google.genai import types

base, key = os.environ["SWITCHBOARD_URL"].rstrip("/"), os.environ["SWITCHBOARD_KEY"]
oc = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
ac = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
gc = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base))
ask = [{"role": "user", "content": "hi"}]
out = {}
for model in ["oai", "ant", "gem"]:
    r = oc.chat.completions.create(model=model, messages=ask)
    out[f"openai {model} whole"] = r.choices[0].message.content or ""
    s = oc.chat.completions.create(model=model, messages=ask, stream=True,
                                   stream_options={"include_usage": True})
    out[f"openai {model} stream"] = "".join(
        c.choices[0].delta.content or "" for c in s if c.choices)
    m = ac.messages.create(model=model, max_tokens=64, messages=ask)
    out[f"anthropic {model} whole"] = "".join(b.text for b in m.content if b.type == "text")
    with ac.messages.stream(model=model, max_tokens=64, messages=ask) as st:
        out[f"anthropic {model} stream"] = "".join(st.text_stream)
    def text(response):
        # Text parts only: `response.text` warns about function calls. A candidate
        # may come without content (a finish-only chunk), as Gemini's do.
        content = response.candidates[0].content if response.candidates else None
        return "".join(p.text or "" for p in (content.parts or [])) if content else ""
    out[f"gemini {model} whole"] = text(gc.models.generate_content(model=model, contents="hi"))
    out[f"gemini {model} stream"] = "".join(
        text(chunk) for chunk in gc.models.generate_content_stream(model=model, contents="hi"))
print(json.dumps(out))
"#;

fn corpus(file: &str) -> Bytes {
    let path = format!("{}/tests/corpus/{file}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(path).unwrap())
}

fn sse(body: Bytes) -> Reply {
    Reply::Pieces(StatusCode::OK, "text/event-stream", vec![body])
}

#[tokio::test]
async fn every_official_sdk_works_with_every_provider_api() {
    let (oai_whole, oai_stream) = (corpus("openai-whole.json"), corpus("openai-stream.sse"));
    let openai = FakeProvider::start(move |received| match received.json()["stream"] == true {
        true => sse(oai_stream.clone()),
        false => Reply::Json(StatusCode::OK, oai_whole.clone()),
    })
    .await;
    let (ant_whole, ant_stream) = (
        corpus("anthropic-whole-tool.json"),
        corpus("anthropic-stream.sse"),
    );
    let anthropic = FakeProvider::start(move |received| match received.json()["stream"] == true {
        true => sse(ant_stream.clone()),
        false => Reply::Json(StatusCode::OK, ant_whole.clone()),
    })
    .await;
    let (gem_whole, gem_stream) = (
        corpus("gemini-whole.json"),
        corpus("gemini-stream-tool.sse"),
    );
    let gemini = FakeProvider::start(move |received| {
        match received.uri.contains(":streamGenerateContent") {
            true => sse(gem_stream.clone()),
            false => Reply::Json(StatusCode::OK, gem_whole.clone()),
        }
    })
    .await;
    let manifests = Manifests::new();
    manifests.write("consumer.yaml", &consumer_yaml("app", ""));
    for (name, kind, fake) in [
        ("oai", "openai-compatible", &openai),
        ("ant", "anthropic", &anthropic),
        ("gem", "gemini", &gemini),
    ] {
        manifests.write(
            &format!("{name}.yaml"),
            &(provider_yaml(name, kind, &fake.url(), &[(name, "upstream-model")], "")
                + "---\n"
                + &route_yaml(name, &[name], name, name, "")),
        );
    }
    let proxy = proxy(&manifests).await;

    let stdout = sdk_script(&proxy, SCRIPT).await;
    let read: BTreeMap<String, String> = serde_json::from_str(stdout.trim()).unwrap();
    let expected = [
        ("oai", "Hello! How can I assist you today?", "Hello there!"),
        (
            "ant",
            "I'll check the weather.",
            "Okay, let's check the weather.",
        ),
        ("gem", "Gemini says hi.", "Checking"),
    ];
    let mut wrong = Vec::new();
    for sdk in ["openai", "anthropic", "gemini"] {
        for (model, whole, stream) in expected {
            for (how, text) in [("whole", whole), ("stream", stream)] {
                let key = format!("{sdk} {model} {how}");
                if read.get(&key).map(String::as_str) != Some(text) {
                    wrong.push(format!("{key}: {:?}, expected {text:?}", read.get(&key)));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}\nstdout:\n{stdout}", wrong.join("\n"));
}
