//! The formula stream: `formula-results` as soon as the stock list is known, then a `chart-batch`
//! as each group of `stream.batch_size` stocks finishes (in whatever order groups finish), then
//! `complete`.
//!
//! Every chart of the stream is requested at once (the pool bounds concurrency).
//! `formula-results`, with the `retry:` line in its block, is made by the handler and leaves with
//! the response head; a resumed stream, which sends no `formula-results`, puts `retry:` in its
//! first event. The rest comes from a `Producer` that the response body
//! ([`super::sse::EventStream`]) pulls one event at a time, as the connection takes them: a slow
//! reader holds at most the one event being written, and slows only its own stream (the fetches
//! themselves run on their own tasks, see [`crate::charts`]). When the client goes away actix-web
//! drops the body and with it the producer: fetches only it was waiting for are cancelled and its
//! lease is released. A keep-alive comment after `stream.keep_alive_secs` of silence is what lets
//! a dead connection be noticed at all.
//!
//! Pulling rather than a producer task and a channel keeps an open stream small: an idle stream
//! is its connection, this state and the fetches it waits for.
//!
//! With `live=true` the stream follows its charts (and with `quotes=true` its stocks' quotes)
//! from the request on ([`crate::live`]), so the upstream series are warm by `complete`; after
//! `complete` it writes, whenever something changed, one chunk of `bar` and `quote` events: the
//! newest state of what changed since it last wrote. Each of those events' id says up to when the
//! client has had every change (see [`super::stream_id`]), and a client that comes back with it
//! within `live.resume_window_secs` gets, per chart, the bars changed since, then the live
//! updates, with no history again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use actix_web::HttpResponse;
use chartgate_protocol::clock;
use futures_util::future::BoxFuture;
use futures_util::task::AtomicWaker;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::error::ApiError;
use super::params::{StreamRequest, SymbolSource};
use super::sse::{Event, EventBatch, EventBuilder, EventStream};
use super::stream_id::{Progress, Sent, StreamId, list_hash, request_hash};
use crate::cache::ChartKey;
use crate::charts::{ChartOutcome, ChartService, Lookup};
use crate::config::StreamSettings;
use crate::domain::{BarsFormat, Resolution};
use crate::formulas::{FormulaResult, FormulaSource, Stock};
use crate::live::{Cursor, Follower, LiveCounters};
use crate::log_duration::LogDuration;
use crate::manager::LeaseGuard;

/// What a stream needs from the application.
#[derive(Clone)]
pub struct StreamDeps {
    pub charts: ChartService,
    pub formulas: FormulaSource,
    pub settings: StreamSettings,
    /// `live.resume_window_secs`.
    pub resume_window: Duration,
    /// Flips to `true` when the server shuts down: open streams end with a `stream-error`.
    pub shutdown: watch::Receiver<bool>,
    /// `chartgate_sse_streams_open`.
    pub open_streams: metrics::Gauge,
}

/// The stock list a stream is about.
struct StockList {
    formula: Option<(String, String)>,
    stocks: Arc<Vec<Stock>>,
}

/// Resolves the request's stock list, for a new stream or to resume one. Errors here are plain
/// JSON answers: nothing has been streamed yet.
async fn stock_list(
    deps: &StreamDeps,
    request: &StreamRequest,
    resume: Option<&StreamId>,
) -> Result<StockList, ApiError> {
    match &request.source {
        SymbolSource::Symbols(symbols) => {
            let mut stocks: Vec<Stock> = symbols.iter().cloned().map(Stock::new).collect();
            deps.formulas.enrich(&mut stocks);
            Ok(StockList {
                formula: None,
                stocks: Arc::new(stocks),
            })
        }
        SymbolSource::Formula(id) => {
            let formula = deps.formulas.find(id).ok_or_else(|| {
                ApiError::from(crate::formulas::FormulaError::Unknown(id.clone()))
            })?;
            let named = Some((formula.id.clone(), formula.name.clone()));
            // A resumed stream continues on the list it started with, while that is cached.
            if let Some(cached) = deps.charts.cache.cached_formula(id).await
                && resume.is_some_and(|r| r.list == list_hash_of(&cached.stocks))
            {
                return Ok(StockList {
                    formula: named,
                    stocks: Arc::new(cached.stocks.clone()),
                });
            }
            let source = deps.formulas.clone();
            let result: Arc<FormulaResult> = deps
                .charts
                .cache
                .formula(id, || async move { source.fetch(id).await })
                .await
                .map_err(|e| ApiError::from((*e).clone()))?;
            Ok(StockList {
                formula: named,
                stocks: Arc::new(result.stocks.clone()),
            })
        }
    }
}

fn list_hash_of(stocks: &[Stock]) -> u64 {
    list_hash(&stocks.iter().map(|s| &s.symbol).collect::<Vec<_>>())
}

/// Opens a stream: resolves the list and the resume point, then answers `200 text/event-stream`
/// (or `204` for a stream that already completed).
pub async fn open(
    deps: StreamDeps,
    request: StreamRequest,
    last_event_id: Option<String>,
    lease: LeaseGuard,
) -> Result<HttpResponse, ApiError> {
    let request_key = request_hash(&request, deps.settings.batch_size);
    let previous = last_event_id
        .as_deref()
        .and_then(StreamId::parse)
        .filter(|id| id.request == request_key);
    if previous
        .as_ref()
        .is_some_and(|id| id.progress == Progress::Done)
    {
        return Ok(HttpResponse::NoContent().finish());
    }
    let list = stock_list(&deps, &request, previous.as_ref()).await?;
    let list_key = list_hash_of(&list.stocks);
    let follower = if request.live {
        Some(follow(&deps, &list, &request)?)
    } else {
        None
    };
    let retry = Duration::from_millis(deps.settings.retry_ms);
    let live_resume = previous
        .as_ref()
        .filter(|id| follower.is_some() && id.list == list_key)
        .and_then(|id| live_resume_point(id, deps.resume_window));
    if let Some(since_ms) = live_resume {
        // A live id marks every batch as sent: no history, no `complete`, only what changed.
        let id = StreamId::new(request_key, list_key).live(since_ms.unsigned_abs());
        let mut producer = Producer::new(deps, request, list, id, true, lease, follower);
        if let Some(live) = producer.live.as_mut() {
            live.cursors.fill(Cursor::SinceMs(since_ms));
            live.begin(since_ms, Duration::ZERO);
        }
        producer.retry = Some(retry);
        return Ok(EventStream::new(Vec::new(), producer.into_events()).into_response());
    }
    let (id, resumed) = match previous {
        Some(id) if id.list == list_key && fits(&id, &list, &request, &deps.settings) => (id, true),
        _ => (StreamId::new(request_key, list_key), false),
    };
    let first = if resumed {
        Vec::new()
    } else {
        vec![formula_results(&list, &request, id.to_string()).with_retry(retry)]
    };
    let mut producer = Producer::new(deps, request, list, id, resumed, lease, follower);
    producer.retry = resumed.then_some(retry);
    Ok(EventStream::new(first, producer.into_events()).into_response())
}

/// How far before an event's own time its live id says "everything before this was sent": a
/// change is stamped when it arrives and marked for its followers right after, so one that
/// arrived just before a stream wrote may not have been marked yet; a resume re-sends what
/// changed in this margin rather than risk missing it.
const LIVE_ID_MARGIN_MS: i64 = 1_000;

/// The wall-clock milliseconds a live id resumes from, if it is one and within the window.
fn live_resume_point(id: &StreamId, window: Duration) -> Option<i64> {
    let Progress::Live(since) = id.progress else {
        return None;
    };
    let since = i64::try_from(since).ok()?;
    let age = clock::unix_ms().saturating_sub(since);
    (age <= i64::try_from(window.as_millis()).unwrap_or(i64::MAX)).then_some(since)
}

/// Follows every chart of the stream (and each stock's quote with `quotes`), or refuses the
/// request when the new series would not fit.
fn follow(
    deps: &StreamDeps,
    list: &StockList,
    request: &StreamRequest,
) -> Result<LiveFollow, ApiError> {
    let charts: Vec<ChartKey> = list
        .stocks
        .iter()
        .flat_map(|stock| {
            request.resolutions.iter().map(|resolution| ChartKey {
                symbol: stock.symbol.clone(),
                resolution: *resolution,
                bars: request.bars,
            })
        })
        .collect();
    let quotes: Vec<_> = if request.quotes {
        list.stocks.iter().map(|s| s.symbol.clone()).collect()
    } else {
        Vec::new()
    };
    let live = &deps.charts.live;
    let follower = live.follow(&charts, &quotes).map_err(|e| {
        ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "live_capacity",
            e.to_string(),
        )
    })?;
    Ok(LiveFollow {
        cursors: vec![Cursor::History; follower.chart_count()],
        follower,
        counters: live.counters().clone(),
        batch: EventBatch::default(),
        since_ms: 0,
        following: false,
    })
}

/// A live stream's following, held by its producer.
struct LiveFollow {
    follower: Follower,
    /// Where each chart starts once the history is out, set as its batch is sent.
    cursors: Vec<Cursor>,
    counters: std::sync::Arc<LiveCounters>,
    /// Reused for each chunk of live events.
    batch: EventBatch,
    /// What the next live event's id says: every change before this was sent.
    since_ms: i64,
    /// The history is out (`complete` sent, or a resumed live stream): changes are written.
    following: bool,
}

impl LiveFollow {
    /// After the history (or on a resume), changes go out from each chart's cursor. A chart
    /// whose history went out before a resume (so no cursor was set here) gets every bar
    /// changed within the resume window, at least its last.
    fn begin(&mut self, since_ms: i64, window: Duration) {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let earlier = Cursor::SinceMs(clock::unix_ms().saturating_sub(window_ms));
        for (index, cursor) in std::mem::take(&mut self.cursors).into_iter().enumerate() {
            let cursor = if cursor == Cursor::History {
                earlier
            } else {
                cursor
            };
            self.follower.start(index, cursor);
        }
        self.follower.start_quotes();
        self.since_ms = since_ms;
        self.following = true;
    }

    /// The next chunk of `bar` and `quote` events, once something changed.
    async fn next_chunk(&mut self, id: &StreamId) -> Event {
        loop {
            std::future::poll_fn(|cx| self.follower.poll_changed(cx)).await;
            let drain_started = clock::unix_ms();
            let live_id = id.live(self.since_ms.max(0).unsigned_abs()).to_string();
            let drained = self.follower.drain(&mut self.batch, &live_id);
            self.since_ms = drain_started - LIVE_ID_MARGIN_MS;
            if let Some(oldest) = drained.oldest {
                self.counters
                    .delivered(Instant::now().saturating_duration_since(oldest));
            }
            if !self.batch.is_empty() {
                return self.batch.take();
            }
        }
    }
}

/// Whether the figures an id carries for the batches it marks as sent are possible for this
/// stream: every marked batch is one of its batches, their charts are `ok + failed`, and no more
/// came from the cache than succeeded. An id that fails this was not made by this stream (or was
/// edited), and the stream starts over rather than report figures that cannot be true.
fn fits(
    id: &StreamId,
    list: &StockList,
    request: &StreamRequest,
    settings: &StreamSettings,
) -> bool {
    let batch_size = settings.batch_size.max(1);
    let stocks = list.stocks.len();
    let charts_in = |b: usize| batch_size.min(stocks - b * batch_size) * request.resolutions.len();
    let sent = &id.sent;
    id.delivered_charts(stocks.div_ceil(batch_size), charts_in)
        .is_some_and(|charts| sent.ok.checked_add(sent.failed) == Some(charts))
        && sent.cached <= sent.ok
}

/// The first event of a new stream: the stock list, before any chart work.
fn formula_results(list: &StockList, request: &StreamRequest, id: String) -> Event {
    let data = FormulaResultsData {
        formula_id: list.formula.as_ref().map(|f| f.0.as_str()),
        formula_name: list.formula.as_ref().map(|f| f.1.as_str()),
        stocks: &list.stocks,
        total_charts: list.stocks.len() * request.resolutions.len(),
        resolutions: request.resolutions.iter().map(|r| r.as_str()).collect(),
        bars_count: request.bars.get(),
        resumed: false,
    };
    let kind = "formula-results";
    Event::json(kind, &id, &Envelope { kind, data })
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct FormulaResultsData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    formula_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    formula_name: Option<&'a str>,
    #[schema(value_type = Vec<Stock>)]
    stocks: &'a [Stock],
    total_charts: usize,
    #[schema(value_type = Vec<Resolution>)]
    resolutions: Vec<&'static str>,
    #[schema(value_type = crate::domain::BarCount)]
    bars_count: u16,
    resumed: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CompleteData {
    total_charts: usize,
    successful_charts: usize,
    failed_charts: usize,
    cached_charts: usize,
    total_time: u64,
    avg_time_per_chart: f64,
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: T,
}

/// One group of consecutive stocks and the outcomes of its charts as they arrive.
///
/// Its fetches are a plain vector polled behind a counting waker ([`Gate`]) rather than a
/// `FuturesUnordered`, for two things that structure cannot do:
///
/// - Wake the stream once per batch. A `FuturesUnordered` wakes its task whenever any of its
///   futures wakes, since it hands out each one as it finishes; the gate wakes the stream only
///   when every fetch of the batch has woken, the first moment the stream has anything to send.
///   The stream's task is its HTTP connection (actix-http's dispatcher polls the response body),
///   so a wake-up polls the connection, the body and the keep-alive timer: once per chart that
///   is work for nothing, and when many streams show one screen each chart that comes in wakes
///   every one of them.
/// - Hold a fetch in one slot of a vector. A `FuturesUnordered` puts each future in a
///   reference-counted node of its own and keeps a ready queue per set. An open stream is mostly
///   the fetches it waits for, so that is memory added to every open stream and every chart in
///   flight, and memory per open stream is what bounds how many streams an instance holds.
///
/// The price is the care in [`Batch::poll_fetches`] and [`Gate`] (armed before the fetches are
/// polled, polled again when every remaining fetch woke meanwhile), which the unit tests pin down.
struct Batch {
    /// 0-based.
    index: usize,
    first_stock: usize,
    stocks: usize,
    /// `outcomes[stock * resolutions + resolution]`.
    outcomes: Vec<Option<ChartOutcome>>,
    /// Charts still being fetched, with their slot in `outcomes`.
    fetches: Vec<(usize, BoxFuture<'static, ChartOutcome>)>,
    /// Wakes the stream when every fetch of the batch has finished.
    gate: Arc<Gate>,
    /// The event has been produced.
    sent: bool,
}

impl Batch {
    fn complete(&self) -> bool {
        self.fetches.is_empty()
    }

    /// Polls the batch's fetches if its gate says they may have finished; records outcomes
    /// (counted when the batch is sent).
    /// Every fetch still running is left registered with the gate, so the stream is woken once
    /// when all of them have finished rather than once per chart: with a thousand streams waiting
    /// for the same charts, waking each connection per chart costs more than sending the charts.
    fn poll_fetches(&mut self, cx: &mut Context<'_>) {
        self.gate.task.register(cx.waker());
        if self.fetches.is_empty() || !self.gate.fired() {
            return;
        }
        // Armed before polling, so a fetch finishing while the others are polled still counts.
        self.gate.target.store(usize::MAX, Ordering::Release);
        self.gate.woken.store(0, Ordering::Release);
        let waker = Waker::from(self.gate.clone());
        let mut gate_cx = Context::from_waker(&waker);
        let mut i = 0;
        while i < self.fetches.len() {
            match self.fetches[i].1.as_mut().poll(&mut gate_cx) {
                Poll::Ready(outcome) => {
                    let (slot, _) = self.fetches.swap_remove(i);
                    self.outcomes[slot] = Some(outcome);
                }
                Poll::Pending => i += 1,
            }
        }
        let still = self.fetches.len();
        self.gate.target.store(still, Ordering::Release);
        if still > 0 && self.gate.fired() {
            // Every remaining fetch woke while the others were polled: look again soon.
            cx.waker().wake_by_ref();
        }
    }
}

/// A batch's waker: counts its fetches' wake-ups and wakes the stream's task when they reach the
/// number of fetches still running. A spurious wake-up can only wake the stream early (it polls,
/// finds fetches running and re-arms); none is lost, because the count is reset before the
/// fetches are polled and every fetch left running holds this waker.
#[derive(Default)]
struct Gate {
    woken: AtomicUsize,
    /// 0 until first armed, so a new batch is polled at once.
    target: AtomicUsize,
    task: AtomicWaker,
}

impl Gate {
    fn fired(&self) -> bool {
        self.woken.load(Ordering::Acquire) >= self.target.load(Ordering::Acquire)
    }
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.fetch_add(1, Ordering::AcqRel);
        if self.fired() {
            self.task.wake();
        }
    }
}

/// Everything a stream holds between events.
struct Producer {
    settings: StreamSettings,
    shutdown: watch::Receiver<bool>,
    resolutions: Vec<Resolution>,
    format: BarsFormat,
    list: StockList,
    id: StreamId,
    resumed: bool,
    /// Batches not yet sent (resumed streams skip those already received).
    batches: Vec<Batch>,
    /// The charts of the batches sent on earlier connections, and the time spent on them.
    before: Sent,
    /// The charts of the batches sent on this connection.
    counts: Counts,
    /// Charts finished, those of batches received before a resume included.
    loaded: usize,
    /// `complete` or `stream-error` has been produced.
    ended: bool,
    /// The `retry:` still to be sent, in the next event (not a comment): a resumed stream's.
    retry: Option<Duration>,
    /// With `live=true`: the following of its charts and quotes.
    live: Option<LiveFollow>,
    /// `live.resume_window_secs`.
    resume_window: Duration,
    /// Held for the stream's life; dropping it releases the lease.
    _lease: LeaseGuard,
    _open: OpenStream,
    started: Instant,
    started_epoch_ms: u64,
    last_sent: Instant,
}

/// Counts the stream in `chartgate_sse_streams_open` for as long as it lives.
struct OpenStream(metrics::Gauge);

impl OpenStream {
    fn new(gauge: metrics::Gauge) -> OpenStream {
        gauge.increment(1.0);
        OpenStream(gauge)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if !self.ended {
            log::debug!("stream: client went away; work cancelled, lease released");
        }
    }
}

impl Producer {
    /// Requests every chart the stream still needs: cached charts are recorded at once, the
    /// others are fetched (or joined) from now on.
    fn new(
        deps: StreamDeps,
        request: StreamRequest,
        list: StockList,
        id: StreamId,
        resumed: bool,
        lease: LeaseGuard,
        live: Option<LiveFollow>,
    ) -> Producer {
        let id_sent = id.sent;
        let per_stock = request.resolutions.len();
        let total_charts = list.stocks.len() * per_stock;
        let batch_size = deps.settings.batch_size.max(1);
        let total_batches = list.stocks.len().div_ceil(batch_size);
        let mut remaining = 0;
        let batches: Vec<Batch> = (0..total_batches)
            .filter(|b| !id.has(*b))
            .map(|b| {
                let first_stock = b * batch_size;
                let stocks = batch_size.min(list.stocks.len() - first_stock);
                let mut outcomes = Vec::with_capacity(stocks * per_stock);
                let mut fetches = Vec::new();
                for stock in &list.stocks[first_stock..first_stock + stocks] {
                    for resolution in &request.resolutions {
                        let key = ChartKey {
                            symbol: stock.symbol.clone(),
                            resolution: *resolution,
                            bars: request.bars,
                        };
                        match deps.charts.lookup(key) {
                            Lookup::Ready(outcome) => outcomes.push(Some(outcome)),
                            Lookup::Fetch(fetch) => {
                                fetches.push((outcomes.len(), fetch));
                                outcomes.push(None);
                            }
                        }
                    }
                }
                remaining += stocks * per_stock;
                Batch {
                    index: b,
                    first_stock,
                    stocks,
                    outcomes,
                    fetches,
                    gate: Arc::default(),
                    sent: false,
                }
            })
            .collect();
        Producer {
            settings: deps.settings,
            shutdown: deps.shutdown,
            resolutions: request.resolutions,
            format: request.format,
            list,
            id,
            resumed,
            batches,
            before: id_sent,
            counts: Counts::default(),
            loaded: total_charts - remaining,
            ended: false,
            retry: None,
            live,
            resume_window: deps.resume_window,
            _lease: lease,
            _open: OpenStream::new(deps.open_streams),
            started: Instant::now(),
            started_epoch_ms: clock::unix_ms().unsigned_abs(),
            last_sent: Instant::now(),
        }
    }

    fn into_events(self) -> impl futures_util::Stream<Item = Event> + 'static {
        futures_util::stream::unfold(self, |mut producer| async move {
            let event = producer.next_event().await?;
            producer.last_sent = Instant::now();
            Some((event, producer))
        })
    }

    /// The next event: a finished batch, a keep-alive, `complete`, or `stream-error` on shutdown;
    /// `None` after the last. The first that is not a comment carries the pending `retry:`.
    async fn next_event(&mut self) -> Option<Event> {
        let event = self.next_block().await?;
        Some(match self.retry {
            Some(retry) if !event.is_comment() => {
                self.retry = None;
                event.with_retry(retry)
            }
            _ => event,
        })
    }

    async fn next_block(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        let keep_alive = Duration::from_secs(self.settings.keep_alive_secs);
        loop {
            let mut shutdown = self.shutdown.clone();
            let keep_alive_at = self.last_sent + keep_alive;
            if let Some(live) = self.live.as_mut().filter(|l| l.following) {
                let id = &self.id;
                tokio::select! {
                    event = live.next_chunk(id) => return Some(event),
                    _ = tokio::time::sleep_until(keep_alive_at) => {
                        return Some(Event::comment("keep-alive"));
                    }
                    _ = shutdown.wait_for(|stopping| *stopping) => return Some(self.shutting_down()),
                }
            }
            if let Some(event) = self.finished_batch() {
                return Some(event);
            }
            if self.batches.iter().all(|b| b.sent) {
                let complete = self.complete();
                let since = i64::try_from(self.started_epoch_ms).unwrap_or(0) - LIVE_ID_MARGIN_MS;
                match self.live.as_mut() {
                    Some(live) => live.begin(since, self.resume_window),
                    None => self.ended = true,
                }
                return Some(complete);
            }
            tokio::select! {
                () = std::future::poll_fn(|cx| self.poll_fetches(cx)) => {}
                _ = tokio::time::sleep_until(keep_alive_at) => {
                    return Some(Event::comment("keep-alive"));
                }
                _ = shutdown.wait_for(|stopping| *stopping) => return Some(self.shutting_down()),
            }
        }
    }

    /// The `stream-error` of a server shutting down; the client can resume from its id.
    fn shutting_down(&mut self) -> Event {
        self.ended = true;
        let data = ErrorData {
            code: "shutting_down",
            message: "the server is shutting down; reconnect to resume",
        };
        let kind = "stream-error";
        let id = match self.live.as_ref().filter(|l| l.following) {
            Some(live) => self.id.live(live.since_ms.max(0).unsigned_abs()),
            None => self.id.clone(),
        };
        Event::json(kind, &id.to_string(), &Envelope { kind, data })
    }

    /// Ready when some batch has all its charts.
    fn poll_fetches(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut any = false;
        for batch in self.batches.iter_mut().filter(|b| !b.sent) {
            batch.poll_fetches(cx);
            any |= batch.complete();
        }
        if any { Poll::Ready(()) } else { Poll::Pending }
    }

    /// The event of a batch whose charts are all in and that has not been sent yet.
    fn finished_batch(&mut self) -> Option<Event> {
        let total_batches = self
            .list
            .stocks
            .len()
            .div_ceil(self.settings.batch_size.max(1));
        let total = self.list.stocks.len() * self.resolutions.len();
        let batch = self.batches.iter_mut().find(|b| !b.sent && b.complete())?;
        batch.sent = true;
        self.loaded += batch.outcomes.len();
        if let Some(live) = self.live.as_mut() {
            let first = batch.first_stock * self.resolutions.len();
            for (n, outcome) in batch.outcomes.iter().enumerate() {
                live.cursors[first + n] = match outcome {
                    Some(Ok((chart, _))) => chart
                        .chart
                        .bars
                        .last()
                        .map_or(Cursor::SinceMs(0), |bar| Cursor::FromTime(bar.time)),
                    Some(Err(_)) | None => Cursor::Dropped,
                };
            }
        }
        for outcome in batch.outcomes.iter().flatten() {
            self.counts.add(outcome);
        }
        self.id.mark(batch.index);
        self.id.sent = Self::whole(&self.before, &self.counts, self.started).0;
        let info = BatchInfo {
            index: batch.index,
            total_batches,
            loaded: self.loaded,
            total,
            started_epoch_ms: self.started_epoch_ms,
        };
        let stocks = &self.list.stocks[batch.first_stock..batch.first_stock + batch.stocks];
        let event = batch_event(
            &info,
            stocks,
            &self.resolutions,
            &batch.outcomes,
            self.format,
            &self.id.to_string(),
        );
        batch.outcomes = Vec::new();
        Some(event)
    }

    /// The whole stream's figures so far: the batches sent before a resume, and on this
    /// connection; the time is the sum of the time spent on each connection until its last
    /// batch (the time the client was away is not the stream's).
    fn whole(before: &Sent, now: &Counts, started: Instant) -> (Sent, Counts) {
        let counts = Counts {
            ok: before.ok + now.ok,
            failed: before.failed + now.failed,
            cached: before.cached + now.cached,
        };
        let elapsed_ms = before.elapsed_ms + started.elapsed().as_millis() as u64;
        let sent = Sent {
            ok: counts.ok,
            failed: counts.failed,
            cached: counts.cached,
            elapsed_ms,
        };
        (sent, counts)
    }

    /// The `complete` event, and the stream's log line: both about the whole stream, the
    /// batches sent before a resume included.
    fn complete(&self) -> Event {
        let (sent, counts) = Self::whole(&self.before, &self.counts, self.started);
        let counts = &counts;
        let total_time = sent.elapsed_ms;
        let data = CompleteData {
            total_charts: counts.total(),
            successful_charts: counts.ok,
            failed_charts: counts.failed,
            cached_charts: counts.cached,
            total_time,
            avg_time_per_chart: if counts.total() == 0 {
                0.0
            } else {
                total_time as f64 / counts.total() as f64
            },
        };
        let name = match &self.list.formula {
            Some((id, _)) => format!("formula {id}"),
            None => format!("{} symbols", self.list.stocks.len()),
        };
        log::info!(
            "{}",
            done_line(
                &name,
                counts,
                Duration::from_millis(total_time),
                self.resumed
            )
        );
        let kind = "complete";
        let id = match self.live {
            // A live stream goes on after `complete`: its id resumes live, from the history's
            // start (everything that changed since is sent after `complete`).
            Some(_) => self.id.live(
                self.started_epoch_ms
                    .saturating_sub(LIVE_ID_MARGIN_MS.unsigned_abs()),
            ),
            None => self.id.done(),
        };
        Event::json(kind, &id.to_string(), &Envelope { kind, data })
    }
}

/// The log line of a stream that completed.
fn done_line(name: &str, counts: &Counts, took: Duration, resumed: bool) -> String {
    format!(
        "stream: {name} done: {} charts ({} ok, {} failed, {} cached) in {}{}",
        counts.total(),
        counts.ok,
        counts.failed,
        counts.cached,
        LogDuration(took),
        if resumed { ", resumed" } else { "" },
    )
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ErrorData<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Default)]
struct Counts {
    ok: usize,
    failed: usize,
    cached: usize,
}

impl Counts {
    fn add(&mut self, outcome: &ChartOutcome) {
        match outcome {
            Ok((_, cached)) => {
                self.ok += 1;
                self.cached += usize::from(*cached);
            }
            Err(_) => self.failed += 1,
        }
    }

    fn total(&self) -> usize {
        self.ok + self.failed
    }
}

/// What a `chart-batch` event says besides its charts.
#[derive(Debug, Clone)]
pub struct BatchInfo {
    /// 0-based (the event's `batchIndex` is 1-based).
    pub index: usize,
    pub total_batches: usize,
    /// Charts finished in the whole stream so far, this batch's included.
    pub loaded: usize,
    pub total: usize,
    pub started_epoch_ms: u64,
}

/// The `chart-batch` event for `stocks`, whose outcomes are `outcomes[stock * resolutions +
/// resolution]` (`None`: not part of this event). Each chart's cached JSON is shared into the
/// event, never copied or serialised again, whatever the number of streams carrying it.
pub fn batch_event(
    info: &BatchInfo,
    stocks: &[Stock],
    resolutions: &[Resolution],
    outcomes: &[Option<ChartOutcome>],
    format: BarsFormat,
    id: &str,
) -> Event {
    let mut ev = EventBuilder::new("chart-batch", id);
    ev.fmt(format_args!(
        "{{\"type\":\"chart-batch\",\"data\":{{\"batchIndex\":{},\"totalBatches\":{},\"symbols\":[",
        info.index + 1,
        info.total_batches
    ));
    for (n, stock) in stocks.iter().enumerate() {
        if n > 0 {
            ev.text(",");
        }
        ev.json_str(stock.symbol.as_str());
    }
    ev.text("],\"chartData\":{");
    write_outcomes(
        &mut ev,
        stocks,
        resolutions,
        outcomes,
        |o| o.as_ref().ok(),
        |(chart, _), ev| {
            ev.text("{").shared(chart.json_fields(format)).text("}");
        },
    );
    ev.text("},\"errors\":{");
    write_outcomes(
        &mut ev,
        stocks,
        resolutions,
        outcomes,
        |o| o.as_ref().err(),
        |failure, ev| {
            ev.text("{\"code\":").json_str(failure.code);
            ev.text(",\"message\":")
                .json_str(&failure.message)
                .text("}");
        },
    );
    let end = clock::unix_ms().unsigned_abs();
    let percentage = if info.total == 0 {
        100.0
    } else {
        (info.loaded as f64 * 1000.0 / info.total as f64).round() / 10.0
    };
    ev.fmt(format_args!(
        "}},\"progress\":{{\"loaded\":{},\"total\":{},\"percentage\":{percentage}}},\"timing\":{{\"startTime\":{},\"endTime\":{end},\"durationMs\":{}}}}}}}",
        info.loaded,
        info.total,
        info.started_epoch_ms,
        end.saturating_sub(info.started_epoch_ms)
    ));
    ev.finish()
}

/// Writes `"<symbol>":{"<resolution>":<value>,...}` for the outcomes `pick` takes, leaving out
/// symbols with none.
fn write_outcomes<'a, T>(
    ev: &mut EventBuilder,
    stocks: &[Stock],
    resolutions: &[Resolution],
    outcomes: &'a [Option<ChartOutcome>],
    pick: impl Fn(&'a ChartOutcome) -> Option<T>,
    write: impl Fn(T, &mut EventBuilder),
) {
    let mut first_symbol = true;
    for (s, stock) in stocks.iter().enumerate() {
        let row = &outcomes[s * resolutions.len()..(s + 1) * resolutions.len()];
        let mut first_resolution = true;
        for (outcome, resolution) in row.iter().zip(resolutions) {
            let Some(value) = outcome.as_ref().and_then(&pick) else {
                continue;
            };
            if first_resolution {
                if !first_symbol {
                    ev.text(",");
                }
                first_symbol = false;
                ev.json_str(stock.symbol.as_str()).text(":{");
            } else {
                ev.text(",");
            }
            first_resolution = false;
            ev.json_str(resolution.as_str()).text(":");
            write(value, ev);
        }
        if !first_resolution {
            ev.text("}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charts::ChartFailure;
    use futures_util::FutureExt;
    use tokio::sync::oneshot;

    /// A task's waker that counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Wakes {
        /// A task's waker and its count.
        fn task() -> (Arc<Wakes>, Waker) {
            let wakes = Arc::new(Wakes::default());
            (wakes.clone(), Waker::from(wakes))
        }

        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn failed(n: usize) -> ChartOutcome {
        Err(ChartFailure {
            code: "upstream_timeout",
            message: format!("chart {n}"),
        })
    }

    fn batch(fetches: Vec<(usize, BoxFuture<'static, ChartOutcome>)>) -> Batch {
        Batch {
            index: 0,
            first_stock: 0,
            stocks: fetches.len(),
            outcomes: vec![None; fetches.len()],
            fetches,
            gate: Arc::default(),
            sent: false,
        }
    }

    #[test]
    fn the_done_line_gives_sub_second_streams_in_ms() {
        let counts = Counts {
            ok: 196,
            failed: 4,
            cached: 120,
        };
        assert_eq!(
            done_line(
                "formula breakouts",
                &counts,
                Duration::from_millis(38),
                false
            ),
            "stream: formula breakouts done: 200 charts (196 ok, 4 failed, 120 cached) in 38 ms"
        );
        assert_eq!(
            done_line("2 symbols", &counts, Duration::from_millis(2_400), true),
            "stream: 2 symbols done: 200 charts (196 ok, 4 failed, 120 cached) in 2.4 s, resumed"
        );
    }

    #[test]
    fn a_batch_wakes_its_stream_once_when_every_fetch_is_in() {
        let (senders, fetches): (Vec<_>, Vec<_>) = (0..4)
            .map(|slot| {
                let (tx, rx) = oneshot::channel::<ChartOutcome>();
                let fetch = async move { rx.await.unwrap_or_else(|_| failed(99)) }.boxed();
                (tx, (slot, fetch))
            })
            .unzip();
        let mut batch = batch(fetches);
        let (wakes, waker) = Wakes::task();
        let mut cx = Context::from_waker(&waker);
        batch.poll_fetches(&mut cx);
        assert!(!batch.complete());
        for (n, tx) in senders.into_iter().enumerate() {
            assert_eq!(wakes.count(), 0, "woken after {n} of 4 charts");
            tx.send(failed(n)).unwrap();
        }
        assert_eq!(wakes.count(), 1, "woken once, when the last chart came in");
        batch.poll_fetches(&mut cx);
        assert!(batch.complete());
        let messages: Vec<String> = batch
            .outcomes
            .iter()
            .map(|o| o.clone().unwrap().unwrap_err().message)
            .collect();
        assert_eq!(messages, ["chart 0", "chart 1", "chart 2", "chart 3"]);
    }

    /// A fetch that wakes itself and stays pending once (as a future out of cooperative budget
    /// does) must not leave the stream waiting for a wake-up that never comes.
    #[test]
    fn a_fetch_that_wakes_while_polled_is_polled_again() {
        let mut yielded = false;
        let fetch = std::future::poll_fn(move |cx| {
            if yielded {
                Poll::Ready(failed(0))
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .boxed();
        let mut batch = batch(vec![(0, fetch)]);
        let (wakes, waker) = Wakes::task();
        let mut cx = Context::from_waker(&waker);
        batch.poll_fetches(&mut cx);
        assert!(!batch.complete());
        assert_eq!(wakes.count(), 1, "asked to be polled again");
        batch.poll_fetches(&mut cx);
        assert!(batch.complete());
    }
}
