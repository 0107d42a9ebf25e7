//! Live updates on one connection: its hold on the live series it follows ([`Follow`]), and its
//! tick, every `tick_ms` on the simulator's shared grid, which moves those series on and writes
//! what changed: a `du` per live series with the bars changed since its last one (its newest
//! bar, and the one before it when a new bar began), then a `qsd` per quote symbol with the
//! fields that changed, all in one message.
//!
//! The connection ticks only while it has something live; its timer falls on the same instants
//! as every other connection's, so subscribers of one series are sent one state per tick.

use std::sync::Arc;

use chartgate_protocol::clock::unix_ms;
use tokio::time::Instant;

use super::Connection;
use super::answer::Job;
use crate::live::{Changes, SeriesKey};
use crate::state::{Counters, SimState};
use crate::wire::{SeriesPart, bars_json, encode_series_update};

/// Which stats gauge a [`Follow`] counts in.
#[derive(Debug, Clone, Copy)]
pub(super) enum Gauge {
    LiveSeries,
    QuoteSymbols,
}

/// A subscription's hold on a live series: the series is followed, and the subscription counted
/// in `liveSeries` or `quoteSymbols`, for as long as this lives, whichever way it ends (removed,
/// replaced, session deleted, connection gone).
pub(super) struct Follow {
    state: Arc<SimState>,
    key: SeriesKey,
    gauge: Gauge,
}

impl Follow {
    pub(super) fn new(state: &Arc<SimState>, key: SeriesKey, gauge: Gauge) -> Follow {
        let tick = state.faults().live_tick();
        state.live.follow(&state.bars, &key, Instant::now(), tick);
        Counters::bump(Self::counter(state, gauge));
        Follow {
            state: state.clone(),
            key,
            gauge,
        }
    }

    fn counter(state: &SimState, gauge: Gauge) -> &std::sync::atomic::AtomicU64 {
        match gauge {
            Gauge::LiveSeries => &state.counters.live_series,
            Gauge::QuoteSymbols => &state.counters.quote_symbols,
        }
    }

    pub fn key(&self) -> &SeriesKey {
        &self.key
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.state.live.unfollow(&self.key);
        Counters::drop_one(Self::counter(&self.state, self.gauge));
    }
}

impl Connection {
    /// The answer of `job` went out: its series is live from here on (`start`: where the
    /// answer's bars sit among the live ones).
    pub(super) fn go_live(&mut self, job: &Job, start: Option<(i64, u64)>) {
        let state = self.state.clone();
        self.sessions
            .go_live(&job.session, &job.series_id, job.epoch, start, |key| {
                Follow::new(&state, key, Gauge::LiveSeries)
            });
        self.arm_live();
    }

    /// Makes sure the live tick is set (something here just went live).
    pub(super) fn arm_live(&mut self) {
        if self.live_due.is_none() {
            let tick = self.state.faults().live_tick();
            self.live_due = Some(self.state.live.next_tick(Instant::now(), tick));
        }
    }

    /// The tick: moves this connection's live series on and writes what changed since each was
    /// last sent. The next tick is set only while something here is live.
    pub(super) async fn live_tick(&mut self) {
        self.live_due = None;
        let faults = self.state.faults();
        let (tick, sim_ms) = (faults.live_tick(), faults.simulated_ms_per_tick());
        let now = Instant::now();
        let epoch = self.state.live.epoch();
        let now_ms = unix_ms();
        let status = self.auth.status();
        let mut payloads = Vec::new();
        let mut live_here = false;
        {
            let mut live = self.state.live.lock();
            for view in self.sessions.live_series_mut() {
                live_here = true;
                live.advance(view.key, epoch, now, tick, sim_ms);
                let Some(changes) = live.changes_since(view.key, *view.sent_version) else {
                    continue;
                };
                *view.sent_version = changes.version;
                payloads.push(du_payload(
                    view.session,
                    view.series_id,
                    view.turnaround,
                    view.anchor_index,
                    &changes,
                    now_ms,
                ));
            }
            live_here |= self.quotes.on_tick(
                &mut live,
                &self.state,
                (epoch, now, tick, sim_ms),
                status,
                &mut payloads,
            );
        }
        if live_here {
            self.live_due = Some(self.state.live.next_tick(now, tick));
        }
        self.send_updates(&payloads).await;
    }

    /// Writes live update packets as one message, counted in `updatesSent` when written.
    pub(super) async fn send_updates(&mut self, payloads: &[String]) {
        if payloads.is_empty() {
            return;
        }
        let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
        if self.out.send(&refs).await {
            Counters::add(&self.state.counters.updates_sent, payloads.len() as u64);
        }
    }
}

/// A `du` of one live series: its bars changed since the last one, at their indices in this
/// series' answers, stamped `now_ms` (`t_ms` is when the feed wrote it, for latency figures).
fn du_payload(
    session: &str,
    series_id: &str,
    turnaround: &str,
    anchor_index: i64,
    changes: &Changes,
    now_ms: i64,
) -> String {
    let json = bars_json(&changes.bars, anchor_index + changes.first_offset);
    let part = SeriesPart {
        series_id,
        turnaround,
        bars_json: &json,
        bars: &changes.bars,
        tick_marks: "",
    };
    encode_series_update("du", session, &[part], now_ms)
}
