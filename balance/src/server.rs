//! The client listener and the admin server.
//!
//! The listener is opened with `SO_REUSEPORT` (`balance.reuse_port`), so a
//! new `weir balance` can bind the same port while the old one still runs
//! (and new connections go to the new one, see [`bind`]): once the new one
//! listens, the old one is sent SIGTERM, stops accepting,
//! takes what is already queued on its socket, and drains its in-flight
//! requests within `balance.drain_timeout`. Keep-alive connections are
//! closed after their current response.
//!
//! The accept loop is the balancer's own rather than the core listener's
//! (`weir_core::listener::serve_limited`, the edge's and ingest's): that
//! one serves an axum router over HTTP/1 and HTTP/2; this one serves one
//! hyper service over HTTP/1.1 with upgrades, on a socket it opens itself,
//! and drains its backlog on a takeover. The watchdog is the shared one
//! ([`Watched`]): both bound the connections served at once, the time to
//! send a request's head, a connection without progress
//! (`balance.client_idle_timeout`) and a client that stops reading
//! (`balance.send_timeout`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Json, Router};
use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weir_core::listener::Watched;

use crate::config::BalanceConfig;
use crate::direct::{self, Ended, FIRST_REQUEST_GRACE};
use crate::fleet::FleetView;
use crate::proxy::{Balancer, Hop};

/// Opens a listening socket on `addr`, with `SO_REUSEPORT` when
/// `reuse_port`.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    #[cfg(unix)]
    sock.set_reuseport(reuse_port)?;
    sock.bind(addr)?;
    let listener = sock.listen(4096)?;
    #[cfg(target_os = "linux")]
    if reuse_port {
        steer_to_newest(&listener)?;
    }
    Ok(listener)
}

/// Makes the kernel hand new connections on this port to the socket that
/// joined the `SO_REUSEPORT` group second, i.e. the newer process during a
/// takeover, rather than spreading them by hash: from the moment the new
/// process listens, the old one's accept queue only drains, so closing it
/// resets no connection. (A classic BPF program on the group returning
/// index 1; with a single socket the index is out of range and the kernel
/// falls back to its hash, i.e. to that socket. When the old socket
/// closes, the new one moves to index 0 and has the group to itself.)
#[cfg(target_os = "linux")]
fn steer_to_newest(listener: &TcpListener) -> std::io::Result<()> {
    // BPF_RET | BPF_K: return the constant 1.
    let mut program = [nix::libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 1,
    }];
    let fprog = nix::libc::sock_fprog {
        len: 1,
        filter: program.as_mut_ptr(),
    };
    nix::sys::socket::setsockopt(
        listener,
        nix::sys::socket::sockopt::AttachReusePortCbpf,
        &fprog,
    )
    .map_err(std::io::Error::from)
}

/// Serves clients on `listener` until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    balancer: Arc<Balancer>,
    cfg: &BalanceConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let limits = cfg.conn_limits();
    let tracker = tokio_util::task::TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        // At most this much of a response waits in the connection's
        // buffer for a client that does not read (also the largest
        // request head accepted); hyper's default is about 400 KiB.
        .max_buf_size(limits.max_buf_size)
        // A client that shuts its sending side after a request still gets
        // the answer (its request is not cancelled by the read's end).
        .half_close(true)
        .keep_alive(true);
    // Connections taken from the backlog after shutdown get one request.
    let mut last_call = http.clone();
    last_call.keep_alive(false);
    let (http, last_call) = (Arc::new(http), Arc::new(last_call));
    let header_read_timeout = cfg.header_read_timeout;
    let start = |http: &Arc<hyper::server::conn::http1::Builder>,
                 stream: TcpStream,
                 peer: SocketAddr,
                 permit: Option<OwnedSemaphorePermit>,
                 stop: Option<CancellationToken>| {
        let _ = stream.set_nodelay(true);
        let bal = balancer.clone();
        let http = http.clone();
        let asked = Arc::new(AtomicBool::new(false));
        let hop = Arc::new(Hop::new(peer.ip()));
        let (mut io, activity) = Watched::new(stream);
        // Connections taken from the backlog after shutdown (no `stop`)
        // get one request.
        let keep_alive = stop.is_some();
        tracker.spawn(async move {
            let _slot = permit;
            // Dropping the connection closes the socket (and an upgraded
            // tunnel with it): a silent or non-reading client costs its
            // slot for a bounded time.
            let expired = activity.expired(limits);
            let mut expired = std::pin::pin!(expired);
            // Plain requests take the direct path until one does not;
            // hyper serves the connection from there, starting with what
            // was read of that request.
            let mut buf = BytesMut::new();
            if bal.direct() {
                let ended = tokio::select! {
                    e = direct::serve(&bal, &hop, &mut io, &mut buf, header_read_timeout,
                        stop.as_ref(), keep_alive, &asked) => e,
                    _ = expired.as_mut() => return,
                };
                if ended == Ended::Closed {
                    return;
                }
                if !buf.is_empty() {
                    asked.store(true, Ordering::Relaxed);
                }
            }
            let seen = asked.clone();
            let svc = service_fn(move |req| {
                seen.store(true, Ordering::Relaxed);
                bal.clone().handle(hop.clone(), req)
            });
            let io = Rewind::new(io, buf.freeze());
            let conn = http.serve_connection(TokioIo::new(io), svc).with_upgrades();
            let mut conn = Box::pin(conn);
            'serve: {
                if let Some(stop) = stop {
                    // The connection first: a request the direct path
                    // handed over is read before a stop can close the
                    // connection as one without a request.
                    tokio::select! {
                        biased;
                        _ = conn.as_mut() => break 'serve,
                        _ = expired.as_mut() => return,
                        _ = stop.cancelled() => {}
                    }
                    // A connection accepted just before the stop may carry
                    // a request not read yet: closing it now would fail
                    // that request, so it gets its first request served
                    // (within a bound) before it closes.
                    let first = Instant::now() + FIRST_REQUEST_GRACE;
                    while !asked.load(Ordering::Relaxed) && Instant::now() < first {
                        tokio::select! {
                            _ = conn.as_mut() => break 'serve,
                            _ = expired.as_mut() => return,
                            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                        }
                    }
                    // Finish the request in progress, then close.
                    conn.as_mut().graceful_shutdown();
                }
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = expired.as_mut() => return,
                }
            }
            // The connection (and the socket, unless an upgrade took it).
            drop(conn);
            // An upgraded connection's socket lives on in its tunnel task:
            // keep watching it (and holding its slot) until the tunnel
            // ends, and cut it if it goes quiet or stops reading.
            while Arc::strong_count(&activity) > 1 {
                tokio::select! {
                    _ = expired.as_mut() => {
                        activity.cut();
                        return;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        });
    };
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
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        start(&http, stream, peer, Some(permit), Some(shutdown.clone()));
    }
    // Connections the kernel already completed on this socket would be
    // reset when it closes: serve them too, one request each.
    let mut queued = 0;
    while let Some(Ok((stream, peer))) = listener.accept().now_or_never() {
        start(&last_call, stream, peer, None, None);
        queued += 1;
    }
    drop(listener);
    info!(queued, "stopped accepting; draining in-flight requests");
    tracker.close();
    let begin = Instant::now();
    match tokio::time::timeout(cfg.drain_timeout, tracker.wait()).await {
        Ok(()) => info!(took = ?begin.elapsed(), "drained"),
        Err(_) => {
            warn!(deadline = ?cfg.drain_timeout, "drain deadline passed; closing what is left")
        }
    }
    Ok(())
}

/// A client socket with the bytes the direct path read from it put back
/// in front, for hyper to read first.
struct Rewind<IO> {
    pre: Bytes,
    io: IO,
}

impl<IO> Rewind<IO> {
    fn new(io: IO, pre: Bytes) -> Rewind<IO> {
        Rewind { pre, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
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

/// Follows the fleet view into the balancer's pools until the channel
/// closes.
pub async fn apply_fleet(balancer: Arc<Balancer>, mut rx: watch::Receiver<Arc<FleetView>>) {
    loop {
        let view = rx.borrow_and_update().clone();
        balancer.update(&view);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Closes the backends' connections idle for `idle_timeout`, checking
/// every half of it, until `shutdown`.
pub async fn reap_idle(
    balancer: Arc<Balancer>,
    idle_timeout: Duration,
    shutdown: CancellationToken,
) {
    let every = (idle_timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        balancer.reap_idle();
    }
}

/// The admin router: `/pools` (every backend's state and why), `/livez`,
/// `/readyz` (a snapshot of the fleet was read, or no pool needs one).
pub fn admin_router(
    balancer: Arc<Balancer>,
    fleet: watch::Receiver<Arc<FleetView>>,
    ready: watch::Receiver<bool>,
) -> Router {
    let pools = {
        let b = balancer.clone();
        move || {
            let b = b.clone();
            let fleet = fleet.clone();
            async move {
                let now = Instant::now();
                let pools: Vec<serde_json::Value> =
                    b.pools().iter().map(|p| p.describe(now)).collect();
                let view = fleet.borrow().clone();
                Json(serde_json::json!({
                    "fleet": {
                        "nodes_up": view.nodes.len(),
                        "stale": view.stale,
                    },
                    "pools": pools,
                }))
            }
        }
    };
    Router::new()
        .route("/pools", get(pools))
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = *ready.borrow();
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "fleet state not read yet",
                        )
                    }
                }
            }),
        )
}
