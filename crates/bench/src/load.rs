//! The load client: worker threads, each with its own runtime and pool of kept-alive
//! connections, that open formula streams, read them with the lean [`Scanner`] over the lean
//! [`http1`](crate::http1) and report per-stream timings.
//!
//! Connections and read buffers are per thread, so work is handed to workers through channels and
//! the results come back through oneshots; scenarios bound concurrency with `buffer_unordered`.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::rt::time::{Instant, timeout};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::http1::{BodyDecoder, Conn, Head, parse_head};
use crate::scan::{Scanner, Seen};

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
    /// Reads after the first event that completed no event: the keep-alive comments of an idle
    /// stream.
    pub quiet_reads: u64,
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

/// A thread's kept-alive connections, waiting for their next request.
type Idle = Rc<RefCell<Vec<Conn>>>;

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
        let idle = Idle::default();
        while let Some(job) = rx.recv().await {
            let idle = idle.clone();
            actix_web::rt::spawn(async move {
                let result = run(&idle, &job.base, job.spec).await;
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

async fn run(idle: &Idle, base: &str, spec: StreamSpec) -> StreamResult {
    let started = Instant::now();
    let mut res = StreamResult::default();
    let host = base.strip_prefix("http://").unwrap_or(base);
    let limit = Duration::from_secs(120);
    let opened = match timeout(limit, request(idle, host, &spec.path)).await {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(e)) => Err(format!("request: {e}")),
        Err(_) => Err(format!(
            "request: no response head in {} s",
            limit.as_secs()
        )),
    };
    match opened {
        Ok((conn, head, rest)) => {
            res.status = head.status;
            res.head = Some(started.elapsed());
            if let Some(conn) = read_body(conn, &head, &rest, spec, started, &mut res).await {
                idle.borrow_mut().push(conn.served());
            }
        }
        Err(e) => res.error = Some(e),
    }
    if res.error.is_none() && res.complete_at.is_none() && !res.released {
        res.error = Some("the stream ended without `complete`".into());
    }
    res.total = started.elapsed();
    res
}

/// Sends the request on a kept-alive connection of the thread or a new one, and reads the head:
/// the connection, the head and the body bytes read with it. A kept-alive connection the server
/// closed meanwhile is replaced once.
async fn request(idle: &Idle, host: &str, path: &str) -> io::Result<(Conn, Head, Vec<u8>)> {
    loop {
        let pooled = idle.borrow_mut().pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => Conn::open(host).await?,
        };
        let reused = conn.reused();
        match send_and_read_head(&mut conn, host, path).await {
            Ok(Some((head, rest))) => return Ok((conn, head, rest)),
            Ok(None) if reused => continue,
            Err(e) if reused && e.kind() != io::ErrorKind::InvalidData => continue,
            Ok(None) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before answering",
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `None` when the server closed the connection before a byte of the answer.
async fn send_and_read_head(
    conn: &mut Conn,
    host: &str,
    path: &str,
) -> io::Result<Option<(Head, Vec<u8>)>> {
    conn.get(host, path, "accept: text/event-stream\r\n")
        .await?;
    let mut buf = Vec::new();
    loop {
        let got = conn.read(|bytes| buf.extend_from_slice(bytes)).await?;
        if got.is_none() {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection inside the response head",
                ))
            };
        }
        if let Some((head, len)) = parse_head(&buf)? {
            buf.drain(..len);
            return Ok(Some((head, buf)));
        }
    }
}

/// Reads the body into `res`; gives the connection back when it can serve another request.
async fn read_body(
    mut conn: Conn,
    head: &Head,
    rest: &[u8],
    spec: StreamSpec,
    started: Instant,
    res: &mut StreamResult,
) -> Option<Conn> {
    let mut body = BodyDecoder::new(head.framing);
    if head.status != 200 {
        let mut text = Vec::new();
        let mut read = body.feed(rest, |b| text.extend_from_slice(b));
        while read.is_ok() && !body.done() && text.len() < 64 * 1024 {
            read = match timeout(
                Duration::from_secs(10),
                conn.read(|bytes| body.feed(bytes, |b| text.extend_from_slice(b))),
            )
            .await
            {
                Ok(Ok(Some(fed))) => fed,
                Ok(Ok(None)) => body.closed(),
                Ok(Err(e)) => Err(e),
                Err(_) => break,
            };
        }
        res.error = Some(format!(
            "HTTP {}: {}",
            head.status,
            String::from_utf8_lossy(&text).trim()
        ));
        return None;
    }

    let mut opened = OpenedSignal(spec.opened);
    let mut stream = StreamReader {
        scanner: Scanner::default(),
        events: Vec::new(),
        body,
    };
    let idle = spec.idle_timeout.unwrap_or(Duration::from_secs(120));
    let mut hold = spec.hold;
    let mut since_yield = 0;
    let mut fed = stream.feed(rest, res);
    let mut bytes_before = res.bytes;
    loop {
        if let Err(e) = fed {
            res.error = Some(format!("body: {e}"));
            break;
        }
        for event in stream.events.drain(..) {
            on_event(event, started, spec.stop_after_first, &mut opened, res);
        }
        if res.released || stream.body.done() {
            res.ended = stream.body.done();
            break;
        }
        let next = match hold.as_mut() {
            Some(hold) => tokio::select! {
                read = conn.read(|bytes| stream.feed(bytes, res)) => Ok(read),
                _ = hold.wait_for(|stop| *stop) => {
                    res.released = true;
                    break;
                }
            },
            None => timeout(idle, conn.read(|bytes| stream.feed(bytes, res))).await,
        };
        fed = match next {
            Err(_) => {
                res.error = Some(format!("no byte for {} s", idle.as_secs()));
                break;
            }
            Ok(Ok(Some(fed))) => fed,
            Ok(Ok(None)) => {
                res.ended = true;
                if hold.is_some() {
                    res.error = Some("the server ended a held stream".into());
                } else if let Err(e) = stream.body.closed() {
                    res.error = Some(format!("body: {e}"));
                }
                break;
            }
            Ok(Err(e)) => Err(e),
        };
        if stream.events.is_empty() && res.first_event.is_some() {
            res.quiet_reads += 1;
        }
        since_yield += (res.bytes - bytes_before) as usize;
        bytes_before = res.bytes;
        if since_yield >= YIELD_AFTER_BYTES {
            // A socket read that finds bytes waiting never waits, so without this one stream of
            // cached batches would keep its client thread for megabytes while other streams'
            // first events wait unread: the harness would measure itself.
            since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
    (res.ended && res.error.is_none() && head.keep_alive).then_some(conn)
}

/// A stream's body decoder and event scanner.
struct StreamReader {
    scanner: Scanner,
    events: Vec<Seen>,
    body: BodyDecoder,
}

impl StreamReader {
    /// Decodes one read's bytes into events.
    fn feed(&mut self, bytes: &[u8], res: &mut StreamResult) -> io::Result<()> {
        let StreamReader {
            scanner,
            events,
            body,
        } = self;
        body.feed(bytes, |data| {
            res.bytes += data.len() as u64;
            scanner.feed(data, events);
        })
    }
}

fn on_event(
    event: Seen,
    started: Instant,
    stop_after_first: bool,
    opened: &mut OpenedSignal,
    res: &mut StreamResult,
) {
    res.events += 1;
    let data = event.data.as_deref().unwrap_or_default();
    match event.name.as_str() {
        "formula-results" => {
            res.first_event = Some(started.elapsed());
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                res.total_charts = v["data"]["totalCharts"].as_u64().unwrap_or(0);
            }
            opened.fire();
            if stop_after_first {
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
