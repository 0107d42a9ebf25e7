//! Owner-checked, expiring locks on Redis, one Lua script per operation, and the script that ends
//! a chart fetch: its JSON cached, its lock released, its completion announced, in one round trip.
//!
//! A lock is `SET key token NX PX ttl`: it expires by itself, so an owner that dies holds it at
//! most `ttl`. Renewal and release check the token first (a script, so the check and the change
//! are atomic): an owner whose lock expired and was taken over can neither extend nor delete the
//! new owner's lock.
//!
//! Generic over the connection, so tests run these against a real `redis-server` with any
//! connection kind.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};

use super::millis;

/// Takes the lock (`{1, ttl}`), or says how long the current holder's lock still runs
/// (`{0, pttl}`; `pttl` -2 when it vanished in between). A lock found without an expiry (not one
/// chartgate made: set by hand) is given one, so nothing can hold a chart's fetch forever.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, tonumber(ARGV[2])} end
local left = redis.call('PTTL', KEYS[1])
if left == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  left = tonumber(ARGV[2])
end
return {0, left}
";

/// Extends the lock's expiry, if the caller still owns it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// Deletes the lock, if the caller still owns it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Ends a fetch. KEYS: the lock, the objects JSON, the columns JSON. ARGV: the token, the cache
/// TTL in ms, the objects JSON and the columns JSON (both empty when the fetch failed), the
/// completion channel and its message. Caches the chart, releases the lock if still owned, then
/// publishes, so a waiter woken by the message finds the chart cached. Returns 1 when the lock was
/// still the caller's.
const FINISH: &str = r"
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[2])
end
local owned = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  owned = 1
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return owned
";

/// What [`acquire`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the lock now, for the TTL asked.
    Owner,
    /// Someone else holds it; it expires in this long unless renewed.
    Held { expires_in: Duration },
    /// It was released between the two steps of the script's answer (a `PTTL` of a key gone):
    /// try again at once.
    Vanished,
}

/// A lock's token: unique per claim, and naming the instance (so `GET` on a lock tells an
/// operator who holds it).
pub fn new_token(instance_id: &str) -> String {
    format!("{instance_id}:{:032x}", rand::random::<u128>())
}

/// `SET NX PX` with `token`; on failure, the holder's remaining time.
pub async fn acquire<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
    token: &str,
    ttl: Duration,
) -> RedisResult<Claim> {
    let (owner, left): (i64, i64) = Script::new(ACQUIRE)
        .key(key)
        .arg(token)
        .arg(millis(ttl))
        .invoke_async(conn)
        .await?;
    Ok(match (owner, left) {
        (1, _) => Claim::Owner,
        (_, left) if left >= 0 => Claim::Held {
            expires_in: Duration::from_millis(left as u64),
        },
        // -2: released between the SET and the PTTL.
        _ => Claim::Vanished,
    })
}

/// Extends the lock to `ttl` from now if `token` still owns it; false when it does not.
pub async fn renew<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
    token: &str,
    ttl: Duration,
) -> RedisResult<bool> {
    let renewed: i64 = Script::new(RENEW)
        .key(key)
        .arg(token)
        .arg(millis(ttl))
        .invoke_async(conn)
        .await?;
    Ok(renewed == 1)
}

/// Deletes the lock if `token` still owns it; false when it did not (expired, or taken over).
pub async fn release<C: ConnectionLike>(conn: &mut C, key: &str, token: &str) -> RedisResult<bool> {
    let released: i64 = Script::new(RELEASE)
        .key(key)
        .arg(token)
        .invoke_async(conn)
        .await?;
    Ok(released == 1)
}

/// What a finished fetch leaves in Redis.
pub struct Finish<'a> {
    pub lock_key: &'a str,
    /// Empty: the caller holds no lock (the chart was fetched while the lock could not be had).
    pub token: &'a str,
    /// The chart's objects and columns keys, and their JSON; `None` when the fetch failed.
    pub chart: Option<[(&'a str, &'a [u8]); 2]>,
    pub ttl: Duration,
    pub channel: &'a str,
    pub message: &'a str,
}

/// Runs `FINISH`: caches the chart (when there is one), releases the lock if `token` still owns
/// it, publishes `message`. Returns whether the lock was still the caller's.
pub async fn finish<C: ConnectionLike>(conn: &mut C, f: Finish<'_>) -> RedisResult<bool> {
    let (objects_key, objects, columns_key, columns): (&str, &[u8], &str, &[u8]) = match f.chart {
        Some([(ok, ov), (ck, cv)]) => (ok, ov, ck, cv),
        // Keys are still passed (the script declares its keys), with nothing to write.
        None => (f.lock_key, b"", f.lock_key, b""),
    };
    let owned: i64 = Script::new(FINISH)
        .key(f.lock_key)
        .key(objects_key)
        .key(columns_key)
        .arg(f.token)
        .arg(millis(f.ttl))
        .arg(objects)
        .arg(columns)
        .arg(f.channel)
        .arg(f.message)
        .invoke_async(conn)
        .await?;
    Ok(owned == 1)
}
