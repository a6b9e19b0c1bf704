//! TCP listener -> TLS when configured -> hyper (HTTP/1.1 and HTTP/2: h2c in plain
//! HTTP, ALPN over TLS) -> pipeline, within the proxy's bounds on connections and
//! requests, and a graceful drain on shutdown.
//!
//! The bounds (docs/proxy.md, "Connections and load"):
//! - at most `--max-connections` client connections are served. Past it, a few
//!   `SPARE_CONNECTIONS` more are accepted to answer probes (`/healthz`, `/readyz`) and
//!   to tell everyone else 503 with `Retry-After`; past those, a new connection is
//!   closed at once. A full proxy stays observable and never leaves clients hanging
//!   in the listen backlog.
//! - at most `--max-requests-in-flight` requests are served at once; past it, 503 with
//!   `Retry-After` (probes are always answered).
//! - both are lowered to fit the process's open-file limit (`limits`), so that the
//!   proxy runs out of connections it may accept before it runs out of descriptors.
//! - a connection must send its first byte within `--connection-first-byte-timeout`,
//!   and is closed after `--connection-idle-timeout` quiet (`connection`).

mod connection;
mod connection_metrics;
mod limits;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::error::ProxyError;
use crate::gateway::Gateway;
use crate::pipeline;
use connection::{Activity, Closed, HeldBody, Verdict, Watch, WatchedIo};
use connection_metrics::{ConnectionMetrics, Counted};
use limits::Limits;

/// Connections accepted past `--max-connections` to answer probes and 503s.
const SPARE_CONNECTIONS: usize = 64;

/// How long a spare connection may stay: one short request, then it is closed.
const SPARE_IDLE: Duration = Duration::from_secs(5);

/// How long a spare connection may take to speak: a probe speaks at once, and a
/// silent connection must not keep a spare place from the next probe for long.
const SPARE_FIRST_BYTE: Duration = Duration::from_secs(2);

/// What every connection task shares.
struct Shared {
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    /// For connections within `--max-connections`.
    builder: auto::Builder<TokioExecutor>,
    /// For spare connections: one request each.
    spare_builder: auto::Builder<TokioExecutor>,
    /// Requests in flight.
    requests: Arc<Semaphore>,
    limits: Limits,
    /// `None` with metrics off.
    metrics: Option<ConnectionMetrics>,
}

/// A connection's place, given back when the connection ends: within the limit, or a
/// spare one.
struct Place {
    _permit: OwnedSemaphorePermit,
    spare: bool,
}

/// Serves connections from `listener` until `shutdown` resolves, then stops accepting
/// and waits up to the shutdown timeout for in-flight requests and streams. With `tls`,
/// each connection first completes a TLS handshake within the header read timeout.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = Limits::for_process(&gateway.settings);
    let metrics = gateway.metrics.as_ref().and_then(|metrics| {
        ConnectionMetrics::register(metrics.registry())
            .inspect_err(|error| tracing::error!(%error, "cannot set up connection metrics"))
            .ok()
    });
    let shared = Arc::new(Shared {
        metrics,
        builder: builder(&gateway, false),
        spare_builder: builder(&gateway, true),
        requests: Arc::new(Semaphore::new(limits.requests)),
        gateway,
        tls,
        limits,
    });
    let connections = Arc::new(Semaphore::new(limits.connections));
    let spares = Arc::new(Semaphore::new(SPARE_CONNECTIONS));
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors despite the limits (another part of the
                // process holds many): back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let place = if let Ok(permit) = connections.clone().try_acquire_owned() {
            Place {
                _permit: permit,
                spare: false,
            }
        } else if let Ok(permit) = spares.clone().try_acquire_owned() {
            Place {
                _permit: permit,
                spare: true,
            }
        } else {
            // Closed at once: the client learns now, instead of waiting in the
            // backlog for a slot that may never come.
            drop(stream);
            shared.connection_closed(Closed::Refused);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(shared.clone(), stream, place, stopping.clone()));
    }

    drop(listener);
    shared.gateway.draining.store(true, Ordering::Relaxed);
    let timeout = shared.gateway.settings.shutdown_timeout;
    tracing::info!(
        ?timeout,
        "shutting down: no new connections; finishing in-flight requests"
    );
    let _ = stop.send(true);
    // Every connection gives its permit back when it ends.
    let all_ended = async {
        let served = u32::try_from(limits.connections).unwrap_or(u32::MAX);
        let _ = connections.acquire_many(served).await;
        let _ = spares.acquire_many(SPARE_CONNECTIONS as u32).await;
    };
    tokio::select! {
        () = all_ended => tracing::info!("all requests finished"),
        () = tokio::time::sleep(timeout) => {
            tracing::warn!("shutdown timeout reached; closing the remaining connections");
        }
    }
}

/// hyper's settings for client connections; `spare` ones serve one request.
fn builder(gateway: &Gateway, spare: bool) -> auto::Builder<TokioExecutor> {
    // hyper refuses a head past its buffer with a bare 431; heads between the limit
    // and twice it reach the pipeline, which refuses them with a 431 in the client's
    // API format (`intake::check_head`). Past twice the limit, hyper's answer will do.
    let settings = &gateway.settings;
    let head_buffer = settings.max_header_bytes.saturating_mul(2).max(8192);
    let header_read_timeout = if spare {
        settings.header_read_timeout.min(SPARE_IDLE)
    } else {
        settings.header_read_timeout
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(!spare)
        .max_buf_size(head_buffer);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(head_buffer).unwrap_or(u32::MAX));
    if spare {
        builder.http2().max_concurrent_streams(4);
    }
    builder
}

/// One connection, from its first byte (and TLS handshake) to its end.
async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    place: Place,
    stopping: watch::Receiver<bool>,
) {
    let spare = place.spare;
    let _counted = shared
        .metrics
        .as_ref()
        .map_or_else(Counted::none, ConnectionMetrics::opened);
    // Nothing of hyper's is set up (no buffers, no timers) until the client speaks.
    let mut first_byte = shared.limits.first_byte;
    if spare {
        first_byte = first_byte.min(SPARE_FIRST_BYTE);
    }
    let handshake_timeout = shared.gateway.settings.header_read_timeout;
    if shared.tls.is_some() {
        // The first byte is the start of the handshake, which is bounded as a whole.
        first_byte = first_byte.min(handshake_timeout);
    }
    // `peek`, not `readable`: readiness may be spurious, a peeked byte is not.
    let mut first = [0u8; 1];
    match tokio::time::timeout(first_byte, stream.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        // Gone before saying anything.
        Ok(_) => return,
        Err(_) => {
            shared.connection_closed(Closed::FirstByte);
            return;
        }
    }
    let Some(tls) = &shared.tls else {
        drive(&shared, TokioIo::new(stream), spare, stopping).await;
        drop(place);
        return;
    };
    // Bounded: a client that never finishes a handshake costs its connection until
    // the timeout, never the accept loop.
    match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
        Ok(Ok(stream)) => drive(&shared, TokioIo::new(stream), spare, stopping).await,
        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            shared.connection_closed(Closed::FirstByte);
        }
    }
    drop(place);
}

/// Serves HTTP on `io` until the connection ends, its watch closes it, or shutdown
/// has it finish what is open.
async fn drive<I>(shared: &Arc<Shared>, io: I, spare: bool, mut stopping: watch::Receiver<bool>)
where
    I: Read + Write + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let service = {
        let shared = shared.clone();
        let activity = activity.clone();
        service_fn(move |request: hyper::Request<Incoming>| {
            let open = activity.open();
            let (admitted, slot) = shared.admit(&request, spare);
            // Boxed: hyper keeps a slot the size of this future in every connection,
            // idle or not; a pointer there instead of the whole request state keeps
            // 10,000 idle keep-alive connections cheap (bench/README.md).
            let handled = Box::pin(pipeline::handle(shared.gateway.clone(), request, admitted));
            async move {
                let response = handled.await;
                Ok::<_, Infallible>(response.map(|body| HeldBody::new(body, Some(open), slot)))
            }
        })
    };
    let builder = if spare {
        &shared.spare_builder
    } else {
        &shared.builder
    };
    let idle = if spare {
        shared.limits.idle.min(SPARE_IDLE)
    } else {
        shared.limits.idle
    };
    let connection = builder.serve_connection(WatchedIo::new(io, activity.clone()), service);
    tokio::pin!(connection);
    let mut watch = Watch::new(idle);
    let period = watch.period();
    let mut looks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut winding = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            _ = looks.tick() => match watch.look(&activity, period) {
                Verdict::Keep => {}
                Verdict::Wind(why) => {
                    shared.connection_closed(why);
                    if !winding {
                        winding = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
                Verdict::Drop(why) => {
                    // An idle connection was counted when it was wound down.
                    if why == Closed::Stalled {
                        shared.connection_closed(why);
                    }
                    return;
                }
            },
            changed = stopping.changed(), if !winding => {
                // Shutdown (or the sender gone, which only happens at shutdown too).
                let _ = changed;
                winding = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

// === impl Shared ===

impl Shared {
    /// Whether there is room for `request`, and its slot among the requests in flight
    /// when there is. Probes need no slot.
    fn admit(
        &self,
        request: &hyper::Request<Incoming>,
        spare: bool,
    ) -> (Result<(), ProxyError>, Option<OwnedSemaphorePermit>) {
        if pipeline::is_probe(request.uri().path()) {
            return (Ok(()), None);
        }
        if spare {
            return (Err(ProxyError::Overloaded("connections")), None);
        }
        match self.requests.clone().try_acquire_owned() {
            Ok(slot) => (Ok(()), Some(slot)),
            Err(_) => (Err(ProxyError::Overloaded("requests in flight")), None),
        }
    }

    fn connection_closed(&self, why: Closed) {
        if let Some(metrics) = &self.metrics {
            metrics.closed(why);
        }
    }
}
