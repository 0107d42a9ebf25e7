//! TradingView's chart WebSocket protocol, as pure code: bytes in, typed messages out, and back.
//! No I/O, no actors, no runtime: anyone who speaks the feed's protocol can use it.
//!
//! # Layout
//!
//! - [`framing`]: the `~m~<len>~m~<payload>` packets that a WebSocket text message carries, and
//!   `~h~<n>` heartbeats.
//! - [`client`]: the messages a client (chartgate, a browser) sends, typed, encoded as ASCII-only
//!   JSON, and decoded again (a server reads them).
//! - [`server`]: the messages the feed answers with, decoded by borrowing from the message text,
//!   including bar extraction from `timescale_update` and `du` (with a fast path for the feed's
//!   own way of writing them) and quotes (`qsd` as partial [`QuoteFields`], `quote_completed`).
//! - [`json`]: the ASCII-only JSON writer both directions share, and the one number writer.
//! - [`clock`]: wall-clock Unix time, in which the feed stamps messages and tokens expire.
//! - [`token`]: the claims of the feed's JSON Web Tokens (`exp`, `max_connections`).
//!
//! The capture of a real session in the repository's `tests/fixtures` checks that this is the
//! real feed's format (`tests/capture.rs`).

#![forbid(unsafe_code)]

pub mod client;
pub mod clock;
pub mod framing;
pub mod json;
mod series_scan;
pub mod server;
pub mod token;

pub use client::ClientMessage;
pub use framing::{FrameError, Packet, decode_message, encode_heartbeat, encode_packet};
pub use server::{Bar, IndexedBar, QuoteFields, ServerError, ServerMessage, SymbolInfo};
