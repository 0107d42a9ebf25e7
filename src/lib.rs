//! chartgate: a pool of persistent TradingView chart-feed connections behind an HTTP API that
//! streams OHLCV history for whole stock screens as Server-Sent Events.
//!
//! # Layout
//!
//! - [`config`]: typed settings, layered (defaults, file, environment, flags), checked key by key.
//! - [`domain`]: `Symbol`, `Resolution`, `BarCount`, `Bar`, `Chart`: parsed once, valid by
//!   construction.
//! - [`client`]: outgoing awc clients with TLS (rustls, ring, webpki roots), set up one way.
//! - [`upstream`]: the actor core's feed side: one actor per WebSocket connection, the pool actor
//!   that owns them and carries out what its pure policy core decides (lazy opening, queueing,
//!   retry, backoff, token rotation), and the token provider.
//! - [`manager`]: the lease manager actor: refcounted leases, the idle timer that closes the pool,
//!   the periodic health check.
//! - [`log_duration`]: durations as log lines print them (`38 ms`, `2.4 s`).
//! - [`watch`]: the `chartgate watch` client: reads the chart stream over SSE, resumes it with
//!   `Last-Event-ID` after a drop, and shows progress and a summary (or JSON lines).

#![forbid(unsafe_code)]
#![recursion_limit = "256"]

pub mod app;
pub mod cache;
pub mod charts;
pub mod client;
pub mod config;
pub mod domain;
pub mod formulas;
pub mod hash;
pub mod http;
pub mod log_duration;
pub mod manager;
pub mod ready_chart;
pub mod telemetry;
pub mod upstream;
pub mod watch;

pub use app::{Application, Chartgate};
