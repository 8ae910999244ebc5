//! The listener of every public Weir server (the edge's clients, the ingest
//! gateway's agents), with the limits a public server needs: at most
//! `max_connections` connections (the rest wait in the kernel's backlog),
//! `header_read_timeout` to send a request's headers, `idle_timeout` without
//! any progress on a connection (a keep-alive connection with no next
//! request, or a client that neither sends nor reads), and `send_timeout` for
//! a client that stops reading while the server has bytes to send — so a
//! slow or silent client costs a connection slot for a bounded time, never
//! memory without bound. Each server names these settings in its own section
//! (`edge.idle_timeout`, `ingest.idle_timeout`) and checks them with
//! [`ConnLimits::validate`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long open requests get to finish once shutdown starts.
const DRAIN: Duration = Duration::from_secs(10);

/// Connection limits of a public listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections served at once (`<section>.max_connections`).
    pub max_connections: usize,
    /// Time a client gets to send a request's headers.
    pub header_read_timeout: Duration,
    /// A connection without any progress this long is closed.
    pub idle_timeout: Duration,
    /// A client that reads nothing of a response this long is disconnected.
    pub send_timeout: Duration,
    /// Bytes of a response that may wait in a connection's buffer for a
    /// client that does not read; also the largest request head accepted.
    pub max_buf_size: usize,
}

impl ConnLimits {
    /// Checks the limits as `section.max_connections`, `section.…_timeout`:
    /// 1..=1 000 000 connections, timeouts between 100 ms and an hour, a
    /// buffer of at least 8 KiB (hyper's floor).
    pub fn validate(&self, section: &str) -> Result<(), crate::ConfigError> {
        use crate::ConfigError;
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(ConfigError::new(
                format!("{section}.max_connections"),
                "must be between 1 and 1000000",
            ));
        }
        for (key, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("send_timeout", self.send_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                return Err(ConfigError::new(
                    format!("{section}.{key}"),
                    "must be between 100ms and 1h",
                ));
            }
        }
        if self.max_buf_size < 8192 {
            return Err(ConfigError::new(
                format!("{section}.max_buf_size"),
                "must be at least 8192 bytes",
            ));
        }
        Ok(())
    }
}

/// When a connection last made progress, and since when a write has been
/// waiting for the client to read: the watchdog of every public listener,
/// this module's and the balancer's own accept loop alike.
pub struct Activity {
    born: Instant,
    /// Milliseconds since `born`.
    last_progress: AtomicU64,
    /// Milliseconds since `born` + 1 when a write is blocked; 0 when not.
    write_blocked: AtomicU64,
    /// Set by [`Activity::cut`]: the socket fails every read and write.
    cut: std::sync::atomic::AtomicBool,
    /// The tasks last polling the socket, woken by a cut.
    reader: futures::task::AtomicWaker,
    writer: futures::task::AtomicWaker,
}

impl Activity {
    fn now(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn progressed(&self) {
        self.last_progress.store(self.now(), Ordering::Relaxed);
        self.write_blocked.store(0, Ordering::Relaxed);
    }

    /// Notes a write's outcome: progress, or blocked on the client.
    fn wrote(&self, r: &Poll<std::io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => self.progressed(),
            Poll::Pending => {
                let now = self.now() + 1;
                let _ = self.write_blocked.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            _ => {}
        }
    }

    /// Makes the socket fail every read and write from now on, waking
    /// whoever waits on it: for a socket the watchdog no longer owns (an
    /// upgraded connection's tunnel), whose task cannot just be dropped.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.reader.wake();
        self.writer.wake();
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Resolves when the connection has been idle (`limits.idle_timeout`)
    /// or a write has waited for the client (`limits.send_timeout`) too
    /// long; the caller then drops the connection.
    pub async fn expired(&self, limits: ConnLimits) {
        let tick = (limits.idle_timeout.min(limits.send_timeout) / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let now = self.now();
            let blocked = self.write_blocked.load(Ordering::Relaxed);
            if blocked > 0 && now + 1 - blocked >= limits.send_timeout.as_millis() as u64 {
                return;
            }
            let idle = now.saturating_sub(self.last_progress.load(Ordering::Relaxed));
            if idle >= limits.idle_timeout.as_millis() as u64 {
                return;
            }
        }
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "connection cut by its watchdog (idle or not reading)",
    )
}

/// A socket that reports its progress to an [`Activity`].
pub struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    /// `stream`, watched: serve the first, race the second's
    /// [`Activity::expired`] against the connection.
    pub fn new(stream: TcpStream) -> (Watched, Arc<Activity>) {
        let activity = Arc::new(Activity {
            born: Instant::now(),
            last_progress: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            cut: Default::default(),
            reader: Default::default(),
            writer: Default::default(),
        });
        (
            Watched {
                io: stream,
                activity: activity.clone(),
            },
            activity,
        )
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.activity.reader.register(cx.waker());
        if self.activity.is_cut() {
            return Poll::Ready(Err(timed_out()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.progressed();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.activity.writer.register(cx.waker());
        if self.activity.is_cut() {
            return Poll::Ready(Err(timed_out()));
        }
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.activity.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.activity.writer.register(cx.waker());
        if self.activity.is_cut() {
            return Poll::Ready(Err(timed_out()));
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.activity.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown`, then gives
/// open requests [`DRAIN`] to finish.
pub async fn serve_limited(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (io, activity) = Watched::new(stream);
        let svc =
            app.clone()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    req
                });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // At most this much of a response waits in the connection's
            // buffer for a client that does not read (also the largest
            // request head accepted).
            .max_buf_size(limits.max_buf_size);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = permit;
            tokio::select! {
                _ = conn => {}
                // Dropping the connection closes the socket.
                _ = activity.expired(limits) => {}
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
    Ok(())
}
