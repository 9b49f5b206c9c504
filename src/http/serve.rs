//! The HTTP server loop: accepts connections and serves each with hyper, bounded three
//! ways so that one client cannot take the service down.
//!
//! - **Header read timeout**: a request's head must arrive within it, counted from the
//!   first byte of the request (a slowloris client that sends a line now and then is cut
//!   off).
//! - **Keep-alive idle timeout**: a connection with no request in progress and no byte
//!   of a new one is closed after it.
//! - **Connection cap**: at most this many connections are open. At the cap a new
//!   connection closes the idlest ones (no request in progress, longest without one);
//!   only when every open connection is serving a request is the new one refused. The
//!   cap stays below the descriptor limit, so descriptors remain for MariaDB, Redis and
//!   Kafka.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection waits for
//! its next request, so it would close idle connections at the header timeout: both
//! clocks are kept here instead, from what the connection reads and what it serves.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::configuration::ConnectionSettings;
use crate::telemetry::metrics;

/// Largest read buffer of a connection. hyper's default (about 400 KiB) lets every held
/// connection grow that large with a long head; a request head here is a few hundred
/// bytes and a body at most 16 KiB, which the body reads in chunks anyway.
const MAX_READ_BUFFER: usize = 32 * 1024;

/// A connection's phase, as the watchdog reads it.
const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// Why a connection was closed by the server rather than by its client.
#[derive(Clone, Copy)]
enum Closed {
    HeaderTimeout,
    IdleTimeout,
    Evicted,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::Evicted => "evicted",
        }
    }
}

/// What the server knows of one connection: its phase and since when, shared by the
/// connection's reader, its service and its watchdog.
struct Conn {
    phase: AtomicU8,
    /// Milliseconds since the server's start at which the current phase began.
    since: AtomicU64,
    /// Told when a request's first byte starts the header clock, which runs out sooner
    /// than the idle clock the watchdog may be sleeping on.
    head_started: Notify,
    evict: CancellationToken,
}

/// The open connections, and the clock their phases are read against.
struct Registry {
    started: Instant,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    limits: ConnectionSettings,
}

impl Registry {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Makes room for one more connection: false when every open connection is serving a
    /// request. At the cap it closes the idlest sixty-fourth of the connections at once,
    /// so a flood of new connections pays for one scan per batch, not per connection.
    fn admit(&self, id: u64, conn: Arc<Conn>) -> bool {
        let mut open = self
            .open
            .lock()
            .expect("the registry lock is never poisoned");
        if open.len() >= self.limits.max_connections {
            let mut idle: Vec<(u64, u64)> = open
                .iter()
                .filter(|(_, c)| c.phase.load(Ordering::Acquire) != BUSY)
                .map(|(id, c)| (c.since.load(Ordering::Acquire), *id))
                .collect();
            if idle.is_empty() {
                return false;
            }
            let batch = (self.limits.max_connections / 64).clamp(1, idle.len());
            idle.select_nth_unstable(batch - 1);
            for (_, victim) in &idle[..batch] {
                if let Some(c) = open.remove(victim) {
                    c.evict.cancel();
                }
            }
        }
        open.insert(id, conn);
        metrics::connections_open(open.len());
        true
    }

    fn forget(&self, id: u64) {
        let mut open = self
            .open
            .lock()
            .expect("the registry lock is never poisoned");
        if open.remove(&id).is_some() {
            metrics::connections_open(open.len());
        }
    }
}

impl Conn {
    fn new(now: u64) -> Self {
        Self {
            phase: AtomicU8::new(IDLE),
            since: AtomicU64::new(now),
            head_started: Notify::new(),
            evict: CancellationToken::new(),
        }
    }

    fn enter(&self, phase: u8, now: u64) {
        self.since.store(now, Ordering::Release);
        self.phase.store(phase, Ordering::Release);
    }

    /// The first byte of a request head after an idle spell starts the header clock.
    fn read_some(&self, clock: &Registry) {
        if self.phase.load(Ordering::Acquire) == IDLE {
            self.enter(HEAD, clock.now());
            self.head_started.notify_one();
        }
    }

    /// When the current phase runs out (ms since the server's start), and what closes
    /// the connection then; a busy connection is bounded by the request timeout instead.
    fn deadline(&self, limits: &ConnectionSettings) -> Option<(u64, Closed)> {
        let since = self.since.load(Ordering::Acquire);
        match self.phase.load(Ordering::Acquire) {
            IDLE => Some((
                since + millis(limits.keep_alive_timeout),
                Closed::IdleTimeout,
            )),
            HEAD => Some((since + millis(limits.header_timeout), Closed::HeaderTimeout)),
            _ => None,
        }
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// A socket that tells its [`Conn`] when bytes arrive.
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.read_some(&self.registry);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets
/// every connection finish the request in hand, and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let registry = Arc::new(Registry {
        started: Instant::now(),
        open: Mutex::new(HashMap::new()),
        limits,
    });
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut shutdown = pin!(shutdown.into_future());
    let mut next_id = 0u64;
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        next_id += 1;
        let conn = Arc::new(Conn::new(registry.now()));
        if !registry.admit(next_id, conn.clone()) {
            metrics::connection_refused();
            continue;
        }
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(
            next_id,
            Watched {
                stream,
                conn,
                registry: registry.clone(),
            },
            router.clone(),
            stopping.clone(),
        ));
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// Accept errors other than a connection the client gave up: most likely out of
/// descriptors (which the cap is there to prevent); wait a little for some to close.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves one connection, closing it when its header or idle clock runs out, when the
/// cap evicts it, or (after the request in hand) when the server stops.
async fn serve_connection(id: u64, io: Watched, router: Router, stopping: CancellationToken) {
    let conn = io.conn.clone();
    let registry = io.registry.clone();
    let tracked = conn.clone();
    let clock = registry.clone();
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        tracked.enter(BUSY, clock.now());
        let answer = router.clone().call(request.map(axum::body::Body::new));
        let tracked = tracked.clone();
        let clock = clock.clone();
        async move {
            let response = answer.await;
            tracked.enter(IDLE, clock.now());
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(MAX_READ_BUFFER);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = pin!(connection);
    let limits = registry.limits.clone();
    // Rechecked this often while a request is in progress (its own timeout bounds it).
    let recheck = millis(limits.header_timeout.min(limits.keep_alive_timeout));
    let mut draining = false;
    let closed = loop {
        let at = conn
            .deadline(&limits)
            .map_or(registry.now() + recheck, |(at, _)| at);
        let wake = registry.started + Duration::from_millis(at);
        tokio::select! {
            _ = connection.as_mut() => break None,
            _ = conn.evict.cancelled() => break Some(Closed::Evicted),
            _ = conn.head_started.notified() => {}
            _ = stopping.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                // The phase may have moved on while this slept: only a deadline that
                // still holds closes the connection.
                if let Some((at, reason)) = conn.deadline(&limits) {
                    if at <= registry.now() {
                        break Some(reason);
                    }
                }
            }
        }
    };
    if let Some(reason) = closed {
        metrics::connection_closed(reason.label());
    }
    registry.forget(id);
}
