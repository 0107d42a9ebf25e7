//! Quote sessions: `quote_create_session`, `quote_set_fields`, `quote_add_symbols`,
//! `quote_fast_symbols`, `quote_remove_symbols`, `quote_delete_session`, and the `qsd` packets
//! they lead to.
//!
//! A symbol is keyed by its text exactly as the client wrote it (`NSE:TCS`, or the
//! `={"symbol":"NSE:TCS",...}` form the browser uses), and every `qsd` names it by that text in
//! `n`: two spellings of one symbol are two subscriptions. An added symbol gets one `qsd` with
//! every field (those of `quote_set_fields` only, when the session set them) and
//! `quote_completed`; then, at each live tick, a `qsd` with only the fields that changed. A symbol
//! the feed does not know gets a `qsd` with status `error` and nothing more.
//!
//! Prices come from the symbol's `1D` live series, which a quote follows: `lp` is its last close,
//! `ch`/`chp` the change from the close before, `volume` the day's volume, so quotes agree with
//! daily history.
//!
//! Calls on a quote session that was not created get
//! `critical_error ["unknown quote session", <method>]`; beyond the bounds below,
//! `critical_error ["too many quote sessions" | "too many symbols", <method>]`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chartgate_protocol::client::{ClientMessage, SymbolSpec};
use chartgate_protocol::{QuoteFields, SymbolInfo};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::Connection;
use super::symbols::symbol_info;
use super::updates::{Follow, Gauge};
use crate::bars::{SimResolution, round2};
use crate::live::{DailyState, LiveMap};
use crate::stable_hash;
use crate::state::SimState;
use crate::wire::{encode_quote_completed, encode_quote_data, quote_fields_object};

/// Bounds on what one client can make a connection hold.
const MAX_QUOTE_SESSIONS: usize = 256;
const MAX_SYMBOLS_PER_SESSION: usize = 2000;

/// One quote symbol of a session.
struct QuoteSub {
    info: SymbolInfo,
    /// The fields last sent, to send only what changed.
    last: Map<String, Value>,
    /// Follows the symbol's `1D` series, and counts in `quoteSymbols`.
    _follow: Follow,
}

#[derive(Default)]
struct QuoteSession {
    /// The fields `quote_set_fields` asked for; `None`: every field.
    fields: Option<HashSet<String>>,
    /// By the symbol's text as the client wrote it, in order so updates go out in a fixed order.
    symbols: BTreeMap<String, QuoteSub>,
}

impl QuoteSession {
    /// `all` cut down to the fields this session asked for.
    fn filter(&self, mut all: Map<String, Value>) -> Map<String, Value> {
        if let Some(fields) = &self.fields {
            all.retain(|name, _| fields.contains(name));
        }
        all
    }
}

/// One connection's quote sessions, by id.
#[derive(Default)]
pub(super) struct QuoteSessions {
    sessions: HashMap<String, QuoteSession>,
}

/// The tick's clock: grid origin, now, tick, simulated milliseconds per tick.
pub(super) type TickClock = (Instant, Instant, Duration, i64);

/// Every field a quote of `info` has now.
fn quote_fields(info: &SymbolInfo, day: &DailyState, update_mode: &str) -> QuoteFields {
    let lp = day.last.close;
    let ch = round2(lp - day.prev_close);
    let spread = round2(lp * 0.0005).max(0.01);
    // Sizes at the touch change from one move to the next, as on a real book.
    let sizes = stable_hash((&info.full_name, day.time));
    QuoteFields {
        lp: Some(lp),
        lp_time: Some(day.time),
        ch: Some(ch),
        chp: Some(if day.prev_close > 0.0 {
            round2(ch / day.prev_close * 100.0)
        } else {
            0.0
        }),
        volume: day.last.volume,
        bid: Some(round2(lp - spread).max(0.01)),
        ask: Some(round2(lp + spread)),
        bid_size: Some((sizes % 50 + 1) as f64),
        ask_size: Some((sizes / 50 % 50 + 1) as f64),
        open_price: Some(day.last.open),
        high_price: Some(day.last.high),
        low_price: Some(day.last.low),
        prev_close_price: Some(day.prev_close),
        description: Some(info.description.clone()),
        short_name: Some(info.name.clone()),
        pro_name: Some(info.full_name.clone()),
        original_name: Some(info.full_name.clone()),
        exchange: Some(info.exchange.clone()),
        listed_exchange: Some(info.exchange.clone()),
        currency_code: Some(info.currency_code.clone()),
        currency_id: Some(info.currency_code.clone()),
        kind: Some(info.kind.clone()),
        pricescale: Some(info.pricescale),
        minmov: Some(info.minmov),
        fractional: Some(false),
        update_mode: Some(update_mode.to_string()),
        current_session: Some("market".into()),
    }
}

/// The fields of `now` that differ from `last`.
fn changed(now: &Map<String, Value>, last: &Map<String, Value>) -> Map<String, Value> {
    now.iter()
        .filter(|(name, value)| last.get(*name) != Some(value))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

impl QuoteSessions {
    /// Moves every quoted symbol's daily series on and writes a `qsd` of what changed for each;
    /// gives whether any symbol is quoted here.
    pub fn on_tick(
        &mut self,
        live: &mut LiveMap,
        state: &SimState,
        (epoch, now, tick, sim_ms): TickClock,
        update_mode: &str,
        payloads: &mut Vec<String>,
    ) -> bool {
        let mut any = false;
        for (session_id, session) in &mut self.sessions {
            let mut updates = Vec::new();
            for (key, sub) in &session.symbols {
                any = true;
                let series = (sub.info.full_name.clone(), SimResolution::Days(1));
                live.advance(&series, epoch, now, tick, sim_ms);
                let day = live.daily(&state.bars, &sub.info.full_name);
                let all = quote_fields_object(&quote_fields(&sub.info, &day, update_mode));
                let now_fields = session.filter(all);
                let delta = changed(&now_fields, &sub.last);
                if !delta.is_empty() {
                    payloads.push(encode_quote_data(session_id, key, "ok", &delta));
                    updates.push((key.clone(), now_fields));
                }
            }
            for (key, fields) in updates {
                if let Some(sub) = session.symbols.get_mut(&key) {
                    sub.last = fields;
                }
            }
        }
        any
    }
}

impl Connection {
    /// A quote call: answered at once, its packets in one message.
    pub(super) async fn quote_call(&mut self, call: &ClientMessage) {
        let method = call.name();
        let mut payloads = Vec::new();
        let result = match call {
            ClientMessage::QuoteCreateSession { session } => self.quotes.create(session),
            ClientMessage::QuoteDeleteSession { session } => {
                self.quotes.sessions.remove(session);
                Ok(())
            }
            ClientMessage::QuoteSetFields { session, fields } => {
                self.quotes.session(session).map(|qs| {
                    qs.fields = Some(fields.iter().cloned().collect());
                })
            }
            ClientMessage::QuoteAddSymbols { session, symbols } => {
                self.add_quote_symbols(session, symbols, false, &mut payloads)
            }
            ClientMessage::QuoteFastSymbols { session, symbols } => {
                self.add_quote_symbols(session, symbols, true, &mut payloads)
            }
            ClientMessage::QuoteRemoveSymbols { session, symbols } => {
                self.quotes.session(session).map(|qs| {
                    for symbol in symbols {
                        qs.symbols.remove(symbol);
                    }
                })
            }
            _ => Ok(()),
        };
        // What was answered before a refusal still goes out, first.
        self.send_updates(&payloads).await;
        if let Err(why) = result {
            self.out.critical_error(why, method).await;
        }
    }

    /// `quote_add_symbols` (and `quote_fast_symbols`, which adds only symbols not added yet):
    /// a full `qsd` and `quote_completed` for each symbol, or a `qsd` with status `error`.
    fn add_quote_symbols(
        &mut self,
        session: &str,
        symbols: &[String],
        only_new: bool,
        payloads: &mut Vec<String>,
    ) -> Result<(), &'static str> {
        let state = self.state.clone();
        let faults = state.faults();
        let update_mode = self.auth.status();
        let qs = self.quotes.session(session)?;
        for key in symbols {
            if only_new && qs.symbols.contains_key(key) {
                continue;
            }
            let info = SymbolSpec::parse(key).and_then(|spec| {
                let symbol = spec.symbol.trim().to_ascii_uppercase();
                let volumeless = state.bars.is_volumeless(&symbol);
                symbol_info(&symbol, &faults, volumeless)
            });
            let Some(info) = info else {
                qs.symbols.remove(key);
                payloads.push(encode_quote_data(session, key, "error", &Map::new()));
                continue;
            };
            if !qs.symbols.contains_key(key) && qs.symbols.len() >= MAX_SYMBOLS_PER_SESSION {
                return Err("too many symbols");
            }
            let sub = match qs.symbols.remove(key) {
                // Added again: the same subscription, sent in full again.
                Some(sub) => sub,
                None => new_sub(&state, info),
            };
            let day = state.live.lock().daily(&state.bars, &sub.info.full_name);
            let all = qs.filter(quote_fields_object(&quote_fields(
                &sub.info,
                &day,
                update_mode,
            )));
            payloads.push(encode_quote_data(session, key, "ok", &all));
            payloads.push(encode_quote_completed(session, key));
            qs.symbols
                .insert(key.clone(), QuoteSub { last: all, ..sub });
        }
        if !qs.symbols.is_empty() {
            self.arm_live();
        }
        Ok(())
    }
}

fn new_sub(state: &Arc<SimState>, info: SymbolInfo) -> QuoteSub {
    let series = (info.full_name.clone(), SimResolution::Days(1));
    QuoteSub {
        info,
        last: Map::new(),
        _follow: Follow::new(state, series, Gauge::QuoteSymbols),
    }
}

impl QuoteSessions {
    /// `quote_create_session` (again for an existing one changes nothing).
    fn create(&mut self, session: &str) -> Result<(), &'static str> {
        if !self.sessions.contains_key(session) && self.sessions.len() >= MAX_QUOTE_SESSIONS {
            return Err("too many quote sessions");
        }
        self.sessions.entry(session.to_string()).or_default();
        Ok(())
    }

    fn session(&mut self, session: &str) -> Result<&mut QuoteSession, &'static str> {
        self.sessions
            .get_mut(session)
            .ok_or("unknown quote session")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chartgate_protocol::Bar;

    fn info() -> SymbolInfo {
        symbol_info("NSE:TCS", &crate::Faults::default(), false).unwrap()
    }

    fn day(close: f64, time: i64) -> DailyState {
        DailyState {
            last: Bar {
                time: 1_765_929_600,
                open: 100.0,
                high: 101.0,
                low: 99.0,
                close,
                volume: Some(1000.0),
            },
            prev_close: 98.0,
            time,
        }
    }

    #[test]
    fn a_quote_has_the_fields_clients_read_and_a_move_changes_only_some() {
        let first = quote_fields_object(&quote_fields(&info(), &day(100.5, 10), "streaming"));
        for name in crate::wire::FULL_QUOTE_FIELDS {
            assert!(first.contains_key(name), "{name}");
        }
        assert_eq!(first["lp"], 100.5);
        assert_eq!(first["ch"], 2.5);
        assert_eq!(first["chp"], 2.55);
        let moved = quote_fields_object(&quote_fields(&info(), &day(100.7, 11), "streaming"));
        let delta = changed(&moved, &first);
        assert!(delta.contains_key("lp") && delta.contains_key("lp_time"));
        assert!(!delta.contains_key("description") && !delta.contains_key("pricescale"));
        assert!(changed(&moved, &moved).is_empty());
    }
}
