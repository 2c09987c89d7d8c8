//! The fleet's data in Redis: key names, the format, the scripts that change it, and the
//! pure decoding of what Redis answers (so that garbage is refused here, and unit-tested).
//!
//! The keys under `<prefix>` are `Keys`; their types, expiries and contents are in docs/fleet.md's
//! "The data in Redis", which a test below holds to `Keys`, `STAGING_TTL_S`, `LOG_KEEP`,
//! `META_FIELDS` and `FORMAT`. Each script says its KEYS and ARGV beside its text.
//!
//! Readers never see half a list: a delta (ZADD/ZREM on the list, the log entry, the version)
//! is one Lua script; a full list is written aside and renamed in one script; a follower reads
//! the meta with the log (or the meta with the list) in one MULTI/EXEC. Every script that writes
//! checks first that `P:leader` still holds the writer's `<node_id>:<token>`: a leader that paused
//! past its lease, or lost Redis for a while, finds its token stale and writes nothing.

use crate::addr::{parse_text, Key};
use redis::Value;

/// Refuses data written by another version of this format (or by anything else).
/// 2: each version names its writer (a version number alone can come back after a fail-over
/// that lost writes), and the meta holds the settings that shape the list.
pub const FORMAT: &str = "apiban-fleet-2";
/// Log entries kept (approximately: MAXLEN ~): a follower further behind reads the full list.
pub const LOG_KEEP: u32 = 1000;
/// Members per ZADD when a full list is written aside.
pub const CHUNK: usize = 2000;
/// A dead leader's half-written full list disappears after this.
pub const STAGING_TTL_S: u64 = 300;

#[derive(Clone, Debug)]
pub struct Keys {
    pub leader: String,
    pub fence: String,
    pub requests: String,
    pub meta: String,
    pub list: String,
    pub log: String,
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let k = |s: &str| format!("{prefix}:{s}");
        Keys {
            leader: k("leader"),
            fence: k("fence"),
            requests: k("requests"),
            meta: k("meta"),
            list: k("list"),
            log: k("log"),
            prefix: prefix.to_string(),
        }
    }

    pub fn staging(&self, token: u64) -> String {
        format!("{}:staging:{token}", self.prefix)
    }
}

/// Takes the lease if nobody holds it: `{1, token}`, or `{0, holder}`.
/// KEYS: leader, fence. ARGV: node_id, ttl_ms.
pub const TAKE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. t, 'NX', 'PX', ARGV[2])
return {1, t}
";

/// Extends the lease if it is still ours: `{1, ''}`, or `{0, holder or ''}`. Never touches a
/// successor's lease. KEYS: leader. ARGV: our value, ttl_ms.
pub const RENEW: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, ''}
end
return {0, cur or ''}
";

/// Deletes the lease only if it is still ours. KEYS: leader. ARGV: our value.
pub const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Before each APIBAN request: the lease is still ours (else -1); it is stretched to cover the
/// request's longest possible duration; the request enters the fleet's history with the latest
/// time it can complete, so a leader killed mid-request still leaves a conservative trace.
/// Returns Redis's time in ms. KEYS: leader, requests. ARGV: our value, lease_ms,
/// request_max_ms, keep_ms, member.
pub const RESERVE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[5])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[3]))
return now
";

/// After the reply is complete: the request's time becomes the real completion time, and the
/// lease goes back to `leader_ttl` if it is still ours (1, else 0). KEYS: leader, requests.
/// ARGV: our value, ttl_ms, member.
pub const DONE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], 'XX', now, ARGV[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// The fleet's request history: `{now_ms, member, score, member, score, ...}` of the requests
/// whose time is within `keep_ms` of now (or ahead of it). KEYS: requests. ARGV: keep_ms.
pub const HISTORY: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf', 'WITHSCORES')
table.insert(r, 1, now)
return r
";

/// The checks both publishing scripts make before writing anything: the lease is ours, the
/// meta is ours or absent, the list and the log have their types. A foreign or garbage layout
/// is never overwritten. KEYS: leader, meta, list, log. ARGV[1]: lease value, ARGV[2]: format.
const CHECKS: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, 'the lease is no longer ours'} end
local mt = redis.call('TYPE', KEYS[2]).ok
if mt ~= 'hash' and mt ~= 'none' then return {-2, KEYS[2] .. ' is a ' .. mt .. ', not a hash'} end
local fmt = redis.call('HGET', KEYS[2], 'format')
if mt == 'hash' and fmt ~= ARGV[2] then
  return {-2, KEYS[2] .. ' has format ' .. tostring(fmt or 'none') .. ', this module writes ' .. ARGV[2]}
end
local lt = redis.call('TYPE', KEYS[3]).ok
if lt ~= 'zset' and lt ~= 'none' then return {-2, KEYS[3] .. ' is a ' .. lt .. ', not a sorted set'} end
local gt = redis.call('TYPE', KEYS[4]).ok
if gt ~= 'stream' and gt ~= 'none' then return {-2, KEYS[4] .. ' is a ' .. gt .. ', not a stream'} end
";

/// One incremental sync, atomically: add or relist, delete, log the change, bump the version.
/// Refused when the writer's view (epoch, version, that version's writer) is not the current
/// one, or when the fleet's settings are not the writer's. With nothing added or deleted only
/// the meta's sync fields change (no new version).
/// KEYS: leader, meta, list, log. ARGV: lease value, format, epoch, expected version, expected
/// writer, new writer, last_id, synced_at, node_id, log_keep, settings, n_add, then n_add ×
/// (member, score), then members to delete.
/// Returns `{version}`, `{-1, why}` (lease), `{-2, why}` (foreign data), `{-3, why}` (stale, or a
/// list that no longer holds `entries` members: the writer writes it all).
pub fn publish_delta_script() -> String {
    CHECKS.to_string()
        + r"
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'version', 'entries', 'writer', 'settings')
if meta[1] ~= ARGV[3] or meta[2] ~= ARGV[4] or meta[4] ~= ARGV[5] then return {-3, tostring(meta[2])} end
if meta[5] ~= ARGV[11] then return {-3, 'the settings changed'} end
-- A list that lost members (expired, deleted, evicted) or gained foreign ones needs a full write.
local held = redis.call('ZCARD', KEYS[3])
if held ~= tonumber(meta[3]) then return {-3, KEYS[3] .. ' holds ' .. held .. ' of ' .. tostring(meta[3])} end
local n = tonumber(ARGV[12])
local first_del = 13 + 2 * n
if n == 0 and first_del > #ARGV then
  redis.call('HSET', KEYS[2], 'last_id', ARGV[7], 'synced_at', ARGV[8], 'leader', ARGV[9])
  return {tonumber(ARGV[4])}
end
local add, del = {}, {}
for i = 13, first_del - 1, 2000 do
  local args = {}
  for j = i, math.min(i + 1998, first_del - 2), 2 do
    args[#args + 1] = ARGV[j + 1]; args[#args + 1] = ARGV[j]
    add[#add + 1] = ARGV[j] .. '=' .. ARGV[j + 1]
  end
  redis.call('ZADD', KEYS[3], unpack(args))
end
for i = first_del, #ARGV, 1000 do
  local args = {}
  for j = i, math.min(i + 999, #ARGV) do
    args[#args + 1] = ARGV[j]; del[#del + 1] = ARGV[j]
  end
  redis.call('ZREM', KEYS[3], unpack(args))
end
local v = tonumber(ARGV[4]) + 1
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[10], v .. '-0', 'writer', ARGV[6], 'add', table.concat(add, ' '),
  'del', table.concat(del, ' '))
redis.call('HSET', KEYS[2], 'version', v, 'writer', ARGV[6], 'last_id', ARGV[7], 'synced_at', ARGV[8],
  'leader', ARGV[9], 'entries', redis.call('ZCARD', KEYS[3]))
return {v}
"
}

/// A full list written aside (`P:staging:<token>`) becomes the list, atomically, under a new
/// epoch; the log starts again with a `full` entry. A full write also sets the fleet's settings.
/// KEYS: leader, meta, list, log, staging. ARGV: lease value, format, epoch, count, last_id,
/// synced_at, full_at, node_id, log_keep, writer, settings. Returns `{version}`, `{-1, why}`,
/// `{-2, why}`, or `{-4, why}` when the staged list is not complete.
pub fn commit_full_script() -> String {
    CHECKS.to_string()
        + r"
local n = tonumber(ARGV[4])
if n > 0 then
  local got = redis.call('ZCARD', KEYS[5])
  if got ~= n then return {-4, 'staged ' .. got .. ' of ' .. n} end
  redis.call('RENAME', KEYS[5], KEYS[3])
  -- RENAME keeps the staging key's expiry: without this the list would delete itself
  -- STAGING_TTL_S after every full write.
  redis.call('PERSIST', KEYS[3])
else
  redis.call('DEL', KEYS[3], KEYS[5])
end
local v = (tonumber(redis.call('HGET', KEYS[2], 'version')) or 0) + 1
redis.call('DEL', KEYS[4])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], v .. '-0', 'writer', ARGV[10], 'full', n)
redis.call('HSET', KEYS[2], 'format', ARGV[2], 'epoch', ARGV[3], 'version', v, 'last_id', ARGV[5],
  'synced_at', ARGV[6], 'full_at', ARGV[7], 'leader', ARGV[8], 'entries', n, 'writer', ARGV[10],
  'settings', ARGV[11])
return {v}
"
}

/// The meta fields, in the order every HMGET of them asks.
pub const META_FIELDS: [&str; 10] =
    ["format", "epoch", "version", "last_id", "synced_at", "full_at", "leader", "entries", "writer", "settings"];

/// What `P:meta` says, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub epoch: String,
    pub version: u64,
    pub last_id: u64,
    pub synced_at: u64,
    pub full_at: u64,
    pub leader: String,
    pub entries: u64,
    /// Who wrote this version (`<node_id>:<token>:<random>`): with the epoch and the number, what
    /// makes a version one and only one list.
    pub writer: String,
    /// The settings of the node that wrote the list last in full.
    pub settings: String,
}

pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => text(v)?.parse().ok(),
    }
}

impl Meta {
    /// The reply of `HMGET P:meta <META_FIELDS>`. `Ok(None)`: no meta at all (Redis is empty,
    /// or no leader has written yet).
    pub fn decode(reply: &Value, key: &str) -> Result<Option<Meta>, String> {
        let Value::Array(f) = reply else { return Err(format!("{key}: unexpected reply")) };
        if f.len() != META_FIELDS.len() {
            return Err(format!("{key}: unexpected reply"));
        }
        if f.iter().all(|v| matches!(v, Value::Nil)) {
            return Ok(None);
        }
        match text(&f[0]) {
            Some(fmt) if fmt == FORMAT => {}
            Some(fmt) => {
                let fmt: String = fmt.chars().take(40).filter(|c| !c.is_control()).collect();
                return Err(format!("{key} has format '{fmt}', this module reads only '{FORMAT}': refused"));
            }
            None => return Err(format!("{key} has no format field: not written by apiban, refused")),
        }
        let num = |i: usize| number(&f[i]).ok_or_else(|| format!("{key}: field '{}' is missing or not a number", META_FIELDS[i]));
        let epoch = text(&f[1]).filter(|e| !e.is_empty()).ok_or_else(|| format!("{key}: no epoch"))?;
        Ok(Some(Meta {
            epoch,
            version: num(2)?,
            last_id: num(3)?,
            synced_at: num(4)?,
            full_at: number(&f[5]).unwrap_or(0),
            leader: text(&f[6]).unwrap_or_default(),
            entries: num(7)?,
            writer: text(&f[8]).unwrap_or_default(),
            settings: text(&f[9]).unwrap_or_default(),
        }))
    }
}

/// The listing time as stored: an integer number of seconds that fits the table's u32.
fn listing_time(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    // Redis may print an integral score in exponent form only past 2^53; anything else that
    // parses as a float but is not a whole u32 is not ours.
    let f = s.parse::<f64>().ok()?;
    (f.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&f)).then_some(f as u32)
}

/// A list member as the leader wrote it: an address, as text.
pub fn member(k: Key) -> String {
    k.to_ip().to_string()
}

/// The reply of `ZRANGE P:list 0 -1 WITHSCORES` (RESP2: member, score, member, score...).
pub fn decode_list(reply: &Value, key: &str) -> Result<Vec<(Key, u32)>, String> {
    let Value::Array(items) = reply else { return Err(format!("{key}: not a list reply")) };
    if items.len() % 2 != 0 {
        return Err(format!("{key}: truncated reply"));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    for pair in items.chunks_exact(2) {
        let m = text(&pair[0]).ok_or_else(|| format!("{key}: a member is not text"))?;
        let k = parse_text(m.as_bytes()).ok_or_else(|| format!("{key}: member '{}' is not an address", shorten(&m)))?;
        let t = match &pair[1] {
            Value::Double(d) if d.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(d) => *d as u32,
            v => text(v).and_then(|s| listing_time(&s)).ok_or_else(|| format!("{key}: a score is not a listing time"))?,
        };
        out.push((k, t));
    }
    Ok(out)
}

fn shorten(s: &str) -> String {
    s.chars().take(40).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// One version of the list, as the log tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    pub version: u64,
    pub writer: String,
    /// A full list was written at this version: the log before it means nothing.
    pub full: bool,
    pub add: Vec<(Key, u32)>,
    pub del: Vec<Key>,
}

/// The reply of `XRANGE P:log <from>-0 +`: `[[id, [field, value, ...]], ...]`.
pub fn decode_log(reply: &Value, key: &str) -> Result<Vec<Delta>, String> {
    let Value::Array(entries) = reply else { return Err(format!("{key}: not a stream reply")) };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let bad = || format!("{key}: an entry is not ours");
        let Value::Array(parts) = e else { return Err(bad()) };
        let [id, Value::Array(fields)] = parts.as_slice() else { return Err(bad()) };
        let id = text(id).ok_or_else(bad)?;
        let version = id.strip_suffix("-0").and_then(|v| v.parse::<u64>().ok()).ok_or_else(bad)?;
        let mut d = Delta { version, ..Delta::default() };
        for fv in fields.chunks(2) {
            let [f, v] = fv else { return Err(bad()) };
            let (f, v) = (text(f).ok_or_else(bad)?, text(v).ok_or_else(bad)?);
            match f.as_str() {
                "full" => d.full = true,
                "writer" => d.writer = v,
                "add" => {
                    for tok in v.split_ascii_whitespace() {
                        let (a, t) = tok.rsplit_once('=').ok_or_else(bad)?;
                        let k = parse_text(a.as_bytes())
                            .ok_or_else(|| format!("{key}: '{}' is not an address", shorten(a)))?;
                        d.add.push((k, listing_time(t).ok_or_else(bad)?));
                    }
                }
                "del" => {
                    for a in v.split_ascii_whitespace() {
                        d.del.push(parse_text(a.as_bytes()).ok_or_else(|| format!("{key}: '{}' is not an address", shorten(a)))?);
                    }
                }
                _ => return Err(bad()),
            }
        }
        out.push(d);
    }
    Ok(out)
}

/// The reply of the HISTORY script: Redis's time, then (member, score) pairs. Returns each
/// request's name and its time relative to now in ms: positive in the past, negative still
/// ahead (a request in flight, or one whose leader died before it completed).
pub fn decode_history(reply: &Value) -> Result<Vec<(String, i64)>, String> {
    let bad = || "the request history is not ours".to_string();
    let Value::Array(items) = reply else { return Err(bad()) };
    let (now, rest) = items.split_first().ok_or_else(bad)?;
    let now = number(now).ok_or_else(bad)? as i64;
    if rest.len() % 2 != 0 {
        return Err(bad());
    }
    rest.chunks_exact(2)
        .map(|p| {
            let name = text(&p[0]).ok_or_else(bad)?;
            let s = text(&p[1]).and_then(|s| s.parse::<f64>().ok()).filter(|f| f.is_finite()).ok_or_else(bad)?;
            // Saturating: a hostile score must not overflow; the limiter clamps what is ahead.
            Ok((name, now.saturating_sub(s.clamp(i64::MIN as f64, i64::MAX as f64) as i64)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn meta(fields: [Option<&str>; 8]) -> Value {
        let fields: Vec<Option<&str>> = fields.into_iter().chain([Some("n1:1:ab"), Some("s")]).collect();
        Value::Array(fields.iter().map(|f| f.map_or(Value::Nil, b)).collect())
    }

    #[test]
    fn meta_is_checked() {
        let ok = meta([Some(FORMAT), Some("e1"), Some("7"), Some("1700000000"), Some("1700000100"), None, Some("n1"), Some("3")]);
        let m = Meta::decode(&ok, "apiban:meta").unwrap().unwrap();
        assert_eq!((m.epoch.as_str(), m.version, m.last_id, m.entries, m.leader.as_str()), ("e1", 7, 1700000000, 3, "n1"));
        assert_eq!((m.writer.as_str(), m.settings.as_str()), ("n1:1:ab", "s"));
        assert_eq!(Meta::decode(&Value::Array(vec![Value::Nil; META_FIELDS.len()]), "k").unwrap(), None);
        let other = meta([Some("apiban-fleet-1"), Some("e"), Some("1"), Some("1"), Some("1"), None, None, Some("0")]);
        assert!(Meta::decode(&other, "k").unwrap_err().contains("format 'apiban-fleet-1'"));
        let nofmt = meta([None, Some("e"), Some("1"), Some("1"), Some("1"), None, None, Some("0")]);
        assert!(Meta::decode(&nofmt, "k").unwrap_err().contains("no format"));
        let badnum = meta([Some(FORMAT), Some("e"), Some("x"), Some("1"), Some("1"), None, None, Some("0")]);
        assert!(Meta::decode(&badnum, "k").unwrap_err().contains("'version'"));
        assert!(Meta::decode(&b("x"), "k").is_err());
    }

    #[test]
    fn lists_decode_and_garbage_is_refused() {
        let l = Value::Array(vec![b("192.0.2.1"), b("1700000000"), b("2001:db8::1"), b("1700000001")]);
        assert_eq!(
            decode_list(&l, "k").unwrap(),
            vec![(Key::V4(0xc000_0201), 1700000000), (Key::V6(0x2001_0db8_0000_0000_0000_0000_0000_0001), 1700000001)]
        );
        assert_eq!(decode_list(&Value::Array(vec![b("192.0.2.1"), Value::Double(5.0)]), "k").unwrap()[0].1, 5);
        for bad in [
            Value::Array(vec![b("192.0.2.1")]),
            Value::Array(vec![b("hello"), b("1")]),
            Value::Array(vec![b("192.0.2.1"), b("1.5")]),
            Value::Array(vec![b("192.0.2.1"), b("-1")]),
            Value::Array(vec![b("192.0.2.1"), b("99999999999")]),
            b("192.0.2.1"),
        ] {
            assert!(decode_list(&bad, "k").is_err(), "{bad:?}");
        }
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![b(id), Value::Array(fields.iter().flat_map(|(f, v)| [b(f), b(v)]).collect())])
    }

    #[test]
    fn log_entries_decode() {
        let log = Value::Array(vec![
            entry("5-0", &[("add", "192.0.2.1=1700000000 2001:db8::2=1700000001"), ("del", "192.0.2.9")]),
            entry("6-0", &[("writer", "n:2:x"), ("full", "12")]),
            entry("7-0", &[("add", ""), ("del", "")]),
        ]);
        let d = decode_log(&log, "k").unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!((d[0].version, d[0].add.len(), d[0].del.clone(), d[0].full), (5, 2, vec![Key::V4(0xc000_0209)], false));
        assert!(d[1].full && d[1].version == 6 && d[1].writer == "n:2:x");
        assert!(d[2].add.is_empty() && d[2].del.is_empty());
        for bad in [
            Value::Array(vec![entry("5-1", &[("add", "")])]),
            Value::Array(vec![entry("x-0", &[("add", "")])]),
            Value::Array(vec![entry("5-0", &[("add", "192.0.2.1")])]),
            Value::Array(vec![entry("5-0", &[("add", "nope=1")])]),
            Value::Array(vec![entry("5-0", &[("what", "1")])]),
            Value::Array(vec![b("5-0")]),
        ] {
            assert!(decode_log(&bad, "k").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn history_is_relative_to_redis_time() {
        let h = Value::Array(vec![Value::Int(10_000), b("1:1"), b("9000"), b("1:2"), b("12000")]);
        assert_eq!(decode_history(&h).unwrap(), vec![("1:1".into(), 1000), ("1:2".into(), -2000)]);
        assert!(decode_history(&Value::Array(vec![Value::Int(1), b("m")])).is_err());
        assert!(decode_history(&Value::Array(vec![])).is_err());
    }

    /// Every key of the layout: its name under the prefix, its Redis type and its expiry, as
    /// docs/fleet.md's "The data in Redis" table shows them to operators (a test holds the two together).
    const KEY_TABLE: [(&str, &str, &str); 7] = [
        ("leader", "string", "`leader_ttl`"),
        ("fence", "string (integer)", "none"),
        ("requests", "sorted set", "the rate window + one request"),
        ("meta", "hash", "none"),
        ("list", "sorted set", "none (made persistent when renamed from staging)"),
        ("log", "stream", "none (about 1000 entries)"),
        ("staging:<token>", "sorted set", "300 s"),
    ];

    #[test]
    fn the_readme_shows_the_layout_as_it_is() {
        let readme = include_str!("../../docs/fleet.md");
        for (name, kind, expiry) in KEY_TABLE {
            let row = format!("| `apiban:{name}` | {kind} | {expiry} |");
            assert!(readme.contains(&row), "docs/fleet.md lacks the row {row}");
        }
        let k = Keys::new("apiban");
        for key in [&k.leader, &k.fence, &k.requests, &k.meta, &k.list, &k.log, &k.staging(7)] {
            let name = key.strip_prefix("apiban:").unwrap().replace('7', "<token>");
            assert!(KEY_TABLE.iter().any(|(n, _, _)| *n == name), "{key} is not in KEY_TABLE");
        }
        assert!(KEY_TABLE.iter().any(|(n, _, e)| *n == "staging:<token>" && *e == format!("{STAGING_TTL_S} s")));
        assert!(KEY_TABLE.iter().any(|(n, _, e)| *n == "log" && e.contains(&LOG_KEEP.to_string())));
        let meta_row = readme.lines().find(|l| l.starts_with("| `apiban:meta`")).unwrap();
        assert!(meta_row.contains(&format!("`{FORMAT}`")), "{meta_row}");
        for f in META_FIELDS {
            assert!(meta_row.contains(&format!("`{f}`")), "docs/fleet.md's meta row lacks `{f}`");
        }
    }

    #[test]
    fn members_round_trip() {
        for k in [Key::V4(0x0a00_0001), Key::V6(0x2001_0db8 << 96 | 5)] {
            assert_eq!(parse_text(member(k).as_bytes()), Some(k));
        }
    }
}
