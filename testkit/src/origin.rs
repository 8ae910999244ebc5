//! A tiny HTTP origin on loopback for load-balancer tests and benchmarks:
//! answers every request with its name (or `?size=N` bytes), with knobs
//! for a delay and an error rate, and can be killed (listener and every
//! connection closed at once, as when its process dies) and revived on the
//! same port.
//!
//! - `GET /headers` answers the request's headers as JSON;
//! - `GET /__served` answers how many requests it served (not counted);
//! - a request with `Connection: upgrade` is answered `101` and the bytes
//!   then sent are echoed back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The knobs and counters of an origin, shared with its tasks.
#[derive(Debug, Default)]
pub struct OriginState {
    /// Answers wait this long first.
    pub delay_ms: AtomicU64,
    /// Per mille of requests answered 500.
    pub error_per_mille: AtomicU64,
    /// Requests answered.
    pub served: AtomicU64,
    seq: AtomicU64,
}

/// A running (or killed) origin.
pub struct Origin {
    /// Its name, the body of its answers.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Knobs and counters.
    pub state: Arc<OriginState>,
    task: Option<Running>,
}

/// A running origin's stop signal and its task.
type Running = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

impl Origin {
    /// Starts an origin named `name` on a free loopback port.
    pub async fn start(name: &str) -> Origin {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an origin");
        Self::on(name, l, Arc::new(OriginState::default()))
    }

    /// Starts an origin on `listener` (benchmarks pick their port).
    pub fn on(name: &str, listener: TcpListener, state: Arc<OriginState>) -> Origin {
        let addr = listener.local_addr().expect("origin address");
        Origin {
            name: name.to_string(),
            addr,
            task: Some(spawn_serve(name, listener, state.clone())),
            state,
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes every answer wait `d` first.
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::Relaxed)
    }

    /// Closes the listener and every connection at once, and returns only
    /// when they are closed: an abort alone takes effect at the task's next
    /// poll, so a request sent right after it could still be answered on a
    /// kept-alive connection.
    pub async fn kill(&mut self) {
        if let Some((stop, t)) = self.task.take() {
            let _ = stop.send(());
            let _ = t.await;
        }
    }

    /// Listens again on the same port (after [`Origin::kill`]).
    pub async fn revive(&mut self) {
        assert!(self.task.is_none(), "origin {} is running", self.name);
        let mut tries = 0;
        let l = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebind origin {}: {e}", self.addr),
            }
        };
        self.task = Some(spawn_serve(&self.name, l, self.state.clone()));
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some((_, t)) = self.task.take() {
            t.abort();
        }
    }
}

fn spawn_serve(name: &str, listener: TcpListener, state: Arc<OriginState>) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve(name.to_string(), listener, state, stopped));
    (stop, task)
}

async fn serve(
    name: String,
    listener: TcpListener,
    state: Arc<OriginState>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    // Connections live in the set: aborting this task drops it, which
    // aborts them all, as a dying process closes its sockets. A kill waits
    // for every connection to be gone.
    let mut conns = JoinSet::new();
    let name: Arc<str> = name.into();
    loop {
        tokio::select! {
            _ = &mut stopped => {
                drop(listener);
                conns.shutdown().await;
                return;
            }
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let _ = stream.set_nodelay(true);
                let (name, state) = (name.clone(), state.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        answer(name.clone(), state.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn answer(
    name: Arc<str>,
    state: Arc<OriginState>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/__served" {
        let n = state.served.load(Ordering::Relaxed);
        return Ok(Response::new(Full::new(Bytes::from(format!("{n}\n")))));
    }
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let n = state.seq.fetch_add(1, Ordering::Relaxed);
    let errors = state.error_per_mille.load(Ordering::Relaxed);
    let upgrade = req.headers().contains_key(hyper::header::UPGRADE);
    if upgrade {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                while let Ok(k) = io.read(&mut buf).await {
                    if k == 0 || io.write_all(&buf[..k]).await.is_err() {
                        break;
                    }
                }
            }
        });
        state.served.fetch_add(1, Ordering::Relaxed);
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert(hyper::header::CONNECTION, "upgrade".parse().expect("value"));
        r.headers_mut().insert(
            hyper::header::UPGRADE,
            req.headers()[hyper::header::UPGRADE].clone(),
        );
        return Ok(r);
    }
    let path = req.uri().path().to_string();
    let size = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("size="))
            .and_then(|v| v.parse::<usize>().ok())
    });
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    // Read the request body (a POST's) to its end.
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    state.served.fetch_add(1, Ordering::Relaxed);
    if errors > 0 && (n % 1000) < errors {
        let mut r = Response::new(Full::new(Bytes::from(format!("{name} failed\n"))));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return Ok(r);
    }
    let body = if path == "/headers" {
        Bytes::from(serde_json::Value::Object(headers).to_string())
    } else if let Some(size) = size {
        Bytes::from(vec![b'x'; size.min(64 << 20)])
    } else {
        Bytes::from(format!("{name}\n"))
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        "x-origin",
        hyper::header::HeaderValue::from_str(&name)
            .unwrap_or(hyper::header::HeaderValue::from_static("origin")),
    );
    r.headers_mut().insert(
        "x-body-bytes",
        hyper::header::HeaderValue::from(body_len as u64),
    );
    Ok(r)
}
