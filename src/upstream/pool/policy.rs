//! The pool's decisions, as a state machine with no I/O: events in, commands out.
//!
//! [`PoolPolicy::handle`] takes one [`Event`] (a fetch is wanted, a connection is ready or lost, a
//! timer fired, ...) at an instant the caller passes in, updates the pool's state and appends the
//! [`Command`]s that carry the decision out (open a connection, dispatch a fetch to it, answer a
//! fetch, schedule a timer, ...). It owns no socket, no timer and no clock: the pool actor owns
//! those and feeds their outcomes back in as events. So every decision can be tested by feeding
//! events at instants a test chooses, and the actor is left with carrying commands out.
//!
//! What it decides:
//!
//! - **Opening.** Connections open lazily, as queued fetches need slots, up to the cap: the
//!   `pool.max_connections` setting, lowered by the token's `max_connections` claim and by a cap
//!   learned from a feed that refuses more connections than it serves.
//! - **Dispatch.** A fetch goes to the least-loaded [`ConnState::Ready`] connection; when every
//!   slot is taken it waits in a FIFO queue of at most `pool.max_queue`, beyond which it is
//!   refused at once with [`FetchError::QueueFull`].
//! - **Retry.** The policy is the source of truth for which connection carries which fetch. When a
//!   connection ends its fetches go back to the front of the queue once; a second loss is final. A
//!   connection the feed refused never worked on its fetches, so that does not use up the retry.
//! - **Health.** Failed connection attempts start a failure episode ([`PoolHealth`]): exponential
//!   backoff with jitter, one attempt at a time, up to [`Backoff::max_attempts`]; then `Down`, and
//!   fetches fail fast until a new fetch (or a new lease) starts a new episode with a single probe.
//!   Only a connection opened during the episode proves it over (an older one that keeps working
//!   says nothing about whether new ones are accepted).
//! - **Rotation.** A new token moves connections over one at a time: an old connection stops taking
//!   fetches ([`ConnState::Draining`]), finishes the ones it carries, closes, and is replaced before
//!   the next one drains.
//! - **Live subscriptions.** Live series and quote symbols stay on a connection until they are
//!   dropped: series go to the ready connection carrying the fewest, at most
//!   `live.series_per_connection` each (they take no fetch slot), quotes to the one with the
//!   fewest subscriptions. Connections open for waiting ones as for queued fetches. When a
//!   connection ends (lost, stale, refused, rotated out) its subscriptions wait again and are placed
//!   on other connections, with the same backoff as fetches when the feed refuses.
//!
//! Fetches are kept in a map by id and queued by id; a fetch whose requester went away leaves a
//! stale id behind in the queue, skipped when it reaches the front (and swept out when stale ids
//! outnumber live ones), so no event costs a scan over every fetch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Settings;
use crate::ready_chart::ReadyChart;
use crate::upstream::FetchError;
use crate::upstream::backoff::Backoff;
use crate::upstream::connection::EndReason;

#[cfg(test)]
mod tests;

/// A connection's id: assigned by the policy, increasing, never reused. Ordered by age, which
/// the failure episode's floor relies on.
pub type ConnId = u64;

/// A fetch's id: assigned by the caller (who pairs it with the requester), never reused.
pub type FetchId = u64;

/// A live subscription's id: assigned by the caller, never reused.
pub type LiveId = u64;

/// What a fetch ends with.
pub type FetchResult = Result<Arc<ReadyChart>, FetchError>;

/// How long an authenticated connection must live, without answering a fetch, to count as
/// working. The feed never acknowledges `set_auth_token`, so only this, or an answered fetch, ends
/// a failure episode: a connection that is refused right after its hello does not reset the
/// backoff.
pub const PROBATION: Duration = Duration::from_millis(500);

/// The limits and schedules the policy works within.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// `pool.max_connections`.
    pub max_connections: usize,
    /// `pool.requests_per_connection`: fetches one connection carries at once.
    pub slots: usize,
    /// `pool.max_queue`: fetches waiting for a slot.
    pub max_queue: usize,
    /// `live.series_per_connection`: live series one connection carries besides its fetches.
    pub live_per_connection: usize,
    /// The reconnect schedule of a failure episode.
    pub backoff: Backoff,
    /// A new token can be fetched (session cookies): a rejected token leads to a new one, tokens
    /// are refreshed before they expire, and an idle pool forgets its token.
    pub token_refreshable: bool,
}

impl Config {
    pub fn from_settings(settings: &Settings, token_refreshable: bool) -> Self {
        Config {
            max_connections: settings.pool.max_connections,
            slots: settings.pool.requests_per_connection.max(1),
            max_queue: settings.pool.max_queue.max(1),
            live_per_connection: settings.live.series_per_connection.max(1),
            backoff: Backoff::new(
                Duration::from_millis(settings.manager.reconnect_backoff_ms),
                settings.manager.max_reconnect_attempts,
            ),
            token_refreshable,
        }
    }
}

/// Where a connection is in its life, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Opened, not yet authenticated: counts against the cap, carries nothing yet.
    Connecting,
    /// Takes fetches.
    Ready,
    /// Finishing its fetches before closing (token rotation); takes no new ones.
    Draining,
}

impl ConnState {
    /// The name `/api/connections/stats` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Ready => "ready",
            ConnState::Draining => "draining",
        }
    }
}

/// Whether connections can be made, and what the pool does about it when they cannot.
///
/// `floor` is the first connection id opened during the episode: only one of these working ends
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolHealth {
    /// No failure episode: open connections as needed.
    Healthy,
    /// `attempt` connection attempts of this episode have failed; nothing opens before `until`.
    Backoff {
        attempt: u32,
        until: Instant,
        floor: ConnId,
    },
    /// The backoff after failed attempt `attempt` is over: one connection at a time is tried.
    Retrying { attempt: u32, floor: ConnId },
    /// A new episode after `Down`: one connection is tried, and if it fails the pool is down again
    /// at once, so waiting fetches fail fast instead of sitting through the backoff again.
    Probing { floor: ConnId },
    /// Every attempt of the episode failed: nothing opens, queued fetches have failed, and the
    /// next fetch (or lease) starts a probe.
    Down { attempts: u32, floor: ConnId },
}

impl PoolHealth {
    /// Failed attempts in the current episode (0 when connections succeed).
    pub fn attempts(&self) -> u32 {
        match *self {
            PoolHealth::Backoff { attempt, .. } | PoolHealth::Retrying { attempt, .. } => attempt,
            PoolHealth::Down { attempts, .. } => attempts,
            PoolHealth::Healthy | PoolHealth::Probing { .. } => 0,
        }
    }

    pub fn is_down(&self) -> bool {
        matches!(self, PoolHealth::Down { .. })
    }

    fn floor(&self) -> Option<ConnId> {
        match *self {
            PoolHealth::Healthy => None,
            PoolHealth::Backoff { floor, .. }
            | PoolHealth::Retrying { floor, .. }
            | PoolHealth::Probing { floor }
            | PoolHealth::Down { floor, .. } => Some(floor),
        }
    }

    /// Opening is limited to one connection at a time while an episode is being tried.
    fn cautious(&self) -> bool {
        matches!(
            self,
            PoolHealth::Retrying { .. } | PoolHealth::Probing { .. }
        )
    }
}

/// The timers the policy asks for. At most one of each is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// The end of a failure episode's backoff.
    Reconnect,
    /// Fetch a new token before the current one expires.
    TokenRefresh,
    /// A connection has been ready for [`PROBATION`].
    Probation(ConnId),
    /// Slots freed by requesters that left are refilled. A client that goes away drops all its
    /// fetches at once, but their departures reach the pool one by one; refilling at the next
    /// tick instead of at the first departure keeps the slot a leaving fetch freed from going to
    /// another fetch of the same client that has not been seen to leave yet.
    Refill,
}

/// Something that happened, for [`PoolPolicy::handle`].
#[derive(Debug)]
pub enum Event {
    /// A requester wants a chart; `fetch` is a new id.
    FetchWanted {
        fetch: FetchId,
    },
    /// Nobody waits for this fetch any more.
    RequesterGone {
        fetch: FetchId,
    },
    /// The connection authenticated and takes fetches.
    ConnReady {
        conn: ConnId,
        authenticated_in: Duration,
    },
    /// The connection is gone; whatever it carried is the policy's to retry.
    ConnEnded {
        conn: ConnId,
        reason: EndReason,
    },
    /// These connections have had no upstream traffic (heartbeats included) for the stale limit;
    /// each with how long it has been quiet.
    ConnsStale(Vec<(ConnId, Duration)>),
    /// A connection finished a fetch.
    FetchDone {
        conn: ConnId,
        fetch: FetchId,
        result: FetchResult,
    },
    /// A token arrived (after [`Command::RequestToken`], or refreshed).
    TokenArrived {
        /// Its `max_connections` claim.
        max_connections: Option<usize>,
        /// When to fetch the next one, for a token that expires.
        refresh_in: Option<Duration>,
    },
    /// The token could not be had; counts as a failed connection attempt.
    TokenFailed {
        reason: String,
    },
    TimerFired(Timer),
    /// A live subscription is wanted (`series`: a live series, else a quote symbol).
    LiveWanted {
        live: LiveId,
        series: bool,
    },
    /// A live subscription is no longer wanted, or the feed refused it.
    LiveDropped {
        live: LiveId,
    },
    /// A lease exists: keep a connection open, and replace lost ones. Ends a `Down`.
    KeepWarm,
    /// No lease is left: close every connection, fail every fetch.
    CloseAll,
}

/// What the pool actor is to do.
#[derive(Debug)]
pub enum Command {
    /// Start a connection with the current token.
    Open { conn: ConnId },
    /// Start this fetch on this connection.
    Dispatch { fetch: FetchId, conn: ConnId },
    /// Subscribe this live series or quote on this connection.
    StartLive { live: LiveId, conn: ConnId },
    /// Unsubscribe it there.
    StopLive { live: LiveId, conn: ConnId },
    /// Give the requester its answer; the policy has forgotten the fetch.
    Answer { fetch: FetchId, result: FetchResult },
    /// Abort a fetch nobody wants on the connection carrying it (its chart session is deleted).
    CancelFetch { fetch: FetchId, conn: ConnId },
    /// Close the connection.
    Shutdown { conn: ConnId },
    /// Fire `timer` at `at`, replacing a pending one of the same kind.
    Schedule { timer: Timer, at: Instant },
    /// Forget a pending timer, if any.
    CancelTimer(Timer),
    /// Get a token; answer with [`Event::TokenArrived`] or [`Event::TokenFailed`].
    RequestToken,
    /// Tell the operator (log, metrics).
    Notice(Notice),
}

/// Lifecycle events worth a log line or a metric, with the numbers that explain them.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Connecting {
        conn: ConnId,
    },
    Open {
        conn: ConnId,
        authenticated_in: Duration,
    },
    Ended {
        conn: ConnId,
        reason: EndReason,
    },
    Stale {
        conn: ConnId,
        quiet: Duration,
    },
    ReconnectScheduled {
        attempt: u32,
        max: u32,
        delay: Duration,
        reason: EndReason,
    },
    /// The feed serves `working` connections and refuses more: the pool stays at that size.
    CapLearned {
        working: usize,
        reason: EndReason,
    },
    Down {
        message: String,
        failing: usize,
    },
    /// A new request found the pool down and starts a probe.
    ProbeAfterDown,
    TokenFailed {
        reason: String,
    },
    Rotating {
        generation: u64,
        old: usize,
    },
    Draining {
        conn: ConnId,
        in_flight: usize,
    },
    /// A fetch was dropped because its requester went away.
    Cancelled {
        fetch: FetchId,
    },
    /// Connections open (ready or draining) now.
    OpenConnections(usize),
    /// A connection ended while carrying live subscriptions: they are placed elsewhere.
    LiveMoved {
        conn: ConnId,
        series: usize,
        quotes: usize,
    },
}

/// A connection as the policy tracks it.
#[derive(Debug)]
struct Conn {
    state: ConnState,
    /// The fetches it carries.
    in_flight: HashSet<FetchId>,
    served: u64,
    opened_at: Instant,
    /// The token generation it authenticated with; older than the pool's means due for rotation.
    generation: u64,
    /// The feed has not refused it: it answered a fetch, or lived through [`PROBATION`].
    proven: bool,
    /// The live subscriptions it carries.
    live: HashSet<LiveId>,
    /// Of `live`, the series (what `live.series_per_connection` bounds).
    live_series: usize,
}

/// A live subscription the policy has been asked for.
#[derive(Debug)]
struct LiveItem {
    /// The connection carrying it, or `None` while it waits for one.
    conn: Option<ConnId>,
    series: bool,
}

/// A fetch the policy has accepted and not yet answered.
#[derive(Debug)]
struct Fetch {
    /// The connection carrying it, or `None` while queued.
    conn: Option<ConnId>,
    /// Already retried once after losing its connection: the next loss is final.
    retried: bool,
}

/// A connection as stats show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnView {
    pub id: ConnId,
    pub state: ConnState,
    pub in_flight: usize,
    pub served: u64,
    pub opened_at: Instant,
    /// Live series and quotes it carries.
    pub live: usize,
}

/// The pool's state and decisions. See the module documentation.
#[derive(Debug)]
pub struct PoolPolicy {
    config: Config,
    health: PoolHealth,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    fetches: HashMap<FetchId, Fetch>,
    /// Queued fetch ids in order, with stale ids of fetches since gone (see the module doc).
    queue: VecDeque<FetchId>,
    /// Live entries of `queue`.
    queued: usize,
    live: HashMap<LiveId, LiveItem>,
    /// Live subscriptions waiting for a connection, oldest first.
    live_waiting: BTreeSet<LiveId>,
    /// The current token's `max_connections` claim; `None` while there is no token.
    token: Option<Option<usize>>,
    /// A [`Command::RequestToken`] is unanswered.
    token_requested: bool,
    /// Bumped on every new token.
    generation: u64,
    /// A lease exists: keep at least one connection, and replace lost ones.
    keep_warm: bool,
    /// Connections lost or stale while warm, to be replaced even with no fetch waiting.
    replacements: usize,
    /// The feed kept refusing connections beyond this many while these worked: stay at this
    /// size instead of going down. Cleared by a new token or `CloseAll`.
    learned_cap: Option<usize>,
    served_total: u64,
    /// A [`Timer::Refill`] is pending.
    refill_pending: bool,
    /// The instant of the event being handled.
    now: Instant,
    /// Commands of the event being handled.
    out: Vec<Command>,
}

impl PoolPolicy {
    /// A pool with no connection and no token, at `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        PoolPolicy {
            config,
            health: PoolHealth::Healthy,
            conns: BTreeMap::new(),
            next_conn: 1,
            fetches: HashMap::new(),
            queue: VecDeque::new(),
            queued: 0,
            live: HashMap::new(),
            live_waiting: BTreeSet::new(),
            token: None,
            token_requested: false,
            generation: 0,
            keep_warm: false,
            replacements: 0,
            learned_cap: None,
            served_total: 0,
            refill_pending: false,
            now,
            out: Vec::new(),
        }
    }

    /// Handles `event` at `now`, appending what to do to `out`.
    pub fn handle(&mut self, now: Instant, event: Event, out: &mut Vec<Command>) {
        self.now = now;
        std::mem::swap(&mut self.out, out);
        match event {
            Event::FetchWanted { fetch } => self.fetch_wanted(fetch),
            Event::RequesterGone { fetch } => self.requester_gone(fetch),
            Event::ConnReady {
                conn,
                authenticated_in,
            } => self.conn_ready(conn, authenticated_in),
            Event::ConnEnded { conn, reason } => self.conn_ended(conn, reason),
            Event::ConnsStale(stale) => self.conns_stale(stale),
            Event::FetchDone {
                conn,
                fetch,
                result,
            } => self.fetch_done(conn, fetch, result),
            Event::TokenArrived {
                max_connections,
                refresh_in,
            } => self.token_arrived(max_connections, refresh_in),
            Event::TokenFailed { reason } => {
                self.token_requested = false;
                self.notice(Notice::TokenFailed {
                    reason: reason.clone(),
                });
                self.on_connect_failure(&EndReason::ConnectFailed(reason));
            }
            Event::TimerFired(timer) => self.timer_fired(timer),
            Event::KeepWarm => {
                self.keep_warm = true;
                if self.health.is_down() {
                    self.start_probe();
                }
                self.pump();
            }
            Event::CloseAll => self.close_all(),
            Event::LiveWanted { live, series } => {
                self.live.insert(live, LiveItem { conn: None, series });
                self.live_waiting.insert(live);
                self.pump();
            }
            Event::LiveDropped { live } => self.live_dropped(live),
        }
        std::mem::swap(&mut self.out, out);
    }

    pub fn health(&self) -> PoolHealth {
        self.health
    }

    /// Fetches waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Live subscriptions waiting for a connection.
    pub fn live_waiting(&self) -> usize {
        self.live_waiting.len()
    }

    /// Fetches answered by a connection.
    pub fn served_total(&self) -> u64 {
        self.served_total
    }

    /// Connections the policy knows, connecting ones included, oldest first.
    pub fn connections(&self) -> impl Iterator<Item = ConnView> + '_ {
        self.conns.iter().map(|(&id, c)| ConnView {
            id,
            state: c.state,
            in_flight: c.in_flight.len(),
            served: c.served,
            opened_at: c.opened_at,
            live: c.live.len(),
        })
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn emit(&mut self, command: Command) {
        self.out.push(command);
    }

    fn notice(&mut self, notice: Notice) {
        self.out.push(Command::Notice(notice));
    }

    fn answer(&mut self, fetch: FetchId, result: FetchResult) {
        self.out.push(Command::Answer { fetch, result });
    }

    /// The connection limit: the setting, lowered by the token's claim and the learned cap.
    fn cap(&self) -> usize {
        let claim = self.token.flatten().filter(|&n| n > 0);
        self.config
            .max_connections
            .min(claim.unwrap_or(usize::MAX))
            .min(self.learned_cap.unwrap_or(usize::MAX))
            .max(1)
    }

    fn open_count(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.state != ConnState::Connecting)
            .count()
    }

    fn least_loaded_ready(&self) -> Option<ConnId> {
        let slots = self.config.slots;
        self.conns
            .iter()
            .filter(|(_, c)| c.state == ConnState::Ready && c.in_flight.len() < slots)
            .min_by_key(|(_, c)| c.in_flight.len())
            .map(|(&id, _)| id)
    }

    /// Whether `fetch` is waiting in the queue (an id in the queue may be stale).
    fn is_queued(&self, fetch: FetchId) -> bool {
        self.fetches.get(&fetch).is_some_and(|f| f.conn.is_none())
    }

    fn start_probe(&mut self) {
        self.health = PoolHealth::Probing {
            floor: self.next_conn,
        };
    }

    fn fetch_wanted(&mut self, fetch: FetchId) {
        // A queue of at least one, so a pool with no connection yet can still open one.
        if self.queued >= self.config.max_queue.max(1) && self.least_loaded_ready().is_none() {
            self.answer(fetch, Err(FetchError::QueueFull));
            return;
        }
        if self.health.is_down() {
            self.notice(Notice::ProbeAfterDown);
            self.start_probe();
        }
        self.fetches.insert(
            fetch,
            Fetch {
                conn: None,
                retried: false,
            },
        );
        self.queue.push_back(fetch);
        self.queued += 1;
        self.pump();
    }

    fn requester_gone(&mut self, fetch: FetchId) {
        let Some(gone) = self.fetches.remove(&fetch) else {
            return;
        };
        self.notice(Notice::Cancelled { fetch });
        match gone.conn {
            None => {
                self.queued -= 1;
                // Stale ids are skipped at the front; sweep them out only when they outnumber
                // live ones, so the sweep costs O(1) per departure over time.
                if self.queue.len() > 2 * self.queued + 32 {
                    let fetches = &self.fetches;
                    self.queue
                        .retain(|id| fetches.get(id).is_some_and(|f| f.conn.is_none()));
                }
            }
            Some(conn) => {
                self.emit(Command::CancelFetch { fetch, conn });
                self.release_slot(conn, fetch);
                if !self.refill_pending {
                    self.refill_pending = true;
                    self.emit(Command::Schedule {
                        timer: Timer::Refill,
                        at: self.now,
                    });
                }
            }
        }
    }

    /// `fetch` no longer occupies `conn`; a draining connection with nothing left closes.
    fn release_slot(&mut self, conn: ConnId, fetch: FetchId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.in_flight.remove(&fetch);
        if c.state == ConnState::Draining && c.in_flight.is_empty() {
            self.emit(Command::Shutdown { conn });
        }
    }

    /// Dispatches queued fetches to free slots, then opens connections for what is left.
    fn pump(&mut self) {
        while let Some(&fetch) = self.queue.front() {
            if !self.is_queued(fetch) {
                self.queue.pop_front();
                continue;
            }
            let Some(conn) = self.least_loaded_ready() else {
                break;
            };
            self.queue.pop_front();
            self.queued -= 1;
            if let Some(f) = self.fetches.get_mut(&fetch) {
                f.conn = Some(conn);
            }
            if let Some(c) = self.conns.get_mut(&conn) {
                c.in_flight.insert(fetch);
            }
            self.emit(Command::Dispatch { fetch, conn });
        }
        self.place_live();
        self.ensure_connections();
    }

    /// Places waiting live subscriptions on ready connections with room.
    fn place_live(&mut self) {
        if self.live_waiting.is_empty() {
            return;
        }
        let per_conn = self.config.live_per_connection;
        let waiting: Vec<LiveId> = self.live_waiting.iter().copied().collect();
        for live in waiting {
            let Some(series) = self.live.get(&live).map(|l| l.series) else {
                self.live_waiting.remove(&live);
                continue;
            };
            let ready = self
                .conns
                .iter()
                .filter(|(_, c)| c.state == ConnState::Ready);
            let conn = if series {
                ready
                    .filter(|(_, c)| c.live_series < per_conn)
                    .min_by_key(|(_, c)| c.live_series)
                    .map(|(&id, _)| id)
            } else {
                ready.min_by_key(|(_, c)| c.live.len()).map(|(&id, _)| id)
            };
            let Some(conn) = conn else {
                continue;
            };
            self.live_waiting.remove(&live);
            if let Some(item) = self.live.get_mut(&live) {
                item.conn = Some(conn);
            }
            if let Some(c) = self.conns.get_mut(&conn) {
                c.live.insert(live);
                c.live_series += usize::from(series);
            }
            self.emit(Command::StartLive { live, conn });
        }
    }

    fn live_dropped(&mut self, live: LiveId) {
        self.live_waiting.remove(&live);
        let Some(item) = self.live.remove(&live) else {
            return;
        };
        if let Some(conn) = item.conn
            && let Some(c) = self.conns.get_mut(&conn)
        {
            c.live.remove(&live);
            c.live_series -= usize::from(item.series);
            self.emit(Command::StopLive { live, conn });
        }
        if !self.keep_warm && self.live.is_empty() && self.fetches.is_empty() {
            // Connections were kept only for live subscriptions (after an idle timeout closed
            // the pool): the last one is gone.
            let open: Vec<ConnId> = self.conns.keys().copied().collect();
            for conn in open {
                self.remove_connection(conn, false);
                self.emit(Command::Shutdown { conn });
            }
            return;
        }
        // Its place may be what a waiting one needs.
        self.pump();
    }

    /// Opens as many connections as waiting fetches (and warmth) need, within the cap and the
    /// episode's rules.
    fn ensure_connections(&mut self) {
        if matches!(
            self.health,
            PoolHealth::Down { .. } | PoolHealth::Backoff { .. }
        ) {
            return;
        }
        if self.token.is_none() {
            if self.queued > 0 || self.keep_warm || !self.live_waiting.is_empty() {
                self.request_token();
            }
            return;
        }
        let slots = self.config.slots;
        let (mut connecting, mut usable, mut free) = (0, 0, 0);
        for c in self.conns.values() {
            match c.state {
                ConnState::Connecting => {
                    connecting += 1;
                    usable += 1;
                    free += slots;
                }
                ConnState::Ready => {
                    usable += 1;
                    free += slots.saturating_sub(c.in_flight.len());
                }
                ConnState::Draining => {}
            }
        }
        let mut need = self.queued.saturating_sub(free).div_ceil(slots) + self.replacements;
        need = need.max(self.live_need());
        if self.keep_warm && usable == 0 {
            // Warm means at least one; a replacement counted above already is that one.
            need = need.max(1);
        }
        if self.health.cautious() {
            if connecting > 0 {
                return;
            }
            need = need.min(1);
        }
        let open = need.min(self.cap().saturating_sub(self.conns.len()));
        self.replacements = self.replacements.saturating_sub(open);
        for _ in 0..open {
            self.open_connection();
        }
    }

    /// Connections the waiting live subscriptions need beyond the usable ones.
    fn live_need(&self) -> usize {
        if self.live_waiting.is_empty() {
            return 0;
        }
        let per_conn = self.config.live_per_connection;
        let (mut room, mut usable) = (0, 0);
        for c in self.conns.values() {
            match c.state {
                ConnState::Connecting => {
                    room += per_conn;
                    usable += 1;
                }
                ConnState::Ready => {
                    room += per_conn.saturating_sub(c.live_series);
                    usable += 1;
                }
                ConnState::Draining => {}
            }
        }
        let series = self
            .live_waiting
            .iter()
            .filter(|id| self.live.get(id).is_some_and(|l| l.series))
            .count();
        let quotes = self.live_waiting.len() - series;
        let for_series = series.saturating_sub(room).div_ceil(per_conn);
        let for_quotes = usize::from(quotes > 0 && usable == 0);
        for_series.max(for_quotes)
    }

    fn open_connection(&mut self) {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            conn,
            Conn {
                state: ConnState::Connecting,
                in_flight: HashSet::with_capacity(self.config.slots.min(64)),
                served: 0,
                opened_at: self.now,
                generation: self.generation,
                proven: false,
                live: HashSet::new(),
                live_series: 0,
            },
        );
        self.notice(Notice::Connecting { conn });
        self.emit(Command::Open { conn });
    }

    fn request_token(&mut self) {
        if self.token_requested || (self.token.is_some() && !self.config.token_refreshable) {
            return;
        }
        self.token_requested = true;
        self.emit(Command::RequestToken);
    }

    fn token_arrived(&mut self, max_connections: Option<usize>, refresh_in: Option<Duration>) {
        self.token_requested = false;
        let rotation = self.token.is_some();
        self.generation += 1;
        match refresh_in.filter(|_| self.config.token_refreshable) {
            Some(after) => self.emit(Command::Schedule {
                timer: Timer::TokenRefresh,
                at: self.now + after,
            }),
            None => self.emit(Command::CancelTimer(Timer::TokenRefresh)),
        }
        self.token = Some(max_connections);
        self.learned_cap = None;
        if rotation {
            let generation = self.generation;
            let old = self
                .conns
                .values()
                .filter(|c| c.generation < generation)
                .count();
            self.notice(Notice::Rotating { generation, old });
            self.rotate_step();
        }
        self.pump();
    }

    fn timer_fired(&mut self, timer: Timer) {
        match timer {
            Timer::Reconnect => {
                let PoolHealth::Backoff { attempt, floor, .. } = self.health else {
                    return;
                };
                if self.queued == 0
                    && !self.keep_warm
                    && self.replacements == 0
                    && self.live_waiting.is_empty()
                {
                    // Nothing to reconnect for: the episode ends quietly.
                    self.health = PoolHealth::Healthy;
                    return;
                }
                self.health = PoolHealth::Retrying { attempt, floor };
                self.pump();
            }
            Timer::TokenRefresh => self.request_token(),
            Timer::Probation(conn) => self.prove(conn),
            Timer::Refill => {
                self.refill_pending = false;
                self.pump();
            }
        }
    }

    fn conn_ready(&mut self, conn: ConnId, authenticated_in: Duration) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.state == ConnState::Connecting {
            c.state = ConnState::Ready;
        }
        self.notice(Notice::Open {
            conn,
            authenticated_in,
        });
        self.emit(Command::Schedule {
            timer: Timer::Probation(conn),
            at: self.now + PROBATION,
        });
        self.notice(Notice::OpenConnections(self.open_count()));
        self.rotate_step();
        self.pump();
    }

    fn conn_ended(&mut self, conn: ConnId, reason: EndReason) {
        let Some(known) = self.conns.get(&conn) else {
            // Already taken out (stale, `CloseAll`): its fetches were dealt with then.
            return;
        };
        // Refused by the feed, or gone before it ever worked: a failed attempt, which does not
        // use up the retry of the fetches it was given.
        let failed_attempt =
            reason.is_connect_failure() || (!known.proven && reason != EndReason::Closed);
        self.remove_connection(conn, failed_attempt);
        self.notice(Notice::Ended {
            conn,
            reason: reason.clone(),
        });
        if failed_attempt {
            self.on_connect_failure(&reason);
        } else if self.keep_warm {
            // Lost, or rotated out: replace it even if no fetch is waiting.
            self.replacements += 1;
        }
        // The replacement opens first, so that the next rotation waits for it to be ready.
        self.pump();
        self.rotate_step();
    }

    fn conns_stale(&mut self, stale: Vec<(ConnId, Duration)>) {
        let mut replaced = false;
        for (conn, quiet) in stale {
            let known = self.conns.get(&conn);
            if known.is_none_or(|c| c.state == ConnState::Connecting) {
                continue;
            }
            self.notice(Notice::Stale { conn, quiet });
            self.remove_connection(conn, false);
            self.emit(Command::Shutdown { conn });
            if self.keep_warm {
                self.replacements += 1;
            }
            replaced = true;
        }
        if replaced {
            self.pump();
        }
    }

    fn fetch_done(&mut self, conn: ConnId, fetch: FetchId, result: FetchResult) {
        if self
            .fetches
            .get(&fetch)
            .is_none_or(|f| f.conn != Some(conn))
        {
            // A late answer from a connection the fetch was taken away from.
            return;
        }
        self.prove(conn);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.served += 1;
        }
        self.release_slot(conn, fetch);
        self.served_total += 1;
        self.fetches.remove(&fetch);
        self.answer(fetch, result);
        self.pump();
    }

    /// Takes a connection out and gives its fetches a second chance (or fails them when they
    /// already had one). A refused connection's fetches go back without using up their retry;
    /// the backoff episode bounds how often that can happen.
    fn remove_connection(&mut self, id: ConnId, refused: bool) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.emit(Command::CancelTimer(Timer::Probation(id)));
        if !conn.live.is_empty() {
            for live in &conn.live {
                if let Some(item) = self.live.get_mut(live) {
                    item.conn = None;
                    self.live_waiting.insert(*live);
                }
            }
            self.notice(Notice::LiveMoved {
                conn: id,
                series: conn.live_series,
                quotes: conn.live.len() - conn.live_series,
            });
        }
        let mut carried: Vec<FetchId> = conn.in_flight.into_iter().collect();
        carried.sort_unstable();
        // Back to the front of the queue, oldest first.
        for fetch in carried.into_iter().rev() {
            let Some(f) = self.fetches.get_mut(&fetch) else {
                continue;
            };
            if f.conn != Some(id) {
                continue;
            }
            if refused || !f.retried {
                f.retried |= !refused;
                f.conn = None;
                self.queue.push_front(fetch);
                self.queued += 1;
            } else {
                self.fetches.remove(&fetch);
                self.answer(fetch, Err(FetchError::ConnectionLost));
            }
        }
        self.notice(Notice::OpenConnections(self.open_count()));
    }

    /// The connection works: the failure episode (if any) is over, if it was opened during it.
    fn prove(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.proven || c.state == ConnState::Connecting {
            return;
        }
        c.proven = true;
        if self.health.floor().is_some_and(|floor| conn >= floor) {
            if matches!(self.health, PoolHealth::Backoff { .. }) {
                self.emit(Command::CancelTimer(Timer::Reconnect));
            }
            self.health = PoolHealth::Healthy;
        }
    }

    /// A connection attempt failed (or the token could not be had): back off, or go down.
    fn on_connect_failure(&mut self, reason: &EndReason) {
        if matches!(reason, EndReason::AuthRejected(_)) && self.config.token_refreshable {
            self.token = None;
            self.request_token();
        }
        let (failed, floor) = match self.health {
            PoolHealth::Probing { .. } => {
                self.go_down(0, reason);
                return;
            }
            // An attempt is already scheduled, or the episode is over.
            PoolHealth::Backoff { .. } | PoolHealth::Down { .. } => return,
            PoolHealth::Healthy => (0, self.next_conn),
            PoolHealth::Retrying { attempt, floor } => (attempt, floor),
        };
        let max = self.config.backoff.max_attempts;
        if failed >= max {
            // Proven connections, or at least the one still standing if none has answered yet
            // (the others were refused and are gone).
            let proven = self.conns.values().filter(|c| c.proven).count();
            let standing = self
                .conns
                .values()
                .any(|c| c.state != ConnState::Connecting);
            if standing {
                // The feed serves these but refuses more: work with what it gives.
                let working = proven.max(1);
                self.notice(Notice::CapLearned {
                    working,
                    reason: reason.clone(),
                });
                self.learned_cap = Some(working);
                self.health = PoolHealth::Healthy;
                self.pump();
            } else {
                self.go_down(failed, reason);
            }
            return;
        }
        let attempt = failed + 1;
        let delay = self.config.backoff.delay(attempt);
        let until = self.now + delay;
        self.health = PoolHealth::Backoff {
            attempt,
            until,
            floor,
        };
        self.notice(Notice::ReconnectScheduled {
            attempt,
            max,
            delay,
            reason: reason.clone(),
        });
        self.emit(Command::Schedule {
            timer: Timer::Reconnect,
            at: until,
        });
    }

    fn go_down(&mut self, attempts: u32, reason: &EndReason) {
        let floor = self.health.floor().unwrap_or(self.next_conn);
        self.health = PoolHealth::Down { attempts, floor };
        self.replacements = 0;
        let message =
            format!("no connection could be made after {attempts} reconnect attempts ({reason})");
        self.notice(Notice::Down {
            message: message.clone(),
            failing: self.queued,
        });
        self.fail_queue(|| FetchError::Unavailable(message.clone()));
    }

    /// Answers every queued fetch with `error()`.
    fn fail_queue(&mut self, error: impl Fn() -> FetchError) {
        for fetch in self.queue.drain(..) {
            if self.fetches.get(&fetch).is_some_and(|f| f.conn.is_none()) {
                self.fetches.remove(&fetch);
                self.out.push(Command::Answer {
                    fetch,
                    result: Err(error()),
                });
            }
        }
        self.queued = 0;
    }

    fn close_all(&mut self) {
        self.keep_warm = false;
        self.replacements = 0;
        self.learned_cap = None;
        if matches!(self.health, PoolHealth::Backoff { .. }) {
            self.emit(Command::CancelTimer(Timer::Reconnect));
        }
        self.health = PoolHealth::Healthy;
        for (conn, c) in std::mem::take(&mut self.conns) {
            self.emit(Command::Shutdown { conn });
            self.emit(Command::CancelTimer(Timer::Probation(conn)));
            for live in c.live {
                if let Some(item) = self.live.get_mut(&live) {
                    item.conn = None;
                    self.live_waiting.insert(live);
                }
            }
            for fetch in c.in_flight {
                if self.fetches.remove(&fetch).is_some() {
                    self.answer(fetch, Err(FetchError::ConnectionLost));
                }
            }
        }
        self.fail_queue(|| FetchError::Unavailable("connections were closed".into()));
        if self.config.token_refreshable {
            // An idle pool does not keep polling the token page; the next fetch gets a new one.
            self.emit(Command::CancelTimer(Timer::TokenRefresh));
            self.token = None;
        }
        self.notice(Notice::OpenConnections(0));
        // Live subscriptions still wanted (their followers are there) move to new connections.
        self.pump();
    }

    /// Drains the next connection still on an old token, unless one is already draining or a
    /// replacement is still connecting.
    fn rotate_step(&mut self) {
        let generation = self.generation;
        let busy = self.conns.values().any(|c| {
            c.state == ConnState::Draining
                || (c.state == ConnState::Connecting && c.generation == generation)
        });
        if busy {
            return;
        }
        let Some((&conn, c)) = self
            .conns
            .iter_mut()
            .find(|(_, c)| c.state == ConnState::Ready && c.generation < generation)
        else {
            return;
        };
        c.state = ConnState::Draining;
        let in_flight = c.in_flight.len();
        self.notice(Notice::Draining { conn, in_flight });
        if in_flight == 0 {
            self.emit(Command::Shutdown { conn });
        }
        // Its slots are gone: waiting fetches may need another connection.
        self.ensure_connections();
    }
}
