//! The pool actor and its connections against the simulator over real loopback sockets.
//!
//! The pool's decisions (backoff schedule, down and probe, learned cap, queue bound, rotation
//! order, requester-gone at every stage) are unit-tested in `src/upstream/pool/policy/tests.rs`
//! with instants set by hand. These tests prove the wiring end to end: that the actor carries the
//! decisions out against a real feed, that the connection speaks the protocol, and that what the
//! feed does (drops, stalls, refusals, short-lived tokens) reaches the policy as the right event.
//!
//! They run on real time with short durations: with paused time the runtime would jump its clock
//! whenever it waits for the simulator's socket, firing request timeouts mid-fetch. Nothing here
//! asserts how long something took; waits have deadlines only so that a bug fails instead of
//! hanging.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;
use tokio::sync::mpsc;

use chartgate::config::{Secret, Settings};
use chartgate::domain::{BarCount, Chart, Resolution, Symbol};
use chartgate::telemetry::Metrics;
use chartgate::upstream::connection::{
    ConnEnded, ConnReady, ConnShared, Connection, ConnectionEvents, FetchDone, LiveRefused,
    StartFetch,
};
use chartgate::upstream::token::UNAUTHORIZED_USER_TOKEN;
use chartgate::upstream::{FetchChart, FetchError, GetPoolStats, Pool, UpstreamTarget};
use chartgate_simulator::{Faults, SimulatorSettings};
use chartgate_simulator::{Simulator, expected_bars};

mod common;
use common::pool::wait_for_pool;

fn init_logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}

async fn start_sim(configure: impl FnOnce(&mut SimulatorSettings)) -> Simulator {
    init_logs();
    let mut sim = SimulatorSettings::default();
    configure(&mut sim);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    Simulator::start(&sim, listener)
        .await
        .expect("start the simulator")
}

fn settings(configure: impl FnOnce(&mut Settings)) -> Arc<Settings> {
    let mut s = Settings::default();
    s.upstream.connect_timeout_ms = 5_000;
    s.upstream.request_timeout_ms = 10_000;
    configure(&mut s);
    Arc::new(s)
}

fn start_pool(sim: &Simulator, settings: Arc<Settings>) -> Addr<Pool> {
    Pool::new(
        settings,
        UpstreamTarget {
            feed_url: sim.feed_url(),
            token_url: sim.token_url(),
        },
        &Metrics::new(),
    )
    .start()
}

fn fetch(symbol: &str, resolution: Resolution, bars: u64) -> FetchChart {
    FetchChart::new(
        symbol.parse().expect("a valid symbol"),
        resolution,
        BarCount::new(bars).expect("a valid bar count"),
    )
}

/// The chart a fetch gives (the pool hands out charts with their JSON made; these tests look at
/// the bars).
async fn run(pool: &Addr<Pool>, req: FetchChart) -> Result<Chart, FetchError> {
    let ready = pool.send(req).await.expect("the pool answers")?;
    Ok(ready.chart.clone())
}

/// Asserts a chart is exactly what the simulator serves for its request.
fn assert_expected(req: &FetchChart, chart: &Chart) {
    let expected = expected_bars(
        req.symbol.as_str(),
        req.resolution.as_str(),
        u32::from(req.bars.get()),
    );
    assert!(!expected.is_empty());
    assert_eq!(chart.symbol, req.symbol);
    assert_eq!(chart.resolution, req.resolution);
    assert_eq!(
        chart.bars, *expected,
        "bars of {} {}",
        req.symbol, req.resolution
    );
    assert_eq!(chart.metadata.exchange, req.symbol.exchange());
    assert_eq!(chart.metadata.name, req.symbol.ticker());
}

/// Polls `cond` every 10 ms for up to `limit`.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        actix::clock::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

fn batch(n: usize, offset: usize) -> Vec<FetchChart> {
    const TICKERS: [&str; 10] = [
        "TCS", "INFY", "RELIANCE", "HDFCBANK", "ITC", "SBIN", "WIPRO", "LT", "MARUTI", "TITAN",
    ];
    const RES: [Resolution; 5] = [
        Resolution::Day,
        Resolution::Week,
        Resolution::H1,
        Resolution::M15,
        Resolution::Month,
    ];
    (offset..offset + n)
        .map(|i| {
            let ticker = TICKERS[i % TICKERS.len()];
            let symbol = if i % 7 == 0 {
                format!("BSE:{ticker}")
            } else {
                format!("NSE:{ticker}")
            };
            fetch(
                &symbol,
                RES[(i / TICKERS.len()) % RES.len()],
                50 + (i as u64 * 37) % 400,
            )
        })
        .collect()
}

#[actix_web::test]
async fn many_concurrent_fetches_share_three_connections_and_never_mix() {
    let sim = start_sim(|_| {}).await;
    let settings = settings(|s| {
        s.pool.max_connections = 3;
        s.pool.requests_per_connection = 10;
        // Session cookies: the token comes from the simulator's /chart/ page.
        s.upstream.session_id = Secret::new("sid-test");
        s.upstream.session_sign = Secret::new("sign-test");
    });
    let pool = start_pool(&sim, settings);

    let requests = batch(200, 0);
    let results = join_all(requests.iter().cloned().map(|r| run(&pool, r))).await;
    for (req, result) in requests.iter().zip(&results) {
        let chart = result.as_ref().expect("every fetch succeeds");
        assert_expected(req, chart);
    }
    let stats = sim.stats();
    assert_eq!(stats.connections_total, 3, "{stats:?}");
    assert_eq!(stats.tokens_issued, 1);
    assert_eq!(stats.series_served, 200);

    let pool_stats = pool.send(GetPoolStats).await.unwrap();
    assert_eq!(pool_stats.open_connections, 3);
    assert_eq!(pool_stats.served_total, 200);
    assert_eq!(pool_stats.in_flight + pool_stats.queued, 0);
    assert!(pool_stats.connections.iter().all(|c| c.served > 0));

    // A warm pool: the second batch opens no connection and authenticates nothing again.
    let requests = batch(60, 200);
    let results = join_all(requests.iter().cloned().map(|r| run(&pool, r))).await;
    for (req, result) in requests.iter().zip(&results) {
        assert_expected(req, result.as_ref().expect("every fetch succeeds"));
    }
    let after = sim.stats();
    assert_eq!(after.connections_total, 3);
    assert_eq!(after.tokens_issued, 1);
    assert_eq!(after.connections_open, 3);
    sim.stop().await;
}

#[actix_web::test]
async fn malformed_packets_are_skipped() {
    let sim = start_sim(|s| s.faults.malformed_every = 3).await;
    let pool = start_pool(&sim, settings(|s| s.pool.max_connections = 2));
    let requests = batch(30, 7);
    let results = join_all(requests.iter().cloned().map(|r| run(&pool, r))).await;
    for (req, result) in requests.iter().zip(&results) {
        assert_expected(req, result.as_ref().expect("every fetch succeeds"));
    }
    assert_eq!(sim.stats().connections_total, 2);
    sim.stop().await;
}

#[actix_web::test]
async fn fetches_on_a_dropped_connection_are_retried_elsewhere() {
    // The first answer ends the connection (hello is message 1); the latency keeps every other
    // fetch in flight on it when it drops.
    let sim = start_sim(|s| {
        s.faults.drop_after_messages = 2;
        s.faults.latency_ms = 300;
    })
    .await;
    let pool = start_pool(
        &sim,
        settings(|s| {
            s.pool.max_connections = 1;
            s.pool.requests_per_connection = 10;
        }),
    );
    let requests = batch(10, 3);
    let fetches = join_all(requests.iter().cloned().map(|r| run(&pool, r)));
    let watcher = async {
        // Once the first connection is gone, stop dropping so the retries can succeed.
        let dropped = wait_until(Duration::from_secs(5), || {
            let s = sim.stats();
            (s.connections_total >= 1 && s.connections_open == 0) || s.connections_total >= 2
        })
        .await;
        assert!(dropped, "the first connection dropped");
        sim.set_faults(Faults {
            latency_ms: 300,
            ..Faults::default()
        });
    };
    let (results, ()) = futures_util::join!(fetches, watcher);
    for (req, result) in requests.iter().zip(&results) {
        assert_expected(req, result.as_ref().expect("retried and succeeded"));
    }
    assert_eq!(sim.stats().connections_total, 2);
    sim.stop().await;
}

#[actix_web::test]
async fn a_stalled_connection_is_replaced_after_stale_after_secs() {
    // Hello and one answer, then silence (heartbeats included).
    let sim = start_sim(|s| s.faults.stall_after_messages = 2).await;
    let pool = start_pool(
        &sim,
        settings(|s| {
            s.pool.max_connections = 1;
            s.manager.stale_after_secs = 1;
        }),
    );
    let first = fetch("NSE:TCS", Resolution::Day, 100);
    assert_expected(&first, &run(&pool, first.clone()).await.unwrap());
    // This one goes to the stalled connection, waits for the stale check, and is retried on the
    // replacement (which answers once before stalling in turn).
    let second = fetch("NSE:INFY", Resolution::Week, 120);
    assert_expected(&second, &run(&pool, second.clone()).await.unwrap());
    assert_eq!(sim.stats().connections_total, 2);
    let stats = pool.send(GetPoolStats).await.unwrap();
    assert_eq!(
        stats.connections.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![2]
    );
    sim.stop().await;
}

#[actix_web::test]
async fn rejected_upgrades_back_off_then_go_down_then_recover() {
    let sim = start_sim(|s| s.faults.reject_upgrades = 503).await;
    let pool = start_pool(
        &sim,
        settings(|s| {
            s.manager.reconnect_backoff_ms = 50;
            s.manager.max_reconnect_attempts = 3;
        }),
    );
    let req = fetch("NSE:TCS", Resolution::Day, 10);

    // The first attempt, then three reconnect attempts on the backoff timer; then down.
    let err = run(&pool, req.clone()).await.unwrap_err();
    assert!(matches!(err, FetchError::Unavailable(_)), "{err:?}");
    assert_eq!(err.code(), "upstream_unavailable");
    assert_eq!(sim.stats().handshakes_rejected, 4);
    let stats = pool.send(GetPoolStats).await.unwrap();
    assert!(stats.down);
    assert_eq!(stats.reconnect_attempts, 3);

    // Down: a new fetch tries one connection, and fails when it is refused, without a backoff.
    let err = run(&pool, req.clone()).await.unwrap_err();
    assert!(matches!(err, FetchError::Unavailable(_)));
    assert_eq!(sim.stats().handshakes_rejected, 5);
    assert!(pool.send(GetPoolStats).await.unwrap().down);

    // The feed is back: the next fetch starts a new episode and succeeds.
    sim.set_faults(Faults::default());
    assert_expected(&req, &run(&pool, req.clone()).await.unwrap());
    let stats = pool.send(GetPoolStats).await.unwrap();
    assert!(!stats.down);
    assert_eq!(stats.reconnect_attempts, 0);
    sim.stop().await;
}

#[actix_web::test]
async fn token_rotation_under_load_fails_nothing() {
    // Tokens live two seconds, so the pool rotates at least once during the load.
    let sim = start_sim(|s| {
        s.faults.token_ttl_secs = 2;
        s.faults.latency_ms = 40;
    })
    .await;
    let pool = start_pool(
        &sim,
        settings(|s| {
            s.pool.max_connections = 3;
            s.pool.requests_per_connection = 5;
            s.upstream.session_id = Secret::new("sid-rotation");
            s.upstream.session_sign = Secret::new("sign-rotation");
        }),
    );
    // Load until the feed has issued a second token and a replacement connection (id 4 on) is
    // carrying fetches, with a deadline only against a hang.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut round = 0;
    let mut total = 0;
    loop {
        let rotated = sim.stats().tokens_issued >= 2
            && pool
                .send(GetPoolStats)
                .await
                .unwrap()
                .connections
                .iter()
                .any(|c| c.id > 3 && c.served > 0);
        if rotated && total >= 40 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rotation: {:?}",
            sim.stats()
        );
        let requests = batch(20, round * 20);
        let results = join_all(requests.iter().cloned().map(|r| run(&pool, r))).await;
        for (req, result) in requests.iter().zip(&results) {
            match result {
                Ok(chart) => assert_expected(req, chart),
                Err(e) => panic!("fetch failed during rotation: {e}"),
            }
        }
        total += requests.len();
        round += 1;
    }
    assert!(total >= 40);
    let stats = sim.stats();
    assert!(stats.tokens_issued >= 2, "{stats:?}");
    assert!(
        stats.connections_total > 3,
        "connections were replaced: {stats:?}"
    );
    // The first token's connections (1 to 3) are gone.
    wait_for_pool(
        &pool,
        Duration::from_secs(10),
        "connections of the first token still open",
        |s| s.connections.iter().all(|c| c.id > 3),
    )
    .await;
    sim.stop().await;
}

#[actix_web::test]
async fn unknown_symbols_and_timeouts_fail_only_their_own_fetch() {
    let sim = start_sim(|s| s.faults.unknown_symbols = vec!["NSE:GHOST".into()]).await;
    let pool = start_pool(
        &sim,
        settings(|s| {
            s.pool.max_connections = 1;
            s.upstream.request_timeout_ms = 300;
        }),
    );
    let good = fetch("NSE:TCS", Resolution::Day, 30);
    let (a, b, c) = futures_util::join!(
        run(&pool, fetch("NSE:GHOST", Resolution::Day, 30)),
        run(&pool, good.clone()),
        run(&pool, fetch("NSE:INVALIDX", Resolution::Week, 30)),
    );
    assert_eq!(
        a.unwrap_err(),
        FetchError::UnknownSymbol("NSE:GHOST".into())
    );
    assert_expected(&good, &b.unwrap());
    let c = c.unwrap_err();
    assert_eq!(c.code(), "unknown_symbol");

    // The feed slower than the request timeout: that fetch times out, the connection lives on.
    sim.set_faults(Faults {
        latency_ms: 600,
        ..Faults::default()
    });
    let err = run(&pool, good.clone()).await.unwrap_err();
    assert_eq!(err, FetchError::Timeout);
    assert_eq!(err.code(), "upstream_timeout");
    sim.set_faults(Faults::default());
    assert_expected(&good, &run(&pool, good.clone()).await.unwrap());
    assert_eq!(sim.stats().connections_total, 1);
    sim.stop().await;
}

#[actix_web::test]
async fn a_requester_that_goes_away_cancels_its_fetch_queued_or_in_flight() {
    // One slot and a feed slower than the test: one fetch in flight, three queued behind it.
    let sim = start_sim(|s| s.faults.latency_ms = 10_000).await;
    let pool = start_pool(
        &sim,
        settings(|s| {
            s.pool.max_connections = 1;
            s.pool.requests_per_connection = 1;
            s.upstream.request_timeout_ms = 30_000;
        }),
    );
    // `send` hands the message over at once; the futures hold the reply channels.
    let waiting: Vec<_> = batch(4, 0).into_iter().map(|r| pool.send(r)).collect();
    wait_for_pool(
        &pool,
        Duration::from_secs(5),
        "never saw 1 in flight, 3 queued",
        |s| s.in_flight == 1 && s.queued == 3,
    )
    .await;

    // Every requester goes away: nothing is left, the fetch in flight was aborted rather than
    // answered, and the queued ones never reached the feed.
    drop(waiting);
    let stats = wait_for_pool(
        &pool,
        Duration::from_secs(5),
        "abandoned fetches still held",
        |s| s.in_flight == 0 && s.queued == 0,
    )
    .await;
    assert_eq!(stats.served_total, 0);
    assert_eq!(
        sim.stats().symbols_resolved,
        1,
        "only the dispatched fetch reached the feed"
    );

    // Its slot is free again: the next fetch goes out on the same connection.
    sim.set_faults(Faults::default());
    let req = fetch("NSE:TCS", Resolution::Day, 20);
    assert_expected(&req, &run(&pool, req.clone()).await.unwrap());
    assert_eq!(sim.stats().connections_total, 1);
    sim.stop().await;
}

/// What a connection reported, for the connection-level test.
enum Report {
    Ready,
    Ended(String),
    Done(u64, Result<Chart, FetchError>),
}

struct Collector(mpsc::UnboundedSender<Report>);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<ConnReady> for Collector {
    type Result = ();
    fn handle(&mut self, _: ConnReady, _: &mut Context<Self>) {
        let _ = self.0.send(Report::Ready);
    }
}

impl Handler<ConnEnded> for Collector {
    type Result = ();
    fn handle(&mut self, msg: ConnEnded, _: &mut Context<Self>) {
        let _ = self.0.send(Report::Ended(msg.reason.to_string()));
    }
}

impl Handler<FetchDone> for Collector {
    type Result = ();
    fn handle(&mut self, msg: FetchDone, _: &mut Context<Self>) {
        let chart = msg.result.map(|ready| ready.chart.clone());
        let _ = self.0.send(Report::Done(msg.fetch, chart));
    }
}

impl Handler<LiveRefused> for Collector {
    type Result = ();
    fn handle(&mut self, msg: LiveRefused, _: &mut Context<Self>) {
        let _ = self
            .0
            .send(Report::Ended(format!("live {} refused", msg.live)));
    }
}

#[actix_web::test]
async fn a_resolution_the_feed_refuses_is_a_series_error_for_that_fetch_only() {
    let sim = start_sim(|_| {}).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let collector = Collector(tx).start();
    let settings = settings(|_| {});
    let conn = Connection::new(
        1,
        settings,
        &sim.feed_url(),
        Secret::new(UNAUTHORIZED_USER_TOKEN),
        ConnectionEvents::to(&collector),
        ConnShared::new(actix::clock::Instant::now()),
    )
    .start();
    assert!(matches!(rx.recv().await, Some(Report::Ready)));
    let symbol: Symbol = "NSE:TCS".parse().unwrap();
    for (fetch, feed_resolution) in [(1, "1Y"), (2, "1D")] {
        conn.do_send(StartFetch {
            fetch,
            symbol: symbol.clone(),
            resolution: Resolution::Day,
            feed_resolution: feed_resolution.into(),
            bars: BarCount::new(25).unwrap(),
        });
    }
    let mut outcomes = Vec::new();
    while outcomes.len() < 2 {
        match rx.recv().await {
            Some(Report::Done(id, result)) => outcomes.push((id, result)),
            Some(Report::Ended(why)) => panic!("connection ended: {why}"),
            Some(Report::Ready) | None => panic!("unexpected report"),
        }
    }
    outcomes.sort_by_key(|(id, _)| *id);
    let err = outcomes[0].1.clone().unwrap_err();
    assert_eq!(err.code(), "series_error");
    assert!(err.to_string().contains("invalid resolution"), "{err}");
    let chart = outcomes[1].1.clone().unwrap();
    assert_eq!(chart.bars, *expected_bars("NSE:TCS", "1D", 25));
    sim.stop().await;
}

#[actix_web::test]
async fn a_rejected_fixed_token_makes_fetches_unavailable_not_hang() {
    let sim = start_sim(|_| {}).await;
    let pool = start_pool(
        &sim,
        settings(|s| {
            s.upstream.auth_token = Secret::new("aaa.bbb.ccc");
            s.manager.reconnect_backoff_ms = 10;
            s.manager.max_reconnect_attempts = 1;
        }),
    );
    let err = run(&pool, fetch("NSE:TCS", Resolution::Day, 10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "upstream_unavailable");
    assert!(!err.to_string().contains("aaa.bbb"), "{err}");
    assert_eq!(sim.stats().handshakes_rejected, 2);
    sim.stop().await;
}

#[actix_web::test]
async fn heartbeats_are_echoed_and_count_as_upstream_traffic() {
    let sim = start_sim(|s| s.heartbeat_secs = 1).await;
    let pool = start_pool(&sim, settings(|s| s.manager.stale_after_secs = 3));
    let req = fetch("NSE:ITC", Resolution::Day, 5);
    assert_expected(&req, &run(&pool, req.clone()).await.unwrap());
    assert!(
        wait_until(Duration::from_secs(3), || sim.stats().heartbeats_echoed
            >= 1)
        .await
    );
    let stats = sim.stats();
    assert!(
        stats.heartbeats_echoed + 1 >= stats.heartbeats_sent,
        "{stats:?}"
    );
    let pool_stats = pool.send(GetPoolStats).await.unwrap();
    assert_eq!(pool_stats.connections.len(), 1);
    assert_eq!(pool_stats.connections[0].state, "ready");
    assert_eq!(pool_stats.connections[0].last_upstream_secs, 0);
    assert_eq!(pool_stats.connections[0].served, 1);
    // The stats serialise as SPEC 3.4's `pool` object.
    let json = serde_json::to_value(&pool_stats).unwrap();
    for key in [
        "openConnections",
        "inFlight",
        "queued",
        "servedTotal",
        "connections",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert!(json["connections"][0].get("lastUpstreamSecs").is_some());
    sim.stop().await;
}
