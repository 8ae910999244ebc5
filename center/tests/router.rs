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
