//! HTTP clients towards providers: one pooled client per provider, built from its
//! timeouts and TLS settings.
//!
//! hyper-util's pooled client over rustls, not reqwest: on the request path reqwest's
//! layers (its request builder, tower stack and the URL it re-parses from every
//! response) cost about a third of the proxy's user-space instructions per request
//! (bench/README.md), for features the gateway does not use (redirects, cookies,
//! decompression, retries: retrying is routing's decision). What a user needs of a
//! client is kept:
//!
//! - certificates checked against the platform's roots (`rustls-platform-verifier`,
//!   as reqwest does), plus a provider's `spec.tls.caBundle`; or not at all with
//!   `insecureSkipVerify`;
//! - HTTP/2 where the provider offers it by ALPN, HTTP/1.1 otherwise;
//! - HTTP proxies from `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (read
//!   once, when the client is built): a tunnel (`CONNECT`) for HTTPS providers, the
//!   absolute-form request for plain-HTTP ones, with the proxy's credentials if its
//!   URL has them;
//! - a connect timeout, TCP_NODELAY, idle pooled connections closed after 90 s.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use switchboard_api::snapshot::Provider;
use tokio::net::TcpStream;
use tower_service::Service;

/// Why a provider's client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("provider {provider}: {message}")]
pub struct ClientError {
    pub provider: String,
    pub message: String,
}

/// A request body sent upstream: always whole.
pub type UpstreamBody = Full<Bytes>;

/// A provider's response, its body read as it arrives.
pub type UpstreamResponse = Response<Incoming>;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// A pooled client towards one provider. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<Connector>, UpstreamBody>,
    proxies: Arc<Matcher>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The proxies' URLs may hold credentials.
        f.debug_struct("UpstreamClient").finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// Sends `request`. A plain-HTTP request through a proxy carries the proxy's
    /// credentials, if its URL has them (an HTTPS one carries them in its tunnel's
    /// `CONNECT`).
    pub fn send(&self, mut request: Request<UpstreamBody>) -> ResponseFuture {
        if request.uri().scheme() == Some(&http::uri::Scheme::HTTP)
            && let Some(auth) = self
                .proxies
                .intercept(request.uri())
                .and_then(|proxy| proxy.basic_auth().cloned())
        {
            request
                .headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, auth);
        }
        self.client.request(request)
    }
}

/// A pooled client for `provider`. Request timeouts are set per request, since a route
/// may override the provider's.
pub fn client(id: &str, provider: &Provider) -> Result<UpstreamClient, ClientError> {
    let failed = |message: String| ClientError {
        provider: id.to_string(),
        message,
    };
    let tls = tls_config(provider).map_err(failed)?;
    let mut http = HttpConnector::new();
    // The HTTPS connector around it handles `https://`.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_millis(provider.connect_timeout_ms)));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let proxies = Arc::new(Matcher::from_env());
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(Connector {
            http,
            proxies: proxies.clone(),
        });
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector);
    Ok(UpstreamClient { client, proxies })
}

/// The provider's TLS settings as a rustls config. Providers without settings of their
/// own share one config, so the platform's roots are loaded once.
fn tls_config(provider: &Provider) -> Result<ClientConfig, String> {
    static PLATFORM: OnceLock<Result<ClientConfig, String>> = OnceLock::new();
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let tls = &provider.tls;
    if tls.insecure_skip_verify {
        return build_config(
            crypto.clone(),
            Arc::new(NoVerification(crypto.signature_verification_algorithms)),
        );
    }
    let Some(pem) = &tls.ca_bundle_pem else {
        return PLATFORM
            .get_or_init(|| platform_config(crypto, Vec::new()))
            .clone();
    };
    let extra = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("spec.tls.caBundle is not valid PEM: {e}"))?;
    if extra.is_empty() {
        return Err("spec.tls.caBundle holds no certificate".to_string());
    }
    platform_config(crypto, extra)
}

/// The platform's roots and `extra`.
fn platform_config(
    crypto: Arc<CryptoProvider>,
    extra: Vec<CertificateDer<'static>>,
) -> Result<ClientConfig, String> {
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, crypto.clone())
        .map_err(|e| format!("cannot load the platform's certificate roots: {e}"))?;
    build_config(crypto, Arc::new(verifier))
}

fn build_config(
    crypto: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<ClientConfig, String> {
    Ok(ClientConfig::builder_with_provider(crypto)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `insecureSkipVerify`: any certificate is taken, for any name. The handshake's
/// signatures are still checked, so the session is with whoever holds the key of the
/// certificate presented.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// TCP connections to providers, through a proxy where the environment names one.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    proxies: Arc<Matcher>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let Some(proxy) = self.proxies.intercept(&target) else {
            return Box::pin(async move { Ok(Conn::direct(http.call(target).await?)) });
        };
        if target.scheme() == Some(&http::uri::Scheme::HTTPS) {
            // TLS to the provider, inside a tunnel the proxy opens.
            let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
            if let Some(auth) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            return Box::pin(async move { Ok(Conn::direct(tunnel.call(target).await?)) });
        }
        // Plain HTTP: requests go to the proxy, which forwards them.
        let proxy = proxy.uri().clone();
        Box::pin(async move {
            Ok(Conn {
                io: http.call(proxy).await?,
                proxied: true,
            })
        })
    }
}

/// A connection, and whether it is to a proxy that forwards requests (which then
/// name their target in absolute form).
struct Conn {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Conn {
    fn direct(io: TokioIo<TcpStream>) -> Self {
        Self { io, proxied: false }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
