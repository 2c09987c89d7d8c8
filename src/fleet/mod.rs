//! Fleet mode (issue 12): the proxies that share one Redis and `redis_prefix` share one APIBAN
//! pull. This is the refresher's Redis client: the lease that makes one node the only one that
//! talks to APIBAN, the fleet-wide request history the rate limiter needs, the shared list the
//! leader writes and the followers read. The refresher decides what to do; this module says
//! what Redis says, with its errors classified for stats.
//!
//! Process model: only the refresher process owns a `Fleet`, made after the fork; nothing here
//! connects before its first call (a socket opened in mod_init would be shared by every child).
//! Blocking calls with timeouts, no thread.
//!
//! Two talkers never overlap: a leader checks its lease (the fencing token in `P:leader`)
//! before each request, and that check stretches the lease over the request's longest possible
//! duration, so no successor can take it while a request may still be in flight. Every write
//! checks the same token. Redlock across several masters is not used: a rare double talker
//! would cost one extra request, not a corrupt list.

pub mod layout;
#[cfg(test)]
pub(crate) mod redis_tests;
mod sentinel;
pub mod target;

use crate::addr::Key;
use layout::{decode_history, decode_list, decode_log, member, Delta, Keys, Meta, CHUNK, FORMAT, LOG_KEEP, META_FIELDS, STAGING_TTL_S};
use redis::{Client, Connection, ConnectionAddr, ConnectionLike, IntoConnectionInfo, RedisConnectionInfo, Script, Value};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
pub use target::{Endpoint, RedisTarget};

/// The most requests a poll copies from the fleet's history: more than any window holds.
const HISTORY_COPY_MAX: usize = 256;

/// How long a failed connect waits before the next try.
const RECONNECT: Duration = Duration::from_secs(1);

/// What a node needs to know to join the fleet.
#[derive(Clone, Debug)]
pub struct FleetSettings {
    pub target: RedisTarget,
    pub prefix: String,
    pub node_id: String,
    pub leader_ttl: Duration,
    /// Connect, read and write timeout of one Redis call.
    pub timeout: Duration,
    /// The longest an APIBAN request can take (the feed client's deadline): the lease is
    /// stretched over it before each request.
    pub request_max: Duration,
    /// The rate limit's window: how far back the request history matters.
    pub window: Duration,
    /// PEM bundle trusted for rediss:// in addition to the system store.
    pub ca_file: Option<PathBuf>,
    /// The most addresses a read takes from Redis (the newest): `max_entries`.
    pub max_entries: usize,
    /// What shapes the list and the budget, as text (never the key): written with each full
    /// list, and every delta is refused when the fleet's differ.
    pub fingerprint: String,
}

/// Redis trouble, classified for stats and logs. Texts never hold the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetError {
    /// Not reachable, refused, timed out, dropped, or a replica where a master was expected.
    Unavailable(String),
    /// Redis refused the credentials, or wants some.
    Auth(String),
    /// Data under the prefix that is not ours: wrong types, another format, truncated. Refused,
    /// never overwritten.
    Garbage(String),
    /// Any other error reply (out of memory, a script error, ...).
    Server(String),
    /// Our lease is gone (expired, or taken by another node): not an error of Redis.
    LeaseLost,
}

impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FleetError::Unavailable(m) => write!(f, "redis unavailable: {m}"),
            FleetError::Auth(m) => write!(f, "redis refused the credentials: {m}"),
            FleetError::Garbage(m) => write!(f, "redis holds data that is not ours: {m}"),
            FleetError::Server(m) => write!(f, "redis error: {m}"),
            FleetError::LeaseLost => write!(f, "the leader lease is no longer ours"),
        }
    }
}

/// Where this node stands after `lease()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// We hold the lease. `taken`: just now (the caller catches up, loads the history).
    Leader { token: u64, taken: bool },
    /// Another node holds it.
    Follower { leader: String },
}

/// What a follower's `poll()` found.
#[derive(Debug, PartialEq)]
pub enum Poll {
    /// Nothing newer than what we hold.
    Same(Meta),
    /// No shared list at all: no leader has written yet, or Redis restarted empty.
    Empty,
    /// A newer version: apply it.
    Update { meta: Meta, change: Change },
}

#[derive(Debug, PartialEq)]
pub enum Change {
    /// The whole list: replaces what is held.
    Full(Vec<(Key, u32)>),
    /// Set these listing times, drop these addresses.
    Delta { add: Vec<(Key, u32)>, del: Vec<Key> },
}

/// What an incremental sync changed: the addresses added or relisted (with their listing
/// time) and those dropped.
#[derive(Clone, Copy, Debug)]
pub struct Changed<'a> {
    pub add: &'a [(Key, u32)],
    pub del: &'a [Key],
}

/// The sync a leader publishes, besides its addresses.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncInfo {
    pub last_id: u64,
    /// Unix time of the sync.
    pub synced_at: u64,
    /// Unix time of the last full pull: the fleet's full_resync schedule.
    pub full_at: u64,
}

/// One version of the shared list: an epoch (a full write), a number within it, and who wrote
/// it. After a fail-over that lost writes the same number can come back with another list; the
/// writer tells them apart.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    epoch: String,
    version: u64,
    writer: String,
}

impl Seen {
    fn of(m: &Meta) -> Seen {
        Seen { epoch: m.epoch.clone(), version: m.version, writer: m.writer.clone() }
    }
}

struct Lease {
    token: u64,
    value: String,
    renewed: Instant,
}

enum Connector {
    Direct(Box<Client>),
    Sentinel(Box<sentinel::Sentinels>),
}

struct Scripts {
    take: Script,
    renew: Script,
    release: Script,
    reserve: Script,
    done: Script,
    history: Script,
    delta: Script,
    commit: Script,
}

pub struct Fleet {
    s: FleetSettings,
    keys: Keys,
    /// None when the settings cannot make a client (a bad ca_file): every call says why.
    connector: Result<Connector, FleetError>,
    conn: Option<Connection>,
    retry_at: Option<Instant>,
    last_err: Option<FleetError>,
    scripts: Scripts,
    lease: Option<Lease>,
    /// The list version we hold, read or written.
    seen: Option<Seen>,
    /// The node that holds the lease, as last seen.
    holder: String,
    /// Requests reserved in the fleet's history by this node.
    requests: u64,
    /// The fleet's request history as the last poll read it, and when: should Redis lose it (a
    /// flush, a restart empty), a node that takes over still knows what the last leader sent.
    history_copy: Option<(Instant, Vec<(String, i64)>)>,
    /// Makes this process's request names unique in the history, even when a flush restarts
    /// the fencing counter and a token comes round again.
    nonce: String,
    errors: u64,
}

/// The trusted roots for rediss://, as the feed's client has them (src/tls.rs): the system's
/// bundle plus `ca_file`. redis-rs takes either its own reading of the system store or one
/// bundle of ours, so with a `ca_file` the bundle is the system's and the file's together.
fn roots(ca_file: &Option<PathBuf>) -> Result<Option<Vec<u8>>, String> {
    let Some(p) = ca_file else { return Ok(None) };
    let extra = std::fs::read(p).map_err(|e| format!("cannot read ca_file {}: {e}", p.display()))?;
    let system = crate::tls::system_bundle(std::env::var_os("SSL_CERT_FILE").map(PathBuf::from), |p| p.exists());
    let mut pem = system.and_then(|s| std::fs::read(s).ok()).unwrap_or_default();
    pem.push(b'\n');
    pem.extend_from_slice(&extra);
    Ok(Some(pem))
}

fn redis_info(t: &RedisTarget) -> RedisConnectionInfo {
    let mut r = RedisConnectionInfo::default().set_db(t.db).set_lib_name("apiban", env!("CARGO_PKG_VERSION"));
    if let Some(u) = &t.username {
        r = r.set_username(u);
    }
    if let Some(p) = &t.password {
        r = r.set_password(p);
    }
    r
}

/// A client for one TCP address, in TLS when `tls` (trusting `certs` when given, else the
/// system's store).
fn tcp_client(host: &str, port: u16, tls: bool, certs: &Option<Vec<u8>>, info: RedisConnectionInfo) -> redis::RedisResult<Client> {
    let addr = if tls {
        ConnectionAddr::TcpTls { host: host.to_string(), port, insecure: false, tls_params: None }
    } else {
        ConnectionAddr::Tcp(host.to_string(), port)
    };
    let info = addr.into_connection_info()?.set_redis_settings(info);
    match certs {
        Some(c) if tls => Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: Some(c.clone()) }),
        _ => Client::open(info),
    }
}

/// A connection within `timeout`, whose every later read and write also times out after it.
fn open(client: &Client, timeout: Duration, password: Option<&str>) -> Result<Connection, FleetError> {
    let c = client.get_connection_with_timeout(timeout).map_err(|e| classify(&e, password))?;
    c.set_read_timeout(Some(timeout)).and_then(|_| c.set_write_timeout(Some(timeout))).map_err(|e| classify(&e, password))?;
    Ok(c)
}

fn connector(s: &FleetSettings) -> Result<Connector, FleetError> {
    let t = &s.target;
    let certs = roots(&s.ca_file).map_err(FleetError::Unavailable)?;
    let bad = |e: redis::RedisError| FleetError::Unavailable(format!("cannot use {t}: {}", e.category()));
    match &t.endpoint {
        Endpoint::Tcp { host, port } => tcp_client(host, *port, t.tls, &certs, redis_info(t)).map(|c| Connector::Direct(Box::new(c))).map_err(bad),
        Endpoint::Unix(p) => {
            let info = ConnectionAddr::Unix(p.clone()).into_connection_info().map_err(bad)?.set_redis_settings(redis_info(t));
            Client::open(info).map(|c| Connector::Direct(Box::new(c))).map_err(bad)
        }
        Endpoint::Sentinel { nodes, master } => sentinel::Sentinels::new(nodes, master, t.tls, certs, redis_info(t), t.password.clone())
            .map(|c| Connector::Sentinel(Box::new(c)))
            .map_err(bad),
    }
}

/// Sorts a redis-rs error into our classes. Its texts name no URL and no password; the
/// password is still scrubbed, should a server ever echo it.
fn classify(e: &redis::RedisError, password: Option<&str>) -> FleetError {
    use redis::ErrorKind as K;
    // In a MULTI or a pipeline the reason is the failing command's, not EXEC's abort.
    let inner = e.clone().into_server_errors().and_then(|errs| {
        errs.iter().min_by_key(|(i, _)| *i == usize::MAX).map(|(_, s)| (s.code().to_string(), s.details().map(str::to_string)))
    });
    let (code, detail) = inner.unwrap_or_else(|| (e.code().unwrap_or("").to_string(), e.detail().map(str::to_string)));
    let mut text = match detail {
        Some(d) if !code.is_empty() => format!("{code} {d}"),
        _ => e.to_string(),
    };
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        text = text.replace(p, "***");
    }
    if e.is_timeout() {
        return FleetError::Unavailable(format!("timed out ({text})"));
    }
    match (e.kind(), code.as_str()) {
        (K::AuthenticationFailed, _) | (_, "NOAUTH" | "WRONGPASS" | "NOPERM") => FleetError::Auth(text),
        // A client that has not authenticated may send only short commands (Redis 7): a
        // password is missing.
        _ if text.contains("unauthenticated") => FleetError::Auth(text),
        (_, "WRONGTYPE") | (K::Parse | K::UnexpectedReturnType, _) => FleetError::Garbage(text),
        (_, "READONLY" | "LOADING" | "MASTERDOWN") => FleetError::Unavailable(text),
        (K::Io | K::InvalidClientConfig, _) => FleetError::Unavailable(text),
        _ if e.is_connection_dropped() || e.is_connection_refusal() => FleetError::Unavailable(text),
        _ => FleetError::Server(text),
    }
}


/// What a lease of `lease` surely still covers `rtt` after its renewal was sent: less a margin
/// for two clocks that do not run at exactly the same rate (0.1 s and 1 %).
fn covered(lease: Duration, rtt: Duration) -> Duration {
    lease.saturating_sub(rtt).saturating_sub(Duration::from_millis(100) + lease / 100)
}

/// A request the lease covers: its name in the fleet's history, and how long it may last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    pub name: String,
    pub deadline: Duration,
}

/// A name no other write or process will have: 16 hex digits.
fn new_epoch() -> String {
    format!("{:016x}", crate::os::random_u64())
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Fleet {
    /// No I/O: the first call connects.
    pub fn new(s: FleetSettings) -> Fleet {
        let keys = Keys::new(&s.prefix);
        let connector = connector(&s);
        Fleet {
            keys,
            connector,
            conn: None,
            retry_at: None,
            last_err: None,
            scripts: Scripts {
                take: Script::new(layout::TAKE),
                renew: Script::new(layout::RENEW),
                release: Script::new(layout::RELEASE),
                reserve: Script::new(layout::RESERVE),
                done: Script::new(layout::DONE),
                history: Script::new(layout::HISTORY),
                delta: Script::new(&layout::publish_delta_script()),
                commit: Script::new(&layout::commit_full_script()),
            },
            lease: None,
            seen: None,
            holder: String::new(),
            requests: 0,
            history_copy: None,
            nonce: new_epoch()[..8].to_string(),
            errors: 0,
            s,
        }
    }

    pub fn settings(&self) -> &FleetSettings {
        &self.s
    }

    /// Failed Redis calls so far (each real attempt counts once).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// The list version held (read or written), 0 before the first.
    pub fn version(&self) -> u64 {
        self.seen.as_ref().map_or(0, |s| s.version)
    }

    /// The node id of the lease holder as last seen ("" when unknown or none).
    pub fn leader(&self) -> &str {
        &self.holder
    }

    #[cfg(test)]
    pub fn is_leader(&self) -> bool {
        self.lease.is_some()
    }

    /// Forgets the list version held: the next poll reads the whole list.
    pub fn forget_version(&mut self) {
        self.seen = None;
    }

    fn connect(&mut self) -> Result<(), FleetError> {
        let password = self.s.target.password.clone();
        let timeout = self.s.timeout;
        let c = match self.connector.as_mut().map_err(|e| e.clone())? {
            Connector::Direct(c) => open(c, timeout, password.as_deref())?,
            Connector::Sentinel(s) => s.connect(timeout)?,
        };
        self.conn = Some(c);
        Ok(())
    }

    /// Runs one exchange with Redis on the connection, connecting first when needed. An
    /// error that leaves the connection in doubt drops it; the next call reconnects, at most
    /// once per RECONNECT.
    fn run<T>(&mut self, f: impl FnOnce(&mut Connection, &Keys, &Scripts) -> redis::RedisResult<T>) -> Result<T, FleetError> {
        if self.conn.is_none() {
            if let (Some(t), Some(e)) = (self.retry_at, &self.last_err) {
                if Instant::now() < t {
                    return Err(e.clone());
                }
            }
            if let Err(e) = self.connect() {
                self.errors += 1;
                self.retry_at = Some(Instant::now() + RECONNECT);
                self.last_err = Some(e.clone());
                return Err(e);
            }
        }
        let conn = self.conn.as_mut().expect("connected above");
        match f(conn, &self.keys, &self.scripts) {
            Ok(v) => {
                self.last_err = None;
                Ok(v)
            }
            Err(e) => {
                let fe = classify(&e, self.s.target.password.as_deref());
                self.errors += 1;
                if matches!(fe, FleetError::Unavailable(_) | FleetError::Auth(_)) || !conn.is_open() {
                    self.conn = None;
                    self.retry_at = Some(Instant::now() + RECONNECT);
                }
                self.last_err = Some(fe.clone());
                Err(fe)
            }
        }
    }

    /// One exchange with the fleet's Redis on this client's own connection, with the same
    /// timeouts, reconnect pace and error classes: for the ban keeper, which shares the fleet's
    /// Redis (and its prefix) but not the refresher's connection.
    pub fn exchange<T>(&mut self, f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>) -> Result<T, FleetError> {
        self.run(|c, _, _| f(c))
    }

    /// Takes the lease when nobody holds it, renews ours when a third of `leader_ttl` has
    /// passed. Cheap enough for every tick (one short script, or nothing).
    pub fn lease(&mut self) -> Result<LeaseState, FleetError> {
        let ttl = ms(self.s.leader_ttl);
        if let Some(l) = &self.lease {
            let since = l.renewed.elapsed();
            if since >= self.s.leader_ttl {
                // Redis has dropped it by now, whether or not we can reach it.
                self.lease = None;
            } else if since < self.s.leader_ttl / 3 {
                return Ok(LeaseState::Leader { token: l.token, taken: false });
            } else {
                let (token, value) = (l.token, l.value.clone());
                let sent = Instant::now();
                let r: Value = self.run(|c, k, s| s.renew.key(&k.leader).arg(&value).arg(ttl).invoke(c))?;
                return match r {
                    Value::Array(a) if matches!(a.first(), Some(Value::Int(1))) => {
                        if let Some(l) = self.lease.as_mut() {
                            l.renewed = sent;
                        }
                        Ok(LeaseState::Leader { token, taken: false })
                    }
                    Value::Array(a) => {
                        self.lease = None;
                        self.holder = a.get(1).map(holder_node).unwrap_or_default();
                        Err(FleetError::LeaseLost)
                    }
                    _ => Err(FleetError::Garbage(format!("{}: unexpected reply", self.keys.leader))),
                };
            }
        }
        let node = self.s.node_id.clone();
        let sent = Instant::now();
        let r: Value = self.run(|c, k, s| s.take.key(&k.leader).key(&k.fence).arg(&node).arg(ttl).invoke(c))?;
        match r {
            Value::Array(a) if matches!(a.first(), Some(Value::Int(1))) => {
                let Some(Value::Int(token)) = a.get(1) else {
                    return Err(FleetError::Garbage(format!("{}: not a counter", self.keys.fence)));
                };
                let token = *token as u64;
                self.lease = Some(Lease { token, value: format!("{node}:{token}"), renewed: sent });
                self.holder = node;
                Ok(LeaseState::Leader { token, taken: true })
            }
            Value::Array(a) => {
                self.holder = a.get(1).map(holder_node).unwrap_or_default();
                Ok(LeaseState::Follower { leader: self.holder.clone() })
            }
            _ => Err(FleetError::Garbage(format!("{}: unexpected reply", self.keys.leader))),
        }
    }

    /// Who holds the lease now, read only (`None`: nobody).
    pub fn lease_holder(&mut self) -> Result<Option<String>, FleetError> {
        let v: Option<String> = self.run(|c, k, _| redis::cmd("GET").arg(&k.leader).query(c))?;
        Ok(v.map(|v| holder_node(&Value::BulkString(v.into_bytes()))))
    }

    /// Lets the lease go on a clean stop, if it is still ours.
    pub fn release(&mut self) {
        if let Some(l) = self.lease.take() {
            let _ = self.run(|c, k, s| s.release.key(&k.leader).arg(&l.value).invoke::<Value>(c));
        }
    }

    /// Right before an APIBAN request: is the lease still ours? If so it now covers the whole
    /// request, and the request is in the fleet's history under the name returned, with the
    /// time the lease surely covers. `Err(LeaseLost)`: do not send; another error: Redis could
    /// not confirm the lease for a whole request (too slow), do not send either.
    pub fn before_request(&mut self) -> Result<Reserved, FleetError> {
        let Some(l) = &self.lease else { return Err(FleetError::LeaseLost) };
        self.requests += 1;
        let (value, member) = (l.value.clone(), self.request_name(l.token));
        let lease = self.s.leader_ttl.max(self.s.request_max + Duration::from_secs(1));
        let (hold, keep) = (ms(self.s.request_max), ms(self.s.window) + ms(self.s.request_max));
        // Redis set the expiry somewhere between the send and the reply: counted from the send,
        // the lease surely lasts `lease`.
        let sent = Instant::now();
        let r: i64 = self.run(|c, k, s| {
            s.reserve.key(&k.leader).key(&k.requests).arg(&value).arg(ms(lease)).arg(hold).arg(keep).arg(&member).invoke(c)
        })?;
        if r < 0 {
            self.lease = None;
            return Err(FleetError::LeaseLost);
        }
        if let Some(l) = self.lease.as_mut() {
            // Renewed for `lease`, which is at least leader_ttl.
            l.renewed = sent;
        }
        let left = covered(lease, sent.elapsed());
        if left < self.s.request_max {
            return Err(FleetError::Unavailable(format!(
                "redis took {} ms to confirm the lease: what is left of it ({} ms) would not cover a whole request; not sent",
                sent.elapsed().as_millis(),
                left.as_millis()
            )));
        }
        Ok(Reserved { name: member, deadline: left.min(self.s.request_max) })
    }

    fn request_name(&self, token: u64) -> String {
        format!("{token}:{}:{}", self.requests, self.nonce)
    }

    /// Right after the reply is complete: records its completion time in the fleet's
    /// history and brings the lease back to `leader_ttl`.
    pub fn after_request(&mut self) -> Result<(), FleetError> {
        let Some(l) = &self.lease else { return Err(FleetError::LeaseLost) };
        let (value, member) = (l.value.clone(), self.request_name(l.token));
        let ttl = ms(self.s.leader_ttl);
        let r: i64 = self.run(|c, k, s| s.done.key(&k.leader).key(&k.requests).arg(&value).arg(ttl).arg(&member).invoke(c))?;
        if r == 0 {
            self.lease = None;
            return Err(FleetError::LeaseLost);
        }
        if let Some(l) = self.lease.as_mut() {
            l.renewed = Instant::now();
        }
        Ok(())
    }

    /// The fleet's APIBAN requests within the rate limit's window (plus a request's length):
    /// each one's name and its offset from now in ms, positive in the past, negative not yet
    /// completed. A new leader merges them into its limiter, so the fleet keeps one budget
    /// across a hand-over.
    pub fn history(&mut self) -> Result<Vec<(String, i64)>, FleetError> {
        let keep = ms(self.s.window) + ms(self.s.request_max);
        let r: Value = self.run(|c, k, s| s.history.key(&k.requests).arg(keep).invoke(c))?;
        decode_history(&r).map_err(|e| FleetError::Garbage(format!("{}: {e}", self.keys.requests)))
    }

    /// The fleet's request history as the last poll read it: when, and each request's name and
    /// offset from then in ms (as `history`).
    pub fn history_copy(&self) -> Option<(Instant, &[(String, i64)])> {
        self.history_copy.as_ref().map(|(at, h)| (*at, h.as_slice()))
    }

    /// What is new in Redis since the version we hold, and a copy of the fleet's recent requests.
    /// One round trip when nothing is new.
    pub fn poll(&mut self) -> Result<Poll, FleetError> {
        let seen = self.seen.clone();
        let sent = Instant::now();
        let replies: Vec<Value> = self.run(|c, k, _| {
            let mut p = redis::pipe();
            p.atomic().cmd("HMGET").arg(&k.meta).arg(&META_FIELDS[..]);
            // The newest requests (a window holds at most rate_limit's few): bounded whatever
            // else the key holds.
            p.cmd("TIME").cmd("ZRANGE").arg(&k.requests).arg("+inf").arg("-inf").arg("BYSCORE").arg("REV");
            p.arg("LIMIT").arg(0).arg(HISTORY_COPY_MAX).arg("WITHSCORES");
            if let Some(s) = &seen {
                // From the version we hold, to check that it is still the one its number names.
                p.cmd("XRANGE").arg(&k.log).arg(format!("{}-0", s.version)).arg("+").arg("COUNT").arg(LOG_KEEP + 1);
            }
            p.query(c)
        })?;
        let meta = match Meta::decode(&replies[0], &self.keys.meta).map_err(FleetError::Garbage)? {
            // Redis lost its data (or no leader wrote yet): the last copy of the history stays.
            None => return Ok(Poll::Empty),
            Some(m) => m,
        };
        if let (Some(Value::Array(t)), Some(Value::Array(reqs))) = (replies.get(1), replies.get(2)) {
            let secs = t.first().and_then(layout::number).unwrap_or(0);
            let us = t.get(1).and_then(layout::number).unwrap_or(0);
            let mut v = vec![Value::Int((secs * 1000 + us / 1000) as i64)];
            v.extend(reqs.iter().cloned());
            // Not ours or not decodable: no copy, as if there were none.
            self.history_copy = decode_history(&Value::Array(v)).ok().map(|h| (sent, h));
        }
        self.holder_from_meta(&meta);
        if let (Some(seen), Some(log)) = (&seen, replies.get(3)) {
            if *seen == Seen::of(&meta) {
                return Ok(Poll::Same(meta));
            }
            if seen.epoch == meta.epoch && seen.version < meta.version {
                let log = decode_log(log, &self.keys.log).map_err(FleetError::Garbage)?;
                if let Some(change) = fold(&log, seen, meta.version) {
                    self.seen = Some(Seen::of(&meta));
                    return Ok(Poll::Update { meta, change });
                }
            }
        }
        self.read_full()
    }

    fn holder_from_meta(&mut self, meta: &Meta) {
        if self.holder.is_empty() {
            self.holder = meta.leader.clone();
        }
    }

    /// The list with its meta, in one MULTI: a consistent version. Bounded: at most
    /// `max_entries` addresses cross the wire (the newest), whatever the list holds; a list
    /// whose size is not the meta's is refused.
    fn read_full(&mut self) -> Result<Poll, FleetError> {
        let max = self.s.max_entries.max(1);
        let (meta_r, held, list_r): (Value, u64, Value) = self.run(|c, k, _| {
            redis::pipe()
                .atomic()
                .cmd("HMGET")
                .arg(&k.meta)
                .arg(&META_FIELDS[..])
                .cmd("ZCARD")
                .arg(&k.list)
                .cmd("ZRANGE")
                .arg(&k.list)
                .arg("+inf")
                .arg("-inf")
                .arg("BYSCORE")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(max)
                .arg("WITHSCORES")
                .query(c)
        })?;
        let meta = match Meta::decode(&meta_r, &self.keys.meta).map_err(FleetError::Garbage)? {
            None => return Ok(Poll::Empty),
            Some(m) => m,
        };
        if held != meta.entries {
            return Err(FleetError::Garbage(format!(
                "{} holds {held} addresses where {} says {}: truncated or foreign, refused",
                self.keys.list, self.keys.meta, meta.entries
            )));
        }
        let list = decode_list(&list_r, &self.keys.list).map_err(FleetError::Garbage)?;
        if list.len() as u64 != meta.entries.min(max as u64) {
            return Err(FleetError::Garbage(format!("{}: a short read, refused", self.keys.list)));
        }
        self.seen = Some(Seen::of(&meta));
        self.holder_from_meta(&meta);
        Ok(Poll::Update { meta, change: Change::Full(list) })
    }

    /// A name for the version about to be written: unique, whatever Redis lost or reused.
    fn writer(&self) -> String {
        let token = self.lease.as_ref().map_or(0, |l| l.token);
        format!("{}:{token}:{}", self.s.node_id, &new_epoch()[..8])
    }

    /// After a sync, as leader: writes what changed, or the whole list (`delta` None: a full
    /// pull; or when Redis does not hold the version we last wrote, e.g. after it restarted
    /// empty). Returns the new version.
    pub fn publish(&mut self, all: &[(Key, u32)], delta: Option<Changed>, info: SyncInfo) -> Result<u64, FleetError> {
        let Some(l) = &self.lease else { return Err(FleetError::LeaseLost) };
        let lease = l.value.clone();
        if let (Some(Changed { add, del }), Some(seen)) = (delta, self.seen.clone()) {
            let writer = self.writer();
            let mut args: Vec<String> = Vec::with_capacity(12 + add.len() * 2 + del.len());
            args.extend([
                lease.clone(),
                FORMAT.into(),
                seen.epoch.clone(),
                seen.version.to_string(),
                seen.writer.clone(),
                writer.clone(),
                info.last_id.to_string(),
                info.synced_at.to_string(),
                self.s.node_id.clone(),
                LOG_KEEP.to_string(),
                self.s.fingerprint.clone(),
                add.len().to_string(),
            ]);
            for (k, t) in add {
                args.push(member(*k));
                args.push(t.to_string());
            }
            args.extend(del.iter().map(|k| member(*k)));
            let r: Value = self.run(|c, k, s| {
                let mut inv = s.delta.prepare_invoke();
                inv.key(&k.leader).key(&k.meta).key(&k.list).key(&k.log);
                for a in &args {
                    inv.arg(a);
                }
                inv.invoke(c)
            })?;
            match self.script_result(r)? {
                Ok(v) => {
                    // Nothing changed: the version, and its writer, stay.
                    let writer = if v == seen.version { seen.writer } else { writer };
                    self.seen = Some(Seen { epoch: seen.epoch, version: v, writer });
                    return Ok(v);
                }
                // Redis does not hold what we last wrote: write it all.
                Err(_stale) => {}
            }
        }
        self.publish_full(all, &lease, info)
    }

    fn publish_full(&mut self, entries: &[(Key, u32)], lease: &str, info: SyncInfo) -> Result<u64, FleetError> {
        let token = self.lease.as_ref().map_or(0, |l| l.token);
        let staging = self.keys.staging(token);
        let staged = self.run(|c, _, _| {
            let mut p = redis::pipe();
            p.cmd("DEL").arg(&staging).ignore();
            for chunk in entries.chunks(CHUNK) {
                let mut z = redis::cmd("ZADD");
                z.arg(&staging);
                for &(k, t) in chunk {
                    z.arg(t).arg(member(k));
                }
                p.add_command(z).ignore();
            }
            p.cmd("EXPIRE").arg(&staging).arg(STAGING_TTL_S).ignore();
            p.query::<()>(c)
        });
        if let Err(e) = staged {
            // A Redis at maxmemory refuses the ZADDs but not a DEL: leave nothing half-written.
            let _ = self.run(|c, _, _| redis::cmd("DEL").arg(&staging).exec(c));
            return Err(e);
        }
        let epoch = new_epoch();
        let writer = self.writer();
        let node = self.s.node_id.clone();
        let fingerprint = self.s.fingerprint.clone();
        let n = entries.len();
        let r: Value = self.run(|c, k, s| {
            s.commit
                .key(&k.leader)
                .key(&k.meta)
                .key(&k.list)
                .key(&k.log)
                .key(&staging)
                .arg(lease)
                .arg(FORMAT)
                .arg(&epoch)
                .arg(n)
                .arg(info.last_id)
                .arg(info.synced_at)
                .arg(info.full_at)
                .arg(&node)
                .arg(LOG_KEEP)
                .arg(&writer)
                .arg(&fingerprint)
                .invoke(c)
        })?;
        match self.script_result(r)? {
            Ok(v) => {
                self.seen = Some(Seen { epoch, version: v, writer });
                Ok(v)
            }
            Err(why) => {
                let _ = self.run(|c, _, _| redis::cmd("DEL").arg(&staging).exec(c));
                Err(FleetError::Server(format!("the full list was not committed: {why}")))
            }
        }
    }

    /// `{version}` → Ok(Ok(v)); `{-3, _}` (stale) or `{-4, _}` → Ok(Err(text)); a lost lease
    /// or foreign data → Err.
    fn script_result(&mut self, r: Value) -> Result<Result<u64, String>, FleetError> {
        let bad = || FleetError::Garbage(format!("{}: unexpected script reply", self.keys.meta));
        let Value::Array(a) = r else { return Err(bad()) };
        let why = a.get(1).and_then(|v| redis::from_redis_value::<String>(v.clone()).ok()).unwrap_or_default();
        match a.first() {
            Some(Value::Int(v)) if *v >= 0 => Ok(Ok(*v as u64)),
            Some(Value::Int(-1)) => {
                self.lease = None;
                Err(FleetError::LeaseLost)
            }
            Some(Value::Int(-2)) => Err(FleetError::Garbage(format!("{why}: refused, not overwritten"))),
            Some(Value::Int(_)) => Ok(Err(why)),
            _ => Err(bad()),
        }
    }
}

/// The node id in a lease value `<node_id>:<token>`.
fn holder_node(v: &Value) -> String {
    let s = redis::from_redis_value::<String>(v.clone()).unwrap_or_default();
    match s.rsplit_once(':') {
        Some((node, t)) if t.bytes().all(|b| b.is_ascii_digit()) => node.to_string(),
        _ => s,
    }
}

/// Folds the log entries after the version held up to `to` into one change, or None when the
/// log cannot tell (the version held is not in it as we saw it: trimmed, or another list under
/// the same number after a fail-over that lost writes; a gap; a full list in between): then
/// read it all.
fn fold(log: &[Delta], seen: &Seen, to: u64) -> Option<Change> {
    let (first, rest) = log.split_first()?;
    if first.version != seen.version || first.writer != seen.writer {
        return None;
    }
    let mut want = seen.version + 1;
    let mut state: HashMap<Key, Option<u32>> = HashMap::new();
    for d in rest {
        if d.version > to {
            break;
        }
        if d.version != want || d.full {
            return None;
        }
        for &(k, t) in &d.add {
            state.insert(k, Some(t));
        }
        for &k in &d.del {
            state.insert(k, None);
        }
        want += 1;
    }
    if want != to + 1 {
        return None;
    }
    let mut add = Vec::new();
    let mut del = Vec::new();
    for (k, v) in state {
        match v {
            Some(t) => add.push((k, t)),
            None => del.push(k),
        }
    }
    Some(Change::Delta { add, del })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(version: u64, add: &[(u32, u32)], del: &[u32]) -> Delta {
        Delta {
            version,
            writer: format!("w{version}"),
            full: false,
            add: add.iter().map(|&(a, t)| (Key::V4(a), t)).collect(),
            del: del.iter().map(|&a| Key::V4(a)).collect(),
        }
    }

    fn sorted(c: Change) -> (Vec<(Key, u32)>, Vec<Key>) {
        let Change::Delta { mut add, mut del } = c else { panic!("not a delta") };
        add.sort();
        del.sort();
        (add, del)
    }

    fn seen(version: u64) -> Seen {
        Seen { epoch: "e".into(), version, writer: format!("w{version}") }
    }

    #[test]
    fn deltas_fold_in_order() {
        let log = [d(3, &[], &[]), d(4, &[(1, 10), (2, 10)], &[]), d(5, &[(3, 11)], &[1]), d(6, &[(1, 12)], &[2])];
        let (add, del) = sorted(fold(&log, &seen(3), 6).unwrap());
        assert_eq!(add, vec![(Key::V4(1), 12), (Key::V4(3), 11)]);
        assert_eq!(del, vec![Key::V4(2)]);
        // Entries past the meta's version (written between the two reads) wait for the next poll.
        let (add, _) = sorted(fold(&log, &seen(3), 4).unwrap());
        assert_eq!(add.len(), 2);
    }

    #[test]
    fn a_log_that_cannot_tell_means_a_full_read() {
        let log = [d(4, &[], &[]), d(5, &[(1, 10)], &[]), d(6, &[], &[])];
        assert!(fold(&log[1..], &seen(3), 6).is_none(), "version 4 was trimmed");
        assert!(fold(&log, &seen(4), 7).is_none(), "version 7 is missing");
        let mut full = d(6, &[], &[]);
        full.full = true;
        assert!(fold(&[d(4, &[], &[]), d(5, &[], &[]), full], &seen(4), 6).is_none());
        assert!(fold(&[], &seen(4), 5).is_none());
        // The version held came back under the same number with another writer (a fail-over
        // that lost the write we saw): the log after it is another list's.
        let mut other = d(4, &[], &[]);
        other.writer = "w4-after-failover".into();
        assert!(fold(&[other, d(5, &[], &[])], &seen(4), 5).is_none());
    }

    #[test]
    fn lease_values_name_the_node() {
        let v = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(holder_node(&v("proxy-1:42")), "proxy-1");
        assert_eq!(holder_node(&v("a:b:7")), "a:b");
        assert_eq!(holder_node(&v("odd")), "odd");
    }

    #[test]
    fn errors_are_classified_without_the_password() {
        let io = redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused s3cret"));
        let e = classify(&io, Some("s3cret"));
        assert!(matches!(&e, FleetError::Unavailable(t) if !t.contains("s3cret")), "{e:?}");
        let auth = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "Password authentication failed"));
        assert!(matches!(classify(&auth, None), FleetError::Auth(_)));
        assert!(FleetError::Auth("x".into()).to_string().starts_with("redis refused the credentials"));
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(new_epoch(), new_epoch());
        assert_eq!(new_epoch().len(), 16);
    }

    #[test]
    fn no_io_until_the_first_call_and_errors_are_counted() {
        let s = FleetSettings {
            target: RedisTarget::parse("redis://:pw@127.0.0.1:9").unwrap(),
            prefix: "t".into(),
            node_id: "n1".into(),
            leader_ttl: Duration::from_secs(3),
            timeout: Duration::from_secs(1),
            request_max: Duration::from_secs(3),
            window: Duration::from_secs(10),
            ca_file: None,
            max_entries: 1000,
            fingerprint: String::new(),
        };
        let mut f = Fleet::new(s);
        assert_eq!(f.errors(), 0);
        let e = f.lease().unwrap_err();
        assert!(matches!(e, FleetError::Unavailable(_)), "{e:?}");
        assert_eq!(f.errors(), 1);
        // Within RECONNECT the same error comes back without a new attempt.
        assert_eq!(f.poll().unwrap_err(), e);
        assert_eq!(f.errors(), 1);
        assert!(!e.to_string().contains("pw"));
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;

    #[test]
    fn the_time_a_lease_covers_leaves_out_the_round_trip_and_a_margin() {
        let s = Duration::from_secs;
        assert_eq!(covered(s(3), Duration::from_millis(400)), Duration::from_millis(2470));
        assert_eq!(covered(s(3), s(5)), Duration::ZERO);
    }
}
