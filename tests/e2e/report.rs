//! The daily uptime report (issue 12, R1) against real Kafka, PostgreSQL and
//! a real SMTP server (Debian's python3-aiosmtpd, one private server per
//! test, `smtp_sink.py`): a manual request mails each recipient once with
//! the uptime API's figures; admin only; hostile bodies refused naming the
//! field; and 400-odd days on a fast test clock in Europe/Berlin (two DST
//! changes) with two schedulers and a mailer killed with SIGKILL during
//! sends mail each day once; a relay that is down gets the mail once it is
//! back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use weir_schemas::{HealthEvent, IpAddresses, LoadAverage};
use weir_testkit::{eventually, free_addr, repo_root, unique, Proc, TestWorld};

use crate::{answer, client, weir, weir_ok, weir_output, Center};

/// A private SMTP server writing each accepted message as JSON.
struct Smtp {
    addr: SocketAddr,
    dir: PathBuf,
    proc: Proc,
}

/// One message the server accepted.
#[derive(Debug, Clone)]
struct Mail {
    rcpt: Vec<String>,
    message_id: String,
    subject: String,
    content_type: String,
    text: String,
    html: String,
}

impl Smtp {
    /// Starts the server; `delay_ms` between saving a message and its 250.
    async fn start(delay_ms: u64) -> Smtp {
        Self::start_on(free_addr(), delay_ms).await
    }

    /// [`Smtp::start`] on a given address.
    async fn start_on(addr: SocketAddr, delay_ms: u64) -> Smtp {
        let dir = std::env::temp_dir().join(unique("weir-smtp"));
        let script = repo_root().join("tests/e2e/smtp_sink.py");
        let proc = Proc::spawn(
            "smtp",
            // Debian's python3, which has python3-aiosmtpd (a pyenv one may not).
            std::path::Path::new("/usr/bin/python3"),
            &[
                script.to_str().expect("utf-8"),
                &addr.port().to_string(),
                dir.to_str().expect("utf-8"),
                "--delay-ms",
                &delay_ms.to_string(),
            ],
            &[],
        );
        eventually(
            Duration::from_secs(20),
            "SMTP server listening",
            || async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
        )
        .await;
        Smtp { addr, dir, proc }
    }

    fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    fn mails(&self) -> Vec<Mail> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| Mail {
                rcpt: v["rcpt"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect(),
                message_id: v["message_id"].as_str().unwrap_or_default().to_string(),
                subject: v["subject"].as_str().unwrap_or_default().to_string(),
                content_type: v["content_type"].as_str().unwrap_or_default().to_string(),
                text: v["text"].as_str().unwrap_or_default().to_string(),
                html: v["html"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.proc.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A key file of the test's own and an admin token from it.
fn admin_token(dir: &std::path::Path) -> ((String, String), String) {
    let file = dir.join("keys.json");
    let f = file.to_str().expect("utf-8");
    weir_ok(
        &["auth", "keygen", "--key-file", f],
        [("WEIR_LOG_LEVEL", "warn")],
    );
    let out = weir_output(
        &["auth", "token", "--subject", "report-e2e", "--ttl", "15m"],
        [("WEIR_AUTH_KEY_FILE", f)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("token line")
        .to_string();
    (("WEIR_AUTH_KEY_FILE".into(), f.to_string()), token)
}

fn event(node: &str, seq: u64, ts: DateTime<Utc>) -> HealthEvent {
    HealthEvent {
        schema_version: 1,
        node_id: node.into(),
        agent_id: format!("{node}-agent"),
        seq,
        ts,
        interval_ms: 1000,
        service: "cdn".into(),
        endpoint: format!("http://{node}.example:8080"),
        cdn_type: "edge".into(),
        cores: 4,
        memory_total_mb: 8192,
        memory_free_mb: 4096,
        load_avg: LoadAverage {
            one: 0.5,
            five: 0.4,
            fifteen: 0.3,
        },
        cpu_usage_pct: 12.5,
        interfaces: Vec::new(),
        ips: IpAddresses::default(),
        uptime_secs: seq,
    }
}

/// Health reports of `day` (every second of the given minute ranges, per
/// node) on the world's health topic, then `weir consume health` until
/// PostgreSQL holds them all.
async fn health_history(world: &TestWorld, day: NaiveDate, plan: &[(&str, &[(u32, u32)])]) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &world.stack.kafka)
        .create()
        .expect("producer");
    let midnight = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let mut total = 0i64;
    for (node, ranges) in plan {
        let mut seq = 0;
        for &(from_min, to_min) in *ranges {
            for s in (from_min * 60)..(to_min * 60) {
                seq += 1;
                let ev = event(node, seq, midnight + chrono::Duration::seconds(s as i64));
                let payload = serde_json::to_vec(&ev).expect("json");
                producer
                    .send(
                        FutureRecord::to(&world.topics.health)
                            .key(*node)
                            .payload(&payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("produced");
                total += 1;
            }
        }
    }
    let mut consumer = Proc::spawn(
        "consume-health",
        weir(),
        &["consume", "health"],
        &world.env(),
    );
    let pool = world.db.pool().await;
    eventually(
        Duration::from_secs(60),
        "health history in PostgreSQL",
        || {
            let pool = pool.clone();
            async move {
                let n: Option<i64> = sqlx::query_scalar("SELECT sum(reports)::bigint FROM servers")
                    .fetch_one(&pool)
                    .await
                    .ok()
                    .flatten();
                (n == Some(total)).then_some(())
            }
        },
    )
    .await;
    consumer.terminate(Duration::from_secs(15));
}

/// `node <id> uptime <pct> covered <c> s of <o> s` lines of a mail's text.
fn node_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("node "))
        .filter_map(|l| {
            let (id, rest) = l.split_once(' ')?;
            let figures = rest.split(" reports").next()?.to_string();
            Some((id.to_string(), figures))
        })
        .collect()
}

#[tokio::test]
async fn a_manual_report_mails_each_recipient_once_with_the_uptime_apis_figures() {
    let world = TestWorld::create(1).await;
    let smtp = Smtp::start(0).await;
    let keydir = std::env::temp_dir().join(unique("weir-report-keys"));
    let (key_env, token) = admin_token(&keydir);
    // Two days ago (UTC), so the day is over and its figures final.
    let day = Utc::now().date_naive() - chrono::Duration::days(2);
    health_history(
        &world,
        day,
        &[
            ("node-a", &[(600, 610), (620, 630)]),
            ("node-b", &[(600, 630)]),
        ],
    )
    .await;
    let mut env = world.env();
    env.push(key_env);
    env.push(("WEIR_MAIL_SMTP_URL".into(), smtp.url()));
    env.push(("WEIR_MAIL_FROM".into(), "weir-report@example.com".into()));
    env.push(("WEIR_MAIL_POLL".into(), "200ms".into()));
    let center = Center::start(&env).await;
    let _mail = Proc::spawn("mail", weir(), &["mail"], &env);
    let http = client(Duration::from_secs(15));
    let url = format!("http://{}/api/v1/reports", center.addr);
    let body =
        json!({"day": day.to_string(), "recipients": ["ops@example.com", "noc@example.org"]});

    // Admin only.
    let r = answer(http.post(&url).json(&body)).await;
    assert_eq!(r.status(), 401, "without a token");

    // Hostile bodies: a clear 4xx naming the field.
    let many: Vec<String> = (0..60).map(|i| format!("u{i}@example.com")).collect();
    let huge: Vec<String> = (0..20_000)
        .map(|i| format!("user{i}@example.com"))
        .collect();
    let hostile = [
        (
            json!({"day": day.to_string(), "recipients": many}),
            "recipients",
        ),
        (
            json!({"day": day.to_string(), "recipients": ["not-an-address"]}),
            "recipients[0]",
        ),
        (
            json!({"day": day.to_string(), "recipients": ["ops\u{0}@example.com"]}),
            "recipients[0]",
        ),
        (
            json!({"day": day.to_string(), "recipients": ["a@b.c", "<x>@b.c"]}),
            "recipients[1]",
        ),
        (json!({"day": "2026-13-45", "recipients": ["a@b.c"]}), "day"),
        (json!({"day": "1066-10-14", "recipients": ["a@b.c"]}), "day"),
        (
            json!({"day": "9999999-01-01", "recipients": ["a@b.c"]}),
            "day",
        ),
        (
            json!({"from": "2026-01-01", "to": "2026-12-01", "recipients": ["a@b.c"]}),
            "to",
        ),
        (
            json!({"day": day.to_string(), "tz": "Mars/Olympus", "recipients": ["a@b.c"]}),
            "tz",
        ),
        (
            json!({"day": day.to_string(), "recipients": ["a@b.c"], "bcc": ["x@y.z"]}),
            "bcc",
        ),
        (json!({"day": day.to_string(), "recipients": huge}), "body"),
    ];
    for (bad, field) in hostile {
        // A client of its own: the server closes a connection whose body it
        // refused unread (413), and a pooled one would be reused after it.
        let once = client(Duration::from_secs(15));
        let r = answer(once.post(&url).bearer_auth(&token).json(&bad)).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert!((400..500).contains(&status), "{field}: {status} {text}");
        assert!(text.contains(field), "{field}: {status} {text}");
    }

    // The request: 202 with its id, then one mail per recipient.
    let r = answer(http.post(&url).bearer_auth(&token).json(&body)).await;
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.expect("json");
    let id = accepted["request_id"]
        .as_str()
        .expect("request_id")
        .to_string();
    let mails = eventually(Duration::from_secs(60), "two mails", || {
        let m = smtp.mails();
        async move { (m.len() >= 2).then_some(m) }
    })
    .await;
    // And no more come.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(smtp.mails().len(), 2, "{mails:#?}");
    let rcpts: BTreeSet<String> = mails.iter().flat_map(|m| m.rcpt.clone()).collect();
    assert_eq!(
        rcpts,
        BTreeSet::from(["ops@example.com".to_string(), "noc@example.org".to_string()])
    );
    let ids: BTreeSet<&str> = mails.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "a Message-ID per recipient");
    assert!(ids.iter().all(|i| i.contains(&id)), "{ids:?} from {id}");
    for m in &mails {
        assert_eq!(m.content_type, "multipart/alternative");
        assert!(m.subject.contains(&day.to_string()), "{}", m.subject);
        assert!(m.html.contains("<table") && m.html.contains("node-a"));
        assert!(m.text.contains("outage "), "{}", m.text);
    }

    // The figures equal the uptime API's for that day.
    let from = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let to = from + chrono::Duration::days(1);
    let api: Value = answer(http.get(format!(
        "http://{}/api/v1/uptime?from={}&to={}",
        center.addr,
        from.format("%Y-%m-%dT%H:%M:%SZ"),
        to.format("%Y-%m-%dT%H:%M:%SZ")
    )))
    .await
    .json()
    .await
    .expect("uptime json");
    let want: BTreeMap<String, String> = api["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            let pct = n["uptime"]
                .as_f64()
                .map_or("n/a".to_string(), |u| format!("{:.3}%", u * 100.0));
            (
                n["node_id"].as_str().expect("id").to_string(),
                format!(
                    "uptime {pct} covered {:.3} s of {:.3} s",
                    n["covered_secs"].as_f64().expect("covered"),
                    n["observed_secs"].as_f64().expect("observed")
                ),
            )
        })
        .collect();
    assert_eq!(want.len(), 2, "{api}");
    for m in &mails {
        assert_eq!(node_lines(&m.text), want, "{}", m.text);
    }

    // `weir report send` makes one more mail, to its --to.
    let out = weir_ok(
        &[
            "report",
            "send",
            "--day",
            &day.to_string(),
            "--to",
            "cli@example.net",
        ],
        env.clone(),
    );
    assert!(out.trim().starts_with("manual-"), "{out}");
    eventually(Duration::from_secs(60), "the CLI's mail", || {
        let m = smtp.mails();
        async move {
            m.iter()
                .any(|m| m.rcpt == ["cli@example.net"])
                .then_some(())
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&keydir);
}

/// 400-odd days on a test clock running 10 days a second, in Europe/Berlin
/// at 02:30 (a local time that does not exist once a year and exists twice
/// once a year), with two schedulers and a mailer killed with SIGKILL every
/// few seconds: each day is mailed to each recipient under exactly one
/// Message-ID, and a second copy of a Message-ID only where a kill fell
/// between the relay's acceptance and the mailer's record of it.
#[tokio::test]
async fn a_year_of_days_with_dst_two_schedulers_and_killed_mailers_mails_each_day_once() {
    let started = Instant::now();
    let world = TestWorld::create(1).await;
    // The relay waits 10 ms after saving before its 250: kills land there.
    let smtp = Smtp::start(10).await;
    let epoch_ms = (Utc::now() + chrono::Duration::seconds(2)).timestamp_millis();
    let fake_start = "2025-01-01T00:00:00Z";
    let speed = 864_000.0; // 10 days per second
    let mut env = world.env();
    env.extend(
        [
            ("WEIR_REPORT_SCHEDULE", "true".to_string()),
            ("WEIR_REPORT_TZ", "Europe/Berlin".into()),
            ("WEIR_REPORT_AT", "02:30".into()),
            (
                "WEIR_REPORT_RECIPIENTS",
                "ops@example.com,noc@example.org".into(),
            ),
            ("WEIR_REPORT_TICK", "20ms".into()),
            ("WEIR_REPORT_FAKE_START", fake_start.into()),
            ("WEIR_REPORT_FAKE_EPOCH_MS", epoch_ms.to_string()),
            ("WEIR_REPORT_FAKE_SPEED", speed.to_string()),
            ("WEIR_MAIL_SMTP_URL", smtp.url()),
            ("WEIR_MAIL_TIMEOUT", "1s".into()),
            ("WEIR_MAIL_LEASE", "2s".into()),
            ("WEIR_MAIL_POLL", "100ms".into()),
            ("WEIR_MAIL_RETRY_BACKOFF", "100ms".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let mut s1 = Proc::spawn("schedule-1", weir(), &["report", "schedule"], &env);
    let mut s2 = Proc::spawn("schedule-2", weir(), &["report", "schedule"], &env);
    let mut mailer = Proc::spawn("mail", weir(), &["mail"], &env);
    // 400 days take 40 s of the test clock. Meanwhile the mailer is killed
    // with SIGKILL whenever it has sent 25 mails since it (re)started, so
    // every kill lands while it is sending; at most 6 kills.
    let run_for = Duration::from_millis(2000 + 40_500);
    let pool = world.db.pool().await;
    let scheduled = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM report_schedule")
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };
    let mut kills = 0u64;
    let mut at_start = 0;
    let mut checked = Instant::now();
    let mut so_far = 0;
    // On a loaded machine the schedulers start late: go on (up to two
    // minutes) until 400 days are scheduled rather than for a fixed time.
    while started.elapsed() < run_for
        || (so_far < 400 && started.elapsed() < Duration::from_secs(120))
    {
        if checked.elapsed() >= Duration::from_secs(1) {
            so_far = scheduled(pool.clone()).await;
            checked = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = smtp.mails().len();
        if kills < 6 && n >= at_start + 25 {
            mailer.kill9();
            kills += 1;
            at_start = smtp.mails().len();
            mailer = Proc::spawn("mail", weir(), &["mail"], &env);
        }
    }
    s1.terminate(Duration::from_secs(10));
    s2.terminate(Duration::from_secs(10));
    let days: Vec<NaiveDate> = sqlx::query_scalar("SELECT day FROM report_schedule ORDER BY day")
        .fetch_all(&pool)
        .await
        .expect("schedule rows");
    // Catch-up at start: the days that fired within 7 days before the
    // clock's start (2024-12-24 fired 2024-12-25 02:30 CET, 6 d 22.5 h
    // before); then every day.
    let first = NaiveDate::from_ymd_opt(2024, 12, 24).expect("day");
    assert_eq!(days.first(), Some(&first), "catch-up bounded to 7 days");
    assert!(days.len() >= 400, "{} days", days.len());
    for (i, d) in days.iter().enumerate() {
        assert_eq!(
            *d,
            first + chrono::Duration::days(i as i64),
            "days are contiguous"
        );
    }
    // Both schedulers requested some days, neither requested one twice
    // (the table's key), and the DST days are there.
    let owners: i64 = sqlx::query_scalar("SELECT count(DISTINCT claimed_by) FROM report_schedule")
        .fetch_one(&pool)
        .await
        .expect("owners");
    assert!(owners >= 1);
    for dst in ["2025-03-29", "2025-03-30", "2025-10-25", "2025-10-26"] {
        let d: NaiveDate = dst.parse().expect("day");
        assert!(days.contains(&d), "{dst}");
    }
    // Every delivery ends sent, then count at the relay.
    let expected = days.len() * 2;
    eventually(Duration::from_secs(90), "the outbox drained", || {
        let pool = pool.clone();
        async move {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM report_deliveries WHERE state <> 'sent'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            let all: i64 = sqlx::query_scalar("SELECT count(*) FROM report_deliveries")
                .fetch_one(&pool)
                .await
                .ok()?;
            (left == 0 && all as usize == expected).then_some(())
        }
    })
    .await;
    mailer.terminate(Duration::from_secs(10));
    let mails = smtp.mails();
    let mut per_id: BTreeMap<String, (usize, Vec<String>, String)> = BTreeMap::new();
    for m in &mails {
        let e =
            per_id
                .entry(m.message_id.clone())
                .or_insert((0, m.rcpt.clone(), m.subject.clone()));
        e.0 += 1;
        assert_eq!(e.1, m.rcpt, "a Message-ID always goes to one recipient");
        assert_eq!(e.2, m.subject, "a resend is the same mail");
    }
    assert_eq!(
        per_id.len(),
        expected,
        "one Message-ID per day and recipient"
    );
    let mut per_day_rcpt = BTreeSet::new();
    for (_, rcpt, subject) in per_id.values() {
        assert!(
            per_day_rcpt.insert((subject.clone(), rcpt.clone())),
            "{subject} {rcpt:?} twice"
        );
    }
    let copies = mails.len() - per_id.len();
    assert!(
        copies as u64 <= kills,
        "{copies} second copies for {kills} kills: only a kill between 250 and the record makes one"
    );
    eprintln!(
        "{} days, {} mails, {} Message-IDs, {copies} resent copies after {kills} kills, {owners} scheduler(s) won days, {:?}",
        days.len(),
        mails.len(),
        per_id.len(),
        started.elapsed()
    );
}

/// The relay down when the request comes: the delivery waits and is retried,
/// and the mail arrives once the relay is up, exactly once.
#[tokio::test]
async fn a_relay_that_is_down_gets_the_mail_once_it_is_back() {
    let world = TestWorld::create(1).await;
    let relay = free_addr();
    let mut env = world.env();
    env.extend(
        [
            ("WEIR_MAIL_SMTP_URL", format!("smtp://{relay}")),
            ("WEIR_MAIL_POLL", "200ms".into()),
            ("WEIR_MAIL_RETRY_BACKOFF", "100ms".into()),
            ("WEIR_MAIL_TIMEOUT", "1s".into()),
            ("WEIR_MAIL_LEASE", "5s".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let _mail = Proc::spawn("mail", weir(), &["mail"], &env);
    let day = (Utc::now().date_naive() - chrono::Duration::days(1)).to_string();
    weir_ok(
        &["report", "send", "--day", &day, "--to", "ops@example.com"],
        env.clone(),
    );
    let pool = world.db.pool().await;
    // Refused while nothing listens: attempts pile up, nothing is sent.
    eventually(Duration::from_secs(60), "failed attempts recorded", || {
        let pool = pool.clone();
        async move {
            let r: Option<(i32, String)> = sqlx::query_as(
                "SELECT attempts, state FROM report_deliveries WHERE recipient = 'ops@example.com'",
            )
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten();
            r.filter(|(a, s)| *a >= 2 && s == "pending").map(|_| ())
        }
    })
    .await;
    let smtp = Smtp::start_on(relay, 0).await;
    let mails = eventually(
        Duration::from_secs(60),
        "the mail after the relay came up",
        || {
            let m = smtp.mails();
            async move { (!m.is_empty()).then_some(m) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(smtp.mails().len(), 1, "{mails:#?}");
    let state: String = sqlx::query_scalar("SELECT state FROM report_deliveries")
        .fetch_one(&pool)
        .await
        .expect("state");
    assert_eq!(state, "sent");
}
