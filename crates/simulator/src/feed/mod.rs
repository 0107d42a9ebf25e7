//! The fake chart feed: `GET /socket.io/websocket`, a WebSocket (actix-ws) speaking TradingView's
//! chart protocol as in the capture.
//!
//! One task per connection owns all of its state (chart sessions, series, quote sessions,
//! heartbeats, the queue of series waiting for a `series_concurrency` slot) and selects over four
//! things: the client's messages, the heartbeat timer, series whose `latency_ms` has elapsed, and
//! the live tick. Owning the state in one task means no locks (but on the simulator's live
//! series, shared by every connection) and a deterministic order of answers.
//!
//! # Layout
//!
//! - this file: the route, and the connection task that wires the parts below together;
//! - `transport`: sending, framing, and the send-side faults (drop, stall, malformed);
//! - `heartbeat`: `~h~` heartbeats and the close of clients that stop echoing;
//! - `auth`: `set_auth_token`, the streaming or delayed status, per-token connection slots;
//! - `calls`: the client's calls, decoded, checked and answered or scheduled;
//! - `sessions`: chart sessions, their symbols and series (pure state);
//! - `symbols`: whether a symbol resolves and what `symbol_resolved` says about it;
//! - `schedule`: `series_concurrency` slots and the deadline-ordered queue of `latency_ms`;
//! - `answer`: composing series answers, and writing them ahead of their due time;
//! - `updates`: live updates, the `du` of live series and `qsd` of quotes at each tick;
//! - `quotes`: quote sessions and their symbols.
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
//! - Live: after its `series_completed` a series gets a `du` at each tick (`tick_ms`) with its
//!   bars that changed (see `crate::live`), until `remove_series`, `modify_series` (whose own
//!   answer makes it live again, for what it now shows) or `chart_delete_session`. Quote symbols
//!   get a full `qsd` and `quote_completed`, then a `qsd` of what changed at each tick.
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

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, Session};
use log::{debug, info};
use tokio::time::{Instant, sleep, sleep_until};

use chartgate_protocol::clock::unix_ms;
use chartgate_protocol::json::to_ascii_string;

use crate::state::{Counters, OpenConnection, SimState};

mod answer;
mod auth;
mod calls;
mod heartbeat;
mod quotes;
mod schedule;
mod sessions;
mod symbols;
mod transport;
mod updates;

pub use auth::{STATUS_DELAYED, STATUS_STREAMING, UNAUTHORIZED_TOKEN};

use auth::Auth;
use heartbeat::Heartbeats;
use quotes::QuoteSessions;
use schedule::Schedule;
use sessions::Sessions;
use transport::Transport;

/// Largest incoming frame: client messages are small, but the capture has an 18 KB `create_study`
/// and a client may batch many calls in one message.
const MAX_INCOMING_FRAME: usize = 4 * 1024 * 1024;
/// Largest incoming message after reassembling continuation frames.
const MAX_INCOMING_MESSAGE: usize = 8 * 1024 * 1024;

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

/// What woke the connection task.
enum Event {
    Incoming(Option<Result<AggregatedMessage, actix_ws::ProtocolError>>),
    Tick(Instant),
    /// The first of the active series is due.
    Due,
    /// The live tick: live series and quotes move on.
    Live,
}

/// One feed connection: everything it holds, owned by its task.
struct Connection {
    /// Numbers the connection in logs and in its hello's session id.
    id: u64,
    state: Arc<SimState>,
    /// Counts the connection in `connectionsOpen` for as long as it lives.
    _open: OpenConnection,
    out: Transport,
    heartbeats: Heartbeats,
    auth: Auth,
    sessions: Sessions,
    quotes: QuoteSessions,
    schedule: Schedule,
    /// The next live tick, while something here is live.
    live_due: Option<Instant>,
    /// Series answered with bars, for the closing log line.
    series_answered: u64,
}

impl Connection {
    fn new(state: Arc<SimState>, ws: Session) -> Connection {
        let id = state.next_connection.fetch_add(1, Ordering::Relaxed);
        Connection {
            id,
            _open: OpenConnection::new(state.clone()),
            out: Transport::new(state.clone(), ws),
            heartbeats: Heartbeats::new(state.heartbeat),
            auth: Auth::None,
            sessions: Sessions::default(),
            quotes: QuoteSessions::default(),
            schedule: Schedule::default(),
            live_due: None,
            series_answered: 0,
            state,
        }
    }

    async fn run(mut self, mut stream: AggregatedMessageStream) {
        info!(
            "simulator: connection {} open ({} open)",
            self.id,
            self.state.stats().connections_open
        );
        let hello = hello_payload(self.id);
        self.out.send(&[hello.as_str()]).await;
        let mut ticker = self.heartbeats.interval();
        while self.out.is_open() {
            let next_due = self.schedule.next_due();
            let live_due = self.live_due;
            let event = tokio::select! {
                incoming = stream.recv() => Event::Incoming(incoming),
                at = ticker.tick() => Event::Tick(at),
                () = sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => Event::Due,
                () = sleep_until(live_due.unwrap_or_else(Instant::now)), if live_due.is_some() => Event::Live,
            };
            match event {
                Event::Incoming(Some(Ok(AggregatedMessage::Text(text)))) => {
                    self.on_text(&text).await;
                }
                Event::Incoming(Some(Ok(AggregatedMessage::Ping(bytes)))) => {
                    self.out.pong(&bytes).await;
                }
                Event::Incoming(Some(Ok(AggregatedMessage::Close(_)))) => {
                    self.out.close_quietly();
                }
                Event::Incoming(Some(Ok(_))) => {}
                Event::Incoming(Some(Err(e))) => {
                    debug!("simulator: connection {} read error: {e}", self.id);
                    self.out.close(CloseCode::Protocol, "protocol error");
                }
                Event::Incoming(None) => self.out.gone(),
                Event::Tick(at) => {
                    self.heartbeats
                        .on_tick(at, &mut self.out, &self.state, self.id)
                        .await;
                }
                Event::Due => {
                    if let Some(due) = self.schedule.pop_due() {
                        self.answer(due.job, due.prepared).await;
                    }
                    self.pump().await;
                }
                Event::Live => self.live_tick().await,
            }
        }
        let how = self.out.finish().await;
        drop(stream);
        info!(
            "simulator: connection {} {how} after {} messages, {} series answered",
            self.id,
            self.out.messages_sent(),
            self.series_answered
        );
    }
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
