//! TCP listener -> TLS when configured -> hyper (HTTP/1.1 and HTTP/2: h2c in plain
//! HTTP, ALPN over TLS) -> pipeline, with limits on TLS handshakes and request heads and
//! a graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::gateway::Gateway;
use crate::pipeline;

/// Serves connections from `listener` until `shutdown` resolves, then stops accepting
/// and waits up to the shutdown timeout for in-flight requests and streams. With `tls`,
/// each connection first completes a TLS handshake within the header read timeout.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    // hyper refuses a head past its buffer with a bare 431; heads between the limit
    // and twice it reach the pipeline, which refuses them with a 431 in the client's
    // API format (`intake::check_head`). Past twice the limit, hyper's answer will do.
    let head_buffer = gateway
        .settings
        .max_header_bytes
        .saturating_mul(2)
        .max(8192);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(gateway.settings.header_read_timeout)
        .max_buf_size(head_buffer);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(head_buffer).unwrap_or(u32::MAX));

    let builder = Arc::new(builder);
    let handshake_timeout = gateway.settings.header_read_timeout;
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Usually out of file descriptors; back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let service = service_fn(move |request| {
            // Boxed: hyper keeps a slot the size of this future in every connection,
            // idle or not; a pointer there instead of the whole request state keeps
            // 10,000 idle keep-alive connections cheap (bench/README.md).
            let handled = Box::pin(pipeline::handle(gateway.clone(), request));
            async move { Ok::<_, Infallible>(handled.await) }
        });
        let Some(tls) = &tls else {
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            });
            continue;
        };
        // The handshake runs in the connection's own task, bounded: a client that never
        // finishes one costs its connection until the timeout, never the accept loop.
        let handshake = tls.accept(stream);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(handshake_timeout, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }

    drop(listener);
    gateway.draining.store(true, Ordering::Relaxed);
    let timeout = gateway.settings.shutdown_timeout;
    tracing::info!(
        ?timeout,
        "shutting down: no new connections; finishing in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all requests finished"),
        () = tokio::time::sleep(timeout) => {
            tracing::warn!("shutdown timeout reached; closing the remaining connections");
        }
    }
}
