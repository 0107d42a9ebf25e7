//! A direct subscriber of the simulator's feed, on a thread of its own: one chart session, one
//! live series of a symbol no follower asks for, every `du` packet's arrival time recorded.
//!
//! The simulator ticks every connection on one grid (`epoch + k * tick_ms`), so the earliest
//! arrival of the probe's packets, modulo `tick_ms`, is where the grid lies in Unix time (to the
//! loopback delivery of an idle moment, tens of microseconds, plus the simulator's own timer
//! lateness, under 1 ms): the tick instant every follower's latency is measured from. Arrivals
//! later than that under load are the feed's own lateness (it shares the cores), reported apart
//! ([`crate::tally::Grid::lateness_ms`]).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use awc::ws::{self, Frame};
use chartgate_protocol::client::ClientMessage;
use chartgate_protocol::framing::{Packet, decode_message, encode_heartbeat, encode_packet};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;

use crate::tally::unix_ns;

/// The probe's symbol: none of the followers' screens hold it.
pub const PROBE_SYMBOL: &str = "NSE:BENCHPROBE";

/// One `du` packet: when the simulator stamped it (`t_ms`) and when the probe read it.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub t_ms: i64,
    pub at_ns: i64,
}

/// The probe's thread; it stops when dropped.
pub struct FeedProbe {
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FeedProbe {
    /// Connects to the feed at `url` and follows [`PROBE_SYMBOL`] on 1D.
    pub fn start(url: &str) -> FeedProbe {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel();
        let url = url.to_string();
        let record = arrivals.clone();
        let thread = std::thread::Builder::new()
            .name("bench-probe".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    tokio::select! {
                        r = follow(&url, &record) => {
                            if let Err(e) = r {
                                eprintln!("chartgate-bench: feed probe: {e}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawn the probe thread");
        FeedProbe {
            arrivals,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The arrivals read at or after `from_ns`.
    pub fn arrivals_since(&self, from_ns: i64) -> Vec<Arrival> {
        self.arrivals
            .lock()
            .map(|a| a.iter().filter(|x| x.at_ns >= from_ns).copied().collect())
            .unwrap_or_default()
    }
}

impl Drop for FeedProbe {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where the grid of `tick_ns` lies: the earliest of `arrivals` modulo the tick (taken around
/// the first one, so a grid near a multiple of the tick does not wrap). `None` without arrivals.
pub fn grid_phase(arrivals: &[Arrival], tick_ns: i64) -> Option<i64> {
    let first = arrivals.first()?.at_ns;
    let tick = tick_ns.max(1);
    let offset = arrivals
        .iter()
        .map(|a| {
            let d = (a.at_ns - first).rem_euclid(tick);
            if d > tick / 2 { d - tick } else { d }
        })
        .min()?;
    Some((first + offset).rem_euclid(tick))
}

async fn follow(url: &str, record: &Mutex<Vec<Arrival>>) -> Result<(), String> {
    let (_, mut framed) = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
        .ws(url)
        .max_frame_size(8 * 1024 * 1024)
        .connect()
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let mut hello = vec![ClientMessage::SetAuthToken {
        token: "unauthorized_user_token".into(),
    }];
    hello.extend(ClientMessage::chart_series(
        "cs_benchprobe01",
        PROBE_SYMBOL,
        "1D",
        10,
    ));
    let mut text = String::new();
    for m in &hello {
        encode_packet(&m.to_payload(), &mut text);
    }
    framed
        .send(ws::Message::Text(text.into()))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(frame) = framed.next().await {
        let at_ns = unix_ns();
        let bytes = match frame.map_err(|e| e.to_string())? {
            Frame::Text(b) | Frame::Binary(b) => b,
            Frame::Ping(p) => {
                let _ = framed.send(ws::Message::Pong(p)).await;
                continue;
            }
            Frame::Close(_) => return Err("the feed closed the probe".into()),
            _ => continue,
        };
        let Ok(message) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let mut replies = Vec::new();
        for packet in decode_message(message).unwrap_or_default() {
            match packet {
                Packet::Heartbeat(n) => replies.push(encode_heartbeat(n)),
                Packet::Json(json) if json.starts_with("{\"m\":\"du\"") => {
                    let t_ms = serde_json::from_str::<serde_json::Value>(json)
                        .ok()
                        .and_then(|v| v["t_ms"].as_i64())
                        .unwrap_or(0);
                    if let Ok(mut a) = record.lock() {
                        a.push(Arrival { t_ms, at_ns });
                    }
                }
                Packet::Json(_) => {}
            }
        }
        for r in replies {
            framed
                .send(ws::Message::Text(r.into()))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Err("the feed ended the probe's connection".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ns: i64) -> Arrival {
        Arrival { t_ms: 0, at_ns: ns }
    }

    #[test]
    fn the_phase_is_the_earliest_arrival_modulo_the_tick() {
        let a = [at(10_300), at(11_250), at(12_400)];
        assert_eq!(grid_phase(&a, 1000), Some(250));
        // Around a multiple of the tick: 990 and 1_005 are 15 apart, not 985.
        let b = [at(20_990), at(22_005), at(23_000)];
        assert_eq!(grid_phase(&b, 1000), Some(990));
        assert_eq!(grid_phase(&[], 1000), None);
    }
}
