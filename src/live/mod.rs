//! Live series and quotes (`live=true`): one upstream subscription per chart and per quote,
//! shared by every stream that follows it.
//!
//! - [`Live`], the registry: finds or starts the [`SeriesFeed`] of a (symbol, resolution) and the
//!   [`QuoteFeed`] of a symbol, counts who holds each, ends one `live.linger_secs` after its last
//!   follower left, and refuses a request whose new series would exceed the live capacity
//!   (`pool.max_connections` x `live.series_per_connection`). Placing subscriptions on
//!   connections, and moving them when a connection goes, is the pool's (see
//!   [`crate::upstream::pool`]); the connection that carries one writes the feed's updates into
//!   its feed directly.
//! - `series` and `quote`: the shared state of one chart and one quote.
//! - `follower`: a stream's side: its inbox of changed charts, its cursors, conflation.
//!
//! The chart cache follows live updates through [`Live::chart`], which `crate::charts` asks
//! before the cache: while a series is live its charts are made from the live bars.
//!
//! With a cluster (SPEC 7, one live series) each series also has a [`Source`]: one instance owns
//! it (subscribed upstream, publishing its changes) and the others relay the owner's stream
//! ([`crate::cluster::live`]); the transitions, on every claim's answer, are in [`Live::settle`].

mod follower;
mod quote;
mod series;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::Addr;
use serde::Serialize;

pub use self::follower::{Cursor, Drained, Follower};
pub use self::quote::{QuoteData, QuoteFeed};
pub use self::series::{SeriesFeed, SeriesKey};
use crate::cache::{Cache, ChartKey};
use crate::cluster::Cluster;
use crate::cluster::lock::new_token;
use crate::config::Settings;
use crate::domain::{BarCount, Symbol};
use crate::ready_chart::ReadyChart;
use crate::telemetry::Metrics;
use crate::upstream::{Pool, SubscribeLive, UnsubscribeLive};

/// A live subscription's id, for the pool and the connection carrying it.
pub type LiveId = u64;

/// What the pool places on a connection: a live series or a quote symbol, with the feed its
/// updates go into.
#[derive(Debug, Clone)]
pub enum LiveTarget {
    Series {
        feed: Arc<SeriesFeed>,
        /// Bars asked for in `create_series`.
        bars: BarCount,
    },
    Quote {
        feed: Arc<QuoteFeed>,
    },
}

impl LiveTarget {
    /// Series count against a connection's `live.series_per_connection`; quotes do not (a quote
    /// session carries many symbols).
    pub fn is_series(&self) -> bool {
        matches!(self, LiveTarget::Series { .. })
    }
}

/// A live request needs more new series than the capacity has room for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this request needs {wanted} new live series but only {free} of {capacity} are free \
     (pool.max_connections x live.series_per_connection); try fewer symbols or resolutions, or \
     without live=true"
)]
pub struct LiveCapacity {
    pub wanted: usize,
    pub free: usize,
    pub capacity: usize,
}

/// The `live` object of `/api/connections/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiveStats {
    /// Live series subscribed upstream (lingering ones included).
    pub series: usize,
    /// Quote symbols subscribed upstream.
    pub quotes: usize,
    /// Live streams following.
    pub followers: usize,
    /// Updates from the feed that changed a series or a quote.
    pub updates_received: u64,
    /// `bar` and `quote` events written to followers.
    pub updates_sent: u64,
    /// Changes a follower never saw because a newer one replaced them before it wrote.
    pub conflated: u64,
    /// Live series followed here through another instance's upstream subscription (with a
    /// cluster: SPEC 7); not counted in `series`.
    pub relayed: usize,
}

/// Counts shared by the registry, the feeds (on the connections' threads) and the followers.
#[derive(Debug)]
pub struct LiveCounters {
    received: AtomicU64,
    sent: AtomicU64,
    conflated: AtomicU64,
    received_metric: metrics::Counter,
    sent_metric: metrics::Counter,
    conflated_metric: metrics::Counter,
    delivery: metrics::Histogram,
}

impl LiveCounters {
    fn new(metrics: &Metrics) -> Self {
        LiveCounters {
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            conflated: AtomicU64::new(0),
            received_metric: metrics.counter("chartgate_live_updates_received_total", &[]),
            sent_metric: metrics.counter("chartgate_live_updates_sent_total", &[]),
            conflated_metric: metrics.counter("chartgate_live_conflated_total", &[]),
            delivery: metrics.histogram("chartgate_live_delivery_seconds"),
        }
    }

    /// An update arrived that changed something and told `told` followers, `conflated` of which
    /// had not written the previous change yet.
    pub fn received(&self, conflated: usize) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.received_metric.increment(1);
        if conflated > 0 {
            self.conflated
                .fetch_add(conflated as u64, Ordering::Relaxed);
            self.conflated_metric.increment(conflated as u64);
        }
    }

    fn sent(&self, events: usize) {
        if events > 0 {
            self.sent.fetch_add(events as u64, Ordering::Relaxed);
            self.sent_metric.increment(events as u64);
        }
    }

    /// A follower wrote changes whose oldest arrived `latency` ago.
    pub fn delivered(&self, latency: Duration) {
        self.delivery.record(latency.as_secs_f64());
    }
}

/// A hold on a series or quote: the registry counts it as followed while this lives.
pub struct Hold {
    live: Live,
    /// Taken when dropped.
    what: Option<Held>,
}

enum Held {
    Series(SeriesKey),
    Quote(Symbol),
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(what) = self.what.take() {
            self.live.release(what);
        }
    }
}

/// How many hold a series or quote, and which idle spell it is in.
#[derive(Debug, Default)]
struct Holds {
    count: usize,
    /// Bumped whenever `count` falls to 0, so a linger timer can tell whether its spell is still
    /// the current one.
    idle_generation: u64,
}

impl Holds {
    fn one() -> Holds {
        Holds {
            count: 1,
            idle_generation: 0,
        }
    }

    /// One hold less; the new idle spell's generation when that was the last.
    fn release(&mut self) -> Option<u64> {
        self.count = self.count.saturating_sub(1);
        (self.count == 0).then(|| {
            self.idle_generation += 1;
            self.idle_generation
        })
    }

    /// Nobody took it up again since idle spell `generation` began.
    fn idle_since(&self, generation: u64) -> bool {
        self.count == 0 && self.idle_generation == generation
    }
}

/// Where a series' updates come from. Without a cluster always `Alone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Subscribed upstream here, for this instance only (no cluster, or Redis down).
    Alone,
    /// Asking Redis whether another instance owns it; nothing subscribed yet.
    Claiming,
    /// Subscribed upstream here as the cluster's owner; its changes are published.
    Owner,
    /// Another instance owns it; its changes are read from the owner's stream.
    Relayed,
}

impl Source {
    fn is_upstream(self) -> bool {
        matches!(self, Source::Alone | Source::Owner)
    }
}

struct SeriesEntry {
    /// Its upstream subscription's id (a new one each time it is subscribed again).
    id: LiveId,
    /// Unique to this entry, so that a late answer about an ended series is not taken for a
    /// newer one of the same chart.
    generation: u64,
    feed: Arc<SeriesFeed>,
    /// Bars its subscription asked for.
    bars: BarCount,
    holds: Holds,
    source: Source,
    /// The owner lock's token this instance claims the series with (with a cluster).
    token: String,
}

struct QuoteEntry {
    id: LiveId,
    feed: Arc<QuoteFeed>,
    holds: Holds,
}

#[derive(Default)]
struct Registry {
    series: HashMap<SeriesKey, SeriesEntry>,
    quotes: HashMap<Symbol, QuoteEntry>,
    next_id: LiveId,
    followers: usize,
}

impl Registry {
    /// Series followed through another instance's upstream subscription.
    fn relayed(&self) -> usize {
        self.series
            .values()
            .filter(|e| e.source == Source::Relayed)
            .count()
    }
}

struct Inner {
    linger: Duration,
    /// `live.resume_window_secs`.
    resume_window: Duration,
    capacity: usize,
    pool: Addr<Pool>,
    cache: Arc<Cache>,
    registry: Mutex<Registry>,
    /// With `cluster.redis_url` set: where ownership is claimed and relays read.
    cluster: Option<Cluster>,
    /// Set by [`Live::stop`]: the instance is stopping and claims nothing more.
    leaving: std::sync::atomic::AtomicBool,
    counters: Arc<LiveCounters>,
    series_gauge: metrics::Gauge,
    relayed_gauge: metrics::Gauge,
    followers_gauge: metrics::Gauge,
}

/// The live registry. See the module documentation.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

impl Live {
    /// The registry; with a `cluster`, its upkeep task is started on the current runtime.
    pub fn new(
        settings: &Settings,
        pool: Addr<Pool>,
        cache: Arc<Cache>,
        cluster: Option<Cluster>,
        metrics: &Metrics,
    ) -> Live {
        let live = Live {
            inner: Arc::new(Inner {
                linger: Duration::from_secs(settings.live.linger_secs),
                resume_window: Duration::from_secs(settings.live.resume_window_secs),
                capacity: settings
                    .pool
                    .max_connections
                    .saturating_mul(settings.live.series_per_connection),
                pool,
                cache,
                registry: Mutex::default(),
                cluster,
                leaving: std::sync::atomic::AtomicBool::new(false),
                counters: Arc::new(LiveCounters::new(metrics)),
                series_gauge: metrics.gauge("chartgate_live_series"),
                relayed_gauge: metrics.gauge("chartgate_live_relayed"),
                followers_gauge: metrics.gauge("chartgate_live_followers"),
            }),
        };
        if let Some(cluster) = &live.inner.cluster {
            actix_web::rt::spawn(upkeep(Arc::downgrade(&live.inner), cluster.clone()));
        }
        live
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn counters(&self) -> &Arc<LiveCounters> {
        &self.inner.counters
    }

    /// Follows `charts` (in order: the follower's chart `i` is `charts[i]`) and `quotes`,
    /// subscribing upstream whatever is not live yet. Refused, with nothing followed, when the
    /// new series would not fit; lingering series nobody follows make room first.
    pub fn follow(&self, charts: &[ChartKey], quotes: &[Symbol]) -> Result<Follower, LiveCapacity> {
        let mut registry = self.registry();
        let mut new: Vec<SeriesKey> = Vec::new();
        for key in charts {
            let key = series_key(key);
            if !registry.series.contains_key(&key) && !new.contains(&key) {
                new.push(key);
            }
        }
        let capacity = self.inner.capacity;
        let mut over = (registry.series.len() + new.len()).saturating_sub(capacity);
        if over > 0 {
            let idle: Vec<SeriesKey> = registry
                .series
                .iter()
                .filter(|(_, e)| e.holds.count == 0)
                .map(|(k, _)| k.clone())
                .collect();
            if idle.len() < over {
                let busy = registry.series.len() - idle.len();
                return Err(LiveCapacity {
                    wanted: new.len(),
                    free: capacity.saturating_sub(busy),
                    capacity,
                });
            }
            for key in idle {
                if over == 0 {
                    break;
                }
                self.end_series(&mut registry, &key, "to make room");
                over -= 1;
            }
        }
        let mut held = Vec::with_capacity(charts.len());
        for key in charts {
            let feed = self.hold_series(&mut registry, key);
            let hold = Hold {
                live: self.clone(),
                what: Some(Held::Series(series_key(key))),
            };
            held.push((feed, hold));
        }
        let mut held_quotes = Vec::with_capacity(quotes.len());
        for symbol in quotes {
            let feed = self.hold_quote(&mut registry, symbol);
            let hold = Hold {
                live: self.clone(),
                what: Some(Held::Quote(symbol.clone())),
            };
            held_quotes.push((feed, hold));
        }
        registry.followers += 1;
        self.inner.followers_gauge.set(registry.followers as f64);
        self.count_series(&registry);
        drop(registry);
        Ok(Follower::new(
            held,
            held_quotes,
            self.inner.counters.clone(),
            FollowerGone(self.clone()),
        ))
    }

    fn hold_series(&self, registry: &mut Registry, key: &ChartKey) -> Arc<SeriesFeed> {
        let series = series_key(key);
        if let Some(entry) = registry.series.get_mut(&series) {
            entry.holds.count += 1;
            return entry.feed.clone();
        }
        registry.next_id += 1;
        let generation = registry.next_id;
        let seed = self.inner.cache.peek_chart(key);
        let feed = SeriesFeed::new(
            series.clone(),
            seed.as_ref().map(|c| &c.chart),
            self.inner.counters.clone(),
            self.inner.resume_window,
        );
        log::info!(
            "live: following {} {} (live series: {})",
            series.symbol,
            series.resolution.as_str(),
            registry.series.len() + 1
        );
        let cluster = self
            .inner
            .cluster
            .as_ref()
            .filter(|c| c.is_up() && !self.inner.leaving.load(Ordering::SeqCst));
        let mut entry = SeriesEntry {
            id: 0,
            generation,
            feed: feed.clone(),
            bars: key.bars,
            holds: Holds::one(),
            source: if cluster.is_some() {
                Source::Claiming
            } else {
                Source::Alone
            },
            // Made even while Redis is down: the series claims with it once Redis is back.
            token: self
                .inner
                .cluster
                .as_ref()
                .map(|c| new_token(c.instance_id()))
                .unwrap_or_default(),
        };
        match cluster {
            Some(cluster) => {
                let (live, cluster, key) = (self.clone(), cluster.clone(), series.clone());
                let token = entry.token.clone();
                actix_web::rt::spawn(async move {
                    let verdict = cluster.own_series(&key, &token).await;
                    if !live.settle(&key, generation, verdict) && verdict == Some(true) {
                        cluster.hand_off_series(&key, &token);
                    }
                });
            }
            None => self.subscribe(&mut registry.next_id, &mut entry),
        }
        registry.series.insert(series, entry);
        feed
    }

    /// Subscribes the entry's series upstream, under a new subscription id (from the registry's
    /// `next_id`).
    fn subscribe(&self, next_id: &mut LiveId, entry: &mut SeriesEntry) {
        *next_id += 1;
        entry.id = *next_id;
        self.inner.pool.do_send(SubscribeLive {
            live: entry.id,
            target: LiveTarget::Series {
                feed: entry.feed.clone(),
                bars: entry.bars,
            },
        });
    }

    /// Carries out what Redis said of a series (SPEC 7): `Some(true)`, this instance owns it
    /// now; `Some(false)`, another instance does; `None`, Redis could not say (down). False when
    /// the series ended since (or ended and began again): a claim just made for it is the
    /// caller's to let go.
    fn settle(&self, key: &SeriesKey, generation: u64, verdict: Option<bool>) -> bool {
        let Some(cluster) = self.inner.cluster.clone() else {
            return false;
        };
        let mut guard = self.registry();
        let Registry {
            series, next_id, ..
        } = &mut *guard;
        let Some(entry) = series.get_mut(key).filter(|e| e.generation == generation) else {
            return false;
        };
        let was = entry.source;
        let now = match (was, verdict) {
            (Source::Claiming | Source::Alone | Source::Relayed, Some(true)) => Source::Owner,
            (Source::Claiming | Source::Alone | Source::Owner, Some(false)) => Source::Relayed,
            (Source::Claiming | Source::Relayed, None) => Source::Alone,
            (same, _) => same,
        };
        if now != was {
            self.change_source(next_id, entry, now, &cluster);
            self.count_series(&guard);
        }
        true
    }

    /// Sets the series gauges: subscribed upstream here (or about to be), and relayed.
    fn count_series(&self, registry: &Registry) {
        let relayed = registry.relayed();
        self.inner
            .series_gauge
            .set((registry.series.len() - relayed) as f64);
        self.inner.relayed_gauge.set(relayed as f64);
    }

    /// Ends every series (a graceful stop): those this instance owns are handed off first, so
    /// the instances relaying them take them over at once rather than after the lease; then
    /// nothing is subscribed upstream any more and nothing is claimed.
    pub async fn stop(&self) {
        self.inner.leaving.store(true, Ordering::SeqCst);
        let owned: Vec<(SeriesKey, String)> = {
            let mut registry = self.registry();
            registry
                .series
                .iter_mut()
                .filter(|(_, e)| e.source == Source::Owner)
                .map(|(k, e)| {
                    // Handed off here, not again when it ends.
                    e.source = Source::Alone;
                    e.feed.publish_to(None);
                    (k.clone(), e.token.clone())
                })
                .collect()
        };
        if let Some(cluster) = &self.inner.cluster {
            for (key, token) in &owned {
                cluster.hand_off_series_now(key, token).await;
            }
        }
        let mut registry = self.registry();
        let keys: Vec<SeriesKey> = registry.series.keys().cloned().collect();
        for key in &keys {
            self.end_series(&mut registry, key, "the service is stopping");
        }
        if !owned.is_empty() {
            log::info!(
                "shutdown: handed {} live series off to the cluster",
                owned.len()
            );
        }
    }

    /// Whether series entry `generation` of `key` is still relayed.
    fn relays(&self, key: &SeriesKey, generation: u64) -> bool {
        self.registry()
            .series
            .get(key)
            .is_some_and(|e| e.generation == generation && e.source == Source::Relayed)
    }

    /// Moves a series from one [`Source`] to another: subscribes or unsubscribes upstream,
    /// starts or stops publishing, starts or stops relaying.
    fn change_source(
        &self,
        next_id: &mut LiveId,
        entry: &mut SeriesEntry,
        now: Source,
        cluster: &Cluster,
    ) {
        let feed = entry.feed.clone();
        let (key, was) = (&feed.key, entry.source);
        match was {
            Source::Relayed => cluster.unrelay(key, entry.generation),
            Source::Owner | Source::Alone if !now.is_upstream() => {
                self.inner.pool.do_send(UnsubscribeLive { live: entry.id });
            }
            _ => {}
        }
        entry
            .feed
            .publish_to((now == Source::Owner).then(|| cluster.publisher(key)));
        if now.is_upstream() && !was.is_upstream() {
            self.subscribe(next_id, entry);
        }
        if now == Source::Relayed {
            let (live, cluster) = (self.clone(), cluster.clone());
            let (key, feed, generation) = (key.clone(), feed.clone(), entry.generation);
            actix_web::rt::spawn(async move {
                if !cluster.relay(&key, feed, generation).await {
                    live.settle(&key, generation, None);
                } else if !live.relays(&key, generation) {
                    // It ended, or changed source, while the stream was being read.
                    cluster.unrelay(&key, generation);
                }
            });
        }
        entry.source = now;
        let (symbol, resolution) = (&key.symbol, key.resolution.as_str());
        match (was, now) {
            (Source::Relayed, Source::Owner) => log::info!(
                "live: {symbol} {resolution} taken over upstream (its owner let it go or stopped renewing)"
            ),
            (_, Source::Owner) => {
                log::info!("live: {symbol} {resolution} owned here, published for the cluster")
            }
            (_, Source::Relayed) => {
                log::info!("live: {symbol} {resolution} relayed from the instance that owns it")
            }
            (_, Source::Alone) => log::info!(
                "live: {symbol} {resolution} subscribed upstream for this instance alone (Redis is down)"
            ),
            (_, Source::Claiming) => {}
        }
    }

    fn hold_quote(&self, registry: &mut Registry, symbol: &Symbol) -> Arc<QuoteFeed> {
        if let Some(entry) = registry.quotes.get_mut(symbol) {
            entry.holds.count += 1;
            return entry.feed.clone();
        }
        registry.next_id += 1;
        let id = registry.next_id;
        let feed = QuoteFeed::new(symbol.clone(), self.inner.counters.clone());
        self.inner.pool.do_send(SubscribeLive {
            live: id,
            target: LiveTarget::Quote { feed: feed.clone() },
        });
        registry.quotes.insert(
            symbol.clone(),
            QuoteEntry {
                id,
                feed: feed.clone(),
                holds: Holds::one(),
            },
        );
        feed
    }

    /// A hold ended: when it was the last one, the series or quote lingers, then ends.
    fn release(&self, what: Held) {
        let mut registry = self.registry();
        let holds = match &what {
            Held::Series(key) => registry.series.get_mut(key).map(|e| &mut e.holds),
            Held::Quote(symbol) => registry.quotes.get_mut(symbol).map(|e| &mut e.holds),
        };
        let Some(generation) = holds.and_then(Holds::release) else {
            return;
        };
        if self.inner.linger.is_zero() {
            self.end_if_idle(&mut registry, &what, generation);
            return;
        }
        drop(registry);
        let (live, linger) = (self.clone(), self.inner.linger);
        actix_web::rt::spawn(async move {
            tokio::time::sleep(linger).await;
            let mut registry = live.registry();
            live.end_if_idle(&mut registry, &what, generation);
        });
    }

    /// Ends what `what` names if nobody took it up again since it became idle (`generation`).
    fn end_if_idle(&self, registry: &mut Registry, what: &Held, generation: u64) {
        match what {
            Held::Series(key) => {
                if registry
                    .series
                    .get(key)
                    .is_some_and(|e| e.holds.idle_since(generation))
                {
                    let why = format!("no follower for {} s", self.inner.linger.as_secs());
                    self.end_series(registry, key, &why);
                }
            }
            Held::Quote(symbol) => {
                if registry
                    .quotes
                    .get(symbol)
                    .is_some_and(|e| e.holds.idle_since(generation))
                    && let Some(entry) = registry.quotes.remove(symbol)
                {
                    log::debug!("live: quote {symbol} ended");
                    self.inner.pool.do_send(UnsubscribeLive { live: entry.id });
                }
            }
        }
    }

    /// Unsubscribes a series upstream; the cache keeps its last state for the bar counts asked,
    /// and forgets the charts of other counts (fetched again when asked for).
    fn end_series(&self, registry: &mut Registry, key: &SeriesKey, why: &str) {
        let Some(entry) = registry.series.remove(key) else {
            return;
        };
        if entry.source.is_upstream() {
            self.inner.pool.do_send(UnsubscribeLive { live: entry.id });
        }
        if let Some(cluster) = &self.inner.cluster {
            match entry.source {
                Source::Owner => cluster.hand_off_series(key, &entry.token),
                Source::Relayed => cluster.unrelay(key, entry.generation),
                Source::Alone | Source::Claiming => {}
            }
            entry.feed.publish_to(None);
        }
        let asked = entry.feed.asked_counts(entry.bars);
        // Charts of this series cached for other bar counts hold bars it has moved on from.
        self.inner
            .cache
            .forget_charts_of(&key.symbol, key.resolution, asked.clone());
        // The instance that had it upstream also leaves its state in the cluster's shared tier
        // (a relay's is the same, written by the owner).
        let shared = self
            .inner
            .cluster
            .as_ref()
            .filter(|_| entry.source.is_upstream());
        for bars in asked {
            let cache_key = ChartKey {
                symbol: key.symbol.clone(),
                resolution: key.resolution,
                bars,
            };
            let base = self.inner.cache.peek_chart(&cache_key);
            if let Some(chart) = entry
                .feed
                .chart(bars.get(), base.as_ref().map(|c| &c.chart))
            {
                if let Some(cluster) = shared {
                    cluster.store_chart(&cache_key, &chart);
                }
                self.inner.cache.insert_chart(cache_key, chart);
            }
        }
        self.count_series(registry);
        log::info!(
            "live: {} {} ended, {why} (live series: {})",
            key.symbol,
            key.resolution.as_str(),
            registry.series.len()
        );
    }

    /// A follower stream ended.
    fn follower_gone(&self) {
        let mut registry = self.registry();
        registry.followers = registry.followers.saturating_sub(1);
        self.inner.followers_gauge.set(registry.followers as f64);
    }

    /// The chart as the live series holds it, while `key`'s series is live: from its bars, or
    /// the cached chart with the live bars laid over it when more bars are asked than it holds.
    pub fn chart(&self, key: &ChartKey) -> Option<Arc<ReadyChart>> {
        let feed = {
            let registry = self.registry();
            // Asked for every chart of every request: with nothing live, no key is built.
            if registry.series.is_empty() {
                return None;
            }
            registry.series.get(&series_key(key))?.feed.clone()
        };
        if let Some(chart) = feed.chart(key.bars.get(), None) {
            return Some(chart);
        }
        let base = self.inner.cache.peek_chart(key)?;
        feed.chart(key.bars.get(), Some(&base.chart))
    }

    pub fn stats(&self) -> LiveStats {
        let registry = self.registry();
        let c = &self.inner.counters;
        let relayed = registry.relayed();
        LiveStats {
            series: registry.series.len() - relayed,
            relayed,
            quotes: registry.quotes.len(),
            followers: registry.followers,
            updates_received: c.received.load(Ordering::Relaxed),
            updates_sent: c.sent.load(Ordering::Relaxed),
            conflated: c.conflated.load(Ordering::Relaxed),
        }
    }
}

/// With a cluster: claims or renews every series' ownership every third of the lease, and at once
/// when an owner hands one off or the link goes up or down, then carries out the answers
/// ([`Live::settle`]). Holds the registry only while working, so it ends with it.
async fn upkeep(inner: std::sync::Weak<Inner>, cluster: Cluster) {
    let mut every = tokio::time::interval(cluster.live_lease() / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut link = cluster.link_changes();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = cluster.handoffs().notified() => {}
            changed = link.changed() => if changed.is_err() {
                return;
            },
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.leaving.load(Ordering::SeqCst) {
            return;
        }
        let live = Live { inner };
        let asked: Vec<(SeriesKey, u64, String)> = live
            .registry()
            .series
            .iter()
            .filter(|(_, e)| e.source != Source::Claiming)
            .map(|(k, e)| (k.clone(), e.generation, e.token.clone()))
            .collect();
        for (key, generation, token) in asked {
            let verdict = cluster.own_series(&key, &token).await;
            if !live.settle(&key, generation, verdict) && verdict == Some(true) {
                cluster.hand_off_series(&key, &token);
            }
        }
    }
}

/// Tells the registry a follower stream ended, when the [`Follower`] holding it is dropped.
pub struct FollowerGone(Live);

impl Drop for FollowerGone {
    fn drop(&mut self) {
        self.0.follower_gone();
    }
}

fn series_key(key: &ChartKey) -> SeriesKey {
    SeriesKey {
        symbol: key.symbol.clone(),
        resolution: key.resolution,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamTarget;
    use actix::Actor;

    /// A registry whose pool points at a closed port: it subscribes nothing, which the linger
    /// timer does not care about.
    fn registry(linger_secs: u64) -> Live {
        let mut settings = Settings::default();
        settings.live.linger_secs = linger_secs;
        let metrics = Metrics::new();
        let target = UpstreamTarget {
            feed_url: "ws://127.0.0.1:9/socket.io/websocket".into(),
            token_url: "http://127.0.0.1:9/chart/".into(),
        };
        let pool = Pool::new(Arc::new(settings.clone()), target, &metrics).start();
        let cache = Arc::new(Cache::new(&settings.cache, &metrics));
        Live::new(&settings, pool, cache, None, &metrics)
    }

    fn key() -> ChartKey {
        ChartKey {
            symbol: "NSE:TCS".parse().unwrap(),
            resolution: crate::domain::Resolution::Day,
            bars: BarCount::new(50).unwrap(),
        }
    }

    /// In paused time: a series outlives its last follower by `live.linger_secs`; taken up again
    /// meanwhile it is the same series, and the first idle spell's timer does not end it; it
    /// ends a whole linger after its last follower left.
    #[actix_web::test]
    async fn a_series_lingers_after_its_last_follower_then_ends() {
        tokio::time::pause();
        let live = registry(30);
        let first = live.follow(&[key()], &[]).unwrap();
        assert_eq!((live.stats().series, live.stats().followers), (1, 1));
        drop(first);
        assert_eq!((live.stats().series, live.stats().followers), (1, 0));
        tokio::time::sleep(Duration::from_secs(20)).await;
        let again = live.follow(&[key()], &[]).unwrap();
        assert_eq!(
            live.stats().series,
            1,
            "the lingering series, not a new one"
        );
        drop(again);
        // The first spell's timer fires at 30 s: the series is idle again, but since 20 s.
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(live.stats().series, 1, "still lingering at 35 s");
        tokio::time::sleep(Duration::from_secs(16)).await;
        assert_eq!(
            live.stats().series,
            0,
            "ended 30 s after the last follower left"
        );
    }
}
