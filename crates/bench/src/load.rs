//! The load client: worker threads, each with its own runtime and pool of kept-alive
//! connections, that open formula streams, read them with the lean [`Scanner`] over the lean
//! [`http1`](crate::http1) and report per-stream timings.
//!
//! Connections and read buffers are per thread, so work is handed to workers through channels and
//! the results come back through oneshots; scenarios bound concurrency with `buffer_unordered`.
//!
//! Live streams ([`LiveSpec`]) are read the same way; each thread counts their events and samples
//! their arrival times into its [`Tally`], which [`LoadClient::collect`] takes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::rt::time::{Instant, timeout};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::http1::{BodyDecoder, Conn, Head, parse_head};
use crate::scan::{Kind, Scanner, Seen};
use crate::tally::{Tally, unix_ns};

/// One stream to open.
#[derive(Debug, Clone, Default)]
pub struct StreamSpec {
    /// Path and query, e.g. `/api/formula-results-with-charts?formula=largecaps`.
    pub path: String,
    /// The service to ask (`http://127.0.0.1:PORT`) when not the client's own (several
    /// instances).
    pub base: Option<Arc<str>>,
    /// Keep reading until this turns `true`, then hang up (idle streams).
    pub hold: Option<watch::Receiver<bool>>,
    /// Told `true` when the first event (`formula-results`) arrived, `false` when the stream
    /// ended without it.
    pub opened: Option<mpsc::UnboundedSender<bool>>,
    /// Longest silence tolerated on the body before the stream counts as failed.
    pub idle_timeout: Option<Duration>,
    /// Hang up as soon as the first event arrived.
    pub stop_after_first: bool,
    /// Extra request header lines, each ending in CRLF (e.g. `last-event-id: ...\r\n`).
    pub headers: String,
    /// Keep the id of the last event (for a resume).
    pub keep_id: bool,
    /// A live stream (`live=true`): its live events are counted and sampled, and `opened` is told
    /// at its first live event instead of at `formula-results`.
    pub live: Option<LiveSpec>,
}

/// How a live stream is read and recorded.
#[derive(Debug, Clone, Default)]
pub struct LiveSpec {
    /// The group its events are counted in ([`crate::tally::GROUPS`]).
    pub group: u8,
    /// Count the live events that arrive within this long of the first one.
    pub burst: Option<Duration>,
    /// Read slowly.
    pub slow: Option<Slow>,
}

/// A slow reader: a small receive buffer on its own connection, and a pause after every read.
#[derive(Debug, Clone, Copy)]
pub struct Slow {
    /// `SO_RCVBUF` asked for (the kernel doubles it).
    pub rcvbuf: u32,
    pub pause: Duration,
}

/// What one stream did.
#[derive(Debug, Clone, Default)]
pub struct StreamResult {
    pub status: u16,
    /// Request start to the response head.
    pub head: Option<Duration>,
    /// Request start to the `formula-results` event parsed.
    pub first_event: Option<Duration>,
    /// Request start to the first `chart-batch` event parsed.
    pub first_batch: Option<Duration>,
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
    /// Live `bar` and `quote` events.
    pub bars: u64,
    pub quotes: u64,
    /// Request start to the first live event.
    pub first_live: Option<Duration>,
    /// Live events within [`LiveSpec::burst`] of the first.
    pub burst_events: u64,
    /// The id of the last event (with [`StreamSpec::keep_id`]).
    pub last_id: Option<String>,
}

impl StreamResult {
    pub fn completed(&self) -> bool {
        self.error.is_none() && self.complete_at.is_some()
    }
}

/// Bytes a stream reads before letting the thread's other streams run.
const YIELD_AFTER_BYTES: usize = 64 * 1024;

/// A thread's kept-alive connections, waiting for their next request, by host (streams of one
/// client may go to several instances).
type Idle = Rc<RefCell<HashMap<String, Vec<Conn>>>>;

/// A thread's live record, shared by its streams.
type SharedTally = Rc<RefCell<Tally>>;

enum Job {
    Stream {
        base: Arc<str>,
        spec: StreamSpec,
        reply: oneshot::Sender<StreamResult>,
    },
    /// Hand over the thread's counts and samples since the last time.
    Collect(oneshot::Sender<Tally>),
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
        let job = Job::Stream {
            base: spec.base.clone().unwrap_or_else(|| self.base.clone()),
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

impl LoadClient {
    /// Every thread's live record since the last collection, merged.
    pub async fn collect(&self) -> Tally {
        let mut pending = Vec::new();
        for worker in &self.workers {
            let (tx, rx) = oneshot::channel();
            if worker.send(Job::Collect(tx)).is_ok() {
                pending.push(rx);
            }
        }
        let mut all = Tally::default();
        for rx in pending {
            if let Ok(t) = rx.await {
                all.merge(t);
            }
        }
        all
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
        let tally = SharedTally::default();
        while let Some(job) = rx.recv().await {
            match job {
                Job::Stream { base, spec, reply } => {
                    let (idle, tally) = (idle.clone(), tally.clone());
                    actix_web::rt::spawn(async move {
                        let result = run(&idle, &tally, &base, spec).await;
                        let _ = reply.send(result);
                    });
                }
                Job::Collect(reply) => {
                    let _ = reply.send(tally.borrow_mut().take_window());
                }
            }
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

async fn run(idle: &Idle, tally: &SharedTally, base: &str, spec: StreamSpec) -> StreamResult {
    let started = Instant::now();
    let mut res = StreamResult::default();
    let host = base.strip_prefix("http://").unwrap_or(base);
    let limit = Duration::from_secs(120);
    let rcvbuf = spec.live.as_ref().and_then(|l| l.slow).map(|s| s.rcvbuf);
    let opened = match timeout(
        limit,
        request(idle, host, &spec.path, &spec.headers, rcvbuf),
    )
    .await
    {
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
            if let Some(conn) = read_body(conn, &head, &rest, spec, started, tally, &mut res).await
            {
                idle.borrow_mut()
                    .entry(host.to_string())
                    .or_default()
                    .push(conn.served());
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
/// closed meanwhile is replaced once. With `rcvbuf` the request goes on a new connection with that
/// receive buffer.
async fn request(
    idle: &Idle,
    host: &str,
    path: &str,
    headers: &str,
    rcvbuf: Option<u32>,
) -> io::Result<(Conn, Head, Vec<u8>)> {
    loop {
        let pooled = if rcvbuf.is_some() {
            None
        } else {
            idle.borrow_mut().get_mut(host).and_then(Vec::pop)
        };
        let mut conn = match (pooled, rcvbuf) {
            (Some(conn), _) => conn,
            (None, None) => Conn::open(host).await?,
            (None, Some(size)) => {
                let addr: SocketAddr = host
                    .parse()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
                Conn::open_with_rcvbuf(addr, size).await?
            }
        };
        let reused = conn.reused();
        match send_and_read_head(&mut conn, host, path, headers).await {
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
    headers: &str,
) -> io::Result<Option<(Head, Vec<u8>)>> {
    let headers = format!("accept: text/event-stream\r\n{headers}");
    conn.get(host, path, &headers).await?;
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
    tally: &SharedTally,
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
    let live = spec.live;
    let mut stream = StreamReader {
        scanner: Scanner::keeping_ids(spec.keep_id),
        events: Vec::new(),
        body,
        stamp: live.is_some(),
        at_ns: 0,
    };
    let slow = live.as_ref().and_then(|l| l.slow);
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
            on_event(
                &event,
                started,
                spec.stop_after_first,
                live.is_some(),
                &mut opened,
                res,
            );
            if let (Some(live), Kind::Bar | Kind::Quote) = (&live, event.kind) {
                on_live(live, &event, started, stream.at_ns, tally, &mut opened, res);
            }
        }
        if res.released || stream.body.done() {
            res.ended = stream.body.done();
            break;
        }
        if let Some(slow) = slow {
            match hold.as_mut() {
                Some(hold) => tokio::select! {
                    _ = actix_web::rt::time::sleep(slow.pause) => {}
                    _ = hold.wait_for(|stop| *stop) => {
                        res.released = true;
                        break;
                    }
                },
                None => actix_web::rt::time::sleep(slow.pause).await,
            }
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
    if !stream.scanner.last_id.is_empty() {
        res.last_id = Some(String::from_utf8_lossy(&stream.scanner.last_id).into_owned());
    }
    (res.ended && res.error.is_none() && head.keep_alive).then_some(conn)
}

/// A stream's body decoder and event scanner.
struct StreamReader {
    scanner: Scanner,
    events: Vec<Seen>,
    body: BodyDecoder,
    /// Read the clock at every read (live streams), into `at_ns`.
    stamp: bool,
    at_ns: i64,
}

impl StreamReader {
    /// Decodes one read's bytes into events.
    fn feed(&mut self, bytes: &[u8], res: &mut StreamResult) -> io::Result<()> {
        if self.stamp {
            self.at_ns = unix_ns();
        }
        let StreamReader {
            scanner,
            events,
            body,
            ..
        } = self;
        body.feed(bytes, |data| {
            res.bytes += data.len() as u64;
            scanner.feed(data, events);
        })
    }
}

fn on_event(
    event: &Seen,
    started: Instant,
    stop_after_first: bool,
    live: bool,
    opened: &mut OpenedSignal,
    res: &mut StreamResult,
) {
    res.events += 1;
    let data = event.data.as_deref().unwrap_or_default();
    match event.kind {
        Kind::FormulaResults => {
            res.first_event = Some(started.elapsed());
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                res.total_charts = v["data"]["totalCharts"].as_u64().unwrap_or(0);
            }
            if !live {
                opened.fire();
            }
            if stop_after_first {
                res.released = true;
            }
        }
        Kind::ChartBatch => {
            res.batches += 1;
            res.first_batch.get_or_insert_with(|| started.elapsed());
        }
        Kind::Complete => {
            res.complete_at = Some(started.elapsed());
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                let d = &v["data"];
                res.successful = d["successfulCharts"].as_u64().unwrap_or(0);
                res.failed = d["failedCharts"].as_u64().unwrap_or(0);
                res.cached = d["cachedCharts"].as_u64().unwrap_or(0);
            }
        }
        Kind::StreamError => {
            res.error = Some(format!("stream-error: {data}"));
        }
        _ => {}
    }
}

/// A live event of a live stream, read at `at_ns`.
fn on_live(
    live: &LiveSpec,
    event: &Seen,
    started: Instant,
    at_ns: i64,
    tally: &SharedTally,
    opened: &mut OpenedSignal,
    res: &mut StreamResult,
) {
    let bar = event.kind == Kind::Bar;
    if bar {
        res.bars += 1;
    } else {
        res.quotes += 1;
    }
    let now = started.elapsed();
    let first = *res.first_live.get_or_insert(now);
    if live.burst.is_some_and(|b| now <= first + b) {
        res.burst_events += 1;
    }
    opened.fire();
    tally
        .borrow_mut()
        .record(live.group, bar, event.hash, at_ns);
}
