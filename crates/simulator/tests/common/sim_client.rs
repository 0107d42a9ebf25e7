//! A minimal chart-feed client for black-box tests: an awc WebSocket that frames and deframes
//! with chartgate's own `protocol` module and echoes heartbeats when asked to.
//!
//! Shared by the test binaries (`mod common;`); not every binary uses every helper.
#![allow(dead_code)]

use std::pin::Pin;
use std::time::Duration;

use awc::ws::{CloseReason, Frame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};

use chartgate_protocol::client::ClientMessage;
use chartgate_protocol::{Packet, ServerMessage, decode_message, encode_heartbeat, encode_packet};

type WsSink = Pin<Box<dyn Sink<Message, Error = awc::error::WsProtocolError>>>;
type WsStream = Pin<Box<dyn Stream<Item = Result<Frame, awc::error::WsProtocolError>>>>;

/// Largest message the tests accept (5000 bars are about 2 MB).
pub const MAX_FRAME: usize = 32 * 1024 * 1024;

/// What arrived from the feed.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// One whole text message (heartbeats included; they are also echoed when echoing is on).
    Text(String),
    /// A close frame.
    Closed(Option<CloseReason>),
    /// The connection ended with no close frame.
    Eof,
    /// Nothing within the time allowed.
    Timeout,
}

pub struct SimClient {
    sink: WsSink,
    stream: WsStream,
    /// Echo every `~h~N` packet as it arrives (what a well-behaved client does).
    pub echo_heartbeats: bool,
    /// Heartbeat numbers seen so far.
    pub heartbeats: Vec<String>,
    /// A text message being reassembled from continuation frames.
    partial: Option<Vec<u8>>,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The upgrade was answered with this HTTP status.
    Status(u16),
    Other(String),
}

impl SimClient {
    /// Connects with the `Origin` the real browser sends.
    pub async fn connect(url: &str) -> Result<SimClient, ConnectError> {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish();
        let result = client
            .ws(url)
            .origin("https://www.tradingview.com")
            .max_frame_size(MAX_FRAME)
            .connect()
            .await;
        let (_response, framed) = match result {
            Ok(ok) => ok,
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
                return Err(ConnectError::Status(status.as_u16()));
            }
            Err(e) => return Err(ConnectError::Other(e.to_string())),
        };
        let (sink, stream) = framed.split();
        Ok(SimClient {
            sink: Box::pin(sink),
            stream: Box::pin(stream),
            echo_heartbeats: true,
            heartbeats: Vec::new(),
            partial: None,
        })
    }

    /// Connects and sends `set_auth_token` with `token`.
    pub async fn connect_auth(url: &str, token: &str) -> SimClient {
        let mut client = SimClient::connect(url).await.expect("connect to the feed");
        client
            .send(&[ClientMessage::SetAuthToken {
                token: token.into(),
            }])
            .await;
        client
    }

    /// Sends `calls` framed together as ONE WebSocket message.
    pub async fn send(&mut self, calls: &[ClientMessage]) {
        let mut text = String::new();
        for call in calls {
            encode_packet(&call.to_payload(), &mut text);
        }
        self.send_raw(&text).await;
    }

    /// Sends one text message as is.
    pub async fn send_raw(&mut self, text: &str) {
        self.sink
            .send(Message::Text(text.to_string().into()))
            .await
            .expect("send to the feed");
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.sink.send(Message::Close(None)).await;
    }

    /// The next event, echoing heartbeats when `echo_heartbeats` is on.
    pub async fn next_event(&mut self, within: Duration) -> Incoming {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Incoming::Timeout,
                Ok(None) | Ok(Some(Err(_))) => return Incoming::Eof,
                Ok(Some(Ok(frame))) => frame,
            };
            let text = match frame {
                Frame::Text(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Frame::Continuation(item) => {
                    use actix_ws::Item;
                    match item {
                        Item::FirstText(b) | Item::FirstBinary(b) => {
                            self.partial = Some(b.to_vec());
                            continue;
                        }
                        Item::Continue(b) => {
                            if let Some(p) = self.partial.as_mut() {
                                p.extend_from_slice(&b);
                            }
                            continue;
                        }
                        Item::Last(b) => {
                            let mut whole = self.partial.take().unwrap_or_default();
                            whole.extend_from_slice(&b);
                            String::from_utf8_lossy(&whole).into_owned()
                        }
                    }
                }
                Frame::Ping(b) => {
                    let _ = self.sink.send(Message::Pong(b)).await;
                    continue;
                }
                Frame::Close(reason) => return Incoming::Closed(reason),
                Frame::Binary(_) | Frame::Pong(_) => continue,
            };
            if let Ok(packets) = decode_message(&text) {
                for packet in packets {
                    if let Packet::Heartbeat(n) = packet {
                        self.heartbeats.push(n.to_string());
                        if self.echo_heartbeats {
                            let echo = encode_heartbeat(n);
                            let _ = self.sink.send(Message::Text(echo.into())).await;
                        }
                    }
                }
            }
            return Incoming::Text(text);
        }
    }

    /// The next text message, or a panic naming what came instead.
    pub async fn next_text(&mut self, within: Duration) -> String {
        match self.next_event(within).await {
            Incoming::Text(text) => text,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Text messages until one holds a packet for which `done` is true (that message included).
    /// Heartbeat-only messages are skipped.
    pub async fn collect_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&ServerMessage<'_>) -> bool,
    ) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out: Vec<String> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let text = match self.next_event(left).await {
                Incoming::Text(text) => text,
                other => panic!(
                    "waiting for an answer, got {other:?} after {} messages: {:?}",
                    out.len(),
                    out.iter().map(|t| kinds(t)).collect::<Vec<Vec<String>>>()
                ),
            };
            if is_heartbeat_only(&text) {
                continue;
            }
            let finished = messages(&text).iter().any(&mut done);
            out.push(text);
            if finished {
                return out;
            }
        }
    }

    /// Reads (and echoes heartbeats) for `duration`, as an idle but healthy client does; returns
    /// the text messages read. Panics if the connection ends meanwhile.
    pub async fn idle(&mut self, duration: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + duration;
        let mut texts = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Incoming::Text(text) => texts.push(text),
                Incoming::Timeout => return texts,
                other => panic!("connection ended while idle: {other:?}"),
            }
        }
    }

    /// Skips messages until the connection closes or ends; returns how it ended and how many
    /// text messages came first.
    pub async fn wait_end(&mut self, within: Duration) -> (Incoming, usize) {
        let mut texts = 0;
        loop {
            match self.next_event(within).await {
                Incoming::Text(_) => texts += 1,
                other => return (other, texts),
            }
        }
    }
}

/// The JSON packets of a message decoded as server messages; undecodable packets are skipped
/// (as a robust client does).
pub fn messages(text: &str) -> Vec<ServerMessage<'_>> {
    decode_message(text)
        .map(|packets| {
            packets
                .into_iter()
                .filter_map(|p| match p {
                    Packet::Json(json) => ServerMessage::decode(json).ok(),
                    Packet::Heartbeat(_) => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The kind of every packet of a message: the method name, `hello`, `~h~` for heartbeats, and
/// `!garbage` for packets that are not JSON messages.
pub fn kinds(text: &str) -> Vec<String> {
    match decode_message(text) {
        Ok(packets) => packets
            .into_iter()
            .map(|p| match p {
                Packet::Heartbeat(_) => "~h~".to_string(),
                Packet::Json(json) => match ServerMessage::decode(json) {
                    Ok(m) => m.name().to_string(),
                    Err(_) => "!garbage".to_string(),
                },
            })
            .collect(),
        Err(_) => vec!["!unframed".into()],
    }
}

pub fn is_heartbeat_only(text: &str) -> bool {
    matches!(decode_message(text).as_deref(), Ok([Packet::Heartbeat(_)]))
}

/// The three calls chartgate's client sends for one chart, in one message.
pub fn chart_calls(
    session: &str,
    symbol: &str,
    resolution: &str,
    count: u32,
) -> Vec<ClientMessage> {
    ClientMessage::chart_series(session, symbol, resolution, count).to_vec()
}
