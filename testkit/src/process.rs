//! Child processes under test (usually the `weir` binary): output kept in a
//! log file and shown only when the test fails or logs are asked for; killed
//! and reaped when the test ends; their memory readable from /proc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::kafka::TestTopics;
use crate::names::unique;

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

    /// [`Proc::spawn`] confined to CPU 0 (`taskset -c 0`, which then runs
    /// `program` in its own place), as in a one-CPU container: the roles
    /// that pick their runtime from the CPUs they may use (`weir edge`,
    /// `weir balance`) run their single-threaded one, which tests on a
    /// multi-core machine would otherwise never reach.
    pub fn spawn_on_one_cpu(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Proc {
        let program = program.display().to_string();
        let mut all = vec!["-c", "0", program.as_str()];
        all.extend_from_slice(args);
        Proc::spawn(name, Path::new("taskset"), &all, env)
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

    /// Peak resident memory so far (`VmHWM`), in bytes; 0 once it exited.
    pub fn peak_rss(&self) -> u64 {
        self.pid().map_or(0, |pid| proc_status_bytes(pid, "VmHWM:"))
    }

    /// Resident memory now (`VmRSS`), in bytes; 0 once it exited.
    pub fn rss(&self) -> u64 {
        self.pid().map_or(0, |pid| proc_status_bytes(pid, "VmRSS:"))
    }
}

/// A `kB` field of `/proc/PID/status`, in bytes (0 when unreadable).
pub(crate) fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
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
