//! What the simulator's test binaries share besides the client: starting a simulator on a
//! loopback port, fetching a chart, reading its bars, and the HTTP control routes.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::time::Duration;

use tokio::time::Instant;

use chartgate_protocol::server::{IndexedBar, ServerMessage};
use chartgate_protocol::{Bar, Packet, decode_message};
use chartgate_simulator::{Faults, SimStats, Simulator, SimulatorSettings};
use serde_json::Value;

use super::sim_client::{SimClient, chart_calls, kinds, messages};

/// How long any one answer may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn start(settings: SimulatorSettings) -> Simulator {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    Simulator::start(&settings, listener)
        .await
        .expect("start the simulator")
}

pub async fn start_with(faults: Faults) -> Simulator {
    start(SimulatorSettings {
        faults,
        ..SimulatorSettings::default()
    })
    .await
}

pub async fn get(url: &str, cookie: Option<&str>) -> (u16, String) {
    let client = awc::Client::default();
    let mut req = client.get(url);
    if let Some(cookie) = cookie {
        req = req.insert_header(("Cookie", cookie));
    }
    let mut resp = req.send().await.expect("GET");
    let body = resp.body().await.expect("body");
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

pub async fn post_faults(sim: &Simulator, body: &str) -> (u16, String) {
    let client = awc::Client::default();
    let mut resp = client
        .post(format!("http://{}/sim/faults", sim.addr()))
        .insert_header(("Content-Type", "application/json"))
        .send_body(body.to_string())
        .await
        .expect("POST /sim/faults");
    let body = resp.body().await.expect("body");
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Waits (briefly) until the stats satisfy `ok`.
pub async fn stats_eventually(sim: &Simulator, ok: impl Fn(&SimStats) -> bool) -> SimStats {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = sim.stats();
        if ok(&stats) || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects, reads the hello, authenticates as unauthorised.
pub async fn connect_unauthorized(sim: &Simulator) -> SimClient {
    let mut client = SimClient::connect_auth(&sim.feed_url(), "unauthorized_user_token").await;
    let hello = client.next_text(WAIT).await;
    assert_eq!(kinds(&hello), ["hello"]);
    client
}

pub fn is_completed_or_error(m: &ServerMessage<'_>) -> bool {
    matches!(
        m,
        ServerMessage::SeriesCompleted { .. }
            | ServerMessage::SeriesError { .. }
            | ServerMessage::CriticalError { .. }
            | ServerMessage::ProtocolError { .. }
    )
}

/// Requests one chart on a fresh session and returns the answer's messages.
pub async fn fetch_chart(
    client: &mut SimClient,
    session: &str,
    symbol: &str,
    resolution: &str,
    count: u32,
) -> Vec<String> {
    client
        .send(&chart_calls(session, symbol, resolution, count))
        .await;
    client.collect_until(WAIT, is_completed_or_error).await
}

/// All bars carried by the `timescale_update`s of `texts` for `session`.
pub fn bars_of(texts: &[String], session: &str) -> Vec<IndexedBar> {
    let mut out = Vec::new();
    for text in texts {
        for m in messages(text) {
            if let ServerMessage::TimescaleUpdate { session: s, series } = m
                && s == session
            {
                for data in series {
                    out.extend(data.bars);
                }
            }
        }
    }
    out
}

pub fn plain(bars: &[IndexedBar]) -> Vec<Bar> {
    bars.iter().map(|b| b.bar).collect()
}

/// The JSON payloads of a message (skipping heartbeats and anything not JSON).
pub fn json_packets(text: &str) -> Vec<Value> {
    decode_message(text)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| match p {
            Packet::Json(j) => serde_json::from_str(j).ok(),
            Packet::Heartbeat(_) => None,
        })
        .collect()
}

pub fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}
