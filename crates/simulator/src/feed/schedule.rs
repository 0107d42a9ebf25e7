//! Scheduling series answers: the `series_concurrency` and `latency_ms` faults.
//!
//! A connection works on at most `series_concurrency` series at once (0: no bound), as a real
//! feed whose per-connection throughput is bounded; further requests wait their turn in arrival
//! order. A series holding a slot waits out `latency_ms` and is answered when due. Answers that
//! fall due together leave in the order they started, as from a real feed, rather than in
//! whatever order timers wake them: the active series are kept as one deadline-ordered queue
//! and the connection sleeps until the first deadline.
//!
//! With neither fault on, a series is answered at once, in the call that asked for it.

use std::collections::VecDeque;
use std::time::Duration;

use chartgate_protocol::clock::unix_ms;
use tokio::time::Instant;

use super::Connection;
use super::answer::{Job, Prepared, prepare};
use crate::settings::Faults;

/// Series answers waiting for a `series_concurrency` slot on one connection.
const MAX_WAITING: usize = 10_000;

/// A series holding a slot, waiting out `latency_ms`.
pub(super) struct Active {
    due: Instant,
    pub job: Job,
    /// Its answer, written while it waits (see [`prepare`]).
    pub prepared: Option<Prepared>,
}

/// What becomes of a series answer asked for.
enum Admission {
    /// Answer it now: no fault holds it back and nothing is ahead of it.
    Now(Job),
    /// It waits for a slot.
    Waiting,
    /// The waiting line is full: `series_error "too many requests"`.
    Refused(Job),
}

/// One connection's series answers in the making.
#[derive(Default)]
pub(super) struct Schedule {
    /// Series waiting for a slot, in arrival order.
    waiting: VecDeque<Job>,
    /// Series holding a slot, in due order (equal deadlines in the order they started).
    active: VecDeque<Active>,
}

impl Schedule {
    fn has_free_slot(&self, faults: &Faults) -> bool {
        faults.series_concurrency == 0 || self.active.len() < faults.series_concurrency
    }

    fn admit(&mut self, job: Job, faults: &Faults) -> Admission {
        if self.waiting.len() >= MAX_WAITING {
            return Admission::Refused(job);
        }
        if self.waiting.is_empty() && faults.latency_ms == 0 && self.has_free_slot(faults) {
            return Admission::Now(job);
        }
        self.waiting.push_back(job);
        Admission::Waiting
    }

    /// The next waiting series, if a slot is free for it.
    fn next_to_start(&mut self, faults: &Faults) -> Option<Job> {
        if !self.has_free_slot(faults) {
            return None;
        }
        self.waiting.pop_front()
    }

    /// Gives `job` a slot until `due`.
    fn start(&mut self, due: Instant, job: Job, prepared: Option<Prepared>) {
        let at = self.active.partition_point(|a| a.due <= due);
        self.active.insert(at, Active { due, job, prepared });
    }

    /// When the first active series is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.active.front().map(|a| a.due)
    }

    /// The first active series, which is due; its slot is free again.
    pub fn pop_due(&mut self) -> Option<Active> {
        self.active.pop_front()
    }
}

/// `latency_ms` from now. A latency too large for the clock (it comes from `POST /sim/faults`)
/// means a series that is never answered, not a panic.
fn due_after(latency_ms: u64) -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_millis(latency_ms))
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

impl Connection {
    /// Answers `job` now, or queues it for its turn.
    pub(super) async fn enqueue(&mut self, job: Job) {
        let faults = self.state.faults();
        match self.schedule.admit(job, &faults) {
            Admission::Now(job) => self.answer(job, None).await,
            Admission::Waiting => self.pump().await,
            Admission::Refused(job) => {
                self.out
                    .series_error(
                        &job.session,
                        &job.series_id,
                        &job.turnaround,
                        "too many requests",
                    )
                    .await;
            }
        }
    }

    /// Starts waiting series while slots are free.
    pub(super) async fn pump(&mut self) {
        loop {
            let faults = self.state.faults();
            if !self.out.is_open() {
                return;
            }
            let Some(job) = self.schedule.next_to_start(&faults) else {
                return;
            };
            if faults.latency_ms == 0 {
                self.answer(job, None).await;
            } else {
                let due = due_after(faults.latency_ms);
                let due_ms =
                    unix_ms().saturating_add(i64::try_from(faults.latency_ms).unwrap_or(i64::MAX));
                let prepared = prepare(&self.state, &job, self.auth.status(), &faults, due_ms);
                self.schedule.start(due, job, prepared);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bars::SimResolution;
    use crate::feed::answer::Work;

    fn job(series_id: &str) -> Job {
        Job {
            session: "cs_1".into(),
            series_id: series_id.into(),
            epoch: 1,
            symbol_id: "sds_sym_1".into(),
            symbol: "NSE:TCS".into(),
            turnaround: "s1".into(),
            work: Work::Full {
                resolution: SimResolution::Days(1),
                count: 10,
            },
        }
    }

    fn ids(schedule: &Schedule) -> Vec<&str> {
        schedule
            .active
            .iter()
            .map(|a| a.job.series_id.as_str())
            .collect()
    }

    #[test]
    fn with_no_fault_a_series_is_answered_at_once() {
        let mut schedule = Schedule::default();
        let faults = Faults::default();
        assert!(matches!(
            schedule.admit(job("a"), &faults),
            Admission::Now(_)
        ));
        assert!(schedule.waiting.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn slots_bound_the_active_series_and_equal_deadlines_keep_their_order() {
        let faults = Faults {
            series_concurrency: 2,
            latency_ms: 100,
            ..Faults::default()
        };
        let mut schedule = Schedule::default();
        for id in ["a", "b", "c"] {
            assert!(matches!(
                schedule.admit(job(id), &faults),
                Admission::Waiting
            ));
        }
        let due = Instant::now() + Duration::from_millis(faults.latency_ms);
        while let Some(job) = schedule.next_to_start(&faults) {
            schedule.start(due, job, None);
        }
        assert_eq!(ids(&schedule), ["a", "b"], "two slots");
        assert_eq!(schedule.waiting.len(), 1);

        tokio::time::sleep_until(schedule.next_due().unwrap()).await;
        assert_eq!(schedule.pop_due().unwrap().job.series_id, "a");
        let later = Instant::now() + Duration::from_millis(faults.latency_ms);
        let c = schedule.next_to_start(&faults).unwrap();
        schedule.start(later, c, None);
        // Due now, as "b" is: after "b", which started first, and before the later "c".
        schedule.start(Instant::now(), job("d"), None);
        assert_eq!(ids(&schedule), ["b", "d", "c"]);
    }

    #[test]
    fn a_full_waiting_line_refuses() {
        let faults = Faults {
            series_concurrency: 1,
            ..Faults::default()
        };
        let mut schedule = Schedule::default();
        schedule.start(Instant::now(), job("busy"), None);
        for _ in 0..MAX_WAITING {
            assert!(matches!(
                schedule.admit(job("w"), &faults),
                Admission::Waiting
            ));
        }
        assert!(matches!(
            schedule.admit(job("x"), &faults),
            Admission::Refused(_)
        ));
    }
}
