//! The processes under test: `chartgate simulate` and `chartgate serve`, each started as its own
//! child process on a free loopback port, so that the CPU time and memory read from `/proc` are
//! the service's alone. Children are killed when their handle drops (also on a panic).

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use actix_web::rt::time::{Instant, sleep};
use serde_json::{Value, json};

/// A free loopback port (bound then released; the child binds it right after).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// CPU time and memory of a process, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime of every thread, in microseconds.
    pub cpu_us: u64,
    /// VmRSS in bytes.
    pub rss: u64,
    /// VmHWM (peak RSS) in bytes.
    pub peak_rss: u64,
    pub threads: u64,
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// Samples `/proc/<pid>`; `pid` may be `"self"`.
pub fn sample(pid: &str) -> ProcSample {
    let mut out = ProcSample::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the command name (which may hold spaces) start at field 3 (state).
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime is field 14, stime 15 (1-based): indices 11 and 12 after the state field.
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            out.cpu_us = (ticks(11) + ticks(12)) * 1_000_000 / clock_ticks();
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kb = || {
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("VmRSS:") {
                out.rss = kb() * 1024;
            } else if line.starts_with("VmHWM:") {
                out.peak_rss = kb() * 1024;
            } else if line.starts_with("Threads:") {
                out.threads = kb();
            }
        }
    }
    out
}

/// CPU time of a process's live threads in nanoseconds, from `/proc/<pid>/task/*/schedstat`:
/// finer than [`sample`]'s clock ticks (10 ms), for figures of a few microseconds per request;
/// the time of threads that have exited is not in it.
pub fn cpu_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A child process killed on drop.
pub struct Proc {
    name: String,
    child: Child,
    pub log: PathBuf,
    /// Killed and waited for: its pid may belong to another process by now.
    reaped: bool,
}

impl Proc {
    pub(crate) fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> std::io::Result<Proc> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let file = File::create(&log)?;
        // Profiling hooks for the service only: `BENCH_SERVE_WRAPPER="valgrind --tool=callgrind"`
        // runs it under a tool, `BENCH_SERVE_ENV="K=V K2=V2"` adds variables (e.g. LD_PRELOAD).
        let serve = args.first().is_some_and(|a| a == "serve");
        let wrapper: Vec<String> = std::env::var("BENCH_SERVE_WRAPPER")
            .ok()
            .filter(|_| serve)
            .map(|w| w.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        let mut cmd = match wrapper.split_first() {
            Some((tool, tool_args)) => {
                let mut cmd = Command::new(tool);
                cmd.args(tool_args).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        if serve && let Ok(extra) = std::env::var("BENCH_SERVE_ENV") {
            for pair in extra.split_whitespace() {
                if let Some((k, v)) = pair.split_once('=') {
                    cmd.env(k, v);
                }
            }
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_CHILD_LOG").unwrap_or("info".into()),
            );
        // Only our variables: a CHARTGATE__* variable of the caller's shell must not leak in.
        for (key, _) in std::env::vars() {
            if key.starts_with("CHARTGATE__") {
                cmd.env_remove(key);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot start {}: {e}", bin.display()))
        })?;
        Ok(Proc {
            name: name.into(),
            child,
            log,
            reaped: false,
        })
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub fn sample(&self) -> ProcSample {
        sample(&self.pid())
    }

    /// SIGKILL (a crash, not a stop) and the wait for its exit.
    pub fn kill(&mut self) -> Result<(), String> {
        self.child
            .kill()
            .and_then(|()| self.child.wait())
            .map_err(|e| format!("cannot kill {}: {e}", self.name))?;
        self.reaped = true;
        Ok(())
    }

    pub(crate) fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!(
                "{} exited with {status}; see {}",
                self.name,
                self.log.display()
            )),
            _ => Ok(()),
        }
    }
}

impl Drop for Proc {
    /// SIGTERM first (a graceful stop, which also lets a profiler wrapper write its output),
    /// SIGKILL if the process is still there after a grace period.
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let grace = if std::env::var_os("BENCH_SERVE_WRAPPER").is_some() {
            Duration::from_secs(120)
        } else {
            Duration::from_secs(5)
        };
        let termed = Command::new("kill")
            .args(["-TERM", &self.pid()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if termed {
            let deadline = std::time::Instant::now() + grace;
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One small HTTP call to a control route; `None` body means GET.
pub async fn http_json(url: &str, body: Option<&Value>) -> Result<Value, String> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut resp = match body {
        Some(b) => client.post(url).send_json(b).await,
        None => client.get(url).send().await,
    }
    .map_err(|e| format!("{url}: {e}"))?;
    let bytes = resp
        .body()
        .limit(16 * 1024 * 1024)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!(
            "{url}: {} {}",
            resp.status(),
            String::from_utf8_lossy(&bytes)
        ));
    }
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{url}: {e}"))
}

async fn wait_ready(proc: &mut Proc, url: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        proc.check_alive()?;
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(2))
            .finish();
        if let Ok(resp) = client.get(url).send().await
            && resp.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{} not ready at {url} after 120 s", proc.name));
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// Simulated feed latencies (SPEC 6 faults).
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub connect_ms: u64,
    pub series_ms: u64,
    /// `series_concurrency`: series one feed connection works on at once (0: unbounded).
    pub series_concurrency: usize,
}

/// `section.key` settings as the environment variables that set them (`CHARTGATE__SECTION__KEY`).
fn config_env<'a>(pairs: impl Iterator<Item = (&'a str, String)>) -> Vec<(String, String)> {
    pairs
        .map(|(k, v)| {
            let var = format!("CHARTGATE__{}", k.to_ascii_uppercase().replace('.', "__"));
            (var, v)
        })
        .collect()
}

/// `chartgate simulate` on a free port.
pub struct Simulator {
    pub proc: Proc,
    pub base: String,
}

impl Simulator {
    pub async fn start(bin: &Path, log_dir: &Path, tag: &str) -> Result<Simulator, String> {
        Self::start_with(bin, log_dir, tag, &[]).await
    }

    /// With `overrides` (`simulator.key` pairs, e.g. `("simulator.heartbeat_secs", "1")`).
    pub async fn start_with(
        bin: &Path,
        log_dir: &Path,
        tag: &str,
        overrides: &[(&str, String)],
    ) -> Result<Simulator, String> {
        let env = config_env(overrides.iter().map(|(k, v)| (*k, v.clone())));
        let port = free_port().map_err(|e| e.to_string())?;
        let base = format!("http://127.0.0.1:{port}");
        let mut proc = Proc::spawn(
            &format!("{tag}-simulate"),
            bin,
            &[
                "simulate".into(),
                "--bind".into(),
                format!("127.0.0.1:{port}"),
            ],
            &env,
            log_dir,
        )
        .map_err(|e| e.to_string())?;
        wait_ready(&mut proc, &format!("{base}/sim/stats")).await?;
        Ok(Simulator { proc, base })
    }

    pub async fn set_latency(&self, l: Latency) -> Result<(), String> {
        self.set_faults(json!({
            "connect_latency_ms": l.connect_ms,
            "latency_ms": l.series_ms,
            "series_concurrency": l.series_concurrency,
        }))
        .await
    }

    pub async fn set_faults(&self, faults: Value) -> Result<(), String> {
        http_json(&format!("{}/sim/faults", self.base), Some(&faults))
            .await
            .map(|_| ())
    }

    pub async fn stats(&self) -> Result<Value, String> {
        http_json(&format!("{}/sim/stats", self.base), None).await
    }

    pub async fn series_served(&self) -> Result<u64, String> {
        Ok(self.stats().await?["seriesServed"].as_u64().unwrap_or(0))
    }

    pub fn feed_url(&self) -> String {
        format!(
            "{}/socket.io/websocket",
            self.base.replace("http://", "ws://")
        )
    }
}

/// `chartgate serve` in remote mode against a [`Simulator`].
pub struct Service {
    pub proc: Proc,
    pub base: String,
}

impl Service {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.base
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }

    /// `overrides` are `section.key` pairs, passed as `CHARTGATE__SECTION__KEY`.
    pub async fn start(
        bin: &Path,
        log_dir: &Path,
        tag: &str,
        sim: &Simulator,
        overrides: &[(&str, String)],
    ) -> Result<Service, String> {
        let port = free_port().map_err(|e| e.to_string())?;
        let base = format!("http://127.0.0.1:{port}");
        let mut env: Vec<(String, String)> = vec![
            ("upstream.mode".into(), "remote".into()),
            ("upstream.url".into(), sim.feed_url()),
            ("upstream.token_url".into(), format!("{}/chart/", sim.base)),
            (
                "formulas.source_url".into(),
                format!("{}/run/screen", sim.base),
            ),
        ];
        env.extend(overrides.iter().map(|(k, v)| ((*k).to_string(), v.clone())));
        let env = config_env(env.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let mut proc = Proc::spawn(
            &format!("{tag}-serve"),
            bin,
            &["serve".into(), "--bind".into(), format!("127.0.0.1:{port}")],
            &env,
            log_dir,
        )
        .map_err(|e| e.to_string())?;
        wait_ready(&mut proc, &format!("{base}/healthz")).await?;
        Ok(Service { proc, base })
    }

    pub fn sample(&self) -> ProcSample {
        self.proc.sample()
    }

    pub async fn force_cleanup(&self) -> Result<(), String> {
        http_json(
            &format!("{}/api/connections/force-cleanup", self.base),
            Some(&json!({})),
        )
        .await
        .map(|_| ())
    }

    pub async fn stats(&self) -> Result<Value, String> {
        http_json(&format!("{}/api/connections/stats", self.base), None).await
    }
}

/// A GET returning the status and body, for timing plain routes.
pub async fn http_get(client: &awc::Client, url: &str) -> Result<(u16, bytes::Bytes), String> {
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let body = resp
        .body()
        .limit(16 * 1024 * 1024)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    Ok((resp.status().as_u16(), body))
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Bytes waiting in the kernel's send queues of the established TCP sockets whose local port is
/// `port` (a server's accepted connections), from `/proc/net/tcp`: the total and the largest.
pub fn send_queues(port: u16) -> (u64, u64) {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return (0, 0);
    };
    let (mut total, mut largest) = (0u64, 0u64);
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(queues)) = (f.get(1), f.get(3), f.get(4)) else {
            continue;
        };
        let local_port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        // 01: ESTABLISHED.
        if local_port != Some(port) || *state != "01" {
            continue;
        }
        let tx = queues
            .split_once(':')
            .and_then(|(tx, _)| u64::from_str_radix(tx, 16).ok())
            .unwrap_or(0);
        total += tx;
        largest = largest.max(tx);
    }
    (total, largest)
}
