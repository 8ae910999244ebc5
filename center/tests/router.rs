//! The center's router in process (`tower::ServiceExt::oneshot`, no
//! sockets): how each failure maps to a status and a JSON body, and the
//! headers that go with it. Both stores point at a closed port, so every
//! answer that needs one is the "store down" answer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use tower::ServiceExt;
use weir_center::{router, CenterConfig, CenterState};
use weir_core::{DatabaseConfig, RedisConfig, RedisHandle};

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn app() -> Router {
    let port = closed_port();
    let redis = RedisConfig {
        url: format!("redis://127.0.0.1:{port}/"),
        timeout: Duration::from_millis(500),
        ..RedisConfig::default()
    };
    let db = DatabaseConfig {
        url: format!("postgres://weir:secret@127.0.0.1:{port}/weir"),
        connect_timeout: Duration::from_millis(500),
        ..DatabaseConfig::default()
    };
    let cfg = CenterConfig::default();
    let state = CenterState::new(
        Arc::new(RedisHandle::new(&redis).expect("url")),
        redis.keys(),
        db.pool().expect("url"),
        &cfg,
    );
    router(state, cfg.keepalive)
}

async fn get(uri: &str) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let resp = app()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (parts.status, parts.headers, json)
}

#[tokio::test]
async fn unknown_routes_are_404_json() {
    let (status, headers, body) = get("/api/v2/everything").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    assert!(headers["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("application/json"));
}

#[tokio::test]
async fn bad_parameters_are_400_naming_them() {
    let ids: String = (0..101).map(|i| format!("n{i},")).collect();
    let long = "x".repeat(256);
    for (uri, names) in [
        ("/api/v1/uptime?from=yesterday", "from"),
        ("/api/v1/uptime?to=1e300", "to"),
        ("/api/v1/uptime?from=100&to=50", "from"),
        ("/api/v1/uptime?from=0", "400 days"),
        ("/api/v1/uptime?bogus=1", "bogus"),
        ("/api/v1/uptime?limit=0", "limit"),
        ("/api/v1/uptime?limit=1001", "limit"),
        ("/api/v1/uptime?node=a%00b", "node"),
        (
            &format!("/api/v1/uptime?node={}", ids.trim_end_matches(',')),
            "at most 100",
        ),
        (&format!("/api/v1/uptime?after={long}"), "after"),
        (&format!("/api/v1/nodes/{long}"), "node id"),
    ] {
        let (status, _, body) = get(uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{uri}");
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(names), "{uri}: {msg}");
    }
}

#[tokio::test]
async fn a_store_that_is_down_is_503_with_retry_after_and_no_internals() {
    for uri in [
        "/api/v1/nodes",
        "/api/v1/nodes/n1",
        "/api/v1/fleet",
        "/api/v1/uptime",
    ] {
        let t = std::time::Instant::now();
        let (status, headers, body) = get(uri).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
        assert_eq!(headers["retry-after"], "1", "{uri}");
        assert_eq!(body["error"]["code"], "unavailable", "{uri}");
        let text = body.to_string();
        // The client learns which dependency, not the driver's error text
        // or where the store lives.
        for leak in ["refused", "127.0.0.1", "secret", "os error"] {
            assert!(!text.contains(leak), "{uri} leaks {leak:?}: {text}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{uri} took {:?}",
            t.elapsed()
        );
    }
}

#[tokio::test]
async fn liveness_is_ok_and_readiness_names_what_is_down() {
    let (status, _, _) = get("/livez").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, serde_json::json!({"redis": false, "postgres": false}));
}

/// The raw answer to `req`: status, headers and body text.
async fn send(req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = app().oneshot(req).await.expect("infallible");
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn the_dashboard_renders_without_its_stores_and_embeds_its_assets() {
    // Nothing reported yet (and no store answering): an empty page, not an error.
    let (status, headers, html) = send(Request::get("/").body(Body::empty()).expect("req")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    assert!(html.contains("0 nodes · 0 up · 0 stale · 0 down"), "{html}");
    assert!(html.contains("/assets/app.js") && html.contains("/assets/style.css"));
    // Nothing from elsewhere: every URL the page names is its own.
    for external in ["http://", "https://", "//cdn"] {
        assert!(!html.contains(external), "the page references {external}");
    }
    for (asset, kind) in [("app.js", "text/javascript"), ("style.css", "text/css")] {
        let (status, headers, body) = send(
            Request::get(format!("/assets/{asset}"))
                .body(Body::empty())
                .expect("req"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{asset}");
        assert!(headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with(kind));
        assert!(!body.contains("https://"), "{asset} fetches from elsewhere");
    }
    for bad in ["/assets/..%2Fapi.rs", "/assets/app.js.map", "/assets/%00"] {
        let (status, _, _) = send(Request::get(bad).body(Body::empty()).expect("req")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
    }
}

#[tokio::test]
async fn the_dashboard_stream_refuses_a_bad_last_event_id() {
    for (header, query) in [
        (Some("abc"), ""),
        (Some("-1"), ""),
        (Some("99999999999999999999999"), ""),
        (None, "?last_id=1e3"),
        (None, "?last_id=%00"),
        (None, "?bogus=1"),
    ] {
        let mut req = Request::get(format!("/api/v1/dashboard/stream{query}"));
        if let Some(h) = header {
            req = req.header("last-event-id", h);
        }
        let (status, _, body) = send(req.body(Body::empty()).expect("req")).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{header:?} {query}: {body}"
        );
    }
    // A non-ASCII header value is refused, not a panic.
    let req = Request::get("/api/v1/dashboard/stream")
        .header(
            "last-event-id",
            axum::http::HeaderValue::from_bytes(b"\xff\xfe").expect("opaque header"),
        )
        .body(Body::empty())
        .expect("req");
    let (status, _, _) = send(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The snapshot answers with what the hub has: nothing yet.
    let (status, _, body) = send(
        Request::get("/api/v1/dashboard")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["nodes"], serde_json::json!([]));
    assert_eq!(v["seq"], 0);
}
