//! Proxying one client request: route it to a pool, pick a backend, send
//! the request on a kept-alive connection with the forwarding headers,
//! stream the response back, and retry an idempotent request that never
//! reached a backend on another one.
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and the headers it
//!   names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
//!   `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`,
//!   `Proxy-Authorization`) are removed both ways; `Host` is passed as the
//!   client sent it.
//! - `X-Forwarded-For` gets the client's address appended,
//!   `X-Forwarded-Proto` is `http`, `Forwarded` (RFC 7239) gets
//!   `for=…;proto=http;host=…` appended, and `X-Request-Id` is passed on
//!   or, when absent, made up.
//! - `Upgrade` requests (WebSocket) are passed through: after the backend's
//!   `101`, bytes are copied both ways until either side closes.
//! - Bodies stream both ways, never buffered.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use weir_core::{InternalEvent, InternalEventHandle};

use crate::algorithm::NoBackend;
use crate::backend::{Backend, InFlight, Outcome};
use crate::config::{BalanceConfig, DEFAULT_POOL};
use crate::events::{Attempted, RequestFailed, Retried};
use crate::fleet::FleetView;
use crate::pool::{PickHints, Pool, PoolSettings};

/// Errors of a streamed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of requests to backends and responses to clients.
pub type Body = BoxBody<Bytes, BoxError>;

/// The sticky cookie's name.
pub const STICKY_COOKIE: &str = "weir_backend";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A route: prefix (and host) → pool.
#[derive(Debug)]
struct Route {
    prefix: String,
    host: Option<String>,
    pool: Arc<Pool>,
}

/// The pools, the routes and the client to the backends.
pub struct Balancer {
    pools: Vec<Arc<Pool>>,
    default: Arc<Pool>,
    routes: Vec<Route>,
    client: Client<HttpConnector, Body>,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    retries: u32,
    id_seed: u64,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("pools", &self.pools.len())
            .field("routes", &self.routes)
            .finish()
    }
}

impl Balancer {
    /// The pools and routes of a (validated) config, and a client with
    /// keep-alive pools to the backends.
    pub fn new(cfg: &BalanceConfig) -> Balancer {
        let mut by_name: HashMap<String, Arc<Pool>> = HashMap::new();
        for (name, p) in &cfg.pools {
            by_name.insert(
                name.clone(),
                Arc::new(Pool::new(name, PoolSettings::resolve(cfg, Some(p)))),
            );
        }
        let default = by_name
            .entry(DEFAULT_POOL.to_string())
            .or_insert_with(|| Arc::new(Pool::new(DEFAULT_POOL, PoolSettings::resolve(cfg, None))))
            .clone();
        let mut routes: Vec<Route> = cfg
            .routes
            .iter()
            .filter_map(|r| {
                Some(Route {
                    prefix: r.prefix.clone(),
                    host: (!r.host.is_empty()).then(|| r.host.to_ascii_lowercase()),
                    pool: by_name.get(&r.pool)?.clone(),
                })
            })
            .collect();
        // Longest prefix first; a route with a host before one without.
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
        });
        let mut pools: Vec<Arc<Pool>> = by_name.into_values().collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.idle_timeout)
            .pool_max_idle_per_host(1024)
            .build(connector);
        Balancer {
            pools,
            default,
            routes,
            client,
            first_byte_timeout: cfg.first_byte_timeout,
            idle_timeout: cfg.idle_timeout,
            retries: cfg.retries,
            id_seed: u64::from_le_bytes(
                uuid::Uuid::new_v4().as_bytes()[..8]
                    .try_into()
                    .unwrap_or_default(),
            ),
            next_id: AtomicU64::new(1),
        }
    }

    /// Every pool, by name.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Whether any pool takes its members from the fleet.
    pub fn follows_fleet(&self) -> bool {
        self.pools.iter().any(|p| p.settings.fleet)
    }

    /// Applies a new fleet view to every pool.
    pub fn update(&self, fleet: &FleetView) {
        for p in &self.pools {
            p.update(fleet);
        }
    }

    /// The pool of a request: the longest matching route, else `default`.
    pub fn route(&self, host: Option<&str>, path: &str) -> &Arc<Pool> {
        for r in &self.routes {
            if !path.starts_with(&r.prefix) {
                continue;
            }
            if let Some(h) = &r.host {
                if !host.is_some_and(|x| x.eq_ignore_ascii_case(h)) {
                    continue;
                }
            }
            return &r.pool;
        }
        &self.default
    }

    fn request_id(&self) -> HeaderValue {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:016x}{n:016x}", self.id_seed))
            .unwrap_or_else(|_| HeaderValue::from_static("0"))
    }

    /// Proxies one client request from `peer`.
    pub async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let host = request_host(&req);
        let pool = self.route(host.as_deref(), req.uri().path()).clone();
        let now = Instant::now();
        pool.budget.deposit(now);
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let request_id = parts
            .headers
            .get(&X_REQUEST_ID)
            .cloned()
            .unwrap_or_else(|| self.request_id());
        let headers = forward_headers(
            &parts.headers,
            peer.ip(),
            host.as_deref(),
            upgrade,
            request_id,
        );
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
        let bodiless = body.is_end_stream();
        let retryable = bodiless
            && (matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
                || parts.headers.contains_key(&IDEMPOTENCY_KEY));
        let sticky = pool
            .settings
            .sticky
            .then(|| cookie(&parts.headers, STICKY_COOKIE))
            .flatten();
        let hints = PickHints {
            client: Some(peer.ip()),
            sticky: sticky.as_deref(),
        };
        let mut body = Some(body);
        let mut tried: Vec<Arc<Backend>> = Vec::new();
        loop {
            let backend = match pool.pick(hints, &tried, Instant::now()) {
                Ok(b) => b,
                Err(e) => {
                    let (status, reason) = match (e, tried.is_empty()) {
                        (_, false) => (StatusCode::BAD_GATEWAY, "backend_unreachable"),
                        (NoBackend::Empty, true) => (StatusCode::SERVICE_UNAVAILABLE, "no_backend"),
                        (NoBackend::Unavailable, true) => {
                            (StatusCode::SERVICE_UNAVAILABLE, "all_unavailable")
                        }
                    };
                    return Ok(fail(&pool.name, status, reason));
                }
            };
            let guard = backend.start();
            let req_body: Body = if bodiless {
                empty()
            } else {
                match body.take() {
                    Some(b) => b.map_err(BoxError::from).boxed(),
                    None => empty(),
                }
            };
            let uri = Uri::builder()
                .scheme("http")
                .authority(backend.uri_authority.clone())
                .path_and_query(path.clone())
                .build();
            let Ok(uri) = uri else {
                return Ok(fail(&pool.name, StatusCode::BAD_REQUEST, "bad_uri"));
            };
            let mut up = Request::new(req_body);
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = uri;
            *up.headers_mut() = headers.clone();
            let started = Instant::now();
            let result =
                tokio::time::timeout(self.first_byte_timeout, self.client.request(up)).await;
            let done = Instant::now();
            let elapsed = done.duration_since(started);
            let outcome = match &result {
                Ok(Ok(r)) if r.status().is_server_error() => Outcome::ServerError,
                Ok(Ok(_)) => Outcome::Success,
                Ok(Err(e)) if e.is_connect() => Outcome::ConnectFailed,
                Ok(Err(_)) => Outcome::Broken,
                Err(_) => Outcome::Timeout,
            };
            backend.metrics.emit(Attempted {
                outcome,
                duration: elapsed,
            });
            match outcome {
                Outcome::Success | Outcome::ServerError | Outcome::Timeout => {
                    backend.observe_latency(elapsed, done)
                }
                Outcome::ConnectFailed | Outcome::Broken => {}
            }
            pool.record(&backend, outcome, done);
            match result {
                Ok(Ok(resp)) => {
                    let set_cookie = (pool.settings.sticky
                        && sticky.as_deref() != Some(backend.sticky_id.as_str()))
                    .then(|| {
                        HeaderValue::from_str(&format!(
                            "{STICKY_COOKIE}={}; Path=/; HttpOnly",
                            backend.sticky_id
                        ))
                        .ok()
                    })
                    .flatten();
                    return Ok(self.respond(resp, guard, client_upgrade, set_cookie));
                }
                Ok(Err(_)) => {
                    // Nothing reached the backend (connect failed), or an
                    // idempotent request lost its connection before any
                    // response: safe to send again, elsewhere.
                    let again = retryable
                        && matches!(outcome, Outcome::ConnectFailed | Outcome::Broken)
                        && tried.len() < self.retries as usize;
                    if again {
                        let allowed = pool.budget.withdraw(Instant::now());
                        Retried {
                            pool: &pool.name,
                            allowed,
                        }
                        .emit();
                        if allowed {
                            drop(guard);
                            tried.push(backend);
                            continue;
                        }
                    }
                    return Ok(fail(&pool.name, StatusCode::BAD_GATEWAY, outcome.label()));
                }
                Err(_) => {
                    return Ok(fail(
                        &pool.name,
                        StatusCode::GATEWAY_TIMEOUT,
                        "first_byte_timeout",
                    ))
                }
            }
        }
    }

    fn respond(
        &self,
        mut resp: Response<Incoming>,
        guard: InFlight,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        set_cookie: Option<HeaderValue>,
    ) -> Response<Body> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                let backend = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    let _inflight = guard;
                    if let (Ok(c), Ok(b)) = tokio::join!(client, backend) {
                        let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
                    }
                });
                let (parts, _) = resp.into_parts();
                return Response::from_parts(parts, empty());
            }
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(c) = set_cookie {
            parts.headers.append(header::SET_COOKIE, c);
        }
        let body = Upstream {
            inner: body,
            guard: Some(guard),
            idle: Box::pin(tokio::time::sleep(self.idle_timeout)),
            idle_timeout: self.idle_timeout,
            last: Instant::now(),
        };
        Response::from_parts(parts, body.boxed())
    }
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// An answer of the balancer itself.
fn fail(pool: &str, status: StatusCode, reason: &'static str) -> Response<Body> {
    RequestFailed {
        pool,
        status: status.as_u16(),
        reason,
    }
    .emit();
    let text = match status {
        StatusCode::SERVICE_UNAVAILABLE => "no backend available\n",
        StatusCode::GATEWAY_TIMEOUT => "the backend did not answer in time\n",
        StatusCode::BAD_REQUEST => "bad request\n",
        _ => "the backend could not be reached\n",
    };
    let mut r = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(reason) {
        r.headers_mut()
            .insert(HeaderName::from_static("x-weir-error"), v);
    }
    r
}

/// The request's host, lowercased, without its port.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    let host = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    Some(host.to_ascii_lowercase())
}

/// A request asking to switch protocols (`Connection: upgrade` and an
/// `Upgrade` header).
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Removes the hop-by-hop headers: the fixed ones and those `Connection`
/// names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        h.remove(n);
    }
}

/// The headers sent to the backend: the client's, less hop-by-hop ones,
/// plus the forwarding headers and the request id.
pub fn forward_headers(
    src: &HeaderMap,
    peer: IpAddr,
    host: Option<&str>,
    upgrade: bool,
    request_id: HeaderValue,
) -> HeaderMap {
    let mut h = src.clone();
    strip_hop_by_hop(&mut h);
    if upgrade {
        if let Some(u) = src.get(header::UPGRADE) {
            h.insert(header::UPGRADE, u.clone());
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    let ip = peer.to_string();
    let joined = |name: &HeaderName, add: &str| -> HeaderValue {
        let prev: Vec<&str> = src
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let v = if prev.is_empty() {
            add.to_string()
        } else {
            format!("{}, {add}", prev.join(", "))
        };
        HeaderValue::from_str(&v).unwrap_or_else(|_| {
            HeaderValue::from_str(add).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        })
    };
    let xff = joined(&X_FORWARDED_FOR, &ip);
    h.insert(X_FORWARDED_FOR, xff);
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    let node = if peer.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip
    };
    let mut fwd = format!("for={node};proto=http");
    if let Some(host) = host.filter(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    }) {
        fwd.push_str(&format!(";host=\"{host}\""));
    }
    let f = joined(&header::FORWARDED, &fwd);
    h.insert(header::FORWARDED, f);
    h.insert(X_REQUEST_ID, request_id);
    h
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.trim().to_string())
        })
}

/// A backend's response body on its way to the client: counts the request
/// in flight until its end, and cuts it when no byte comes for
/// `idle_timeout`.
struct Upstream {
    inner: Incoming,
    guard: Option<InFlight>,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
    last: Instant,
}

impl HttpBody for Upstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                this.last = Instant::now();
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.guard = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.guard = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The timer is re-armed lazily: only when it fires is the
                // time of the last frame looked at.
                while this.idle.as_mut().poll(cx).is_ready() {
                    let deadline = this.last + this.idle_timeout;
                    if Instant::now() >= deadline {
                        this.guard = None;
                        return Poll::Ready(Some(Err("the backend's response stalled".into())));
                    }
                    this.idle
                        .as_mut()
                        .reset(tokio::time::Instant::from_std(deadline));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_forwarding_headers_come() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic eA=="),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=203.0.113.9"),
        );
        h.insert("x-kept", HeaderValue::from_static("yes"));
        let out = forward_headers(
            &h,
            "127.0.0.1".parse().expect("ip"),
            Some("example.com"),
            false,
            HeaderValue::from_static("rid-1"),
        );
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "te",
            "transfer-encoding",
            "proxy-authorization",
        ] {
            assert!(!out.contains_key(gone), "{gone} kept");
        }
        assert_eq!(out["x-kept"], "yes");
        assert_eq!(out["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(
            out["forwarded"],
            "for=203.0.113.9, for=127.0.0.1;proto=http;host=\"example.com\""
        );
        assert_eq!(out["x-request-id"], "rid-1");
    }

    #[test]
    fn upgrades_keep_their_headers_and_ipv6_is_quoted() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        let out = forward_headers(
            &h,
            "::1".parse().expect("ip"),
            Some("bad\"host"),
            true,
            HeaderValue::from_static("r"),
        );
        assert_eq!(out["upgrade"], "websocket");
        assert_eq!(out["connection"], "upgrade");
        assert_eq!(out["forwarded"], "for=\"[::1]\";proto=http");
        let mut plain = HeaderMap::new();
        plain.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&plain), "Upgrade without Connection: upgrade");
    }

    #[test]
    fn cookies_are_found() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; weir_backend=abc"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, STICKY_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        h.insert(header::COOKIE, HeaderValue::from_static(";;=;weir_backend"));
        assert_eq!(cookie(&h, STICKY_COOKIE), None);
    }
}
