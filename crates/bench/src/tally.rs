//! What the load client records of live events, one [`Tally`] per client thread (no lock on the
//! path of a million events a second), handed to the scenario when it asks
//! ([`crate::load::LoadClient::collect`]) and merged there.
//!
//! Every live event is counted, per group of streams. For latency, every follower of a chart
//! receives the same bytes for the same state of it, so the hash of an event's data names a
//! (chart, tick): a sample of those hashes (the ones whose low bits are zero, so that every
//! delivery of a sampled state is seen) keeps, per thread, the first arrival of each state and
//! every arrival. Merged over threads, each arrival can be set against the first arrival of
//! its state anywhere, and that first arrival against the feed's tick grid.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Stream groups a scenario can tell apart (e.g. fast and slow followers).
pub const GROUPS: usize = 4;

/// A state is sampled when `hash & SAMPLE_MASK == 0`; `u64::MAX`: none.
static SAMPLE_MASK: AtomicU64 = AtomicU64::new(u64::MAX);

/// Samples one state in `2^bits` (every delivery of it); `None`: none.
pub fn set_sampling(bits: Option<u32>) {
    let mask = match bits {
        Some(b) if b < 64 => (1u64 << b) - 1,
        _ => u64::MAX,
    };
    SAMPLE_MASK.store(mask, Ordering::Relaxed);
}

/// Unix nanoseconds now: the clock the feed probe's arrivals are read on too.
pub fn unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// One sampled arrival.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub hash: u64,
    pub at_ns: i64,
    pub group: u8,
}

/// One client thread's record since the last collection.
#[derive(Debug, Default)]
pub struct Tally {
    /// Live `bar` events per group.
    pub bars: [u64; GROUPS],
    /// Live `quote` events per group.
    pub quotes: [u64; GROUPS],
    /// First arrival (Unix ns) of each sampled state on this thread.
    pub first: HashMap<u64, i64>,
    pub samples: Vec<Sample>,
}

impl Tally {
    /// One live event of `group` with data hash `hash`, read at `at_ns`.
    pub fn record(&mut self, group: u8, bar: bool, hash: u64, at_ns: i64) {
        let g = usize::from(group).min(GROUPS - 1);
        if bar {
            self.bars[g] += 1;
        } else {
            self.quotes[g] += 1;
        }
        if hash & SAMPLE_MASK.load(Ordering::Relaxed) == 0 {
            self.first
                .entry(hash)
                .and_modify(|t| *t = (*t).min(at_ns))
                .or_insert(at_ns);
            self.samples.push(Sample { hash, at_ns, group });
        }
    }

    /// The counts and samples since the last call, which start again from zero, with a copy of
    /// the first arrivals (kept: a state first read before a window began must not count as
    /// first read inside it).
    pub fn take_window(&mut self) -> Tally {
        Tally {
            bars: std::mem::take(&mut self.bars),
            quotes: std::mem::take(&mut self.quotes),
            first: self.first.clone(),
            samples: std::mem::take(&mut self.samples),
        }
    }

    /// Adds `other` into this one.
    pub fn merge(&mut self, other: Tally) {
        for g in 0..GROUPS {
            self.bars[g] += other.bars[g];
            self.quotes[g] += other.quotes[g];
        }
        for (hash, at) in other.first {
            self.first
                .entry(hash)
                .and_modify(|t| *t = (*t).min(at))
                .or_insert(at);
        }
        self.samples.extend(other.samples);
    }
}

/// The feed's tick grid in Unix time: instants `phase_ns + k * tick_ns`.
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    pub phase_ns: i64,
    pub tick_ns: i64,
}

impl Grid {
    /// How far before a grid instant a reading still counts as of that instant (slightly early)
    /// rather than a tick late for the one before: the phase is located to within the
    /// simulator's timer granularity (1 ms). 2 ms, or a tenth of the tick.
    pub fn early_ns(&self) -> i64 {
        (self.tick_ns / 10).min(2_000_000)
    }

    /// The grid instant a reading at `at_ns` belongs to: the latest at or before it, or the
    /// next one when that is under [`Grid::early_ns`] away.
    pub fn tick_of(&self, at_ns: i64) -> i64 {
        let tick = self.tick_ns.max(1);
        let d = (at_ns - self.phase_ns).rem_euclid(tick);
        if d > tick - self.early_ns() {
            at_ns - d + tick
        } else {
            at_ns - d
        }
    }

    /// Milliseconds from its grid instant to `at_ns` (slightly negative when early).
    pub fn lateness_ms(&self, at_ns: i64) -> f64 {
        (at_ns - self.tick_of(at_ns)) as f64 / 1e6
    }
}

/// Latencies in milliseconds of a merged tally's samples that arrived within
/// `[from_ns, to_ns)`, for streams of `group`.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    /// Arrival minus the tick instant of the state (the grid instant at or before the state's
    /// first arrival anywhere).
    pub total: Vec<f64>,
    /// Arrival minus the state's first arrival anywhere (the spread across followers).
    pub spread: Vec<f64>,
    /// Per state first arrived within the window: first arrival minus its tick instant.
    pub first: Vec<f64>,
}

pub fn latencies(tally: &Tally, grid: Grid, from_ns: i64, to_ns: i64, group: u8) -> Latencies {
    let mut out = Latencies::default();
    for s in &tally.samples {
        if s.group != group || s.at_ns < from_ns || s.at_ns >= to_ns {
            continue;
        }
        let Some(&first) = tally.first.get(&s.hash) else {
            continue;
        };
        let tick = grid.tick_of(first);
        out.total.push((s.at_ns - tick) as f64 / 1e6);
        out.spread.push((s.at_ns - first) as f64 / 1e6);
    }
    for &first in tally.first.values() {
        if first >= from_ns && first < to_ns {
            out.first.push(grid.lateness_ms(first));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_instants() {
        let g = Grid {
            phase_ns: 300,
            tick_ns: 1000,
        };
        assert_eq!(g.early_ns(), 100);
        assert_eq!(g.tick_of(300), 300);
        assert_eq!(g.tick_of(1199), 300);
        assert_eq!(g.tick_of(1201), 1300, "early for 1300");
        assert_eq!(g.tick_of(1300), 1300);
        assert_eq!(g.tick_of(150), -700);
        assert_eq!(g.lateness_ms(1250), -50e-6);
        let ms = 1_000_000;
        let g = Grid {
            phase_ns: 0,
            tick_ns: 1000 * ms,
        };
        assert_eq!(g.early_ns(), 2 * ms);
    }

    #[test]
    fn latency_is_against_the_first_arrival_of_the_state() {
        set_sampling(Some(0));
        let mut a = Tally::default();
        let mut b = Tally::default();
        a.record(0, true, 7, 1_500);
        b.record(0, true, 7, 1_200);
        b.record(1, true, 7, 2_600);
        a.merge(b);
        let grid = Grid {
            phase_ns: 1_000,
            tick_ns: 1_000,
        };
        let l = latencies(&a, grid, 0, 10_000, 0);
        let mut total = l.total.clone();
        total.sort_by(f64::total_cmp);
        assert_eq!(total, [200e-6, 500e-6]);
        assert_eq!(l.first, [200e-6]);
        let slow = latencies(&a, grid, 0, 10_000, 1);
        assert_eq!(
            slow.total,
            [1600e-6],
            "past a tick: still against the state's tick"
        );
        assert_eq!(a.bars, [2, 1, 0, 0]);
        set_sampling(None);
    }
}
