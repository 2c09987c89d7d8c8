//! Local bans across the fleet, through the fleet's Redis under its prefix:
//!
//! - `P:ban:<address>`: a string holding the record (`Ban::encode`), which expires with it
//!   (`PXAT`), so Redis holds no expired ban and a joiner reads only those in force.
//! - `P:bans`: the addresses, scored by expiry (ms): the index a full read walks; pruned on
//!   every write and expiring with its last member.
//! - `P:bans:log`: a stream of every write (`a` address, `r` record), which each node reads with
//!   a blocking `XREAD` on a connection of its own (the keeper's reader thread): a ban reaches
//!   the other nodes as soon as it is written. Trimmed to the
//!   last minute, and gone with the last record; a node that was away reads everything again
//!   (and does so every `FULL_EVERY` anyway).
//!
//! Any node writes, not only the leader. A write is refused by the script when Redis holds a
//! record of the address made later, so that every node and Redis end with the later record
//! whatever order the writes arrive in.

use super::store::Store;
use super::Ban;
use crate::addr::{parse_text, Key};
use crate::fleet::layout::text;
use crate::fleet::{Fleet, FleetError, FleetSettings};
use redis::{Script, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a node reads every ban again, whatever the log said.
const FULL_EVERY: Duration = Duration::from_secs(30);
/// Records written in one round trip.
const PIPELINE: usize = 256;
/// What the log keeps: a minute of writes.
const LOG_KEEP_MS: u64 = 60_000;

/// KEYS: the ban's key, the index, the log. ARGV: address, record, expires ms, now ms, made ms,
/// how long the log keeps a write (ms).
/// 1 written, 0 refused (Redis holds a later record, or this one has expired).
const WRITE: &str = r"
local old = redis.call('GET', KEYS[1])
if old then
  local m = tonumber(string.match(old, '^%a|(%d+)|'))
  if m and m >= tonumber(ARGV[5]) then return 0 end
end
if tonumber(ARGV[3]) <= tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
redis.call('XADD', KEYS[3], 'MINID', '~', tonumber(ARGV[4]) - tonumber(ARGV[6]), '*', 'a', ARGV[1], 'r', ARGV[2])
local top = redis.call('ZRANGE', KEYS[2], 0, 0, 'REV', 'WITHSCORES')
local last = tonumber(top[2])
redis.call('PEXPIREAT', KEYS[2], last)
redis.call('PEXPIREAT', KEYS[3], math.min(last, tonumber(ARGV[4]) + tonumber(ARGV[6])))
return 1
";

/// KEYS: the index, the log. ARGV: now ms, the most to read, the ban keys' prefix.
/// Returns the log's last ID, then address, record pairs, newest expiry first.
const READ: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local out = {last[1] and last[1][1] or '0-0'}
local addrs = redis.call('ZRANGE', KEYS[1], '+inf', '(' .. ARGV[1], 'BYSCORE', 'REV', 'LIMIT', 0, tonumber(ARGV[2]))
for _, a in ipairs(addrs) do
  local r = redis.call('GET', ARGV[3] .. a)
  if r then
    out[#out + 1] = a
    out[#out + 1] = r
  end
end
return out
";

pub struct Share {
    client: Fleet,
    prefix: String,
    index: String,
    log: String,
    write: Script,
    read: Script,
    /// The last log entry applied; None until the first full read.
    cursor: Option<String>,
    full_at: Option<Instant>,
    max: usize,
}

/// What a receive brought.
#[derive(Debug, PartialEq, Eq)]
pub enum News {
    /// Every record in force: the node adopts them and writes back what Redis lacks.
    Full(Vec<(Key, Ban)>),
    /// What the log brought since the last read.
    Log(Vec<(Key, Ban)>),
}

impl News {
    /// Applies the news to what the node holds; returns how many records changed it.
    pub fn apply(self, store: &mut Store, now: u64) -> usize {
        match self {
            News::Log(records) => records.into_iter().map(|(k, b)| store.adopt(k, b) as usize).sum(),
            News::Full(records) => {
                let present: HashMap<Key, u64> = records.iter().map(|(k, b)| (*k, b.made_at)).collect();
                let changed = records.into_iter().map(|(k, b)| store.adopt(k, b) as usize).sum();
                // What we hold and Redis lacks (a flush, a failed-over master that had not got
                // it): written again.
                store.resend_missing(&present, now);
                changed
            }
        }
    }
}

impl Share {
    pub fn new(fs: FleetSettings, max: usize) -> Share {
        let prefix = format!("{}:ban:", fs.prefix);
        let index = format!("{}:bans", fs.prefix);
        let log = format!("{}:bans:log", fs.prefix);
        Share { client: Fleet::new(fs), prefix, index, log, write: Script::new(WRITE), read: Script::new(READ), cursor: None, full_at: None, max }
    }

    /// Writes every pending record, in pipelines of up to `PIPELINE`: a flood of bans costs a
    /// round trip per batch, not per ban. Stops at the first error (the rest stay pending).
    pub fn send(&mut self, store: &mut Store, now_ms: u64) -> Result<usize, FleetError> {
        let pending = store.pending();
        let mut n = 0;
        for batch in pending.chunks(PIPELINE) {
            let rows: Vec<(String, String, String, u64, u64)> = batch
                .iter()
                .map(|(k, b)| {
                    let addr = k.to_ip().to_string();
                    (format!("{}{addr}", self.prefix), addr, b.encode(), b.expires.saturating_mul(1000), b.made_at)
                })
                .collect();
            let (index, log, w) = (&self.index, &self.log, &self.write);
            let invocation = |r: &(String, String, String, u64, u64)| {
                let mut inv = w.prepare_invoke();
                inv.key(&r.0).key(index).key(log).arg(&r.1).arg(&r.2).arg(r.3).arg(now_ms).arg(r.4).arg(LOG_KEEP_MS);
                inv
            };
            self.client.exchange(|c| {
                // The first alone: it loads the script if Redis does not have it (a restart, a
                // new master); the others then go by its SHA in one pipeline.
                let _: i64 = invocation(&rows[0]).invoke(c)?;
                if rows.len() > 1 {
                    let invs: Vec<_> = rows[1..].iter().map(invocation).collect();
                    let mut p = redis::pipe();
                    for inv in &invs {
                        p.invoke_script(inv).ignore();
                    }
                    p.query::<()>(c)?;
                }
                Ok(())
            })?;
            // Written, or refused because Redis holds a later record, which the log brings.
            for (k, b) in batch {
                store.sent(*k, b.made_at);
            }
            n += batch.len();
        }
        Ok(n)
    }

    /// Brings what other nodes wrote: everything on the first call, after a gap and every
    /// FULL_EVERY; otherwise the log since the last entry, waiting at most `block_ms` for one
    /// (None: nothing came).
    pub fn receive(&mut self, now_ms: u64, block_ms: u64) -> Result<Option<News>, FleetError> {
        let due = self.full_at.is_none_or(|t| t.elapsed() >= FULL_EVERY);
        match self.cursor.clone() {
            Some(cursor) if !due => self.tail(&cursor, block_ms),
            _ => self.full(now_ms).map(Some),
        }
    }

    fn full(&mut self, now_ms: u64) -> Result<News, FleetError> {
        let (index, log, prefix, r, max) = (&self.index, &self.log, &self.prefix, &self.read, self.max);
        let reply: Value = self.client.exchange(|c| r.key(index).key(log).arg(now_ms).arg(max).arg(prefix).invoke(c))?;
        let Value::Array(items) = reply else { return Err(FleetError::Garbage(format!("{index}: unexpected reply"))) };
        let mut it = items.iter();
        let cursor = it.next().and_then(text).ok_or_else(|| FleetError::Garbage(format!("{log}: no stream ID")))?;
        let mut records = Vec::new();
        while let (Some(a), Some(r)) = (it.next(), it.next()) {
            records.extend(record(a, r));
        }
        self.cursor = Some(cursor);
        self.full_at = Some(Instant::now());
        Ok(News::Full(records))
    }

    fn tail(&mut self, cursor: &str, block_ms: u64) -> Result<Option<News>, FleetError> {
        let log = &self.log;
        let reply: Value = self.client.exchange(|c| {
            redis::cmd("XREAD").arg("COUNT").arg(1000).arg("BLOCK").arg(block_ms).arg("STREAMS").arg(log).arg(cursor).query(c)
        })?;
        let entries = match &reply {
            Value::Nil => return Ok(None),
            Value::Array(streams) => streams.first().and_then(|s| match s {
                Value::Array(kv) => kv.get(1),
                _ => None,
            }),
            Value::Map(m) => m.first().map(|(_, v)| v),
            _ => None,
        };
        let Some(Value::Array(entries)) = entries else { return Err(FleetError::Garbage(format!("{log}: not a stream reply"))) };
        let mut records = Vec::new();
        for e in entries {
            let Value::Array(parts) = e else { continue };
            let [id, Value::Array(fields)] = parts.as_slice() else { continue };
            let (mut a, mut r) = (None, None);
            for fv in fields.chunks(2) {
                match fv {
                    [f, v] if text(f).as_deref() == Some("a") => a = Some(v),
                    [f, v] if text(f).as_deref() == Some("r") => r = Some(v),
                    _ => {}
                }
            }
            records.extend(a.zip(r).and_then(|(a, r)| record(a, r)));
            if let Some(id) = text(id) {
                self.cursor = Some(id);
            }
        }
        Ok(Some(News::Log(records)))
    }

    /// Forgets the log position: the next receive reads everything (after Redis came back).
    pub fn reset(&mut self) {
        self.cursor = None;
    }
}

fn record(a: &Value, r: &Value) -> Option<(Key, Ban)> {
    let k = parse_text(text(a)?.as_bytes())?;
    Some((k, Ban::decode(&text(r)?)?))
}

/// How long to wait before the next try after an error: Redis's own reconnect pace.
pub const RETRY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::super::ring::{Op, Request, REASON_MAX};
    use super::super::Kind;
    use super::*;
    use crate::clock::unix_now_ms;
    use crate::fleet::redis_tests::{raw, server, settings};

    fn req(op: Op, k: u32, ttl: u32) -> Request {
        let mut reason = [0u8; REASON_MAX];
        reason[..4].copy_from_slice(b"pike");
        Request { op, key: Key::V4(k), ttl, made_at: unix_now_ms() / 1000, reason, reason_len: 4 }
    }

    fn node(port: u16, name: &str) -> (Share, Store) {
        (Share::new(settings(port, name, None), 100), Store::new(100, name, true))
    }

    /// One receive, applied: how many records changed the store.
    fn recv(share: &mut Share, store: &mut Store) -> usize {
        share.receive(unix_now_ms(), 100).unwrap().map_or(0, |n| n.apply(store, unix_now_ms() / 1000))
    }

    #[test]
    fn a_ban_reaches_another_node_and_redis_forgets_it_when_it_expires() {
        let r = server(&[]);
        let (mut sa, mut a) = node(r.port, "a");
        let (mut sb, mut b) = node(r.port, "b");
        assert_eq!(sb.receive(unix_now_ms(), 100).unwrap(), Some(News::Full(vec![])));
        a.apply(&req(Op::Ban, 7, 2), unix_now_ms(), None);
        assert_eq!(sa.send(&mut a, unix_now_ms()).unwrap(), 1);
        assert!(a.pending().is_empty());
        // b's blocking read of the log brings it.
        assert_eq!(recv(&mut sb, &mut b), 1);
        assert_eq!(b.get(Key::V4(7)).map(|x| (x.kind, x.node.as_str(), x.reason.as_str())), Some((Kind::Ban, "a", "pike")));
        let mut c = raw(r.port);
        let ttl: i64 = redis::cmd("PTTL").arg("t:ban:0.0.0.7").query(&mut c).unwrap();
        assert!(ttl > 0 && ttl <= 3000, "{ttl}");
        // An unban on b reaches a.
        b.apply(&req(Op::Unban, 7, 0), unix_now_ms(), None);
        sb.send(&mut b, unix_now_ms()).unwrap();
        recv(&mut sa, &mut a);
        assert_eq!(a.get(Key::V4(7)).unwrap().kind, Kind::Lifted);
        std::thread::sleep(Duration::from_millis(3100));
        let keys: Vec<String> = redis::cmd("KEYS").arg("t:ban*").query(&mut c).unwrap();
        assert!(keys.is_empty(), "expired records and their index are gone: {keys:?}");
    }

    #[test]
    fn a_burst_of_bans_goes_out_in_pipelines_and_arrives_whole() {
        let r = server(&[]);
        let (mut sa, mut a) = node(r.port, "a");
        let (mut sb, mut b) = node(r.port, "b");
        let mut a = std::mem::replace(&mut a, Store::new(1000, "a", true));
        let mut b = std::mem::replace(&mut b, Store::new(1000, "b", true));
        recv(&mut sb, &mut b);
        for i in 0..600 {
            a.apply(&req(Op::Ban, 0x0a00_0000 + i, 60), unix_now_ms(), None);
        }
        // A flushed script cache: the first write of each batch loads it again.
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw(r.port)).unwrap();
        assert_eq!(sa.send(&mut a, unix_now_ms()).unwrap(), 600);
        let mut got = 0;
        for _ in 0..10 {
            got += recv(&mut sb, &mut b);
        }
        assert_eq!(got, 600);
        let n: i64 = redis::cmd("ZCARD").arg("t:bans").query(&mut raw(r.port)).unwrap();
        assert_eq!(n, 600);
    }

    #[test]
    fn an_older_record_never_replaces_a_later_one_in_redis() {
        let r = server(&[]);
        let (mut sa, mut a) = node(r.port, "a");
        let (mut sb, mut b) = node(r.port, "b");
        let now = unix_now_ms();
        a.apply(&req(Op::Ban, 1, 60), now, None);
        b.apply(&req(Op::Ban, 1, 60), now + 5, None);
        b.apply(&req(Op::Unban, 1, 0), now + 10, None);
        sb.send(&mut b, now).unwrap();
        // a was cut off and sends its older ban late: refused, and a adopts b's unban.
        sa.send(&mut a, now).unwrap();
        recv(&mut sa, &mut a);
        assert_eq!(a.get(Key::V4(1)).unwrap().kind, Kind::Lifted);
        let mut c = raw(r.port);
        let rec: String = redis::cmd("GET").arg("t:ban:0.0.0.1").query(&mut c).unwrap();
        assert!(rec.starts_with("u|"), "{rec}");
    }

    #[test]
    fn after_a_flush_every_node_writes_back_what_it_holds() {
        let r = server(&[]);
        let (mut sa, mut a) = node(r.port, "a");
        let (mut sb, mut b) = node(r.port, "b");
        a.apply(&req(Op::Ban, 1, 60), unix_now_ms(), None);
        sa.send(&mut a, unix_now_ms()).unwrap();
        recv(&mut sb, &mut b);
        let mut c = raw(r.port);
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        // b's next full read finds nothing and writes back the ban it holds.
        sb.reset();
        recv(&mut sb, &mut b);
        assert_eq!(b.pending().len(), 1);
        sb.send(&mut b, unix_now_ms()).unwrap();
        let rec: Option<String> = redis::cmd("GET").arg("t:ban:0.0.0.1").query(&mut c).unwrap();
        assert!(rec.is_some_and(|r| r.starts_with("b|")));
        // A joiner starts with it.
        let (mut sj, mut j) = node(r.port, "joiner");
        recv(&mut sj, &mut j);
        assert_eq!(j.get(Key::V4(1)).map(|x| x.node.clone()), Some("a".into()));
    }
}
