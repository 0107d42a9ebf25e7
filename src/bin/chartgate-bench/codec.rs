//! The codec workloads, shared by `benches/codec.rs` (criterion) and the harness's `codec`
//! scenario (a quick timing loop): decoding the capture's 300-bar answer into bars the way the
//! upstream connection does, and encoding one `chart-batch` event the way the stream does, each
//! beside plain `serde_json` reading and writing of the same bytes.
//!
//! The capture is read at run time from `../shared/fixtures` (never copied into the repository).

use std::path::PathBuf;
use std::sync::Arc;

use chartgate::cache::CachedChart;
use chartgate::domain::{Bar, BarsFormat, Chart, ChartMetadata, Resolution, Symbol};
use chartgate::protocol::server::into_ascending;
use chartgate::protocol::{Packet, ServerMessage, decode_message};
use serde_json::Value;

/// Index of the capture's ~118 KB message carrying `series_loading`, `symbol_resolved`, the
/// 300-bar `timescale_update`, `series_completed` and quote data.
pub const ANSWER_INDEX: usize = 27;
/// Stocks per `chart-batch` (`stream.batch_size` default) and resolutions per stock.
pub const BATCH_STOCKS: usize = 18;
pub const BATCH_RESOLUTIONS: [Resolution; 2] = [Resolution::Week, Resolution::Day];

/// Where the capture is: `$CHARTGATE_FIXTURES` or `../shared/fixtures` beside the checkout.
pub fn capture_path() -> PathBuf {
    std::env::var_os("CHARTGATE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"))
        .join("tradingview-capture.jsonl")
}

/// The inputs of both workloads.
pub struct Inputs {
    /// The whole WebSocket text message, framing included.
    pub message: String,
    /// Its JSON packets, for the plain serde_json reference.
    pub payloads: Vec<String>,
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
        .collect();
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
            Ok(ServerMessage::SymbolResolved { info, .. }) => metadata = info.to_metadata(),
            _ => {}
        }
    }
    (into_ascending(bars), metadata)
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

/// Fresh cache entries for a batch (their JSON not yet made).
pub fn cached_charts(inputs: &Inputs) -> Vec<(Symbol, Vec<Arc<CachedChart>>)> {
    inputs
        .charts
        .iter()
        .map(|(s, charts)| {
            (
                s.clone(),
                charts
                    .iter()
                    .map(|c| Arc::new(CachedChart::new(c.clone())))
                    .collect(),
            )
        })
        .collect()
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// The `chart-batch` event's JSON as `http::stream::batch_json` builds it (that function is
/// private; this is the same splicing over the public `CachedChart::json_fields`).
pub fn encode_batch(charts: &[(Symbol, Vec<Arc<CachedChart>>)], format: BarsFormat) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        "{{\"type\":\"chart-batch\",\"data\":{{\"batchIndex\":{},\"totalBatches\":{},\"symbols\":[",
        1, 9
    );
    for (n, (symbol, _)) in charts.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        push_json_str(&mut out, symbol.as_str());
    }
    out.push_str("],\"chartData\":{");
    for (n, (symbol, per_res)) in charts.iter().enumerate() {
        let mut entry = String::new();
        for (r, chart) in BATCH_RESOLUTIONS.iter().zip(per_res) {
            if !entry.is_empty() {
                entry.push(',');
            }
            push_json_str(&mut entry, r.as_str());
            entry.push(':');
            entry.push('{');
            entry.push_str(chart.json_fields(format));
            entry.push('}');
        }
        if n > 0 {
            out.push(',');
        }
        push_json_str(&mut out, symbol.as_str());
        out.push_str(":{");
        out.push_str(&entry);
        out.push('}');
    }
    out.push_str("},\"errors\":{");
    let _ = write!(
        out,
        "}},\"progress\":{{\"loaded\":36,\"total\":300,\"percentage\":12.0}},\"timing\":{{\"startTime\":1766031047000,\"endTime\":1766031048000,\"durationMs\":1000}}}}}}"
    );
    out
}

/// The reference: plain serde_json writing the same event from a `Value`.
pub fn encode_reference(event: &Value) -> String {
    serde_json::to_string(event).unwrap_or_default()
}
