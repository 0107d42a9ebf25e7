//! One live series in the whole cluster (SPEC 7): the Redis side. Which instance owns a chart's
//! live series, the owner's stream of updates, and the reader that relays those updates into the
//! series of every other instance following the chart. Who becomes what, and when, is the live
//! registry's ([`crate::live`]).
//!
//! - **Ownership** is an owner-checked expiring lock per series (`chartgate:live:owner:{SYM:RES}`),
//!   claimed or renewed by one script every third of `cluster.live_lease_secs`: an owner that dies
//!   stops renewing, and another instance following the chart claims it after at most one lease.
//! - **The stream** (`chartgate:live:stream:{SYM:RES}`, a Redis stream capped near
//!   [`STREAM_LEN`] entries, expiring unless the owner renews it) carries the owner's updates in
//!   order: `u` (bars changed, as the feed sent them), `r` (every bar the series holds: after a
//!   new upstream answer, and every [`SNAPSHOT_EVERY`] updates, so a reader can start from the
//!   newest `r` it finds), `f` (the feed refused the series) and `h` (the owner let it go: the
//!   others claim it at once rather than at their next renewal).
//! - **Relays**: an instance following a chart it does not own reads its stream from the newest
//!   snapshot on, then follows it with one blocking `XREAD` over every relayed stream on a
//!   connection of its own (a blocking command would hold up the shared connection's other
//!   commands). The entry ids carry the offsets, so nothing is missed between the snapshot and the
//!   reads, and a relay applies exactly what the owner applied.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, RedisResult, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{COMMAND_TIMEOUT, Cluster, keys, millis};
use crate::charts::ChartFailure;
use crate::domain::{Bar, ChartMetadata};
use crate::live::{SeriesFeed, SeriesKey};

/// Entries a series' stream keeps, about (trimmed with `MAXLEN ~`, so never fewer).
pub const STREAM_LEN: usize = 256;

/// The owner writes every bar it holds after this many updates, so the newest `r` entry is
/// always within the stream's last [`STREAM_LEN`] entries.
pub const SNAPSHOT_EVERY: u32 = 64;

/// How long one `XREAD` waits for entries before the reader looks again at what it relays.
const READ_BLOCK: Duration = Duration::from_millis(200);

/// Entries one `XREAD` returns per stream at most.
const READ_COUNT: usize = 512;

/// Entries the publisher writes in one pipeline at most.
const PUBLISH_BATCH: usize = 256;

/// Claims the owner lock, or renews it when the caller holds it; either way the stream's expiry
/// is renewed too. KEYS: the lock, the stream. ARGV: the token, the lease and the stream's TTL in
/// ms. Returns 1 when the caller owns the series now.
const OWN: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or (not holder and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return 1
end
return 0
";

/// Lets a series go: releases the lock if the caller still holds it and says so on the stream.
/// KEYS: the lock, the stream. ARGV: the token, the stream's TTL in ms, its length.
const HAND_OFF: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'k', 'h', 'd', '')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
";

/// What one stream entry says.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// Every bar the owner's series holds, and its metadata.
    Snapshot {
        bars: Vec<Bar>,
        metadata: ChartMetadata,
    },
    /// Bars that changed, as the feed sent them.
    Update(Vec<Bar>),
    /// The feed refused the series.
    Refused(ChartFailure),
    /// The owner let the series go.
    HandedOff,
}

#[derive(Serialize, Deserialize)]
struct SnapshotData {
    bars: Vec<Bar>,
    metadata: ChartMetadata,
}

impl Entry {
    /// The entry's kind and data fields.
    fn encode(&self) -> (&'static str, String) {
        let json = |r: serde_json::Result<String>| r.unwrap_or_default();
        match self {
            Entry::Snapshot { bars, metadata } => (
                "r",
                json(serde_json::to_string(&SnapshotData {
                    bars: bars.clone(),
                    metadata: metadata.clone(),
                })),
            ),
            Entry::Update(bars) => ("u", json(serde_json::to_string(bars))),
            Entry::Refused(failure) => ("f", super::flight::failure_json(failure)),
            Entry::HandedOff => ("h", String::new()),
        }
    }

    /// The entry a stream holds, `None` when it is not one of ours (logged by the caller).
    fn decode(fields: &StreamId) -> Option<Entry> {
        let field = |name: &str| -> Option<String> {
            redis::from_redis_value_ref(fields.map.get(name)?).ok()
        };
        let data = field("d").unwrap_or_default();
        match field("k")?.as_str() {
            "r" => {
                let s: SnapshotData = serde_json::from_str(&data).ok()?;
                Some(Entry::Snapshot {
                    bars: s.bars,
                    metadata: s.metadata,
                })
            }
            "u" => serde_json::from_str(&data).ok().map(Entry::Update),
            "f" => super::flight::failure_of(&data).map(Entry::Refused),
            "h" => Some(Entry::HandedOff),
            _ => None,
        }
    }

    /// Applies the entry to a relayed series; true for a hand-off (claim the series now).
    fn apply_to(self, feed: &SeriesFeed) -> bool {
        let now = chartgate_protocol::clock::unix_ms();
        match self {
            Entry::Snapshot { bars, metadata } => {
                feed.reset(bars, metadata, now);
            }
            Entry::Update(bars) => {
                feed.apply(&bars, now);
            }
            Entry::Refused(failure) => feed.fail(failure),
            Entry::HandedOff => return true,
        }
        false
    }
}

/// One entry for the publisher to write.
#[derive(Debug)]
pub struct Outgoing {
    stream: Arc<str>,
    entry: Entry,
}

/// What an owning series writes its changes through (see [`SeriesFeed::publish_to`]): entries
/// in the order they are given, on one task, pipelined.
#[derive(Debug)]
pub struct Publisher {
    stream: Arc<str>,
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Updates since the last snapshot.
    updates: u32,
}

impl Publisher {
    /// Publishes an update, or, every [`SNAPSHOT_EVERY`] updates, `whole()` instead.
    pub fn update(&mut self, bars: &[Bar], whole: impl FnOnce() -> Entry) {
        self.updates += 1;
        let entry = if self.updates >= SNAPSHOT_EVERY {
            self.updates = 0;
            whole()
        } else {
            Entry::Update(bars.to_vec())
        };
        self.send(entry);
    }

    /// Publishes every bar the series holds.
    pub fn snapshot(&mut self, bars: Vec<Bar>, metadata: ChartMetadata) {
        self.updates = 0;
        self.send(Entry::Snapshot { bars, metadata });
    }

    pub fn refused(&mut self, failure: ChartFailure) {
        self.send(Entry::Refused(failure));
    }

    fn send(&self, entry: Entry) {
        // The publisher task lives as long as the cluster; after it stopped there is nobody to
        // tell.
        let _ = self.tx.send(Outgoing {
            stream: self.stream.clone(),
            entry,
        });
    }
}

/// A relayed series: where its updates go and the last entry read.
struct Relay {
    feed: Arc<SeriesFeed>,
    /// The registry's entry it is for (see `unrelay`).
    generation: u64,
    last_id: String,
}

/// The relays of this instance, by stream key.
#[derive(Default)]
pub(super) struct Relays(HashMap<String, Relay>);

/// Runs [`OWN`]: true when `token` owns the series now.
pub async fn own<C: ConnectionLike>(
    conn: &mut C,
    key: &SeriesKey,
    token: &str,
    lease: Duration,
) -> RedisResult<bool> {
    let owned: i64 = Script::new(OWN)
        .key(keys::live_owner(key))
        .key(keys::live_stream(key))
        .arg(token)
        .arg(millis(lease))
        .arg(millis(stream_ttl(lease)))
        .invoke_async(conn)
        .await?;
    Ok(owned == 1)
}

/// Runs [`HAND_OFF`]: true when `token` still owned the series.
pub async fn hand_off<C: ConnectionLike>(
    conn: &mut C,
    key: &SeriesKey,
    token: &str,
    lease: Duration,
) -> RedisResult<bool> {
    let released: i64 = Script::new(HAND_OFF)
        .key(keys::live_owner(key))
        .key(keys::live_stream(key))
        .arg(token)
        .arg(millis(stream_ttl(lease)))
        .arg(STREAM_LEN)
        .invoke_async(conn)
        .await?;
    Ok(released == 1)
}

/// A stream outlives its owner's lease by one more, so a claimant finds the last snapshot.
fn stream_ttl(lease: Duration) -> Duration {
    lease * 2
}

/// The newest snapshot of a stream and every entry after it, oldest first, and the newest id
/// (`0-0` for an empty stream, so that reading on gets everything).
async fn since_snapshot<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
) -> RedisResult<(Vec<StreamId>, String)> {
    let newest_first: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(STREAM_LEN + SNAPSHOT_EVERY as usize)
        .query_async(conn)
        .await?;
    let last_id = newest_first
        .ids
        .first()
        .map_or_else(|| "0-0".to_string(), |e| e.id.clone());
    let mut entries = newest_first.ids;
    let snapshot = entries.iter().position(|e| {
        e.map
            .get("k")
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .is_some_and(|k| k == "r")
    });
    if let Some(at) = snapshot {
        entries.truncate(at + 1);
    }
    entries.reverse();
    Ok((entries, last_id))
}

impl Cluster {
    /// Claims the live series `key` for this instance with `token`, or renews the claim: `Some(true)`
    /// when this instance owns it now, `Some(false)` when another does, `None` when Redis cannot
    /// say (down).
    pub(crate) async fn own_series(&self, key: &SeriesKey, token: &str) -> Option<bool> {
        let (key, token, lease) = (key.clone(), token.to_string(), self.live_lease());
        self.run(|mut conn| async move { own(&mut conn, &key, &token, lease).await })
            .await
    }

    /// Lets the series go, if `token` still owns it, telling its relays to claim it.
    pub(crate) fn hand_off_series(&self, key: &SeriesKey, token: &str) {
        let (key, token, lease) = (key.clone(), token.to_string(), self.live_lease());
        self.run_detached(move |mut conn| async move {
            hand_off(&mut conn, &key, &token, lease).await?;
            Ok(())
        });
    }

    /// [`Cluster::hand_off_series`], waited for (at most [`COMMAND_TIMEOUT`]).
    pub(crate) async fn hand_off_series_now(&self, key: &SeriesKey, token: &str) {
        let (key, token, lease) = (key.clone(), token.to_string(), self.live_lease());
        let _ = tokio::time::timeout(
            COMMAND_TIMEOUT,
            self.run(|mut conn| async move { hand_off(&mut conn, &key, &token, lease).await }),
        )
        .await;
    }

    /// What an owned series publishes through.
    pub(crate) fn publisher(&self, key: &SeriesKey) -> Publisher {
        Publisher {
            stream: keys::live_stream(key).into(),
            tx: self.0.publish.clone(),
            updates: 0,
        }
    }

    /// Relays the owner's stream of `key` into `feed`: from the newest snapshot on, then
    /// everything the owner writes. False when Redis could not be read (the caller subscribes
    /// upstream itself).
    /// `generation` is the registry entry's: a later entry of the same chart replaces an earlier
    /// one, never the other way round.
    pub(crate) async fn relay(
        &self,
        key: &SeriesKey,
        feed: Arc<SeriesFeed>,
        generation: u64,
    ) -> bool {
        let stream = keys::live_stream(key);
        let asked = stream.clone();
        let Some((entries, last_id)) = self
            .run(|mut conn| async move { since_snapshot(&mut conn, &asked).await })
            .await
        else {
            return false;
        };
        let mut handed_off = false;
        for entry in &entries {
            match Entry::decode(entry) {
                Some(e) => handed_off |= e.apply_to(&feed),
                None => log::debug!("cluster: entry {} of {stream} is not one of ours", entry.id),
            }
        }
        {
            let mut relays = self.relays();
            if relays
                .0
                .get(&stream)
                .is_none_or(|r| r.generation < generation)
            {
                relays.0.insert(
                    stream,
                    Relay {
                        feed,
                        generation,
                        last_id,
                    },
                );
            }
        }
        self.0.relays_changed.notify_one();
        if handed_off {
            self.0.handoffs.notify_one();
        }
        true
    }

    /// Stops relaying `key` for registry entry `generation` (a later entry's relay stays).
    pub(crate) fn unrelay(&self, key: &SeriesKey, generation: u64) {
        let stream = keys::live_stream(key);
        let mut relays = self.relays();
        if relays
            .0
            .get(&stream)
            .is_some_and(|r| r.generation == generation)
        {
            relays.0.remove(&stream);
        }
    }

    /// Woken when an owner handed a relayed series off: the live registry claims at once.
    pub(crate) fn handoffs(&self) -> &tokio::sync::Notify {
        &self.0.handoffs
    }

    /// Woken whenever the link goes up or down.
    pub(crate) fn link_changes(&self) -> watch::Receiver<bool> {
        self.0.link.subscribe()
    }

    fn relays(&self) -> std::sync::MutexGuard<'_, Relays> {
        self.0
            .relays
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The publisher task: writes owners' entries in order, a pipeline per batch, each stream's
    /// expiry renewed with its entries. Entries given while Redis is down are dropped (the
    /// relays subscribe upstream themselves then).
    pub(super) async fn publish(self, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
        let ttl = millis(stream_ttl(self.live_lease()));
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
            if !self.is_up() {
                batch.clear();
                continue;
            }
            let mut pipe = redis::pipe();
            let mut streams: Vec<&str> = Vec::new();
            for out in &batch {
                let (kind, data) = out.entry.encode();
                pipe.cmd("XADD")
                    .arg(&*out.stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(STREAM_LEN)
                    .arg("*")
                    .arg("k")
                    .arg(kind)
                    .arg("d")
                    .arg(data)
                    .ignore();
                if !streams.contains(&&*out.stream) {
                    streams.push(&out.stream);
                }
            }
            for stream in streams {
                pipe.cmd("PEXPIRE").arg(stream).arg(ttl).ignore();
            }
            let mut conn = self.0.conn.clone();
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                log::debug!(
                    "cluster: publishing live updates failed: {}",
                    self.scrub(&e)
                );
                self.0.trouble.notify_one();
            }
            batch.clear();
        }
    }

    /// The relay reader: one blocking `XREAD` over every relayed stream at a time, on its own
    /// connection, applying what it reads to the relayed series.
    pub(super) async fn read_relays(self, mut stopped: watch::Receiver<bool>) {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(READ_BLOCK + COMMAND_TIMEOUT));
        let mut conn: Option<MultiplexedConnection> = None;
        loop {
            if *stopped.borrow() {
                return;
            }
            let asked: Vec<(String, String)> = if self.is_up() {
                self.relays()
                    .0
                    .iter()
                    .map(|(k, r)| (k.clone(), r.last_id.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            if asked.is_empty() {
                conn = None;
                tokio::select! {
                    _ = self.0.relays_changed.notified() => {}
                    _ = tokio::time::sleep(READ_BLOCK) => {}
                    _ = stopped.changed() => {}
                }
                continue;
            }
            let c = match &mut conn {
                Some(c) => c,
                None => match self
                    .0
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        log::debug!("cluster: the relay connection failed: {}", self.scrub(&e));
                        tokio::time::sleep(READ_BLOCK).await;
                        continue;
                    }
                },
            };
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(millis(READ_BLOCK))
                .arg("STREAMS");
            for (stream, _) in &asked {
                read.arg(stream);
            }
            for (_, id) in &asked {
                read.arg(id);
            }
            match read.query_async::<Option<StreamReadReply>>(c).await {
                Ok(Some(reply)) => self.relay_entries(reply),
                Ok(None) => {}
                Err(e) => {
                    log::debug!("cluster: reading live streams failed: {}", self.scrub(&e));
                    conn = None;
                    self.0.trouble.notify_one();
                    tokio::time::sleep(READ_BLOCK).await;
                }
            }
        }
    }

    /// Applies what one `XREAD` returned to the relayed series it is for.
    fn relay_entries(&self, reply: StreamReadReply) {
        let mut work: Vec<(Arc<SeriesFeed>, Vec<StreamId>)> = Vec::new();
        {
            let mut relays = self.relays();
            for stream in reply.keys {
                let Some(relay) = relays.0.get_mut(&stream.key) else {
                    continue;
                };
                if let Some(last) = stream.ids.last() {
                    relay.last_id = last.id.clone();
                }
                work.push((relay.feed.clone(), stream.ids));
            }
        }
        let mut handed_off = false;
        for (feed, entries) in work {
            for entry in &entries {
                match Entry::decode(entry) {
                    Some(e) => handed_off |= e.apply_to(&feed),
                    None => log::debug!(
                        "cluster: a live stream entry {} is not one of ours",
                        entry.id
                    ),
                }
            }
        }
        if handed_off {
            self.0.handoffs.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(time: i64, close: f64) -> Bar {
        Bar {
            time,
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close,
            volume: Some(10.0),
        }
    }

    fn decoded(entry: &Entry) -> Option<Entry> {
        let (kind, data) = entry.encode();
        let mut map = HashMap::new();
        map.insert("k".to_string(), redis::Value::BulkString(kind.into()));
        map.insert("d".to_string(), redis::Value::BulkString(data.into_bytes()));
        Entry::decode(&StreamId {
            id: "1-0".into(),
            map,
            milliseconds_elapsed_from_delivery: None,
            delivered_count: None,
        })
    }

    #[test]
    fn entries_read_back_as_written() {
        let entries = [
            Entry::Snapshot {
                bars: vec![bar(60, 1.25), bar(120, 0.1 + 0.2)],
                metadata: ChartMetadata {
                    name: "TCS".into(),
                    pricescale: 100,
                    ..ChartMetadata::default()
                },
            },
            Entry::Update(vec![bar(120, 3.0)]),
            Entry::Refused(ChartFailure {
                code: "unknown_symbol",
                message: "no such symbol".into(),
            }),
            Entry::HandedOff,
        ];
        for entry in &entries {
            assert_eq!(decoded(entry).as_ref(), Some(entry));
        }
    }

    #[test]
    fn a_snapshot_replaces_an_update_every_so_often() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut publisher = Publisher {
            stream: "s".into(),
            tx,
            updates: 0,
        };
        for _ in 0..SNAPSHOT_EVERY * 2 {
            publisher.update(&[bar(60, 1.0)], || Entry::Snapshot {
                bars: vec![],
                metadata: ChartMetadata::default(),
            });
        }
        let mut kinds = String::new();
        while let Ok(out) = rx.try_recv() {
            kinds.push_str(out.entry.encode().0);
        }
        assert_eq!(kinds.len(), SNAPSHOT_EVERY as usize * 2);
        assert_eq!(kinds.matches('r').count(), 2);
        assert!(kinds.ends_with('r'));
    }
}
