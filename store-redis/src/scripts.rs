//! The Lua scripts behind every operation that must be atomic.
//!
//! Rules every script follows:
//! - It touches only the keys it declares, and they share one hash tag, so it
//!   runs unchanged on Redis Cluster.
//! - It checks every key's type (and, for our own formats, its shape) before
//!   it writes anything: a value that is not ours is reported, never
//!   overwritten or deleted. Redis does not roll back a script's writes on
//!   error, so the checks come first.
//! - It returns integers, strings and arrays only (never Lua booleans or nil
//!   in a table), which read the same over RESP2 and RESP3.

use redis::Script;

/// Writes a token record at a new revision (put and compare-and-swap).
///
/// KEYS: token hash, tombstone. ARGV: record bytes; `any` (put), `none`
/// (only if absent) or the expected revision in decimal.
///
/// The new revision is `max(previous + 1, server time in µs)`, where
/// "previous" is the stored revision or, after a delete, the tombstone's.
/// Server time keeps revisions growing across deletes even once a tombstone
/// has expired, unless the server clock stepped back by more than the
/// tombstone's lifetime.
///
/// Returns `{1, revision}` when written, `{0, current}` / `{0}` on a
/// conflict (with / without a stored record), `{-1, n}` when key `n` holds a
/// value that is not ours.
const WRITE_TOKEN: &str = r#"
redis.replicate_commands()
local kind = redis.call('TYPE', KEYS[1])['ok']
local stored = false
if kind == 'hash' then
  stored = redis.call('HGET', KEYS[1], 'rev')
  if not stored or not tonumber(stored) or redis.call('HEXISTS', KEYS[1], 'rec') == 0 then
    return {-1, 1}
  end
elseif kind ~= 'none' then
  return {-1, 1}
end
local expected = ARGV[2]
if expected == 'none' then
  if stored then return {0, tonumber(stored)} end
elseif expected ~= 'any' then
  if not stored then return {0} end
  if stored ~= expected then return {0, tonumber(stored)} end
end
local floor = 0
if stored then
  floor = tonumber(stored)
else
  local tomb_kind = redis.call('TYPE', KEYS[2])['ok']
  if tomb_kind == 'string' then
    floor = tonumber(redis.call('GET', KEYS[2]))
    if not floor then return {-1, 2} end
  elseif tomb_kind ~= 'none' then
    return {-1, 2}
  end
end
local now = redis.call('TIME')
local revision = math.max(floor + 1, tonumber(now[1]) * 1000000 + tonumber(now[2]))
redis.call('HSET', KEYS[1], 'rev', string.format('%.0f', revision), 'rec', ARGV[1])
if not stored then redis.call('DEL', KEYS[2]) end
return {1, revision}
"#;

/// Deletes a token record, leaving a tombstone with its revision.
///
/// KEYS: token hash, tombstone. ARGV: `any` or the revision that must be
/// stored; the tombstone's lifetime in ms.
///
/// Returns `{1}` when deleted, `{0}` when there was nothing (or another
/// revision), `{-1, n}` when key `n` holds a value that is not ours.
const DELETE_TOKEN: &str = r#"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {0} end
if kind ~= 'hash' then return {-1, 1} end
local stored = redis.call('HGET', KEYS[1], 'rev')
if not stored or not tonumber(stored) then return {-1, 1} end
if ARGV[1] ~= 'any' and stored ~= ARGV[1] then return {0} end
local tomb_kind = redis.call('TYPE', KEYS[2])['ok']
if tomb_kind ~= 'none' and (tomb_kind ~= 'string' or not tonumber(redis.call('GET', KEYS[2]))) then
  return {-1, 2}
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], stored, 'PX', ARGV[2])
return {1}
"#;

/// Deletes a string only if it holds the given value: the release of a
/// refresh lease, and the end of a key's active-flow mark.
///
/// KEYS: the string. ARGV: the value.
///
/// Returns 1 when deleted, 0 when absent or holding another value, -1 when
/// the key holds something that is not a string.
pub(crate) const COMPARE_AND_DELETE: &str = r#"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return 0 end
if kind ~= 'string' then return -1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// Stores a pending flow under its state, never over another value.
///
/// KEYS: flow. ARGV: flow bytes, TTL in ms.
///
/// Returns 1 when stored, 0 when exactly these bytes are stored already (a
/// retried insert), -1 when something else is stored under this state.
pub(crate) const STORE_FLOW: &str = r#"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if kind == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
return -1
"#;

/// Makes a flow its key's active flow unless another one is.
///
/// KEYS: active mark. ARGV: state, TTL in ms.
///
/// Returns `{1}` when the mark is (now or already) this state, `{0, state}`
/// with the other active state, `{-1}` when the mark is not ours (not a
/// string, or a string without a TTL, which this library never writes).
pub(crate) const CLAIM_ACTIVE: &str = r#"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1}
end
if kind ~= 'string' or redis.call('PTTL', KEYS[1]) < 0 then return {-1} end
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then return {1} end
return {0, current}
"#;

/// Lua that reads the format version of one of our values, or nil.
const VERSION_OF: &str = r#"
local function version_of(value)
  return tonumber(string.match(value, '^{"v":(%d+),'))
end
"#;

/// Removes and returns a pending flow, exactly once, and safe to run twice.
///
/// KEYS: flow, taken record. ARGV: the newest flow format version this
/// release reads, the take's nonce (random, one per `take` call), the taken
/// record's lifetime in ms.
///
/// A take leaves `<nonce> <flow bytes>` in the taken record. The cluster
/// client re-sends a script whose reply was lost (a dropped connection, a
/// failover), and `take` itself sends it again after a retryable error: a
/// second run with the same nonce finds its own record and returns the same
/// flow, where it would otherwise find the flow gone and hand it to nobody.
/// Another take's nonce finds nothing (`{0}`), as before.
///
/// Returns `{1, bytes}` when taken now, `{2, bytes}` when taken by an
/// earlier run of this take (its record), `{0}` when absent, `{-1, bytes}` /
/// `{-1}` when the flow key holds a string / another type that is not a
/// flow this release can read (the bytes let the caller say why), `{-2}`
/// when the taken record holds something this library did not write (left
/// alone).
const TAKE_FLOW: &str = r#"
local taken_kind = redis.call('TYPE', KEYS[2])['ok']
if taken_kind == 'string' then
  local record = redis.call('GET', KEYS[2])
  local space = string.find(record, ' ', 1, true)
  if not space then return {-2} end
  if string.sub(record, 1, space - 1) == ARGV[2] then
    return {2, string.sub(record, space + 1)}
  end
elseif taken_kind ~= 'none' then
  return {-2}
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {0} end
if kind ~= 'string' then return {-1} end
local value = redis.call('GET', KEYS[1])
local version = version_of(value)
if not version or version < 1 or version > tonumber(ARGV[1]) then return {-1, value} end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2] .. ' ' .. value, 'PX', ARGV[3])
return {1, value}
"#;

/// Removes a taken record if it is the one left by the take with this
/// nonce: once that take has its reply, nothing will send it again, and the
/// record holds the whole flow (its PKCE verifier among it).
///
/// KEYS: taken record. ARGV: the take's nonce. Returns 1 when removed, 0
/// otherwise (gone, another take's, or not ours: left alone).
const FORGET_TAKEN: &str = r#"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return 0 end
local record = redis.call('GET', KEYS[1])
if string.sub(record, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#;

/// Ends a flow: removes it, keeps its outcome for a while and announces it.
///
/// KEYS: flow, outcome, taken record (removed: once the flow is over, a
/// re-sent take has nothing to answer). ARGV: outcome bytes, keep-for in ms, channel,
/// message, newest flow version, newest outcome version read by this release,
/// the publish command: `PUBLISH` on a single server, `SPUBLISH` on a
/// cluster (where the channel shares the flow's hash tag, so it is on the
/// script's slot).
///
/// Returns 1 when done, -1 / -2 when the flow / outcome key holds something
/// that is not ours (nothing is written then).
const FINISH_FLOW: &str = r#"
local flow_kind = redis.call('TYPE', KEYS[1])['ok']
if flow_kind ~= 'none' then
  if flow_kind ~= 'string' then return -1 end
  local version = version_of(redis.call('GET', KEYS[1]))
  if not version or version < 1 or version > tonumber(ARGV[5]) then return -1 end
end
local outcome_kind = redis.call('TYPE', KEYS[2])['ok']
if outcome_kind ~= 'none' then
  if outcome_kind ~= 'string' then return -2 end
  local version = version_of(redis.call('GET', KEYS[2]))
  if not version or version < 1 or version > tonumber(ARGV[6]) then return -2 end
end
-- Published first: the script is atomic, so nobody sees the message before
-- the outcome is stored, and a refused PUBLISH (an ACL without the channel)
-- fails the script before it has written anything.
if ARGV[7] == 'SPUBLISH' then
  redis.call('SPUBLISH', ARGV[3], ARGV[4])
else
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
if flow_kind ~= 'none' then redis.call('DEL', KEYS[1]) end
if redis.call('TYPE', KEYS[3])['ok'] == 'string'
  and string.find(redis.call('GET', KEYS[3]), ' ', 1, true) then
  redis.call('DEL', KEYS[3])
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// The scripts run by EVALSHA (loaded again by redis-rs after a server
/// restart empties the script cache). Scripts sent inside pipelines use
/// EVAL with the source instead: a NOSCRIPT in the middle of a pipeline
/// would leave its first commands done and the rest not.
pub(crate) struct Scripts {
    pub(crate) write_token: Script,
    pub(crate) delete_token: Script,
    pub(crate) compare_and_delete: Script,
    pub(crate) take_flow: Script,
    pub(crate) forget_taken: Script,
    /// Source of the finish script, for EVAL in the completion pipeline.
    pub(crate) finish_flow: String,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            write_token: Script::new(WRITE_TOKEN),
            delete_token: Script::new(DELETE_TOKEN),
            compare_and_delete: Script::new(COMPARE_AND_DELETE),
            take_flow: Script::new(&format!("{VERSION_OF}{TAKE_FLOW}")),
            forget_taken: Script::new(FORGET_TAKEN),
            finish_flow: format!("{VERSION_OF}{FINISH_FLOW}"),
        }
    }
}
