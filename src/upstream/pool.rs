//! The pool actor: owns the upstream connections and decides everything about them.
//!
//! - Connections open lazily, as queued fetches need slots, up to `pool.max_connections` (and the
//!   token's `max_connections` claim).
//! - Each fetch goes to the least-loaded ready connection; when every slot is taken it waits in a
//!   FIFO queue of at most `pool.max_queue`, beyond which it is refused at once.
//! - The pool is the source of truth for which connection carries which fetch: when a connection
//!   ends (closed, errored, stale) its fetches are retried once on another connection, and any late
//!   report from the old connection is ignored.
//! - Failed connection attempts back off exponentially with jitter, at most one attempt at a time,
//!   up to `manager.max_reconnect_attempts`; then the pool is `down` and fetches fail fast until a
//!   new fetch (or a new lease) starts a new episode with a single probe connection.
//! - A new token rotates connections one at a time: an old connection stops taking fetches,
//!   finishes the ones it carries, closes, and is replaced before the next one drains.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;
use tokio::sync::oneshot;

use super::connection::{
    CancelFetch, ConnEnded, ConnReady, ConnShared, Connection, ConnectionEvents, EndReason,
    FetchDone, Shutdown, StartFetch,
};
use super::token::{AuthToken, TokenProvider};
use super::{
    CloseAll, ConnectionStats, FetchChart, FetchError, GetPoolStats, KeepWarm, PoolStats,
    UpstreamTarget,
};
use crate::config::Settings;
use crate::ready_chart::ReadyChart;

/// A connection as the pool tracks it.
struct ConnEntry {
    addr: Addr<Connection>,
    state: ConnState,
    /// Fetch ids this connection carries.
    in_flight: HashSet<u64>,
    served: u64,
    opened_at: Instant,
    /// Last-traffic time, written by the connection.
    shared: Arc<ConnShared>,
    /// Which token it authenticated with; older than the pool's means it is due for rotation.
    generation: u64,
    /// The feed has not refused it: it answered a fetch, or survived [`PROBATION`] after auth.
    /// The feed never acknowledges `set_auth_token`, so only this ends a failure episode; a
    /// connection that is refused right after its hello does not reset the backoff.
    proven: bool,
}

/// How often in-flight fetches are checked for requesters that went away.
const ABANDONED_SWEEP: Duration = Duration::from_secs(1);

/// How long an authenticated connection must live, without answering a fetch, to count as working.
const PROBATION: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Ready,
    /// Finishing its fetches before closing (token rotation); takes no new ones.
    Draining,
}

impl ConnState {
    fn as_str(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Ready => "ready",
            ConnState::Draining => "draining",
        }
    }
}

/// A fetch the pool has accepted and not yet answered.
struct Pending {
    req: FetchChart,
    reply: oneshot::Sender<Result<Arc<ReadyChart>, FetchError>>,
    /// Already retried once after losing its connection: the next loss is final.
    retried: bool,
    /// The connection carrying it, or `None` while queued.
    conn: Option<u64>,
    /// When the pool accepted it, for the latency histogram.
    accepted: Instant,
}

/// The pool actor. See the module documentation.
pub struct Pool {
    settings: Arc<Settings>,
    target: UpstreamTarget,
    /// Reference point for the connections' last-traffic clocks.
    epoch: Instant,
    provider: TokenProvider,
    /// The token new connections use; `None` until the first is fetched.
    token: Option<AuthToken>,
    /// Bumped on every new token; connections remember the generation they authenticated with.
    generation: u64,
    token_fetching: bool,
    refresh_timer: Option<SpawnHandle>,
    conns: BTreeMap<u64, ConnEntry>,
    next_conn: u64,
    next_fetch: u64,
    fetches: BTreeMap<u64, Pending>,
    queue: VecDeque<u64>,
    /// Failed attempts in the current episode.
    attempts: u32,
    /// First connection id opened in the current episode: only one of these working ends it (an
    /// older connection that keeps working says nothing about whether new ones are accepted).
    episode_floor: u64,
    down: bool,
    /// A new episode after `down`: one connection is tried; if it fails the pool is down again at
    /// once, so waiting fetches fail fast instead of sitting through the backoff schedule again.
    probe: bool,
    reconnect_timer: Option<SpawnHandle>,
    /// A lease exists: keep at least one connection, and replace lost ones.
    keep_warm: bool,
    /// Connections lost or stale while warm, to be replaced even without queued fetches.
    replacements: usize,
    /// Upstream kept refusing connections beyond this many while these worked ("max sessions
    /// rate", 429): stay at this size instead of going down. Cleared by a new token or `CloseAll`.
    learned_cap: Option<usize>,
    served_total: u64,
    /// Threads the connections run on, one per core, started with the pool: decoding a feed's
    /// answers (a 300-bar chart is ~100 µs of JSON numbers) is the pool's heaviest work, and a
    /// request of hundreds of charts that all answer at once should not wait for one thread.
    threads: Vec<Arbiter>,
}

impl Pool {
    pub fn new(settings: Arc<Settings>, upstream: UpstreamTarget) -> Pool {
        let provider = TokenProvider::from_settings(&settings, &upstream.token_url);
        Pool {
            settings,
            target: upstream,
            epoch: Instant::now(),
            provider,
            token: None,
            generation: 0,
            token_fetching: false,
            refresh_timer: None,
            conns: BTreeMap::new(),
            next_conn: 1,
            next_fetch: 1,
            fetches: BTreeMap::new(),
            queue: VecDeque::new(),
            attempts: 0,
            episode_floor: 0,
            down: false,
            probe: false,
            reconnect_timer: None,
            keep_warm: false,
            replacements: 0,
            learned_cap: None,
            served_total: 0,
            threads: Vec::new(),
        }
    }

    /// The connection limit: the setting, lowered by the token's `max_connections` claim.
    fn cap(&self) -> usize {
        let claim = self
            .token
            .as_ref()
            .and_then(|t| t.max_connections)
            .filter(|&n| n > 0)
            .unwrap_or(usize::MAX);
        self.settings
            .pool
            .max_connections
            .min(claim)
            .min(self.learned_cap.unwrap_or(usize::MAX))
            .max(1)
    }

    fn slots(&self) -> usize {
        self.settings.pool.requests_per_connection.max(1)
    }

    fn least_loaded_ready(&self) -> Option<u64> {
        let slots = self.slots();
        self.conns
            .iter()
            .filter(|(_, c)| c.state == ConnState::Ready && c.in_flight.len() < slots)
            .min_by_key(|(_, c)| c.in_flight.len())
            .map(|(id, _)| *id)
    }

    fn update_gauge(&self) {
        let open = self
            .conns
            .values()
            .filter(|c| c.state != ConnState::Connecting)
            .count();
        metrics::gauge!("chartgate_upstream_connections_open").set(open as f64);
    }

    /// Forgets fetches whose requester went away: queued ones leave the queue, in-flight ones
    /// are cancelled on their connection (which deletes their chart session upstream).
    fn drop_abandoned(&mut self, ctx: &mut Context<Self>) {
        let abandoned: Vec<u64> = self
            .fetches
            .iter()
            .filter(|(_, p)| !p.req.interest.still_wanted())
            .map(|(id, _)| *id)
            .collect();
        if abandoned.is_empty() {
            return;
        }
        for fetch in &abandoned {
            let Some(pending) = self.fetches.remove(fetch) else {
                continue;
            };
            if let Some(entry) = pending.conn.and_then(|conn| self.conns.get_mut(&conn)) {
                entry.in_flight.remove(fetch);
                entry.addr.do_send(CancelFetch { fetch: *fetch });
                if entry.state == ConnState::Draining && entry.in_flight.is_empty() {
                    entry.addr.do_send(Shutdown);
                }
            }
        }
        self.queue.retain(|fetch| self.fetches.contains_key(fetch));
        metrics::counter!("chartgate_charts_fetched_total", "outcome" => "cancelled")
            .increment(abandoned.len() as u64);
        log::debug!("pool: dropped {} fetches nobody waits for", abandoned.len());
        self.pump(ctx);
    }

    /// Dispatches queued fetches to free slots, then opens connections for what is left.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while let Some(&fetch) = self.queue.front() {
            if !self
                .fetches
                .get(&fetch)
                .is_some_and(|p| p.req.interest.still_wanted())
            {
                self.queue.pop_front();
                self.fetches.remove(&fetch);
                continue;
            }
            let Some(conn) = self.least_loaded_ready() else {
                break;
            };
            self.queue.pop_front();
            self.dispatch(fetch, conn);
        }
        self.ensure_connections(ctx);
    }

    fn dispatch(&mut self, fetch: u64, conn: u64) {
        let (Some(pending), Some(entry)) =
            (self.fetches.get_mut(&fetch), self.conns.get_mut(&conn))
        else {
            return;
        };
        pending.conn = Some(conn);
        entry.in_flight.insert(fetch);
        entry.addr.do_send(StartFetch {
            fetch,
            symbol: pending.req.symbol.clone(),
            resolution: pending.req.resolution,
            feed_resolution: pending.req.resolution.as_str().to_string(),
            bars: pending.req.bars,
        });
    }

    /// Opens as many connections as waiting fetches (and warmth) need, within the cap and the
    /// backoff rules.
    fn ensure_connections(&mut self, ctx: &mut Context<Self>) {
        if self.down || self.reconnect_timer.is_some() {
            return;
        }
        let Some(token) = self.token.clone() else {
            if !self.queue.is_empty() || self.keep_warm {
                self.request_token(ctx);
            }
            return;
        };
        let slots = self.slots();
        let connecting = self
            .conns
            .values()
            .filter(|c| c.state == ConnState::Connecting)
            .count();
        let usable = self
            .conns
            .values()
            .filter(|c| c.state != ConnState::Draining)
            .count();
        let free: usize = self
            .conns
            .values()
            .map(|c| match c.state {
                ConnState::Ready => slots.saturating_sub(c.in_flight.len()),
                ConnState::Connecting => slots,
                ConnState::Draining => 0,
            })
            .sum();
        let mut need = self.queue.len().saturating_sub(free).div_ceil(slots);
        if self.keep_warm && usable == 0 {
            need = need.max(1);
        }
        need += self.replacements;
        let cautious = self.attempts > 0 || self.probe;
        if cautious {
            if connecting > 0 {
                return;
            }
            need = need.min(1);
        }
        let room = self.cap().saturating_sub(self.conns.len());
        let open = need.min(room);
        self.replacements = self.replacements.saturating_sub(open);
        for _ in 0..open {
            self.open_connection(&token, ctx);
        }
    }

    fn open_connection(&mut self, token: &AuthToken, ctx: &mut Context<Self>) {
        let id = self.next_conn;
        self.next_conn += 1;
        let shared = ConnShared::new(self.epoch);
        let (settings, url, token) = (
            self.settings.clone(),
            self.target.feed_url.clone(),
            token.value.clone(),
        );
        let (events, conn_shared) = (ConnectionEvents::to(&ctx.address()), shared.clone());
        let thread = &self.threads[id as usize % self.threads.len()];
        let addr = Connection::start_in_arbiter(&thread.handle(), move |_| {
            Connection::new(id, settings, &url, token, events, conn_shared)
        });
        log::debug!("pool: connection {id} connecting");
        self.conns.insert(
            id,
            ConnEntry {
                addr,
                state: ConnState::Connecting,
                in_flight: HashSet::new(),
                served: 0,
                opened_at: Instant::now(),
                shared,
                generation: self.generation,
                proven: false,
            },
        );
    }

    /// Starts getting a token (at once for fixed and anonymous ones).
    fn request_token(&mut self, ctx: &mut Context<Self>) {
        if self.token_fetching {
            return;
        }
        if self.token.is_none()
            && let Some(token) = self.provider.immediate()
        {
            self.set_token(token, ctx);
            return;
        }
        if !self.provider.can_refresh() {
            return;
        }
        self.token_fetching = true;
        let provider = self.provider.clone();
        ctx.spawn(async move { provider.fetch().await }.into_actor(self).map(
            |result, act, ctx| {
                act.token_fetching = false;
                match result {
                    Ok(token) => act.set_token(token, ctx),
                    Err(e) => {
                        log::warn!("pool: could not get an auth token: {e}");
                        act.on_connect_failure(&EndReason::ConnectFailed(e.to_string()), ctx);
                    }
                }
            },
        ));
    }

    fn set_token(&mut self, token: AuthToken, ctx: &mut Context<Self>) {
        let rotation = self.token.is_some();
        self.generation += 1;
        if let Some(timer) = self.refresh_timer.take() {
            ctx.cancel_future(timer);
        }
        if self.provider.can_refresh()
            && let Some(after) = token.refresh_in()
        {
            log::debug!(
                "pool: auth token refresh due in {:.1} s",
                after.as_secs_f64()
            );
            self.refresh_timer = Some(ctx.run_later(after, |act, ctx| {
                act.refresh_timer = None;
                act.request_token(ctx);
            }));
        }
        self.token = Some(token);
        self.learned_cap = None;
        if rotation {
            let old = self
                .conns
                .values()
                .filter(|c| c.generation < self.generation)
                .count();
            log::info!(
                "pool: new auth token (generation {}), moving {old} connections to it one at a time",
                self.generation
            );
            self.rotate_step();
        }
        self.pump(ctx);
    }

    /// Drains the next connection still on an old token, unless one is already draining or a
    /// replacement is still connecting.
    fn rotate_step(&mut self) {
        let busy = self.conns.values().any(|c| {
            c.state == ConnState::Draining
                || (c.state == ConnState::Connecting && c.generation == self.generation)
        });
        if busy {
            return;
        }
        let generation = self.generation;
        if let Some((id, entry)) = self
            .conns
            .iter_mut()
            .find(|(_, c)| c.state == ConnState::Ready && c.generation < generation)
        {
            log::info!(
                "pool: connection {id} draining for token rotation ({} in flight)",
                entry.in_flight.len()
            );
            entry.state = ConnState::Draining;
            if entry.in_flight.is_empty() {
                entry.addr.do_send(Shutdown);
            }
        }
    }

    /// The connection works: the failure episode (if any) is over.
    fn prove(&mut self, conn: u64) {
        let Some(entry) = self.conns.get_mut(&conn) else {
            return;
        };
        if entry.proven || entry.state == ConnState::Connecting {
            return;
        }
        entry.proven = true;
        if conn < self.episode_floor {
            return;
        }
        self.attempts = 0;
        self.probe = false;
        self.down = false;
    }

    /// A connection attempt failed (or the token could not be had): back off, or go down.
    fn on_connect_failure(&mut self, reason: &EndReason, ctx: &mut Context<Self>) {
        if matches!(reason, EndReason::AuthRejected(_)) && self.provider.can_refresh() {
            self.token = None;
            self.request_token(ctx);
        }
        if self.probe {
            self.probe = false;
            self.go_down(reason, ctx);
            return;
        }
        if self.reconnect_timer.is_some() || self.down {
            return;
        }
        let max = self.settings.manager.max_reconnect_attempts;
        if self.attempts >= max {
            // Proven connections, or at least the one still standing if none has answered yet
            // (the others were refused and are gone).
            let proven = self.conns.values().filter(|c| c.proven).count();
            let standing = self
                .conns
                .values()
                .any(|c| c.state != ConnState::Connecting);
            let working = if standing { proven.max(1) } else { 0 };
            if working > 0 {
                // Upstream serves these but refuses more: work with what it gives.
                log::warn!(
                    "pool: upstream refuses more than {working} connections ({reason}); staying at {working}"
                );
                self.learned_cap = Some(working);
                self.attempts = 0;
                self.pump(ctx);
                return;
            }
            self.go_down(reason, ctx);
            return;
        }
        if self.attempts == 0 {
            self.episode_floor = self.next_conn;
        }
        self.attempts += 1;
        let base = self.settings.manager.reconnect_backoff_ms as f64;
        let exp = base * 2f64.powi(self.attempts.saturating_sub(1).min(30) as i32);
        let jitter = 0.8 + 0.4 * rand::random::<f64>();
        let delay = Duration::from_millis((exp * jitter) as u64);
        metrics::counter!("chartgate_upstream_reconnects_total").increment(1);
        log::info!(
            "pool: reconnect attempt {}/{max} in {:.1} s ({reason})",
            self.attempts,
            delay.as_secs_f64()
        );
        self.reconnect_timer = Some(ctx.run_later(delay, |act, ctx| {
            act.reconnect_timer = None;
            if act.queue.is_empty() && !act.keep_warm && act.replacements == 0 {
                // Nothing to reconnect for: the episode ends quietly.
                act.attempts = 0;
                return;
            }
            act.pump(ctx);
        }));
    }

    fn go_down(&mut self, reason: &EndReason, ctx: &mut Context<Self>) {
        if let Some(timer) = self.reconnect_timer.take() {
            ctx.cancel_future(timer);
        }
        self.down = true;
        self.replacements = 0;
        let message = format!(
            "no connection could be made after {} reconnect attempts ({reason})",
            self.attempts
        );
        log::warn!(
            "pool: upstream down: {message}; failing {} queued fetches",
            self.queue.len()
        );
        for fetch in std::mem::take(&mut self.queue) {
            self.complete(fetch, Err(FetchError::Unavailable(message.clone())));
        }
    }

    /// Answers a fetch and records its outcome.
    fn complete(&mut self, fetch: u64, result: Result<Arc<ReadyChart>, FetchError>) {
        let Some(pending) = self.fetches.remove(&fetch) else {
            return;
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        metrics::counter!("chartgate_charts_fetched_total", "outcome" => outcome).increment(1);
        metrics::histogram!("chartgate_chart_fetch_seconds")
            .record(pending.accepted.elapsed().as_secs_f64());
        let _ = pending.reply.send(result);
    }

    /// Takes a connection out of the pool and gives its fetches a second chance (or fails them
    /// when they already had one). A connection the feed refused (token, session limit) never
    /// worked on its fetches, so they go back without using up their retry; the backoff episode
    /// bounds how often that can happen.
    fn remove_connection(&mut self, id: u64, refused: bool) -> Option<ConnEntry> {
        let entry = self.conns.remove(&id)?;
        let mut carried: Vec<u64> = entry.in_flight.iter().copied().collect();
        carried.sort_unstable();
        for fetch in carried.into_iter().rev() {
            let retry = match self.fetches.get_mut(&fetch) {
                Some(p) if (refused || !p.retried) && p.conn == Some(id) => {
                    p.retried |= !refused;
                    p.conn = None;
                    true
                }
                Some(p) if p.conn == Some(id) => false,
                _ => continue,
            };
            if retry {
                self.queue.push_front(fetch);
            } else {
                self.complete(fetch, Err(FetchError::ConnectionLost));
            }
        }
        self.update_gauge();
        Some(entry)
    }

    /// Replaces connections that upstream has been silent on for `manager.stale_after_secs`.
    fn check_stale(&mut self, ctx: &mut Context<Self>) {
        let limit = Duration::from_secs(self.settings.manager.stale_after_secs);
        let stale: Vec<(u64, Duration)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state != ConnState::Connecting)
            .map(|(id, c)| (*id, c.shared.quiet_for()))
            .filter(|(_, quiet)| *quiet >= limit)
            .collect();
        if stale.is_empty() {
            return;
        }
        for (id, quiet) in stale {
            log::info!(
                "pool: connection {id} stale (no upstream traffic for {} s), replacing",
                quiet.as_secs()
            );
            if let Some(entry) = self.remove_connection(id, false) {
                entry.addr.do_send(Shutdown);
                if self.keep_warm {
                    self.replacements += 1;
                }
            }
        }
        self.pump(ctx);
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
        ctx.run_interval(ABANDONED_SWEEP, |act, ctx| act.drop_abandoned(ctx));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        for thread in &self.threads {
            thread.stop();
        }
    }
}

impl Handler<FetchChart> for Pool {
    type Result = ResponseFuture<Result<Arc<ReadyChart>, FetchError>>;

    fn handle(&mut self, msg: FetchChart, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        let refused = |e: FetchError| -> Self::Result { Box::pin(async move { Err(e) }) };
        // A queue of at least one, so a pool with no connection yet can still open one.
        if self.queue.len() >= self.settings.pool.max_queue.max(1)
            && self.least_loaded_ready().is_none()
        {
            metrics::counter!("chartgate_charts_fetched_total", "outcome" => "queue_full")
                .increment(1);
            return refused(FetchError::QueueFull);
        }
        if self.down {
            // A new request starts a new episode: one probe connection, fail fast if it fails.
            log::info!("pool: upstream was down; trying one connection for a new request");
            self.down = false;
            self.attempts = 0;
            self.probe = true;
            self.episode_floor = self.next_conn;
        }
        let id = self.next_fetch;
        self.next_fetch += 1;
        self.fetches.insert(
            id,
            Pending {
                req: msg,
                reply,
                retried: false,
                conn: None,
                accepted: Instant::now(),
            },
        );
        self.queue.push_back(id);
        self.pump(ctx);
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(FetchError::Unavailable(
                    "the connection pool stopped".into(),
                ))
            })
        })
    }
}

impl Handler<ConnReady> for Pool {
    type Result = ();

    fn handle(&mut self, msg: ConnReady, ctx: &mut Context<Self>) {
        let Some(entry) = self.conns.get_mut(&msg.conn) else {
            return;
        };
        if entry.state == ConnState::Connecting {
            entry.state = ConnState::Ready;
        }
        log::info!(
            "pool: connection {} open, authenticated in {} ms",
            msg.conn,
            msg.authenticated_in.as_millis()
        );
        let conn = msg.conn;
        ctx.run_later(PROBATION, move |act, _| act.prove(conn));
        self.update_gauge();
        self.rotate_step();
        self.pump(ctx);
    }
}

impl Handler<ConnEnded> for Pool {
    type Result = ();

    fn handle(&mut self, msg: ConnEnded, ctx: &mut Context<Self>) {
        let Some(known) = self.conns.get(&msg.conn) else {
            // Already taken out (stale, `CloseAll`): its fetches were dealt with then.
            return;
        };
        // Refused by the feed, or gone before it ever worked: a failed attempt, which does not
        // use up the retry of the fetches it was given.
        let failed_attempt =
            msg.reason.is_connect_failure() || (!known.proven && msg.reason != EndReason::Closed);
        if self.remove_connection(msg.conn, failed_attempt).is_none() {
            return;
        }
        match &msg.reason {
            EndReason::Closed => log::info!("pool: connection {} closed", msg.conn),
            reason => log::warn!("pool: connection {} ended: {reason}", msg.conn),
        }
        if failed_attempt {
            self.on_connect_failure(&msg.reason, ctx);
        } else if self.keep_warm {
            // Lost, or rotated out: replace it even if no fetch is waiting.
            self.replacements += 1;
        }
        self.rotate_step();
        self.pump(ctx);
    }
}

impl Handler<FetchDone> for Pool {
    type Result = ();

    fn handle(&mut self, msg: FetchDone, ctx: &mut Context<Self>) {
        let assigned = self
            .fetches
            .get(&msg.fetch)
            .is_some_and(|p| p.conn == Some(msg.conn));
        if !assigned {
            // A late answer from a connection the fetch was taken away from.
            return;
        }
        self.prove(msg.conn);
        if let Some(entry) = self.conns.get_mut(&msg.conn) {
            entry.in_flight.remove(&msg.fetch);
            entry.served += 1;
            if entry.state == ConnState::Draining && entry.in_flight.is_empty() {
                entry.addr.do_send(Shutdown);
            }
        }
        self.served_total += 1;
        self.complete(msg.fetch, msg.result);
        self.pump(ctx);
    }
}

impl Handler<KeepWarm> for Pool {
    type Result = ();

    fn handle(&mut self, _: KeepWarm, ctx: &mut Context<Self>) {
        self.keep_warm = true;
        if self.down {
            self.down = false;
            self.attempts = 0;
            self.probe = true;
            self.episode_floor = self.next_conn;
        }
        self.pump(ctx);
    }
}

impl Handler<CloseAll> for Pool {
    type Result = usize;

    fn handle(&mut self, _: CloseAll, ctx: &mut Context<Self>) -> usize {
        self.keep_warm = false;
        self.replacements = 0;
        self.learned_cap = None;
        if let Some(timer) = self.reconnect_timer.take() {
            ctx.cancel_future(timer);
        }
        self.attempts = 0;
        self.down = false;
        self.probe = false;
        let conns = std::mem::take(&mut self.conns);
        let closed = conns.len();
        for (_, entry) in conns {
            entry.addr.do_send(Shutdown);
            for fetch in entry.in_flight {
                self.complete(fetch, Err(FetchError::ConnectionLost));
            }
        }
        for fetch in std::mem::take(&mut self.queue) {
            self.complete(
                fetch,
                Err(FetchError::Unavailable("connections were closed".into())),
            );
        }
        if self.provider.can_refresh() {
            // An idle pool does not keep polling the token page; the next fetch gets a fresh one.
            if let Some(timer) = self.refresh_timer.take() {
                ctx.cancel_future(timer);
            }
            self.token = None;
        }
        self.update_gauge();
        closed
    }
}

impl Handler<GetPoolStats> for Pool {
    type Result = PoolStats;

    fn handle(&mut self, _: GetPoolStats, _: &mut Context<Self>) -> PoolStats {
        let now = Instant::now();
        let connections: Vec<ConnectionStats> = self
            .conns
            .iter()
            .map(|(id, c)| ConnectionStats {
                id: *id,
                state: c.state.as_str(),
                in_flight: c.in_flight.len(),
                served: c.served,
                age_secs: now.saturating_duration_since(c.opened_at).as_secs(),
                last_upstream_secs: c.shared.quiet_for().as_secs(),
            })
            .collect();
        PoolStats {
            open_connections: connections
                .iter()
                .filter(|c| c.state != "connecting")
                .count(),
            in_flight: connections.iter().map(|c| c.in_flight).sum(),
            queued: self.queue.len(),
            served_total: self.served_total,
            connections,
            reconnect_attempts: self.attempts,
            down: self.down,
        }
    }
}
