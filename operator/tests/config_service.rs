//! The config service over real TLS on loopback: token checks, long polls, version
//! reports, a client that does not trust the certificate, and a renewed certificate
//! served without a restart.

use std::sync::Arc;
use std::time::Duration;

use switchboard_api::Snapshot;
use switchboard_operator::config_service::{ConfigService, VERSION_HEADER};
use switchboard_operator::metrics::Metrics;
use switchboard_operator::proxies::ProxyTable;
use switchboard_operator::publish::Publisher;
use switchboard_operator::token::TokenFile;
use switchboard_operator::{http, pki};

struct Service {
    url: String,
    token: String,
    ca: Vec<u8>,
    publisher: Publisher,
    proxies: Arc<ProxyTable>,
    files: pki::DevPki,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(label: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "sb-{label}-{}-{}",
                std::process::id(),
                fastrand::u32(..)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn start() -> Service {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempdir::Dir::new("config-service");
    let files = pki::generate(&dir.0, &["localhost".to_string()]).unwrap();
    // Checked for renewal every 50 ms, so the renewal test is quick.
    let tls = http::tls_acceptor(&files.cert, &files.key, Duration::from_millis(50)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let publisher = Publisher::default();
    let proxies = Arc::new(ProxyTable::new("replica-1"));
    let service = Arc::new(ConfigService {
        publisher: publisher.clone(),
        proxies: proxies.clone(),
        // Re-read every 50 ms, so the rotation test is quick.
        token: TokenFile::watch(files.token.clone(), Duration::from_millis(50)),
        poll_timeout: Duration::from_secs(30),
        metrics: Arc::new(Metrics::new().unwrap()),
    });
    tokio::spawn(http::serve(
        listener,
        Some(tls),
        move |request, peer| service.clone().handle(request, peer),
        std::future::pending(),
    ));
    Service {
        // The certificate names localhost; connect by name, resolved to loopback.
        url: format!("https://localhost:{port}/v1/snapshot"),
        token: std::fs::read_to_string(&files.token).unwrap(),
        ca: std::fs::read(&files.ca).unwrap(),
        publisher,
        proxies,
        files,
        _dir: dir,
    }
}

fn client(ca: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], 0).into())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn snapshot(marker: &str) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let mut table = switchboard_api::snapshot::RouteTable::default();
    table.models.insert(marker.to_string(), Vec::new());
    snapshot.route_tables.push(table);
    snapshot.seal()
}

#[tokio::test]
async fn refuses_missing_and_wrong_tokens_and_bad_queries() {
    let service = start().await;
    let client = client(&service.ca);
    let response = client
        .get(format!("{}?proxy=p1", service.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = client
        .get(format!("{}?proxy=p1", service.url))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body = response.text().await.unwrap();
    assert!(!body.contains(&service.token), "{body}");
    let response = client
        .get(format!("{}?proxy=bad%20id", service.url))
        .bearer_auth(&service.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        service.proxies.connected().is_empty(),
        "refused polls are not proxies"
    );
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_cannot_connect() {
    let service = start().await;
    let other = tempdir::Dir::new("other-ca");
    let other_ca =
        std::fs::read(pki::generate(&other.0, &["localhost".into()]).unwrap().ca).unwrap();
    let error = client(&other_ca)
        .get(format!("{}?proxy=p1", service.url))
        .bearer_auth(&service.token)
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect() || error.is_request(), "{error:?}");
}

#[tokio::test]
async fn a_poll_waits_for_a_new_version_and_reports_what_the_proxy_serves() {
    let service = start().await;
    let client = client(&service.ca);
    let v1 = snapshot("v1");
    service.publisher.publish(&v1);

    // A proxy with nothing gets the current Snapshot at once.
    let response = client
        .get(format!("{}?proxy=p1&version=", service.url))
        .bearer_auth(&service.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[VERSION_HEADER], v1.version.as_str());
    let received: Snapshot = response.json().await.unwrap();
    assert_eq!(received, v1);

    // Holding v1, it waits; a publish answers the waiting poll.
    let url = format!("{}?proxy=p1&version={}&wait=20", service.url, v1.version);
    let poll = tokio::spawn({
        let client = client.clone();
        let token = service.token.clone();
        async move { client.get(url).bearer_auth(token).send().await.unwrap() }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while service
        .proxies
        .connected()
        .first()
        .map(|p| p.version.clone())
        != Some(v1.version.clone())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy never reported v1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!poll.is_finished(), "the poll waits while nothing changed");
    let v2 = snapshot("v2");
    service.publisher.publish(&v2);
    let response = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[VERSION_HEADER], v2.version.as_str());

    // Nothing new within `wait`: 304.
    let response = client
        .get(format!(
            "{}?proxy=p1&version={}&wait=1",
            service.url, v2.version
        ))
        .bearer_auth(&service.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    let proxies = service.proxies.connected();
    assert_eq!(proxies.len(), 1);
    assert_eq!(
        (proxies[0].id.as_str(), proxies[0].version.as_str()),
        ("p1", v2.version.as_str())
    );
}

/// Whether a fresh client trusting `ca` completes a TLS handshake (any answer will do:
/// a wrong token gets 401 at once).
async fn connects(service: &Service, ca: &[u8]) -> bool {
    client(ca)
        .get(format!("{}?proxy=p1", service.url))
        .bearer_auth("wrong-token")
        .send()
        .await
        .is_ok()
}

/// Replaces `path` the way a Secret volume changes: the new contents appear at once.
fn replace(path: &std::path::Path, contents: &[u8]) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, contents).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let service = start().await;
    assert!(connects(&service, &service.ca).await);

    // A renewal from a new CA (cert-manager rotating its CA): the service serves it to
    // new connections without a restart. (A bad replacement keeping the old pair is
    // tested on the proxy, which shares the implementation: switchboard-certs.)
    let renewed = tempdir::Dir::new("renewed");
    let new = pki::generate(&renewed.0, &["localhost".into()]).unwrap();
    let new_ca = std::fs::read(&new.ca).unwrap();
    assert!(!connects(&service, &new_ca).await, "not renewed yet");
    replace(&service.files.key, &std::fs::read(&new.key).unwrap());
    replace(&service.files.cert, &std::fs::read(&new.cert).unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !connects(&service, &new_ca).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !connects(&service, &service.ca).await,
        "the old certificate is no longer served"
    );
}

/// A rotated token (the Secret volume updated) is accepted within the refresh interval
/// and the old one refused, with no restart; an emptied file refuses every proxy.
#[tokio::test]
async fn a_rotated_token_takes_effect_without_a_restart() {
    let service = start().await;
    let client = client(&service.ca);
    let status = |token: String| {
        let request = client
            .get(format!("{}?proxy=p1&wait=0", service.url))
            .bearer_auth(token)
            .send();
        async move { request.await.unwrap().status().as_u16() }
    };
    // Admitted: 200 with a Snapshot or 304 with none published yet; never 401 or 503.
    let admitted = |code: u16| code == 200 || code == 304;
    assert!(admitted(status(service.token.clone()).await));

    let rotated = "a-rotated-token-for-the-config-channel-0001";
    replace(&service.files.token, rotated.as_bytes());
    let mut accepted = false;
    for _ in 0..100 {
        if admitted(status(rotated.to_string()).await) {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted, "the rotated token is accepted within 2 s");
    assert_eq!(
        status(service.token.clone()).await,
        401,
        "the old one is not"
    );

    replace(&service.files.token, b"");
    let mut refused = false;
    for _ in 0..100 {
        if status(rotated.to_string()).await == 503 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "an empty token file refuses every proxy");
}
