//! The chart and formula-result cache, and single flight.
//!
//! Both live in moka caches bounded by `cache.max_bytes` (entries weighed by their size, least
//! recently used out first) and expiring after `cache.ttl_secs`. moka's `try_get_with` coalesces
//! concurrent loads of one key, so identical fetches in flight at the same time are made once and
//! shared by every waiter; failures are not cached.
//!
//! A chart is serialised once per bars format, the first time a client asks for that format, and
//! every later client gets the same bytes: fan-out to a thousand streams costs one serialisation.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;

use crate::config::CacheSettings;
use crate::domain::{Bar, BarCount, BarsFormat, Chart, Resolution, Symbol};
use crate::formulas::FormulaResult;

/// What identifies a chart: the same key is the same bars.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChartKey {
    pub symbol: Symbol,
    pub resolution: Resolution,
    pub bars: BarCount,
}

/// Writes bars as JSON into a buffer.
type BarWriter = fn(&[Bar], &mut String);
/// Reads one price column of a bar.
type Column = (&'static str, fn(&Bar) -> f64);

/// A finished chart and its JSON, made at most once per format.
#[derive(Debug)]
pub struct CachedChart {
    pub chart: Chart,
    objects: OnceLock<String>,
    columns: OnceLock<String>,
}

impl CachedChart {
    pub fn new(chart: Chart) -> Self {
        CachedChart {
            chart,
            objects: OnceLock::new(),
            columns: OnceLock::new(),
        }
    }

    /// `"bars":...,"metadata":{...}` (no braces), so callers can splice it into bigger objects.
    pub fn json_fields(&self, format: BarsFormat) -> &str {
        let (cell, write): (&OnceLock<String>, BarWriter) = match format {
            BarsFormat::Objects => (&self.objects, write_bar_objects),
            BarsFormat::Columns => (&self.columns, write_bar_columns),
        };
        cell.get_or_init(|| {
            let mut out = String::with_capacity(self.chart.bars.len() * 80 + 256);
            out.push_str("\"bars\":");
            write(&self.chart.bars, &mut out);
            out.push_str(",\"metadata\":");
            out.push_str(
                &serde_json::to_string(&self.chart.metadata).unwrap_or_else(|_| "{}".into()),
            );
            out
        })
    }

    /// Rough bytes held, for the cache's size bound: the bars, and both JSON forms once made.
    fn weight(&self) -> u32 {
        let bars = self.chart.bars.len();
        let estimate = 512 + bars * (std::mem::size_of::<Bar>() + 140);
        u32::try_from(estimate).unwrap_or(u32::MAX)
    }
}

fn write_number(out: &mut String, value: f64) {
    if value.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(value));
    } else {
        out.push_str("null");
    }
}

/// `[{"time":..,"open":..,"high":..,"low":..,"close":..,"volume":..},...]`, volume omitted when
/// the feed gave none.
fn write_bar_objects(bars: &[Bar], out: &mut String) {
    out.push('[');
    for (n, bar) in bars.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"time\":{}", bar.time);
        for (name, value) in [
            ("open", bar.open),
            ("high", bar.high),
            ("low", bar.low),
            ("close", bar.close),
        ] {
            let _ = write!(out, ",\"{name}\":");
            write_number(out, value);
        }
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
    out.push_str("{\"time\":[");
    for (n, bar) in bars.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}", bar.time);
    }
    out.push(']');
    let columns: [Column; 4] = [
        ("open", |b| b.open),
        ("high", |b| b.high),
        ("low", |b| b.low),
        ("close", |b| b.close),
    ];
    for (name, get) in columns {
        let _ = write!(out, ",\"{name}\":[");
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
            write_number(out, bar.volume.unwrap_or(f64::NAN));
        }
        out.push(']');
    }
    out.push('}');
}

/// Counters for `/api/connections/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

/// Charts and formula results, shared by every request.
pub struct Cache {
    /// A sync cache: a lookup never waits on I/O, and a waiter's future stays small (one is held
    /// per chart per open stream).
    charts: moka::sync::Cache<ChartKey, Arc<CachedChart>>,
    formulas: moka::future::Cache<String, Arc<FormulaResult>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Cache {
    pub fn new(settings: &CacheSettings) -> Self {
        let ttl = Duration::from_secs(settings.ttl_secs);
        let charts = moka::sync::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|_, chart: &Arc<CachedChart>| chart.weight())
            .time_to_live(ttl)
            .build();
        // Formula results are small; they share the byte bound loosely through an entry count.
        let formulas = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(ttl)
            .build();
        Cache {
            charts,
            formulas,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached chart for `key`, counted as a hit or a miss.
    pub fn cached_chart(&self, key: &ChartKey) -> Option<Arc<CachedChart>> {
        let hit = self.charts.get(key);
        let (counter, metric) = match hit {
            Some(_) => (&self.hits, "chartgate_cache_hits_total"),
            None => (&self.misses, "chartgate_cache_misses_total"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric).increment(1);
        hit
    }

    pub fn insert_chart(&self, key: ChartKey, chart: Arc<CachedChart>) {
        self.charts.insert(key, chart);
    }

    /// The cached result of formula `id`, or the result of `fetch`, made once however many
    /// callers ask at the same time (moka's single flight; failures are not cached).
    pub async fn formula<F, Fut, E>(&self, id: &str, fetch: F) -> Result<Arc<FormulaResult>, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FormulaResult, E>>,
        E: Send + Sync + 'static,
    {
        self.formulas
            .try_get_with(id.to_string(), async move { fetch().await.map(Arc::new) })
            .await
    }

    /// The cached result of formula `id`, if any; used to resume a stream on the same list.
    pub async fn cached_formula(&self, id: &str) -> Option<Arc<FormulaResult>> {
        self.formulas.get(id).await
    }

    pub async fn stats(&self) -> CacheStats {
        self.charts.run_pending_tasks();
        self.formulas.run_pending_tasks().await;
        CacheStats {
            entries: self.charts.entry_count() + self.formulas.entry_count(),
            bytes: self.charts.weighted_size(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ChartMetadata;

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

    #[test]
    fn both_formats_are_valid_json_of_the_spec_shape() {
        let cached = CachedChart::new(chart(Some(10.0)));
        let objects: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", cached.json_fields(BarsFormat::Objects)))
                .unwrap();
        assert_eq!(
            objects["bars"][1],
            serde_json::json!({"time":2,"open":2.0,"high":3.0,"low":1.5,"close":2.5,"volume":10.0})
        );
        assert_eq!(objects["metadata"]["name"], "TCS");
        let columns: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", cached.json_fields(BarsFormat::Columns)))
                .unwrap();
        assert_eq!(columns["bars"]["close"], serde_json::json!([2.0, 2.5]));
        assert_eq!(columns["bars"]["volume"], serde_json::json!([10.0, 10.0]));

        let no_volume = CachedChart::new(chart(None));
        assert!(
            !no_volume
                .json_fields(BarsFormat::Objects)
                .contains("volume")
        );
        assert!(
            !no_volume
                .json_fields(BarsFormat::Columns)
                .contains("volume")
        );
    }

    #[actix_rt::test]
    async fn charts_are_counted_as_hits_and_misses() {
        let cache = Cache::new(&CacheSettings::default());
        let key = ChartKey {
            symbol: "NSE:TCS".parse().unwrap(),
            resolution: Resolution::Day,
            bars: BarCount::default(),
        };
        assert!(cache.cached_chart(&key).is_none());
        cache.insert_chart(key.clone(), Arc::new(CachedChart::new(chart(None))));
        let hit = cache.cached_chart(&key).unwrap();
        assert_eq!(hit.chart.bars.len(), 2);
        let stats = cache.stats().await;
        assert_eq!((stats.entries, stats.hits, stats.misses), (1, 1, 1));
        assert!(stats.bytes > 0);
    }
}
