//! Kept-alive HTTP/1.1 connections to the backends.
//!
//! Each backend keeps a stack of idle connections ([`IdleConns`]): a request
//! takes the most recently used one (so the others age out and close after
//! `balance.idle_timeout`), or opens a new one, and the connection goes back
//! once its response has been read. These are hyper's client connections
//! driven directly rather than through hyper-util's pooled `Client`, which
//! per request looks its pool up by scheme and authority, needs an absolute
//! URI, and spawns a task to put the connection back.
//!
//! A connection has no task of its own: the request using it drives it
//! ([`Conn::drive`]), while it waits for the response head
//! ([`Connector::send`]) and then while the response body streams to the
//! client (the proxy's body polls it). A request and its response are then
//! the work of one task, the client connection's, as in an event loop:
//! with a task per backend connection every request cost a message to that
//! task, a wake-up and a poll of it, and a wake-up back. An idle connection
//! is not polled: one the backend closed meanwhile is found out when next
//! used (the request, not written, goes on another connection) or by the
//! reaper ([`IdleConns::reap`]). Only a connection still sending a request
//! body after its response ended (the backend answered early), or one
//! becoming a tunnel (`101`), gets a task to finish on.
//!
//! A request that a reused connection could not even start sending (the
//! backend had just closed it) is sent again on another connection, as
//! hyper-util's client does; a fresh connection's failure is the backend's.
//!
//! Buffers are bounded: a connection reads at most
//! [`MAX_BUF`] ahead of the client it forwards to.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use tower::ServiceExt;

use crate::backend::Backend;
use crate::proxy::Body;

/// Idle connections kept per backend at most.
pub const MAX_IDLE: usize = 1024;

/// A request that may not be sent twice never goes on a connection whose
/// last response ended less than this ago: a backend that closes a
/// connection right after answering on it (without saying so) has done so
/// well within this time, and the balancer then sees it closed, where a
/// request sent on it at once would meet the close and could be neither
/// answered nor sent again. Requests that may be retried take the newest
/// connection whatever its age.
pub const SETTLE: Duration = Duration::from_millis(10);

/// The most a connection buffers, either way: a backend connection's read
/// buffer, and (in [`crate::server`]) what waits for a client that does
/// not read. hyper's default is about 400 KiB.
pub const MAX_BUF: usize = 64 * 1024;

/// hyper's connection future (with upgrades), driven by whoever holds it.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One connection to a backend: the half that sends requests and the
/// connection itself, which whoever holds it drives.
pub struct Conn {
    tx: http1::SendRequest<Body>,
    /// `None` once the connection ended (closed, failed, or upgraded).
    /// (In a mutex only so that a body holding it is `Sync`, as hyper's
    /// boxed bodies must be: it is only ever reached by `get_mut`.)
    io: Option<Mutex<Driver>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("open", &self.io.is_some())
            .field("ready", &self.tx.is_ready())
            .finish()
    }
}

impl Conn {
    /// Reads and writes what the connection can now (the request, the
    /// response, its body), and has `cx` woken when it can do more.
    /// False once the connection has ended.
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(io) = self.io.as_mut() {
            let io = io.get_mut().unwrap_or_else(|p| p.into_inner());
            if let Poll::Ready(r) = io.as_mut().poll(cx) {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "backend connection ended");
                }
                self.io = None;
            }
        }
        self.io.is_some()
    }

    /// [`Conn::drive`] with no one to wake: takes in what already happened
    /// (its response's end, the backend closing it).
    fn drive_now(&mut self) -> bool {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        self.drive(&mut cx)
    }

    /// Open and ready for its next request (its last exchange is over).
    pub fn is_ready(&self) -> bool {
        self.io.is_some() && self.tx.is_ready()
    }

    /// The connection's future, for a task of its own (a tunnel's
    /// connection finishing its upgrade); `None` if it has ended.
    pub fn into_driver(self) -> Option<Driver> {
        self.io
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A connection that can wait idle for its next request.
pub trait Pooled {
    /// Fit for a request now, as far as is known without waiting (the
    /// backend has not closed it).
    fn ready(&self) -> bool;
    /// [`Pooled::ready`] after taking in what happened since (for the
    /// reaper).
    fn alive(&mut self) -> bool;
}

impl Pooled for Conn {
    fn ready(&self) -> bool {
        self.is_ready()
    }

    fn alive(&mut self) -> bool {
        self.drive_now() && self.is_ready()
    }
}

/// A backend's idle connections, the most recently used last: hyper's
/// ([`IdleConns`]) and the direct path's ([`crate::direct::RawIdle`]).
#[derive(Debug)]
pub struct Idle<C> {
    stack: Mutex<Vec<(C, Instant)>>,
}

/// A backend's idle hyper connections.
pub type IdleConns = Idle<Conn>;

impl<C> Default for Idle<C> {
    fn default() -> Self {
        Idle {
            stack: Mutex::new(Vec::new()),
        }
    }
}

impl<C: Pooled> Idle<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(C, Instant)>> {
        self.stack.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used connection that is ready for a request,
    /// idle at least `min_idle` ([`SETTLE`] or zero) and less than
    /// `max_idle`; closed ones met on the way are dropped.
    pub fn take(&self, now: Instant, min_idle: Duration, max_idle: Duration) -> Option<C> {
        let mut s = self.lock();
        let mut i = s.len();
        while i > 0 {
            i -= 1;
            let idle = now.saturating_duration_since(s[i].1);
            if idle >= max_idle {
                // Every connection below it has waited longer.
                s.drain(..=i);
                return None;
            }
            if !s[i].0.ready() {
                s.remove(i);
                continue;
            }
            if idle >= min_idle {
                return Some(s.remove(i).0);
            }
        }
        None
    }

    /// Puts a connection ready for its next request back.
    pub fn put(&self, c: C, now: Instant) {
        let mut s = self.lock();
        if s.len() >= MAX_IDLE {
            s.remove(0);
        }
        s.push((c, now));
    }

    /// Drops the connections closed (by the backend, seen now) or idle for
    /// `max_idle`; returns how many are left.
    pub fn reap(&self, now: Instant, max_idle: Duration) -> usize {
        let mut s = self.lock();
        s.retain_mut(|(c, since)| now.saturating_duration_since(*since) < max_idle && c.alive());
        s.len()
    }

    /// Idle connections now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a request could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, timed out).
    Connect,
    /// The connection failed before a response head came.
    Broken,
    /// A kept-alive connection closed without a byte of answer to an
    /// idempotent request it carried: perhaps the backend's keep-alive
    /// ending as the request came, perhaps the backend dying. Not held
    /// against it ([`crate::proxy::StaleRetry`]).
    Stale,
}

/// Opens connections to the backends and sends requests on them.
#[derive(Clone, Debug)]
pub struct Connector {
    tcp: HttpConnector,
    h1: http1::Builder,
    max_idle: Duration,
}

impl Connector {
    /// Connections with `TCP_NODELAY`, opened within `connect_timeout`, kept
    /// idle at most `max_idle`.
    pub fn new(connect_timeout: Duration, max_idle: Duration) -> Connector {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.enforce_http(true);
        let mut h1 = http1::Builder::new();
        h1.max_buf_size(MAX_BUF);
        Connector { tcp, h1, max_idle }
    }

    /// How long a connection may stay idle.
    pub fn max_idle(&self) -> Duration {
        self.max_idle
    }

    async fn connect(&self, uri: &Uri) -> Result<Conn, SendError> {
        let io = self
            .tcp
            .clone()
            .oneshot(uri.clone())
            .await
            .map_err(|_| SendError::Connect)?;
        let (tx, conn) = self
            .h1
            .handshake(io)
            .await
            .map_err(|_| SendError::Connect)?;
        Ok(Conn {
            tx,
            io: Some(Mutex::new(Box::pin(conn.with_upgrades()))),
        })
    }

    /// Sends `req` (origin-form URI) to `backend` on an idle connection or
    /// a new one, driving the connection until the response head comes;
    /// returns the response head and the connection, to be driven while the
    /// body is read and given back with [`checkin`] at its end.
    pub async fn send(
        &self,
        backend: &Backend,
        mut req: Request<Body>,
        retryable: bool,
        fresh: bool,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        let min_idle = if retryable { Duration::ZERO } else { SETTLE };
        loop {
            let idle = if fresh {
                None
            } else {
                backend.conns.take(Instant::now(), min_idle, self.max_idle)
            };
            let (mut c, reused) = match idle {
                Some(c) => (c, true),
                None => (self.connect(&backend.connect_uri).await?, false),
            };
            let mut response = std::pin::pin!(c.tx.try_send_request(req));
            // This task writes the request and reads the answer: when the
            // connection ends instead, it answers the request with an
            // error first.
            let result = std::future::poll_fn(|cx| {
                c.drive(cx);
                response.as_mut().poll(cx)
            })
            .await;
            match result {
                // hyper's bound on a head is approximate (its buffer may
                // have grown past it on an earlier body): the documented
                // one is exact.
                Ok(resp)
                    if crate::proxy::head_len(
                        resp.status().as_str().len() + 16,
                        resp.headers(),
                    ) > MAX_BUF =>
                {
                    return Err(SendError::Broken)
                }
                Ok(resp) => return Ok((resp, c)),
                Err(mut e) => match e.take_message() {
                    // Never started on a connection the backend had just
                    // closed: nothing reached it, try another connection.
                    Some(r) if reused => req = r,
                    None if reused && retryable && closed_unanswered(e.error()) => {
                        return Err(SendError::Stale)
                    }
                    _ => return Err(SendError::Broken),
                },
            }
        }
    }
}

/// The connection ended (closed or reset by the backend) before any
/// answer to the request on it.
fn closed_unanswered(e: &hyper::Error) -> bool {
    e.is_incomplete_message()
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                )
            })
}

/// Gives a connection whose response has been read back to its backend:
/// at once when it is ready for the next request, else once it is (it may
/// still be sending a request body the backend answered early), driven by
/// a task of its own meanwhile; a closed one is dropped.
pub fn checkin(backend: &Arc<Backend>, mut c: Conn) {
    if c.is_ready() || (c.drive_now() && c.is_ready()) {
        backend.conns.put(c, Instant::now());
        return;
    }
    if c.io.is_none() || c.tx.is_closed() {
        return;
    }
    let backend = backend.clone();
    tokio::spawn(async move {
        let ready = std::future::poll_fn(|cx| {
            if !c.drive(cx) {
                return Poll::Ready(false);
            }
            if c.tx.is_ready() {
                Poll::Ready(true)
            } else {
                Poll::Pending
            }
        })
        .await;
        if ready {
            backend.conns.put(c, Instant::now());
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::body::Body as _;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::backend::Source;

    /// An HTTP/1.1 origin on loopback that counts the connections it
    /// accepted and answers `?size=N` bytes (else `hello`).
    async fn origin() -> (String, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        let size = req
                            .uri()
                            .query()
                            .and_then(|q| q.strip_prefix("size="))
                            .and_then(|n| n.parse::<usize>().ok());
                        let body = match size {
                            Some(n) => Bytes::from(vec![b'x'; n]),
                            None => Bytes::from_static(b"hello"),
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body)))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn get(path: &'static str) -> Request<Body> {
        let mut r = Request::new(crate::proxy::empty());
        *r.uri_mut() = Uri::from_static(path);
        r.headers_mut()
            .insert(hyper::header::HOST, "origin".parse().expect("host"));
        r
    }

    /// Reads a response's body, driving its connection as the proxy does.
    async fn body(resp: Response<Incoming>, c: &mut Conn) -> Vec<u8> {
        let mut body = resp.into_body();
        let mut out = Vec::new();
        std::future::poll_fn(|cx| {
            let mut drove = false;
            loop {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Ok(d) = f.into_data() {
                            out.extend_from_slice(&d);
                        }
                        drove = false;
                    }
                    Poll::Ready(Some(Err(e))) => panic!("body: {e}"),
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending if !drove => {
                        c.drive(cx);
                        drove = true;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        out
    }

    #[tokio::test]
    async fn connections_are_reused_closed_ones_skipped_idle_ones_reaped() {
        let (addr, accepted) = origin().await;
        let backend = Arc::new(Backend::new("p", &addr, Source::Static, 1));
        let c = Connector::new(Duration::from_secs(1), Duration::from_secs(60));
        for path in ["/x", "/x?size=300000", "/x", "/x?size=70000", "/x"] {
            let (resp, mut conn) = c
                .send(&backend, get(path), true, false)
                .await
                .expect("sent");
            let got = body(resp, &mut conn).await;
            if path == "/x" {
                assert_eq!(&got[..], b"hello");
            } else {
                assert!(got.len() >= 70000 && got.iter().all(|b| *b == b'x'));
            }
            checkin(&backend, conn);
            // A connection not ready yet is given back by a task.
            tokio::time::timeout(Duration::from_secs(5), async {
                while backend.conns.is_empty() {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("given back");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection reused");

        // Two requests at once need two connections; both are kept.
        let (a, b) = tokio::join!(
            c.send(&backend, get("/x"), true, false),
            c.send(&backend, get("/x"), true, false)
        );
        let (ra, mut ta) = a.expect("a");
        let (rb, mut tb) = b.expect("b");
        body(ra, &mut ta).await;
        body(rb, &mut tb).await;
        checkin(&backend, ta);
        checkin(&backend, tb);
        tokio::time::timeout(Duration::from_secs(5), async {
            while backend.conns.len() < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("both given back");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // Connections idle longer than the limit are closed, not used.
        let later = Instant::now() + Duration::from_secs(61);
        assert!(backend
            .conns
            .take(later, Duration::ZERO, Duration::from_secs(60))
            .is_none());
        assert!(backend.conns.is_empty(), "the older one went too");
        c.send(&backend, get("/x"), true, false)
            .await
            .expect("sent on a new connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(
            backend.conns.reap(Instant::now(), Duration::from_secs(60)),
            0
        );
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_while_idle_is_not_used() {
        // An origin that answers one request per connection (keep-alive, as
        // far as the balancer can tell), then closes it.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nonce")
                        .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            }
        });
        let backend = Arc::new(Backend::new("p", &addr, Source::Static, 1));
        let c = Connector::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..3 {
            let (resp, mut conn) = c
                .send(&backend, get("/x"), true, false)
                .await
                .expect("sent");
            assert_eq!(&body(resp, &mut conn).await[..], b"once");
            checkin(&backend, conn);
            assert_eq!(backend.conns.len(), 1, "kept idle");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // The reaper finds it closed too.
        assert_eq!(
            backend.conns.reap(Instant::now(), Duration::from_secs(60)),
            0
        );
    }

    #[tokio::test]
    async fn a_dead_backend_is_a_connect_failure() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        drop(l);
        let backend = Backend::new("p", &addr, Source::Static, 1);
        let c = Connector::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(
            c.send(&backend, get("/x"), true, false).await.err(),
            Some(SendError::Connect)
        );
    }
}
