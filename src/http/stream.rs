//! The formula stream: `formula-results` as soon as the stock list is known, then a `chart-batch`
//! as each group of `stream.batch_size` stocks finishes (in whatever order groups finish), then
//! `complete`.
//!
//! Every chart of the stream is requested at once (the pool bounds concurrency). The producer runs
//! as its own task and hands events to the response through a small bounded channel, so a slow
//! reader slows only its own producer. When the client goes away the response drops the channel's
//! receiver; the producer sees that at once and drops its work: fetches only it was waiting for
//! are cancelled and its lease is released. A keep-alive comment after `stream.keep_alive_secs` of
//! silence is what lets a dead connection be noticed at all.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{HttpRequest, HttpResponse, Responder};
use actix_web_lab::sse;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::error::ApiError;
use super::params::{StreamRequest, SymbolSource};
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
    http: &HttpRequest,
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
    // Boxed events keep the channel's slot block small (it is allocated whole, whatever the
    // bound), and a bound of 2 keeps at most two batches waiting behind a slow reader.
    let (tx, mut rx) = mpsc::channel::<Box<sse::Event>>(2);
    let retry = Duration::from_millis(deps.settings.retry_ms);
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
    let events = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|event| event.map(|e| Ok::<_, Infallible>(*e)))
    });
    let sse = sse::Sse::from_stream(events)
        .with_retry_duration(retry)
        .customize()
        .insert_header(("X-Accel-Buffering", "no"));
    Ok(sse.respond_to(http).map_into_boxed_body())
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
    tx: mpsc::Sender<Box<sse::Event>>,
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
                let _ = self.send(self.event("stream-error", &Envelope { kind: "stream-error", data }, self.id.to_string())).await;
            },
        }
        drop(self.lease);
        open.decrement(1.0);
    }

    fn event(&self, name: &'static str, payload: &impl Serialize, id: String) -> sse::Event {
        let json = serde_json::to_string(payload).unwrap_or_else(|_| "{}".into());
        sse::Event::Data(sse::Data::new(json).event(name).id(id))
    }

    async fn send(&mut self, event: sse::Event) -> Result<(), Stop> {
        self.tx
            .send(Box::new(event))
            .await
            .map_err(|_| Stop::ClientGone)?;
        self.last_sent = Instant::now();
        // The response writer runs on this thread: let it flush this event before the next is
        // built, so `formula-results` leaves at once rather than behind cached batches.
        tokio::task::yield_now().await;
        Ok(())
    }

    async fn produce(&mut self) -> Result<(), Stop> {
        let resolutions = self.resolutions.clone();
        let per_stock = resolutions.len();
        let total_charts = self.list.stocks.len() * per_stock;
        if !self.resumed {
            let data = FormulaResultsData {
                formula_id: self.list.formula.as_ref().map(|f| f.0.as_str()),
                formula_name: self.list.formula.as_ref().map(|f| f.1.as_str()),
                stocks: &self.list.stocks,
                total_charts,
                resolutions: resolutions.iter().map(|r| r.as_str()).collect(),
                bars_count: self.bars.get(),
                resumed: false,
            };
            let event = self.event(
                "formula-results",
                &Envelope {
                    kind: "formula-results",
                    data,
                },
                self.id.to_string(),
            );
            self.send(event).await?;
        }

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
                        let json = batch_json(batch, total_batches, &self.list.stocks, &resolutions, self.format, loaded, total_charts, self.started_epoch_ms);
                        batch.outcomes = Vec::new();
                        let event = sse::Event::Data(sse::Data::new(json).event("chart-batch").id(self.id.to_string()));
                        self.send(event).await?;
                    }
                }
                _ = tokio::time::sleep_until(self.last_sent + keep_alive) => {
                    self.send(sse::Event::Comment("keep-alive".into())).await?;
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
        let done = self.id.done().to_string();
        let event = self.event(
            "complete",
            &Envelope {
                kind: "complete",
                data,
            },
            done,
        );
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

/// The `chart-batch` event's JSON, spliced from each chart's cached JSON so a chart is never
/// serialised twice, whatever the number of streams carrying it.
#[allow(clippy::too_many_arguments)]
fn batch_json(
    batch: &Batch,
    total_batches: usize,
    stocks: &[Stock],
    resolutions: &[Resolution],
    format: BarsFormat,
    loaded: usize,
    total: usize,
    started_epoch_ms: u64,
) -> String {
    let symbols = &stocks[batch.first_stock..batch.first_stock + batch.stocks];
    // Reserved once: a batch of 36 charts is about 1 MB, and growing by doubling would copy it
    // several times over into freshly mapped pages.
    let charts: usize = batch
        .outcomes
        .iter()
        .flatten()
        .map(|o| match o {
            Ok((chart, _)) => chart.json_fields(format).len() + 32,
            Err(failure) => failure.message.len() + 64,
        })
        .sum();
    let mut out = String::with_capacity(charts + symbols.len() * 48 + 512);
    let _ = write!(
        out,
        "{{\"type\":\"chart-batch\",\"data\":{{\"batchIndex\":{},\"totalBatches\":{total_batches},\"symbols\":[",
        batch.index + 1
    );
    for (n, stock) in symbols.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        push_json_str(&mut out, stock.symbol.as_str());
    }
    out.push_str("],\"chartData\":{");
    write_outcomes(&mut out, batch, symbols, resolutions, |o, out| match o {
        Ok((chart, _)) => {
            out.push('{');
            out.push_str(chart.json_fields(format));
            out.push('}');
            true
        }
        Err(_) => false,
    });
    out.push_str("},\"errors\":{");
    write_outcomes(&mut out, batch, symbols, resolutions, |o, out| match o {
        Err(failure) => {
            out.push_str("{\"code\":");
            push_json_str(out, failure.code);
            out.push_str(",\"message\":");
            push_json_str(out, &failure.message);
            out.push('}');
            true
        }
        Ok(_) => false,
    });
    let end = epoch_ms();
    let percentage = if total == 0 {
        100.0
    } else {
        (loaded as f64 * 1000.0 / total as f64).round() / 10.0
    };
    let _ = write!(
        out,
        "}},\"progress\":{{\"loaded\":{loaded},\"total\":{total},\"percentage\":{percentage}}},\"timing\":{{\"startTime\":{started_epoch_ms},\"endTime\":{end},\"durationMs\":{}}}}}}}",
        end.saturating_sub(started_epoch_ms)
    );
    out
}

/// Writes `"<symbol>":{"<resolution>":<value>,...}` for the outcomes `write` accepts.
fn write_outcomes(
    out: &mut String,
    batch: &Batch,
    symbols: &[Stock],
    resolutions: &[Resolution],
    write: impl Fn(&ChartOutcome, &mut String) -> bool,
) {
    let mut first_symbol = true;
    for (s, stock) in symbols.iter().enumerate() {
        let mut entry = String::new();
        for (r, resolution) in resolutions.iter().enumerate() {
            let Some(outcome) = &batch.outcomes[s * resolutions.len() + r] else {
                continue;
            };
            let mark = entry.len();
            if !entry.is_empty() {
                entry.push(',');
            }
            push_json_str(&mut entry, resolution.as_str());
            entry.push(':');
            if !write(outcome, &mut entry) {
                entry.truncate(mark);
            }
        }
        if entry.is_empty() {
            continue;
        }
        if !first_symbol {
            out.push(',');
        }
        first_symbol = false;
        push_json_str(out, stock.symbol.as_str());
        out.push_str(":{");
        out.push_str(&entry);
        out.push('}');
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}
