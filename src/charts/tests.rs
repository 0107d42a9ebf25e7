//! The chart service against the simulator over loopback: single flight, independence of waiters, cancellation
//! when every waiter goes away, and failures that are not cached.

use std::net::TcpListener;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use futures_util::future::join_all;

use chartgate_simulator::{Faults, Simulator, expected_bars};

use super::ChartService;
use crate::cache::{Cache, ChartKey};
use crate::config::Settings;
use crate::domain::{BarCount, Resolution};
use crate::telemetry::Metrics;
use crate::upstream::{GetPoolStats, Pool, PoolStats, UpstreamTarget};

/// The pool's stats once `cond` holds; fails with `what` after `limit` of real time.
async fn pool_reaches(
    pool: &Addr<Pool>,
    limit: Duration,
    what: &str,
    cond: impl Fn(&PoolStats) -> bool,
) -> PoolStats {
    let watch = async {
        loop {
            match pool.send(GetPoolStats).await {
                Ok(stats) if cond(&stats) => return stats,
                _ => actix::clock::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    tokio::time::timeout(limit, watch)
        .await
        .unwrap_or_else(|_| panic!("{what}"))
}

struct Rig {
    sim: Simulator,
    pool: Addr<Pool>,
    charts: ChartService,
}

async fn rig(latency_ms: u64) -> Rig {
    let mut settings = Settings::default();
    settings.simulator.faults.latency_ms = latency_ms;
    let sim = Simulator::start(
        &settings.simulator,
        TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .await
    .unwrap();
    let target = UpstreamTarget {
        feed_url: sim.feed_url(),
        token_url: sim.token_url(),
    };
    let metrics = Metrics::new();
    let pool = Pool::new(Arc::new(settings.clone()), target, &metrics).start();
    let cache = Arc::new(Cache::new(&settings.cache, &metrics));
    let live = crate::live::Live::new(&settings, pool.clone(), cache.clone(), None, &metrics);
    let charts = ChartService::new(cache, pool.clone(), live, &metrics);
    Rig { sim, pool, charts }
}

fn key(symbol: &str) -> ChartKey {
    ChartKey {
        symbol: symbol.parse().unwrap(),
        resolution: Resolution::Day,
        bars: BarCount::new(50).unwrap(),
    }
}

#[actix_web::test]
async fn identical_requests_in_flight_are_fetched_once_then_cached() {
    let Rig { sim, charts, .. } = rig(100).await;
    let results = join_all((0..20).map(|_| charts.get(key("NSE:TCS")))).await;
    let expected = expected_bars("NSE:TCS", "1D", 50);
    for result in results {
        let (chart, cached) = result.unwrap();
        assert!(!cached);
        assert_eq!(chart.chart.bars, *expected);
    }
    assert_eq!(sim.stats().series_served, 1);
    let (_, cached) = charts.get(key("NSE:TCS")).await.unwrap();
    assert!(cached);
    assert_eq!(sim.stats().series_served, 1);
    sim.stop().await;
}

#[actix_web::test]
async fn a_waiter_that_stops_being_polled_does_not_hold_up_another() {
    let Rig { sim, charts, .. } = rig(200).await;
    // The first waiter starts the fetch, then is never polled again (a stream whose client stopped
    // reading), but stays alive.
    let mut stalled = pin!(charts.get(key("NSE:INFY")));
    assert!(futures_util::poll!(stalled.as_mut()).is_pending());
    let second = tokio::time::timeout(Duration::from_secs(5), charts.get(key("NSE:INFY"))).await;
    let (chart, _) = second.expect("the second waiter is not held up").unwrap();
    assert_eq!(chart.chart.bars, *expected_bars("NSE:INFY", "1D", 50));
    assert_eq!(sim.stats().series_served, 1, "one fetch served both");
    sim.stop().await;
}

#[actix_web::test]
async fn a_fetch_every_waiter_left_is_cancelled() {
    let Rig { sim, pool, charts } = rig(3_000).await;
    {
        let mut first = pin!(charts.get(key("NSE:SBIN")));
        let mut second = pin!(charts.get(key("NSE:SBIN")));
        assert!(futures_util::poll!(first.as_mut()).is_pending());
        assert!(futures_util::poll!(second.as_mut()).is_pending());
        pool_reaches(
            &pool,
            Duration::from_secs(2),
            "the fetch never reached the pool",
            |s| s.in_flight > 0,
        )
        .await;
    }
    // Both waiters are gone: the pool lets the fetch go well before the feed would answer.
    let stats = pool_reaches(
        &pool,
        Duration::from_millis(1_800),
        "the abandoned fetch is still held",
        |s| s.in_flight == 0 && s.queued == 0,
    )
    .await;
    assert_eq!(stats.served_total, 0);
    sim.stop().await;
}

#[actix_web::test]
async fn failures_are_not_cached() {
    let Rig { sim, charts, .. } = rig(0).await;
    sim.set_faults(Faults {
        unknown_symbols: vec!["NSE:ITC".into()],
        ..Faults::default()
    });
    let failure = charts.get(key("NSE:ITC")).await.unwrap_err();
    assert_eq!(failure.code, "unknown_symbol");
    sim.set_faults(Faults::default());
    let (chart, cached) = charts.get(key("NSE:ITC")).await.unwrap();
    assert!(!cached);
    assert_eq!(chart.chart.bars, *expected_bars("NSE:ITC", "1D", 50));
    sim.stop().await;
}
