//! `chartgate watch` against an in-process actix-web server that serves canned SSE in SPEC 3.1's
//! exact format: the happy path, `--json` output, error statuses and exit codes, `stream-error`,
//! a dropped connection resumed with `Last-Event-ID`, a `204` resume, usage errors through the
//! real binary, and the SSE parser on its own (every chunk boundary, CRLF, properties).
//!
//! `--live`: on canned live streams (the table's lines, resuming with a live id, Ctrl-C), and
//! against the real service with its embedded simulator on a fast tick (bars and quotes after
//! `complete`, and a connection cut by a proxy resumed without the history again).

mod common;

use std::io::Write;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use chartgate::watch::sse::{SseError, SseEvent, SseParser};
use chartgate::watch::{Display, Ending, Report, WatchArgs, WatchError, watch};
use futures_util::StreamExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

// ------------------------------------------------------------------------------------------------
// The canned server
// ------------------------------------------------------------------------------------------------

/// What the server saw of one request.
#[derive(Debug, Clone, Default)]
struct Seen {
    query: String,
    last_event_id: Option<String>,
    authorization: Option<String>,
    accept: Option<String>,
}

/// One piece of a streamed answer.
#[derive(Debug, Clone)]
enum Part {
    Text(String),
    /// Abort the connection here, as a crashed server or a broken network would.
    Abort,
    /// Keep the connection open and send nothing more, ever.
    Stall,
}

/// The answer to one request.
#[derive(Debug, Clone)]
enum Reply {
    /// `200 text/event-stream` with these parts; the response ends (cleanly) after the last part
    /// unless that part is `Abort`.
    Sse(Vec<Part>),
    /// Another status with this body (JSON or not).
    Status(u16, String),
}

type Script = dyn Fn(usize, &Seen) -> Reply + Send + Sync;

struct TestServer {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn stream_route(
    req: HttpRequest,
    script: web::Data<Arc<Script>>,
    seen: web::Data<Arc<Mutex<Vec<Seen>>>>,
) -> HttpResponse {
    let this = Seen {
        query: req.query_string().to_owned(),
        last_event_id: header(&req, "Last-Event-ID"),
        authorization: header(&req, "Authorization"),
        accept: header(&req, "Accept"),
    };
    let n = {
        let mut seen = seen.lock().unwrap();
        seen.push(this.clone());
        seen.len() - 1
    };
    match script(n, &this) {
        Reply::Status(code, body) => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap())
                .content_type("application/json")
                .body(body)
        }
        Reply::Sse(parts) => {
            let stall = matches!(parts.last(), Some(Part::Stall));
            let items = parts.into_iter().filter(|p| !matches!(p, Part::Stall));
            let body = futures_util::stream::iter(items).then(|part| async move {
                match part {
                    Part::Text(t) => Ok(Bytes::from(t)),
                    _ => {
                        // Give what was sent time to reach the client first: actix-web drops
                        // its unflushed write buffer when a body fails.
                        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
                        Err(std::io::Error::other("test server aborts the stream"))
                    }
                }
            });
            let mut response = HttpResponse::Ok();
            response
                .content_type("text/event-stream")
                .insert_header(("Cache-Control", "no-cache"));
            if stall {
                response.streaming(body.chain(futures_util::stream::pending()))
            } else {
                response.streaming(body)
            }
        }
    }
}

/// Starts a server on a free loopback port that answers the stream route from `script`
/// (request number, what it saw) and records every request.
fn spawn_server(script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> TestServer {
    let script: Arc<Script> = Arc::new(script);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let (script_data, seen_data) = (web::Data::new(script), web::Data::new(seen.clone()));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(script_data.clone())
            .app_data(seen_data.clone())
            .route(
                "/api/formula-results-with-charts",
                web::get().to(stream_route),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .expect("bind a loopback port");
    let addr = server.addrs()[0];
    actix_web::rt::spawn(server.run());
    TestServer {
        url: format!("http://{addr}"),
        seen,
    }
}

// ------------------------------------------------------------------------------------------------
// Canned events in SPEC 3.1's format
// ------------------------------------------------------------------------------------------------

fn event(id: &str, name: &str, data: Value) -> String {
    let payload = json!({ "type": name, "data": data });
    format!("id: {id}\nevent: {name}\ndata: {payload}\n\n")
}

fn text(s: impl Into<String>) -> Part {
    Part::Text(s.into())
}

fn chart() -> Value {
    json!({
        "bars": {"time": [1, 2], "open": [1.0, 2.0], "high": [1.5, 2.5], "low": [0.5, 1.5],
                 "close": [1.2, 2.2], "volume": [10, 20]},
        "metadata": {"name": "X", "exchange": "NSE", "description": "X Ltd", "currencyCode": "INR",
                     "pricescale": 100, "timezone": "Asia/Kolkata", "type": "stock"}
    })
}

fn formula_results_data(resumed: bool) -> Value {
    json!({
        "formulaId": "breakouts", "formulaName": "Breakouts",
        "stocks": [
            {"symbol": "NSE:AAA", "name": "Aaa Ltd", "price": 10.5},
            {"symbol": "NSE:BBB", "name": "Bbb Ltd"},
            {"symbol": "NSE:ZZZ"}
        ],
        "totalCharts": 6, "resolutions": ["1D", "1W"], "barsCount": 2, "resumed": resumed
    })
}

fn formula_results(id: &str) -> String {
    event(id, "formula-results", formula_results_data(false))
}

fn batch1_data() -> Value {
    json!({
        "batchIndex": 1, "totalBatches": 2, "symbols": ["NSE:AAA", "NSE:BBB"],
        "chartData": {"NSE:AAA": {"1D": chart(), "1W": chart()}, "NSE:BBB": {"1D": chart()}},
        "errors": {"NSE:BBB": {"1W": {"code": "series_error", "message": "resolution not allowed"}}},
        "progress": {"loaded": 4, "total": 6, "percentage": 66.7},
        "timing": {"startTime": 1000, "endTime": 1100, "durationMs": 100}
    })
}

fn batch1(id: &str) -> String {
    event(id, "chart-batch", batch1_data())
}

fn batch2_data() -> Value {
    json!({
        "batchIndex": 2, "totalBatches": 2, "symbols": ["NSE:ZZZ"],
        "chartData": {},
        "errors": {"NSE:ZZZ": {
            "1W": {"code": "unknown_symbol", "message": "no such symbol NSE:ZZZ"},
            "1D": {"code": "unknown_symbol", "message": "no such symbol NSE:ZZZ"}
        }},
        "progress": {"loaded": 6, "total": 6, "percentage": 100.0},
        "timing": {"startTime": 1000, "endTime": 1200, "durationMs": 200}
    })
}

fn batch2(id: &str) -> String {
    event(id, "chart-batch", batch2_data())
}

fn complete_data() -> Value {
    json!({"totalCharts": 6, "successfulCharts": 3, "failedCharts": 3, "cachedCharts": 1,
           "totalTime": 1234, "avgTimePerChart": 205.7})
}

fn complete(id: &str) -> String {
    event(id, "complete", complete_data())
}

/// The whole happy stream as the server sends it (`retry:` in the first event's block), with a
/// keep-alive comment between events.
fn happy_stream() -> Vec<Part> {
    vec![
        text(format!("retry: 10\n{}", formula_results("s1-1"))),
        text(": keep-alive\n\n"),
        text(batch1("s1-2")),
        text(batch2("s1-3")),
        text(": keep-alive\n\n"),
        text(complete("s1-4")),
    ]
}

// ------------------------------------------------------------------------------------------------
// Running the client
// ------------------------------------------------------------------------------------------------

struct Run {
    result: Result<Report, WatchError>,
    stdout: String,
    stderr: String,
}

async fn run_watch(args: &WatchArgs) -> Run {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let result = watch(
        args,
        &mut out,
        &mut err,
        Display::lines(),
        std::future::pending(),
    )
    .await;
    Run {
        result,
        stdout: String::from_utf8(out).expect("stdout is UTF-8"),
        stderr: String::from_utf8(err).expect("stderr is UTF-8"),
    }
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// Runs the real binary (off the runtime thread, so the in-process server keeps serving).
async fn run_binary(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    actix_web::rt::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_chartgate"))
            .args(&args)
            .env_remove("CHARTGATE_TOKEN")
            .env_remove("RUST_LOG")
            .envs(envs)
            .output()
            .expect("run chartgate")
    })
    .await
    .expect("join")
}

// ------------------------------------------------------------------------------------------------
// The client against the server
// ------------------------------------------------------------------------------------------------

#[actix_web::test]
async fn happy_path_json_prints_one_line_per_event_with_its_data() {
    let server = spawn_server(|_, _| Reply::Sse(happy_stream()));
    let mut args = WatchArgs::formula(&server.url, "breakouts");
    args.json = true;
    args.resolutions = vec!["1D".parse().unwrap(), "1W".parse().unwrap()];
    args.bars = Some("50".parse().unwrap());
    args.token = Some("s3cret".into());

    let run = run_watch(&args).await;
    let report = run.result.expect("the watch succeeds");
    assert_eq!(report.ending, Ending::Complete);
    assert_eq!(report.reconnects, 0);

    let lines = json_lines(&run.stdout);
    let expected = [
        ("formula-results", "s1-1", formula_results_data(false)),
        ("chart-batch", "s1-2", batch1_data()),
        ("chart-batch", "s1-3", batch2_data()),
        ("complete", "s1-4", complete_data()),
    ];
    assert_eq!(lines.len(), expected.len(), "stdout: {}", run.stdout);
    for (line, (name, id, data)) in lines.iter().zip(expected) {
        assert_eq!(line, &json!({"event": name, "id": id, "data": data}));
    }
    // The key order of the line is event, id, data.
    assert!(
        run.stdout
            .starts_with(r#"{"event":"formula-results","id":"s1-1","data":{"#)
    );

    assert!(
        run.stderr
            .contains("Breakouts (breakouts): 3 stocks, 6 charts")
    );
    assert!(
        run.stderr.contains("batch 1/2: 4/6 charts (66%)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("batch 2/2: 6/6 charts (100%)"),
        "{}",
        run.stderr
    );

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].query,
        "formula=breakouts&resolutions=1D%2C1W&bars=50&barsFormat=columns"
    );
    assert_eq!(seen[0].accept.as_deref(), Some("text/event-stream"));
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer s3cret"));
    assert_eq!(seen[0].last_event_id, None);
}

#[actix_web::test]
async fn summary_table_lists_counts_times_and_sorted_failures() {
    let server = spawn_server(|_, _| Reply::Sse(happy_stream()));
    let run = run_watch(&WatchArgs::formula(&server.url, "breakouts")).await;
    let report = run.result.expect("the watch succeeds");
    assert_eq!(report.tally.ok(), 3);
    assert_eq!(report.tally.failed().len(), 3);

    let expected = "\
formula        Breakouts (breakouts)
stocks         3
charts ok      3
charts failed  3
charts cached  1
total time     1.23 s
avg per chart  206 ms

failed charts:
NSE:BBB 1W  series_error    resolution not allowed
NSE:ZZZ 1D  unknown_symbol  no such symbol NSE:ZZZ
NSE:ZZZ 1W  unknown_symbol  no such symbol NSE:ZZZ
";
    assert_eq!(run.stdout, expected);
    assert_eq!(server.seen()[0].authorization, None);
}

#[actix_web::test]
async fn symbols_are_sent_normalised_and_comma_separated() {
    let server = spawn_server(|_, _| Reply::Sse(happy_stream()));
    let args = WatchArgs::symbols(
        &server.url,
        vec!["nse:tcs".parse().unwrap(), "INFY.NS".parse().unwrap()],
    );
    run_watch(&args).await.result.expect("the watch succeeds");
    assert_eq!(
        server.seen()[0].query,
        "symbols=NSE%3ATCS%2CNSE%3AINFY&barsFormat=columns"
    );
}

#[actix_web::test]
async fn keep_alive_comments_and_multi_line_data_are_parsed() {
    // The batch's JSON spread over several `data:` lines (joined with \n, still valid JSON),
    // comments everywhere, CRLF line ends, and an event type this client does not know.
    let batch1_payload = json!({"type": "chart-batch", "data": batch1_data()}).to_string();
    let (a, b) = batch1_payload.split_at(batch1_payload.len() / 2);
    let stream = vec![
        text(": hello\n"),
        text("retry: 10\n\n"),
        text(formula_results("m-1").replace('\n', "\r\n")),
        text(format!(
            ": keep-alive\nid: m-2\nevent: chart-batch\ndata: {a}\n:inside\ndata:{b}\n\n"
        )),
        text("id: m-3\nevent: heartbeat-v2\ndata: {\"type\":\"heartbeat-v2\"}\n\n"),
        text(batch2("m-4")),
        text(complete("m-5")),
    ];
    let server = spawn_server(move |_, _| Reply::Sse(stream.clone()));
    let mut args = WatchArgs::formula(&server.url, "breakouts");
    args.json = true;
    let run = run_watch(&args).await;
    let report = run.result.expect("the watch succeeds");
    assert_eq!(report.tally.ok(), 3);
    let lines = json_lines(&run.stdout);
    let names: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "formula-results",
            "chart-batch",
            "heartbeat-v2",
            "chart-batch",
            "complete"
        ]
    );
    assert_eq!(lines[1]["data"], batch1_data());
    assert_eq!(lines[1]["id"], "m-2");
}

#[actix_web::test]
async fn error_statuses_map_to_exit_codes() {
    let server = spawn_server(|n, _| match n {
        0 => Reply::Status(
            422,
            r#"{"error":"invalid resolution \"2D\"","code":"invalid_resolution"}"#.into(),
        ),
        1 => Reply::Status(
            400,
            r#"{"error":"too many symbols","code":"too_many_symbols"}"#.into(),
        ),
        2 => Reply::Status(
            404,
            r#"{"error":"unknown formula nope","code":"unknown_formula"}"#.into(),
        ),
        3 => Reply::Status(
            401,
            r#"{"error":"unauthorised","code":"unauthorized"}"#.into(),
        ),
        _ => Reply::Status(503, "<html>busy</html>".into()),
    });
    let args = WatchArgs::formula(&server.url, "x");
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let run = run_watch(&args).await;
        assert_eq!(run.stdout, "", "nothing on stdout after an error");
        let e = run.result.expect_err("an error status fails the watch");
        outcomes.push((e.exit_code(), e.to_string()));
    }
    assert_eq!(
        outcomes,
        [
            (
                2,
                r#"invalid resolution "2D" (invalid_resolution)"#.to_owned()
            ),
            (2, "too many symbols (too_many_symbols)".to_owned()),
            (1, "unknown formula nope (unknown_formula)".to_owned()),
            (1, "unauthorised (unauthorized)".to_owned()),
            (
                1,
                "the server answered 503 Service Unavailable (http_503)".to_owned()
            ),
        ]
    );
    // An error status is final: no retry.
    assert_eq!(server.seen().len(), 5);
}

#[actix_web::test]
async fn stream_error_fails_with_its_code_and_message() {
    let server = spawn_server(|_, _| {
        Reply::Sse(vec![
            text("retry: 10\n\n"),
            text(formula_results("e-1")),
            text(event(
                "e-2",
                "stream-error",
                json!({"code": "upstream_unavailable", "message": "no feed connection after 3 attempts"}),
            )),
        ])
    });
    let mut args = WatchArgs::formula(&server.url, "breakouts");
    args.json = true;
    let run = run_watch(&args).await;
    let e = run.result.expect_err("stream-error fails the watch");
    assert_eq!(e.exit_code(), 1);
    assert_eq!(
        e.to_string(),
        "stream failed: no feed connection after 3 attempts (upstream_unavailable)"
    );
    // The stream-error event itself is still printed with --json, and nothing is retried.
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.last().unwrap()["event"], "stream-error");
    assert_eq!(server.seen().len(), 1);
}

#[actix_web::test]
async fn dropped_connection_resumes_with_last_event_id() {
    let server = spawn_server(|n, _| match n {
        // Drops abruptly after the first batch.
        0 => Reply::Sse(vec![
            text("retry: 10\n\n"),
            text(formula_results("r-1")),
            text(batch1("r-2")),
            // Half an event: must not be delivered, and its id must not be used.
            text("id: r-3\nevent: chart-batch\ndata: {\"type\":"),
            Part::Abort,
        ]),
        // Ends cleanly, but before `complete`.
        1 => Reply::Sse(vec![text(batch2("r-3"))]),
        _ => Reply::Sse(vec![text(": keep-alive\n\n"), text(complete("r-4"))]),
    });
    let mut args = WatchArgs::formula(&server.url, "breakouts");
    args.json = true;
    args.token = Some("t".into());
    let run = run_watch(&args).await;
    let report = run.result.expect("the watch survives two drops");
    assert_eq!(report.ending, Ending::Complete);
    assert_eq!(report.reconnects, 2);
    assert_eq!(report.tally.ok(), 3);
    assert_eq!(report.tally.failed().len(), 3);

    let ids: Vec<Option<String>> = server.seen().into_iter().map(|s| s.last_event_id).collect();
    assert_eq!(ids, [None, Some("r-2".into()), Some("r-3".into())]);
    assert!(
        server
            .seen()
            .iter()
            .all(|s| s.authorization.as_deref() == Some("Bearer t"))
    );

    let ids: Vec<Value> = json_lines(&run.stdout)
        .into_iter()
        .map(|l| l["id"].clone())
        .collect();
    assert_eq!(
        ids,
        [json!("r-1"), json!("r-2"), json!("r-3"), json!("r-4")]
    );
    assert!(
        run.stderr.contains("reconnecting in 10 ms (attempt 1/3)"),
        "{}",
        run.stderr
    );
}

#[actix_web::test]
async fn resume_answered_204_means_the_stream_had_completed() {
    let server = spawn_server(|n, _| match n {
        0 => Reply::Sse(vec![
            text("retry: 10\n\n"),
            text(formula_results("c-1")),
            text(batch1("c-2")),
            text(batch2("c-3")),
            Part::Abort,
        ]),
        _ => Reply::Status(204, String::new()),
    });
    let run = run_watch(&WatchArgs::formula(&server.url, "breakouts")).await;
    let report = run.result.expect("a 204 resume is a success");
    assert_eq!(report.ending, Ending::AlreadyComplete);
    assert_eq!(server.seen()[1].last_event_id.as_deref(), Some("c-3"));
    // No `complete` figures: the summary is the client's own count.
    assert!(run.stdout.contains("charts ok      3\n"), "{}", run.stdout);
    assert!(run.stdout.contains("charts failed  3\n"));
    assert!(run.stdout.contains("charts cached  -\n"));
    assert!(run.stdout.contains("NSE:ZZZ 1W  unknown_symbol"));
}

#[actix_web::test]
async fn a_stream_started_over_is_not_counted_twice() {
    let server = spawn_server(|n, _| match n {
        0 => Reply::Sse(vec![
            text("retry: 10\n\n"),
            text(formula_results("o-1")),
            text(batch1("o-2")),
            Part::Abort,
        ]),
        // The server could not continue: it starts over, "resumed": false.
        _ => Reply::Sse(vec![
            text(formula_results("n-1")),
            text(batch1("n-2")),
            text(batch2("n-3")),
            text(complete("n-4")),
        ]),
    });
    let run = run_watch(&WatchArgs::formula(&server.url, "breakouts")).await;
    let report = run.result.expect("the watch succeeds");
    assert_eq!(report.tally.charts_received(), 6);
    assert_eq!(report.tally.failed().len(), 3);
    assert!(run.stderr.contains("started over"), "{}", run.stderr);
}

#[actix_web::test]
async fn gives_up_after_three_reconnects_in_a_row() {
    let server = spawn_server(|n, _| match n {
        0 => Reply::Sse(vec![
            text("retry: 10\n\n"),
            text(formula_results("g-1")),
            Part::Abort,
        ]),
        _ => Reply::Sse(vec![text(": keep-alive\n\n"), Part::Abort]),
    });
    let run = run_watch(&WatchArgs::formula(&server.url, "breakouts")).await;
    let e = run.result.expect_err("the watch gives up");
    assert_eq!(e.exit_code(), 1);
    assert!(
        matches!(e, WatchError::ConnectionLost { attempts: 3, .. }),
        "{e}"
    );
    assert_eq!(server.seen().len(), 4, "the first request and 3 reconnects");
    assert!(
        server.seen()[1..]
            .iter()
            .all(|s| s.last_event_id.as_deref() == Some("g-1"))
    );
}

#[actix_web::test]
async fn a_silent_connection_counts_as_dropped() {
    let server = spawn_server(|n, _| match n {
        // Stays open, saying nothing after the first event.
        0 => Reply::Sse(vec![
            text("retry: 10\n\n"),
            text(formula_results("i-1")),
            Part::Stall,
        ]),
        _ => Reply::Sse(vec![
            text(batch1("i-2")),
            text(batch2("i-3")),
            text(complete("i-4")),
        ]),
    });
    let mut args = WatchArgs::formula(&server.url, "breakouts");
    args.idle_timeout = 1;
    let run = run_watch(&args).await;
    run.result.expect("the watch resumes after the stall");
    assert!(
        run.stderr.contains("nothing received for 1 s"),
        "{}",
        run.stderr
    );
    assert_eq!(server.seen()[1].last_event_id.as_deref(), Some("i-1"));
}

#[actix_web::test]
async fn unreachable_server_is_a_clear_error() {
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = run_watch(&WatchArgs::formula(format!("http://127.0.0.1:{port}"), "x")).await;
    let e = run.result.expect_err("nothing listens there");
    assert_eq!(e.exit_code(), 1);
    assert!(matches!(e, WatchError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

// ------------------------------------------------------------------------------------------------
// The binary: flags, exit codes, what goes to stdout and stderr
// ------------------------------------------------------------------------------------------------

#[actix_web::test]
async fn binary_json_run_with_token_from_the_environment() {
    let server = spawn_server(|_, _| Reply::Sse(happy_stream()));
    let out = run_binary(
        &[
            "watch",
            "--formula",
            "breakouts",
            "--server",
            &server.url,
            "--json",
        ],
        &[("CHARTGATE_TOKEN", "from-env")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(json_lines(&stdout).len(), 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch 2/2: 6/6 charts (100%)"));
    assert_eq!(
        server.seen()[0].authorization.as_deref(),
        Some("Bearer from-env")
    );
}

#[actix_web::test]
async fn binary_exit_codes_for_server_errors_and_stream_errors() {
    let server = spawn_server(|n, _| match n {
        0 => Reply::Status(
            400,
            r#"{"error":"invalid symbol \"X\"","code":"invalid_symbol"}"#.into(),
        ),
        1 => Reply::Status(
            404,
            r#"{"error":"unknown formula nope","code":"unknown_formula"}"#.into(),
        ),
        _ => Reply::Sse(vec![
            text(formula_results("x-1")),
            text(event(
                "x-2",
                "stream-error",
                json!({"code": "internal", "message": "boom"}),
            )),
        ]),
    });
    let args = ["watch", "--formula", "nope", "--server", &server.url];
    let cases = [
        (2, "chartgate: invalid symbol \"X\" (invalid_symbol)\n"),
        (1, "chartgate: unknown formula nope (unknown_formula)\n"),
        (1, "stream failed: boom (internal)"),
    ];
    for (code, message) in cases {
        let out = run_binary(&args, &[]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        if code != 1 || !message.contains("stream failed") {
            assert!(out.stdout.is_empty());
        }
    }
}

#[actix_web::test]
async fn binary_usage_errors_exit_2_naming_the_flag() {
    let cases: [(&[&str], &[&str]); 6] = [
        (&["watch"], &["--formula", "--symbols"]),
        (
            &["watch", "--formula", "a", "--symbols", "NSE:TCS"],
            &["--formula", "--symbols"],
        ),
        (&["watch", "--formula", "a", "--bars", "0"], &["--bars"]),
        (
            &["watch", "--symbols", "NSE:TCS", "--resolutions", "2D"],
            &["--resolutions"],
        ),
        (
            &["watch", "--formula", "a", "--server", "localhost:8080"],
            &["--server"],
        ),
        (
            &["watch", "--formula", "a", "--quotes"],
            &["--quotes", "--live"],
        ),
    ];
    for (args, flags) in cases {
        let out = run_binary(args, &[]).await;
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for flag in flags {
            assert!(stderr.contains(flag), "{args:?}: {stderr}");
        }
    }
}

#[actix_web::test]
async fn binary_bad_token_is_a_usage_error_that_does_not_echo_it() {
    let out = run_binary(
        &["watch", "--formula", "a", "--server", "http://127.0.0.1:9"],
        &[("CHARTGATE_TOKEN", "two words")],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--token"), "{stderr}");
    assert!(!stderr.contains("two words"), "{stderr}");
}

#[actix_web::test]
async fn binary_help_lists_the_flags() {
    let out = run_binary(&["watch", "--help"], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--formula",
        "--symbols",
        "--server",
        "--resolutions",
        "--bars",
        "--json",
        "--token",
        "CHARTGATE_TOKEN",
        "--live",
        "--quotes",
        "Ctrl-C",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[actix_web::test]
async fn binary_unreachable_server_exits_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let out = run_binary(&["watch", "--formula", "a", "--server", &server], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("chartgate: no answer from the chartgate server"),
        "{stderr}"
    );
}

// ------------------------------------------------------------------------------------------------
// The SSE parser on its own
// ------------------------------------------------------------------------------------------------

fn ev(event: &str, data: &str, id: Option<&str>) -> SseEvent {
    SseEvent {
        event: event.into(),
        data: data.into(),
        id: id.map(Into::into),
    }
}

fn parse_chunks(chunks: &[&[u8]]) -> (Vec<SseEvent>, SseParser) {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    for chunk in chunks {
        events.extend(parser.feed(chunk).expect("parses"));
    }
    (events, parser)
}

const STREAM: &str = "retry: 2000\n\
id: 1\nevent: formula-results\ndata: {\"a\":\"é→\"}\n\n\
: keep-alive\n\n\
id: 2\nevent: chart-batch\ndata: line one\ndata:line two\ndata:  indented\ndata\n\n\
data: no event name, id sticky\n\n";

fn stream_events() -> Vec<SseEvent> {
    vec![
        ev("formula-results", "{\"a\":\"é→\"}", Some("1")),
        ev("chart-batch", "line one\nline two\n indented\n", Some("2")),
        ev("message", "no event name, id sticky", Some("2")),
    ]
}

#[test]
fn sse_parses_fields_comments_and_multi_line_data() {
    let (events, parser) = parse_chunks(&[STREAM.as_bytes()]);
    assert_eq!(events, stream_events());
    assert_eq!(parser.retry(), Some(Duration::from_millis(2000)));
    assert_eq!(parser.last_event_id(), Some("2"));
}

#[test]
fn sse_split_at_every_boundary_gives_the_same_events() {
    let bytes = STREAM.as_bytes();
    for cut in 0..=bytes.len() {
        let (events, _) = parse_chunks(&[&bytes[..cut], &bytes[cut..]]);
        assert_eq!(events, stream_events(), "cut at {cut}");
    }
    let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(parse_chunks(&one_by_one).0, stream_events());
}

#[test]
fn sse_tolerates_crlf_and_cr_even_split_across_chunks() {
    let crlf = STREAM.replace('\n', "\r\n");
    let cr = STREAM.replace('\n', "\r");
    for stream in [crlf, cr] {
        let bytes = stream.as_bytes();
        for cut in 0..=bytes.len() {
            let (events, _) = parse_chunks(&[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(events, stream_events(), "cut at {cut} of {stream:?}");
        }
    }
}

#[test]
fn sse_skips_a_leading_bom_and_drops_an_unfinished_event() {
    let (events, parser) = parse_chunks(&[b"\xEF\xBB\xBFdata: x\n\nid: 9\ndata: half"]);
    assert_eq!(events, [ev("message", "x", None)]);
    // The id of an event that was never dispatched is not the last event id.
    assert_eq!(parser.last_event_id(), None);
}

#[test]
fn sse_id_rules() {
    // An id with no data still takes effect; an id holding NUL is ignored; an empty id clears.
    let (events, parser) = parse_chunks(&[b"id: 5\n\nid: 6\0\ndata: a\n\n"]);
    assert_eq!(events, [ev("message", "a", Some("5"))]);
    assert_eq!(parser.last_event_id(), Some("5"));
    let (events, parser) = parse_chunks(&[b"id: 5\ndata: a\n\nid\ndata: b\n\n"]);
    assert_eq!(
        events,
        [ev("message", "a", Some("5")), ev("message", "b", Some(""))]
    );
    assert_eq!(parser.last_event_id(), Some(""));
}

#[test]
fn sse_retry_must_be_digits() {
    // A block of `retry:` alone (as servers often send first) sets it and dispatches nothing.
    let (events, parser) = parse_chunks(&[b"retry: 10\n\nretry: 5s\n\nretry:\n\n"]);
    assert_eq!(parser.retry(), Some(Duration::from_millis(10)));
    assert!(events.is_empty());
}

#[test]
fn sse_reconnected_forgets_the_partial_event_but_keeps_the_id() {
    let mut parser = SseParser::new();
    let first = parser
        .feed(b"id: 1\ndata: a\n\nid: 2\nevent: chart-batch\ndata: par")
        .unwrap();
    assert_eq!(first, [ev("message", "a", Some("1"))]);
    parser.reconnected();
    assert_eq!(parser.last_event_id(), Some("1"));
    let second = parser.feed(b"data: b\n\n").unwrap();
    assert_eq!(second, [ev("message", "b", Some("1"))]);
}

#[test]
fn sse_refuses_an_event_over_the_limit() {
    let mut parser = SseParser::with_limit(16);
    assert_eq!(
        parser.feed(b"data: 0123456789\ndata: 0123456789\n"),
        Err(SseError::TooLarge { limit: 16 })
    );
    let mut parser = SseParser::with_limit(16);
    assert_eq!(
        parser.feed(&[b'x'; 17]),
        Err(SseError::TooLarge { limit: 16 })
    );
}

proptest! {
    /// However the bytes are cut into chunks, the same events come out.
    #[test]
    fn sse_any_chunking_gives_the_same_events(
        cuts in proptest::collection::vec(0usize..400, 0..12),
        crlf in any::<bool>(),
    ) {
        let stream = if crlf { STREAM.replace('\n', "\r\n") } else { STREAM.to_owned() };
        let bytes = stream.as_bytes();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for cut in cuts {
            chunks.push(&bytes[start..cut]);
            start = cut;
        }
        chunks.push(&bytes[start..]);
        prop_assert_eq!(parse_chunks(&chunks).0, stream_events());
    }

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn sse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut parser = SseParser::with_limit(128);
        let _ = parser.feed(&bytes);
    }
}

// ------------------------------------------------------------------------------------------------
// --live: running watches, and canned live streams
// ------------------------------------------------------------------------------------------------

/// A `Write` the test reads while the watch is still writing to it.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The longest a condition on a running watch may take to come true before the test fails.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// A watch running on the test's actix system until [`LiveWatch::stop`] (what Ctrl-C does for
/// the binary).
struct LiveWatch {
    out: Sink,
    err: Sink,
    stop: tokio::sync::oneshot::Sender<()>,
    task: actix_web::rt::task::JoinHandle<Result<Report, WatchError>>,
}

impl LiveWatch {
    /// Starts watching with `args`. With `merged`, notices go to the stdout sink too, so their
    /// place among the JSON lines shows.
    fn start(args: WatchArgs, merged: bool) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let out = Sink::default();
        let err = if merged { out.clone() } else { Sink::default() };
        let (mut o, mut e) = (out.clone(), err.clone());
        let task = actix_web::rt::spawn(async move {
            let stop = async {
                let _ = stopped.await;
            };
            watch(&args, &mut o, &mut e, Display::lines(), stop).await
        });
        LiveWatch {
            out,
            err,
            stop,
            task,
        }
    }

    /// Polls until `cond(stdout, stderr)` holds; fails after [`WAIT_LIMIT`], or as soon as the
    /// watch ended (it must not, before it is stopped).
    async fn wait_for(&mut self, what: &str, cond: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let (out, err) = (self.out.text(), self.err.text());
            if cond(&out, &err) {
                return;
            }
            let tail = |s: &str| s[s.len().saturating_sub(3000)..].to_owned();
            if self.task.is_finished() {
                let result = (&mut self.task).await;
                panic!(
                    "the watch ended before {what}: {result:?}\nstdout …{}\nstderr …{}",
                    tail(&out),
                    tail(&err)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not happen:\nstdout …{}\nstderr …{}",
                tail(&out),
                tail(&err)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the watch as Ctrl-C would, and returns what it did.
    async fn stop(self) -> Run {
        let _ = self.stop.send(());
        let result = self.task.await.expect("the watch task ends");
        Run {
            result,
            stdout: self.out.text(),
            stderr: self.err.text(),
        }
    }
}

/// The JSON lines of `out`, skipping notices (when stderr was merged into it).
fn json_events(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// The event names of JSON lines.
fn names(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["event"].as_str().expect("an event name"))
        .collect()
}

/// The lines after the first `complete`.
fn after_complete(lines: &[Value]) -> &[Value] {
    match lines.iter().position(|l| l["event"] == "complete") {
        Some(i) => &lines[i + 1..],
        None => &[],
    }
}

fn live_id(n: u32) -> String {
    format!("00000000000000aa.00000000000000bb.live.{n:x}")
}

fn bar_event(id: &str, symbol: &str, resolution: &str, time: i64, close: f64) -> String {
    event(
        id,
        "bar",
        json!({"symbol": symbol, "resolution": resolution,
               "bar": {"time": time, "open": close, "high": close, "low": close, "close": close,
                       "volume": 7}}),
    )
}

fn quote_event(id: &str, symbol: &str, price: f64, change_percent: f64, time: i64) -> String {
    event(
        id,
        "quote",
        json!({"symbol": symbol, "price": price, "change": 0.1, "changePercent": change_percent,
               "volume": 1000, "bid": price - 0.1, "ask": price + 0.1, "time": time}),
    )
}

/// The history part of a live stream, up to its `complete` (with a live id).
fn live_history() -> Vec<Part> {
    vec![
        text(format!("retry: 10\n{}", formula_results("h-1"))),
        text(batch1("h-2")),
        text(batch2("h-3")),
        text(complete(&live_id(1))),
    ]
}

fn live_args(server: &str, quotes: bool, json: bool) -> WatchArgs {
    let mut args = WatchArgs::formula(server, "breakouts");
    args.live = true;
    args.quotes = quotes;
    args.json = json;
    args
}

#[actix_web::test]
async fn live_lines_show_the_history_then_the_rows_that_change() {
    let server = spawn_server(|_, _| {
        let mut parts = live_history();
        parts.extend([
            // The last bar of the history, moved; a bar of the other resolution (not shown); a
            // new bar (the one before it is now final); a quote.
            text(bar_event(&live_id(2), "NSE:AAA", "1D", 2, 2.4)),
            text(bar_event(&live_id(3), "NSE:AAA", "1W", 2, 99.0)),
            text(bar_event(&live_id(4), "NSE:AAA", "1D", 3, 2.64)),
            text(quote_event(
                &live_id(5),
                "NSE:BBB",
                3521.5,
                0.35,
                1_765_965_600,
            )),
            Part::Stall,
        ]);
        Reply::Sse(parts)
    });
    let mut watch = LiveWatch::start(live_args(&server.url, true, false), false);
    let aaa = "NSE:AAA         2.64   +10.00%  1970-01-01 00:00";
    let bbb = "NSE:BBB      3521.50    +0.35%  2025-12-17 10:00";
    watch
        .wait_for("the live rows", |out, _| {
            out.lines().any(|l| l == aaa) && out.lines().any(|l| l == bbb)
        })
        .await;
    let run = watch.stop().await;
    let report = run.result.expect("a stopped live watch is a success");
    assert_eq!(report.ending, Ending::Stopped);
    assert_eq!(report.reconnects, 0);
    assert_eq!(
        server.seen()[0].query,
        "formula=breakouts&live=true&quotes=true&barsFormat=columns"
    );

    // The summary once, at `complete`, then the header and the rows as they were then: the last
    // two bars of each stock's 1D history (NSE:ZZZ failed, so it shows nothing).
    let (summary, table) = run
        .stdout
        .split_once("\n\n")
        .expect("a blank line after the summary");
    assert!(summary.starts_with("formula        Breakouts (breakouts)\n"));
    let (failed, table) = table.split_once("\n\n").expect("the failed charts");
    assert!(failed.starts_with("failed charts:"), "{failed}");
    let (first, later) = table.split_once("\n\n").unwrap_or((table, ""));
    let first: Vec<&str> = first.lines().collect();
    assert_eq!(
        first[0], "symbol          last     chg %  time (UTC)",
        "{}",
        run.stdout
    );
    // The first group is the whole table in the screen's order; the live bars may already be in
    // it, if they arrived in the same read as `complete`.
    let symbols: Vec<&str> = first[1..].iter().map(|l| &l[..7]).collect();
    assert_eq!(symbols, ["NSE:AAA", "NSE:BBB", "NSE:ZZZ"], "{table}");
    assert_eq!(first[3], "NSE:ZZZ            -         -  -");
    assert!(
        first[2] == "NSE:BBB         2.20   +83.33%  1970-01-01 00:00" || first[2] == bbb,
        "{table}"
    );
    // Every later line is a changed row, in groups split by blank lines; the 1W bar never shows.
    assert!(
        later
            .lines()
            .all(|l| l.is_empty() || l.starts_with("NSE:A") || l.starts_with("NSE:B")),
        "{table}"
    );
    assert!(!table.contains("99.00"), "{table}");
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.starts_with("symbol "))
            .count(),
        1,
        "one header:\n{}",
        run.stdout
    );

    let board = report.live.expect("a live board");
    assert_eq!(board.resolution(), Some("1D"));
    let aaa = board.row("NSE:AAA").expect("a row for NSE:AAA");
    assert_eq!(
        (aaa.last, aaa.previous),
        (
            Some(chartgate::watch::BarPoint {
                time: 3,
                close: 2.64
            }),
            Some(chartgate::watch::BarPoint {
                time: 2,
                close: 2.4
            })
        )
    );
    assert_eq!(board.bars_applied(), 3);
    assert_eq!(board.quotes_applied(), 1);
    assert!(
        run.stderr.contains(
            "live: following 3 charts and quotes; the table shows 1D bars (Ctrl-C to stop)"
        ),
        "{}",
        run.stderr
    );
}

#[actix_web::test]
async fn live_resumes_with_the_last_live_id_and_does_not_start_over() {
    let server = spawn_server(|n, _| match n {
        0 => {
            let mut parts = live_history();
            parts.push(text(bar_event(&live_id(2), "NSE:AAA", "1D", 2, 2.4)));
            parts.push(Part::Abort);
            Reply::Sse(parts)
        }
        // What a resume sends: bars only. This response then ends cleanly, which for a live
        // stream is a drop too.
        1 => Reply::Sse(vec![
            text("retry: 10\n\n"),
            text(bar_event(&live_id(3), "NSE:AAA", "1D", 3, 2.5)),
        ]),
        // A server shutting down ends the stream with an id to resume from.
        2 => Reply::Sse(vec![
            text(bar_event(&live_id(4), "NSE:BBB", "1D", 3, 3.0)),
            text(event(
                &live_id(5),
                "stream-error",
                json!({"code": "shutting_down", "message": "the server is shutting down; reconnect to resume"}),
            )),
        ]),
        _ => Reply::Sse(vec![
            text(bar_event(&live_id(6), "NSE:BBB", "1D", 4, 3.3)),
            Part::Stall,
        ]),
    });
    let mut watch = LiveWatch::start(live_args(&server.url, false, true), false);
    watch
        .wait_for("the bar of the fourth connection", |out, _| {
            out.contains(&live_id(6))
        })
        .await;
    let run = watch.stop().await;
    let report = run.result.expect("the live watch survives three drops");
    assert_eq!(report.reconnects, 3);

    let ids: Vec<Option<String>> = server.seen().into_iter().map(|s| s.last_event_id).collect();
    assert_eq!(
        ids,
        [None, Some(live_id(2)), Some(live_id(3)), Some(live_id(5))]
    );
    assert!(
        server
            .seen()
            .iter()
            .all(|s| s.query.contains("&live=true&"))
    );
    let lines = json_lines(&run.stdout);
    assert_eq!(
        names(&lines),
        [
            "formula-results",
            "chart-batch",
            "chart-batch",
            "complete",
            "bar",
            "bar",
            "bar",
            "stream-error",
            "bar"
        ]
    );
    assert_eq!(lines[6]["data"]["bar"]["close"], 3.0);
    assert!(
        run.stderr.contains(
            "connection lost (the server is shutting down: the server is shutting down; reconnect to resume)"
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("started over"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "reconnected; resuming the live stream after {}",
            live_id(2)
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("connection lost (the server ended the live stream)"),
        "{}",
        run.stderr
    );
    let board = report.live.expect("a live board");
    assert_eq!(board.row("NSE:AAA").unwrap().view().price, Some(2.5));
    let bbb = board.row("NSE:BBB").unwrap();
    assert_eq!(bbb.last.map(|b| (b.time, b.close)), Some((4, 3.3)));
    assert_eq!(bbb.previous.map(|b| (b.time, b.close)), Some((3, 3.0)));
}

#[actix_web::test]
async fn a_history_stream_ended_by_a_shutdown_is_resumed() {
    let server = spawn_server(|n, _| match n {
        0 => Reply::Sse(vec![
            text(format!("retry: 10\n{}", formula_results("d-1"))),
            text(batch1("d-2")),
            text(event(
                "d-2",
                "stream-error",
                json!({"code": "shutting_down", "message": "the server is shutting down; reconnect to resume"}),
            )),
        ]),
        _ => Reply::Sse(vec![text(batch2("d-3")), text(complete("d-4"))]),
    });
    let run = run_watch(&WatchArgs::formula(&server.url, "breakouts")).await;
    let report = run.result.expect("the watch resumes after the shutdown");
    assert_eq!(report.ending, Ending::Complete);
    assert_eq!(report.reconnects, 1);
    assert_eq!(report.tally.charts_received(), 6);
    assert_eq!(server.seen()[1].last_event_id.as_deref(), Some("d-2"));
}

#[actix_web::test]
async fn live_resume_answered_204_is_an_error_not_a_completion() {
    let server = spawn_server(|n, _| match n {
        0 => {
            let mut parts = live_history();
            parts.push(Part::Abort);
            Reply::Sse(parts)
        }
        _ => Reply::Status(204, String::new()),
    });
    let watch = LiveWatch::start(live_args(&server.url, false, true), false);
    let deadline = Instant::now() + WAIT_LIMIT;
    while !watch.task.is_finished() {
        assert!(Instant::now() < deadline, "the watch did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = watch
        .stop()
        .await
        .result
        .expect_err("204 ends a live watch");
    assert_eq!(e.exit_code(), 1);
    assert!(matches!(e, WatchError::Protocol { .. }), "{e}");
    assert!(e.to_string().contains("204"), "{e}");
}

#[actix_web::test]
async fn quotes_without_live_is_a_usage_error() {
    let server = spawn_server(|_, _| Reply::Sse(happy_stream()));
    let mut args = WatchArgs::formula(&server.url, "breakouts");
    args.quotes = true;
    let e = run_watch(&args).await.result.expect_err("refused");
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("--quotes needs --live"), "{e}");
    assert!(server.seen().is_empty(), "nothing was sent");
}

#[actix_web::test]
async fn binary_live_runs_until_ctrl_c_and_exits_0() {
    let server = spawn_server(|_, _| {
        let mut parts = live_history();
        parts.push(text(bar_event(&live_id(2), "NSE:AAA", "1D", 2, 2.4)));
        parts.push(Part::Stall);
        Reply::Sse(parts)
    });
    let url = server.url.clone();
    let (status, stdout, stderr) = actix_web::rt::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader, Read};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_chartgate"))
            .args(["watch", "--formula", "breakouts", "--server", &url])
            .args(["--live", "--json"])
            .env_remove("CHARTGATE_TOKEN")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run chartgate");
        let pid = child.id().to_string();
        // If the bar never comes, the read below would wait forever: end the child instead.
        let watchdog_pid = pid.clone();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if finished.recv_timeout(WAIT_LIMIT).is_err() {
                let _ = Command::new("kill").args(["-KILL", &watchdog_pid]).status();
            }
        });
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut stdout = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).expect("read stdout") == 0 {
                break;
            }
            stdout.push_str(&line);
            if line.starts_with(r#"{"event":"bar""#) {
                // Ctrl-C.
                let kill = Command::new("kill").args(["-INT", &pid]).status();
                assert!(kill.is_ok_and(|s| s.success()), "kill -INT {pid}");
                break;
            }
        }
        reader.read_to_string(&mut stdout).expect("read stdout");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        let status = child.wait().expect("wait for chartgate");
        let _ = done.send(());
        let _ = watchdog.join();
        (status, stdout, stderr)
    })
    .await
    .expect("join");
    assert_eq!(status.code(), Some(0), "{status:?}\n{stderr}");
    assert_eq!(
        names(&json_lines(&stdout)),
        [
            "formula-results",
            "chart-batch",
            "chart-batch",
            "complete",
            "bar"
        ]
    );
    assert!(stderr.contains("Ctrl-C to stop"), "{stderr}");
    assert!(!stderr.contains("chartgate:"), "{stderr}");
}

// ------------------------------------------------------------------------------------------------
// --live against the real service (embedded simulator, fast tick)
// ------------------------------------------------------------------------------------------------

/// The service with its embedded simulator moving bars every 50 ms, asking clients to reconnect
/// after 50 ms.
async fn live_service() -> common::app::TestApp {
    common::app::spawn_app(|s| {
        s.simulator.faults.tick_ms = 50;
        s.stream.retry_ms = 50;
    })
    .await
}

/// `--live` on the formula `breakouts`, daily bars only (20 of them).
fn service_args(server: &str, quotes: bool) -> WatchArgs {
    let mut args = live_args(server, quotes, true);
    args.resolutions = vec!["1D".parse().unwrap()];
    args.bars = Some("20".parse().unwrap());
    args
}

/// The symbols of the stream's `formula-results`.
fn listed_symbols(lines: &[Value]) -> Vec<String> {
    let fr = lines
        .iter()
        .find(|l| l["event"] == "formula-results")
        .expect("formula-results");
    fr["data"]["stocks"]
        .as_array()
        .expect("stocks")
        .iter()
        .map(|s| s["symbol"].as_str().expect("a symbol").to_owned())
        .collect()
}

/// The charts that came with data, from `complete`.
fn successful_charts(lines: &[Value]) -> usize {
    let complete = lines
        .iter()
        .find(|l| l["event"] == "complete")
        .expect("complete");
    complete["data"]["successfulCharts"]
        .as_u64()
        .expect("successfulCharts") as usize
}

/// At least as many `bar` lines after `complete` as two rounds of every chart: more than the one
/// snapshot per chart sent right after `complete`, so the bars really are moving.
fn bars_are_moving(out: &str) -> bool {
    let lines = json_events(out);
    if !lines.iter().any(|l| l["event"] == "complete") {
        return false;
    }
    let bars = after_complete(&lines)
        .iter()
        .filter(|l| l["event"] == "bar")
        .count();
    bars > 2 * successful_charts(&lines)
}

#[actix_web::test]
async fn service_live_json_sends_bars_after_complete() {
    let app = live_service().await;
    let mut watch = LiveWatch::start(service_args(&app.base, false), false);
    watch
        .wait_for("bars moving after complete", |out, _| bars_are_moving(out))
        .await;
    let run = watch.stop().await;
    let report = run.result.expect("a stopped live watch is a success");
    assert_eq!(report.ending, Ending::Stopped);
    assert_eq!(report.reconnects, 0);

    let lines = json_lines(&run.stdout);
    let names = names(&lines);
    let complete_at = names.iter().position(|&n| n == "complete").unwrap();
    assert_eq!(names[0], "formula-results");
    assert!(
        names[1..complete_at].iter().all(|&n| n == "chart-batch"),
        "{names:?}"
    );
    // After `complete` only bars (no quotes were asked for), and a live id on each.
    assert!(
        names[complete_at + 1..].iter().all(|&n| n == "bar"),
        "{names:?}"
    );
    let symbols = listed_symbols(&lines);
    for line in &lines[complete_at..] {
        assert!(
            line["id"].as_str().is_some_and(|id| id.contains(".live.")),
            "{line}"
        );
    }
    for bar in after_complete(&lines) {
        let data = &bar["data"];
        assert!(
            symbols
                .iter()
                .any(|s| s == data["symbol"].as_str().unwrap()),
            "{bar}"
        );
        assert_eq!(data["resolution"], "1D", "{bar}");
        assert!(
            data["bar"]["time"].is_i64() && data["bar"]["close"].is_f64(),
            "{bar}"
        );
    }

    // Every stock with a chart has a row with a price and a bar time.
    let board = report.live.expect("a live board");
    assert_eq!(board.resolution(), Some("1D"));
    let shown = board
        .rows()
        .iter()
        .filter(|r| r.view().price.is_some() && r.view().time.is_some())
        .count();
    assert_eq!(shown, successful_charts(&lines), "{:?}", board.rows());
    assert_eq!(board.quotes_applied(), 0);
    assert!(run.stderr.contains("live: following"), "{}", run.stderr);
}

#[actix_web::test]
async fn service_live_quotes_gives_quote_lines_for_every_stock() {
    let app = live_service().await;
    let mut watch = LiveWatch::start(service_args(&app.base, true), false);
    // Every listed stock quoted, and at least one quoted again (a change).
    watch
        .wait_for("a quote for every stock, and a changed one", |out, _| {
            let lines = json_events(out);
            if !lines.iter().any(|l| l["event"] == "formula-results") {
                return false;
            }
            let quotes: Vec<&str> = lines
                .iter()
                .filter(|l| l["event"] == "quote")
                .filter_map(|l| l["data"]["symbol"].as_str())
                .collect();
            let symbols = listed_symbols(&lines);
            symbols.iter().all(|s| quotes.contains(&s.as_str())) && quotes.len() > symbols.len()
        })
        .await;
    let run = watch.stop().await;
    let report = run.result.expect("a stopped live watch is a success");
    assert_eq!(
        json_lines(&run.stdout)
            .iter()
            .filter(|l| l["event"] == "complete")
            .count(),
        1
    );
    let lines = json_lines(&run.stdout);
    let complete_at = names(&lines).iter().position(|&n| n == "complete").unwrap();
    assert!(
        lines[..complete_at].iter().all(|l| l["event"] != "quote"),
        "quotes only after complete"
    );
    for quote in lines.iter().filter(|l| l["event"] == "quote") {
        assert!(quote["data"]["price"].is_number(), "{quote}");
    }
    let board = report.live.expect("a live board");
    assert!(board.quotes_applied() > 0);
    assert!(
        board
            .rows()
            .iter()
            .all(|r| r.quote.is_some_and(|q| q.price.is_some())),
        "{:?}",
        board.rows()
    );
}

/// A TCP proxy in front of the service that can cut every open connection at once, as a network
/// failure would, and records each connection's request head.
struct CutProxy {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
    open: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CutProxy {
    async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let open: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (heads_in, open_in) = (heads.clone(), open.clone());
        actix_web::rt::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let heads = heads_in.clone();
                let relay = actix_web::rt::spawn(async move {
                    let mut upstream = TcpStream::connect(("127.0.0.1", target_port))
                        .await
                        .expect("connect to the service");
                    // The head first, to record it; then both ways until either side ends.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = client.read(&mut buf).await.expect("read the request");
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                    }
                    heads
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    tokio::io::AsyncWriteExt::write_all(&mut upstream, &head)
                        .await
                        .expect("forward the request");
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
                open_in.lock().unwrap().push(relay.abort_handle());
            }
        });
        CutProxy { url, heads, open }
    }

    /// Drops every open connection, both sides.
    fn cut(&self) {
        for relay in self.open.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// The `Last-Event-ID` header of a request head.
fn last_event_id(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("last-event-id")
            .then(|| value.trim().to_owned())
    })
}

#[actix_web::test]
async fn service_live_resumes_after_a_cut_without_the_history_again() {
    let app = live_service().await;
    let proxy = CutProxy::start(app.port).await;
    // Notices in the same sink as the JSON lines: the reconnect notice marks where the second
    // connection's events begin.
    let mut watch = LiveWatch::start(service_args(&proxy.url, false), true);
    watch
        .wait_for("bars moving after complete", |out, _| bars_are_moving(out))
        .await;
    proxy.cut();
    let marker = "reconnected; resuming the live stream after ";
    watch
        .wait_for("bars moving after the resume", |out, _| {
            out.split_once(marker).is_some_and(|(before, after)| {
                let charts = successful_charts(&json_events(before));
                json_events(after).len() > 2 * charts
            })
        })
        .await;
    let run = watch.stop().await;
    let report = run.result.expect("the live watch survives the cut");
    assert_eq!(report.reconnects, 1);

    let (before, after) = run.stdout.split_once(marker).unwrap();
    let (resumed_after, after) = after.split_once('\n').unwrap();
    let before = json_events(before);
    let after = json_events(after);
    // The id the client resumed from is the last event it had, a live one, and the one the
    // second request carried.
    let last_before = before.last().unwrap()["id"].as_str().unwrap();
    assert_eq!(resumed_after, last_before);
    assert!(last_before.contains(".live."), "{last_before}");
    let heads = proxy.heads();
    assert_eq!(heads.len(), 2, "one reconnect: {heads:?}");
    assert_eq!(last_event_id(&heads[0]), None);
    assert_eq!(last_event_id(&heads[1]).as_deref(), Some(last_before));
    assert!(heads[1].contains("live=true"), "{}", heads[1]);

    // No history the second time: only bars, and one formula-results and complete in all.
    assert!(
        names(&after).iter().all(|&n| n == "bar"),
        "{:?}",
        names(&after)
    );
    assert_eq!(
        names(&before)
            .iter()
            .filter(|&&n| n == "formula-results" || n == "complete")
            .count(),
        2
    );
    assert!(
        !run.stdout.contains("started over"),
        "the server resumed: {}",
        &run.stdout[run.stdout.len().saturating_sub(2000)..]
    );
    assert!(run.stdout.contains("connection lost"));
}
