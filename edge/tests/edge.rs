//! The edge against the real S3 server (Garage), Redis and Kafka of the local
//! stack. Origin requests are counted at the origin, by a small TCP proxy in
//! front of S3 that counts request lines, not by the edge's own metrics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use weir_core::{RedisConfig, RedisHandle};
use weir_edge::access::AccessLog;
use weir_edge::meta::SharedRedis;
use weir_edge::origin::Origin;
use weir_edge::{Edge, EdgeConfig};
use weir_producers::{EventProducer, KafkaConfig};
use weir_schemas::{AccessEvent, CacheOutcome};
mod support;
use support::{answer, s3_config};
use weir_testkit::{stack, unique, PrivateService, TestRedis, TestTopics};

/// Counts `GET` request lines going to the origin, and holds each chunk of
/// the origin's answers for `delay_ms` (0: forwards at once).
struct CountingProxy {
    addr: SocketAddr,
    gets: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
}

impl CountingProxy {
    async fn start(upstream: String) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let gets = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (g, d) = (gets.clone(), delay_ms.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (g, d, up) = (g.clone(), d.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&up).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        // Request lines start a connection or follow CRLF;
                        // keep the tail of the previous read for matches
                        // across reads.
                        let mut tail: Vec<u8> = b"\r\n".to_vec();
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let mut window = tail.clone();
                            window.extend_from_slice(&buf[..n]);
                            let hits = window.windows(6).filter(|w| w == b"\r\nGET ").count();
                            g.fetch_add(hits, Ordering::SeqCst);
                            tail = window[window.len().saturating_sub(5)..].to_vec();
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let delay = d.load(Ordering::SeqCst);
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        CountingProxy {
            addr,
            gets,
            delay_ms,
        }
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

struct Harness {
    url: String,
    admin: String,
    s3: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    shutdown: CancellationToken,
    dir: std::path::PathBuf,
    http: reqwest::Client,
    _redis: Option<TestRedis>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Options {
    s3_endpoint: Option<String>,
    redis: Option<RedisConfig>,
    access: Option<AccessLog>,
    edge: EdgeConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            s3_endpoint: None,
            redis: None,
            access: None,
            edge: EdgeConfig {
                addr: "127.0.0.1:0".into(),
                admin_addr: "127.0.0.1:0".into(),
                ..EdgeConfig::default()
            },
        }
    }
}

async fn start(mut opts: Options) -> Harness {
    weir_testkit::init_logs();
    let dir = std::env::temp_dir().join(unique("weir-edge-test"));
    opts.edge.disk_dir = dir.display().to_string();
    let test_redis = if opts.redis.is_none() {
        let t = TestRedis::new(&stack());
        opts.redis = Some(RedisConfig {
            url: t.url.clone(),
            key_prefix: t.prefix.clone(),
            ..RedisConfig::default()
        });
        Some(t)
    } else {
        None
    };
    let redis_cfg = opts.redis.clone().expect("redis config");
    // The test's own client talks to S3 directly, never through the proxy.
    let s3 = Origin::new(&s3_config(None)).client().clone();
    let s3cfg = s3_config(opts.s3_endpoint.clone());
    let edge = Edge::new(
        opts.edge,
        &s3cfg,
        Some(SharedRedis {
            handle: Arc::new(RedisHandle::new(&redis_cfg).expect("redis url")),
            key_prefix: redis_cfg.key_prefix.clone(),
        }),
        opts.access,
    )
    .expect("edge builds");
    let client = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", client.local_addr().expect("addr"));
    let admin_url = format!("http://{}", admin.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    tokio::spawn(weir_edge::serve(
        client,
        admin,
        edge,
        Router::new(),
        // These tests are about caching, upload and fetch; authentication
        // has its own tests (weir-auth, tests/e2e/auth.rs).
        weir_auth::AdminAuth::disabled("edge"),
        shutdown.clone(),
    ));
    Harness {
        url,
        admin: admin_url,
        s3,
        bucket: s3cfg.bucket,
        prefix: unique("edge-test"),
        shutdown,
        dir,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("http client"),
        _redis: test_redis,
    }
}

impl Harness {
    async fn put(&self, key: &str, body: Bytes) {
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
    }

    async fn delete(&self, key: &str) {
        let _ = self
            .s3
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut rb = self.http.get(format!("{}{path}", self.url));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        rb.send().await.expect("request")
    }
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| ((i as u64 * 2_654_435_761 % 251) as u8) ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

/// Raw HTTP/1.1 for paths a URL library would normalise (`..`).
async fn raw_status(base: &str, path: &str) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// One row: request headers → status, expected bytes (start, end inclusive)
/// or none, and the Content-Range.
fn table(
    size: u64,
    etag: &str,
) -> Vec<(
    Vec<(&'static str, String)>,
    u16,
    Option<(u64, u64)>,
    Option<String>,
)> {
    let full = Some((0, size - 1));
    let cr = |a: u64, b: u64| Some(format!("bytes {a}-{b}/{size}"));
    let star = Some(format!("bytes */{size}"));
    vec![
        (vec![], 200, full, None),
        (
            vec![("range", "bytes=0-0".into())],
            206,
            Some((0, 0)),
            cr(0, 0),
        ),
        (
            vec![("range", "bytes=-1".into())],
            206,
            Some((size - 1, size - 1)),
            cr(size - 1, size - 1),
        ),
        (
            vec![("range", format!("bytes=-{}", size + 10))],
            206,
            full,
            cr(0, size - 1),
        ),
        (
            vec![("range", format!("bytes={}-", size - 1))],
            206,
            Some((size - 1, size - 1)),
            cr(size - 1, size - 1),
        ),
        (
            vec![("range", format!("bytes={size}-"))],
            416,
            None,
            star.clone(),
        ),
        (
            vec![("range", format!("bytes={}-", size + 100))],
            416,
            None,
            star.clone(),
        ),
        (
            vec![("range", "bytes=100-".into())],
            206,
            Some((100, size - 1)),
            cr(100, size - 1),
        ),
        (
            vec![("range", format!("bytes=7-{}", size + 5000))],
            206,
            Some((7, size - 1)),
            cr(7, size - 1),
        ),
        (vec![("range", "bytes=500-100".into())], 200, full, None),
        (vec![("range", "bytes=garbage".into())], 200, full, None),
        (vec![("range", "bytes=0-1,5-9".into())], 200, full, None),
        (
            vec![
                ("range", "bytes=10-19".into()),
                ("if-range", etag.to_string()),
            ],
            206,
            Some((10, 19)),
            cr(10, 19),
        ),
        (
            vec![
                ("range", "bytes=10-19".into()),
                ("if-range", "\"stale\"".into()),
            ],
            200,
            full,
            None,
        ),
        (
            vec![
                ("range", "bytes=10-19".into()),
                ("if-range", format!("W/{etag}")),
            ],
            200,
            full,
            None,
        ),
        (vec![("if-none-match", "*".into())], 304, None, None),
        (
            vec![("if-none-match", format!("\"nope\", {etag}"))],
            304,
            None,
            None,
        ),
        (
            vec![("if-none-match", format!("W/{etag}"))],
            304,
            None,
            None,
        ),
        (vec![("if-none-match", "\"nope\"".into())], 200, full, None),
        (
            vec![("if-modified-since", "Sun, 06 Nov 2044 08:49:37 GMT".into())],
            304,
            None,
            None,
        ),
        (
            vec![("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT".into())],
            200,
            full,
            None,
        ),
    ]
}

async fn check_table(h: &Harness, path: &str, body: &Bytes) {
    let first = h.get(path, &[]).await;
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().expect("etag").to_string();
    let _ = first.bytes().await;
    for (headers, status, bytes, content_range) in table(body.len() as u64, &etag) {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = h.get(path, &hs).await;
        let what = format!("{path} {hs:?}");
        assert_eq!(resp.status().as_u16(), status, "{what}");
        assert_eq!(
            resp.headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            content_range,
            "{what}"
        );
        if status != 304 {
            assert_eq!(resp.headers()["accept-ranges"], "bytes", "{what}");
        }
        assert_eq!(
            resp.headers()["etag"].to_str().ok(),
            Some(etag.as_str()),
            "{what}"
        );
        assert!(resp.headers().contains_key("age"), "{what}");
        assert!(resp.headers().contains_key("last-modified"), "{what}");
        assert_eq!(
            resp.headers()["cache-control"],
            "public, max-age=60",
            "{what}"
        );
        let got = resp.bytes().await.expect("body");
        match bytes {
            Some((a, b)) => assert!(
                got[..] == body[a as usize..=b as usize],
                "{what}: wrong bytes"
            ),
            None => assert!(got.is_empty(), "{what}: body on {status}"),
        }
    }
}

#[tokio::test]
async fn range_and_conditional_table_byte_for_byte() {
    let mut opts = Options::default();
    // Small thresholds so that the large-object (sliced) path is exercised
    // too, with ranges crossing slice boundaries.
    opts.edge.slice_size = 64 * 1024;
    opts.edge.memory_object_max = 256 * 1024;
    let h = start(opts).await;
    let small = pattern(1000, 1);
    let large = pattern(300 * 1024 + 17, 2);
    let (ks, kl) = (h.key("small.bin"), h.key("large.bin"));
    h.put(&ks, small.clone()).await;
    h.put(&kl, large.clone()).await;
    check_table(&h, &format!("/{ks}"), &small).await;
    check_table(&h, &format!("/{kl}"), &large).await;
    // Across slice boundaries of the large one.
    let resp = h
        .get(&format!("/{kl}"), &[("range", "bytes=65000-200000")])
        .await;
    assert_eq!(resp.status(), 206);
    assert!(resp.bytes().await.expect("body")[..] == large[65000..=200000]);
    // HEAD carries the headers and the length, no body.
    let head = answer(h.http.head(format!("{}/{kl}", h.url))).await;
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        large.len().to_string().as_str()
    );
    assert_eq!(head.headers()["content-type"], "application/octet-stream");
    h.delete(&ks).await;
    h.delete(&kl).await;
}

#[tokio::test]
async fn percent_encoded_keys_and_rejected_paths() {
    let h = start(Options::default()).await;
    let cases = [
        ("ARMY OF THIEVES.mp4", "ARMY%20OF%20THIEVES.mp4"),
        ("dir/inside%2Fkey", "dir%2Finside%252Fkey"),
        ("a/b c", "a%2Fb%20c"),
        ("plus+sign.txt", "plus+sign.txt"),
        ("日本/été.txt", "%E6%97%A5%E6%9C%AC/%C3%A9t%C3%A9.txt"),
        ("100%.txt", "100%25.txt"),
    ];
    for (i, (key, encoded)) in cases.iter().enumerate() {
        let full = h.key(key);
        let body = pattern(100 + i, i as u8);
        h.put(&full, body.clone()).await;
        let resp = h.get(&format!("/{}/{encoded}", h.prefix), &[]).await;
        assert_eq!(resp.status(), 200, "{key}");
        assert_eq!(resp.bytes().await.expect("body"), body, "{key}");
        h.delete(&full).await;
    }
    // `+` is not a space in a path.
    let resp = h.get(&format!("/{}/plus%20sign.txt", h.prefix), &[]).await;
    assert_eq!(resp.status(), 404);
    for bad in [
        "/a/../b".to_string(),
        "/a/%2E%2E/b".to_string(),
        "/..%2Fsecret".to_string(),
        "/a%00b".to_string(),
        format!("/{}", "k".repeat(1100)),
        "/%FF%FE".to_string(),
    ] {
        assert_eq!(raw_status(&h.url, &bad).await, 400, "{bad}");
    }
}

#[tokio::test]
async fn missing_objects_are_404_and_cached_briefly() {
    let s3 = s3_config(None);
    let upstream = s3.endpoint.trim_start_matches("http://").to_string();
    let proxy = CountingProxy::start(upstream).await;
    let mut opts = Options {
        s3_endpoint: Some(format!("http://{}", proxy.addr)),
        ..Options::default()
    };
    opts.edge.negative_ttl = Duration::from_secs(2);
    let h = start(opts).await;
    let key = h.key("later.txt");
    assert_eq!(h.get(&format!("/{key}"), &[]).await.status(), 404);
    assert_eq!(h.get(&format!("/{key}"), &[]).await.status(), 404);
    assert_eq!(
        proxy.gets(),
        1,
        "the second 404 came from the negative cache"
    );
    h.put(&key, Bytes::from_static(b"now here")).await;
    assert_eq!(h.get(&format!("/{key}"), &[]).await.status(), 404);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = h.get(&format!("/{key}"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.expect("body"), "now here");
    h.delete(&key).await;
}

#[tokio::test]
async fn concurrent_cold_requests_make_one_origin_get() {
    let s3 = s3_config(None);
    let proxy = CountingProxy::start(s3.endpoint.trim_start_matches("http://").to_string()).await;
    let mut opts = Options {
        s3_endpoint: Some(format!("http://{}", proxy.addr)),
        ..Options::default()
    };
    opts.edge.slice_size = 64 * 1024;
    opts.edge.memory_object_max = 128 * 1024;
    let h = Arc::new(start(opts).await);
    let small = pattern(50_000, 3);
    let large = pattern(1024 * 1024, 4);
    let (ks, kl) = (h.key("hot-small"), h.key("hot-large"));
    h.put(&ks, small.clone()).await;
    h.put(&kl, large.clone()).await;

    let burst = |path: String, range: Option<&'static str>| {
        let h = h.clone();
        async move {
            let tasks: Vec<_> = (0..200)
                .map(|_| {
                    let (h, path) = (h.clone(), path.clone());
                    tokio::spawn(async move {
                        let hs: Vec<(&str, &str)> =
                            range.map(|r| ("range", r)).into_iter().collect();
                        let r = h.get(&path, &hs).await;
                        let status = r.status().as_u16();
                        (status, r.bytes().await.expect("body"))
                    })
                })
                .collect();
            futures::future::join_all(tasks)
                .await
                .into_iter()
                .map(|r| r.expect("task"))
                .collect::<Vec<_>>()
        }
    };

    let before = proxy.gets();
    for (status, body) in burst(format!("/{ks}"), None).await {
        assert_eq!(status, 200);
        assert!(body == small);
    }
    assert_eq!(
        proxy.gets() - before,
        1,
        "one origin GET for 200 cold requests"
    );

    // Learn the large object's metadata (and slice 0), then 200 cold
    // requests inside slice 5.
    let r = h.get(&format!("/{kl}"), &[("range", "bytes=0-0")]).await;
    assert_eq!(r.status(), 206);
    let before = proxy.gets();
    for (status, body) in burst(format!("/{kl}"), Some("bytes=330000-330999")).await {
        assert_eq!(status, 206);
        assert!(body[..] == large[330000..=330999]);
    }
    assert_eq!(
        proxy.gets() - before,
        1,
        "one origin GET for 200 cold slice requests"
    );
    // The range did not pull the object: slices 0 and 5 only.
    h.delete(&ks).await;
    h.delete(&kl).await;
}

#[tokio::test]
async fn a_changed_object_is_never_stitched() {
    let mut opts = Options::default();
    opts.edge.slice_size = 64 * 1024;
    opts.edge.memory_object_max = 128 * 1024;
    let h = start(opts).await;
    let key = h.key("changing.bin");
    let size = 12 * 1024 * 1024;
    let v1 = pattern(size, 5);
    let v2 = pattern(size, 6);
    h.put(&key, v1.clone()).await;
    let resp = h.get(&format!("/{key}"), &[]).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    if let Some(Ok(chunk)) = stream.next().await {
        got.extend_from_slice(&chunk);
    }
    // Changed while the client is mid-body.
    h.put(&key, v2.clone()).await;
    let mut failed = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(
        got[..] == v1[..got.len()],
        "only bytes of the first version"
    );
    assert!(
        failed || got.len() == size,
        "a cut body is reported as an error"
    );
    assert!(got.len() < size, "the change was noticed before the end");
    // The next request sees the new version, whole.
    let again = h.get(&format!("/{key}"), &[]).await;
    assert_eq!(again.status(), 200);
    assert!(again.bytes().await.expect("body") == v2);
    h.delete(&key).await;
}

async fn create_bucket(endpoint: &str, bucket: &str) {
    let c = Origin::new(&s3_config(Some(endpoint.to_string())))
        .client()
        .clone();
    let start = Instant::now();
    // A private server made by deploy/local already has the stack's bucket.
    while c.head_bucket().bucket(bucket).send().await.is_err()
        && c.create_bucket().bucket(bucket).send().await.is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "bucket on private S3"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn redis_then_s3_stopped_mid_traffic() {
    let mut redis = PrivateService::start("redis");
    let mut s3 = PrivateService::start("s3");
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let bucket = s3_config(None).bucket;
    create_bucket(&endpoint, &bucket).await;
    let mut opts = Options {
        s3_endpoint: Some(endpoint.clone()),
        redis: Some(RedisConfig {
            url: redis.url(),
            key_prefix: unique("wt"),
            timeout: Duration::from_millis(300),
        }),
        ..Options::default()
    };
    opts.edge.fresh_for = Duration::from_secs(1);
    opts.edge.stale_grace = Duration::from_secs(120);
    opts.edge.redis_backoff = Duration::from_millis(500);
    let mut h = start(opts).await;
    h.s3 = Origin::new(&s3_config(Some(endpoint.clone())))
        .client()
        .clone();
    let (a, b, c) = (h.key("a"), h.key("b"), h.key("c"));
    for k in [&a, &b] {
        h.put(k, pattern(2000, 7)).await;
    }
    assert_eq!(h.get(&format!("/{a}"), &[]).await.status(), 200);

    // Redis down: hits and misses are still served, quickly.
    redis.stop(true);
    let t = Instant::now();
    assert_eq!(h.get(&format!("/{a}"), &[]).await.status(), 200);
    assert_eq!(h.get(&format!("/{b}"), &[]).await.status(), 200);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "{:?} with Redis down",
        t.elapsed()
    );

    // S3 down too: cached objects are served stale, the rest fail fast.
    s3.stop(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t = Instant::now();
    let resp = h.get(&format!("/{a}"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-cache"], "stale");
    let resp = h.get(&format!("/{c}"), &[]).await;
    assert!(
        matches!(resp.status().as_u16(), 502 | 504),
        "{}",
        resp.status()
    );
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "{:?} with S3 down",
        t.elapsed()
    );

    // Both come back (S3 with the objects it had).
    s3.restart();
    create_bucket(&endpoint, &bucket).await;
    h.put(&c, pattern(3000, 8)).await;
    redis.restart();
    let resp = weir_testkit::eventually(Duration::from_secs(20), "S3 back", || {
        let (h, c) = (&h, &c);
        async move {
            let r = h.get(&format!("/{c}"), &[]).await;
            (r.status() == 200).then_some(r)
        }
    })
    .await;
    assert_eq!(resp.bytes().await.expect("body").len(), 3000);
    // Metadata reaches Redis again once its backoff has passed.
    let url = redis.url();
    weir_testkit::eventually(Duration::from_secs(20), "metadata in Redis again", || {
        let (h, c, url) = (&h, &c, url.clone());
        async move {
            let _ = h
                .get(&format!("/{c}"), &[("cache-control", "no-cache")])
                .await;
            let client = redis::Client::open(url).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("*:edge:meta:*")
                .query_async(&mut conn)
                .await
                .ok()?;
            (!keys.is_empty()).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn purge_on_the_admin_address() {
    let h = start(Options::default()).await;
    let (k1, k2) = (h.key("p/one"), h.key("p/two"));
    h.put(&k1, Bytes::from_static(b"one-v1")).await;
    h.put(&k2, Bytes::from_static(b"two-v1")).await;
    for k in [&k1, &k2] {
        assert_eq!(h.get(&format!("/{k}"), &[]).await.status(), 200);
    }
    h.put(&k1, Bytes::from_static(b"one-v2")).await;
    h.put(&k2, Bytes::from_static(b"two-v2")).await;
    // Still fresh in the cache.
    assert_eq!(
        h.get(&format!("/{k1}"), &[])
            .await
            .text()
            .await
            .expect("body"),
        "one-v1"
    );
    // Client address does not purge.
    let r = h
        .http
        .delete(format!("{}/cache/{k1}", h.url))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 405);
    let r = h
        .http
        .delete(format!("{}/cache/{k1}", h.admin))
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.get(&format!("/{k1}"), &[])
            .await
            .text()
            .await
            .expect("body"),
        "one-v2"
    );
    assert_eq!(
        h.get(&format!("/{k2}"), &[])
            .await
            .text()
            .await
            .expect("body"),
        "two-v1"
    );
    let r = h
        .http
        .delete(format!("{}/cache", h.admin))
        .query(&[("prefix", format!("{}/p/", h.prefix))])
        .send()
        .await
        .expect("purge prefix");
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.get(&format!("/{k2}"), &[])
            .await
            .text()
            .await
            .expect("body"),
        "two-v2"
    );
    h.delete(&k1).await;
    h.delete(&k2).await;
}

#[tokio::test]
async fn one_access_event_per_request() {
    let st = stack();
    let topics = TestTopics::create(&st, 1).await;
    let kafka = KafkaConfig {
        brokers: st.kafka.clone(),
        ..KafkaConfig::default()
    };
    let producer = Arc::new(EventProducer::new(&kafka, "edge-test").expect("producer"));
    let node = unique("edge-node");
    let opts = Options {
        access: Some(AccessLog::new(
            producer.clone(),
            topics.access.clone(),
            node.clone(),
        )),
        ..Options::default()
    };
    let h = start(opts).await;
    let key = h.key("seen.txt");
    h.put(&key, Bytes::from_static(b"hello edge")).await;
    let mut statuses = Vec::new();
    for hs in [vec![], vec![("range", "bytes=0-4")], vec![]] {
        statuses.push(h.get(&format!("/{key}"), &hs).await.status().as_u16());
    }
    statuses.push(
        h.get(&format!("/{}/missing", h.prefix), &[])
            .await
            .status()
            .as_u16(),
    );
    assert_eq!(statuses, [200, 206, 200, 404]);
    // Hostile paths: an unbounded raw path (400 and 405) and a control
    // character in a key must not reach the access pipeline as they are.
    let long = format!("/{}", "x".repeat(3100));
    assert_eq!(h.get(&long, &[]).await.status(), 400);
    let post = h.http.post(format!("{}{long}", h.url)).send().await;
    assert_eq!(post.expect("post").status(), 405);
    let ctl = format!("/{}/a%01b%7F", h.prefix);
    assert_eq!(h.get(&ctl, &[]).await.status(), 404);

    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &st.kafka)
        .set("group.id", unique("access-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[&topics.access]).expect("subscribe");
    let mut events: Vec<AccessEvent> = Vec::new();
    while events.len() < 7 {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .expect("access events arrive")
            .expect("record");
        events.push(weir_schemas::decode::<AccessEvent>(m.payload()).expect("decodes"));
    }
    let summary: Vec<(u16, CacheOutcome, u64)> = events[..4]
        .iter()
        .map(|e| (e.status, e.cache, e.bytes_sent))
        .collect();
    assert_eq!(
        summary,
        [
            (200, CacheOutcome::Miss, 10),
            (206, CacheOutcome::Hit, 5),
            (200, CacheOutcome::Hit, 10),
            (404, CacheOutcome::Bypass, events[3].bytes_sent),
        ]
    );
    assert!(events.iter().all(|e| e.node_id == node));
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7]
    );
    assert_eq!(events[1].range.as_deref(), Some("bytes=0-4"));
    for e in &events[4..6] {
        assert!(e.object_key.len() <= 512, "{} bytes", e.object_key.len());
        assert!(e.object_key.ends_with("[truncated]"), "{}", e.object_key);
    }
    assert_eq!(
        events[6].object_key,
        format!("{}/a\u{fffd}b\u{fffd}", h.prefix)
    );
    assert!(events
        .iter()
        .all(|e| !e.object_key.chars().any(char::is_control)));
    h.delete(&key).await;
}

/// A source for `/fetch`: `/r/{n}` redirects n times, then answers `body`.
async fn redirecting_source(body: Bytes) -> String {
    use axum::extract::Path;
    use axum::response::{IntoResponse, Redirect};
    let app = Router::new().route(
        "/r/{n}",
        axum::routing::get(move |Path(n): Path<u32>| {
            let body = body.clone();
            async move {
                if n == 0 {
                    body.into_response()
                } else {
                    Redirect::temporary(&format!("/r/{}", n - 1)).into_response()
                }
            }
        }),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

/// The boundary of the upload forms the tests build.
const BOUNDARY: &str = "weirformboundary42";

/// Where an upload form's `key` field goes.
enum KeyAt {
    Before,
    After,
}

/// A `multipart/form-data` body: a `file` part and, if given, a `key` field
/// before or after it.
fn upload_form(key: Option<(&str, KeyAt)>, filename: &str, ctype: &str, content: &[u8]) -> Vec<u8> {
    let key_field = |k: &str| {
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\n{k}\r\n")
    };
    let mut b = Vec::new();
    if let Some((k, KeyAt::Before)) = &key {
        b.extend_from_slice(key_field(k).as_bytes());
    }
    b.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: {ctype}\r\n\r\n").as_bytes());
    b.extend_from_slice(content);
    b.extend_from_slice(b"\r\n");
    if let Some((k, KeyAt::After)) = &key {
        b.extend_from_slice(key_field(k).as_bytes());
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

impl Harness {
    /// Posts an [`upload_form`] body to the admin address's `/upload`.
    async fn post_upload(&self, body: Vec<u8>) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{}/upload", self.admin))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(body)
            .send()
            .await
    }
}

#[tokio::test]
async fn upload_and_fetch_store_into_s3_on_the_admin_address() {
    let mut opts = Options::default();
    opts.edge.upload_max = 4096;
    opts.edge.public_url = "http://edge.example".into();
    // The test's sources listen on loopback, which is refused by default.
    opts.edge.fetch_allow = vec!["127.0.0.1/32".into()];
    let h = start(opts).await;
    let key = h.key("up/hello world.txt");
    let form = |key: &str, content: &[u8]| {
        upload_form(Some((key, KeyAt::Before)), "x.txt", "text/plain", content)
    };
    let post_form = |body: Vec<u8>| h.post_upload(body);
    let r = post_form(form(&key, b"uploaded through the edge"))
        .await
        .expect("upload");
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.expect("json");
    let path = format!("/{}/up/hello%20world.txt", h.prefix);
    assert_eq!(v["url"], format!("http://edge.example{path}"));
    let got = h.get(&path, &[]).await;
    assert_eq!(got.headers()["content-type"], "text/plain");
    assert_eq!(got.text().await.expect("body"), "uploaded through the edge");
    // Over the limit; a bad key.
    let r = post_form(form(&h.key("big"), &[b'x'; 5000]))
        .await
        .expect("upload");
    assert_eq!(r.status(), 413);
    let r = post_form(form("a/../b", b"x")).await.expect("upload");
    assert_eq!(r.status(), 400);
    // Not on the client address.
    let r = h
        .http
        .post(format!("{}/upload", h.url))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 405);

    let source = redirecting_source(Bytes::from_static(b"fetched body")).await;
    let fkey = h.key("fetched.txt");
    let fetch = |url: String, key: String| {
        h.http
            .post(format!("{}/fetch", h.admin))
            .json(&serde_json::json!({ "url": url, "key": key }))
            .send()
    };
    let r = fetch(format!("{source}/r/2"), fkey.clone())
        .await
        .expect("fetch");
    assert_eq!(r.status(), 201);
    assert_eq!(
        h.get(&format!("/{fkey}"), &[])
            .await
            .text()
            .await
            .expect("body"),
        "fetched body"
    );
    let r = fetch(format!("{source}/r/5"), h.key("too-far"))
        .await
        .expect("fetch");
    assert_eq!(
        r.status(),
        400,
        "more redirects than edge.fetch_max_redirects"
    );
    let big = redirecting_source(Bytes::from(vec![b'y'; 5000])).await;
    let r = fetch(format!("{big}/r/0"), h.key("too-big"))
        .await
        .expect("fetch");
    assert_eq!(r.status(), 413);
    for k in [&key, &fkey] {
        h.delete(k).await;
    }
}

/// Large uploads stream to S3 as a multipart upload, completed only when the
/// whole body is in: the object is whole (an S3 multipart ETag, every byte
/// right through the edge), and one refused (too large, or its key sent
/// after it) leaves neither an object nor an unfinished upload behind.
#[tokio::test]
async fn large_uploads_stream_as_multipart_and_refused_ones_leave_nothing() {
    const MIB: usize = 1024 * 1024;
    let mut opts = Options::default();
    opts.edge.upload_max = 30 * MIB as u64;
    opts.edge.fetch_allow = vec!["127.0.0.1/32".into()];
    let h = start(opts).await;
    // The file's name, the key when the form's key comes late: this run's.
    let fname = format!("{}-big.bin", h.prefix);
    let form = |key: Option<&str>, key_first: bool, content: &[u8]| {
        let at = if key_first {
            KeyAt::Before
        } else {
            KeyAt::After
        };
        upload_form(key.map(|k| (k, at)), &fname, "application/x-test", content)
    };
    let post = |body: Vec<u8>| h.post_upload(body);
    // Unfinished multipart uploads of this test's keys (and of its file
    // name, the key of a form whose key comes late).
    async fn pending(h: &Harness, fname: &str) -> usize {
        h.s3.list_multipart_uploads()
            .bucket(&h.bucket)
            .send()
            .await
            .expect("list uploads")
            .uploads()
            .iter()
            .filter(|u| {
                u.key()
                    .is_some_and(|k| k.starts_with(&h.prefix) || k == fname)
            })
            .count()
    }
    async fn exists(h: &Harness, key: &str) -> bool {
        h.s3.head_object()
            .bucket(&h.bucket)
            .key(key)
            .send()
            .await
            .is_ok()
    }

    // The listing sees an unfinished upload (else "none left" below would
    // prove nothing).
    let probe =
        h.s3.create_multipart_upload()
            .bucket(&h.bucket)
            .key(h.key("probe"))
            .send()
            .await
            .expect("create upload");
    assert_eq!(pending(&h, &fname).await, 1);
    h.s3.abort_multipart_upload()
        .bucket(&h.bucket)
        .key(h.key("probe"))
        .upload_id(probe.upload_id().expect("id"))
        .send()
        .await
        .expect("abort");
    assert_eq!(pending(&h, &fname).await, 0);

    // 20 MiB, key first: three parts (8 + 8 + 4 MiB).
    let big = pattern(20 * MIB, 3);
    let key = h.key("up/big.bin");
    let r = post(form(Some(&key), true, &big)).await.expect("upload");
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["size"], 20 * MIB);
    let etag = v["etag"]
        .as_str()
        .expect("etag")
        .trim_matches('"')
        .to_string();
    assert!(etag.ends_with("-3"), "a three-part upload's ETag: {etag}");
    let got = h.get(&format!("/{key}"), &[]).await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "application/x-test");
    assert!(
        got.bytes().await.expect("body") == big,
        "the stored bytes differ"
    );

    // At the part size's edges: empty and exactly one part are one
    // PutObject; one byte more is two parts, the last of one byte.
    for (name, len, parts) in [
        ("empty", 0, None),
        ("one-part", 8 * MIB, None),
        ("one-more", 8 * MIB + 1, Some("-2")),
    ] {
        let k = h.key(&format!("up/{name}.bin"));
        let body = pattern(len, 9);
        let r = post(form(Some(&k), true, &body)).await.expect("upload");
        assert_eq!(r.status(), 201, "{name}");
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["size"], len, "{name}");
        let etag = v["etag"]
            .as_str()
            .expect("etag")
            .trim_matches('"')
            .to_string();
        match parts {
            Some(suffix) => assert!(etag.ends_with(suffix), "{name}: {etag}"),
            None => assert!(
                !etag.contains('-'),
                "{name}: a single PutObject's ETag, got {etag}"
            ),
        }
        let got = h.get(&format!("/{k}"), &[]).await;
        assert_eq!(got.status(), 200, "{name}");
        assert!(
            got.bytes().await.expect("body") == body,
            "{name}: the stored bytes differ"
        );
        h.delete(&k).await;
    }

    // A small file may still be named by a key after it.
    let small_key = h.key("up/small-late-key.bin");
    let r = post(form(Some(&small_key), false, b"small"))
        .await
        .expect("upload");
    assert_eq!(r.status(), 201);
    assert!(exists(&h, &small_key).await);

    // A large file before its key: refused, nothing stored under either
    // name, the multipart upload aborted.
    let late_key = h.key("up/late-key.bin");
    let r = post(form(Some(&late_key), false, &big))
        .await
        .expect("upload");
    assert_eq!(r.status(), 400);
    assert!(!exists(&h, &late_key).await);
    assert!(!exists(&h, &fname).await);

    // Past edge.upload_max after two parts were sent: 413, aborted.
    let too_big_key = h.key("up/too-big.bin");
    let r = post(form(Some(&too_big_key), true, &pattern(31 * MIB, 5)))
        .await
        .expect("upload");
    assert_eq!(r.status(), 413);
    assert!(!exists(&h, &too_big_key).await);

    // /fetch streams the same way.
    let source = redirecting_source(big.clone()).await;
    let fkey = h.key("up/fetched-big.bin");
    let r = h
        .http
        .post(format!("{}/fetch", h.admin))
        .json(&serde_json::json!({ "url": format!("{source}/r/1"), "key": fkey }))
        .send()
        .await
        .expect("fetch");
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(v["etag"]
        .as_str()
        .expect("etag")
        .trim_matches('"')
        .ends_with("-3"));
    assert!(
        h.get(&format!("/{fkey}"), &[])
            .await
            .bytes()
            .await
            .expect("body")
            == big
    );

    // A client that goes away after 20 of its 25 MiB: the body ends short,
    // and the multipart upload is aborted.
    {
        use tokio::io::AsyncWriteExt;
        let gone_key = h.key("up/client-gone.bin");
        let body = form(Some(&gone_key), true, &pattern(25 * MIB, 7));
        let admin = h.admin.trim_start_matches("http://").to_string();
        let mut sock = tokio::net::TcpStream::connect(&admin)
            .await
            .expect("connect");
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: {admin}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        sock.write_all(head.as_bytes()).await.expect("head");
        sock.write_all(&body[..20 * MIB])
            .await
            .expect("part of the body");
        // Two parts are in S3 once the edge has read 16 MiB and more.
        let t = std::time::Instant::now();
        while pending(&h, &fname).await == 0 && t.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(pending(&h, &fname).await, 1, "the upload had started");
        drop(sock);
        let t = std::time::Instant::now();
        while pending(&h, &fname).await > 0 && t.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!exists(&h, &gone_key).await);
    }

    assert_eq!(
        pending(&h, &fname).await,
        0,
        "no multipart upload left unfinished"
    );
    for k in [key, small_key, fkey] {
        h.delete(&k).await;
    }
}

#[tokio::test]
async fn bucket_in_the_path_when_several_buckets_are_served() {
    let bucket = s3_config(None).bucket;
    let mut opts = Options::default();
    opts.edge.buckets = vec![bucket.clone()];
    let h = start(opts).await;
    let key = h.key("in-bucket.txt");
    h.put(&key, Bytes::from_static(b"bucket addressed")).await;
    let r = h.get(&format!("/{bucket}/{key}"), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "bucket addressed");
    assert_eq!(
        h.get(&format!("/{key}"), &[]).await.status(),
        400,
        "no bucket in the path"
    );
    assert_eq!(
        h.get(&format!("/not-served/{key}"), &[]).await.status(),
        400
    );
    h.delete(&key).await;
}

/// A purge (here after an upload to S3) racing a fill that read the old
/// version before it: the old fill must not land in any tier or in Redis
/// after the purge, and requests after the purge must not join it.
#[tokio::test]
async fn a_purge_wins_over_a_fill_that_started_before_it() {
    let s3 = s3_config(None);
    let upstream = s3.endpoint.trim_start_matches("http://").to_string();
    let proxy = CountingProxy::start(upstream).await;
    let h = start(Options {
        s3_endpoint: Some(format!("http://{}", proxy.addr)),
        ..Options::default()
    })
    .await;
    let key = h.key("race.txt");
    h.put(&key, Bytes::from_static(b"old")).await;
    // The fill reads the old version now; its answer reaches the edge late.
    proxy.delay_ms.store(1500, Ordering::SeqCst);
    let early = {
        let (http, url) = (h.http.clone(), format!("{}/{key}", h.url));
        tokio::spawn(async move { http.get(url).send().await.expect("get").bytes().await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    h.put(&key, Bytes::from_static(b"new")).await;
    let r = h
        .http
        .delete(format!("{}/cache/{key}", h.admin))
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 200);
    proxy.delay_ms.store(0, Ordering::SeqCst);
    // After the purge: a fresh fill, not the old flight.
    let after = h.get(&format!("/{key}"), &[]).await;
    assert_eq!(
        after.bytes().await.expect("body"),
        "new",
        "joined the old flight"
    );
    // The early request got the version it asked for.
    assert_eq!(early.await.expect("task").expect("body"), "old");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The old fill landed nowhere: not in memory, not in Redis.
    for _ in 0..3 {
        let again = h.get(&format!("/{key}"), &[]).await;
        assert_eq!(again.bytes().await.expect("body"), "new", "old fill landed");
    }
    let redis = h._redis.as_ref().expect("test redis");
    let mut c = redis.conn().await;
    let stored: Option<String> = redis::AsyncCommands::get(
        &mut c,
        format!("{}:edge:meta:{}:{key}", redis.prefix, h.bucket),
    )
    .await
    .expect("redis get");
    let new_etag =
        h.s3.head_object()
            .bucket(&h.bucket)
            .key(&key)
            .send()
            .await
            .expect("head")
            .e_tag()
            .unwrap_or_default()
            .to_string();
    if let Some(v) = stored {
        assert!(
            v.contains(&new_etag.replace('"', "\\\"")),
            "Redis holds {v}, not {new_etag}"
        );
    }
    h.delete(&key).await;
}

/// `POST /fetch` refuses internal destinations (directly, by name, and
/// after a redirect) unless allow-listed, and admin writes from another
/// site. Every URL here is loopback or refused before any connection.
#[tokio::test]
async fn fetch_refuses_internal_destinations_and_cross_site_posts() {
    let source = redirecting_source(Bytes::from_static(b"secret")).await;
    let port = source.rsplit(':').next().expect("port").to_string();
    // A source reached by name that redirects to an address.
    let bouncer = {
        let to = format!("{source}/r/0");
        let app = Router::new().route(
            "/away",
            axum::routing::get(move || {
                let to = to.clone();
                async move { axum::response::Redirect::temporary(&to) }
            }),
        );
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://localhost:{}", addr.port())
    };
    let mut opts = Options::default();
    opts.edge.fetch_allow = vec!["localhost".into()];
    let h = start(opts).await;
    let fetch = |url: String, headers: Vec<(&'static str, &'static str)>| {
        let mut rb = h
            .http
            .post(format!("{}/fetch", h.admin))
            .json(&serde_json::json!({ "url": url, "key": h.key("stolen") }));
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        rb.send()
    };
    for url in [
        format!("{source}/r/0"),
        format!("http://[::1]:{port}/r/0"),
        format!("http://[::ffff:127.0.0.1]:{port}/r/0"),
        format!("http://2130706433:{port}/r/0"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://0.0.0.0/".to_string(),
    ] {
        let r = fetch(url.clone(), vec![]).await.expect("fetch");
        assert_eq!(r.status(), 403, "{url}");
    }
    // Allowed by name, then redirected to a refused address.
    let r = fetch(format!("{bouncer}/away"), vec![])
        .await
        .expect("fetch");
    assert_eq!(r.status(), 403, "redirect to loopback");
    // The allowed name itself is fetched.
    let r = fetch(format!("http://localhost:{port}/r/1"), vec![])
        .await
        .expect("fetch");
    assert_eq!(r.status(), 201, "allow-listed host");
    // A browser posting from another site's page.
    for hs in [
        vec![("sec-fetch-site", "cross-site")],
        vec![("origin", "http://evil.example")],
    ] {
        let r = fetch(format!("http://localhost:{port}/r/0"), hs.clone())
            .await
            .expect("fetch");
        assert_eq!(r.status(), 403, "{hs:?}");
    }
    let r = fetch(
        format!("http://localhost:{port}/r/0"),
        vec![("sec-fetch-site", "same-origin")],
    )
    .await
    .expect("fetch");
    assert_eq!(r.status(), 201);
    h.delete(&h.key("stolen")).await;
}

/// 50 concurrent requests for distinct objects; the slowest one's time.
async fn slowest_of_fifty(h: &Harness, keys: &[String]) -> Duration {
    let mut tasks = Vec::new();
    for k in keys {
        let (http, url) = (h.http.clone(), format!("{}/{k}", h.url));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = http.get(url).send().await.expect("get");
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await;
            t.elapsed()
        }));
    }
    let mut slowest = Duration::ZERO;
    for t in tasks {
        slowest = slowest.max(t.await.expect("task"));
    }
    slowest
}

/// Redis black-holed (connections accepted, nothing ever answered), at start
/// and mid-run: every one of 50 concurrent requests is answered within about
/// one `redis.timeout`, not after the others' timeouts.
#[tokio::test]
async fn redis_black_holed_costs_each_request_one_timeout_at_most() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let st = stack();
    let test_redis = TestRedis::new(&st);
    let upstream = test_redis
        .url
        .trim_start_matches("redis://")
        .trim_end_matches('/');
    let upstream = upstream.split('/').next().unwrap_or(upstream).to_string();
    // Mid-run: a proxy in front of the real Redis that stops answering.
    let proxy = CountingProxy::start(upstream).await;
    let redis_cfg = |addr: SocketAddr| RedisConfig {
        url: format!("redis://{addr}"),
        key_prefix: test_redis.prefix.clone(),
        timeout: TIMEOUT,
    };
    let h = start(Options {
        redis: Some(redis_cfg(proxy.addr)),
        ..Options::default()
    })
    .await;
    let keys: Vec<String> = (0..50).map(|i| h.key(&format!("bh/{i}"))).collect();
    for k in &keys {
        h.put(k, Bytes::from_static(b"x")).await;
    }
    assert_eq!(h.get(&format!("/{}", keys[0]), &[]).await.status(), 200);
    proxy.delay_ms.store(3_600_000, Ordering::SeqCst);
    let mid_run = slowest_of_fifty(&h, &keys).await;

    // At start: nothing but a listener that accepts and holds.
    let hole = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hole_addr = hole.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let h2 = start(Options {
        redis: Some(redis_cfg(hole_addr)),
        ..Options::default()
    })
    .await;
    let at_start = slowest_of_fifty(&h2, &keys).await;
    eprintln!("Redis black-holed, slowest of 50: mid-run {mid_run:?}, at start {at_start:?} (redis.timeout {TIMEOUT:?})");
    for (when, took) in [("mid-run", mid_run), ("at start", at_start)] {
        assert!(
            took < TIMEOUT * 2 + Duration::from_millis(1500),
            "{when}: the slowest of 50 requests took {took:?}"
        );
    }
    for k in &keys {
        h.delete(k).await;
    }
}
