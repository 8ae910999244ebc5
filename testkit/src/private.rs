//! Service instances private to one test (started with `deploy/local/serve`),
//! so that a fault test can stop, kill and restart one without disturbing
//! the other tests on the shared stack.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::blocking::on_own_thread;
use crate::names::{free_port, unique};
use crate::stack::{answers, repo_root};

/// A service instance private to one test (started with
/// `deploy/local/serve`), so it can be stopped and restarted without
/// disturbing other tests.
pub struct PrivateService {
    kind: &'static str,
    dir: PathBuf,
    /// Port it listens on.
    pub port: u16,
    /// Kafka only: its controller, SASL_SSL and SSL (client certificate
    /// required) listeners' ports.
    kafka_ports: Option<(u16, u16, u16)>,
    child: Option<Child>,
}

impl PrivateService {
    /// Starts `kind` (`redis`, `postgres`, `kafka`, `kafka3` — a Kafka 3.x
    /// broker — or `s3`) on a free port and waits until it answers.
    pub fn start(kind: &'static str) -> PrivateService {
        let dir = std::env::temp_dir().join(unique(&format!("weir-{kind}")));
        let mut s = PrivateService {
            kind,
            dir,
            port: free_port(),
            kafka_ports: kind
                .starts_with("kafka")
                .then(|| (free_port(), free_port(), free_port())),
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
            "kafka" | "kafka3" => format!("127.0.0.1:{}", self.port),
            other => format!("{other}://127.0.0.1:{}", self.port),
        }
    }

    /// Kafka: `host:port` of the SASL_SSL listener (SCRAM-SHA-512,
    /// SCRAM-SHA-256 and PLAIN; user `weir`, password `weir-secret`).
    pub fn sasl_ssl_addr(&self) -> String {
        let (_, sasl, _) = self.kafka_ports.expect("a Kafka instance");
        format!("127.0.0.1:{sasl}")
    }

    /// Kafka: `host:port` of the SSL listener that requires a client
    /// certificate signed by the instance's CA.
    pub fn ssl_addr(&self) -> String {
        let (_, _, ssl) = self.kafka_ports.expect("a Kafka instance");
        format!("127.0.0.1:{ssl}")
    }

    /// Kafka: the instance's throw-away CA and certificates (`ca.pem`,
    /// `client.pem`, `client.key` encrypted with `weir-secret`), made by
    /// `deploy/local/serve` on first start.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
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
            .args(
                self.kafka_ports
                    .map(|(c, sasl, ssl)| {
                        vec![
                            "--controller-port".to_string(),
                            c.to_string(),
                            "--sasl-ssl-port".into(),
                            sasl.to_string(),
                            "--ssl-port".into(),
                            ssl.to_string(),
                        ]
                    })
                    .unwrap_or_default(),
            )
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
        // A broker's first start formats its storage and makes its
        // certificates (two JVMs and openssl): on two busy cores that can
        // take well over a minute.
        let limit = Duration::from_secs(if self.kind.starts_with("kafka") {
            150
        } else {
            60
        });
        while !answers(&addr) {
            assert!(
                start.elapsed() < limit,
                "private {} did not start on {addr}",
                self.kind
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.kind == "postgres" {
            self.wait_for_logins();
        }
    }

    /// The port opens before PostgreSQL's role and database exist on first
    /// start.
    fn wait_for_logins(&self) {
        let url = self.url();
        let start = Instant::now();
        loop {
            let url = url.clone();
            let ok = on_own_thread(move || async move {
                <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                    .await
                    .is_ok()
            })
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
