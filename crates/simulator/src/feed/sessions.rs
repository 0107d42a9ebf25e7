//! Chart sessions and what they hold: the symbols each resolved and the series each asked for,
//! with the bookkeeping behind every answer (how many bars a series holds, which `symbol_resolved`
//! is still owed, which answers are for a series that no longer exists) and behind its live
//! updates (where its bars sit among the live ones, what it has been sent, its hold on the live
//! series while it is subscribed).
//!
//! Every chart session answers only for itself. What one client can make a connection hold is
//! bounded here; beyond a bound the call is refused with the reason the caller sends.
//! Pure state: nothing here writes to the client.

use std::collections::HashMap;

use chartgate_protocol::SymbolInfo;

use super::answer::{Job, Work};
use super::updates::Follow;
use crate::bars::{MAX_BARS, SimResolution};
use crate::live::SeriesKey;

/// Bounds on what one client can make a connection hold.
const MAX_CHART_SESSIONS: usize = 4096;
const MAX_SERIES_PER_SESSION: usize = 64;
const MAX_SYMBOLS_PER_SESSION: usize = 256;

/// A symbol a chart session resolved (or failed to).
struct SymbolEntry {
    /// `EXCHANGE:TICKER`, upper-case.
    symbol: String,
    resolution: Resolution,
}

/// How a `resolve_symbol` turned out.
enum Resolution {
    /// Answered `symbol_error`: series of this symbol get `series_error "invalid symbol"`.
    Invalid,
    Resolved {
        info: Box<SymbolInfo>,
        /// The `symbol_resolved` is still owed: it goes out with this symbol's next answer.
        owed: bool,
    },
}

/// A series of a chart session.
struct SeriesEntry {
    /// Changes when the series is created again, so answers for a replaced series are dropped.
    epoch: u64,
    symbol_id: String,
    symbol: String,
    resolution: SimResolution,
    /// Bars of the first answer (indices 0..count).
    count: u32,
    /// Older bars added by `request_more_data` (negative indices).
    older: u32,
    turnaround: String,
    /// Index, in this series' answers and updates, of the anchor bar (offset 0 of the live
    /// bars): set by each answer with bars.
    anchor_index: i64,
    /// The version of the live bars this series has been sent.
    sent_version: u64,
    /// From its answer's `series_completed` until it is removed, modified or deleted: the
    /// series is followed live and gets `du` updates.
    live: Option<Follow>,
}

/// A live series of this connection, as its tick sees it.
pub(super) struct LiveView<'a> {
    pub session: &'a str,
    pub series_id: &'a str,
    pub turnaround: &'a str,
    pub key: &'a SeriesKey,
    pub anchor_index: i64,
    pub sent_version: &'a mut u64,
}

#[derive(Default)]
struct ChartSession {
    symbols: HashMap<String, SymbolEntry>,
    series: HashMap<String, SeriesEntry>,
}

/// What became of a `resolve_symbol`.
pub(super) enum SymbolAdded<'a> {
    /// No such chart session: `symbol_error "unknown chart session"`.
    UnknownSession,
    /// The session holds as many symbols as it may: `critical_error "too many symbols"`.
    TooMany,
    /// `symbol_error "invalid symbol"`.
    Invalid,
    Resolved(&'a SymbolInfo),
}

/// The ids a `create_series` or `modify_series` names, which its answer carries back.
#[derive(Clone, Copy)]
pub(super) struct SeriesCall<'a> {
    pub session: &'a str,
    pub series_id: &'a str,
    pub turnaround: &'a str,
    /// The symbol, as `resolve_symbol` named it in this session.
    pub symbol_id: &'a str,
}

impl SeriesCall<'_> {
    /// The answer owed for this call: `work`, for `symbol`, while the series is in `epoch`.
    fn job(&self, epoch: u64, symbol: String, work: Work) -> Job {
        Job {
            session: self.session.to_string(),
            series_id: self.series_id.to_string(),
            epoch,
            symbol_id: self.symbol_id.to_string(),
            symbol,
            turnaround: self.turnaround.to_string(),
            work,
        }
    }
}

/// One connection's chart sessions, by id.
#[derive(Default)]
pub(super) struct Sessions {
    charts: HashMap<String, ChartSession>,
    /// The epoch of the next series created.
    next_epoch: u64,
}

impl Sessions {
    /// `chart_create_session` (again for an existing one changes nothing).
    pub fn create(&mut self, session: &str) -> Result<(), &'static str> {
        if !self.charts.contains_key(session) && self.charts.len() >= MAX_CHART_SESSIONS {
            return Err("too many chart sessions");
        }
        self.charts.entry(session.to_string()).or_default();
        Ok(())
    }

    /// `chart_delete_session`: its series are gone, and so are answers still pending for them.
    pub fn delete(&mut self, session: &str) {
        self.charts.remove(session);
    }

    /// `remove_series`.
    pub fn remove_series(&mut self, session: &str, series_id: &str) {
        if let Some(cs) = self.charts.get_mut(session) {
            cs.series.remove(series_id);
        }
    }

    /// Records what `resolve_symbol` of `symbol` (upper-case) as `symbol_id` gave: `info`, or
    /// `None` for an invalid symbol. A resolved symbol's `symbol_resolved` is `owed` when it is
    /// to go out with the series answer that follows.
    pub fn add_symbol(
        &mut self,
        session: &str,
        symbol_id: &str,
        symbol: String,
        info: Option<SymbolInfo>,
        owed: bool,
    ) -> SymbolAdded<'_> {
        let Some(cs) = self.charts.get_mut(session) else {
            return SymbolAdded::UnknownSession;
        };
        if !cs.symbols.contains_key(symbol_id) && cs.symbols.len() >= MAX_SYMBOLS_PER_SESSION {
            return SymbolAdded::TooMany;
        }
        let resolution = match info {
            None => Resolution::Invalid,
            Some(info) => Resolution::Resolved {
                info: Box::new(info),
                owed,
            },
        };
        let entry = SymbolEntry { symbol, resolution };
        match cs
            .symbols
            .entry(symbol_id.to_string())
            .insert_entry(entry)
            .into_mut()
        {
            SymbolEntry {
                resolution: Resolution::Resolved { info, .. },
                ..
            } => SymbolAdded::Resolved(info),
            SymbolEntry {
                resolution: Resolution::Invalid,
                ..
            } => SymbolAdded::Invalid,
        }
    }

    /// The symbol whose `symbol_resolved` is owed as `symbol_id`, if any; it is no longer owed.
    pub fn take_owed(&mut self, session: &str, symbol_id: &str) -> Option<&SymbolInfo> {
        let entry = self.charts.get_mut(session)?.symbols.get_mut(symbol_id)?;
        match &mut entry.resolution {
            Resolution::Resolved { info, owed } if *owed => {
                *owed = false;
                Some(info)
            }
            _ => None,
        }
    }

    /// What `create_series` and `modify_series` share: the session, its symbol `symbol_id`,
    /// resolved, and a resolution the feed knows. Gives the symbol and the resolution, or the
    /// `series_error` reason.
    pub fn series_target(
        &self,
        session: &str,
        symbol_id: &str,
        resolution: &str,
    ) -> Result<(String, SimResolution), &'static str> {
        let cs = self.charts.get(session).ok_or("unknown chart session")?;
        let entry = cs.symbols.get(symbol_id).ok_or("unknown symbol")?;
        if let Resolution::Invalid = entry.resolution {
            return Err("invalid symbol");
        }
        let res = SimResolution::parse(resolution).ok_or("invalid resolution")?;
        Ok((entry.symbol.clone(), res))
    }

    /// `create_series` of `symbol` (checked by [`Sessions::series_target`]): the newest `count`
    /// bars, at most [`MAX_BARS`]. A series created again under the same id replaces the old one.
    pub fn create_series(
        &mut self,
        call: SeriesCall<'_>,
        symbol: String,
        resolution: SimResolution,
        count: u32,
    ) -> Result<Job, &'static str> {
        if count == 0 {
            return Err("invalid bar count");
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let cs = self
            .charts
            .get_mut(call.session)
            .ok_or("unknown chart session")?;
        if !cs.series.contains_key(call.series_id) && cs.series.len() >= MAX_SERIES_PER_SESSION {
            return Err("too many series");
        }
        let count = count.min(MAX_BARS);
        cs.series.insert(
            call.series_id.to_string(),
            SeriesEntry {
                epoch,
                symbol_id: call.symbol_id.to_string(),
                symbol: symbol.clone(),
                resolution,
                count,
                older: 0,
                turnaround: call.turnaround.to_string(),
                anchor_index: i64::from(count) - 1,
                sent_version: 0,
                live: None,
            },
        );
        Ok(call.job(epoch, symbol, Work::Full { resolution, count }))
    }

    /// `modify_series` to `symbol` (checked by [`Sessions::series_target`]): the timeframe when
    /// symbol and resolution stay, else fresh bars, as many as the series had at first. Either
    /// way its live updates stop until the answer completes; to the same target they then resume
    /// where they were.
    pub fn modify_series(
        &mut self,
        call: SeriesCall<'_>,
        symbol: String,
        resolution: SimResolution,
        range: &str,
    ) -> Result<Job, &'static str> {
        let entry = self.series_mut(call.session, call.series_id)?;
        entry.live = None;
        let work = if entry.symbol_id == call.symbol_id && entry.resolution == resolution {
            Work::Timeframe {
                first_index: -i64::from(entry.older),
                last_index: i64::from(entry.count) - 1,
                range: range.to_string(),
            }
        } else {
            entry.symbol_id = call.symbol_id.to_string();
            entry.symbol = symbol.clone();
            entry.resolution = resolution;
            entry.older = 0;
            Work::Full {
                resolution,
                count: entry.count,
            }
        };
        entry.turnaround = call.turnaround.to_string();
        Ok(call.job(entry.epoch, symbol, work))
    }

    /// `request_more_data`: `count` bars older than the series holds, up to [`MAX_BARS`] in all.
    /// The answer carries the series' symbol and turnaround as they are now.
    pub fn request_more_data(
        &mut self,
        session: &str,
        series_id: &str,
        count: u32,
    ) -> Result<Job, &'static str> {
        let entry = self.series_mut(session, series_id)?;
        let loaded = entry.count + entry.older;
        let total = loaded.saturating_add(count).min(MAX_BARS);
        entry.older = total - entry.count;
        let call = SeriesCall {
            session,
            series_id,
            turnaround: &entry.turnaround,
            symbol_id: &entry.symbol_id,
        };
        let work = Work::Older {
            resolution: entry.resolution,
            base: entry.count,
            anchor_index: entry.anchor_index,
            loaded,
            total,
        };
        Ok(call.job(entry.epoch, entry.symbol.clone(), work))
    }

    /// The series is still the one created in `epoch` (not removed, replaced or deleted).
    pub fn is_current(&self, session: &str, series_id: &str, epoch: u64) -> bool {
        self.charts
            .get(session)
            .and_then(|cs| cs.series.get(series_id))
            .is_some_and(|s| s.epoch == epoch)
    }

    /// The answer of the series created in `epoch` completed: it is followed live (by `follow`)
    /// until removed, modified or deleted. An answer with bars says where they sit among the
    /// live bars (`start`: the anchor's index and the version sent).
    pub fn go_live(
        &mut self,
        session: &str,
        series_id: &str,
        epoch: u64,
        start: Option<(i64, u64)>,
        follow: impl FnOnce(SeriesKey) -> Follow,
    ) {
        let Ok(entry) = self.series_mut(session, series_id) else {
            return;
        };
        if entry.epoch != epoch {
            return;
        }
        if let Some((anchor_index, version)) = start {
            entry.anchor_index = anchor_index;
            entry.sent_version = version;
        }
        if entry.live.is_none() {
            entry.live = Some(follow((entry.symbol.clone(), entry.resolution)));
        }
    }

    /// Every series of this connection that is live now.
    pub fn live_series_mut(&mut self) -> impl Iterator<Item = LiveView<'_>> {
        self.charts.iter_mut().flat_map(|(session, cs)| {
            cs.series.iter_mut().filter_map(move |(series_id, entry)| {
                let follow = entry.live.as_ref()?;
                Some(LiveView {
                    session,
                    series_id,
                    turnaround: &entry.turnaround,
                    key: follow.key(),
                    anchor_index: entry.anchor_index,
                    sent_version: &mut entry.sent_version,
                })
            })
        })
    }

    fn series_mut(
        &mut self,
        session: &str,
        series_id: &str,
    ) -> Result<&mut SeriesEntry, &'static str> {
        self.charts
            .get_mut(session)
            .and_then(|cs| cs.series.get_mut(series_id))
            .ok_or("unknown series")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SymbolInfo {
        SymbolInfo {
            name: "TCS".into(),
            full_name: "NSE:TCS".into(),
            description: "Tata Consultancy Services".into(),
            exchange: "NSE".into(),
            currency_code: "INR".into(),
            pricescale: 100,
            minmov: 1,
            timezone: "Asia/Kolkata".into(),
            kind: "stock".into(),
            session: "0915-1530".into(),
            isin: String::new(),
        }
    }

    fn with_symbol(owed: bool) -> Sessions {
        let mut sessions = Sessions::default();
        assert_eq!(sessions.create("cs"), Ok(()));
        let added = sessions.add_symbol("cs", "sym", "NSE:TCS".into(), Some(info()), owed);
        assert!(matches!(added, SymbolAdded::Resolved(_)));
        sessions
    }

    #[test]
    fn an_owed_symbol_answer_is_taken_once() {
        let mut sessions = with_symbol(true);
        assert!(sessions.take_owed("cs", "sym").is_some());
        assert!(sessions.take_owed("cs", "sym").is_none());
        assert!(with_symbol(false).take_owed("cs", "sym").is_none());
    }

    #[test]
    fn series_calls_are_checked_in_the_feed_order() {
        let mut sessions = with_symbol(false);
        sessions.add_symbol("cs", "bad", "NSE:INVALIDX".into(), None, false);
        for (session, symbol_id, resolution, why) in [
            ("nope", "sym", "1D", "unknown chart session"),
            ("cs", "x", "1D", "unknown symbol"),
            ("cs", "bad", "1D", "invalid symbol"),
            ("cs", "sym", "abc", "invalid resolution"),
        ] {
            assert_eq!(
                sessions.series_target(session, symbol_id, resolution),
                Err(why)
            );
        }
        assert_eq!(
            sessions.series_target("cs", "sym", "D"),
            Ok(("NSE:TCS".into(), SimResolution::Days(1)))
        );
    }

    #[test]
    fn a_replaced_or_removed_series_is_no_longer_current() {
        let mut sessions = with_symbol(false);
        let day = SimResolution::Days(1);
        let call = SeriesCall {
            session: "cs",
            series_id: "s1",
            turnaround: "t",
            symbol_id: "sym",
        };
        let create = |s: &mut Sessions, count| s.create_series(call, "NSE:TCS".into(), day, count);
        assert_eq!(create(&mut sessions, 0).err(), Some("invalid bar count"));
        let first = create(&mut sessions, 9000).ok().unwrap();
        assert!(matches!(
            first.work,
            Work::Full {
                count: MAX_BARS,
                ..
            }
        ));
        let second = create(&mut sessions, 10).ok().unwrap();
        assert!(!sessions.is_current("cs", "s1", first.epoch));
        assert!(sessions.is_current("cs", "s1", second.epoch));

        let more = sessions.request_more_data("cs", "s1", 20).ok().unwrap();
        assert!(matches!(
            more.work,
            Work::Older {
                base: 10,
                anchor_index: 9,
                loaded: 10,
                total: 30,
                ..
            }
        ));
        let same = sessions
            .modify_series(call, "NSE:TCS".into(), day, "r")
            .ok()
            .unwrap();
        assert!(matches!(
            same.work,
            Work::Timeframe {
                first_index: -20,
                last_index: 9,
                ..
            }
        ));

        sessions.remove_series("cs", "s1");
        assert!(!sessions.is_current("cs", "s1", second.epoch));
        assert_eq!(
            sessions.request_more_data("cs", "s1", 5).err(),
            Some("unknown series")
        );
    }
}
