//! The chart and formula-result cache.
//!
//! Both live in moka caches bounded by `cache.max_bytes` (entries weighed by their size, least
//! recently used out first) and expiring after `cache.ttl_secs`. Formula results are loaded with
//! moka's `try_get_with`, which coalesces concurrent loads of one key, so identical formula
//! fetches in flight at the same time are made once and shared by every waiter; failures are not
//! cached. Charts have their own single flight, in [`crate::charts`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::config::CacheSettings;
use crate::domain::{BarCount, Resolution, Symbol};
use crate::formulas::FormulaResult;
use crate::ready_chart::ReadyChart;
use crate::telemetry::Metrics;

/// What identifies a chart: the same key is the same bars.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChartKey {
    pub symbol: Symbol,
    pub resolution: Resolution,
    pub bars: BarCount,
}

/// Counters for `/api/connections/stats`. Every chart lookup is one of `hits`, `joined` or
/// `misses`, so `misses` is the number of fetches made from the feed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    /// Lookups that missed the cache but joined a fetch of the same chart already in flight.
    pub joined: u64,
    pub misses: u64,
}

/// How a chart lookup that missed the cache was served, as the single flight decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// A fetch of the same chart was in flight, and the caller waits for it.
    Joined,
    /// A fetch finished between the look in the cache and now: its chart is cached after all.
    Hit,
    /// A new fetch was started.
    Fetched,
}

/// Charts and formula results, shared by every request.
pub struct Cache {
    /// A sync cache: a lookup never waits on I/O, and a waiter's future stays small (one is held
    /// per chart per open stream).
    charts: moka::sync::Cache<ChartKey, Arc<ReadyChart>>,
    formulas: moka::future::Cache<String, Arc<FormulaResult>>,
    /// The cluster's shared tier behind the formula cache (charts use it through
    /// [`crate::charts`], whose single flight decides when to ask). `None`: single instance.
    cluster: Option<Cluster>,
    hits: Tally,
    joined: Tally,
    misses: Tally,
}

/// A count kept for `/api/connections/stats` and as a Prometheus counter, whose handle is taken
/// once, when the cache is made: a cache lookup is made per chart per stream.
struct Tally {
    count: AtomicU64,
    metric: metrics::Counter,
}

impl Tally {
    fn new(metrics: &Metrics, metric: &'static str) -> Self {
        Tally {
            count: AtomicU64::new(0),
            metric: metrics.counter(metric, &[]),
        }
    }

    fn add(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.metric.increment(1);
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Cache {
    pub fn new(settings: &CacheSettings, metrics: &Metrics) -> Self {
        let ttl = Duration::from_secs(settings.ttl_secs);
        let charts = moka::sync::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|_, chart: &Arc<ReadyChart>| chart.weight())
            .time_to_live(ttl)
            .support_invalidation_closures()
            .build();
        // Formula results are small; they share the byte bound loosely through an entry count.
        let formulas = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(ttl)
            .build();
        Cache {
            charts,
            formulas,
            cluster: None,
            hits: Tally::new(metrics, "chartgate_cache_hits_total"),
            joined: Tally::new(metrics, "chartgate_cache_joined_total"),
            misses: Tally::new(metrics, "chartgate_cache_misses_total"),
        }
    }

    /// The cache with the cluster's shared tier behind it (`None`: single instance).
    pub fn with_cluster(mut self, cluster: Option<Cluster>) -> Self {
        self.cluster = cluster;
        self
    }

    /// The cached chart for `key`, counted as a hit. A lookup that finds nothing is counted by
    /// [`Cache::count_missed`] once the caller knows whether it joined a fetch or started one.
    pub fn cached_chart(&self, key: &ChartKey) -> Option<Arc<ReadyChart>> {
        let hit = self.charts.get(key);
        if hit.is_some() {
            self.hits.add();
        }
        hit
    }

    /// Counts a lookup that [`Cache::cached_chart`] did not find.
    pub fn count_missed(&self, how: Missed) {
        match how {
            Missed::Joined => self.joined.add(),
            Missed::Hit => self.hits.add(),
            Missed::Fetched => self.misses.add(),
        }
    }

    /// The cached chart without counting a hit or a miss (a second look by the same caller).
    pub fn peek_chart(&self, key: &ChartKey) -> Option<Arc<ReadyChart>> {
        self.charts.get(key)
    }

    pub fn insert_chart(&self, key: ChartKey, chart: Arc<ReadyChart>) {
        self.charts.insert(key, chart);
    }

    /// Drops every chart of `symbol` at `resolution` cached until now, but those with a bar
    /// count in `keep`: a live series of it has just ended, and their bars are the feed's from
    /// before its last updates (the series caches the counts in `keep` itself).
    pub fn forget_charts_of(&self, symbol: &Symbol, resolution: Resolution, keep: Vec<BarCount>) {
        let symbol = symbol.clone();
        let forgotten = self.charts.invalidate_entries_if(move |key, _| {
            key.resolution == resolution && key.symbol == symbol && !keep.contains(&key.bars)
        });
        if let Err(e) = forgotten {
            log::error!("cache: charts of an ended live series kept: {e}");
        }
    }

    /// The cached result of formula `id`, or the result of `fetch`, made once however many
    /// callers ask at the same time (moka's single flight; failures are not cached). With a
    /// cluster, a local miss reads the shared tier first, and a fetched list is stored there.
    pub async fn formula<F, Fut, E>(&self, id: &str, fetch: F) -> Result<Arc<FormulaResult>, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FormulaResult, E>>,
        E: Send + Sync + 'static,
    {
        let cluster = self.cluster.clone();
        self.formulas
            .try_get_with(id.to_string(), async move {
                if let Some(cluster) = &cluster {
                    if let Some(shared) = cluster.cached_formula(id).await {
                        return Ok(Arc::new(shared));
                    }
                    let fetched = fetch().await?;
                    cluster.store_formula(id, &fetched);
                    return Ok(Arc::new(fetched));
                }
                fetch().await.map(Arc::new)
            })
            .await
    }

    /// The cached result of formula `id`, if any (here, or in the cluster's shared tier); used to
    /// resume a stream on the same list.
    pub async fn cached_formula(&self, id: &str) -> Option<Arc<FormulaResult>> {
        if let Some(local) = self.formulas.get(id).await {
            return Some(local);
        }
        let shared = Arc::new(self.cluster.as_ref()?.cached_formula(id).await?);
        self.formulas.insert(id.to_string(), shared.clone()).await;
        Some(shared)
    }

    pub async fn stats(&self) -> CacheStats {
        self.charts.run_pending_tasks();
        self.formulas.run_pending_tasks().await;
        CacheStats {
            entries: self.charts.entry_count() + self.formulas.entry_count(),
            bytes: self.charts.weighted_size(),
            hits: self.hits.get(),
            joined: self.joined.get(),
            misses: self.misses.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Bar, Chart, ChartMetadata};

    #[actix_rt::test]
    async fn charts_are_counted_as_hits_joins_and_misses() {
        let cache = Cache::new(&CacheSettings::default(), &Metrics::new());
        let key = ChartKey {
            symbol: "NSE:TCS".parse().unwrap(),
            resolution: Resolution::Day,
            bars: BarCount::default(),
        };
        assert!(cache.cached_chart(&key).is_none());
        cache.count_missed(Missed::Fetched);
        assert!(cache.cached_chart(&key).is_none());
        cache.count_missed(Missed::Joined);
        let bar = Bar {
            time: 1,
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close: 1.5,
            volume: None,
        };
        let chart = Chart {
            symbol: key.symbol.clone(),
            resolution: key.resolution,
            bars: vec![bar; 2],
            metadata: ChartMetadata::default(),
        };
        cache.insert_chart(key.clone(), Arc::new(ReadyChart::new(chart)));
        let hit = cache.cached_chart(&key).unwrap();
        assert_eq!(hit.chart.bars.len(), 2);
        let stats = cache.stats().await;
        assert_eq!(
            (stats.entries, stats.hits, stats.joined, stats.misses),
            (1, 1, 1, 1)
        );
        assert!(stats.bytes > 0);
    }
}
