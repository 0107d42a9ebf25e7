//! One live chart, shared by everyone following it: its bars as the feed last sent them, each
//! stamped with when it last changed, and the followers to tell when it changes.
//!
//! Stamps never decrease along the bars: when a bar changes, it and every bar after it take the
//! new stamp. So "what changed since" is always a suffix of the bars, found from the end, and a
//! follower that reads that suffix sends a bar that became final before the bar after it.
//!
//! A stamp is a sequence number of this series (what a follower in this process last read) and
//! the wall-clock milliseconds when the update arrived (what a stream id carries, so a client
//! can resume on any instance).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use chartgate_protocol::json::{Whole, write_number};
use tokio::time::Instant;

use super::LiveCounters;
use super::follower::{Followers, Inbox};
use crate::charts::ChartFailure;
use crate::cluster::live::{Entry, Publisher};
use crate::domain::{Bar, BarCount, Chart, ChartMetadata, Resolution, Symbol};
use crate::ready_chart::ReadyChart;

/// Bars a live series keeps at most: the feed's own limit for one request.
const MAX_BARS: usize = 5000;

/// Charts made from the live bars kept per series, one per bar count asked (the oldest goes).
const MAX_DERIVED: usize = 4;

/// What identifies a live series upstream: one per symbol and resolution, whatever the bar counts
/// its followers asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub symbol: Symbol,
    pub resolution: Resolution,
}

/// A bar and when it last changed.
#[derive(Debug)]
pub struct Stamped {
    pub bar: Bar,
    /// The series' sequence number of the change.
    pub seq: u64,
    /// Wall-clock milliseconds of the change (0: older than anything a client can resume from).
    pub at_ms: i64,
    /// The runtime's instant of the change, for the delivery latency.
    pub at: Instant,
    /// The `data` of this bar's `bar` event, made once for every follower.
    json: OnceLock<Bytes>,
}

impl Stamped {
    fn new(bar: Bar, seq: u64, at_ms: i64, at: Instant) -> Stamped {
        Stamped {
            bar,
            seq,
            at_ms,
            at,
            json: OnceLock::new(),
        }
    }
}

/// Where a live series is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Asked for upstream; its first answer has not come yet (bars may be known from the cache).
    Subscribing,
    /// Following the feed's updates.
    Live,
    /// The feed refused it (unknown symbol, series error): followers drop it.
    Failed(ChartFailure),
}

/// The state behind the lock.
#[derive(Debug)]
pub struct SeriesState {
    pub phase: Phase,
    /// Ascending by time, stamps non-decreasing.
    pub bars: Vec<Stamped>,
    pub metadata: ChartMetadata,
    /// The sequence number of the newest change.
    pub seq: u64,
    /// Charts made from the live bars for a bar count, with the `seq` they were made at, so the
    /// cache path serves the live state without copying it per request.
    derived: Vec<(u16, u64, Arc<ReadyChart>)>,
    /// Streams following, each with its slot for this series.
    followers: Followers,
    /// While this instance owns the series for the cluster: what its changes are published
    /// through, for the other instances' relays.
    tap: Option<Publisher>,
}

/// One live series. See the module documentation.
#[derive(Debug)]
pub struct SeriesFeed {
    pub key: SeriesKey,
    state: Mutex<SeriesState>,
    counters: Arc<LiveCounters>,
    /// `live.resume_window_secs`.
    resume_window_secs: i64,
}

/// What one update did, for the registry's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Bars that changed.
    pub changed: usize,
    /// Followers that had not yet sent the previous change: it is replaced (conflated).
    pub conflated: usize,
}

impl SeriesFeed {
    /// A series about to be subscribed; `seed`, when the cache has the chart, gives its bars
    /// until the feed answers, stamped as old, so the first answer stamps only what differs.
    pub fn new(
        key: SeriesKey,
        seed: Option<&Chart>,
        counters: Arc<LiveCounters>,
        resume_window: Duration,
    ) -> Arc<SeriesFeed> {
        let now = Instant::now();
        let (bars, metadata) = match seed {
            Some(chart) => (
                chart
                    .bars
                    .iter()
                    .map(|b| Stamped::new(*b, 0, 0, now))
                    .collect(),
                chart.metadata.clone(),
            ),
            None => (Vec::new(), ChartMetadata::default()),
        };
        Arc::new(SeriesFeed {
            key,
            state: Mutex::new(SeriesState {
                phase: Phase::Subscribing,
                bars,
                metadata,
                seq: 0,
                derived: Vec::new(),
                followers: Followers::default(),
                tap: None,
            }),
            counters,
            resume_window_secs: i64::try_from(resume_window.as_secs()).unwrap_or(i64::MAX / 2),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, SeriesState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The feed's answer to a (new) subscription: its bars replace what is known. Bars older than
    /// the answer's first are kept; from the first bar that differs on, every bar is stamped
    /// `at_ms`, so followers get what changed while the series was away (a new subscription, or
    /// one moved to another connection).
    pub fn reset(&self, bars: Vec<Bar>, metadata: ChartMetadata, at_ms: i64) -> Applied {
        let mut state = self.lock();
        state.phase = Phase::Live;
        if !metadata.name.is_empty() || state.metadata.name.is_empty() {
            state.metadata = metadata;
        }
        let Some(first) = bars.first() else {
            return self.told(&state, 0);
        };
        let keep = state.bars.partition_point(|s| s.bar.time < first.time);
        let differs = bars
            .iter()
            .zip(&state.bars[keep..])
            .position(|(new, old)| *new != old.bar)
            .unwrap_or_else(|| bars.len().min(state.bars.len() - keep));
        let changed = bars.len() - differs;
        let (old_seq, seq) = (state.seq, state.seq + u64::from(changed > 0));
        let now = Instant::now();
        // With nothing known before (no cached chart), bars that ended before the resume window
        // cannot have changed since any id a client may resume with: they stay unstamped, so a
        // resume on a fresh series re-sends the window's bars, not the whole history.
        let horizon = if state.bars.is_empty() {
            at_ms / 1000 - self.resume_window_secs - self.key.resolution.seconds()
        } else {
            i64::MIN
        };
        state.bars.truncate(keep + differs);
        state.bars.extend(bars[differs..].iter().map(|b| {
            if b.time < horizon {
                Stamped::new(*b, old_seq, 0, now)
            } else {
                Stamped::new(*b, seq, at_ms, now)
            }
        }));
        state.trim();
        state.seq = seq;
        state.publish_snapshot();
        self.told(&state, changed)
    }

    /// A live update: each bar replaces the one with its time, or begins a new one after the last.
    /// The first changed bar and all after it take a new stamp.
    pub fn apply(&self, bars: &[Bar], at_ms: i64) -> Applied {
        let mut state = self.lock();
        if state.phase != Phase::Live {
            // Before the first answer the bars it will bring are the reference; after a failure
            // nobody follows.
            return Applied::default();
        }
        let mut first_changed: Option<usize> = None;
        for bar in bars {
            let at = state.bars.partition_point(|s| s.bar.time < bar.time);
            let index = match state.bars.get(at) {
                Some(s) if s.bar.time == bar.time => {
                    if s.bar == *bar {
                        continue;
                    }
                    state.bars[at].bar = *bar;
                    at
                }
                _ => {
                    let now = Instant::now();
                    state.bars.insert(at, Stamped::new(*bar, 0, 0, now));
                    at
                }
            };
            first_changed = Some(first_changed.map_or(index, |f| f.min(index)));
        }
        let Some(from) = first_changed else {
            return Applied::default();
        };
        state.seq += 1;
        let (seq, now) = (state.seq, Instant::now());
        for s in &mut state.bars[from..] {
            *s = Stamped::new(s.bar, seq, at_ms, now);
        }
        let changed = state.bars.len() - from;
        state.trim();
        let SeriesState {
            tap,
            bars: held,
            metadata,
            ..
        } = &mut *state;
        if let Some(tap) = tap {
            tap.update(bars, || Entry::Snapshot {
                bars: held.iter().map(|s| s.bar).collect(),
                metadata: metadata.clone(),
            });
        }
        self.told(&state, changed)
    }

    /// The feed refused the series: followers are told, and drop it.
    pub fn fail(&self, failure: ChartFailure) {
        let mut state = self.lock();
        if let Some(tap) = &mut state.tap {
            tap.refused(failure.clone());
        }
        state.phase = Phase::Failed(failure);
        state.tell(0);
    }

    /// Publishes the series' changes through `tap` from now on (this instance owns it for the
    /// cluster), starting with every bar it holds when it is live; `None` stops publishing.
    pub fn publish_to(&self, tap: Option<Publisher>) {
        let mut state = self.lock();
        state.tap = tap;
        if state.phase == Phase::Live {
            state.publish_snapshot();
        }
    }

    /// Tells the followers of a change, counted as an update received when bars changed.
    fn told(&self, state: &SeriesState, changed: usize) -> Applied {
        let applied = state.tell(changed);
        if changed > 0 {
            self.counters.received(applied.conflated);
        }
        applied
    }

    /// The bar counts charts were made for from this series, and `subscribed`: what the cache
    /// should keep when the series ends.
    pub fn asked_counts(&self, subscribed: BarCount) -> Vec<BarCount> {
        let state = self.lock();
        let mut counts = vec![subscribed];
        for (count, _, _) in &state.derived {
            if let Ok(bars) = BarCount::new(u64::from(*count))
                && !counts.contains(&bars)
            {
                counts.push(bars);
            }
        }
        counts
    }

    /// Adds a follower, told of every change from now on through `slot` of its inbox.
    pub fn follow(&self, inbox: Arc<Inbox>, slot: usize) {
        self.lock().followers.add(inbox, slot);
    }

    /// Removes a follower.
    pub fn unfollow(&self, inbox: &Arc<Inbox>) {
        self.lock().followers.remove(inbox);
    }

    /// The live chart with the newest `bars` bars, when the series is live and has that many,
    /// or when `base` (the chart as cached, with more bars than the series holds) can be brought
    /// up to date with the live bars laid over it; made once per change and bar count.
    pub fn chart(&self, bars: u16, base: Option<&Chart>) -> Option<Arc<ReadyChart>> {
        let mut state = self.lock();
        let wanted = usize::from(bars);
        if state.phase != Phase::Live || state.bars.is_empty() {
            return None;
        }
        let seq = state.seq;
        if let Some((_, _, chart)) = state
            .derived
            .iter()
            .find(|(count, made, _)| *count == bars && *made == seq)
        {
            return Some(chart.clone());
        }
        let chart = if state.bars.len() >= wanted {
            state.chart(&self.key, wanted)
        } else {
            let base = base?;
            let first_live = state.bars[0].bar.time;
            let older = base.bars.partition_point(|b| b.time < first_live);
            let mut merged: Vec<Bar> = base.bars[..older].to_vec();
            merged.extend(state.bars.iter().map(|s| s.bar));
            let from = merged.len().saturating_sub(wanted);
            merged.drain(..from);
            Chart {
                symbol: self.key.symbol.clone(),
                resolution: self.key.resolution,
                bars: merged,
                metadata: state.metadata.clone(),
            }
        };
        let chart = ReadyChart::prepared(chart);
        state.derived.retain(|(count, _, _)| *count != bars);
        if state.derived.len() >= MAX_DERIVED {
            state.derived.remove(0);
        }
        state.derived.push((bars, seq, chart.clone()));
        Some(chart)
    }

    /// Every bar the series holds, as a chart (for the cache when the series ends).
    pub fn whole_chart(&self) -> Option<Chart> {
        let state = self.lock();
        (state.phase == Phase::Live && !state.bars.is_empty())
            .then(|| state.chart(&self.key, state.bars.len()))
    }
}

impl SeriesState {
    /// Publishes every bar, when the series is published.
    fn publish_snapshot(&mut self) {
        if let Some(tap) = &mut self.tap {
            tap.snapshot(
                self.bars.iter().map(|s| s.bar).collect(),
                self.metadata.clone(),
            );
        }
    }

    /// Drops the oldest bars beyond [`MAX_BARS`]; returns how many.
    fn trim(&mut self) -> usize {
        let over = self.bars.len().saturating_sub(MAX_BARS);
        self.bars.drain(..over);
        over
    }

    /// Tells every follower that the series changed.
    fn tell(&self, changed: usize) -> Applied {
        Applied {
            changed,
            conflated: self.followers.tell(),
        }
    }

    fn chart(&self, key: &SeriesKey, bars: usize) -> Chart {
        let from = self.bars.len().saturating_sub(bars);
        Chart {
            symbol: key.symbol.clone(),
            resolution: key.resolution,
            bars: self.bars[from..].iter().map(|s| s.bar).collect(),
            metadata: self.metadata.clone(),
        }
    }

    /// Index of the first bar changed after `seq` (the bars from there on are the change).
    pub fn since_seq(&self, seq: u64) -> usize {
        self.bars.partition_point(|s| s.seq <= seq)
    }

    /// Index of the first bar changed at or after `at_ms`.
    pub fn since_ms(&self, at_ms: i64) -> usize {
        self.bars.partition_point(|s| s.at_ms < at_ms)
    }

    /// Index of the first bar at or after `time`.
    pub fn at_or_after(&self, time: i64) -> usize {
        self.bars.partition_point(|s| s.bar.time < time)
    }

    /// The `data` of the `bar` event for bar `index`.
    pub fn bar_json(&self, key: &SeriesKey, index: usize) -> &Bytes {
        let stamped = &self.bars[index];
        stamped
            .json
            .get_or_init(|| bar_event_data(key, &stamped.bar))
    }
}

/// `{"type":"bar","data":{"symbol","resolution","bar":{...}}}`.
pub fn bar_event_data(key: &SeriesKey, bar: &Bar) -> Bytes {
    let mut out = String::with_capacity(160);
    out.push_str("{\"type\":\"bar\",\"data\":{\"symbol\":");
    push_json_str(&mut out, key.symbol.as_str());
    out.push_str(",\"resolution\":");
    push_json_str(&mut out, key.resolution.as_str());
    out.push_str(",\"bar\":{\"time\":");
    out.push_str(itoa::Buffer::new().format(bar.time));
    for (name, value) in [
        ("open", bar.open),
        ("high", bar.high),
        ("low", bar.low),
        ("close", bar.close),
    ] {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
        write_number(&mut out, value, Whole::Plain);
    }
    if let Some(volume) = bar.volume {
        out.push_str(",\"volume\":");
        write_number(&mut out, volume, Whole::Plain);
    }
    out.push_str("}}}");
    Bytes::from(out)
}

/// Appends `s` as a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(time: i64, close: f64) -> Bar {
        Bar {
            time,
            open: 1.0,
            high: close.max(1.0),
            low: close.min(1.0),
            close,
            volume: Some(10.0),
        }
    }

    fn key() -> SeriesKey {
        SeriesKey {
            symbol: "NSE:TCS".parse().unwrap(),
            resolution: Resolution::Day,
        }
    }

    const WINDOW: Duration = Duration::from_secs(300);

    fn counters() -> Arc<LiveCounters> {
        Arc::new(LiveCounters::new(&crate::telemetry::Metrics::new()))
    }

    fn seqs(feed: &SeriesFeed) -> Vec<u64> {
        feed.lock().bars.iter().map(|s| s.seq).collect()
    }

    #[test]
    fn updates_replace_the_last_bar_or_begin_a_new_one() {
        let feed = SeriesFeed::new(key(), None, counters(), WINDOW);
        feed.reset(
            vec![bar(10, 1.0), bar(20, 2.0)],
            ChartMetadata::default(),
            5,
        );
        assert_eq!(seqs(&feed), [1, 1]);
        let applied = feed.apply(&[bar(20, 2.5)], 6);
        assert_eq!(applied.changed, 1);
        assert_eq!(seqs(&feed), [1, 2]);
        feed.apply(&[bar(20, 2.6), bar(30, 3.0)], 7);
        let state = feed.lock();
        assert_eq!(state.bars.len(), 3);
        assert_eq!(state.bars[1].bar.close, 2.6);
        assert_eq!(state.since_seq(2), 1, "the final state of 20, then 30");
        assert_eq!(state.since_ms(7), 1);
        assert_eq!(state.at_or_after(30), 2);
    }

    #[test]
    fn an_unchanged_update_changes_nothing() {
        let feed = SeriesFeed::new(key(), None, counters(), WINDOW);
        feed.reset(vec![bar(10, 1.0)], ChartMetadata::default(), 5);
        assert_eq!(feed.apply(&[bar(10, 1.0)], 6), Applied::default());
        assert_eq!(feed.lock().seq, 1);
    }

    #[test]
    fn an_older_bar_that_changes_restamps_every_bar_after_it() {
        let feed = SeriesFeed::new(key(), None, counters(), WINDOW);
        feed.reset(
            vec![bar(10, 1.0), bar(20, 2.0), bar(30, 3.0)],
            ChartMetadata::default(),
            5,
        );
        feed.apply(&[bar(20, 2.2)], 9);
        assert_eq!(seqs(&feed), [1, 2, 2]);
        assert_eq!(feed.lock().since_ms(9), 1);
    }

    #[test]
    fn a_new_answer_stamps_only_what_differs_from_the_seed() {
        let seed = Chart {
            symbol: key().symbol,
            resolution: Resolution::Day,
            bars: vec![bar(10, 1.0), bar(20, 2.0)],
            metadata: ChartMetadata::default(),
        };
        let feed = SeriesFeed::new(key(), Some(&seed), counters(), WINDOW);
        let applied = feed.reset(
            vec![bar(20, 2.0), bar(30, 3.0)],
            ChartMetadata::default(),
            50,
        );
        assert_eq!(applied.changed, 1);
        let state = feed.lock();
        assert_eq!(state.bars.len(), 3);
        assert_eq!(
            state.bars.iter().map(|s| s.at_ms).collect::<Vec<_>>(),
            [0, 0, 50]
        );
    }

    #[test]
    fn a_fresh_series_stamps_only_bars_within_the_resume_window() {
        let feed = SeriesFeed::new(key(), None, counters(), WINDOW);
        let now_ms = 1_700_000_000_000;
        let day = 86_400;
        // Today's bar began 2 min ago: yesterday's ended then, inside the 5-minute window.
        let today = now_ms / 1000 - 120;
        let bars: Vec<Bar> = (0..5).map(|n| bar(today - (4 - n) * day, 1.0)).collect();
        feed.reset(bars, ChartMetadata::default(), now_ms);
        let stamps: Vec<i64> = feed.lock().bars.iter().map(|s| s.at_ms).collect();
        assert_eq!(stamps, [0, 0, 0, now_ms, now_ms]);
    }

    #[test]
    fn the_live_chart_is_made_once_per_change() {
        let feed = SeriesFeed::new(key(), None, counters(), WINDOW);
        assert!(feed.chart(1, None).is_none(), "not live yet");
        feed.reset(
            vec![bar(10, 1.0), bar(20, 2.0)],
            ChartMetadata::default(),
            5,
        );
        let a = feed.chart(2, None).unwrap();
        assert!(Arc::ptr_eq(&a, &feed.chart(2, None).unwrap()));
        assert!(feed.chart(3, None).is_none(), "fewer bars than asked");
        feed.apply(&[bar(20, 2.5)], 6);
        let b = feed.chart(1, None).unwrap();
        assert_eq!(b.chart.bars, [bar(20, 2.5)]);
        // More bars than the series holds: the cached chart, brought up to date.
        let base = Chart {
            symbol: key().symbol,
            resolution: Resolution::Day,
            bars: vec![bar(0, 0.5), bar(10, 1.0), bar(20, 2.0)],
            metadata: ChartMetadata::default(),
        };
        let c = feed.chart(3, Some(&base)).unwrap();
        assert_eq!(c.chart.bars, [bar(0, 0.5), bar(10, 1.0), bar(20, 2.5)]);
    }

    #[test]
    fn bar_events_omit_a_missing_volume() {
        let mut b = bar(1_700_000_000, 2.5);
        let data = bar_event_data(&key(), &b);
        assert_eq!(
            std::str::from_utf8(&data).unwrap(),
            r#"{"type":"bar","data":{"symbol":"NSE:TCS","resolution":"1D","bar":{"time":1700000000,"open":1,"high":2.5,"low":1,"close":2.5,"volume":10}}}"#
        );
        b.volume = None;
        assert!(!String::from_utf8_lossy(&bar_event_data(&key(), &b)).contains("volume"));
    }
}
