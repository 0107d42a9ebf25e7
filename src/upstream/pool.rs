//! The pool actor: owns the upstream connections, the timers and the token fetches, and carries
//! out what its `policy` decides.
//!
//! Every decision (when to open a connection, which one takes a fetch, what to retry, how long
//! to back off, when the pool is down, which connection rotates next) is made by
//! `policy::PoolPolicy`, a state machine with no I/O. This actor turns what happens (a fetch
//! message, a connection's report, a timer, the token page's answer, a requester going away) into
//! `policy::Event`s, and the `policy::Command`s that come back into actions: starting
//! connection actors on the pool's threads, sending them fetches, answering requesters,
//! `run_later` timers, log lines and metrics.
//!
//! With a cluster, a connection the policy opens first waits for a permit of the cluster-wide
//! budget ([`crate::cluster::budget`]): the connection actor starts only once it is granted, and
//! meanwhile the policy sees the connection `Connecting` (it counts against this instance's cap
//! and nothing else changes). Refused, it waits for a released permit (a notice) or the earliest
//! permit's lapse, then asks again. The permit goes back when the connection ends or is closed.
//! Redis down: this instance's share of the budget is granted locally.
//!
//! A requester that goes away is noticed through the reply channel itself: the pool keeps the
//! sending half of actix's reply channel for each pending fetch (the one the requester's `send`
//! future waits on) and registers a waker for its closing, so dropping that future reaches the
//! pool at once, with no sweep over pending fetches.

mod policy;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, Wake, Waker};
use std::time::Duration;

use actix::clock::Instant;
use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;
use futures_util::Stream;
use tokio::sync::mpsc;

use self::policy::{
    Command, Config, ConnId, ConnState, Event, FetchId, FetchResult, Notice, PoolPolicy, Timer,
};
use super::connection::{
    CancelFetch, ConnEnded, ConnReady, ConnShared, Connection, ConnectionEvents, EndReason,
    FetchDone, LiveRefused, Shutdown, StartFetch, StartLive, StopLive,
};
use super::token::{AuthToken, TokenProvider};
use super::{
    CloseAll, ConnectionStats, FetchChart, FetchError, GetPoolStats, KeepWarm, PoolStats,
    SubscribeLive, UnsubscribeLive, UpstreamTarget,
};
use crate::charts::ChartFailure;
use crate::cluster::{Cluster, Permit};
use crate::config::Settings;
use crate::live::{LiveId, LiveTarget};
use crate::log_duration::LogDuration;
use crate::telemetry::Metrics;

/// A connection actor, from its start until it reports its end.
struct ConnHandle {
    addr: Addr<Connection>,
    /// Last-traffic time, written by the connection, read for stale checks and stats.
    shared: Arc<ConnShared>,
}

/// Where a connection stands with the cluster-wide budget, from `Command::Open` until it ends.
enum PermitState {
    /// Asking for a permit or waiting for one; the future doing so (or the timer of the next
    /// local try), cancelled if the connection is closed first.
    Waiting(SpawnHandle),
    /// Granted in Redis: the connection runs; the cluster renews the permit.
    Held,
    /// Granted from this instance's share while Redis was down.
    Local,
}

/// While Redis is down and this instance's share is spent: how often a waiting connection asks
/// again.
const LOCAL_RETRY: Duration = Duration::from_millis(250);

/// The longest a refused connection waits for a release notice before asking again.
const MAX_PERMIT_WAIT: Duration = Duration::from_secs(5);

/// Whoever waits for a fetch, until it is answered or goes away.
struct Requester {
    req: FetchChart,
    /// The sending half of the requester's reply channel.
    reply: OneshotSender<FetchResult>,
    /// Registered with `reply` for its closing (see [`ReplyWatch`]).
    watch: Waker,
    /// For the latency histogram.
    accepted: Instant,
}

/// Wakes the pool for one pending fetch when its requester drops the receiving half.
struct ReplyWatch {
    fetch: FetchId,
    closed: mpsc::UnboundedSender<FetchId>,
}

impl Wake for ReplyWatch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.closed.send(self.fetch);
    }
}

/// A reply channel may have closed (its requester went away).
struct ReplyClosed(FetchId);

/// The ids [`ReplyWatch`]es send, as a stream the pool handles.
struct ClosedReplies(mpsc::UnboundedReceiver<FetchId>);

impl Stream for ClosedReplies {
    type Item = ReplyClosed;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<ReplyClosed>> {
        self.0.poll_recv(cx).map(|id| id.map(ReplyClosed))
    }
}

/// The pool actor. See the module documentation.
pub struct Pool {
    settings: Arc<Settings>,
    target: UpstreamTarget,
    /// Reference point for the connections' last-traffic clocks.
    epoch: Instant,
    provider: TokenProvider,
    policy: PoolPolicy,
    /// The token new connections present; the policy knows only its claims.
    token: Option<AuthToken>,
    conns: HashMap<ConnId, ConnHandle>,
    requesters: HashMap<FetchId, Requester>,
    next_fetch: FetchId,
    /// Live subscriptions wanted, with the feed each one's updates go into.
    live: HashMap<LiveId, LiveTarget>,
    /// Pending timers the policy asked for.
    timers: HashMap<Timer, SpawnHandle>,
    /// Reused for the commands of each event.
    commands: Vec<Command>,
    closed_tx: mpsc::UnboundedSender<FetchId>,
    /// Taken in `started()`, where it becomes a stream of the actor.
    closed_rx: Option<mpsc::UnboundedReceiver<FetchId>>,
    /// Threads the connections run on, one per core, started with the pool: decoding a feed's
    /// answers is the pool's heaviest work, and a request of hundreds of charts that all answer at
    /// once should not wait for one thread.
    threads: Vec<Arbiter>,
    metrics: Metrics,
    fetch_seconds: metrics::Histogram,
    /// `chartgate_charts_fetched_total{outcome="ok"}`, taken once: the outcome of nearly every
    /// fetch (the rarer outcomes are looked up when they happen).
    fetched_ok: metrics::Counter,
    /// With `cluster.redis_url` set: the budget's permits come from here.
    cluster: Option<Cluster>,
    /// Each connection's permit (only with a cluster).
    permits: HashMap<ConnId, PermitState>,
    /// The log said this instance uses its local share (Redis down); said once per episode.
    local_said: bool,
}

impl Pool {
    pub fn new(settings: Arc<Settings>, upstream: UpstreamTarget, metrics: &Metrics) -> Pool {
        let provider = TokenProvider::from_settings(&settings, &upstream.token_url);
        let now = Instant::now();
        let policy = PoolPolicy::new(
            Config::from_settings(&settings, provider.can_refresh()),
            now,
        );
        let (closed_tx, closed_rx) = mpsc::unbounded_channel();
        Pool {
            settings,
            target: upstream,
            epoch: now,
            provider,
            policy,
            token: None,
            conns: HashMap::new(),
            requesters: HashMap::new(),
            next_fetch: 1,
            live: HashMap::new(),
            timers: HashMap::new(),
            commands: Vec::new(),
            closed_tx,
            closed_rx: Some(closed_rx),
            threads: Vec::new(),
            metrics: metrics.clone(),
            fetch_seconds: metrics.histogram("chartgate_chart_fetch_seconds"),
            fetched_ok: metrics.counter("chartgate_charts_fetched_total", &[("outcome", "ok")]),
            cluster: None,
            permits: HashMap::new(),
            local_said: false,
        }
    }

    /// Opens connections only within the cluster-wide budget of `cluster`.
    pub fn with_cluster(mut self, cluster: Option<Cluster>) -> Pool {
        self.cluster = cluster;
        self
    }

    /// Hands `event` to the policy and carries out what it decides.
    fn feed(&mut self, event: Event, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut commands = std::mem::take(&mut self.commands);
        self.policy.handle(now, event, &mut commands);
        for command in commands.drain(..) {
            self.carry_out(command, now, ctx);
        }
        self.commands = commands;
    }

    fn carry_out(&mut self, command: Command, now: Instant, ctx: &mut Context<Self>) {
        match command {
            Command::Open { conn } => match self.cluster {
                Some(_) => self.ask_permit(conn, ctx),
                None => self.open_connection(conn, ctx),
            },
            Command::Dispatch { fetch, conn } => {
                if self
                    .requesters
                    .get(&fetch)
                    .is_some_and(|r| r.reply.is_closed())
                {
                    // Gone, its notice not yet handled (requesters often leave together): the
                    // fetch goes no further than the connection's slot, which it gives back.
                    self.requesters.remove(&fetch);
                    self.feed(Event::RequesterGone { fetch }, ctx);
                    return;
                }
                if let (Some(r), Some(c)) = (self.requesters.get(&fetch), self.conns.get(&conn)) {
                    c.addr.do_send(StartFetch {
                        fetch,
                        symbol: r.req.symbol.clone(),
                        resolution: r.req.resolution,
                        feed_resolution: r.req.resolution.as_str().to_string(),
                        bars: r.req.bars,
                    });
                }
            }
            Command::Answer { fetch, result } => self.answer(fetch, result, now),
            Command::StartLive { live, conn } => {
                if let (Some(target), Some(c)) = (self.live.get(&live), self.conns.get(&conn)) {
                    c.addr.do_send(StartLive {
                        live,
                        target: target.clone(),
                    });
                }
            }
            Command::StopLive { live, conn } => {
                if let Some(c) = self.conns.get(&conn) {
                    c.addr.do_send(StopLive { live });
                }
            }
            Command::CancelFetch { fetch, conn } => {
                if let Some(c) = self.conns.get(&conn) {
                    c.addr.do_send(CancelFetch { fetch });
                }
            }
            Command::Shutdown { conn } => {
                if let Some(c) = self.conns.get(&conn) {
                    c.addr.do_send(Shutdown);
                } else if matches!(self.permits.get(&conn), Some(PermitState::Waiting(_))) {
                    // Closed while it waited for a permit: it ends without having started.
                    self.end_permit(conn, ctx);
                    let reason = EndReason::Closed;
                    self.feed(Event::ConnEnded { conn, reason }, ctx);
                }
            }
            Command::Schedule { timer, at } => {
                let after = at.saturating_duration_since(now);
                if timer == Timer::TokenRefresh {
                    log::debug!("pool: auth token refresh due in {}", LogDuration(after));
                }
                let handle = ctx.run_later(after, move |act, ctx| {
                    act.timers.remove(&timer);
                    act.feed(Event::TimerFired(timer), ctx);
                });
                if let Some(old) = self.timers.insert(timer, handle) {
                    ctx.cancel_future(old);
                }
            }
            Command::CancelTimer(timer) => {
                if let Some(handle) = self.timers.remove(&timer) {
                    ctx.cancel_future(handle);
                }
            }
            Command::RequestToken => self.request_token(ctx),
            Command::Notice(notice) => report(notice, &self.metrics),
        }
    }

    /// Asks the cluster for the permit of `conn`; see the module doc.
    fn ask_permit(&mut self, conn: ConnId, ctx: &mut Context<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            self.open_connection(conn, ctx);
            return;
        };
        let limit = cluster.budget(self.token.as_ref().and_then(|t| t.max_connections));
        let asking = async move {
            let mut told = false;
            loop {
                // Registered before asking: a release between the refusal and the wait counts.
                let mut freed = cluster.permit_freed();
                match cluster.acquire_permit(conn, limit).await {
                    Permit::Refused { retry_in } => {
                        if !told {
                            told = true;
                            log::info!(
                                "pool: connection {conn} waits for a permit: the cluster's {limit} upstream connections are in use"
                            );
                        }
                        let _ = freed.wait(retry_in.min(MAX_PERMIT_WAIT)).await;
                    }
                    answer => return answer,
                }
            }
        };
        let handle = ctx.spawn(
            asking
                .into_actor(self)
                .map(move |answer, act, ctx| act.permit_answered(conn, limit, answer, ctx)),
        );
        self.permits.insert(conn, PermitState::Waiting(handle));
    }

    /// What the cluster said about the permit of `conn`.
    fn permit_answered(
        &mut self,
        conn: ConnId,
        limit: usize,
        answer: Permit,
        ctx: &mut Context<Self>,
    ) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        if !matches!(self.permits.get(&conn), Some(PermitState::Waiting(_))) {
            // Closed meanwhile: whatever was granted goes back.
            cluster.release_permit(conn);
            return;
        }
        match answer {
            Permit::Granted => {
                self.local_said = false;
                self.permits.insert(conn, PermitState::Held);
                self.open_connection(conn, ctx);
            }
            // Only `Granted` and `Unavailable` end the asking; a refusal waits inside it.
            Permit::Refused { .. } | Permit::Unavailable => {
                let share = cluster.local_share(limit);
                let in_use = self
                    .permits
                    .values()
                    .filter(|p| !matches!(p, PermitState::Waiting(_)))
                    .count();
                if in_use < share {
                    if !self.local_said {
                        self.local_said = true;
                        log::warn!(
                            "pool: Redis is down; opening at most {share} upstream connections (the budget of {limit} split by the last known instance count)"
                        );
                    }
                    cluster.hold_locally(conn);
                    self.permits.insert(conn, PermitState::Local);
                    self.open_connection(conn, ctx);
                } else {
                    let handle = ctx.run_later(LOCAL_RETRY, move |act, ctx| {
                        act.ask_permit(conn, ctx);
                    });
                    self.permits.insert(conn, PermitState::Waiting(handle));
                }
            }
        }
    }

    /// The connection `conn` ended or was closed: its permit, if any, goes back.
    fn end_permit(&mut self, conn: ConnId, ctx: &mut Context<Self>) {
        let Some(state) = self.permits.remove(&conn) else {
            return;
        };
        if let PermitState::Waiting(handle) = state {
            ctx.cancel_future(handle);
        }
        if let Some(cluster) = &self.cluster {
            // A waiting one too: its grant may have been on its way.
            cluster.release_permit(conn);
        }
    }

    fn open_connection(&mut self, conn: ConnId, ctx: &mut Context<Self>) {
        let Some(token) = self.token.as_ref() else {
            // The policy opens only with a token, and the actor holds the one it knows of.
            self.end_permit(conn, ctx);
            let reason = EndReason::ConnectFailed("no auth token".into());
            self.feed(Event::ConnEnded { conn, reason }, ctx);
            return;
        };
        let shared = ConnShared::new(self.epoch);
        let (settings, url, secret) = (
            self.settings.clone(),
            self.target.feed_url.clone(),
            token.value.clone(),
        );
        let (events, conn_shared) = (ConnectionEvents::to(&ctx.address()), shared.clone());
        let thread = &self.threads[conn as usize % self.threads.len()];
        let addr = Connection::start_in_arbiter(&thread.handle(), move |_| {
            Connection::new(conn, settings, &url, secret, events, conn_shared)
        });
        self.conns.insert(conn, ConnHandle { addr, shared });
    }

    /// Answers a requester and records the fetch's outcome.
    fn answer(&mut self, fetch: FetchId, result: FetchResult, now: Instant) {
        let Some(requester) = self.requesters.remove(&fetch) else {
            return;
        };
        match &result {
            Ok(_) => self.fetched_ok.increment(1),
            Err(e) => self
                .metrics
                .counter("chartgate_charts_fetched_total", &[("outcome", e.code())])
                .increment(1),
        }
        // A fetch refused at the door never waited: it says nothing about fetch latency.
        if !matches!(result, Err(FetchError::QueueFull)) {
            self.fetch_seconds.record(
                now.saturating_duration_since(requester.accepted)
                    .as_secs_f64(),
            );
        }
        let _ = requester.reply.send(result);
    }

    /// Gets a token: at once for fixed and anonymous ones, from the token page otherwise.
    fn request_token(&mut self, ctx: &mut Context<Self>) {
        if let Some(token) = self.provider.immediate() {
            self.token_arrived(token, ctx);
            return;
        }
        let provider = self.provider.clone();
        ctx.spawn(async move { provider.fetch().await }.into_actor(self).map(
            |result, act, ctx| match result {
                Ok(token) => act.token_arrived(token, ctx),
                Err(e) => act.feed(
                    Event::TokenFailed {
                        reason: e.to_string(),
                    },
                    ctx,
                ),
            },
        ));
    }

    fn token_arrived(&mut self, token: AuthToken, ctx: &mut Context<Self>) {
        let event = Event::TokenArrived {
            max_connections: token.max_connections,
            refresh_in: token.refresh_in(),
        };
        self.token = Some(token);
        self.feed(event, ctx);
    }

    /// A fetch enters the pool with its requester's reply channel.
    fn accept(
        &mut self,
        req: FetchChart,
        mut reply: OneshotSender<FetchResult>,
        ctx: &mut Context<Self>,
    ) {
        let fetch = self.next_fetch;
        self.next_fetch += 1;
        let watch = Waker::from(Arc::new(ReplyWatch {
            fetch,
            closed: self.closed_tx.clone(),
        }));
        if reply
            .poll_closed(&mut std::task::Context::from_waker(&watch))
            .is_ready()
        {
            // Gone before it got in.
            return;
        }
        let requester = Requester {
            req,
            reply,
            watch,
            accepted: Instant::now(),
        };
        self.requesters.insert(fetch, requester);
        self.feed(Event::FetchWanted { fetch }, ctx);
    }

    /// Connections upstream has been silent on for `manager.stale_after_secs`.
    fn check_stale(&mut self, ctx: &mut Context<Self>) {
        let limit = Duration::from_secs(self.settings.manager.stale_after_secs);
        let stale: Vec<(ConnId, Duration)> = self
            .conns
            .iter()
            .map(|(&id, c)| (id, c.shared.quiet_for()))
            .filter(|(_, quiet)| *quiet >= limit)
            .collect();
        if !stale.is_empty() {
            self.feed(Event::ConnsStale(stale), ctx);
        }
    }
}

/// Log lines (SPEC section 5) and metrics for what the policy notices.
fn report(notice: Notice, metrics: &Metrics) {
    match notice {
        Notice::Connecting { conn } => log::debug!("pool: connection {conn} connecting"),
        Notice::Open {
            conn,
            authenticated_in,
        } => log::info!(
            "pool: connection {conn} open, authenticated in {} ms",
            authenticated_in.as_millis()
        ),
        Notice::Ended {
            conn,
            reason: EndReason::Closed,
        } => log::info!("pool: connection {conn} closed"),
        Notice::Ended { conn, reason } => log::warn!("pool: connection {conn} ended: {reason}"),
        Notice::Stale { conn, quiet } => log::info!(
            "pool: connection {conn} stale (no upstream traffic for {} s), replacing",
            quiet.as_secs()
        ),
        Notice::ReconnectScheduled {
            attempt,
            max,
            delay,
            reason,
        } => {
            metrics
                .counter("chartgate_upstream_reconnects_total", &[])
                .increment(1);
            log::info!(
                "pool: reconnect attempt {attempt}/{max} in {} ({reason})",
                LogDuration(delay)
            );
        }
        Notice::CapLearned { working, reason } => log::warn!(
            "pool: upstream refuses more than {working} connections ({reason}); staying at {working}"
        ),
        Notice::Down { message, failing } => {
            log::warn!("pool: upstream down: {message}; failing {failing} queued fetches");
        }
        Notice::ProbeAfterDown => {
            log::info!("pool: upstream was down; trying one connection for a new request");
        }
        Notice::TokenFailed { reason } => log::warn!("pool: could not get an auth token: {reason}"),
        Notice::Rotating { generation, old } => log::info!(
            "pool: new auth token (generation {generation}), moving {old} connections to it one at a time"
        ),
        Notice::Draining { conn, in_flight } => log::info!(
            "pool: connection {conn} draining for token rotation ({in_flight} in flight)"
        ),
        Notice::Cancelled { fetch } => {
            metrics
                .counter(
                    "chartgate_charts_fetched_total",
                    &[("outcome", "cancelled")],
                )
                .increment(1);
            log::debug!("pool: dropped fetch {fetch}: nobody waits for it");
        }
        Notice::LiveMoved {
            conn,
            series,
            quotes,
        } => log::info!(
            "live: connection {conn} gone, moving {series} live series and {quotes} quotes to other connections"
        ),
        Notice::OpenConnections(open) => {
            metrics
                .gauge("chartgate_upstream_connections_open")
                .set(open as f64);
        }
    }
}

impl Actor for Pool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.threads = (0..cores).map(|_| Arbiter::new()).collect();
        let stale_ms = self.settings.manager.stale_after_secs.saturating_mul(1000);
        let period = Duration::from_millis((stale_ms / 4).clamp(250, 5_000));
        ctx.run_interval(period, |act, ctx| act.check_stale(ctx));
        if let Some(closed) = self.closed_rx.take() {
            ctx.add_stream(ClosedReplies(closed));
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        for thread in &self.threads {
            thread.stop();
        }
    }
}

impl Handler<FetchChart> for Pool {
    type Result = Accept;

    fn handle(&mut self, msg: FetchChart, _: &mut Context<Self>) -> Accept {
        Accept(msg)
    }
}

/// A [`FetchChart`] on its way into the pool. The handler does not see the reply channel; its
/// response does, so the fetch enters the policy from here, with the channel the pool answers on
/// and watches.
pub struct Accept(FetchChart);

impl MessageResponse<Pool, FetchChart> for Accept {
    fn handle(self, ctx: &mut Context<Pool>, tx: Option<OneshotSender<FetchResult>>) {
        // `do_send`: nobody can receive the answer, so there is nothing to fetch for.
        let Some(tx) = tx else {
            return;
        };
        // A ready future that `wait` runs before the next message: fetches enter the queue in
        // the order they arrived, and a message after this one sees it queued.
        ctx.wait(
            actix::fut::ready(()).map(move |(), pool: &mut Pool, ctx: &mut Context<Pool>| {
                pool.accept(self.0, tx, ctx)
            }),
        );
    }
}

impl StreamHandler<ReplyClosed> for Pool {
    fn handle(&mut self, ReplyClosed(fetch): ReplyClosed, ctx: &mut Context<Self>) {
        let Some(r) = self.requesters.get_mut(&fetch) else {
            return;
        };
        let mut cx = std::task::Context::from_waker(&r.watch);
        if r.reply.poll_closed(&mut cx).is_pending() {
            return;
        }
        self.requesters.remove(&fetch);
        self.feed(Event::RequesterGone { fetch }, ctx);
    }
}

impl Handler<ConnReady> for Pool {
    type Result = ();

    fn handle(&mut self, msg: ConnReady, ctx: &mut Context<Self>) {
        let event = Event::ConnReady {
            conn: msg.conn,
            authenticated_in: msg.authenticated_in,
        };
        self.feed(event, ctx);
    }
}

impl Handler<ConnEnded> for Pool {
    type Result = ();

    fn handle(&mut self, msg: ConnEnded, ctx: &mut Context<Self>) {
        self.conns.remove(&msg.conn);
        self.end_permit(msg.conn, ctx);
        let event = Event::ConnEnded {
            conn: msg.conn,
            reason: msg.reason,
        };
        self.feed(event, ctx);
    }
}

impl Handler<FetchDone> for Pool {
    type Result = ();

    fn handle(&mut self, msg: FetchDone, ctx: &mut Context<Self>) {
        let event = Event::FetchDone {
            conn: msg.conn,
            fetch: msg.fetch,
            result: msg.result,
        };
        self.feed(event, ctx);
    }
}

impl Handler<SubscribeLive> for Pool {
    type Result = ();

    fn handle(&mut self, msg: SubscribeLive, ctx: &mut Context<Self>) {
        let series = msg.target.is_series();
        self.live.insert(msg.live, msg.target);
        self.feed(
            Event::LiveWanted {
                live: msg.live,
                series,
            },
            ctx,
        );
    }
}

impl Handler<UnsubscribeLive> for Pool {
    type Result = ();

    fn handle(&mut self, msg: UnsubscribeLive, ctx: &mut Context<Self>) {
        if self.live.remove(&msg.live).is_some() {
            self.feed(Event::LiveDropped { live: msg.live }, ctx);
        }
    }
}

impl Handler<LiveRefused> for Pool {
    type Result = ();

    /// The feed refused a live subscription (unknown symbol, series error): its followers drop
    /// it, and it is not placed again.
    fn handle(&mut self, msg: LiveRefused, ctx: &mut Context<Self>) {
        let Some(target) = self.live.remove(&msg.live) else {
            return;
        };
        let failure = ChartFailure::from(&msg.error);
        match target {
            LiveTarget::Series { feed, .. } => {
                log::info!(
                    "live: {} {} refused by the feed: {}",
                    feed.key.symbol,
                    feed.key.resolution.as_str(),
                    failure.message
                );
                feed.fail(failure);
            }
            LiveTarget::Quote { feed } => feed.fail(),
        }
        self.feed(Event::LiveDropped { live: msg.live }, ctx);
    }
}

impl Handler<KeepWarm> for Pool {
    type Result = ();

    fn handle(&mut self, _: KeepWarm, ctx: &mut Context<Self>) {
        self.feed(Event::KeepWarm, ctx);
    }
}

impl Handler<CloseAll> for Pool {
    type Result = usize;

    fn handle(&mut self, _: CloseAll, ctx: &mut Context<Self>) -> usize {
        let closed = self.policy.connection_count();
        self.feed(Event::CloseAll, ctx);
        closed
    }
}

impl Handler<GetPoolStats> for Pool {
    type Result = PoolStats;

    fn handle(&mut self, _: GetPoolStats, _: &mut Context<Self>) -> PoolStats {
        let now = Instant::now();
        let connections: Vec<ConnectionStats> = self
            .policy
            .connections()
            .map(|c| ConnectionStats {
                id: c.id,
                state: c.state.as_str(),
                in_flight: c.in_flight,
                served: c.served,
                age_secs: now.saturating_duration_since(c.opened_at).as_secs(),
                last_upstream_secs: self
                    .conns
                    .get(&c.id)
                    .map_or(0, |h| h.shared.quiet_for().as_secs()),
                live: c.live,
            })
            .collect();
        let health = self.policy.health();
        PoolStats {
            open_connections: self
                .policy
                .connections()
                .filter(|c| c.state != ConnState::Connecting)
                .count(),
            in_flight: connections.iter().map(|c| c.in_flight).sum(),
            queued: self.policy.queued(),
            served_total: self.policy.served_total(),
            connections,
            reconnect_attempts: health.attempts(),
            down: health.is_down(),
            live_waiting: self.policy.live_waiting(),
            token_max_connections: self.token.as_ref().and_then(|t| t.max_connections),
        }
    }
}
