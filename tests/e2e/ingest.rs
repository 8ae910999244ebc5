//! `weir ingest` end to end (issue 14): an agent reporting over HTTP is seen
//! by the center exactly as one reporting to Kafka; Kafka stopped mid-run
//! (a private broker) costs 503s and resends but no report lost or doubled;
//! hostile bodies get clear answers and nothing the consumers would refuse
//! reaches the topic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_schemas::HealthEvent;
use weir_testkit::{
    eventually, last_json, read_topic, stack, unique, PrivateService, Proc, Stack, TestWorld,
};

use crate::{get_json, weir, weir_config, Center, Ingest};

/// The JSON shape of a value: its keys, recursively, with the type of each
/// leaf; arrays by the shape of their elements.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => {
            let mut kinds: Vec<Value> = a.iter().map(shape).collect();
            kinds.dedup();
            Value::Array(kinds)
        }
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
    }
}

/// `servers.reports` and `last_seq` of `node`.
async fn stored(pool: &sqlx::PgPool, node: &str) -> Option<(i64, i64)> {
    sqlx::query_as::<_, (i64, i64)>("SELECT reports, last_seq FROM servers WHERE node_id = $1")
        .bind(node)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
}

/// Stops an agent with SIGTERM and returns the report it prints.
fn stop_agent(agent: &mut Proc) -> Value {
    let st = agent
        .terminate(Duration::from_secs(30))
        .expect("agent exits on SIGTERM");
    assert!(st.success(), "agent exit {st:?}:\n{}", agent.output());
    last_json(&agent.output()).expect("the agent prints its report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_through_ingest_is_seen_as_one_on_kafka_is() {
    let world = TestWorld::create(1).await;
    let env = world.env();
    let (direct, via) = (unique("direct"), unique("via-http"));
    let mut member = Proc::spawn("member", weir(), &["consume", "health"], &env);
    let center = Center::start(&env).await;
    let mut ingest = Ingest::start(&env).await;
    let api = format!("http://{}/api/v1", center.addr);

    let args = |node: &str| {
        vec![
            "agent".to_string(),
            "--interval".into(),
            "300ms".into(),
            "--node-id".into(),
            node.to_string(),
        ]
    };
    let a = args(&direct);
    let mut kafka_agent = Proc::spawn(
        "agent-kafka",
        weir(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );
    let mut b = args(&via);
    b.extend(["--via".into(), ingest.url()]);
    let mut http_agent = Proc::spawn(
        "agent-http",
        weir(),
        &b.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );

    let views = eventually(Duration::from_secs(60), "both nodes up", || {
        let (api, direct, via) = (api.clone(), direct.clone(), via.clone());
        async move {
            let (_, d) = get_json(&format!("{api}/nodes/{direct}")).await?;
            let (_, v) = get_json(&format!("{api}/nodes/{via}")).await?;
            (d["status"] == "up" && v["status"] == "up").then_some((d, v))
        }
    })
    .await;
    let (d, v) = views;
    assert_eq!(shape(&d), shape(&v), "same view:\n{d}\n{v}");
    for field in [
        "interval_ms",
        "service",
        "cdn_type",
        "cores",
        "memory_total_mb",
    ] {
        assert_eq!(d["health"][field], v["health"][field], "{field}");
    }
    // The same addresses (the host's interfaces come in no fixed order).
    for list in ["lan", "wan", "device"] {
        let sorted = |x: &Value| {
            let mut a: Vec<String> = x["health"]["ips"][list]
                .as_array()
                .map(|a| a.iter().map(|i| i.to_string()).collect())
                .unwrap_or_default();
            a.sort();
            a
        };
        assert_eq!(sorted(&d), sorted(&v), "ips.{list}");
    }
    let names = |x: &Value| -> Vec<String> {
        let mut n: Vec<String> = x["health"]["interfaces"]
            .as_array()
            .map(|a| a.iter().map(|i| i["name"].to_string()).collect())
            .unwrap_or_default();
        n.sort();
        n
    };
    assert_eq!(names(&d), names(&v));
    let uptime = |x: &Value| x["health"]["uptime_secs"].as_i64().unwrap_or(0);
    assert!(
        (uptime(&d) - uptime(&v)).abs() <= 5,
        "same host uptime:\n{d}\n{v}"
    );

    let rd = stop_agent(&mut kafka_agent);
    let rv = stop_agent(&mut http_agent);
    for r in [&rd, &rv] {
        assert_eq!(r["queued"], r["delivered"], "{r}");
        assert_eq!(r["failed"], 0, "{r}");
    }
    // Every report in PostgreSQL once, for both, and the same uptime answer.
    let pool = world.db.pool().await;
    for (node, r) in [(&direct, &rd), (&via, &rv)] {
        let n = r["delivered"].as_i64().expect("delivered");
        eventually(Duration::from_secs(20), "reports stored", || {
            let pool = pool.clone();
            async move { (stored(&pool, node).await == Some((n, n))).then_some(()) }
        })
        .await;
    }
    let (_, ud) = get_json(&format!("{api}/uptime?node={direct}"))
        .await
        .expect("uptime");
    let (_, uv) = get_json(&format!("{api}/uptime?node={via}"))
        .await
        .expect("uptime");
    assert_eq!(shape(&ud), shape(&uv), "{ud}\n{uv}");
    assert_eq!(uv["nodes"][0]["reports"], rv["delivered"]);
    let accepted = ingest
        .metric("weir_ingest_records_total{outcome=\"accepted\"")
        .await;
    assert_eq!(accepted, rv["delivered"].as_f64().unwrap_or(-1.0));

    // SIGTERM: the gateway stops accepting, flushes and exits cleanly.
    let st = ingest
        .proc
        .terminate(Duration::from_secs(20))
        .expect("ingest exits on SIGTERM");
    assert!(
        st.success(),
        "ingest exit {st:?}:\n{}",
        ingest.proc.output()
    );
    let st = member
        .terminate(Duration::from_secs(30))
        .expect("member stops");
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_stopped_mid_run_costs_resends_but_no_report() {
    const ACK_TIMEOUT: Duration = Duration::from_secs(2);
    let mut kafka = PrivateService::start("kafka");
    let shared = stack();
    let world = TestWorld::builder()
        .on(Stack {
            kafka: kafka.url(),
            ..shared
        })
        .create()
        .await;
    let env = world.env_with(&[("WEIR_INGEST_ACK_TIMEOUT", "2s")]);
    let node = unique("through-outage");
    let mut member = Proc::spawn("member", weir(), &["consume", "health"], &env);
    let ingest = Ingest::start(&env).await;
    let via = ingest.url();
    let mut agent = Proc::spawn(
        "agent",
        weir(),
        &[
            "agent",
            "--interval",
            "200ms",
            "--node-id",
            &node,
            "--via",
            &via,
        ],
        &env,
    );
    let pool = world.db.pool().await;
    eventually(Duration::from_secs(60), "first reports stored", || {
        let (pool, node) = (pool.clone(), node.clone());
        async move { stored(&pool, &node).await.filter(|(n, _)| *n >= 5) }
    })
    .await;

    kafka.stop(false);
    // A report posted now gets 503 with Retry-After within the timeout.
    let probe = HealthEvent::example(&unique("probe"), 1, chrono::Utc::now());
    let t = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{via}/api/v1/health"))
        .json(&probe)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer");
    let took = t.elapsed();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(
        took <= ACK_TIMEOUT + Duration::from_millis(1500),
        "503 after {took:?}"
    );
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["results"][0]["status"], 503, "{body}");
    // The agent is being refused too, and holds its reports meanwhile.
    eventually(Duration::from_secs(20), "the agent refused", || {
        let ingest = &ingest;
        async move { (ingest.metric("weir_ingest_unavailable_total").await >= 2.0).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka.restart();
    let during = stored(&pool, &node).await.map_or(0, |(n, _)| n);
    eventually(Duration::from_secs(90), "reports flow again", || {
        let (pool, node) = (pool.clone(), node.clone());
        async move {
            stored(&pool, &node)
                .await
                .filter(|(n, _)| *n >= during + 20)
        }
    })
    .await;

    let report = stop_agent(&mut agent);
    let queued = report["queued"].as_u64().expect("queued");
    assert_eq!(report["delivered"].as_u64(), Some(queued), "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["resent"].as_u64().unwrap_or(0) > 0, "{report}");
    // Every sequence number once in the topic, and PostgreSQL counted each
    // once.
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for r in read_topic(&kafka.url(), &world.topics.health, Duration::from_secs(3)) {
        if r.key == node.as_bytes() {
            let e: HealthEvent =
                weir_schemas::decode(Some(&r.payload)).expect("a record the consumers accept");
            *seen.entry(e.seq).or_default() += 1;
        }
    }
    let expected: BTreeMap<u64, usize> = (1..=queued).map(|s| (s, 1)).collect();
    assert_eq!(seen, expected, "each sequence number once");
    let n = queued as i64;
    eventually(Duration::from_secs(30), "every report stored once", || {
        let (pool, node) = (pool.clone(), node.clone());
        async move { (stored(&pool, &node).await == Some((n, n))).then_some(()) }
    })
    .await;
    let st = member
        .terminate(Duration::from_secs(30))
        .expect("member stops");
    assert!(st.success());
}

/// A report as JSON text.
fn report(node: &str, seq: u64) -> String {
    serde_json::to_string(&HealthEvent::example(node, seq, chrono::Utc::now())).expect("json")
}

/// POSTs `body` with `content_type`; status, `Retry-After` and JSON body.
async fn post(
    http: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Option<String>, Value) {
    let r = http
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("an answer");
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

/// Writes `parts` on a fresh connection to `addr` and reads the answer
/// until the gateway closes the connection (or 10 s pass).
async fn raw_exchange(addr: std::net::SocketAddr, parts: &[&[u8]]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    for p in parts {
        if s.write_all(p).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) if !out.is_empty() => break,
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_clear_answers_and_never_reach_the_topic() {
    let world = TestWorld::create(1).await;
    let env = world.env_with(&[
        ("WEIR_INGEST_MAX_BODY_BYTES", "1048576"),
        ("WEIR_INGEST_BODY_TIMEOUT", "1s"),
        ("WEIR_INGEST_HEADER_READ_TIMEOUT", "1s"),
        ("WEIR_INGEST_PER_NODE_RATE", "2"),
        ("WEIR_INGEST_PER_NODE_BURST", "10"),
    ]);
    let ingest = Ingest::start(&env).await;
    let url = format!("{}/api/v1/health", ingest.url());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let json = "application/json";
    let ndjson = "application/x-ndjson";
    let mut accepted = 0u64;

    // Not JSON; JSON of the wrong shape; wrong types; NUL characters.
    let field_of = |v: &Value| v["results"][0]["field"].as_str().map(str::to_string);
    let (s, _, v) = post(&http, &url, json, "this is not json").await;
    assert_eq!(
        (s, v["results"][0]["code"].as_str()),
        (400, Some("not_json")),
        "{v}"
    );
    let (s, _, v) = post(&http, &url, json, "[1, 2, 3]").await;
    assert_eq!(
        (s, v["results"][0]["code"].as_str()),
        (400, Some("schema")),
        "{v}"
    );
    for (field, bad) in [
        ("seq", json!("seven")),
        ("cores", json!(-1)),
        ("load_avg", json!([1, 2, 3])),
        ("ts", json!("yesterday")),
        ("interval_ms", json!(0)),
        ("cpu_usage_pct", json!(1e9)),
        ("node_id", json!("a\u{0}b")),
        ("endpoint", json!("http://x\u{0}")),
    ] {
        let mut e: Value = serde_json::from_str(&report("hostile", 1)).expect("json");
        e[field] = bad;
        let (s, _, v) = post(&http, &url, json, e.to_string()).await;
        assert_eq!(s, 400, "{field}: {v}");
        assert_eq!(field_of(&v).as_deref(), Some(field), "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let mut raw_nul = report("hostile", 1).into_bytes();
    raw_nul.insert(10, 0);
    let (s, _, v) = post(&http, &url, json, raw_nul).await;
    assert_eq!(
        (s, v["results"][0]["code"].as_str()),
        (400, Some("not_json")),
        "{v}"
    );
    let (s, _, v) = post(&http, &url, json, "   ").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("empty")),
        "{v}"
    );

    // Huge: a declared length over the limit is refused before the body is
    // read; a chunked body is refused once it passes the limit (1 MiB
    // here). Raw sockets: an HTTP client still writing its 8 MB would not
    // read the early answer.
    let addr = ingest.addr;
    let answer = raw_exchange(
        addr,
        &[
            b"POST /api/v1/health HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8388608\r\n\r\n{{{{",
        ],
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.contains("too_large"),
        "{answer}"
    );
    let chunk = vec![b'{'; 64 * 1024];
    let chunk_frame = [
        format!("{:x}\r\n", chunk.len()).into_bytes(),
        chunk,
        b"\r\n".to_vec(),
    ]
    .concat();
    let mut parts: Vec<&[u8]> = vec![b"POST /api/v1/health HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"];
    parts.extend(std::iter::repeat_n(chunk_frame.as_slice(), 17));
    let answer = raw_exchange(addr, &parts).await;
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.contains("too_large"),
        "{answer}"
    );

    // A 10 000-line batch is refused whole (within the body limit: short
    // lines); a batch with one bad line keeps the rest.
    let lines: String = (0..10_000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let (s, _, v) = post(&http, &url, ndjson, lines).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("too_many_records")),
        "{v}"
    );
    let batch_node = unique("batch");
    let batch = format!(
        "{}\n{{\"schema_version\":1,\"seq\":\"x\"}}\n{}\n",
        report(&batch_node, 1),
        report(&batch_node, 2)
    );
    let (s, _, v) = post(&http, &url, ndjson, batch).await;
    assert_eq!(s, 400, "{v}");
    let statuses: Vec<i64> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, vec![200, 400, 200], "{v}");
    assert_eq!(
        (v["accepted"].as_u64(), v["refused"].as_u64()),
        (Some(2), Some(1))
    );
    accepted += 2;

    // Slow-loris: headers never finished → closed; a body that trickles →
    // 408.
    let t = Instant::now();
    let mut s1 = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s1.write_all(b"POST /api/v1/health HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s1.read(&mut buf))
        .await
        .expect("the gateway closes a connection whose headers never end")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let mut s2 = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s2.write_all(
        b"POST /api/v1/health HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"schema",
    )
    .await
    .expect("write");
    let n = tokio::time::timeout(Duration::from_secs(10), s2.read(&mut buf))
        .await
        .expect("the gateway answers a trickling body")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");

    // A flood from one node id: the burst passes, the rest is 429 with
    // Retry-After, counted.
    let flooder = unique("flood");
    let (mut ok, mut limited) = (0u64, 0u64);
    let flood_start = Instant::now();
    for seq in 1..=40 {
        let (s, retry, v) = post(&http, &url, json, report(&flooder, seq)).await;
        match s {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s >= 1)));
                assert_eq!(v["results"][0]["code"], "rate_limited", "{v}");
            }
            other => panic!("flood answered {other}: {v}"),
        }
    }
    // The burst (10), plus 2/s for as long as the flood lasted.
    let most = 10 + 2 * flood_start.elapsed().as_secs() + 2;
    assert!(
        ok >= 10 && ok <= most && limited == 40 - ok && limited > 0,
        "{ok} accepted (at most {most}), {limited} limited"
    );
    accepted += ok;
    let counted = ingest
        .metric("weir_ingest_records_total{outcome=\"rate_limited\"")
        .await;
    assert_eq!(counted, limited as f64);

    // What reached the topic: exactly the accepted records, each one the
    // consumers accept.
    let records = read_topic(
        &world.stack.kafka,
        &world.topics.health,
        Duration::from_secs(3),
    );
    assert_eq!(records.len() as u64, accepted);
    for r in &records {
        weir_schemas::decode::<HealthEvent>(Some(&r.payload))
            .expect("a record the consumers accept");
    }
    let rss = ingest.proc.peak_rss();
    assert!(rss < 200 * 1024 * 1024, "peak RSS {rss} bytes");
}

#[test]
fn a_public_ingest_address_needs_an_explicit_acknowledgement() {
    let (code, out) = weir_config(&[], &[("WEIR_INGEST_ADDR", "0.0.0.0:8095")]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("ingest.addr") && out.contains("allow_unauthenticated_remote"),
        "{out}"
    );
    let (code, out) = weir_config(
        &[],
        &[
            ("WEIR_INGEST_ADDR", "0.0.0.0:8095"),
            ("WEIR_INGEST_ALLOW_UNAUTHENTICATED_REMOTE", "true"),
        ],
    );
    assert_eq!(code, 0, "{out}");
}
