//! Live series: what becomes of a (symbol, resolution) after its generated history, one state per
//! series for the whole simulator, so every subscriber and every history answer sees the same
//! bars.
//!
//! The newest generated bar (the anchor bar, at offset 0) is where live data starts. While a
//! series is followed (a live `create_series` on any connection, or a quote of the symbol for
//! `1D`), its simulated clock runs from [`ANCHOR`] at `time_scale` times real time, moved on by
//! the ticks of a grid shared by every connection (every `tick_ms` from the first use): at each
//! tick the close of the newest bar takes a step of the symbol's seeded random walk (high, low
//! and volume following), and when the clock crosses the bar's end the next bar begins, at the
//! next offset, opening at the previous close. A series nobody follows stands still, so the
//! simulator does no work for it and its history stays what subscribers were last sent. A
//! series starts moving at the second tick after it is first followed, so a client that fetches
//! history and deletes its chart session at once, as chartgate does, never changes anything.
//!
//! History answers are read from here: the generated bars up to the anchor, then the live bars
//! ([`Live::history`]), so a later request returns what live subscribers were sent.
//!
//! Time is the runtime's clock read by the connection tasks (worker threads), never by the
//! thread that started the simulator, whose clock a test may pause.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use chartgate_protocol::Bar;
use tokio::time::Instant;

use crate::bars::{
    ANCHOR, Bars, CachedSeries, MAX_BARS, SimResolution, WalkScale, next_bar_time, round2,
};
use crate::rng::SplitMix64;
use crate::stable_hash;
use crate::wire::{bars_json, tick_marks_json};

/// (upper-case `EXCHANGE:TICKER`, resolution).
pub(crate) type SeriesKey = (String, SimResolution);

/// Ticks one move catches up at most: a series left behind longer jumps (its clock loses the
/// rest), so no call does unbounded work.
const MAX_TICKS_PER_MOVE: u64 = 1000;
/// Bars one tick may begin at most (a huge `time_scale` on short bars); the clock loses the rest.
const MAX_BARS_PER_TICK: usize = MAX_BARS as usize;

/// Every live series of one simulator.
#[derive(Debug, Default)]
pub(crate) struct Live {
    series: Mutex<LiveMap>,
    /// Origin of the tick grid, set at first use by a connection task.
    epoch: OnceLock<Instant>,
}

/// The live series, behind [`Live`]'s lock.
#[derive(Debug, Default)]
pub(crate) struct LiveMap {
    series: HashMap<SeriesKey, LiveSeries>,
}

/// One (symbol, resolution) since its history.
#[derive(Debug)]
struct LiveSeries {
    resolution: SimResolution,
    /// Followers now (live series and quotes on every connection).
    followers: usize,
    /// The grid instant the series has moved up to; `None` while nobody follows (it stands still).
    moved_to: Option<Instant>,
    /// Simulated time now, Unix milliseconds.
    sim_ms: i64,
    /// Offset (from the anchor bar) of `bars[0]`: 0 until old live bars are dropped.
    first_offset: i64,
    /// The bars from the anchor bar on, newest last, each with the version it last changed in.
    bars: VecDeque<(Bar, u64)>,
    /// Bumped at every change: a subscriber is owed every bar changed after the version it saw.
    version: u64,
    rng: SplitMix64,
    scale: WalkScale,
}

/// What changed in a series since a version: bars at consecutive offsets from `first_offset`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Changes {
    pub first_offset: i64,
    pub bars: Vec<Bar>,
    pub version: u64,
}

/// The newest bars of a series as a history answer gives them.
pub(crate) struct History {
    pub bars: HistoryBars,
    /// Index, in this answer, of the anchor bar (offset 0): live bar at offset `o` has index
    /// `anchor_index + o` in the updates that follow.
    pub anchor_index: i64,
    /// The series' version these bars are at.
    pub version: u64,
}

pub(crate) enum HistoryBars {
    /// Nothing live yet: the generated series, with its JSON made once.
    Generated(Arc<CachedSeries>),
    /// Generated bars then live ones, with the answer's `s` array and tick marks.
    Live {
        bars: Vec<Bar>,
        json: String,
        tick_marks: String,
    },
}

/// The newest two daily bars of a symbol (its last and previous close) and its simulated time:
/// what a quote is made of.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DailyState {
    pub last: Bar,
    pub prev_close: f64,
    /// Simulated time of the last move, Unix seconds.
    pub time: i64,
}

impl LiveSeries {
    fn new(symbol: &str, resolution: SimResolution, anchor: Bar) -> LiveSeries {
        LiveSeries {
            resolution,
            followers: 0,
            moved_to: None,
            sim_ms: ANCHOR * 1000,
            first_offset: 0,
            bars: VecDeque::from([(anchor, 0)]),
            version: 0,
            rng: SplitMix64::new(stable_hash((symbol, resolution.canonical(), "live"))),
            scale: WalkScale::of(symbol, resolution),
        }
    }

    fn newest_offset(&self) -> i64 {
        self.first_offset + self.bars.len() as i64 - 1
    }

    /// The bar at `offset`, if kept.
    fn at(&self, offset: i64) -> Option<Bar> {
        let i = usize::try_from(offset - self.first_offset).ok()?;
        self.bars.get(i).map(|(bar, _)| *bar)
    }

    /// Moves the clock by `dt_ms` simulated milliseconds: the newest bar moves for the part of
    /// `dt_ms` inside it, and each bar boundary crossed begins a new bar.
    fn step(&mut self, dt_ms: i64) {
        let mut left = dt_ms;
        let mut begun = 0;
        while left > 0 {
            let Some(&(current, _)) = self.bars.back() else {
                return;
            };
            let start_ms = current.time.saturating_mul(1000);
            let end_ms = next_bar_time(self.resolution, current.time).saturating_mul(1000);
            let part = left.min(end_ms - self.sim_ms).max(0);
            if part > 0 {
                let fraction = part as f64 / (end_ms - start_ms).max(1) as f64;
                self.move_newest(fraction);
                self.sim_ms += part;
                left -= part;
            }
            if self.sim_ms >= end_ms {
                if begun == MAX_BARS_PER_TICK {
                    return;
                }
                begun += 1;
                let close = self.bars.back().map_or(current.close, |(bar, _)| bar.close);
                self.begin_bar(end_ms / 1000, close, current.volume.is_some());
            }
        }
    }

    /// The newest bar moves for `fraction` of its length: one step of the walk, scaled so a
    /// whole bar moves as much as a generated one.
    fn move_newest(&mut self, fraction: f64) {
        let sigma = self.scale.sigma * fraction.sqrt();
        let ret = sigma * self.rng.normal();
        let added = (self.scale.bar_volume * fraction * (0.3 + 1.4 * self.rng.unit()))
            .round()
            .max(1.0);
        let version = self.version + 1;
        let Some((bar, changed)) = self.bars.back_mut() else {
            return;
        };
        let before = *bar;
        bar.close = round2(bar.close * ret.exp()).max(0.05);
        bar.high = bar.high.max(bar.close);
        bar.low = bar.low.min(bar.close);
        if let Some(volume) = bar.volume.as_mut() {
            *volume += added;
        }
        if *bar != before {
            *changed = version;
            self.version = version;
        }
    }

    /// A new bar at `time`, opening at the previous close.
    fn begin_bar(&mut self, time: i64, open: f64, with_volume: bool) {
        self.version += 1;
        let bar = Bar {
            time,
            open,
            high: open,
            low: open,
            close: open,
            volume: with_volume.then_some(0.0),
        };
        self.bars.push_back((bar, self.version));
        // Keep at least the most bars one answer holds; drop the oldest in one go.
        if self.bars.len() > 2 * MAX_BARS as usize {
            self.bars.drain(..MAX_BARS as usize);
            self.first_offset += i64::from(MAX_BARS);
        }
    }

    fn changes_since(&self, version: u64) -> Option<Changes> {
        if self.version <= version {
            return None;
        }
        // Versions grow with the offset, so what changed is a suffix.
        let from = self
            .bars
            .partition_point(|(_, changed)| *changed <= version);
        Some(Changes {
            first_offset: self.first_offset + from as i64,
            bars: self.bars.iter().skip(from).map(|(bar, _)| *bar).collect(),
            version: self.version,
        })
    }
}

/// Instants of the tick grid: `epoch + k × tick`.
fn grid_index(epoch: Instant, at: Instant, tick: Duration) -> u128 {
    at.saturating_duration_since(epoch).as_nanos() / tick.as_nanos().max(1)
}

fn grid_point(epoch: Instant, index: u128, tick: Duration) -> Instant {
    let nanos = index.saturating_mul(tick.as_nanos());
    let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
    epoch
        .checked_add(Duration::from_nanos(nanos))
        .unwrap_or(epoch)
}

impl LiveMap {
    /// Moves the series of `key` to the latest grid instant at or before `now`, one walk step of
    /// `sim_ms_per_tick` per tick passed, if it is followed.
    pub fn advance(
        &mut self,
        key: &SeriesKey,
        epoch: Instant,
        now: Instant,
        tick: Duration,
        sim_ms_per_tick: i64,
    ) {
        let Some(series) = self.series.get_mut(key) else {
            return;
        };
        let Some(from) = series.moved_to else {
            return;
        };
        let (from_index, now_index) = (grid_index(epoch, from, tick), grid_index(epoch, now, tick));
        if now <= from || now_index <= from_index {
            return;
        }
        let ticks = u64::try_from(now_index - from_index).unwrap_or(u64::MAX);
        for _ in 0..ticks.min(MAX_TICKS_PER_MOVE) {
            series.step(sim_ms_per_tick);
        }
        series.moved_to = Some(grid_point(epoch, now_index, tick));
    }

    /// The bars of `key` changed after `version`, if any.
    pub fn changes_since(&self, key: &SeriesKey, version: u64) -> Option<Changes> {
        self.series.get(key)?.changes_since(version)
    }

    /// The newest daily bars of `symbol` (live, or generated when it has not moved).
    pub fn daily(&self, bars: &Bars, symbol: &str) -> DailyState {
        let key = (symbol.to_string(), SimResolution::Days(1));
        let generated = || bars.series(symbol, SimResolution::Days(1), 2);
        match self.series.get(&key) {
            Some(series) if series.version > 0 => {
                let newest = series.newest_offset();
                let last = series.at(newest).unwrap_or(series.bars[0].0);
                let prev_close = match series.at(newest - 1) {
                    Some(bar) => bar.close,
                    // The previous bar is a generated one.
                    None => generated().bars.first().map_or(last.open, |b| b.close),
                };
                DailyState {
                    last,
                    prev_close,
                    time: series.sim_ms / 1000,
                }
            }
            _ => {
                let generated = generated();
                let last = generated.bars.last().copied().unwrap_or(Bar {
                    time: ANCHOR,
                    open: 0.0,
                    high: 0.0,
                    low: 0.0,
                    close: 0.0,
                    volume: None,
                });
                let prev_close = match generated.bars.as_slice() {
                    [prev, _] => prev.close,
                    _ => last.open,
                };
                DailyState {
                    last,
                    prev_close,
                    time: ANCHOR,
                }
            }
        }
    }
}

impl Live {
    fn map(&self) -> MutexGuard<'_, LiveMap> {
        // A panic elsewhere while holding the map leaves it usable.
        self.series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The live series, locked (briefly: a connection's tick, or one answer).
    pub fn lock(&self) -> MutexGuard<'_, LiveMap> {
        self.map()
    }

    /// Origin of the tick grid.
    pub fn epoch(&self) -> Instant {
        *self.epoch.get_or_init(Instant::now)
    }

    /// The first grid instant after `now`.
    pub fn next_tick(&self, now: Instant, tick: Duration) -> Instant {
        let epoch = self.epoch();
        grid_point(epoch, grid_index(epoch, now, tick) + 1, tick)
    }

    /// One more follower of `key`; a series nobody followed starts moving at the second tick
    /// from `now`.
    pub fn follow(&self, bars: &Bars, key: &SeriesKey, now: Instant, tick: Duration) {
        let epoch = self.epoch();
        let mut map = self.map();
        let series = map.series.entry(key.clone()).or_insert_with(|| {
            let generated = bars.series(&key.0, key.1, 1);
            let anchor = generated.bars.last().copied().unwrap_or(Bar {
                time: ANCHOR,
                open: 0.05,
                high: 0.05,
                low: 0.05,
                close: 0.05,
                volume: None,
            });
            LiveSeries::new(&key.0, key.1, anchor)
        });
        series.followers += 1;
        if series.moved_to.is_none() {
            series.moved_to = Some(grid_point(epoch, grid_index(epoch, now, tick) + 1, tick));
        }
    }

    /// One follower of `key` fewer; with none left the series stands still, and one that never
    /// moved is forgotten.
    pub fn unfollow(&self, key: &SeriesKey) {
        let mut map = self.map();
        let Some(series) = map.series.get_mut(key) else {
            return;
        };
        series.followers = series.followers.saturating_sub(1);
        if series.followers == 0 {
            series.moved_to = None;
            if series.version == 0 {
                map.series.remove(key);
            }
        }
    }

    /// The newest `count` bars of `key` as a history answer gives them: generated bars up to the
    /// anchor, then the live ones, read at one instant with the version they are at.
    pub fn history(&self, bars: &Bars, key: &SeriesKey, count: u32) -> History {
        let count = count.clamp(1, MAX_BARS);
        let generated = bars.series(&key.0, key.1, count);
        let map = self.map();
        let Some(series) = map.series.get(key).filter(|s| s.version > 0) else {
            return History {
                anchor_index: generated.bars.len() as i64 - 1,
                bars: HistoryBars::Generated(generated),
                version: 0,
            };
        };
        let newest = series.newest_offset();
        let window = overlay(
            &generated,
            Some(series),
            newest - i64::from(count) + 1,
            newest,
        );
        let version = series.version;
        drop(map);
        History {
            anchor_index: i64::from(count) - 1 - newest,
            bars: HistoryBars::Live {
                json: bars_json(&window, 0),
                tick_marks: tick_marks_json(&window, 0),
                bars: window,
            },
            version,
        }
    }

    /// The bars of `key` at offsets `lo..=hi` from the anchor (negative: generated history,
    /// which `hist_count` bars cover), as far as they exist.
    pub fn window(
        &self,
        bars: &Bars,
        key: &SeriesKey,
        lo: i64,
        hi: i64,
        hist_count: u32,
    ) -> Vec<Bar> {
        let generated = bars.series(&key.0, key.1, hist_count);
        let map = self.map();
        overlay(&generated, map.series.get(key), lo, hi)
    }
}

/// Bars at offsets `lo..=hi` from the anchor: live ones where the series has them, else the
/// generated ones (offsets up to 0) that `generated` holds.
fn overlay(generated: &CachedSeries, series: Option<&LiveSeries>, lo: i64, hi: i64) -> Vec<Bar> {
    let series = series.filter(|s| s.version > 0);
    let anchor_at = generated.bars.len() as i64 - 1;
    let mut out = Vec::with_capacity(usize::try_from(hi - lo + 1).unwrap_or(0));
    for offset in lo..=hi {
        let generated_bar = || {
            let i = usize::try_from(anchor_at + offset).ok()?;
            (offset <= 0)
                .then(|| generated.bars.get(i).copied())
                .flatten()
        };
        out.extend(series.and_then(|s| s.at(offset)).or_else(generated_bar));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    fn bars() -> Bars {
        Bars::new(&crate::SimulatorSettings::default().volumeless)
    }

    fn key(symbol: &str, res: &str) -> SeriesKey {
        (symbol.into(), SimResolution::parse(res).unwrap())
    }

    /// Follows `key` and moves it `ticks` ticks of `sim_ms` each.
    fn moved(live: &Live, bars: &Bars, key: &SeriesKey, ticks: u32, sim_ms: i64) -> Instant {
        let start = live.epoch();
        live.follow(bars, key, start, TICK);
        let now = start + TICK * (ticks + 1);
        live.lock().advance(key, live.epoch(), now, TICK, sim_ms);
        now
    }

    #[test]
    fn a_followed_series_moves_once_per_tick_from_the_second_tick() {
        let (live, bars) = (Live::default(), bars());
        let k = key("NSE:TCS", "1D");
        let epoch = live.epoch();
        live.follow(&bars, &k, epoch, TICK);
        live.lock().advance(&k, epoch, epoch + TICK, TICK, 1000);
        assert_eq!(
            live.lock().changes_since(&k, 0),
            None,
            "not at the first tick"
        );
        live.lock()
            .advance(&k, epoch, epoch + TICK * 2 + TICK / 2, TICK, 1000);
        let changes = live.lock().changes_since(&k, 0).unwrap();
        assert_eq!((changes.first_offset, changes.bars.len()), (0, 1));
        let anchor = *expected_anchor("NSE:TCS", "1D");
        let bar = changes.bars[0];
        assert_eq!((bar.time, bar.open), (anchor.time, anchor.open));
        assert!(bar.volume.unwrap() > anchor.volume.unwrap());
        // The same instant again changes nothing.
        live.lock()
            .advance(&k, epoch, epoch + TICK * 2 + TICK / 2, TICK, 1000);
        assert_eq!(live.lock().changes_since(&k, changes.version), None);
    }

    fn expected_anchor(symbol: &str, res: &str) -> Box<Bar> {
        Box::new(*crate::expected_bars(symbol, res, 1).last().unwrap())
    }

    #[test]
    fn crossing_a_bar_end_begins_the_next_bar_at_the_previous_close() {
        let (live, bars) = (Live::default(), bars());
        let k = key("NSE:INFY", "1");
        // 20 simulated seconds per tick: a new 1-minute bar every three ticks.
        moved(&live, &bars, &k, 7, 20_000);
        let all = live.lock().changes_since(&k, 0).unwrap();
        assert_eq!(all.first_offset, 0);
        assert_eq!(all.bars.len(), 3, "{:?}", all.bars);
        for w in all.bars.windows(2) {
            assert_eq!(w[1].time, w[0].time + 60);
            assert_eq!(w[1].open, w[0].close);
            assert!(w[1].high >= w[1].open.max(w[1].close));
            assert!(w[1].low <= w[1].open.min(w[1].close));
        }
    }

    #[test]
    fn history_is_generated_bars_then_live_ones_and_the_same_for_every_reader() {
        let (live, bars) = (Live::default(), bars());
        let k = key("NSE:SBIN", "5");
        let untouched = live.history(&bars, &k, 50);
        assert!(matches!(untouched.bars, HistoryBars::Generated(_)));
        assert_eq!(untouched.anchor_index, 49);

        // 5 simulated minutes per tick: a new bar each tick.
        moved(&live, &bars, &k, 4, 300_000);
        let history = live.history(&bars, &k, 50);
        let HistoryBars::Live { bars: got, .. } = &history.bars else {
            panic!("live bars expected")
        };
        let generated = crate::expected_bars("NSE:SBIN", "5", 50);
        let changes = live.lock().changes_since(&k, 0).unwrap();
        let shift = changes.bars.len() - 1;
        assert_eq!(got.len(), 50);
        assert_eq!(got[..50 - changes.bars.len()], generated[shift..49]);
        assert_eq!(got[50 - changes.bars.len()..], changes.bars[..]);
        assert_eq!(history.anchor_index, 49 - shift as i64);
        assert_eq!(history.version, changes.version);
        // Older bars by offset, across the anchor.
        let older = live.window(&bars, &k, -60, 1, 100);
        assert_eq!(older.len(), 62);
        assert_eq!(older[..60], crate::expected_bars("NSE:SBIN", "5", 61)[..60]);
        assert_eq!(older[60..], changes.bars[..2]);
    }

    #[test]
    fn a_series_nobody_follows_stands_still_and_one_that_never_moved_is_forgotten() {
        let (live, bars) = (Live::default(), bars());
        let k = key("NSE:ITC", "60");
        let now = moved(&live, &bars, &k, 3, 60_000);
        live.unfollow(&k);
        let before = live.lock().changes_since(&k, 0);
        live.lock()
            .advance(&k, live.epoch(), now + TICK * 50, TICK, 60_000);
        assert_eq!(live.lock().changes_since(&k, 0), before);

        let other = key("NSE:ITC", "1W");
        live.follow(&bars, &other, now, TICK);
        live.unfollow(&other);
        assert!(!live.lock().series.contains_key(&other));
    }

    #[test]
    fn the_daily_state_is_the_live_close_and_the_bar_before() {
        let (live, bars) = (Live::default(), bars());
        let generated = crate::expected_bars("NSE:TCS", "1D", 2);
        let still = live.lock().daily(&bars, "NSE:TCS");
        assert_eq!(still.last, generated[1]);
        assert_eq!(still.prev_close, generated[0].close);
        assert_eq!(still.time, ANCHOR);
        // A day per tick: a new daily bar each tick.
        moved(&live, &bars, &key("NSE:TCS", "1D"), 3, 86_400_000);
        let state = live.lock().daily(&bars, "NSE:TCS");
        assert!(state.last.time > generated[1].time);
        assert!(state.time > ANCHOR + 86_400);
    }

    #[test]
    fn huge_scales_begin_a_bounded_number_of_bars() {
        let (live, bars) = (Live::default(), bars());
        let k = key("NSE:TCS", "1");
        moved(&live, &bars, &k, 2, i64::MAX / 4);
        let changes = live.lock().changes_since(&k, 0).unwrap();
        assert!(
            changes.bars.len() <= 2 * MAX_BARS as usize,
            "{}",
            changes.bars.len()
        );
        assert!(changes.first_offset >= 0);
    }
}
