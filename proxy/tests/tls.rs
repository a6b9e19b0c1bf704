//! Upstream TLS: a provider behind HTTPS with a certificate from a private CA. With the
//! CA in the AIProvider's `tls.caBundle` the proxy reaches it; without, the handshake
//! fails, the client gets a 502 in its format, and the proxy keeps serving. (The
//! platform's roots are the default: a public provider needs no bundle.)

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use support::*;
use switchboard_e2e::fake_upstream::json_response;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const ANSWER: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"over TLS"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;

/// An HTTPS provider on loopback with a certificate for 127.0.0.1 from a fresh private
/// CA. Returns its `https://` endpoint, the CA's PEM and a count of requests served.
async fn https_provider() -> (String, String, Arc<AtomicUsize>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();

    switchboard_proxy::install_crypto_provider();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate fails here.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |_request| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let response = json_response(200, ANSWER);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("https://{addr}/v1"), ca_cert.pem(), served)
}

#[tokio::test]
async fn a_private_ca_in_the_provider_is_trusted_and_nothing_else_is() {
    let (endpoint, ca_pem, served) = https_provider().await;
    let bundle: String = ca_pem.lines().map(|l| format!("      {l}\n")).collect();
    let manifests = Manifests::new();
    manifests
        .write("consumer.yaml", &consumer_yaml("app", ""))
        .write(
            "trusted.yaml",
            &provider_yaml(
                "trusted",
                "openai-compatible",
                &endpoint,
                &[("m", "m")],
                &format!("  tls:\n    caBundle: |\n{bundle}"),
            ),
        )
        .write(
            "untrusted.yaml",
            &provider_yaml(
                "untrusted",
                "openai-compatible",
                &endpoint,
                &[("m", "m")],
                "",
            ),
        )
        .write(
            "r1.yaml",
            &route_yaml("private", &["private"], "trusted", "m", ""),
        )
        .write(
            "r2.yaml",
            &route_yaml("public", &["public"], "untrusted", "m", ""),
        );
    let proxy = proxy(&manifests).await;
    let chat = |model: &str| {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
    };

    let response = post(&proxy, "/v1/chat/completions", chat("private")).await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "over TLS");
    assert_eq!(served.load(Ordering::SeqCst), 1);

    // The same server without the CA: the handshake fails before any request is sent.
    let response = post(&proxy, "/v1/chat/completions", chat("public")).await;
    let message = assert_error(response, 502, "upstream_unreachable").await;
    assert!(!message.is_empty());
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "nothing reached the server"
    );

    // And the proxy keeps serving.
    let response = post(&proxy, "/v1/chat/completions", chat("private")).await;
    assert_eq!(response.status(), 200);
}
