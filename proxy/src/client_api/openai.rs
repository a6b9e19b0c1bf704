//! OpenAI's API as clients see it: reading requests (the fields the gateway acts on
//! checked, the rest kept as raw JSON), error bodies, and the model list.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;

use super::{bad, model_name, stream_flag, top_level_fields};
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::formats::openai as format;
use crate::ir::{ClientApi, Operation, Request};

/// Reads and checks a request body for `operation`. The body stays untyped: it is
/// typed (`formats::openai::parse_request`) only if it must be translated.
pub fn read_request(operation: Operation, body: Bytes) -> Result<Request, ProxyError> {
    if body.is_empty() {
        return Err(bad("request body is empty; send a JSON object"));
    }
    let fields = top_level_fields(&body)?;

    let model = model_name(fields.get("model").map(|v| &**v))?;
    let stream = stream_flag(fields.get("stream").map(|v| &**v))?;
    let client_wants_usage = match fields.get("stream_options") {
        None => false,
        Some(raw) => match serde_json::from_str::<Option<StreamOptions>>(raw.get()) {
            Ok(options) => options.and_then(|o| o.include_usage).unwrap_or(false),
            Err(_) => return Err(bad("'stream_options' must be an object")),
        },
    };

    match operation {
        Operation::ChatCompletions => {
            let Some(messages) = fields.get("messages") else {
                return Err(bad("missing required field 'messages'"));
            };
            match serde_json::from_str::<Vec<&RawValue>>(messages.get()) {
                Ok(list) if !list.is_empty() => {}
                Ok(_) => return Err(bad("'messages' must contain at least one message")),
                Err(_) => return Err(bad("'messages' must be an array of message objects")),
            }
        }
        Operation::CountTokens => return Err(bad("OpenAI's API has no token count")),
        // Liberal: `input` may be left out (a `previous_response_id`, a prompt
        // template); the provider says what it lacks.
        Operation::Responses => {}
        Operation::Embeddings => {
            if stream {
                return Err(bad("embeddings do not support 'stream'"));
            }
            if !fields.contains_key("input") {
                return Err(bad("missing required field 'input'"));
            }
        }
    }

    Ok(Request {
        api: match operation {
            Operation::Responses => ClientApi::Responses,
            _ => ClientApi::OpenAI,
        },
        operation,
        model,
        stream,
        client_wants_usage,
        body,
        fields,
        api_headers: Vec::new(),
        chat: None,
        trace: Default::default(),
    })
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// The error as OpenAI's `{"error":{"message","type","param","code"}}`.
pub fn error_response(error: &ProxyError) -> Response<Body> {
    let class = error.class();
    let body = format::write_error(&error.to_string(), class.type_, class.code);
    body::json(class.status, body)
}

/// `GET /v1/models`: the given model names in OpenAI's list format.
pub fn models_response<'a>(models: impl Iterator<Item = &'a str>) -> Response<Body> {
    let data: Vec<ModelEntry<'_>> = models
        .map(|id| ModelEntry {
            id,
            object: "model",
            created: 0,
            owned_by: "switchboard",
        })
        .collect();
    let list = ModelList {
        object: "list",
        data,
    };
    body::json(
        StatusCode::OK,
        serde_json::to_vec(&list).unwrap_or_default(),
    )
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelEntry<'a>>,
}

#[derive(Serialize)]
struct ModelEntry<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

/// `GET /v1/models/{id}`: one model in OpenAI's format.
pub fn model_response(id: &str) -> Response<Body> {
    let entry = ModelEntry {
        id,
        object: "model",
        created: 0,
        owned_by: "switchboard",
    };
    body::json(
        StatusCode::OK,
        serde_json::to_vec(&entry).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_the_fields_the_gateway_acts_on() {
        let body = Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#,
        );
        let request = read_request(Operation::ChatCompletions, body.clone()).unwrap();
        assert_eq!(request.model, "m");
        assert!(request.stream && request.client_wants_usage);
        assert_eq!(request.body, body);
        assert_eq!(
            request.fields.keys().collect::<Vec<_>>(),
            ["model", "stream", "stream_options", "messages"]
        );
    }

    #[test]
    fn refuses_an_overlong_model_name() {
        let body = format!(r#"{{"model":"{}","messages":[{{}}]}}"#, "m".repeat(300));
        let error = read_request(Operation::ChatCompletions, Bytes::from(body)).unwrap_err();
        assert!(matches!(error, ProxyError::BadRequest(_)));
        assert!(
            !error.to_string().contains("mmmm"),
            "the name is not echoed"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the bytes, parsing returns a request or a 400, never panics.
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for op in [Operation::ChatCompletions, Operation::Embeddings] {
                if let Err(error) = read_request(op, Bytes::from(bytes.clone())) {
                    prop_assert_eq!(error.class().status, StatusCode::BAD_REQUEST);
                }
            }
        }

        /// JSON of the right outline but any values: a request or a 400.
        #[test]
        fn never_panics_on_odd_json(model in any::<Option<String>>(), stream in any::<Option<i8>>(), n in 0usize..3) {
            let mut object = serde_json::Map::new();
            if let Some(model) = model {
                object.insert("model".into(), model.into());
            }
            if let Some(stream) = stream {
                object.insert("stream".into(), if stream % 2 == 0 { (stream > 0).into() } else { stream.into() });
            }
            object.insert("messages".into(), serde_json::Value::Array(vec![serde_json::json!({}); n]));
            let body = Bytes::from(serde_json::to_vec(&object).unwrap());
            if let Err(error) = read_request(Operation::ChatCompletions, body) {
                prop_assert_eq!(error.class().status, StatusCode::BAD_REQUEST);
            }
        }
    }
}
