//! A real `redis-server` for the tests (Debian's, which `.ci/run` installs): started on a free
//! loopback port in a temporary directory with persistence off, stopped when dropped; it can be
//! stopped and started again on the same port to test an outage.
//!
//! Shared by the test binaries (`mod common;`); not every binary uses every helper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Where Debian installs it.
const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// `redis-server`'s path, or `None` (with a notice) where it is not installed and the run does
/// not require it (`CI` or `CHARTGATE_REQUIRE_REDIS=1` unset): such a test passes without Redis.
pub fn redis_server_binary() -> Option<PathBuf> {
    let path = Path::new(REDIS_SERVER);
    if path.exists() {
        return Some(path.to_path_buf());
    }
    let required = std::env::var_os("CI").is_some()
        || std::env::var("CHARTGATE_REQUIRE_REDIS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{REDIS_SERVER} is missing: apt-get install redis-server (.ci/run does)"
    );
    eprintln!("notice: {REDIS_SERVER} is not installed; skipping a test that needs Redis");
    None
}

impl RedisServer {
    /// A server with no password; `None` when `redis-server` is not installed (see
    /// [`redis_server_binary`]).
    pub fn start() -> Option<RedisServer> {
        Self::start_with(None)
    }

    /// A server that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> Option<RedisServer> {
        Self::start_with(Some(password.to_string()))
    }

    fn start_with(password: Option<String>) -> Option<RedisServer> {
        redis_server_binary()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = RedisServer {
            port,
            password,
            dir: tempfile::tempdir().expect("a temporary directory"),
            child: None,
        };
        server.run();
        Some(server)
    }

    /// Starts the process and waits for its "Ready to accept connections" line.
    fn run(&mut self) {
        let mut command = Command::new(REDIS_SERVER);
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--logfile", ""])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let stdout = child.stdout.take().expect("redis-server's stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            // Read to the end, so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(START_TIMEOUT)
            .expect("redis-server said it is ready");
        self.child = Some(child);
    }

    /// `redis://127.0.0.1:PORT` (with the password, when there is one).
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Stops the server (SIGKILL: an outage, not a goodbye) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty (persistence is off).
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// A connection for the test to look at what chartgate stored.
    pub async fn connect(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
