//! `chartgate serve` as a child process, as operators run it: started with its settings in
//! `CHARTGATE__SECTION__KEY` variables, its address read from its first stdout line, its log
//! collected all along (so the pipe never blocks and a test can search it), stopped with SIGTERM
//! or killed with SIGKILL. Plus plain blocking HTTP to it, for tests with no runtime.
//!
//! Shared by the test binaries (`mod common;`); not every binary uses every helper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

/// How long a start, a stop or a state may take before the test fails.
pub const WITHIN: Duration = Duration::from_secs(20);

/// What the process prints first: `chartgate: listening on http://ADDR/`.
const LISTENING: &str = "chartgate: listening on http://";

/// A running `chartgate serve`; killed (SIGKILL) when dropped, its log printed if the test is
/// failing.
pub struct ServeProcess {
    /// `127.0.0.1:PORT`, as the process printed it.
    pub addr: String,
    /// A name for messages (e.g. its instance id).
    pub name: String,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    stderr: Option<JoinHandle<()>>,
}

impl ServeProcess {
    /// Starts `chartgate serve --bind 127.0.0.1:0` with `env` (`RUST_LOG` is `info` unless `env`
    /// sets it) and waits for the line saying where it listens.
    pub fn start<K, V>(name: &str, env: impl IntoIterator<Item = (K, V)>) -> ServeProcess
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chartgate"));
        command
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start chartgate serve");

        let log = Arc::new(Mutex::new(String::new()));
        let mut pipe = BufReader::new(child.stderr.take().expect("its stderr"));
        let sink = log.clone();
        let stderr = std::thread::spawn(move || {
            let mut line = String::new();
            while pipe.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.lock().expect("the log").push_str(&line);
                line.clear();
            }
        });

        // The first stdout line on a thread of its own, so a process that dies or hangs before
        // printing it fails the test instead of blocking it; the rest is read to the end.
        let stdout = child.stdout.take().expect("its stdout");
        let (first_tx, first_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = first_tx.send(line);
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        let mut process = ServeProcess {
            addr: String::new(),
            name: name.to_string(),
            child: Some(child),
            log,
            stderr: Some(stderr),
        };
        let line = first_rx.recv_timeout(WITHIN).unwrap_or_default();
        process.addr = line
            .trim()
            .strip_prefix(LISTENING)
            .and_then(|rest| rest.strip_suffix('/'))
            .unwrap_or_else(|| {
                panic!(
                    "{name}: unexpected first line {line:?}; log:\n{}",
                    process.log()
                )
            })
            .to_string();
        process
    }

    /// `http://ADDR` followed by `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("the log").clone()
    }

    /// Its process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running process").id()
    }

    /// Sends `signal` with `kill`.
    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} {}", self.name);
    }

    /// SIGKILL, as a crash or the OOM killer would: nothing is handed over or given back. Returns
    /// once the process is gone.
    pub fn kill_hard(&mut self) {
        self.signal("-KILL");
        let mut child = self.child.take().expect("a running process");
        child.wait().expect("the killed process is reaped");
    }

    /// SIGTERM, then waits (at most [`WITHIN`]) for exit code 0; the whole log.
    pub fn stop(mut self) -> String {
        self.signal("-TERM");
        let mut child = self.child.take().expect("a running process");
        let deadline = Instant::now() + WITHIN;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for chartgate") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within {WITHIN:?} of SIGTERM; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(stderr) = self.stderr.take() {
            let _ = stderr.join();
        }
        let log = self.log();
        assert_eq!(
            status.code(),
            Some(0),
            "{} exit status {status:?}; log:\n{log}",
            self.name
        );
        log
    }

    /// A plain blocking GET (see [`http_get`]).
    pub fn get(&self, path: &str) -> (String, String) {
        http_get(&self.addr, path)
    }

    /// Polls the stats until `"redis"` is `want`, every 25 ms for at most [`WITHIN`] (counted in
    /// polls: a sync test has no runtime clock).
    pub fn wait_redis_state(&self, want: &str) {
        let polls = WITHIN.as_millis() / 25;
        for _ in 0..polls {
            let (_, body) = self.get("/api/connections/stats");
            if body.contains(&format!("\"redis\":\"{want}\"")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let (_, body) = self.get("/api/connections/stats");
        panic!("{}: stats never said redis {want}: {body}", self.name);
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
    }
}

/// A plain HTTP/1.1 GET to `addr`: the status line and the body.
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the service");
    stream.set_read_timeout(Some(WITHIN)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}
