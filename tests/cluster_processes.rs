//! Several `chartgate serve` processes (the binary, as operators run it) as one service (SPEC 7),
//! sharing one `redis-server` and one simulator that the test runs in-process: fetches made once
//! across processes, a stream resumed on another process after its client cut it or its process
//! was killed (SIGKILL) with nothing lost and the dead process's permits returning, live series
//! shared across processes and taken over when their owner is killed, a burst within the
//! cluster's connection budget, Redis stopped and restarted under traffic.
//!
//! Waits poll a state with a deadline; nothing is timed by sleeping.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use tokio::time::Instant;

use chartgate::cluster::keys;
use chartgate_protocol::Bar;
use chartgate_simulator::{Faults, Simulator, SimulatorSettings};
use common::app::{StreamRead, client, read_stream, read_stream_until, send_json, start_simulator};
use common::feed::{keep_live, sim_history};
use common::live::{ChartId, LIVE_WAIT, LiveStream};
use common::redis::RedisServer;
use common::serve::{ServeProcess, WITHIN};

/// `manager.stale_after_secs` of every process (the least a permit's lease may be): the permits
/// of a killed process lapse this long after its last renewal.
const STALE_AFTER_SECS: u64 = 3;

/// The formula stream of 3.1.
const STREAM: &str = "/api/formula-results-with-charts";

/// `GET path` on `process`: the status and the body as JSON.
async fn get_json(process: &ServeProcess, path: &str) -> (u16, Value) {
    send_json(client().get(process.url(path))).await
}

/// `/api/connections/stats` of `process`.
async fn stats(process: &ServeProcess) -> Value {
    let (status, body) = get_json(process, "/api/connections/stats").await;
    assert_eq!(status, 200, "{}: {body}", process.name);
    body
}

/// Polls the stats of `process` until `cond` holds on them, failing with `what` after [`WITHIN`].
async fn wait_stats(process: &ServeProcess, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WITHIN;
    loop {
        let stats = stats(process).await;
        if cond(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {what}: {stats}",
            process.name
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `n` processes named `proc-a`, `proc-b`, ... against `sim` (remote mode: its feed, token page
/// and screens) and `redis`, with `extra` settings; returned once each counts `n` instances.
async fn instances(
    n: usize,
    sim: &Simulator,
    redis: &RedisServer,
    extra: &[(&str, &str)],
) -> Vec<ServeProcess> {
    let stale = STALE_AFTER_SECS.to_string();
    let processes: Vec<ServeProcess> = (0..n)
        .map(|i| {
            let name = format!("proc-{}", (b'a' + i as u8) as char);
            let env = [
                ("CHARTGATE__UPSTREAM__MODE", "remote".to_string()),
                ("CHARTGATE__UPSTREAM__URL", sim.feed_url()),
                ("CHARTGATE__UPSTREAM__TOKEN_URL", sim.token_url()),
                ("CHARTGATE__FORMULAS__SOURCE_URL", sim.screen_url()),
                ("CHARTGATE__CLUSTER__REDIS_URL", redis.url()),
                ("CHARTGATE__CLUSTER__INSTANCE_ID", name.clone()),
                ("CHARTGATE__MANAGER__STALE_AFTER_SECS", stale.clone()),
                ("CHARTGATE__MANAGER__RECONNECT_BACKOFF_MS", "50".to_string()),
            ];
            let extra = extra.iter().map(|(k, v)| (*k, v.to_string()));
            ServeProcess::start(&name, env.into_iter().chain(extra))
        })
        .collect();
    for process in &processes {
        wait_stats(process, "joined the cluster", |s| {
            s["cluster"]["redis"] == "ok" && s["cluster"]["instances"] == n as u64
        })
        .await;
    }
    processes
}

/// A simulator whose heartbeats come well within [`STALE_AFTER_SECS`] (so no idle connection
/// looks stale), set up further by `configure`.
async fn simulator(configure: impl FnOnce(&mut SimulatorSettings)) -> Simulator {
    start_simulator(|s| {
        s.heartbeat_secs = 1;
        configure(s);
    })
    .await
}

/// Stops every process with SIGTERM; each exits 0.
fn stop_all(processes: Vec<ServeProcess>) {
    for process in processes {
        process.stop();
    }
}

/// SPEC 7 "one fetch" across processes: a chart asked for on each of three in turn, and another
/// asked for nine times at once across the three, each cost the feed one series.
#[actix_web::test]
async fn the_same_chart_on_three_processes_is_fetched_once_even_nine_at_a_time() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sim = simulator(|_| {}).await;
    let procs = instances(3, &sim, &redis, &[]).await;

    // One after the other: the first process fetches, the others serve the shared copy.
    let query = "/api/chart-data?symbol=NSE:TCS&resolution=1D&bars=120";
    let before = sim.stats().series_served;
    let (status, first) = get_json(&procs[0], query).await;
    assert_eq!(
        (status, &first["cached"]),
        (200, &Value::Bool(false)),
        "{first}"
    );
    for process in &procs[1..] {
        let (status, other) = get_json(process, query).await;
        assert_eq!(status, 200, "{other}");
        assert_eq!(
            other["cached"], true,
            "{}: from the shared cache",
            process.name
        );
        assert_eq!(other["bars"], first["bars"]);
    }
    assert_eq!(sim.stats().series_served - before, 1, "one upstream fetch");

    // Nine at once, three on each, on a slow feed so that they overlap.
    sim.set_faults(Faults {
        latency_ms: 400,
        ..Faults::default()
    });
    let query = "/api/chart-data?symbol=NSE:INFY&resolution=1W&bars=200";
    let before = sim.stats().series_served;
    let answers = join_all((0..9).map(|n| get_json(&procs[n % 3], query))).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["bars"], answers[0].1["bars"]);
    }
    assert_eq!(sim.stats().series_served - before, 1, "one upstream fetch");
    let all = join_all(procs.iter().map(stats)).await;
    let misses: u64 = all
        .iter()
        .map(|s| s["cache"]["misses"].as_u64().expect("cache.misses"))
        .sum();
    assert_eq!(misses, 2, "one fetch per chart in the cluster: {all:?}");
    let mut conn = redis.connect().await;
    let locks: Vec<String> = conn.keys("chartgate:lock:*").await.unwrap();
    assert!(locks.is_empty(), "no lock left behind: {locks:?}");
    stop_all(procs);
}

/// The permits in Redis whose lease has not lapsed (score, an expiry in Redis's clock, ahead).
async fn live_permits(conn: &mut MultiplexedConnection) -> Vec<String> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    let now_ms = secs * 1000 + micros / 1000;
    conn.zrangebyscore(keys::PERMITS, format!("({now_ms}"), "+inf")
        .await
        .unwrap()
}

/// Checks a stream read in two parts, `rest` resumed by the last id of `first`: `formula-results`
/// once, `complete` at the end, and every chart of the list exactly once, none failed. Returns
/// the number of charts.
fn assert_whole_once(first: &StreamRead, rest: &StreamRead) -> usize {
    assert_eq!(rest.status, 200);
    assert!(
        !rest.names().contains(&"formula-results"),
        "{:?}",
        rest.names()
    );
    assert_eq!(rest.names().last(), Some(&"complete"), "{:?}", rest.names());
    let stocks = first.data_of("formula-results")[0]["data"]["stocks"]
        .as_array()
        .expect("stocks")
        .len();
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for batch in [first, rest].iter().flat_map(|r| r.data_of("chart-batch")) {
        for (field, into) in [("chartData", &mut ok), ("errors", &mut failed)] {
            for (symbol, by_res) in batch["data"][field].as_object().into_iter().flatten() {
                for res in by_res.as_object().expect("resolutions").keys() {
                    into.push((symbol.clone(), res.clone()));
                }
            }
        }
    }
    assert!(failed.is_empty(), "nothing lost: {failed:?}");
    let sent = ok.len();
    ok.sort();
    ok.dedup();
    assert_eq!((sent, ok.len()), (stocks, stocks), "every chart once");
    let complete = &rest.data_of("complete")[0]["data"];
    assert_eq!(complete["totalCharts"], stocks as u64, "{complete}");
    assert_eq!(complete["failedCharts"], 0, "{complete}");
    stocks
}

/// The formula stream of `breakouts` (20 stocks) on the daily charts.
fn formula_path() -> String {
    format!("{STREAM}?formula=breakouts&resolutions=1D&bars=20")
}

/// SPEC 7 "one stream": a client that drops a formula stream on one process and resumes it on
/// another by `Last-Event-ID` gets every chart exactly once.
#[actix_web::test]
async fn a_stream_cut_on_one_process_resumes_on_another_with_every_chart_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // A slow feed, one series at a time per connection, so that the cut comes mid-way.
    let sim = simulator(|s| {
        s.faults.latency_ms = 100;
        s.faults.series_concurrency = 1;
    })
    .await;
    let procs = instances(2, &sim, &redis, &[("CHARTGATE__STREAM__BATCH_SIZE", "5")]).await;
    let path = formula_path();
    let mut batches = 0;
    let first = read_stream_until(client().get(procs[0].url(&path)), |e| {
        batches += usize::from(e.event == "chart-batch");
        batches == 2
    })
    .await;
    let last_id = first.last_id().expect("an event id").to_string();
    let rest = read_stream(
        client()
            .get(procs[1].url(&path))
            .insert_header(("Last-Event-ID", last_id)),
    )
    .await;
    assert_whole_once(&first, &rest);
    stop_all(procs);
}

/// A process killed with SIGKILL mid-stream hands nothing over: the client resumes on another
/// process with nothing lost, the dead process's chart locks and connection permits lapse within
/// their leases, and the survivor's count of the cluster's connections drops to its own.
#[actix_web::test]
async fn a_stream_on_a_process_killed_mid_way_resumes_on_another_and_its_permits_come_back() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // A slow feed: the 20 charts of the formula take a couple of seconds.
    let sim = simulator(|s| s.faults.latency_ms = 200).await;
    // The budget is two connections and A takes both for its stream (one fetch each), so B can
    // only finish it once A's permits have lapsed; A's chart locks (which live
    // `upstream.request_timeout_ms`) lapse in 3 s too.
    let mut procs = instances(
        2,
        &sim,
        &redis,
        &[
            ("CHARTGATE__CLUSTER__MAX_UPSTREAM_CONNECTIONS", "2"),
            ("CHARTGATE__POOL__MAX_CONNECTIONS", "2"),
            ("CHARTGATE__POOL__REQUESTS_PER_CONNECTION", "1"),
            ("CHARTGATE__UPSTREAM__REQUEST_TIMEOUT_MS", "3000"),
            ("CHARTGATE__STREAM__BATCH_SIZE", "5"),
        ],
    )
    .await;
    let b = procs.pop().expect("B");
    let mut a = procs.pop().expect("A");
    let mut conn = redis.connect().await;
    let path = formula_path();

    // On A until two batches are in; then A is killed with the stream still open.
    let mut batches = 0;
    let first = read_stream_until(client().get(a.url(&path)), |e| {
        batches += usize::from(e.event == "chart-batch");
        if batches == 2 {
            a.kill_hard();
        }
        batches == 2
    })
    .await;
    let killed = Instant::now();
    let dead: Vec<String> = live_permits(&mut conn)
        .await
        .into_iter()
        .filter(|p| p.starts_with("proc-a:"))
        .collect();
    assert!(!dead.is_empty(), "A held permits when it was killed");
    let counted = stats(&b).await["cluster"]["upstreamConnections"]
        .as_u64()
        .expect("cluster.upstreamConnections");
    assert!(
        counted >= dead.len() as u64,
        "B counts A's permits until they lapse: {counted} < {dead:?}"
    );

    // On B from the last id seen, while A's permits lapse.
    let last_id = first.last_id().expect("an event id").to_string();
    let rest = read_stream(
        client()
            .get(b.url(&path))
            .insert_header(("Last-Event-ID", last_id)),
    );
    let lapse = async {
        let deadline = killed + WITHIN;
        while live_permits(&mut conn.clone())
            .await
            .iter()
            .any(|p| p.starts_with("proc-a:"))
        {
            assert!(Instant::now() < deadline, "A's permits lapsed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        killed.elapsed()
    };
    let (rest, lapsed_after) = tokio::join!(rest, lapse);
    let lease = Duration::from_secs(STALE_AFTER_SECS);
    assert!(
        lapsed_after <= lease + Duration::from_secs(2),
        "A's permits returned within manager.stale_after_secs: {lapsed_after:?}"
    );

    let stocks = assert_whole_once(&first, &rest);
    // Fetched again: only what A had in flight (one fetch per connection) when it died.
    let served = sim.stats().series_served;
    assert!(
        served <= (stocks + dead.len()) as u64,
        "{served} series served for {stocks} charts"
    );

    let fetched = stats(&b).await["cache"]["misses"].clone();
    assert!(
        fetched.as_u64() > Some(0),
        "B fetched what A had not: {fetched}"
    );

    // B's count of the cluster's connections drops to its own permits, which it has now.
    let deadline = Instant::now() + WITHIN;
    loop {
        let counted = stats(&b).await["cluster"]["upstreamConnections"].clone();
        let permits = live_permits(&mut conn).await;
        let all_b = permits.iter().all(|p| p.starts_with("proc-b:"));
        if all_b && !permits.is_empty() && counted == permits.len() as u64 {
            assert!(permits.len() <= 2, "within the budget: {permits:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B counts its own permits only: {counted} for {permits:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.stop();
}

// ------------------------------------------------------------------------------------------------
// Live series across processes

/// The charts followed live: 1-minute bars, which the simulator below begins every 200 ms.
const LIVE_SYMBOLS: [&str; 2] = ["NSE:TCS", "NSE:INFY"];
const LIVE_RESOLUTION: &str = "1";
const LIVE_BARS: usize = 300;

/// Ticks every 50 ms; simulated time 300 times real time.
const TICK_MS: u64 = 50;
const TIME_SCALE: u64 = 300;

/// A tick that stops the simulator's live series: its next instant is an hour away.
const FROZEN_TICK_MS: u64 = 3_600_000;

fn live_charts() -> Vec<ChartId> {
    LIVE_SYMBOLS
        .iter()
        .map(|s| (s.to_string(), LIVE_RESOLUTION.to_string()))
        .collect()
}

fn live_path() -> String {
    format!(
        "{STREAM}?symbols={}&resolutions={LIVE_RESOLUTION}&bars={LIVE_BARS}&live=true",
        LIVE_SYMBOLS.join(",")
    )
}

/// `live.series` and `live.relayed` of a process's stats (`relayed`: live series it follows
/// through another instance's upstream subscription).
fn series_and_relayed(stats: &Value) -> (u64, u64) {
    let n = |k: &str| {
        stats["live"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("live.{k} in the stats: {stats}"))
    };
    (n("series"), n("relayed"))
}

/// Two processes, each with a client following the live charts: A's first (so A subscribes
/// upstream), then B's. Returned once both clients have had bars of every chart.
struct LivePair {
    _redis: RedisServer,
    sim: Simulator,
    procs: Vec<ServeProcess>,
    /// A's follower, then B's.
    streams: Vec<LiveStream>,
}

async fn live_pair() -> Option<LivePair> {
    let redis = RedisServer::start()?;
    let sim = simulator(|s| {
        s.faults.tick_ms = TICK_MS;
        s.faults.time_scale = TIME_SCALE;
    })
    .await;
    let procs = instances(2, &sim, &redis, &[]).await;
    let charts = live_charts();
    let mut streams = Vec::new();
    for (n, process) in procs.iter().enumerate() {
        let mut stream = LiveStream::open(client().get(process.url(&live_path()))).await;
        stream.read_history().await;
        stream
            .read_until("bars of every chart", |s| {
                s.view.min_bar_events(&charts) >= 3
            })
            .await;
        if n == 0 {
            assert_eq!(sim.stats().live_series, charts.len() as u64, "A subscribed");
        }
        streams.push(stream);
    }
    Some(LivePair {
        _redis: redis,
        sim,
        procs,
        streams,
    })
}

/// Which of the pair owns the upstream series: its stats say one `series` per chart, the other's
/// one `relayed` per chart.
async fn owner(pair: &LivePair) -> usize {
    let n = live_charts().len() as u64;
    let a = series_and_relayed(&stats(&pair.procs[0]).await);
    let b = series_and_relayed(&stats(&pair.procs[1]).await);
    match (a, b) {
        (a, b) if a == (n, 0) && b == (0, n) => 0,
        (a, b) if a == (0, n) && b == (n, 0) => 1,
        _ => panic!("one owner of {n} series and one relay, (series, relayed): A {a:?}, B {b:?}"),
    }
}

/// SPEC 7 "one live series": followers of the same charts on two processes are fed by one upstream
/// series per chart, owned by one process and relayed to the other. Needs live relaying across
/// instances (`live.relayed` in the stats).
#[actix_web::test]
async fn live_followers_on_two_processes_share_one_upstream_series() {
    let Some(pair) = live_pair().await else {
        return;
    };
    let charts = live_charts();
    assert_eq!(
        pair.sim.stats().live_series,
        charts.len() as u64,
        "one upstream live series per chart in the cluster, not one per process"
    );
    assert_eq!(owner(&pair).await, 0, "A subscribed first");
    for process in &pair.procs {
        let stats = stats(process).await;
        assert_eq!(stats["live"]["followers"], 1, "{}: {stats}", process.name);
    }
    let LivePair { procs, streams, .. } = pair;
    drop(streams);
    stop_all(procs);
}

/// The simulator's history of each chart: what a follower must end up showing.
async fn feed_charts(sim: &Simulator) -> BTreeMap<ChartId, Vec<Bar>> {
    let origin = chartgate::config::Settings::default().upstream.origin;
    let mut charts = BTreeMap::new();
    for id in live_charts() {
        let bars = sim_history(&sim.feed_url(), &origin, &id.0, &id.1, LIVE_BARS as u32).await;
        charts.insert(id, bars);
    }
    charts
}

/// SPEC 7: the process owning the live series killed with SIGKILL, the other takes them over and
/// its follower's charts end up exactly the feed's, bars that began during the takeover included.
/// Needs live relaying across instances.
#[actix_web::test]
async fn the_live_owner_killed_followers_on_the_other_process_see_no_gap() {
    let Some(mut pair) = live_pair().await else {
        return;
    };
    let charts = live_charts();
    let owner = owner(&pair).await;
    let follower = 1 - owner;
    // Another subscriber of the feed's own keeps the simulator's clock running for the charts
    // while nobody in the cluster follows them, so bars begin during the takeover.
    let origin = chartgate::config::Settings::default().upstream.origin;
    let keeper = keep_live(&pair.sim.feed_url(), &origin, &charts).await;

    pair.procs[owner].kill_hard();
    let stream = &mut pair.streams[follower];
    let appended = stream.view.min_appended(&charts);
    stream
        .read_until("new bars after the owner died", |s| {
            s.view.min_appended(&charts) >= appended + 10
        })
        .await;

    // The clock stopped, the follower's charts settle on the feed's own.
    pair.sim.set_faults(Faults {
        tick_ms: FROZEN_TICK_MS,
        time_scale: TIME_SCALE,
        ..Faults::default()
    });
    let deadline = Instant::now() + LIVE_WAIT;
    loop {
        stream.read_while_busy(Duration::from_millis(300)).await;
        let feed = feed_charts(&pair.sim).await;
        let differs: Vec<&ChartId> = charts
            .iter()
            .filter(|id| stream.view.newest(id, LIVE_BARS) != feed[*id].as_slice())
            .collect();
        if differs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower's charts are the feed's: {differs:?} differ"
        );
    }
    assert!(
        stream.view.out_of_order.is_empty(),
        "{:?}",
        stream.view.out_of_order
    );
    assert!(stream.view.strays.is_empty(), "{:?}", stream.view.strays);
    // And among them, every minute since the owner died has its bar.
    for id in &charts {
        let since = stream.view.appended[id] - appended + 1;
        for w in stream.view.newest(id, since).windows(2) {
            assert_eq!(w[1].time - w[0].time, 60, "{id:?}: no bar missing");
        }
    }

    let survivor = &pair.procs[follower];
    let n = charts.len() as u64;
    wait_stats(survivor, "the survivor owns the series now", |s| {
        series_and_relayed(s) == (n, 0)
    })
    .await;
    drop(keeper);
    let LivePair { procs, streams, .. } = pair;
    drop(streams);
    let survivor = procs.into_iter().nth(follower).expect("the survivor");
    survivor.stop();
}

/// SPEC 7 "one connection budget" across processes: a burst of 18 distinct charts spread over
/// three processes, each allowed 3 connections of one fetch each, under a cluster budget of 2:
/// every request is answered and the simulator never has more than 2 feed connections open.
#[actix_web::test]
async fn a_burst_on_three_processes_never_opens_more_upstream_connections_than_the_budget() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sim = simulator(|s| s.faults.latency_ms = 150).await;
    let procs = instances(
        3,
        &sim,
        &redis,
        &[
            ("CHARTGATE__CLUSTER__MAX_UPSTREAM_CONNECTIONS", "2"),
            ("CHARTGATE__POOL__MAX_CONNECTIONS", "3"),
            // One fetch per connection: a burst wants every connection the pool may open.
            ("CHARTGATE__POOL__REQUESTS_PER_CONNECTION", "1"),
            ("CHARTGATE__UPSTREAM__REQUEST_TIMEOUT_MS", "60000"),
            // Idle connections hand their permits back at once, so every process gets its turn.
            ("CHARTGATE__MANAGER__IDLE_TIMEOUT_SECS", "0"),
        ],
    )
    .await;
    let done = std::cell::Cell::new(false);
    let requests = procs.iter().enumerate().flat_map(|(i, process)| {
        (0..6).map(move |j| async move {
            let query = format!("/api/chart-data?symbol=NSE:P{i}X{j}&bars={}", 50 + j);
            get_json(process, &query).await
        })
    });
    let burst = async {
        let answers = join_all(requests).await;
        done.set(true);
        answers
    };
    let (answers, most) = futures_util::join!(burst, common::app::most_connections(&sim, &done));
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    assert!(most >= 1, "the burst was fetched upstream");
    assert!(most <= 2, "at most the budget open at once: {most}");
    stop_all(procs);
}

/// SPEC 7 "Redis down" with processes: Redis is stopped while requests run on two processes;
/// every request is answered, both say `down` in their stats, keep serving, and say `ok` again
/// once Redis is back, without a restart, sharing again (a chart fetched by one is a cache hit
/// on the other).
#[actix_web::test]
async fn redis_stopped_under_traffic_fails_no_request_on_the_processes() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let sim = simulator(|s| s.faults.latency_ms = 50).await;
    let procs = instances(2, &sim, &redis, &[]).await;
    let symbols = [
        "NSE:TCS",
        "NSE:INFY",
        "NSE:WIPRO",
        "NSE:ITC",
        "NSE:SBIN",
        "NSE:LT",
    ];
    let traffic =
        join_all(
            symbols.iter().enumerate().map(|(n, symbol)| {
                let process = &procs[n % 2];
                async move {
                    get_json(process, &format!("/api/chart-data?symbol={symbol}&bars=40")).await
                }
            }),
        );
    let (answers, ()) = tokio::join!(traffic, async { redis.stop() });
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    for process in &procs {
        wait_stats(process, "says Redis is down", |s| {
            s["cluster"]["redis"] == "down"
        })
        .await;
    }
    for (n, symbol) in symbols.iter().enumerate() {
        let (status, body) = get_json(
            &procs[(n + 1) % 2],
            &format!("/api/chart-data?symbol={symbol}&bars=60"),
        )
        .await;
        assert_eq!(status, 200, "served with Redis down: {body}");
    }
    redis.restart();
    for process in &procs {
        wait_stats(process, "says Redis is back", |s| {
            s["cluster"]["redis"] == "ok"
        })
        .await;
    }
    let (status, _) = get_json(&procs[0], "/api/chart-data?symbol=NSE:HDFCBANK&bars=70").await;
    assert_eq!(status, 200);
    let (status, shared) = get_json(&procs[1], "/api/chart-data?symbol=NSE:HDFCBANK&bars=70").await;
    assert_eq!(
        (status, &shared["cached"]),
        (200, &Value::Bool(true)),
        "{shared}"
    );
    for log in procs.into_iter().map(ServeProcess::stop) {
        for said in ["serves from its own state", "shares its state again"] {
            assert_eq!(log.matches(said).count(), 1, "{said:?} once:\n{log}");
        }
    }
}
