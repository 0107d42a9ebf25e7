//! The lease manager actor: why upstream connections stay open.
//!
//! A lease is a reason to keep the pool warm. Every HTTP request holds an implicit one for its
//! duration (a [`LeaseGuard`] that releases on drop, so a client that goes away releases its lease
//! even when the handler's future is simply dropped); `POST /api/connections/acquire` holds an
//! explicit one that expires unless renewed within `manager.lease_ttl_secs`.
//!
//! `refCount` is the number of live leases, nothing else: it cannot go negative or leak because it
//! is the size of a map keyed by lease id, and release is a removal (so idempotent). When it falls
//! to 0 an idle timer of `manager.idle_timeout_secs` starts; a new lease cancels it; when it fires
//! the pool closes every connection. A periodic health check turns the pool's numbers into
//! `healthy | degraded | down | idle`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;
use serde::Serialize;

use crate::config::Settings;
use crate::log_duration::LogDuration;
use crate::telemetry::Metrics;
use crate::upstream::{CloseAll, GetPoolStats, KeepWarm, Pool, PoolStats};

/// Take a lease. An explicit lease lasts until released, force-cleanup or `lease_ttl_secs`
/// without renewal; an implicit one has no expiry (its holder releases it, see [`LeaseGuard`]).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "LeaseInfo")]
pub struct Acquire {
    pub explicit: bool,
}

/// Extend an explicit lease by `lease_ttl_secs`; `None` when it is unknown or expired.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Option<LeaseInfo>")]
pub struct Renew {
    pub lease_id: String,
}

/// Drop a lease; idempotent. Answers the refCount after it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "usize")]
pub struct Release {
    pub lease_id: String,
}

/// Drop every lease and close every connection at once.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct ForceCleanup;

/// What `/api/connections/stats` shows (without the cache, which the HTTP layer adds).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ManagerStats")]
pub struct GetManagerStats;

/// Takes a lease under an id chosen by the caller, so the caller holds the release guard before
/// the manager has seen the acquire (see [`acquire_implicit`]).
#[derive(Debug, Clone, Message)]
#[rtype(result = "LeaseInfo")]
struct AcquireWithId {
    lease_id: String,
    explicit: bool,
}

/// A lease as `acquire` and `renew` answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, MessageResponse, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseInfo {
    pub lease_id: String,
    /// Seconds until an explicit lease expires unless renewed; 0 for an implicit lease.
    pub ttl_secs: u64,
    pub ref_count: usize,
}

/// Connection health as the stats route reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Connections work (or would be opened on demand) and no reconnect episode is running.
    Healthy,
    /// Reconnect attempts are under way.
    Degraded,
    /// Every reconnect attempt of the episode failed; fetches fail fast.
    Down,
    /// No lease and no work: nothing to be healthy for.
    Idle,
}

impl Health {
    fn of(ref_count: usize, pool: &PoolStats) -> Health {
        if pool.down {
            Health::Down
        } else if ref_count == 0 && pool.in_flight == 0 && pool.queued == 0 {
            Health::Idle
        } else if pool.reconnect_attempts > 0 {
            Health::Degraded
        } else {
            Health::Healthy
        }
    }
}

/// The manager's part of `/api/connections/stats` (SPEC 3.4), the pool's included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, MessageResponse, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagerStats {
    pub is_active: bool,
    pub ref_count: usize,
    pub health: Health,
    pub reconnect_attempts: u32,
    pub has_idle_timer: bool,
    /// Seconds until the idle timer closes the connections, when it runs; `null` otherwise.
    #[schema(required = true)]
    pub idle_closes_in_secs: Option<u64>,
    pub pool: PoolStats,
}

struct Lease {
    explicit: bool,
    /// Expiry timer of an explicit lease, replaced on renewal.
    timer: Option<SpawnHandle>,
}

struct IdleTimer {
    handle: SpawnHandle,
    fires_at: Instant,
}

/// The manager actor. See the module documentation.
pub struct Manager {
    /// `chartgate_leases`: the refCount, for dashboards.
    leases_gauge: metrics::Gauge,
    settings: Arc<Settings>,
    pool: Addr<Pool>,
    leases: HashMap<String, Lease>,
    idle: Option<IdleTimer>,
    /// Health at the last check, to log changes only.
    last_health: Option<Health>,
    /// A `CloseAll` is on its way to the pool: the health check must not read the pool's
    /// pre-close numbers as connections left open without a lease.
    closing: usize,
}

impl Manager {
    pub fn new(settings: Arc<Settings>, pool: Addr<Pool>, metrics: &Metrics) -> Manager {
        Manager {
            settings,
            pool,
            leases_gauge: metrics.gauge("chartgate_leases"),
            leases: HashMap::new(),
            idle: None,
            last_health: None,
            closing: 0,
        }
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.settings.manager.lease_ttl_secs)
    }

    fn info(&self, lease_id: &str, explicit: bool) -> LeaseInfo {
        LeaseInfo {
            lease_id: lease_id.to_string(),
            ttl_secs: if explicit {
                self.settings.manager.lease_ttl_secs
            } else {
                0
            },
            ref_count: self.leases.len(),
        }
    }

    fn expiry_timer(&self, lease_id: String, ctx: &mut Context<Self>) -> SpawnHandle {
        let ttl = self.ttl();
        ctx.run_later(ttl, move |act, ctx| {
            log::info!(
                "manager: lease expired (not renewed for {})",
                LogDuration(ttl)
            );
            act.release(&lease_id, ctx);
        })
    }

    fn acquire(&mut self, lease_id: String, explicit: bool, ctx: &mut Context<Self>) -> LeaseInfo {
        if let Some(existing) = self.leases.get(&lease_id) {
            // The same id twice (a retried request): one lease.
            return self.info(&lease_id, existing.explicit);
        }
        let timer = explicit.then(|| self.expiry_timer(lease_id.clone(), ctx));
        self.leases
            .insert(lease_id.clone(), Lease { explicit, timer });
        let count = self.leases.len();
        self.leases_gauge.set(count as f64);
        if explicit || count == 1 {
            log::info!("manager: lease acquired (refCount: {count})");
        } else {
            log::debug!("manager: lease acquired (refCount: {count})");
        }
        if count == 1 {
            if let Some(idle) = self.idle.take() {
                ctx.cancel_future(idle.handle);
                log::info!("manager: idle timer cancelled by a new lease");
            }
            self.pool.do_send(KeepWarm);
        }
        self.info(&lease_id, explicit)
    }

    fn release(&mut self, lease_id: &str, ctx: &mut Context<Self>) -> usize {
        let Some(lease) = self.leases.remove(lease_id) else {
            return self.leases.len();
        };
        if let Some(timer) = lease.timer {
            ctx.cancel_future(timer);
        }
        let count = self.leases.len();
        self.leases_gauge.set(count as f64);
        log::debug!("manager: lease released (refCount: {count})");
        if count == 0 {
            self.start_idle_timer(ctx);
        }
        count
    }

    fn start_idle_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(idle) = self.idle.take() {
            ctx.cancel_future(idle.handle);
        }
        let secs = self.settings.manager.idle_timeout_secs;
        if secs == 0 {
            log::info!("manager: last lease released, closing connections now");
            self.close_pool("last lease released", ctx);
            return;
        }
        let after = Duration::from_secs(secs);
        log::info!(
            "manager: last lease released, closing connections in {}",
            LogDuration(after)
        );
        let handle = ctx.run_later(after, |act, ctx| {
            act.idle = None;
            act.close_pool("idle timeout", ctx);
        });
        self.idle = Some(IdleTimer {
            handle,
            fires_at: Instant::now() + after,
        });
    }

    fn close_pool(&mut self, why: &'static str, ctx: &mut Context<Self>) {
        self.closing += 1;
        ctx.spawn(
            self.pool
                .send(CloseAll)
                .into_actor(self)
                .map(move |closed, act, _| {
                    act.closing = act.closing.saturating_sub(1);
                    match closed {
                        Ok(n) => log::info!("manager: {why}, closed {n} connections"),
                        Err(e) => log::warn!("manager: {why}, but the pool did not answer: {e}"),
                    }
                }),
        );
    }

    fn stats(&self, pool: PoolStats) -> ManagerStats {
        let ref_count = self.leases.len();
        let idle_closes_in_secs = self.idle.as_ref().map(|idle| {
            let left = idle.fires_at.saturating_duration_since(Instant::now());
            left.as_secs() + u64::from(left.subsec_nanos() > 0)
        });
        ManagerStats {
            is_active: ref_count > 0 || pool.open_connections > 0,
            ref_count,
            health: Health::of(ref_count, &pool),
            reconnect_attempts: pool.reconnect_attempts,
            has_idle_timer: self.idle.is_some(),
            idle_closes_in_secs,
            pool,
        }
    }

    fn health_check(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(
            self.pool
                .send(GetPoolStats)
                .into_actor(self)
                .map(|pool, act, ctx| {
                    let Ok(pool) = pool else {
                        log::error!("manager: health check: the pool does not answer");
                        return;
                    };
                    let ref_count = act.leases.len();
                    let health = Health::of(ref_count, &pool);
                    if act.last_health != Some(health) {
                        log::info!(
                            "manager: health {health:?} ({} connections open, {} in flight, {} queued, {} reconnect attempts)",
                            pool.open_connections,
                            pool.in_flight,
                            pool.queued,
                            pool.reconnect_attempts
                        );
                        act.last_health = Some(health);
                    }
                    // A pool that went down ends its episode only on a new request; live
                    // followers waiting for their series are one, every health check.
                    if pool.down && pool.live_waiting > 0 {
                        log::info!(
                            "manager: pool down with {} live subscriptions waiting; trying again",
                            pool.live_waiting
                        );
                        act.pool.do_send(KeepWarm);
                    }
                    // Connections opened with no lease (or left over) still get closed.
                    if ref_count == 0
                        && act.idle.is_none()
                        && act.closing == 0
                        && pool.open_connections > 0
                        && pool.in_flight == 0
                        && pool.queued == 0
                    {
                        act.start_idle_timer(ctx);
                    }
                }),
        );
    }
}

impl Actor for Manager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = Duration::from_secs(self.settings.manager.health_check_interval_secs.max(1));
        ctx.run_interval(every, |act, ctx| act.health_check(ctx));
    }
}

impl Handler<Acquire> for Manager {
    type Result = LeaseInfo;

    fn handle(&mut self, msg: Acquire, ctx: &mut Context<Self>) -> LeaseInfo {
        self.acquire(new_lease_id(), msg.explicit, ctx)
    }
}

impl Handler<AcquireWithId> for Manager {
    type Result = LeaseInfo;

    fn handle(&mut self, msg: AcquireWithId, ctx: &mut Context<Self>) -> LeaseInfo {
        self.acquire(msg.lease_id, msg.explicit, ctx)
    }
}

impl Handler<Renew> for Manager {
    type Result = Option<LeaseInfo>;

    fn handle(&mut self, msg: Renew, ctx: &mut Context<Self>) -> Option<LeaseInfo> {
        let explicit = self.leases.get(&msg.lease_id)?.explicit;
        if explicit {
            let timer = self.expiry_timer(msg.lease_id.clone(), ctx);
            if let Some(lease) = self.leases.get_mut(&msg.lease_id)
                && let Some(old) = lease.timer.replace(timer)
            {
                ctx.cancel_future(old);
            }
        }
        Some(self.info(&msg.lease_id, explicit))
    }
}

impl Handler<Release> for Manager {
    type Result = usize;

    fn handle(&mut self, msg: Release, ctx: &mut Context<Self>) -> usize {
        self.release(&msg.lease_id, ctx)
    }
}

impl Handler<ForceCleanup> for Manager {
    type Result = ();

    fn handle(&mut self, _: ForceCleanup, ctx: &mut Context<Self>) {
        let dropped = self.leases.len();
        for (_, lease) in self.leases.drain() {
            if let Some(timer) = lease.timer {
                ctx.cancel_future(timer);
            }
        }
        if let Some(idle) = self.idle.take() {
            ctx.cancel_future(idle.handle);
        }
        self.leases_gauge.set(0.0);
        log::info!("manager: force cleanup, dropped {dropped} leases");
        self.close_pool("force cleanup", ctx);
    }
}

impl Handler<GetManagerStats> for Manager {
    type Result = ResponseActFuture<Self, ManagerStats>;

    fn handle(&mut self, _: GetManagerStats, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.pool
                .send(GetPoolStats)
                .into_actor(self)
                .map(|pool, act, _| {
                    let pool = pool.unwrap_or_else(|_| PoolStats {
                        down: true,
                        ..PoolStats::default()
                    });
                    act.stats(pool)
                }),
        )
    }
}

/// 128 random bits, hex.
fn new_lease_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// An implicit lease, held for as long as this value lives: dropping it (the request finished,
/// or its future was dropped because the client went away) releases the lease.
pub struct LeaseGuard {
    lease_id: String,
    manager: Addr<Manager>,
}

impl LeaseGuard {
    pub fn lease_id(&self) -> &str {
        &self.lease_id
    }
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeaseGuard({})", self.lease_id)
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        // `do_send` ignores the mailbox bound and keeps order behind the acquire, so the release
        // is never lost and never overtakes its acquire.
        self.manager.do_send(Release {
            lease_id: std::mem::take(&mut self.lease_id),
        });
    }
}

/// Takes an implicit lease for the duration of a request, without waiting for the manager.
///
/// A request needs the lease counted, not answered: the acquire and the guard's release go
/// through the manager's mailbox in order (both ignore its bound), so the release never overtakes
/// the acquire, and a stats request sent after this is answered with the lease counted. Not
/// waiting keeps a round trip to the manager's thread off the path to a stream's first event.
/// Fails only when the manager has stopped.
pub fn acquire_implicit(manager: &Addr<Manager>) -> Result<LeaseGuard, ManagerStopped> {
    if !manager.connected() {
        return Err(ManagerStopped);
    }
    let guard = LeaseGuard {
        lease_id: new_lease_id(),
        manager: manager.clone(),
    };
    manager.do_send(AcquireWithId {
        lease_id: guard.lease_id.clone(),
        explicit: false,
    });
    Ok(guard)
}

/// The manager actor is gone (the service is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the connection manager is not running")]
pub struct ManagerStopped;
