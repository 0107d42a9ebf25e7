//! Single flight across instances: an identical chart fetch in flight anywhere is made once.
//!
//! Each instance's own single flight (`crate::charts`) already makes one fetch per chart per
//! instance; this is what that one fetch does when the cluster is up:
//!
//! 1. Read the shared tier. A hit ends it.
//! 2. Take the chart's lock (`SET NX PX`, [`super::lock`]) for `upstream.request_timeout_ms`.
//!    - The owner fetches from its pool, renewing the lock every third of its TTL while it does;
//!      then one script caches the chart, releases the lock (if still the owner's) and publishes
//!      the outcome on the chart's completion channel.
//!    - Any other instance registers for that channel's notice *before* it reads the tier again
//!      (a fetch that ended in between is then either seen in the tier or heard of), then waits
//!      for the notice, not polling, at most as long as the lock has left. `ok`: read the tier.
//!      A failure: the same failure, as local joiners of a failed fetch get it. No notice in
//!      time (the owner died and stopped renewing, so its lock expired): back to 1, and one of
//!      the waiters becomes the owner.
//! 3. With the link down at any step (or after a bounded number of rounds), fetch locally: no
//!    request fails because Redis does.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::lock::{self, Claim, Finish};
use super::{Cluster, Notice, keys};
use crate::cache::ChartKey;
use crate::charts::ChartFailure;
use crate::ready_chart::ReadyChart;

/// A fetch's outcome.
pub(crate) type Loaded = Result<Arc<ReadyChart>, ChartFailure>;

/// Where a chart that missed this instance's cache came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The shared tier had it.
    Shared,
    /// Another instance fetched it while this one waited.
    Joined,
    /// This instance fetched it from its pool.
    Fetched,
}

/// Rounds of "read, lock or wait" before fetching locally regardless: each round waits at most
/// one lock lifetime, so a pathological cluster costs a duplicate fetch, never a hang.
const MAX_ROUNDS: usize = 4;

/// Beyond a lock's remaining time, how long a waiter gives the owner's notice to arrive.
const NOTICE_SLACK: Duration = Duration::from_millis(250);

/// The failure of a fetch, as published to its waiters.
#[derive(Serialize, Deserialize)]
struct Failed {
    code: String,
    message: String,
}

/// The codes a published failure may carry; another code reads as `upstream_unavailable`.
const CODES: [&str; 8] = [
    "unknown_symbol",
    "series_error",
    "invalid_parameters",
    "upstream_timeout",
    "upstream_unavailable",
    "queue_full",
    "connection_lost",
    "unavailable",
];

fn message_of(outcome: &Loaded) -> String {
    match outcome {
        Ok(_) => "ok".into(),
        Err(f) => failure_json(f),
    }
}

/// A failure as published (`{"code","message"}`), read back by [`failure_of`].
pub(super) fn failure_json(f: &ChartFailure) -> String {
    serde_json::to_string(&Failed {
        code: f.code.into(),
        message: f.message.clone(),
    })
    .unwrap_or_default()
}

/// A published outcome: `None` for `ok` (read the tier), or the failure.
pub(super) fn failure_of(message: &str) -> Option<ChartFailure> {
    let failed: Failed = serde_json::from_str(message).ok()?;
    let code = CODES
        .iter()
        .find(|c| **c == failed.code)
        .copied()
        .unwrap_or("upstream_unavailable");
    Some(ChartFailure {
        code,
        message: failed.message,
    })
}

impl Cluster {
    /// The chart for `key`, fetched (by `fetch`, from this instance's pool) only when no
    /// instance has it or is fetching it. See the module doc.
    pub(crate) async fn load<F>(&self, key: &ChartKey, fetch: F) -> (Loaded, Source)
    where
        F: Fn() -> BoxFuture<'static, Loaded>,
    {
        let lock_key = keys::lock(key);
        let channel = keys::done(key);
        for _ in 0..MAX_ROUNDS {
            if !self.is_up() {
                break;
            }
            if let Some(chart) = self.cached_chart(key).await {
                return (Ok(chart), Source::Shared);
            }
            let token = lock::new_token(self.instance_id());
            let claim = {
                let (lock_key, token, ttl) = (lock_key.clone(), token.clone(), self.lock_ttl());
                self.run(|mut conn| async move {
                    lock::acquire(&mut conn, &lock_key, &token, ttl).await
                })
                .await
            };
            match claim {
                None => break,
                Some(Claim::Vanished) => continue,
                Some(Claim::Owner) => {
                    let mut owned = Owned {
                        cluster: self.clone(),
                        lock_key: lock_key.clone(),
                        token: token.clone(),
                        channel: channel.clone(),
                        finished: false,
                    };
                    let outcome = self.fetch_as_owner(&lock_key, &token, fetch()).await;
                    self.finish(key, &lock_key, &token, &channel, &outcome)
                        .await;
                    owned.finished = true;
                    return (outcome, Source::Fetched);
                }
                Some(Claim::Held { expires_in }) => {
                    let mut waiter = self.subscribe(channel.clone());
                    if let Some(chart) = self.cached_chart(key).await {
                        return (Ok(chart), Source::Shared);
                    }
                    let within = expires_in.min(self.lock_ttl()) + NOTICE_SLACK;
                    match waiter.wait(within).await {
                        Some(Notice::Done(message)) => {
                            if let Some(failure) = failure_of(&message) {
                                return (Err(failure), Source::Joined);
                            }
                            if let Some(chart) = self.cached_chart(key).await {
                                return (Ok(chart), Source::Joined);
                            }
                            // Announced but not readable (evicted, or a write that failed):
                            // another round, which may make this instance the owner.
                        }
                        Some(Notice::LinkDown) => break,
                        // The owner went quiet: its lock has expired or is about to.
                        None => {}
                    }
                }
            }
        }
        let outcome = fetch().await;
        if let Ok(chart) = &outcome {
            self.store_chart(key, chart);
        }
        (outcome, Source::Fetched)
    }

    /// Runs the fetch while renewing the lock every third of its lifetime, so the lock outlives a
    /// slow fetch (a queue in the pool) but not its owner.
    async fn fetch_as_owner(
        &self,
        lock_key: &str,
        token: &str,
        fetch: BoxFuture<'static, Loaded>,
    ) -> Loaded {
        let ttl = self.lock_ttl();
        let renewing = async {
            let mut every = tokio::time::interval(ttl / 3);
            every.tick().await;
            loop {
                every.tick().await;
                let (lock_key, token) = (lock_key.to_string(), token.to_string());
                let renewed =
                    self.run(|mut conn| async move {
                        lock::renew(&mut conn, &lock_key, &token, ttl).await
                    })
                    .await;
                if renewed != Some(true) {
                    // Lost (expired and taken over) or Redis is down: keep fetching, stop
                    // renewing; the result is still cached and announced.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            outcome = fetch => outcome,
            _ = renewing => unreachable_fetch(),
        }
    }

    /// Caches the chart (if fetched), releases the lock, tells the waiters: one round trip.
    async fn finish(
        &self,
        key: &ChartKey,
        lock_key: &str,
        token: &str,
        channel: &str,
        outcome: &Loaded,
    ) {
        let entries = outcome.as_ref().ok().map(|c| Self::chart_entries(key, c));
        let (lock_key, token, channel) =
            (lock_key.to_string(), token.to_string(), channel.to_string());
        let message = message_of(outcome);
        let ttl = self.cache_ttl();
        let _ = self
            .run(|mut conn| async move {
                let chart = entries
                    .as_ref()
                    .map(|[(ok, ov), (ck, cv)]| [(ok.as_str(), &ov[..]), (ck.as_str(), &cv[..])]);
                lock::finish(
                    &mut conn,
                    Finish {
                        lock_key: &lock_key,
                        token: &token,
                        chart,
                        ttl,
                        channel: &channel,
                        message: &message,
                    },
                )
                .await
            })
            .await;
    }

    /// Caches a chart fetched without the lock (not waited for); waiters, if any, are told.
    pub(crate) fn store_chart(&self, key: &ChartKey, chart: &ReadyChart) {
        let entries = Self::chart_entries(key, chart);
        let (lock_key, channel, ttl) = (keys::lock(key), keys::done(key), self.cache_ttl());
        self.run_detached(move |mut conn| async move {
            let [(ok, ov), (ck, cv)] = &entries;
            lock::finish(
                &mut conn,
                Finish {
                    lock_key: &lock_key,
                    token: "",
                    chart: Some([(ok.as_str(), &ov[..]), (ck.as_str(), &cv[..])]),
                    ttl,
                    channel: &channel,
                    message: "ok",
                },
            )
            .await
            .map(|_| ())
        });
    }
}

/// A lock this instance owns, released when its fetch is abandoned (every local waiter left, and
/// the fetch's task was dropped) rather than left to expire: the waiters elsewhere are told at
/// once ("abandoned" reads as "look again"), and one of them takes over.
struct Owned {
    cluster: Cluster,
    lock_key: String,
    token: String,
    channel: String,
    /// Set once [`Cluster::finish`] ran: nothing left to do.
    finished: bool,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let lock_key = std::mem::take(&mut self.lock_key);
        let token = std::mem::take(&mut self.token);
        let channel = std::mem::take(&mut self.channel);
        let ttl = self.cluster.cache_ttl();
        self.cluster.run_detached(move |mut conn| async move {
            lock::finish(
                &mut conn,
                Finish {
                    lock_key: &lock_key,
                    token: &token,
                    chart: None,
                    ttl,
                    channel: &channel,
                    message: "abandoned",
                },
            )
            .await
            .map(|_| ())
        });
    }
}

/// The renewal loop never ends; this keeps `select!` typed without a panic.
fn unreachable_fetch() -> Loaded {
    Err(ChartFailure {
        code: "unavailable",
        message: "the chart fetch ended without an answer".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_the_notice() {
        let failed: Loaded = Err(ChartFailure {
            code: "unknown_symbol",
            message: "NSE:NOPE is not a symbol the feed knows".into(),
        });
        let message = message_of(&failed);
        assert_eq!(failure_of(&message), failed.err());
        assert_eq!(failure_of("ok"), None);
        assert_eq!(
            failure_of(r#"{"code":"strange","message":"m"}"#).map(|f| f.code),
            Some("upstream_unavailable")
        );
    }
}
