//! The upstream side: persistent WebSocket connections to the chart feed, the pool that owns them,
//! and the provider of the auth token they present.
//!
//! - [`connection`]: one actor per WebSocket. Handshake, auth, heartbeat echo, one chart session
//!   per fetch, per-fetch timeouts. It reports to the pool and never decides policy.
//! - [`pool`]: the actor the rest of the crate talks to ([`FetchChart`], [`SubscribeLive`],
//!   [`UnsubscribeLive`], [`KeepWarm`], [`CloseAll`], [`GetPoolStats`]). It owns the connections, timers and token fetches and
//!   carries out what its policy core decides: lazy opening, least-loaded dispatch, a bounded FIFO
//!   queue, retry-once, stale replacement, reconnect backoff, token rotation.
//! - [`backoff`]: the reconnect schedule (exponential, jittered, bounded).
//! - [`token`]: where the JWT comes from (fixed, fetched with session cookies, or anonymous).
//!
//! The public messages and error type live here so that callers (the HTTP layer, the manager)
//! depend on this module's surface rather than on the actors' internals.

pub mod backoff;
pub mod connection;
pub mod pool;
pub mod token;

use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

use crate::config::Settings;
use crate::domain::{BarCount, Resolution, Symbol};
use crate::live::{LiveId, LiveTarget};
use crate::ready_chart::ReadyChart;

pub use pool::Pool;

/// Where the pool connects: the feed WebSocket and the page that hands out tokens. Separate from
/// [`Settings`] because embedded mode points both at a simulator whose port is known only at run
/// time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// `ws://` or `wss://` URL of the chart feed.
    pub feed_url: String,
    /// `http(s)://` URL whose HTML holds `"auth_token":"<jwt>"`.
    pub token_url: String,
}

impl UpstreamTarget {
    /// The target as configured (`upstream.url`, `upstream.token_url`), for `remote` mode.
    pub fn from_settings(settings: &Settings) -> Self {
        UpstreamTarget {
            feed_url: settings.upstream.url.clone(),
            token_url: settings.upstream.token_url.clone(),
        }
    }
}

/// Fetch one chart through the pool. The answer comes when the chart is complete or has failed;
/// the pool never leaves it hanging (queue overflow, `down`, timeouts and lost connections all
/// answer with an error). A chart comes ready to serve, its default JSON written on the
/// connection's thread ([`ReadyChart::prepared`]).
///
/// Dropping the future of `pool.send(FetchChart)` says the answer is no longer wanted: the pool
/// watches the reply channel, so a queued fetch leaves the queue and one in flight is aborted
/// upstream (its chart session deleted) as soon as its requester goes away.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Arc<ReadyChart>, FetchError>")]
pub struct FetchChart {
    pub symbol: Symbol,
    pub resolution: Resolution,
    pub bars: BarCount,
}

impl FetchChart {
    pub fn new(symbol: Symbol, resolution: Resolution, bars: BarCount) -> Self {
        FetchChart {
            symbol,
            resolution,
            bars,
        }
    }
}

/// Why a chart fetch failed. Messages never contain a token or cookie.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The feed's `symbol_error`.
    #[error("unknown symbol {0}")]
    UnknownSymbol(String),
    /// The feed's `series_error` (e.g. a resolution the symbol does not have).
    #[error("the feed could not build the series: {0}")]
    SeriesError(String),
    /// The feed's `critical_error` for this fetch's chart session.
    #[error("the feed refused the request parameters: {0}")]
    InvalidParameters(String),
    /// No `series_completed` within `upstream.request_timeout_ms`.
    #[error("the chart feed did not answer in time")]
    Timeout,
    /// No connection could be made (after the reconnect attempts), or the pool is shut down.
    #[error("the chart feed is unavailable: {0}")]
    Unavailable(String),
    /// `pool.max_queue` fetches are already waiting.
    #[error("too many chart fetches are waiting; try again shortly")]
    QueueFull,
    /// The connection carrying the fetch was lost, and so was the one it was retried on.
    #[error("the connection to the chart feed was lost")]
    ConnectionLost,
}

impl FetchError {
    /// The machine code the HTTP API reports.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::UnknownSymbol(_) => "unknown_symbol",
            FetchError::SeriesError(_) => "series_error",
            FetchError::InvalidParameters(_) => "invalid_parameters",
            FetchError::Timeout => "upstream_timeout",
            FetchError::Unavailable(_) => "upstream_unavailable",
            FetchError::QueueFull => "queue_full",
            FetchError::ConnectionLost => "connection_lost",
        }
    }
}

/// A lease exists: keep connections open, and have at least one ready so the first fetch does not
/// pay for a handshake. Also ends a `down` episode so the next fetch tries again.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct KeepWarm;

/// No lease is left (idle timeout) or force-cleanup: close every connection. Fetches still in
/// flight fail with `connection_lost`; queued ones with `upstream_unavailable`. Answers with the
/// number of connections closed.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "usize")]
pub struct CloseAll;

/// Subscribe a live series or quote symbol (see [`crate::live`]): the pool places it on a
/// connection, keeps it subscribed through connection losses and token rotations, and the
/// connection writes the feed's updates into the target's feed.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct SubscribeLive {
    pub live: LiveId,
    pub target: LiveTarget,
}

/// Unsubscribe it upstream (`remove_series` / `quote_remove_symbols`).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct UnsubscribeLive {
    pub live: LiveId,
}

/// A snapshot of the pool for `/api/connections/stats` and the manager's health check.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "PoolStats")]
pub struct GetPoolStats;

/// The pool as `/api/connections/stats` shows it (`pool` object of SPEC 3.4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, MessageResponse, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStats {
    /// Connections that are open (authenticated or draining), not counting ones still connecting.
    pub open_connections: usize,
    pub in_flight: usize,
    pub queued: usize,
    pub served_total: u64,
    pub connections: Vec<ConnectionStats>,
    /// Failed connection attempts in the current failure episode (0 when connections succeed).
    /// Reported at the manager's top level, so not repeated in the `pool` object.
    #[serde(skip)]
    pub reconnect_attempts: u32,
    /// Every reconnect attempt of the episode failed; fetches fail fast until a new one starts.
    #[serde(skip)]
    pub down: bool,
    /// Live subscriptions waiting for a connection (followers get no updates meanwhile).
    #[serde(skip)]
    pub live_waiting: usize,
    /// The current token's `max_connections` claim, when it has one (the cluster's budget
    /// defaults to it).
    #[serde(skip)]
    pub token_max_connections: Option<usize>,
}

/// One connection in [`PoolStats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStats {
    pub id: u64,
    /// `connecting`, `ready`, `draining` (finishing its fetches before a token rotation closes it).
    pub state: &'static str,
    pub in_flight: usize,
    pub served: u64,
    pub age_secs: u64,
    /// Seconds since the last message from upstream (heartbeats included).
    pub last_upstream_secs: u64,
    /// Live series and quote symbols it carries.
    pub live: usize,
}
