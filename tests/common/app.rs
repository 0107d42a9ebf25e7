//! A running chartgate for black-box HTTP tests: [`spawn_app`] builds the real `Application` on
//! 127.0.0.1:0 (embedded simulator), [`spawn_app_remote`] against a simulator the test owns (so
//! it outlives the service, e.g. to check that shutdown closed every upstream connection), plus
//! helpers that read SSE streams whole or in part with chartgate's own `SseParser`.
//!
//! Shared by the test binaries (`mod common;`); not every binary uses every helper.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix::Addr;
use awc::ClientResponse;
use awc::http::header::HeaderMap;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use chartgate::app::{Application, Stopper};
use chartgate::config::{Settings, UpstreamMode};
use chartgate::manager::Manager;
use chartgate::watch::sse::{SseEvent, SseParser};
use chartgate_simulator::Faults;
use chartgate_simulator::Simulator;

/// How long any single response may take before a test fails instead of hanging.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// The simulator behind a test app: its address (for `/sim/stats` and `/sim/faults`) and, in
/// remote mode, the simulator itself.
pub struct SimHandle {
    pub addr: SocketAddr,
    owned: Option<Simulator>,
}

/// The simulator counters a test asserts on (a subset of `GET /sim/stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimCounters {
    pub connections_open: u64,
    pub connections_total: u64,
    pub series_served: u64,
    pub handshakes_rejected: u64,
    /// `resolve_symbol` calls answered: the simulator has received that many chart requests.
    pub symbols_resolved: u64,
}

impl SimHandle {
    /// The counters, read over HTTP so they work for the embedded simulator too.
    pub async fn stats(&self) -> SimCounters {
        if let Some(sim) = &self.owned {
            let s = sim.stats();
            return SimCounters {
                connections_open: s.connections_open,
                connections_total: s.connections_total,
                series_served: s.series_served,
                handshakes_rejected: s.handshakes_rejected,
                symbols_resolved: s.symbols_resolved,
            };
        }
        let mut resp = client()
            .get(format!("http://{}/sim/stats", self.addr))
            .send()
            .await
            .expect("GET /sim/stats");
        let v: Value = resp.json().await.expect("sim stats JSON");
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
        SimCounters {
            connections_open: n("connectionsOpen"),
            connections_total: n("connectionsTotal"),
            series_served: n("seriesServed"),
            handshakes_rejected: n("handshakesRejected"),
            symbols_resolved: n("symbolsResolved"),
        }
    }

    /// The simulator itself, for a test that started it ([`spawn_app_remote`]).
    pub fn owned(&self) -> &Simulator {
        self.owned
            .as_ref()
            .expect("a simulator the test owns (spawn_app_remote)")
    }

    /// Replaces every fault (as `POST /sim/faults` does).
    pub async fn set_faults(&self, faults: Faults) {
        if let Some(sim) = &self.owned {
            sim.set_faults(faults);
            return;
        }
        let resp = client()
            .post(format!("http://{}/sim/faults", self.addr))
            .send_json(&faults)
            .await
            .expect("POST /sim/faults");
        assert_eq!(resp.status(), 200, "the simulator took the faults");
    }

    /// Polls until `connections_open` is `want`, failing after `within`.
    pub async fn wait_connections_open(&self, want: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let open = self.stats().await.connections_open;
            if open == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "simulator connections_open stayed {open}, wanted {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub port: u16,
    pub client: awc::Client,
    pub sim: SimHandle,
    pub manager: Addr<Manager>,
    pub stopper: Stopper,
    /// The settings the application resolved (simulator URLs filled in).
    pub settings: Settings,
    /// `run_until_stopped`, spawned.
    pub server: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
}

/// An awc client whose timeout bounds every response, and which keeps no idle connection (so a
/// dropped stream is really closed).
pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .disable_redirects()
        .finish()
}

fn base_settings(configure: impl FnOnce(&mut Settings)) -> Settings {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut s = Settings::default();
    s.upstream.connect_timeout_ms = 5_000;
    s.upstream.request_timeout_ms = 10_000;
    configure(&mut s);
    s
}

async fn launch(settings: Settings, owned: Option<Simulator>) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    launch_on(listener, settings, owned).await
}

async fn launch_on(listener: TcpListener, settings: Settings, owned: Option<Simulator>) -> TestApp {
    let app = Application::build(settings, listener)
        .await
        .expect("build the application");
    let port = app.port();
    let sim_addr = match (&owned, app.simulator()) {
        (Some(sim), _) => sim.addr(),
        (None, Some(sim)) => sim.addr(),
        (None, None) => "127.0.0.1:9".parse().expect("an address"),
    };
    let manager = app.manager().clone();
    let stopper = app.stopper();
    let settings = app.settings().clone();
    let server = actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        port,
        client: client(),
        sim: SimHandle {
            addr: sim_addr,
            owned,
        },
        manager,
        stopper,
        settings,
        server,
    }
}

/// The service in embedded mode (its own simulator, built from `settings.simulator`).
pub async fn spawn_app(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = base_settings(configure);
    settings.upstream.mode = UpstreamMode::Embedded;
    launch(settings, None).await
}

/// The service in remote mode against a simulator started here from `settings.simulator`, which
/// the returned app owns and which keeps running after the service stops.
pub async fn spawn_app_remote(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    spawn_app_remote_on(listener, configure).await
}

/// [`spawn_app_remote`], serving on `listener` (e.g. one whose socket options its accepted
/// connections inherit).
pub async fn spawn_app_remote_on(
    listener: TcpListener,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = base_settings(configure);
    let sim_listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let sim = Simulator::start(&settings.simulator, sim_listener)
        .await
        .expect("start the simulator");
    settings.upstream.mode = UpstreamMode::Remote;
    settings.upstream.url = sim.feed_url();
    settings.upstream.token_url = sim.token_url();
    if settings.formulas.source_url.is_empty() {
        settings.formulas.source_url = sim.screen_url();
    }
    launch_on(listener, settings, Some(sim)).await
}

/// A simulator for several services to share (the cluster tests' one upstream), started from
/// the default simulator settings as `configure` leaves them.
pub async fn start_simulator(
    configure: impl FnOnce(&mut chartgate_simulator::SimulatorSettings),
) -> Simulator {
    let mut settings = Settings::default().simulator;
    configure(&mut settings);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    Simulator::start(&settings, listener)
        .await
        .expect("start the simulator")
}

/// The service in remote mode against `sim`, which the test owns and shares with other services
/// (several instances of one cluster); its counters are read over HTTP.
pub async fn spawn_app_on(sim: &Simulator, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = base_settings(configure);
    settings.upstream.mode = UpstreamMode::Remote;
    settings.upstream.url = sim.feed_url();
    settings.upstream.token_url = sim.token_url();
    if settings.formulas.source_url.is_empty() {
        settings.formulas.source_url = sim.screen_url();
    }
    let mut app = launch(settings, None).await;
    app.sim.addr = sim.addr();
    app
}

/// A service on a slow feed (one connection, one series at a time, 300 ms a series) whose stream
/// at `path_and_query` is cut by a graceful shutdown as soon as its `formula-results` arrives:
/// what the client read, and the stopped app (its server task still to be awaited).
pub async fn stream_cut_by_shutdown(path_and_query: &str) -> (StreamRead, TestApp) {
    let app = spawn_app_remote(|s| {
        s.simulator.faults.latency_ms = 300;
        s.simulator.faults.series_concurrency = 1;
        s.pool.max_connections = 1;
    })
    .await;
    let mut stopper = Some(app.stopper.clone());
    let s = read_stream_until(app.get(path_and_query), |e| {
        if let Some(stopper) = stopper.take().filter(|_| e.event == "formula-results") {
            actix_web::rt::spawn(async move { stopper.stop().await });
        }
        false
    })
    .await;
    (s, app)
}

impl TestApp {
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    pub fn get(&self, path_and_query: &str) -> awc::ClientRequest {
        self.client.get(self.url(path_and_query))
    }

    pub fn post(&self, path_and_query: &str) -> awc::ClientRequest {
        self.client.post(self.url(path_and_query))
    }

    /// GET, then the status and the body as JSON (`Value::Null` when it is not JSON).
    pub async fn get_json(&self, path_and_query: &str) -> (u16, Value) {
        send_json(self.get(path_and_query)).await
    }

    /// The whole stream at `path_and_query`.
    pub async fn stream(&self, path_and_query: &str) -> StreamRead {
        read_stream(self.get(path_and_query)).await
    }

    /// `/api/connections/stats` as JSON.
    pub async fn conn_stats(&self) -> Value {
        let (status, body) = self.get_json("/api/connections/stats").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let mut resp = self.get("/metrics").send().await.expect("GET /metrics");
        assert_eq!(resp.status(), 200);
        let body = resp.body().limit(16 << 20).await.expect("the metrics");
        String::from_utf8(body.to_vec()).expect("metrics are UTF-8")
    }

    /// Polls `/api/connections/stats` until `refCount` is `want`, failing after `within`.
    pub async fn wait_ref_count(&self, want: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let stats = self.conn_stats().await;
            if stats["refCount"] == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "refCount did not return to {want}: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends a request and reads the answer as JSON.
pub async fn send_json(req: awc::ClientRequest) -> (u16, Value) {
    let resp = req.send().await.expect("send the request");
    response_json(resp).await
}

pub async fn response_json<S>(mut resp: ClientResponse<S>) -> (u16, Value)
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    let status = resp.status().as_u16();
    let body = resp.body().limit(64 << 20).await.expect("read the body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A stream as a client saw it.
#[derive(Debug)]
pub struct StreamRead {
    pub status: u16,
    pub headers: HeaderMap,
    /// Every byte of the body, to check the wire format.
    pub raw: Vec<u8>,
    pub events: Vec<SseEvent>,
    /// The `retry:` the server asked for.
    pub retry: Option<Duration>,
}

impl StreamRead {
    pub fn names(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.event.as_str()).collect()
    }

    /// The `data` of every event named `name`, parsed.
    pub fn data_of(&self, name: &str) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| e.event == name)
            .map(|e| serde_json::from_str(&e.data).expect("event data is JSON"))
            .collect()
    }

    pub fn last_id(&self) -> Option<&str> {
        self.events.last().and_then(|e| e.id.as_deref())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// Sends `req` and reads the whole stream (until the server ends it).
pub async fn read_stream(req: awc::ClientRequest) -> StreamRead {
    let resp = req.send().await.expect("open the stream");
    read_response(resp, |_| false).await
}

/// Reads a response's SSE events until the server ends the body or `stop` returns true for an
/// event; the response (and its connection) is dropped on return.
pub async fn read_response<S>(
    mut resp: ClientResponse<S>,
    mut stop: impl FnMut(&SseEvent) -> bool,
) -> StreamRead
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut parser = SseParser::new();
    let mut raw = Vec::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    'read: loop {
        let chunk = tokio::time::timeout_at(deadline, resp.next())
            .await
            .expect("the stream ended in time");
        let Some(chunk) = chunk else { break };
        let chunk = chunk.expect("read a chunk of the stream");
        raw.extend_from_slice(&chunk);
        for event in parser.feed(&chunk).expect("valid SSE") {
            let done = stop(&event);
            events.push(event);
            if done {
                break 'read;
            }
        }
    }
    StreamRead {
        status,
        headers,
        raw,
        events,
        retry: parser.retry(),
    }
}

/// Opens the stream and reads until `stop` says so, then drops the connection.
pub async fn read_stream_until(
    req: awc::ClientRequest,
    stop: impl FnMut(&SseEvent) -> bool,
) -> StreamRead {
    let resp = req.send().await.expect("open the stream");
    read_response(resp, stop).await
}

/// Samples the simulator's open feed connections until `done` holds; the highest seen.
pub async fn most_connections(sim: &Simulator, done: &std::cell::Cell<bool>) -> u64 {
    let mut most = 0;
    while !done.get() {
        most = most.max(sim.stats().connections_open);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    most.max(sim.stats().connections_open)
}
