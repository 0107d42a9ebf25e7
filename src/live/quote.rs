//! One symbol's live quote, shared by everyone following it: the feed's partial `qsd` updates
//! merged into the last known fields, and the followers to tell when it changes.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use chartgate_protocol::QuoteFields;
use chartgate_protocol::json::{Whole, write_number};
use serde::Serialize;
use tokio::time::Instant;

use super::LiveCounters;
use super::follower::{Followers, Inbox};
use crate::domain::Symbol;

/// The state behind the lock.
#[derive(Debug)]
pub struct QuoteState {
    /// Every field the feed has sent so far, each at its newest value.
    fields: QuoteFields,
    /// Bumped on every change; 0 while the feed has sent nothing.
    pub seq: u64,
    /// Wall-clock milliseconds of the newest change.
    pub at_ms: i64,
    /// The runtime's instant of the newest change, for the delivery latency.
    pub at: Instant,
    /// The feed answered `"s":"error"`: there is no quote to follow.
    pub failed: bool,
    /// The `data` of the `quote` event for `seq`, made once for every follower.
    json: Option<(u64, Bytes)>,
    followers: Followers,
}

/// One symbol's quote. See the module documentation.
#[derive(Debug)]
pub struct QuoteFeed {
    pub symbol: Symbol,
    state: Mutex<QuoteState>,
    counters: Arc<LiveCounters>,
}

/// The `data` of a `quote` event (SPEC 3.5): the stock's latest quote, fields the feed has not
/// given yet left out. Written by `QuoteState::event_data` (once per change, for every
/// follower); this type describes it in the API document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuoteData {
    symbol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    price: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    change: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    change_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    volume: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bid: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ask: Option<f64>,
    /// Unix seconds of the last price.
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<i64>,
}

impl QuoteFeed {
    pub fn new(symbol: Symbol, counters: Arc<LiveCounters>) -> Arc<QuoteFeed> {
        Arc::new(QuoteFeed {
            symbol,
            state: Mutex::new(QuoteState {
                fields: QuoteFields::default(),
                seq: 0,
                at_ms: 0,
                at: Instant::now(),
                failed: false,
                json: None,
                followers: Followers::default(),
            }),
            counters,
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, QuoteState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Merges a `qsd`; followers are told when a field a `quote` event carries changed.
    pub fn merge(&self, update: &QuoteFields, at_ms: i64) {
        let mut state = self.lock();
        let before = state.fields.clone();
        state.fields.merge(update);
        let shown = |f: &QuoteFields| (f.lp, f.ch, f.chp, f.volume, f.bid, f.ask, f.lp_time);
        if shown(&before) == shown(&state.fields) {
            return;
        }
        state.seq += 1;
        state.at_ms = at_ms;
        state.at = Instant::now();
        let conflated = state.followers.tell();
        self.counters.received(conflated);
    }

    /// The feed does not know the symbol.
    pub fn fail(&self) {
        let mut state = self.lock();
        state.failed = true;
        state.followers.tell();
    }

    pub fn follow(&self, inbox: Arc<Inbox>, slot: usize) {
        self.lock().followers.add(inbox, slot);
    }

    pub fn unfollow(&self, inbox: &Arc<Inbox>) {
        self.lock().followers.remove(inbox);
    }
}

impl QuoteState {
    /// The `data` of the `quote` event for the current state.
    pub fn event_data(&mut self, symbol: &Symbol) -> Bytes {
        if let Some((seq, json)) = &self.json
            && *seq == self.seq
        {
            return json.clone();
        }
        let f = &self.fields;
        let mut out = String::with_capacity(192);
        out.push_str("{\"type\":\"quote\",\"data\":{\"symbol\":");
        out.push_str(&serde_json::to_string(symbol.as_str()).unwrap_or_default());
        let numbers = [
            ("price", f.lp),
            ("change", f.ch),
            ("changePercent", f.chp),
            ("volume", f.volume),
            ("bid", f.bid),
            ("ask", f.ask),
        ];
        for (name, value) in numbers {
            if let Some(value) = value {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                write_number(&mut out, value, Whole::Plain);
            }
        }
        if let Some(time) = f.lp_time {
            out.push_str(",\"time\":");
            out.push_str(itoa::Buffer::new().format(time));
        }
        out.push_str("}}");
        let json = Bytes::from(out);
        self.json = Some((self.seq, json.clone()));
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_updates_merge_and_only_shown_fields_count() {
        let counters = Arc::new(LiveCounters::new(&crate::telemetry::Metrics::new()));
        let feed = QuoteFeed::new("NSE:TCS".parse().unwrap(), counters);
        let full = QuoteFields {
            lp: Some(10.5),
            ch: Some(0.5),
            description: Some("Tata".into()),
            ..QuoteFields::default()
        };
        feed.merge(&full, 1);
        let only_name = QuoteFields {
            description: Some("Tata Consultancy".into()),
            ..QuoteFields::default()
        };
        feed.merge(&only_name, 2);
        let price = QuoteFields {
            lp: Some(10.75),
            ..QuoteFields::default()
        };
        feed.merge(&price, 3);
        let mut state = feed.lock();
        assert_eq!((state.seq, state.at_ms), (2, 3));
        let data = state.event_data(&feed.symbol);
        assert_eq!(
            std::str::from_utf8(&data).unwrap(),
            r#"{"type":"quote","data":{"symbol":"NSE:TCS","price":10.75,"change":0.5}}"#
        );
    }
}
