//! Waiting on the pool's own numbers, with a deadline, for tests that watch it change state.
//!
//! Shared by the test binaries (`mod common;`); not every binary uses every helper.
#![allow(dead_code)]

use std::time::Duration;

use tokio::time::Instant;

use actix::Addr;

use chartgate::upstream::{GetPoolStats, Pool, PoolStats};

/// Polls the pool's stats every 20 ms until `cond` holds, failing the test with `what` and the
/// last stats after `limit`.
pub async fn wait_for_pool(
    pool: &Addr<Pool>,
    limit: Duration,
    what: &str,
    cond: impl Fn(&PoolStats) -> bool,
) -> PoolStats {
    let deadline = Instant::now() + limit;
    loop {
        let stats = pool.send(GetPoolStats).await.expect("the pool answers");
        if cond(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats:?}");
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
}
