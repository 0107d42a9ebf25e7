//! Live streams (`live=true`, SPEC 3.5) end to end: the real server over loopback sockets, against
//! a simulator the test owns, whose live series tick every few tens of milliseconds and whose
//! simulated clock runs hundreds of times faster than real time (`time_scale`), so 1-minute bars
//! begin every 100 ms or so and a test sees many bars become final.
//!
//! The charts a follower ends up with are checked against two references: the service's own
//! chart (`/api/chart-data` with the same bars, which it serves from the live state) and the
//! simulator's history, asked for on a WebSocket of the test's own. Both only stand still once
//! the simulator's clock is stopped (a tick of an hour, [`settle`]), so every comparison comes
//! after that, waiting (with a deadline) for the last updates to arrive.
//!
//! Nothing asserts how long something took; waits poll a state with a deadline, so a bug fails
//! instead of hanging. Time is never paused: the linger timer is exercised with a linger of a
//! second or two, since with paused time the runtime would jump its clock whenever it waits for
//! a socket.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;

use chartgate::config::{Secret, Settings};
use chartgate_protocol::Bar;
use chartgate_simulator::{Faults, SimStats};

use common::app::{TestApp, response_json, spawn_app_remote, spawn_app_remote_on};
use common::feed::{keep_live, sim_history};
use common::live::{ChartId, LIVE_WAIT, LiveStream, bars_of, live_stats, raw_get, wait_until};

const STREAM: &str = "/api/formula-results-with-charts";

/// A tick that stops the simulator's live series for the rest of a test: its grid's next instant
/// is an hour away.
const FROZEN_TICK_MS: u64 = 3_600_000;

/// How long a reader waits for more events before it takes the stream as quiet.
const QUIET: Duration = Duration::from_millis(300);

// ------------------------------------------------------------------------------------------------
// Set-up and checks shared by the tests

/// Panics raised outside the test code (in the service, the simulator, or a library), counted by
/// a hook installed once for the whole binary.
static SERVICE_PANICS: AtomicUsize = AtomicUsize::new(0);

fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .is_some_and(|l| l.file().starts_with("tests/"));
            if !in_tests {
                SERVICE_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

fn assert_no_service_panic() {
    assert_eq!(
        SERVICE_PANICS.load(Ordering::SeqCst),
        0,
        "something outside the tests panicked (see the output above)"
    );
}

/// A service against its own simulator, whose live series tick every `tick_ms` with a simulated
/// clock `time_scale` times real time.
async fn live_app(tick_ms: u64, time_scale: u64, configure: impl FnOnce(&mut Settings)) -> TestApp {
    watch_panics();
    spawn_app_remote(|s| {
        s.simulator.faults.tick_ms = tick_ms;
        s.simulator.faults.time_scale = time_scale;
        configure(s);
    })
    .await
}

fn stream_path(query: &str) -> String {
    format!("{STREAM}?{query}")
}

/// The charts of `symbols` x `resolutions`, in stream order.
fn charts(symbols: &[&str], resolutions: &[&str]) -> Vec<ChartId> {
    symbols
        .iter()
        .flat_map(|s| resolutions.iter().map(|r| (s.to_string(), r.to_string())))
        .collect()
}

/// The charts with resolution `res`.
fn with_res(charts: &[ChartId], res: &str) -> Vec<ChartId> {
    charts.iter().filter(|c| c.1 == res).cloned().collect()
}

/// The simulator's counters.
fn sim(app: &TestApp) -> SimStats {
    app.sim.owned().stats()
}

/// Sets the simulator's faults, keeping its pace.
fn set_faults(app: &TestApp, faults: Faults) {
    let now = app.sim.owned().faults();
    app.sim.owned().set_faults(Faults {
        tick_ms: now.tick_ms,
        time_scale: now.time_scale,
        ..faults
    });
}

/// `POST` of a JSON body to the stream route, and the answer as JSON.
async fn post_body(app: &TestApp, body: impl Into<String>) -> (u16, Value) {
    let resp = app
        .post(STREAM)
        .insert_header(("Content-Type", "application/json"))
        .send_body(body.into())
        .await
        .expect("POST the stream");
    response_json(resp).await
}

/// The service's own chart, as `/api/chart-data` gives it.
async fn service_chart(app: &TestApp, id: &ChartId, bars: usize) -> Vec<Bar> {
    let (status, body) = app
        .get_json(&format!(
            "/api/chart-data?symbol={}&resolution={}&bars={bars}",
            id.0, id.1
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    bars_of(&body["bars"])
}

/// The simulator's history of a chart, asked for directly.
async fn feed_chart(app: &TestApp, id: &ChartId, bars: usize) -> Vec<Bar> {
    sim_history(
        &app.settings.upstream.url,
        &app.settings.upstream.origin,
        &id.0,
        &id.1,
        bars as u32,
    )
    .await
}

/// Stops the simulator's clock (and clears every other fault), then reads every stream until its
/// newest `bars` bars of each chart equal both the service's chart and the simulator's history,
/// failing after a deadline with what differed. Returns the settled charts.
async fn settle(
    app: &TestApp,
    streams: &mut [&mut LiveStream],
    charts: &[ChartId],
    bars: usize,
) -> BTreeMap<ChartId, Vec<Bar>> {
    let time_scale = app.sim.owned().faults().time_scale;
    app.sim.owned().set_faults(Faults {
        tick_ms: FROZEN_TICK_MS,
        time_scale,
        ..Faults::default()
    });
    let deadline = tokio::time::Instant::now() + LIVE_WAIT;
    loop {
        for stream in streams.iter_mut() {
            stream.read_while_busy(QUIET).await;
        }
        let mut settled = BTreeMap::new();
        let mut differs = Vec::new();
        for id in charts {
            let service = service_chart(app, id, bars).await;
            let feed = feed_chart(app, id, bars).await;
            if service != feed {
                differs.push(format!("{id:?}: the service's chart is not the feed's"));
            }
            for (n, stream) in streams.iter().enumerate() {
                if stream.view.newest(id, bars) != feed.as_slice() {
                    differs.push(format!("{id:?}: follower {n}'s chart is not the feed's"));
                }
            }
            settled.insert(id.clone(), feed);
        }
        if differs.is_empty() {
            return settled;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the charts never agreed: {differs:#?}"
        );
    }
}

/// What no live stream ever shows: a bar of a chart it did not deliver, a live event without a
/// live id.
fn assert_well_formed(stream: &LiveStream) {
    assert!(
        stream.view.strays.is_empty(),
        "bars for charts not delivered: {:#?}",
        stream.view.strays
    );
    for event in &stream.events {
        if matches!(event.event.as_str(), "bar" | "quote") {
            let id = event.id.as_deref().expect("live events have an id");
            assert_live_id(id);
        }
    }
}

/// A stream that followed from its history on sent no bar older than its chart's last (a resumed
/// one may: it sends every bar changed since its id, which the client may have had already).
fn assert_in_order(stream: &LiveStream) {
    assert!(
        stream.view.out_of_order.is_empty(),
        "bars older than the chart's last: {:#?}",
        stream.view.out_of_order
    );
}

/// `<16 hex>.<16 hex>.live.<hex ms>`, the milliseconds within the last hour.
fn assert_live_id(id: &str) {
    let parts: Vec<&str> = id.split('.').collect();
    assert!(
        matches!(parts.as_slice(), [a, b, "live", ms]
            if a.len() == 16 && b.len() == 16 && u64::from_str_radix(ms, 16).is_ok()),
        "a live id: {id}"
    );
    let ms = i64::from_str_radix(parts[3], 16).expect("hex ms");
    let age = chartgate_protocol::clock::unix_ms() - ms;
    assert!((0..3_600_000).contains(&age), "{id} is {age} ms old");
}

/// Opens a live stream and reads its history.
async fn open_live(app: &TestApp, query: &str) -> LiveStream {
    let mut stream = LiveStream::open(app.get(&stream_path(query))).await;
    stream.read_history().await;
    stream
}

/// Reads until every chart of `ids` has had `n` more bars appended than `before` said.
async fn read_appends(stream: &mut LiveStream, ids: &[ChartId], n: usize, what: &str) {
    let before: BTreeMap<ChartId, usize> = ids
        .iter()
        .map(|id| {
            (
                id.clone(),
                stream.view.appended.get(id).copied().unwrap_or(0),
            )
        })
        .collect();
    stream
        .read_until(what, |s| {
            ids.iter()
                .all(|id| s.view.appended.get(id).copied().unwrap_or(0) >= before[id] + n)
        })
        .await;
}

// ------------------------------------------------------------------------------------------------
// 1. Followers' charts

/// Followers of the same charts (one joining once bars have moved on, its history then coming
/// from the live state; one asking for more bars than the live series holds), volumeless and
/// not, 1- and 5-minute: after many bars have begun, each
/// follower's chart (history plus bar events applied as SPEC 3.5 says) equals the service's
/// chart-data and the simulator's own history; every bar that became final was sent in its final
/// state before the bar after it; no event is older than its chart's last bar, and volumeless bars
/// carry no volume.
#[actix_web::test]
async fn followers_charts_equal_the_services_and_the_feeds() {
    // A new 1-minute bar every 100 ms (two 50 ms ticks of 30 simulated seconds).
    let app = live_app(50, 600, |_| {}).await;
    let ids = charts(&["NSE:TCS", "NSE:NIFTY"], &["1", "5"]);
    let minutes = with_res(&ids, "1");
    let query = "symbols=NSE:TCS,NSE:NIFTY&resolutions=1,5&bars=120&live=true";

    let mut first = open_live(&app, query).await;
    let names = first.names();
    assert_eq!(names[0], "formula-results", "{names:?}");
    assert!(names.contains(&"chart-batch"), "{names:?}");
    assert_eq!(first.view.charts.len(), 4, "every chart delivered");
    let complete = first.events.last().expect("complete");
    assert_live_id(complete.id.as_deref().expect("complete has an id"));
    read_appends(&mut first, &minutes, 2, "two new 1-minute bars").await;

    let mut second = open_live(&app, query).await;
    // A third asks for more bars than the live series holds: its history is fetched.
    let longer = query.replace("bars=120", "bars=400");
    let mut third = open_live(&app, &longer).await;
    read_appends(&mut third, &minutes, 4, "four new bars for the third").await;
    read_appends(&mut second, &minutes, 4, "four new bars for the second").await;
    read_appends(&mut first, &minutes, 4, "four more new bars").await;

    let settled = settle(&app, &mut [&mut first, &mut second], &ids, 120).await;
    let settled_longer = settle(&app, &mut [&mut third], &ids, 400).await;
    for id in &ids {
        assert!(settled_longer[id].ends_with(&settled[id]), "{id:?}");
    }
    for stream in [&first, &second, &third] {
        assert_well_formed(stream);
        assert_in_order(stream);
        for id in &minutes {
            let checked = stream.view.assert_finals_were_final(id, &settled[id]);
            assert!(checked >= 4, "{id:?}: {checked} final bars checked");
        }
        for id in &ids {
            let no_volume = stream.view.charts[id].iter().all(|b| b.volume.is_none());
            assert_eq!(no_volume, id.0 == "NSE:NIFTY", "{id:?} volume");
        }
    }
    assert_no_service_panic();
}

// ------------------------------------------------------------------------------------------------
// 2. Sharing

/// Twenty streams of the same six charts share one upstream series per chart: the simulator
/// serves six live series, the service counts six series and twenty followers, every follower
/// gets the same charts, and the history fetches were shared too.
#[actix_web::test]
async fn many_followers_share_one_upstream_series_per_chart() {
    let app = live_app(50, 60, |_| {}).await;
    let ids = charts(&["NSE:TCS", "NSE:INFY", "NSE:SBIN"], &["1D", "60"]);
    let query = "symbols=NSE:TCS,NSE:INFY,NSE:SBIN&resolutions=1D,60&bars=40&live=true";
    let mut streams: Vec<LiveStream> =
        join_all((0..20).map(|_| LiveStream::open(app.get(&stream_path(query))))).await;
    for stream in &mut streams {
        stream.read_history().await;
        stream
            .read_until("a bar event for every chart", |s| {
                s.view.min_bar_events(&ids) >= 1
            })
            .await;
    }
    let (sim_series, live) = wait_until(
        Duration::from_secs(10),
        "one upstream series per chart, twenty followers",
        || async {
            let live = live_stats(&app.conn_stats().await);
            let sim_series = sim(&app).live_series;
            (
                sim_series == 6 && live.0 == 6 && live.1 == 20,
                (sim_series, live),
            )
        },
    )
    .await;
    assert_eq!((sim_series, live.0, live.1), (6, 6, 20));
    let served = sim(&app).series_served;
    assert!(
        served <= 12,
        "six live series and at most one history fetch per chart, not {served}"
    );

    let mut refs: Vec<&mut LiveStream> = streams.iter_mut().collect();
    settle(&app, &mut refs, &ids, 40).await;
    for stream in &streams {
        assert_well_formed(stream);
        assert_in_order(stream);
    }
    assert_no_service_panic();
}

// ------------------------------------------------------------------------------------------------
// 3. Linger

/// With `live.linger_secs` = 2: when the last follower leaves, the series (and the quotes) stay
/// subscribed; a follower that comes back meanwhile takes them up again with no new upstream
/// series or history fetch; once it leaves too, they end upstream (liveSeries and quoteSymbols
/// back to 0, the service's live.series and quotes 0).
#[actix_web::test]
async fn a_series_lingers_after_its_last_follower_then_ends() {
    let app = live_app(50, 60, |s| s.live.linger_secs = 2).await;
    let ids = charts(&["NSE:TCS", "NSE:INFY"], &["1D"]);
    let query = "symbols=NSE:TCS,NSE:INFY&resolutions=1D&bars=30&live=true&quotes=true";
    let live_counts = || async {
        let stats = app.conn_stats().await;
        let sim = sim(&app);
        (
            stats["live"]["series"].as_u64().unwrap(),
            stats["live"]["quotes"].as_u64().unwrap(),
            stats["live"]["followers"].as_u64().unwrap(),
            sim.live_series,
            sim.quote_symbols,
        )
    };

    let mut first = open_live(&app, query).await;
    first
        .read_until("a bar per chart and a quote per stock", |s| {
            s.view.min_bar_events(&ids) >= 1 && s.view.quotes.len() == 2
        })
        .await;
    let served = sim(&app).series_served;
    drop(first);
    wait_until(LIVE_WAIT, "the follower gone", || async {
        let c = live_counts().await;
        (c.2 == 0, c)
    })
    .await;
    assert_eq!(
        live_counts().await,
        (2, 2, 0, 2, 2),
        "series and quotes linger with no follower"
    );

    let mut second = open_live(&app, query).await;
    second
        .read_until("a bar per chart and a quote per stock", |s| {
            s.view.min_bar_events(&ids) >= 1 && s.view.quotes.len() == 2
        })
        .await;
    assert_eq!(
        sim(&app).series_served,
        served,
        "the lingering series were taken up again: no new series, no history fetch"
    );
    let complete = second
        .events
        .iter()
        .find(|e| e.event == "complete")
        .unwrap();
    let complete: Value = serde_json::from_str(&complete.data).unwrap();
    assert_eq!(complete["data"]["cachedCharts"], 2, "{complete}");
    assert_eq!(live_counts().await.0, 2);
    assert_well_formed(&second);
    assert_in_order(&second);

    drop(second);
    wait_until(LIVE_WAIT, "the follower gone", || async {
        let c = live_counts().await;
        (c.2 == 0, c)
    })
    .await;
    assert_eq!(live_counts().await.0, 2, "lingering again");
    wait_until(
        Duration::from_secs(10),
        "series and quotes ended upstream after the linger",
        || async {
            let c = live_counts().await;
            (c == (0, 0, 0, 0, 0), c)
        },
    )
    .await;
    assert_no_service_panic();
}

/// Once a series has ended, `/api/chart-data` still agrees with what its followers saw, for every
/// bar count: the one it was subscribed with, and ones cached before it went live and not asked
/// for while it was (more bars than it held, and fewer).
#[actix_web::test]
async fn after_a_series_ends_every_cached_bar_count_has_its_live_bars() {
    // No linger: the series ends as its follower leaves (lingering is tested above).
    let app = live_app(50, 600, |s| s.live.linger_secs = 0).await;
    let tcs = ("NSE:TCS".to_string(), "1".to_string());
    for bars in [500, 50] {
        service_chart(&app, &tcs, bars).await;
    }
    let mut stream = open_live(&app, "symbols=NSE:TCS&resolutions=1&bars=100&live=true").await;
    read_appends(&mut stream, std::slice::from_ref(&tcs), 3, "new bars").await;
    drop(stream);
    wait_until(LIVE_WAIT, "the series ended", || async {
        let live = live_stats(&app.conn_stats().await);
        (live.0 == 0 && sim(&app).live_series == 0, live)
    })
    .await;
    // Nobody follows the series upstream now: the feed's history stands still.
    for bars in [100, 500, 50] {
        let service = service_chart(&app, &tcs, bars).await;
        let feed = feed_chart(&app, &tcs, bars).await;
        assert_eq!(
            service.last(),
            feed.last(),
            "chart-data with {bars} bars after the series ended"
        );
        assert_eq!(
            service, feed,
            "chart-data with {bars} bars after the series ended"
        );
    }
    assert_no_service_panic();
}

// ------------------------------------------------------------------------------------------------
// 4. Drops, stalls, token rotation

const GAP_QUERY: &str = "symbols=NSE:TCS,NSE:INFY&resolutions=1&bars=300&live=true";

/// The two 1-minute charts of [`GAP_QUERY`].
fn gap_charts() -> Vec<ChartId> {
    charts(&["NSE:TCS", "NSE:INFY"], &["1"])
}

/// After the disruption: bars went on arriving (three more new bars per chart), and once the
/// feed stands still the follower's chart is the service's and the feed's, every final bar
/// having been final when the next came; nothing older than a chart's last bar was sent.
async fn assert_no_gap(app: &TestApp, stream: &mut LiveStream) {
    let ids = gap_charts();
    read_appends(stream, &ids, 3, "new bars after the disruption").await;
    let settled = settle(app, &mut [stream], &ids, 300).await;
    assert_well_formed(stream);
    assert_in_order(stream);
    for id in &ids {
        assert!(stream.view.assert_finals_were_final(id, &settled[id]) >= 6);
        let chart = &settled[id];
        for w in chart.windows(2).rev().take(30) {
            assert_eq!(w[1].time - w[0].time, 60, "{id:?}: no bar missing");
        }
    }
    assert_no_service_panic();
}

/// Follows [`GAP_QUERY`] until the connection carrying it has sent `messages` messages or more
/// (the simulator writes one per tick to it), and returns the stream.
async fn follow_a_while(app: &TestApp, messages: u64) -> LiveStream {
    let ids = gap_charts();
    let mut stream = open_live(app, GAP_QUERY).await;
    stream
        .read_until("the connection has carried the series a while", |s| {
            sim(app).updates_sent / 2 >= messages && s.view.min_appended(&ids) >= 2
        })
        .await;
    stream
}

/// Waits until the simulator has accepted a connection beyond `total`.
async fn wait_new_connection(app: &TestApp, total: u64, what: &str) {
    wait_until(LIVE_WAIT, what, || async {
        let s = sim(app);
        (s.connections_total > total, s)
    })
    .await;
}

/// The one connection carrying the live series is dropped (`drop_after_messages` past what it has
/// sent) and its replacement takes a while to connect, while another subscriber keeps the series
/// moving upstream: the series move to the replacement, the bars that began meanwhile reach the
/// follower, and it sees no gap.
#[actix_web::test]
async fn a_dropped_connection_leaves_no_gap() {
    let app = live_app(25, 600, |s| s.pool.max_connections = 1).await;
    let mut stream = follow_a_while(&app, 100).await;
    let _keeper = keep_live(
        &app.settings.upstream.url,
        &app.settings.upstream.origin,
        &gap_charts(),
    )
    .await;
    let total = sim(&app).connections_total;
    // chartgate's connection has sent over 100 messages and drops at its next; the keeper's, a
    // few, and would need 60.
    set_faults(
        &app,
        Faults {
            drop_after_messages: 60,
            connect_latency_ms: 300,
            ..Faults::default()
        },
    );
    wait_new_connection(&app, total, "the dropped connection replaced").await;
    set_faults(&app, Faults::default());
    assert_no_gap(&app, &mut stream).await;
}

/// The one connection carrying the live series stops sending (`stall_after_messages`), goes
/// stale after `manager.stale_after_secs` and is replaced: while it was silent the feed moved
/// on (its series were still followed upstream), and the bars that changed meanwhile reach the
/// follower once the series are back, so it sees no gap.
#[actix_web::test]
async fn a_stale_connection_leaves_no_gap() {
    let app = live_app(25, 600, |s| {
        s.pool.max_connections = 1;
        s.manager.stale_after_secs = 2;
        s.manager.health_check_interval_secs = 1;
        s.simulator.heartbeat_secs = 1;
    })
    .await;
    let mut stream = follow_a_while(&app, 100).await;
    let total = sim(&app).connections_total;
    set_faults(
        &app,
        Faults {
            stall_after_messages: 50,
            ..Faults::default()
        },
    );
    let appended_before = stream.view.appended.clone();
    wait_new_connection(&app, total, "the stale connection replaced").await;
    set_faults(&app, Faults::default());
    assert_no_gap(&app, &mut stream).await;
    // The silence lasted seconds of 10 new bars each: they came after it, all of them.
    for id in gap_charts() {
        assert!(
            stream.view.appended[&id] >= appended_before[&id] + 10,
            "{id:?}"
        );
    }
}

/// Tokens live two seconds, so the pool rotates them (session cookies configured) while the
/// series are live (and kept moving upstream by another subscriber): connections move to the new
/// token one by one and the follower sees no gap.
#[actix_web::test]
async fn token_rotation_leaves_no_gap() {
    let app = live_app(25, 600, |s| {
        s.simulator.faults.token_ttl_secs = 2;
        s.upstream.session_id = Secret::new("sid-live");
        s.upstream.session_sign = Secret::new("sign-live");
        s.pool.max_connections = 2;
    })
    .await;
    let mut stream = open_live(&app, GAP_QUERY).await;
    let ids = gap_charts();
    let _keeper = keep_live(
        &app.settings.upstream.url,
        &app.settings.upstream.origin,
        &ids,
    )
    .await;
    let start = sim(&app);
    let conn_ids = |stats: &Value| -> Vec<u64> {
        stats["pool"]["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .map(|c| c["id"].as_u64().expect("an id"))
            .collect()
    };
    let first_ids = conn_ids(&app.conn_stats().await);
    let newest_first = first_ids.iter().copied().max().expect("a connection");
    stream
        .read_until("two rotations while live", |s| {
            let now = sim(&app);
            now.tokens_issued >= start.tokens_issued + 2 && s.view.min_appended(&ids) >= 2
        })
        .await;
    // Every connection carrying the series when the stream began has been replaced.
    wait_until(
        LIVE_WAIT,
        "the first token's connections replaced",
        || async {
            let ids = conn_ids(&app.conn_stats().await);
            (
                !ids.is_empty() && ids.iter().all(|id| *id > newest_first),
                ids,
            )
        },
    )
    .await;
    assert_no_gap(&app, &mut stream).await;
}

// ------------------------------------------------------------------------------------------------
// 5. Slow readers

/// A reader that stops reading (its socket open, the service's send buffer small) while twenty
/// charts tick every 10 ms is conflated: `live.conflated` grows by thousands while nothing is
/// written to it. When it reads again it gets the newest state of each chart: what it reads is
/// what was in flight (actix's write buffer and the socket buffers) plus about one event per
/// chart, not a backlog of the updates that went by, and its charts then equal the service's and
/// the feed's.
#[actix_web::test]
async fn a_reader_that_stops_reading_is_conflated_and_catches_up_with_the_newest() {
    watch_panics();
    // The service writes to this reader through a 4 KiB send buffer (accepted sockets inherit it
    // from the listener), the reader takes 4 KiB at a time: what stays in flight is bounded by
    // those and actix's 32 KiB write buffer.
    const BUFFER: u32 = 4096;
    let app = spawn_app_remote_on(small_send_buffer_listener(BUFFER), |s| {
        s.simulator.faults.tick_ms = 10;
        s.simulator.faults.time_scale = 1;
    })
    .await;
    let symbols = [
        "NSE:TCS",
        "NSE:INFY",
        "NSE:SBIN",
        "NSE:ITC",
        "NSE:RELIANCE",
        "NSE:HDFCBANK",
        "NSE:WIPRO",
        "NSE:LT",
        "NSE:AXISBANK",
        "NSE:MARUTI",
    ];
    let ids = charts(&symbols, &["1D", "1W"]);
    let query = format!(
        "symbols={}&resolutions=1D,1W&bars=20&live=true",
        symbols.join(",")
    );
    let addr = format!("127.0.0.1:{}", app.port).parse().unwrap();
    let mut reader = raw_get(addr, &stream_path(&query), BUFFER).await;
    reader.read_history().await;
    reader
        .read_until("two bar events per chart", |s| {
            s.view.min_bar_events(&ids) >= 2
        })
        .await;

    // The reader stops reading.
    let conflated = live_stats(&app.conn_stats().await).2;
    let updates = sim(&app).updates_sent;
    wait_until(LIVE_WAIT, "thousands of updates conflated", || async {
        let now = live_stats(&app.conn_stats().await).2;
        (now >= conflated + 2000, now)
    })
    .await;
    let missed = sim(&app).updates_sent - updates;

    // It reads again, once the feed stands still so that "the newest state" stays put.
    let time_scale = app.sim.owned().faults().time_scale;
    app.sim.owned().set_faults(Faults {
        tick_ms: FROZEN_TICK_MS,
        time_scale,
        ..Faults::default()
    });
    let bytes = reader.bytes;
    let caught_up = reader.read_while_busy(Duration::from_millis(500)).await;
    let caught_up_bytes = reader.bytes - bytes;
    // What was in flight: actix's 32 KiB write buffer (and the chunk that crossed it) and the two
    // socket buffers (the kernel doubles each); then the newest state, an event per chart (each
    // under 400 bytes).
    let newest = ids.len() * 400;
    let bound = 32 * 1024 + newest + 4 * BUFFER as usize + newest;
    assert!(
        caught_up_bytes <= bound,
        "{caught_up} events ({caught_up_bytes} bytes) to catch up: more than was in flight and \
         the newest state"
    );
    assert!(
        5 * caught_up as u64 <= missed,
        "{caught_up} events to catch up, for {missed} updates missed"
    );
    settle(&app, &mut [&mut reader], &ids, 20).await;
    assert_well_formed(&reader);
    assert_in_order(&reader);
    assert_no_service_panic();
}

/// A listener whose accepted sockets have a send buffer of `bytes` (they inherit it), so the
/// service feels a reader that stops reading at once.
fn small_send_buffer_listener(bytes: u32) -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(bytes).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(64).unwrap().into_std().unwrap()
}

/// A reader that stops reading while 1-minute bars begin every 10 ms is conflated, yet when it
/// reads again it gets every bar that began meanwhile, each one that became final in its final
/// state before the next: its charts equal the feed's, with no gap.
#[actix_web::test]
async fn a_conflated_reader_still_gets_every_bar_in_its_final_state() {
    watch_panics();
    let app = spawn_app_remote_on(small_send_buffer_listener(4096), |s| {
        s.simulator.faults.tick_ms = 10;
        s.simulator.faults.time_scale = 6000;
    })
    .await;
    let symbols = ["NSE:TCS", "NSE:INFY", "NSE:SBIN", "NSE:ITC"];
    let ids = charts(&symbols, &["1", "1D"]);
    let query = format!(
        "symbols={}&resolutions=1,1D&bars=1000&live=true",
        symbols.join(",")
    );
    let addr = format!("127.0.0.1:{}", app.port).parse().unwrap();
    let mut reader = raw_get(addr, &stream_path(&query), 4096).await;
    reader.read_history().await;
    read_appends(&mut reader, &with_res(&ids, "1"), 3, "new bars").await;
    let appended = reader.view.appended.clone();
    let conflated = live_stats(&app.conn_stats().await).2;
    wait_until(LIVE_WAIT, "updates conflated", || async {
        let now = live_stats(&app.conn_stats().await).2;
        (now >= conflated + 1000, now)
    })
    .await;
    let settled = settle(&app, &mut [&mut reader], &ids, 1000).await;
    assert_well_formed(&reader);
    assert_in_order(&reader);
    for id in with_res(&ids, "1") {
        assert!(
            reader.view.appended[&id] >= appended[&id] + 20,
            "{id:?} went on"
        );
        assert!(reader.view.assert_finals_were_final(&id, &settled[&id]) >= 20);
    }
    assert_no_service_panic();
}

// ------------------------------------------------------------------------------------------------
// 6. Resuming

/// A live stream resumed by `Last-Event-ID` sends no formula-results, no chart-batch and no
/// complete, only the bars changed since (so the client's chart, carried over, ends equal to the
/// feed's: no gap), its `retry:` first, then live; by the `lastEventId` query parameter, at least
/// the last bar of each chart; the id of the live stream's `complete` resumes live too (no 204)
/// with every bar since the history; an id older than `live.resume_window_secs` starts over with
/// history, then live.
#[actix_web::test]
async fn live_streams_resume_by_id_and_start_over_when_it_is_too_old() {
    let app = live_app(50, 600, |_| {}).await;
    let ids = gap_charts();
    let query = "symbols=NSE:TCS,NSE:INFY&resolutions=1&bars=300&live=true";
    let path = stream_path(query);
    let retry = Duration::from_millis(app.settings.stream.retry_ms);

    let mut first = open_live(&app, query).await;
    let at_complete = first.view.clone();
    let complete_id = first.last_id().expect("complete has an id");
    read_appends(&mut first, &ids, 2, "new bars").await;
    let last_id = first.last_id().expect("bar events have ids");
    let last_times: Vec<i64> = ids
        .iter()
        .map(|id| first.view.charts[id].last().unwrap().time)
        .collect();
    let view = first.view.clone();
    drop(first);
    // The client is away while new bars begin.
    wait_until(LIVE_WAIT, "new bars while away", || async {
        let mut later = true;
        for (id, t) in ids.iter().zip(&last_times) {
            later &= service_chart(&app, id, 300).await.last().unwrap().time > *t;
        }
        (later, ())
    })
    .await;

    // By the header.
    let mut resumed = LiveStream::open(
        app.get(&path)
            .insert_header(("Last-Event-ID", last_id.as_str())),
    )
    .await;
    assert_eq!(resumed.status, 200);
    resumed.view = view.carry();
    resumed
        .read_until("the bars that began while away", |s| {
            s.view.min_appended(&ids) >= 1
        })
        .await;
    assert_eq!(resumed.events[0].event, "bar", "{:?}", resumed.names());
    assert_eq!(resumed.retry(), Some(retry), "retry: with the first event");
    read_appends(&mut resumed, &ids, 2, "live after the resume").await;
    let settled = settle(&app, &mut [&mut resumed], &ids, 300).await;
    for name in ["formula-results", "chart-batch", "complete"] {
        assert!(!resumed.saw(name), "a resumed live stream sends no {name}");
    }
    assert_well_formed(&resumed);
    let resumed_id = resumed.last_id().unwrap();
    let resumed_view = resumed.view.carry();
    drop(resumed);

    // By the query parameter: at least each chart's last bar.
    let mut by_query = LiveStream::open(app.get(&format!("{path}&lastEventId={resumed_id}"))).await;
    assert_eq!(by_query.status, 200);
    by_query.view = resumed_view;
    by_query
        .read_until("each chart's last bar", |s| {
            s.view.min_bar_events(&ids) >= 1
        })
        .await;
    by_query.read_while_busy(QUIET).await;
    assert!(
        by_query.names().iter().all(|n| *n == "bar"),
        "{:?}",
        by_query.names()
    );
    for id in &ids {
        assert_eq!(by_query.view.newest(id, 300), settled[id].as_slice());
    }
    assert_well_formed(&by_query);

    // By the id of `complete`: live, with every bar since the history.
    let mut from_complete = LiveStream::open(
        app.get(&path)
            .insert_header(("Last-Event-ID", complete_id.as_str())),
    )
    .await;
    assert_eq!(
        from_complete.status, 200,
        "a live complete id resumes (no 204)"
    );
    from_complete.view = at_complete.carry();
    from_complete.read_until("a bar", |s| s.saw("bar")).await;
    from_complete.read_while_busy(QUIET).await;
    assert!(from_complete.names().iter().all(|n| *n == "bar"));
    for id in &ids {
        assert_eq!(from_complete.view.newest(id, 300), settled[id].as_slice());
    }
    assert_well_formed(&from_complete);

    // An id older than the resume window: history again, then live.
    let (head, _) = last_id.rsplit_once('.').unwrap();
    let old = chartgate_protocol::clock::unix_ms()
        - 1000 * i64::try_from(app.settings.live.resume_window_secs).unwrap()
        - 60_000;
    let expired = format!("{head}.{old:x}");
    let mut over = LiveStream::open(
        app.get(&path)
            .insert_header(("Last-Event-ID", expired.as_str())),
    )
    .await;
    over.read_history().await;
    let first_event: Value = serde_json::from_str(&over.events[0].data).unwrap();
    assert_eq!(first_event["type"], "formula-results");
    assert_eq!(first_event["data"]["resumed"], false);
    over.read_until("a bar per chart", |s| s.view.min_bar_events(&ids) >= 1)
        .await;
    for id in &ids {
        assert_eq!(over.view.newest(id, 300), settled[id].as_slice());
    }
    assert_well_formed(&over);
    assert_in_order(&over);
    assert_no_service_panic();
}

// ------------------------------------------------------------------------------------------------
// 7. Bad parameters and capacity

/// `live` and `quotes` take `true` or `false` only (400 `invalid_parameter`), `quotes=true` needs
/// `live=true`, a body's `"live"` is a JSON boolean (400 `invalid_json`); a live request whose
/// series would not fit in `pool.max_connections` x `live.series_per_connection` is refused
/// with 503 `live_capacity` before streaming, and the same request without live streams; a
/// request whose series are already live needs no room, and lingering series nobody follows
/// make room for new ones.
#[actix_web::test]
async fn bad_live_parameters_and_capacity_are_refused_before_streaming() {
    let app = live_app(50, 1, |s| {
        s.pool.max_connections = 1;
        s.live.series_per_connection = 2;
    })
    .await;
    for query in [
        "symbols=NSE:TCS&live=yes",
        "symbols=NSE:TCS&live=1",
        "symbols=NSE:TCS&live=true&quotes=on",
        "symbols=NSE:TCS&quotes=true",
        "symbols=NSE:TCS&live=false&quotes=true",
    ] {
        let (status, body) = app.get_json(&stream_path(query)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_parameter")),
            "{query}: {body}"
        );
    }
    for body in [
        r#"{"symbols":"NSE:TCS","live":"yes"}"#,
        r#"{"symbols":"NSE:TCS","live":true,"quotes":"true"}"#,
    ] {
        let (status, answer) = post_body(&app, body.to_string()).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("invalid_json")),
            "{body}: {answer}"
        );
    }
    let (status, body) = post_body(&app, r#"{"symbols":"NSE:TCS","quotes":true}"#).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter")),
        "{body}"
    );

    // Three series do not fit in one connection of two.
    let three = "symbols=NSE:TCS,NSE:INFY,NSE:SBIN&resolutions=1D&bars=10";
    let (status, body) = app
        .get_json(&stream_path(&format!("{three}&live=true")))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("live_capacity")),
        "{body}"
    );
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    let (status, body) = post_body(
        &app,
        r#"{"symbols":"NSE:TCS,NSE:INFY,NSE:SBIN","resolutions":"1D","live":true}"#,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("live_capacity")),
        "{body}"
    );
    assert_eq!(live_stats(&app.conn_stats().await).1, 0, "nothing followed");
    let plain = app.stream(&stream_path(three)).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.names().last(), Some(&"complete"));
    assert_eq!(
        plain.data_of("chart-batch")[0]["data"]["errors"],
        serde_json::json!({})
    );

    // Two fit; a third stream of one of them needs no new series and fits too, one of another
    // chart does not.
    let mut two = open_live(
        &app,
        "symbols=NSE:TCS,NSE:INFY&resolutions=1D&bars=10&live=true",
    )
    .await;
    two.read_until("a bar per chart", |s| s.view.bar_events.len() == 2)
        .await;
    let mut shared = open_live(&app, "symbols=NSE:INFY&resolutions=1D&bars=10&live=true").await;
    shared
        .read_until("a bar", |s| s.view.bar_events.len() == 1)
        .await;
    let other = "symbols=NSE:SBIN&resolutions=1D&bars=10&live=true";
    let (status, body) = app.get_json(&stream_path(other)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("live_capacity")),
        "{body}"
    );
    // Once nobody follows them, lingering series make room.
    drop((two, shared));
    wait_until(LIVE_WAIT, "the followers gone", || async {
        let live = live_stats(&app.conn_stats().await);
        (live.1 == 0, live)
    })
    .await;
    assert_eq!(live_stats(&app.conn_stats().await).0, 2, "lingering");
    let mut sbin = open_live(&app, other).await;
    sbin.read_until("a bar", |s| s.view.bar_events.len() == 1)
        .await;
    assert_well_formed(&sbin);
    assert!(live_stats(&app.conn_stats().await).0 <= 2);
    assert_no_service_panic();
}

// ------------------------------------------------------------------------------------------------
// 8. Whatever the feed sends

/// Garbage packets among the live updates and quotes (`malformed_every`) are skipped: bars keep
/// arriving and the follower's chart ends equal to the feed's.
#[actix_web::test]
async fn malformed_packets_during_live_are_skipped() {
    let app = live_app(50, 600, |_| {}).await;
    let ids = charts(&["NSE:TCS", "NSE:INFY"], &["1", "1D"]);
    let query = "symbols=NSE:TCS,NSE:INFY&resolutions=1,1D&bars=200&live=true&quotes=true";
    let mut stream = open_live(&app, query).await;
    set_faults(
        &app,
        Faults {
            malformed_every: 2,
            ..Faults::default()
        },
    );
    let quotes_before: usize = stream.view.quotes.values().map(Vec::len).sum();
    read_appends(&mut stream, &with_res(&ids, "1"), 4, "bars among garbage").await;
    stream
        .read_until("quotes among garbage", |s| {
            s.view.quotes.values().map(Vec::len).sum::<usize>() > quotes_before + 2
        })
        .await;
    settle(&app, &mut [&mut stream], &ids, 200).await;
    assert_well_formed(&stream);
    assert_in_order(&stream);
    assert_no_service_panic();
}

/// An unknown symbol in a live request: its chart fails in the history and is not followed (no
/// bar for it), the feed's `"s":"error"` for its quote gives no quote event, and the other
/// stock's chart and quote go on live, also once resumed by id.
#[actix_web::test]
async fn an_unknown_symbol_is_not_followed() {
    let app = live_app(50, 60, |_| {}).await;
    let query = "symbols=NSE:TCS,NSE:INVALIDX&resolutions=1D&bars=30&live=true&quotes=true";
    let mut stream = open_live(&app, query).await;
    let tcs = ("NSE:TCS".to_string(), "1D".to_string());
    let unknown = ("NSE:INVALIDX".to_string(), "1D".to_string());
    assert!(
        stream.view.errors.contains(&unknown),
        "{:?}",
        stream.view.errors
    );
    stream
        .read_until("TCS live", |s| {
            s.view.bar_events.get(&tcs).copied().unwrap_or(0) >= 3
                && s.view.quotes.get("NSE:TCS").map_or(0, Vec::len) >= 3
        })
        .await;
    assert_eq!(
        stream.view.quotes.keys().collect::<Vec<_>>(),
        ["NSE:TCS"],
        "no quote for the unknown symbol"
    );
    assert_well_formed(&stream);
    assert_in_order(&stream);
    assert_eq!(
        sim(&app).live_series,
        1,
        "the unknown symbol has no live series upstream"
    );
    // Resumed, it is still not followed.
    let id = stream.last_id().expect("an id");
    let view = stream.view.carry();
    drop(stream);
    let mut resumed = LiveStream::open(
        app.get(&stream_path(query))
            .insert_header(("Last-Event-ID", id.as_str())),
    )
    .await;
    assert_eq!(resumed.status, 200);
    resumed.view = view;
    resumed
        .read_until("TCS live again", |s| {
            s.view.bar_events.get(&tcs).copied().unwrap_or(0) >= 2
                && s.view.quotes.get("NSE:TCS").map_or(0, Vec::len) >= 2
        })
        .await;
    assert_eq!(resumed.view.quotes.keys().collect::<Vec<_>>(), ["NSE:TCS"]);
    assert!(!resumed.saw("chart-batch"));
    assert_well_formed(&resumed);
    settle(&app, &mut [&mut resumed], &[tcs], 30).await;
    assert_no_service_panic();
}

/// Series that vanish under the feed's updates: with no linger, followers come and go while
/// updates tick every 20 ms, so `du` packets arrive for chart sessions already deleted and series
/// end while their updates are in flight. Nothing breaks: every stream gets its history and
/// bars, the series all end, and a last follower's chart equals the feed's.
#[actix_web::test]
async fn series_that_vanish_under_their_updates_break_nothing() {
    let app = live_app(20, 600, |s| s.live.linger_secs = 0).await;
    let ids = charts(&["NSE:TCS", "NSE:INFY"], &["1"]);
    let query = "symbols=NSE:TCS,NSE:INFY&resolutions=1&bars=50&live=true";
    for _ in 0..6 {
        let mut stream = open_live(&app, query).await;
        stream
            .read_until("a bar per chart", |s| s.view.min_bar_events(&ids) >= 1)
            .await;
        assert_well_formed(&stream);
        assert_in_order(&stream);
    }
    wait_until(LIVE_WAIT, "every series ended", || async {
        let live = live_stats(&app.conn_stats().await);
        let upstream = sim(&app).live_series;
        (live.0 == 0 && upstream == 0, (live, upstream))
    })
    .await;
    let mut last = open_live(&app, query).await;
    read_appends(&mut last, &ids, 2, "bars for the last follower").await;
    settle(&app, &mut [&mut last], &ids, 50).await;
    assert_well_formed(&last);
    assert_in_order(&last);
    assert_eq!(app.get_json("/healthz").await.0, 200);
    assert_no_service_panic();
}

// ------------------------------------------------------------------------------------------------
// 9. Quotes

/// With `quotes=true`, each stock's quotes come after `complete`: the first in full (price,
/// change, changePercent, volume, bid, ask, time), each later one only when it changed, always
/// the whole latest quote; once the feed stands still the last price is the last close of the
/// stock's daily chart. The history's bars are in columns (`barsFormat=columns`), the live bars
/// single objects all the same.
#[actix_web::test]
async fn quotes_come_first_in_full_then_on_change() {
    let app = live_app(50, 60, |_| {}).await;
    let ids = charts(&["NSE:TCS", "NSE:INFY"], &["1D"]);
    // Bars as columns in the history; live bars are one object all the same.
    let query =
        "symbols=NSE:TCS,NSE:INFY&resolutions=1D&bars=30&barsFormat=columns&live=true&quotes=true";
    let mut stream = open_live(&app, query).await;
    let batch: Value = serde_json::from_str(&stream.events[1].data).unwrap();
    assert!(batch["data"]["chartData"]["NSE:TCS"]["1D"]["bars"]["close"].is_array());
    stream
        .read_until("three quotes per stock", |s| {
            s.view.quotes.len() == 2 && s.view.quotes.values().all(|q| q.len() >= 3)
        })
        .await;
    let complete_at = stream
        .names()
        .iter()
        .position(|n| *n == "complete")
        .unwrap();
    let first_quote = stream.names().iter().position(|n| *n == "quote").unwrap();
    assert!(first_quote > complete_at, "quotes follow the history");
    for (symbol, quotes) in &stream.view.quotes {
        let full = [
            "price",
            "change",
            "changePercent",
            "volume",
            "bid",
            "ask",
            "time",
        ];
        for field in full {
            assert!(
                quotes[0][field].is_number(),
                "{symbol}'s first quote has {field}: {}",
                quotes[0]
            );
        }
        for pair in quotes.windows(2) {
            assert_ne!(
                pair[0], pair[1],
                "{symbol}: a quote is sent when it changed"
            );
            for field in full {
                assert!(
                    pair[1][field].is_number(),
                    "{symbol}: always the whole quote: {}",
                    pair[1]
                );
            }
        }
    }
    let settled = settle(&app, &mut [&mut stream], &ids, 30).await;
    for id in &ids {
        let close = settled[id].last().unwrap().close;
        stream
            .read_until("the last price at the last close", |s| {
                s.view.quotes[&id.0].last().unwrap()["price"].as_f64() == Some(close)
            })
            .await;
    }
    assert_well_formed(&stream);
    assert_in_order(&stream);
    assert_no_service_panic();
}
