//! Deterministic bars: the same (symbol, resolution, count) gives the same bars forever, so tests
//! compare what chartgate delivers with [`expected_bars`] and nothing needs recording.
//!
//! Each (symbol, resolution) has one random walk, seeded by a stable hash (FNV-1a) and generated
//! *backwards* from a fixed anchor, the close of 2025-12-17 (the capture's date). Bars for count
//! N are the newest N of that walk, so a larger request extends a smaller one into the past, as
//! `request_more_data` does on the real feed, and generating N bars costs O(N).
//!
//! Times are aligned to the resolution in UTC: intraday bars start at multiples of their length
//! (Saturday and Sunday skipped), daily bars at midnight on weekdays, `nD` bars every n days,
//! weekly bars on Mondays, monthly bars on the first of the month.
//!
//! Each simulator keeps its own `Bars`: its volumeless symbols and a cache (bounded by bytes) of
//! the series it has generated with their encoded `s` arrays, so answering a 300-bar series costs
//! a lookup and a copy, far less than the client's decoding of it.

use std::collections::HashSet;
use std::sync::Arc;

use crate::wire::{bars_json, tick_marks_json};
use chartgate_protocol::Bar;

use crate::rng::SplitMix64;
use crate::stable_hash;

/// The most bars one series answers with (as the real feed).
pub const MAX_BARS: u32 = 5000;

/// Start of the newest bar is at or before this instant: 2025-12-17 10:00 UTC (15:30 IST, NSE's
/// close on the capture's date).
pub const ANCHOR: i64 = 1_765_965_600;

const DAY: i64 = 86_400;

/// A resolution the simulated feed knows: what the real feed accepts, not only chartgate's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimResolution {
    /// 1 to 1440 minutes (the capture uses 188).
    Minutes(u32),
    /// `D`, `1D`, `nD` (1 to 365 days).
    Days(u32),
    Week,
    Month,
}

impl SimResolution {
    /// Parses the feed's resolution strings; `None` for anything the feed answers with
    /// `series_error` (`abc`, `0`, `1441`, `2W`).
    pub fn parse(raw: &str) -> Option<SimResolution> {
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit());
        match raw {
            "D" => return Some(SimResolution::Days(1)),
            "W" | "1W" => return Some(SimResolution::Week),
            "M" | "1M" => return Some(SimResolution::Month),
            _ => {}
        }
        if let Some(days) = raw.strip_suffix('D') {
            if !digits(days) {
                return None;
            }
            let n: u32 = days.parse().ok()?;
            return (1..=365).contains(&n).then_some(SimResolution::Days(n));
        }
        if !digits(raw) {
            return None;
        }
        let n: u32 = raw.parse().ok()?;
        (1..=1440).contains(&n).then_some(SimResolution::Minutes(n))
    }

    /// One name per resolution (`D` and `1D` are the same series).
    pub fn canonical(self) -> String {
        match self {
            SimResolution::Minutes(n) => n.to_string(),
            SimResolution::Days(n) => format!("{n}D"),
            SimResolution::Week => "1W".into(),
            SimResolution::Month => "1M".into(),
        }
    }

    /// Trading minutes one bar spans (a trading day is 375 minutes on NSE), for volatility and
    /// volume scaling.
    fn trading_minutes(self) -> f64 {
        match self {
            SimResolution::Minutes(n) => f64::from(n),
            SimResolution::Days(n) => 375.0 * f64::from(n),
            SimResolution::Week => 375.0 * 5.0,
            SimResolution::Month => 375.0 * 21.0,
        }
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil (year, month) of a day number.
fn civil_year_month(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

/// Monday = 0 .. Sunday = 6 (1970-01-01 was a Thursday).
fn weekday(days: i64) -> i64 {
    (days + 3).rem_euclid(7)
}

/// Bar open times, newest first, `n` of them.
fn times_newest_first(res: SimResolution, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    match res {
        SimResolution::Minutes(m) => {
            let step = i64::from(m) * 60;
            let mut t = ANCHOR.div_euclid(step) * step;
            while out.len() < n {
                if weekday(t.div_euclid(DAY)) < 5 {
                    out.push(t);
                }
                t -= step;
            }
        }
        SimResolution::Days(1) => {
            let mut d = ANCHOR.div_euclid(DAY);
            while out.len() < n {
                if weekday(d) < 5 {
                    out.push(d * DAY);
                }
                d -= 1;
            }
        }
        SimResolution::Days(k) => {
            let k = i64::from(k);
            let mut d = ANCHOR.div_euclid(DAY).div_euclid(k) * k;
            while out.len() < n {
                out.push(d * DAY);
                d -= k;
            }
        }
        SimResolution::Week => {
            let today = ANCHOR.div_euclid(DAY);
            let mut d = today - weekday(today);
            while out.len() < n {
                out.push(d * DAY);
                d -= 7;
            }
        }
        SimResolution::Month => {
            let (mut y, mut m) = civil_year_month(ANCHOR.div_euclid(DAY));
            while out.len() < n {
                out.push(days_from_civil(y, m, 1) * DAY);
                m -= 1;
                if m == 0 {
                    m = 12;
                    y -= 1;
                }
            }
        }
    }
    out
}

pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The open time of the bar after the one that opens at `time` (aligned as the history is):
/// the way live bars follow the newest generated one.
pub(crate) fn next_bar_time(res: SimResolution, time: i64) -> i64 {
    match res {
        SimResolution::Minutes(m) => {
            let step = i64::from(m) * 60;
            let mut t = time + step;
            while weekday(t.div_euclid(DAY)) >= 5 {
                t += step;
            }
            t
        }
        SimResolution::Days(1) => {
            let mut d = time.div_euclid(DAY) + 1;
            while weekday(d) >= 5 {
                d += 1;
            }
            d * DAY
        }
        SimResolution::Days(k) => time + i64::from(k) * DAY,
        SimResolution::Week => time + 7 * DAY,
        SimResolution::Month => {
            let (y, m) = civil_year_month(time.div_euclid(DAY));
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            days_from_civil(y, m, 1) * DAY
        }
    }
}

/// How the walk of one (symbol, resolution) moves: its typical move and volume per bar.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalkScale {
    /// The symbol's price level, which the history is pulled towards.
    pub level: f64,
    /// Standard deviation of one bar's log return.
    pub sigma: f64,
    /// Typical volume of one bar.
    pub bar_volume: f64,
}

impl WalkScale {
    /// Per-symbol level and liquidity do not depend on the resolution, so charts of one symbol
    /// at different resolutions sit at similar prices.
    pub fn of(symbol: &str, res: SimResolution) -> WalkScale {
        let mut sym_rng = SplitMix64::new(stable_hash(symbol));
        let level = 10f64.powf(1.3 + sym_rng.unit() * 2.4);
        let daily_volume = 10f64.powf(4.0 + sym_rng.unit() * 2.2);
        let minutes = res.trading_minutes();
        WalkScale {
            level,
            sigma: (0.018 * (minutes / 375.0).sqrt()).clamp(0.0008, 0.12),
            // Written as the history always computed it, so its volumes stay bit for bit.
            bar_volume: daily_volume * (minutes / 375.0),
        }
    }
}

/// The newest `n` bars of the walk of (symbol, resolution), oldest first.
fn generate(symbol: &str, res: SimResolution, n: usize, volumeless: bool) -> Vec<Bar> {
    let canonical = res.canonical();
    let mut rng = SplitMix64::new(stable_hash((symbol, canonical)));
    let WalkScale {
        level,
        sigma,
        bar_volume,
    } = WalkScale::of(symbol, res);
    let times = times_newest_first(res, n);

    let mut close = round2(level * (0.9 + 0.2 * rng.unit())).max(0.05);
    let mut bars = Vec::with_capacity(n);
    for time in times {
        // Walking back in time: pull the price towards the symbol's level so long histories stay
        // plausible.
        let reversion = 0.01 * (close / level).ln();
        let ret = sigma * rng.normal() + reversion;
        let open = round2(close / ret.exp()).max(0.05);
        let wick_up = rng.normal().abs() * sigma * 0.6;
        let wick_down = rng.normal().abs() * sigma * 0.6;
        let high = ((open.max(close) * (1.0 + wick_up)) * 100.0).ceil() / 100.0;
        let low = (((open.min(close) * (1.0 - wick_down)) * 100.0).floor() / 100.0).max(0.01);
        let volume = (bar_volume * (0.3 + 1.4 * rng.unit())).round().max(1.0);
        bars.push(Bar {
            time,
            open,
            high: high.max(open).max(close),
            low: low.min(open).min(close),
            close,
            volume: (!volumeless).then_some(volume),
        });
        // The previous bar's close, with a small overnight gap.
        close = round2(open * (1.0 + sigma * 0.15 * rng.normal())).max(0.05);
    }
    bars.reverse();
    bars
}

/// A generated series and its encoded `s` array (indices from 0), shared by every answer.
#[derive(Debug)]
pub(crate) struct CachedSeries {
    pub bars: Arc<Vec<Bar>>,
    pub json: Arc<str>,
    /// The tick-mark element of a `timescale_update` of the whole series.
    pub tick_marks: Arc<str>,
}

impl CachedSeries {
    fn new(bars: Vec<Bar>) -> CachedSeries {
        CachedSeries {
            json: bars_json(&bars, 0).into(),
            tick_marks: tick_marks_json(&bars, 0).into(),
            bars: Arc::new(bars),
        }
    }

    /// What the entry holds, in bytes, for the cache's bound.
    fn weight(&self) -> u32 {
        let bytes = self.bars.len() * std::mem::size_of::<Bar>()
            + self.json.len()
            + self.tick_marks.len()
            + 64;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// (upper-case symbol, resolution, count): `D` and `1D` parse to the same resolution, so they
/// share an entry.
type Key = (String, SimResolution, u32);

/// About 64 MB of bars and JSON: every chart of a few hundred symbols at two resolutions.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// One simulator's bars: which symbols have no volume, and the series it has generated, so
/// answering a series costs a lookup and a copy, far less than the client's decoding of it.
///
/// Owned by the simulator instance (in its state), so two simulators in one process can list
/// different volumeless symbols and neither keeps the other's series alive.
pub(crate) struct Bars {
    /// Symbols whose bars have no volume (index-like), upper-case `EXCHANGE:TICKER`.
    volumeless: HashSet<String>,
    /// Bounded by bytes (each entry weighed by its bars and JSON). moka evicts by recency and
    /// admits by frequency, and a lookup of one key never waits on the generation of another;
    /// concurrent lookups of one missing key generate it once.
    cache: moka::sync::Cache<Key, Arc<CachedSeries>>,
}

impl std::fmt::Debug for Bars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bars")
            .field("volumeless", &self.volumeless)
            .field("cached_series", &self.cache.entry_count())
            .finish()
    }
}

impl Bars {
    /// `volumeless` as `simulator.volumeless` lists it (any case, surrounding blanks ignored).
    pub fn new<'a>(volumeless: impl IntoIterator<Item = &'a String>) -> Bars {
        Bars {
            volumeless: volumeless.into_iter().map(|s| normalise(s)).collect(),
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_BYTES)
                .weigher(|_, series: &Arc<CachedSeries>| series.weight())
                .build(),
        }
    }

    /// Whether `symbol` (upper-case `EXCHANGE:TICKER`) has bars with no volume.
    pub fn is_volumeless(&self, symbol: &str) -> bool {
        self.volumeless.contains(symbol)
    }

    /// The series for (symbol, resolution, count), from the cache or freshly generated.
    /// `symbol` is upper-case `EXCHANGE:TICKER`; `count` is capped at [`MAX_BARS`] and raised to
    /// at least 1.
    pub fn series(&self, symbol: &str, res: SimResolution, count: u32) -> Arc<CachedSeries> {
        let count = count.clamp(1, MAX_BARS);
        let volumeless = self.is_volumeless(symbol);
        self.cache.get_with((symbol.to_string(), res, count), || {
            Arc::new(CachedSeries::new(generate(
                symbol,
                res,
                count as usize,
                volumeless,
            )))
        })
    }
}

/// A symbol as the feed compares it: trimmed, upper-case.
fn normalise(symbol: &str) -> String {
    symbol.trim().to_ascii_uppercase()
}

/// The deterministic bars a default-configured simulator answers for this request (tests
/// compare against it). Generated on each call: it shares no cache with any simulator.
///
/// `symbol` is `EXCHANGE:TICKER` as sent in `resolve_symbol` (compared upper-case); `resolution`
/// is the feed's string (`1D`, `D`, `60`, `188`, `1W`...). An unknown resolution gives no bars.
/// Whether bars carry volume follows the default `simulator.volumeless` list.
pub fn expected_bars(symbol: &str, resolution: &str, count: u32) -> Arc<Vec<Bar>> {
    let Some(res) = SimResolution::parse(resolution) else {
        return Arc::new(Vec::new());
    };
    let symbol = normalise(symbol);
    let volumeless = crate::SimulatorSettings::default()
        .volumeless
        .iter()
        .any(|v| normalise(v) == symbol);
    Arc::new(generate(
        &symbol,
        res,
        count.clamp(1, MAX_BARS) as usize,
        volumeless,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_parse_like_the_feed() {
        assert_eq!(
            SimResolution::parse("188"),
            Some(SimResolution::Minutes(188))
        );
        assert_eq!(
            SimResolution::parse("1440"),
            Some(SimResolution::Minutes(1440))
        );
        assert_eq!(SimResolution::parse("D"), Some(SimResolution::Days(1)));
        assert_eq!(SimResolution::parse("3D"), Some(SimResolution::Days(3)));
        assert_eq!(SimResolution::parse("W"), Some(SimResolution::Week));
        assert_eq!(SimResolution::parse("1M"), Some(SimResolution::Month));
        for bad in [
            "abc", "0", "1441", "", "-5", "2W", "0D", "D1", "+5", "1H", "99999",
        ] {
            assert_eq!(SimResolution::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn civil_dates_round_trip() {
        let d = days_from_civil(2025, 12, 17);
        assert_eq!(d * DAY, 1_765_929_600);
        assert_eq!(civil_year_month(d), (2025, 12));
        assert_eq!(weekday(d), 2, "2025-12-17 is a Wednesday");
        assert_eq!(civil_year_month(days_from_civil(1969, 3, 1)), (1969, 3));
    }

    #[test]
    fn bars_are_deterministic_sane_and_aligned() {
        for res in ["1", "5", "188", "60", "1D", "3D", "1W", "1M"] {
            let r = SimResolution::parse(res).unwrap();
            let bars = generate("NSE:TCS", r, 500, false);
            assert_eq!(bars.len(), 500);
            assert_eq!(bars, generate("NSE:TCS", r, 500, false));
            let last_300 = generate("NSE:TCS", r, 300, false);
            assert_eq!(
                &bars[200..],
                &last_300[..],
                "{res}: count N is the newest N"
            );
            for w in bars.windows(2) {
                assert!(w[0].time < w[1].time, "{res}: ascending");
            }
            for b in &bars {
                assert!(b.high >= b.open.max(b.close) && b.low <= b.open.min(b.close));
                assert!(b.low > 0.0 && b.volume.unwrap() >= 1.0);
                assert_eq!(round2(b.close), b.close);
                match r {
                    SimResolution::Minutes(m) => assert_eq!(b.time % (i64::from(m) * 60), 0),
                    _ => assert_eq!(b.time % DAY, 0),
                }
            }
            assert!(bars.last().unwrap().time <= ANCHOR);
        }
        assert!(
            generate("NSE:NIFTY", SimResolution::Days(1), 3, true)[0]
                .volume
                .is_none()
        );
    }

    #[test]
    fn the_bar_after_each_generated_bar_is_the_next_generated_one() {
        for res in ["1", "5", "188", "60", "1440", "1D", "3D", "1W", "1M"] {
            let r = SimResolution::parse(res).unwrap();
            let times: Vec<i64> = times_newest_first(r, 400).into_iter().rev().collect();
            for w in times.windows(2) {
                assert_eq!(next_bar_time(r, w[0]), w[1], "{res} after {}", w[0]);
            }
            assert!(next_bar_time(r, *times.last().unwrap()) > ANCHOR, "{res}");
        }
    }

    #[test]
    fn expected_bars_caps_and_the_simulator_caches() {
        let a = expected_bars("nse:infy", "1D", 9000);
        assert_eq!(a.len(), MAX_BARS as usize);
        assert_eq!(a, expected_bars("NSE:INFY", "D", 9000));
        assert!(expected_bars("NSE:INFY", "abc", 10).is_empty());

        let bars = Bars::new(&crate::SimulatorSettings::default().volumeless);
        let served = bars.series("NSE:INFY", SimResolution::Days(1), 9000);
        assert_eq!(
            served.bars, a,
            "a default simulator serves the expected bars"
        );
        let again = bars.series("NSE:INFY", SimResolution::parse("D").unwrap(), MAX_BARS);
        assert!(
            Arc::ptr_eq(&served, &again),
            "D and 1D, 9000 and 5000 share one entry"
        );
    }

    #[test]
    fn the_volumeless_set_belongs_to_each_simulator() {
        let custom = Bars::new(&[" nse:tcs ".to_string()]);
        let default = Bars::new(&crate::SimulatorSettings::default().volumeless);
        let tcs = |bars: &Bars| bars.series("NSE:TCS", SimResolution::Days(1), 3).bars[0].volume;
        assert!(tcs(&custom).is_none());
        assert!(tcs(&default).is_some());
        assert!(expected_bars("NSE:TCS", "1D", 3)[0].volume.is_some());
        assert!(expected_bars("NSE:NIFTY", "1D", 3)[0].volume.is_none());
        assert!(default.is_volumeless("NSE:NIFTY") && !custom.is_volumeless("NSE:NIFTY"));
    }
}
