//! `weir balance` on the wire, from the outside, as an attacker or a broken
//! backend sees it: scripted raw-TCP backends that record every byte they
//! receive and answer scripted bytes, raw TCP clients, and every case run
//! with `balance.fast_path` on and off, which must give the same safe
//! outcome.
//!
//! The backends parse what they receive *leniently*, as a sloppy origin
//! would (a `Transfer-Encoding` containing "chunked" is chunked, the first
//! `Content-Length` wins, `+5` is 5, a folded line is a header of its
//! own), so that anything ambiguous the balancer lets through shows as a
//! request the client never sent; and every head they receive is checked
//! strictly: CRLF only, no NUL or bare CR, no folded line, token header
//! names, one `Content-Length` of digits, never with `Transfer-Encoding`,
//! at most one `Host`.
//!
//! Each test collects every defect it finds (both settings) and fails once
//! with all of them listed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, timeout_at, Instant};

use crate::Balance;

/// Pushes a message onto the list of defects when a condition fails.
macro_rules! check {
    ($bad:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            $bad.push(format!($($fmt)+));
        }
    };
}

/// Fails the test with every defect found, one per line.
fn verdict(bad: &[String]) {
    assert!(
        bad.is_empty(),
        "{} defect(s):\n- {}",
        bad.len(),
        bad.join("\n- ")
    );
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn named<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// What the default script answers: the request's method and target.
fn echo_of(method: &str, target: &str) -> String {
    format!("{method} {target}")
}

// ---------------------------------------------------------------------------
// Scripted backends

/// One request as a backend parsed it (leniently).
#[derive(Debug, Clone)]
struct Seen {
    head: Vec<u8>,
    method: String,
    target: String,
    target_raw: Vec<u8>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        named(&self.headers, name)
    }
}

/// What a backend answers: bytes written in parts (`gap` apart), then the
/// connection kept or closed.
struct Reply {
    parts: Vec<Vec<u8>>,
    gap: Duration,
    close: bool,
}

impl Reply {
    fn raw(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            parts: vec![bytes.into()],
            gap: Duration::ZERO,
            close: false,
        }
    }

    fn ok(body: &str) -> Reply {
        Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    fn echo(seen: &Seen) -> Reply {
        Reply::ok(&echo_of(&seen.method, &seen.target))
    }

    fn then_close(mut self) -> Reply {
        self.close = true;
        self
    }
}

type Script = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

fn echo_script() -> Script {
    Arc::new(Reply::echo)
}

#[derive(Default)]
struct Log {
    conns: Vec<Vec<u8>>,
    reqs: Vec<Seen>,
    errors: Vec<String>,
}

/// A raw-TCP backend: every connection's bytes recorded, every request
/// parsed and answered by its script.
struct Backend {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(script: Script) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("backend address");
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                let idx = {
                    let mut g = shared.lock().expect("log");
                    g.conns.push(Vec::new());
                    g.conns.len() - 1
                };
                let wire = Wire {
                    s,
                    buf: Vec::new(),
                    log: shared.clone(),
                    idx,
                };
                conns.spawn(serve(wire, script.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        Backend { addr, log, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn reqs(&self) -> Vec<Seen> {
        self.log.lock().expect("log").reqs.clone()
    }

    fn with_target(&self, target: &str) -> Vec<Seen> {
        self.reqs()
            .into_iter()
            .filter(|r| r.target == target)
            .collect()
    }

    fn count(&self, target: &str) -> usize {
        self.with_target(target).len()
    }

    /// Every head this backend received is strictly well formed and every
    /// request it parsed: defects into `bad`.
    fn sane(&self, mode: &str, bad: &mut Vec<String>) {
        let g = self.log.lock().expect("log");
        for e in &g.errors {
            bad.push(format!(
                "{mode}: the backend could not parse what it got: {e}"
            ));
        }
        for r in &g.reqs {
            if let Err(e) = clean_head(&r.head) {
                bad.push(format!(
                    "{mode}: the backend received an unclean head ({e}): {:?}",
                    lossy(&r.head)
                ));
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend's side of one connection.
struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
    log: Arc<Mutex<Log>>,
    idx: usize,
}

impl Wire {
    async fn more(&mut self) -> bool {
        let mut b = vec![0u8; 65536];
        match self.s.read(&mut b).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                self.log.lock().expect("log").conns[self.idx].extend_from_slice(&b[..n]);
                true
            }
        }
    }

    /// One line, its `\n` included; `None` at the end of the connection.
    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                return Some(self.buf.drain(..=i).collect());
            }
            if !self.more().await {
                return None;
            }
        }
    }

    async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.more().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    fn error(&self, e: String) {
        self.log.lock().expect("log").errors.push(e);
    }
}

fn blank(line: &[u8]) -> bool {
    line == b"\n" || line == b"\r\n"
}

/// A request head, lines up to the first blank one (blank lines before it
/// skipped); `None` at the end of the connection.
async fn read_head(w: &mut Wire) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let line = w.line().await?;
        if blank(&line) && head.is_empty() {
            continue;
        }
        head.extend_from_slice(&line);
        if blank(&line) {
            return Some(head);
        }
    }
}

/// Parses a head the lenient way: bare LF ends a line, a folded line is a
/// header of its own, names and values trimmed.
fn parse_head(head: Vec<u8>) -> Seen {
    let first_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let first = head[..first_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..first_end]);
    let mut parts = first.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let method = lossy(parts.next().unwrap_or_default());
    let target_raw = parts.next().unwrap_or_default().to_vec();
    let text = lossy(&head);
    let headers = text
        .split('\n')
        .skip(1)
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Seen {
        target: lossy(&target_raw),
        target_raw,
        method,
        headers,
        head,
        body: Vec::new(),
    }
}

/// `Content-Length` as a sloppy parser reads it: `+5`, ` 5 `, `5, 5` all 5.
fn lenient_len(v: &str) -> usize {
    let digits: String = v
        .trim()
        .trim_start_matches('+')
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or(0)
}

async fn read_chunked(w: &mut Wire) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line = w
            .line()
            .await
            .ok_or("end of connection in a chunked body")?;
        let text = lossy(&line);
        let size_txt = text.trim().split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_txt, 16)
            .map_err(|_| format!("bad chunk size line {text:?}"))?;
        if size == 0 {
            loop {
                let t = w.line().await.ok_or("end of connection in trailers")?;
                if blank(&t) {
                    return Ok(body);
                }
            }
        }
        body.extend(w.exact(size).await.ok_or("end of connection in a chunk")?);
        let end = w.line().await.ok_or("end of connection after a chunk")?;
        if !blank(&end) {
            return Err(format!("chunk not followed by CRLF: {:?}", lossy(&end)));
        }
    }
}

async fn serve(mut w: Wire, script: Script) {
    loop {
        let Some(head) = read_head(&mut w).await else {
            return;
        };
        let mut seen = parse_head(head);
        let chunked = seen
            .all("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = seen
            .all("content-length")
            .first()
            .map(|v| lenient_len(v))
            .unwrap_or(0);
        let expects = seen
            .all("expect")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects && (chunked || length > 0) {
            let _ = w.s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        }
        seen.body = if chunked {
            match read_chunked(&mut w).await {
                Ok(b) => b,
                Err(e) => {
                    w.error(format!("{e} (request {:?})", lossy(&seen.head)));
                    return;
                }
            }
        } else if length > 0 {
            match w.exact(length).await {
                Some(b) => b,
                None => return,
            }
        } else {
            Vec::new()
        };
        w.log.lock().expect("log").reqs.push(seen.clone());
        let reply = script(&seen);
        for (i, part) in reply.parts.iter().enumerate() {
            if i > 0 {
                sleep(reply.gap).await;
            }
            if w.s.write_all(part).await.is_err() {
                return;
            }
        }
        if reply.close {
            // A lingering close: what arrives afterwards is read (and
            // recorded) but never served.
            let _ = w.s.shutdown().await;
            let _ = timeout(Duration::from_millis(500), async {
                while w.more().await {}
            })
            .await;
            return;
        }
    }
}

/// A head as a recipient must be able to trust it.
fn clean_head(head: &[u8]) -> Result<(), String> {
    for (i, &b) in head.iter().enumerate() {
        if b == 0 {
            return Err("NUL".into());
        }
        if b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            return Err("bare LF".into());
        }
        if b == b'\r' && head.get(i + 1) != Some(&b'\n') {
            return Err("bare CR".into());
        }
    }
    let text = lossy(head);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    if parts.len() != 3 || !["HTTP/1.1", "HTTP/1.0"].contains(&parts[2]) {
        return Err(format!("request line {request_line:?}"));
    }
    let (mut cl, mut te, mut host) = (Vec::new(), Vec::new(), 0);
    for l in lines.filter(|l| !l.is_empty()) {
        if l.starts_with([' ', '\t']) {
            return Err(format!("folded line {l:?}"));
        }
        let (n, v) = l
            .split_once(':')
            .ok_or(format!("line without colon {l:?}"))?;
        if n.is_empty() || !n.bytes().all(is_tchar) {
            return Err(format!("header name {n:?}"));
        }
        if n.eq_ignore_ascii_case("content-length") {
            cl.push(v.trim().to_string());
        }
        if n.eq_ignore_ascii_case("transfer-encoding") {
            te.push(v.trim().to_ascii_lowercase());
        }
        if n.eq_ignore_ascii_case("host") {
            host += 1;
        }
    }
    if host > 1 {
        return Err(format!("{host} Host headers"));
    }
    if cl.len() > 1 {
        return Err(format!("Content-Length {cl:?}"));
    }
    if let Some(v) = cl.first() {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("Content-Length {v:?}"));
        }
    }
    if !te.is_empty() && !cl.is_empty() {
        return Err("Content-Length with Transfer-Encoding".into());
    }
    if !te.is_empty() && te.join(", ") != "chunked" {
        return Err(format!("Transfer-Encoding {te:?}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Balancers

/// A backend and a balancer in front of it, with one `fast_path` setting.
struct Rig {
    mode: &'static str,
    backend: Backend,
    bal: Balance,
}

impl Rig {
    fn addr(&self) -> SocketAddr {
        self.bal.addr
    }
}

fn config(fast: bool, backend: &Backend, extra: &str) -> String {
    format!(
        "[balance]\nfast_path = {fast}\nfirst_byte_timeout = \"2s\"\nidle_timeout = \"2s\"\nmax_fails = 1000\n{extra}\n\n[balance.pools.default]\nbackends = [\"{}\"]\n",
        backend.url()
    )
}

async fn rig(fast: bool, script: Script, extra: String) -> Rig {
    let backend = Backend::start(script).await;
    let bal = Balance::start(&[], Some(&config(fast, &backend, &extra))).await;
    let mode = if fast {
        "fast_path=true"
    } else {
        "fast_path=false"
    };
    Rig { mode, backend, bal }
}

/// Both settings, each with a backend of its own running `script`.
async fn rigs(script: Script, extra: &str) -> [Rig; 2] {
    let (a, b) = tokio::join!(
        rig(true, script.clone(), extra.to_string()),
        rig(false, script, extra.to_string())
    );
    [a, b]
}

// ---------------------------------------------------------------------------
// Raw clients

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length,
    Chunked,
    Close,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
    interim: Vec<u16>,
}

impl Resp {
    fn all(&self, name: &str) -> Vec<&str> {
        named(&self.headers, name)
    }

    fn text(&self) -> String {
        lossy(&self.body)
    }
}

/// How reading a response went wrong; the bytes of it read so far.
#[derive(Debug)]
enum Fail {
    Closed(String),
    Hung(String),
    Bad(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Closed(p) => write!(f, "connection closed after {p:?}"),
            Fail::Hung(p) => write!(f, "no complete answer in time, got {p:?}"),
            Fail::Bad(e) => write!(f, "mis-framed answer: {e}"),
        }
    }
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        Client { s, buf: Vec::new() }
    }

    /// Writes `bytes`; false when the balancer no longer takes them.
    async fn send(&mut self, bytes: impl AsRef<[u8]>) -> bool {
        self.s.write_all(bytes.as_ref()).await.is_ok()
    }

    /// Reads more; `Ok(false)` at the end of the connection, `Err` at the
    /// deadline.
    async fn more(&mut self, deadline: Instant) -> Result<bool, ()> {
        let mut b = vec![0u8; 65536];
        match timeout_at(deadline, self.s.read(&mut b)).await {
            Err(_) => Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => Ok(false),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&b[..n]);
                Ok(true)
            }
        }
    }

    async fn fill(&mut self, deadline: Instant, cur: &[u8]) -> Result<(), Fail> {
        let more = self.more(deadline).await;
        let so_far = lossy(&[cur, &self.buf[..]].concat());
        match more {
            Ok(true) => Ok(()),
            Ok(false) => Err(Fail::Closed(so_far)),
            Err(()) => Err(Fail::Hung(so_far)),
        }
    }

    async fn line(&mut self, deadline: Instant, cur: &mut Vec<u8>) -> Result<Vec<u8>, Fail> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let l: Vec<u8> = self.buf.drain(..i + 2).collect();
                cur.extend_from_slice(&l);
                return Ok(l[..i].to_vec());
            }
            self.fill(deadline, cur).await?;
        }
    }

    async fn exact(
        &mut self,
        n: usize,
        deadline: Instant,
        cur: &mut Vec<u8>,
    ) -> Result<Vec<u8>, Fail> {
        while self.buf.len() < n {
            self.fill(deadline, cur).await?;
        }
        let b: Vec<u8> = self.buf.drain(..n).collect();
        cur.extend_from_slice(&b);
        Ok(b)
    }

    /// The next final response (interim ones skipped and noted), framed
    /// strictly as a client must: for a HEAD request when `head_req`.
    async fn response(&mut self, head_req: bool, wait: Duration) -> Result<Resp, Fail> {
        let deadline = Instant::now() + wait;
        let mut interim = Vec::new();
        let mut cur = Vec::new();
        loop {
            let end = loop {
                if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                    break i + 4;
                }
                self.fill(deadline, &cur).await?;
            };
            let head_bytes: Vec<u8> = self.buf.drain(..end).collect();
            cur.extend_from_slice(&head_bytes);
            let head = lossy(&head_bytes);
            let (status, headers) = parse_resp_head(&head).map_err(Fail::Bad)?;
            if (100..200).contains(&status) && status != 101 {
                interim.push(status);
                continue;
            }
            let mut r = Resp {
                status,
                head,
                headers,
                body: Vec::new(),
                framing: Framing::Empty,
                interim,
            };
            if head_req || status == 204 || status == 304 || status == 101 {
                return Ok(r);
            }
            let te: Vec<String> = r
                .all("transfer-encoding")
                .iter()
                .map(|v| v.to_ascii_lowercase())
                .collect();
            let cls: Vec<String> = r
                .all("content-length")
                .iter()
                .map(|v| v.to_string())
                .collect();
            if !te.is_empty() {
                if te.join(", ") != "chunked" || !cls.is_empty() {
                    return Err(Fail::Bad(format!("framing {te:?} {cls:?}: {:?}", r.head)));
                }
                r.framing = Framing::Chunked;
                loop {
                    let line = self.line(deadline, &mut cur).await?;
                    let text = lossy(&line);
                    let size_txt = text.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(size_txt, 16)
                        .map_err(|_| Fail::Bad(format!("chunk size line {text:?}")))?;
                    if size == 0 {
                        while !self.line(deadline, &mut cur).await?.is_empty() {}
                        return Ok(r);
                    }
                    let data = self.exact(size + 2, deadline, &mut cur).await?;
                    if !data.ends_with(b"\r\n") {
                        return Err(Fail::Bad("chunk not followed by CRLF".into()));
                    }
                    r.body.extend_from_slice(&data[..size]);
                }
            }
            if !cls.is_empty() {
                let v = &cls[0];
                if cls.len() > 1 || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Fail::Bad(format!("Content-Length {cls:?}")));
                }
                let n: usize = v
                    .parse()
                    .map_err(|_| Fail::Bad(format!("Content-Length {v}")))?;
                r.body = self.exact(n, deadline, &mut cur).await?;
                r.framing = Framing::Length;
                return Ok(r);
            }
            loop {
                match self.more(deadline).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(()) => return Err(Fail::Hung(lossy(&[&cur[..], &self.buf].concat()))),
                }
            }
            r.body = std::mem::take(&mut self.buf);
            r.framing = Framing::Close;
            return Ok(r);
        }
    }

    /// Everything until the end of the connection; `false` when it was
    /// still open after `wait`.
    async fn rest(&mut self, wait: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + wait;
        loop {
            match self.more(deadline).await {
                Ok(true) => {}
                Ok(false) => return (std::mem::take(&mut self.buf), true),
                Err(()) => return (std::mem::take(&mut self.buf), false),
            }
        }
    }
}

fn parse_resp_head(head: &str) -> Result<(u16, Vec<(String, String)>), String> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s));
    let status = match (version, status) {
        ("HTTP/1.1" | "HTTP/1.0", Some(s)) => s,
        _ => return Err(format!("status line {status_line:?}")),
    };
    let mut headers = Vec::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let (n, v) = l.split_once(':').ok_or(format!("header line {l:?}"))?;
        if n.is_empty() || !n.bytes().all(is_tchar) {
            return Err(format!("header name {n:?}"));
        }
        if v.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(format!("header value {v:?}"));
        }
        headers.push((n.to_string(), v.trim().to_string()));
    }
    Ok((status, headers))
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n")
}

const WAIT: Duration = Duration::from_secs(5);

/// A GET on `c` must be answered with its own echo: `Err` says how not.
async fn echoed(c: &mut Client, target: &str, wait: Duration) -> Result<(), String> {
    if !c.send(get(target)).await {
        return Err(format!("GET {target}: write refused"));
    }
    match c.response(false, wait).await {
        Ok(r) if r.status == 200 && r.text() == echo_of("GET", target) => Ok(()),
        Ok(r) => Err(format!(
            "GET {target}: answered {} {:?} (expected its own echo)",
            r.status,
            r.text()
        )),
        Err(f) => Err(format!("GET {target}: {f}")),
    }
}

/// The next answer on `c` is the echo of a GET of `target`.
async fn echoed_only(c: &mut Client, target: &str) -> Result<(), String> {
    match c.response(false, WAIT).await {
        Ok(r) if r.status == 200 && r.text() == echo_of("GET", target) => Ok(()),
        Ok(r) => Err(format!(
            "GET {target}: answered {} {:?} (expected its own echo)",
            r.status,
            r.text()
        )),
        Err(f) => Err(format!("GET {target}: {f}")),
    }
}

// ---------------------------------------------------------------------------
// 1. Request smuggling

/// One hostile request. `bodies`: the bodies its first request may reach
/// the backend with (none: it must be refused, never forwarded).
struct Smuggle {
    name: &'static str,
    method: &'static str,
    bytes: Vec<u8>,
    bodies: Vec<Vec<u8>>,
}

/// Statuses that refuse a request outright.
const REFUSALS: [u16; 6] = [400, 411, 413, 431, 501, 505];

/// How a smuggling case went for the client: `Err` is a defect.
async fn smuggle_case(addr: SocketAddr, path: &str, case: &Smuggle) -> Result<String, String> {
    let mut c = Client::connect(addr).await;
    if !c.send(&case.bytes).await {
        return Ok("write refused".into());
    }
    let head_req = case.method == "HEAD";
    let first = match c.response(head_req, WAIT).await {
        Err(Fail::Closed(p)) if p.is_empty() => return Ok("closed".into()),
        Err(f) => return Err(format!("first answer: {f}")),
        Ok(r) if REFUSALS.contains(&r.status) => return Ok(format!("refused {}", r.status)),
        Ok(r) if r.status == 200 => {
            let want = if head_req {
                String::new()
            } else {
                echo_of(case.method, path)
            };
            if r.text() != want {
                return Err(format!(
                    "answered 200 with {:?}, not the echo {want:?} of its own request",
                    r.text()
                ));
            }
            "served".to_string()
        }
        Ok(r) => return Err(format!("answered {}: {:?}", r.status, r.head)),
    };
    // The connection, if still open, must be in step: a GET after it gets
    // its own answer (or a refusal, or the end).
    let after = format!("{path}-after");
    if !c.send(get(&after)).await {
        return Ok(format!("{first}, then write refused"));
    }
    match c.response(false, WAIT).await {
        Err(Fail::Closed(p)) if p.is_empty() => Ok(format!("{first}, then closed")),
        Err(f) => Err(format!("{first}, then the next GET: {f}")),
        Ok(r) if REFUSALS.contains(&r.status) => Ok(format!("{first}, then refused")),
        Ok(r) if r.status == 200 && r.text() == echo_of("GET", &after) => {
            Ok(format!("{first}, then in step"))
        }
        Ok(r) => Err(format!(
            "{first}, then the next GET was answered {} {:?}: out of step",
            r.status,
            r.text()
        )),
    }
}

fn smuggle_cases(n: usize) -> Vec<Smuggle> {
    let p = format!("/c{n}");
    let s = format!("GET /smuggled-{n} HTTP/1.1\r\nHost: t\r\n\r\n");
    let sb = s.as_bytes().to_vec();
    let len = s.len();
    let chunked_s = format!("{len:x}\r\n{s}\r\n0\r\n\r\n");
    let te_body = |te: &str, method: &'static str, name: &'static str| Smuggle {
        name,
        method,
        bytes: format!("{method} {p} HTTP/1.1\r\nHost: t\r\n{te}\r\n\r\n{chunked_s}").into_bytes(),
        bodies: vec![sb.clone()],
    };
    let cl_body = |cl: &str, name: &'static str, ok: bool| Smuggle {
        name,
        method: "POST",
        bytes: format!("POST {p} HTTP/1.1\r\nHost: t\r\n{cl}\r\n\r\n{s}").into_bytes(),
        bodies: if ok { vec![sb.clone()] } else { vec![] },
    };
    vec![
        Smuggle {
            name: "Content-Length covering a request + Transfer-Encoding: chunked ending before it",
            method: "POST",
            bytes: format!(
                "POST {p} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{s}",
                len + 5
            )
            .into_bytes(),
            bodies: vec![Vec::new(), [b"0\r\n\r\n".as_slice(), &sb].concat()],
        },
        Smuggle {
            name: "Transfer-Encoding: chunked + a short Content-Length: 3",
            method: "POST",
            bytes: format!(
                "POST {p} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n{s}"
            )
            .into_bytes(),
            bodies: vec![Vec::new(), b"0\r\n".to_vec()],
        },
        cl_body(&format!("Content-Length: 0\r\nContent-Length: {len}"), "two different Content-Lengths", false),
        cl_body(&format!("Content-Length: 0, {len}"), "Content-Length list of different values", false),
        cl_body(&format!("Content-Length: +{len}"), "Content-Length: +N", true),
        cl_body(&format!("Content-Length: -{len}"), "Content-Length: -N", false),
        cl_body(&format!("Content-Length:   {len}  "), "Content-Length with extra whitespace", true),
        cl_body(&format!("Content-Length: 000{len}"), "Content-Length with leading zeros", true),
        cl_body(&format!("Content-Length: {len} ,{len}"), "Content-Length: N ,N", true),
        cl_body(&format!("Content-Length : {len}"), "Content-Length with a space before the colon", true),
        cl_body(&format!("Content-Length: 0x{len:x}"), "Content-Length in hex", false),
        cl_body("Content-Length: 18446744073709551617", "Content-Length overflowing 64 bits", false),
        te_body("Transfer-Encoding: xchunked", "POST", "Transfer-Encoding: xchunked"),
        te_body("Transfer-Encoding: chunked, identity", "POST", "Transfer-Encoding: chunked, identity"),
        te_body(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
            "POST",
            "Transfer-Encoding: chunked then Transfer-Encoding: identity",
        ),
        te_body("Transfer-Encoding : chunked", "POST", "Transfer-Encoding with a space before the colon"),
        te_body("Transfer-Encoding: Chunked", "POST", "Transfer-Encoding: Chunked (case)"),
        te_body("Transfer-Encoding: chunked", "GET", "GET with a chunked body holding a request"),
        Smuggle {
            name: "GET with a Content-Length body holding a request",
            method: "GET",
            bytes: format!("GET {p} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n{s}").into_bytes(),
            bodies: vec![sb.clone()],
        },
        Smuggle {
            name: "HEAD with a Content-Length body holding a request",
            method: "HEAD",
            bytes: format!("HEAD {p} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n{s}").into_bytes(),
            bodies: vec![sb.clone()],
        },
        Smuggle {
            name: "chunk size overflowing 64 bits",
            method: "POST",
            bytes: format!(
                "POST {p} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000a\r\n0123456789\r\n0\r\n\r\n{s}"
            )
            .into_bytes(),
            bodies: vec![],
        },
        Smuggle {
            name: "bare LF before a Content-Length",
            method: "GET",
            bytes: format!("GET {p} HTTP/1.1\r\nHost: t\r\nX-A: b\nContent-Length: {len}\r\n\r\n{s}").into_bytes(),
            bodies: vec![sb.clone()],
        },
        Smuggle {
            name: "bare LF line endings throughout",
            method: "GET",
            bytes: format!("GET {p} HTTP/1.1\nHost: t\nContent-Length: {len}\n\n{s}").into_bytes(),
            bodies: vec![sb.clone()],
        },
        Smuggle {
            name: "obs-fold continuation line that looks like a Content-Length",
            method: "GET",
            bytes: format!("GET {p} HTTP/1.1\r\nHost: t\r\nX-A: a\r\n Content-Length: 5\r\n\r\n").into_bytes(),
            bodies: vec![Vec::new()],
        },
        Smuggle {
            name: "obs-fold continuation line that looks like Transfer-Encoding",
            method: "GET",
            bytes: format!("GET {p} HTTP/1.1\r\nHost: t\r\nX-A: a\r\n\tTransfer-Encoding: chunked\r\n\r\n").into_bytes(),
            bodies: vec![Vec::new()],
        },
        Smuggle {
            name: "bare CR in a header value, before a Content-Length",
            method: "GET",
            bytes: format!("GET {p} HTTP/1.1\r\nHost: t\r\nX-A: a\rContent-Length: 5\r\n\r\n").into_bytes(),
            bodies: vec![Vec::new()],
        },
        Smuggle {
            name: "two Host headers",
            method: "GET",
            bytes: format!("GET {p} HTTP/1.1\r\nHost: t\r\nHost: evil.example\r\n\r\n").into_bytes(),
            bodies: vec![Vec::new()],
        },
        Smuggle {
            name: "whitespace before the first header line",
            method: "GET",
            bytes: format!("GET {p} HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: t\r\n\r\n").into_bytes(),
            bodies: vec![Vec::new()],
        },
        Smuggle {
            name: "two spaces in the request line",
            method: "GET",
            bytes: format!("GET  {p} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes(),
            bodies: vec![Vec::new()],
        },
        Smuggle {
            name: "HTTP/1.2",
            method: "GET",
            bytes: format!("GET {p} HTTP/1.2\r\nHost: t\r\n\r\n").into_bytes(),
            bodies: vec![Vec::new()],
        },
        Smuggle {
            name: "NUL in a header value",
            method: "GET",
            bytes: format!("GET {p} HTTP/1.1\r\nHost: t\r\nX-A: a\0Content-Length: 5\r\n\r\n").into_bytes(),
            bodies: vec![Vec::new()],
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_never_reach_the_backend_as_requests_of_their_own() {
    let rigs = rigs(echo_script(), "").await;
    let mut bad = Vec::new();
    for rig in &rigs {
        let mode = rig.mode;
        let cases = smuggle_cases(0).len();
        let mut runs = JoinSet::new();
        for n in 0..cases {
            let addr = rig.addr();
            runs.spawn(async move {
                let case = smuggle_cases(n).swap_remove(n);
                let got = smuggle_case(addr, &format!("/c{n}"), &case).await;
                (n, case, got)
            });
        }
        let mut results = Vec::new();
        while let Some(r) = runs.join_next().await {
            results.push(r.expect("case task"));
        }
        results.sort_by_key(|(n, _, _)| *n);
        for (n, case, got) in &results {
            let path = format!("/c{n}");
            let seen = rig.backend.with_target(&path);
            let label = format!("{mode}: {} ({:?})", case.name, lossy(&case.bytes));
            match got {
                Ok(how) => eprintln!("{mode}: {}: {how}", case.name),
                Err(e) => bad.push(format!("{label}: {e}")),
            }
            check!(
                bad,
                seen.len() <= 1,
                "{label}: the backend got {} requests for {path}",
                seen.len()
            );
            for r in &seen {
                check!(
                    bad,
                    case.bodies.contains(&r.body),
                    "{label}: the backend got it with the body {:?} (allowed: {:?}); head {:?}",
                    lossy(&r.body),
                    case.bodies.iter().map(|b| lossy(b)).collect::<Vec<_>>(),
                    lossy(&r.head)
                );
            }
            let after = rig.backend.count(&format!("{path}-after"));
            check!(
                bad,
                after <= 1,
                "{label}: the next GET reached the backend {after} times"
            );
        }
        for r in rig.backend.reqs() {
            check!(
                bad,
                !r.target.contains("smuggled") && !r.method.contains("smuggled"),
                "{mode}: a smuggled request reached the backend as a request of its own: {:?}",
                lossy(&r.head)
            );
        }
        rig.backend.sane(mode, &mut bad);
        let mut c = Client::connect(rig.addr()).await;
        if let Err(e) = echoed(&mut c, "/still-serving", WAIT).await {
            bad.push(format!("{mode}: after the smuggling attempts: {e}"));
        }
    }
    verdict(&bad);
}

// ---------------------------------------------------------------------------
// 2. Pipelining

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_each_exactly_once() {
    let rigs = rigs(echo_script(), "").await;
    let mut bad = Vec::new();
    let post_body = "a=1&b=2\r\nGET /inside-a-body HTTP/1.1\r\nHost: t\r\n\r\nend";
    let chunk_body = "hello chunked\r\n0\r\n\r\nGET /inside-a-chunk HTTP/1.1\r\n\r\n";
    for rig in &rigs {
        let mode = rig.mode;
        let scenarios: Vec<(&str, String, Vec<(&str, &str)>)> = vec![
            (
                "three GETs in one write",
                [get("/p1"), get("/p2"), get("/p3")].concat(),
                vec![("GET", "/p1"), ("GET", "/p2"), ("GET", "/p3")],
            ),
            (
                "GET, POST with a body, GET in one write",
                format!(
                    "{}POST /q2 HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{post_body}{}",
                    get("/q1"),
                    post_body.len(),
                    get("/q3")
                ),
                vec![("GET", "/q1"), ("POST", "/q2"), ("GET", "/q3")],
            ),
            (
                "GET, chunked POST, GET in one write",
                format!(
                    "{}POST /r2 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x};x=y\r\n{chunk_body}\r\n0\r\n\r\n{}",
                    get("/r1"),
                    chunk_body.len(),
                    get("/r3")
                ),
                vec![("GET", "/r1"), ("POST", "/r2"), ("GET", "/r3")],
            ),
            (
                "GET with a 5-byte body, then a GET, in one write",
                format!(
                    "GET /s1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello{}",
                    get("/s2")
                ),
                vec![("GET", "/s1"), ("GET", "/s2")],
            ),
            (
                "HEAD, GET, HEAD in one write",
                format!(
                    "HEAD /h1 HTTP/1.1\r\nHost: t\r\n\r\n{}HEAD /h3 HTTP/1.1\r\nHost: t\r\n\r\n",
                    get("/h2")
                ),
                vec![("HEAD", "/h1"), ("GET", "/h2"), ("HEAD", "/h3")],
            ),
        ];
        for (what, bytes, expect) in scenarios {
            let mut c = Client::connect(rig.addr()).await;
            check!(bad, c.send(&bytes).await, "{mode}: {what}: write refused");
            for (i, (method, target)) in expect.iter().enumerate() {
                match c.response(*method == "HEAD", WAIT).await {
                    Ok(r) if *method == "HEAD" => check!(
                        bad,
                        r.status == 200 && r.body.is_empty(),
                        "{mode}: {what}: answer {i} ({method} {target}): {} {:?}",
                        r.status,
                        r.text()
                    ),
                    Ok(r) => check!(
                        bad,
                        r.status == 200 && r.text() == echo_of(method, target),
                        "{mode}: {what}: answer {i} should be the echo of {method} {target}, got {} {:?}",
                        r.status,
                        r.text()
                    ),
                    Err(f) => {
                        bad.push(format!("{mode}: {what}: answer {i} ({method} {target}): {f}"));
                        break;
                    }
                }
            }
            for (method, target) in &expect {
                let seen = rig.backend.with_target(target);
                check!(
                    bad,
                    seen.len() == 1 && seen[0].method == *method,
                    "{mode}: {what}: the backend got {target} {} times ({:?})",
                    seen.len(),
                    seen.iter().map(|r| lossy(&r.head)).collect::<Vec<_>>()
                );
            }
        }
        // Requests cut anywhere by the network: one byte at a time, and in
        // 7-byte pieces across two pipelined requests.
        let mut c = Client::connect(rig.addr()).await;
        for b in get("/t1").bytes() {
            c.send([b]).await;
            sleep(Duration::from_millis(2)).await;
        }
        if let Err(e) = echoed_only(&mut c, "/t1").await {
            bad.push(format!("{mode}: a GET written a byte at a time: {e}"));
        }
        let both = [get("/t2"), get("/t3")].concat();
        for piece in both.as_bytes().chunks(7) {
            c.send(piece).await;
            sleep(Duration::from_millis(5)).await;
        }
        for t in ["/t2", "/t3"] {
            if let Err(e) = echoed_only(&mut c, t).await {
                bad.push(format!("{mode}: two GETs written in 7-byte pieces: {e}"));
            }
        }
        let split = get("/t4");
        let cut = split.len() - 1;
        c.send(&split[..cut]).await;
        sleep(Duration::from_millis(50)).await;
        c.send(&split[cut..]).await;
        if let Err(e) = echoed_only(&mut c, "/t4").await {
            bad.push(format!("{mode}: a GET whose last LF came 50 ms later: {e}"));
        }
        let body_of = |t: &str| rig.backend.with_target(t).first().map(|r| lossy(&r.body));
        check!(
            bad,
            body_of("/q2").as_deref() == Some(post_body),
            "{mode}: the POST's body reached the backend as {:?}",
            body_of("/q2")
        );
        check!(
            bad,
            body_of("/r2").as_deref() == Some(chunk_body),
            "{mode}: the chunked POST's body reached the backend as {:?}",
            body_of("/r2")
        );
        check!(
            bad,
            body_of("/s1").as_deref() == Some("hello"),
            "{mode}: the GET's body reached the backend as {:?}",
            body_of("/s1")
        );
        let targets: Vec<String> = rig.backend.reqs().into_iter().map(|r| r.target).collect();
        check!(
            bad,
            targets.len() == 18,
            "{mode}: the backend saw {} requests, not the 18 sent: {targets:?}",
            targets.len()
        );
        rig.backend.sane(mode, &mut bad);
    }
    verdict(&bad);
}

// ---------------------------------------------------------------------------
// 3. Requests the direct path should leave to hyper, which must still work

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_requests_still_work_the_same_on_both_paths() {
    let rigs = rigs(echo_script(), "").await;
    let mut bad = Vec::new();
    let fill = "f".repeat(6000);
    let mut outcomes: Vec<Vec<String>> = Vec::new();
    for rig in &rigs {
        let mode = rig.mode;
        let addr = rig.addr();

        // HTTP/1.0: answered, then the connection closes (no keep-alive asked).
        let mut c = Client::connect(addr).await;
        c.send("GET /u10 HTTP/1.0\r\nHost: t\r\n\r\n").await;
        match c.response(false, WAIT).await {
            Ok(r) => {
                check!(
                    bad,
                    r.status == 200 && r.text() == "GET /u10",
                    "{mode}: HTTP/1.0: {} {:?}",
                    r.status,
                    r.text()
                );
                let (more, closed) = c.rest(Duration::from_secs(3)).await;
                check!(
                    bad,
                    closed && more.is_empty(),
                    "{mode}: HTTP/1.0 without keep-alive: connection still open 3 s after the answer ({:?})",
                    lossy(&more)
                );
            }
            Err(f) => bad.push(format!("{mode}: HTTP/1.0: {f}")),
        }

        // Absolute form.
        let mut c = Client::connect(addr).await;
        c.send("GET http://t/uabs?q=1 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        match c.response(false, WAIT).await {
            Ok(r) => check!(
                bad,
                r.status == 200 && r.text().ends_with("/uabs?q=1"),
                "{mode}: absolute-form target: {} {:?}",
                r.status,
                r.text()
            ),
            Err(f) => bad.push(format!("{mode}: absolute-form target: {f}")),
        }

        // Expect: 100-continue: a client waiting for the 100 gets it, sends
        // its body, and the body arrives whole.
        let mut c = Client::connect(addr).await;
        c.send(
            "POST /uexp HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut got_100 = false;
        while find(&c.buf, b"\r\n\r\n").is_none() {
            if c.more(deadline).await != Ok(true) {
                break;
            }
        }
        if c.buf.starts_with(b"HTTP/1.1 100") {
            got_100 = true;
            let end = find(&c.buf, b"\r\n\r\n").map(|i| i + 4).unwrap_or(0);
            c.buf.drain(..end);
        }
        check!(
            bad,
            got_100,
            "{mode}: Expect: 100-continue: no 100 Continue within 3 s (got {:?})",
            lossy(&c.buf)
        );
        c.send("hello world").await;
        match c.response(false, WAIT).await {
            Ok(r) => check!(
                bad,
                r.status == 200 && r.text() == "POST /uexp",
                "{mode}: Expect: 100-continue: {} {:?}",
                r.status,
                r.text()
            ),
            Err(f) => bad.push(format!("{mode}: Expect: 100-continue: {f}")),
        }
        let body = rig
            .backend
            .with_target("/uexp")
            .first()
            .map(|r| lossy(&r.body));
        check!(
            bad,
            body.as_deref() == Some("hello world"),
            "{mode}: Expect: 100-continue: the backend got the body {body:?}"
        );

        // An upgrade the backend declines: a plain answer, and the
        // connection stays HTTP (the next request is proxied, not tunneled).
        let mut c = Client::connect(addr).await;
        c.send("GET /uup HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n")
            .await;
        match c.response(false, WAIT).await {
            Ok(r) => {
                check!(
                    bad,
                    r.status == 200 && r.text() == "GET /uup",
                    "{mode}: declined upgrade: {} {:?}",
                    r.status,
                    r.text()
                );
                if c.send(get("/uup2")).await {
                    match c.response(false, WAIT).await {
                        Ok(r) => check!(
                            bad,
                            r.status == 200 && r.text() == "GET /uup2",
                            "{mode}: after a declined upgrade: {} {:?}",
                            r.status,
                            r.text()
                        ),
                        Err(Fail::Closed(p)) if p.is_empty() => {}
                        Err(f) => bad.push(format!("{mode}: after a declined upgrade: {f}")),
                    }
                }
                for r in rig.backend.with_target("/uup2") {
                    check!(
                        bad,
                        r.all("x-forwarded-for").len() == 1,
                        "{mode}: the request after a declined upgrade was tunneled, not proxied: {:?}",
                        lossy(&r.head)
                    );
                }
            }
            Err(f) => bad.push(format!("{mode}: declined upgrade: {f}")),
        }
        let up = rig.backend.with_target("/uup");
        check!(
            bad,
            up.len() == 1 && up[0].all("upgrade") == ["x"],
            "{mode}: the upgrade request reached the backend as {:?}",
            up.iter().map(|r| lossy(&r.head)).collect::<Vec<_>>()
        );

        // TE: trailers.
        let mut c = Client::connect(addr).await;
        c.send("GET /ute HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n")
            .await;
        match c.response(false, WAIT).await {
            Ok(r) => check!(
                bad,
                r.status == 200 && r.text() == "GET /ute",
                "{mode}: TE: trailers: {} {:?}",
                r.status,
                r.text()
            ),
            Err(f) => bad.push(format!("{mode}: TE: trailers: {f}")),
        }
        for r in rig.backend.with_target("/ute") {
            check!(
                bad,
                r.all("te").is_empty(),
                "{mode}: TE (hop-by-hop) reached the backend: {:?}",
                lossy(&r.head)
            );
        }

        // Targets with characters that must be forwarded unchanged.
        let target = "/uq\"x{y}|z";
        let mut c = Client::connect(addr).await;
        c.send(get(target)).await;
        match c.response(false, WAIT).await {
            Ok(r) => check!(
                bad,
                r.status == 200 && r.text() == echo_of("GET", target),
                "{mode}: target {target:?}: {} {:?}",
                r.status,
                r.text()
            ),
            Err(f) => bad.push(format!("{mode}: target {target:?}: {f}")),
        }

        // Targets some parsers refuse: either path may, but both must
        // answer alike, and what is forwarded is forwarded unchanged.
        let mut per_mode = Vec::new();
        for (i, raw) in [
            b"/un\xc3\xa9".to_vec(),
            b"/un\xff".to_vec(),
            b"/un<a>".to_vec(),
            b"/un`b`".to_vec(),
            b"/un\\c".to_vec(),
            b"/un%zz".to_vec(),
        ]
        .iter()
        .enumerate()
        {
            let mut c = Client::connect(addr).await;
            c.send([b"GET ".as_slice(), raw, b" HTTP/1.1\r\nHost: t\r\n\r\n"].concat())
                .await;
            let got = match c.response(false, WAIT).await {
                Ok(r) => format!("{}", r.status),
                Err(Fail::Closed(p)) if p.is_empty() => "closed".into(),
                Err(f) => format!("{f}"),
            };
            let seen: Vec<Seen> = rig
                .backend
                .reqs()
                .into_iter()
                .filter(|r| r.target_raw.starts_with(b"/un") && r.target_raw.len() == raw.len())
                .filter(|r| r.target_raw == *raw)
                .collect();
            check!(
                bad,
                got == "400" || (got == "200" && seen.len() == 1),
                "{mode}: target {:?}: answered {got}, the backend got it unchanged {} times",
                lossy(raw),
                seen.len()
            );
            per_mode.push(format!("target {i} {:?}: {got}", lossy(raw)));
        }
        outcomes.push(per_mode);

        // 90 headers, and a head near 60 KiB: forwarded whole.
        let many: String = (0..90).map(|i| format!("X-H{i:02}: v{i}\r\n")).collect();
        let mut c = Client::connect(addr).await;
        c.send(format!("GET /umany HTTP/1.1\r\nHost: t\r\n{many}\r\n"))
            .await;
        match c.response(false, WAIT).await {
            Ok(r) => check!(bad, r.status == 200, "{mode}: 90 headers: {}", r.status),
            Err(f) => bad.push(format!("{mode}: 90 headers: {f}")),
        }
        for r in rig.backend.with_target("/umany") {
            let got: Vec<String> = r
                .headers
                .iter()
                .filter(|(n, _)| n.to_ascii_lowercase().starts_with("x-h"))
                .map(|(n, v)| format!("{}: {v}", n.to_ascii_lowercase()))
                .collect();
            let want: Vec<String> = (0..90).map(|i| format!("x-h{i:02}: v{i}")).collect();
            check!(
                bad,
                got == want,
                "{mode}: 90 headers reached the backend as {got:?}"
            );
        }
        let big: String = (0..10).map(|i| format!("X-Fill{i}: {fill}\r\n")).collect();
        let mut c = Client::connect(addr).await;
        c.send(format!("GET /ubig HTTP/1.1\r\nHost: t\r\n{big}\r\n"))
            .await;
        match c.response(false, WAIT).await {
            Ok(r) => check!(bad, r.status == 200, "{mode}: a 60 KiB head: {}", r.status),
            Err(f) => bad.push(format!("{mode}: a 60 KiB head: {f}")),
        }
        let seen = rig.backend.with_target("/ubig");
        check!(
            bad,
            seen.len() == 1
                && (0..10).all(|i| seen[0].all(&format!("x-fill{i}")) == [fill.as_str()]),
            "{mode}: a 60 KiB head reached the backend {} times, or altered",
            seen.len()
        );
        // Over 64 KiB: refused, never forwarded.
        let huge: String = (0..12).map(|i| format!("X-Fill{i}: {fill}\r\n")).collect();
        let mut c = Client::connect(addr).await;
        c.send(format!("GET /uhuge HTTP/1.1\r\nHost: t\r\n{huge}\r\n"))
            .await;
        let got = match c.response(false, WAIT).await {
            Ok(r) => format!("{}", r.status),
            Err(Fail::Closed(p)) if p.is_empty() => "closed".into(),
            Err(f) => format!("{f}"),
        };
        check!(
            bad,
            got == "431" || got == "closed",
            "{mode}: a 72 KiB head: {got}"
        );
        check!(
            bad,
            rig.backend.count("/uhuge") == 0,
            "{mode}: a 72 KiB head was forwarded"
        );
        rig.backend.sane(mode, &mut bad);
    }
    check!(
        bad,
        outcomes[0] == outcomes[1],
        "the two paths answer unusual targets differently:\n  fast_path=true:  {:?}\n  fast_path=false: {:?}",
        outcomes[0],
        outcomes[1]
    );
    verdict(&bad);
}

// ---------------------------------------------------------------------------
// 4. What backends answer

fn pattern(n: usize) -> String {
    (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

fn response_script() -> Script {
    Arc::new(|seen: &Seen| {
        let t = seen.target.as_str();
        let base = t.split('?').next().unwrap_or_default();
        match base {
            "/chunked" => Reply::raw(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5;ext=1\r\nhello\r\n6;name=\"v a\";x\r\n world\r\n0;last=1\r\nX-T: t\r\n\r\n",
            ),
            "/chunked-big" => {
                let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for part in pattern(120_000).as_bytes().chunks(40_000) {
                    r.extend(format!("{:X};e=\"1;2\"\r\n", part.len()).into_bytes());
                    r.extend_from_slice(part);
                    r.extend_from_slice(b"\r\n");
                }
                r.extend_from_slice(b"0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n");
                Reply::raw(r)
            }
            "/close" => Reply::raw(format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{}",
                pattern(100_000)
            ))
            .then_close(),
            "/short" => {
                Reply::raw("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").then_close()
            }
            "/dupcl" => Reply::raw(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 11\r\n\r\nhello world",
            ),
            "/clist" => Reply::raw("HTTP/1.1 200 OK\r\nContent-Length: 5, 11\r\n\r\nhello world"),
            "/clplus" => Reply::raw("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"),
            "/clte" => Reply::raw(
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
            "/interim" => Reply {
                parts: vec![
                    b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
                    b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ninterim".to_vec(),
                ],
                gap: Duration::from_millis(100),
                close: false,
            },
            "/hints" => Reply::raw(
                "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhints",
            ),
            "/204" => Reply::raw("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"),
            "/304" => Reply::raw(
                "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 1234\r\n\r\n",
            ),
            "/head" => Reply::raw(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n",
            ),
            "/head-chunked" => {
                Reply::raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            }
            "/bighead" => Reply::raw(format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
                "b".repeat(70_000)
            )),
            "/bighead100" => Reply::raw(format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
                "b".repeat(100 << 10)
            )),
            "/midhead" => Reply::raw(format!(
                "HTTP/1.1 200 OK\r\nX-Mid: {}\r\nContent-Length: 3\r\n\r\nmid",
                "m".repeat(50_000)
            )),
            "/secret" => Reply::raw(
                "HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nContent-Length: 6\r\n\r\nsecret",
            )
            .then_close(),
            "/hop" => Reply::raw(
                "HTTP/1.1 200 OK\r\nConnection: Keep-Alive, X-Other\r\nKeep-Alive: timeout=5, max=100\r\nX-Other: 1\r\nProxy-Authenticate: Basic realm=\"p\"\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhop\r\n0\r\nX-T: 1\r\n\r\n",
            ),
            "/extra-same" => Reply::raw(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
            ),
            "/extra-later" => Reply {
                parts: vec![
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged".to_vec(),
                ],
                gap: Duration::from_millis(100),
                close: false,
            },
            "/unasked101" => Reply::raw(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
            ),
            "/trickle-chunked" | "/trickle-length" => {
                let all: &[u8] = if base == "/trickle-chunked" {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"
                };
                Reply {
                    parts: all.iter().map(|b| vec![*b]).collect(),
                    gap: Duration::from_millis(2),
                    close: false,
                }
            }
            _ => Reply::echo(seen),
        }
    })
}

/// Sends a bodiless `method` request for `target` on `c`; its answer.
async fn ask(c: &mut Client, method: &str, target: &str) -> Result<Resp, Fail> {
    c.send(format!("{method} {target} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .await;
    c.response(method == "HEAD", WAIT).await
}

/// After an answer on `c`, the next GET is answered in time with its own
/// echo (unless the balancer said it closes).
async fn next_in_step(
    bad: &mut Vec<String>,
    mode: &str,
    what: &str,
    c: &mut Client,
    said_close: bool,
    within: Duration,
) {
    let target = format!("/next-{}", what.replace(' ', "-"));
    if said_close {
        let (more, closed) = c.rest(Duration::from_secs(3)).await;
        check!(
            bad,
            closed && more.is_empty(),
            "{mode}: {what}: said Connection: close but did not close ({:?})",
            lossy(&more)
        );
        return;
    }
    if let Err(e) = echoed(c, &target, within).await {
        bad.push(format!(
            "{mode}: {what}: the connection is not usable after it: {e}"
        ));
    }
}

fn says_close(r: &Resp) -> bool {
    r.all("connection")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("close"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_and_unusual_backend_answers_reach_clients_well_framed_or_as_502() {
    let rigs = rigs(response_script(), "").await;
    let mut bad = Vec::new();
    let quick = Duration::from_millis(1500);
    for rig in &rigs {
        let mode = rig.mode;
        let addr = rig.addr();

        // Chunked with extensions and trailers, small and large.
        for (t, want) in [
            ("/chunked", "hello world".to_string()),
            ("/chunked-big", pattern(120_000)),
        ] {
            let mut c = Client::connect(addr).await;
            match ask(&mut c, "GET", t).await {
                Ok(r) => {
                    check!(
                        bad,
                        r.status == 200 && r.body == want.as_bytes(),
                        "{mode}: {t}: {} body of {} bytes {:?}…",
                        r.status,
                        r.body.len(),
                        lossy(&r.body[..r.body.len().min(40)])
                    );
                    next_in_step(&mut bad, mode, t, &mut c, says_close(&r), quick).await;
                }
                Err(f) => bad.push(format!("{mode}: {t}: {f}")),
            }
        }

        // Close-delimited: whole body, framed for the client, connection kept.
        let mut c = Client::connect(addr).await;
        match ask(&mut c, "GET", "/close").await {
            Ok(r) => {
                check!(
                    bad,
                    r.status == 200 && r.body == pattern(100_000).as_bytes(),
                    "{mode}: close-delimited: {} body of {} bytes",
                    r.status,
                    r.body.len()
                );
                check!(
                    bad,
                    r.framing != Framing::Close,
                    "{mode}: close-delimited: relayed close-delimited, the client connection is lost ({:?})",
                    r.head
                );
                if r.framing != Framing::Close {
                    next_in_step(
                        &mut bad,
                        mode,
                        "close-delimited",
                        &mut c,
                        says_close(&r),
                        WAIT,
                    )
                    .await;
                }
            }
            Err(f) => bad.push(format!("{mode}: close-delimited: {f}")),
        }

        // Shorter than its Content-Length, then closed: the client sees the
        // end within seconds, never a complete answer nor the next one
        // spliced into it.
        let mut c = Client::connect(addr).await;
        let start = Instant::now();
        c.send([get("/short"), get("/after-short")].concat()).await;
        match c.response(false, WAIT).await {
            Ok(r) if r.status == 502 => {
                if let Ok(r2) = c.response(false, WAIT).await {
                    check!(
                        bad,
                        r2.text() == "GET /after-short",
                        "{mode}: short body: after the 502, {} {:?}",
                        r2.status,
                        r2.text()
                    );
                }
            }
            Ok(r) => bad.push(format!(
                "{mode}: short body (Content-Length: 100, 10 bytes, close): the client got a complete answer {} with {} bytes {:?} ({:?})",
                r.status,
                r.body.len(),
                r.text(),
                r.head
            )),
            Err(Fail::Closed(p)) => {
                let took = start.elapsed();
                check!(
                    bad,
                    took < Duration::from_secs(4),
                    "{mode}: short body: closed only after {took:?}"
                );
                check!(
                    bad,
                    p.matches("HTTP/1.1 ").count() <= 1 && !p.contains("after-short"),
                    "{mode}: short body: the next answer was spliced into it: {p:?}"
                );
            }
            Err(f) => bad.push(format!(
                "{mode}: short body (Content-Length: 100, 10 bytes, close): {f}"
            )),
        }

        // Invalid framing from the backend: 502 or the end, never a body.
        for t in ["/dupcl", "/clist", "/clplus"] {
            let mut c = Client::connect(addr).await;
            match ask(&mut c, "GET", t).await {
                Ok(r) if r.status == 502 => {
                    next_in_step(&mut bad, mode, t, &mut c, says_close(&r), WAIT).await;
                }
                Ok(r) if t == "/clplus" && r.status == 200 && r.text() == "hello" => {
                    next_in_step(&mut bad, mode, t, &mut c, says_close(&r), WAIT).await;
                }
                Ok(r) => bad.push(format!(
                    "{mode}: {t}: invalid Content-Length from the backend relayed as {} {:?} ({:?})",
                    r.status,
                    r.text(),
                    r.head
                )),
                Err(Fail::Closed(p)) if p.is_empty() => {}
                Err(f) => bad.push(format!("{mode}: {t}: {f}")),
            }
        }
        // Content-Length with chunked: chunked wins (or 502).
        let mut c = Client::connect(addr).await;
        match ask(&mut c, "GET", "/clte").await {
            Ok(r) => {
                check!(
                    bad,
                    r.status == 502 || (r.status == 200 && r.text() == "hello"),
                    "{mode}: Content-Length + chunked from the backend: {} {:?}",
                    r.status,
                    r.text()
                );
                next_in_step(&mut bad, mode, "clte", &mut c, says_close(&r), WAIT).await;
            }
            Err(Fail::Closed(p)) if p.is_empty() => {}
            Err(f) => bad.push(format!(
                "{mode}: Content-Length + chunked from the backend: {f}"
            )),
        }

        // Interim answers before the final one.
        for (t, want) in [("/interim", "interim"), ("/hints", "hints")] {
            let mut c = Client::connect(addr).await;
            match ask(&mut c, "GET", t).await {
                Ok(r) => {
                    check!(
                        bad,
                        r.status == 200 && r.text() == want,
                        "{mode}: {t}: {} {:?} (interim {:?})",
                        r.status,
                        r.text(),
                        r.interim
                    );
                    next_in_step(&mut bad, mode, t, &mut c, says_close(&r), quick).await;
                }
                Err(f) => bad.push(format!("{mode}: {t}: {f}")),
            }
        }

        // No body: 204, 304 with a Content-Length, HEAD with one.
        for (method, t, status) in [
            ("GET", "/204", 204),
            ("GET", "/304", 304),
            ("HEAD", "/head", 200),
            ("HEAD", "/head-chunked", 200),
        ] {
            let mut c = Client::connect(addr).await;
            match ask(&mut c, method, t).await {
                Ok(r) => {
                    check!(
                        bad,
                        r.status == status,
                        "{mode}: {method} {t}: {} ({:?})",
                        r.status,
                        r.head
                    );
                    if t == "/head" {
                        check!(
                            bad,
                            r.all("content-length") == ["1234"],
                            "{mode}: HEAD: the Content-Length was not passed on: {:?}",
                            r.head
                        );
                    }
                    next_in_step(&mut bad, mode, t, &mut c, says_close(&r), quick).await;
                }
                Err(f) => bad.push(format!("{mode}: {method} {t}: {f}")),
            }
        }

        // A head over 64 KiB: 502 (here after large bodies went through the
        // same backend connections); one of 50 KiB passes.
        for t in ["/bighead", "/bighead100"] {
            let mut c = Client::connect(addr).await;
            match ask(&mut c, "GET", t).await {
                Ok(r) => check!(
                    bad,
                    r.status == 502 && r.all("x-big").is_empty(),
                    "{mode}: a response head of {} bytes (over 64 KiB) relayed as {}",
                    r.head.len(),
                    r.status
                ),
                Err(f) => bad.push(format!("{mode}: a response head over 64 KiB ({t}): {f}")),
            }
        }
        let mut c = Client::connect(addr).await;
        match ask(&mut c, "GET", "/midhead").await {
            Ok(r) => check!(
                bad,
                r.status == 200 && r.text() == "mid" && r.all("x-mid") == ["m".repeat(50_000)],
                "{mode}: a 50 KiB response head: {} {:?}",
                r.status,
                r.text()
            ),
            Err(f) => bad.push(format!("{mode}: a 50 KiB response head: {f}")),
        }

        // Hop-by-hop headers from the backend never reach the client.
        for (t, body, hop) in [
            ("/secret", "secret", &["x-secret"][..]),
            (
                "/hop",
                "hop",
                &[
                    "x-other",
                    "keep-alive",
                    "proxy-authenticate",
                    "proxy-connection",
                    "upgrade",
                    "trailer",
                ][..],
            ),
        ] {
            let mut c = Client::connect(addr).await;
            match ask(&mut c, "GET", t).await {
                Ok(r) => {
                    check!(
                        bad,
                        r.status == 200 && r.text() == body,
                        "{mode}: {t}: {} {:?}",
                        r.status,
                        r.text()
                    );
                    let leaked: Vec<&str> = hop
                        .iter()
                        .copied()
                        .filter(|h| !r.all(h).is_empty())
                        .collect();
                    check!(
                        bad,
                        leaked.is_empty(),
                        "{mode}: {t}: hop-by-hop headers reached the client: {leaked:?} in {:?}",
                        r.head
                    );
                    let conn = r.all("connection").join(",").to_ascii_lowercase();
                    check!(
                        bad,
                        !conn.contains("x-secret") && !conn.contains("x-other"),
                        "{mode}: {t}: the backend's Connection reached the client: {conn:?}"
                    );
                    next_in_step(&mut bad, mode, t, &mut c, says_close(&r), WAIT).await;
                }
                Err(f) => bad.push(format!("{mode}: {t}: {f}")),
            }
        }
        rig.backend.sane(mode, &mut bad);
        let mut c = Client::connect(addr).await;
        if let Err(e) = echoed(&mut c, "/still-serving", WAIT).await {
            bad.push(format!("{mode}: afterwards: {e}"));
        }
    }
    verdict(&bad);
}

// ---------------------------------------------------------------------------
// 5. Backends that close kept-alive connections

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_closing_every_connection_costs_no_request_and_duplicates_none() {
    let script: Script = Arc::new(|seen: &Seen| Reply::echo(seen).then_close());
    let rigs = rigs(script, "").await;
    let mut bad = Vec::new();
    for rig in &rigs {
        let mode = rig.mode;
        let mut c = Client::connect(rig.addr()).await;
        let mut failed = Vec::new();
        for i in 0..50 {
            if let Err(e) = echoed(&mut c, &format!("/g{i}"), WAIT).await {
                failed.push(e);
                c = Client::connect(rig.addr()).await;
            }
        }
        check!(
            bad,
            failed.is_empty(),
            "{mode}: {} of 50 GETs on one connection failed: {failed:?}",
            failed.len()
        );
        let mut failed = Vec::new();
        for i in 0..20 {
            let target = format!("/post{i}");
            c.send(format!(
                "POST {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
            ))
            .await;
            match c.response(false, WAIT).await {
                Ok(r) if r.status == 200 && r.text() == echo_of("POST", &target) => {}
                Ok(r) => {
                    failed.push(format!("{target}: {} {:?}", r.status, r.text()));
                }
                Err(f) => {
                    failed.push(format!("{target}: {f}"));
                    c = Client::connect(rig.addr()).await;
                }
            }
        }
        check!(
            bad,
            failed.is_empty(),
            "{mode}: {} of 20 POSTs (Content-Length: 0) on one connection failed: {failed:?}",
            failed.len()
        );
        for i in 0..50 {
            let n = rig.backend.count(&format!("/g{i}"));
            check!(
                bad,
                n == 1,
                "{mode}: GET /g{i} served {n} times by the backend"
            );
        }
        for i in 0..20 {
            let n = rig.backend.count(&format!("/post{i}"));
            check!(bad, n == 1, "{mode}: POST /post{i} delivered {n} times");
        }
        rig.backend.sane(mode, &mut bad);
    }
    verdict(&bad);
}

// ---------------------------------------------------------------------------
// 6. Forwarding headers

/// The `for=` of the last element of a `Forwarded` value, unquoted.
fn last_forwarded_for(v: &str) -> (String, bool) {
    let last = v.rsplit(',').next().unwrap_or_default().trim().to_string();
    let for_ = last
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("for="))
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    let proto = last.split(';').any(|p| p.trim() == "proto=http");
    (for_, proto)
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_sees_one_of_each_forwarding_header_and_no_hop_by_hop_one() {
    let rigs = rigs(echo_script(), "").await;
    let mut bad = Vec::new();
    for rig in &rigs {
        let mode = rig.mode;
        let mut c = Client::connect(rig.addr()).await;
        let me = c.s.local_addr().expect("local address").ip().to_string();
        let requests: Vec<(&str, String)> = vec![
            (
                "/fwd",
                "GET /fwd HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3\r\nX-Forwarded-Proto: https\r\nX-Request-Id: first-id\r\nX-Request-Id: second-id\r\nForwarded: for=9.9.9.9\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: trailers\r\n\r\n".into(),
            ),
            ("/fwd2", get("/fwd2")),
            ("/fwd3", get("/fwd3")),
            (
                "/fwd4",
                "GET /fwd4 HTTP/1.1\r\nHost: t\r\nCONNECTION: X-Forwarded-For, X-Request-Id, Forwarded, X-Forwarded-Proto\r\nX-Forwarded-For: 6.6.6.6\r\nX-Request-Id: mine\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n".into(),
            ),
            (
                "/fwd5",
                "GET /fwd5 HTTP/1.1\r\nHost: t\r\nconnection: X-HOP2\r\nx-hop2: 1\r\nConnection: close\r\n\r\n".into(),
            ),
        ];
        let mut answered = Vec::new();
        for (target, bytes) in &requests {
            c.send(bytes).await;
            match c.response(false, WAIT).await {
                Ok(r) if r.status == 200 && r.text() == echo_of("GET", target) => {
                    answered.push(*target);
                }
                Ok(r) if r.status == 400 => {
                    eprintln!("{mode}: {target} refused with 400");
                }
                Ok(r) => bad.push(format!("{mode}: {target}: {} {:?}", r.status, r.text())),
                Err(f) => {
                    bad.push(format!("{mode}: {target}: {f}"));
                    c = Client::connect(rig.addr()).await;
                }
            }
        }
        let (rest, closed) = c.rest(Duration::from_secs(3)).await;
        check!(
            bad,
            closed && rest.is_empty(),
            "{mode}: Connection: close from the client: still open 3 s after the answer ({:?})",
            lossy(&rest)
        );
        let one = |target: &str| -> Option<Seen> {
            let seen = rig.backend.with_target(target);
            (seen.len() == 1).then(|| seen[0].clone())
        };
        let mut ids = Vec::new();
        for target in answered {
            let Some(r) = one(target) else {
                bad.push(format!(
                    "{mode}: {target} did not reach the backend exactly once"
                ));
                continue;
            };
            let head = lossy(&r.head);
            let xff = r.all("x-forwarded-for");
            let xfp = r.all("x-forwarded-proto");
            let rid = r.all("x-request-id");
            let fwd = r.all("forwarded");
            check!(
                bad,
                r.all("host") == ["t"],
                "{mode}: {target}: Host {:?}",
                r.all("host")
            );
            check!(
                bad,
                xff.len() == 1,
                "{mode}: {target}: X-Forwarded-For {xff:?}\n{head}"
            );
            check!(
                bad,
                xfp == ["http"],
                "{mode}: {target}: X-Forwarded-Proto {xfp:?}\n{head}"
            );
            check!(
                bad,
                rid.len() == 1 && !rid[0].is_empty(),
                "{mode}: {target}: X-Request-Id {rid:?}\n{head}"
            );
            check!(
                bad,
                fwd.len() == 1,
                "{mode}: {target}: Forwarded {fwd:?}\n{head}"
            );
            if let Some(v) = xff.first() {
                let got = list(v);
                let want: Vec<String> = match target {
                    "/fwd" => ["1.1.1.1", "2.2.2.2", "3.3.3.3", me.as_str()]
                        .map(String::from)
                        .to_vec(),
                    "/fwd4" => got.clone(),
                    _ => vec![me.clone()],
                };
                check!(
                    bad,
                    got == want && got.last() == Some(&me),
                    "{mode}: {target}: X-Forwarded-For {got:?}, expected {want:?}"
                );
            }
            if let Some(v) = fwd.first() {
                let (for_, proto) = last_forwarded_for(v);
                check!(
                    bad,
                    for_.starts_with(&me) && proto,
                    "{mode}: {target}: Forwarded {v:?} does not end with for={me};proto=http"
                );
                if target == "/fwd" {
                    check!(
                        bad,
                        list(v).first().map(String::as_str) == Some("for=9.9.9.9"),
                        "{mode}: /fwd: the client's Forwarded was not kept first: {v:?}"
                    );
                }
            }
            if target == "/fwd" {
                check!(
                    bad,
                    rid == ["first-id"],
                    "{mode}: /fwd: X-Request-Id {rid:?}"
                );
            }
            if rid.len() == 1 {
                ids.push(rid[0].to_string());
            }
            let hop: Vec<&str> = [
                "connection",
                "x-hop",
                "x-hop2",
                "keep-alive",
                "proxy-connection",
                "proxy-authorization",
                "te",
            ]
            .into_iter()
            .filter(|h| !r.all(h).is_empty())
            .collect();
            check!(
                bad,
                hop.is_empty(),
                "{mode}: {target}: hop-by-hop headers reached the backend: {hop:?}\n{head}"
            );
        }
        let mut unique_ids = ids.clone();
        unique_ids.sort();
        unique_ids.dedup();
        check!(
            bad,
            unique_ids.len() == ids.len(),
            "{mode}: X-Request-Ids repeat: {ids:?}"
        );
        rig.backend.sane(mode, &mut bad);
    }
    verdict(&bad);
}

// ---------------------------------------------------------------------------
// 7. Slow, silent and half-closed clients

/// Waits on `c` (writing `each` every `every`, if not empty) until the
/// balancer answers or closes; what it did and when.
async fn until_cut(
    c: &mut Client,
    each: &[u8],
    every: Duration,
    limit: Duration,
) -> (String, Duration) {
    let start = Instant::now();
    let mut b = [0u8; 512];
    loop {
        if !c.buf.is_empty() {
            return (
                lossy(&c.buf).lines().next().unwrap_or_default().to_string(),
                start.elapsed(),
            );
        }
        if start.elapsed() > limit {
            return ("still open".into(), start.elapsed());
        }
        tokio::select! {
            r = c.s.read(&mut b) => {
                return match r {
                    Ok(0) | Err(_) => ("closed".into(), start.elapsed()),
                    Ok(n) => (lossy(&b[..n]).lines().next().unwrap_or_default().to_string(), start.elapsed()),
                };
            }
            _ = sleep(every) => {
                if !each.is_empty() && c.s.write_all(each).await.is_err() {
                    return ("closed (write refused)".into(), start.elapsed());
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_silent_and_half_closed_clients_are_cut_or_served() {
    let rigs = rigs(echo_script(), "header_read_timeout = \"500ms\"").await;
    let mut bad = Vec::new();
    for rig in &rigs {
        let mode = rig.mode;
        let addr = rig.addr();
        let ms = Duration::from_millis;
        let cases: Vec<(&str, &[u8], &[u8], Duration)> = vec![
            (
                "a head never finished",
                b"GET / HTTP/1.1\r\nHost: t\r\n",
                b"",
                ms(100),
            ),
            ("two bytes of a request line", b"GE", b"", ms(100)),
            ("only CRLFs", b"\r\n\r\n\r\n\r\n", b"", ms(100)),
            ("CRLFs trickled every 100 ms", b"\r\n", b"\r\n", ms(100)),
            (
                "a header trickled a byte every 100 ms",
                b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ",
                b"a",
                ms(100),
            ),
            (
                "header lines trickled every 200 ms",
                b"GET / HTTP/1.1\r\n",
                b"X-Slow: a\r\n",
                ms(200),
            ),
        ];
        let mut runs = JoinSet::new();
        for (what, first, each, every) in cases {
            runs.spawn(async move {
                let mut c = Client::connect(addr).await;
                c.send(first).await;
                let got = until_cut(&mut c, each, every, Duration::from_secs(6)).await;
                (what, got)
            });
        }
        // A kept-alive connection whose second head never ends.
        runs.spawn(async move {
            let mut c = Client::connect(addr).await;
            if let Err(e) = echoed(&mut c, "/ka1", WAIT).await {
                return ("a second head never finished", (e, Duration::ZERO));
            }
            c.send("GET /ka2 HTTP/1.1\r\nHost: t\r\n").await;
            let got = until_cut(
                &mut c,
                b"",
                Duration::from_millis(100),
                Duration::from_secs(6),
            )
            .await;
            ("a second head never finished", got)
        });
        while let Some(r) = runs.join_next().await {
            let (what, (got, took)) = r.expect("case");
            eprintln!("{mode}: {what}: {got} after {took:?}");
            check!(
                bad,
                (got.starts_with("HTTP/1.1 408")
                    || got.starts_with("HTTP/1.1 400")
                    || got.starts_with("closed"))
                    && took < Duration::from_secs(3),
                "{mode}: {what}: {got:?} after {took:?} (header_read_timeout = 500ms)"
            );
        }
        check!(
            bad,
            rig.backend.count("/ka2") == 0 && rig.backend.count("/") == 0,
            "{mode}: an unfinished head reached the backend"
        );

        // Half-closed after complete requests: still answered.
        for (what, bytes, targets) in [
            ("one GET", get("/hc1"), vec!["/hc1"]),
            (
                "two pipelined GETs",
                [get("/hc2"), get("/hc3")].concat(),
                vec!["/hc2", "/hc3"],
            ),
        ] {
            let mut c = Client::connect(addr).await;
            c.send(&bytes).await;
            let _ = c.s.shutdown().await;
            for t in targets {
                match c.response(false, WAIT).await {
                    Ok(r) => check!(
                        bad,
                        r.status == 200 && r.text() == echo_of("GET", t),
                        "{mode}: half-closed after {what}: {} {:?}",
                        r.status,
                        r.text()
                    ),
                    Err(f) => {
                        bad.push(format!(
                            "{mode}: half-closed after {what}: no answer for {t}: {f} (backend got it {} times)",
                            rig.backend.count(t)
                        ));
                        break;
                    }
                }
            }
        }
        rig.backend.sane(mode, &mut bad);
        let mut c = Client::connect(addr).await;
        if let Err(e) = echoed(&mut c, "/still-serving", WAIT).await {
            bad.push(format!("{mode}: afterwards: {e}"));
        }
    }
    verdict(&bad);
}

// ---------------------------------------------------------------------------
// 8. Backends that send what nobody asked for, or send it slowly

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_cannot_answer_requests_it_was_not_sent_nor_take_over_the_client() {
    let rigs = rigs(response_script(), "").await;
    let mut bad = Vec::new();
    for rig in &rigs {
        let mode = rig.mode;
        let addr = rig.addr();

        // Responses written a byte at a time.
        for t in ["/trickle-chunked", "/trickle-length"] {
            let mut c = Client::connect(addr).await;
            match ask(&mut c, "GET", t).await {
                Ok(r) => {
                    check!(
                        bad,
                        r.status == 200 && r.text() == "hello world",
                        "{mode}: {t}: {} {:?}",
                        r.status,
                        r.text()
                    );
                    next_in_step(&mut bad, mode, t, &mut c, says_close(&r), WAIT).await;
                }
                Err(f) => bad.push(format!("{mode}: {t}: {f}")),
            }
        }

        // Bytes after a complete response (at once, or 100 ms later on the
        // idle connection) are never the answer to a later request, on
        // this client connection or another one.
        for t in ["/extra-same", "/extra-later"] {
            let mut c = Client::connect(addr).await;
            match ask(&mut c, "GET", t).await {
                Ok(r) => check!(
                    bad,
                    (r.status == 200 && r.text() == "ok") || r.status == 502,
                    "{mode}: {t}: {} {:?}",
                    r.status,
                    r.text()
                ),
                Err(f) => bad.push(format!("{mode}: {t}: {f}")),
            }
            sleep(Duration::from_millis(300)).await;
            let same = format!("{t}-then-same");
            if let Err(e) = echoed(&mut c, &same, WAIT).await {
                bad.push(format!("{mode}: after {t}, on the same connection: {e}"));
            }
            let mut other = Client::connect(addr).await;
            let next = format!("{t}-then-other");
            if let Err(e) = echoed(&mut other, &next, WAIT).await {
                bad.push(format!("{mode}: after {t}, on another connection: {e}"));
            }
        }

        // A 101 nobody asked for: never a tunnel.
        let mut c = Client::connect(addr).await;
        match ask(&mut c, "GET", "/unasked101").await {
            Ok(r) => check!(
                bad,
                r.status == 502,
                "{mode}: a 101 to a request that asked for no upgrade was relayed as {} ({:?})",
                r.status,
                r.head
            ),
            Err(Fail::Closed(p)) if p.is_empty() => {}
            Err(f) => bad.push(format!("{mode}: a 101 nobody asked for: {f}")),
        }
        if c.send(get("/after-101")).await {
            match c.response(false, WAIT).await {
                Ok(r) => check!(
                    bad,
                    r.status == 200 && r.text() == "GET /after-101",
                    "{mode}: after an unasked 101: {} {:?}",
                    r.status,
                    r.text()
                ),
                Err(Fail::Closed(p)) if p.is_empty() => {}
                Err(f) => bad.push(format!("{mode}: after an unasked 101: {f}")),
            }
        }
        for r in rig.backend.with_target("/after-101") {
            check!(
                bad,
                r.all("x-forwarded-for").len() == 1,
                "{mode}: the request after an unasked 101 went through a tunnel: {:?}",
                lossy(&r.head)
            );
        }
        rig.backend.sane(mode, &mut bad);
    }
    verdict(&bad);
}

// ---------------------------------------------------------------------------
// 9. Clients cannot eject healthy backends

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_breaking_their_own_requests_never_eject_a_healthy_backend() {
    let mut bad = Vec::new();
    for fast in [true, false] {
        let mode = if fast {
            "fast_path=true"
        } else {
            "fast_path=false"
        };
        let (a, b) = tokio::join!(Backend::start(echo_script()), Backend::start(echo_script()));
        let cfg = format!(
            "[balance]\nfast_path = {fast}\nmax_fails = 3\neject_time = \"30s\"\n\n[balance.pools.default]\nbackends = [\"{}\", \"{}\"]\n",
            a.url(),
            b.url()
        );
        let bal = Balance::start(&[], Some(&cfg)).await;
        // Uploads abandoned half way, then malformed chunked bodies: after
        // each kind, every backend is still up.
        for i in 0..4 {
            let mut c = Client::connect(bal.addr).await;
            c.send(format!(
                "POST /abandoned{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789"
            ))
            .await;
            sleep(Duration::from_millis(100)).await;
            drop(c);
        }
        sleep(Duration::from_millis(300)).await;
        for (backend, state, why) in bal.backends("default").await {
            check!(
                bad,
                state == "up",
                "{mode}: 4 uploads abandoned by their clients left the healthy backend {backend} {state}: {why}"
            );
        }
        for i in 0..4 {
            let mut c = Client::connect(bal.addr).await;
            c.send(format!(
                "POST /bad{i} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n\r\n"
            ))
            .await;
            match c.response(false, WAIT).await {
                Ok(r) => check!(
                    bad,
                    r.status == 400,
                    "{mode}: POST /bad{i} with a malformed chunk size (\"zz\") answered {} ({:?})",
                    r.status,
                    r.head
                ),
                Err(Fail::Closed(p)) if p.is_empty() => {}
                Err(f) => bad.push(format!("{mode}: a malformed chunked body: {f}")),
            }
        }
        sleep(Duration::from_millis(300)).await;
        for (backend, state, why) in bal.backends("default").await {
            check!(
                bad,
                state == "up",
                "{mode}: 4 malformed chunked request bodies left the healthy backend {backend} {state}: {why}"
            );
        }
        let before = (a.reqs().len(), b.reqs().len());
        let mut c = Client::connect(bal.addr).await;
        for i in 0..10 {
            if let Err(e) = echoed(&mut c, &format!("/spread{i}"), WAIT).await {
                bad.push(format!("{mode}: afterwards: {e}"));
            }
        }
        let after = (a.reqs().len() - before.0, b.reqs().len() - before.1);
        check!(
            bad,
            after.0 > 0 && after.1 > 0,
            "{mode}: 10 GETs afterwards went {} to one backend and {} to the other",
            after.0,
            after.1
        );
    }
    verdict(&bad);
}
