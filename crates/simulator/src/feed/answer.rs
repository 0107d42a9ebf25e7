//! Composing series answers: what a `create_series`, `modify_series` or `request_more_data` is
//! answered with, as ONE WebSocket message, the way the real feed answers:
//!
//! - bars (`create_series`, or `modify_series` to another symbol or resolution): `series_loading`,
//!   the owed `symbol_resolved` if any, `timescale_update` with the newest bars, `series_completed`;
//! - `request_more_data`: the same around a `timescale_update` of the older bars, at negative
//!   indices (none when the series already holds the most bars the feed gives);
//! - `modify_series` to the range the series holds: two `series_timeframe` (as in the capture).
//!
//! Bars come from the simulator's live state: the generated history, then whatever the series
//! has done live since, so an answer agrees with what live subscribers were sent. Once an answer
//! with bars (or a timeframe) has gone out, the series is live: it is followed and gets updates
//! until it is removed, modified or deleted.
//!
//! An answer waiting out `latency_ms` is written when it starts waiting ([`prepare`]) and only
//! sent when due, so answers that fall due together cost the simulator nothing but the sending.

use chartgate_protocol::clock::unix_ms;
use chartgate_protocol::{Bar, ServerMessage, encode_packet};

use super::Connection;
use crate::bars::SimResolution;
use crate::live::HistoryBars;
use crate::settings::Faults;
use crate::state::{Counters, SimState};
use crate::wire::{
    SeriesPart, bars_json, encode_message, encode_series_timeframe, encode_series_update,
    tick_marks_json,
};

/// What a series answer delivers.
pub(super) enum Work {
    /// The newest `count` bars (create_series, or modify_series to another symbol or resolution).
    Full {
        resolution: SimResolution,
        count: u32,
    },
    /// Older bars for request_more_data: the series had `loaded` bars and now has `total`, of
    /// which `base` came with its first answer (indices from 0), whose anchor bar (offset 0 of
    /// the live bars) is at `anchor_index`.
    Older {
        resolution: SimResolution,
        base: u32,
        anchor_index: i64,
        loaded: u32,
        total: u32,
    },
    /// modify_series to a range the series already holds.
    Timeframe {
        first_index: i64,
        last_index: i64,
        range: String,
    },
}

/// A series answer owed to the client: what it answers and what it delivers.
pub(super) struct Job {
    pub session: String,
    pub series_id: String,
    /// The series' epoch when asked: an answer for a series replaced or removed meanwhile is not
    /// sent.
    pub epoch: u64,
    /// For the `symbol_resolved` owed with the answer.
    pub symbol_id: String,
    /// Upper-case `EXCHANGE:TICKER`.
    pub symbol: String,
    pub turnaround: String,
    pub work: Work,
}

/// A series answer written ahead of its due time: the whole WebSocket message but for a symbol
/// answer owed with it, which goes after the first packet (`series_loading`) when it is sent.
pub(super) struct Prepared {
    /// The `series_completed` status it was written with.
    status: &'static str,
    text: String,
    /// Where the first packet ends in `text`.
    after_loading: usize,
    packets: u64,
    /// It delivers bars (counted in `seriesServed`).
    served: bool,
    /// Where its bars sit among the live ones (see [`Composed::live_start`]).
    live_start: Option<(i64, u64)>,
}

impl Prepared {
    /// Puts the owed `symbol_resolved` payload in, after `series_loading`.
    fn with_owed(mut self, owed: Option<String>) -> Prepared {
        if let Some(owed) = owed {
            let mut packet = String::with_capacity(owed.len() + 16);
            encode_packet(&owed, &mut packet);
            self.text.insert_str(self.after_loading, &packet);
            self.packets += 1;
        }
        self
    }
}

/// The packets of one answer, and whether they deliver bars.
struct Composed {
    payloads: Vec<String>,
    served: bool,
    /// For an answer with the newest bars: the index of the anchor bar in it, and the version of
    /// the live bars it holds, from which its live updates go on.
    live_start: Option<(i64, u64)>,
}

/// The packets answering `job`, stamped `now_ms`.
fn compose(
    state: &SimState,
    job: &Job,
    owed: Option<String>,
    status: &str,
    now_ms: i64,
) -> Composed {
    let session = job.session.as_str();
    let series_id = job.series_id.as_str();
    let turnaround = job.turnaround.as_str();
    let mut payloads: Vec<String> = Vec::with_capacity(5);
    payloads.push(encode_message(
        &ServerMessage::SeriesLoading {
            session: session.into(),
            series_id: series_id.into(),
            turnaround: turnaround.into(),
        },
        now_ms,
    ));
    payloads.extend(owed);
    let timescale_update = |bars_json: &str, bars: &[Bar], tick_marks: &str| {
        let part = SeriesPart {
            series_id,
            turnaround,
            bars_json,
            bars,
            tick_marks,
        };
        encode_series_update("timescale_update", session, &[part], now_ms)
    };
    let mut live_start = None;
    let served = match &job.work {
        Work::Full { resolution, count } => {
            let key = (job.symbol.clone(), *resolution);
            let history = state.live.history(&state.bars, &key, *count);
            live_start = Some((history.anchor_index, history.version));
            payloads.push(match &history.bars {
                HistoryBars::Generated(cached) => {
                    timescale_update(&cached.json, &cached.bars, &cached.tick_marks)
                }
                HistoryBars::Live {
                    bars,
                    json,
                    tick_marks,
                } => timescale_update(json, bars, tick_marks),
            });
            true
        }
        Work::Older {
            resolution,
            base,
            anchor_index,
            loaded,
            total,
        } => {
            if total > loaded {
                let first_index = -i64::from(total - base);
                let last_index = -i64::from(loaded - base) - 1;
                let key = (job.symbol.clone(), *resolution);
                let older = state.live.window(
                    &state.bars,
                    &key,
                    first_index - anchor_index,
                    last_index - anchor_index,
                    *total,
                );
                payloads.push(timescale_update(
                    &bars_json(&older, first_index),
                    &older,
                    &tick_marks_json(&older, first_index),
                ));
            }
            false
        }
        Work::Timeframe {
            first_index,
            last_index,
            range,
        } => {
            for complete in [false, true] {
                payloads.push(encode_series_timeframe(
                    session,
                    series_id,
                    turnaround,
                    *first_index,
                    *last_index,
                    range,
                    complete,
                ));
            }
            true
        }
    };
    payloads.push(encode_message(
        &ServerMessage::SeriesCompleted {
            session: session.into(),
            series_id: series_id.into(),
            status: status.into(),
            turnaround: turnaround.into(),
        },
        now_ms,
    ));
    Composed {
        payloads,
        served,
        live_start,
    }
}

/// Writes `job`'s answer while it waits out its latency, stamped with its due time, so that when
/// many fall due together the simulator only sends them. A real feed writes its answers on its
/// own machines; the simulator usually shares one with its client, and writing a burst of
/// answers at their due time would take the CPU from the client just as it receives them. Not
/// while packets are being corrupted (`malformed_every`): which ones is decided as they are sent.
pub(super) fn prepare(
    state: &SimState,
    job: &Job,
    status: &'static str,
    faults: &Faults,
    due_ms: i64,
) -> Option<Prepared> {
    if faults.malformed_every > 0 {
        return None;
    }
    let Composed {
        payloads,
        served,
        live_start,
    } = compose(state, job, None, status, due_ms);
    let mut text = String::with_capacity(payloads.iter().map(|p| p.len() + 16).sum());
    let mut after_loading = 0;
    for (n, payload) in payloads.iter().enumerate() {
        encode_packet(payload, &mut text);
        if n == 0 {
            after_loading = text.len();
        }
    }
    Some(Prepared {
        status,
        text,
        after_loading,
        packets: payloads.len() as u64,
        served,
        live_start,
    })
}

impl Connection {
    /// Sends the answer of a series whose turn has come, the one `prepared` for it if that is
    /// still right (same status, no packets to corrupt), else a freshly composed one; then the
    /// series is live.
    pub(super) async fn answer(&mut self, job: Job, prepared: Option<Prepared>) {
        let owed = self.take_pending_resolve(&job.session, &job.symbol_id);
        if !self
            .sessions
            .is_current(&job.session, &job.series_id, job.epoch)
        {
            // Removed or replaced meanwhile: only the owed symbol answer still goes out.
            if let Some(owed) = owed {
                self.out.send(&[owed.as_str()]).await;
            }
            return;
        }
        let status = self.auth.status();
        let faults = self.state.faults();
        let prepared = prepared.filter(|p| p.status == status && faults.malformed_every == 0);
        let (served, live_start) = match prepared {
            Some(prepared) => {
                let p = prepared.with_owed(owed);
                self.out.send_framed(p.text, p.packets, &faults).await;
                (p.served, p.live_start)
            }
            None => {
                let composed = compose(&self.state, &job, owed, status, unix_ms());
                let refs: Vec<&str> = composed.payloads.iter().map(String::as_str).collect();
                self.out.send(&refs).await;
                (composed.served, composed.live_start)
            }
        };
        if served {
            self.series_answered += 1;
            Counters::bump(&self.state.counters.series_served);
            self.go_live(&job, live_start);
        }
    }
}
