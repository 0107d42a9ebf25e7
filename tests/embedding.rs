//! chartgate mounted in someone else's tests, the way the README shows: [`Chartgate::start`] with
//! the embedded simulator, its routes on an `App` in actix-web's in-process test service and in
//! `actix-test`'s real-socket server.

use actix_web::{App, test};
use serde_json::Value;

use chartgate::Chartgate;
use chartgate::config::Settings;
use chartgate::watch::sse::{SseEvent, SseParser};
use chartgate_simulator::expected_bars;

/// The events of a whole SSE body.
fn events(body: &[u8]) -> Vec<SseEvent> {
    SseParser::new().feed(body).expect("a valid SSE body")
}

fn data(event: &SseEvent) -> Value {
    serde_json::from_str(&event.data).expect("event data is JSON")
}

#[actix_web::test]
async fn in_the_test_service_the_api_answers_from_the_embedded_simulator() {
    let chartgate = Chartgate::start(Settings::default())
        .await
        .expect("start chartgate");
    let app = test::init_service(App::new().configure(chartgate.routes())).await;

    let request = test::TestRequest::get().uri("/api/formulas").to_request();
    let formulas: Value = test::call_and_read_body_json(&app, request).await;
    let ids: Vec<&str> = formulas["formulas"]
        .as_array()
        .expect("a list of formulas")
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert_eq!(ids, ["breakouts", "momentum", "largecaps"]);

    let request = test::TestRequest::get()
        .uri("/api/chart-data?symbol=NSE:TCS&resolution=1D&bars=12")
        .to_request();
    let chart: Value = test::call_and_read_body_json(&app, request).await;
    let closes: Vec<f64> = chart["bars"]
        .as_array()
        .expect("bars")
        .iter()
        .filter_map(|b| b["close"].as_f64())
        .collect();
    let expected: Vec<f64> = expected_bars("NSE:TCS", "1D", 12)
        .iter()
        .map(|b| b.close)
        .collect();
    assert_eq!(closes, expected);

    // The stream, read whole: it ends after `complete`.
    let request = test::TestRequest::get()
        .uri("/api/formula-results-with-charts?formula=breakouts&resolutions=1D&bars=5")
        .to_request();
    let response = test::call_service(&app, request).await;
    assert_eq!(response.status(), 200);
    let body = test::read_body(response).await;
    let events = events(&body);
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"formula-results"));
    assert_eq!(names.last(), Some(&"complete"));
    let complete = data(events.last().expect("complete"));
    assert_eq!(complete["data"]["totalCharts"], 20);
    assert_eq!(complete["data"]["successfulCharts"], 20);
    chartgate.stop().await;
}

#[actix_web::test]
async fn on_a_real_socket_a_stream_and_the_stats_are_served() {
    let chartgate = Chartgate::start(Settings::default())
        .await
        .expect("start chartgate");
    let routes = chartgate.routes();
    let server = actix_test::start(move || App::new().configure(routes.clone()));

    let mut response = server
        .get("/api/formula-results-with-charts?symbols=NSE:TCS,NSE:INFY&resolutions=1D,1W&bars=3")
        .send()
        .await
        .expect("open the stream");
    assert_eq!(response.status(), 200);
    let body = response.body().limit(16 << 20).await.expect("the stream");
    let events = events(&body);
    let batches: Vec<Value> = events
        .iter()
        .filter(|e| e.event == "chart-batch")
        .map(data)
        .collect();
    let charts: usize = batches
        .iter()
        .map(|b| {
            b["data"]["chartData"].as_object().map_or(0, |symbols| {
                symbols
                    .values()
                    .map(|r| r.as_object().map_or(0, |r| r.len()))
                    .sum()
            })
        })
        .sum();
    assert_eq!(charts, 4, "two symbols at two resolutions");

    let mut stats = server
        .get("/api/connections/stats")
        .send()
        .await
        .expect("stats");
    let stats: Value = stats.json().await.expect("stats JSON");
    assert!(
        stats["pool"]["servedTotal"].as_u64() >= Some(4),
        "the pool fetched the charts: {stats}"
    );
    chartgate.stop().await;
}

/// `value` of `series` in a `/metrics` text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

#[actix_web::test]
async fn two_chartgates_in_one_process_report_only_their_own_metrics() {
    let (a, b) = (
        Chartgate::start(Settings::default())
            .await
            .expect("start a"),
        Chartgate::start(Settings::default())
            .await
            .expect("start b"),
    );
    let app_a = test::init_service(App::new().configure(a.routes())).await;
    let app_b = test::init_service(App::new().configure(b.routes())).await;
    let request = test::TestRequest::get()
        .uri("/api/chart-data?symbol=NSE:TCS&resolution=1D&bars=5")
        .to_request();
    assert_eq!(test::call_service(&app_a, request).await.status(), 200);

    let scrape = |body: actix_web::web::Bytes| String::from_utf8(body.to_vec()).expect("UTF-8");
    let request = || test::TestRequest::get().uri("/metrics").to_request();
    let text_a = scrape(test::call_and_read_body(&app_a, request()).await);
    let text_b = scrape(test::call_and_read_body(&app_b, request()).await);
    for (text, want) in [(&text_a, 1.0), (&text_b, 0.0)] {
        for series in [
            "chartgate_cache_misses_total ",
            r#"chartgate_charts_fetched_total{outcome="ok"} "#,
        ] {
            assert_eq!(metric(text, series), Some(want), "{series}in {text}");
        }
    }
    a.stop().await;
    b.stop().await;
}
