//! Black-box tests of the HTTP API (SPEC sections 3 and 4) through the real server, over real
//! loopback sockets, against the simulator: the formula stream's events and wire format,
//! resumption, input validation, sharing of work between streams, disconnects, failing formula
//! sources and feeds, the small routes, secrets, and graceful shutdown.
//!
//! Durations are configured short (hundreds of milliseconds to a second) and waits poll a state
//! with a deadline; nothing sleeps for long.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use awc::http::Method;
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::{Value, json};

use chartgate::config::{FormulaDef, Secret};
use chartgate::watch::sse::SseEvent;
use chartgate_simulator::DEMO_FORMULAS;
use chartgate_simulator::Faults;
use chartgate_simulator::expected_bars;

use common::app::{
    StreamRead, TestApp, read_stream, read_stream_until, response_json, send_json, spawn_app,
    stream_cut_by_shutdown,
};

const STREAM: &str = "/api/formula-results-with-charts";

// ------------------------------------------------------------------------------------------------
// Checks shared by several tests

/// The wire format of a whole stream: headers, LF-only lines, `retry:` first, one `data:` line and
/// an `id:` in every event.
fn assert_wire_format(s: &StreamRead, retry_ms: u64) {
    assert_eq!(s.status, 200, "{}", s.text());
    let header = |name: &str| {
        s.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert!(
        header("content-type").is_some_and(|v| v.starts_with("text/event-stream")),
        "{:?}",
        s.headers
    );
    assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
    assert!(
        header("content-encoding").is_none(),
        "the stream is never compressed, and says no content coding: {:?}",
        s.headers
    );
    assert!(!s.raw.contains(&b'\r'), "lines end in LF only");
    assert!(!s.raw.starts_with(b"\xEF\xBB\xBF"), "no byte-order mark");
    let text = s.text();
    assert!(
        text.starts_with(&format!("retry: {retry_ms}\n")),
        "retry first: {:?}",
        &text[..text.len().min(80)]
    );
    assert_eq!(s.retry, Some(Duration::from_millis(retry_ms)));
    assert!(text.ends_with("\n\n"), "the last event is terminated");
    assert_blocks(&text, retry_ms);
    let mut data_blocks = 0;
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let lines: Vec<&str> = block.lines().collect();
        let data_lines = lines.iter().filter(|l| l.starts_with("data:")).count();
        if data_lines == 0 {
            continue;
        }
        data_blocks += 1;
        assert_eq!(data_lines, 1, "one data: line per event: {block:.200}");
        let id = lines
            .iter()
            .find_map(|l| l.strip_prefix("id:"))
            .unwrap_or_else(|| panic!("every event carries an id: {block:.200}"));
        assert!(!id.trim().is_empty() && !id.contains('\0'));
        assert!(
            lines.iter().any(|l| l.starts_with("event:")),
            "{block:.200}"
        );
    }
    assert_eq!(data_blocks, s.events.len());
}

/// Every block of a stream is an event (an `event:`, an `id:` and one `data:` line) or a
/// comment: clients that report a block with no data as an empty event (httpx-sse does for a
/// lone `retry:`) then see exactly the events sent. `retry:` is a line of the first block only.
fn assert_blocks(text: &str, retry_ms: u64) {
    let blocks: Vec<&str> = text.split("\n\n").filter(|b| !b.is_empty()).collect();
    let first_event = blocks
        .iter()
        .position(|b| !b.starts_with(':'))
        .expect("an event");
    for (n, block) in blocks.iter().enumerate() {
        let lines: Vec<&str> = block.split('\n').collect();
        if lines.iter().all(|l| l.starts_with(':')) {
            continue;
        }
        let fields: Vec<&str> = lines
            .iter()
            .map(|l| l.split_once(':').map_or(*l, |(field, _)| field))
            .collect();
        let mut want = vec!["event", "id", "data"];
        if n == first_event {
            want.insert(0, "retry");
            assert_eq!(lines[0], format!("retry: {retry_ms}"), "{block:.200}");
        }
        assert_eq!(fields, want, "block {n}: {block:.200}");
    }
}

/// A response as the bytes on the wire: the head, and the body with its chunked framing
/// removed. Sent on a plain socket so nothing (no client's decompression) stands in between.
async fn raw_get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    socket.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut raw))
        .await
        .expect("the response ended in time")
        .expect("read the response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut rest = &raw[split + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return (head, rest.to_vec());
    }
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.trim(), 16).expect("a chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            return (head, body);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// The stream on the wire: no content coding even when the client offers gzip and br; the first
/// block is `retry:` with the first event; every other block an event or a keep-alive comment;
/// the same for a resumed stream, whose first event is a batch.
#[actix_web::test]
async fn the_stream_on_the_wire_is_uncompressed_and_every_block_an_event() {
    let app = spawn_app(|s| {
        s.stream.batch_size = 1;
        s.stream.keep_alive_secs = 1;
        s.simulator.faults.latency_ms = 1_200;
    })
    .await;
    let retry_ms = app.settings.stream.retry_ms;
    let path = format!("{STREAM}?symbols=NSE:TCS,NSE:INFY&resolutions=1D&bars=5");
    let offers = [("Accept-Encoding", "gzip, br")];
    let (head, body) = raw_get(&app, &path, &offers).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
    let text = String::from_utf8(body).expect("an uncompressed UTF-8 body");
    assert!(
        text.starts_with(&format!("retry: {retry_ms}\nevent: formula-results\nid: ")),
        "{text:.300}"
    );
    let first = text.split("\n\n").next().unwrap_or_default();
    assert!(
        first.contains("\ndata: {\"type\":\"formula-results\""),
        "{first:.300}"
    );
    assert_blocks(&text, retry_ms);
    assert!(text.contains("\n\n: keep-alive\n\n"), "{text:.2000}");

    // Resumed after the first batch: no formula-results; retry comes with the first event.
    let first_batch_id = text
        .split("\n\n")
        .find(|b| b.contains("event: chart-batch"))
        .and_then(|b| b.lines().find_map(|l| l.strip_prefix("id: ")))
        .expect("a batch id")
        .to_string();
    let (head, body) = raw_get(
        &app,
        &path,
        &[
            ("Accept-Encoding", "gzip, br"),
            ("Last-Event-ID", &first_batch_id),
        ],
    )
    .await;
    assert!(!head.contains("content-encoding"), "{head}");
    let text = String::from_utf8(body).expect("an uncompressed UTF-8 body");
    assert!(
        text.starts_with(&format!("retry: {retry_ms}\nevent: chart-batch\nid: ")),
        "{text:.300}"
    );
    assert_blocks(&text, retry_ms);
    assert!(!text.contains("formula-results"), "{text:.300}");
}

/// A chart as the API returns it equals what the simulator serves for that request.
fn assert_chart(symbol: &str, resolution: &str, bars: u32, format: &str, chart: &Value) {
    let expected = expected_bars(symbol, resolution, bars);
    assert!(!expected.is_empty(), "{symbol} {resolution}");
    let f = |v: &Value| v.as_f64().expect("a number");
    match format {
        "objects" => {
            let got = chart["bars"].as_array().expect("bars is an array");
            assert_eq!(got.len(), expected.len(), "{symbol} {resolution}");
            for (g, e) in got.iter().zip(expected.iter()) {
                assert_eq!(g["time"].as_i64(), Some(e.time), "{symbol} {resolution}");
                assert_eq!(
                    [f(&g["open"]), f(&g["high"]), f(&g["low"]), f(&g["close"])],
                    [e.open, e.high, e.low, e.close],
                    "{symbol} {resolution} at {}",
                    e.time
                );
                assert_eq!(g.get("volume").map(f), e.volume, "{symbol} {resolution}");
                let keys = if e.volume.is_some() { 6 } else { 5 };
                assert_eq!(g.as_object().map(|o| o.len()), Some(keys), "{g}");
            }
        }
        "columns" => {
            let col = |name: &str| -> Vec<f64> {
                chart["bars"][name]
                    .as_array()
                    .unwrap_or_else(|| panic!("column {name}"))
                    .iter()
                    .map(f)
                    .collect()
            };
            let times: Vec<i64> = expected.iter().map(|b| b.time).collect();
            let got_times: Vec<i64> = chart["bars"]["time"]
                .as_array()
                .expect("time column")
                .iter()
                .map(|v| v.as_i64().expect("integer time"))
                .collect();
            assert_eq!(got_times, times, "{symbol} {resolution}");
            assert_eq!(
                col("open"),
                expected.iter().map(|b| b.open).collect::<Vec<_>>()
            );
            assert_eq!(
                col("high"),
                expected.iter().map(|b| b.high).collect::<Vec<_>>()
            );
            assert_eq!(
                col("low"),
                expected.iter().map(|b| b.low).collect::<Vec<_>>()
            );
            assert_eq!(
                col("close"),
                expected.iter().map(|b| b.close).collect::<Vec<_>>()
            );
            if expected[0].volume.is_some() {
                let volumes: Vec<f64> = expected.iter().filter_map(|b| b.volume).collect();
                assert_eq!(col("volume"), volumes);
            }
        }
        other => panic!("unknown format {other}"),
    }
    let time_of = |i: usize| expected[i].time;
    assert!((1..expected.len()).all(|i| time_of(i - 1) < time_of(i)));
    let meta = &chart["metadata"];
    for key in [
        "name",
        "exchange",
        "description",
        "currencyCode",
        "pricescale",
        "timezone",
        "type",
    ] {
        assert!(
            meta.get(key).is_some_and(|v| !v.is_null()),
            "metadata.{key}: {meta}"
        );
    }
}

/// What a stream's batches carried: (symbol, resolution) → `Ok(chart)` or `Err(error)`; fails if
/// a chart appears twice.
fn outcomes(batches: &[Value]) -> BTreeMap<(String, String), Result<Value, Value>> {
    let mut out = BTreeMap::new();
    for batch in batches {
        let data = &batch["data"];
        let symbols: BTreeSet<&str> = data["symbols"]
            .as_array()
            .expect("symbols")
            .iter()
            .map(|s| s.as_str().expect("a symbol string"))
            .collect();
        for (field, ok) in [("chartData", true), ("errors", false)] {
            let map = data[field].as_object().unwrap_or_else(|| panic!("{field}"));
            for (symbol, per_res) in map {
                assert!(
                    symbols.contains(symbol.as_str()),
                    "{symbol} not of its batch"
                );
                for (res, value) in per_res.as_object().expect("per resolution") {
                    let entry = if ok {
                        Ok(value.clone())
                    } else {
                        Err(value.clone())
                    };
                    let previous = out.insert((symbol.clone(), res.clone()), entry);
                    assert!(previous.is_none(), "{symbol} {res} sent twice");
                }
            }
        }
    }
    out
}

fn batch_indices(s: &StreamRead) -> Vec<u64> {
    s.data_of("chart-batch")
        .iter()
        .map(|b| b["data"]["batchIndex"].as_u64().expect("batchIndex"))
        .collect()
}

fn symbols_of(formula_results: &Value) -> Vec<String> {
    formula_results["data"]["stocks"]
        .as_array()
        .expect("stocks")
        .iter()
        .map(|s| s["symbol"].as_str().expect("stock symbol").to_string())
        .collect()
}

/// Asserts a JSON error answer: status, `{"error","code"}` and nothing else.
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str, what: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not a JSON object: {body}"));
    assert_eq!(obj.len(), 2, "{what}: {body}");
    assert_eq!(body["code"], want_code, "{what}: {body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{what}: {body}");
    assert!(message.len() < 400, "{what}: the message is bounded");
}

// ------------------------------------------------------------------------------------------------
// 1. The stream of each demo formula

#[actix_web::test]
async fn demo_formula_streams_have_the_documented_events_and_charts() {
    let app = spawn_app(|_| {}).await;
    let bars = 40u32;
    for (n, (id, name, _key, stocks)) in DEMO_FORMULAS.iter().enumerate() {
        let format = if n == 1 { "columns" } else { "objects" };
        let s = read_stream(
            app.get(&format!(
                "{STREAM}?formula={id}&resolutions=1D,1W&bars={bars}&barsFormat={format}"
            ))
            .insert_header(("Accept-Encoding", "gzip, deflate, br")),
        )
        .await;
        assert_wire_format(&s, app.settings.stream.retry_ms);
        let names = s.names();
        let batch_size = app.settings.stream.batch_size;
        let total_batches = stocks.div_ceil(batch_size);
        assert_eq!(names.first(), Some(&"formula-results"), "{id}");
        assert_eq!(names.last(), Some(&"complete"), "{id}");
        assert_eq!(names.len(), total_batches + 2, "{id}: {names:?}");
        assert!(
            names[1..names.len() - 1]
                .iter()
                .all(|n| *n == "chart-batch")
        );

        let fr = &s.data_of("formula-results")[0];
        assert_eq!(fr["type"], "formula-results");
        let d = &fr["data"];
        assert_eq!(d["formulaId"], *id);
        assert_eq!(d["formulaName"], *name);
        assert_eq!(d["totalCharts"], stocks * 2);
        assert_eq!(d["resolutions"], json!(["1D", "1W"]));
        assert_eq!(d["barsCount"], bars);
        assert_eq!(d["resumed"], false);
        let symbols = symbols_of(fr);
        assert_eq!(symbols.len(), *stocks, "{id}");
        for stock in d["stocks"].as_array().expect("stocks") {
            assert!(stock["symbol"].is_string(), "{stock}");
            for (k, v) in stock.as_object().expect("a stock object") {
                assert!(!v.is_null(), "absent fields are omitted, not null: {k}");
            }
        }

        let batches = s.data_of("chart-batch");
        let mut seen = BTreeSet::new();
        let mut last_loaded = 0;
        for batch in &batches {
            assert_eq!(batch["type"], "chart-batch");
            let b = &batch["data"];
            let index = b["batchIndex"].as_u64().expect("batchIndex") as usize;
            assert!((1..=total_batches).contains(&index), "{id}: {index}");
            assert!(seen.insert(index), "{id}: batch {index} twice");
            assert_eq!(b["totalBatches"], total_batches);
            let first = (index - 1) * batch_size;
            let group = &symbols[first..(first + batch_size).min(symbols.len())];
            assert_eq!(b["symbols"], json!(group), "{id} batch {index}");
            let loaded = b["progress"]["loaded"].as_u64().expect("loaded");
            assert!(loaded > last_loaded, "progress grows");
            last_loaded = loaded;
            assert_eq!(b["progress"]["total"], stocks * 2);
            assert!(
                b["progress"]["percentage"]
                    .as_f64()
                    .is_some_and(|p| p <= 100.0)
            );
            let t = &b["timing"];
            let (start, end) = (t["startTime"].as_u64(), t["endTime"].as_u64());
            assert!(start.is_some() && end >= start, "{t}");
            assert!(t["durationMs"].as_u64().is_some(), "{t}");
        }
        assert_eq!(last_loaded as usize, stocks * 2);
        let last = &batches.last().expect("batches")["data"]["progress"];
        assert_eq!(last["percentage"].as_f64(), Some(100.0));

        let charts = outcomes(&batches);
        assert_eq!(charts.len(), stocks * 2, "{id}: every chart exactly once");
        for symbol in &symbols {
            for res in ["1D", "1W"] {
                match &charts[&(symbol.clone(), res.to_string())] {
                    Ok(chart) => assert_chart(symbol, res, bars, format, chart),
                    Err(e) => panic!("{id}: {symbol} {res} failed: {e}"),
                }
            }
        }

        let complete = &s.data_of("complete")[0];
        assert_eq!(complete["type"], "complete");
        let c = &complete["data"];
        assert_eq!(c["totalCharts"], stocks * 2);
        assert_eq!(c["successfulCharts"], stocks * 2);
        assert_eq!(c["failedCharts"], 0);
        assert!(c["cachedCharts"].as_u64().is_some(), "{c}");
        assert!(c["totalTime"].as_u64().is_some(), "{c}");
        assert!(c["avgTimePerChart"].as_f64().is_some(), "{c}");
        // Ids differ between events, so each one is a resume point.
        let ids: BTreeSet<_> = s.events.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids.len(), s.events.len(), "{id}: distinct ids");
    }
}

// ------------------------------------------------------------------------------------------------
// 2. Unknown symbols

#[actix_web::test]
async fn unknown_symbols_land_in_errors_and_the_stream_completes() {
    let app = spawn_app(|_| {}).await;
    let s = app
        .stream(&format!(
            "{STREAM}?symbols=NSE:INFY,nse:invalidfoo,TCS.NS&resolutions=1D&bars=30"
        ))
        .await;
    assert_wire_format(&s, app.settings.stream.retry_ms);
    assert_eq!(
        s.names(),
        ["formula-results", "chart-batch", "complete"],
        "{}",
        s.text()
    );
    let fr = &s.data_of("formula-results")[0]["data"];
    assert_eq!(
        symbols_of(&s.data_of("formula-results")[0]),
        ["NSE:INFY", "NSE:INVALIDFOO", "NSE:TCS"]
    );
    assert!(fr.get("formulaId").is_none(), "absent, not null: {fr}");
    let charts = outcomes(&s.data_of("chart-batch"));
    assert_eq!(charts.len(), 3);
    let bad = charts[&("NSE:INVALIDFOO".into(), "1D".into())]
        .as_ref()
        .expect_err("the unknown symbol failed");
    assert_eq!(bad["code"], "unknown_symbol", "{bad}");
    assert!(bad["message"].as_str().is_some_and(|m| !m.is_empty()));
    for symbol in ["NSE:INFY", "NSE:TCS"] {
        let chart = charts[&(symbol.into(), "1D".into())]
            .as_ref()
            .expect("a known symbol succeeded");
        assert_chart(symbol, "1D", 30, "objects", chart);
    }
    let c = &s.data_of("complete")[0]["data"];
    assert_eq!(
        (
            &c["totalCharts"],
            &c["successfulCharts"],
            &c["failedCharts"]
        ),
        (&json!(3), &json!(2), &json!(1))
    );
}

// ------------------------------------------------------------------------------------------------
// 3. POST with a JSON body

#[actix_web::test]
async fn post_with_a_json_body_streams_the_same_as_get() {
    let app = spawn_app(|_| {}).await;
    let get = app
        .stream(&format!(
            "{STREAM}?formula=breakouts&resolutions=1D,1M&bars=25&barsFormat=columns"
        ))
        .await;
    for body in [
        json!({"formulaId": "breakouts", "resolutions": ["1D", "1M"], "barsCount": 25, "barsFormat": "columns"}),
        json!({"formulaId": "breakouts", "resolutions": "1D,1M", "barsCount": "25", "barsFormat": "columns"}),
    ] {
        let resp = app
            .post(STREAM)
            .send_json(&body)
            .await
            .expect("POST the stream");
        let post = common::app::read_response(resp, |_| false).await;
        assert_wire_format(&post, app.settings.stream.retry_ms);
        assert_eq!(post.names(), get.names(), "{body}");
        // The same request has the same ids (batches may finish in another order, so only the
        // first and the last are fixed).
        let ends = |s: &StreamRead| (s.events[0].id.clone(), s.last_id().map(str::to_string));
        assert_eq!(ends(&post), ends(&get), "{body}");
        assert_eq!(
            post.data_of("formula-results"),
            get.data_of("formula-results")
        );
        assert_eq!(
            outcomes(&post.data_of("chart-batch")),
            outcomes(&get.data_of("chart-batch"))
        );
    }
}

// ------------------------------------------------------------------------------------------------
// 4. Resumption

#[actix_web::test]
async fn a_dropped_stream_resumes_from_its_last_event_id() {
    let app = spawn_app(|s| s.stream.batch_size = 4).await;
    let path = format!("{STREAM}?formula=breakouts&resolutions=1D&bars=20");
    let total_batches = 5;
    let full = app.stream(&path).await;
    let all_charts = outcomes(&full.data_of("chart-batch"));

    for via_query in [false, true] {
        let mut batches_seen = 0;
        let first = read_stream_until(app.get(&path), |e| {
            batches_seen += usize::from(e.event == "chart-batch");
            batches_seen == 2
        })
        .await;
        assert_eq!(
            first.names(),
            ["formula-results", "chart-batch", "chart-batch"]
        );
        let last_id = first.last_id().expect("an id").to_string();
        let req = if via_query {
            app.get(&format!("{path}&lastEventId={last_id}"))
        } else {
            app.get(&path)
                .insert_header(("Last-Event-ID", last_id.as_str()))
        };
        let rest = read_stream(req).await;
        // The same through a POST body's lastEventId.
        let resp = app
            .post(STREAM)
            .send_json(&json!({"formulaId": "breakouts", "resolutions": "1D", "barsCount": 20, "lastEventId": last_id}))
            .await
            .expect("POST");
        let posted = common::app::read_response(resp, |_| false).await;
        assert_eq!(batch_indices(&posted).len(), total_batches - 2);
        assert_eq!(posted.names().first(), Some(&"chart-batch"));
        assert_wire_format(&rest, app.settings.stream.retry_ms);
        let names = rest.names();
        assert!(!names.contains(&"formula-results"), "{names:?}");
        assert_eq!(names.last(), Some(&"complete"));
        assert_eq!(names.len(), total_batches - 2 + 1, "{names:?}");
        let before: BTreeSet<u64> = batch_indices(&first).into_iter().collect();
        let after: BTreeSet<u64> = batch_indices(&rest).into_iter().collect();
        assert!(before.is_disjoint(&after), "no batch repeated");
        let union: BTreeSet<u64> = before.union(&after).copied().collect();
        assert_eq!(union, (1..=total_batches as u64).collect(), "none missing");
        let mut charts = outcomes(&first.data_of("chart-batch"));
        charts.extend(outcomes(&rest.data_of("chart-batch")));
        assert_eq!(charts, all_charts);

        // The complete event's id: nothing left to send.
        let done_id = rest.last_id().expect("complete has an id").to_string();
        let resp = app
            .get(&path)
            .insert_header(("Last-Event-ID", done_id.as_str()))
            .send()
            .await
            .expect("reconnect after complete");
        assert_eq!(resp.status(), 204);
        let resp = app
            .get(&format!("{path}&lastEventId={done_id}"))
            .send()
            .await
            .expect("reconnect after complete");
        assert_eq!(resp.status(), 204);
    }

    // Ids that cannot continue this stream start it over.
    let other = app
        .stream(&format!(
            "{STREAM}?formula=breakouts&resolutions=1W&bars=20"
        ))
        .await;
    let other_id = other.events[1].id.clone().expect("an id");
    let other_done = other.last_id().expect("an id").to_string();
    for id in [
        other_id.as_str(),
        other_done.as_str(),
        "garbage",
        "0123456789abcdef.0123456789abcdef.ff",
        "x.y.done",
    ] {
        let s = read_stream(app.get(&path).insert_header(("Last-Event-ID", id))).await;
        assert_eq!(s.status, 200, "{id}");
        assert_eq!(s.names().first(), Some(&"formula-results"), "{id}");
        assert_eq!(s.data_of("formula-results")[0]["data"]["resumed"], false);
        assert_eq!(batch_indices(&s).len(), total_batches, "{id}");
        assert_eq!(outcomes(&s.data_of("chart-batch")), all_charts);
    }
}

/// `complete` of a resumed stream describes the whole stream: every chart of it, the batches
/// sent on the earlier connection included, and the time spent on both connections.
#[actix_web::test]
async fn a_resumed_stream_completes_with_the_whole_streams_figures() {
    let app = spawn_app(|s| s.stream.batch_size = 4).await;
    // 3 batches of 4 stocks; the two unknown symbols (in the first and last batch) fail.
    let symbols: Vec<String> = (1..=12)
        .map(|n| match n {
            2 => "NSE:INVALIDONE".to_string(),
            11 => "NSE:INVALIDTWO".to_string(),
            n => format!("NSE:WHOLE{n:02}"),
        })
        .collect();
    let path = format!(
        "{STREAM}?symbols={}&resolutions=1D,1W&bars=10",
        symbols.join(",")
    );
    let full = app.stream(&path).await;
    let whole = &full.data_of("complete")[0]["data"];
    assert_eq!(
        (
            &whole["totalCharts"],
            &whole["successfulCharts"],
            &whole["failedCharts"],
            &whole["cachedCharts"]
        ),
        (&json!(24), &json!(20), &json!(4), &json!(0)),
        "{whole}"
    );
    // Resumed after its first two batches (by the id of the second batch event): the rest now
    // comes from the cache, except the failed charts, which are never cached.
    let batches: Vec<&SseEvent> = full
        .events
        .iter()
        .filter(|e| e.event == "chart-batch")
        .collect();
    let second_id = batches[1].id.clone().expect("an id");
    let sent: Vec<u64> = batch_indices(&full)[..2].to_vec();
    let left = (1..=3u64)
        .find(|i| !sent.contains(i))
        .expect("a batch left");
    let left_ok: usize = full
        .data_of("chart-batch")
        .iter()
        .filter(|b| b["data"]["batchIndex"] == left)
        .filter_map(|b| b["data"]["chartData"].as_object().cloned())
        .flat_map(|by_symbol| by_symbol.into_iter())
        .map(|(_, by_resolution)| by_resolution.as_object().map_or(0, |r| r.len()))
        .sum();
    let rest = read_stream(
        app.get(&path)
            .insert_header(("Last-Event-ID", second_id.as_str())),
    )
    .await;
    assert_eq!(rest.names(), ["chart-batch", "complete"], "{}", rest.text());
    let c = &rest.data_of("complete")[0]["data"];
    assert_eq!(
        (
            &c["totalCharts"],
            &c["successfulCharts"],
            &c["failedCharts"],
            &c["cachedCharts"]
        ),
        (&json!(24), &json!(20), &json!(4), &json!(left_ok)),
        "the whole stream's figures: {c}"
    );
    let total_time = c["totalTime"].as_f64().expect("totalTime");
    let avg = c["avgTimePerChart"].as_f64().expect("avgTimePerChart");
    assert!((avg * 24.0 - total_time).abs() < 0.5, "{c}");

    // An id whose figures do not fit its batches (edited, or of another stream) cannot
    // continue this one: the stream starts over rather than report impossible figures.
    let mut parts: Vec<&str> = second_id.split('.').collect();
    assert_eq!(parts.len(), 7, "{second_id}");
    parts[3] = "ff";
    let forged = parts.join(".");
    let again = read_stream(
        app.get(&path)
            .insert_header(("Last-Event-ID", forged.as_str())),
    )
    .await;
    assert_eq!(again.names().first(), Some(&"formula-results"), "{forged}");
    assert_eq!(
        again.data_of("formula-results")[0]["data"]["resumed"],
        false
    );
    assert_eq!(again.data_of("complete")[0]["data"]["totalCharts"], 24);
}

// ------------------------------------------------------------------------------------------------
// 5. Bad requests

enum Body {
    None,
    Json(String),
    Text(&'static str),
}

struct Case {
    method: Method,
    path: String,
    body: Body,
    status: u16,
    code: &'static str,
}

fn case(method: Method, path: &str, status: u16, code: &'static str) -> Case {
    Case {
        method,
        path: path.to_string(),
        body: Body::None,
        status,
        code,
    }
}

fn get(path: &str, status: u16, code: &'static str) -> Case {
    case(Method::GET, path, status, code)
}

fn post_json(path: &str, body: impl Into<String>, status: u16, code: &'static str) -> Case {
    Case {
        body: Body::Json(body.into()),
        ..case(Method::POST, path, status, code)
    }
}

#[actix_web::test]
async fn bad_requests_get_json_errors_with_the_right_status_and_code() {
    let app = spawn_app(|s| s.server.max_symbols_per_request = 5).await;
    let s = |q: &str| format!("{STREAM}?{q}");
    let big_symbol = format!("NSE:{}", "A".repeat(20_000));
    let big_formula = "f".repeat(20_000);
    let too_big_body = format!(r#"{{"symbols":"{}"}}"#, "A".repeat(1_100_000));
    let cases = vec![
        // Where the symbols come from.
        get(STREAM, 400, "missing_parameter"),
        get(&s("formula="), 400, "missing_parameter"),
        get(&s("symbols=,,%20,"), 400, "missing_parameter"),
        get(
            &s("formula=breakouts&symbols=NSE:TCS"),
            400,
            "conflicting_parameters",
        ),
        get(
            &s("formula=breakouts&formula=momentum"),
            400,
            "duplicate_parameter",
        ),
        get(
            &s("symbols=NSE:TCS&symbols=NSE:INFY"),
            400,
            "duplicate_parameter",
        ),
        get(
            &s("symbols=NSE:TCS&bars=10&bars=20"),
            400,
            "duplicate_parameter",
        ),
        // Symbols.
        get(&s("symbols=TCS"), 400, "invalid_symbol"),
        get(&s("symbols=NSE:"), 400, "invalid_symbol"),
        get(&s("symbols=:TCS"), 400, "invalid_symbol"),
        get(&s("symbols=NSE:TC%20S"), 400, "invalid_symbol"),
        get(&s("symbols=NSE:TCS:X"), 400, "invalid_symbol"),
        get(&s("symbols=NSE:TCS,NSE:IN%2FFY"), 400, "invalid_symbol"),
        get(&s("symbols=%E2%82%AC:TCS"), 400, "invalid_symbol"),
        get(
            &s("symbols=ABCDEFGHIJKLMNOPQRSTU:TCS"),
            400,
            "invalid_symbol",
        ),
        get(
            &s(&format!("symbols=NSE:{}", "A".repeat(41))),
            400,
            "invalid_symbol",
        ),
        get(&s("symbols=NSE:TCS%00"), 400, "invalid_symbol"),
        get(&s(&format!("symbols={big_symbol}")), 400, "invalid_symbol"),
        get(
            &s("symbols=NSE:A,NSE:B,NSE:C,NSE:D,NSE:E,NSE:F"),
            400,
            "too_many_symbols",
        ),
        // Empty entries in lists, as text and in arrays.
        get(&s("symbols=NSE:TCS,,NSE:INFY"), 400, "invalid_symbol"),
        get(&s("symbols=NSE:TCS,"), 400, "invalid_symbol"),
        get(&s("symbols=,NSE:TCS"), 400, "invalid_symbol"),
        get(
            &s("symbols=NSE:TCS&resolutions=1D,,1W"),
            400,
            "invalid_resolution",
        ),
        get(
            &s("symbols=NSE:TCS&resolutions=1D,%20"),
            400,
            "invalid_resolution",
        ),
        post_json(
            STREAM,
            r#"{"symbols":"NSE:TCS,,NSE:INFY"}"#,
            400,
            "invalid_symbol",
        ),
        post_json(
            STREAM,
            r#"{"symbols":["NSE:TCS",""]}"#,
            400,
            "invalid_symbol",
        ),
        post_json(
            STREAM,
            r#"{"symbols":["NSE:TCS"],"resolutions":["1D"," "]}"#,
            400,
            "invalid_resolution",
        ),
        post_json(
            STREAM,
            r#"{"formulaId":"breakouts","resolutions":"1D,,1W"}"#,
            400,
            "invalid_resolution",
        ),
        // Unknown parameters.
        get(
            &s("symbols=NSE:TCS&barsformat=columns"),
            400,
            "unknown_parameter",
        ),
        get(&s("formula=breakouts&livee=true"), 400, "unknown_parameter"),
        // Live flags: booleans, and quotes only with live.
        get(&s("formula=breakouts&live=yes"), 400, "invalid_parameter"),
        get(
            &s("formula=breakouts&quotes=true"),
            400,
            "invalid_parameter",
        ),
        post_json(
            STREAM,
            r#"{"formulaId":"breakouts","live":"yes"}"#,
            400,
            "invalid_json",
        ),
        get(
            "/api/chart-data?symbol=NSE:TCS&bar=5",
            400,
            "unknown_parameter",
        ),
        get(
            "/api/formula-results?formula=breakouts&resolutions=1D",
            400,
            "unknown_parameter",
        ),
        // Resolutions, bars, format.
        get(
            &s("symbols=NSE:TCS&resolutions=2H"),
            400,
            "invalid_resolution",
        ),
        get(
            &s("symbols=NSE:TCS&resolutions=1D,7"),
            400,
            "invalid_resolution",
        ),
        get(
            &s("symbols=NSE:TCS&resolutions=,"),
            400,
            "invalid_resolution",
        ),
        get(
            &s("symbols=NSE:TCS&resolutions=0"),
            400,
            "invalid_resolution",
        ),
        get(&s("symbols=NSE:TCS&bars=0"), 400, "invalid_bars"),
        get(&s("symbols=NSE:TCS&bars=5001"), 400, "invalid_bars"),
        get(&s("symbols=NSE:TCS&bars=-1"), 400, "invalid_bars"),
        get(&s("symbols=NSE:TCS&bars=abc"), 400, "invalid_bars"),
        get(&s("symbols=NSE:TCS&bars=1.5"), 400, "invalid_bars"),
        get(
            &s("symbols=NSE:TCS&bars=99999999999999999999999"),
            400,
            "invalid_bars",
        ),
        get(
            &s("symbols=NSE:TCS&barsFormat=csv"),
            400,
            "invalid_bars_format",
        ),
        // Formulas.
        get(&s("formula=nope"), 404, "unknown_formula"),
        get(
            &s(&format!("formula={big_formula}")),
            404,
            "unknown_formula",
        ),
        get("/api/formula-results?formula=nope", 404, "unknown_formula"),
        get("/api/formula-results", 400, "missing_parameter"),
        get(
            "/api/formula-results?formula=a&formula=b",
            400,
            "duplicate_parameter",
        ),
        // Bodies.
        post_json(STREAM, r#"{"formulaId":"#, 400, "invalid_json"),
        post_json(STREAM, r#"{"formula":"breakouts"}"#, 400, "invalid_json"),
        post_json(STREAM, r#"["breakouts"]"#, 400, "invalid_json"),
        post_json(
            STREAM,
            r#"{"formulaId":"breakouts","barsCount":-5}"#,
            400,
            "invalid_json",
        ),
        post_json(STREAM, "{}", 400, "missing_parameter"),
        post_json(STREAM, r#"{"formulaId":"nope"}"#, 404, "unknown_formula"),
        post_json(
            STREAM,
            r#"{"formulaId":"breakouts","barsCount":0}"#,
            400,
            "invalid_bars",
        ),
        post_json(
            STREAM,
            r#"{"symbols":["NSE:TCS","bad"]}"#,
            400,
            "invalid_symbol",
        ),
        post_json(
            STREAM,
            r#"{"symbols":["NSE:A","NSE:B","NSE:C","NSE:D","NSE:E","NSE:F"]}"#,
            400,
            "too_many_symbols",
        ),
        post_json(STREAM, too_big_body, 413, "payload_too_large"),
        Case {
            body: Body::Text(r#"{"formulaId":"breakouts"}"#),
            ..case(Method::POST, STREAM, 415, "unsupported_media_type")
        },
        // Chart data.
        get("/api/chart-data", 400, "missing_parameter"),
        get("/api/chart-data?resolution=1D", 400, "missing_parameter"),
        get("/api/chart-data?symbol=bad", 400, "invalid_symbol"),
        get(
            "/api/chart-data?symbol=NSE:TCS&resolution=2H",
            400,
            "invalid_resolution",
        ),
        get("/api/chart-data?symbol=NSE:TCS&bars=0", 400, "invalid_bars"),
        get(
            "/api/chart-data?symbol=NSE:TCS&barsFormat=xml",
            400,
            "invalid_bars_format",
        ),
        get(
            "/api/chart-data?symbol=NSE:TCS&symbol=NSE:INFY",
            400,
            "duplicate_parameter",
        ),
        get(
            &format!("/api/chart-data?symbol={big_symbol}"),
            400,
            "invalid_symbol",
        ),
        // Leases.
        case(
            Method::POST,
            "/api/connections/not-a-lease/renew",
            404,
            "unknown_lease",
        ),
        case(
            Method::POST,
            "/api/connections/%00%FF%0A/renew",
            404,
            "unknown_lease",
        ),
        case(
            Method::POST,
            &format!("/api/connections/{}/renew", "a".repeat(500)),
            404,
            "unknown_lease",
        ),
        // Methods and routes.
        case(Method::PUT, "/api/formulas", 405, "method_not_allowed"),
        case(Method::DELETE, STREAM, 405, "method_not_allowed"),
        case(
            Method::GET,
            "/api/connections/acquire",
            405,
            "method_not_allowed",
        ),
        case(
            Method::POST,
            "/api/connections/stats",
            405,
            "method_not_allowed",
        ),
        case(
            Method::GET,
            "/api/connections/some-lease",
            405,
            "method_not_allowed",
        ),
        get("/api/nope", 404, "not_found"),
        get("/nope", 404, "not_found"),
    ];
    assert!(cases.len() >= 30);
    for c in &cases {
        let what = format!("{} {:.120}", c.method, c.path);
        let req = app.client.request(c.method.clone(), app.url(&c.path));
        let resp = match &c.body {
            Body::None => req.send().await,
            Body::Json(body) => {
                req.insert_header(("Content-Type", "application/json"))
                    .send_body(body.clone())
                    .await
            }
            Body::Text(body) => {
                req.insert_header(("Content-Type", "text/plain"))
                    .send_body(*body)
                    .await
            }
        };
        let resp = resp.unwrap_or_else(|e| panic!("{what}: {e}"));
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (status, body) = response_json(resp).await;
        assert!(
            content_type.starts_with("application/json"),
            "{what}: {content_type}"
        );
        assert_error(status, &body, c.status, c.code, &what);
    }

    let (status, body) = app.get_json("/healthz").await;
    assert_eq!(status, 200, "{body}");
    let s = app
        .stream(&format!("{STREAM}?symbols=NSE:TCS&resolutions=1D&bars=5"))
        .await;
    assert_eq!(s.names().last(), Some(&"complete"), "still serving streams");
}

/// The refusals of empty list entries and unknown parameters say which one and what to do;
/// `access_token` (the API token, SPEC 3) and `_` (a cache-buster) are taken on every route.
#[actix_web::test]
async fn empty_entries_and_unknown_parameters_are_named() {
    let app = spawn_app(|_| {}).await;
    let message = |body: &Value| body["error"].as_str().unwrap_or_default().to_string();
    let (status, body) = app
        .get_json(&format!("{STREAM}?symbols=NSE:TCS,,NSE:INFY"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        message(&body).contains("symbols") && message(&body).contains("entry 2 of 3"),
        "{body}"
    );
    let resp = app
        .post(STREAM)
        .send_json(&json!({"symbols": ["NSE:TCS"], "resolutions": ["1D", ""]}))
        .await
        .expect("POST");
    let (status, body) = response_json(resp).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        message(&body).contains("resolutions") && message(&body).contains("entry 2 of 2"),
        "{body}"
    );

    let (status, body) = app
        .get_json(&format!("{STREAM}?symbols=NSE:TCS&barsformat=columns"))
        .await;
    assert_eq!(status, 400, "{body}");
    let text = message(&body);
    assert!(text.contains("barsformat"), "names the parameter: {body}");
    assert!(
        text.contains("formula, symbols, resolutions, bars, barsFormat, lastEventId"),
        "lists the parameters the stream takes: {body}"
    );
    let (status, body) = app
        .get_json("/api/chart-data?symbol=NSE:TCS&resolutions=1D")
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        message(&body).contains("resolutions") && message(&body).contains("resolution,"),
        "{body}"
    );

    let s = app
        .stream(&format!(
            "{STREAM}?symbols=NSE:TCS&resolutions=1D&bars=5&access_token=unused&_=1700000000"
        ))
        .await;
    assert_eq!(s.names().last(), Some(&"complete"), "{}", s.text());
    let (status, body) = app
        .get_json("/api/chart-data?symbol=NSE:TCS&bars=5&_=1&access_token=unused")
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .get_json("/api/formula-results?formula=breakouts&_=1")
        .await;
    assert_eq!(status, 200, "{body}");
}

#[actix_web::test]
async fn the_api_token_is_required_and_accepted_both_ways() {
    let token = "t0ken-for-the-api";
    let app = spawn_app(|s| s.server.api_token = Secret::new(token)).await;
    let bearer = format!("Bearer {token}");
    for path in [
        "/api/formulas",
        "/api/connections/stats",
        "/api/chart-data?symbol=NSE:TCS&resolution=1D&bars=5",
        "/api/nope",
        &format!("{STREAM}?formula=breakouts&resolutions=1D&bars=5"),
    ] {
        let sep = if path.contains('?') { '&' } else { '?' };
        for (what, req) in [
            ("no token", app.get(path)),
            (
                "wrong bearer",
                app.get(path)
                    .insert_header(("Authorization", "Bearer t0ken-for-the-apX")),
            ),
            (
                "prefix of the token",
                app.get(path)
                    .insert_header(("Authorization", "Bearer t0ken")),
            ),
            (
                "basic auth",
                app.get(path)
                    .insert_header(("Authorization", format!("Basic {token}"))),
            ),
            (
                "wrong query token",
                app.get(&format!("{path}{sep}access_token=nope")),
            ),
        ] {
            let (status, body) = send_json(req).await;
            assert_error(
                status,
                &body,
                401,
                "unauthorized",
                &format!("{path} {what}"),
            );
            assert!(!body.to_string().contains(token));
        }
        for req in [
            app.get(path)
                .insert_header(("Authorization", bearer.as_str())),
            app.get(&format!("{path}{sep}access_token={token}")),
        ] {
            let resp = req.send().await.expect("send");
            let expected = if path == "/api/nope" { 404 } else { 200 };
            assert_eq!(resp.status(), expected, "{path}");
            if path.starts_with(STREAM) {
                let s = common::app::read_response(resp, |_| false).await;
                assert_eq!(s.names().last(), Some(&"complete"), "{path}");
            }
        }
    }
    let post = app
        .post(&format!("{STREAM}?access_token={token}"))
        .send_json(&json!({"symbols": "NSE:TCS", "resolutions": "1D", "barsCount": 5}))
        .await
        .expect("POST");
    assert_eq!(post.status(), 200);
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200, "health needs no token");
}

// ------------------------------------------------------------------------------------------------
// 6. Many streams share the work

#[actix_web::test]
async fn fifty_concurrent_streams_fetch_each_chart_once() {
    let app = spawn_app(|_| {}).await;
    let path = format!("{STREAM}?formula=breakouts&resolutions=1D,1W&bars=60");
    let streams = join_all((0..50).map(|_| read_stream(app.get(&path)))).await;
    let reference = outcomes(&streams[0].data_of("chart-batch"));
    assert_eq!(reference.len(), 40);
    for s in &streams {
        assert_eq!(s.status, 200);
        assert_eq!(s.names().last(), Some(&"complete"));
        let c = &s.data_of("complete")[0]["data"];
        assert_eq!(c["successfulCharts"], 40, "{c}");
        assert_eq!(outcomes(&s.data_of("chart-batch")), reference);
    }
    let stats = app.sim.stats().await;
    assert_eq!(
        stats.series_served, 40,
        "each distinct chart fetched once: {stats:?}"
    );
    assert!(
        stats.connections_total <= app.settings.pool.max_connections as u64,
        "connections are pooled: {stats:?}"
    );
    // Every stream asked the cache for every chart: a hit, a join of the fetch in flight, or a
    // miss, which is a fetch made.
    let cache = &app.conn_stats().await["cache"];
    let count = |k: &str| {
        cache[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {cache}"))
    };
    assert_eq!(
        count("hits") + count("joined") + count("misses"),
        50 * 40,
        "{cache}"
    );
    assert_eq!(count("misses"), stats.series_served, "{cache}");
    app.wait_ref_count(0, Duration::from_secs(2)).await;
}

/// Requests that join a fetch already in flight are counted as `joined`, not as misses: the
/// misses are the fetches made from the feed.
#[actix_web::test]
async fn concurrent_requests_for_one_chart_are_one_miss_and_the_rest_joined() {
    const N: u64 = 12;
    // Long enough that every request arrives while the one fetch is in flight.
    let app = spawn_app(|s| s.simulator.faults.latency_ms = 2_000).await;
    let path = "/api/chart-data?symbol=NSE:JOINME&resolution=1D&bars=40";
    let requests = join_all((0..N).map(|_| app.get_json(path)));
    let watch = async {
        // Every request has looked in the cache before the fetch is answered.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let cache = app.conn_stats().await["cache"].clone();
            let looked = ["hits", "joined", "misses"]
                .iter()
                .map(|k| cache[*k].as_u64().unwrap_or(0))
                .sum::<u64>();
            if looked >= N {
                return cache;
            }
            assert!(tokio::time::Instant::now() < deadline, "{cache}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (answers, during) = futures_util::join!(requests, watch);
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["cached"], false, "every request waited for the fetch");
    }
    assert_eq!(app.sim.stats().await.series_served, 1);
    let cache = &app.conn_stats().await["cache"];
    assert_eq!(
        (&cache["hits"], &cache["joined"], &cache["misses"]),
        (&json!(0), &json!(N - 1), &json!(1)),
        "one fetch made, the other requests joined it: {cache} (while in flight: {during})"
    );
    let metrics = app.metrics().await;
    let joined = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chartgate_cache_joined_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    // Each app has its own registry: only this test's requests count.
    assert_eq!(joined, Some((N - 1) as f64), "{metrics}");
}

// ------------------------------------------------------------------------------------------------
// 7. A client that goes away

/// `/api/connections/stats`' `pool.inFlight` and `pool.queued`.
async fn pool_load(app: &TestApp) -> (u64, u64, Value) {
    let stats = app.conn_stats().await;
    let n = |k: &str| stats["pool"][k].as_u64().unwrap_or(u64::MAX);
    (n("inFlight"), n("queued"), stats)
}

/// Polls `/api/connections/stats` until `done` holds for the pool's (inFlight, queued); the
/// deadline only keeps a broken build from hanging.
async fn wait_pool_load(app: &TestApp, what: &str, done: impl Fn(u64, u64) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (in_flight, queued, stats) = pool_load(app).await;
        if done(in_flight, queued) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stream whose client goes away cancels the fetches only it was waiting for, queued and in
/// flight, while another client's fetches, queued behind them, go on. Nothing else can make the
/// abandoned work go away here: the idle timeout and the request timeout are far longer than the
/// test, and the feed would answer the abandoned stream's charts only after an hour. So the
/// pool's load returns to zero only if the abandoned fetches were cancelled, the other stream
/// completes only because they gave way, and the feed serves exactly that stream's charts.
#[actix_web::test]
async fn a_client_that_disconnects_cancels_only_the_work_it_was_waiting_for() {
    const HOUR_MS: u64 = 3_600_000;
    let app = spawn_app(|s| {
        s.simulator.faults.latency_ms = HOUR_MS;
        s.pool.max_connections = 1;
        s.pool.requests_per_connection = 10;
        s.stream.keep_alive_secs = 1;
        s.manager.idle_timeout_secs = 3_600;
        s.upstream.request_timeout_ms = HOUR_MS;
    })
    .await;
    // The abandoned stream: 40 charts, 10 in flight on the one connection, 30 queued.
    let abandoned: Vec<String> = (1..=20).map(|n| format!("NSE:GONE{n:02}")).collect();
    let mut gone = app
        .get(&format!(
            "{STREAM}?symbols={}&resolutions=1D,1W&bars=30",
            abandoned.join(",")
        ))
        .send()
        .await
        .expect("open the stream");
    assert_eq!(gone.status(), 200);
    // Its first event, read while the response is kept open.
    let mut head = Vec::new();
    while !String::from_utf8_lossy(&head).contains("\"type\":\"formula-results\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), gone.next())
            .await
            .expect("the first event in time")
            .expect("the stream goes on")
            .expect("a chunk");
        head.extend_from_slice(&chunk);
    }
    wait_pool_load(
        &app,
        "the abandoned stream's fetches reach the pool",
        |f, q| (f, q) == (10, 30),
    )
    .await;
    let stats = app.conn_stats().await;
    assert_eq!(stats["refCount"], 1, "the stream holds a lease: {stats}");

    // The other stream shares no chart with it; its two fetches queue behind the 30.
    let other = actix_web::rt::spawn(read_stream(app.get(&format!(
        "{STREAM}?symbols=NSE:KEPT1,NSE:KEPT2&resolutions=1D&bars=30"
    ))));
    wait_pool_load(&app, "the other stream's fetches are queued", |f, q| {
        (f, q) == (10, 32)
    })
    .await;
    // The ten in flight have reached the feed (and wait there for an hour); only then may the
    // latency go, or a request still on its way would be answered at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.sim.stats().await.symbols_resolved < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed received the ten fetches in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // From now on the feed answers at once: any fetch it is sent from here is served.
    app.sim.set_faults(Faults::default()).await;
    assert_eq!(app.sim.stats().await.series_served, 0);
    let metrics = app.metrics().await;
    let open = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chartgate_sse_streams_open "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(open, Some(2.0), "streams open");

    // The first client goes away. The server notices at its next write (a keep-alive): its
    // lease is released and its fetches leave the pool, queued and in flight alike, while the
    // other stream's two take their place.
    // (Its lease is checked below, with the other's: both are gone at the end.)
    drop(gone);
    wait_pool_load(&app, "the abandoned fetches were cancelled", |f, q| {
        q == 0 && f <= 2
    })
    .await;
    let other = other.await.expect("the other stream's reader");
    assert_eq!(other.names().last(), Some(&"complete"), "{}", other.text());
    let complete = &other.data_of("complete")[0]["data"];
    assert_eq!(
        (&complete["successfulCharts"], &complete["failedCharts"]),
        (&json!(2), &json!(0)),
        "the other stream's fetches were not cancelled: {complete}"
    );
    wait_pool_load(&app, "nothing left in the pool", |f, q| (f, q) == (0, 0)).await;
    app.wait_ref_count(0, Duration::from_secs(5)).await;
    let sim = app.sim.stats().await;
    // The other stream's two, and at most a few of the abandoned client's: its fetches leave the
    // pool one by one, and a slot one of them freed can, on a busy machine, be refilled by
    // another of its queued fetches whose departure has not reached the pool yet (the pool
    // refills at its next tick to make that rare). Were cancellation broken, the feed, which now
    // answers at once, would serve all 42.
    assert!(
        (2..2 + 10).contains(&sim.series_served),
        "the feed served the other stream's charts and almost none of the abandoned ones: {sim:?}"
    );
    // The connection is still open: the idle timer played no part.
    assert_eq!(
        (sim.connections_open, sim.connections_total),
        (1, 1),
        "{sim:?}"
    );
}

#[actix_web::test]
async fn idle_streams_get_keep_alive_comments() {
    let app = spawn_app(|s| {
        s.simulator.faults.latency_ms = 1_300;
        s.stream.keep_alive_secs = 1;
    })
    .await;
    let s = app
        .stream(&format!("{STREAM}?symbols=NSE:TCS&resolutions=1D&bars=5"))
        .await;
    assert_wire_format(&s, app.settings.stream.retry_ms);
    assert_eq!(s.names(), ["formula-results", "chart-batch", "complete"]);
    let text = s.text();
    let keep_alive = text
        .find("\n: keep-alive\n\n")
        .expect("a keep-alive comment");
    let batch = text.find("event: chart-batch").expect("the batch");
    assert!(
        keep_alive < batch,
        "the comment came while waiting for the chart"
    );
}

// ------------------------------------------------------------------------------------------------
// 8. Failing formula sources and feeds

/// A stand-in for a broken MarketInOut: `/fail` answers 500, `/garbage` 200 with no stock list;
/// both echo what they were asked (the key included) so a leak would show.
async fn broken_formula_source() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = HttpServer::new(|| {
        App::new()
            .route(
                "/fail",
                web::get().to(|req: actix_web::HttpRequest| async move {
                    HttpResponse::InternalServerError().body(format!("boom {}", req.uri()))
                }),
            )
            .route(
                "/garbage",
                web::get().to(|req: actix_web::HttpRequest| async move {
                    HttpResponse::Ok().body(format!(
                        "<html>not a list</html>\nstill|not|{}\n",
                        req.uri()
                    ))
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listen")
    .run();
    actix_web::rt::spawn(server);
    format!("http://{addr}")
}

fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

#[actix_web::test]
async fn a_failing_formula_source_is_a_502_that_hides_the_key() {
    let source = broken_formula_source().await;
    let dead = closed_port();
    let keys = [
        "a1b2c3d4e5f60718",
        "00112233aabbccdd",
        "ffeeddccbbaa9988",
        "1234567890abcdef",
    ];
    let app = spawn_app(|s| {
        s.formulas.source_url = format!("{source}/fail");
        s.formulas.timeout_ms = 2_000;
        let def = |id: &str, key: Option<&str>, url: Option<String>| FormulaDef {
            id: id.into(),
            name: format!("{id} screen"),
            key: key.map(str::to_string),
            url,
        };
        s.formulas.list = vec![
            def("fails", Some(keys[0]), None),
            def(
                "garbage",
                None,
                Some(format!("{source}/garbage?key={}", keys[1])),
            ),
            def(
                "unreachable",
                None,
                Some(format!(
                    "http://127.0.0.1:{dead}/run/screen?key={}",
                    keys[2]
                )),
            ),
            def(
                "missing",
                None,
                Some(format!("{source}/no-such-page?key={}", keys[3])),
            ),
        ];
    })
    .await;
    for id in ["fails", "garbage", "unreachable", "missing"] {
        for path in [
            format!("{STREAM}?formula={id}&resolutions=1D&bars=5"),
            format!("/api/formula-results?formula={id}"),
        ] {
            let (status, body) = app.get_json(&path).await;
            assert_error(status, &body, 502, "formula_source_error", &path);
            let text = body.to_string();
            for key in keys {
                assert!(!text.contains(key), "{path}: the key leaked: {text}");
            }
            assert!(!text.contains(&source), "{path}: the URL leaked: {text}");
        }
    }
    let (status, body) = app.get_json("/api/formulas").await;
    assert_eq!(status, 200);
    assert_eq!(body["formulas"].as_array().map(Vec::len), Some(4));
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);

    // With the formula source unreachable and no connection open, the service is not ready.
    let app = spawn_app(|s| {
        s.formulas.source_url = format!("http://127.0.0.1:{dead}/run/screen");
    })
    .await;
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = app.get_json("/healthz").await;
    assert_eq!(status, 200, "{body}");
}

#[actix_web::test]
async fn a_feed_that_refuses_connections_fails_charts_not_streams() {
    let app = spawn_app(|s| {
        s.simulator.faults.reject_upgrades = 503;
        s.manager.max_reconnect_attempts = 1;
        s.manager.reconnect_backoff_ms = 50;
    })
    .await;
    let (status, body) = app
        .get_json("/api/chart-data?symbol=NSE:TCS&resolution=1D&bars=10")
        .await;
    assert_error(status, &body, 503, "upstream_unavailable", "chart-data");

    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 503, "not ready while the feed is down: {body}");

    let s = app
        .stream(&format!(
            "{STREAM}?symbols=NSE:TCS,NSE:INFY,NSE:SBIN&resolutions=1D,1W&bars=10"
        ))
        .await;
    assert_wire_format(&s, app.settings.stream.retry_ms);
    assert_eq!(s.names().last(), Some(&"complete"), "{}", s.text());
    let charts = outcomes(&s.data_of("chart-batch"));
    assert_eq!(charts.len(), 6);
    for (key, outcome) in &charts {
        let err = outcome.as_ref().expect_err("every chart failed");
        assert_eq!(err["code"], "upstream_unavailable", "{key:?}: {err}");
    }
    let c = &s.data_of("complete")[0]["data"];
    assert_eq!(
        (&c["failedCharts"], &c["successfulCharts"]),
        (&json!(6), &json!(0))
    );
    assert!(app.sim.stats().await.handshakes_rejected > 0);

    // Once the feed is back, a new request starts a new episode and succeeds.
    app.sim.set_faults(Faults::default()).await;
    let (status, body) = app
        .get_json("/api/chart-data?symbol=NSE:TCS&resolution=1D&bars=10")
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
}

// ------------------------------------------------------------------------------------------------
// 9. The small routes

#[actix_web::test]
async fn chart_data_formulas_and_formula_results() {
    let app = spawn_app(|_| {}).await;
    let path = "/api/chart-data?symbol=tcs.ns&resolution=1W&bars=35";
    let (status, first) = app.get_json(path).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["symbol"], "NSE:TCS");
    assert_eq!(first["resolution"], "1W");
    assert_eq!(first["cached"], false);
    assert_chart("NSE:TCS", "1W", 35, "objects", &first);
    let (status, second) = app.get_json(path).await;
    assert_eq!(status, 200);
    assert_eq!(second["cached"], true);
    assert_eq!(second["bars"], first["bars"]);
    let (status, columns) = app
        .get_json("/api/chart-data?symbol=NSE:TCS&resolution=1W&bars=35&barsFormat=columns")
        .await;
    assert_eq!(status, 200);
    assert_chart("NSE:TCS", "1W", 35, "columns", &columns);
    let (status, default) = app.get_json("/api/chart-data?symbol=NSE:INFY").await;
    assert_eq!(status, 200);
    assert_eq!(default["resolution"], "1D");
    assert_eq!(default["bars"].as_array().map(Vec::len), Some(300));

    let (status, body) = app
        .get_json("/api/chart-data?symbol=NSE:INVALIDX&resolution=1D")
        .await;
    assert_error(status, &body, 404, "unknown_symbol", "unknown symbol");

    let (status, body) = app.get_json("/api/formulas").await;
    assert_eq!(status, 200);
    let expected: Vec<Value> = DEMO_FORMULAS
        .iter()
        .map(|(id, name, _, _)| json!({"id": id, "name": name}))
        .collect();
    assert_eq!(body, json!({ "formulas": expected }));
    let text = body.to_string();
    for (_, _, key, _) in DEMO_FORMULAS {
        assert!(!text.contains(key));
    }
    assert!(!text.contains("http") && !text.contains("url"), "{text}");

    let (status, body) = app.get_json("/api/formula-results?formula=momentum").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["formulaId"], "momentum");
    assert_eq!(body["formulaName"], "Momentum leaders");
    let stocks = body["stocks"].as_array().expect("stocks");
    assert_eq!(stocks.len(), 60);
    for stock in stocks {
        let symbol = stock["symbol"].as_str().expect("symbol");
        assert!(symbol.contains(':'), "{symbol}");
        assert!(
            stock
                .as_object()
                .expect("object")
                .values()
                .all(|v| !v.is_null())
        );
    }
    assert!(!body.to_string().contains(DEMO_FORMULAS[1].2));
    // The stream's list is the same list.
    let s = read_stream_until(
        app.get(&format!("{STREAM}?formula=momentum&resolutions=1D&bars=5")),
        |e| e.event == "formula-results",
    )
    .await;
    assert_eq!(
        s.data_of("formula-results")[0]["data"]["stocks"],
        body["stocks"]
    );
}

#[actix_web::test]
async fn leases_stats_health_and_metrics() {
    let app = spawn_app(|_| {}).await;
    let (status, health) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{health}");
    let resp = app.get("/healthz").send().await.expect("healthz");
    assert_eq!(resp.status(), 200);

    let stats = app.conn_stats().await;
    for key in [
        "isActive",
        "refCount",
        "health",
        "reconnectAttempts",
        "hasIdleTimer",
        "idleClosesInSecs",
        "pool",
        "cache",
    ] {
        assert!(stats.get(key).is_some(), "stats.{key}: {stats}");
    }
    for key in [
        "openConnections",
        "inFlight",
        "queued",
        "servedTotal",
        "connections",
    ] {
        assert!(stats["pool"].get(key).is_some(), "pool.{key}: {stats}");
    }
    for key in ["entries", "bytes", "hits", "joined", "misses"] {
        assert!(stats["cache"].get(key).is_some(), "cache.{key}: {stats}");
    }
    assert_eq!(stats["refCount"], 0);
    assert!(
        ["healthy", "idle"].contains(&stats["health"].as_str().unwrap_or_default()),
        "{stats}"
    );

    let (status, lease) = send_json(app.post("/api/connections/acquire")).await;
    assert_eq!(status, 200, "{lease}");
    let lease_id = lease["leaseId"].as_str().expect("leaseId").to_string();
    assert_eq!(lease["refCount"], 1);
    assert!(lease["ttlSecs"].as_u64().is_some_and(|t| t > 0), "{lease}");
    assert_eq!(app.conn_stats().await["refCount"], 1);

    let (status, renewed) =
        send_json(app.post(&format!("/api/connections/{lease_id}/renew"))).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["leaseId"], lease_id.as_str());
    assert_eq!(renewed["refCount"], 1);

    // A chart fetch warms the pool: the connection shows in the stats.
    let (status, _) = app
        .get_json("/api/chart-data?symbol=NSE:SBIN&resolution=1D&bars=10")
        .await;
    assert_eq!(status, 200);
    let stats = app.conn_stats().await;
    assert_eq!(stats["isActive"], true, "{stats}");
    assert!(
        stats["pool"]["openConnections"].as_u64() >= Some(1),
        "{stats}"
    );
    assert!(stats["pool"]["servedTotal"].as_u64() >= Some(1), "{stats}");
    let conn = &stats["pool"]["connections"][0];
    for key in [
        "id",
        "state",
        "inFlight",
        "served",
        "ageSecs",
        "lastUpstreamSecs",
    ] {
        assert!(conn.get(key).is_some(), "connection.{key}: {stats}");
    }
    assert_eq!(stats["cache"]["misses"].as_u64(), Some(1), "{stats}");

    for _ in 0..2 {
        let resp = app
            .client
            .delete(app.url(&format!("/api/connections/{lease_id}")))
            .send()
            .await
            .expect("DELETE");
        assert_eq!(resp.status(), 204);
    }
    let stats = app.conn_stats().await;
    assert_eq!(stats["refCount"], 0, "{stats}");
    assert_eq!(stats["hasIdleTimer"], true, "{stats}");
    let (status, body) = send_json(app.post(&format!("/api/connections/{lease_id}/renew"))).await;
    assert_error(status, &body, 404, "unknown_lease", "renew after release");

    for _ in 0..3 {
        let (status, _) = send_json(app.post("/api/connections/acquire")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(app.conn_stats().await["refCount"], 3);
    let resp = app
        .post("/api/connections/force-cleanup")
        .send()
        .await
        .expect("force-cleanup");
    assert_eq!(resp.status(), 204);
    let stats = app.conn_stats().await;
    assert_eq!(stats["refCount"], 0, "{stats}");
    app.sim
        .wait_connections_open(0, Duration::from_secs(2))
        .await;

    // A stream, so the stream metrics exist too.
    let s = app
        .stream(&format!("{STREAM}?symbols=NSE:SBIN&resolutions=1D&bars=10"))
        .await;
    assert_eq!(s.names().last(), Some(&"complete"));
    let (status, _) = app.get_json("/api/chart-data?symbol=NSE:INVALIDZ").await;
    assert_eq!(status, 404);

    let metrics = app.metrics().await;
    let has = |needle: &str| {
        metrics
            .lines()
            .any(|l| !l.starts_with('#') && l.contains(needle))
    };
    for needle in [
        r#"chartgate_http_requests_total{route="/api/chart-data",status="200"}"#,
        r#"chartgate_http_requests_total{route="/api/connections/acquire",status="200"}"#,
        r#"status="404""#,
        r#"chartgate_charts_fetched_total{outcome="ok"}"#,
        "chartgate_upstream_connections_open",
        "chartgate_leases",
        "chartgate_cache_hits_total",
        "chartgate_cache_joined_total",
        "chartgate_cache_misses_total",
        "chartgate_chart_fetch_seconds_bucket",
        "chartgate_sse_streams_open",
    ] {
        assert!(has(needle), "/metrics lacks {needle}:\n{metrics}");
    }
    // Counted, not only registered, and only this app's requests (each app has its own
    // registry): chart-data fetched SBIN and INVALIDZ once each, and the stream was served SBIN
    // from the cache.
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("/metrics lacks a value for {series}:\n{metrics}"))
    };
    for (series, want) in [
        ("chartgate_cache_misses_total ", 2.0),
        ("chartgate_cache_hits_total ", 1.0),
        (r#"chartgate_charts_fetched_total{outcome="ok"} "#, 1.0),
        (r#"chartgate_charts_served_total{outcome="ok"} "#, 1.0),
        (r#"chartgate_charts_served_total{outcome="cached"} "#, 1.0),
        (r#"chartgate_charts_served_total{outcome="failed"} "#, 1.0),
        (
            r#"chartgate_charts_fetched_total{outcome="unknown_symbol"} "#,
            1.0,
        ),
        (
            r#"chartgate_http_requests_total{route="/api/chart-data",status="200"} "#,
            1.0,
        ),
        ("chartgate_sse_streams_open ", 0.0),
    ] {
        assert_eq!(value(series), want, "{series}in\n{metrics}");
    }
}

#[actix_web::test]
async fn cors_allows_only_the_configured_origins() {
    let token = "cors-api-token";
    let app = spawn_app(|s| {
        s.server.cors_origins = vec!["http://app.example".into()];
        s.server.api_token = Secret::new(token);
    })
    .await;
    let preflight = |origin: &'static str, path: &str| {
        app.client
            .request(Method::OPTIONS, app.url(path))
            .insert_header(("Origin", origin))
            .insert_header(("Access-Control-Request-Method", "GET"))
            .insert_header(("Access-Control-Request-Headers", "last-event-id"))
            .send()
    };
    let acao = |h: &awc::http::header::HeaderMap| {
        h.get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    for path in [STREAM, "/api/formulas"] {
        let ok = preflight("http://app.example", path)
            .await
            .expect("preflight");
        assert!(ok.status().is_success(), "{}", ok.status());
        assert_eq!(acao(ok.headers()).as_deref(), Some("http://app.example"));
        let other = preflight("http://evil.example", path)
            .await
            .expect("preflight");
        assert_eq!(acao(other.headers()), None, "{path}: another origin");
    }
    // Preflights carry no token (browsers never send one); the real requests do.
    let s = read_stream(
        app.get(&format!(
            "{STREAM}?symbols=NSE:TCS&resolutions=1D&bars=5&access_token={token}"
        ))
        .insert_header(("Origin", "http://app.example")),
    )
    .await;
    assert_eq!(acao(&s.headers).as_deref(), Some("http://app.example"));
    assert_eq!(s.names().last(), Some(&"complete"));
    let resp = app
        .get("/api/formulas")
        .insert_header(("Origin", "http://evil.example"))
        .insert_header(("Authorization", format!("Bearer {token}")))
        .send()
        .await
        .expect("GET");
    assert_eq!(acao(resp.headers()), None);
    // A refusal is readable by the allowed page too.
    let resp = app
        .get("/api/formulas")
        .insert_header(("Origin", "http://app.example"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 401);
    assert_eq!(acao(resp.headers()).as_deref(), Some("http://app.example"));
}

#[actix_web::test]
async fn leases_are_safe_under_concurrency_and_expire() {
    let app = spawn_app(|s| s.manager.lease_ttl_secs = 1).await;
    let acquired = join_all((0..20).map(|_| send_json(app.post("/api/connections/acquire")))).await;
    let ids: BTreeSet<String> = acquired
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["leaseId"].as_str().expect("leaseId").to_string()
        })
        .collect();
    assert_eq!(ids.len(), 20, "distinct lease ids");
    assert_eq!(app.conn_stats().await["refCount"], 20);
    let deletes = ids.iter().chain(ids.iter()).map(|id| {
        app.client
            .delete(app.url(&format!("/api/connections/{id}")))
            .send()
    });
    for resp in join_all(deletes).await {
        assert_eq!(resp.expect("DELETE").status(), 204);
    }
    let stats = app.conn_stats().await;
    assert_eq!(stats["refCount"], 0, "{stats}");

    // An explicit lease not renewed within lease_ttl_secs (1 s) expires.
    let (_, lease) = send_json(app.post("/api/connections/acquire")).await;
    assert_eq!(lease["ttlSecs"], 1);
    let id = lease["leaseId"].as_str().expect("leaseId").to_string();
    app.wait_ref_count(0, Duration::from_secs(3)).await;
    let (status, body) = send_json(app.post(&format!("/api/connections/{id}/renew"))).await;
    assert_error(status, &body, 404, "unknown_lease", "renew after expiry");
}

// ------------------------------------------------------------------------------------------------
// 10. Secrets

#[actix_web::test]
async fn no_route_returns_a_secret() {
    let api_token = "apiSECRETtoken4242";
    let secrets = [
        api_token,
        "upstreamSECRETjwt7777",
        "sessionSECRETid5555",
        "sessionSECRETsign3333",
    ];
    // A fixed token the feed rejects (so its failures are reported), then session cookies.
    for with_session in [false, true] {
        let app = spawn_app(|s| {
            s.server.api_token = Secret::new(api_token);
            s.upstream.auth_token = Secret::new(secrets[1]);
            if with_session {
                s.upstream.session_id = Secret::new(secrets[2]);
                s.upstream.session_sign = Secret::new(secrets[3]);
            }
            s.manager.max_reconnect_attempts = 1;
            s.manager.reconnect_backoff_ms = 50;
        })
        .await;
        let auth = format!("Bearer {api_token}");
        let mut bodies = Vec::new();
        for path in [
            "/",
            "/healthz",
            "/readyz",
            "/api/formulas",
            "/api/formula-results?formula=breakouts",
            "/api/chart-data?symbol=NSE:TCS&resolution=1D&bars=10",
            "/api/chart-data?symbol=NSE:INVALIDQ",
            "/api/chart-data?symbol=bad",
            "/api/connections/stats",
            "/api/nope",
            &format!("{STREAM}?formula=nope"),
            &format!("{STREAM}?symbols=NSE:TCS,NSE:INVALIDQ&resolutions=1D&bars=10"),
            "/metrics",
        ] {
            for authorised in [true, false] {
                let mut req = app.get(path);
                if authorised {
                    req = req.insert_header(("Authorization", auth.as_str()));
                }
                let mut resp = req.send().await.expect("send");
                let body = resp.body().limit(16 << 20).await.expect("body");
                let headers = format!("{:?}", resp.headers());
                bodies.push((
                    path.to_string(),
                    format!("{}\n{headers}", String::from_utf8_lossy(&body)),
                ));
            }
        }
        let (_, lease) = send_json(
            app.post("/api/connections/acquire")
                .insert_header(("Authorization", auth.as_str())),
        )
        .await;
        bodies.push(("acquire".to_string(), lease.to_string()));
        for (path, body) in &bodies {
            for secret in secrets {
                assert!(
                    !body.contains(secret),
                    "{path} (session: {with_session}) returned a secret: {body:.400}"
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// 11. Graceful shutdown

#[actix_web::test]
async fn shutdown_ends_open_streams_with_a_resumable_error() {
    let (s, TestApp { sim, server, .. }) = stream_cut_by_shutdown(&format!(
        "{STREAM}?formula=breakouts&resolutions=1D,1W&bars=30"
    ))
    .await;
    assert_eq!(s.status, 200);
    let names = s.names();
    assert_eq!(names.first(), Some(&"formula-results"));
    assert_eq!(names.last(), Some(&"stream-error"), "{names:?}");
    assert!(!names.contains(&"complete"));
    let err = &s.data_of("stream-error")[0];
    assert_eq!(err["type"], "stream-error");
    assert_eq!(err["data"]["code"], "shutting_down", "{err}");
    assert!(
        err["data"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(s.events.last().and_then(|e| e.id.as_ref()).is_some());

    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("run_until_stopped returned")
        .expect("the server task did not panic");
    assert!(result.is_ok(), "{result:?}");
    sim.wait_connections_open(0, Duration::from_secs(2)).await;
}
