//! The chart service: the cache in front of the pool. Every chart a route or a stream needs goes
//! through [`ChartService::get`], so finished charts come from the cache, identical fetches in
//! flight are made once, and outcomes are counted in one place.
//!
//! Single flight is done here rather than with the cache's own loader because of who drives the
//! load. A cache loader runs inside the first caller's future, so a stream whose client reads
//! slowly (its producer waiting to hand over an event) would stop driving a fetch that other
//! streams are waiting for too. Here each fetch runs on its own task and every waiter holds a
//! share of it, so no waiter can hold up another. A fetch is still cancelled when its last waiter
//! goes away: the shared future then drops, and with it the task that waits on the pool's reply,
//! and the pool drops a fetch whose reply channel has no receiver left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::Addr;
use actix_web::http::StatusCode;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, WeakShared};
use tokio::task::AbortHandle;

use crate::cache::{Cache, ChartKey, Missed};
use crate::cluster::Cluster;
use crate::cluster::flight::Source;
use crate::live::Live;
use crate::ready_chart::ReadyChart;
use crate::telemetry::Metrics;
use crate::upstream::{FetchChart, FetchError, Pool};

/// Why one chart could not be had, as clients see it (`errors` entries, chart-data answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartFailure {
    pub code: &'static str,
    pub message: String,
}

impl ChartFailure {
    /// The HTTP status of `GET /api/chart-data` for this failure (SPEC 3.2).
    pub fn status(&self) -> StatusCode {
        match self.code {
            "unknown_symbol" => StatusCode::NOT_FOUND,
            "series_error" | "invalid_parameters" => StatusCode::UNPROCESSABLE_ENTITY,
            "upstream_timeout" => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<&FetchError> for ChartFailure {
    fn from(e: &FetchError) -> Self {
        ChartFailure {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// A chart and whether it came from the cache.
pub type ChartOutcome = Result<(Arc<ReadyChart>, bool), ChartFailure>;

/// What [`ChartService::lookup`] gives: a cached chart needs no waiting, so a stream of cached
/// charts makes no future per chart.
pub enum Lookup {
    Ready(ChartOutcome),
    Fetch(BoxFuture<'static, ChartOutcome>),
}

/// `chartgate_charts_served_total` by outcome, with the handles taken once.
struct Served {
    ok: metrics::Counter,
    cached: metrics::Counter,
    failed: metrics::Counter,
}

impl Served {
    fn new(metrics: &Metrics) -> Self {
        let counter = |label: &'static str| {
            metrics.counter("chartgate_charts_served_total", &[("outcome", label)])
        };
        Served {
            ok: counter("ok"),
            cached: counter("cached"),
            failed: counter("failed"),
        }
    }

    /// Counts an outcome as served, once per caller.
    fn count(&self, outcome: ChartOutcome) -> ChartOutcome {
        match &outcome {
            Ok((_, true)) => &self.cached,
            Ok((_, false)) => &self.ok,
            Err(_) => &self.failed,
        }
        .increment(1);
        outcome
    }
}

/// A fetch's outcome for its waiters: the chart and whether it came from a cache (the cluster's
/// shared tier) rather than the feed.
type Loaded = Result<(Arc<ReadyChart>, bool), ChartFailure>;

/// A fetch's outcome as its waiters share it. Each waiter holds a clone; when the last one is
/// dropped the fetch's task is aborted (see [`AbortOnDrop`]).
type Flight = Shared<BoxFuture<'static, Loaded>>;

/// What a caller that missed the cache gets from [`ChartService::join_or_start`].
enum Joined {
    /// A fetch finished between the caller's look in the cache and now: its chart.
    Cached(Arc<ReadyChart>),
    /// A fetch to wait for.
    Flight(Flight),
}

/// A fetch in flight, shared by everyone waiting for the same chart.
struct InFlight {
    /// Tells this fetch from a later one for the same key.
    id: u64,
    /// Weak, so that the registry does not keep a fetch wanted: dead once every waiter left.
    result: WeakShared<BoxFuture<'static, Loaded>>,
}

/// Aborts a fetch's task when the shared future that owns this is dropped, i.e. when its last
/// waiter goes away. The task's `send` to the pool goes with it, which tells the pool.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A flight's entry in the registry, removed when the fetch's task ends: after its chart is
/// cached, or when it is aborted.
struct FlightEntry {
    registry: Arc<Mutex<Flights>>,
    key: ChartKey,
    id: u64,
}

impl Drop for FlightEntry {
    fn drop(&mut self) {
        let mut flights = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if flights
            .by_key
            .get(&self.key)
            .is_some_and(|f| f.id == self.id)
        {
            flights.by_key.remove(&self.key);
        }
    }
}

#[derive(Default)]
struct Flights {
    next_id: u64,
    by_key: HashMap<ChartKey, InFlight>,
}

#[derive(Clone)]
pub struct ChartService {
    pub cache: Arc<Cache>,
    pub pool: Addr<Pool>,
    /// Asked before the cache: while a chart's series is live, its charts come from the live bars.
    pub live: Live,
    /// With `cluster.redis_url` set: the shared tier and the cluster's single flight, asked by
    /// each fetch this instance's own single flight starts.
    pub cluster: Option<Cluster>,
    flights: Arc<Mutex<Flights>>,
    served: Arc<Served>,
}

fn unavailable() -> ChartFailure {
    ChartFailure::from(&FetchError::Unavailable(
        "the connection pool stopped".into(),
    ))
}

impl ChartService {
    pub fn new(cache: Arc<Cache>, pool: Addr<Pool>, live: Live, metrics: &Metrics) -> Self {
        ChartService {
            cache,
            pool,
            live,
            cluster: None,
            flights: Arc::default(),
            served: Arc::new(Served::new(metrics)),
        }
    }

    /// The service with the cluster's shared state behind it (`None`: single instance).
    pub fn with_cluster(mut self, cluster: Option<Cluster>) -> Self {
        self.cluster = cluster;
        self
    }

    /// A chart: from the cache at once when it is there, otherwise a fetch to wait for (started
    /// now, or joined when one for the same key is in flight).
    pub fn lookup(&self, key: ChartKey) -> Lookup {
        if let Some(live) = self.live.chart(&key) {
            self.cache.count_missed(Missed::Hit);
            return Lookup::Ready(self.served.count(Ok((live, true))));
        }
        if let Some(hit) = self.cache.cached_chart(&key) {
            return Lookup::Ready(self.served.count(Ok((hit, true))));
        }
        match self.join_or_start(key) {
            Joined::Cached(hit) => Lookup::Ready(self.served.count(Ok((hit, true)))),
            Joined::Flight(result) => {
                let served = self.served.clone();
                Lookup::Fetch(async move { served.count(result.await) }.boxed())
            }
        }
    }

    pub async fn get(&self, key: ChartKey) -> ChartOutcome {
        match self.lookup(key) {
            Lookup::Ready(outcome) => outcome,
            Lookup::Fetch(fetch) => fetch.await,
        }
    }

    /// Joins the fetch in flight for `key`, or starts one on its own task; or, when a fetch
    /// finished since the caller looked in the cache, gives its chart.
    fn join_or_start(&self, key: ChartKey) -> Joined {
        let mut flights = self
            .flights
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(flight) = flights.by_key.get(&key)
            && let Some(result) = flight.result.upgrade()
        {
            self.cache.count_missed(Missed::Joined);
            return Joined::Flight(result);
        }
        // A fetch caches its chart before it leaves `flights` (under this lock), so a caller
        // that missed both the cache and the flight looks once more here instead of fetching
        // the same chart again.
        if let Some(hit) = self.cache.peek_chart(&key) {
            self.cache.count_missed(Missed::Hit);
            return Joined::Cached(hit);
        }
        // Without a cluster the fetch is counted now; with one, by the task once it knows
        // whether the shared tier or another instance had it.
        let cluster = self.cluster.clone();
        if cluster.is_none() {
            self.cache.count_missed(Missed::Fetched);
        }
        flights.next_id += 1;
        let id = flights.next_id;
        let entry = FlightEntry {
            registry: self.flights.clone(),
            key: key.clone(),
            id,
        };
        let (pool, cache) = (self.pool.clone(), self.cache.clone());
        let task = actix_web::rt::spawn(async move {
            let fetch = || fetch_from_pool(pool.clone(), entry.key.clone());
            let loaded = match &cluster {
                None => fetch().await.map(|chart| (chart, false)),
                Some(cluster) => {
                    let (loaded, source) = cluster.load(&entry.key, fetch).await;
                    cache.count_missed(match source {
                        Source::Shared => Missed::Hit,
                        Source::Joined => Missed::Joined,
                        Source::Fetched => Missed::Fetched,
                    });
                    loaded.map(|chart| (chart, source == Source::Shared))
                }
            };
            if let Ok((chart, _)) = &loaded {
                cache.insert_chart(entry.key.clone(), chart.clone());
            }
            // Only now, with the chart cached, may a new caller miss this flight.
            drop(entry);
            loaded
        });
        let abort = AbortOnDrop(task.abort_handle());
        let result: Flight = task
            .map(move |joined| {
                drop(abort);
                joined.unwrap_or_else(|_| Err(unavailable()))
            })
            .boxed()
            .shared();
        if let Some(weak) = result.downgrade() {
            flights.by_key.insert(key, InFlight { id, result: weak });
        }
        Joined::Flight(result)
    }
}

/// One fetch from the pool, as the single flight runs it.
fn fetch_from_pool(
    pool: Addr<Pool>,
    key: ChartKey,
) -> BoxFuture<'static, Result<Arc<ReadyChart>, ChartFailure>> {
    async move {
        let request = FetchChart::new(key.symbol, key.resolution, key.bars);
        match pool.send(request).await {
            Ok(Ok(chart)) => Ok(chart),
            Ok(Err(e)) => Err(ChartFailure::from(&e)),
            Err(_) => Err(unavailable()),
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests;
