//! Live streams (`live=true`) as a client sees them: a stream read event by event for as long as
//! the test wants ([`LiveStream`]), the charts it shows once its history and its `bar` events are
//! applied as SPEC 3.5 says ([`ChartView`]), and a reader on a socket with a tiny receive buffer
//! for tests about readers that stop reading ([`raw_get`]).
//!
//! Shared by the test binaries (`mod common;`); not every binary uses every helper.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use chartgate::watch::sse::{SseEvent, SseParser};
use chartgate_protocol::Bar;

/// How long a test waits for any one condition on a live stream before it fails.
pub const LIVE_WAIT: Duration = Duration::from_secs(15);

/// A chart of a stream: (symbol, resolution).
pub type ChartId = (String, String);

/// The charts a live stream's client holds: the history of its `chart-batch` events, with every
/// `bar` event applied (a bar with the last bar's `time` replaces it, a later `time` appends),
/// and what it takes note of along the way.
#[derive(Debug, Default, Clone)]
pub struct ChartView {
    pub charts: BTreeMap<ChartId, Vec<Bar>>,
    /// Charts the history reported as failed.
    pub errors: BTreeSet<ChartId>,
    /// For each chart, each bar as it stood when the bar after it arrived (it was then final).
    pub finals: BTreeMap<ChartId, BTreeMap<i64, Bar>>,
    /// New bars appended by `bar` events, per chart.
    pub appended: BTreeMap<ChartId, usize>,
    /// `bar` events applied, per chart.
    pub bar_events: BTreeMap<ChartId, usize>,
    /// `bar` events older than the chart's last bar (SPEC 3.5 has none), described.
    pub out_of_order: Vec<String>,
    /// `bar` events for a chart the history did not deliver.
    pub strays: Vec<String>,
    /// The `data` of every `quote` event, per symbol, in order.
    pub quotes: BTreeMap<String, Vec<Value>>,
}

/// A bar of a chart-data answer, a chart-batch or a bar event (all use the objects format).
pub fn bar_of(v: &Value) -> Bar {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("a bar ({e}): {v}"))
}

/// Bars in either `barsFormat`: an array of objects, or `columns` (an array per field).
pub fn bars_of(v: &Value) -> Vec<Bar> {
    if let Some(bars) = v.as_array() {
        return bars.iter().map(bar_of).collect();
    }
    let column = |name: &str| v[name].as_array().cloned().unwrap_or_default();
    let number = |x: &Value| x.as_f64().unwrap_or_else(|| panic!("a number in {v}"));
    let (time, open, high, low, close, volume) = (
        column("time"),
        column("open"),
        column("high"),
        column("low"),
        column("close"),
        column("volume"),
    );
    assert!(
        [&open, &high, &low, &close]
            .iter()
            .all(|c| c.len() == time.len())
            && (volume.is_empty() || volume.len() == time.len()),
        "columns of one length: {v}"
    );
    (0..time.len())
        .map(|i| Bar {
            time: time[i].as_i64().expect("a time"),
            open: number(&open[i]),
            high: number(&high[i]),
            low: number(&low[i]),
            close: number(&close[i]),
            volume: volume.get(i).map(number),
        })
        .collect()
}

impl ChartView {
    /// Applies one event of the stream.
    pub fn apply(&mut self, event: &SseEvent) {
        let data = || -> Value {
            serde_json::from_str(&event.data)
                .unwrap_or_else(|e| panic!("{} data is JSON ({e}): {}", event.event, event.data))
        };
        match event.event.as_str() {
            "chart-batch" => {
                let data = data();
                let batch = &data["data"];
                if let Some(charts) = batch["chartData"].as_object() {
                    for (symbol, by_res) in charts {
                        for (res, chart) in by_res.as_object().expect("resolutions") {
                            let id = (symbol.clone(), res.clone());
                            self.charts.insert(id, bars_of(&chart["bars"]));
                        }
                    }
                }
                if let Some(errors) = batch["errors"].as_object() {
                    for (symbol, by_res) in errors {
                        for res in by_res.as_object().expect("resolutions").keys() {
                            self.errors.insert((symbol.clone(), res.clone()));
                        }
                    }
                }
            }
            "bar" => {
                let data = data();
                assert_eq!(data["type"], "bar", "{data}");
                let d = &data["data"];
                let id = (
                    d["symbol"].as_str().expect("symbol").to_string(),
                    d["resolution"].as_str().expect("resolution").to_string(),
                );
                self.apply_bar(id, bar_of(&d["bar"]));
            }
            "quote" => {
                let data = data();
                assert_eq!(data["type"], "quote", "{data}");
                let symbol = data["data"]["symbol"].as_str().expect("symbol").to_string();
                self.quotes
                    .entry(symbol)
                    .or_default()
                    .push(data["data"].clone());
            }
            "stream-error" => panic!("the live stream failed: {}", event.data),
            _ => {}
        }
    }

    fn apply_bar(&mut self, id: ChartId, bar: Bar) {
        let Some(chart) = self.charts.get_mut(&id) else {
            self.strays.push(format!("{id:?} {bar:?}"));
            return;
        };
        *self.bar_events.entry(id.clone()).or_default() += 1;
        match chart.last_mut() {
            Some(last) if last.time == bar.time => *last = bar,
            Some(last) if last.time < bar.time => {
                self.finals
                    .entry(id.clone())
                    .or_default()
                    .insert(last.time, *last);
                chart.push(bar);
                *self.appended.entry(id).or_default() += 1;
            }
            None => chart.push(bar),
            Some(last) => {
                self.out_of_order
                    .push(format!("{id:?}: {bar:?} after {:?}", last.time));
                match chart.binary_search_by_key(&bar.time, |b| b.time) {
                    Ok(i) => chart[i] = bar,
                    Err(i) => chart.insert(i, bar),
                }
            }
        }
    }

    /// The charts, for a client that takes them to a new connection (a resumed stream): what
    /// this connection noted is left behind.
    pub fn carry(&self) -> ChartView {
        ChartView {
            charts: self.charts.clone(),
            errors: self.errors.clone(),
            finals: self.finals.clone(),
            ..ChartView::default()
        }
    }

    /// The newest `n` bars of a chart.
    pub fn newest(&self, id: &ChartId, n: usize) -> &[Bar] {
        let chart = self
            .charts
            .get(id)
            .unwrap_or_else(|| panic!("{id:?} was delivered"));
        &chart[chart.len().saturating_sub(n)..]
    }

    /// Fewest bars appended to any of `ids` so far.
    pub fn min_appended(&self, ids: &[ChartId]) -> usize {
        ids.iter()
            .map(|id| self.appended.get(id).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
    }

    /// Fewest bar events applied to any of `ids` so far.
    pub fn min_bar_events(&self, ids: &[ChartId]) -> usize {
        ids.iter()
            .map(|id| self.bar_events.get(id).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
    }

    /// Checks every bar that became final while this view followed `id`: as it stood when the
    /// next bar arrived, it is the bar `final_chart` (the chart as the feed settled it) holds at
    /// its time. Returns how many were checked (those still within `final_chart`).
    pub fn assert_finals_were_final(&self, id: &ChartId, final_chart: &[Bar]) -> usize {
        let mut checked = 0;
        for (time, seen) in self.finals.get(id).into_iter().flatten() {
            if let Ok(i) = final_chart.binary_search_by_key(time, |b| b.time) {
                assert_eq!(
                    *seen, final_chart[i],
                    "{id:?}: the bar at {time} was sent in a state that was not its final one \
                     before the bar after it"
                );
                checked += 1;
            }
        }
        checked
    }
}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, String>>>>;

/// A live stream being read: every event read is applied to `view`.
pub struct LiveStream {
    pub status: u16,
    body: Body,
    parser: SseParser,
    queue: VecDeque<SseEvent>,
    /// Every event read, in order.
    pub events: Vec<SseEvent>,
    pub view: ChartView,
    /// The server ended the body.
    pub ended: bool,
    /// Body bytes read so far.
    pub bytes: usize,
}

impl LiveStream {
    /// Sends `req` and starts reading its body (a live stream may stay open well past the
    /// client's default timeout).
    pub async fn open(req: awc::ClientRequest) -> LiveStream {
        let resp = req.send().await.expect("open the live stream");
        let status = resp.status().as_u16();
        let resp = resp.timeout(Duration::from_secs(120));
        let body: Body = Box::pin(resp.map(|chunk| chunk.map_err(|e| e.to_string())));
        LiveStream::from_body(status, body)
    }

    fn from_body(status: u16, body: Body) -> LiveStream {
        LiveStream {
            status,
            body,
            parser: SseParser::new(),
            queue: VecDeque::new(),
            events: Vec::new(),
            view: ChartView::default(),
            ended: false,
            bytes: 0,
        }
    }

    /// The next event within `within` (applied to the view), or `None` if none came or the body
    /// ended.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(event) = self.queue.pop_front() {
                self.view.apply(&event);
                self.events.push(event.clone());
                return Some(event);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return None,
                Ok(None) => self.ended = true,
                Ok(Some(chunk)) => {
                    let chunk = chunk.expect("read the live stream");
                    self.bytes += chunk.len();
                    self.queue
                        .extend(self.parser.feed(&chunk).expect("valid SSE"));
                }
            }
        }
    }

    /// Reads until `cond` holds (checked after every event), failing with `what` after
    /// [`LIVE_WAIT`].
    pub async fn read_until(&mut self, what: &str, mut cond: impl FnMut(&LiveStream) -> bool) {
        let deadline = Instant::now() + LIVE_WAIT;
        while !cond(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.next(left).await.is_none() {
                assert!(
                    !self.ended,
                    "the live stream ended while waiting for {what}: {:?}",
                    self.names()
                );
                panic!(
                    "{what}: not within {LIVE_WAIT:?} ({} events read)",
                    self.events.len()
                );
            }
        }
    }

    /// Reads until the stream has been quiet for `quiet`; returns how many events it read.
    pub async fn read_while_busy(&mut self, quiet: Duration) -> usize {
        let mut n = 0;
        while self.next(quiet).await.is_some() {
            n += 1;
        }
        n
    }

    /// Reads the history part: up to and including `complete`.
    pub async fn read_history(&mut self) {
        assert_eq!(self.status, 200, "the live stream opened");
        self.read_until("complete", |s| s.saw("complete")).await;
    }

    pub fn saw(&self, name: &str) -> bool {
        self.events.iter().any(|e| e.event == name)
    }

    pub fn count(&self, name: &str) -> usize {
        self.events.iter().filter(|e| e.event == name).count()
    }

    pub fn names(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.event.as_str()).collect()
    }

    /// The id of the last event read.
    pub fn last_id(&self) -> Option<String> {
        self.events.last().and_then(|e| e.id.clone())
    }

    /// The `retry:` the server asked for.
    pub fn retry(&self) -> Option<Duration> {
        self.parser.retry()
    }
}

/// Opens `GET path_and_query` on a fresh socket whose receive buffer is `recv_buffer` bytes, so
/// the server feels a reader that stops reading at once, instead of after the megabytes a
/// loopback socket buffers by default.
pub async fn raw_get(addr: SocketAddr, path_and_query: &str, recv_buffer: u32) -> LiveStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(recv_buffer)
        .expect("set the receive buffer");
    let mut tcp = socket.connect(addr).await.expect("connect");
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut head = BytesMut::new();
    let end = loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(LIVE_WAIT, tcp.read(&mut buf))
            .await
            .expect("the response head in time")
            .expect("read the response head");
        assert!(n > 0, "the server closed before answering");
        head.extend_from_slice(&buf[..n]);
    };
    let rest = head.split_off(end + 4);
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let chunked = text.contains("transfer-encoding: chunked");
    let state = (tcp, Dechunk::new(chunked, rest));
    let body = futures_util::stream::unfold(state, |(mut tcp, mut dechunk)| async move {
        loop {
            if let Some(bytes) = dechunk.take() {
                return Some((Ok(bytes), (tcp, dechunk)));
            }
            if dechunk.done {
                return None;
            }
            let mut buf = vec![0u8; 16 * 1024];
            match tcp.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => dechunk.raw.extend_from_slice(&buf[..n]),
                Err(e) => return Some((Err(e.to_string()), (tcp, dechunk))),
            }
        }
    });
    LiveStream::from_body(status, Box::pin(body))
}

/// Undoes HTTP/1.1 chunked transfer coding (or passes the body through when not chunked).
struct Dechunk {
    chunked: bool,
    raw: BytesMut,
    /// Bytes left in the current chunk.
    left: usize,
    /// The CRLF after a chunk's data is still to be skipped.
    crlf: bool,
    done: bool,
}

impl Dechunk {
    fn new(chunked: bool, raw: BytesMut) -> Dechunk {
        Dechunk {
            chunked,
            raw,
            left: 0,
            crlf: false,
            done: false,
        }
    }

    /// The body bytes decodable from what has been read, if any.
    fn take(&mut self) -> Option<Bytes> {
        if !self.chunked {
            return (!self.raw.is_empty()).then(|| self.raw.split().freeze());
        }
        let mut out = BytesMut::new();
        loop {
            if self.left > 0 {
                let n = self.left.min(self.raw.len());
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&self.raw.split_to(n));
                self.left -= n;
                self.crlf = self.left == 0;
                continue;
            }
            if self.crlf {
                if self.raw.len() < 2 {
                    break;
                }
                self.raw.advance(2);
                self.crlf = false;
            }
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            self.raw.advance(line_end + 2);
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).expect("a chunk size");
            if size == 0 {
                self.done = true;
                break;
            }
            self.left = size;
        }
        (!out.is_empty()).then(|| out.freeze())
    }
}

/// Polls `cond` every 20 ms until it holds, failing with `what` and the last value it saw after
/// `within`.
pub async fn wait_until<T: std::fmt::Debug, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, T)>,
{
    let deadline = Instant::now() + within;
    loop {
        let (ok, seen) = probe().await;
        if ok {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: last seen {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `live` object of `/api/connections/stats`.
pub fn live_stats(stats: &Value) -> (u64, u64, u64) {
    let live = &stats["live"];
    let n = |k: &str| {
        live[k]
            .as_u64()
            .unwrap_or_else(|| panic!("live.{k} in {stats}"))
    };
    (n("series"), n("followers"), n("conflated"))
}
