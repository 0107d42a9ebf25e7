//! The formula stream: `formula-results` as soon as the stock list is known, then a `chart-batch`
//! as each group of `stream.batch_size` stocks finishes (in whatever order groups finish), then
//! `complete`.
//!
//! Every chart of the stream is requested at once (the pool bounds concurrency). `retry:` and
//! `formula-results` are made by the handler and leave with the response head; the rest comes
//! from a producer that runs as its own task and hands events to the response body
//! ([`super::sse::EventStream`]) through a small bounded channel, so a slow reader slows only its
//! own producer. When the client goes away the response drops the channel's
//! receiver; the producer sees that at once and drops its work: fetches only it was waiting for
//! are cancelled and its lease is released. A keep-alive comment after `stream.keep_alive_secs` of
//! silence is what lets a dead connection be noticed at all.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::HttpResponse;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::error::ApiError;
use super::params::{StreamRequest, SymbolSource};
use super::sse::{Event, EventBuilder, EventStream};
use super::stream_id::{Progress, StreamId, list_hash, request_hash};
use crate::cache::ChartKey;
use crate::charts::{ChartOutcome, ChartService};
use crate::config::StreamSettings;
use crate::domain::{BarCount, BarsFormat, Resolution};
use crate::formulas::{FormulaResult, FormulaSource, Stock};
use crate::manager::LeaseGuard;

/// What a stream needs from the application.
#[derive(Clone)]
pub struct StreamDeps {
    pub charts: ChartService,
    pub formulas: FormulaSource,
    pub settings: StreamSettings,
    /// Flips to `true` when the server shuts down: open streams end with a `stream-error`.
    pub shutdown: watch::Receiver<bool>,
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
            let mut stocks: Vec<Stock> = symbols
                .iter()
                .map(|symbol| Stock {
                    symbol: symbol.clone(),
                    name: None,
                    price: None,
                    sector: None,
                    industry: None,
                })
                .collect();
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
    let (id, resumed) = match previous {
        Some(id) if id.list == list_key => (id, true),
        _ => (StreamId::new(request_key, list_key), false),
    };
    // A bound of 2 keeps at most two batches waiting behind a slow reader (their chart JSON is
    // shared with the cache, so that is little memory).
    let (tx, rx) = mpsc::channel::<Event>(2);
    let mut first = vec![Event::retry(Duration::from_millis(deps.settings.retry_ms))];
    if !resumed {
        first.push(formula_results(&list, &request, id.to_string()));
    }
    let producer = Producer {
        charts: deps.charts,
        settings: deps.settings,
        shutdown: deps.shutdown,
        resolutions: request.resolutions,
        bars: request.bars,
        format: request.format,
        list,
        id,
        resumed,
        tx,
        lease,
        started: Instant::now(),
        started_epoch_ms: epoch_ms(),
        last_sent: Instant::now(),
    };
    actix_web::rt::spawn(producer.run());
    Ok(EventStream::new(first, rx).into_response())
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

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FormulaResultsData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    formula_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    formula_name: Option<&'a str>,
    stocks: &'a [Stock],
    total_charts: usize,
    resolutions: Vec<&'static str>,
    bars_count: u16,
    resumed: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CompleteData {
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
struct Batch {
    /// 0-based.
    index: usize,
    first_stock: usize,
    stocks: usize,
    /// `outcomes[stock * resolutions + resolution]`.
    outcomes: Vec<Option<ChartOutcome>>,
    pending: usize,
}

struct Producer {
    charts: ChartService,
    settings: StreamSettings,
    shutdown: watch::Receiver<bool>,
    /// What to fetch for each stock; the request's symbol list lives on in `list`.
    resolutions: Vec<Resolution>,
    bars: BarCount,
    format: BarsFormat,
    list: StockList,
    id: StreamId,
    resumed: bool,
    tx: mpsc::Sender<Event>,
    /// Held for the stream's life; dropping it releases the lease.
    lease: LeaseGuard,
    started: Instant,
    started_epoch_ms: u64,
    last_sent: Instant,
}

/// Why the producer stopped early.
enum Stop {
    ClientGone,
    Shutdown,
}

impl Producer {
    async fn run(mut self) {
        let open = metrics::gauge!("chartgate_sse_streams_open");
        open.increment(1.0);
        let tx = self.tx.clone();
        tokio::select! {
            _ = tx.closed() => log::debug!("stream: client went away; work cancelled, lease released"),
            stop = self.produce() => if let Err(Stop::Shutdown) = stop {
                let data = ErrorData { code: "shutting_down", message: "the server is shutting down; reconnect to resume" };
                let event = Event::json("stream-error", &self.id.to_string(), &Envelope { kind: "stream-error", data });
                let _ = self.send(event).await;
            },
        }
        drop(self.lease);
        open.decrement(1.0);
    }

    async fn send(&mut self, event: Event) -> Result<(), Stop> {
        self.tx.send(event).await.map_err(|_| Stop::ClientGone)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    async fn produce(&mut self) -> Result<(), Stop> {
        let resolutions = self.resolutions.clone();
        let per_stock = resolutions.len();
        let total_charts = self.list.stocks.len() * per_stock;

        let batch_size = self.settings.batch_size.max(1);
        let total_batches = self.list.stocks.len().div_ceil(batch_size);
        let mut batches: Vec<Batch> = (0..total_batches)
            .filter(|b| !self.id.has(*b))
            .map(|b| {
                let first_stock = b * batch_size;
                let stocks = batch_size.min(self.list.stocks.len() - first_stock);
                Batch {
                    index: b,
                    first_stock,
                    stocks,
                    outcomes: vec![None; stocks * per_stock],
                    pending: stocks * per_stock,
                }
            })
            .collect();
        let remaining: usize = batches.iter().map(|b| b.stocks * per_stock).sum();
        let mut loaded = total_charts - remaining;
        let mut counts = Counts::default();

        let mut fetches = FuturesUnordered::new();
        for (slot_batch, batch) in batches.iter().enumerate() {
            for s in 0..batch.stocks {
                for (r, resolution) in resolutions.iter().enumerate() {
                    let key = ChartKey {
                        symbol: self.list.stocks[batch.first_stock + s].symbol.clone(),
                        resolution: *resolution,
                        bars: self.bars,
                    };
                    let charts = self.charts.clone();
                    fetches.push(
                        async move { (slot_batch, s * per_stock + r, charts.get(key).await) },
                    );
                }
            }
        }

        let keep_alive = Duration::from_secs(self.settings.keep_alive_secs);
        let mut shutdown = self.shutdown.clone();
        while !fetches.is_empty() {
            tokio::select! {
                Some((slot_batch, slot, outcome)) = fetches.next() => {
                    counts.add(&outcome);
                    loaded += 1;
                    let batch = &mut batches[slot_batch];
                    batch.outcomes[slot] = Some(outcome);
                    batch.pending -= 1;
                    if batch.pending == 0 {
                        self.id.mark(batch.index);
                        let info = BatchInfo {
                            index: batch.index,
                            total_batches,
                            loaded,
                            total: total_charts,
                            started_epoch_ms: self.started_epoch_ms,
                        };
                        let stocks = &self.list.stocks[batch.first_stock..batch.first_stock + batch.stocks];
                        let event = batch_event(&info, stocks, &resolutions, &batch.outcomes, self.format, &self.id.to_string());
                        batch.outcomes = Vec::new();
                        self.send(event).await?;
                    }
                }
                _ = tokio::time::sleep_until(self.last_sent + keep_alive) => {
                    self.send(Event::comment("keep-alive")).await?;
                }
                _ = shutdown.wait_for(|stopping| *stopping) => return Err(Stop::Shutdown),
            }
        }

        let total_time = self.started.elapsed().as_millis() as u64;
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
            "stream: {name} done: {} charts ({} ok, {} failed, {} cached) in {:.1} s{}",
            counts.total(),
            counts.ok,
            counts.failed,
            counts.cached,
            total_time as f64 / 1000.0,
            if self.resumed { ", resumed" } else { "" },
        );
        let kind = "complete";
        let event = Event::json(kind, &self.id.done().to_string(), &Envelope { kind, data });
        self.send(event).await
    }
}

#[derive(Serialize)]
struct ErrorData<'a> {
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
            ev.text(",\"message\":").json_str(&failure.message).text("}");
        },
    );
    let end = epoch_ms();
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
