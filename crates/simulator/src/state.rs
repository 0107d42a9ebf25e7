//! State shared by every connection and route of one simulator: the current faults, the counters
//! behind `GET /sim/stats`, the token key, the per-token connection count that the
//! `max_connections` fault limits, the simulator's bars (its volumeless symbols and cache) and
//! its live series.
//! Nothing here is process-global: two simulators in one process share nothing.
//!
//! Faults are read at the moment they matter (an upgrade, a send, a series answer), so
//! `POST /sim/faults` changes the behaviour of connections that are already open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde::Serialize;

use crate::bars::Bars;
use crate::live::Live;
use crate::settings::{Faults, SimulatorSettings};
use crate::wire::symbol_resolved_object;
use chartgate_protocol::SymbolInfo;
use chartgate_protocol::json::to_ascii_string;

/// What the simulator has done so far, as `GET /sim/stats` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimStats {
    /// Feed WebSockets open now: a test checks this returns to 0 (no leak).
    pub connections_open: u64,
    /// Feed WebSockets accepted since start: shows whether connections were reused.
    pub connections_total: u64,
    /// Upgrades refused (`reject_upgrades`) and authentications refused (bad token,
    /// `max_connections`).
    pub handshakes_rejected: u64,
    /// `create_series`/`modify_series` answered with bars: shows whether fetches were shared.
    pub series_served: u64,
    /// `symbol_resolved` answers.
    pub symbols_resolved: u64,
    /// `~h~` heartbeats written to clients.
    pub heartbeats_sent: u64,
    /// Heartbeat echoes received from clients.
    pub heartbeats_echoed: u64,
    /// JWTs issued by `GET /chart/`.
    pub tokens_issued: u64,
    /// Series subscribed live now (answered, and not removed, modified or deleted since), on
    /// every connection: shows whether live series were shared, and returns to 0 when they end.
    pub live_series: u64,
    /// Quote symbols subscribed now (per quote session and symbol key), on every connection.
    pub quote_symbols: u64,
    /// Live update packets written since start: every `du` of a live series and every `qsd`.
    pub updates_sent: u64,
}

/// Lock-free counters behind [`SimStats`]; every field is bumped from any worker thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub handshakes_rejected: AtomicU64,
    pub series_served: AtomicU64,
    pub symbols_resolved: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_echoed: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub live_series: AtomicU64,
    pub quote_symbols: AtomicU64,
    pub updates_sent: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes one off a gauge (never below 0).
    pub fn drop_one(counter: &AtomicU64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    fn snapshot(&self) -> SimStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStats {
            connections_open: get(&self.connections_open),
            connections_total: get(&self.connections_total),
            handshakes_rejected: get(&self.handshakes_rejected),
            series_served: get(&self.series_served),
            symbols_resolved: get(&self.symbols_resolved),
            heartbeats_sent: get(&self.heartbeats_sent),
            heartbeats_echoed: get(&self.heartbeats_echoed),
            tokens_issued: get(&self.tokens_issued),
            live_series: get(&self.live_series),
            quote_symbols: get(&self.quote_symbols),
            updates_sent: get(&self.updates_sent),
        }
    }
}

/// Everything one simulator instance shares between its workers.
#[derive(Debug)]
pub(crate) struct SimState {
    /// Replaced whole by `POST /sim/faults`; readers clone the `Arc` and never hold the lock.
    faults: RwLock<Arc<Faults>>,
    pub counters: Counters,
    /// Checksum key of the JWTs this instance issues: random per instance, so a token from
    /// another simulator (or a forged one) is refused.
    pub token_key: [u8; 16],
    /// Open authenticated connections per token (keyed by a hash of the token, so tokens are not
    /// kept around), for the `max_connections` fault.
    token_connections: Mutex<HashMap<u64, usize>>,
    /// Encoded `symbol_resolved` objects by (full name, kind): about 2 KB each and the same in
    /// every answer about a symbol, so answering a chart does not rebuild one; at most
    /// [`SYMBOL_OBJECTS_MAX`] of them.
    symbol_objects: moka::sync::Cache<(String, String), Arc<str>>,
    /// Interval of `~h~` heartbeats.
    pub heartbeat: Duration,
    /// The volumeless symbols and the generated series of this simulator.
    pub bars: Bars,
    /// What has happened to series since their history: one state per (symbol, resolution),
    /// shared by every connection, so history answers and live updates agree.
    pub live: Live,
    /// Screen sizes by key (lower-case hex).
    pub formulas: HashMap<String, usize>,
    pub default_formula_stocks: usize,
    /// Numbers connections for logs and hello session ids.
    pub next_connection: AtomicU64,
}

/// Bound of [`SimState::symbol_object`]'s cache.
const SYMBOL_OBJECTS_MAX: u64 = 16_384;

impl SimState {
    /// The encoded `symbol_resolved` object for `info`, made once per symbol and kind.
    pub fn symbol_object(&self, info: &SymbolInfo) -> Arc<str> {
        let key = (info.full_name.clone(), info.kind.clone());
        self.symbol_objects.get_with(key, || {
            to_ascii_string(&symbol_resolved_object(info)).into()
        })
    }

    pub fn new(settings: &SimulatorSettings) -> SimState {
        SimState {
            faults: RwLock::new(Arc::new(settings.faults.clone())),
            counters: Counters::default(),
            token_key: rand::random(),
            token_connections: Mutex::new(HashMap::new()),
            symbol_objects: moka::sync::Cache::new(SYMBOL_OBJECTS_MAX),
            heartbeat: Duration::from_secs(settings.heartbeat_secs.max(1)),
            bars: Bars::new(&settings.volumeless),
            live: Live::default(),
            formulas: settings
                .formulas
                .iter()
                .map(|f| (f.key.to_ascii_lowercase(), f.stocks))
                .collect(),
            default_formula_stocks: settings.default_formula_stocks,
            next_connection: AtomicU64::new(1),
        }
    }

    /// The faults in force now.
    pub fn faults(&self) -> Arc<Faults> {
        match self.faults.read() {
            Ok(f) => f.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        let faults = Arc::new(faults);
        match self.faults.write() {
            Ok(mut f) => *f = faults,
            Err(poisoned) => *poisoned.into_inner() = faults,
        }
    }

    pub fn stats(&self) -> SimStats {
        self.counters.snapshot()
    }

    /// Takes one connection slot for the token hashed as `key`, unless `limit` (> 0) slots are
    /// taken already. The slot is given back when the returned guard drops.
    pub fn acquire_token_slot(self: &Arc<Self>, key: u64, limit: usize) -> Option<TokenSlot> {
        let mut map = self.token_connections();
        let open = map.entry(key).or_insert(0);
        if limit > 0 && *open >= limit {
            return None;
        }
        *open += 1;
        Some(TokenSlot {
            state: self.clone(),
            key,
        })
    }

    /// The per-token counts; a panic elsewhere while holding them leaves them usable.
    fn token_connections(&self) -> MutexGuard<'_, HashMap<u64, usize>> {
        self.token_connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn release_token_slot(&self, key: u64) {
        let mut map = self.token_connections();
        if let Some(open) = map.get_mut(&key) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&key);
            }
        }
    }
}

/// One open connection's claim on its token's `max_connections` budget.
#[derive(Debug)]
pub(crate) struct TokenSlot {
    state: Arc<SimState>,
    key: u64,
}

impl Drop for TokenSlot {
    fn drop(&mut self) {
        self.state.release_token_slot(self.key);
    }
}

/// Counts a connection as open for as long as it lives, whichever way it ends.
#[derive(Debug)]
pub(crate) struct OpenConnection {
    state: Arc<SimState>,
}

impl OpenConnection {
    pub fn new(state: Arc<SimState>) -> OpenConnection {
        Counters::bump(&state.counters.connections_total);
        Counters::bump(&state.counters.connections_open);
        OpenConnection { state }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        Counters::drop_one(&self.state.counters.connections_open);
    }
}
