//! The simulator's settings: what it serves (heartbeat interval, screens, volumeless symbols) and
//! the faults it injects, read from the `simulator.*` keys of chartgate's configuration and, for
//! faults, changed at run time by `POST /sim/faults`.

use std::net::SocketAddr;

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
                ..Faults::default()
            },
        }
    }
}
