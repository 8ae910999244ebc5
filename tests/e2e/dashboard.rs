//! The dashboard in a real browser (issue 11): `weir up` with its demo, a
//! second `weir center` on the same stores, and a separate agent to kill;
//! tests/browser/dashboard.mjs drives Debian's headless Chromium through
//! playwright-core against both centers (fleet, throughput and lag moving,
//! seven tabs, a node going down, reconnect, no JavaScript, phone width) and
//! writes screenshots to target/browser/. `weir up`'s /metrics (every role
//! in one exposition) then goes through `promtool check metrics`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weir_testkit::{eventually, free_addr, unique, Proc, TestWorld};

use crate::{get_json, weir, Center};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// What the browser test needs, or a message naming what is missing and
/// how to get it.
fn require_browser() -> (PathBuf, PathBuf) {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists(),
        "chromium not found at {}: the dashboard's browser test needs Debian's chromium package \
         (./dev test installs it: apt-get install chromium; or set CHROMIUM to a Chromium binary)",
        chromium.display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node not found: the dashboard's browser test runs tests/browser/dashboard.mjs with Node.js (apt-get install nodejs npm)"
    );
    let module = browser_dir().join("node_modules/playwright-core/package.json");
    assert!(
        module.exists(),
        "playwright-core not installed in tests/browser: run ./dev test, or (cd tests/browser && npm ci)"
    );
    (chromium, browser_dir().join("dashboard.mjs"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_browser() {
    let (chromium, script) = require_browser();
    let world = TestWorld::create(3).await;
    let host = unique("up-host");
    let victim = unique("victim");
    let (center_a, edge, admin, metrics) = (free_addr(), free_addr(), free_addr(), free_addr());
    let disk = std::env::temp_dir().join(unique("weir-up-edge"));
    let env = world.env_with(&[
        ("WEIR_CENTER_ADDR", &center_a.to_string()),
        ("WEIR_EDGE_ADDR", &edge.to_string()),
        ("WEIR_EDGE_ADMIN_ADDR", &admin.to_string()),
        ("WEIR_EDGE_DISK_DIR", &disk.display().to_string()),
        ("WEIR_METRICS_ADDR", &metrics.to_string()),
        ("WEIR_AGENT_NODE_ID", &host),
        ("WEIR_AGENT_INTERVAL", "1s"),
        ("WEIR_LAG_INTERVAL", "1s"),
        ("WEIR_UP_CONSUMERS", "1"),
        ("WEIR_UP_DEMO_OBJECTS", "60"),
        ("WEIR_UP_DEMO_NODES", "3"),
        ("WEIR_UP_LOAD_RATE", "15"),
        ("WEIR_LIMITER_ENABLED", "true"),
    ]);
    let mut up = Proc::spawn("weir-up", weir(), &["up"], &env);
    eventually(Duration::from_secs(90), "weir up's center ready", || {
        let url = format!("http://{center_a}/readyz");
        async move { get_json(&url).await.filter(|(s, _)| *s == 200) }
    })
    .await;
    // A second center on the same Redis and PostgreSQL, and an agent to kill.
    let center_b_env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "WEIR_CENTER_ADDR" && k != "WEIR_METRICS_ADDR")
        .cloned()
        .chain([("WEIR_METRICS_ADDR".to_string(), String::new())])
        .collect();
    let center_b = Center::start(&center_b_env).await;
    let victim_env: Vec<(String, String)> = center_b_env.clone();
    let victim_proc = Proc::spawn(
        "victim-agent",
        weir(),
        &["agent", "--interval", "500ms", "--node-id", &victim],
        &victim_env,
    );
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    let out = tokio::task::spawn_blocking({
        let (victim, host) = (victim.clone(), host.clone());
        let pid = victim_proc.pid().expect("victim pid").to_string();
        let (a, b) = (
            format!("http://{center_a}"),
            format!("http://{}", center_b.addr),
        );
        move || {
            Command::new("node")
                .arg(&script)
                .current_dir(browser_dir())
                .env("CHROMIUM", &chromium)
                .env("CENTER_A", a)
                .env("CENTER_B", b)
                .env("HOST_NODE", host)
                .env("DEMO_NODE", "demo-edge-01")
                .env("VICTIM_NODE", victim)
                .env("VICTIM_PID", pid)
                .env("VICTIM_INTERVAL_MS", "500")
                .env("SHOTS", &shots)
                .output()
                .expect("run node")
        }
    })
    .await
    .expect("browser test thread");
    // Every role's metrics in one exposition: what Prometheus would scrape.
    let exposition = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .expect("weir up's /metrics")
        .text()
        .await
        .expect("metrics text");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let up_log = up.output();
    up.terminate(Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&disk);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}\n--- weir up's log (tail) ---\n{}",
        tail(&up_log, 60)
    );
    crate::promtool::check_metrics("weir up", &exposition);
    drop(victim_proc);
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
