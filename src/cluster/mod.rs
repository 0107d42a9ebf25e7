//! Several instances as one service (SPEC 7): their shared state on Redis. With
//! `cluster.redis_url` empty none of this runs and chartgate is the single process it always was.
//!
//! - [`link`]: the Redis link's supervision, a pure state machine (`Connecting`, `Up`, `Down`
//!   with a capped backoff) that the supervisor task here carries out.
//! - [`membership`]: which instances are alive (an expiring announcement, renewed).
//! - [`tier`]: the shared cache tier behind each instance's in-memory cache: charts in both bars
//!   formats, formula stock lists, with `cache.ttl_secs`.
//! - [`lock`] and [`flight`]: single flight across instances: an owner-checked expiring lock per
//!   chart fetch, a completion notice on pub/sub, takeover when an owner dies.
//! - [`budget`]: the cluster-wide upstream connection budget: expiring permits, one per upstream
//!   connection, renewed with the membership, released with a notice to those waiting.
//! - [`live`]: one live series in the cluster: the owner's lock and stream of updates, and the
//!   reader relaying them into the other instances' series.
//! - [`keys`]: every key and channel, all under `chartgate:`.
//!
//! Runtimes: actix-web runs one single-threaded runtime per worker, and the `redis` crate spawns
//! its connection's driver task, and any reconnection, with `tokio::spawn` on whichever runtime
//! the command that needed it runs on. A reconnect triggered from a worker would put the new
//! connection's driver on that worker. So the client, its `ConnectionManager` and the supervisor
//! are made once at start-up on the system runtime (which lives as long as the server), and every
//! command runs there too (`Cluster::run` hands it over with the runtime's `Handle`): each
//! worker holds a cloned handle, no worker owns a connection, and a worker that stops takes no
//! connection with it. The hop costs a few microseconds per command.
//!
//! Redis down is a mode, not an error: while the link is not `Up` every operation answers "not
//! available" at once without touching the network, callers fall back to this instance's own
//! state, and no request fails or waits because of Redis.

pub mod budget;
pub mod flight;
pub mod keys;
pub mod link;
pub mod live;
pub mod lock;
pub mod membership;
pub mod tier;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::config::Settings;
use crate::telemetry::Metrics;
use crate::upstream::backoff::Backoff;

use self::link::{Announce, Link, Next};

/// How long connecting (the announcement and the subscription) may take, and one command.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A duration in whole milliseconds, at least 1, as Redis's `PX`/`PEXPIRE` and the scripts take
/// them.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `"cluster"` in `/api/connections/stats` (SPEC 3.4), present when `cluster.redis_url` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStats {
    pub instance_id: String,
    /// Live instances, this one included (the last count seen while Redis is down).
    pub instances: u64,
    /// Upstream connections in the whole cluster while Redis is up (the live permits); while it
    /// is down, this instance's.
    pub upstream_connections: usize,
    /// Upstream connections allowed across the cluster: `cluster.max_upstream_connections`; when
    /// that is 0, the current token's `max_connections` claim, else `pool.max_connections`.
    /// Enforced across instances with expiring permits ([`budget`]).
    pub budget: usize,
    /// `ok` while the shared state is in use, `down` while this instance serves from its own.
    #[schema(pattern = "^(ok|down)$")]
    pub redis: String,
}

/// What a waiter for another instance's fetch is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The fetch ended; the message says how (`ok`, or the failure as JSON).
    Done(String),
    /// The link went down: no notice can come; fall back to local work.
    LinkDown,
}

/// What this instance is told when it asks for an upstream connection's permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Granted in Redis; renewed by the supervisor until released.
    Granted,
    /// The budget is spent; the earliest permit lapses in `retry_in` unless renewed (a release
    /// is announced before then).
    Refused { retry_in: Duration },
    /// Redis is not up: decide from this instance's share ([`Cluster::local_share`]).
    Unavailable,
}

/// A handle on the cluster's shared state; cheap to clone, shared by every worker.
#[derive(Clone)]
pub struct Cluster(Arc<Inner>);

struct Inner {
    instance_id: String,
    /// `cluster.max_upstream_connections` (0: derived, see [`ClusterStats::budget`]).
    configured_budget: usize,
    /// `pool.max_connections`, the budget when neither the setting nor a token claim says.
    pool_max: usize,
    /// For logs: the URL without its password.
    url_redacted: String,
    /// The password, to scrub from any error text before it is logged.
    password: Option<String>,
    client: redis::Client,
    /// Made on the system runtime; commands run there ([`Cluster::run`]).
    conn: ConnectionManager,
    system: tokio::runtime::Handle,
    /// `true` while the link is `Up` (the supervisor's state, for lock-free reads).
    up: AtomicBool,
    /// Live instances, as last counted.
    instances: AtomicU64,
    /// `chartgate_cluster_redis_up` (1 while the link is up) and `chartgate_cluster_instances`.
    up_gauge: metrics::Gauge,
    instances_gauge: metrics::Gauge,
    /// `chartgate_cluster_redis_down_total`: episodes of the link going down.
    down_total: metrics::Counter,
    cache_ttl: Duration,
    /// A fetch's lock lifetime: `upstream.request_timeout_ms` (renewed while the fetch runs).
    lock_ttl: Duration,
    /// Membership announcements' lifetime (renewed every third of it).
    member_ttl: Duration,
    /// `cluster.live_lease_secs`: a live series' ownership lifetime (renewed every third of it).
    live_lease: Duration,
    /// The permits this instance holds (granted in Redis, or locally while it was down), renewed
    /// every third of their lease.
    permits: Mutex<HashSet<String>>,
    /// Waiters for completion notices, by channel.
    waiters: Mutex<Waiters>,
    /// A command failed: the supervisor checks the link now rather than at its next tick.
    trouble: Notify,
    stop: watch::Sender<bool>,
    /// Whether the link is up, for those who act when it changes (the live registry).
    link: watch::Sender<bool>,
    /// Owned live series' entries, to the publisher task ([`live`]).
    publish: mpsc::UnboundedSender<live::Outgoing>,
    /// The live series this instance relays from their owners' streams.
    relays: Mutex<live::Relays>,
    /// A relay was added: the reader reads its stream too.
    relays_changed: Notify,
    /// An owner handed a relayed series off.
    handoffs: Notify,
}

#[derive(Default)]
struct Waiters {
    next_id: u64,
    by_channel: HashMap<String, Vec<(u64, oneshot::Sender<Notice>)>>,
}

/// A registration for one channel's next notice; unregisters itself when dropped, so a waiter
/// that gave up leaves nothing behind.
pub(crate) struct Waiter {
    cluster: Cluster,
    channel: String,
    id: u64,
    rx: oneshot::Receiver<Notice>,
}

impl Waiter {
    /// The notice, or `None` after `within`.
    pub(crate) async fn wait(&mut self, within: Duration) -> Option<Notice> {
        match tokio::time::timeout(within, &mut self.rx).await {
            Ok(Ok(notice)) => Some(notice),
            // The sender went without a word: only when the registry dropped it, i.e. link down.
            Ok(Err(_)) => Some(Notice::LinkDown),
            Err(_) => None,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiters = self.cluster.waiters();
        if let Some(list) = waiters.by_channel.get_mut(&self.channel) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                waiters.by_channel.remove(&self.channel);
            }
        }
    }
}

/// The host name and process id, for `cluster.instance_id` left empty.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(48)
        .collect();
    let host = if host.is_empty() { "host".into() } else { host };
    format!("{host}-{}", std::process::id())
}

/// The password part of `scheme://user:password@host...`, if any.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = &rest[..rest.rfind('@')?];
    let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
    (!password.is_empty()).then(|| password.to_string())
}

impl Cluster {
    /// Connects the cluster when `cluster.redis_url` is set (`None` otherwise), inside the
    /// current actix system, whose runtime must outlive the server (the system runtime: see the
    /// module doc). Redis need not be up: the link comes up when it is.
    pub fn start(settings: &Settings, metrics: &Metrics) -> std::io::Result<Option<Cluster>> {
        let cluster = &settings.cluster;
        if !cluster.enabled() {
            return Ok(None);
        }
        let url_redacted = cluster.redis_url_redacted();
        let url = cluster.redis_url.expose();
        if url.starts_with("rediss://") {
            // rustls picks the ring provider the workspace builds with; installing it says so
            // explicitly (a provider already installed is kept).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(url).map_err(|_| {
            std::io::Error::other(format!("cluster.redis_url {url_redacted} is not usable"))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            // The supervisor backs off; a command fails at once instead of retrying.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|_| std::io::Error::other("cannot set up the Redis connection manager"))?;
        let instance_id = if cluster.instance_id.is_empty() {
            default_instance_id()
        } else {
            cluster.instance_id.clone()
        };
        let (stop, stopped) = watch::channel(false);
        let (publish, published) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            instance_id,
            configured_budget: cluster.max_upstream_connections,
            pool_max: settings.pool.max_connections,
            url_redacted,
            password: url_password(url),
            client,
            conn,
            system: tokio::runtime::Handle::current(),
            up: AtomicBool::new(false),
            instances: AtomicU64::new(1),
            up_gauge: metrics.gauge("chartgate_cluster_redis_up"),
            instances_gauge: metrics.gauge("chartgate_cluster_instances"),
            down_total: metrics.counter("chartgate_cluster_redis_down_total", &[]),
            cache_ttl: Duration::from_secs(settings.cache.ttl_secs.max(1)),
            lock_ttl: Duration::from_millis(settings.upstream.request_timeout_ms.max(1)),
            member_ttl: Duration::from_secs(settings.manager.stale_after_secs.max(3)),
            live_lease: Duration::from_secs(cluster.live_lease_secs.max(1)),
            permits: Mutex::default(),
            waiters: Mutex::default(),
            trouble: Notify::new(),
            stop,
            link: watch::Sender::new(false),
            publish,
            relays: Mutex::default(),
            relays_changed: Notify::new(),
            handoffs: Notify::new(),
        });
        let backoff = Backoff::new(
            Duration::from_millis(settings.manager.reconnect_backoff_ms.max(50)),
            0,
        );
        log::info!(
            "cluster: instance {} joining through Redis at {}",
            inner.instance_id,
            inner.url_redacted,
        );
        let cluster = Cluster(inner);
        actix_web::rt::spawn(cluster.clone().publish(published));
        actix_web::rt::spawn(cluster.clone().read_relays(stopped.clone()));
        actix_web::rt::spawn(cluster.clone().supervise(Link::new(backoff), stopped));
        Ok(Some(cluster))
    }

    pub fn instance_id(&self) -> &str {
        &self.0.instance_id
    }

    /// Whether the shared state is in use now.
    pub fn is_up(&self) -> bool {
        self.0.up.load(Ordering::SeqCst)
    }

    pub(crate) fn cache_ttl(&self) -> Duration {
        self.0.cache_ttl
    }

    pub(crate) fn lock_ttl(&self) -> Duration {
        self.0.lock_ttl
    }

    /// The budget: the setting, else the token's claim (`token_claim`), else `pool.max_connections`.
    pub fn budget(&self, token_claim: Option<usize>) -> usize {
        match self.0.configured_budget {
            0 => token_claim.unwrap_or(self.0.pool_max),
            n => n,
        }
    }

    /// The `cluster` object of the stats; counts the members and the live permits afresh while
    /// the link is up.
    pub async fn stats(&self, pool: &crate::upstream::PoolStats) -> ClusterStats {
        let counted = self
            .run(|mut conn| async move {
                let members = membership::count(&mut conn).await?;
                let permits = budget::count(&mut conn, keys::PERMITS).await?;
                Ok((members, permits))
            })
            .await;
        let mut upstream_connections = pool.open_connections;
        if let Some((members, permits)) = counted {
            self.set_instances(members);
            upstream_connections = usize::try_from(permits).unwrap_or(usize::MAX);
        }
        ClusterStats {
            instance_id: self.0.instance_id.clone(),
            instances: self.0.instances.load(Ordering::Relaxed),
            upstream_connections,
            budget: self.budget(pool.token_max_connections),
            redis: if self.is_up() { "ok" } else { "down" }.into(),
        }
    }

    /// How long a permit lives unless renewed: `manager.stale_after_secs` (at least 3 s), the
    /// membership's lifetime, renewed with it.
    pub(crate) fn permit_lease(&self) -> Duration {
        self.0.member_ttl
    }

    /// How long a live series' owner holds it unless renewed: `cluster.live_lease_secs`.
    pub(crate) fn live_lease(&self) -> Duration {
        self.0.live_lease
    }

    /// Asks Redis for the permit of this instance's connection `conn`, within `limit` permits
    /// cluster-wide.
    pub(crate) async fn acquire_permit(&self, conn: u64, limit: usize) -> Permit {
        let id = budget::permit_id(&self.0.instance_id, conn);
        let lease = self.permit_lease();
        let asked = id.clone();
        let grant = self
            .run(|mut c| async move {
                budget::acquire(&mut c, keys::PERMITS, &asked, limit, lease).await
            })
            .await;
        match grant {
            Some(budget::Grant::Granted { .. }) => {
                self.held_permits().insert(id);
                Permit::Granted
            }
            Some(budget::Grant::Refused { retry_in }) => Permit::Refused { retry_in },
            None => Permit::Unavailable,
        }
    }

    /// Records a permit granted from this instance's share while Redis was down: renewed (so
    /// counted in Redis) once the link is back.
    pub(crate) fn hold_locally(&self, conn: u64) {
        self.held_permits()
            .insert(budget::permit_id(&self.0.instance_id, conn));
    }

    /// Gives the permit of `conn` back and tells the instances waiting for one. Redis down: the
    /// permit, no longer renewed, lapses after its lease.
    pub(crate) fn release_permit(&self, conn: u64) {
        let id = budget::permit_id(&self.0.instance_id, conn);
        self.held_permits().remove(&id);
        self.run_detached(|mut c| async move {
            budget::release(&mut c, keys::PERMITS, keys::PERMITS_FREED, &[id]).await?;
            Ok(())
        });
    }

    /// Registers for the next released permit anywhere in the cluster; registered before asking,
    /// so a release between a refusal and the wait is not missed.
    pub(crate) fn permit_freed(&self) -> Waiter {
        self.subscribe(keys::PERMITS_FREED.to_string())
    }

    /// This instance's share of `budget` while Redis is down: split evenly by the last known
    /// instance count.
    pub(crate) fn local_share(&self, budget: usize) -> usize {
        budget::local_share(budget, self.0.instances.load(Ordering::Relaxed))
    }

    fn held_permits(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0
            .permits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a Redis command on the system runtime; `None` when the link is not up or the command
    /// failed (the failure is logged without secrets at debug level, and the supervisor checks the
    /// link).
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        if !self.is_up() {
            return None;
        }
        let command = op(self.0.conn.clone());
        match self.0.system.spawn(command).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                log::debug!("cluster: a Redis command failed: {}", self.scrub(&e));
                self.0.trouble.notify_one();
                None
            }
            Err(_) => None,
        }
    }

    /// Like [`Cluster::run`], not waited for (a cache write nobody needs the answer of).
    pub(crate) fn run_detached<F, Fut>(&self, op: F)
    where
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: Future<Output = redis::RedisResult<()>> + Send + 'static,
    {
        if !self.is_up() {
            return;
        }
        let cluster = self.clone();
        let command = op(self.0.conn.clone());
        self.0.system.spawn(async move {
            if let Err(e) = command.await {
                log::debug!("cluster: a Redis write failed: {}", cluster.scrub(&e));
                cluster.0.trouble.notify_one();
            }
        });
    }

    /// Registers for the next notice on `channel`. Registered before the caller re-checks the
    /// cache, so a notice published between that check and the wait is not missed (the pattern
    /// subscription is in place whenever the link is up). A link that is down answers `LinkDown`
    /// at once.
    pub(crate) fn subscribe(&self, channel: String) -> Waiter {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut waiters = self.waiters();
            waiters.next_id += 1;
            let id = waiters.next_id;
            waiters
                .by_channel
                .entry(channel.clone())
                .or_default()
                .push((id, tx));
            id
        };
        let mut waiter = Waiter {
            cluster: self.clone(),
            channel,
            id,
            rx,
        };
        // After registering: a supervisor that goes down drains the registry after clearing
        // `up`, so either it drains this waiter or this check sees it down.
        if !self.is_up() {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Notice::LinkDown);
            waiter.rx = rx;
        }
        waiter
    }

    /// Gives back this instance's permits and leaves the membership at once (a graceful stop),
    /// then stops the supervisor.
    pub async fn stop(&self) {
        let id = self.0.instance_id.clone();
        let permits: Vec<String> = self.held_permits().drain().collect();
        let _ = tokio::time::timeout(
            COMMAND_TIMEOUT,
            self.run(|mut conn| async move {
                if !permits.is_empty() {
                    budget::release(&mut conn, keys::PERMITS, keys::PERMITS_FREED, &permits)
                        .await?;
                }
                membership::leave(&mut conn, &id).await
            }),
        )
        .await;
        let _ = self.0.stop.send(true);
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.0
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An error's text with the URL's password, should it appear, replaced.
    fn scrub(&self, e: &dyn std::fmt::Display) -> String {
        let text = e.to_string();
        match &self.0.password {
            Some(p) => text.replace(p.as_str(), "***"),
            None => text,
        }
    }

    /// Records a member count.
    fn set_instances(&self, n: u64) {
        self.0.instances.store(n, Ordering::Relaxed);
        self.0.instances_gauge.set(n as f64);
    }

    fn set_up(&self, up: bool) {
        self.0.up.store(up, Ordering::SeqCst);
        self.0.up_gauge.set(if up { 1.0 } else { 0.0 });
        self.0
            .link
            .send_if_modified(|was| std::mem::replace(was, up) != up);
        if !up {
            let drained = std::mem::take(&mut self.waiters().by_channel);
            for (_, list) in drained {
                for (_, tx) in list {
                    let _ = tx.send(Notice::LinkDown);
                }
            }
        }
    }

    /// Hands a published notice to the waiters of its channel.
    fn dispatch(&self, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        let Some(list) = self.waiters().by_channel.remove(channel) else {
            return;
        };
        let payload: String = msg.get_payload().unwrap_or_default();
        for (_, tx) in list {
            let _ = tx.send(Notice::Done(payload.clone()));
        }
    }

    fn announce(&self, say: Option<Announce>) {
        let id = &self.0.instance_id;
        let url = &self.0.url_redacted;
        match say {
            Some(Announce::Connected) => {
                log::info!("cluster: Redis at {url} connected; instance {id} shares its state");
            }
            Some(Announce::WentDown { reason }) => {
                self.0.down_total.increment(1);
                log::warn!(
                    "cluster: Redis at {url} is down ({}); instance {id} serves from its own state and reconnects with backoff",
                    self.scrub(&reason)
                )
            }
            Some(Announce::Back { attempts }) => log::info!(
                "cluster: Redis at {url} is back after {attempts} failed attempts; instance {id} shares its state again"
            ),
            None => {}
        }
    }

    /// The supervisor: carries out what [`Link`] decides, until stopped.
    async fn supervise(self, mut link: Link, mut stopped: watch::Receiver<bool>) {
        let mut next = Next::Connect;
        let mut subscription: Option<(PubSubSink, PubSubStream)> = None;
        loop {
            if *stopped.borrow() {
                self.set_up(false);
                return;
            }
            next = match next {
                Next::Connect => match self.connect().await {
                    Ok(sub) => {
                        subscription = Some(sub);
                        let (next, say) = link.connected();
                        self.set_up(true);
                        self.announce(say);
                        next
                    }
                    Err(reason) => {
                        log::debug!("cluster: connecting to Redis failed: {reason}");
                        let (next, say) = link.failed(&reason);
                        self.set_up(false);
                        self.announce(say);
                        next
                    }
                },
                Next::Watch => {
                    let reason = match subscription.take() {
                        Some(sub) => self.watch(sub, &mut stopped).await,
                        None => "no subscription".into(),
                    };
                    if *stopped.borrow() {
                        self.set_up(false);
                        return;
                    }
                    let (next, say) = link.failed(&reason);
                    self.set_up(false);
                    self.announce(say);
                    next
                }
                Next::Wait(delay) => {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped.changed() => {}
                    }
                    link.retry_due()
                }
            };
        }
    }

    /// Announces this instance (which is also the PING), renews its permits, and subscribes to
    /// completion notices and released permits.
    async fn connect(&self) -> Result<(PubSubSink, PubSubStream), String> {
        let inner = &self.0;
        let attempt = async {
            let mut conn = inner.conn.clone();
            let n = membership::announce(&mut conn, &inner.instance_id, inner.member_ttl)
                .await
                .map_err(|e| self.scrub(&e))?;
            self.set_instances(n);
            self.renew_permits(&mut conn)
                .await
                .map_err(|e| self.scrub(&e))?;
            let mut pubsub = inner
                .client
                .get_async_pubsub()
                .await
                .map_err(|e| self.scrub(&e))?;
            pubsub
                .psubscribe(keys::DONE_PATTERN)
                .await
                .map_err(|e| self.scrub(&e))?;
            pubsub
                .subscribe(keys::PERMITS_FREED)
                .await
                .map_err(|e| self.scrub(&e))?;
            Ok(pubsub.split())
        };
        tokio::time::timeout(COMMAND_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    }

    /// Renews this instance's permits for one lease (re-adding any granted locally while Redis was
    /// down).
    async fn renew_permits(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        let permits: Vec<String> = self.held_permits().iter().cloned().collect();
        if !permits.is_empty() {
            budget::renew(conn, keys::PERMITS, &permits, self.permit_lease()).await?;
        }
        Ok(())
    }

    /// While up: relays notices, renews the announcement and the permits every third of their TTL, checks the
    /// link when a command failed. Returns why the link is no longer usable.
    async fn watch(
        &self,
        (mut sink, mut stream): (PubSubSink, PubSubStream),
        stopped: &mut watch::Receiver<bool>,
    ) -> String {
        let inner = &self.0;
        let mut renew = tokio::time::interval(inner.member_ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.dispatch(&msg),
                    None => return "the subscription connection closed".into(),
                },
                _ = renew.tick() => {
                    let mut conn = inner.conn.clone();
                    let check = async {
                        let n = membership::announce(&mut conn, &inner.instance_id, inner.member_ttl).await?;
                        self.renew_permits(&mut conn).await?;
                        sink.ping::<redis::Value>().await?;
                        Ok::<u64, redis::RedisError>(n)
                    };
                    match tokio::time::timeout(COMMAND_TIMEOUT, check).await {
                        Ok(Ok(n)) => self.set_instances(n),
                        Ok(Err(e)) => return self.scrub(&e),
                        Err(_) => return "Redis did not answer in time".into(),
                    }
                }
                _ = inner.trouble.notified() => {
                    let mut conn = inner.conn.clone();
                    let ping_cmd = redis::cmd("PING");
                    let ping = ping_cmd.query_async::<String>(&mut conn);
                    match tokio::time::timeout(COMMAND_TIMEOUT, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return self.scrub(&e),
                        Err(_) => return "Redis did not answer in time".into(),
                    }
                }
                _ = stopped.changed() => return "stopping".into(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_found_for_scrubbing() {
        assert_eq!(url_password("redis://:pw@h:1/0").as_deref(), Some("pw"));
        assert_eq!(url_password("rediss://u:p@ss@h").as_deref(), Some("p@ss"));
        assert_eq!(url_password("redis://h:6379"), None);
    }

    #[test]
    fn the_default_instance_id_is_a_valid_one() {
        let id = default_instance_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())));
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        );
    }
}
