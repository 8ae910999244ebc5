//! Test support shared by every Weir crate's tests.
//!
//! Each test gets its own topics, Redis key prefix and PostgreSQL database,
//! so tests run in parallel against one local stack and leave nothing behind.
//! Services come from `deploy/local` (started by `./dev test`); a test that
//! needs one that is not answering fails with a message naming it. Fault
//! tests start *private* instances (`PrivateService`) so that stopping one
//! does not disturb the other tests.
#![warn(missing_docs)]

pub mod groups;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

/// Where the shared local stack is, from `deploy/local/env` variables or
/// their defaults.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Kafka bootstrap servers.
    pub kafka: String,
    /// Redis URL.
    pub redis: String,
    /// PostgreSQL URL (the admin database; tests get their own).
    pub database: String,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The repository root (for `deploy/local` scripts).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// The shared stack's addresses.
pub fn stack() -> Stack {
    Stack {
        kafka: var("WEIR_KAFKA_BROKERS", "127.0.0.1:19092"),
        redis: var("WEIR_REDIS_URL", "redis://127.0.0.1:16379/"),
        database: var(
            "WEIR_DATABASE_URL",
            "postgres://weir:weir@127.0.0.1:15432/weir",
        ),
    }
}

fn host_port(url: &str) -> Option<String> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next()?;
    Some(rest.split('/').next()?.to_string())
}

fn answers(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// Fails the test, naming the service, when it does not answer.
pub fn require(service: &str, addr: &str, env_var: &str) {
    assert!(
        answers(addr),
        "{service} is not reachable at {addr} ({env_var}). Start the local stack with \
         `deploy/local/up` (or run the tests with `./dev test`, which does)."
    );
}

impl Stack {
    /// Asserts Kafka answers.
    pub fn require_kafka(&self) -> &Self {
        for b in self.kafka.split(',') {
            require("Kafka", b.trim(), "WEIR_KAFKA_BROKERS");
        }
        self
    }

    /// Asserts Redis answers.
    pub fn require_redis(&self) -> &Self {
        require(
            "Redis",
            &host_port(&self.redis).unwrap_or_default(),
            "WEIR_REDIS_URL",
        );
        self
    }

    /// Asserts PostgreSQL answers.
    pub fn require_postgres(&self) -> &Self {
        require(
            "PostgreSQL",
            &host_port(&self.database).unwrap_or_default(),
            "WEIR_DATABASE_URL",
        );
        self
    }
}

/// A name no other test (or earlier run) uses: `prefix-<pid>-<n>-<random>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        &r[..8]
    )
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// A free loopback address.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Topics created for one test and deleted when it ends.
pub struct TestTopics {
    brokers: String,
    /// Health topic name.
    pub health: String,
    /// Access topic name.
    pub access: String,
    /// Dead-letter topic name.
    pub dlq: String,
}

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("Kafka admin client")
}

impl TestTopics {
    /// Creates health, access and dead-letter topics with `partitions`.
    pub async fn create(stack: &Stack, partitions: i32) -> TestTopics {
        stack.require_kafka();
        let base = unique("t");
        let t = TestTopics {
            brokers: stack.kafka.clone(),
            health: format!("{base}.health"),
            access: format!("{base}.access"),
            dlq: format!("{base}.dlq"),
        };
        let admin = admin(&t.brokers);
        let new: Vec<NewTopic<'_>> = [&t.health, &t.access, &t.dlq]
            .into_iter()
            .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
            .collect();
        let res = admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
            )
            .await
            .expect("create topics");
        for r in res {
            r.expect("topic created");
        }
        // Wait until metadata shows every partition with a leader.
        for name in [&t.health, &t.access, &t.dlq] {
            let start = Instant::now();
            loop {
                let md = admin
                    .inner()
                    .fetch_metadata(Some(name), Duration::from_secs(5));
                let ok = md.is_ok_and(|m| {
                    m.topics().first().is_some_and(|tp| {
                        tp.error().is_none()
                            && tp.partitions().len() == partitions as usize
                            && tp.partitions().iter().all(|p| p.leader() >= 0)
                    })
                });
                if ok {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "topic {name} never became ready"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        t
    }

    /// Environment variables pointing `weir` at these topics.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("WEIR_TOPICS_HEALTH".into(), self.health.clone()),
            ("WEIR_TOPICS_ACCESS".into(), self.access.clone()),
            ("WEIR_TOPICS_DLQ".into(), self.dlq.clone()),
        ]
    }
}

impl Drop for TestTopics {
    fn drop(&mut self) {
        let brokers = self.brokers.clone();
        let names = [self.health.clone(), self.access.clone(), self.dlq.clone()];
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let _ = admin(&brokers)
                    .delete_topics(&refs, &AdminOptions::new())
                    .await;
            });
        })
        .join();
    }
}

/// A PostgreSQL database created for one test and dropped when it ends.
pub struct TestDb {
    admin_url: String,
    /// Database name.
    pub name: String,
    /// URL of the test database.
    pub url: String,
}

fn with_db(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if url[..i].contains('@') || url[..i].matches('/').count() > 2 => {
            format!("{}/{db}", &url[..i])
        }
        _ => format!("{url}/{db}"),
    }
}

impl TestDb {
    /// Creates an empty database on the stack's server.
    pub async fn create(stack: &Stack) -> TestDb {
        Self::create_on(&stack.require_postgres().database).await
    }

    /// Creates an empty database on the server behind `admin_url`.
    pub async fn create_on(admin_url: &str) -> TestDb {
        let name = unique("weir_t").replace('-', "_");
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} (WEIR_DATABASE_URL): {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        TestDb {
            admin_url: admin_url.to_string(),
            url: with_db(admin_url, &name),
            name,
        }
    }

    /// A pool on the test database.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A Redis key prefix for one test; its keys are deleted when it ends.
pub struct TestRedis {
    /// Redis URL.
    pub url: String,
    /// Prefix of every key the test's processes write.
    pub prefix: String,
}

impl TestRedis {
    /// A fresh prefix on the stack's Redis.
    pub fn new(stack: &Stack) -> TestRedis {
        stack.require_redis();
        TestRedis {
            url: stack.redis.clone(),
            prefix: unique("wt"),
        }
    }

    /// A connection for assertions.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis at {} (WEIR_REDIS_URL): {e}", self.url))
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(client) = redis::Client::open(url.as_str()) else {
                    return;
                };
                let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                    return;
                };
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}:*"))
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: redis::RedisResult<()> =
                        redis::cmd("DEL").arg(keys).query_async(&mut c).await;
                }
            });
        })
        .join();
    }
}

/// A service instance private to one test (started with
/// `deploy/local/serve`), so it can be stopped and restarted without
/// disturbing other tests.
pub struct PrivateService {
    kind: &'static str,
    dir: PathBuf,
    /// Port it listens on.
    pub port: u16,
    child: Option<Child>,
}

impl PrivateService {
    /// Starts `kind` (`redis`, `postgres`, `kafka` or `s3`) on a free port
    /// and waits until it answers.
    pub fn start(kind: &'static str) -> PrivateService {
        let dir = std::env::temp_dir().join(unique(&format!("weir-{kind}")));
        let mut s = PrivateService {
            kind,
            dir,
            port: free_port(),
            child: None,
        };
        s.restart();
        s
    }

    /// URL of the service.
    pub fn url(&self) -> String {
        match self.kind {
            "redis" => format!("redis://127.0.0.1:{}/", self.port),
            "postgres" => format!("postgres://weir:weir@127.0.0.1:{}/weir", self.port),
            "kafka" => format!("127.0.0.1:{}", self.port),
            other => format!("{other}://127.0.0.1:{}", self.port),
        }
    }

    /// (Re)starts the service on the same port and data, waiting until it
    /// accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.kind);
        let script = repo_root().join("deploy/local/serve");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::env::temp_dir().join(format!(
                "{}.log",
                self.dir.display().to_string().replace('/', "_")
            )))
            .ok();
        let child = Command::new(&script)
            .arg(self.kind)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--port")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(
                log.as_ref()
                    .and_then(|f| f.try_clone().ok())
                    .map(Stdio::from)
                    .unwrap_or_else(Stdio::null),
            )
            .stderr(log.map(Stdio::from).unwrap_or_else(Stdio::null))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        self.child = Some(child);
        let start = Instant::now();
        let addr = format!("127.0.0.1:{}", self.port);
        while !answers(&addr) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "private {} did not start on {addr}",
                self.kind
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.kind == "postgres" {
            // The port opens before the role and database exist on first start.
            let url = self.url();
            let start = Instant::now();
            loop {
                let ok = std::thread::spawn({
                    let url = url.clone();
                    move || {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .ok()
                            .map(|rt| {
                                rt.block_on(<sqlx::PgConnection as sqlx::Connection>::connect(&url))
                                    .is_ok()
                            })
                            .unwrap_or(false)
                    }
                })
                .join()
                .unwrap_or(false);
                if ok {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "private postgres never accepted logins"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// Stops it: SIGKILL when `hard`, else a clean fast shutdown, and reaps
    /// the process (an unreaped zombie would block a restart on its pid file).
    pub fn stop(&mut self, hard: bool) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            // PostgreSQL's SIGTERM waits for every client to leave; SIGINT is
            // its "fast" shutdown.
            let sig = match (hard, self.kind) {
                (true, _) => nix::sys::signal::Signal::SIGKILL,
                (false, "postgres") => nix::sys::signal::Signal::SIGINT,
                (false, _) => nix::sys::signal::Signal::SIGTERM,
            };
            let _ = nix::sys::signal::kill(pid, sig);
            let _ = c.wait();
        }
        // Postgres children outlive a SIGKILL of the postmaster briefly.
        let start = Instant::now();
        while answers(&format!("127.0.0.1:{}", self.port))
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateService {
    fn drop(&mut self) {
        self.stop(false);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process (usually the `weir` binary) whose output goes to a log
/// file, printed when the test fails or `WEIR_TEST_LOGS=1`.
pub struct Proc {
    /// Name for messages.
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `program args…` with extra environment.
    pub fn spawn(name: &str, program: &Path, args: &[&str], env: &[(String, String)]) -> Proc {
        let log =
            std::env::temp_dir().join(format!("{}.log", unique(&format!("weir-proc-{name}"))));
        let f = std::fs::File::create(&log).expect("create process log");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(
                f.try_clone()
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .stderr(Stdio::from(f));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait(timeout)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
        if std::thread::panicking() || std::env::var("WEIR_TEST_LOGS").is_ok_and(|v| v == "1") {
            eprintln!(
                "----- output of {} -----\n{}\n----- end of {} -----",
                self.name,
                self.output(),
                self.name
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Shows the code under test's logs when `WEIR_TEST_LOGS=1` (quiet otherwise,
/// so parallel tests stay readable).
pub fn init_logs() {
    if std::env::var("WEIR_TEST_LOGS").is_ok_and(|v| v == "1") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .try_init();
    }
}

/// Environment pointing a `weir` process at a test's topics, database,
/// Redis prefix and group, with metrics on an ephemeral port.
pub fn weir_env(
    kafka: &str,
    topics: &TestTopics,
    db_url: &str,
    redis_url: &str,
    prefix: &str,
    group: &str,
) -> Vec<(String, String)> {
    let mut e = topics.env();
    e.extend([
        ("WEIR_KAFKA_BROKERS".into(), kafka.to_string()),
        ("WEIR_DATABASE_URL".into(), db_url.to_string()),
        ("WEIR_REDIS_URL".into(), redis_url.to_string()),
        ("WEIR_REDIS_KEY_PREFIX".into(), prefix.to_string()),
        ("WEIR_CONSUMER_GROUP".into(), group.to_string()),
        ("WEIR_CONSUMER_SESSION_TIMEOUT".into(), "6s".into()),
        ("WEIR_CONSUMER_BATCH_MAX_WAIT".into(), "50ms".into()),
        ("WEIR_METRICS_ADDR".into(), "127.0.0.1:0".into()),
        ("RUST_LOG".into(), "info".into()),
    ]);
    e
}

/// The last line of a process's output that parses as a JSON object (the
/// report `weir` prints at exit).
pub fn last_json(output: &str) -> Option<serde_json::Value> {
    output.lines().rev().find_map(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .filter(|v| v.is_object())
    })
}
