//! The direct path: plain HTTP/1.1 requests without a body are forwarded
//! by copying their heads with only the edits a proxy must make, as
//! HAProxy and nginx do, rather than parsed into hyper's `HeaderMap`s and
//! encoded again on both sides of the balancer.
//!
//! At 1 KiB responses that parsing and encoding, twice a request, and the
//! hyper client's dispatch were most of the balancer's own time
//! (docs/benchmarks.md, "Balancer"). This path spends it on one `httparse`
//! pass over each head and a copy.
//!
//! It takes only what it can forward without judgement; everything else
//! goes to hyper, for the rest of the client connection, with the bytes
//! already read ([`Ended::Fallback`]):
//! - HTTP/1.1 only, an origin-form target of plain URI characters, exactly
//!   one `Host`;
//! - no body: no `Content-Length` but `0`, no `Transfer-Encoding`, no
//!   `Expect`;
//! - no `Upgrade`, `TE`, `Trailer`, `Keep-Alive`, `Proxy-*` header, and a
//!   `Connection` header saying only `keep-alive` or `close`;
//! - a pool without sticky sessions;
//! - a head that parses (`httparse`, strict) within `MAX_BUF`.
//!
//! So request smuggling has nothing to work with here: a request whose
//! framing is anything but "no body" never takes this path, and hyper
//! judges it as before. The edits are the hyper path's, byte for byte in
//! effect (a differential test sends the same requests both ways):
//! `X-Forwarded-For` and `Forwarded` joined with this hop,
//! `X-Forwarded-Proto: http`, the client's first `X-Request-Id` or a new
//! one, `Connection` dropped. Responses lose their hop-by-hop headers (and
//! those `Connection` names); a body of known length or chunked is copied
//! as it comes, one delimited by the backend's close is re-framed as
//! chunked so the client connection survives it.
//!
//! Backend connections of this path are plain TCP streams with a read
//! buffer, kept idle per backend ([`RawIdle`]) beside hyper's.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Outcome};
use crate::pool::{PickHints, Pool};
use crate::proxy::{forwarded_for_this, host_of, join_values, Balancer, Hop, StaleRetry};
use crate::upstream::{Idle, Pooled, SendError, MAX_BUF, SETTLE};

/// Headers a head may have; more and hyper takes the request (and
/// answers 431 as before).
const MAX_HEADERS: usize = 100;

/// How a connection accepted before shutdown but still without a request
/// is given to send one (the hyper path's grace too).
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// How the direct path left a client connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Closed (by the client, an error, a timeout or the drain).
    Closed,
    /// The next request is not one for this path: hyper serves the
    /// connection from here, starting with the bytes left in the buffer.
    Fallback,
}

/// Bytes allowed in an origin-form target on this path: RFC 3986's
/// `pchar`, `/`, `?` and `%`. Anything else (`"`, `{`, a byte above 127,
/// a fragment…) is for hyper's URI parser to judge.
const TARGET: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'?'
                    | b'%'
            );
        i += 1;
    }
    t
};

/// What a request header is to this path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Copied as it is.
    Other,
    Host,
    ContentLength,
    Connection,
    XForwardedFor,
    Forwarded,
    XForwardedProto,
    RequestId,
    IdempotencyKey,
    /// Framing, upgrades and hop-by-hop headers: for hyper.
    Refuse,
}

fn kind(name: &str) -> Kind {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is("te") => Kind::Refuse,
        4 if is("host") => Kind::Host,
        6 if is("expect") => Kind::Refuse,
        7 if is("upgrade") || is("trailer") => Kind::Refuse,
        9 if is("forwarded") => Kind::Forwarded,
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::Refuse,
        12 if is("x-request-id") => Kind::RequestId,
        14 if is("content-length") => Kind::ContentLength,
        15 if is("x-forwarded-for") => Kind::XForwardedFor,
        15 if is("idempotency-key") => Kind::IdempotencyKey,
        16 if is("proxy-connection") => Kind::Refuse,
        17 if is("x-forwarded-proto") => Kind::XForwardedProto,
        17 if is("transfer-encoding") => Kind::Refuse,
        18 if is("proxy-authenticate") => Kind::Refuse,
        19 if is("proxy-authorization") => Kind::Refuse,
        _ => Kind::Other,
    }
}

/// The comma-separated tokens of a header value, trimmed, empty ones
/// skipped.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// A request this path forwards: where it goes and how.
#[derive(Debug)]
pub struct Plan {
    /// Bytes of the client's head.
    head_len: usize,
    pool: Arc<Pool>,
    /// The client asked to close after this response.
    close: bool,
    /// `HEAD`: the response has no body whatever it says.
    head: bool,
    /// May be sent again elsewhere (GET, HEAD, OPTIONS or an
    /// `Idempotency-Key`; no body).
    retryable: bool,
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request for this path; the head for the backend is in `out`.
    Plan(Plan),
    /// A request for hyper.
    Fallback,
}

impl Balancer {
    /// Reads one request head from `buf` and, if this path takes it,
    /// writes the head the backend gets into `out`.
    pub fn plan(&self, hop: &Hop, buf: &[u8], out: &mut Vec<u8>) -> Parsed {
        let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
            // Over the limit (one read may bring more than it): hyper's
            // path answers 431.
            Ok(httparse::Status::Complete(n)) if n > MAX_BUF => return Parsed::Fallback,
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Fallback,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Parsed::Fallback;
        };
        if method == "CONNECT"
            || !target.starts_with('/')
            || !target.bytes().all(|b| TARGET[b as usize])
        {
            return Parsed::Fallback;
        }
        let mut kinds = [Kind::Other; MAX_HEADERS];
        let mut host = None;
        let mut hosts = 0;
        let mut close = false;
        let mut idempotency_key = false;
        let mut lengths = 0;
        for (h, k) in req.headers.iter().zip(kinds.iter_mut()) {
            *k = kind(h.name);
            match *k {
                Kind::Refuse => return Parsed::Fallback,
                Kind::Host => {
                    hosts += 1;
                    host = Some(h.value);
                }
                Kind::ContentLength => {
                    lengths += 1;
                    if h.value != b"0" || lengths > 1 {
                        return Parsed::Fallback;
                    }
                }
                Kind::Connection => {
                    for t in tokens(h.value) {
                        if t.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                            return Parsed::Fallback;
                        }
                    }
                }
                Kind::IdempotencyKey => idempotency_key = true,
                _ => {}
            }
        }
        if hosts != 1 {
            return Parsed::Fallback;
        }
        // The host as `HeaderValue::to_str` would read it: visible ASCII.
        let host = host
            .filter(|v| v.iter().all(|b| *b == b'\t' || (0x20..0x7f).contains(b)))
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(host_of);
        let path = target.split('?').next().unwrap_or(target);
        let pool = self.route(host.as_deref(), path);
        if pool.settings.sticky {
            return Parsed::Fallback;
        }
        let kinds = &kinds[..req.headers.len()];
        let head = method == "HEAD";
        let retryable = matches!(method, "GET" | "HEAD" | "OPTIONS") || idempotency_key;

        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut request_id = None;
        for (h, k) in req.headers.iter().zip(kinds) {
            match k {
                Kind::Connection
                | Kind::XForwardedFor
                | Kind::Forwarded
                | Kind::XForwardedProto => {}
                Kind::RequestId => {
                    request_id.get_or_insert(h.value);
                }
                _ => {
                    out.extend_from_slice(h.name.as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(h.value);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        let of = |kind: Kind| {
            req.headers
                .iter()
                .zip(kinds)
                .filter(move |(_, k)| **k == kind)
                .map(|(h, _)| h.value)
        };
        out.extend_from_slice(b"x-forwarded-for: ");
        join_values(out, of(Kind::XForwardedFor), hop.xff.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\nforwarded: ");
        let this = forwarded_for_this(hop, host.as_deref());
        join_values(out, of(Kind::Forwarded), this.as_bytes());
        out.extend_from_slice(b"\r\nx-request-id: ");
        match request_id {
            Some(id) => out.extend_from_slice(id),
            None => out.extend_from_slice(self.request_id().as_bytes()),
        }
        out.extend_from_slice(b"\r\n\r\n");
        Parsed::Plan(Plan {
            head_len,
            pool: pool.clone(),
            close,
            head,
            retryable,
        })
    }
}

/// Serves the requests of one client connection that this path takes,
/// until the connection closes or a request is for hyper.
///
/// `stop` is the drain: a connection waiting for its next request closes
/// at once, one that has not sent any gets [`FIRST_REQUEST_GRACE`], a
/// response under way finishes (saying `Connection: close`). Without
/// `keep_alive` one request is served. `asked` is set once a request came.
#[allow(clippy::too_many_arguments)]
pub async fn serve<IO>(
    bal: &Balancer,
    hop: &Hop,
    io: &mut IO,
    buf: &mut BytesMut,
    header_read_timeout: Duration,
    stop: Option<&CancellationToken>,
    keep_alive: bool,
    asked: &AtomicBool,
) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // One timer for the connection's life, re-armed only when it fires
    // (a request costs no timer of its own): each head must come within
    // `header_read_timeout` of the wait for it starting, which also closes
    // a keep-alive connection idle that long, as on the hyper path.
    let mut waiting_since = tokio::time::Instant::now();
    let mut timer = Box::pin(tokio::time::sleep_until(
        waiting_since + header_read_timeout,
    ));
    let mut stopping = stop.map(|s| Box::pin(s.clone().cancelled_owned()));
    let mut grace: Option<tokio::time::Instant> = None;
    let mut out = Vec::with_capacity(1024);
    let mut scratch = Vec::with_capacity(2048);
    let mut served = 0u64;
    loop {
        // A whole head, or the reason there is none.
        let plan = loop {
            if !buf.is_empty() {
                match bal.plan(hop, buf, &mut out) {
                    Parsed::Plan(p) => break p,
                    Parsed::Fallback => return Ended::Fallback,
                    Parsed::Partial if buf.len() >= MAX_BUF => return Ended::Fallback,
                    Parsed::Partial => {}
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(8 * 1024);
            }
            tokio::select! {
                biased;
                r = io.read_buf(buf) => match r {
                    Ok(0) | Err(_) => return Ended::Closed,
                    Ok(_) => {}
                },
                _ = async { stopping.as_mut().expect("guarded").await }, if stopping.is_some() => {
                    stopping = None;
                    if served > 0 && buf.is_empty() {
                        return Ended::Closed;
                    }
                    let g = tokio::time::Instant::now() + FIRST_REQUEST_GRACE;
                    grace = Some(g);
                    if g < timer.deadline() {
                        timer.as_mut().reset(g);
                    }
                }
                _ = timer.as_mut() => {
                    let mut deadline = waiting_since + header_read_timeout;
                    if let Some(g) = grace {
                        deadline = deadline.min(g);
                    }
                    if tokio::time::Instant::now() < deadline {
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    // Empty lines before a request are no request.
                    if buf.iter().any(|b| !matches!(b, b'\r' | b'\n')) {
                        let _ = io
                            .write_all(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                    }
                    return Ended::Closed;
                }
            }
        };
        asked.store(true, Ordering::Relaxed);
        buf.advance(plan.head_len);
        served += 1;
        let closing = || {
            plan.close || !keep_alive || grace.is_some() || stop.is_some_and(|s| s.is_cancelled())
        };
        if !forward(bal, hop, &plan, &out, io, &mut scratch, closing).await {
            return Ended::Closed;
        }
        waiting_since = tokio::time::Instant::now();
    }
}

/// Sends one request to a backend of its pool (retrying an idempotent one
/// elsewhere as the hyper path does) and relays the answer; whether the
/// client connection stays open.
async fn forward<IO>(
    bal: &Balancer,
    hop: &Hop,
    plan: &Plan,
    head: &[u8],
    client: &mut IO,
    scratch: &mut Vec<u8>,
    closing: impl Fn() -> bool,
) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let pool = &plan.pool;
    pool.budget.deposit(Instant::now());
    let hints = PickHints {
        client: Some(hop.ip),
        sticky: None,
    };
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut stale = StaleRetry::default();
    loop {
        let (backend, fresh) = match pool.pick(hints, &tried, Instant::now()) {
            Ok(b) => (b, false),
            Err(e) => match stale.backend.take() {
                Some(b) => (b, true),
                None => {
                    let (status, reason) = crate::proxy::no_backend(e, tried.is_empty());
                    return answer(client, &pool.name, status, reason, plan.head, closing()).await;
                }
            },
        };
        stale.backend = None;
        let guard = backend.start();
        let started = Instant::now();
        let result = tokio::time::timeout(
            bal.first_byte_timeout,
            exchange(bal, &backend, head, plan, scratch, fresh),
        )
        .await;
        let done = Instant::now();
        let outcome = match &result {
            Ok(Err(SendError::Stale)) if stale.absorb(&pool.name, &backend) => {
                drop(guard);
                tried.push(backend);
                continue;
            }
            Ok(Ok((_, r))) if r.status >= 500 => Outcome::ServerError,
            Ok(Ok(_)) => Outcome::Success,
            Ok(Err(SendError::Connect)) => Outcome::ConnectFailed,
            Ok(Err(SendError::Broken | SendError::Stale)) => Outcome::Broken,
            Err(_) => Outcome::Timeout,
        };
        bal.attempted(pool, &backend, outcome, done.duration_since(started), done);
        match result {
            Ok(Ok((conn, resp))) => {
                let close = closing();
                let ok = relay(bal, conn, resp, client, scratch, close, &backend).await;
                drop(guard);
                return ok && !close;
            }
            Ok(Err(_)) => {
                if bal.may_retry(pool, plan.retryable, outcome, tried.len()) {
                    drop(guard);
                    tried.push(backend);
                    continue;
                }
                return answer(
                    client,
                    &pool.name,
                    StatusCode::BAD_GATEWAY,
                    outcome.label(),
                    plan.head,
                    closing(),
                )
                .await;
            }
            Err(_) => {
                return answer(
                    client,
                    &pool.name,
                    StatusCode::GATEWAY_TIMEOUT,
                    "first_byte_timeout",
                    plan.head,
                    closing(),
                )
                .await;
            }
        }
    }
}

/// The balancer's own answer (502, 503, 504), as the hyper path words it;
/// whether the client connection stays open.
async fn answer<IO: AsyncWrite + Unpin>(
    client: &mut IO,
    pool: &str,
    status: StatusCode,
    reason: &'static str,
    head: bool,
    close: bool,
) -> bool {
    let text = crate::proxy::failure(pool, status, reason);
    let mut r = Vec::with_capacity(256);
    r.extend_from_slice(b"HTTP/1.1 ");
    r.extend_from_slice(status.as_str().as_bytes());
    r.push(b' ');
    r.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    r.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\nx-weir-error: ");
    r.extend_from_slice(reason.as_bytes());
    r.extend_from_slice(format!("\r\ncontent-length: {}\r\n", text.len()).as_bytes());
    if close {
        r.extend_from_slice(b"connection: close\r\n");
    }
    r.extend_from_slice(b"\r\n");
    if !head {
        r.extend_from_slice(text.as_bytes());
    }
    client.write_all(&r).await.is_ok() && !close
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// None (HEAD, 204, 304).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding` ending in `chunked`, copied as it is.
    Chunked,
    /// Until the backend closes: sent to the client chunked.
    Close,
}

/// A backend's response head, already rewritten for the client (in the
/// caller's scratch buffer, without its final empty line).
#[derive(Debug)]
struct RespHead {
    status: u16,
    framing: Framing,
    /// The backend connection may carry another request afterwards.
    reusable: bool,
}

/// A plain connection to a backend and what has been read from it.
#[derive(Debug)]
pub struct RawConn {
    io: TcpStream,
    buf: BytesMut,
    /// The buffer grew past [`HEAD_BUF`] for a body: given back when the
    /// connection goes idle, so idle connections hold little.
    big: bool,
}

/// What a connection reads a response head into; bodies get up to
/// [`MAX_BUF`] at a time.
const HEAD_BUF: usize = 16 * 1024;

impl RawConn {
    async fn connect(backend: &Backend, timeout: Duration) -> Result<RawConn, SendError> {
        let io = tokio::time::timeout(timeout, TcpStream::connect(backend.authority.as_str()))
            .await
            .map_err(|_| SendError::Connect)?
            .map_err(|_| SendError::Connect)?;
        let _ = io.set_nodelay(true);
        Ok(RawConn {
            io,
            buf: BytesMut::with_capacity(HEAD_BUF),
            big: false,
        })
    }

    /// Not closed by the backend while idle (nor sent anything unasked),
    /// as far as the socket has said.
    fn still_open(&self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.io.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Reads into the buffer, with room for about `want` bytes (at most
    /// [`MAX_BUF`]); 0 at the end of the stream.
    async fn fill(&mut self, want: usize) -> std::io::Result<usize> {
        let want = want.clamp(4096, MAX_BUF);
        if self.buf.is_empty() {
            // Takes the whole allocation back (what was read is gone), so
            // a large body is read in pieces of up to 64 KiB, not in what
            // was left of the buffer after the last one.
            self.buf.reserve(want);
        } else if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(4096);
        }
        if self.buf.capacity() > HEAD_BUF {
            self.big = true;
        }
        self.io.read_buf(&mut self.buf).await
    }
}

/// A backend's idle plain connections.
pub type RawIdle = Idle<RawConn>;

impl Pooled for RawConn {
    fn ready(&self) -> bool {
        self.still_open()
    }

    fn alive(&mut self) -> bool {
        self.still_open()
    }
}

/// Why no response head came on a connection.
enum HeadError {
    /// The backend closed it (or reset it) before a byte of answer.
    Closed,
    /// A malformed head, one too big, a close mid-head, or a switch of
    /// protocols nobody asked for.
    Broken,
}

/// Sends the head on an idle connection to `backend` or a new one and
/// reads the response head, rewritten for the client into `scratch`.
///
/// A kept-alive connection the backend had closed while it was idle is no
/// failure of the backend: one the socket already says is closed is not
/// used, and a request its socket refuses goes on another. A request that
/// may not be sent twice only takes a connection that has settled
/// ([`SETTLE`]). One that closes without a byte of answer after an
/// idempotent request went out is [`SendError::Stale`]: the caller sends the
/// request again elsewhere (a backend that died under its requests is not
/// tried again for each of them) or, with nowhere else to go, on a fresh
/// connection to the same backend (one that closes every connection after
/// answering costs its clients nothing).
async fn exchange(
    bal: &Balancer,
    backend: &Backend,
    head: &[u8],
    plan: &Plan,
    scratch: &mut Vec<u8>,
    fresh: bool,
) -> Result<(RawConn, RespHead), SendError> {
    let min_idle = if plan.retryable {
        Duration::ZERO
    } else {
        SETTLE
    };
    loop {
        let idle = if fresh {
            None
        } else {
            backend.raw.take(Instant::now(), min_idle, bal.idle_timeout)
        };
        let (mut c, reused) = match idle {
            Some(c) => (c, true),
            None => (RawConn::connect(backend, bal.connect_timeout).await?, false),
        };
        if c.io.write_all(head).await.is_err() {
            // Refused by the socket: nothing reached the backend.
            if reused {
                continue;
            }
            return Err(SendError::Broken);
        }
        match read_head(&mut c, plan.head, scratch).await {
            Ok(h) => return Ok((c, h)),
            Err(HeadError::Closed) if reused && plan.retryable => return Err(SendError::Stale),
            Err(_) => return Err(SendError::Broken),
        }
    }
}

/// Response headers that end at this hop (RFC 9110 §7.6.1).
fn hop_by_hop(name: &str) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// Reads a response head from `c` (skipping interim 1xx ones), leaves
/// the bytes after it in `c.buf`, and writes the head the client gets
/// into `scratch`.
async fn read_head(
    c: &mut RawConn,
    request_was_head: bool,
    scratch: &mut Vec<u8>,
) -> Result<RespHead, HeadError> {
    let mut interim = false;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&c.buf) {
            Ok(httparse::Status::Complete(n)) => {
                let code = resp.code.unwrap_or(0);
                if (100..200).contains(&code) {
                    if code == 101 {
                        // Never asked for.
                        return Err(HeadError::Broken);
                    }
                    c.buf.advance(n);
                    interim = true;
                    continue;
                }
                if n > MAX_BUF {
                    // The buffer may hold more than the limit after one
                    // read; the head may not.
                    return Err(HeadError::Broken);
                }
                let head = rewrite(&resp, request_was_head, scratch).ok_or(HeadError::Broken)?;
                c.buf.advance(n);
                return Ok(head);
            }
            Ok(httparse::Status::Partial) => {
                if c.buf.len() >= MAX_BUF {
                    return Err(HeadError::Broken);
                }
            }
            Err(_) => return Err(HeadError::Broken),
        }
        match c.fill(HEAD_BUF).await {
            Ok(0) | Err(_) if c.buf.is_empty() && !interim => return Err(HeadError::Closed),
            Ok(0) | Err(_) => return Err(HeadError::Broken),
            Ok(_) => {}
        }
    }
}

/// The client's response head from a backend's: hop-by-hop headers (and
/// those `Connection` names) removed, the framing worked out; `None` for
/// one the balancer cannot pass on (two lengths, a transfer coding that
/// does not end in `chunked`).
fn rewrite(
    resp: &httparse::Response<'_, '_>,
    request_was_head: bool,
    out: &mut Vec<u8>,
) -> Option<RespHead> {
    let code = resp.code.filter(|c| (200..600).contains(c))?;
    let status = StatusCode::from_u16(code).ok()?;
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    let mut close = resp.version != Some(1);
    let mut named: [&[u8]; 8] = [b""; 8];
    let mut n_named = 0;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).ok()?;
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = v.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                return None;
            }
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                    if n_named == named.len() {
                        return None;
                    }
                    named[n_named] = t;
                    n_named += 1;
                }
            }
        }
    }
    let bodiless = request_was_head || code == 204 || code == 304;
    let framing = if bodiless {
        Framing::Empty
    } else if let Some(te) = te {
        if !tokens(te)
            .last()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
        {
            return None;
        }
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // The framing headers are the balancer's to write, from `framing`:
    // never dropped because `Connection` named them, never doubled.
    let mut length_kept = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            // Kept as sent only where it frames nothing (HEAD, 304).
            if framing != Framing::Empty || length_kept {
                continue;
            }
            length_kept = true;
        } else if hop_by_hop(h.name)
            || named[..n_named]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(h.name.as_bytes()))
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Chunked => {
            // The codings as a clean list, `chunked` last.
            out.extend_from_slice(b"transfer-encoding: ");
            for (i, t) in tokens(te.unwrap_or(b"chunked")).enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(t);
            }
            out.extend_from_slice(b"\r\n");
        }
        Framing::Close => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Empty => {}
    }
    Some(RespHead {
        status: code,
        framing,
        reusable: !close && framing != Framing::Close,
    })
}

/// Where a chunked body is: the framing is followed, not decoded, so the
/// bytes go to the client as they came and the balancer knows where the
/// message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunks {
    /// In a chunk-size line: the size so far and its digits.
    Size(u64, u8),
    /// After the size: an extension, up to the line's end.
    Ext(u64),
    /// The `\n` of a size line (the `\r` seen).
    SizeLf(u64),
    /// In a chunk's data: bytes left.
    Data(u64),
    /// The `\r\n` after a chunk's data: 2 or 1 bytes left.
    DataEnd(u8),
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// In a trailer line.
    Trailer,
    /// The `\n` of a trailer line.
    TrailerLf,
    /// The `\n` of the final empty line.
    EndLf,
    /// The message is complete.
    Done,
}

impl Chunks {
    /// Follows `bytes`; how many of them belong to the body (all of them
    /// unless it ends within), or `None` for a malformed body.
    pub fn advance(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                Chunks::Done => return Some(i),
                Chunks::Size(n, d) => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if d >= 15 {
                            return None;
                        }
                        let v = (b as char).to_digit(16)? as u64;
                        Chunks::Size(n * 16 + v, d + 1)
                    }
                    _ if d == 0 => return None,
                    b'\r' => Chunks::SizeLf(n),
                    b';' | b' ' | b'\t' => Chunks::Ext(n),
                    _ => return None,
                },
                Chunks::Ext(n) => match b {
                    b'\r' => Chunks::SizeLf(n),
                    b'\n' => return None,
                    _ => Chunks::Ext(n),
                },
                Chunks::SizeLf(n) => match (b, n) {
                    (b'\n', 0) => Chunks::TrailerStart,
                    (b'\n', n) => Chunks::Data(n),
                    _ => return None,
                },
                Chunks::Data(n) => {
                    let take = (n.min((bytes.len() - i) as u64)) as usize;
                    i += take;
                    let left = n - take as u64;
                    *self = if left == 0 {
                        Chunks::DataEnd(2)
                    } else {
                        Chunks::Data(left)
                    };
                    continue;
                }
                Chunks::DataEnd(2) if b == b'\r' => Chunks::DataEnd(1),
                Chunks::DataEnd(1) if b == b'\n' => Chunks::Size(0, 0),
                Chunks::DataEnd(_) => return None,
                Chunks::TrailerStart => match b {
                    b'\r' => Chunks::EndLf,
                    b'\n' => return None,
                    _ => Chunks::Trailer,
                },
                Chunks::Trailer => match b {
                    b'\r' => Chunks::TrailerLf,
                    b'\n' => return None,
                    _ => Chunks::Trailer,
                },
                Chunks::TrailerLf => match b {
                    b'\n' => Chunks::TrailerStart,
                    _ => return None,
                },
                Chunks::EndLf => match b {
                    b'\n' => Chunks::Done,
                    _ => return None,
                },
            };
            i += 1;
        }
        Some(i)
    }
}

/// Writes `a` then `b`, in as few system calls as the socket allows.
async fn write_both<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    mut a: &[u8],
    mut b: &[u8],
) -> std::io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let n = if a.is_empty() {
            io.write(b).await?
        } else if b.is_empty() {
            io.write(a).await?
        } else {
            io.write_vectored(&[std::io::IoSlice::new(a), std::io::IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let k = n.min(a.len());
        a = &a[k..];
        b = &b[n - k..];
    }
    Ok(())
}

/// Writes the head in `scratch` and the body to the client as it comes
/// from `c`; gives the connection back to the backend when its response
/// ended cleanly. Whether the client connection may carry another
/// request.
async fn relay<IO: AsyncWrite + Unpin>(
    bal: &Balancer,
    mut c: RawConn,
    resp: RespHead,
    client: &mut IO,
    scratch: &mut Vec<u8>,
    close: bool,
    backend: &Backend,
) -> bool {
    if close {
        scratch.extend_from_slice(b"connection: close\r\n");
    }
    scratch.extend_from_slice(b"\r\n");
    let mut chunks = Chunks::Size(0, 0);
    // What of the buffer is body; the framing's state after it.
    let take = |c: &mut RawConn, left: &mut u64, chunks: &mut Chunks| -> Option<(usize, bool)> {
        match resp.framing {
            Framing::Empty => Some((0, true)),
            Framing::Length(_) => {
                let n = (*left).min(c.buf.len() as u64) as usize;
                *left -= n as u64;
                Some((n, *left == 0))
            }
            Framing::Chunked => {
                let n = chunks.advance(&c.buf)?;
                Some((n, *chunks == Chunks::Done))
            }
            Framing::Close => Some((c.buf.len(), false)),
        }
    };
    let mut left = match resp.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut first = true;
    loop {
        let Some((n, ended)) = take(&mut c, &mut left, &mut chunks) else {
            // A malformed chunked body: the client gets what came, cut.
            if !first {
                return false;
            }
            let _ = client.write_all(scratch).await;
            return false;
        };
        let wrote = if resp.framing == Framing::Close {
            if n > 0 {
                // Re-framed for the client: the chunk's size line first.
                scratch.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                scratch.extend_from_slice(&c.buf[..n]);
                scratch.extend_from_slice(b"\r\n");
            }
            write_both(client, scratch, &[]).await
        } else if scratch.len() + n <= 16 * 1024 {
            // Small: one copy, one write.
            scratch.extend_from_slice(&c.buf[..n]);
            write_both(client, scratch, &[]).await
        } else {
            write_both(client, scratch, &c.buf[..n]).await
        };
        if wrote.is_err() {
            return false;
        }
        c.buf.advance(n);
        scratch.clear();
        first = false;
        if ended {
            if resp.reusable && c.buf.is_empty() {
                if c.big {
                    // Idle connections hold little.
                    c.buf = BytesMut::with_capacity(HEAD_BUF);
                    c.big = false;
                }
                backend.raw.put(c, Instant::now());
            }
            return true;
        }
        let want = match resp.framing {
            Framing::Length(_) => left as usize,
            _ => MAX_BUF,
        };
        match tokio::time::timeout(bal.idle_timeout, c.fill(want)).await {
            Ok(Ok(0)) if resp.framing == Framing::Close => {
                return client.write_all(b"0\r\n\r\n").await.is_ok();
            }
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn follow(body: &[u8]) -> (Chunks, Option<usize>) {
        let mut c = Chunks::Size(0, 0);
        let n = c.advance(body);
        (c, n)
    }

    #[test]
    fn chunked_bodies_are_followed_to_their_end() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n \r\n0\r\nx-t: 1\r\n\r\nNEXT";
        let (c, n) = follow(body);
        assert_eq!(c, Chunks::Done);
        assert_eq!(n, Some(body.len() - 4));
        assert_eq!(follow(b"0\r\n\r\n"), (Chunks::Done, Some(5)));
        // Byte by byte, the same.
        let mut c = Chunks::Size(0, 0);
        let mut used = 0;
        for b in body.iter() {
            used += c.advance(std::slice::from_ref(b)).expect("valid");
            if c == Chunks::Done {
                break;
            }
        }
        assert_eq!(used, body.len() - 4);
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\nhello",
            b"5\r\nhello\n",
            b"5\r\nhelloXY",
            b"1234567890abcdef0\r\n",
            b"0\r\n\n",
            b"0\r\nx\r\n\rX",
            b"0\r\nX: 1\n\r\n",
            b"0\r\nX: 1\rY",
        ] {
            assert_eq!(follow(bad).1, None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// The client's head for a backend's `raw` head.
    fn client_head(raw: &[u8], request_was_head: bool) -> Option<(String, RespHead)> {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut hs);
        resp.parse(raw).expect("parses");
        let mut out = Vec::new();
        let h = rewrite(&resp, request_was_head, &mut out)?;
        Some((String::from_utf8(out).expect("ascii"), h))
    }

    #[test]
    fn the_framing_headers_are_the_balancers_to_write() {
        // `Connection` naming the length cannot take the framing away.
        let (head, h) = client_head(
            b"HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Hop\r\nX-Hop: 1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .expect("passed on");
        assert_eq!(h.framing, Framing::Length(5));
        assert_eq!(head, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n");
        // A length beside chunked goes; the codings come as a clean list.
        let (head, h) = client_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip ,, chunked\r\n\r\n",
            false,
        )
        .expect("passed on");
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n"
        );
        // HEAD: the length says what a GET would get, and frames nothing.
        let (head, h) =
            client_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).expect("passed on");
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(head, "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n");
        // Neither length nor chunked: sent on chunked, the backend's
        // connection not reused.
        let (head, h) = client_head(b"HTTP/1.1 200 OK\r\n\r\n", false).expect("passed on");
        assert_eq!((h.framing, h.reusable), (Framing::Close, false));
        assert!(head.ends_with("transfer-encoding: chunked\r\n"));
        // What cannot be passed on.
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 099 Odd\r\n\r\n",
            b"HTTP/1.1 600 Odd\r\n\r\n",
        ] {
            assert!(
                client_head(bad, false).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn target_bytes_are_plain_uri_characters() {
        for ok in ["/", "/a/b?c=d&e=%20", "/~x/(y)*+,;=:@!$'"] {
            assert!(ok.bytes().all(|b| TARGET[b as usize]), "{ok}");
        }
        for bad in [
            "/a b", "/a\"b", "/{x}", "/a#b", "/a\\b", "/é", "/a|b", "/a^b", "/[x]",
        ] {
            assert!(!bad.bytes().all(|b| TARGET[b as usize]), "{bad}");
        }
    }

    fn balancer() -> Balancer {
        Balancer::new(&crate::config::BalanceConfig::default())
    }

    fn hop() -> Hop {
        Hop::new("192.0.2.7".parse().expect("ip"))
    }

    /// The headers of a head, by lowercase name, values in order.
    fn by_name(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<Vec<u8>>)> {
        let mut out: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for h in headers {
            let n = h.name.to_ascii_lowercase();
            match out.iter_mut().find(|(k, _)| *k == n) {
                Some((_, v)) => v.push(h.value.to_vec()),
                None => out.push((n, vec![h.value.to_vec()])),
            }
        }
        out.sort();
        out
    }

    /// What the hyper path sends the backend for the same head: hyper's
    /// parse into a `HeaderMap`, then [`crate::proxy::forward_headers`].
    fn hyper_path(raw: &[u8], hop: &Hop) -> Vec<(String, Vec<Vec<u8>>)> {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut hs);
        req.parse(raw).expect("parses");
        let mut map = hyper::HeaderMap::new();
        for h in req.headers.iter() {
            map.append(
                hyper::header::HeaderName::from_bytes(h.name.as_bytes()).expect("name"),
                hyper::header::HeaderValue::from_bytes(h.value).expect("value"),
            );
        }
        let host =
            crate::proxy::host_of(map.get("host").and_then(|v| v.to_str().ok()).unwrap_or(""))
                .into_owned();
        let id = map
            .get("x-request-id")
            .cloned()
            .unwrap_or_else(|| hyper::header::HeaderValue::from_static("generated"));
        let out = crate::proxy::forward_headers(map, hop, Some(&host), false, id);
        let mut v: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for name in out.keys() {
            v.push((
                name.as_str().to_string(),
                out.get_all(name)
                    .iter()
                    .map(|x| x.as_bytes().to_vec())
                    .collect(),
            ));
        }
        v.sort();
        v
    }

    #[test]
    fn requests_for_hyper_are_left_to_it() {
        let bal = balancer();
        let mut out = Vec::new();
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Hop\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            b"\x16\x03\x01\x00\x05hello\r\n\r\n",
        ] {
            assert!(
                matches!(bal.plan(&hop(), raw, &mut out), Parsed::Fallback),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(matches!(
            bal.plan(&hop(), b"GET / HTTP/1.1\r\nHost: a\r\n", &mut out),
            Parsed::Partial
        ));
    }

    /// A header of a request the direct path takes.
    fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
        let value =
            proptest::collection::vec(prop_oneof![0x20u8..0x7f, Just(b'\t'), 0x80u8..=0xff], 0..24)
                .prop_map(|mut v| {
                    // httparse trims the value's ends; so does what it is
                    // compared with.
                    while v.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                        v.remove(0);
                    }
                    while v.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
                        v.pop();
                    }
                    v
                });
        let name = prop_oneof![
            Just("X-Forwarded-For".to_string()),
            Just("forwarded".to_string()),
            Just("X-Forwarded-Proto".to_string()),
            Just("X-Request-Id".to_string()),
            Just("Accept".to_string()),
            Just("Cookie".to_string()),
            Just("Idempotency-Key".to_string()),
            "[a-zA-Z][a-zA-Z0-9-]{0,12}"
                .prop_filter("a plain name", |n| { kind(n) == Kind::Other }),
        ];
        (name, value)
    }

    proptest! {
        /// The direct path sends the backend the head the hyper path
        /// would: same method, target, and every header's values in order.
        #[test]
        fn the_direct_head_is_the_hyper_paths(
            method in prop_oneof![Just("GET"), Just("HEAD"), Just("DELETE"), Just("OPTIONS"), Just("PURGE")],
            target in "/[a-zA-Z0-9._~!$&'()*+,;=:@/%-]{0,30}(\\?[a-zA-Z0-9=&%]{0,20})?",
            host in "[a-zA-Z0-9.-]{1,20}(:[0-9]{1,5})?",
            headers in proptest::collection::vec(header(), 0..12),
            connection in prop_oneof![Just(None), Just(Some("keep-alive")), Just(Some("close")), Just(Some("Keep-Alive, close"))],
            zero_length in any::<bool>(),
            request_id in any::<bool>(),
        ) {
            let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
            for (n, v) in &headers {
                raw.extend_from_slice(n.as_bytes());
                raw.extend_from_slice(b": ");
                raw.extend_from_slice(v);
                raw.extend_from_slice(b"\r\n");
            }
            if let Some(c) = connection {
                raw.extend_from_slice(format!("Connection: {c}\r\n").as_bytes());
            }
            if zero_length {
                raw.extend_from_slice(b"Content-Length: 0\r\n");
            }
            let has_id = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("x-request-id"));
            if request_id && !has_id {
                raw.extend_from_slice(b"X-Request-Id: given\r\n");
            }
            raw.extend_from_slice(b"\r\nNEXT");
            let bal = balancer();
            let hop = hop();
            let mut out = Vec::new();
            let plan = match bal.plan(&hop, &raw, &mut out) {
                Parsed::Plan(p) => p,
                other => return Err(TestCaseError::fail(format!("{other:?} for {:?}", String::from_utf8_lossy(&raw)))),
            };
            prop_assert_eq!(plan.head_len, raw.len() - 4);
            prop_assert_eq!(plan.close, connection.is_some_and(|c| c.contains("close")));
            let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
            let mut sent = httparse::Request::new(&mut hs);
            let n = sent.parse(&out).expect("the direct head parses");
            prop_assert!(matches!(n, httparse::Status::Complete(k) if k == out.len()));
            prop_assert_eq!(sent.method, Some(method));
            prop_assert_eq!(sent.path, Some(target.as_str()));
            let mut direct = by_name(sent.headers);
            let mut hyper = hyper_path(&raw[..raw.len() - 4], &hop);
            if !request_id && !has_id {
                // Made up by each path: only its presence is compared.
                for v in direct.iter_mut().chain(hyper.iter_mut()) {
                    if v.0 == "x-request-id" {
                        prop_assert_eq!(v.1.len(), 1);
                        v.1 = vec![b"generated".to_vec()];
                    }
                }
            }
            prop_assert_eq!(direct, hyper);
        }

        /// Whatever the bytes, planning never panics, and a plan's head is
        /// within what was read.
        #[test]
        fn planning_arbitrary_bytes_never_panics(
            raw in proptest::collection::vec(any::<u8>(), 0..400),
            prefix in prop_oneof![Just(&b""[..]), Just(&b"GET / HTTP/1.1\r\nHost: a\r\n"[..])],
        ) {
            let mut bytes = prefix.to_vec();
            bytes.extend_from_slice(&raw);
            let mut out = Vec::new();
            if let Parsed::Plan(p) = balancer().plan(&hop(), &bytes, &mut out) {
                prop_assert!(p.head_len <= bytes.len());
                prop_assert!(out.ends_with(b"\r\n\r\n"));
            }
        }

        /// Any split of a valid chunked body is followed to the same end,
        /// and what follows it is never counted as body.
        #[test]
        fn chunked_framing_is_split_independent(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 0..6),
            cut in 0usize..400,
            tail in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut body = Vec::new();
            for c in &chunks {
                body.extend_from_slice(format!("{:X}\r\n", c.len()).as_bytes());
                body.extend_from_slice(c);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
            let end = body.len();
            body.extend_from_slice(&tail);
            let cut = cut.min(body.len());
            let mut st = Chunks::Size(0, 0);
            let a = st.advance(&body[..cut]).expect("valid so far");
            let b = if st == Chunks::Done { 0 } else { st.advance(&body[cut..]).expect("valid") };
            prop_assert_eq!(st, Chunks::Done);
            prop_assert_eq!(a + b, end);
        }

        /// Arbitrary bytes never panic the follower, and it never claims
        /// more bytes than it was given.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut st = Chunks::Size(0, 0);
            if let Some(n) = st.advance(&bytes) {
                prop_assert!(n <= bytes.len());
            }
        }
    }
}
