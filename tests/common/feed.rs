//! Asking the simulator itself, over a WebSocket of the test's own framed with the protocol crate,
//! for a chart's history: what the feed says the chart is, independently of chartgate.
//!
//! Shared by the test binaries (`mod common;`); not every binary uses every helper.
#![allow(dead_code)]

use std::time::Duration;

use awc::ws::{Frame, Message};
use futures_util::{SinkExt, StreamExt};

use chartgate_protocol::client::ClientMessage;
use chartgate_protocol::{
    Bar, Packet, ServerMessage, decode_message, encode_heartbeat, encode_packet,
};

/// How long the simulator may take to answer one history request.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

type Feed = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

/// A WebSocket to the feed at `feed_url` (as from `origin`), with `calls` sent in one message:
/// its two halves.
async fn connect_and_send(
    feed_url: &str,
    origin: &str,
    calls: &[ClientMessage],
) -> (
    futures_util::stream::SplitSink<Feed, Message>,
    futures_util::stream::SplitStream<Feed>,
) {
    let client = awc::Client::builder().timeout(ANSWER_WITHIN).finish();
    let (_, framed) = client
        .ws(feed_url)
        .origin(origin)
        .max_frame_size(32 << 20)
        .connect()
        .await
        .expect("connect to the simulator's feed");
    let (mut sink, stream) = framed.split();
    let mut text = String::new();
    for call in calls {
        encode_packet(&call.to_payload(), &mut text);
    }
    sink.send(Message::Text(text.into()))
        .await
        .expect("send the calls");
    (sink, stream)
}

/// The newest `count` bars of `symbol` at `resolution` as the feed at `feed_url` answers a history
/// request now, ascending. The chart session is deleted as soon as the answer is in, as chartgate
/// does, so the request moves nothing on the simulator.
pub async fn sim_history(
    feed_url: &str,
    origin: &str,
    symbol: &str,
    resolution: &str,
    count: u32,
) -> Vec<Bar> {
    let session = "cs_testhistory";
    let mut calls = vec![ClientMessage::SetAuthToken {
        token: "unauthorized_user_token".into(),
    }];
    calls.extend(ClientMessage::chart_series(
        session, symbol, resolution, count,
    ));
    let (mut sink, mut stream) = connect_and_send(feed_url, origin, &calls).await;

    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    let mut bars: Vec<(i64, Bar)> = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    'answer: loop {
        let frame = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("the simulator answered {symbol} {resolution} in time"))
            .unwrap_or_else(|| panic!("the feed closed before answering {symbol} {resolution}"))
            .expect("a WebSocket frame");
        let text = match frame {
            Frame::Text(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Frame::Continuation(item) => {
                use actix_http::ws::Item;
                match item {
                    Item::FirstText(b) | Item::FirstBinary(b) | Item::Continue(b) => {
                        partial.extend_from_slice(&b);
                        continue;
                    }
                    Item::Last(b) => {
                        partial.extend_from_slice(&b);
                        String::from_utf8_lossy(&std::mem::take(&mut partial)).into_owned()
                    }
                }
            }
            Frame::Ping(b) => {
                let _ = sink.send(Message::Pong(b)).await;
                continue;
            }
            Frame::Close(reason) => panic!("the feed closed: {reason:?}"),
            _ => continue,
        };
        for packet in decode_message(&text).expect("a framed message") {
            let payload = match packet {
                Packet::Heartbeat(n) => {
                    let _ = sink.send(Message::Text(encode_heartbeat(n).into())).await;
                    continue;
                }
                Packet::Json(payload) => payload,
            };
            let Ok(message) = ServerMessage::decode(payload) else {
                continue;
            };
            match message {
                ServerMessage::TimescaleUpdate { session: s, series } if s == session => {
                    for data in series.into_iter().filter(|d| d.series_id == "sds_1") {
                        bars.extend(data.bars.into_iter().map(|b| (b.index, b.bar)));
                    }
                }
                ServerMessage::SeriesCompleted { session: s, .. } if s == session => {
                    break 'answer;
                }
                ServerMessage::SymbolError { .. }
                | ServerMessage::SeriesError { .. }
                | ServerMessage::CriticalError { .. }
                | ServerMessage::ProtocolError { .. } => {
                    panic!("the simulator refused {symbol} {resolution}: {message:?}")
                }
                _ => {}
            }
        }
    }
    let delete = ClientMessage::ChartDeleteSession {
        session: session.into(),
    };
    let mut text = String::new();
    encode_packet(&delete.to_payload(), &mut text);
    let _ = sink.send(Message::Text(text.into())).await;
    let _ = sink.send(Message::Close(None)).await;
    bars.sort_by_key(|(index, _)| *index);
    bars.dedup_by_key(|(index, _)| *index);
    bars.into_iter().map(|(_, bar)| bar).collect()
}

/// A subscriber of the test's own that keeps live series followed upstream, as other clients of a
/// real feed do: while it lives the simulator's clock runs for those series even when chartgate
/// has no connection following them, so bars begin while chartgate is away.
pub struct Keeper {
    reader: actix_web::rt::task::JoinHandle<()>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Subscribes `charts` (symbol, resolution) live on a connection of its own, waits for every
/// answer, then keeps reading (and echoing heartbeats) until dropped.
pub async fn keep_live(feed_url: &str, origin: &str, charts: &[(String, String)]) -> Keeper {
    let mut calls = vec![ClientMessage::SetAuthToken {
        token: "unauthorized_user_token".into(),
    }];
    let sessions: Vec<String> = (0..charts.len()).map(|n| format!("cs_keeper{n}")).collect();
    for (session, (symbol, resolution)) in sessions.iter().zip(charts) {
        calls.extend(ClientMessage::chart_series(session, symbol, resolution, 10));
    }
    let (mut sink, mut stream) = connect_and_send(feed_url, origin, &calls).await;
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    let mut completed = 0;
    while completed < charts.len() {
        let frame = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("the keeper's series answered in time")
            .expect("the feed stays open")
            .expect("a WebSocket frame");
        let Frame::Text(bytes) = frame else { continue };
        for packet in decode_message(&String::from_utf8_lossy(&bytes)).expect("a framed message") {
            match packet {
                Packet::Heartbeat(n) => {
                    let _ = sink.send(Message::Text(encode_heartbeat(n).into())).await;
                }
                Packet::Json(payload) => {
                    if let Ok(ServerMessage::SeriesCompleted { .. }) =
                        ServerMessage::decode(payload)
                    {
                        completed += 1;
                    }
                }
            }
        }
    }
    let reader = actix_web::rt::spawn(async move {
        while let Some(Ok(frame)) = stream.next().await {
            let Frame::Text(bytes) = frame else { continue };
            for packet in decode_message(&String::from_utf8_lossy(&bytes)).unwrap_or_default() {
                if let Packet::Heartbeat(n) = packet {
                    let _ = sink.send(Message::Text(encode_heartbeat(n).into())).await;
                }
            }
        }
    });
    Keeper { reader }
}
