//! The client's calls: each incoming message decoded into packets, heartbeat echoes taken, and
//! every call (`set_auth_token`, chart sessions, `resolve_symbol`, series, quotes) checked against
//! the connection's sessions, then answered at once or handed to the schedule.
//!
//! Errors are per call (`critical_error ["invalid parameters", method]`), per symbol
//! (`symbol_error`), per series (`series_error`) or, for authentication, per connection
//! (`protocol_error`, then close). A `resolve_symbol` followed, in the same incoming message, by
//! a series call for its symbol owes its `symbol_resolved` to that series' answer, which carries
//! it; otherwise it is answered on its own at once.

use chartgate_protocol::client::{ClientDecodeError, ClientMessage, SymbolSpec};
use chartgate_protocol::clock::unix_ms;
use chartgate_protocol::{Packet, ServerMessage, decode_message};
use log::debug;

use super::Connection;
use super::answer::Job;
use super::sessions::{SeriesCall, SymbolAdded};
use super::symbols::{symbol_info, symbol_resolved_payload};
use crate::bars::SimResolution;
use crate::state::Counters;
use crate::wire::encode_message;

/// The calls after the one being handled, in the same incoming message.
type Later<'a> = &'a [Result<ClientMessage, ClientDecodeError>];

impl Connection {
    /// One incoming text message: any number of packets.
    pub(super) async fn on_text(&mut self, text: &str) {
        let packets = match decode_message(text) {
            Ok(p) => p,
            Err(e) => {
                debug!(
                    "simulator: connection {}: undecodable message: {e}",
                    self.id
                );
                return;
            }
        };
        let mut calls = Vec::with_capacity(packets.len());
        for packet in packets {
            match packet {
                Packet::Heartbeat(n) => self.heartbeats.on_echo(n, &self.state.counters),
                Packet::Json(payload) => calls.push(ClientMessage::from_payload(payload)),
            }
        }
        for i in 0..calls.len() {
            if !self.out.is_open() {
                return;
            }
            let (Some(call), Some(later)) = (calls.get(i), calls.get(i + 1..)) else {
                continue;
            };
            match call {
                Err(ClientDecodeError::NotAMessage) => {
                    debug!("simulator: connection {}: packet is not a message", self.id);
                }
                Err(ClientDecodeError::InvalidParameters { method }) => {
                    self.out.critical_error("invalid parameters", method).await;
                }
                Ok(call) => self.on_call(call, later).await,
            }
        }
    }

    async fn on_call(&mut self, call: &ClientMessage, later: Later<'_>) {
        match call {
            ClientMessage::SetAuthToken { token } => {
                if let Err(reason) = self.auth.sign_in(&self.state, token, self.id) {
                    self.out.protocol_error_and_close(reason).await;
                }
            }
            ClientMessage::ChartCreateSession { session } => {
                if let Err(why) = self.sessions.create(session) {
                    self.out.critical_error(why, call.name()).await;
                }
            }
            ClientMessage::ChartDeleteSession { session } => self.sessions.delete(session),
            ClientMessage::ResolveSymbol {
                session,
                symbol_id,
                spec,
            } => self.resolve_symbol(session, symbol_id, spec, later).await,
            ClientMessage::CreateSeries { .. } | ClientMessage::ModifySeries { .. } => {
                self.series_call(call).await;
            }
            ClientMessage::RequestMoreData {
                session,
                series_id,
                count,
            } => {
                let job = self.sessions.request_more_data(session, series_id, *count);
                self.schedule_or_refuse(job, session, series_id, "").await;
            }
            ClientMessage::RemoveSeries { session, series_id } => {
                self.sessions.remove_series(session, series_id);
            }
            ClientMessage::QuoteCreateSession { .. }
            | ClientMessage::QuoteDeleteSession { .. }
            | ClientMessage::QuoteSetFields { .. }
            | ClientMessage::QuoteAddSymbols { .. }
            | ClientMessage::QuoteFastSymbols { .. }
            | ClientMessage::QuoteRemoveSymbols { .. } => self.quote_call(call).await,
            // Locale and time zone change nothing here; studies are not simulated.
            ClientMessage::SetLocale { .. }
            | ClientMessage::SwitchTimezone { .. }
            | ClientMessage::Other { .. } => {}
        }
    }

    /// `create_series` or `modify_series`: checked ([`Connection::series_target`]), recorded
    /// in the sessions, then scheduled.
    async fn series_call(&mut self, message: &ClientMessage) {
        let Some((call, resolution)) = series_call_of(message) else {
            return;
        };
        let Some((symbol, res)) = self.series_target(call, resolution).await else {
            return;
        };
        let job = match message {
            ClientMessage::CreateSeries { count, .. } => {
                self.sessions.create_series(call, symbol, res, *count)
            }
            ClientMessage::ModifySeries { range, .. } => {
                self.sessions.modify_series(call, symbol, res, range)
            }
            _ => return,
        };
        self.schedule_or_refuse(job, call.session, call.series_id, call.turnaround)
            .await;
    }

    /// A series call the sessions took goes to the schedule; one they refused gets
    /// `series_error` with their reason.
    async fn schedule_or_refuse(
        &mut self,
        job: Result<Job, &'static str>,
        session: &str,
        series_id: &str,
        turnaround: &str,
    ) {
        match job {
            Ok(job) => self.enqueue(job).await,
            Err(why) => {
                self.out
                    .series_error(session, series_id, turnaround, why)
                    .await;
            }
        }
    }

    async fn resolve_symbol(
        &mut self,
        session: &str,
        symbol_id: &str,
        spec: &SymbolSpec,
        later: Later<'_>,
    ) {
        let symbol = spec.symbol.trim().to_ascii_uppercase();
        let info = symbol_info(
            &symbol,
            &self.state.faults(),
            self.state.bars.is_volumeless(&symbol),
        );
        let bundled = later.iter().any(|later| {
            later
                .as_ref()
                .ok()
                .and_then(series_call_of)
                .is_some_and(|(call, _)| call.session == session && call.symbol_id == symbol_id)
        });
        let payload = match self
            .sessions
            .add_symbol(session, symbol_id, symbol, info, bundled)
        {
            SymbolAdded::UnknownSession => {
                self.out
                    .symbol_error(session, symbol_id, "unknown chart session")
                    .await;
                return;
            }
            SymbolAdded::TooMany => {
                self.out
                    .critical_error("too many symbols", "resolve_symbol")
                    .await;
                return;
            }
            SymbolAdded::Invalid => {
                self.out
                    .symbol_error(session, symbol_id, "invalid symbol")
                    .await;
                return;
            }
            SymbolAdded::Resolved(info) => {
                (!bundled).then(|| symbol_resolved_payload(&self.state, session, symbol_id, info))
            }
        };
        Counters::bump(&self.state.counters.symbols_resolved);
        if let Some(payload) = payload {
            self.out.send(&[payload.as_str()]).await;
        }
    }

    /// The owed `symbol_resolved` of `symbol_id`, if any (and no longer owed).
    pub(super) fn take_pending_resolve(
        &mut self,
        session: &str,
        symbol_id: &str,
    ) -> Option<String> {
        let info = self.sessions.take_owed(session, symbol_id)?;
        Some(symbol_resolved_payload(
            &self.state,
            session,
            symbol_id,
            info,
        ))
    }

    /// Checks what create_series and modify_series share; on failure answers `series_error`
    /// (after any owed `symbol_resolved`, in the same message) and gives `None`.
    async fn series_target(
        &mut self,
        call: SeriesCall<'_>,
        resolution: &str,
    ) -> Option<(String, SimResolution)> {
        let why = match self
            .sessions
            .series_target(call.session, call.symbol_id, resolution)
        {
            Ok(target) => return Some(target),
            Err(why) => why,
        };
        let owed = self.take_pending_resolve(call.session, call.symbol_id);
        let error = encode_message(
            &ServerMessage::SeriesError {
                session: call.session.into(),
                series_id: call.series_id.into(),
                turnaround: call.turnaround.into(),
                reason: why.into(),
            },
            unix_ms(),
        );
        match owed {
            Some(owed) => self.out.send(&[owed.as_str(), error.as_str()]).await,
            None => self.out.send(&[error.as_str()]).await,
        };
        None
    }
}

/// The ids a `create_series` or `modify_series` names, and the resolution it asks for.
fn series_call_of(message: &ClientMessage) -> Option<(SeriesCall<'_>, &str)> {
    match message {
        ClientMessage::CreateSeries {
            session,
            series_id,
            turnaround,
            symbol_id,
            resolution,
            ..
        }
        | ClientMessage::ModifySeries {
            session,
            series_id,
            turnaround,
            symbol_id,
            resolution,
            ..
        } => {
            let call = SeriesCall {
                session,
                series_id,
                turnaround,
                symbol_id,
            };
            Some((call, resolution.as_str()))
        }
        _ => None,
    }
}
