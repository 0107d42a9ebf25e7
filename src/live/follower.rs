//! A live stream's side of following: which of its charts and quotes changed (its [`Inbox`]), and
//! what it has sent of each (a cursor), so that when the stream next writes it sends the newest
//! state of each changed chart and quote, nothing more.
//!
//! That is the conflation: a series tells an inbox "slot 7 changed" by setting a flag, and a
//! second change before the stream has written the first only finds the flag set. The stream then
//! reads the series itself, from its cursor on: every bar changed since, in time order, so a bar
//! that became final goes out in its final state before the bar after it. A follower's memory is
//! its flags, its cursors and the slots waiting, whatever the pace of the feed or of its reader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use super::quote::QuoteFeed;
use super::series::{Phase, SeriesFeed};
use super::{FollowerGone, Hold, LiveCounters};
use crate::http::sse::EventBatch;

/// Which of a follower's charts and quotes changed since it last looked.
#[derive(Debug)]
pub struct Inbox {
    /// One per slot: set when the slot is waiting in `pending`.
    flags: Box<[AtomicBool]>,
    pending: Mutex<Vec<usize>>,
    waker: AtomicWaker,
}

impl Inbox {
    pub fn new(slots: usize) -> Arc<Inbox> {
        Arc::new(Inbox {
            flags: (0..slots).map(|_| AtomicBool::new(false)).collect(),
            pending: Mutex::new(Vec::new()),
            waker: AtomicWaker::new(),
        })
    }

    /// Slot `slot` changed. `false` when it was already waiting: the change before this one was
    /// not sent and never will be, this one replaces it.
    pub fn mark(&self, slot: usize) -> bool {
        let Some(flag) = self.flags.get(slot) else {
            return true;
        };
        if flag.swap(true, Ordering::AcqRel) {
            return false;
        }
        let first = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push(slot);
            pending.len() == 1
        };
        if first {
            self.waker.wake();
        }
        true
    }

    /// Moves the waiting slots into `into`. Each flag is cleared before its slot's state is read,
    /// so a change that lands meanwhile marks the slot again rather than being lost.
    fn take(&self, into: &mut Vec<usize>) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *pending, into);
        }
        for &slot in into.iter() {
            if let Some(flag) = self.flags.get(slot) {
                flag.store(false, Ordering::Release);
            }
        }
    }

    fn poll_pending(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        let waiting = !self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if waiting {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The streams following one series or quote, each with its slot: told of every change.
#[derive(Debug, Default)]
pub struct Followers(Vec<(Arc<Inbox>, usize)>);

impl Followers {
    pub fn add(&mut self, inbox: Arc<Inbox>, slot: usize) {
        self.0.push((inbox, slot));
    }

    pub fn remove(&mut self, inbox: &Arc<Inbox>) {
        self.0.retain(|(other, _)| !Arc::ptr_eq(other, inbox));
    }

    /// Marks the change in every follower's inbox; returns how many had not written the previous
    /// change yet (conflated).
    pub fn tell(&self) -> usize {
        self.0
            .iter()
            .filter(|(inbox, slot)| !inbox.mark(*slot))
            .count()
    }
}

/// Where a follower is in a chart: what it must send next time the chart is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The history is still being sent: changes wait.
    History,
    /// The history held bars up to this time: send from it on (at least the last bar).
    FromTime(i64),
    /// Resumed from an id: send every bar changed at or after these wall-clock milliseconds (at
    /// least the last bar).
    SinceMs(i64),
    /// Sent everything up to this sequence number of the series.
    Seq(u64),
    /// Not followed (its history failed, or the feed refused it).
    Dropped,
}

struct FollowedChart {
    feed: Arc<SeriesFeed>,
    cursor: Cursor,
    _hold: Hold,
}

struct FollowedQuote {
    feed: Arc<QuoteFeed>,
    /// The quote's sequence number last sent (0: none yet).
    sent: u64,
    _hold: Hold,
}

/// A live stream's following of its charts and quotes. Dropping it stops following: the series
/// forget its inbox and the registry counts one follower less for each.
pub struct Follower {
    inbox: Arc<Inbox>,
    charts: Vec<FollowedChart>,
    quotes: Vec<FollowedQuote>,
    /// Reused between drains.
    taken: Vec<usize>,
    counters: Arc<LiveCounters>,
    /// Dropped last: the registry counts the stream as a follower until then.
    _gone: FollowerGone,
}

/// What one drain wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drained {
    pub events: usize,
    /// When the oldest change it sent arrived from the feed.
    pub oldest: Option<Instant>,
}

impl Follower {
    pub(super) fn new(
        charts: Vec<(Arc<SeriesFeed>, Hold)>,
        quotes: Vec<(Arc<QuoteFeed>, Hold)>,
        counters: Arc<LiveCounters>,
        gone: FollowerGone,
    ) -> Follower {
        let inbox = Inbox::new(charts.len() + quotes.len());
        for (slot, (feed, _)) in charts.iter().enumerate() {
            feed.follow(inbox.clone(), slot);
        }
        for (n, (feed, _)) in quotes.iter().enumerate() {
            feed.follow(inbox.clone(), charts.len() + n);
        }
        Follower {
            charts: charts
                .into_iter()
                .map(|(feed, hold)| FollowedChart {
                    feed,
                    cursor: Cursor::History,
                    _hold: hold,
                })
                .collect(),
            quotes: quotes
                .into_iter()
                .map(|(feed, hold)| FollowedQuote {
                    feed,
                    sent: 0,
                    _hold: hold,
                })
                .collect(),
            inbox,
            taken: Vec::new(),
            counters,
            _gone: gone,
        }
    }

    /// Charts followed, in the order they were given.
    pub fn chart_count(&self) -> usize {
        self.charts.len()
    }

    /// Sets where chart `index` starts (after its history, or from a resumed id), and has it and
    /// every quote looked at in the next drain.
    pub fn start(&mut self, index: usize, cursor: Cursor) {
        if let Some(chart) = self.charts.get_mut(index) {
            chart.cursor = cursor;
            if cursor == Cursor::Dropped {
                chart.feed.unfollow(&self.inbox);
            } else {
                self.inbox.mark(index);
            }
        }
    }

    /// Has every quote sent in full at the next drain.
    pub fn start_quotes(&mut self) {
        for (n, quote) in self.quotes.iter_mut().enumerate() {
            quote.sent = 0;
            self.inbox.mark(self.charts.len() + n);
        }
    }

    /// Ready when something changed since the last drain.
    pub fn poll_changed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.inbox.poll_pending(cx)
    }

    /// Writes a `bar` event for every bar changed since each waiting chart's cursor, and a
    /// `quote` event for each changed quote, all with event id `id`.
    pub fn drain(&mut self, out: &mut EventBatch, id: &str) -> Drained {
        let mut taken = std::mem::take(&mut self.taken);
        taken.clear();
        self.inbox.take(&mut taken);
        let mut drained = Drained::default();
        let note = |at: Instant, drained: &mut Drained| {
            drained.events += 1;
            drained.oldest = Some(drained.oldest.map_or(at, |o: Instant| o.min(at)));
        };
        for &slot in &taken {
            if let Some(chart) = self.charts.get_mut(slot) {
                let state = chart.feed.lock();
                let from = match (&state.phase, chart.cursor) {
                    (_, Cursor::History | Cursor::Dropped) | (Phase::Subscribing, _) => continue,
                    (Phase::Failed(_), _) => {
                        chart.cursor = Cursor::Dropped;
                        drop(state);
                        chart.feed.unfollow(&self.inbox);
                        continue;
                    }
                    (Phase::Live, Cursor::FromTime(t)) => {
                        state.at_or_after(t).min(state.bars.len().saturating_sub(1))
                    }
                    (Phase::Live, Cursor::SinceMs(ms)) => {
                        state.since_ms(ms).min(state.bars.len().saturating_sub(1))
                    }
                    (Phase::Live, Cursor::Seq(seq)) => state.since_seq(seq),
                };
                for index in from..state.bars.len() {
                    out.push("bar", id, state.bar_json(&chart.feed.key, index));
                    note(state.bars[index].at, &mut drained);
                }
                chart.cursor = Cursor::Seq(state.seq);
            } else if let Some(quote) = self.quotes.get_mut(slot - self.charts.len()) {
                let mut state = quote.feed.lock();
                if state.failed || state.seq == 0 || state.seq == quote.sent {
                    continue;
                }
                quote.sent = state.seq;
                let at = state.at;
                out.push("quote", id, &state.event_data(&quote.feed.symbol));
                note(at, &mut drained);
            }
        }
        self.taken = taken;
        self.counters.sent(drained.events);
        drained
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        for chart in &self.charts {
            if chart.cursor != Cursor::Dropped {
                chart.feed.unfollow(&self.inbox);
            }
        }
        for quote in &self.quotes {
            quote.feed.unfollow(&self.inbox);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_mark_before_the_drain_is_conflated() {
        let inbox = Inbox::new(3);
        assert!(inbox.mark(1));
        assert!(!inbox.mark(1), "already waiting");
        assert!(inbox.mark(2));
        let mut taken = Vec::new();
        inbox.take(&mut taken);
        assert_eq!(taken, [1, 2]);
        assert!(inbox.mark(1), "waiting again after the drain");
        assert!(inbox.mark(7), "an unknown slot is ignored");
    }
}
