//! HTTP clients towards providers: one pooled client per provider, built from its
//! timeouts and TLS settings.

use std::time::Duration;

use switchboard_api::snapshot::Provider;

/// Why a provider's client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("provider {provider}: {message}")]
pub struct ClientError {
    pub provider: String,
    pub message: String,
}

/// A pooled client for `provider`. Request timeouts are set per request, since a route
/// may override the provider's.
pub fn client(id: &str, provider: &Provider) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(provider.connect_timeout_ms))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        // Retries and fallbacks are the gateway's decision (routing), not the client's.
        .retry(reqwest::retry::never())
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &provider.tls.ca_bundle_pem {
        let certs =
            reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| ClientError {
                provider: id.to_string(),
                message: format!("spec.tls.caBundle is not valid PEM: {e}"),
            })?;
        builder = builder.tls_certs_merge(certs);
    }
    if provider.tls.insecure_skip_verify {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|e| ClientError {
        provider: id.to_string(),
        message: format!("cannot build HTTP client: {e}"),
    })
}
