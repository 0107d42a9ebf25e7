//! `chartgate watch` against an in-process actix-web server that serves canned SSE in SPEC 3.1's
//! exact format: the happy path, `--json` output, error statuses and exit codes, `stream-error`,
//! a dropped connection resumed with `Last-Event-ID`, a `204` resume, usage errors through the
//! real binary, and the SSE parser on its own (every chunk boundary, CRLF, properties).

use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use chartgate::watch::sse::{SseError, SseEvent, SseParser};
use chartgate::watch::{Ending, ProgressMode, Report, WatchArgs, WatchError, watch};
use futures_util::StreamExt;
use proptest::prelude::*;
use serde_json::{Value, json};

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
    let result = watch(args, &mut out, &mut err, ProgressMode::Lines).await;
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
    let cases: [(&[&str], &[&str]); 5] = [
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
