//! The stream's event payloads (SPEC 3.1) as far as the client reads them, and the [`Tally`] that
//! folds them into the end-of-stream summary.
//!
//! Each payload is `{"type": <name>, "data": {...}}`. Only the fields the progress display, the
//! summary and the live table need are typed; charts are kept as raw JSON and only the last two
//! bars of the live table's resolution are ever read ([`last_bars`]), and `--json` output passes
//! the `data` object through as raw JSON, so unknown fields and key order survive untouched.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::live::BarPoint;

/// The outer object of every event's `data:` line.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope<'a> {
    /// The event's payload, kept as raw text for `--json` and typed parsing.
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

/// `formula-results`: the symbol list, known before any chart work.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FormulaResults {
    /// A string id in practice; any JSON value is shown as is.
    #[serde(default)]
    pub formula_id: Option<serde_json::Value>,
    #[serde(default)]
    pub formula_name: Option<String>,
    /// Counted, and their symbols listed in the live table.
    #[serde(default)]
    pub stocks: Vec<Stock>,
    #[serde(default)]
    pub total_charts: Option<u64>,
    /// The resolutions of every stock's charts, in the order asked for; the live table follows
    /// the first.
    #[serde(default)]
    pub resolutions: Vec<String>,
    /// `true` when a reconnect continued an earlier stream; `false` means "start counting again".
    #[serde(default)]
    pub resumed: bool,
}

/// One stock of `formula-results`; only its symbol is read.
#[derive(Debug, Deserialize)]
pub(crate) struct Stock {
    #[serde(default)]
    pub symbol: Option<String>,
}

/// `chart-batch`: the charts of one group of stocks.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChartBatch<'a> {
    /// 1-based; batches may arrive in any order, and a resumed stream must not count one twice.
    pub batch_index: u64,
    #[serde(default)]
    pub total_batches: Option<u64>,
    /// symbol → resolution → chart, unparsed: the tally counts the keys, the live table reads the
    /// last bars of one resolution.
    #[serde(default, borrow)]
    pub chart_data: BTreeMap<String, BTreeMap<String, &'a RawValue>>,
    /// symbol → resolution → why that chart failed.
    #[serde(default)]
    pub errors: BTreeMap<String, BTreeMap<String, ChartError>>,
    #[serde(default)]
    pub progress: Option<BatchProgress>,
}

/// Why one chart failed.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ChartError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// The server's running count after a batch.
#[derive(Debug, Deserialize)]
pub(crate) struct BatchProgress {
    pub loaded: u64,
    pub total: u64,
}

/// `complete`: the server's final figures. Times are in milliseconds.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Complete {
    #[serde(default)]
    pub total_charts: Option<u64>,
    #[serde(default)]
    pub successful_charts: Option<u64>,
    #[serde(default)]
    pub failed_charts: Option<u64>,
    #[serde(default)]
    pub cached_charts: Option<u64>,
    #[serde(default)]
    pub total_time: Option<f64>,
    #[serde(default)]
    pub avg_time_per_chart: Option<f64>,
}

/// `stream-error`: a failure that ended the stream early.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// `bar` (live): the newest state of one bar of one chart.
#[derive(Debug, Deserialize)]
pub(crate) struct BarEvent {
    pub symbol: String,
    pub resolution: String,
    pub bar: LiveBar,
}

/// The bar of a `bar` event; open, high, low and volume are not shown, so not read.
#[derive(Debug, Deserialize)]
pub(crate) struct LiveBar {
    /// UNIX seconds of the bar's start.
    pub time: i64,
    pub close: f64,
}

/// `quote` (live, with `quotes=true`): the whole latest quote of one stock; the fields the feed
/// has not given are absent.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QuoteEvent {
    pub symbol: String,
    #[serde(default)]
    pub price: Option<f64>,
    #[serde(default)]
    pub change_percent: Option<f64>,
    /// UNIX seconds of the last trade.
    #[serde(default)]
    pub time: Option<i64>,
}

/// A chart object (`{"bars": ..., "metadata": ...}`) up to its bars.
#[derive(Deserialize)]
struct ChartBars<'a> {
    #[serde(borrow, default)]
    bars: Option<&'a RawValue>,
}

/// `barsFormat=columns` bars, the two columns the live table reads.
#[derive(Deserialize)]
struct BarColumns {
    #[serde(default)]
    time: Vec<i64>,
    /// `null` where the value was not a finite number.
    #[serde(default)]
    close: Vec<Option<f64>>,
}

/// One bar of `barsFormat=objects`.
#[derive(Deserialize)]
struct BarObject {
    time: i64,
    #[serde(default)]
    close: Option<f64>,
}

/// The last two bars with a close of one chart (oldest first), in either bars format: what the
/// live table needs of the history to show a change before the first live bar.
pub(crate) fn last_bars(chart: &RawValue) -> Result<Vec<BarPoint>, serde_json::Error> {
    let Some(bars) = serde_json::from_str::<ChartBars>(chart.get())?.bars else {
        return Ok(Vec::new());
    };
    let points: Vec<BarPoint> = if bars.get().trim_start().starts_with('[') {
        serde_json::from_str::<Vec<BarObject>>(bars.get())?
            .into_iter()
            .filter_map(|b| {
                b.close.map(|close| BarPoint {
                    time: b.time,
                    close,
                })
            })
            .collect()
    } else {
        let columns: BarColumns = serde_json::from_str(bars.get())?;
        columns
            .time
            .into_iter()
            .zip(columns.close)
            .filter_map(|(time, close)| close.map(|close| BarPoint { time, close }))
            .collect()
    };
    let from = points.len().saturating_sub(2);
    Ok(points[from..].to_vec())
}

/// One failed chart, as listed in the summary.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FailedChart {
    pub symbol: String,
    pub resolution: String,
    pub code: String,
    pub message: String,
}

/// What one batch contributed, kept per batch index so a re-sent batch replaces, not adds.
#[derive(Debug, Clone, Default)]
struct BatchTally {
    ok: u64,
    failed: Vec<FailedChart>,
}

/// Everything the summary needs, accumulated event by event.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// `formulaName`, or `None` for a plain symbol list.
    pub formula_name: Option<String>,
    /// `formulaId` as text.
    pub formula_id: Option<String>,
    /// Number of stocks in `formula-results`.
    pub stocks: Option<u64>,
    /// `totalCharts` from `formula-results` (or the latest batch's `progress.total`).
    pub total_charts: Option<u64>,
    pub total_batches: Option<u64>,
    /// Batches received, by index.
    batches: BTreeMap<u64, BatchTally>,
    /// The server's running `progress.loaded`, when it sends one.
    server_loaded: Option<u64>,
    /// The `complete` event, once it came.
    complete: Option<CompleteFigures>,
}

/// The `complete` event's figures, kept as sent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CompleteFigures {
    pub total_charts: Option<u64>,
    pub successful_charts: Option<u64>,
    pub failed_charts: Option<u64>,
    pub cached_charts: Option<u64>,
    /// Milliseconds.
    pub total_time_ms: Option<f64>,
    /// Milliseconds.
    pub avg_time_per_chart_ms: Option<f64>,
}

impl Tally {
    /// Records `formula-results`. A fresh (not resumed) one after earlier batches means the
    /// server started the stream over, so the earlier batches are forgotten.
    pub(crate) fn formula_results(&mut self, fr: FormulaResults) {
        if !fr.resumed {
            self.batches.clear();
            self.server_loaded = None;
            self.total_batches = None;
        }
        self.formula_name = fr.formula_name;
        self.formula_id = fr.formula_id.map(|id| match id {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        });
        self.stocks = Some(fr.stocks.len() as u64);
        if fr.total_charts.is_some() {
            self.total_charts = fr.total_charts;
        }
    }

    /// Records a `chart-batch`.
    pub(crate) fn chart_batch(&mut self, batch: ChartBatch<'_>) {
        let ok = batch.chart_data.values().map(|r| r.len() as u64).sum();
        let mut failed = Vec::new();
        for (symbol, by_resolution) in batch.errors {
            for (resolution, error) in by_resolution {
                failed.push(FailedChart {
                    symbol: symbol.clone(),
                    resolution,
                    code: error.code,
                    message: error.message,
                });
            }
        }
        if batch.total_batches.is_some() {
            self.total_batches = batch.total_batches;
        }
        if let Some(progress) = batch.progress {
            self.server_loaded = Some(progress.loaded);
            self.total_charts.get_or_insert(progress.total);
        }
        self.batches
            .insert(batch.batch_index, BatchTally { ok, failed });
    }

    /// Records `complete`.
    pub(crate) fn complete(&mut self, c: Complete) {
        self.complete = Some(CompleteFigures {
            total_charts: c.total_charts,
            successful_charts: c.successful_charts,
            failed_charts: c.failed_charts,
            cached_charts: c.cached_charts,
            total_time_ms: c.total_time,
            avg_time_per_chart_ms: c.avg_time_per_chart,
        });
    }

    /// Charts received so far, ok or failed, counted by the client.
    pub fn charts_received(&self) -> u64 {
        self.batches
            .values()
            .map(|b| b.ok + b.failed.len() as u64)
            .sum()
    }

    /// Charts loaded for the progress display: the server's running count when it sends one
    /// (it knows about batches this client may have missed), else the client's own count.
    pub fn loaded(&self) -> u64 {
        self.server_loaded.unwrap_or(0).max(self.charts_received())
    }

    /// Distinct batches received.
    pub fn batches_received(&self) -> u64 {
        self.batches.len() as u64
    }

    /// Charts that arrived with data.
    pub fn ok(&self) -> u64 {
        self.batches.values().map(|b| b.ok).sum()
    }

    /// Every failed chart, sorted by symbol, then resolution.
    pub fn failed(&self) -> Vec<FailedChart> {
        let set: BTreeSet<FailedChart> = self
            .batches
            .values()
            .flat_map(|b| b.failed.iter().cloned())
            .collect();
        set.into_iter().collect()
    }

    /// The `complete` event's figures, if it came (not after a `204` resume, for instance).
    pub fn complete_figures(&self) -> Option<CompleteFigures> {
        self.complete
    }
}
