//! Prometheus's own checker on what Weir exposes: `promtool check metrics`
//! (Debian's prometheus package) on the `/metrics` of every role run as its
//! own process, after each did some work, and `promtool check config` on the
//! scrape configs in deploy/. (`weir up`'s exposition, every role in one,
//! is checked by the dashboard's browser test.)

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use weir_testkit::{eventually, free_addr, unique, Proc, TestWorld};

use crate::weir;

/// Runs `promtool args…` with `stdin`; its status and output.
fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool not found ({e}): these tests need Debian's prometheus package \
             (./dev test installs it: apt-get install prometheus)"
        ),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `promtool check metrics` on `text`, failing the test with its complaints.
pub fn check_metrics(role: &str, text: &str) {
    assert!(
        text.contains("# TYPE weir_"),
        "{role}: /metrics has no Weir metric:\n{text}"
    );
    let (ok, out) = promtool(&["check", "metrics"], text);
    assert!(ok, "promtool check metrics on {role}'s /metrics:\n{out}");
}

#[test]
fn scrape_configs_pass_promtool() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for rel in [
        "deploy/prometheus/prometheus.yml",
        "deploy/compose/prometheus.yml",
    ] {
        let path = root.join(rel);
        let (ok, out) = promtool(&["check", "config", &path.display().to_string()], "");
        assert!(ok, "promtool check config {rel}:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_roles_metrics_pass_promtool() {
    // Fail fast, before starting anything, when promtool is missing.
    let _ = promtool(&["--version"], "");
    let world = TestWorld::create(1).await;
    let mut env = world.env_with(&[("WEIR_LAG_INTERVAL", "500ms")]);
    env.retain(|(k, _)| k != "WEIR_METRICS_ADDR");
    let center = free_addr();
    let (edge, admin) = (free_addr(), free_addr());
    let disk = std::env::temp_dir().join(unique("weir-promtool-edge"));
    let node = unique("promtool-node");
    // (role, args, extra env, where its /metrics is)
    let roles: Vec<(&str, Vec<&str>, Vec<(String, String)>, String)> = vec![
        (
            "agent",
            vec!["agent", "--interval", "200ms", "--node-id", &node],
            vec![],
            String::new(),
        ),
        (
            "consume health",
            vec!["consume", "health"],
            vec![],
            String::new(),
        ),
        (
            "consume access",
            vec!["consume", "access"],
            vec![],
            String::new(),
        ),
        (
            "center",
            vec!["center"],
            vec![("WEIR_CENTER_ADDR".into(), center.to_string())],
            String::new(),
        ),
        ("lag export", vec!["lag", "export"], vec![], String::new()),
        (
            "edge",
            vec!["edge"],
            vec![
                ("WEIR_EDGE_ADDR".into(), edge.to_string()),
                ("WEIR_EDGE_ADMIN_ADDR".into(), admin.to_string()),
                ("WEIR_EDGE_DISK_DIR".into(), disk.display().to_string()),
                ("WEIR_LIMITER_ENABLED".into(), "true".into()),
            ],
            format!("http://{admin}/metrics"),
        ),
    ];
    let mut procs = Vec::new();
    for (role, args, extra, url) in roles {
        let mut e = env.clone();
        e.extend(extra);
        let url = if url.is_empty() {
            let m = free_addr();
            e.push(("WEIR_METRICS_ADDR".into(), m.to_string()));
            format!("http://{m}/metrics")
        } else {
            e.push(("WEIR_METRICS_ADDR".into(), String::new()));
            url
        };
        procs.push((role, url, Proc::spawn(role, weir(), &args, &e)));
    }
    let http = reqwest::Client::new();
    // Some work for the servers, so that their request metrics exist.
    eventually(
        Duration::from_secs(60),
        "the center and edge answer",
        || {
            let http = http.clone();
            async move {
                let a = http
                    .get(format!("http://{center}/api/v1/nodes"))
                    .send()
                    .await
                    .ok()?;
                let b = http
                    .get(format!("http://{edge}/no/such/object"))
                    .send()
                    .await
                    .ok()?;
                (a.status().is_success() && b.status().as_u16() == 404).then_some(())
            }
        },
    )
    .await;
    let _ = http.get(format!("http://{center}/")).send().await;
    // The lag exporter and the consumers have read something by now.
    eventually(
        Duration::from_secs(60),
        "the consumers apply a batch",
        || {
            let http = http.clone();
            let url = procs[1].1.clone();
            async move {
                let t = http.get(&url).send().await.ok()?.text().await.ok()?;
                t.contains("weir_consumer_batches_total").then_some(())
            }
        },
    )
    .await;
    for (role, url, proc) in &mut procs {
        let text = eventually(Duration::from_secs(30), "metrics", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let t = http.get(&url).send().await.ok()?.text().await.ok()?;
                t.contains("# TYPE weir_").then_some(t)
            }
        })
        .await;
        check_metrics(role, &text);
        proc.terminate(Duration::from_secs(15));
    }
    let _ = std::fs::remove_dir_all(&disk);
}
