//! End-to-end tests of the `weir` binary against the local stack, in one
//! test binary (one link, one process; tests run in parallel with
//! `RUST_TEST_THREADS`, each in a `TestWorld` of its own).
//!
//! Each module is one concern, as the files were before:
//!   access           the access group: exact rollups, dead letters, rebalance, backlog, chaos
//!   auth             admin tokens: PyJWT-made hostile tokens, 401/403, logout seen everywhere, Redis down
//!   health           agent → consumers → center, SIGKILL of a member, bad flags, Redis down
//!   edge             `weir edge` as a process: large objects, Kafka gone
//!   edge_limiter     the closed loop wired in the edge
//!   lag              `weir lag describe/advise` against Kafka's own tool
//!   lag_export       `weir lag export` to Redis and /metrics
//!   lag_closed_loop  the limiter settles the lag
//!   topics_scale     `weir topics scale`
//!   deploy_files     deploy/ files checked against the binary
//!   hostile          hostile input and faults from the outside (issue 9)
//!
//! The helpers here are the ones every module needs: the binary, running it
//! to completion, and an edge process with its own ports and disk tier.

mod access;
mod auth;
mod deploy_files;
mod edge;
mod edge_limiter;
mod health;
mod hostile;
mod lag;
mod lag_closed_loop;
mod lag_export;
mod topics_scale;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use weir_testkit::{eventually, free_addr, unique, Proc};

/// Sends `req` and waits for the answer's head; a request that gets none
/// (refused, reset, timed out) fails the test.
pub async fn answer(req: reqwest::RequestBuilder) -> reqwest::Response {
    req.send().await.expect("an answer")
}

/// An HTTP client whose every request gives up after `timeout`.
pub fn client(timeout: Duration) -> reqwest::Client {
    let builder = reqwest::Client::builder().timeout(timeout);
    builder.build().expect("HTTP client")
}

/// The `weir` binary under test.
pub fn weir() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weir"))
}

/// Runs `weir args…` to completion with `env` on top of this process's.
pub fn weir_output<K, V>(args: &[&str], env: impl IntoIterator<Item = (K, V)>) -> Output
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut cmd = std::process::Command::new(weir());
    let out = cmd.args(args).envs(env).output();
    out.unwrap_or_else(|e| panic!("running weir {args:?}: {e}"))
}

/// Runs `weir args…`, which must succeed; its standard output.
pub fn weir_ok<K, V>(args: &[&str], env: impl IntoIterator<Item = (K, V)>) -> String
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let out = weir_output(args, env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weir {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `weir args…` to completion with extra environment; returns its exit
/// code (-1 when killed by a signal) and its standard error.
pub fn run_weir(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = weir_output(args, env.iter().copied());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// GETs `url` (5 s timeout); its status and JSON body, `None` when it does
/// not answer with JSON.
pub async fn get_json(url: &str) -> Option<(u16, Value)> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.ok()?;
    Some((status, body))
}

/// `weir [args…] config` with only `env` for `WEIR_*` variables (the test's
/// own, from `deploy/local/env`, must not mix in): exit code (-1 when
/// killed) and stdout followed by stderr.
pub fn weir_config(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = std::process::Command::new(weir());
    cmd.args(args).arg("config");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WEIR_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run weir config");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A running `weir center` on its own port.
pub struct Center {
    /// API address.
    pub addr: SocketAddr,
    /// The process.
    pub proc: Proc,
}

impl Center {
    /// Spawns `weir center` with `env` plus its own address, and waits until
    /// it listens (`/livez`; readiness is each test's business).
    pub async fn start(env: &[(String, String)]) -> Center {
        let addr = free_addr();
        let mut env = env.to_vec();
        env.push(("WEIR_CENTER_ADDR".into(), addr.to_string()));
        let proc = Proc::spawn("center", weir(), &["center"], &env);
        eventually(Duration::from_secs(30), "center listening", || async move {
            reqwest::get(format!("http://{addr}/livez")).await.ok()
        })
        .await;
        Center { addr, proc }
    }
}

/// A running `weir edge` with its own client and admin ports and disk tier
/// (removed on drop).
pub struct Edge {
    /// Client traffic.
    pub addr: SocketAddr,
    /// Admin: `/livez`, `/metrics`, purge.
    pub admin: SocketAddr,
    /// The process.
    pub proc: Proc,
    dir: PathBuf,
}

impl Edge {
    /// Spawns `weir edge` with `env` plus its own addresses and disk
    /// directory (metrics on the admin port), and waits until `/livez`
    /// answers.
    pub async fn start(env: &[(String, String)]) -> Edge {
        let (addr, admin) = (free_addr(), free_addr());
        let dir = std::env::temp_dir().join(unique("weir-edge-e2e"));
        let mut env = env.to_vec();
        env.extend(
            [
                ("WEIR_EDGE_ADDR", addr.to_string()),
                ("WEIR_EDGE_ADMIN_ADDR", admin.to_string()),
                ("WEIR_EDGE_DISK_DIR", dir.display().to_string()),
                ("WEIR_METRICS_ADDR", String::new()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        let proc = Proc::spawn("edge", weir(), &["edge"], &env);
        let http = reqwest::Client::new();
        eventually(Duration::from_secs(30), "edge answers", || {
            let http = http.clone();
            async move {
                http.get(format!("http://{admin}/livez"))
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        Edge {
            addr,
            admin,
            proc,
            dir,
        }
    }

    /// The edge's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.proc.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
