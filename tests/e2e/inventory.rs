//! The server inventory (issue 12, M1) against the local stack: CRUD with
//! its status codes and problem+json bodies, admin tokens on every write,
//! 50 concurrent read-modify-write clients that lose no update, a
//! decommissioned node leaving the fleet while the health group refuses
//! its reports, and hostile input answered with a clear 4xx.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH, LOCATION};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use weir_testkit::{eventually, free_addr, unique, Proc, TestWorld};

use crate::auth::Keys;
use crate::{answer, client, get_json, weir, weir_output, Center};

const MERGE: &str = "application/merge-patch+json";

/// A center with its own key file, and an admin and a read token.
struct Api {
    center: Center,
    http: Client,
    admin: String,
    read: String,
    _keys: Keys,
}

impl Api {
    async fn start(world: &TestWorld) -> Api {
        let keys = Keys::new(&[]);
        let mut env = world.env_with(&[("WEIR_METRICS_ADDR", "")]);
        env.push(keys.env());
        let center = Center::start(&env).await;
        let readyz = format!("http://{}/readyz", center.addr);
        eventually(Duration::from_secs(30), "center ready", || {
            let u = readyz.clone();
            async move { get_json(&u).await.filter(|(s, _)| *s == 200) }
        })
        .await;
        let (admin, _) = keys.token("ops", "admin", "30m");
        let (read, _) = keys.token("viewer", "read", "30m");
        Api {
            center,
            http: client(Duration::from_secs(30)),
            admin,
            read,
            _keys: keys,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.center.addr)
    }

    fn server(&self, id: &str) -> String {
        self.url(&format!("/api/v1/servers/{id}"))
    }

    async fn create(&self, body: Value) -> Response {
        answer(
            self.http
                .post(self.url("/api/v1/servers"))
                .bearer_auth(&self.admin)
                .json(&body),
        )
        .await
    }

    async fn patch(&self, id: &str, etag: Option<&str>, body: &Value) -> Response {
        let mut req = self
            .http
            .patch(self.server(id))
            .bearer_auth(&self.admin)
            .header(CONTENT_TYPE, MERGE)
            .body(body.to_string());
        if let Some(e) = etag {
            req = req.header(IF_MATCH, e);
        }
        answer(req).await
    }

    async fn get(&self, id: &str) -> (StatusCode, Option<String>, Value) {
        let r = answer(self.http.get(self.server(id))).await;
        let etag = r
            .headers()
            .get(ETAG)
            .map(|v| v.to_str().expect("ascii").to_string());
        let status = r.status();
        (status, etag, r.json().await.unwrap_or(Value::Null))
    }

    async fn list(&self, query: &str) -> (StatusCode, Value) {
        let r = answer(self.http.get(self.url(&format!("/api/v1/servers?{query}")))).await;
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
}

/// The problem+json body of a refusal, checked for its shape.
async fn problem(r: Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status, "{:?}", r.headers());
    assert_eq!(
        r.headers()[CONTENT_TYPE],
        "application/problem+json",
        "{status}"
    );
    let body: Value = r.json().await.expect("problem+json body");
    assert_eq!(body["status"], status, "{body}");
    for k in ["type", "title", "detail"] {
        assert!(body[k].is_string(), "{k} in {body}");
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_with_versions_tokens_and_problems() {
    let world = TestWorld::create(1).await;
    let api = Api::start(&world).await;
    let id = unique("inv-crud");

    // Writes need an admin token; reads are open (auth.protect_reads off).
    let body = json!({"id": id, "name": "Paris 1", "owner": "cdn-ops", "tags": ["edge", "paris"]});
    let r = answer(api.http.post(api.url("/api/v1/servers")).json(&body)).await;
    assert!(r.headers().contains_key("www-authenticate"));
    let p = problem(r, 401).await;
    assert_eq!(p["field"], "Authorization", "{p}");
    let r = answer(
        api.http
            .post(api.url("/api/v1/servers"))
            .bearer_auth(&api.read)
            .json(&body),
    )
    .await;
    problem(r, 403).await;
    for (m, url) in [
        (reqwest::Method::PATCH, api.server(&id)),
        (reqwest::Method::DELETE, api.server(&id)),
    ] {
        let r = answer(api.http.request(m.clone(), &url).bearer_auth(&api.read)).await;
        assert_eq!(r.status(), 403, "{m} with a read token");
        let r = answer(api.http.request(m.clone(), &url)).await;
        assert_eq!(r.status(), 401, "{m} without a token");
    }

    // 201 + Location + ETag.
    let r = api.create(body.clone()).await;
    assert_eq!(r.status(), 201);
    let location = r.headers()[LOCATION].to_str().expect("ascii").to_string();
    assert_eq!(location, format!("/api/v1/servers/{id}"));
    assert_eq!(r.headers()[ETAG], "\"1\"");
    let created: Value = r.json().await.expect("json");
    assert_eq!(created["status"], "active", "{created}");
    assert_eq!(created["health"], Value::Null, "never reported: {created}");
    // Twice: 409, naming the id.
    let p = problem(api.create(body.clone()).await, 409).await;
    assert_eq!(p["field"], "id", "{p}");

    // 200 + ETag; 304 when it is the one the client has.
    let r = answer(api.http.get(api.url(&location))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[ETAG], "\"1\"");
    let r = answer(api.http.get(api.server(&id)).header(IF_NONE_MATCH, "\"1\"")).await;
    assert_eq!(r.status(), 304);
    let r = answer(api.http.get(api.server(&id)).header(IF_NONE_MATCH, "\"7\"")).await;
    assert_eq!(r.status(), 200);

    // PATCH: 428 without If-Match, 412 when stale, 415 for plain JSON.
    let change = json!({"location": "PAR-3 rack 12", "owner": null, "tags": ["edge"]});
    let p = problem(api.patch(&id, None, &change).await, 428).await;
    assert_eq!(p["field"], "If-Match", "{p}");
    let p = problem(api.patch(&id, Some("\"0\""), &change).await, 412).await;
    assert_eq!(p["field"], "If-Match", "{p}");
    let r = answer(
        api.http
            .patch(api.server(&id))
            .bearer_auth(&api.admin)
            .header(IF_MATCH, "\"1\"")
            .json(&change),
    )
    .await;
    problem(r, 415).await;
    // The merge patch applies: set, remove (null), replace the list.
    let r = api.patch(&id, Some("\"1\""), &change).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[ETAG], "\"2\"");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["location"], "PAR-3 rack 12", "{v}");
    assert_eq!(v["owner"], Value::Null, "{v}");
    assert_eq!(v["name"], "Paris 1", "untouched: {v}");
    assert_eq!(v["tags"], json!(["edge"]), "{v}");
    assert_eq!(v["version"], 2, "{v}");
    // The old ETag is stale now.
    problem(
        api.patch(&id, Some("\"1\""), &json!({"notes": "x"})).await,
        412,
    )
    .await;

    // 404, as a problem.
    problem(
        answer(api.http.get(api.server("no-such-server"))).await,
        404,
    )
    .await;
    problem(
        api.patch("no-such-server", Some("\"1\""), &json!({"notes": "x"}))
            .await,
        404,
    )
    .await;

    // DELETE decommissions and keeps the record.
    let r = answer(
        api.http
            .delete(api.server(&id))
            .bearer_auth(&api.admin)
            .header(IF_MATCH, "\"2\""),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[ETAG], "\"3\"");
    let (s, _, v) = api.get(&id).await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "decommissioned", "{v}");
    assert!(v["decommissioned_at"].is_string(), "{v}");
    let (s, page) = api.list("status=decommissioned").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = page["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, [id.as_str()], "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_search_sort_and_page() {
    let world = TestWorld::create(1).await;
    let api = Api::start(&world).await;
    let run = unique("inv-list");
    // 7 servers: names in reverse order of ids, every other one tagged.
    for i in 0..7 {
        let mut body = json!({"id": format!("{run}-{i}"), "name": format!("srv {}", 9 - i)});
        if i % 2 == 0 {
            body["tags"] = json!(["even", "fleet"]);
        }
        if i == 3 {
            body["notes"] = json!("has 100%_real disk");
        }
        assert_eq!(api.create(body).await.status(), 201);
    }

    // Every page of 2 in name order, then descending: all 7, once each.
    for (sort, expect_first) in [("name", 6), ("-name", 0), ("id", 0), ("-created_at", 6)] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut q = format!("limit=2&sort={sort}");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let (s, page) = api.list(&q).await;
            assert_eq!(s, 200, "{page}");
            pages += 1;
            for srv in page["servers"].as_array().expect("servers") {
                seen.push(srv["id"].as_str().expect("id").to_string());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(pages, 4, "sort={sort}");
        let mut unique_ids = seen.clone();
        unique_ids.sort();
        unique_ids.dedup();
        assert_eq!(unique_ids.len(), 7, "sort={sort}: {seen:?}");
        assert_eq!(seen[0], format!("{run}-{expect_first}"), "sort={sort}");
    }

    // Filters: a tag, a search (wildcards taken literally), a status.
    let (_, page) = api.list("tag=even&limit=500").await;
    assert_eq!(
        page["servers"].as_array().expect("servers").len(),
        4,
        "{page}"
    );
    let (_, page) = api.list("q=100%25_REAL").await;
    let hits = page["servers"].as_array().expect("servers");
    assert_eq!(hits.len(), 1, "{page}");
    assert_eq!(hits[0]["id"], format!("{run}-3"));
    let (_, page) = api.list("q=1%25_real").await;
    assert_eq!(page["servers"], json!([]), "{page}");
    let (_, page) = api.list("status=decommissioned").await;
    assert_eq!(page["servers"], json!([]), "{page}");

    // A cursor is bound to its sort.
    let (_, page) = api.list("limit=1&sort=name").await;
    let c = page["next_cursor"].as_str().expect("cursor").to_string();
    let r = answer(
        api.http
            .get(api.url(&format!("/api/v1/servers?sort=id&cursor={c}"))),
    )
    .await;
    let p = problem(r, 400).await;
    assert_eq!(p["field"], "cursor", "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_read_modify_write_clients_lose_no_update() {
    let world = TestWorld::create(1).await;
    let api = Arc::new(Api::start(&world).await);
    let id = unique("inv-race");
    let r = api.create(json!({"id": id, "notes": "0"})).await;
    assert_eq!(r.status(), 201);

    let conflicts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (api, id, conflicts) = (api.clone(), id.clone(), conflicts.clone());
        tasks.push(tokio::spawn(async move {
            for _attempt in 0..1000 {
                let (s, etag, v) = api.get(&id).await;
                assert_eq!(s, 200, "{v}");
                let n: u64 = v["notes"]
                    .as_str()
                    .expect("notes")
                    .parse()
                    .expect("a count");
                let r = api
                    .patch(&id, etag.as_deref(), &json!({"notes": (n + 1).to_string()}))
                    .await;
                match r.status().as_u16() {
                    200 => return,
                    412 => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("PATCH answered {other}: {:?}", r.text().await),
                }
            }
            panic!("no write succeeded in 1000 attempts");
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let (_, etag, v) = api.get(&id).await;
    assert_eq!(v["notes"], "50", "every increment counted once: {v}");
    assert_eq!(etag.as_deref(), Some("\"51\""));
    // Losers were told (412) and retried, rather than overwriting.
    let lost_races = conflicts.load(Ordering::Relaxed);
    assert!(lost_races > 0, "50 concurrent writers never collided");
    eprintln!("50 writers: {lost_races} answers 412, retried");
}

/// Writes `parts` to `addr` (stopping quietly when the server stops
/// reading) and reads the answer until the server closes or stops sending
/// for a second.
async fn raw_exchange(addr: std::net::SocketAddr, parts: &[&[u8]]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    for p in parts {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(p)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sum of the samples of `/metrics` at `url` whose line starts with
/// `prefix`.
async fn metric(url: &str, prefix: &str) -> f64 {
    let text = match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return 0.0,
    };
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn fleet_ids(api: &Api) -> Vec<String> {
    let (_, fleet) = get_json(&api.url("/api/v1/fleet")).await.expect("fleet");
    let mut ids: Vec<String> = ["healthy", "unhealthy"]
        .iter()
        .flat_map(|k| fleet[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let (_, nodes) = get_json(&api.url("/api/v1/nodes")).await.expect("nodes");
    ids.extend(
        nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["node_id"].as_str().map(|s| format!("nodes:{s}"))),
    );
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_node_leaves_the_fleet_and_its_reports_are_refused() {
    let world = TestWorld::create(1).await;
    let api = Api::start(&world).await;
    let metrics = free_addr();
    let consumer_env = world.env_with(&[("WEIR_METRICS_ADDR", &metrics.to_string())]);
    let mut consumer = Proc::spawn("consumer", weir(), &["consume", "health"], &consumer_env);
    let node = unique("inv-node");
    let other = unique("inv-other");
    let agent_env = world.env_with(&[("WEIR_METRICS_ADDR", "")]);
    let mut agents: Vec<Proc> = [&node, &other]
        .iter()
        .map(|n| {
            Proc::spawn(
                "agent",
                weir(),
                &["agent", "--interval", "200ms", "--node-id", n],
                &agent_env,
            )
        })
        .collect();

    eventually(
        Duration::from_secs(60),
        "both nodes in the fleet",
        || async {
            let ids = fleet_ids(&api).await;
            (ids.contains(&node) && ids.contains(&other)).then_some(())
        },
    )
    .await;
    // Reporting makes it visible in the inventory, unregistered (version 0),
    // with what the health group measured.
    let (s, etag, v) = api.get(&node).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(etag.as_deref(), Some("\"0\""), "{v}");
    assert!(v["health"]["last_seen"].is_string(), "{v}");
    // An operator's write creates its record beside the health group's.
    let r = api
        .patch(&node, Some("\"0\""), &json!({"owner": "cdn-ops"}))
        .await;
    assert_eq!(r.status(), 200);

    let r = answer(api.http.delete(api.server(&node)).bearer_auth(&api.admin)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["status"], "decommissioned", "{v}");
    assert_eq!(v["owner"], "cdn-ops", "operator fields kept: {v}");

    // Out of the fleet and the nodes list at once, and it stays out while
    // its agent keeps reporting; the other node stays in.
    let url = format!("http://{metrics}/metrics");
    let refused = "weir_health_reports_refused_total{reason=\"decommissioned\"}";
    let before = metric(&url, refused).await;
    for _ in 0..10 {
        let ids = fleet_ids(&api).await;
        assert!(!ids.contains(&node), "{node} back in {ids:?}");
        assert!(!ids.contains(&format!("nodes:{node}")), "{ids:?}");
        assert!(ids.contains(&other), "{ids:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eventually(Duration::from_secs(20), "refused reports counted", || {
        let url = url.clone();
        async move { (metric(&url, refused).await > before).then_some(()) }
    })
    .await;
    // Nothing of its reports is written any more.
    let pool = world.db.pool().await;
    let reports = || async {
        sqlx::query_scalar::<_, i64>("SELECT reports FROM servers WHERE node_id = $1")
            .bind(&node)
            .fetch_one(&pool)
            .await
            .expect("reports")
    };
    let first = reports().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        reports().await,
        first,
        "reports written after decommissioning"
    );
    // A second DELETE is harmless.
    let r = answer(api.http.delete(api.server(&node)).bearer_auth(&api.admin)).await;
    assert_eq!(r.status(), 200);

    for a in &mut agents {
        a.kill9();
    }
    consumer.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_a_clear_4xx_never_a_500() {
    let world = TestWorld::create(1).await;
    let api = Api::start(&world).await;
    let id = unique("inv-hostile");
    assert_eq!(api.create(json!({"id": id})).await.status(), 201);

    // Bodies: each refused with its status, naming the field when there
    // is one.
    let post = |body: Vec<u8>| {
        answer(
            api.http
                .post(api.url("/api/v1/servers"))
                .bearer_auth(&api.admin)
                .header(CONTENT_TYPE, "application/json")
                .body(body),
        )
    };
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("a body just over 64 KiB", vec![b' '; 65 * 1024], 413, None),
        (
            "NUL in name",
            json!({"id": unique("h"), "name": "a\u{0}b"})
                .to_string()
                .into_bytes(),
            400,
            Some("name"),
        ),
        (
            "10 000 tags",
            json!({"id": unique("h"), "tags": vec!["t"; 10_000]})
                .to_string()
                .into_bytes(),
            400,
            Some("tags"),
        ),
        (
            "a tag too long",
            json!({"id": unique("h"), "tags": ["x".repeat(65)]})
                .to_string()
                .into_bytes(),
            400,
            Some("tags[0]"),
        ),
        (
            "wrong type",
            json!({"id": unique("h"), "name": 42})
                .to_string()
                .into_bytes(),
            400,
            Some("name"),
        ),
        (
            "id of the wrong type",
            json!({"id": 1e300}).to_string().into_bytes(),
            400,
            Some("id"),
        ),
        (
            "overflowing number",
            format!("{{\"id\": \"{}\", \"name\": 1e999}}", unique("h")).into_bytes(),
            400,
            None,
        ),
        (
            "unknown field",
            json!({"id": unique("h"), "weight": 3})
                .to_string()
                .into_bytes(),
            400,
            Some("weight"),
        ),
        (
            "control character in notes",
            json!({"id": unique("h"), "notes": "ok\u{1b}[31m"})
                .to_string()
                .into_bytes(),
            400,
            Some("notes"),
        ),
        (
            "notes too long",
            json!({"id": unique("h"), "notes": "n".repeat(5000)})
                .to_string()
                .into_bytes(),
            400,
            Some("notes"),
        ),
        ("not JSON", b"{\"id\": ".to_vec(), 400, None),
        ("an array", b"[1, 2]".to_vec(), 400, None),
        (
            "deeply nested",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            400,
            None,
        ),
        ("empty", Vec::new(), 400, None),
    ];
    for (what, body, status, field) in cases {
        let p = problem(post(body).await, status).await;
        if let Some(f) = field {
            assert_eq!(p["field"], f, "{what}: {p}");
        }
    }
    // A chunked body of 1 MiB is refused once it passes the limit. A raw
    // socket: an HTTP client still writing its body would not read the
    // early answer.
    let head = format!(
        "POST /api/v1/servers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        api.admin
    );
    let chunk = vec![b' '; 64 * 1024];
    let frame = [
        format!("{:x}\r\n", chunk.len()).into_bytes(),
        chunk,
        b"\r\n".to_vec(),
    ]
    .concat();
    let mut parts: Vec<&[u8]> = vec![head.as_bytes()];
    parts.extend(std::iter::repeat_n(frame.as_slice(), 16));
    let raw = raw_exchange(api.center.addr, &parts).await;
    assert!(
        raw.starts_with("HTTP/1.1 413") && raw.contains("application/problem+json"),
        "{raw}"
    );

    // The same checks on a merge patch.
    let p = problem(
        api.patch(&id, Some("\"1\""), &json!({"name": "x\u{0}"}))
            .await,
        400,
    )
    .await;
    assert_eq!(p["field"], "name", "{p}");
    let p = problem(
        api.patch(&id, Some("\"1\""), &json!({"status": "active"}))
            .await,
        400,
    )
    .await;
    assert_eq!(p["field"], "status", "{p}");
    problem(api.patch(&id, Some("\"1\""), &json!([1])).await, 400).await;
    let p = problem(api.patch(&id, Some("3"), &json!({"notes": "x"})).await, 400).await;
    assert_eq!(p["field"], "If-Match", "{p}");
    // Nothing of it was written.
    let (_, etag, _) = api.get(&id).await;
    assert_eq!(etag.as_deref(), Some("\"1\""));

    // Query parameters.
    let bad_queries = [
        ("limit=1e999", "limit"),
        ("limit=0", "limit"),
        ("limit=-5", "limit"),
        ("limit=99999999999999999999999", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=%00%01", "cursor"),
        ("sort=weight", "sort"),
        ("sort=id;DROP%20TABLE%20servers", "sort"),
        ("status=up", "status"),
        ("q=a%00b", "q"),
        ("colour=red", "colour"),
    ];
    for (q, field) in bad_queries {
        let r = answer(api.http.get(api.url(&format!("/api/v1/servers?{q}")))).await;
        let p = problem(r, 400).await;
        assert_eq!(p["field"], field, "{q}: {p}");
    }
    let long = "c".repeat(5000);
    let r = answer(
        api.http
            .get(api.url(&format!("/api/v1/servers?cursor={long}"))),
    )
    .await;
    problem(r, 400).await;
    // A control character in the id of the path.
    let r = answer(api.http.get(api.url("/api/v1/servers/a%00b"))).await;
    let p = problem(r, 400).await;
    assert_eq!(p["field"], "id", "{p}");
    // The center still answers.
    let (s, _, _) = api.get(&id).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_shows_patches_and_removes() {
    let world = TestWorld::create(1).await;
    let api = Api::start(&world).await;
    let id = unique("inv-cli");
    let center = format!("http://{}", api.center.addr);
    let run = |args: &[&str], token: &str| {
        let mut all = vec!["servers", "--center", center.as_str(), "--token", token];
        all.extend_from_slice(args);
        let out = weir_output(&all, [("WEIR_LOG_LEVEL", "warn")]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let body = json!({"id": id, "name": "cli 1"}).to_string();
    let (code, _, err) = run(&["add", &body], &api.read);
    assert_ne!(code, Some(0));
    assert!(err.contains("403"), "{err}");
    let (code, out, err) = run(&["add", &body], &api.admin);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"version\":1"), "{out}");
    let (code, _, err) = run(&["show", &id], &api.read);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("ETag \"1\""), "{err}");
    let (code, _, err) = run(
        &["patch", &id, "--if-match", "1", r#"{"name":"a\u0000"}"#],
        &api.admin,
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("field name"), "{err}");
    let (code, out, err) = run(
        &["patch", &id, "--if-match", "1", r#"{"owner":"ops"}"#],
        &api.admin,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"owner\":\"ops\""), "{out}");
    let (code, _, err) = run(&["rm", &id], &api.admin);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run(&["list", "status=decommissioned"], &api.read);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&id), "{out}");
}
