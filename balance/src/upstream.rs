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
//! A request that a reused connection could not even start sending (the
//! backend had just closed it) is sent again on another connection, as
//! hyper-util's client does; a fresh connection's failure is the backend's.

use std::sync::{Arc, Mutex};
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

/// The most a connection buffers, either way: a backend connection's read
/// buffer, and (in [`crate::server`]) what waits for a client that does
/// not read. hyper's default is about 400 KiB.
pub const MAX_BUF: usize = 64 * 1024;

/// The sending half of one connection to a backend.
pub type Sender = http1::SendRequest<Body>;

/// A backend's idle connections, the most recently used last.
#[derive(Debug, Default)]
pub struct IdleConns {
    stack: Mutex<Vec<(Sender, Instant)>>,
}

impl IdleConns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Sender, Instant)>> {
        self.stack.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used connection that is open and ready for a
    /// request, if one has been idle less than `max_idle`; closed ones met
    /// on the way are dropped.
    pub fn take(&self, now: Instant, max_idle: Duration) -> Option<Sender> {
        let mut s = self.lock();
        while let Some((tx, since)) = s.pop() {
            if now.saturating_duration_since(since) >= max_idle {
                // Every connection below it has waited longer.
                s.clear();
                return None;
            }
            if tx.is_ready() {
                return Some(tx);
            }
        }
        None
    }

    /// Puts a connection ready for its next request back.
    pub fn put(&self, tx: Sender, now: Instant) {
        let mut s = self.lock();
        if s.len() >= MAX_IDLE {
            s.remove(0);
        }
        s.push((tx, now));
    }

    /// Drops the connections closed or idle for `max_idle`; returns how
    /// many are left.
    pub fn reap(&self, now: Instant, max_idle: Duration) -> usize {
        let mut s = self.lock();
        s.retain(|(tx, since)| !tx.is_closed() && now.saturating_duration_since(*since) < max_idle);
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

    async fn connect(&self, uri: &Uri) -> Result<Sender, SendError> {
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
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "backend connection ended");
            }
        });
        Ok(tx)
    }

    /// Sends `req` (origin-form URI) to `backend` on an idle connection or
    /// a new one; returns the response head and the connection, to be given
    /// back with [`checkin`] once the response is read.
    pub async fn send(
        &self,
        backend: &Backend,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Sender), SendError> {
        loop {
            let (mut tx, reused) = match backend.conns.take(Instant::now(), self.max_idle) {
                Some(tx) => (tx, true),
                None => (self.connect(&backend.connect_uri).await?, false),
            };
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, tx)),
                Err(mut e) => match e.take_message() {
                    // Never started on a connection the backend had just
                    // closed: nothing reached it, try another connection.
                    Some(r) if reused => req = r,
                    _ => return Err(SendError::Broken),
                },
            }
        }
    }
}

/// Gives a connection whose response has been read back to its backend:
/// at once when it is ready for the next request, else once it is (it may
/// still be sending a request body the backend answered early); a closed
/// one is dropped.
pub fn checkin(backend: &Arc<Backend>, mut tx: Sender) {
    if tx.is_ready() {
        backend.conns.put(tx, Instant::now());
    } else if !tx.is_closed() {
        let backend = backend.clone();
        tokio::spawn(async move {
            if tx.ready().await.is_ok() {
                backend.conns.put(tx, Instant::now());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::backend::Source;

    /// An HTTP/1.1 origin on loopback that counts the connections it
    /// accepted.
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
                    let svc = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"hello"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn get() -> Request<Body> {
        let mut r = Request::new(crate::proxy::empty());
        *r.uri_mut() = Uri::from_static("/x");
        r.headers_mut()
            .insert(hyper::header::HOST, "origin".parse().expect("host"));
        r
    }

    #[tokio::test]
    async fn connections_are_reused_closed_ones_skipped_idle_ones_reaped() {
        let (addr, accepted) = origin().await;
        let backend = Arc::new(Backend::new("p", &addr, Source::Static, 1));
        let c = Connector::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..5 {
            let (resp, tx) = c.send(&backend, get()).await.expect("sent");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(&body[..], b"hello");
            checkin(&backend, tx);
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
        let (a, b) = tokio::join!(c.send(&backend, get()), c.send(&backend, get()));
        let (ra, ta) = a.expect("a");
        let (rb, tb) = b.expect("b");
        ra.into_body().collect().await.expect("a body");
        rb.into_body().collect().await.expect("b body");
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
        assert!(backend.conns.take(later, Duration::from_secs(60)).is_none());
        assert!(backend.conns.is_empty(), "the older one went too");
        c.send(&backend, get())
            .await
            .expect("sent on a new connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
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
            c.send(&backend, get()).await.err(),
            Some(SendError::Connect)
        );
    }
}
