//! The simulator's settings: what it serves (heartbeat interval, screens, volumeless symbols) and
//! the faults it injects, read from the `simulator.*` keys of chartgate's configuration and, for
//! faults, changed at run time by `POST /sim/faults`. The pace of live data (`tick_ms`,
//! `time_scale`) is set with the faults, so a test or a benchmark can speed it up at run time.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The demo screens: formula id, name, MarketInOut key and number of stocks. chartgate's default
/// configuration lists them as its formulas, so it runs on the simulator out of the box.
pub const DEMO_FORMULAS: [(&str, &str, &str, usize); 3] = [
    ("breakouts", "52-week breakouts", "a1b2c3d4e5f60718", 20),
    ("momentum", "Momentum leaders", "0f1e2d3c4b5a6978", 60),
    (
        "largecaps",
        "Large caps above 200-day average",
        "9a8b7c6d5e4f3021",
        150,
    ),
];

/// The size of one simulated screen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimFormula {
    pub key: String,
    pub stocks: usize,
}

/// Faults the simulator injects; set at start from `simulator.*` and at run time by
/// `POST /sim/faults`. Zero (or empty) means off.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Delay before each series answer.
    pub latency_ms: u64,
    /// Delay before the WebSocket upgrade is answered.
    pub connect_latency_ms: u64,
    /// Series one connection works on at once; further requests wait their turn. 0: no bound.
    pub series_concurrency: usize,
    /// Close a connection abruptly after it has sent this many messages.
    pub drop_after_messages: u64,
    /// Stop sending anything (heartbeats included) after this many messages.
    pub stall_after_messages: u64,
    /// Answer the upgrade with this HTTP status (e.g. 429, 503).
    pub reject_upgrades: u16,
    /// Every Nth packet is garbage.
    pub malformed_every: u64,
    /// Open connections allowed per token; beyond it, reject.
    pub max_connections: usize,
    /// Lifetime of issued JWTs (0: the simulator's default of one hour).
    pub token_ttl_secs: u64,
    /// Symbols that answer `symbol_error`.
    pub unknown_symbols: Vec<String>,
    /// Interval of live updates (`du` for live series, `qsd` for quotes), in milliseconds
    /// (0: the default of 1000).
    pub tick_ms: u64,
    /// Simulated time that passes for live series per unit of real time (0: the default of 1,
    /// real time). With 600, a 1-minute series begins a new bar every 100 ms.
    pub time_scale: u64,
}

/// Live updates when `tick_ms` is 0.
const DEFAULT_TICK: Duration = Duration::from_millis(1000);

impl Faults {
    /// The interval of live updates.
    pub fn live_tick(&self) -> Duration {
        if self.tick_ms == 0 {
            DEFAULT_TICK
        } else {
            Duration::from_millis(self.tick_ms)
        }
    }

    /// Simulated milliseconds that one tick moves live series by: `tick_ms` × `time_scale`.
    pub fn simulated_ms_per_tick(&self) -> i64 {
        let tick = u64::try_from(self.live_tick().as_millis()).unwrap_or(u64::MAX);
        let scaled = tick.saturating_mul(self.time_scale.max(1));
        i64::try_from(scaled).unwrap_or(i64::MAX)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SimulatorSettings {
    /// Address of `chartgate simulate` (embedded mode picks a free loopback port instead).
    pub bind: SocketAddr,
    /// Interval of `~h~` heartbeats; clients that do not echo within two are closed.
    pub heartbeat_secs: u64,
    /// Symbols whose bars carry no volume (index-like).
    pub volumeless: Vec<String>,
    /// Screens and their sizes; other well-formed keys get `default_formula_stocks`.
    pub formulas: Vec<SimFormula>,
    pub default_formula_stocks: usize,
    #[serde(flatten)]
    pub faults: Faults,
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        SimulatorSettings {
            bind: SocketAddr::from(([127, 0, 0, 1], 8090)),
            heartbeat_secs: 10,
            volumeless: vec![
                "NSE:NIFTY".into(),
                "NSE:BANKNIFTY".into(),
                "NSE:CNX500".into(),
            ],
            formulas: DEMO_FORMULAS
                .iter()
                .map(|(_, _, key, stocks)| SimFormula {
                    key: (*key).into(),
                    stocks: *stocks,
                })
                .collect(),
            default_formula_stocks: 40,
            faults: Faults {
                token_ttl_secs: 3600,
                tick_ms: 1000,
                time_scale: 1,
                ..Faults::default()
            },
        }
    }
}
