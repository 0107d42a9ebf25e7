//! One upstream WebSocket, as an actor.
//!
//! The connection connects in `started()` (awc's client is `!Send`, so it is created here, on
//! the actor's thread), waits for the server hello, authenticates, and from then on carries up to
//! `pool.requests_per_connection` fetches, each in its own chart session so that concurrent fetches
//! never see each other's bars. It echoes every heartbeat at once and records when upstream last
//! said anything, so the pool can tell a quiet connection from a live one.
//!
//! Live subscriptions the pool places here (see [`crate::live`]) get chart sessions of their own
//! that stay open after `series_completed`: the answer, then every `du`, goes straight into the
//! series' shared feed, on this connection's thread. Quote symbols share one quote session per
//! connection, whose `qsd` updates go into each symbol's feed.
//!
//! It decides no policy: it reports `ready`, each fetch's outcome and its own end to the pool, which
//! retries, replaces and backs off. Turning WebSocket frames into whole messages (continuation
//! frames, the size cap) is `frames`'s; this module does what the messages say.

mod frames;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::clock::Instant;
use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;
use awc::error::{WsClientError, WsProtocolError};
use awc::ws::{self, Frame};
use bytes::Bytes;
use futures_util::{Sink, StreamExt};
use rand::Rng;

use self::frames::{FrameReader, Incoming, with_read_buffer};
use super::FetchError;
use crate::config::{Secret, Settings};
use crate::domain::{BarCount, Chart, ChartMetadata, Resolution, Symbol};
use crate::live::{LiveId, LiveTarget, QuoteFeed, SeriesFeed};
use crate::ready_chart::ReadyChart;
// The series id and turnaround of every chart session (constant: each fetch and each live series
// has a session of its own).
use chartgate_protocol::client::{SERIES_ID, TURNAROUND};
use chartgate_protocol::server::{IndexedBar, into_ascending};
use chartgate_protocol::{ClientMessage, Packet, ServerMessage, decode_message, encode_packet};

/// A desktop browser's `User-Agent`: the feed treats other clients with suspicion.
pub const USER_AGENT: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// The feed URL with `from=chart&type=chart` added when the query lacks them.
pub fn feed_url(base: &str) -> String {
    let (path, query) = match base.split_once('?') {
        Some((p, q)) => (p, q),
        None => (base, ""),
    };
    let has = |key: &str| query.split('&').any(|kv| kv.split('=').next() == Some(key));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(str::to_string)
        .collect();
    if !has("from") {
        params.push("from=chart".into());
    }
    if !has("type") {
        params.push("type=chart".into());
    }
    format!("{path}?{}", params.join("&"))
}

/// Traffic bookkeeping the pool reads without a round trip to the actor.
#[derive(Debug)]
pub struct ConnShared {
    /// The runtime instant everything is measured from.
    epoch: Instant,
    /// Milliseconds after `epoch` of the last message from upstream (heartbeats included).
    last_traffic_ms: AtomicU64,
}

impl ConnShared {
    pub fn new(epoch: Instant) -> Arc<Self> {
        Arc::new(ConnShared {
            epoch,
            last_traffic_ms: AtomicU64::new(
                Instant::now().saturating_duration_since(epoch).as_millis() as u64,
            ),
        })
    }

    fn touch(&self) {
        let ms = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_millis() as u64;
        self.last_traffic_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since upstream last said anything.
    pub fn quiet_for(&self) -> Duration {
        let last = self.epoch + Duration::from_millis(self.last_traffic_ms.load(Ordering::Relaxed));
        Instant::now().saturating_duration_since(last)
    }
}

/// Why a connection ended, as the pool needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The handshake failed or timed out before the connection was usable.
    ConnectFailed(String),
    /// 429/503 on the handshake or "max sessions rate": slow down.
    RateLimited(String),
    /// `protocol_error` about the token: get a new one.
    AuthRejected(String),
    /// Another `protocol_error`.
    Protocol(String),
    /// The socket closed or errored after the connection was ready.
    Lost(String),
    /// The pool asked it to close.
    Closed,
}

impl EndReason {
    /// What a `protocol_error` from the feed means: "max sessions rate" asks to slow down, one
    /// about the auth token asks for a new token, anything else ends just this connection.
    pub fn from_protocol_error(reason: String) -> Self {
        let lower = reason.to_ascii_lowercase();
        if lower.contains("max sessions rate") {
            EndReason::RateLimited(reason)
        } else if lower.contains("auth") || lower.contains("token") {
            EndReason::AuthRejected(reason)
        } else {
            EndReason::Protocol(reason)
        }
    }

    /// Whether the connection failed before becoming usable (counts as a failed attempt).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            EndReason::ConnectFailed(_) | EndReason::RateLimited(_) | EndReason::AuthRejected(_)
        )
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::ConnectFailed(r) => write!(f, "connect failed: {r}"),
            EndReason::RateLimited(r) => write!(f, "rate limited: {r}"),
            EndReason::AuthRejected(r) => write!(f, "token rejected: {r}"),
            EndReason::Protocol(r) => write!(f, "protocol error: {r}"),
            EndReason::Lost(r) => write!(f, "lost: {r}"),
            EndReason::Closed => f.write_str("closed"),
        }
    }
}

/// Connection → pool: authenticated and ready for fetches.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnReady {
    pub conn: u64,
    pub authenticated_in: Duration,
}

/// Connection → pool: the connection is gone; every fetch it carried is the pool's to retry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnEnded {
    pub conn: u64,
    pub reason: EndReason,
}

/// Connection → pool: one fetch finished.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FetchDone {
    pub conn: u64,
    pub fetch: u64,
    pub result: Result<Arc<ReadyChart>, FetchError>,
}

/// Pool → connection: start a fetch in a new chart session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartFetch {
    pub fetch: u64,
    pub symbol: Symbol,
    pub resolution: Resolution,
    /// The resolution as sent in `create_series`; `resolution.as_str()` unless a caller needs a
    /// feed-specific name (tests use one the feed refuses to reach `series_error`).
    pub feed_resolution: String,
    pub bars: BarCount,
}

/// Pool → connection: subscribe a live series (in a chart session of its own) or a quote symbol
/// (in the connection's quote session).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartLive {
    pub live: LiveId,
    pub target: LiveTarget,
}

/// Pool → connection: unsubscribe it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopLive {
    pub live: LiveId,
}

/// Connection → pool: the feed refused a live subscription (`symbol_error`, `series_error`,
/// `critical_error`), so placing it elsewhere would not help.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LiveRefused {
    pub conn: u64,
    pub live: LiveId,
    pub error: FetchError,
}

/// Where a connection reports: the pool, or in tests any actor that handles the reports.
#[derive(Clone)]
pub struct ConnectionEvents {
    pub ready: Recipient<ConnReady>,
    pub ended: Recipient<ConnEnded>,
    pub done: Recipient<FetchDone>,
    pub refused: Recipient<LiveRefused>,
}

impl ConnectionEvents {
    pub fn to<A>(addr: &Addr<A>) -> Self
    where
        A: Actor
            + Handler<ConnReady>
            + Handler<ConnEnded>
            + Handler<FetchDone>
            + Handler<LiveRefused>,
        A::Context: actix::dev::ToEnvelope<A, ConnReady>
            + actix::dev::ToEnvelope<A, ConnEnded>
            + actix::dev::ToEnvelope<A, FetchDone>
            + actix::dev::ToEnvelope<A, LiveRefused>,
    {
        ConnectionEvents {
            ready: addr.clone().recipient(),
            ended: addr.clone().recipient(),
            done: addr.clone().recipient(),
            refused: addr.clone().recipient(),
        }
    }
}

/// Ends a fetch nobody wants any more: its chart session is deleted upstream and nothing is
/// reported (the pool has already forgotten it).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CancelFetch {
    pub fetch: u64,
}

/// Pool → connection: close now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

type WsSink = Pin<Box<dyn Sink<ws::Message, Error = WsProtocolError>>>;

/// One fetch on this connection.
struct FetchState {
    fetch: u64,
    symbol: Symbol,
    resolution: Resolution,
    /// Bars from `timescale_update`/`du` for this session's series, until `series_completed`.
    bars: Vec<IndexedBar>,
    metadata: Option<ChartMetadata>,
    /// The request timeout; cancelled when the fetch finishes.
    timer: SpawnHandle,
}

/// A live series on this connection, in its own chart session.
struct LiveSeries {
    live: LiveId,
    feed: Arc<SeriesFeed>,
    /// Bars of the first answer, until its `series_completed`.
    answer: Vec<IndexedBar>,
    metadata: Option<ChartMetadata>,
    /// The first answer is in: updates go to the feed as they come.
    completed: bool,
}

/// The connection's quote session and the symbols subscribed in it.
struct Quotes {
    session: String,
    /// By the symbol exactly as sent in `quote_add_symbols` (the `n` of each `qsd`).
    symbols: HashMap<String, (LiveId, Arc<QuoteFeed>)>,
}

/// The fields a quote session asks for: what a `quote` event shows.
const QUOTE_FIELDS: [&str; 8] = [
    "lp",
    "ch",
    "chp",
    "volume",
    "bid",
    "ask",
    "lp_time",
    "description",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Ready,
    Closing,
}

/// The connection actor.
pub struct Connection {
    id: u64,
    settings: Arc<Settings>,
    /// Full feed URL (query added).
    url: String,
    /// Presented once, in `set_auth_token`.
    token: Secret,
    events: ConnectionEvents,
    shared: Arc<ConnShared>,
    started_at: Instant,
    state: State,
    sink: Option<SinkWrite<ws::Message, WsSink>>,
    /// Fetches by chart session id.
    sessions: HashMap<String, FetchState>,
    /// Live series by chart session id.
    live_sessions: HashMap<String, LiveSeries>,
    /// The chart session of each live series, by its id.
    live_ids: HashMap<LiveId, String>,
    /// Created with the first quote symbol.
    quotes: Option<Quotes>,
    /// Frames to messages, capped at `upstream.max_frame_bytes`.
    frames: FrameReader,
    /// Set once; reported in `stopped()`.
    end: Option<EndReason>,
}

impl Connection {
    pub fn new(
        id: u64,
        settings: Arc<Settings>,
        feed_url: &str,
        token: Secret,
        events: ConnectionEvents,
        shared: Arc<ConnShared>,
    ) -> Self {
        let frames = FrameReader::new(settings.upstream.max_frame_bytes);
        Connection {
            id,
            url: self::feed_url(feed_url),
            settings,
            token,
            events,
            shared,
            started_at: Instant::now(),
            state: State::Connecting,
            sink: None,
            sessions: HashMap::new(),
            live_sessions: HashMap::new(),
            live_ids: HashMap::new(),
            quotes: None,
            frames,
            end: None,
        }
    }

    /// Records why the connection ends (the first reason wins) and stops the actor.
    fn fail(&mut self, reason: EndReason, ctx: &mut Context<Self>) {
        if self.end.is_none() {
            self.end = Some(reason);
        }
        self.state = State::Closing;
        if let Some(sink) = self.sink.as_mut() {
            let _ = sink.write(ws::Message::Close(None));
            sink.close();
        }
        ctx.stop();
    }

    fn send_text(&mut self, text: String, ctx: &mut Context<Self>) {
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        if sink.write(ws::Message::Text(text.into())).is_err() {
            self.fail(EndReason::Lost("socket closed while sending".into()), ctx);
        }
    }

    fn send_messages(&mut self, messages: &[ClientMessage], ctx: &mut Context<Self>) {
        let mut text = String::new();
        for m in messages {
            encode_packet(&m.to_payload(), &mut text);
        }
        self.send_text(text, ctx);
    }

    /// Ends one fetch: reports it, cancels its timer, deletes its chart session upstream.
    fn finish(
        &mut self,
        session: &str,
        result: impl FnOnce(FetchState) -> Result<Chart, FetchError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(state) = self.sessions.remove(session) else {
            return;
        };
        ctx.cancel_future(state.timer);
        let fetch = state.fetch;
        let result = result(state).map(ReadyChart::prepared);
        self.events.done.do_send(FetchDone {
            conn: self.id,
            fetch,
            result,
        });
        self.send_messages(
            &[ClientMessage::ChartDeleteSession {
                session: session.to_string(),
            }],
            ctx,
        );
    }

    /// The feed refused a live series: its session goes, and the pool is told.
    fn refuse_live(&mut self, session: &str, error: FetchError, ctx: &mut Context<Self>) {
        let Some(live) = self.live_sessions.remove(session) else {
            return;
        };
        self.live_ids.remove(&live.live);
        self.events.refused.do_send(LiveRefused {
            conn: self.id,
            live: live.live,
            error,
        });
        self.send_messages(
            &[ClientMessage::ChartDeleteSession {
                session: session.to_string(),
            }],
            ctx,
        );
    }

    /// A `qsd` of this connection's quote session.
    fn on_quote(
        &mut self,
        session: &str,
        symbol: &str,
        status: Option<&str>,
        fields: &chartgate_protocol::QuoteFields,
    ) {
        let Some(quotes) = self.quotes.as_ref().filter(|q| q.session == session) else {
            return;
        };
        let Some((live, feed)) = quotes.symbols.get(symbol) else {
            return;
        };
        if status == Some("error") {
            self.events.refused.do_send(LiveRefused {
                conn: self.id,
                live: *live,
                error: FetchError::UnknownSymbol(symbol.to_string()),
            });
            return;
        }
        feed.merge(fields, chartgate_protocol::clock::unix_ms());
    }

    /// Subscribes a live series in a new chart session, or a quote symbol in the quote session.
    fn start_live(&mut self, live: LiveId, target: LiveTarget, ctx: &mut Context<Self>) {
        match target {
            LiveTarget::Series { feed, bars } => {
                let session = new_session_id();
                let messages = ClientMessage::chart_series(
                    &session,
                    feed.key.symbol.as_str(),
                    feed.key.resolution.as_str(),
                    u32::from(bars.get()),
                );
                self.live_ids.insert(live, session.clone());
                self.live_sessions.insert(
                    session,
                    LiveSeries {
                        live,
                        feed,
                        answer: Vec::new(),
                        metadata: None,
                        completed: false,
                    },
                );
                self.send_messages(&messages, ctx);
            }
            LiveTarget::Quote { feed } => {
                let mut messages = Vec::new();
                let quotes = self.quotes.get_or_insert_with(|| {
                    let session = format!("qs_{}", &new_session_id()[3..]);
                    messages.push(ClientMessage::QuoteCreateSession {
                        session: session.clone(),
                    });
                    messages.push(ClientMessage::QuoteSetFields {
                        session: session.clone(),
                        fields: QUOTE_FIELDS.iter().map(|f| f.to_string()).collect(),
                    });
                    Quotes {
                        session,
                        symbols: HashMap::new(),
                    }
                });
                let symbol = feed.symbol.to_string();
                messages.push(ClientMessage::QuoteAddSymbols {
                    session: quotes.session.clone(),
                    symbols: vec![symbol.clone()],
                });
                quotes.symbols.insert(symbol, (live, feed));
                self.send_messages(&messages, ctx);
            }
        }
    }

    /// Unsubscribes a live series (its chart session is deleted) or a quote symbol.
    fn stop_live(&mut self, live: LiveId, ctx: &mut Context<Self>) {
        if let Some(session) = self.live_ids.remove(&live) {
            self.live_sessions.remove(&session);
            self.send_messages(
                &[
                    ClientMessage::RemoveSeries {
                        session: session.clone(),
                        series_id: SERIES_ID.into(),
                    },
                    ClientMessage::ChartDeleteSession { session },
                ],
                ctx,
            );
            return;
        }
        let Some(quotes) = self.quotes.as_mut() else {
            return;
        };
        let Some(symbol) = quotes
            .symbols
            .iter()
            .find(|(_, (id, _))| *id == live)
            .map(|(symbol, _)| symbol.clone())
        else {
            return;
        };
        quotes.symbols.remove(&symbol);
        let message = ClientMessage::QuoteRemoveSymbols {
            session: quotes.session.clone(),
            symbols: vec![symbol],
        };
        self.send_messages(&[message], ctx);
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let packets = match decode_message(text) {
            Ok(p) => p,
            Err(e) => {
                log::debug!(
                    "pool: connection {} ignored an undecodable message: {e}",
                    self.id
                );
                return;
            }
        };
        for packet in packets {
            if self.state == State::Closing {
                return;
            }
            match packet {
                Packet::Heartbeat(n) => {
                    self.send_text(chartgate_protocol::encode_heartbeat(n), ctx);
                }
                Packet::Json(payload) => match ServerMessage::decode(payload) {
                    Ok(msg) => self.on_message(msg, ctx),
                    Err(e) => {
                        log::debug!("pool: connection {} ignored a packet: {e}", self.id);
                    }
                },
            }
        }
    }

    fn on_message(&mut self, msg: ServerMessage<'_>, ctx: &mut Context<Self>) {
        match msg {
            ServerMessage::Hello(_) if self.state == State::Connecting => {
                let token = self.token.expose().to_string();
                self.send_messages(
                    &[
                        ClientMessage::SetAuthToken { token },
                        ClientMessage::SetLocale {
                            language: "en".into(),
                            country: "US".into(),
                        },
                    ],
                    ctx,
                );
                if self.state == State::Connecting {
                    self.state = State::Ready;
                    self.events.ready.do_send(ConnReady {
                        conn: self.id,
                        authenticated_in: Instant::now().saturating_duration_since(self.started_at),
                    });
                }
            }
            ServerMessage::SymbolResolved { session, info, .. } => {
                if let Some(f) = self.sessions.get_mut(session.as_ref()) {
                    f.metadata = Some(ChartMetadata::from(&info));
                } else if let Some(l) = self.live_sessions.get_mut(session.as_ref()) {
                    l.metadata = Some(ChartMetadata::from(&info));
                }
            }
            ServerMessage::TimescaleUpdate { session, series }
            | ServerMessage::DataUpdate { session, series } => {
                let ours = series.into_iter().filter(|s| s.series_id == SERIES_ID);
                if let Some(f) = self.sessions.get_mut(session.as_ref()) {
                    for s in ours {
                        f.bars.extend(s.bars);
                    }
                } else if let Some(l) = self.live_sessions.get_mut(session.as_ref()) {
                    for s in ours {
                        if l.completed {
                            let bars: Vec<_> = into_ascending(s.bars);
                            l.feed.apply(&bars, chartgate_protocol::clock::unix_ms());
                        } else {
                            l.answer.extend(s.bars);
                        }
                    }
                }
            }
            ServerMessage::SeriesCompleted {
                session,
                series_id,
                turnaround,
                ..
            } if series_id == SERIES_ID
                && turnaround == TURNAROUND
                && self.live_sessions.contains_key(session.as_ref()) =>
            {
                if let Some(l) = self.live_sessions.get_mut(session.as_ref())
                    && !l.completed
                {
                    l.completed = true;
                    let bars = into_ascending(std::mem::take(&mut l.answer));
                    let metadata = l.metadata.take().unwrap_or_default();
                    l.feed
                        .reset(bars, metadata, chartgate_protocol::clock::unix_ms());
                }
            }
            ServerMessage::SeriesCompleted {
                session,
                series_id,
                turnaround,
                ..
            } if series_id == SERIES_ID && turnaround == TURNAROUND => {
                self.finish(
                    &session,
                    |f| {
                        Ok(Chart {
                            symbol: f.symbol,
                            resolution: f.resolution,
                            bars: into_ascending(f.bars),
                            metadata: f.metadata.unwrap_or_default(),
                        })
                    },
                    ctx,
                );
            }
            ServerMessage::SymbolError { session, .. }
                if self.live_sessions.contains_key(session.as_ref()) =>
            {
                let symbol = self.live_sessions[session.as_ref()]
                    .feed
                    .key
                    .symbol
                    .to_string();
                self.refuse_live(&session, FetchError::UnknownSymbol(symbol), ctx);
            }
            ServerMessage::SymbolError { session, .. } => {
                self.finish(
                    &session,
                    |f| Err(FetchError::UnknownSymbol(f.symbol.to_string())),
                    ctx,
                );
            }
            ServerMessage::SeriesError {
                session, reason, ..
            } => {
                let error = FetchError::SeriesError(reason.into_owned());
                if self.live_sessions.contains_key(session.as_ref()) {
                    self.refuse_live(&session, error, ctx);
                } else {
                    self.finish(&session, |_| Err(error), ctx);
                }
            }
            ServerMessage::QuoteData {
                session,
                symbol,
                status,
                fields,
            } => self.on_quote(&session, &symbol, status.as_deref(), &fields),
            ServerMessage::CriticalError {
                session: Some(session),
                reason,
                detail,
            } => {
                let mut text = reason;
                for d in detail {
                    text.push_str(": ");
                    text.push_str(&d);
                }
                let error = FetchError::InvalidParameters(text);
                if self.live_sessions.contains_key(session.as_ref()) {
                    self.refuse_live(&session, error, ctx);
                } else {
                    self.finish(&session, |_| Err(error), ctx);
                }
            }
            ServerMessage::CriticalError {
                session: None,
                reason,
                ..
            } => {
                log::warn!(
                    "pool: connection {} got critical_error for no chart session: {reason}",
                    self.id
                );
            }
            ServerMessage::ProtocolError { reason } => {
                self.fail(EndReason::from_protocol_error(reason), ctx);
            }
            _ => {}
        }
    }

    fn on_frame(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        match self.frames.read(frame) {
            Incoming::Text(bytes) => self.on_bytes(&bytes, ctx),
            Incoming::Ping(p) => {
                if let Some(sink) = self.sink.as_mut() {
                    let _ = sink.write(ws::Message::Pong(p));
                }
            }
            Incoming::Closed(why) => self.fail(EndReason::Lost(why), ctx),
            Incoming::TooLarge { cap } => self.fail(
                EndReason::Lost(format!(
                    "message larger than upstream.max_frame_bytes ({cap})"
                )),
                ctx,
            ),
            Incoming::Nothing => {}
        }
    }

    fn on_bytes(&mut self, bytes: &Bytes, ctx: &mut Context<Self>) {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.on_text(text, ctx),
            Err(_) => log::debug!("pool: connection {} ignored a non-UTF-8 message", self.id),
        }
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let timeout = Duration::from_millis(self.settings.upstream.connect_timeout_ms);
        let max_frame = self.settings.upstream.max_frame_bytes;
        let url = self.url.clone();
        let origin = self.settings.upstream.origin.clone();
        let connect = async move {
            crate::client::http_client(timeout)
                .ws(url.as_str())
                .origin(origin.as_str())
                .header(awc::http::header::USER_AGENT, USER_AGENT)
                .max_frame_size(max_frame)
                .connect()
                .await
                .map(|(_, framed)| with_read_buffer(framed))
        };
        ctx.spawn(
            connect
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(framed) => {
                        if act.state == State::Closing {
                            return;
                        }
                        act.shared.touch();
                        let (sink, stream) = framed.split();
                        let sink: WsSink = Box::pin(sink);
                        act.sink = Some(SinkWrite::new(sink, ctx));
                        ctx.add_stream(stream);
                    }
                    Err(e) => {
                        let reason = match &e {
                            WsClientError::InvalidResponseStatus(status)
                                if status.as_u16() == 429 || status.as_u16() == 503 =>
                            {
                                EndReason::RateLimited(format!("handshake answered HTTP {status}"))
                            }
                            WsClientError::InvalidResponseStatus(status) => {
                                EndReason::ConnectFailed(format!(
                                    "handshake answered HTTP {status}"
                                ))
                            }
                            other => EndReason::ConnectFailed(other.to_string()),
                        };
                        act.fail(reason, ctx);
                    }
                }),
        );
        // Handshake and hello together are bounded by the connect timeout.
        ctx.run_later(timeout, move |act, ctx| {
            if act.state == State::Connecting {
                act.fail(
                    EndReason::ConnectFailed(format!(
                        "no hello within upstream.connect_timeout_ms ({} ms)",
                        timeout.as_millis()
                    )),
                    ctx,
                );
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        let reason = self.end.take().unwrap_or(EndReason::Closed);
        self.events.ended.do_send(ConnEnded {
            conn: self.id,
            reason,
        });
    }
}

impl StreamHandler<Result<Frame, WsProtocolError>> for Connection {
    fn handle(&mut self, item: Result<Frame, WsProtocolError>, ctx: &mut Context<Self>) {
        self.shared.touch();
        match item {
            Ok(frame) => self.on_frame(frame, ctx),
            Err(e) => self.fail(EndReason::Lost(format!("websocket error: {e}")), ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.fail(EndReason::Lost("upstream closed the socket".into()), ctx);
    }
}

impl WriteHandler<WsProtocolError> for Connection {
    fn error(&mut self, err: WsProtocolError, ctx: &mut Self::Context) -> Running {
        self.fail(EndReason::Lost(format!("write failed: {err}")), ctx);
        Running::Stop
    }
}

impl Handler<CancelFetch> for Connection {
    type Result = ();

    fn handle(&mut self, msg: CancelFetch, ctx: &mut Context<Self>) {
        let session = self
            .sessions
            .iter()
            .find(|(_, state)| state.fetch == msg.fetch)
            .map(|(session, _)| session.clone());
        if let Some(session) = session {
            let Some(state) = self.sessions.remove(&session) else {
                return;
            };
            ctx.cancel_future(state.timer);
            self.send_messages(&[ClientMessage::ChartDeleteSession { session }], ctx);
        }
    }
}

impl Handler<StartFetch> for Connection {
    type Result = ();

    fn handle(&mut self, msg: StartFetch, ctx: &mut Context<Self>) {
        if self.state != State::Ready {
            // The pool only dispatches to ready connections; a fetch that races with this
            // connection's end goes back to the pool as retryable via `ConnEnded`.
            return;
        }
        let session = new_session_id();
        let timeout = Duration::from_millis(self.settings.upstream.request_timeout_ms);
        let timer_session = session.clone();
        let timer = ctx.run_later(timeout, move |act, ctx| {
            act.finish(&timer_session, |_| Err(FetchError::Timeout), ctx);
        });
        let messages = ClientMessage::chart_series(
            &session,
            msg.symbol.as_str(),
            &msg.feed_resolution,
            u32::from(msg.bars.get()),
        );
        self.sessions.insert(
            session,
            FetchState {
                fetch: msg.fetch,
                symbol: msg.symbol,
                resolution: msg.resolution,
                bars: Vec::new(),
                metadata: None,
                timer,
            },
        );
        self.send_messages(&messages, ctx);
    }
}

impl Handler<StartLive> for Connection {
    type Result = ();

    fn handle(&mut self, msg: StartLive, ctx: &mut Context<Self>) {
        if self.state != State::Ready {
            // Racing with this connection's end: the pool places it again via `ConnEnded`.
            return;
        }
        self.start_live(msg.live, msg.target, ctx);
    }
}

impl Handler<StopLive> for Connection {
    type Result = ();

    fn handle(&mut self, msg: StopLive, ctx: &mut Context<Self>) {
        self.stop_live(msg.live, ctx);
    }
}

impl Handler<Shutdown> for Connection {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        self.fail(EndReason::Closed, ctx);
    }
}

/// `cs_` and twelve random letters and digits, as the browser does.
fn new_session_id() -> String {
    let mut rng = rand::rng();
    let tail: String = (&mut rng)
        .sample_iter(&rand::distr::Alphanumeric)
        .take(12)
        .map(char::from)
        .collect();
    format!("cs_{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_url_gets_the_chart_query_once() {
        assert_eq!(
            feed_url("ws://h/socket.io/websocket"),
            "ws://h/socket.io/websocket?from=chart&type=chart"
        );
        assert_eq!(
            feed_url("wss://h/ws?from=chart%2Fabc&date=1"),
            "wss://h/ws?from=chart%2Fabc&date=1&type=chart"
        );
        assert_eq!(
            feed_url("wss://h/ws?type=chart&from=chart"),
            "wss://h/ws?type=chart&from=chart"
        );
    }

    #[test]
    fn protocol_errors_are_told_apart() {
        let of = |s: &str| EndReason::from_protocol_error(s.to_string());
        assert!(matches!(
            of("Max Sessions Rate exceeded"),
            EndReason::RateLimited(_)
        ));
        assert!(matches!(of("bad auth token"), EndReason::AuthRejected(_)));
        assert!(matches!(of("wrong data"), EndReason::Protocol(_)));
        assert!(of("bad auth token").is_connect_failure());
        assert!(!of("wrong data").is_connect_failure());
    }

    #[test]
    fn session_ids_look_like_the_browser_ones() {
        let a = new_session_id();
        assert!(a.starts_with("cs_") && a.len() == 15);
        assert_ne!(a, new_session_id());
    }
}
