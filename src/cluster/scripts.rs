//! The Lua scripts that run inside Redis: each decision is one script, so
//! it is atomic across every instance and costs one round trip. Times are
//! Redis's own clock (`TIME`, microseconds), never an instance's.
//!
//! Keys (all under `wsgate:`):
//! - `instances`: sorted set, instance name → the microsecond its lease ends;
//! - `caps:<route>:<instance>`: hash, `*` → that instance's open tunnels on
//!   the route, `c:<client>` → that client's among them;
//! - `rate:<route>:total`, `rate:<route>:c:<client>`: a GCRA bucket's
//!   theoretical arrival time, expiring once the bucket is full again.

use redis::Script;

/// The prefix of every key.
pub const PREFIX: &str = "wsgate:";

/// One Upgrade request: the rate limits, then the caps.
///
/// KEYS: instances, per-client bucket, total bucket, own caps hash.
/// ARGV: instance, caps hash prefix (`…:<route>:`), client field,
/// per-client period µs, per-client burst, total period µs, total burst
/// (period 0: no such limit), route max, per-client max (-1: none).
///
/// Returns `{0, 0}` admitted, `{1, wait µs}` rate limited, `{2, 0}` route
/// cap, `{3, 0}` client cap, `{4, 0}` this instance holds no lease (the
/// store was flushed or restarted: its counts must be written again first).
pub fn admit() -> Script {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- GCRA: a bucket of `burst` cells, one back every `period`; the stored
-- value is the time the bucket would be full again.
local function gcra(key, period, burst)
  if period <= 0 then return 0 end
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local allow_at = tat - period * (burst - 1)
  if allow_at > now then return allow_at - now end
  local next_tat = tat + period
  redis.call('SET', key, string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
  return 0
end

local wait = gcra(KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]))
if wait > 0 then return {1, wait} end
wait = gcra(KEYS[3], tonumber(ARGV[6]), tonumber(ARGV[7]))
if wait > 0 then return {1, wait} end

local max, client_max = tonumber(ARGV[8]), tonumber(ARGV[9])
if max < 0 and client_max < 0 then return {0, 0} end
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not mine or tonumber(mine) < now then return {4, 0} end
local field = ARGV[3]
local total, client = 0, 0
for _, instance in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  local held = redis.call('HMGET', ARGV[2] .. instance, '*', field)
  total = total + math.max(tonumber(held[1] or '0'), 0)
  client = client + math.max(tonumber(held[2] or '0'), 0)
end
if max >= 0 and total >= max then return {2, 0} end
if client_max >= 0 and client >= client_max then return {3, 0} end
redis.call('HINCRBY', KEYS[4], '*', 1)
if client_max >= 0 then redis.call('HINCRBY', KEYS[4], field, 1) end
return {0, 0}
"#,
    )
}

/// Tunnels ended: their places are given back, a batch per call.
///
/// KEYS: the own caps hash of each ended tunnel. ARGV: its client field, or
/// "" when only the route total is kept. Counts never go below zero (a
/// release that crossed a flush).
pub fn release() -> Script {
    Script::new(
        r#"
local function give_back(key, field)
  if redis.call('HINCRBY', key, field, -1) <= 0 then redis.call('HDEL', key, field) end
end
for i = 1, #KEYS do
  give_back(KEYS[i], '*')
  if ARGV[i] ~= '' then give_back(KEYS[i], ARGV[i]) end
end
return 0
"#,
    )
}

/// The instance is alive: its lease is renewed and its caps hashes kept
/// (they expire three leases after its last heartbeat); leases ended long
/// ago are pruned.
///
/// KEYS: instances, then own caps hashes. ARGV: instance, lease µs.
/// Returns 1 when the instance held no lease (new, or the store lost it).
pub fn heartbeat() -> Script {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = tonumber(ARGV[2])
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * lease)
redis.call('ZADD', KEYS[1], string.format('%d', now + lease), ARGV[1])
for i = 2, #KEYS do redis.call('PEXPIRE', KEYS[i], math.ceil(3 * lease / 1000)) end
if held and tonumber(held) >= now then return 0 end
return 1
"#,
    )
}

/// The instance's counts, written whole (after a start, a flush or an
/// outage in which releases were lost), and its lease taken.
///
/// KEYS: instances, own caps hash. ARGV: instance, lease µs, route total,
/// then client field and count pairs.
pub fn rewrite() -> Script {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = tonumber(ARGV[2])
redis.call('DEL', KEYS[2])
if tonumber(ARGV[3]) > 0 then redis.call('HSET', KEYS[2], '*', ARGV[3]) end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[2], math.ceil(3 * lease / 1000))
redis.call('ZADD', KEYS[1], string.format('%d', now + lease), ARGV[1])
return 0
"#,
    )
}

/// A clean exit: the lease and the caps hashes go at once.
///
/// KEYS: instances, then own caps hashes. ARGV: instance.
pub fn leave() -> Script {
    Script::new(
        r#"
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
return 0
"#,
    )
}
