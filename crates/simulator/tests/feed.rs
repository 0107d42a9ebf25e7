//! Black-box tests of the simulator over real loopback sockets: the capture replayed against it,
//! the chart protocol's answers and errors, the MarketInOut and token pages, counters, and every
//! fault as a client observes it.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use chartgate_protocol::client::ClientMessage;
use chartgate_protocol::clock::{unix_ms, unix_secs};
use chartgate_protocol::server::ServerMessage;
use chartgate_protocol::{Packet, decode_message, encode_packet};
use chartgate_simulator::{Faults, SimulatorSettings};
use chartgate_simulator::{SimStats, Simulator, expected_bars};

use common::harness::{
    WAIT, bars_of, connect_unauthorized, fetch_chart, get, is_completed_or_error, json_packets,
    keys, plain, post_faults, start, start_with, stats_eventually,
};
use common::sim_client::{
    ConnectError, Incoming, SimClient, chart_calls, is_heartbeat_only, kinds, messages,
};

fn fixture(name: &str) -> String {
    let path = format!("{}/../../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn settings() -> SimulatorSettings {
    SimulatorSettings::default()
}

/// A token from the simulator's `/chart/` page.
async fn fetch_token(sim: &Simulator) -> String {
    let (status, body) = get(&sim.token_url(), Some("sessionid=abc; sessionid_sign=def")).await;
    assert_eq!(status, 200);
    let start = body
        .find("\"auth_token\":\"")
        .expect("auth_token in the page")
        + 14;
    let len = body[start..].find('"').expect("end of the token");
    body[start..start + len].to_string()
}

/// A first series answer is one message: loading, the owed symbol, the bars, completed.
fn assert_one_answer_message(answer: &[String]) {
    assert_eq!(answer.len(), 1, "one message");
    assert_eq!(
        kinds(&answer[0]),
        [
            "series_loading",
            "symbol_resolved",
            "timescale_update",
            "series_completed"
        ]
    );
}

/// The shape of a JSON value: types, recursively for arrays' positions.
fn layout(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Array(a) => format!("[{}]", a.iter().map(layout).collect::<Vec<_>>().join(",")),
        Value::Object(o) => format!("{{{}}}", o.keys().cloned().collect::<Vec<_>>().join(",")),
    }
}

// ------------------------------------------------------------------------------------------------
// The capture
// ------------------------------------------------------------------------------------------------

/// Kinds the simulator implements, in the order the capture's `recv` side has them. A
/// `timescale_update` counts only when it carries series bars (not tick marks or studies).
fn implemented_kinds(text: &str) -> Vec<String> {
    messages(text)
        .into_iter()
        .filter_map(|m| match &m {
            ServerMessage::TimescaleUpdate { series, .. } if series.is_empty() => None,
            ServerMessage::Hello(_)
            | ServerMessage::SeriesLoading { .. }
            | ServerMessage::SymbolResolved { .. }
            | ServerMessage::TimescaleUpdate { .. }
            | ServerMessage::SeriesCompleted { .. }
            | ServerMessage::SeriesTimeframe { .. } => Some(m.name().to_string()),
            _ => None,
        })
        .collect()
}

/// The JSON packets of the capture's `recv` side with method `m`.
fn capture_packets(lines: &[(String, String)], m: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|(dir, _)| dir == "recv")
        .flat_map(|(_, data)| json_packets(data))
        .filter(|v| v.get("m").and_then(Value::as_str) == Some(m))
        .collect()
}

#[actix_web::test]
async fn replaying_the_capture_gives_the_same_kinds_in_the_same_order_and_shapes() {
    let lines: Vec<(String, String)> = fixture("tradingview-capture.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("capture line is JSON");
            (
                v["dir"].as_str().unwrap_or_default().to_string(),
                v["data"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let sim = start(settings()).await;
    let token = fetch_token(&sim).await;

    // The send side, burst by burst: consecutive `send` messages (the browser sent them within
    // milliseconds) go as one message, with the redacted JWT replaced by a real one and the
    // capture's heartbeat echoes left out (the client echoes the simulator's own heartbeats).
    let mut bursts: Vec<String> = Vec::new();
    let mut current = String::new();
    for (dir, data) in &lines {
        if dir != "send" {
            if !current.is_empty() {
                bursts.push(std::mem::take(&mut current));
            }
            continue;
        }
        for packet in decode_message(data).expect("capture send message frames") {
            let Packet::Json(payload) = packet else {
                continue;
            };
            match ClientMessage::from_payload(payload) {
                Ok(ClientMessage::SetAuthToken { .. }) => encode_packet(
                    &ClientMessage::SetAuthToken {
                        token: token.clone(),
                    }
                    .to_payload(),
                    &mut current,
                ),
                _ => encode_packet(payload, &mut current),
            }
        }
    }
    if !current.is_empty() {
        bursts.push(current);
    }

    let expected: Vec<String> = lines
        .iter()
        .filter(|(dir, _)| dir == "recv")
        .flat_map(|(_, data)| implemented_kinds(data))
        .collect();
    let completions = expected.iter().filter(|k| *k == "series_completed").count();
    assert_eq!(completions, 4, "the capture completes four series answers");

    let mut client = SimClient::connect(&sim.feed_url()).await.expect("connect");
    let mut received = vec![client.next_text(WAIT).await];
    for burst in &bursts {
        client.send_raw(burst).await;
    }
    let mut seen = 0;
    while seen < completions {
        let text = client.next_text(WAIT).await;
        if is_heartbeat_only(&text) {
            continue;
        }
        seen += messages(&text)
            .iter()
            .filter(|m| matches!(m, ServerMessage::SeriesCompleted { .. }))
            .count();
        received.push(text);
    }
    let got: Vec<String> = received.iter().flat_map(|t| implemented_kinds(t)).collect();
    assert_eq!(got, expected);

    // Shapes. symbol_resolved: a superset of the capture's keys.
    let ours: Vec<Value> = received.iter().flat_map(|t| json_packets(t)).collect();
    let of = |m: &str| -> Vec<&Value> {
        ours.iter()
            .filter(|v| v.get("m").and_then(Value::as_str) == Some(m))
            .collect()
    };
    let captured_info = keys(&capture_packets(&lines, "symbol_resolved")[0]["p"][2]);
    assert_eq!(captured_info.len(), 49);
    for resolved in of("symbol_resolved") {
        let info = keys(&resolved["p"][2]);
        let missing: Vec<_> = captured_info.difference(&info).collect();
        assert!(missing.is_empty(), "symbol_resolved lacks {missing:?}");
    }
    // timescale_update: the series element and the tick-mark element.
    for tsu in of("timescale_update") {
        let p = &tsu["p"];
        for (_, element) in p[1].as_object().expect("series map") {
            assert_eq!(
                keys(element),
                ["lbs", "node", "ns", "s", "t"]
                    .map(String::from)
                    .into_iter()
                    .collect()
            );
        }
        assert_eq!(
            keys(&p[2]),
            ["changes", "index", "index_diff", "marks", "zoffset"]
                .map(String::from)
                .into_iter()
                .collect()
        );
        assert!(tsu.get("t").is_some() && tsu.get("t_ms").is_some());
    }
    // series_completed, series_loading and series_timeframe: the capture's parameter layout.
    for m in ["series_completed", "series_loading", "series_timeframe"] {
        let theirs: BTreeSet<String> = capture_packets(&lines, m)
            .iter()
            .map(|v| layout(&v["p"]))
            .collect();
        for v in of(m) {
            assert!(
                theirs.contains(&layout(&v["p"])),
                "{m} layout {} not among the capture's {theirs:?}",
                layout(&v["p"])
            );
        }
    }
    let hello = &ours[0];
    let captured_hello = &json_packets(&lines[0].1)[0];
    assert_eq!(keys(hello), keys(captured_hello));

    // Bars: 300 daily and 300 188-minute bars of NSE:JUNIPER, then 232 older 188-minute bars
    // with indices -232..-1, all from the deterministic walk.
    let daily = bars_of(&received, "cs_2iRcv6K6V6wl");
    assert_eq!(plain(&daily), *expected_bars("NSE:JUNIPER", "1D", 300));
    let intraday = bars_of(&received, "cs_1EScFq71Fjjf");
    assert_eq!(intraday.len(), 532);
    assert_eq!(
        plain(&intraday[..300]),
        *expected_bars("NSE:JUNIPER", "188", 300)
    );
    let older = &intraday[300..];
    assert_eq!(older[0].index, -232);
    assert_eq!(older[231].index, -1);
    assert_eq!(
        plain(older),
        expected_bars("NSE:JUNIPER", "188", 532)[..232].to_vec()
    );
    // Authenticated with a token from /chart/: real-time status.
    for completed in of("series_completed") {
        assert_eq!(completed["p"][2], "streaming");
    }
    sim.stop().await;
}

// ------------------------------------------------------------------------------------------------
// Protocol behaviour
// ------------------------------------------------------------------------------------------------

#[actix_web::test]
async fn a_series_answer_is_one_message_with_its_symbol_and_exact_bars() {
    let sim = start(settings()).await;
    let mut client = connect_unauthorized(&sim).await;
    let answer = fetch_chart(&mut client, "cs_a", "NSE:TCS", "1D", 300).await;
    assert_one_answer_message(&answer);
    let bars = bars_of(&answer, "cs_a");
    assert_eq!(plain(&bars), *expected_bars("NSE:TCS", "1D", 300));
    assert_eq!(bars[0].index, 0);
    for m in messages(&answer[0]) {
        match m {
            ServerMessage::SymbolResolved { info, .. } => {
                assert_eq!(info.full_name, "NSE:TCS");
                assert_eq!(info.description, "Tata Consultancy Services Ltd");
                assert_eq!(info.currency_code, "INR");
            }
            ServerMessage::SeriesCompleted {
                status, turnaround, ..
            } => {
                assert_eq!(status, "delayed_streaming_900");
                assert_eq!(turnaround, "s1");
            }
            _ => {}
        }
    }

    // A resolve_symbol alone is answered at once, on its own.
    client
        .send(&[ClientMessage::ResolveSymbol {
            session: "cs_a".into(),
            symbol_id: "sds_sym_2".into(),
            spec: chartgate_protocol::client::SymbolSpec {
                adjustment: None,
                session: None,
                symbol: "NSE:INFY".into(),
            },
        }])
        .await;
    let alone = client
        .collect_until(WAIT, |m| matches!(m, ServerMessage::SymbolResolved { .. }))
        .await;
    assert_eq!(kinds(&alone[0]), ["symbol_resolved"]);

    // 5000 bars at most, in one message of a few megabytes.
    let big = fetch_chart(&mut client, "cs_big", "NSE:INFY", "5", 6000).await;
    assert_eq!(
        plain(&bars_of(&big, "cs_big")),
        *expected_bars("NSE:INFY", "5", 5000)
    );
    sim.stop().await;
}

#[actix_web::test]
async fn fifty_sessions_in_flight_on_one_connection_each_get_their_own_bars() {
    let sim = start_with(Faults {
        latency_ms: 30,
        ..Faults::default()
    })
    .await;
    let mut client = connect_unauthorized(&sim).await;
    let tickers = &chartgate_simulator::tickers::NSE_TICKERS[..50];
    let resolutions = ["1D", "1W", "60", "15", "1M"];
    let mut wanted: HashMap<String, (String, &str, u32)> = HashMap::new();
    for (n, (ticker, _)) in tickers.iter().enumerate() {
        let session = format!("cs_{n:03}");
        let symbol = format!("NSE:{ticker}");
        let resolution = resolutions[n % resolutions.len()];
        let count = 50 + n as u32 * 7;
        client
            .send(&chart_calls(&session, &symbol, resolution, count))
            .await;
        wanted.insert(session, (symbol, resolution, count));
    }
    let mut done: HashMap<String, usize> = HashMap::new();
    let mut order = Vec::new();
    let mut texts = Vec::new();
    while done.len() < 50 {
        let text = client.next_text(WAIT).await;
        for m in messages(&text) {
            if let ServerMessage::SeriesCompleted { session, .. } = m {
                *done.entry(session.to_string()).or_default() += 1;
                order.push(session.to_string());
            }
        }
        texts.push(text);
    }
    // Answers that fall due together leave in request order, as from a real feed.
    let sent: Vec<String> = (0..50).map(|n| format!("cs_{n:03}")).collect();
    assert_eq!(
        order, sent,
        "series answered in the order they were asked for"
    );
    for (session, (symbol, resolution, count)) in &wanted {
        let bars = bars_of(&texts, session);
        assert_eq!(
            plain(&bars),
            *expected_bars(symbol, resolution, *count),
            "{session} ({symbol} {resolution})"
        );
        assert_eq!(done.get(session), Some(&1), "{session} completed once");
    }
    let stats = sim.stats();
    assert_eq!(stats.series_served, 50);
    assert_eq!(stats.symbols_resolved, 50);
    assert_eq!(stats.connections_open, 1);
    sim.stop().await;
}

#[actix_web::test]
async fn counters_move_as_they_should_and_connections_do_not_leak() {
    let sim = start(settings()).await;
    assert_eq!(sim.stats(), SimStats::default());
    let token = fetch_token(&sim).await;
    let mut a = SimClient::connect_auth(&sim.feed_url(), &token).await;
    a.next_text(WAIT).await;
    let mut b = connect_unauthorized(&sim).await;
    fetch_chart(&mut a, "cs_1", "NSE:SBIN", "1D", 10).await;
    fetch_chart(&mut a, "cs_2", "NSE:SBIN", "1W", 10).await;
    fetch_chart(&mut b, "cs_1", "NSE:ITC", "60", 10).await;
    let stats = sim.stats();
    assert_eq!(stats.connections_open, 2);
    assert_eq!(stats.connections_total, 2);
    assert_eq!(stats.series_served, 3);
    assert_eq!(stats.symbols_resolved, 3);
    assert_eq!(stats.tokens_issued, 1);
    assert_eq!(stats.handshakes_rejected, 0);

    // The HTTP route reports the same numbers.
    let (status, body) = get(&format!("http://{}/sim/stats", sim.addr()), None).await;
    assert_eq!(status, 200);
    let json: Value = serde_json::from_str(&body).expect("stats JSON");
    assert_eq!(json, serde_json::to_value(sim.stats()).expect("stats"));
    assert_eq!(json["seriesServed"], 3);

    a.close().await;
    drop(b);
    let stats = stats_eventually(&sim, |s| s.connections_open == 0).await;
    assert_eq!(stats.connections_open, 0);
    assert_eq!(stats.connections_total, 2);
    sim.stop().await;
}

#[actix_web::test]
async fn a_client_that_stops_echoing_is_closed_after_two_heartbeat_intervals() {
    let mut s = settings();
    s.heartbeat_secs = 1;
    let sim = start(s).await;
    let mut silent = connect_unauthorized(&sim).await;
    silent.echo_heartbeats = false;
    let mut polite = connect_unauthorized(&sim).await;
    let started = Instant::now();
    let (((end, _), elapsed), idle) = futures_util::join!(
        async {
            let end = silent.wait_end(Duration::from_secs(6)).await;
            (end, started.elapsed())
        },
        polite.idle(Duration::from_millis(3500))
    );
    assert!(idle.iter().all(|t| is_heartbeat_only(t)));
    match end {
        Incoming::Closed(Some(reason)) => {
            assert_eq!(reason.description.as_deref(), Some("heartbeat timeout"));
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(
        elapsed >= Duration::from_millis(1900),
        "closed after {elapsed:?}"
    );
    assert!(!silent.heartbeats.is_empty());
    // The echoing client is still served.
    let answer = fetch_chart(&mut polite, "cs_1", "NSE:TCS", "1D", 5).await;
    assert_eq!(bars_of(&answer, "cs_1").len(), 5);
    assert!(!polite.heartbeats.is_empty());
    let stats = sim.stats();
    assert!(stats.heartbeats_sent >= 4, "{stats:?}");
    assert!(stats.heartbeats_echoed >= 2, "{stats:?}");
    sim.stop().await;
}

#[actix_web::test]
async fn volumeless_symbols_have_five_value_bars() {
    let sim = start(settings()).await;
    let mut client = connect_unauthorized(&sim).await;
    let answer = fetch_chart(&mut client, "cs_i", "NSE:NIFTY", "1D", 20).await;
    let tsu = json_packets(&answer[0])
        .into_iter()
        .find(|v| v["m"] == "timescale_update")
        .expect("timescale_update");
    for bar in tsu["p"][1]["sds_1"]["s"].as_array().expect("bars") {
        assert_eq!(bar["v"].as_array().map(Vec::len), Some(5));
    }
    let bars = bars_of(&answer, "cs_i");
    assert!(bars.iter().all(|b| b.bar.volume.is_none()));
    assert_eq!(plain(&bars), *expected_bars("NSE:NIFTY", "1D", 20));
    let info = messages(&answer[0])
        .into_iter()
        .find_map(|m| match m {
            ServerMessage::SymbolResolved { info, .. } => Some(info),
            _ => None,
        })
        .expect("symbol_resolved");
    assert_eq!(info.kind, "index");
    sim.stop().await;
}

#[actix_web::test]
async fn each_simulator_has_its_own_volumeless_symbols() {
    let mut tcs_volumeless = settings();
    tcs_volumeless.volumeless = vec!["nse:tcs".into()];
    let custom = start(tcs_volumeless).await;
    let default = start(settings()).await;
    for (sim, volumeless) in [(&custom, true), (&default, false)] {
        let mut client = connect_unauthorized(sim).await;
        let answer = fetch_chart(&mut client, "cs_1", "NSE:TCS", "1D", 5).await;
        let bars = plain(&bars_of(&answer, "cs_1"));
        assert_eq!(bars.len(), 5);
        assert!(
            bars.iter().all(|b| b.volume.is_none() == volumeless),
            "volumeless {volumeless}: {bars:?}"
        );
        if !volumeless {
            // What a default simulator serves, whatever other simulators were started with.
            assert_eq!(bars, *expected_bars("NSE:TCS", "1D", 5));
        }
    }
    custom.stop().await;
    default.stop().await;
}

#[actix_web::test]
async fn unknown_symbols_get_symbol_error_and_their_series_get_series_error() {
    let mut s = settings();
    s.faults.unknown_symbols = vec!["NSE:DELISTED".into()];
    let sim = start(s).await;
    let mut client = connect_unauthorized(&sim).await;
    for (n, symbol) in ["NSE:INVALIDXYZ", "NSE:DELISTED", "NOCOLON"]
        .iter()
        .enumerate()
    {
        let session = format!("cs_{n}");
        let answer = fetch_chart(&mut client, &session, symbol, "1D", 10).await;
        let all: Vec<String> = answer.iter().flat_map(|t| kinds(t)).collect();
        assert_eq!(all, ["symbol_error", "series_error"], "{symbol}");
        let m = messages(&answer[0]);
        assert!(matches!(
            &m[0],
            ServerMessage::SymbolError { session: s, symbol_id, .. }
                if *s == session && symbol_id == "sds_sym_1"
        ));
    }
    assert_eq!(sim.stats().symbols_resolved, 0);
    assert_eq!(sim.stats().series_served, 0);
    sim.stop().await;
}

#[actix_web::test]
async fn resolutions_the_feed_does_not_know_get_series_error() {
    let sim = start(settings()).await;
    let mut client = connect_unauthorized(&sim).await;
    for (n, resolution) in ["abc", "0", "1441", "2W"].iter().enumerate() {
        let session = format!("cs_{n}");
        let answer = fetch_chart(&mut client, &session, "NSE:TCS", resolution, 10).await;
        let all: Vec<String> = answer.iter().flat_map(|t| kinds(t)).collect();
        assert_eq!(all, ["symbol_resolved", "series_error"], "{resolution}");
        let last = messages(answer.last().expect("answer")).pop();
        assert!(
            matches!(&last, Some(ServerMessage::SeriesError { series_id, turnaround, .. })
                if series_id == "sds_1" && turnaround == "s1"),
            "{last:?}"
        );
    }
    for (n, resolution) in ["188", "D", "3D", "W", "M", "1440"].iter().enumerate() {
        let session = format!("cs_ok{n}");
        let answer = fetch_chart(&mut client, &session, "NSE:TCS", resolution, 10).await;
        assert_eq!(bars_of(&answer, &session).len(), 10, "{resolution}");
    }
    // A series for a symbol id never resolved, or on a session never created.
    client
        .send(&[ClientMessage::CreateSeries {
            session: "cs_ok0".into(),
            series_id: "sds_9".into(),
            turnaround: "s1".into(),
            symbol_id: "sds_sym_9".into(),
            resolution: "1D".into(),
            count: 10,
            range: String::new(),
        }])
        .await;
    let answer = client.collect_until(WAIT, is_completed_or_error).await;
    assert_eq!(kinds(&answer[0]), ["series_error"]);
    client
        .send(&[ClientMessage::ChartDeleteSession {
            session: "cs_ok1".into(),
        }])
        .await;
    client
        .send(&[ClientMessage::CreateSeries {
            session: "cs_ok1".into(),
            series_id: "sds_1".into(),
            turnaround: "s2".into(),
            symbol_id: "sds_sym_1".into(),
            resolution: "1D".into(),
            count: 10,
            range: String::new(),
        }])
        .await;
    let answer = client.collect_until(WAIT, is_completed_or_error).await;
    assert_eq!(kinds(&answer[0]), ["series_error"]);
    sim.stop().await;
}

#[actix_web::test]
async fn malformed_calls_get_critical_error_and_garbage_is_survived() {
    let sim = start(settings()).await;
    let mut client = connect_unauthorized(&sim).await;
    let mut text = String::new();
    encode_packet(r#"{"m":"create_series","p":["cs_1"]}"#, &mut text);
    client.send_raw(&text).await;
    let answer = client.collect_until(WAIT, is_completed_or_error).await;
    match &messages(&answer[0])[0] {
        ServerMessage::CriticalError { reason, detail, .. } => {
            assert_eq!(reason, "invalid parameters");
            assert_eq!(detail, &["create_series".to_string()]);
        }
        other => panic!("expected critical_error, got {other:?}"),
    }
    // Garbage of every sort is ignored; the connection still works.
    for junk in [
        "",
        "hello",
        "~m~99999~m~x",
        "~m~5~m~[1,2]",
        "~m~12~m~{\"m\":[1,2]}",
        "~m~4~m~\u{e9}\u{e9}\u{e9}\u{e9}",
    ] {
        client.send_raw(junk).await;
    }
    let answer = fetch_chart(&mut client, "cs_2", "NSE:TCS", "1D", 3).await;
    assert_eq!(bars_of(&answer, "cs_2").len(), 3);
    sim.stop().await;
}

#[actix_web::test]
async fn request_more_data_pages_back_with_negative_indices_up_to_5000_bars() {
    let sim = start(settings()).await;
    let mut client = connect_unauthorized(&sim).await;
    fetch_chart(&mut client, "cs_m", "NSE:HDFCBANK", "60", 4800).await;
    let more = |count| ClientMessage::RequestMoreData {
        session: "cs_m".into(),
        series_id: "sds_1".into(),
        count,
    };
    client.send(&[more(150)]).await;
    let page = client.collect_until(WAIT, is_completed_or_error).await;
    let bars = bars_of(&page, "cs_m");
    assert_eq!(
        (bars.len(), bars[0].index, bars[149].index),
        (150, -150, -1)
    );
    assert_eq!(
        plain(&bars),
        expected_bars("NSE:HDFCBANK", "60", 4950)[..150].to_vec()
    );
    client.send(&[more(500)]).await;
    let page = client.collect_until(WAIT, is_completed_or_error).await;
    let bars = bars_of(&page, "cs_m");
    assert_eq!(bars.len(), 50, "capped at 5000 in all");
    assert_eq!((bars[0].index, bars[49].index), (-200, -151));
    client.send(&[more(10)]).await;
    let page = client.collect_until(WAIT, is_completed_or_error).await;
    assert!(bars_of(&page, "cs_m").is_empty());
    assert!(kinds(page.last().expect("answer")).contains(&"series_completed".to_string()));
    sim.stop().await;
}

#[actix_web::test]
async fn modify_series_answers_with_new_bars_or_the_timeframe() {
    let sim = start(settings()).await;
    let mut client = connect_unauthorized(&sim).await;
    fetch_chart(&mut client, "cs_x", "NSE:TCS", "1D", 20).await;
    let modify = |turnaround: &str, resolution: &str| ClientMessage::ModifySeries {
        session: "cs_x".into(),
        series_id: "sds_1".into(),
        turnaround: turnaround.into(),
        symbol_id: "sds_sym_1".into(),
        resolution: resolution.into(),
        range: String::new(),
    };
    client.send(&[modify("s2", "1W")]).await;
    let answer = client.collect_until(WAIT, is_completed_or_error).await;
    assert_eq!(
        kinds(&answer[0]),
        ["series_loading", "timescale_update", "series_completed"]
    );
    assert_eq!(
        plain(&bars_of(&answer, "cs_x")),
        *expected_bars("NSE:TCS", "1W", 20)
    );
    assert!(matches!(
        messages(&answer[0]).last(),
        Some(ServerMessage::SeriesCompleted { turnaround, .. }) if turnaround == "s2"
    ));
    client.send(&[modify("s3", "1W")]).await;
    let answer = client.collect_until(WAIT, is_completed_or_error).await;
    assert_eq!(
        kinds(&answer[0]),
        [
            "series_loading",
            "series_timeframe",
            "series_timeframe",
            "series_completed"
        ]
    );
    // remove_series: the series is gone (more data for it is an error).
    client
        .send(&[
            ClientMessage::RemoveSeries {
                session: "cs_x".into(),
                series_id: "sds_1".into(),
            },
            ClientMessage::RequestMoreData {
                session: "cs_x".into(),
                series_id: "sds_1".into(),
                count: 10,
            },
        ])
        .await;
    let answer = client.collect_until(WAIT, is_completed_or_error).await;
    assert_eq!(kinds(&answer[0]), ["series_error"]);
    sim.stop().await;
}

// ------------------------------------------------------------------------------------------------
// Authentication
// ------------------------------------------------------------------------------------------------

#[actix_web::test]
async fn tokens_decide_streaming_delayed_or_protocol_error() {
    let sim = start(settings()).await;
    let token = fetch_token(&sim).await;
    let status_of = |answer: &[String]| {
        answer
            .iter()
            .flat_map(|t| messages(t))
            .find_map(|m| match m {
                ServerMessage::SeriesCompleted { status, .. } => Some(status.to_string()),
                _ => None,
            })
    };

    let mut signed_in = SimClient::connect_auth(&sim.feed_url(), &token).await;
    signed_in.next_text(WAIT).await;
    let answer = fetch_chart(&mut signed_in, "cs_1", "NSE:TCS", "1D", 5).await;
    assert_eq!(status_of(&answer).as_deref(), Some("streaming"));

    let mut anonymous = connect_unauthorized(&sim).await;
    let answer = fetch_chart(&mut anonymous, "cs_1", "NSE:TCS", "1D", 5).await;
    assert_eq!(status_of(&answer).as_deref(), Some("delayed_streaming_900"));

    // No set_auth_token at all: served as unauthorised.
    let mut silent = SimClient::connect(&sim.feed_url()).await.expect("connect");
    silent.next_text(WAIT).await;
    let answer = fetch_chart(&mut silent, "cs_1", "NSE:TCS", "1D", 5).await;
    assert_eq!(status_of(&answer).as_deref(), Some("delayed_streaming_900"));

    // A forged token, and one signed with the simulator's own key but already expired.
    let claims = |exp| chartgate_protocol::token::Claims {
        exp,
        max_connections: None,
        user_id: None,
    };
    let forged = chartgate_simulator::tokens::issue(&claims(4_000_000_000), b"guessed key");
    let expired = sim.issue_token(&claims(unix_secs() - 1));
    for bad in [forged.as_str(), "garbage", expired.as_str()] {
        let mut client = SimClient::connect_auth(&sim.feed_url(), bad).await;
        let texts = [client.next_text(WAIT).await, client.next_text(WAIT).await];
        assert_eq!(kinds(&texts[0]), ["hello"]);
        match &messages(&texts[1])[..] {
            [ServerMessage::ProtocolError { reason }] => assert_eq!(reason, "bad auth token"),
            other => panic!("expected protocol_error, got {other:?}"),
        }
        let (end, _) = client.wait_end(WAIT).await;
        assert!(matches!(end, Incoming::Closed(_)), "{end:?}");
    }
    assert_eq!(sim.stats().handshakes_rejected, 3);
    sim.stop().await;
}

// ------------------------------------------------------------------------------------------------
// MarketInOut and the token page
// ------------------------------------------------------------------------------------------------

#[actix_web::test]
async fn screens_are_deterministic_sized_and_in_marketinout_format() {
    let mut s = settings();
    s.formulas.push(chartgate_simulator::SimFormula {
        key: "00000000000000ff".into(),
        stocks: 300,
    });
    let sim = start(s).await;
    let url = |key: &str| format!("{}?key={key}", sim.screen_url());
    let (status, body) = get(&url("a1b2c3d4e5f60718"), None).await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 20, "the breakouts demo formula has 20 stocks");
    for line in &lines {
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 3, "{line}");
        let ticker = fields[0].strip_suffix(".NS").expect("TICKER.NS");
        let symbol = format!("NSE:{ticker}");
        let price: f64 = fields[1].parse().expect("price");
        assert!(price > 0.0 && fields[1].split('.').nth(1).map(str::len) == Some(2));
        assert_eq!(fields[2], "12/17/2025 15:45");
        // The price is the last daily close of the chart.
        let last = expected_bars(&symbol, "1D", 1)[0].close;
        assert_eq!(format!("{last:.2}"), fields[1]);
    }
    assert_eq!(get(&url("a1b2c3d4e5f60718"), None).await.1, body);
    assert_eq!(
        get(&url("0f1e2d3c4b5a6978"), None).await.1.lines().count(),
        60
    );
    assert_eq!(
        get(&url("1234567890abcdef"), None).await.1.lines().count(),
        40
    );
    let big = get(&url("00000000000000ff"), None).await.1;
    let mut tickers: Vec<&str> = big
        .lines()
        .map(|l| l.split('|').next().unwrap_or(""))
        .collect();
    assert_eq!(tickers.len(), 300);
    tickers.sort_unstable();
    tickers.dedup();
    assert_eq!(
        tickers.len(),
        300,
        "no duplicates, synthetic tickers appended"
    );
    for bad in ["?key=xyz", "", "?key=a1b2c3d4e5f6071", "?other=1"] {
        let (status, _) = get(&format!("{}{bad}", sim.screen_url()), None).await;
        assert_eq!(status, 400, "{bad}");
    }
    sim.stop().await;
}

#[actix_web::test]
async fn the_token_page_needs_cookies_and_carries_exp_and_max_connections() {
    let mut s = settings();
    s.faults.token_ttl_secs = 120;
    let sim = start(s).await;
    assert_eq!(get(&sim.token_url(), None).await.0, 401);
    assert_eq!(get(&sim.token_url(), Some("sessionid=abc")).await.0, 401);
    assert_eq!(
        get(&sim.token_url(), Some("sessionid=; sessionid_sign=x"))
            .await
            .0,
        401
    );
    let now = unix_secs();
    let token = fetch_token(&sim).await;
    let claims = chartgate_protocol::token::decode_claims(&token).expect("claims");
    assert!((claims.exp - (now + 120)).abs() <= 2, "{claims:?}");
    assert_eq!(claims.max_connections, Some(100));
    assert_eq!(sim.stats().tokens_issued, 1);

    // The token_ttl_secs and max_connections faults, set at run time.
    sim.set_faults(Faults {
        token_ttl_secs: 30,
        max_connections: 3,
        ..Faults::default()
    });
    let claims =
        chartgate_protocol::token::decode_claims(&fetch_token(&sim).await).expect("claims");
    assert!((claims.exp - (now + 30)).abs() <= 2, "{claims:?}");
    assert_eq!(claims.max_connections, Some(3));
    sim.stop().await;
}

// ------------------------------------------------------------------------------------------------
// Faults
// ------------------------------------------------------------------------------------------------

#[actix_web::test]
async fn fault_latency_delays_each_series_answer() {
    let sim = start(settings()).await;
    let mut client = connect_unauthorized(&sim).await;
    let (status, body) = post_faults(&sim, r#"{"latency_ms": 300}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON")["latency_ms"],
        300
    );
    let requested_ms = unix_ms();
    let started = Instant::now();
    let answer = fetch_chart(&mut client, "cs_1", "NSE:TCS", "1D", 5).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The answer is written while it waits out the latency: the same message as one written at
    // once, its symbol (owed since the resolve_symbol) still in it, stamped with its due time.
    assert_one_answer_message(&answer);
    assert_eq!(
        plain(&bars_of(&answer, "cs_1")),
        *expected_bars("NSE:TCS", "1D", 5)
    );
    for packet in json_packets(&answer[0]) {
        let stamped = packet["t_ms"].as_i64().expect("t_ms");
        assert!(stamped >= requested_ms + 300, "{packet}");
    }
    // `{}` resets every fault.
    let (status, body) = post_faults(&sim, "{}").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Faults>(&body).expect("faults"),
        Faults::default()
    );
    assert_eq!(sim.faults(), Faults::default());
    // Unknown keys and bad values are refused, naming the key.
    let (status, body) = post_faults(&sim, r#"{"latency": 5}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("latency"), "{body}");
    let (status, body) = post_faults(&sim, r#"{"reject_upgrades": 200}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("reject_upgrades"), "{body}");
    sim.stop().await;
}

#[actix_web::test]
async fn fault_connect_latency_delays_the_upgrade() {
    let sim = start_with(Faults {
        connect_latency_ms: 300,
        ..Faults::default()
    })
    .await;
    let started = Instant::now();
    let mut client = SimClient::connect(&sim.feed_url()).await.expect("connect");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(kinds(&client.next_text(WAIT).await), ["hello"]);
    sim.stop().await;
}

#[actix_web::test]
async fn fault_series_concurrency_serialises_series_on_a_connection() {
    let sim = start_with(Faults {
        latency_ms: 200,
        series_concurrency: 1,
        ..Faults::default()
    })
    .await;
    let mut client = connect_unauthorized(&sim).await;
    let started = Instant::now();
    for n in 0..3 {
        client
            .send(&chart_calls(&format!("cs_{n}"), "NSE:TCS", "1D", 10))
            .await;
    }
    let mut finished = Vec::new();
    while finished.len() < 3 {
        let text = client.next_text(WAIT).await;
        if messages(&text)
            .iter()
            .any(|m| matches!(m, ServerMessage::SeriesCompleted { .. }))
        {
            finished.push(started.elapsed());
        }
    }
    assert!(finished[2] >= Duration::from_millis(600), "{finished:?}");
    assert!(finished[1] >= Duration::from_millis(400), "{finished:?}");
    sim.stop().await;
}

#[actix_web::test]
async fn fault_drop_after_messages_cuts_the_connection_without_a_close_frame() {
    let sim = start_with(Faults {
        drop_after_messages: 2,
        ..Faults::default()
    })
    .await;
    let mut client = connect_unauthorized(&sim).await;
    let answer = fetch_chart(&mut client, "cs_1", "NSE:TCS", "1D", 10).await;
    assert_eq!(
        bars_of(&answer, "cs_1").len(),
        10,
        "message 2 arrives whole"
    );
    let (end, texts) = client.wait_end(WAIT).await;
    assert_eq!((end, texts), (Incoming::Eof, 0));
    let stats = stats_eventually(&sim, |s| s.connections_open == 0).await;
    assert_eq!(stats.connections_open, 0);
    sim.stop().await;
}

#[actix_web::test]
async fn fault_stall_after_messages_stops_everything_but_keeps_the_socket() {
    let mut s = settings();
    s.heartbeat_secs = 1;
    s.faults.stall_after_messages = 1;
    let sim = start(s).await;
    let mut client = connect_unauthorized(&sim).await;
    client.send(&chart_calls("cs_1", "NSE:TCS", "1D", 10)).await;
    // Two and a half heartbeat intervals: no heartbeat, no answer, no close.
    let next = client.next_event(Duration::from_millis(2500)).await;
    assert_eq!(next, Incoming::Timeout);
    assert!(client.heartbeats.is_empty());
    assert_eq!(sim.stats().connections_open, 1);
    assert_eq!(sim.stats().heartbeats_sent, 0);
    // Lifting the fault un-stalls it.
    sim.set_faults(Faults::default());
    let answer = fetch_chart(&mut client, "cs_2", "NSE:TCS", "1D", 3).await;
    assert_eq!(bars_of(&answer, "cs_2").len(), 3);
    sim.stop().await;
}

#[actix_web::test]
async fn fault_reject_upgrades_answers_with_the_status() {
    let sim = start_with(Faults {
        reject_upgrades: 429,
        ..Faults::default()
    })
    .await;
    match SimClient::connect(&sim.feed_url()).await {
        Err(ConnectError::Status(status)) => assert_eq!(status, 429),
        Err(other) => panic!("expected a 429, got {other:?}"),
        Ok(_) => panic!("expected a 429, got a WebSocket"),
    }
    sim.set_faults(Faults {
        reject_upgrades: 503,
        ..Faults::default()
    });
    assert!(matches!(
        SimClient::connect(&sim.feed_url()).await,
        Err(ConnectError::Status(503))
    ));
    let stats = sim.stats();
    assert_eq!((stats.handshakes_rejected, stats.connections_total), (2, 0));
    sim.set_faults(Faults::default());
    assert!(SimClient::connect(&sim.feed_url()).await.is_ok());
    sim.stop().await;
}

#[actix_web::test]
async fn fault_malformed_every_inserts_garbage_packets_and_keeps_all_real_ones() {
    let sim = start_with(Faults {
        malformed_every: 2,
        ..Faults::default()
    })
    .await;
    let mut client = SimClient::connect_auth(&sim.feed_url(), "unauthorized_user_token").await;
    let hello = client.next_text(WAIT).await;
    assert_eq!(kinds(&hello), ["hello"]);
    let answer = fetch_chart(&mut client, "cs_1", "NSE:TCS", "1D", 10).await;
    assert_eq!(
        kinds(&answer[0]),
        [
            "series_loading",
            "!garbage",
            "symbol_resolved",
            "timescale_update",
            "!garbage",
            "series_completed"
        ]
    );
    assert_eq!(
        plain(&bars_of(&answer, "cs_1")),
        *expected_bars("NSE:TCS", "1D", 10)
    );
    sim.stop().await;
}

#[actix_web::test]
async fn fault_max_connections_rejects_a_token_beyond_its_budget() {
    let sim = start_with(Faults {
        max_connections: 2,
        ..Faults::default()
    })
    .await;
    let token = fetch_token(&sim).await;
    let mut first = SimClient::connect_auth(&sim.feed_url(), &token).await;
    let mut second = SimClient::connect_auth(&sim.feed_url(), &token).await;
    first.next_text(WAIT).await;
    second.next_text(WAIT).await;
    fetch_chart(&mut first, "cs_1", "NSE:TCS", "1D", 3).await;
    fetch_chart(&mut second, "cs_1", "NSE:TCS", "1D", 3).await;
    let mut third = SimClient::connect_auth(&sim.feed_url(), &token).await;
    third.next_text(WAIT).await;
    let refusal = third.next_text(WAIT).await;
    match &messages(&refusal)[..] {
        [ServerMessage::ProtocolError { reason }] => {
            assert!(reason.contains("max sessions rate"), "{reason}");
        }
        other => panic!("expected protocol_error, got {other:?}"),
    }
    assert!(matches!(third.wait_end(WAIT).await.0, Incoming::Closed(_)));
    assert_eq!(sim.stats().handshakes_rejected, 1);
    // Another token has its own budget; a freed slot can be taken again.
    let mut other = connect_unauthorized(&sim).await;
    fetch_chart(&mut other, "cs_1", "NSE:TCS", "1D", 3).await;
    first.close().await;
    stats_eventually(&sim, |s| s.connections_open == 2).await;
    let mut again = SimClient::connect_auth(&sim.feed_url(), &token).await;
    again.next_text(WAIT).await;
    fetch_chart(&mut again, "cs_1", "NSE:TCS", "1D", 3).await;
    sim.stop().await;
}

#[actix_web::test]
async fn fault_unknown_symbols_set_at_run_time_reaches_open_connections() {
    let sim = start(settings()).await;
    let mut client = connect_unauthorized(&sim).await;
    let answer = fetch_chart(&mut client, "cs_1", "NSE:WIPRO", "1D", 3).await;
    assert_eq!(bars_of(&answer, "cs_1").len(), 3);
    let (status, _) = post_faults(&sim, r#"{"unknown_symbols": ["NSE:WIPRO"]}"#).await;
    assert_eq!(status, 200);
    let answer = fetch_chart(&mut client, "cs_2", "NSE:WIPRO", "1D", 3).await;
    let all: Vec<String> = answer.iter().flat_map(|t| kinds(t)).collect();
    assert_eq!(all, ["symbol_error", "series_error"]);
    sim.stop().await;
}

// ------------------------------------------------------------------------------------------------
// Robustness
// ------------------------------------------------------------------------------------------------

#[actix_web::test]
async fn nothing_a_client_sends_breaks_the_feed() {
    let sim = start(settings()).await;
    let mut client = connect_unauthorized(&sim).await;
    let mut junk: Vec<String> = vec![
        r#"{"m":"create_series","p":["cs_1","sds_1","s1","sds_sym_1","1D",-5,""]}"#.into(),
        r#"{"m":"create_series","p":["cs_1","sds_1","s1","sds_sym_1","1D",99999999999,""]}"#.into(),
        r#"{"m":"create_series","p":[1,2,3,4,5,6,7]}"#.into(),
        r#"{"m":"request_more_data","p":["cs_1","sds_1",4294967295]}"#.into(),
        r#"{"m":"resolve_symbol","p":["cs_1","sds_sym_1","={not json"]}"#.into(),
        r#"{"m":"resolve_symbol","p":["cs_1","sds_sym_1","=\"\u00e9\""]}"#.into(),
        r#"{"m":"set_auth_token","p":[]}"#.into(),
        r#"{"m":"chart_create_session"}"#.into(),
        r#"{"m":null,"p":null}"#.into(),
        r#"{"p":[1]}"#.into(),
        "~h~".into(),
        "~h~-1".into(),
        "\u{0}\u{1}".into(),
        "{".repeat(10_000),
    ];
    // Every capture call with its parameters shuffled into wrong types.
    for line in fixture("tradingview-capture.jsonl").lines() {
        let v: Value = serde_json::from_str(line).expect("JSON");
        if v["dir"] != "send" {
            continue;
        }
        for packet in decode_message(v["data"].as_str().unwrap_or_default()).unwrap_or_default() {
            if let Packet::Json(payload) = packet
                && let Ok(mut call) = serde_json::from_str::<Value>(payload)
                && call["m"] != "set_auth_token"
            {
                if let Some(p) = call["p"].as_array_mut() {
                    p.reverse();
                    p.push(Value::Null);
                }
                junk.push(call.to_string());
            }
        }
    }
    for payload in &junk {
        let mut text = String::new();
        encode_packet(payload, &mut text);
        client.send_raw(&text).await;
    }
    // A huge batch of valid calls in one message.
    let mut batch = Vec::new();
    for n in 0..200 {
        batch.extend(chart_calls(&format!("cs_b{n}"), "NSE:TCS", "1D", 2));
    }
    client.send(&batch).await;
    let mut completed = 0;
    while completed < 200 {
        let text = client.next_text(WAIT).await;
        completed += messages(&text)
            .iter()
            .filter(|m| matches!(m, ServerMessage::SeriesCompleted { .. }))
            .count();
    }
    let answer = fetch_chart(&mut client, "cs_final", "NSE:TCS", "1D", 3).await;
    assert_eq!(bars_of(&answer, "cs_final").len(), 3);
    assert_eq!(sim.stats().connections_open, 1);
    sim.stop().await;
}

#[actix_web::test]
async fn a_deleted_session_gets_no_answer_for_its_pending_series() {
    let sim = start_with(Faults {
        latency_ms: 150,
        ..Faults::default()
    })
    .await;
    let mut client = connect_unauthorized(&sim).await;
    let mut calls = chart_calls("cs_gone", "NSE:TCS", "1D", 5);
    calls.push(ClientMessage::ChartDeleteSession {
        session: "cs_gone".into(),
    });
    client.send(&calls).await;
    let answer = fetch_chart(&mut client, "cs_kept", "NSE:INFY", "1D", 5).await;
    let sessions: BTreeSet<String> = answer
        .iter()
        .flat_map(|t| messages(t))
        .filter_map(|m| match m {
            ServerMessage::SeriesLoading { session, .. }
            | ServerMessage::SeriesCompleted { session, .. }
            | ServerMessage::TimescaleUpdate { session, .. } => Some(session.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(sessions, BTreeSet::from(["cs_kept".to_string()]));
    assert_eq!(sim.stats().series_served, 1);
    sim.stop().await;
}
