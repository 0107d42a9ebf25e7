//! A chart ready to serve: its bars and their JSON, made at most once per bars format and then
//! shared by every client (the cache holds these, and each stream carries the same bytes), so
//! fan-out to a thousand streams costs one serialisation.
//!
//! The pool makes them: the default format is written on the connection's thread, right after
//! the answer is decoded (see [`ReadyChart::prepared`]).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use chartgate_protocol::json::{Whole, write_number};

use crate::domain::{Bar, BarsFormat, Chart, ChartMetadata, Resolution, Symbol};
/// Writes bars as JSON into a buffer.
type BarWriter = fn(&[Bar], &mut String);
/// Reads one price column of a bar.
type Column = (&'static str, fn(&Bar) -> f64);

/// A finished chart and its JSON, made at most once per format.
#[derive(Debug)]
pub struct ReadyChart {
    pub chart: Chart,
    objects: OnceLock<Bytes>,
    columns: OnceLock<Bytes>,
}

impl ReadyChart {
    pub fn new(chart: Chart) -> Self {
        ReadyChart {
            chart,
            objects: OnceLock::new(),
            columns: OnceLock::new(),
        }
    }

    /// The chart with its JSON in the default format already made. The pool calls this on the
    /// connection's thread as each answer is decoded: the answers of a burst finish within a few
    /// milliseconds, and the one worker thread serving their stream would otherwise write all of
    /// them one after the other at its end, with extra thread hops per chart. Other formats are made on first use.
    pub fn prepared(chart: Chart) -> Arc<Self> {
        let ready = ReadyChart::new(chart);
        ready.json_fields(BarsFormat::default());
        Arc::new(ready)
    }

    /// A chart from its served JSON, as the cluster's shared cache stores it: `objects` (the
    /// default format's `"bars":[...],"metadata":{...}`) is read back into bars, and kept as the
    /// bytes to serve; `columns`, when given, is served as it is. `None` when `objects` is not
    /// that JSON.
    pub fn from_json(
        symbol: Symbol,
        resolution: Resolution,
        objects: Bytes,
        columns: Option<Bytes>,
    ) -> Option<Self> {
        /// A bar as written by [`write_bar_objects`]: non-finite numbers are `null`.
        #[derive(serde::Deserialize)]
        struct StoredBar {
            time: i64,
            open: Option<f64>,
            high: Option<f64>,
            low: Option<f64>,
            close: Option<f64>,
            #[serde(default)]
            volume: Option<f64>,
        }
        #[derive(serde::Deserialize)]
        struct Stored {
            bars: Vec<StoredBar>,
            metadata: ChartMetadata,
        }
        let mut whole = Vec::with_capacity(objects.len() + 2);
        whole.push(b'{');
        whole.extend_from_slice(&objects);
        whole.push(b'}');
        let stored: Stored = serde_json::from_slice(&whole).ok()?;
        let number = |n: Option<f64>| n.unwrap_or(f64::NAN);
        let bars = stored
            .bars
            .into_iter()
            .map(|b| Bar {
                time: b.time,
                open: number(b.open),
                high: number(b.high),
                low: number(b.low),
                close: number(b.close),
                volume: b.volume,
            })
            .collect();
        let ready = ReadyChart::new(Chart {
            symbol,
            resolution,
            bars,
            metadata: stored.metadata,
        });
        let _ = ready.objects.set(objects);
        if let Some(columns) = columns {
            let _ = ready.columns.set(columns);
        }
        Some(ready)
    }

    /// `"bars":...,"metadata":{...}` (no braces), so callers can splice it into bigger objects.
    /// `Bytes`, so every stream carrying the chart shares this one buffer.
    pub fn json_fields(&self, format: BarsFormat) -> &Bytes {
        let (cell, write, per_bar): (&OnceLock<Bytes>, BarWriter, usize) = match format {
            BarsFormat::Objects => (&self.objects, write_bar_objects, OBJECT_BYTES_PER_BAR),
            BarsFormat::Columns => (&self.columns, write_bar_columns, COLUMN_BYTES_PER_BAR),
        };
        cell.get_or_init(|| {
            // One allocation: the bars, and room for the metadata after them.
            let mut out = String::with_capacity(self.chart.bars.len() * per_bar + 512);
            out.push_str("\"bars\":");
            write(&self.chart.bars, &mut out);
            out.push_str(",\"metadata\":");
            out.push_str(
                &serde_json::to_string(&self.chart.metadata).unwrap_or_else(|_| "{}".into()),
            );
            Bytes::from(out)
        })
    }

    /// Rough bytes held, for the cache's size bound: the bars, and both JSON forms once made.
    pub(crate) fn weight(&self) -> u32 {
        let bars = self.chart.bars.len();
        let json = OBJECT_BYTES_PER_BAR + COLUMN_BYTES_PER_BAR;
        let estimate = 512 + bars * (std::mem::size_of::<Bar>() + json);
        u32::try_from(estimate).unwrap_or(u32::MAX)
    }
}

/// Bytes reserved per bar before writing: the capture's 300 daily bars take about 92 (objects) and
/// 75 (columns) each; a little more saves the one reallocation a close estimate risks.
const OBJECT_BYTES_PER_BAR: usize = 100;
const COLUMN_BYTES_PER_BAR: usize = 84;

/// `[{"time":..,"open":..,"high":..,"low":..,"close":..,"volume":..},...]`, volume omitted when
/// the feed gave none.
fn write_bar_objects(bars: &[Bar], out: &mut String) {
    out.reserve(bars.len() * OBJECT_BYTES_PER_BAR + 2);
    out.push('[');
    let mut time = itoa::Buffer::new();
    for (n, bar) in bars.iter().enumerate() {
        out.push_str(if n == 0 { "{\"time\":" } else { ",{\"time\":" });
        out.push_str(time.format(bar.time));
        out.push_str(",\"open\":");
        write_number(out, bar.open, Whole::Plain);
        out.push_str(",\"high\":");
        write_number(out, bar.high, Whole::Plain);
        out.push_str(",\"low\":");
        write_number(out, bar.low, Whole::Plain);
        out.push_str(",\"close\":");
        write_number(out, bar.close, Whole::Plain);
        if let Some(volume) = bar.volume {
            out.push_str(",\"volume\":");
            write_number(out, volume, Whole::Plain);
        }
        out.push('}');
    }
    out.push(']');
}

/// `{"time":[...],"open":[...],...}`; `volume` only when some bar has one (null for the others).
fn write_bar_columns(bars: &[Bar], out: &mut String) {
    out.reserve(bars.len() * COLUMN_BYTES_PER_BAR + 64);
    out.push_str("{\"time\":[");
    let mut time = itoa::Buffer::new();
    for (n, bar) in bars.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(time.format(bar.time));
    }
    out.push(']');
    let columns: [Column; 4] = [
        (",\"open\":[", |b| b.open),
        (",\"high\":[", |b| b.high),
        (",\"low\":[", |b| b.low),
        (",\"close\":[", |b| b.close),
    ];
    for (head, get) in columns {
        out.push_str(head);
        for (n, bar) in bars.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            write_number(out, get(bar), Whole::Plain);
        }
        out.push(']');
    }
    if bars.iter().any(|b| b.volume.is_some()) {
        out.push_str(",\"volume\":[");
        for (n, bar) in bars.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            match bar.volume {
                Some(volume) => write_number(out, volume, Whole::Plain),
                None => out.push_str("null"),
            }
        }
        out.push(']');
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(volume: Option<f64>) -> Chart {
        Chart {
            symbol: "NSE:TCS".parse().unwrap(),
            resolution: Resolution::Day,
            bars: vec![
                Bar {
                    time: 1,
                    open: 1.0,
                    high: 2.5,
                    low: 0.5,
                    close: 2.0,
                    volume,
                },
                Bar {
                    time: 2,
                    open: 2.0,
                    high: 3.0,
                    low: 1.5,
                    close: 2.5,
                    volume,
                },
            ],
            metadata: ChartMetadata {
                name: "TCS".into(),
                ..ChartMetadata::default()
            },
        }
    }

    /// The numbers of a JSON array or object, as `f64`s (whole numbers are written without `.0`).
    fn numbers(value: &serde_json::Value) -> Vec<Option<f64>> {
        match value {
            serde_json::Value::Array(items) => {
                items.iter().map(serde_json::Value::as_f64).collect()
            }
            serde_json::Value::Object(map) => map.values().map(serde_json::Value::as_f64).collect(),
            other => vec![other.as_f64()],
        }
    }

    fn fields(chart: &ReadyChart, format: BarsFormat) -> &str {
        std::str::from_utf8(chart.json_fields(format)).unwrap()
    }

    #[test]
    fn prepared_charts_have_only_the_default_format_made() {
        let ready = ReadyChart::prepared(chart(None));
        assert!(ready.objects.get().is_some());
        assert!(ready.columns.get().is_none());
    }

    #[test]
    fn both_formats_are_valid_json_of_the_spec_shape() {
        let cached = ReadyChart::new(chart(Some(10.0)));
        let objects: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", fields(&cached, BarsFormat::Objects))).unwrap();
        assert!(fields(&cached, BarsFormat::Objects).starts_with(
            "\"bars\":[{\"time\":1,\"open\":1,\"high\":2.5,\"low\":0.5,\"close\":2,\"volume\":10},"
        ));
        assert_eq!(objects["bars"][1]["time"].as_i64(), Some(2));
        assert_eq!(
            numbers(&objects["bars"][1]),
            // serde_json's map is sorted by key: close, high, low, open, time, volume.
            [2.5, 3.0, 1.5, 2.0, 2.0, 10.0].map(Some)
        );
        assert_eq!(objects["metadata"]["name"], "TCS");
        let columns: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", fields(&cached, BarsFormat::Columns))).unwrap();
        assert_eq!(columns["bars"]["time"], serde_json::json!([1, 2]));
        assert_eq!(numbers(&columns["bars"]["close"]), [Some(2.0), Some(2.5)]);
        assert_eq!(
            numbers(&columns["bars"]["volume"]),
            [Some(10.0), Some(10.0)]
        );

        let no_volume = ReadyChart::new(chart(None));
        assert!(!fields(&no_volume, BarsFormat::Objects).contains("volume"));
        assert!(!fields(&no_volume, BarsFormat::Columns).contains("volume"));
    }

    #[test]
    fn a_chart_read_back_from_its_json_serves_the_same_bytes_and_bars() {
        let original = ReadyChart::new(chart(Some(10.0)));
        let objects = original.json_fields(BarsFormat::Objects).clone();
        let columns = original.json_fields(BarsFormat::Columns).clone();
        let back = ReadyChart::from_json(
            original.chart.symbol.clone(),
            original.chart.resolution,
            objects.clone(),
            Some(columns.clone()),
        )
        .unwrap();
        assert_eq!(back.chart, original.chart);
        assert_eq!(back.json_fields(BarsFormat::Objects), &objects);
        assert_eq!(back.json_fields(BarsFormat::Columns), &columns);
        // Without the columns form, it is made from the bars read back, alike.
        let back = ReadyChart::from_json(
            original.chart.symbol.clone(),
            original.chart.resolution,
            objects,
            None,
        )
        .unwrap();
        assert_eq!(back.json_fields(BarsFormat::Columns), &columns);
        assert!(
            ReadyChart::from_json(
                original.chart.symbol.clone(),
                original.chart.resolution,
                Bytes::from_static(b"\"bars\":nope"),
                None
            )
            .is_none()
        );
    }

    #[test]
    fn missing_volumes_and_non_finite_values_are_null() {
        let mut c = chart(Some(7.0));
        c.bars[0].volume = None;
        c.bars[1].high = f64::NAN;
        c.bars[1].low = f64::NEG_INFINITY;
        let cached = ReadyChart::new(c);
        let objects: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", fields(&cached, BarsFormat::Objects))).unwrap();
        assert!(objects["bars"][0].get("volume").is_none());
        assert_eq!(objects["bars"][1]["high"], serde_json::Value::Null);
        assert_eq!(objects["bars"][1]["low"], serde_json::Value::Null);
        let columns: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", fields(&cached, BarsFormat::Columns))).unwrap();
        assert_eq!(columns["bars"]["volume"], serde_json::json!([null, 7]));
        assert_eq!(columns["bars"]["high"], serde_json::json!([2.5, null]));
    }
}
