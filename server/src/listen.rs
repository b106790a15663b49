//! Serving HTTP on a bound listener, on terms no client can stretch: connections are capped,
//! TLS handshakes and request heads have deadlines (the head's also bounds how long an idle
//! keep-alive connection is kept), heads are bounded in size, and shutdown drains what is in
//! flight for a bounded time and then lets go.
//!
//! Bodies are not read here: [`crate::api::body`] reads them under their own deadline and the
//! collector's byte budget, once the caller is known.
//!
//! Architecture invariant: nothing a client sends is held without a bound in count, size or time.

use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::header;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, info, warn};

use crate::tls::Tls;

/// The terms every connection is served on (`[limits]` in server.toml).
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Connections open at once from one source address (an IPv6 /64): one address cannot hold
    /// every slot the agents of the fleet need.
    pub max_connections_per_address: usize,
    /// Time to send a request's head, and the longest a keep-alive connection may sit idle.
    pub header_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; at least 8192.
    pub max_header_bytes: usize,
    /// Time to complete a TLS handshake.
    pub handshake_timeout: Duration,
    /// How long shutdown waits for requests in flight before it lets them go.
    pub drain_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 4096,
            max_connections_per_address: 512,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 << 10,
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// What the listeners turned away, for `/metrics` (each a handle the registry shares).
#[derive(Debug, Default)]
pub struct ConnCounters {
    /// Connections closed at once because `max_connections` were open.
    pub refused_over_cap: Counter,
    /// Connections closed at once because their address had `max_connections_per_address` open.
    pub refused_per_address: Counter,
    /// TLS handshakes that failed or did not finish in time.
    pub handshakes_failed: Counter,
    /// Connections ended by an error: a head too large or too slow, a broken stream.
    pub ended_by_error: Counter,
}

/// One listener's way of serving: its routes, TLS or not, and the shared connection cap.
#[derive(Clone)]
pub struct Serving {
    pub routes: Router,
    pub tls: Option<Tls>,
    pub limits: ConnLimits,
    /// Shared by all listeners of the collector: the cap is on the process, not per port.
    pub slots: Arc<Semaphore>,
    /// Connections open per source address, shared like `slots`.
    pub per_address: Arc<PerAddress>,
    pub counters: Arc<ConnCounters>,
}

/// Open connections by source address (IPv6 by /64, as [`crate::admission::address_key`]).
#[derive(Debug, Default)]
pub struct PerAddress(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection counted against its address until dropped.
pub struct AddressSlot {
    table: Arc<PerAddress>,
    key: std::net::IpAddr,
}

impl PerAddress {
    /// Counts a connection from `ip`, unless `max` are open from its address already.
    pub fn take(table: &Arc<PerAddress>, ip: std::net::IpAddr, max: usize) -> Option<AddressSlot> {
        let key = crate::admission::address_key(ip);
        let mut open = table.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot { table: table.clone(), key })
    }

    /// Addresses with a connection open (the table holds no others).
    pub fn addresses(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Accepts and serves until `shutdown`, then drains for at most `drain_timeout`.
pub async fn run(listener: TcpListener, serving: Serving, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning on the error.
                    warn!(error = %e, "cannot accept a connection; pausing 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(from_address) =
            PerAddress::take(&serving.per_address, peer.ip(), serving.limits.max_connections_per_address)
        else {
            serving.counters.refused_per_address.inc();
            debug!(%peer, max = serving.limits.max_connections_per_address, "connection refused: too many open from this address");
            drop(tcp);
            continue;
        };
        let Ok(slot) = serving.slots.clone().try_acquire_owned() else {
            serving.counters.refused_over_cap.inc();
            debug!(%peer, max = serving.limits.max_connections, "connection refused: too many open");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let serving = serving.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            match &serving.tls {
                None => serve_conn(tcp, peer, &serving, stop).await,
                Some(tls) => {
                    let acceptor = tls.acceptor();
                    match tokio::time::timeout(serving.limits.handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_conn(stream, peer, &serving, stop).await,
                        Ok(Err(e)) => {
                            serving.counters.handshakes_failed.inc();
                            debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            serving.counters.handshakes_failed.inc();
                            debug!(%peer, "TLS handshake did not finish in time");
                        }
                    }
                }
            }
            drop(slot);
            drop(from_address);
        });
    }
    tracker.close();
    if tokio::time::timeout(serving.limits.drain_timeout, tracker.wait()).await.is_err() {
        warn!(
            connections = tracker.len(),
            "requests still in flight after the drain timeout; letting them go"
        );
    } else {
        info!("listener drained");
    }
}

/// Serves one connection's requests with the routes, each request knowing its peer's address.
async fn serve_conn<I>(io: I, peer: SocketAddr, serving: &Serving, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let routes = serving.routes.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut routes = routes.clone();
        let sent_body = !hyper::body::Body::is_end_stream(req.body());
        Box::pin(async move {
            let mut resp = routes.call(req.map(Body::new)).await?;
            // A request refused may have had its body left unread; the connection cannot carry
            // another request then. Saying so keeps clients from reusing it (and losing their
            // next request to its close).
            if sent_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
                resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(resp)
        })
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(serving.limits.header_timeout)
        .max_buf_size(serving.limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let mut conn = builder.serve_connection(TokioIo::new(io), service);
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };
    match result {
        Ok(()) => linger(conn.into_parts().io.into_inner()).await,
        Err(e) => {
            serving.counters.ended_by_error.inc();
            debug!(%peer, error = %e, "connection ended by an error");
        }
    }
}

/// Longest a closing connection is read from and discarded.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes read and discarded from a closing connection.
const LINGER_BYTES: usize = 16 << 20;

/// Closes a connection whose last response was sent. The client may still be sending a body
/// nobody read (a request refused before its body: 401, 413, 429); closing at once would make
/// the kernel answer that with a reset, which can destroy the response before the client reads
/// it, and an agent that never sees its 413 retries the report forever. So the write side is
/// shut (the client sees the end) and what still comes is read and dropped, for a bounded time
/// and amount (nginx's lingering close).
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    if io.shutdown().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut buf = vec![0u8; 16 << 10];
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => break,
        }
    }
}
