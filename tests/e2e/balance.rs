//! `weir balance` as a process, with real agents and health consumers
//! writing the fleet state to Redis and real HTTP origins on loopback:
//! round robin over the fleet, a node leaving and returning, an origin
//! killed under its still-reporting agent (retries, ejection, return),
//! Redis stopped mid-traffic, routes, forwarding headers, upgrades,
//! timeouts, stickiness, least_time, draining and the port takeover.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_testkit::{eventually, free_addr, unique, Origin, PrivateService, Proc, TestWorld};

use crate::{weir, Balance, Cpus};

/// Agent interval: nodes expire 3 × this after their last report.
const INTERVAL: &str = "400ms";

fn agent(env: &[(String, String)], node: &str, origin: &Origin) -> Proc {
    let mut env = env.to_vec();
    env.push(("WEIR_AGENT_ENDPOINT".into(), origin.url()));
    Proc::spawn(
        &format!("agent-{node}"),
        weir(),
        &["agent", "--interval", INTERVAL, "--node-id", node],
        &env,
    )
}

/// GETs `url` `n` times on one keep-alive client; answers by body (the
/// origin's name), and failures by status.
async fn spread(http: &reqwest::Client, url: &str, n: usize) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for _ in 0..n {
        let key = match http.get(url).send().await {
            Ok(r) if r.status().is_success() => {
                r.text().await.unwrap_or_default().trim().to_string()
            }
            Ok(r) => format!("status {}", r.status().as_u16()),
            Err(e) => format!("error {e}"),
        };
        *by.entry(key).or_insert(0) += 1;
    }
    by
}

async fn state_of(b: &Balance, pool: &str, origin: &Origin) -> Option<(String, String)> {
    let key = origin.addr.to_string();
    b.backends(pool)
        .await
        .into_iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, s, why)| (s, why))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_nodes_are_balanced_expire_return_and_a_dead_origin_costs_no_get() {
    let world = TestWorld::create(1).await;
    let env = world.env_with(&[
        ("WEIR_BALANCE_MAX_FAILS", "2"),
        ("WEIR_BALANCE_EJECT_TIME", "1s"),
    ]);
    let mut consumer = Proc::spawn("consumer", weir(), &["consume", "health"], &env);
    let (a, mut b, c) = (
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
    );
    let prefix = unique("bn");
    let (na, nb, nc) = (
        format!("{prefix}-a"),
        format!("{prefix}-b"),
        format!("{prefix}-c"),
    );
    let _agent_a = agent(&env, &na, &a);
    let _agent_b = agent(&env, &nb, &b);
    let mut agent_c = agent(&env, &nc, &c);
    let bal = Balance::start(&env, None).await;
    let url = format!("http://{}/", bal.addr);
    eventually(
        Duration::from_secs(60),
        "three nodes up in the pool",
        || async {
            let up = bal
                .backends("default")
                .await
                .iter()
                .filter(|(_, s, _)| s == "up")
                .count();
            (up == 3).then_some(())
        },
    )
    .await;

    // round_robin: 300 GETs, 100 each.
    let http = reqwest::Client::new();
    let by = spread(&http, &url, 300).await;
    assert_eq!(
        (by.get("a"), by.get("b"), by.get("c")),
        (Some(&100), Some(&100), Some(&100)),
        "{by:?}"
    );

    // Node c's agent stops: c leaves within its expiry (3 × 400 ms, plus
    // the pipeline), and returns when the agent does.
    let stopped = Instant::now();
    agent_c
        .terminate(Duration::from_secs(20))
        .expect("agent c stops");
    eventually(Duration::from_secs(15), "c down", || async {
        state_of(&bal, "default", &c)
            .await
            .filter(|(s, _)| s == "down")
    })
    .await;
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(6), "c left after {took:?}");
    let served_c = c.served();
    let by = spread(&http, &url, 60).await;
    assert_eq!(c.served(), served_c, "no request to a down node: {by:?}");
    assert_eq!(
        by.values().sum::<usize>(),
        by.get("a").unwrap_or(&0) + by.get("b").unwrap_or(&0)
    );
    let _agent_c = agent(&env, &nc, &c);
    eventually(Duration::from_secs(30), "c back", || async {
        state_of(&bal, "default", &c)
            .await
            .filter(|(s, _)| s == "up")
    })
    .await;

    // Origin b dies, its agent still reporting: GETs are retried elsewhere
    // (no client error), b is ejected…
    b.kill().await;
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (http, url, errors) = (http.clone(), url.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..50 {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {}
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "GETs failed with b dead");
    // Ejected (or, on a slow machine, already back from its first
    // ejection: the reason stays).
    let (state, why) = state_of(&bal, "default", &b).await.expect("b listed");
    assert!(
        state == "ejected" || why.contains("ejected for"),
        "{state}: {why}"
    );
    assert!(
        why.contains("consecutive failures (last: connect)"),
        "{why}"
    );
    let metrics = bal.metrics().await;
    assert!(
        metrics.contains("weir_balance_backend_ejections_total")
            && metrics.contains("weir_balance_retries_total"),
        "{metrics}"
    );

    // … and gets traffic again once it is back and its ejection is over.
    b.revive().await;
    let before = b.served();
    eventually(Duration::from_secs(20), "b serves again", || {
        let (http, url) = (http.clone(), url.clone());
        let b = &b;
        async move {
            spread(&http, &url, 10).await;
            (b.served() > before).then_some(())
        }
    })
    .await;
    drop(bal);
    consumer.terminate(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_traffic_the_balancer_serves_from_its_snapshot() {
    let mut redis = PrivateService::start("redis");
    let world = TestWorld::create(1).await;
    let url_redis = redis.url();
    let env = world.env_with(&[("WEIR_REDIS_URL", &url_redis)]);
    let _consumer = Proc::spawn("consumer", weir(), &["consume", "health"], &env);
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let prefix = unique("br");
    let _ga = agent(&env, &format!("{prefix}-a"), &a);
    let _gb = agent(&env, &format!("{prefix}-b"), &b);
    let bal = Balance::start(&env, None).await;
    eventually(Duration::from_secs(60), "two nodes up", || async {
        let up = bal
            .backends("default")
            .await
            .iter()
            .filter(|(_, s, _)| s == "up")
            .count();
        (up == 2).then_some(())
    })
    .await;
    redis.stop(true);
    // Well past the nodes' expiry (1.2 s) with Redis gone.
    let http = reqwest::Client::new();
    let url = format!("http://{}/", bal.addr);
    let until = Instant::now() + Duration::from_secs(4);
    let mut total = HashMap::new();
    while Instant::now() < until {
        for (k, v) in spread(&http, &url, 10).await {
            *total.entry(k).or_insert(0) += v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        total.keys().filter(|k| *k == "a" || *k == "b").count(),
        2,
        "both nodes keep serving: {total:?}"
    );
    assert!(
        total.keys().all(|k| *k == "a" || *k == "b"),
        "no failure: {total:?}"
    );
    let pools = bal.pools().await;
    assert_eq!(pools["fleet"]["stale"], true, "{pools}");
    redis.restart();
    eventually(
        Duration::from_secs(30),
        "fleet state followed again",
        || async { (bal.pools().await["fleet"]["stale"] == false).then_some(()) },
    )
    .await;
}

/// A config of static pools on the given origins.
fn static_config(
    default: &[&Origin],
    api: (&Origin, &Origin),
    slow: &Origin,
    fast3: &[&Origin],
) -> String {
    let list = |o: &[&Origin]| {
        o.iter()
            .map(|o| format!("\"{}\"", o.url()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"[balance]
first_byte_timeout = "400ms"
max_fails = 2
eject_time = "1s"

[balance.pools.default]
backends = [{default}]

[balance.pools.api]
algorithm = "weighted"
backends = ["{c} weight=1", "{d} weight=3"]

[balance.pools.slow]
backends = ["{slow}"]

[balance.pools.lt]
algorithm = "least_time"
backends = [{fast3}]

[balance.pools.sticky]
sticky = "cookie"
backends = [{fast3}]

[[balance.routes]]
prefix = "/api/randoms"
pool = "api"

[[balance.routes]]
prefix = "/slow"
pool = "slow"

[[balance.routes]]
prefix = "/lt"
pool = "lt"

[[balance.routes]]
prefix = "/sticky"
pool = "sticky"
"#,
        default = list(default),
        c = api.0.url(),
        d = api.1.url(),
        slow = slow.url(),
        fast3 = list(fast3),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pools_routes_headers_upgrades_timeouts_and_posts() {
    let (a, mut b) = (Origin::start("a").await, Origin::start("b").await);
    let (c, d) = (Origin::start("c").await, Origin::start("d").await);
    let slow = Origin::start("slow").await;
    slow.set_delay(Duration::from_secs(2));
    let f: Vec<Origin> = futures::future::join_all(["f1", "f2", "f3"].map(Origin::start)).await;
    let cfg = static_config(&[&a, &b], (&c, &d), &slow, &[&f[0], &f[1], &f[2]]);
    let bal = Balance::start(&[], Some(&cfg)).await;
    let base = format!("http://{}", bal.addr);
    let http = reqwest::Client::new();

    // Routes: the longest prefix wins; the rest goes to the default pool.
    let by = spread(&http, &format!("{base}/api/randoms/7"), 400).await;
    assert_eq!(
        (by.get("c"), by.get("d")),
        (Some(&100), Some(&300)),
        "{by:?}"
    );
    let by = spread(&http, &format!("{base}/elsewhere"), 10).await;
    assert_eq!((by.get("a"), by.get("b")), (Some(&5), Some(&5)), "{by:?}");

    // Headers both ways.
    let r = http
        .get(format!("{base}/headers"))
        .header("x-request-id", "req-42")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("x-forwarded-for", "198.51.100.1")
        .send()
        .await
        .expect("headers");
    let h: serde_json::Value = r.json().await.expect("json");
    assert_eq!(h["x-forwarded-for"], "198.51.100.1, 127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h["forwarded"]
            .as_str()
            .is_some_and(|f| f.starts_with("for=127.0.0.1;proto=http;host=")),
        "{h}"
    );
    assert_eq!(h["x-request-id"], "req-42");
    assert!(
        h.get("x-hop").is_none() && h.get("connection").is_none(),
        "{h}"
    );
    let h: serde_json::Value = http
        .get(format!("{base}/headers"))
        .send()
        .await
        .expect("headers")
        .json()
        .await
        .expect("json");
    assert_eq!(h["x-request-id"].as_str().map(str::len), Some(32), "{h}");

    // A large body streams through both ways.
    let r = http
        .post(format!("{base}/upload?size=3000000"))
        .body(vec![b'y'; 5_000_000])
        .send()
        .await
        .expect("large");
    assert_eq!(r.headers()["x-body-bytes"], "5000000");
    assert_eq!(r.bytes().await.expect("body").len(), 3_000_000);

    // Upgrade: 101, then bytes echoed both ways.
    let mut s = tokio::net::TcpStream::connect(bal.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.expect("read"),
            1,
            "closed: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    s.write_all(b"ping over the tunnel").await.expect("write");
    let mut echo = [0u8; 20];
    s.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"ping over the tunnel");

    // First-byte timeout: 504 at about 400 ms, not 2 s.
    let t = Instant::now();
    let r = http.get(format!("{base}/slow")).send().await.expect("slow");
    assert_eq!(r.status().as_u16(), 504);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    // Sticky: the cookie brings a client back to its backend.
    let r = http
        .get(format!("{base}/sticky"))
        .send()
        .await
        .expect("sticky");
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    let first = r.text().await.expect("body");
    for _ in 0..20 {
        let again = http
            .get(format!("{base}/sticky"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("sticky")
            .text()
            .await
            .expect("body");
        assert_eq!(again, first);
    }

    // least_time: a backend made 200 ms slow gets little of the traffic.
    f[0].set_delay(Duration::from_millis(200));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (http, url) = (http.clone(), format!("{base}/lt"));
        workers.push(tokio::spawn(async move { spread(&http, &url, 40).await }));
    }
    let mut lt = HashMap::new();
    for w in workers {
        for (k, v) in w.await.expect("worker") {
            *lt.entry(k).or_insert(0) += v;
        }
    }
    let slow_share = *lt.get("f1").unwrap_or(&0) as f64 / 160.0;
    assert!(slow_share < 0.1, "{lt:?}");

    // A POST to a dead backend fails cleanly, and is not retried.
    b.kill().await;
    let served_a = a.served();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(
            http.post(format!("{base}/form"))
                .body("x=1")
                .send()
                .await
                .expect("post")
                .status()
                .as_u16(),
        );
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 502]);
    assert_eq!(
        a.served(),
        served_a + 1,
        "the failed POST was not sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_new_process_takes_the_port_with_no_refused_connection() {
    let a = Origin::start("a").await;
    let slow = Origin::start("slow").await;
    slow.set_delay(Duration::from_millis(1500));
    let cfg = format!(
        "[balance]\ndrain_timeout = \"5s\"\n[balance.pools.default]\nbackends = [\"{}\"]\n[balance.pools.slow]\nbackends = [\"{}\"]\n[[balance.routes]]\nprefix = \"/slow\"\npool = \"slow\"\n",
        a.url(),
        slow.url()
    );
    let addr = free_addr();
    let mut old = Balance::start_on(addr, &[], Some(&cfg)).await;
    // A connection to the old process that sends its first request only
    // after the SIGTERM, within the grace a fresh connection gets, and one
    // the direct path hands to hyper (it has a body): it must be answered,
    // not closed as a connection without a request.
    let mut held = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let url = format!("http://{addr}/");
    // Load: new connections all the time (the case a takeover can refuse).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, ok, failed, errors, url) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            errors.clone(),
            url.clone(),
        );
        load.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client");
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().expect("lock").push(format!("{other:?}"));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A request in flight on the old process when it is told to stop.
    let slow_req = tokio::spawn({
        let url = format!("http://{addr}/slow");
        async move { reqwest::get(&url).await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The new process runs on one CPU (its single-threaded runtime), the old
    // one on every CPU: a takeover must work between the two.
    let new = Balance::start_with(Cpus::One, addr, &[], Some(&cfg)).await;
    let t = Instant::now();
    old.proc.signal(nix::sys::signal::Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(200)).await;
    held.write_all(b"POST /late HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("late request");
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), held.read(&mut answer))
        .await
        .expect("answered within the drain")
        .expect("read");
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "a request sent in the grace after SIGTERM: {:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    let status = old
        .proc
        .wait(Duration::from_secs(10))
        .expect("old process exits");
    assert!(status.success(), "{}", old.proc.output());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "drained in {:?}",
        t.elapsed()
    );
    assert_eq!(
        slow_req.await.expect("task").expect("in-flight request"),
        200
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "load ran: {ok}");
    assert_eq!(failed, 0, "{:?}", errors.lock().expect("lock"));
    let _ = reqwest::get(format!("http://{}/livez", new.admin))
        .await
        .expect("new serves");
}

/// Sends raw bytes on a fresh connection; the status line answered (or
/// what happened instead).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    if s.write_all(bytes).await.is_err() {
        return "write refused".into();
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(0)) => "closed".into(),
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        Ok(Err(e)) => format!("error {e}"),
        Err(_) => "no answer".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_refused_or_cut_and_the_balancer_keeps_serving() {
    let a = Origin::start("a").await;
    let cfg = format!(
        "[balance]\nheader_read_timeout = \"500ms\"\nfirst_byte_timeout = \"500ms\"\nidle_timeout = \"500ms\"\nclient_idle_timeout = \"1s\"\nsend_timeout = \"500ms\"\n[balance.pools.default]\nbackends = [\"{}\"]\n",
        a.url()
    );
    // On one CPU: the single-threaded runtime a one-CPU container gets must
    // bound and cut hostile clients as the multi-threaded one does.
    let bal = Balance::start_with(Cpus::One, free_addr(), &[], Some(&cfg)).await;
    let addr = bal.addr;
    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "x".repeat(1 << 20)
    );
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("headers of 1 MiB", huge_header.into_bytes(), &["HTTP/1.1 431", "closed", "write refused", "error"]),
        ("NUL in a header", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n".to_vec(), &["HTTP/1.1 400", "closed"]),
        ("not HTTP", b"\x16\x03\x01\x02\x00hello tls\r\n\r\n".to_vec(), &["HTTP/1.1 400", "closed"]),
        (
            "Content-Length and chunked (smuggling)",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            &["HTTP/1.1 400", "HTTP/1.1 200", "closed"],
        ),
        ("two Content-Lengths", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(), &["HTTP/1.1 400", "closed"]),
        ("absolute-form URI", b"GET http://evil.example/x HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), &["HTTP/1.1 200"]),
        ("empty request line", b"\r\n\r\n\r\n".to_vec(), &["HTTP/1.1 400", "closed", "no answer"]),
        ("a head never finished", b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec(), &["HTTP/1.1 408", "closed"]),
    ];
    for (what, bytes, expected) in cases {
        let got = raw(addr, &bytes).await;
        assert!(
            expected.iter().any(|e| got.starts_with(e)),
            "{what}: got {got:?}, expected one of {expected:?}"
        );
    }
    // A slow client holding a connection without a request is cut after
    // header_read_timeout.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("cut within the timeout");
    let cut = match n {
        Ok(0) | Err(_) => true,
        Ok(k) => String::from_utf8_lossy(&buf[..k]).starts_with("HTTP/1.1 408"),
    };
    assert!(cut, "an idle connection is closed (or answered 408)");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // A client that asks for 64 MiB and reads none of it is disconnected
    // after send_timeout: what it can read afterwards is what the kernel's
    // buffers held, then the end.
    let mut sink = tokio::net::TcpStream::connect(addr).await.expect("connect");
    sink.write_all(b"GET /?size=67108864 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("request");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), sink.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got += n,
            Err(_) => break false,
        }
    };
    assert!(
        ended && got < 64 << 20,
        "a client that stopped reading is cut: read {got} bytes, ended {ended}"
    );
    // A tunnel (upgrade) gone quiet is closed after client_idle_timeout.
    let mut ws = tokio::net::TcpStream::connect(addr).await.expect("connect");
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("upgrade");
    let n = ws.read(&mut buf).await.expect("101");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    let t = Instant::now();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => continue,
            Err(_) => break false,
        }
    };
    assert!(closed, "a silent tunnel is closed");
    assert!(
        t.elapsed() >= Duration::from_millis(800) && t.elapsed() < Duration::from_secs(4),
        "closed after client_idle_timeout (1 s): {:?}",
        t.elapsed()
    );
    // And it still serves.
    let r = reqwest::get(format!("http://{addr}/"))
        .await
        .expect("serves");
    assert_eq!(r.text().await.expect("body"), "a\n");
}

/// A client that asks for a large body and reads none of it costs the
/// balancer a bounded buffer: at most `MAX_BUF` (64 KiB) waiting for the
/// client, as much read ahead from the backend and the chunk between them,
/// not hyper's default of about 400 KiB each way. Past that (and the
/// kernel's socket buffers) the backend waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_read_nothing_cost_a_bounded_buffer_each() {
    const CLIENTS: usize = 16;
    const BODY: usize = 8 << 20;
    let a = Origin::start("a").await;
    let cfg = format!(
        "[balance]\nsend_timeout = \"60s\"\n[balance.pools.default]\nbackends = [\"{}\"]\n",
        a.url()
    );
    let bal = Balance::start(&[], Some(&cfg)).await;
    let addr = bal.addr;
    // One large body read whole first: what the allocator keeps of it is
    // in the baseline.
    let r = reqwest::get(format!("http://{addr}/?size={BODY}"))
        .await
        .expect("large body");
    assert_eq!(r.bytes().await.expect("read whole").len(), BODY);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = bal.proc.rss();
    let mut silent = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        // A small receive window: what the kernel takes off the balancer's
        // hands stays small, so its own buffers fill.
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut s = sock.connect(addr).await.expect("connect");
        s.write_all(format!("GET /?size={BODY} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .expect("request");
        silent.push(s);
    }
    // Time for the balancer to fill what it may hold and stop reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = bal.proc.rss().saturating_sub(base);
    let per = held / CLIENTS as u64;
    eprintln!(
        "{CLIENTS} clients reading nothing of {BODY} bytes: RSS {} KiB before, +{} KiB with them, {} KiB each",
        base >> 10,
        held >> 10,
        per >> 10
    );
    assert!(
        per < 400 << 10,
        "each non-reading client holds {} KiB in the balancer",
        per >> 10
    );
    // Meanwhile another client is served.
    let r = reqwest::get(format!("http://{addr}/"))
        .await
        .expect("serves");
    assert_eq!(r.text().await.expect("body"), "a\n");
    drop(silent);
}
