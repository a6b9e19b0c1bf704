//! `GET /v1/models` (every model the caller may use) and `GET /v1/models/{id}`.

use http::{HeaderMap, Response};

use crate::body::Body;
use crate::client_api::openai;
use crate::error::ProxyError;
use crate::finish::Pending;
use crate::runtime::Runtime;
use crate::{auth, routing};

/// The models the caller may use, or (`id`) one of them.
pub fn list(
    runtime: &Runtime,
    headers: &HeaderMap,
    id: Option<&str>,
    pending: &mut Pending,
) -> Result<Response<Body>, ProxyError> {
    let caller = auth::authenticate(&runtime.keys, &runtime.snapshot, headers, None)?;
    pending.record.consumer = Some(caller.id.to_string());
    let visible = routing::visible_models(&runtime.snapshot, caller.consumer);
    match id {
        None => Ok(openai::models_response(visible)),
        Some(id) => visible
            .into_iter()
            .find(|m| *m == id)
            .map(openai::model_response)
            .ok_or_else(|| ProxyError::UnknownModel(id.to_string())),
    }
}
