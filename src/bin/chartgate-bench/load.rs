//! The load client: worker threads, each with its own actix system and awc client, that open
//! formula streams, read them with the lean [`Scanner`] and report per-stream timings.
//!
//! awc clients are per thread (`!Send`), so work is handed to workers through channels and the
//! results come back through oneshots; scenarios bound concurrency with `buffer_unordered`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::rt::time::{Instant, timeout};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::scan::Scanner;

/// One stream to open.
#[derive(Debug, Clone, Default)]
pub struct StreamSpec {
    /// Path and query, e.g. `/api/formula-results-with-charts?formula=largecaps`.
    pub path: String,
    /// Keep reading until this turns `true`, then hang up (idle streams).
    pub hold: Option<watch::Receiver<bool>>,
    /// Told `true` when the first event (`formula-results`) arrived, `false` when the stream
    /// ended without it.
    pub opened: Option<mpsc::UnboundedSender<bool>>,
    /// Longest silence tolerated on the body before the stream counts as failed.
    pub idle_timeout: Option<Duration>,
    /// Hang up as soon as the first event arrived.
    pub stop_after_first: bool,
}

/// What one stream did.
#[derive(Debug, Clone, Default)]
pub struct StreamResult {
    pub status: u16,
    /// Request start to the response head.
    pub head: Option<Duration>,
    /// Request start to the `formula-results` event parsed.
    pub first_event: Option<Duration>,
    /// Request start to the `complete` event parsed.
    pub complete_at: Option<Duration>,
    pub total: Duration,
    pub events: u64,
    pub batches: u64,
    pub bytes: u64,
    /// Chunks and bytes received after the first event without carrying another event: the
    /// keep-alive comments of an idle stream.
    pub quiet_chunks: u64,
    pub total_charts: u64,
    pub successful: u64,
    pub failed: u64,
    pub cached: u64,
    /// A transport error, a non-200 answer, or a `stream-error` event.
    pub error: Option<String>,
    /// The body ended (by the server) before the client hung up.
    pub ended: bool,
    /// The client hung up because `hold` said so.
    pub released: bool,
}

impl StreamResult {
    pub fn completed(&self) -> bool {
        self.error.is_none() && self.complete_at.is_some()
    }
}

/// Bytes a stream reads before letting the thread's other streams run.
const YIELD_AFTER_BYTES: usize = 64 * 1024;

struct Job {
    base: Arc<str>,
    spec: StreamSpec,
    reply: oneshot::Sender<StreamResult>,
}

/// A pool of client threads.
pub struct LoadClient {
    workers: Vec<mpsc::UnboundedSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    next: AtomicUsize,
    base: Arc<str>,
}

impl LoadClient {
    pub fn new(base: &str, threads: usize) -> LoadClient {
        let mut workers = Vec::new();
        let mut handles = Vec::new();
        for n in 0..threads.max(1) {
            let (tx, rx) = mpsc::unbounded_channel::<Job>();
            workers.push(tx);
            let handle = std::thread::Builder::new()
                .name(format!("bench-client-{n}"))
                .spawn(move || worker(rx))
                .expect("spawn a client thread");
            handles.push(handle);
        }
        LoadClient {
            workers,
            threads: handles,
            next: AtomicUsize::new(0),
            base: base.into(),
        }
    }

    /// Opens one stream on the next worker at once (not when the future is first polled) and
    /// gives a future of its result.
    pub fn stream(&self, spec: StreamSpec) -> impl Future<Output = StreamResult> + use<> {
        let (reply, rx) = oneshot::channel();
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        let job = Job {
            base: self.base.clone(),
            spec,
            reply,
        };
        let sent = self.workers[n].send(job).is_ok();
        async move {
            if !sent {
                return StreamResult {
                    error: Some("client worker stopped".into()),
                    ..StreamResult::default()
                };
            }
            rx.await.unwrap_or_else(|_| StreamResult {
                error: Some("client worker dropped the stream".into()),
                ..StreamResult::default()
            })
        }
    }
}

impl Drop for LoadClient {
    fn drop(&mut self) {
        self.workers.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(mut rx: mpsc::UnboundedReceiver<Job>) {
    actix_web::rt::System::new().block_on(async move {
        let client = awc::Client::builder()
            .connector(
                awc::Connector::new()
                    .limit(0)
                    .timeout(Duration::from_secs(30)),
            )
            // awc carries the request timeout over to the response body; streams set their own.
            .disable_timeout()
            .finish();
        while let Some(job) = rx.recv().await {
            let client = client.clone();
            actix_web::rt::spawn(async move {
                let result = run(&client, &job.base, job.spec).await;
                let _ = job.reply.send(result);
            });
        }
    });
}

/// Says `true` once the first event arrived, or `false` when dropped before.
struct OpenedSignal(Option<mpsc::UnboundedSender<bool>>);

impl OpenedSignal {
    fn fire(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(true);
        }
    }
}

impl Drop for OpenedSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(false);
        }
    }
}

async fn run(client: &awc::Client, base: &str, spec: StreamSpec) -> StreamResult {
    let started = Instant::now();
    let mut opened = OpenedSignal(spec.opened);
    let mut res = StreamResult::default();
    let idle = spec.idle_timeout.unwrap_or(Duration::from_secs(120));
    let request = client
        .get(format!("{base}{}", spec.path))
        .insert_header(("Accept", "text/event-stream"));
    let mut resp = match timeout(Duration::from_secs(120), request.send()).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            res.error = Some(format!("request: {e}"));
            res.total = started.elapsed();
            return res;
        }
        Err(_) => {
            res.error = Some("request: no response head in 120 s".into());
            res.total = started.elapsed();
            return res;
        }
    };
    res.status = resp.status().as_u16();
    res.head = Some(started.elapsed());
    if res.status != 200 {
        let body = resp.body().limit(64 * 1024).await.unwrap_or_default();
        res.error = Some(format!(
            "HTTP {}: {}",
            res.status,
            String::from_utf8_lossy(&body).trim()
        ));
        res.total = started.elapsed();
        return res;
    }
    let mut scanner = Scanner::default();
    let mut since_yield = 0;
    let mut events = Vec::new();
    let mut hold = spec.hold;
    loop {
        let next = match hold.as_mut() {
            Some(hold) => tokio::select! {
                chunk = resp.next() => Ok(chunk),
                _ = hold.wait_for(|stop| *stop) => {
                    res.released = true;
                    break;
                }
            },
            None => timeout(idle, resp.next()).await,
        };
        let chunk = match next {
            Err(_) => {
                res.error = Some(format!("no byte for {} s", idle.as_secs()));
                break;
            }
            Ok(None) => {
                res.ended = true;
                if hold.is_some() {
                    res.error = Some("the server ended a held stream".into());
                }
                break;
            }
            Ok(Some(Err(e))) => {
                res.error = Some(format!("body: {e}"));
                break;
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        res.bytes += chunk.len() as u64;
        since_yield += chunk.len();
        if since_yield >= YIELD_AFTER_BYTES {
            // A socket read that finds bytes waiting never returns `Pending`, so without this
            // one stream of cached batches would keep its client thread for megabytes while
            // other streams' first events wait unread: the harness would measure itself.
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        scanner.feed(&chunk, &mut events);
        if events.is_empty() && res.first_event.is_some() {
            res.quiet_chunks += 1;
        }
        for event in events.drain(..) {
            res.events += 1;
            let data = event.data.as_deref().unwrap_or_default();
            match event.name.as_str() {
                "formula-results" => {
                    res.first_event = Some(started.elapsed());
                    if let Ok(v) = serde_json::from_str::<Value>(data) {
                        res.total_charts = v["data"]["totalCharts"].as_u64().unwrap_or(0);
                    }
                    opened.fire();
                    if spec.stop_after_first {
                        res.released = true;
                    }
                }
                "chart-batch" => res.batches += 1,
                "complete" => {
                    res.complete_at = Some(started.elapsed());
                    if let Ok(v) = serde_json::from_str::<Value>(data) {
                        let d = &v["data"];
                        res.successful = d["successfulCharts"].as_u64().unwrap_or(0);
                        res.failed = d["failedCharts"].as_u64().unwrap_or(0);
                        res.cached = d["cachedCharts"].as_u64().unwrap_or(0);
                    }
                }
                "stream-error" => {
                    res.error = Some(format!("stream-error: {data}"));
                }
                _ => {}
            }
        }
        if res.released {
            break;
        }
    }
    if res.error.is_none() && res.complete_at.is_none() && !res.released {
        res.error = Some("the stream ended without `complete`".into());
    }
    res.total = started.elapsed();
    res
}
