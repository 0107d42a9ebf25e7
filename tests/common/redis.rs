//! A real `redis-server` for the tests (Debian's, which `.ci/run` installs): started on a free
//! loopback port in a temporary directory with persistence off, stopped when dropped; it can be
//! stopped and started again on the same port to test an outage; with TLS (`rediss://`) on a
//! self-signed certificate made for the run, when asked.
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
    /// Serving TLS only, with `cert.pem` and `key.pem` in `dir`.
    tls: bool,
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
        Self::start_with(None, false)
    }

    /// A server that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> Option<RedisServer> {
        Self::start_with(Some(password.to_string()), false)
    }

    /// A server that requires `password` and speaks only TLS, on a certificate for `127.0.0.1`
    /// signed by itself ([`RedisServer::ca_file`]).
    pub fn start_tls(password: &str) -> Option<RedisServer> {
        Self::start_with(Some(password.to_string()), true)
    }

    fn start_with(password: Option<String>, tls: bool) -> Option<RedisServer> {
        redis_server_binary()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let server_dir = tempfile::tempdir().expect("a temporary directory");
        if tls {
            let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
                .expect("a self-signed certificate");
            std::fs::write(server_dir.path().join("cert.pem"), made.cert.pem()).unwrap();
            std::fs::write(
                server_dir.path().join("key.pem"),
                made.key_pair.serialize_pem(),
            )
            .unwrap();
        }
        let mut server = RedisServer {
            port,
            password,
            tls,
            dir: server_dir,
            child: None,
        };
        server.run();
        Some(server)
    }

    /// Starts the process and waits for its "Ready to accept connections" line.
    fn run(&mut self) {
        let mut command = Command::new(REDIS_SERVER);
        if self.tls {
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(self.ca_file())
                .arg("--tls-key-file")
                .arg(self.dir.path().join("key.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        command
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

    /// `redis://127.0.0.1:PORT` (`rediss://` with TLS; with the password, when there is one).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.password {
            Some(password) => format!("{scheme}://:{password}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// The certificate a TLS server serves, which is its own CA: what a client must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
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
        let client = if self.tls {
            let ca = std::fs::read(self.ca_file()).expect("the server's certificate");
            redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca),
                },
            )
        } else {
            redis::Client::open(self.url())
        };
        client
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
