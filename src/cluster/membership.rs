//! Membership: which instances are alive. Each instance announces itself in one sorted set,
//! `chartgate:instances`, with its expiry (Redis's own clock, so machines' clocks need not agree)
//! as the score, renewed every third of its TTL; the members are those whose expiry is ahead.
//! Expired members are dropped at every renewal and the set itself expires with its last renewal,
//! so an instance that dies leaves after one TTL and nothing stays behind.
//!
//! One set rather than a key per instance: counting it is one command whatever else Redis holds,
//! where counting keys takes a `SCAN` of the whole keyspace (every cached chart included).

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};

use super::keys::MEMBERS;
use super::millis;

/// Announces `ARGV[1]` until `ARGV[2]` ms from now, drops expired members, keeps the set itself
/// expiring with its longest-lived member (a short announcement never shortens it), and answers
/// the count of live members.
const ANNOUNCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('ZCARD', KEYS[1])
";

/// The members whose expiry is ahead.
const COUNT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
";

/// Leaves at once (a graceful stop), rather than after the TTL.
const LEAVE: &str = r"
return redis.call('ZREM', KEYS[1], ARGV[1])
";

/// Announces `instance_id` for `ttl`; the number of live instances, this one included.
pub async fn announce<C: ConnectionLike>(
    conn: &mut C,
    instance_id: &str,
    ttl: Duration,
) -> RedisResult<u64> {
    Script::new(ANNOUNCE)
        .key(MEMBERS)
        .arg(instance_id)
        .arg(millis(ttl))
        .invoke_async(conn)
        .await
}

/// The number of live instances.
pub async fn count<C: ConnectionLike>(conn: &mut C) -> RedisResult<u64> {
    Script::new(COUNT).key(MEMBERS).invoke_async(conn).await
}

/// Removes `instance_id` from the members.
pub async fn leave<C: ConnectionLike>(conn: &mut C, instance_id: &str) -> RedisResult<()> {
    let _: i64 = Script::new(LEAVE)
        .key(MEMBERS)
        .arg(instance_id)
        .invoke_async(conn)
        .await?;
    Ok(())
}
