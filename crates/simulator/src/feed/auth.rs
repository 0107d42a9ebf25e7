//! Authentication: `set_auth_token` checked against the JWTs this simulator issued, and the
//! per-token connection slot that the `max_connections` fault limits.
//!
//! How a connection authenticated decides the `series_completed` status of its answers:
//! `streaming` for a signed-in token, `delayed_streaming_900` for `unauthorized_user_token` or
//! no token at all. A bad or expired token ends the connection (`protocol_error`, then a close).

use std::sync::Arc;

use log::info;

use crate::stable_hash;
use crate::state::{Counters, SimState, TokenSlot};
use crate::tokens;
use chartgate_protocol::clock::unix_secs;

/// The token a browser sends when nobody is signed in: accepted, with delayed data.
pub const UNAUTHORIZED_TOKEN: &str = "unauthorized_user_token";
/// `series_completed` status for signed-in users.
pub const STATUS_STREAMING: &str = "streaming";
/// `series_completed` status for `unauthorized_user_token` (data 15 minutes late).
pub const STATUS_DELAYED: &str = "delayed_streaming_900";

/// How the connection authenticated.
pub(super) enum Auth {
    /// No `set_auth_token` yet: chart calls are served as unauthorised (delayed), and the
    /// connection counts against no token.
    None,
    /// `unauthorized_user_token`. Holds that token's connection slot until the connection ends.
    Delayed { _slot: TokenSlot },
    /// A valid token from this simulator. Holds its connection slot until the connection ends.
    Streaming { _slot: TokenSlot },
}

impl Auth {
    /// The `series_completed` status of this connection's answers.
    pub fn status(&self) -> &'static str {
        match self {
            Auth::Streaming { .. } => STATUS_STREAMING,
            Auth::Delayed { .. } | Auth::None => STATUS_DELAYED,
        }
    }

    /// `set_auth_token`: checks `token` and takes a connection slot for it. On refusal gives the
    /// `protocol_error` reason, and the connection is to be closed.
    pub fn sign_in(
        &mut self,
        state: &Arc<SimState>,
        token: &str,
        connection: u64,
    ) -> Result<(), &'static str> {
        let streaming = if token == UNAUTHORIZED_TOKEN {
            false
        } else {
            match tokens::verify(token, &state.token_key, unix_secs()) {
                Ok(_) => true,
                Err(e) => {
                    Counters::bump(&state.counters.handshakes_rejected);
                    info!("simulator: connection {connection} refused: {e} (token not shown)");
                    return Err("bad auth token");
                }
            }
        };
        // A new token replaces the old one: give its slot back first.
        *self = Auth::None;
        let limit = state.faults().max_connections;
        let Some(slot) = state.acquire_token_slot(stable_hash(token), limit) else {
            Counters::bump(&state.counters.handshakes_rejected);
            info!(
                "simulator: connection {connection} refused: token already has {limit} connections (max_connections fault)"
            );
            return Err("max sessions rate exceeded");
        };
        *self = if streaming {
            Auth::Streaming { _slot: slot }
        } else {
            Auth::Delayed { _slot: slot }
        };
        Ok(())
    }
}
