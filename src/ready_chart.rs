//! A chart ready to serve: its bars and their JSON, made at most once per bars format and then
//! shared by every client (the cache holds these, and each stream carries the same bytes), so
//! fan-out to a thousand streams costs one serialisation.
//!
//! The pool makes them: the default format is written on the connection's thread, right after
//! the answer is decoded (see [`ReadyChart::prepared`]).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::domain::{Bar, BarsFormat, Chart};
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
    /// them (about 40 µs a chart) one after the other at its end, with extra thread hops per
    /// chart. Other formats are made on first use.
    pub fn prepared(chart: Chart) -> Arc<Self> {
        let ready = ReadyChart::new(chart);
        ready.json_fields(BarsFormat::default());
        Arc::new(ready)
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

/// Below 2^53 every whole `f64` is exactly an `i64` and back.
const EXACT_INT_LIMIT: f64 = 9_007_199_254_740_992.0;

/// Appends `value` as a JSON number, `null` when it is not finite.
///
/// Three exact paths, fastest first (the numbers clients parse back are the same `f64`s):
/// - whole numbers (volumes, times, round prices) below 2^53 through `itoa`: the integer is the
///   value itself, so `90305` parses to `90305.0` exactly;
/// - prices with at most two decimals (what the feed sends for `pricescale` 100) as `<int>.<dd>`,
///   see [`exact_cents`];
/// - anything else through `ryu` (shortest round trip).
///
/// `-0.0` takes the `ryu` path so its sign survives. serde_json's default number reader is not
/// always correctly rounding (it misreads some 16- and 17-digit `ryu` outputs by an ulp, e.g.
/// `7344005899772953.0`); the first two paths write text it reads exactly (Clinger's fast path).
#[inline]
fn write_number(out: &mut String, value: f64) {
    if !value.is_finite() {
        out.push_str("null");
    } else if value.abs() < EXACT_INT_LIMIT
        && value as i64 as f64 == value
        && (value != 0.0 || value.is_sign_positive())
    {
        // |value| < 2^53: the cast cannot saturate, and equality means it lost nothing.
        out.push_str(itoa::Buffer::new().format(value as i64));
    } else if value != 0.0
        && let Some(cents) = exact_cents(value)
    {
        write_cents(out, cents);
    } else {
        out.push_str(ryu::Buffer::new().format_finite(value));
    }
}

/// `value` as a whole number of hundredths, when the decimal `cents / 100` parses back to exactly
/// `value`.
///
/// Proof: `c` is an integer with `|c| < 2^53`, so `c as f64` is exact, and IEEE division is
/// correctly rounded, so `c as f64 / 100.0` is the `f64` nearest the rational `c / 100`. When that
/// equals `value`, the decimal text of `c / 100` (which [`write_cents`] writes digit for digit)
/// is read by any correctly rounding JSON parser (serde_json, JavaScript) as `value`. How `c` was
/// guessed does not matter: the check alone makes it exact, and a failed check falls back to `ryu`.
#[inline]
fn exact_cents(value: f64) -> Option<i64> {
    let scaled = value * 100.0;
    if scaled.abs() >= EXACT_INT_LIMIT {
        return None;
    }
    // Round half away from zero by truncating cast; |scaled| < 2^53 so the cast cannot saturate.
    let cents = (scaled + 0.5f64.copysign(scaled)) as i64;
    (cents as f64 / 100.0 == value).then_some(cents)
}

/// Writes `cents / 100` in decimal: `90305`, `253.4`, `-0.05`.
#[inline]
fn write_cents(out: &mut String, cents: i64) {
    if cents < 0 {
        out.push('-');
    }
    let magnitude = cents.unsigned_abs();
    let (whole, frac) = (magnitude / 100, magnitude % 100);
    out.push_str(itoa::Buffer::new().format(whole));
    if frac != 0 {
        out.push('.');
        out.push(char::from(b'0' + (frac / 10) as u8));
        if frac % 10 != 0 {
            out.push(char::from(b'0' + (frac % 10) as u8));
        }
    }
}

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
        write_number(out, bar.open);
        out.push_str(",\"high\":");
        write_number(out, bar.high);
        out.push_str(",\"low\":");
        write_number(out, bar.low);
        out.push_str(",\"close\":");
        write_number(out, bar.close);
        if let Some(volume) = bar.volume {
            out.push_str(",\"volume\":");
            write_number(out, volume);
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
            write_number(out, get(bar));
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
                Some(volume) => write_number(out, volume),
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
    use crate::domain::{ChartMetadata, Resolution};

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

    fn written(value: f64) -> String {
        let mut out = String::new();
        write_number(&mut out, value);
        out
    }

    #[test]
    fn numbers_take_the_short_exact_paths() {
        let cases = [
            (90305.0, "90305"),
            (253.42, "253.42"),
            (361.5, "361.5"),
            (0.05, "0.05"),
            (-0.05, "-0.05"),
            (-12.3, "-12.3"),
            (0.0, "0"),
            (-0.0, "-0.0"),
            (1_766_029_500.0, "1766029500"),
            (0.125, "0.125"),
            (1e300, "1e300"),
            (f64::NAN, "null"),
            (f64::INFINITY, "null"),
        ];
        for (value, text) in cases {
            assert_eq!(written(value), text, "{value}");
        }
    }

    proptest::proptest! {
        /// Whatever path a number takes, it reads back as the same `f64`, bit for bit: with a
        /// correctly rounding reader (Rust's, JavaScript's) always, and with serde_json's default
        /// (not always correctly rounding) reader for the integer and decimal paths, whose text
        /// it reads through the exact fast path.
        #[test]
        fn every_finite_number_reads_back_exactly(
            bits in proptest::num::u64::ANY,
            cents in -10_000_000_000i64..10_000_000_000,
            whole in -(1i64 << 53)..(1i64 << 53),
        ) {
            let any = f64::from_bits(bits);
            let short = [cents as f64 / 100.0, whole as f64, cents as f64 / 1000.0];
            for value in std::iter::once(any).chain(short) {
                if !value.is_finite() {
                    continue;
                }
                let text = written(value);
                let back: f64 = text.parse().unwrap();
                proptest::prop_assert_eq!(back.to_bits(), value.to_bits(), "{} -> {}", value, text);
            }
            for value in short {
                let text = written(value);
                let back: f64 = serde_json::from_str(&text).unwrap();
                proptest::prop_assert_eq!(back.to_bits(), value.to_bits(), "{} -> {}", value, text);
            }
        }
    }
}
