//! Leases, the idle timer and expiry, against a pool connected to the simulator over loopback.
//!
//! Time is paused once the simulator is up, so minutes of idle timeout take milliseconds. The
//! simulator runs on its own worker threads in real time; while a test waits for it, it spins on
//! `yield_now` (which lets the actors and the I/O driver run without advancing the paused clock),
//! because an idle runtime with paused time would jump its clock to the next timer.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rand::Rng;

use chartgate::config::Settings;
use chartgate::manager::{
    Acquire, ForceCleanup, GetManagerStats, Health, Manager, ManagerStats, Release, Renew,
    acquire_implicit,
};
use chartgate::telemetry::Metrics;
use chartgate::upstream::{Pool, UpstreamTarget};
use chartgate_simulator::Simulator;
use chartgate_simulator::SimulatorSettings;

struct Rig {
    sim: Simulator,
    manager: Addr<Manager>,
}

async fn rig(configure: impl FnOnce(&mut Settings)) -> Rig {
    let _ = env_logger::builder().is_test(true).try_init();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let sim = Simulator::start(&SimulatorSettings::default(), listener)
        .await
        .expect("start the simulator");
    tokio::time::pause();
    let mut s = Settings::default();
    s.manager.idle_timeout_secs = 300;
    s.manager.lease_ttl_secs = 60;
    // Virtual minutes pass without the simulator's (real-time) heartbeats: no stale checks here.
    s.manager.stale_after_secs = 1_000_000;
    configure(&mut s);
    let settings = Arc::new(s);
    let pool = Pool::new(
        settings.clone(),
        UpstreamTarget {
            feed_url: sim.feed_url(),
            token_url: sim.token_url(),
        },
        &Metrics::new(),
    )
    .start();
    let manager = Manager::new(settings, pool, &Metrics::new()).start();
    Rig { sim, manager }
}

/// Lets actors and sockets make progress (real time, paused clock) until `cond` holds.
async fn settle(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..5_000 {
        if cond() {
            return true;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

async fn stats(manager: &Addr<Manager>) -> ManagerStats {
    manager
        .send(GetManagerStats)
        .await
        .expect("manager answers")
}

/// Waits (real time, paused clock) until the pool has `n` authenticated connections, so that no
/// later `advance` fires a connect timeout while the hello is still on the wire.
async fn ready_connections(manager: &Addr<Manager>, n: usize) -> bool {
    for _ in 0..5_000 {
        if stats(manager).await.pool.open_connections == n {
            return true;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[actix_web::test]
async fn idle_timer_closes_connections_and_a_new_lease_cancels_it() {
    let Rig { sim, manager } = rig(|_| {}).await;

    let lease = manager.send(Acquire { explicit: false }).await.unwrap();
    assert_eq!(lease.ref_count, 1);
    assert_eq!(lease.ttl_secs, 0);
    // A lease keeps the pool warm: one connection opens without any fetch.
    assert!(ready_connections(&manager, 1).await);
    assert_eq!(sim.stats().connections_open, 1);

    assert_eq!(
        manager
            .send(Release {
                lease_id: lease.lease_id.clone()
            })
            .await
            .unwrap(),
        0
    );
    let s = stats(&manager).await;
    assert!(s.has_idle_timer);
    assert_eq!(s.idle_closes_in_secs, Some(300));
    assert_eq!(s.ref_count, 0);
    // Release is idempotent.
    assert_eq!(
        manager
            .send(Release {
                lease_id: lease.lease_id
            })
            .await
            .unwrap(),
        0
    );

    tokio::time::advance(Duration::from_secs(299)).await;
    let s = stats(&manager).await;
    assert_eq!(s.idle_closes_in_secs, Some(1));
    assert_eq!(s.pool.open_connections, 1);
    assert_eq!(sim.stats().connections_open, 1);

    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(settle(|| sim.stats().connections_open == 0).await);
    let s = stats(&manager).await;
    assert!(!s.has_idle_timer);
    assert_eq!(s.pool.open_connections, 0);
    assert_eq!(s.health, Health::Idle);
    assert!(!s.is_active);

    // Again, but a new lease arrives while the timer runs.
    let first = acquire_implicit(&manager).unwrap();
    assert!(ready_connections(&manager, 1).await);
    drop(first);
    assert_eq!(sim.stats().connections_total, 2);
    tokio::time::advance(Duration::from_secs(100)).await;
    assert!(stats(&manager).await.has_idle_timer);
    let second = acquire_implicit(&manager).unwrap();
    let s = stats(&manager).await;
    assert!(!s.has_idle_timer);
    assert_eq!(s.idle_closes_in_secs, None);
    assert_eq!(s.ref_count, 1);
    assert_eq!(s.health, Health::Healthy);
    tokio::time::advance(Duration::from_secs(400)).await;
    let s = stats(&manager).await;
    assert_eq!(s.pool.open_connections, 1);
    assert_eq!(sim.stats().connections_open, 1);
    assert_eq!(sim.stats().connections_total, 2);
    drop(second);
    sim.stop().await;
}

#[actix_web::test]
async fn an_unrenewed_lease_expires_and_a_renewed_one_does_not() {
    let Rig { sim, manager } = rig(|s| s.manager.idle_timeout_secs = 0).await;
    let lease = manager.send(Acquire { explicit: true }).await.unwrap();
    assert_eq!(lease.ttl_secs, 60);
    assert!(ready_connections(&manager, 1).await);

    tokio::time::advance(Duration::from_secs(45)).await;
    let renewed = manager
        .send(Renew {
            lease_id: lease.lease_id.clone(),
        })
        .await
        .unwrap()
        .expect("still alive");
    assert_eq!(renewed.ref_count, 1);
    tokio::time::advance(Duration::from_secs(45)).await;
    assert_eq!(stats(&manager).await.ref_count, 1, "renewal extended it");

    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(stats(&manager).await.ref_count, 0, "expired");
    assert_eq!(
        manager
            .send(Renew {
                lease_id: lease.lease_id
            })
            .await
            .unwrap(),
        None
    );
    // idle_timeout_secs = 0: the last lease going closes the connections at once.
    assert!(settle(|| sim.stats().connections_open == 0).await);
    sim.stop().await;
}

#[actix_web::test]
async fn force_cleanup_drops_every_lease_and_connection() {
    let Rig { sim, manager } = rig(|_| {}).await;
    for _ in 0..3 {
        manager.send(Acquire { explicit: true }).await.unwrap();
    }
    let guard = acquire_implicit(&manager).unwrap();
    assert_eq!(stats(&manager).await.ref_count, 4);
    assert!(ready_connections(&manager, 1).await);
    manager.send(ForceCleanup).await.unwrap();
    let s = stats(&manager).await;
    assert_eq!(s.ref_count, 0);
    assert!(!s.has_idle_timer);
    assert!(settle(|| sim.stats().connections_open == 0).await);
    // The guard's later release is harmless.
    drop(guard);
    assert_eq!(stats(&manager).await.ref_count, 0);
    sim.stop().await;
}

#[actix_web::test]
async fn a_thousand_concurrent_leases_some_aborted_leave_nothing_behind() {
    let Rig { sim, manager } = rig(|s| s.manager.idle_timeout_secs = 5).await;
    let mut handles = Vec::with_capacity(1_000);
    let mut rng = rand::rng();
    for _ in 0..1_000 {
        let manager = manager.clone();
        let hold: u32 = rng.random_range(0..6);
        handles.push(actix_web::rt::spawn(async move {
            let guard = acquire_implicit(&manager).expect("manager answers");
            for _ in 0..hold {
                tokio::task::yield_now().await;
            }
            drop(guard);
        }));
    }
    // Abort about a third of them at random points: before they start, while acquiring, or
    // while holding the lease.
    let mut aborted = 0;
    for handle in &handles {
        if rng.random_bool(0.33) {
            for _ in 0..rng.random_range(0..4) {
                tokio::task::yield_now().await;
            }
            handle.abort();
            aborted += 1;
        }
    }
    assert!(aborted > 0);
    for handle in handles {
        let _ = handle.await;
    }
    // Releases are queued ahead of this request in the manager's mailbox.
    let s = stats(&manager).await;
    assert_eq!(s.ref_count, 0, "refCount back to zero");
    assert!(s.has_idle_timer);

    // The idle timeout closes whatever the leases kept warm.
    assert!(ready_connections(&manager, 1).await);
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(settle(|| sim.stats().connections_open == 0).await);
    let s = stats(&manager).await;
    assert_eq!(s.ref_count, 0);
    assert_eq!(s.pool.open_connections, 0);
    sim.stop().await;
}
