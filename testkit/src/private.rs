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
    /// Kafka's controller port: a free port of its own (not `port + 1`,
    /// which another process may hold), kept across restarts.
    controller_port: u16,
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
            controller_port: free_port(),
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
        let mut cmd = Command::new(&script);
        cmd.arg(self.kind)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--port")
            .arg(self.port.to_string());
        if self.kind == "kafka" {
            cmd.arg("--controller-port")
                .arg(self.controller_port.to_string());
        }
        let child = cmd
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
