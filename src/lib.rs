//! chartgate: a pool of persistent TradingView chart-feed connections behind an HTTP API that
//! streams OHLCV history for whole stock screens as Server-Sent Events.
//!
//! The public surface is what the binary, an app that embeds chartgate and its tests need:
//! [`Chartgate`] (the parts, mountable on any actix-web `App`), [`Application`] (them served on a
//! listener), the settings, the domain types, the actor core (the pool and the lease manager, usable
//! on their own), the metrics registry and the `watch` client.
//!
//! # Layout
//!
//! - [`app`]: start-up of the parts (embedded simulator, actors, cache, formula source), the HTTP
//!   server on a bound listener, graceful shutdown.
//! - [`config`]: typed settings, layered (defaults, file, environment, flags), checked key by key.
//! - [`domain`]: `Symbol`, `Resolution`, `BarCount`, `Bar`, `Chart`: parsed once, valid by
//!   construction.
//! - [`upstream`]: the actor core's feed side: one actor per WebSocket connection, the pool actor
//!   that owns them and carries out what its pure policy core decides (lazy opening, queueing,
//!   retry, backoff, token rotation), and the token provider.
//! - [`live`]: live series and quotes (`live=true`): one upstream subscription per chart, shared
//!   by every follower, conflation per follower, the cache kept as updated live.
//! - [`cluster`]: several instances as one service (`cluster.redis_url`): the Redis link's
//!   supervision, membership, the shared cache tier, single flight across instances, the upstream
//!   connection budget, one live series per chart in the cluster (owner, stream, relays).
//! - [`manager`]: the lease manager actor: refcounted leases, the idle timer that closes the pool,
//!   the periodic health check.
//! - [`telemetry`]: one Prometheus registry per running chartgate.
//! - [`watch`]: the `chartgate watch` client: reads the chart stream over SSE, resumes it with
//!   `Last-Event-ID` after a drop, and shows progress and a summary (or JSON lines).
//! - private: `http` (routes, the SSE stream and its ids, errors, the OpenAPI document, the demo
//!   page), `charts` (the cache in front of the pool, single flight), `cache`, `ready_chart` (a
//!   chart's JSON made once and shared), `formulas` (MarketInOut), `client` (outgoing awc clients
//!   with TLS), `hash` (stable hashes for stream ids), `log_duration`.
//!
//! The feed's wire format is the `chartgate-protocol` crate; the simulator is
//! `chartgate-simulator`.

#![forbid(unsafe_code)]
#![recursion_limit = "256"]

pub mod app;
mod cache;
mod charts;
mod client;
pub mod cluster;
pub mod config;
pub mod domain;
mod formulas;
mod hash;
mod http;
pub mod live;
mod log_duration;
pub mod manager;
mod ready_chart;
pub mod telemetry;
pub mod upstream;
pub mod watch;

pub use app::{Application, Chartgate};
pub use http::registered_routes;

/// The service's own encoding of charts and stream events, for chartgate's benchmark crate
/// (`crates/bench`), which measures it against plain `serde_json`. Not a stable API.
#[doc(hidden)]
pub mod bench_support {
    pub use crate::charts::ChartOutcome;
    pub use crate::formulas::Stock;
    pub use crate::http::sse::Event;
    pub use crate::http::stream::{BatchInfo, batch_event};
    pub use crate::ready_chart::ReadyChart;
}
