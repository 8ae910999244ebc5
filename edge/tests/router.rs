//! The edge's routers driven in process (`tower::ServiceExt::oneshot`, no
//! sockets on the client side): how failures map to statuses, and which
//! headers every answer carries. The origin is the local stack's S3 server,
//! a closed port (502) or a listener that never answers (504).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use tokio::net::TcpListener;
use tower::ServiceExt;
use weir_edge::{Edge, EdgeConfig, S3Config};
use weir_testkit::unique;

mod support;
use support::s3_config as s3;

/// An edge without Redis or access log, its disk tier in a fresh directory.
fn edge(s3: &S3Config) -> Arc<Edge> {
    let dir = std::env::temp_dir().join(unique("weir-router-test"));
    let cfg = EdgeConfig {
        disk_dir: dir.display().to_string(),
        ..EdgeConfig::default()
    };
    Edge::new(cfg, s3, None, None).expect("edge builds")
}

/// An edge on the stack's S3, and a fresh `text/plain` object in it.
async fn edge_with_object(name: &str, data: &[u8]) -> (Arc<Edge>, S3Config, String) {
    let cfg = s3(None);
    let edge = edge(&cfg);
    let key = unique(name);
    edge.origin()
        .client()
        .put_object()
        .bucket(&cfg.bucket)
        .key(&key)
        .content_type("text/plain")
        .body(ByteStream::from(data.to_vec()))
        .send()
        .await
        .expect("put");
    (edge, cfg, key)
}

async fn remove(edge: &Edge, cfg: &S3Config, key: &str) {
    let client = edge.origin().client();
    let _ = client
        .delete_object()
        .bucket(&cfg.bucket)
        .key(key)
        .send()
        .await;
}

async fn call(edge: &Arc<Edge>, method: Method, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Body::empty()).expect("request");
    weir_edge::router(edge.clone())
        .oneshot(req)
        .await
        .expect("infallible")
}

async fn body(resp: Response) -> Vec<u8> {
    axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .expect("body")
        .to_vec()
}

fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Status and the JSON error code of an error reply, checking that every
/// error still carries a request id and `x-cache: bypass`.
async fn error_of(resp: Response) -> (StatusCode, String) {
    let status = resp.status();
    assert!(header(&resp, "x-request-id").is_some_and(|v| v.len() == 32));
    assert_eq!(header(&resp, "x-cache"), Some("bypass"));
    let v: serde_json::Value = serde_json::from_slice(&body(resp).await).expect("JSON error");
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn client_errors_map_to_statuses() {
    let edge = edge(&s3(None));
    let missing = format!("/{}", unique("router-missing"));
    let cases: [(Method, &str, StatusCode, &str); 5] = [
        (
            Method::GET,
            "/a%00b",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (Method::GET, "/%FF", StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/", StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, &missing, StatusCode::NOT_FOUND, "not_found"),
        (
            Method::DELETE,
            "/x",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, path, status, code) in cases {
        let resp = call(&edge, method.clone(), path, &[]).await;
        assert_eq!(
            error_of(resp).await,
            (status, code.to_string()),
            "{method} {path}"
        );
    }
    // HEAD of a missing object: the same status, no body.
    let resp = call(&edge, Method::HEAD, &missing, &[]).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(body(resp).await.is_empty());
}

#[tokio::test]
async fn origin_refusing_is_502_and_origin_silent_is_504() {
    // A port that refuses: bound, then closed.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let refused = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let cfg = S3Config {
        max_attempts: 1,
        ..s3(Some(refused))
    };
    let resp = call(&edge(&cfg), Method::GET, "/k", &[]).await;
    assert_eq!(
        error_of(resp).await,
        (StatusCode::BAD_GATEWAY, "bad_gateway".into())
    );

    // A listener that accepts and never answers.
    let (addr, _silent) = weir_testkit::black_hole().await;
    let cfg = S3Config {
        max_attempts: 1,
        timeout: Duration::from_millis(300),
        ..s3(Some(format!("http://{addr}")))
    };
    let resp = call(&edge(&cfg), Method::GET, "/k", &[]).await;
    assert_eq!(
        error_of(resp).await,
        (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout".into())
    );
}

#[tokio::test]
async fn object_replies_carry_their_headers_and_head_matches_get() {
    let data = b"hello, edge".to_vec();
    let (edge, cfg, key) = edge_with_object("router-obj", &data).await;
    let path = format!("/{key}");
    let first = call(&edge, Method::GET, &path, &[]).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "x-cache"), Some("miss"));
    let hit = call(&edge, Method::GET, &path, &[]).await;
    assert_eq!(header(&hit, "x-cache"), Some("hit"));
    for (name, want) in [
        ("content-type", Some("text/plain")),
        ("content-length", Some("11")),
        ("accept-ranges", Some("bytes")),
        ("cache-control", Some("public, max-age=60")),
    ] {
        assert_eq!(header(&hit, name), want, "{name}");
    }
    for name in ["etag", "last-modified", "age", "x-request-id"] {
        assert!(header(&hit, name).is_some(), "{name}");
    }
    assert_ne!(header(&first, "x-request-id"), header(&hit, "x-request-id"));
    let head = call(&edge, Method::HEAD, &path, &[]).await;
    assert_eq!(head.status(), StatusCode::OK);
    for name in [
        "etag",
        "last-modified",
        "content-type",
        "content-length",
        "accept-ranges",
    ] {
        assert_eq!(header(&head, name), header(&hit, name), "HEAD {name}");
    }
    assert!(body(head).await.is_empty());
    assert_eq!(body(hit).await, data);
    let ranged = call(&edge, Method::GET, &path, &[("range", "bytes=7-")]).await;
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&ranged, "content-range"), Some("bytes 7-10/11"));
    assert_eq!(body(ranged).await, b"edge");
    remove(&edge, &cfg, &key).await;
}

#[tokio::test]
async fn admin_router_answers_health_and_refuses_a_purge_without_prefix() {
    let edge = edge(&s3(None));
    let get = |path: &str, method: Method| {
        Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("request")
    };
    // Without a key, admin writes are refused (503), never open; health is.
    let locked = weir_edge::admin_router(edge.clone(), weir_auth::AdminAuth::unconfigured("edge"));
    let live = locked
        .clone()
        .oneshot(get("/livez", Method::GET))
        .await
        .expect("infallible");
    assert_eq!(live.status(), StatusCode::OK);
    let refused = locked
        .oneshot(get("/cache?prefix=a", Method::DELETE))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let admin = weir_edge::admin_router(edge, weir_auth::AdminAuth::disabled("edge"));
    let purge = admin
        .oneshot(get("/cache", Method::DELETE))
        .await
        .expect("infallible");
    assert_eq!(purge.status(), StatusCode::BAD_REQUEST);
}

/// Records the fields of every `request` span.
struct RequestSpans(Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RequestSpans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={v:?} ", f.name()));
            }
        }
        if attrs.metadata().name() == "request" {
            let mut f = Fields(String::new());
            attrs.record(&mut f);
            self.0.lock().expect("lock").push(f.0);
        }
    }
}

#[tokio::test]
async fn each_request_runs_in_a_span_carrying_its_request_id() {
    use tracing_subscriber::layer::SubscriberExt;
    let spans = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Global, because callsite interest is shared by every thread of this
    // test binary; spans of other tests are told apart by their id.
    let subscriber = tracing_subscriber::registry().with(RequestSpans(spans.clone()));
    tracing::subscriber::set_global_default(subscriber).expect("only this test sets it");
    let edge = edge(&s3(None));
    let resp = call(&edge, Method::DELETE, "/x", &[]).await;
    let id = header(&resp, "x-request-id")
        .expect("request id")
        .to_string();
    let seen = spans.lock().expect("lock").clone();
    let ours: Vec<_> = seen
        .iter()
        .filter(|s| s.contains(&format!("request_id={id}")))
        .collect();
    assert_eq!(ours.len(), 1, "{seen:?}");
    assert!(ours[0].contains("method=DELETE"), "{ours:?}");
}

/// One precondition of a request, either holding or failing for the object
/// under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pre {
    Match,
    UnmodifiedSince,
    NoneMatch,
    ModifiedSince,
    Range,
}

const ALL: [Pre; 5] = [
    Pre::Match,
    Pre::UnmodifiedSince,
    Pre::NoneMatch,
    Pre::ModifiedSince,
    Pre::Range,
];

/// The header sending `p` so that its condition is true (`holds`) or false.
/// True means: If-Match/If-Unmodified-Since pass, If-None-Match/If-Modified-
/// Since see a modified object (so the request proceeds), If-Range matches.
fn pre_header(p: Pre, holds: bool, etag: &str) -> (&'static str, String) {
    const PAST: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const FUTURE: &str = "Sun, 06 Nov 2044 08:49:37 GMT";
    let date = |d: &str| d.to_string();
    match p {
        Pre::Match => (
            "if-match",
            if holds {
                etag.to_string()
            } else {
                "\"nope\"".into()
            },
        ),
        Pre::UnmodifiedSince => (
            "if-unmodified-since",
            date(if holds { FUTURE } else { PAST }),
        ),
        Pre::NoneMatch => (
            "if-none-match",
            if holds {
                "\"nope\"".into()
            } else {
                etag.to_string()
            },
        ),
        Pre::ModifiedSince => ("if-modified-since", date(if holds { PAST } else { FUTURE })),
        Pre::Range => (
            "if-range",
            if holds {
                etag.to_string()
            } else {
                format!("W/{etag}")
            },
        ),
    }
}

/// RFC 9110 §13.2.2, for requests that all carry `Range: bytes=0-3`: the
/// first precondition evaluated that fails decides; If-Unmodified-Since is
/// not evaluated when If-Match is present, nor If-Modified-Since when
/// If-None-Match is.
fn expected(sent: &[(Pre, bool)]) -> u16 {
    let has = |p: Pre| sent.iter().find(|(q, _)| *q == p).map(|(_, h)| *h);
    if let Some(h) = has(Pre::Match) {
        if !h {
            return 412;
        }
    } else if has(Pre::UnmodifiedSince) == Some(false) {
        return 412;
    }
    if let Some(h) = has(Pre::NoneMatch) {
        if !h {
            return 304;
        }
    } else if has(Pre::ModifiedSince) == Some(false) {
        return 304;
    }
    if has(Pre::Range) == Some(false) {
        200
    } else {
        206
    }
}

#[tokio::test]
async fn conditional_request_table_every_pair_get_and_head() {
    let data = b"0123456789".to_vec();
    let (edge, cfg, key) = edge_with_object("router-cond", &data).await;
    let path = format!("/{key}");
    let first = call(&edge, Method::GET, &path, &[]).await;
    let etag = header(&first, "etag").expect("etag").to_string();
    let mut rows = 0;
    for (i, a) in ALL.iter().enumerate() {
        for b in &ALL[i + 1..] {
            for (ha, hb) in [(true, true), (true, false), (false, true), (false, false)] {
                let sent = [(*a, ha), (*b, hb)];
                let want = expected(&sent);
                let (na, va) = pre_header(*a, ha, &etag);
                let (nb, vb) = pre_header(*b, hb, &etag);
                let hs = [("range", "bytes=0-3"), (na, va.as_str()), (nb, vb.as_str())];
                for method in [Method::GET, Method::HEAD] {
                    let resp = call(&edge, method.clone(), &path, &hs).await;
                    let what = format!("{method} {hs:?}");
                    assert_eq!(resp.status().as_u16(), want, "{what}");
                    assert_eq!(header(&resp, "etag"), Some(etag.as_str()), "{what}");
                    let got = body(resp).await;
                    let want_body: &[u8] = match (want, method == Method::HEAD) {
                        (_, true) | (304 | 412, _) => b"",
                        (206, _) => &data[..4],
                        _ => &data,
                    };
                    assert_eq!(got, want_body, "{what}");
                    rows += 1;
                }
            }
        }
    }
    assert_eq!(rows, 10 * 4 * 2);
    // The range unit is case-insensitive.
    let resp = call(&edge, Method::GET, &path, &[("range", "BYTES=2-3")]).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(body(resp).await, b"23");
    remove(&edge, &cfg, &key).await;
}

#[tokio::test]
async fn method_not_allowed_says_what_is() {
    let edge = edge(&s3(None));
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        let resp = call(&edge, method.clone(), "/x", &[]).await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(header(&resp, "allow"), Some("GET, HEAD"), "{method}");
    }
}
