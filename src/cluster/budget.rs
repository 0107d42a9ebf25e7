//! The cluster-wide upstream connection budget (SPEC 7): the upstream connections of all
//! instances together never exceed the budget ([`super::Cluster::budget`]).
//!
//! Redisson's expiring-permit semaphore, one Lua script per operation. The permits are one sorted
//! set, `chartgate:permits`: member a permit id (the instance id and the pool's connection id),
//! score its expiry in Redis's own clock (machines' clocks need not agree). A permit is a lease:
//! its instance renews all of its permits every third of the lease (with its membership), so the
//! permits of an instance that dies lapse after one lease (`manager.stale_after_secs`) and every
//! script drops lapsed permits before it counts.
//!
//! - [`acquire`]: drop lapsed permits; below the limit, add the permit (granted), else answer how
//!   long until the earliest permit lapses (refused).
//! - [`renew`]: push the expiry of this instance's permits a lease ahead. `ZADD` without `XX`: a
//!   permit granted locally while Redis was down (see below) is counted again once it is back.
//! - [`release`]: remove the permit and publish on `chartgate:permits:freed`, so an instance
//!   waiting for a permit tries again at once rather than at the next lapse.
//!
//! Redis down: no script runs; each instance allows itself the budget divided by the last known
//! instance count (at least 1), which keeps the sum within the budget while that count is right.
//!
//! The set carries a TTL as long as its longest lease, renewed with it: it never outlives the
//! permits in it. Generic over the connection, so tests run these against a real `redis-server`.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};

use super::millis;

/// KEYS: the permit set. ARGV: the permit id, the limit, the lease in ms. Answers `{1, count}`
/// when granted (the count of live permits, this one included) or `{0, ms}` when refused, `ms`
/// the time until the earliest permit lapses. A permit already held is renewed and granted.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
local count = redis.call('ZCARD', KEYS[1])
if held or count < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
  if held then return {1, count} end
  return {1, count + 1}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local left = 1
if first[2] then left = math.max(1, tonumber(first[2]) - now) end
return {0, left}
";

/// KEYS: the permit set. ARGV: the lease in ms, then the permit ids to renew. Answers the count
/// of live permits.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + lease, ARGV[i]) end
if #ARGV > 1 and redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return redis.call('ZCARD', KEYS[1])
";

/// KEYS: the permit set. ARGV: the freed channel, then the permit ids. Removes them and, when
/// any was there, publishes the number freed. Answers that number.
const RELEASE: &str = r"
local freed = 0
for i = 2, #ARGV do freed = freed + redis.call('ZREM', KEYS[1], ARGV[i]) end
if freed > 0 then redis.call('PUBLISH', ARGV[1], freed) end
return freed
";

/// The live permits.
const COUNT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
";

/// What [`acquire`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The permit is the caller's for one lease; `live` permits are held now, this one included.
    Granted { live: u64 },
    /// The budget is spent; the earliest permit lapses in `retry_in` unless renewed.
    Refused { retry_in: Duration },
}

/// A permit's id: the instance and its pool's connection.
pub fn permit_id(instance_id: &str, conn: u64) -> String {
    format!("{instance_id}:{conn}")
}

/// Takes the permit `id` for `lease` if fewer than `limit` are live.
pub async fn acquire<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
    id: &str,
    limit: usize,
    lease: Duration,
) -> RedisResult<Grant> {
    let (granted, n): (i64, i64) = Script::new(ACQUIRE)
        .key(key)
        .arg(id)
        .arg(limit)
        .arg(millis(lease))
        .invoke_async(conn)
        .await?;
    let n = u64::try_from(n).unwrap_or(0);
    Ok(if granted == 1 {
        Grant::Granted { live: n }
    } else {
        Grant::Refused {
            retry_in: Duration::from_millis(n.max(1)),
        }
    })
}

/// Renews `ids` for `lease` from now; the count of live permits.
pub async fn renew<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
    ids: &[String],
    lease: Duration,
) -> RedisResult<u64> {
    let script = Script::new(RENEW);
    let mut invocation = script.prepare_invoke();
    invocation.key(key).arg(millis(lease));
    for id in ids {
        invocation.arg(id);
    }
    invocation.invoke_async(conn).await
}

/// Releases `ids` and, when any was live, tells the waiters on `channel`; how many were freed.
pub async fn release<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
    channel: &str,
    ids: &[String],
) -> RedisResult<u64> {
    let script = Script::new(RELEASE);
    let mut invocation = script.prepare_invoke();
    invocation.key(key).arg(channel);
    for id in ids {
        invocation.arg(id);
    }
    invocation.invoke_async(conn).await
}

/// The live permits in the cluster.
pub async fn count<C: ConnectionLike>(conn: &mut C, key: &str) -> RedisResult<u64> {
    Script::new(COUNT).key(key).invoke_async(conn).await
}

/// This instance's share of `budget` while Redis is down: an even split by the last known
/// instance count, at least one connection.
pub fn local_share(budget: usize, instances: u64) -> usize {
    let n = usize::try_from(instances.max(1)).unwrap_or(usize::MAX);
    (budget / n).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_share_is_an_even_split_of_at_least_one() {
        assert_eq!(local_share(6, 3), 2);
        assert_eq!(local_share(7, 3), 2);
        assert_eq!(local_share(2, 3), 1);
        assert_eq!(local_share(4, 0), 4);
    }
}
