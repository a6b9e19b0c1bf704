//! TLS on every side of the proxy, with real handshakes on loopback.
//!
//! Upstream: a provider behind HTTPS with a certificate from a private CA. With the CA
//! in the AIProvider's `tls.caBundle` the proxy reaches it (over HTTP/2, which the
//! provider offers by ALPN); without, the handshake fails, the client gets a 502 in
//! its format, and the proxy keeps serving; with `insecureSkipVerify` any certificate
//! is taken. (The platform's roots are the default: a public provider needs no bundle.)
//!
//! Clients (`--tls-cert`): HTTP/1.1 and HTTP/2 by ALPN; a renewed certificate is served
//! to new connections without a restart and without breaking open ones; a bad one is
//! refused and the served one kept; a client that never finishes its handshake is
//! disconnected. The config channel: a rotated CA in `--operator-ca-file` is trusted
//! without a restart.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::*;
use switchboard_e2e::fake_upstream::json_response;
use switchboard_proxy::{Proxy, Settings};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const ANSWER: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"over TLS"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;

/// An HTTPS provider on loopback with a certificate for 127.0.0.1 from a fresh private
/// CA, offering HTTP/2 and HTTP/1.1 by ALPN. Returns its `https://` endpoint, the CA's
/// PEM, a count of requests served and the HTTP version of each.
async fn https_provider() -> (
    String,
    String,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<http::Version>>>,
) {
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
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let versions = Arc::new(Mutex::new(Vec::new()));
    let seen = versions.clone();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, count, seen) = (acceptor.clone(), count.clone(), seen.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate fails here.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |request: hyper::Request<_>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    seen.lock().unwrap().push(request.version());
                    let response = json_response(200, ANSWER);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (
        format!("https://{addr}/v1"),
        ca_cert.pem(),
        served,
        versions,
    )
}

#[tokio::test]
async fn a_private_ca_in_the_provider_is_trusted_and_nothing_else_is() {
    let (endpoint, ca_pem, served, versions) = https_provider().await;
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
    // The provider offered HTTP/2: it was taken.
    assert_eq!(*versions.lock().unwrap(), [http::Version::HTTP_2]);

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

/// `insecureSkipVerify`: the same untrusted certificate is taken.
#[tokio::test]
async fn insecure_skip_verify_takes_any_certificate() {
    let (endpoint, _, served, _) = https_provider().await;
    let manifests = Manifests::new();
    manifests
        .write("consumer.yaml", &consumer_yaml("app", ""))
        .write(
            "p.yaml",
            &provider_yaml(
                "p",
                "openai-compatible",
                &endpoint,
                &[("m", "m")],
                "  tls:\n    insecureSkipVerify: true\n",
            ),
        )
        .write("r.yaml", &route_yaml("r", &["r"], "p", "m", ""));
    let proxy = proxy(&manifests).await;
    let body = r#"{"model":"r","messages":[{"role":"user","content":"hi"}]}"#;
    let response = post(&proxy, "/v1/chat/completions", body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

// === Client-facing TLS (--tls-cert, --tls-key) ===

/// A private CA that signs leaf certificates for 127.0.0.1.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A leaf certificate: PEM certificate, PEM key, DER certificate.
struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// A certificate for 127.0.0.1 with common name `name` (and its own serial).
    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// A client trusting only `ca`, reporting the certificate each response came over.
fn tls_client(
    ca: &Ca,
    adjust: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> reqwest::Client {
    switchboard_proxy::install_crypto_provider();
    let builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()])
        .tls_info(true)
        .timeout(Duration::from_secs(10));
    adjust(builder).build().unwrap()
}

/// The certificate `response` came over.
fn served_certificate(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("a TLS response")
        .to_vec()
}

/// `GET /v1/models` over TLS with a fresh connection: the certificate it came over.
async fn fresh_certificate(proxy: &Proxy, ca: &Ca) -> Vec<u8> {
    let response = tls_client(ca, |b| b)
        .get(format!("https://{}/v1/models", proxy.addr))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    served_certificate(&response)
}

/// A proxy serving TLS with `leaf` from files in `certs`, checking them every 20 ms.
async fn tls_proxy(manifests: &Manifests, certs: &Manifests, leaf: &Leaf) -> Proxy {
    certs
        .write("tls.crt", &leaf.cert)
        .write("tls.key", &leaf.key);
    let (cert, key) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
    proxy_with(manifests, |settings| {
        settings.tls_cert = Some(cert);
        settings.tls_key = Some(key);
        settings.tls_reload_interval = Duration::from_millis(20);
    })
    .await
}

/// Polls fresh connections until `expected` is served; panics after 10 s.
async fn wait_for_certificate(proxy: &Proxy, ca: &Ca, expected: &[u8]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fresh_certificate(proxy, ca).await != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the proxy has refused `count` certificate changes; panics after 10 s.
async fn wait_for_refusals(proxy: &Proxy, count: u64) {
    let tls = proxy.tls.as_ref().expect("serving TLS");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tls.refused() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bad certificate was never checked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn echo_manifests() -> Manifests {
    let manifests = Manifests::new();
    manifests.write("consumer.yaml", &consumer_yaml("app", ""));
    manifests
}

#[tokio::test]
async fn clients_are_served_over_tls_with_http1_and_http2_by_alpn() {
    let ca = Ca::new("clients CA");
    let leaf = ca.leaf("proxy");
    let (manifests, certs) = (echo_manifests(), Manifests::new());
    let proxy = tls_proxy(&manifests, &certs, &leaf).await;
    let url = format!("https://{}/v1/models", proxy.addr);

    // ALPN picks HTTP/2 when the client offers it, HTTP/1.1 when it offers only that.
    for (client, version) in [
        (tls_client(&ca, |b| b), reqwest::Version::HTTP_2),
        (
            tls_client(&ca, |b| b.http1_only()),
            reqwest::Version::HTTP_11,
        ),
    ] {
        let response = client.get(&url).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), version);
        assert_eq!(served_certificate(&response), leaf.der);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["object"], "list");
    }

    // A client that does not trust the CA cannot connect; plain HTTP gets no answer.
    let other = Ca::new("other CA");
    let error = tls_client(&other, |b| b)
        .get(&url)
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect() || error.is_request(), "{error:?}");
    let plain = client()
        .get(format!("http://{}/v1/models", proxy.addr))
        .bearer_auth(KEY)
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_breaking_open_connections() {
    let ca = Ca::new("renewal CA");
    let (a, b) = (ca.leaf("cert-a"), ca.leaf("cert-b"));
    assert_ne!(a.der, b.der);
    let (upstream, feed) = FakeProvider::held().await;
    let manifests = echo_manifests();
    manifests
        .write(
            "provider.yaml",
            &provider_yaml(
                "up",
                "openai-compatible",
                &upstream.url(),
                &[("m", "m")],
                "",
            ),
        )
        .write("route.yaml", &route_yaml("r", &["m"], "up", "m", ""));
    let certs = Manifests::new();
    let proxy = tls_proxy(&manifests, &certs, &a).await;
    assert_eq!(fresh_certificate(&proxy, &ca).await, a.der);

    // A keep-alive connection and a stream in flight, both made with certificate A.
    let kept = tls_client(&ca, |b| b.http1_only());
    let models = format!("https://{}/v1/models", proxy.addr);
    let response = kept.get(&models).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(served_certificate(&response), a.der);
    response.bytes().await.unwrap();
    let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#;
    feed.send(sse(chunk)).await.unwrap();
    let streaming = tls_client(&ca, |b| b.http1_only())
        .post(format!("https://{}/v1/chat/completions", proxy.addr))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), 200);
    assert_eq!(served_certificate(&streaming), a.der);
    let mut stream = streaming.bytes_stream();
    assert_eq!(stream.next().await.unwrap().unwrap(), sse(chunk));

    // cert-manager renews: new connections get B, without a restart.
    certs.write("tls.key", &b.key).write("tls.crt", &b.cert);
    wait_for_certificate(&proxy, &ca, &b.der).await;
    assert!(proxy.tls.as_ref().unwrap().loaded() >= 1);

    // The stream in flight finishes; the kept connection still works (still over A:
    // it is the same connection).
    feed.send(sse("[DONE]")).await.unwrap();
    drop(feed);
    assert_eq!(stream.next().await.unwrap().unwrap(), sse("[DONE]"));
    assert!(stream.next().await.is_none());
    let response = kept.get(&models).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(served_certificate(&response), a.der);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_bad_replacement_keeps_the_served_certificate() {
    let ca = Ca::new("bad CA");
    let (a, b, c) = (ca.leaf("cert-a"), ca.leaf("cert-b"), ca.leaf("cert-c"));
    let (manifests, certs) = (echo_manifests(), Manifests::new());
    let proxy = tls_proxy(&manifests, &certs, &a).await;
    assert_eq!(fresh_certificate(&proxy, &ca).await, a.der);

    // Not a certificate: refused, A stays.
    certs.write("tls.crt", "-----BEGIN CERTIFICATE-----\nnot base64!\n");
    wait_for_refusals(&proxy, 1).await;
    assert_eq!(fresh_certificate(&proxy, &ca).await, a.der);

    // B's certificate with A's key: refused, A stays.
    certs.write("tls.crt", &b.cert);
    wait_for_refusals(&proxy, 2).await;
    assert_eq!(fresh_certificate(&proxy, &ca).await, a.der);
    assert_eq!(proxy.tls.as_ref().unwrap().loaded(), 0);

    // And a good pair after that is served.
    certs.write("tls.key", &c.key).write("tls.crt", &c.cert);
    wait_for_certificate(&proxy, &ca, &c.der).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_disconnected() {
    let ca = Ca::new("slow CA");
    let (manifests, certs) = (echo_manifests(), Manifests::new());
    let leaf = ca.leaf("proxy");
    certs
        .write("tls.crt", &leaf.cert)
        .write("tls.key", &leaf.key);
    let proxy = proxy_with(&manifests, |settings| {
        settings.tls_cert = Some(certs.path().join("tls.crt"));
        settings.tls_key = Some(certs.path().join("tls.key"));
        settings.header_read_timeout = Duration::from_millis(200);
    })
    .await;
    // Connects and sends nothing: the proxy closes the connection after the timeout.
    let mut silent = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buffer))
        .await
        .expect("the proxy closes a connection that never finishes its handshake");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The listener serves others meanwhile and after.
    assert_eq!(fresh_certificate(&proxy, &ca).await, leaf.der);
    proxy.shutdown().await;
}

// === The config channel's CA (--operator-ca-file) ===

/// A config service like the operator's over TLS with `leaf`: answers a poll from a
/// proxy that lacks `snapshot` with it, and holds the others. Counts failed handshakes.
async fn config_service(
    leaf: &Leaf,
    snapshot: &switchboard_api::Snapshot,
) -> (String, Arc<AtomicUsize>) {
    switchboard_proxy::install_crypto_provider();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der.clone())],
            PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let failed = Arc::new(AtomicUsize::new(0));
    let (count, version) = (failed.clone(), snapshot.version.clone());
    let body = serde_json::to_string(snapshot).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            let (version, body) = (version.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    count.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let holds = request
                        .uri()
                        .query()
                        .unwrap_or_default()
                        .contains(&format!("version={version}"));
                    let body = body.clone();
                    async move {
                        if holds {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                        Ok::<_, Infallible>(json_response(200, body))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("https://{addr}"), failed)
}

#[tokio::test]
async fn a_rotated_operator_ca_is_trusted_without_a_restart() {
    // The operator's certificate was reissued by a new CA; the proxy still has the old
    // CA in its file, so it cannot connect, until the file holds the new CA.
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let snapshot = switchboard_api::Snapshot::default().seal();
    let (url, failed_handshakes) = config_service(&new_ca.leaf("operator"), &snapshot).await;
    let files = Manifests::new();
    files
        .write("ca.pem", &old_ca.pem)
        .write("token", "proxy-token");
    let proxy = switchboard_proxy::start({
        let mut settings = Settings::for_manifests(files.path());
        settings.manifests = None;
        settings.operator = Some(url.parse().unwrap());
        settings.operator_token_file = Some(files.path().join("token"));
        settings.operator_ca_file = Some(files.path().join("ca.pem"));
        settings.snapshot_cache = files.path().join("cache").join("snapshot.json");
        settings
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while failed_handshakes.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy never polled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(proxy.gateway.runtime.current().is_none());

    files.write("ca.pem", &new_ca.pem);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let version = proxy
            .gateway
            .runtime
            .current()
            .map(|r| r.version().to_string());
        if version.as_deref() == Some(snapshot.version.as_str()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy never trusted the new CA"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.shutdown().await;
}
