//! The policy driven by hand: events at instants the test sets, commands checked one by one. No
//! socket, no runtime, no sleeping; the jitter is fixed, so every backoff is known to the
//! millisecond.

use super::*;
use crate::domain::{Chart, ChartMetadata, Resolution};

const SECOND: Duration = Duration::from_secs(1);

fn config() -> Config {
    Config {
        max_connections: 3,
        slots: 2,
        max_queue: 10,
        live_per_connection: 2,
        backoff: Backoff {
            base: SECOND,
            max_attempts: 3,
            // The middle of the ±20 % range: delays are exactly 1, 2, 4 s.
            jitter: || 0.5,
        },
        token_refreshable: false,
    }
}

/// [`config`] with a schedule of `max_attempts` reconnect attempts.
fn giving_up_after(max_attempts: u32) -> Config {
    let mut config = config();
    config.backoff.max_attempts = max_attempts;
    config
}

fn chart() -> FetchResult {
    Ok(ReadyChart::prepared(Chart {
        symbol: "NSE:TCS".parse().expect("a valid symbol"),
        resolution: Resolution::Day,
        bars: Vec::new(),
        metadata: ChartMetadata::default(),
    }))
}

fn lost() -> EndReason {
    EndReason::Lost("reset".into())
}

fn refused() -> EndReason {
    EndReason::RateLimited("handshake answered HTTP 429".into())
}

/// A policy, a hand-set clock, and the commands of the last event.
struct Rig {
    policy: PoolPolicy,
    start: Instant,
    now: Instant,
    next_fetch: FetchId,
}

impl Rig {
    fn new(config: Config) -> Self {
        let start = Instant::now();
        Rig {
            policy: PoolPolicy::new(config, start),
            start,
            now: start,
            next_fetch: 1,
        }
    }

    /// A rig with its token.
    fn with_token(config: Config) -> Self {
        let mut rig = Rig::new(config);
        rig.token(None);
        rig
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    fn step(&mut self, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        self.policy.handle(self.now, event, &mut out);
        out
    }

    fn token(&mut self, max_connections: Option<usize>) -> Vec<Command> {
        self.step(Event::TokenArrived {
            max_connections,
            refresh_in: None,
        })
    }

    /// A new fetch, and the commands it led to.
    fn want(&mut self) -> (FetchId, Vec<Command>) {
        let fetch = self.next_fetch;
        self.next_fetch += 1;
        (fetch, self.step(Event::FetchWanted { fetch }))
    }

    fn want_n(&mut self, n: usize) -> Vec<FetchId> {
        (0..n).map(|_| self.want().0).collect()
    }

    fn ready(&mut self, conn: ConnId) -> Vec<Command> {
        self.step(Event::ConnReady {
            conn,
            authenticated_in: Duration::from_millis(5),
        })
    }

    /// Ready, then through probation: the connection works.
    fn ready_and_proven(&mut self, conn: ConnId) -> Vec<Command> {
        let mut out = self.ready(conn);
        out.extend(self.step(Event::TimerFired(Timer::Probation(conn))));
        out
    }

    fn ended(&mut self, conn: ConnId, reason: EndReason) -> Vec<Command> {
        self.step(Event::ConnEnded { conn, reason })
    }

    fn done(&mut self, conn: ConnId, fetch: FetchId) -> Vec<Command> {
        self.step(Event::FetchDone {
            conn,
            fetch,
            result: chart(),
        })
    }

    fn gone(&mut self, fetch: FetchId) -> Vec<Command> {
        self.step(Event::RequesterGone { fetch })
    }

    fn fire(&mut self, timer: Timer) -> Vec<Command> {
        self.step(Event::TimerFired(timer))
    }

    fn health(&self) -> PoolHealth {
        self.policy.health()
    }

    fn at(&self, secs: u64) -> Instant {
        self.start + Duration::from_secs(secs)
    }
}

/// What each command matching `$pattern` says, as `$out`.
macro_rules! pick {
    ($cmds:expr, $pattern:pat => $out:expr) => {
        $cmds
            .iter()
            .filter_map(|c| match c {
                $pattern => Some($out),
                _ => None,
            })
            .collect()
    };
}

fn opened(cmds: &[Command]) -> Vec<ConnId> {
    pick!(cmds, Command::Open { conn } => *conn)
}

fn dispatched(cmds: &[Command]) -> Vec<(FetchId, ConnId)> {
    pick!(cmds, Command::Dispatch { fetch, conn } => (*fetch, *conn))
}

/// Answers as (fetch, `ok` or the error's code).
fn answered(cmds: &[Command]) -> Vec<(FetchId, &'static str)> {
    pick!(cmds, Command::Answer { fetch, result } => (*fetch, result.as_ref().map_or_else(FetchError::code, |_| "ok")))
}

fn shut(cmds: &[Command]) -> Vec<ConnId> {
    pick!(cmds, Command::Shutdown { conn } => *conn)
}

fn cancelled(cmds: &[Command]) -> Vec<(FetchId, ConnId)> {
    pick!(cmds, Command::CancelFetch { fetch, conn } => (*fetch, *conn))
}

fn notices(cmds: &[Command]) -> Vec<&Notice> {
    pick!(cmds, Command::Notice(n) => n)
}

fn scheduled(cmds: &[Command], timer: Timer) -> Option<Instant> {
    cmds.iter().find_map(|c| match c {
        Command::Schedule { timer: t, at } if *t == timer => Some(*at),
        _ => None,
    })
}

fn requests_token(cmds: &[Command]) -> bool {
    cmds.iter().any(|c| matches!(c, Command::RequestToken))
}

// Opening and dispatch.

#[test]
fn the_first_fetch_asks_for_a_token_then_opens_a_connection() {
    let mut rig = Rig::new(config());
    let (fetch, cmds) = rig.want();
    assert!(requests_token(&cmds));
    assert!(opened(&cmds).is_empty());
    // A second fetch does not ask again while the first request is unanswered.
    assert!(!requests_token(&rig.want().1));
    assert_eq!(opened(&rig.token(None)), vec![1]);
    assert_eq!(dispatched(&rig.ready(1)), vec![(fetch, 1), (fetch + 1, 1)]);
}

#[test]
fn connections_open_lazily_as_fetches_need_slots_up_to_the_cap() {
    let mut rig = Rig::with_token(config());
    let mut opens = Vec::new();
    for _ in 0..9 {
        opens.extend(opened(&rig.want().1));
    }
    // Two slots per connection: the 1st, 3rd and 5th fetch each needed one; then the cap.
    assert_eq!(opens, vec![1, 2, 3]);
    assert_eq!(rig.policy.queued(), 9);
    assert_eq!(dispatched(&rig.ready(2)), vec![(1, 2), (2, 2)]);
    assert_eq!(dispatched(&rig.ready(1)), vec![(3, 1), (4, 1)]);
    assert_eq!(rig.policy.queued(), 5);
}

#[test]
fn the_token_claim_and_a_learned_cap_lower_the_setting() {
    let mut rig = Rig::new(Config {
        max_connections: 5,
        ..config()
    });
    rig.want();
    let mut opens = opened(&rig.token(Some(2)));
    for _ in 0..20 {
        opens.extend(opened(&rig.want().1));
    }
    assert_eq!(opens, vec![1, 2]);
    // A claim of 0 means no claim.
    let mut rig = Rig::new(Config {
        max_connections: 2,
        ..config()
    });
    rig.want_n(10);
    assert_eq!(opened(&rig.token(Some(0))), vec![1, 2]);
}

#[test]
fn each_fetch_goes_to_the_least_loaded_ready_connection() {
    let mut rig = Rig::with_token(config());
    let fetches = rig.want_n(5);
    rig.ready(1);
    rig.ready(2);
    rig.ready(3);
    // 1 and 2 carry two each, 3 carries one.
    assert_eq!(dispatched(&rig.want().1), vec![(6, 3)]);
    rig.done(2, fetches[2]);
    rig.done(2, fetches[3]);
    // Connection 2 is empty now; connecting ones and full ones are skipped.
    assert_eq!(dispatched(&rig.want().1), vec![(7, 2)]);
    assert_eq!(dispatched(&rig.want().1), vec![(8, 2)]);
    // Every slot is taken: the next one waits, and takes the first slot freed.
    let (waiting, cmds) = rig.want();
    assert!(dispatched(&cmds).is_empty());
    assert_eq!(rig.policy.queued(), 1);
    let cmds = rig.done(1, fetches[0]);
    assert_eq!(answered(&cmds), vec![(fetches[0], "ok")]);
    assert_eq!(dispatched(&cmds), vec![(waiting, 1)]);
    assert_eq!(rig.policy.served_total(), 3);
}

#[test]
fn a_full_queue_refuses_at_once_and_the_queue_is_first_in_first_out() {
    let mut rig = Rig::with_token(Config {
        max_connections: 1,
        slots: 1,
        max_queue: 3,
        ..config()
    });
    let fetches = rig.want_n(3);
    let (refused, cmds) = rig.want();
    assert_eq!(answered(&cmds), vec![(refused, "queue_full")]);
    assert_eq!(rig.policy.queued(), 3);
    assert_eq!(dispatched(&rig.ready(1)), vec![(fetches[0], 1)]);
    // Room again for one.
    let (fourth, cmds) = rig.want();
    assert!(answered(&cmds).is_empty());
    assert_eq!(dispatched(&rig.done(1, fetches[0])), vec![(fetches[1], 1)]);
    assert_eq!(dispatched(&rig.done(1, fetches[1])), vec![(fetches[2], 1)]);
    assert_eq!(dispatched(&rig.done(1, fetches[2])), vec![(fourth, 1)]);
}

#[test]
fn a_queue_of_zero_still_holds_one_fetch() {
    let mut rig = Rig::with_token(Config {
        max_queue: 0,
        ..Config::from_settings(&Settings::default(), false)
    });
    let (_, cmds) = rig.want();
    assert!(answered(&cmds).is_empty());
    assert_eq!(opened(&cmds), vec![1]);
    assert_eq!(answered(&rig.want().1), vec![(2, "queue_full")]);
}

// Retry once.

#[test]
fn fetches_of_a_lost_connection_are_retried_once_then_fail() {
    let mut rig = Rig::with_token(config());
    let fetches = rig.want_n(2);
    rig.ready_and_proven(1);
    let cmds = rig.ended(1, lost());
    assert!(answered(&cmds).is_empty());
    assert_eq!(opened(&cmds), vec![2]);
    assert_eq!(
        rig.health(),
        PoolHealth::Healthy,
        "a proven connection lost is no failed attempt"
    );
    // Back in their old order, at the front of the queue.
    let (later, _) = rig.want();
    assert_eq!(
        dispatched(&rig.ready_and_proven(2)),
        vec![(fetches[0], 2), (fetches[1], 2)]
    );
    // A late answer from the old connection is not the fetch's answer.
    assert!(answered(&rig.done(1, fetches[0])).is_empty());
    let cmds = rig.ended(2, lost());
    assert_eq!(
        answered(&cmds),
        vec![
            (fetches[1], "connection_lost"),
            (fetches[0], "connection_lost")
        ]
    );
    // The fetch that was only queued is untouched.
    assert!(rig.policy.fetches.contains_key(&later));
}

#[test]
fn a_refused_connection_does_not_use_up_the_retry() {
    let mut rig = Rig::with_token(Config {
        max_connections: 1,
        ..config()
    });
    let (fetch, _) = rig.want();
    // Refused right after its hello, with the fetch already given to it.
    assert_eq!(dispatched(&rig.ready(1)), vec![(fetch, 1)]);
    rig.ended(1, refused());
    rig.advance(SECOND);
    assert_eq!(opened(&rig.fire(Timer::Reconnect)), vec![2]);
    assert_eq!(dispatched(&rig.ready_and_proven(2)), vec![(fetch, 2)]);
    // A real loss: the retry is still there.
    let cmds = rig.ended(2, lost());
    assert!(answered(&cmds).is_empty());
    assert_eq!(opened(&cmds), vec![3]);
    assert_eq!(dispatched(&rig.ready_and_proven(3)), vec![(fetch, 3)]);
    assert_eq!(
        answered(&rig.ended(3, lost())),
        vec![(fetch, "connection_lost")]
    );
}

#[test]
fn a_connection_that_never_worked_ending_counts_as_a_failed_attempt() {
    let mut rig = Rig::with_token(config());
    let (fetch, _) = rig.want();
    rig.ready(1);
    // Lost during probation, before answering anything.
    let cmds = rig.ended(1, lost());
    assert_eq!(scheduled(&cmds, Timer::Reconnect), Some(rig.at(1)));
    assert!(rig.policy.fetches.get(&fetch).is_some_and(|f| !f.retried));
}

// The reconnect episode.

#[test]
fn failed_attempts_back_off_doubling_one_at_a_time_then_the_pool_is_down() {
    let mut rig = Rig::with_token(config());
    let fetches = rig.want_n(6);
    assert_eq!(rig.policy.connection_count(), 3);
    // All three are refused; the first failure starts the episode, the others fall in its backoff.
    let cmds = rig.ended(1, refused());
    assert_eq!(scheduled(&cmds, Timer::Reconnect), Some(rig.at(1)));
    assert_eq!(
        notices(&cmds),
        vec![
            &Notice::OpenConnections(0),
            &Notice::Ended {
                conn: 1,
                reason: refused()
            },
            &Notice::ReconnectScheduled {
                attempt: 1,
                max: 3,
                delay: SECOND,
                reason: refused()
            },
        ]
    );
    assert!(scheduled(&rig.ended(2, refused()), Timer::Reconnect).is_none());
    assert!(scheduled(&rig.ended(3, refused()), Timer::Reconnect).is_none());
    assert_eq!(
        rig.health(),
        PoolHealth::Backoff {
            attempt: 1,
            until: rig.at(1),
            floor: 4
        }
    );
    // Nothing opens during the backoff, whatever comes in.
    assert!(opened(&rig.want().1).is_empty());

    // Each attempt: one connection, however many fetches wait.
    for (attempt, conn, due, next) in [(1, 4, 1, 3), (2, 5, 3, 7)] {
        rig.now = rig.at(due);
        let cmds = rig.fire(Timer::Reconnect);
        assert_eq!(opened(&cmds), vec![conn]);
        assert_eq!(rig.health(), PoolHealth::Retrying { attempt, floor: 4 });
        assert!(opened(&rig.want().1).is_empty(), "one attempt at a time");
        let cmds = rig.ended(conn, refused());
        assert_eq!(scheduled(&cmds, Timer::Reconnect), Some(rig.at(next)));
        assert_eq!(rig.health().attempts(), attempt + 1);
    }
    // The third reconnect attempt fails too: down, and every waiting fetch fails at once.
    rig.now = rig.at(7);
    assert_eq!(opened(&rig.fire(Timer::Reconnect)), vec![6]);
    let cmds = rig.ended(6, refused());
    assert!(scheduled(&cmds, Timer::Reconnect).is_none());
    assert_eq!(
        rig.health(),
        PoolHealth::Down {
            attempts: 3,
            floor: 4
        }
    );
    let failed = answered(&cmds);
    assert_eq!(failed.len(), 9);
    assert!(
        failed
            .iter()
            .all(|(_, code)| *code == "upstream_unavailable")
    );
    assert_eq!(failed[0].0, fetches[0]);
    assert_eq!(rig.policy.queued(), 0);
    assert!(matches!(
        notices(&cmds).last(),
        Some(Notice::Down { failing: 9, message }) if message.contains("after 3 reconnect attempts")
    ));
}

#[test]
fn the_backoff_jitter_scales_each_delay() {
    let mut rig = Rig::with_token(Config {
        backoff: Backoff {
            jitter: || 0.0,
            ..config().backoff
        },
        ..config()
    });
    rig.want();
    let cmds = rig.ended(1, refused());
    assert_eq!(
        scheduled(&cmds, Timer::Reconnect),
        Some(rig.start + Duration::from_millis(800))
    );
}

#[test]
fn only_a_connection_opened_in_the_episode_ends_it() {
    let mut rig = Rig::with_token(config());
    rig.want_n(3);
    // Connection 1 authenticates but is still on probation; connection 2 is refused.
    rig.ready(1);
    rig.ended(2, refused());
    assert_eq!(rig.health().attempts(), 1);
    // Connection 1 proving itself says nothing about whether new ones are accepted.
    rig.fire(Timer::Probation(1));
    assert_eq!(rig.health().attempts(), 1);
    rig.advance(SECOND);
    assert_eq!(opened(&rig.fire(Timer::Reconnect)), vec![3]);
    // Ready is not enough: the feed may still refuse it right after its hello.
    rig.ready(3);
    assert_eq!(rig.health().attempts(), 1);
    rig.fire(Timer::Probation(3));
    assert_eq!(rig.health(), PoolHealth::Healthy);
}

#[test]
fn an_answered_fetch_proves_a_connection_before_probation_ends() {
    let mut rig = Rig::with_token(config());
    rig.want();
    rig.ended(1, refused());
    rig.advance(SECOND);
    assert_eq!(opened(&rig.fire(Timer::Reconnect)), vec![2]);
    let cmds = rig.ready(2);
    assert_eq!(
        scheduled(&cmds, Timer::Probation(2)),
        Some(rig.now + PROBATION)
    );
    let (fetch, conn) = dispatched(&cmds)[0];
    rig.done(conn, fetch);
    assert_eq!(rig.health(), PoolHealth::Healthy);
}

#[test]
fn success_during_a_backoff_ends_it_and_cancels_its_timer() {
    let mut rig = Rig::with_token(Config {
        slots: 1,
        ..config()
    });
    rig.want_n(3);
    rig.ready(1);
    rig.ended(2, refused());
    rig.ended(3, refused());
    rig.advance(SECOND);
    assert_eq!(opened(&rig.fire(Timer::Reconnect)), vec![4]);
    // Connection 4 (of the episode) is ready; the older connection 1 is lost unproven, which
    // fails another attempt and backs off again.
    rig.ready(4);
    rig.ended(1, lost());
    assert!(matches!(
        rig.health(),
        PoolHealth::Backoff { attempt: 2, .. }
    ));
    let cmds = rig.fire(Timer::Probation(4));
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::CancelTimer(Timer::Reconnect)))
    );
    assert_eq!(rig.health(), PoolHealth::Healthy);
}

#[test]
fn a_backoff_with_nothing_left_to_do_ends_the_episode_quietly() {
    let mut rig = Rig::with_token(config());
    let (fetch, _) = rig.want();
    rig.ended(1, refused());
    rig.gone(fetch);
    rig.advance(SECOND);
    let cmds = rig.fire(Timer::Reconnect);
    assert!(cmds.is_empty());
    assert_eq!(rig.health(), PoolHealth::Healthy);
}

#[test]
fn down_fails_fast_and_a_new_fetch_probes_with_one_connection() {
    let mut rig = Rig::with_token(giving_up_after(0));
    let (first, _) = rig.want();
    let cmds = rig.ended(1, refused());
    assert_eq!(answered(&cmds), vec![(first, "upstream_unavailable")]);
    assert!(rig.health().is_down());

    // A new fetch starts a probe at once (no backoff), and a failed probe is down again at once.
    let (second, cmds) = rig.want();
    assert_eq!(notices(&cmds)[0], &Notice::ProbeAfterDown);
    assert_eq!(opened(&cmds), vec![2]);
    assert_eq!(rig.health(), PoolHealth::Probing { floor: 2 });
    assert!(opened(&rig.want().1).is_empty(), "a single probe");
    let cmds = rig.ended(2, refused());
    assert_eq!(
        answered(&cmds),
        vec![
            (second, "upstream_unavailable"),
            (second + 1, "upstream_unavailable")
        ]
    );
    assert!(scheduled(&cmds, Timer::Reconnect).is_none());
    assert!(rig.health().is_down());

    // The feed is back: the probe works and the pool is healthy again.
    let (third, cmds) = rig.want();
    assert_eq!(opened(&cmds), vec![3]);
    assert_eq!(dispatched(&rig.ready_and_proven(3)), vec![(third, 3)]);
    assert_eq!(rig.health(), PoolHealth::Healthy);
}

#[test]
fn probing_after_the_full_schedule_fails_fast_too() {
    let mut rig = Rig::with_token(Config {
        max_connections: 1,
        ..config()
    });
    rig.want();
    rig.ended(1, refused());
    for conn in 2..=4 {
        rig.advance(Duration::from_secs(10));
        rig.fire(Timer::Reconnect);
        rig.ended(conn, refused());
    }
    assert_eq!(
        rig.health(),
        PoolHealth::Down {
            attempts: 3,
            floor: 2
        }
    );
    let (probe, cmds) = rig.want();
    assert_eq!(opened(&cmds), vec![5]);
    assert_eq!(
        answered(&rig.ended(5, refused())),
        vec![(probe, "upstream_unavailable")]
    );
}

#[test]
fn keep_warm_ends_down_with_a_probe_and_keeps_a_connection_open() {
    let mut rig = Rig::with_token(giving_up_after(0));
    rig.want();
    rig.ended(1, refused());
    assert!(rig.health().is_down());
    let cmds = rig.step(Event::KeepWarm);
    assert_eq!(opened(&cmds), vec![2]);
    assert_eq!(rig.health(), PoolHealth::Probing { floor: 2 });
    rig.ready_and_proven(2);
    assert_eq!(rig.health(), PoolHealth::Healthy);
    // Warm: a lost connection is replaced with no fetch waiting.
    assert_eq!(opened(&rig.ended(2, lost())), vec![3]);
}

#[test]
fn a_feed_that_refuses_more_connections_than_it_serves_teaches_the_cap() {
    let mut rig = Rig::with_token(Config {
        slots: 1,
        ..giving_up_after(1)
    });
    let fetches = rig.want_n(4);
    rig.ready(1);
    rig.ended(2, refused());
    rig.ended(3, refused());
    rig.advance(SECOND);
    assert_eq!(opened(&rig.fire(Timer::Reconnect)), vec![4]);
    let cmds = rig.ended(4, refused());
    assert_eq!(
        notices(&cmds).last(),
        Some(&&Notice::CapLearned {
            working: 1,
            reason: refused()
        })
    );
    assert_eq!(rig.health(), PoolHealth::Healthy);
    assert!(opened(&cmds).is_empty());
    // The pool works at that size: fetches go through connection 1 one after another.
    let mut served = vec![fetches[0]];
    for _ in 1..4 {
        let cmds = rig.done(1, *served.last().expect("a fetch"));
        assert!(opened(&cmds).is_empty());
        served.push(dispatched(&cmds)[0].0);
    }
    assert_eq!(served, fetches);
    // A new token clears what was learned.
    rig.want_n(3);
    assert_eq!(opened(&rig.token(None)), vec![5, 6]);
}

#[test]
fn a_rejected_token_is_replaced_when_it_can_be() {
    let mut rig = Rig::with_token(Config {
        token_refreshable: true,
        ..config()
    });
    rig.want();
    let cmds = rig.ended(1, EndReason::AuthRejected("bad auth token".into()));
    assert!(requests_token(&cmds));
    assert!(scheduled(&cmds, Timer::Reconnect).is_some());
    // A fixed token stays rejected: no new one is asked for.
    let mut rig = Rig::with_token(config());
    rig.want();
    let cmds = rig.ended(1, EndReason::AuthRejected("bad auth token".into()));
    assert!(!requests_token(&cmds));
}

#[test]
fn a_token_that_cannot_be_had_is_a_failed_attempt() {
    let mut rig = Rig::new(config());
    rig.want();
    let cmds = rig.step(Event::TokenFailed {
        reason: "token page answered HTTP 401".into(),
    });
    assert_eq!(scheduled(&cmds, Timer::Reconnect), Some(rig.at(1)));
    rig.advance(SECOND);
    assert!(requests_token(&rig.fire(Timer::Reconnect)));
}

// Stale connections.

#[test]
fn stale_connections_are_replaced_and_their_fetches_retried() {
    let mut rig = Rig::with_token(Config {
        max_connections: 2,
        ..config()
    });
    let fetches = rig.want_n(3);
    rig.ready_and_proven(1);
    // Connection 2 is still connecting: quiet, but not stale.
    let quiet = Duration::from_secs(26);
    let cmds = rig.step(Event::ConnsStale(vec![(1, quiet), (2, quiet)]));
    assert_eq!(shut(&cmds), vec![1]);
    assert_eq!(notices(&cmds)[0], &Notice::Stale { conn: 1, quiet });
    assert_eq!(opened(&cmds), vec![3]);
    assert_eq!(
        dispatched(&rig.ready(3)),
        vec![(fetches[0], 3), (fetches[1], 3)]
    );
    // Its end, reported later, changes nothing.
    assert!(rig.ended(1, EndReason::Closed).is_empty());
    // They were retried: a second loss is final.
    rig.fire(Timer::Probation(3));
    let cmds = rig.step(Event::ConnsStale(vec![(3, quiet)]));
    assert_eq!(answered(&cmds).len(), 2);
}

// Token rotation.

#[test]
fn a_new_token_moves_connections_over_one_at_a_time() {
    let mut rig = Rig::with_token(Config {
        token_refreshable: true,
        ..config()
    });
    rig.step(Event::KeepWarm);
    let fetches = rig.want_n(4);
    for conn in 1..=2 {
        assert_eq!(dispatched(&rig.ready_and_proven(conn)).len(), 2);
    }
    let state = |rig: &Rig, id| {
        rig.policy
            .connections()
            .find(|c| c.id == id)
            .map(|c| c.state)
    };

    let cmds = rig.token(None);
    assert_eq!(
        notices(&cmds),
        vec![
            &Notice::Rotating {
                generation: 2,
                old: 2
            },
            &Notice::Draining {
                conn: 1,
                in_flight: 2
            }
        ]
    );
    assert!(
        shut(&cmds).is_empty(),
        "a draining connection finishes its fetches first"
    );
    // One drains at a time.
    assert_eq!(state(&rig, 2), Some(ConnState::Ready));
    // The draining connection takes nothing new: a new fetch needs a connection on the new token.
    let (fifth, cmds) = rig.want();
    assert!(dispatched(&cmds).is_empty());
    assert_eq!(opened(&cmds), vec![3]);

    // It closes once its last fetch is done.
    assert!(shut(&rig.done(1, fetches[0])).is_empty());
    assert_eq!(shut(&rig.done(1, fetches[1])), vec![1]);
    let cmds = rig.ended(1, EndReason::Closed);
    assert!(answered(&cmds).is_empty());
    // Warm: it is replaced, and the next one drains only once its replacements are ready.
    assert_eq!(opened(&cmds), vec![4]);
    assert_eq!(state(&rig, 2), Some(ConnState::Ready));
    assert_eq!(dispatched(&rig.ready(3)), vec![(fifth, 3)]);
    assert_eq!(
        state(&rig, 2),
        Some(ConnState::Ready),
        "4 is still connecting"
    );
    rig.ready(4);
    assert_eq!(state(&rig, 2), Some(ConnState::Draining));
    rig.done(2, fetches[2]);
    assert_eq!(shut(&rig.done(2, fetches[3])), vec![2]);
    rig.ended(2, EndReason::Closed);
    assert!(
        rig.policy
            .connections()
            .all(|c| c.id > 2 && c.state != ConnState::Draining)
    );
    assert_eq!(rig.policy.served_total(), 4);
}

#[test]
fn a_token_refresh_is_scheduled_and_asked_for() {
    let mut rig = Rig::new(Config {
        token_refreshable: true,
        ..config()
    });
    let cmds = rig.step(Event::TokenArrived {
        max_connections: None,
        refresh_in: Some(Duration::from_secs(100)),
    });
    assert_eq!(scheduled(&cmds, Timer::TokenRefresh), Some(rig.at(100)));
    rig.now = rig.at(100);
    assert!(requests_token(&rig.fire(Timer::TokenRefresh)));
    // A token that cannot be refreshed is not scheduled.
    let mut rig = Rig::new(config());
    let cmds = rig.step(Event::TokenArrived {
        max_connections: None,
        refresh_in: Some(Duration::from_secs(100)),
    });
    assert!(scheduled(&cmds, Timer::TokenRefresh).is_none());
}

// Requesters that go away.

#[test]
fn a_queued_fetch_whose_requester_left_leaves_the_queue() {
    let mut rig = Rig::with_token(config());
    let fetches = rig.want_n(3);
    let cmds = rig.gone(fetches[1]);
    assert_eq!(
        notices(&cmds),
        vec![&Notice::Cancelled { fetch: fetches[1] }]
    );
    assert_eq!(rig.policy.queued(), 2);
    assert_eq!(
        dispatched(&rig.ready(1)),
        vec![(fetches[0], 1), (fetches[2], 1)]
    );
    // Gone twice, or gone after its answer: nothing.
    assert!(rig.gone(fetches[1]).is_empty());
    rig.done(1, fetches[0]);
    assert!(rig.gone(fetches[0]).is_empty());
}

#[test]
fn a_dispatched_fetch_whose_requester_left_is_cancelled_on_its_connection() {
    let mut rig = Rig::with_token(Config {
        slots: 1,
        max_connections: 1,
        ..config()
    });
    let fetches = rig.want_n(3);
    rig.ready(1);
    let cmds = rig.gone(fetches[0]);
    assert_eq!(cancelled(&cmds), vec![(fetches[0], 1)]);
    // Its slot is refilled at the next tick, not at once: the second fetch's requester, leaving
    // in the same moment, is seen to go first and never reaches the feed.
    assert!(dispatched(&cmds).is_empty());
    assert!(cmds.iter().any(|c| matches!(
        c,
        Command::Schedule {
            timer: Timer::Refill,
            ..
        }
    )));
    assert!(dispatched(&rig.gone(fetches[1])).is_empty());
    assert_eq!(dispatched(&rig.fire(Timer::Refill)), vec![(fetches[2], 1)]);
    // Its answer, if it still comes, goes nowhere.
    assert!(answered(&rig.done(1, fetches[0])).is_empty());
}

#[test]
fn a_fetch_on_a_draining_connection_whose_requester_left_lets_it_close() {
    let mut rig = Rig::with_token(Config {
        token_refreshable: true,
        max_connections: 1,
        ..config()
    });
    let (fetch, _) = rig.want();
    rig.ready_and_proven(1);
    rig.token(None);
    let cmds = rig.gone(fetch);
    assert_eq!(cancelled(&cmds), vec![(fetch, 1)]);
    assert_eq!(shut(&cmds), vec![1]);
}

#[test]
fn a_requeued_fetch_whose_requester_left_is_not_retried() {
    let mut rig = Rig::with_token(Config {
        max_connections: 1,
        ..config()
    });
    let (fetch, _) = rig.want();
    rig.ready_and_proven(1);
    rig.ended(1, lost());
    assert_eq!(rig.policy.queued(), 1);
    let cmds = rig.gone(fetch);
    assert!(cancelled(&cmds).is_empty(), "no connection carries it");
    assert_eq!(rig.policy.queued(), 0);
    assert!(dispatched(&rig.ready(2)).is_empty());
}

#[test]
fn many_requesters_leaving_cost_no_scan_and_leave_no_garbage() {
    let mut rig = Rig::with_token(Config {
        max_queue: 20_000,
        ..config()
    });
    let fetches = rig.want_n(10_000);
    for &fetch in &fetches[..9_990] {
        rig.gone(fetch);
    }
    assert_eq!(rig.policy.queued(), 10);
    assert!(
        rig.policy.queue.len() <= 2 * 10 + 32,
        "{}",
        rig.policy.queue.len()
    );
    let served: Vec<FetchId> = [1, 2, 3]
        .into_iter()
        .flat_map(|conn| dispatched(&rig.ready(conn)))
        .map(|(fetch, _)| fetch)
        .collect();
    assert_eq!(served, fetches[9_990..9_996]);
}

// Closing.

#[test]
fn close_all_closes_everything_and_fails_what_waits() {
    let mut rig = Rig::with_token(Config {
        token_refreshable: true,
        max_connections: 1,
        slots: 1,
        ..config()
    });
    rig.step(Event::KeepWarm);
    let fetches = rig.want_n(2);
    rig.ready(1);
    let cmds = rig.step(Event::CloseAll);
    assert_eq!(shut(&cmds), vec![1]);
    assert_eq!(
        answered(&cmds),
        vec![
            (fetches[0], "connection_lost"),
            (fetches[1], "upstream_unavailable")
        ]
    );
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::CancelTimer(Timer::TokenRefresh)))
    );
    assert_eq!(rig.policy.connection_count(), 0);
    // No longer warm: the closed connection's end opens nothing; the next fetch needs a token.
    assert!(opened(&rig.ended(1, EndReason::Closed)).is_empty());
    let (_, cmds) = rig.want();
    assert!(requests_token(&cmds));
    assert!(opened(&cmds).is_empty());
}

#[test]
fn close_all_ends_a_failure_episode() {
    let mut rig = Rig::with_token(config());
    rig.want();
    rig.ended(1, refused());
    let cmds = rig.step(Event::CloseAll);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::CancelTimer(Timer::Reconnect)))
    );
    assert_eq!(rig.health(), PoolHealth::Healthy);
    assert_eq!(opened(&rig.want().1), vec![2]);
}

// ----------------------------------------------------------------------------- live

fn started_live(cmds: &[Command]) -> Vec<(LiveId, ConnId)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::StartLive { live, conn } => Some((*live, *conn)),
            _ => None,
        })
        .collect()
}

fn stopped_live(cmds: &[Command]) -> Vec<(LiveId, ConnId)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::StopLive { live, conn } => Some((*live, *conn)),
            _ => None,
        })
        .collect()
}

impl Rig {
    fn live(&mut self, live: LiveId, series: bool) -> Vec<Command> {
        self.step(Event::LiveWanted { live, series })
    }
}

#[test]
fn live_series_fill_connections_up_to_their_live_capacity_beside_fetches() {
    // Two live series per connection, two fetch slots per connection, three connections.
    let mut rig = Rig::with_token(config());
    let cmds = rig.live(1, true);
    assert_eq!(opened(&cmds), [1], "a connection opens for a live series");
    assert!(started_live(&rig.ready_and_proven(1)).contains(&(1, 1)));
    assert_eq!(started_live(&rig.live(2, true)), [(2, 1)]);
    // The first connection's live capacity is used up: the third needs another connection.
    let cmds = rig.live(3, true);
    assert!(started_live(&cmds).is_empty());
    assert_eq!(opened(&cmds), [2]);
    assert_eq!(started_live(&rig.ready_and_proven(2)), [(3, 2)]);
    // Fetches are not held back by live series: connection 1 still takes two.
    let (fetch, cmds) = rig.want();
    assert_eq!(dispatched(&cmds), [(fetch, 1)]);
    // Quotes take no series capacity: they go to the connection with the fewest subscriptions.
    assert_eq!(started_live(&rig.live(4, false)), [(4, 2)]);
    let loads: Vec<(ConnId, usize)> = rig.policy.connections().map(|c| (c.id, c.live)).collect();
    assert_eq!(loads, [(1, 2), (2, 2)]);
}

#[test]
fn a_lost_connection_moves_its_live_series_to_the_others() {
    let mut rig = Rig::with_token(Config {
        live_per_connection: 5,
        ..config()
    });
    rig.live(1, true);
    rig.ready_and_proven(1);
    rig.live(2, true);
    rig.live(3, false);
    // A second connection, opened for fetches.
    rig.want_n(3);
    rig.ready_and_proven(2);
    let cmds = rig.ended(1, lost());
    let moved: Vec<LiveId> = started_live(&cmds).iter().map(|&(l, _)| l).collect();
    assert_eq!(moved, [1, 2, 3], "every subscription placed again");
    assert!(started_live(&cmds).iter().all(|&(_, c)| c == 2));
    assert!(notices(&cmds).iter().any(|n| matches!(
        n,
        Notice::LiveMoved {
            conn: 1,
            series: 2,
            quotes: 1
        }
    )));
}

#[test]
fn live_series_wait_through_the_backoff_when_the_feed_refuses() {
    let mut rig = Rig::with_token(config());
    rig.live(1, true);
    rig.ready_and_proven(1);
    // The feed drops the connection, then refuses the replacement.
    let cmds = rig.ended(1, lost());
    assert_eq!(
        opened(&cmds),
        [2],
        "the waiting series asks for a connection"
    );
    let cmds = rig.ended(2, refused());
    assert!(opened(&cmds).is_empty(), "backing off");
    let at = scheduled(&cmds, Timer::Reconnect).expect("a reconnect is scheduled");
    rig.now = at;
    let cmds = rig.fire(Timer::Reconnect);
    assert_eq!(
        opened(&cmds),
        [3],
        "the series still waits: the episode goes on"
    );
    assert_eq!(started_live(&rig.ready_and_proven(3)), [(1, 3)]);
    assert_eq!(rig.health(), PoolHealth::Healthy);
}

#[test]
fn a_dropped_live_series_is_stopped_where_it_was_and_frees_its_place() {
    let mut rig = Rig::with_token(Config {
        live_per_connection: 1,
        ..config()
    });
    rig.step(Event::KeepWarm);
    rig.live(1, true);
    rig.ready_and_proven(1);
    rig.live(2, true);
    let cmds = rig.step(Event::LiveDropped { live: 1 });
    assert_eq!(stopped_live(&cmds), [(1, 1)]);
    assert_eq!(
        started_live(&cmds),
        [(2, 1)],
        "the waiting one takes the freed place"
    );
    assert!(shut(&cmds).is_empty(), "a lease keeps the pool warm");
}

#[test]
fn after_close_all_live_series_reopen_a_connection_and_the_last_one_dropped_closes_it() {
    let mut rig = Rig::with_token(config());
    rig.step(Event::KeepWarm);
    rig.live(1, true);
    rig.ready_and_proven(1);
    // The idle timeout (or force-cleanup): the series is still wanted, so it is placed again.
    let cmds = rig.step(Event::CloseAll);
    assert_eq!(shut(&cmds), [1]);
    assert_eq!(opened(&cmds), [2]);
    assert_eq!(started_live(&rig.ready_and_proven(2)), [(1, 2)]);
    // Its last follower's linger is over: nothing keeps the connection open any more.
    let cmds = rig.step(Event::LiveDropped { live: 1 });
    assert_eq!(stopped_live(&cmds), [(1, 2)]);
    assert_eq!(shut(&cmds), [2]);
}
