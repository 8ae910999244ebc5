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

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use weir_core::{InternalEvent, InternalEventHandle};

use crate::algorithm::NoBackend;
use crate::backend::{Backend, InFlight, Outcome};
use crate::config::{BalanceConfig, DEFAULT_POOL};
use crate::events::{Attempted, RequestFailed, Retried};
use crate::fleet::FleetView;
use crate::pool::{PickHints, Pool, PoolSettings};
use crate::upstream::{checkin, Conn, Connector, SendError, MAX_BUF};

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

/// The hop-by-hop headers (RFC 9110 §7.6.1), besides those `Connection`
/// names.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// The client end of a connection as the forwarding headers name it,
/// worked out once per client connection rather than formatted again for
/// every request on it.
#[derive(Debug)]
pub struct Hop {
    /// The client's address.
    pub ip: IpAddr,
    /// What this hop adds to `X-Forwarded-For`: the address.
    pub(crate) xff: HeaderValue,
    /// What this hop adds to `Forwarded`, before any host:
    /// `for=…;proto=http` (an IPv6 address quoted and bracketed).
    fwd: HeaderValue,
}

impl Hop {
    /// The hop of a client at `ip`.
    pub fn new(ip: IpAddr) -> Hop {
        let text = ip.to_string();
        let fwd = if ip.is_ipv6() {
            format!("for=\"[{text}]\";proto=http")
        } else {
            format!("for={text};proto=http")
        };
        Hop {
            ip,
            xff: HeaderValue::from_str(&text)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            fwd: HeaderValue::from_str(&fwd)
                .unwrap_or_else(|_| HeaderValue::from_static("for=unknown;proto=http")),
        }
    }
}

/// A route: prefix (and host) → pool.
#[derive(Debug)]
struct Route {
    prefix: String,
    host: Option<String>,
    pool: Arc<Pool>,
}

/// The pools, the routes and the connections to the backends.
pub struct Balancer {
    pools: Vec<Arc<Pool>>,
    default: Arc<Pool>,
    routes: Vec<Route>,
    connector: Connector,
    pub(crate) connect_timeout: Duration,
    pub(crate) first_byte_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    retries: u32,
    direct: bool,
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

        Balancer {
            pools,
            default,
            routes,
            connector: Connector::new(cfg.connect_timeout, cfg.idle_timeout),
            connect_timeout: cfg.connect_timeout,
            first_byte_timeout: cfg.first_byte_timeout,
            idle_timeout: cfg.idle_timeout,
            retries: cfg.retries,
            direct: cfg.fast_path,
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

    /// Whether plain requests take the direct path (`balance.fast_path`,
    /// [`crate::direct`]).
    pub fn direct(&self) -> bool {
        self.direct
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

    /// Closes the backends' connections idle for `balance.idle_timeout`
    /// (or closed by the backend); returns how many stay open.
    pub fn reap_idle(&self) -> usize {
        let now = Instant::now();
        self.pools
            .iter()
            .map(|p| p.reap_idle(now, self.connector.max_idle()))
            .sum()
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

    pub(crate) fn request_id(&self) -> HeaderValue {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 32];
        hex(self.id_seed, &mut id[..16]);
        hex(n, &mut id[16..]);
        HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }

    /// Proxies one client request that came through `hop`.
    pub async fn handle(
        self: Arc<Self>,
        hop: Arc<Hop>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        // Cheap copies (shared bytes) the host can borrow from while the
        // request is taken apart.
        let host_header = req.headers().get(header::HOST).cloned();
        let authority = req.uri().authority().cloned();
        let host = request_host(host_header.as_ref(), authority.as_ref());
        let pool = self.route(host.as_deref(), req.uri().path()).clone();
        // Two `Host` lines: the balancer would route by one and a backend
        // might read the other (RFC 9112 §3.2: 400).
        if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
            return Ok(fail(&pool.name, StatusCode::BAD_REQUEST, "two_hosts"));
        }
        // hyper's limit on a head is approximate (its buffer may hold more
        // than it was told); the documented one is exact.
        let target_len = req.uri().path_and_query().map_or(1, |p| p.as_str().len())
            + req.uri().authority().map_or(0, |a| a.as_str().len() + 8);
        if head_len(req.method().as_str().len() + target_len, req.headers()) > MAX_BUF {
            return Ok(fail(
                &pool.name,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "head_too_large",
            ));
        }
        let now = Instant::now();
        pool.budget.deposit(now);
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let bodiless = body.is_end_stream();
        // A body of unknown length came chunked: it goes on chunked, also
        // on a GET or HEAD, where hyper's client would drop it otherwise.
        let chunked = !bodiless && body.size_hint().exact().is_none();
        let retryable = bodiless
            && (matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
                || parts.headers.contains_key(&IDEMPOTENCY_KEY));
        let sticky = pool
            .settings
            .sticky
            .then(|| cookie(&parts.headers, STICKY_COOKIE))
            .flatten();
        let request_id = match parts.headers.get(&X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => self.request_id(),
        };
        let mut headers =
            forward_headers(parts.headers, &hop, host.as_deref(), upgrade, request_id);
        // Backends get the origin form (`/path?query`), also of a request
        // that came in absolute form.
        let target = if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
            parts.uri
        } else {
            parts
                .uri
                .path_and_query()
                .map(|pq| Uri::from(pq.clone()))
                .unwrap_or_else(|| Uri::from_static("/"))
        };
        let hints = PickHints {
            client: Some(hop.ip),
            sticky: sticky.as_deref(),
        };
        let mut body = Some(body);
        // Set when the client's own body fails (malformed, cut short): no
        // fault of the backend's.
        let client_failed = Arc::new(AtomicBool::new(false));
        let mut tried: Vec<Arc<Backend>> = Vec::new();
        let mut stale = StaleRetry::default();
        loop {
            let (backend, fresh) = match pool.pick(hints, &tried, Instant::now()) {
                Ok(b) => (b, false),
                Err(e) => match stale.backend.take() {
                    Some(b) => (b, true),
                    None => {
                        let (status, reason) = no_backend(e, tried.is_empty());
                        return Ok(fail(&pool.name, status, reason));
                    }
                },
            };
            stale.backend = None;
            let guard = backend.start();
            let req_body: Body = if bodiless {
                empty()
            } else {
                match body.take() {
                    Some(b) => {
                        let failed = client_failed.clone();
                        b.map_err(move |e| {
                            failed.store(true, Ordering::Relaxed);
                            BoxError::from(e)
                        })
                        .boxed()
                    }
                    None => empty(),
                }
            };
            // The headers are needed again only if this attempt may be
            // retried.
            let last = !retryable || (tried.len() >= self.retries as usize && stale.used);
            let mut up = Request::new(req_body);
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = target.clone();
            *up.headers_mut() = if last {
                std::mem::take(&mut headers)
            } else {
                headers.clone()
            };
            if !up.headers().contains_key(header::HOST) {
                up.headers_mut()
                    .insert(header::HOST, backend.host_header.clone());
            }
            if chunked {
                up.headers_mut().insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            let started = Instant::now();
            let result = tokio::time::timeout(
                self.first_byte_timeout,
                self.connector.send(&backend, up, retryable, fresh),
            )
            .await;
            let done = Instant::now();
            let elapsed = done.duration_since(started);
            if client_failed.load(Ordering::Relaxed) {
                // The client's body broke the exchange, not the backend.
                return Ok(fail(&pool.name, StatusCode::BAD_REQUEST, "client_body"));
            }
            // A switch of protocols nobody asked for is a broken answer:
            // the client must not be handed the backend's connection.
            let result = match result {
                Ok(Ok((r, _))) if r.status() == StatusCode::SWITCHING_PROTOCOLS && !upgrade => {
                    Ok(Err(SendError::Broken))
                }
                other => other,
            };
            let outcome = match &result {
                Ok(Err(SendError::Stale)) if stale.absorb(&pool.name, &backend) => {
                    drop(guard);
                    tried.push(backend);
                    continue;
                }
                Ok(Ok((r, _))) if r.status().is_server_error() => Outcome::ServerError,
                Ok(Ok(_)) => Outcome::Success,
                Ok(Err(SendError::Connect)) => Outcome::ConnectFailed,
                Ok(Err(SendError::Broken | SendError::Stale)) => Outcome::Broken,
                Err(_) => Outcome::Timeout,
            };
            self.attempted(&pool, &backend, outcome, elapsed, done);
            match result {
                Ok(Ok((resp, conn))) => {
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
                    return Ok(self.respond(resp, conn, guard, client_upgrade, set_cookie));
                }
                Ok(Err(_)) => {
                    if self.may_retry(&pool, retryable, outcome, tried.len()) {
                        drop(guard);
                        tried.push(backend);
                        continue;
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

    /// Records one attempt on `backend`: its metrics, its latency (when
    /// it answered or timed out) and its passive health.
    pub(crate) fn attempted(
        &self,
        pool: &Pool,
        backend: &Backend,
        outcome: Outcome,
        elapsed: Duration,
        done: Instant,
    ) {
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
        pool.record(backend, outcome, done);
    }

    /// Whether a failed attempt is sent again elsewhere: only when nothing
    /// reached the backend (connect failed) or an idempotent request lost
    /// its connection before any response, within the retries and the
    /// pool's retry budget.
    pub(crate) fn may_retry(
        &self,
        pool: &Pool,
        retryable: bool,
        outcome: Outcome,
        tried: usize,
    ) -> bool {
        let again = retryable
            && matches!(outcome, Outcome::ConnectFailed | Outcome::Broken)
            && tried < self.retries as usize;
        if !again {
            return false;
        }
        let allowed = pool.budget.withdraw(Instant::now());
        Retried {
            pool: &pool.name,
            allowed,
        }
        .emit();
        allowed
    }

    fn respond(
        &self,
        mut resp: Response<Incoming>,
        conn: Conn,
        guard: InFlight,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        set_cookie: Option<HeaderValue>,
    ) -> Response<Body> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                // The connection is the tunnel's now: never pooled. If it
                // has not finished the upgrade yet, it does on a task of
                // its own.
                if let Some(io) = conn.into_driver() {
                    tokio::spawn(async move {
                        let _ = io.await;
                    });
                }
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
        // Chunked wins over a length (RFC 9112 §6.3); the length must not
        // go on to a client that gets the body framed anew.
        if parts.headers.contains_key(header::TRANSFER_ENCODING) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        strip_hop_by_hop(&mut parts.headers);
        if let Some(c) = set_cookie {
            parts.headers.append(header::SET_COOKIE, c);
        }
        // A response read whole with its head frees its connection now;
        // else the body gives it back at its end.
        let conn = if conn.is_ready() {
            checkin(guard.backend(), conn);
            None
        } else {
            Some(conn)
        };
        let body = Upstream {
            inner: body,
            guard: Some(guard),
            conn,
            idle: None,
            idle_timeout: self.idle_timeout,
            last: Instant::now(),
        };
        Response::from_parts(parts, body.boxed())
    }
}

pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// One attempt more for a request whose kept-alive connection closed
/// unanswered ([`SendError::Stale`]), as nginx gives one for its cached
/// connections: not held against the backend, sent at once to another
/// backend or, with no other left, on a fresh connection to the same one
/// (a backend that closes every connection after answering costs its
/// clients nothing). One per request; a second is a failure.
#[derive(Debug, Default)]
pub(crate) struct StaleRetry {
    /// The backend to fall back on when the pool has no other.
    pub(crate) backend: Option<Arc<Backend>>,
    /// The attempt was spent.
    pub(crate) used: bool,
}

impl StaleRetry {
    /// Takes the attempt for `backend` if it is still there.
    pub(crate) fn absorb(&mut self, pool: &str, backend: &Arc<Backend>) -> bool {
        if self.used {
            return false;
        }
        self.used = true;
        self.backend = Some(backend.clone());
        Retried {
            pool,
            allowed: true,
        }
        .emit();
        true
    }
}

/// About how many bytes a head of a start line of `start` bytes and
/// `headers` takes on the wire (`name: value\r\n` each).
pub(crate) fn head_len(start: usize, headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + start
        + 14
}

/// The status and reason of a request no backend could be picked for.
pub(crate) fn no_backend(e: NoBackend, first_attempt: bool) -> (StatusCode, &'static str) {
    match (e, first_attempt) {
        (_, false) => (StatusCode::BAD_GATEWAY, "backend_unreachable"),
        (NoBackend::Empty, true) => (StatusCode::SERVICE_UNAVAILABLE, "no_backend"),
        (NoBackend::Unavailable, true) => (StatusCode::SERVICE_UNAVAILABLE, "all_unavailable"),
    }
}

/// Counts an answer of the balancer itself; its text.
pub(crate) fn failure(pool: &str, status: StatusCode, reason: &'static str) -> &'static str {
    RequestFailed {
        pool,
        status: status.as_u16(),
        reason,
    }
    .emit();
    match status {
        StatusCode::SERVICE_UNAVAILABLE => "no backend available\n",
        StatusCode::GATEWAY_TIMEOUT => "the backend did not answer in time\n",
        StatusCode::BAD_REQUEST => "bad request\n",
        _ => "the backend could not be reached\n",
    }
}

/// An answer of the balancer itself.
fn fail(pool: &str, status: StatusCode, reason: &'static str) -> Response<Body> {
    let text = failure(pool, status, reason);
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
fn request_host<'a>(
    host: Option<&'a HeaderValue>,
    authority: Option<&'a hyper::http::uri::Authority>,
) -> Option<Cow<'a, str>> {
    let raw = host
        .and_then(|h| h.to_str().ok())
        .or_else(|| authority.map(|a| a.as_str()))?;
    Some(host_of(raw))
}

/// The host of a `Host` value: without its port, lowercased.
pub(crate) fn host_of(raw: &str) -> Cow<'_, str> {
    let host = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Writes `n` as lower-case hex digits into `out` (its last 16 bytes, at
/// most).
fn hex(mut n: u64, out: &mut [u8]) {
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
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
    // Most messages carry none (and name none without `Connection`): one
    // look at each name says so, where removing costs a lookup each.
    if !h.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
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
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

/// The headers sent to the backend: the client's, less hop-by-hop ones,
/// plus the forwarding headers of `hop` and the request id.
pub fn forward_headers(
    mut h: HeaderMap,
    hop: &Hop,
    host: Option<&str>,
    upgrade: bool,
    request_id: HeaderValue,
) -> HeaderMap {
    let upgrade = upgrade.then(|| h.get(header::UPGRADE).cloned()).flatten();
    // `X-Forwarded-For` and `Forwarded` as the client sent them, joined
    // with this hop: read before the hop-by-hop headers go.
    let xff = joined(&h, &X_FORWARDED_FOR, &hop.xff);
    let this = forwarded_for_this(hop, host);
    let fwd = joined(&h, &header::FORWARDED, &this);
    strip_hop_by_hop(&mut h);
    if let Some(u) = upgrade {
        h.insert(header::UPGRADE, u);
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    h.insert(X_FORWARDED_FOR, xff);
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    h.insert(header::FORWARDED, fwd);
    h.insert(X_REQUEST_ID, request_id);
    h
}

/// The values of `name` in `h`, joined with `, `, then `add` (`add` alone,
/// shared rather than copied, when there is none).
fn joined(h: &HeaderMap, name: &HeaderName, add: &HeaderValue) -> HeaderValue {
    let mut prev = h.get_all(name).iter().map(|v| v.as_bytes()).peekable();
    if prev.peek().is_none() {
        return add.clone();
    }
    let mut v = Vec::new();
    join_values(&mut v, prev, add.as_bytes());
    HeaderValue::from_maybe_shared(Bytes::from(v)).unwrap_or_else(|_| add.clone())
}

/// Appends to `out` the values (those of visible ASCII; others are
/// dropped) joined with `, `, then `add`: a forwarding header's list with
/// this hop at its end.
pub(crate) fn join_values<'a>(
    out: &mut Vec<u8>,
    values: impl Iterator<Item = &'a [u8]>,
    add: &[u8],
) {
    for v in values {
        if v.iter().all(|b| *b == b'\t' || (0x20..0x7f).contains(b)) {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(add);
}

/// This hop's `Forwarded` element: `for=…;proto=http`, and the host the
/// client asked for when it is a plain name or address.
pub(crate) fn forwarded_for_this(hop: &Hop, host: Option<&str>) -> HeaderValue {
    match host.filter(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    }) {
        Some(host) => {
            let mut v = Vec::with_capacity(hop.fwd.len() + host.len() + 8);
            v.extend_from_slice(hop.fwd.as_bytes());
            v.extend_from_slice(b";host=\"");
            v.extend_from_slice(host.as_bytes());
            v.push(b'"');
            HeaderValue::from_maybe_shared(Bytes::from(v)).unwrap_or_else(|_| hop.fwd.clone())
        }
        None => hop.fwd.clone(),
    }
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
    /// The connection it comes on, which this body drives while it is
    /// read and gives back at its end (`None` once given back).
    conn: Option<Conn>,
    /// Armed the first time the backend makes it wait.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
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
        let mut frame = Pin::new(&mut this.inner).poll_frame(cx);
        if frame.is_pending() {
            // The rest is on the connection, which this task drives: read
            // what has come, then look again.
            if let Some(c) = this.conn.as_mut() {
                c.drive(cx);
                frame = Pin::new(&mut this.inner).poll_frame(cx);
            }
        }
        match frame {
            Poll::Ready(Some(Ok(f))) => {
                this.last = Instant::now();
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                this.guard = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                if let (Some(conn), Some(guard)) = (this.conn.take(), &this.guard) {
                    checkin(guard.backend(), conn);
                }
                this.guard = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The timer is armed the first time the backend makes the
                // body wait (most bodies come whole with their head), and
                // re-armed lazily: only when it fires is the time of the
                // last frame looked at.
                let idle_timeout = this.idle_timeout;
                let last = this.last;
                let idle = this.idle.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
                        last + idle_timeout,
                    )))
                });
                while idle.as_mut().poll(cx).is_ready() {
                    let deadline = this.last + this.idle_timeout;
                    if Instant::now() >= deadline {
                        this.conn = None;
                        this.guard = None;
                        return Poll::Ready(Some(Err("the backend's response stalled".into())));
                    }
                    idle.as_mut()
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

impl Drop for Upstream {
    fn drop(&mut self) {
        // A body the server never polled to its end (it knew the length)
        // but that was read whole still frees its connection; one dropped
        // half-read (the client went away) closes it.
        if let (Some(conn), Some(guard)) = (self.conn.take(), &self.guard) {
            if self.inner.is_end_stream() {
                checkin(guard.backend(), conn);
            }
        }
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
            h.clone(),
            &Hop::new("127.0.0.1".parse().expect("ip")),
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
        // Several X-Forwarded-For lines are joined in order, this hop last.
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        let out = forward_headers(
            h,
            &Hop::new("10.0.0.1".parse().expect("ip")),
            None,
            false,
            HeaderValue::from_static("rid-2"),
        );
        assert_eq!(
            out["x-forwarded-for"],
            "203.0.113.9, 198.51.100.7, 10.0.0.1"
        );
        assert_eq!(out["forwarded"], "for=203.0.113.9, for=10.0.0.1;proto=http");
    }

    #[test]
    fn request_ids_are_32_hex_digits_seed_then_counter() {
        let mut id = [0u8; 32];
        hex(0xdead_beef, &mut id[..16]);
        hex(u64::MAX, &mut id[16..]);
        assert_eq!(&id, b"00000000deadbeefffffffffffffffff");
    }

    #[test]
    fn upgrades_keep_their_headers_and_ipv6_is_quoted() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        let out = forward_headers(
            h.clone(),
            &Hop::new("::1".parse().expect("ip")),
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
