//! The codec workloads, shared by `benches/codec.rs` (criterion) and the harness's `codec`
//! scenario (a quick timing loop): decoding the capture's 300-bar answer into bars the way the
//! upstream connection does, and encoding one `chart-batch` event the way the stream does, each
//! beside plain `serde_json` reading and writing of the same bytes.
//!
//! The capture is the repository's own copy in `tests/fixtures`.

use std::path::PathBuf;
use std::sync::Arc;

use chartgate::bench_support::{BatchInfo, ChartOutcome, Event, ReadyChart, Stock, batch_event};
use chartgate::domain::{Bar, BarsFormat, Chart, ChartMetadata, Resolution, Symbol};
use chartgate_protocol::server::into_ascending;
use chartgate_protocol::{Packet, ServerMessage, decode_message};
use serde_json::Value;

/// Index of the capture's ~118 KB message carrying `series_loading`, `symbol_resolved`, the
/// 300-bar `timescale_update`, `series_completed` and quote data.
pub const ANSWER_INDEX: usize = 27;
/// Stocks per `chart-batch` (`stream.batch_size` default) and resolutions per stock.
pub const BATCH_STOCKS: usize = 18;
pub const BATCH_RESOLUTIONS: [Resolution; 2] = [Resolution::Week, Resolution::Day];

/// Where the capture is: the repository's `tests/fixtures`.
pub fn capture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tradingview-capture.jsonl")
}

/// The inputs of both workloads.
pub struct Inputs {
    /// The whole WebSocket text message, framing included.
    pub message: String,
    /// Its JSON packets, for the plain serde_json reference.
    pub payloads: Vec<String>,
    /// The `timescale_update` packet alone (the bars and tick marks, ~29 KB): the part of an
    /// answer whose decoding costs, and all a simulator answer carries besides two small packets.
    pub series_update: String,
    /// One chart per (stock, resolution) of a batch: the capture's 300 bars and metadata.
    pub charts: Vec<(Symbol, Vec<Chart>)>,
}

pub fn load() -> Result<Inputs, String> {
    let path = capture_path();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text
        .lines()
        .nth(ANSWER_INDEX)
        .ok_or_else(|| format!("{}: fewer than {ANSWER_INDEX} lines", path.display()))?;
    let entry: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let message = entry["data"]
        .as_str()
        .ok_or("capture line without data")?
        .to_string();
    let payloads = decode_message(&message)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|p| match p {
            Packet::Json(j) => Some(j.to_string()),
            Packet::Heartbeat(_) => None,
        })
        .collect::<Vec<String>>();
    let series_update = payloads
        .iter()
        .find(|p| p.starts_with("{\"m\":\"timescale_update\""))
        .ok_or("no timescale_update in the answer")?
        .clone();
    let (bars, metadata) = decode_answer(&message);
    if bars.len() != 300 {
        return Err(format!(
            "expected 300 bars in message {ANSWER_INDEX}, got {}",
            bars.len()
        ));
    }
    let charts = (0..BATCH_STOCKS)
        .map(|n| {
            let symbol: Symbol = format!("NSE:BENCH{n:02}").parse().expect("a valid symbol");
            let charts = BATCH_RESOLUTIONS
                .iter()
                .map(|r| Chart {
                    symbol: symbol.clone(),
                    resolution: *r,
                    bars: bars.clone(),
                    metadata: metadata.clone(),
                })
                .collect();
            (symbol, charts)
        })
        .collect();
    Ok(Inputs {
        message,
        payloads,
        series_update,
        charts,
    })
}

/// What `upstream::connection` does with a message: split the packets, decode each, gather the
/// series' bars and the symbol's metadata, sort them into a chart's bars.
pub fn decode_answer(message: &str) -> (Vec<Bar>, ChartMetadata) {
    let mut bars = Vec::new();
    let mut metadata = ChartMetadata::default();
    for packet in decode_message(message).unwrap_or_default() {
        let Packet::Json(payload) = packet else {
            continue;
        };
        match ServerMessage::decode(payload) {
            Ok(ServerMessage::TimescaleUpdate { series, .. }) => {
                for s in series.into_iter().filter(|s| s.series_id == "sds_1") {
                    bars.extend(s.bars);
                }
            }
            Ok(ServerMessage::SymbolResolved { info, .. }) => metadata = ChartMetadata::from(&info),
            _ => {}
        }
    }
    (into_ascending(bars), metadata)
}

/// Decodes one `timescale_update` packet as the connection does; the number of bars.
pub fn decode_series_update(packet: &str) -> usize {
    match ServerMessage::decode(packet) {
        Ok(ServerMessage::TimescaleUpdate { series, .. }) => {
            series.iter().map(|s| s.bars.len()).sum()
        }
        _ => 0,
    }
}

/// The reference: every packet of the same message parsed by plain serde_json into `Value`.
pub fn decode_reference(payloads: &[String]) -> usize {
    payloads
        .iter()
        .map(|p| {
            serde_json::from_str::<Value>(p).map_or(0, |v| v.as_object().map_or(0, |o| o.len()))
        })
        .sum()
}

/// A lower bound: the same packets only validated (`IgnoredAny`).
pub fn scan_reference(payloads: &[String]) -> usize {
    payloads
        .iter()
        .filter(|p| serde_json::from_str::<serde::de::IgnoredAny>(p).is_ok())
        .count()
}

/// A batch's stocks and chart outcomes, as the stream holds them when the batch is complete.
pub struct BatchInput {
    stocks: Vec<Stock>,
    outcomes: Vec<Option<ChartOutcome>>,
}

/// Fresh cache entries for a batch (their JSON not yet made).
pub fn cached_charts(inputs: &Inputs) -> BatchInput {
    let stocks = inputs
        .charts
        .iter()
        .map(|(symbol, _)| Stock::new(symbol.clone()))
        .collect();
    let outcomes = inputs
        .charts
        .iter()
        .flat_map(|(_, charts)| charts.iter())
        .map(|c| Some(Ok((Arc::new(ReadyChart::new(c.clone())), false))))
        .collect();
    BatchInput { stocks, outcomes }
}

/// The `chart-batch` event exactly as a stream builds it.
pub fn encode_batch(batch: &BatchInput, format: BarsFormat) -> Event {
    let info = BatchInfo {
        index: 0,
        total_batches: 9,
        loaded: batch.outcomes.len(),
        total: 300,
        started_epoch_ms: 1_766_031_047_000,
    };
    batch_event(
        &info,
        &batch.stocks,
        &BATCH_RESOLUTIONS,
        &batch.outcomes,
        format,
        "0000000000000001.0000000000000002.01",
    )
}

/// The JSON an event carries: its one `data:` line.
pub fn event_json(event: &Event) -> String {
    let text = String::from_utf8_lossy(&event.to_bytes()).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix("data: "))
        .unwrap_or_default()
        .to_string()
}

/// The reference: plain serde_json writing the same event from a `Value`.
pub fn encode_reference(event: &Value) -> String {
    serde_json::to_string(event).unwrap_or_default()
}
