//! End-to-end tests of the `weir` binary against the local stack, in one
//! test binary (one link, one process; tests run in parallel with
//! `RUST_TEST_THREADS`, each in a `TestWorld` of its own).
//!
//! Each module is one concern, as the files were before:
//!   balance          `weir balance`: fleet-fed pools, passive health, proxying, takeover
//!   access           the access group: exact rollups, dead letters, rebalance, backlog, chaos
//!   auth             admin tokens: PyJWT-made hostile tokens, 401/403, logout seen everywhere, Redis down
//!   codecs           every compression codec from the Java client, kcat and Weir, consumed exactly
//!   health           agent → consumers → center, SIGKILL of a member, bad flags, Redis down
//!   edge             `weir edge` as a process: large objects, Kafka gone
//!   edge_limiter     the closed loop wired in the edge
//!   lag              `weir lag describe/advise` against Kafka's own tool
//!   lag_export       `weir lag export` to Redis and /metrics
//!   lag_closed_loop  the limiter settles the lag
//!   security         every role over SASL_SSL and mutual TLS (a private broker); refusals name the setting
//!   topics_scale     `weir topics scale`
//!   deploy_files     deploy/ files checked against the binary
//!   dashboard        the dashboard in headless Chromium against `weir up` and a second center
//!   promtool         `promtool check metrics` on every role, `check config` on deploy/
//!   hostile          hostile input and faults from the outside (issue 9)
//!   ingest           `weir ingest`: agents over HTTP, Kafka stopped, hostile bodies
//!   inventory        `/api/v1/servers`: CRUD, ETag/If-Match, 50 concurrent writers, decommissioning, hostile input
//!   report           the daily uptime report: manual trigger, figures = uptime API, hostile bodies,
//!                    400 days on a test clock with DST, two schedulers, SIGKILLed mailers
//!
//! The helpers here are the ones every module needs: the binary, running it
//! to completion, a center, an ingest gateway, and an edge process with its
//! own ports and disk tier.

mod access;
mod auth;
mod balance;
mod balance_wire;
mod codecs;
mod dashboard;
mod deploy_files;
mod edge;
mod edge_limiter;
mod health;
mod hostile;
mod ingest;
mod inventory;
mod lag;
mod lag_closed_loop;
mod lag_export;
mod promtool;
mod replay;
mod report;
mod security;
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

/// Waits (30 s at most) until `url` answers with a success status: how a
/// spawned role says it is ready.
pub async fn until_ok(url: &str, what: &str) {
    eventually(Duration::from_secs(30), what, || async move {
        reqwest::get(url)
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
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

/// Spawns a server with `env` plus the addresses `addrs` makes from fresh
/// free ports, and returns it once its own log says it listens on all of
/// them. A port found free can be taken by another test's process before
/// this one binds it: then this one exits (and another server would answer
/// on that port), so it is spawned again on new ports, up to five times.
pub fn spawn_listening(
    name: &str,
    args: &[&str],
    env: &[(String, String)],
    addrs: impl Fn() -> Vec<(&'static str, SocketAddr)>,
) -> (Proc, Vec<SocketAddr>) {
    spawn_listening_on(Cpus::All, name, args, env, addrs)
}

/// The CPUs a server under test may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cpus {
    /// Every CPU of the machine.
    All,
    /// CPU 0 only ([`Proc::spawn_on_one_cpu`]).
    One,
}

/// [`spawn_listening`] on `cpus`.
pub fn spawn_listening_on(
    cpus: Cpus,
    name: &str,
    args: &[&str],
    env: &[(String, String)],
    addrs: impl Fn() -> Vec<(&'static str, SocketAddr)>,
) -> (Proc, Vec<SocketAddr>) {
    let mut last = String::new();
    for _ in 0..5 {
        let picked = addrs();
        let mut env = env.to_vec();
        env.extend(picked.iter().map(|(k, a)| (k.to_string(), a.to_string())));
        let mut proc = match cpus {
            Cpus::All => Proc::spawn(name, weir(), args, &env),
            Cpus::One => Proc::spawn_on_one_cpu(name, weir(), args, &env),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let out = proc.output();
            if out.contains("listening") && picked.iter().all(|(_, a)| out.contains(&a.to_string()))
            {
                return (proc, picked.into_iter().map(|(_, a)| a).collect());
            }
            if proc.wait(Duration::from_millis(50)).is_some() {
                break;
            }
        }
        last = proc.output();
        proc.terminate(Duration::from_secs(5));
    }
    panic!("{name} never listened on its ports:\n{last}");
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
        let (proc, a) = spawn_listening("center", &["center"], env, || {
            vec![("WEIR_CENTER_ADDR", free_addr())]
        });
        let addr = a[0];
        eventually(Duration::from_secs(30), "center listening", || async move {
            reqwest::get(format!("http://{addr}/livez")).await.ok()
        })
        .await;
        Center { addr, proc }
    }
}

/// A running `weir ingest` on its own port.
pub struct Ingest {
    /// Listen address (`/api/v1/health`, `/metrics`, `/livez`, `/readyz`).
    pub addr: SocketAddr,
    /// The process.
    pub proc: Proc,
}

impl Ingest {
    /// Spawns `weir ingest` with `env` plus its own address, and waits until
    /// it is ready (Kafka answered).
    pub async fn start(env: &[(String, String)]) -> Ingest {
        let (proc, a) = spawn_listening("ingest", &["ingest"], env, || {
            vec![("WEIR_INGEST_ADDR", free_addr())]
        });
        let addr = a[0];
        until_ok(&format!("http://{addr}/readyz"), "ingest ready").await;
        Ingest { addr, proc }
    }

    /// `http://ADDR`, for `weir agent --via`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The value of the sample of `/metrics` whose line starts with
    /// `prefix` (name and labels), 0 when absent.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        sum_samples(&text, prefix)
    }
}

/// Sum of the samples of a `/metrics` text whose line starts with `prefix`
/// (name and labels), 0 when there is none.
pub fn sum_samples(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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
        Self::start_on(Cpus::All, env).await
    }

    /// [`Edge::start`] on `cpus`.
    pub async fn start_on(cpus: Cpus, env: &[(String, String)]) -> Edge {
        let dir = std::env::temp_dir().join(unique("weir-edge-e2e"));
        Self::start_in(cpus, dir, env).await
    }

    /// Stops this edge (SIGTERM, a clean exit required) and starts another
    /// on the same disk directory with `env` and new ports, as an operator
    /// restarts one.
    pub async fn restart(mut self, env: &[(String, String)]) -> Edge {
        let status = self.proc.terminate(Duration::from_secs(15));
        assert!(
            status.is_some_and(|s| s.success()),
            "edge stops cleanly: {status:?}"
        );
        // The directory outlives this process (Drop removes `self.dir`).
        let dir = std::mem::take(&mut self.dir);
        drop(self);
        Self::start_in(Cpus::All, dir, env).await
    }

    async fn start_in(cpus: Cpus, dir: PathBuf, env: &[(String, String)]) -> Edge {
        let mut env = env.to_vec();
        env.extend(
            [
                ("WEIR_EDGE_DISK_DIR", dir.display().to_string()),
                ("WEIR_METRICS_ADDR", String::new()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        let (proc, a) = spawn_listening_on(cpus, "edge", &["edge"], &env, || {
            vec![
                ("WEIR_EDGE_ADDR", free_addr()),
                ("WEIR_EDGE_ADMIN_ADDR", free_addr()),
            ]
        });
        let (addr, admin) = (a[0], a[1]);
        until_ok(&format!("http://{admin}/livez"), "edge answers").await;
        Edge {
            addr,
            admin,
            proc,
            dir,
        }
    }

    /// [`sum_samples`] of the edge's `/metrics`.
    pub async fn metric(&self, prefix: &str) -> f64 {
        sum_samples(&self.metrics().await, prefix)
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
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A running `weir balance` with its own client and admin ports (and
/// config file, removed on drop).
pub struct Balance {
    /// Client traffic.
    pub addr: SocketAddr,
    /// Admin: `/pools`, `/metrics`, `/readyz`.
    pub admin: SocketAddr,
    /// The process.
    pub proc: Proc,
    config: Option<PathBuf>,
}

impl Balance {
    /// Spawns `weir balance` with `env`, the TOML `config` (if any), its
    /// own ports (metrics on the admin port), and waits until `/readyz`.
    pub async fn start(env: &[(String, String)], config: Option<&str>) -> Balance {
        Self::start_on(free_addr(), env, config).await
    }

    /// [`Balance::start`] on a given client address (a port takeover).
    pub async fn start_on(
        addr: SocketAddr,
        env: &[(String, String)],
        config: Option<&str>,
    ) -> Balance {
        Self::start_with(Cpus::All, addr, env, config).await
    }

    /// [`Balance::start_on`] on `cpus`.
    pub async fn start_with(
        cpus: Cpus,
        addr: SocketAddr,
        env: &[(String, String)],
        config: Option<&str>,
    ) -> Balance {
        let admin = free_addr();
        let file = config.map(|text| {
            let f = std::env::temp_dir().join(format!("{}.toml", unique("weir-balance")));
            std::fs::write(&f, text).expect("write balance config");
            f
        });
        let mut env = env.to_vec();
        env.extend(
            [
                ("WEIR_BALANCE_ADDR", addr.to_string()),
                ("WEIR_BALANCE_ADMIN_ADDR", admin.to_string()),
                ("WEIR_METRICS_ADDR", String::new()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        let mut args = Vec::new();
        if let Some(f) = &file {
            args.extend(["--config".to_string(), f.display().to_string()]);
        }
        args.push("balance".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = match cpus {
            Cpus::All => Proc::spawn("balance", weir(), &args, &env),
            Cpus::One => Proc::spawn_on_one_cpu("balance", weir(), &args, &env),
        };
        until_ok(&format!("http://{admin}/readyz"), "balance ready").await;
        Balance {
            addr,
            admin,
            proc,
            config: file,
        }
    }

    /// `/pools` of the admin API.
    pub async fn pools(&self) -> Value {
        get_json(&format!("http://{}/pools", self.admin))
            .await
            .expect("/pools answers JSON")
            .1
    }

    /// One pool's backends as `(backend, state, why)`.
    pub async fn backends(&self, pool: &str) -> Vec<(String, String, String)> {
        let v = self.pools().await;
        v["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["pool"] == pool)
            .flat_map(|p| p["backends"].as_array().cloned().unwrap_or_default())
            .map(|b| {
                (
                    b["backend"].as_str().unwrap_or_default().to_string(),
                    b["state"].as_str().unwrap_or_default().to_string(),
                    b["why"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// The admin port's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

impl Drop for Balance {
    fn drop(&mut self) {
        self.proc.kill9();
        if let Some(f) = &self.config {
            let _ = std::fs::remove_file(f);
        }
    }
}
