//! The fake chart feed: `GET /socket.io/websocket`, a WebSocket (actix-ws) speaking TradingView's
//! chart protocol as in the capture.
//!
//! One task per connection owns all of its state (chart sessions, series, heartbeats, the queue
//! of series waiting for a `series_concurrency` slot) and selects over three things: the client's
//! messages, the heartbeat timer, and series whose `latency_ms` has elapsed. Owning the state in
//! one task means no locks and a deterministic order of answers.
//!
//! Wire behaviour worth knowing:
//! - The hello goes first; `~h~N` heartbeats follow every `heartbeat_secs`; a client that has not
//!   echoed a heartbeat within two intervals is closed.
//! - A series answer is ONE message: `series_loading`, `symbol_resolved` (when the
//!   `resolve_symbol` for it came in the same incoming message), `timescale_update`,
//!   `series_completed`. A `resolve_symbol` with no `create_series`/`modify_series` for its
//!   symbol later in the same incoming message is answered on its own at once.
//! - Every chart session answers only for itself; errors are per series (`series_error`), per
//!   symbol (`symbol_error`), per call (`critical_error ["invalid parameters", method]`) or, for
//!   authentication, per connection (`protocol_error`, then close).
//! - Faults are read when they act, so `POST /sim/faults` reaches open connections.
//! - `request_more_data` is answered `series_loading`, `timescale_update` (older bars, negative
//!   indices), `series_completed`; a `modify_series` to the same symbol and resolution with
//!   `series_loading`, two `series_timeframe`, `series_completed` (as in the capture), and to
//!   another symbol or resolution with fresh bars like `create_series`.
//!
//! Texts clients may match on:
//! - `symbol_error` reasons: `invalid symbol`, `unknown chart session`.
//! - `series_error` reasons: `invalid resolution`, `unknown symbol`, `invalid symbol`,
//!   `unknown chart session`, `unknown series`, `invalid bar count`, `too many series`,
//!   `too many requests`.
//! - `critical_error`: `["invalid parameters", <method>]`; also `too many chart sessions` and
//!   `too many symbols` when a client exceeds this task's bounds.
//! - `protocol_error` then a close frame (code 1008): `bad auth token` (also counted in
//!   `handshakesRejected`), `max sessions rate exceeded` (the `max_connections` fault, which
//!   applies to every token including `unauthorized_user_token`; connections that never send
//!   `set_auth_token` are served as unauthorised and not counted against any token).
//! - Close frame `heartbeat timeout` (code 1008) for a client that stopped echoing.
//!
//! Nothing a client sends can panic this code: every decode is checked and every limit bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use log::{debug, info};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep, sleep_until};

use crate::settings::Faults;
use crate::tokens;
use crate::wire::{
    SeriesPart, bars_json, encode_message, encode_series_timeframe, encode_series_update,
    encode_symbol_resolved, tick_marks_json,
};
use chartgate_protocol::Bar;
use chartgate_protocol::client::{ClientDecodeError, ClientMessage, SymbolSpec};
use chartgate_protocol::json::to_ascii_string;
use chartgate_protocol::{Packet, decode_message, encode_packet};
use chartgate_protocol::{ServerMessage, SymbolInfo};

use crate::bars::{MAX_BARS, SimResolution, series};
use crate::stable_hash;
use crate::state::{Counters, OpenConnection, SimState, TokenSlot};
use crate::tickers::company_name;
use chartgate_protocol::clock::{unix_ms, unix_secs};

/// The token a browser sends when nobody is signed in: accepted, with delayed data.
pub const UNAUTHORIZED_TOKEN: &str = "unauthorized_user_token";
/// `series_completed` status for signed-in users.
pub const STATUS_STREAMING: &str = "streaming";
/// `series_completed` status for `unauthorized_user_token` (data 15 minutes late).
pub const STATUS_DELAYED: &str = "delayed_streaming_900";

/// Largest incoming frame: client messages are small, but the capture has an 18 KB `create_study`
/// and a client may batch many calls in one message.
const MAX_INCOMING_FRAME: usize = 4 * 1024 * 1024;
/// Largest incoming message after reassembling continuation frames.
const MAX_INCOMING_MESSAGE: usize = 8 * 1024 * 1024;
/// Bounds on what one client can make this task hold.
const MAX_CHART_SESSIONS: usize = 4096;
const MAX_SERIES_PER_SESSION: usize = 64;
const MAX_SYMBOLS_PER_SESSION: usize = 256;
/// Series answers waiting for a `series_concurrency` slot on one connection.
const MAX_QUEUED_SERIES: usize = 10_000;

/// `GET /socket.io/websocket` (the query string is ignored).
pub(crate) async fn ws_route(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<SimState>,
) -> actix_web::Result<HttpResponse> {
    let connect_latency = state.faults().connect_latency_ms;
    if connect_latency > 0 {
        sleep(Duration::from_millis(connect_latency)).await;
    }
    let reject = state.faults().reject_upgrades;
    if reject != 0 {
        Counters::bump(&state.counters.handshakes_rejected);
        let status = StatusCode::from_u16(reject).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        info!("simulator: upgrade refused with {status} (reject_upgrades fault)");
        return Ok(HttpResponse::build(status)
            .insert_header((header::RETRY_AFTER, "1"))
            .content_type("text/plain; charset=utf-8")
            .body(format!("simulated upgrade rejection: {status}\n")));
    }
    let (mut response, session, stream) = actix_ws::handle(&req, body)?;
    response
        .headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("tv"));
    let stream = stream
        .max_frame_size(MAX_INCOMING_FRAME)
        .aggregate_continuations()
        .max_continuation_size(MAX_INCOMING_MESSAGE);
    let connection = Connection::new(state.into_inner(), session);
    actix_web::rt::spawn(connection.run(stream));
    Ok(response)
}

/// A symbol a chart session resolved (or failed to).
struct SymbolEntry {
    /// `EXCHANGE:TICKER`, upper-case.
    symbol: String,
    /// `None` when the answer was `symbol_error`.
    info: Option<SymbolInfo>,
    /// The `symbol_resolved` is still owed and goes out with this symbol's next series answer.
    pending: bool,
}

/// A series of a chart session.
struct SeriesEntry {
    /// Changes when the series is created again, so answers for a replaced series are dropped.
    epoch: u64,
    symbol_id: String,
    symbol: String,
    resolution: SimResolution,
    /// Bars of the first answer (indices 0..count).
    count: u32,
    /// Older bars added by `request_more_data` (negative indices).
    older: u32,
    turnaround: String,
}

#[derive(Default)]
struct ChartSession {
    symbols: HashMap<String, SymbolEntry>,
    series: HashMap<String, SeriesEntry>,
}

/// What a series answer delivers.
enum Work {
    /// The newest `count` bars (create_series, or modify_series to another symbol or resolution).
    Full {
        resolution: SimResolution,
        count: u32,
    },
    /// Older bars for request_more_data: the series had `loaded` bars and now has `total`.
    Older {
        resolution: SimResolution,
        base: u32,
        loaded: u32,
        total: u32,
    },
    /// modify_series to a range the series already holds.
    Timeframe {
        first_index: i64,
        last_index: i64,
        range: String,
    },
}

/// A series answer waiting for its slot or its latency.
struct Job {
    session: String,
    series_id: String,
    epoch: u64,
    symbol_id: String,
    symbol: String,
    turnaround: String,
    work: Work,
    /// Its answer, written while it waits out the latency (see [`Connection::prepare`]).
    prepared: Option<Prepared>,
}

/// A series answer written ahead of its due time: the whole WebSocket message but for a symbol
/// answer owed with it, which goes after the first packet (`series_loading`) when it is sent.
struct Prepared {
    /// The `series_completed` status it was written with.
    status: &'static str,
    text: String,
    /// Where the first packet ends in `text`.
    after_loading: usize,
    packets: u64,
    /// It delivers bars (counted in `seriesServed`).
    served: bool,
}

/// How the connection authenticated.
enum Auth {
    /// No `set_auth_token` yet: chart calls are served as unauthorised (delayed).
    None,
    /// Each holds the token's connection slot (for `max_connections`) until the connection ends.
    Delayed {
        _slot: TokenSlot,
    },
    Streaming {
        _slot: TokenSlot,
    },
}

/// Why the connection loop ends.
enum Ending {
    /// The client closed or vanished.
    Gone,
    /// Send a close frame with this reason.
    Close(Option<CloseReason>),
    /// `drop_after_messages`: cut the TCP connection with no close frame.
    Drop,
}

enum Event {
    Incoming(Option<Result<AggregatedMessage, actix_ws::ProtocolError>>),
    Tick(Instant),
    /// The first of the active series is due.
    Due,
}

struct Connection {
    id: u64,
    state: Arc<SimState>,
    /// `None` once dropped (the `drop_after_messages` fault).
    ws: Option<Session>,
    _open: OpenConnection,
    auth: Auth,
    sessions: HashMap<String, ChartSession>,
    /// WebSocket messages written, for `drop_after_messages`/`stall_after_messages`.
    messages_sent: u64,
    /// Packets written, for `malformed_every`.
    packets_sent: u64,
    /// Number of the last heartbeat sent.
    heartbeat: u64,
    /// Heartbeats sent and not echoed yet, with when they were due.
    unechoed: VecDeque<(u64, Instant)>,
    /// Series waiting for a `series_concurrency` slot, in arrival order.
    queue: VecDeque<Job>,
    /// Series holding a slot, waiting out `latency_ms`: when each is due, in due order (equal
    /// deadlines in the order they started, so answers that fall due together leave in request
    /// order, as from a real feed, rather than in whatever order the timer wakes them).
    active: VecDeque<(Instant, Job)>,
    next_epoch: u64,
    series_answered: u64,
    ending: Option<Ending>,
}

impl Connection {
    fn new(state: Arc<SimState>, ws: Session) -> Connection {
        let id = state
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let open = OpenConnection::new(state.clone());
        Connection {
            id,
            state,
            ws: Some(ws),
            _open: open,
            auth: Auth::None,
            sessions: HashMap::new(),
            messages_sent: 0,
            packets_sent: 0,
            heartbeat: 0,
            unechoed: VecDeque::new(),
            queue: VecDeque::new(),
            active: VecDeque::new(),
            next_epoch: 1,
            series_answered: 0,
            ending: None,
        }
    }

    async fn run(mut self, mut stream: AggregatedMessageStream) {
        info!(
            "simulator: connection {} open ({} open)",
            self.id,
            self.state.stats().connections_open
        );
        let hello = hello_payload(self.id);
        self.send(&[hello.as_str()]).await;
        let period = self.state.heartbeat;
        let mut ticker = interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        while self.ending.is_none() {
            let next_due = self.active.front().map(|(due, _)| *due);
            let event = tokio::select! {
                incoming = stream.recv() => Event::Incoming(incoming),
                at = ticker.tick() => Event::Tick(at),
                () = sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => Event::Due,
            };
            match event {
                Event::Incoming(Some(Ok(AggregatedMessage::Text(text)))) => {
                    self.on_text(&text).await;
                }
                Event::Incoming(Some(Ok(AggregatedMessage::Ping(bytes)))) => {
                    if let Some(ws) = self.ws.as_mut()
                        && ws.pong(&bytes).await.is_err()
                    {
                        self.ending = Some(Ending::Gone);
                    }
                }
                Event::Incoming(Some(Ok(AggregatedMessage::Close(_)))) => {
                    self.ending = Some(Ending::Close(None));
                }
                Event::Incoming(Some(Ok(_))) => {}
                Event::Incoming(Some(Err(e))) => {
                    debug!("simulator: connection {} read error: {e}", self.id);
                    self.ending = Some(Ending::Close(Some(CloseReason {
                        code: CloseCode::Protocol,
                        description: Some("protocol error".into()),
                    })));
                }
                Event::Incoming(None) => self.ending = Some(Ending::Gone),
                Event::Tick(at) => self.on_tick(at, period).await,
                Event::Due => {
                    if let Some((_, job)) = self.active.pop_front() {
                        self.answer(job).await;
                    }
                    self.pump().await;
                }
            }
        }
        let how = match self.ending.take() {
            Some(Ending::Close(reason)) => {
                if let Some(ws) = self.ws.take() {
                    let _ = ws.close(reason).await;
                }
                "closed"
            }
            Some(Ending::Drop) => {
                // Dropping the session ends the response body once the queued messages are
                // written: the socket closes with no close frame.
                self.ws = None;
                "dropped (drop_after_messages fault)"
            }
            Some(Ending::Gone) | None => "gone",
        };
        drop(stream);
        info!(
            "simulator: connection {} {how} after {} messages, {} series answered",
            self.id, self.messages_sent, self.series_answered
        );
    }

    // ----- sending -----

    /// Writes `payloads` as one WebSocket message, applying the send-side faults. Returns whether
    /// the message was written.
    async fn send(&mut self, payloads: &[&str]) -> bool {
        let faults = self.state.faults();
        if !self.can_send(&faults) {
            return false;
        }
        let size: usize = payloads.iter().map(|p| p.len() + 16).sum();
        let mut text = String::with_capacity(size + 64);
        for payload in payloads {
            encode_packet(payload, &mut text);
            self.packets_sent += 1;
            if faults.malformed_every > 0
                && self.packets_sent.is_multiple_of(faults.malformed_every)
            {
                // A validly framed packet that is not JSON: a robust client skips it and still
                // gets every real packet.
                let garbage = format!("<sim-malformed-packet #{}>", self.packets_sent);
                encode_packet(&garbage, &mut text);
            }
        }
        self.send_text(text, &faults).await
    }

    /// Not ended, and not stalled by `stall_after_messages`.
    fn can_send(&self, faults: &Faults) -> bool {
        self.ending.is_none() && !stalled(faults, self.messages_sent)
    }

    /// Sends one whole message (packets already framed).
    async fn send_text(&mut self, text: String, faults: &Faults) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        if ws.text(text).await.is_err() {
            self.ending = Some(Ending::Gone);
            return false;
        }
        self.messages_sent += 1;
        if faults.drop_after_messages > 0 && self.messages_sent >= faults.drop_after_messages {
            self.ending = Some(Ending::Drop);
        }
        true
    }

    async fn send_message(&mut self, message: ServerMessage<'_>) {
        let payload = encode_message(&message, unix_ms());
        self.send(&[payload.as_str()]).await;
    }

    async fn critical_error(&mut self, reason: &str, method: &str) {
        self.send_message(ServerMessage::CriticalError {
            session: None,
            reason: reason.into(),
            detail: vec![method.into()],
        })
        .await;
    }

    async fn series_error(&mut self, session: &str, series_id: &str, turnaround: &str, why: &str) {
        self.send_message(ServerMessage::SeriesError {
            session: session.into(),
            series_id: series_id.into(),
            turnaround: turnaround.into(),
            reason: why.into(),
        })
        .await;
    }

    async fn protocol_error_and_close(&mut self, reason: &str) {
        self.send_message(ServerMessage::ProtocolError {
            reason: reason.into(),
        })
        .await;
        self.ending = Some(Ending::Close(Some(CloseReason {
            code: CloseCode::Policy,
            description: Some(reason.into()),
        })));
    }

    // ----- heartbeats -----

    async fn on_tick(&mut self, at: Instant, period: Duration) {
        if stalled(&self.state.faults(), self.messages_sent) {
            // A stalled feed sends nothing, heartbeats included, and so expects no echo.
            return;
        }
        if let Some(&(n, since)) = self.unechoed.front()
            && at.saturating_duration_since(since) >= period * 2
        {
            info!(
                "simulator: connection {} closed: heartbeat {n} not echoed within {} s",
                self.id,
                (period * 2).as_secs()
            );
            self.ending = Some(Ending::Close(Some(CloseReason {
                code: CloseCode::Policy,
                description: Some("heartbeat timeout".into()),
            })));
            return;
        }
        self.heartbeat += 1;
        let payload = format!("~h~{}", self.heartbeat);
        if self.send(&[payload.as_str()]).await {
            Counters::bump(&self.state.counters.heartbeats_sent);
            self.unechoed.push_back((self.heartbeat, at));
        }
    }

    fn on_echo(&mut self, n: &str) {
        Counters::bump(&self.state.counters.heartbeats_echoed);
        if let Ok(n) = n.parse::<u64>() {
            while self.unechoed.front().is_some_and(|&(sent, _)| sent <= n) {
                self.unechoed.pop_front();
            }
        }
    }

    // ----- incoming -----

    async fn on_text(&mut self, text: &str) {
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
                Packet::Heartbeat(n) => self.on_echo(n),
                Packet::Json(payload) => calls.push(ClientMessage::from_payload(payload)),
            }
        }
        for i in 0..calls.len() {
            if self.ending.is_some() {
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
                    self.critical_error("invalid parameters", method).await;
                }
                Ok(call) => self.on_call(call, later).await,
            }
        }
    }

    async fn on_call(
        &mut self,
        call: &ClientMessage,
        later: &[Result<ClientMessage, ClientDecodeError>],
    ) {
        match call {
            ClientMessage::SetAuthToken { token } => self.authenticate(token).await,
            ClientMessage::ChartCreateSession { session } => {
                if !self.sessions.contains_key(session) && self.sessions.len() >= MAX_CHART_SESSIONS
                {
                    self.critical_error("too many chart sessions", call.name())
                        .await;
                    return;
                }
                self.sessions.entry(session.clone()).or_default();
            }
            ClientMessage::ChartDeleteSession { session } => {
                self.sessions.remove(session);
            }
            ClientMessage::ResolveSymbol {
                session,
                symbol_id,
                spec,
            } => self.resolve_symbol(session, symbol_id, spec, later).await,
            ClientMessage::CreateSeries {
                session,
                series_id,
                turnaround,
                symbol_id,
                resolution,
                count,
                ..
            } => {
                self.create_series(
                    session, series_id, turnaround, symbol_id, resolution, *count,
                )
                .await
            }
            ClientMessage::ModifySeries {
                session,
                series_id,
                turnaround,
                symbol_id,
                resolution,
                range,
            } => {
                self.modify_series(session, series_id, turnaround, symbol_id, resolution, range)
                    .await
            }
            ClientMessage::RequestMoreData {
                session,
                series_id,
                count,
            } => self.request_more_data(session, series_id, *count).await,
            ClientMessage::RemoveSeries { session, series_id } => {
                if let Some(cs) = self.sessions.get_mut(session) {
                    cs.series.remove(series_id);
                }
            }
            // Locale and time zone change nothing here; quotes and studies are not simulated.
            ClientMessage::SetLocale { .. }
            | ClientMessage::SwitchTimezone { .. }
            | ClientMessage::Other { .. } => {}
        }
    }

    async fn authenticate(&mut self, token: &str) {
        let streaming = if token == UNAUTHORIZED_TOKEN {
            false
        } else {
            match tokens::verify(token, &self.state.token_key, unix_secs()) {
                Ok(_) => true,
                Err(e) => {
                    Counters::bump(&self.state.counters.handshakes_rejected);
                    info!(
                        "simulator: connection {} refused: {e} (token not shown)",
                        self.id
                    );
                    self.protocol_error_and_close("bad auth token").await;
                    return;
                }
            }
        };
        // A new token replaces the old one: give its slot back first.
        self.auth = Auth::None;
        let limit = self.state.faults().max_connections;
        let key = stable_hash(token);
        match self.state.acquire_token_slot(key, limit) {
            Some(slot) => {
                self.auth = if streaming {
                    Auth::Streaming { _slot: slot }
                } else {
                    Auth::Delayed { _slot: slot }
                };
            }
            None => {
                Counters::bump(&self.state.counters.handshakes_rejected);
                info!(
                    "simulator: connection {} refused: token already has {limit} connections (max_connections fault)",
                    self.id
                );
                self.protocol_error_and_close("max sessions rate exceeded")
                    .await;
            }
        }
    }

    fn status(&self) -> &'static str {
        match self.auth {
            Auth::Streaming { .. } => STATUS_STREAMING,
            Auth::Delayed { .. } | Auth::None => STATUS_DELAYED,
        }
    }

    async fn resolve_symbol(
        &mut self,
        session: &str,
        symbol_id: &str,
        spec: &SymbolSpec,
        later: &[Result<ClientMessage, ClientDecodeError>],
    ) {
        let symbol = spec.symbol.trim().to_ascii_uppercase();
        let faults = self.state.faults();
        let volumeless = self.state.volumeless.contains(&symbol);
        let Some(cs) = self.sessions.get_mut(session) else {
            self.send_message(ServerMessage::SymbolError {
                session: session.into(),
                symbol_id: symbol_id.into(),
                reason: "unknown chart session".into(),
            })
            .await;
            return;
        };
        if !cs.symbols.contains_key(symbol_id) && cs.symbols.len() >= MAX_SYMBOLS_PER_SESSION {
            self.critical_error("too many symbols", "resolve_symbol")
                .await;
            return;
        }
        let Some(info) = symbol_info(&symbol, &faults, volumeless) else {
            cs.symbols.insert(
                symbol_id.to_string(),
                SymbolEntry {
                    symbol,
                    info: None,
                    pending: false,
                },
            );
            self.send_message(ServerMessage::SymbolError {
                session: session.into(),
                symbol_id: symbol_id.into(),
                reason: "invalid symbol".into(),
            })
            .await;
            return;
        };
        Counters::bump(&self.state.counters.symbols_resolved);
        let bundled = later.iter().any(|call| match call {
            Ok(ClientMessage::CreateSeries {
                session: s,
                symbol_id: id,
                ..
            })
            | Ok(ClientMessage::ModifySeries {
                session: s,
                symbol_id: id,
                ..
            }) => s == session && id == symbol_id,
            _ => false,
        });
        let payload =
            (!bundled).then(|| symbol_resolved_payload(&self.state, session, symbol_id, &info));
        cs.symbols.insert(
            symbol_id.to_string(),
            SymbolEntry {
                symbol,
                info: Some(info),
                pending: bundled,
            },
        );
        if let Some(payload) = payload {
            self.send(&[payload.as_str()]).await;
        }
    }

    /// The owed `symbol_resolved` of `symbol_id`, if any (and no longer owed).
    fn take_pending_resolve(&mut self, session: &str, symbol_id: &str) -> Option<String> {
        let entry = self.sessions.get_mut(session)?.symbols.get_mut(symbol_id)?;
        if !entry.pending {
            return None;
        }
        entry.pending = false;
        let info = entry.info.as_ref()?;
        Some(symbol_resolved_payload(
            &self.state,
            session,
            symbol_id,
            info,
        ))
    }

    /// Checks what create_series and modify_series share; on failure answers `series_error`
    /// (after any owed `symbol_resolved`) and gives `None`.
    async fn check_series_call(
        &mut self,
        session: &str,
        series_id: &str,
        turnaround: &str,
        symbol_id: &str,
        resolution: &str,
    ) -> Option<(String, SimResolution)> {
        let why = match self.sessions.get(session) {
            None => Err("unknown chart session"),
            Some(cs) => match cs.symbols.get(symbol_id) {
                None => Err("unknown symbol"),
                Some(SymbolEntry { info: None, .. }) => Err("invalid symbol"),
                Some(entry) => match SimResolution::parse(resolution) {
                    None => Err("invalid resolution"),
                    Some(res) => Ok((entry.symbol.clone(), res)),
                },
            },
        };
        match why {
            Ok(ok) => Some(ok),
            Err(why) => {
                let owed = self.take_pending_resolve(session, symbol_id);
                let error = encode_message(
                    &ServerMessage::SeriesError {
                        session: session.into(),
                        series_id: series_id.into(),
                        turnaround: turnaround.into(),
                        reason: why.into(),
                    },
                    unix_ms(),
                );
                match owed {
                    Some(owed) => self.send(&[owed.as_str(), error.as_str()]).await,
                    None => self.send(&[error.as_str()]).await,
                };
                None
            }
        }
    }

    async fn create_series(
        &mut self,
        session: &str,
        series_id: &str,
        turnaround: &str,
        symbol_id: &str,
        resolution: &str,
        count: u32,
    ) {
        let Some((symbol, res)) = self
            .check_series_call(session, series_id, turnaround, symbol_id, resolution)
            .await
        else {
            return;
        };
        if count == 0 {
            self.series_error(session, series_id, turnaround, "invalid bar count")
                .await;
            return;
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let Some(cs) = self.sessions.get_mut(session) else {
            return;
        };
        if !cs.series.contains_key(series_id) && cs.series.len() >= MAX_SERIES_PER_SESSION {
            self.series_error(session, series_id, turnaround, "too many series")
                .await;
            return;
        }
        let count = count.min(MAX_BARS);
        cs.series.insert(
            series_id.to_string(),
            SeriesEntry {
                epoch,
                symbol_id: symbol_id.to_string(),
                symbol: symbol.clone(),
                resolution: res,
                count,
                older: 0,
                turnaround: turnaround.to_string(),
            },
        );
        self.enqueue(Job {
            session: session.to_string(),
            series_id: series_id.to_string(),
            epoch,
            symbol_id: symbol_id.to_string(),
            symbol,
            turnaround: turnaround.to_string(),
            work: Work::Full {
                resolution: res,
                count,
            },
            prepared: None,
        })
        .await;
    }

    async fn modify_series(
        &mut self,
        session: &str,
        series_id: &str,
        turnaround: &str,
        symbol_id: &str,
        resolution: &str,
        range: &str,
    ) {
        let Some((symbol, res)) = self
            .check_series_call(session, series_id, turnaround, symbol_id, resolution)
            .await
        else {
            return;
        };
        let Some(entry) = self
            .sessions
            .get_mut(session)
            .and_then(|cs| cs.series.get_mut(series_id))
        else {
            self.series_error(session, series_id, turnaround, "unknown series")
                .await;
            return;
        };
        let work = if entry.symbol_id == symbol_id && entry.resolution == res {
            Work::Timeframe {
                first_index: -i64::from(entry.older),
                last_index: i64::from(entry.count) - 1,
                range: range.to_string(),
            }
        } else {
            entry.symbol_id = symbol_id.to_string();
            entry.symbol = symbol.clone();
            entry.resolution = res;
            entry.older = 0;
            Work::Full {
                resolution: res,
                count: entry.count,
            }
        };
        entry.turnaround = turnaround.to_string();
        let job = Job {
            session: session.to_string(),
            series_id: series_id.to_string(),
            epoch: entry.epoch,
            symbol_id: symbol_id.to_string(),
            symbol,
            turnaround: turnaround.to_string(),
            work,
            prepared: None,
        };
        self.enqueue(job).await;
    }

    async fn request_more_data(&mut self, session: &str, series_id: &str, count: u32) {
        let Some(entry) = self
            .sessions
            .get_mut(session)
            .and_then(|cs| cs.series.get_mut(series_id))
        else {
            self.series_error(session, series_id, "", "unknown series")
                .await;
            return;
        };
        let loaded = entry.count + entry.older;
        let total = loaded.saturating_add(count).min(MAX_BARS);
        entry.older = total - entry.count;
        let job = Job {
            session: session.to_string(),
            series_id: series_id.to_string(),
            epoch: entry.epoch,
            symbol_id: entry.symbol_id.clone(),
            symbol: entry.symbol.clone(),
            turnaround: entry.turnaround.clone(),
            work: Work::Older {
                resolution: entry.resolution,
                base: entry.count,
                loaded,
                total,
            },
            prepared: None,
        };
        self.enqueue(job).await;
    }

    // ----- series scheduling -----

    fn has_free_slot(&self, faults: &Faults) -> bool {
        faults.series_concurrency == 0 || self.active.len() < faults.series_concurrency
    }

    async fn enqueue(&mut self, job: Job) {
        if self.queue.len() >= MAX_QUEUED_SERIES {
            self.series_error(
                &job.session,
                &job.series_id,
                &job.turnaround,
                "too many requests",
            )
            .await;
            return;
        }
        let faults = self.state.faults();
        if self.queue.is_empty() && faults.latency_ms == 0 && self.has_free_slot(&faults) {
            self.answer(job).await;
        } else {
            self.queue.push_back(job);
            self.pump().await;
        }
    }

    /// Starts queued series while slots are free.
    async fn pump(&mut self) {
        loop {
            let faults = self.state.faults();
            if self.ending.is_some() || !self.has_free_slot(&faults) {
                return;
            }
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            if faults.latency_ms == 0 {
                self.answer(job).await;
            } else {
                let mut job = job;
                job.prepared = self.prepare(&job, &faults, unix_ms() + faults.latency_ms as i64);
                let due = Instant::now() + Duration::from_millis(faults.latency_ms);
                let at = self.active.partition_point(|(d, _)| *d <= due);
                self.active.insert(at, (due, job));
            }
        }
    }

    /// Writes a series' answer while it waits out its latency, stamped with its due time, so
    /// that when many fall due together (300 answers at once in the benchmarks) the simulator
    /// only sends them: on a small machine shared with the service, writing 300 answers of 29 KB
    /// at the due time took CPU from the service the benchmark measures, which a real feed, on
    /// its own machines, never does. Not while packets are being corrupted (`malformed_every`):
    /// which ones is decided as they are sent.
    fn prepare(&self, job: &Job, faults: &Faults, due_ms: i64) -> Option<Prepared> {
        if faults.malformed_every > 0 {
            return None;
        }
        let status = self.status();
        let (payloads, served) = self.compose(job, None, status, due_ms);
        let mut text = String::with_capacity(payloads.iter().map(|p| p.len() + 16).sum());
        let mut after_loading = 0;
        for (n, payload) in payloads.iter().enumerate() {
            encode_packet(payload, &mut text);
            if n == 0 {
                after_loading = text.len();
            }
        }
        Some(Prepared {
            status,
            text,
            after_loading,
            packets: payloads.len() as u64,
            served,
        })
    }

    /// Sends the answer of a series whose turn has come.
    async fn answer(&mut self, mut job: Job) {
        let owed = self.take_pending_resolve(&job.session, &job.symbol_id);
        let current = self
            .sessions
            .get(&job.session)
            .and_then(|cs| cs.series.get(&job.series_id))
            .is_some_and(|s| s.epoch == job.epoch);
        if !current {
            // Removed or replaced meanwhile: only the owed symbol answer still goes out.
            if let Some(owed) = owed {
                self.send(&[owed.as_str()]).await;
            }
            return;
        }
        let status = self.status();
        let faults = self.state.faults();
        let prepared = job
            .prepared
            .take()
            .filter(|p| p.status == status && faults.malformed_every == 0);
        let served = match prepared {
            Some(mut p) => {
                if let Some(owed) = owed {
                    let mut packet = String::with_capacity(owed.len() + 16);
                    encode_packet(&owed, &mut packet);
                    p.text.insert_str(p.after_loading, &packet);
                    p.packets += 1;
                }
                if self.can_send(&faults) {
                    self.packets_sent += p.packets;
                    self.send_text(p.text, &faults).await;
                }
                p.served
            }
            None => {
                let (payloads, served) = self.compose(&job, owed, status, unix_ms());
                let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
                self.send(&refs).await;
                served
            }
        };
        if served {
            self.series_answered += 1;
            Counters::bump(&self.state.counters.series_served);
        }
    }

    /// The packets answering `job`, stamped `now`, and whether they deliver bars.
    fn compose(
        &self,
        job: &Job,
        owed: Option<String>,
        status: &str,
        now: i64,
    ) -> (Vec<String>, bool) {
        let volumeless = self.state.volumeless.contains(&job.symbol);
        let session = job.session.as_str();
        let series_id = job.series_id.as_str();
        let turnaround = job.turnaround.as_str();
        let loading = encode_message(
            &ServerMessage::SeriesLoading {
                session: session.into(),
                series_id: series_id.into(),
                turnaround: turnaround.into(),
            },
            now,
        );
        let completed = encode_message(
            &ServerMessage::SeriesCompleted {
                session: session.into(),
                series_id: series_id.into(),
                status: status.into(),
                turnaround: turnaround.into(),
            },
            now,
        );
        let mut payloads: Vec<String> = Vec::with_capacity(5);
        payloads.push(loading);
        if let Some(owed) = owed {
            payloads.push(owed);
        }
        let served = match &job.work {
            Work::Full { resolution, count } => {
                let cached = series(&job.symbol, *resolution, *count, volumeless);
                let part = SeriesPart {
                    series_id,
                    turnaround,
                    bars_json: &cached.json,
                    bars: &cached.bars,
                    tick_marks: &cached.tick_marks,
                };
                payloads.push(encode_series_update(
                    "timescale_update",
                    session,
                    &[part],
                    now,
                ));
                true
            }
            Work::Older {
                resolution,
                base,
                loaded,
                total,
            } => {
                if total > loaded {
                    let cached = series(&job.symbol, *resolution, *total, volumeless);
                    let added = (total - loaded) as usize;
                    let older: Vec<Bar> = cached.bars.iter().take(added).copied().collect();
                    let first_index = -i64::from(total - base);
                    let older_json = bars_json(&older, first_index);
                    let tick_marks = tick_marks_json(&older, first_index);
                    let part = SeriesPart {
                        series_id,
                        turnaround,
                        bars_json: &older_json,
                        bars: &older,
                        tick_marks: &tick_marks,
                    };
                    payloads.push(encode_series_update(
                        "timescale_update",
                        session,
                        &[part],
                        now,
                    ));
                }
                false
            }
            Work::Timeframe {
                first_index,
                last_index,
                range,
            } => {
                for complete in [false, true] {
                    payloads.push(encode_series_timeframe(
                        session,
                        series_id,
                        turnaround,
                        *first_index,
                        *last_index,
                        range,
                        complete,
                    ));
                }
                true
            }
        };
        payloads.push(completed);
        (payloads, served)
    }
}

/// `stall_after_messages` in force and reached.
fn stalled(faults: &Faults, messages_sent: u64) -> bool {
    faults.stall_after_messages > 0 && messages_sent >= faults.stall_after_messages
}

/// The server hello, with the capture's keys in the capture's order.
fn hello_payload(connection: u64) -> String {
    let now = unix_ms();
    let session_id = to_ascii_string(&format!("0.{connection}.{}_sim-charts-1", now % 10_000));
    format!(
        "{{\"session_id\":{session_id},\"timestamp\":{},\"timestampMs\":{now},\"release\":\"release_sim-1\",\"studies_metadata_hash\":\"0000000000000000000000000000000000000000\",\"auth_scheme_vsn\":2,\"protocol\":\"json\",\"via\":\"127.0.0.1:0\",\"javastudies\":[\"3.66\"]}}",
        now / 1000
    )
}

fn symbol_resolved_payload(
    state: &SimState,
    session: &str,
    symbol_id: &str,
    info: &SymbolInfo,
) -> String {
    encode_symbol_resolved(session, symbol_id, &state.symbol_object(info), unix_ms())
}

/// What `symbol_resolved` says about `symbol`, or `None` when the feed answers `symbol_error`:
/// not `EXCHANGE:TICKER`, listed in `unknown_symbols` (whole or by ticker), or a ticker starting
/// with `INVALID`.
fn symbol_info(symbol: &str, faults: &Faults, volumeless: bool) -> Option<SymbolInfo> {
    let (exchange, ticker) = symbol.split_once(':')?;
    let ok_exchange = (1..=20).contains(&exchange.len())
        && exchange
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    let ok_ticker = (1..=40).contains(&ticker.len())
        && ticker.bytes().all(|b| {
            b.is_ascii_uppercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'.' | b'!' | b'&' | b'-')
        });
    if !ok_exchange || !ok_ticker || ticker.starts_with("INVALID") {
        return None;
    }
    let listed_unknown = faults.unknown_symbols.iter().any(|u| {
        let u = u.trim();
        u.eq_ignore_ascii_case(symbol) || u.eq_ignore_ascii_case(ticker)
    });
    if listed_unknown {
        return None;
    }
    let indian = matches!(exchange, "NSE" | "BSE");
    let description = if indian {
        company_name(ticker).map_or_else(|| format!("{ticker} Ltd"), str::to_string)
    } else {
        ticker.to_string()
    };
    let h = stable_hash(symbol);
    Some(SymbolInfo {
        name: ticker.to_string(),
        full_name: symbol.to_string(),
        description,
        exchange: exchange.to_string(),
        currency_code: if indian { "INR" } else { "USD" }.into(),
        pricescale: 100,
        minmov: 1,
        timezone: if indian {
            "Asia/Kolkata"
        } else {
            "America/New_York"
        }
        .into(),
        kind: if volumeless { "index" } else { "stock" }.into(),
        session: if indian { "0915-1530" } else { "0930-1600" }.into(),
        isin: if indian && !volumeless {
            format!("INE{:06}01{}", h % 1_000_000, h % 10)
        } else {
            String::new()
        },
    })
}
