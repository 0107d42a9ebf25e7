//! TradingView's chart WebSocket protocol, as pure code: no I/O, no actors.
//!
//! - [`framing`]: the `~m~<len>~m~<payload>` packets that a WebSocket text message carries, and
//!   `~h~<n>` heartbeats.
//! - [`client`]: the messages chartgate (and a browser) sends, typed, encoded as ASCII-only JSON.
//! - [`server`]: the messages the feed answers with, decoded by borrowing from the message text,
//!   including bar extraction from `timescale_update` and `du`.
//! - [`json`]: the ASCII-only JSON writer both directions share.
//!
//! Both the upstream connection actor and the simulator speak through this module, so the two
//! sides of every test agree on the wire format by construction, and the capture in
//! `tests/fixtures` checks that this agreement is the real feed's format.

pub mod client;
pub mod framing;
pub mod json;
mod series_scan;
pub mod server;

pub use client::ClientMessage;
pub use framing::{FrameError, Packet, decode_message, encode_heartbeat, encode_packet};
pub use server::{ServerError, ServerMessage};
