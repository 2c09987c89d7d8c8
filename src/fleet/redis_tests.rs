//! The fleet's scripts and reads against a real `redis-server` (Debian's package, which
//! scripts/setup-debian.sh installs), started by each test on its own loopback port with its
//! own directory and config, and stopped by PID. Without redis-server they fail, saying so: CI
//! installs it, and a test that passes without running would hide a broken fleet.

use super::*;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port no other test of this process was given: tests run in parallel, and two
/// that drew the same port would share one redis-server (the second fails to bind, and its
/// test talks to the first's), which is how this file once flaked.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let p = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
}

/// Starts `bin` (redis-server or redis-sentinel) on `port` with `args` and waits until it
/// listens; None when there is no such program.
fn start(bin: &str, args: &[String], port: u16, dir: PathBuf) -> Option<Server> {
    let child = Command::new(bin).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
    let s = Server { child, port, dir };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{bin} did not listen on {port}");
}

/// A redis-server these tests cannot do without: no program is a failure, not a skip.
pub(crate) fn server(extra: &[&str]) -> Server {
    redis_server(extra).expect("cannot start redis-server: scripts/setup-debian.sh installs it, and these tests need it")
}

fn redis_server(extra: &[&str]) -> Option<Server> {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("apiban-redis-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let mut args = vec!["--port".to_string(), port.to_string(), "--bind".into(), "127.0.0.1".into(), "--save".into(), "".into()];
    args.extend(["--appendonly", "no", "--dir"].map(String::from));
    args.push(dir.to_str()?.to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    start("redis-server", &args, port, dir)
}

pub(crate) fn settings(port: u16, node: &str, password: Option<&str>) -> FleetSettings {
    let creds = password.map(|p| format!(":{p}@")).unwrap_or_default();
    FleetSettings {
        target: RedisTarget::parse(&format!("redis://{creds}127.0.0.1:{port}")).unwrap(),
        prefix: "t".into(),
        node_id: node.into(),
        leader_ttl: Duration::from_secs(3),
        timeout: Duration::from_secs(2),
        request_max: Duration::from_secs(2),
        window: Duration::from_secs(10),
        ca_file: None,
        max_entries: 1000,
        fingerprint: "url=t".into(),
    }
}

pub(crate) fn raw(port: u16) -> Connection {
    Client::open(format!("redis://127.0.0.1:{port}")).unwrap().get_connection().unwrap()
}

fn entries(list: &[(u32, u32)]) -> HashMap<Key, u32> {
    list.iter().map(|&(a, t)| (Key::V4(a), t)).collect()
}

/// A list as `publish` takes it.
fn v(all: &HashMap<Key, u32>) -> Vec<(Key, u32)> {
    all.iter().map(|(&k, &t)| (k, t)).collect()
}

fn info(last_id: u64) -> SyncInfo {
    SyncInfo { last_id, synced_at: 1_700_000_500, full_at: 1_700_000_000 }
}

fn expect_full(p: Poll) -> (Meta, Vec<(Key, u32)>) {
    match p {
        Poll::Update { meta, change: Change::Full(mut l) } => {
            l.sort();
            (meta, l)
        }
        p => panic!("expected a full list, got {p:?}"),
    }
}

#[test]
fn one_leader_and_a_stale_one_is_fenced_off() {
    let srv = server(&[]);
    let mut a = Fleet::new(settings(srv.port, "node-a", None));
    let mut b = Fleet::new(settings(srv.port, "node-b", None));
    assert_eq!(a.lease().unwrap(), LeaseState::Leader { token: 1, taken: true });
    assert_eq!(b.lease().unwrap(), LeaseState::Follower { leader: "node-a".into() });
    assert_eq!(b.leader(), "node-a");
    // Within a third of the ttl nothing is asked; the lease is still ours.
    assert_eq!(a.lease().unwrap(), LeaseState::Leader { token: 1, taken: false });
    a.before_request().unwrap();
    a.after_request().unwrap();
    // The lease vanishes (as if it expired while node-a was paused) and node-b takes it.
    let mut r = raw(srv.port);
    redis::cmd("DEL").arg("t:leader").exec(&mut r).unwrap();
    assert_eq!(b.lease().unwrap(), LeaseState::Leader { token: 2, taken: true });
    // node-a wakes up: it may neither ask APIBAN nor write.
    assert_eq!(a.before_request().unwrap_err(), FleetError::LeaseLost);
    assert!(!a.is_leader());
    assert_eq!(a.lease().unwrap(), LeaseState::Follower { leader: "node-b".into() });
    // A release only ever deletes one's own lease.
    a.release();
    let v: String = redis::cmd("GET").arg("t:leader").query(&mut r).unwrap();
    assert_eq!(v, "node-b:2");
    b.release();
    let v: Option<String> = redis::cmd("GET").arg("t:leader").query(&mut r).unwrap();
    assert_eq!(v, None);
    assert_eq!(a.errors() + b.errors(), 0);
}

#[test]
fn a_renewal_fails_once_the_lease_is_taken_over() {
    let srv = server(&[]);
    let mut s = settings(srv.port, "node-a", None);
    s.leader_ttl = Duration::from_millis(600);
    let mut a = Fleet::new(s);
    assert!(matches!(a.lease().unwrap(), LeaseState::Leader { taken: true, .. }));
    let mut r = raw(srv.port);
    redis::cmd("SET").arg("t:leader").arg("node-c:99").exec(&mut r).unwrap();
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(a.lease().unwrap_err(), FleetError::LeaseLost);
    assert_eq!(a.leader(), "node-c");
}

#[test]
fn followers_read_full_lists_then_deltas() {
    let srv = server(&[]);
    let mut a = Fleet::new(settings(srv.port, "node-a", None));
    let mut b = Fleet::new(settings(srv.port, "node-b", None));
    assert_eq!(b.poll().unwrap(), Poll::Empty);
    a.lease().unwrap();
    assert_eq!(a.poll().unwrap(), Poll::Empty);
    let mut all = entries(&[(1, 100), (2, 100), (3, 101)]);
    let v1 = a.publish(&v(&all), None, info(1_700_000_001)).unwrap();
    let (meta, list) = expect_full(b.poll().unwrap());
    assert_eq!((meta.version, meta.last_id, meta.entries, meta.leader.as_str()), (v1, 1_700_000_001, 3, "node-a"));
    assert_eq!(list, vec![(Key::V4(1), 100), (Key::V4(2), 100), (Key::V4(3), 101)]);
    assert!(matches!(b.poll().unwrap(), Poll::Same(_)));

    // An incremental sync: 4 added, 2 relisted, 1 dropped.
    all.insert(Key::V4(4), 102);
    all.insert(Key::V4(2), 102);
    all.remove(&Key::V4(1));
    let add = [(Key::V4(4), 102), (Key::V4(2), 102)];
    let v2 = a.publish(&v(&all), Some(Changed { add: &add, del: &[Key::V4(1)] }), info(1_700_000_002)).unwrap();
    assert_eq!(v2, v1 + 1);
    // Nothing changed: only the sync fields move, no new version.
    assert_eq!(a.publish(&v(&all), Some(Changed { add: &[], del: &[] }), info(1_700_000_003)).unwrap(), v2);
    match b.poll().unwrap() {
        Poll::Update { meta, change: Change::Delta { mut add, del } } => {
            add.sort();
            assert_eq!(add, vec![(Key::V4(2), 102), (Key::V4(4), 102)]);
            assert_eq!(del, vec![Key::V4(1)]);
            assert_eq!((meta.version, meta.last_id), (v2, 1_700_000_003));
        }
        p => panic!("expected a delta, got {p:?}"),
    }
    assert_eq!(b.version(), v2);
    // What an operator sees with redis-cli.
    let mut r = raw(srv.port);
    let got: Vec<(String, u32)> = redis::cmd("ZRANGE").arg("t:list").arg(0).arg(-1).arg("WITHSCORES").query(&mut r).unwrap();
    assert_eq!(got, vec![("0.0.0.3".into(), 101), ("0.0.0.2".into(), 102), ("0.0.0.4".into(), 102)]);

    // A new node joins: one full read of the current version.
    let mut c = Fleet::new(settings(srv.port, "node-c", None));
    let (meta, list) = expect_full(c.poll().unwrap());
    assert_eq!((meta.version, list.len()), (v2, 3));

    // A full pull writes a new epoch: followers read it whole.
    let all = entries(&[(9, 200)]);
    let v3 = a.publish(&v(&all), None, info(1_700_000_004)).unwrap();
    let (meta, list) = expect_full(b.poll().unwrap());
    assert_eq!((meta.version, list), (v3, vec![(Key::V4(9), 200)]));
}

#[test]
fn redis_restarted_empty_is_noticed() {
    let srv = server(&[]);
    let mut a = Fleet::new(settings(srv.port, "node-a", None));
    let mut b = Fleet::new(settings(srv.port, "node-b", None));
    a.lease().unwrap();
    let all = entries(&[(1, 100)]);
    a.publish(&v(&all), None, info(5)).unwrap();
    expect_full(b.poll().unwrap());
    redis::cmd("FLUSHALL").exec(&mut raw(srv.port)).unwrap();
    // The follower keeps what it has; the leader's lease is gone with the data.
    assert_eq!(b.poll().unwrap(), Poll::Empty);
    assert_eq!(a.publish(&v(&all), Some(Changed { add: &[], del: &[] }), info(6)).unwrap_err(), FleetError::LeaseLost);
    assert!(matches!(a.lease().unwrap(), LeaseState::Leader { taken: true, .. }));
    assert_eq!(a.poll().unwrap(), Poll::Empty);
    // A delta against a Redis that does not hold our version becomes a full write.
    a.publish(&v(&all), Some(Changed { add: &[], del: &[] }), info(6)).unwrap();
    let (meta, list) = expect_full(b.poll().unwrap());
    assert_eq!((meta.last_id, list.len()), (6, 1));
}

#[test]
fn garbage_under_the_prefix_is_refused_and_kept() {
    let srv = server(&[]);
    let mut r = raw(srv.port);
    let mut a = Fleet::new(settings(srv.port, "node-a", None));
    let mut b = Fleet::new(settings(srv.port, "node-b", None));
    a.lease().unwrap();
    let all = entries(&[(1, 100), (2, 100)]);

    // Wrong type.
    redis::cmd("SET").arg("t:meta").arg("hello").exec(&mut r).unwrap();
    assert!(matches!(b.poll().unwrap_err(), FleetError::Garbage(_)));
    assert!(matches!(a.publish(&v(&all), None, info(1)).unwrap_err(), FleetError::Garbage(_)));
    let kept: String = redis::cmd("GET").arg("t:meta").query(&mut r).unwrap();
    assert_eq!(kept, "hello");

    // Another version of the format.
    redis::cmd("DEL").arg("t:meta").exec(&mut r).unwrap();
    redis::cmd("HSET").arg("t:meta").arg("format").arg("apiban-fleet-9").arg("epoch").arg("x").exec(&mut r).unwrap();
    let e = b.poll().unwrap_err();
    assert!(matches!(&e, FleetError::Garbage(t) if t.contains("apiban-fleet-9")), "{e:?}");
    let e = a.publish(&v(&all), None, info(1)).unwrap_err();
    assert!(matches!(&e, FleetError::Garbage(t) if t.contains("apiban-fleet-9")), "{e:?}");

    // Ours again, then a truncated list: refused, the version stays unread.
    redis::cmd("DEL").arg("t:meta").exec(&mut r).unwrap();
    a.publish(&v(&all), None, info(1)).unwrap();
    redis::cmd("ZREM").arg("t:list").arg("0.0.0.1").exec(&mut r).unwrap();
    let e = b.poll().unwrap_err();
    assert!(matches!(&e, FleetError::Garbage(t) if t.contains("truncated")), "{e:?}");
    assert_eq!(b.version(), 0);
    // A list member that is not an address.
    redis::cmd("ZADD").arg("t:list").arg(5).arg("not-an-ip").exec(&mut r).unwrap();
    assert!(matches!(b.poll().unwrap_err(), FleetError::Garbage(_)));
    // The connection survives garbage: no reconnect needed.
    assert!(b.conn.is_some());
}

#[test]
fn the_request_history_outlives_the_leader() {
    let srv = server(&[]);
    let mut a = Fleet::new(settings(srv.port, "node-a", None));
    a.lease().unwrap();
    for _ in 0..3 {
        a.before_request().unwrap();
        a.after_request().unwrap();
    }
    // A fourth request is in flight when node-a dies.
    a.before_request().unwrap();
    redis::cmd("DEL").arg("t:leader").exec(&mut raw(srv.port)).unwrap();
    let mut b = Fleet::new(settings(srv.port, "node-b", None));
    assert!(matches!(b.lease().unwrap(), LeaseState::Leader { taken: true, .. }));
    let mut h: Vec<i64> = b.history().unwrap().into_iter().map(|(_, age)| age).collect();
    h.sort();
    assert_eq!(h.len(), 4, "{h:?}");
    // The one in flight counts until the latest it could complete (request_max ahead).
    assert!(h[0] < -1500 && h[0] >= -2000, "{h:?}");
    assert!(h[1..].iter().all(|&age| (0..1000).contains(&age)), "{h:?}");
}

#[test]
fn a_wrong_password_is_an_auth_error_and_never_shown() {
    let srv = server(&["--requirepass", "right-one"]);
    let mut bad = Fleet::new(settings(srv.port, "node-a", Some("wrong-one")));
    let e = bad.lease().unwrap_err();
    assert!(matches!(e, FleetError::Auth(_)), "{e:?}");
    assert!(!e.to_string().contains("wrong-one"), "{e}");
    let mut none = Fleet::new(settings(srv.port, "node-a", None));
    let e = none.poll().unwrap_err();
    assert!(matches!(e, FleetError::Auth(_)), "{e:?}");
    let mut good = Fleet::new(settings(srv.port, "node-a", Some("right-one")));
    assert!(matches!(good.lease().unwrap(), LeaseState::Leader { .. }));
}

#[test]
fn redis_going_away_and_coming_back() {
    let mut srv = server(&[]);
    let mut b = Fleet::new(settings(srv.port, "node-b", None));
    assert_eq!(b.poll().unwrap(), Poll::Empty);
    let _ = srv.child.kill();
    let _ = srv.child.wait();
    let e = b.poll().unwrap_err();
    assert!(matches!(e, FleetError::Unavailable(_)), "{e:?}");
    assert!(b.errors() >= 1);
    // Same port, started again.
    let args = ["--port", &srv.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--dir", srv.dir.to_str().unwrap()];
    srv.child = Command::new("redis-server").args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t = Instant::now();
    loop {
        match b.poll() {
            Ok(p) => {
                assert_eq!(p, Poll::Empty);
                break;
            }
            Err(_) if t.elapsed() < Duration::from_secs(5) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("no reconnect: {e}"),
        }
    }
}


#[test]
fn the_list_outlives_the_staging_key_and_a_list_that_lost_members_is_written_again() {
    let srv = server(&[]);
    let mut a = Fleet::new(settings(srv.port, "node-a", None));
    a.lease().unwrap();
    let all = entries(&[(1, 100), (2, 100), (3, 101)]);
    a.publish(&v(&all), None, info(7)).unwrap();
    let mut r = raw(srv.port);
    // RENAME keeps the staging key's expiry; the list must have none.
    let ttl: i64 = redis::cmd("TTL").arg("t:list").query(&mut r).unwrap();
    assert_eq!(ttl, -1, "the shared list would delete itself");
    let staged: Vec<String> = redis::cmd("KEYS").arg("t:staging:*").query(&mut r).unwrap();
    assert!(staged.is_empty(), "{staged:?}");
    // The list loses members behind the leader's back (deleted, evicted): the next delta finds
    // it short of `entries` and writes the whole list instead.
    redis::cmd("ZREM").arg("t:list").arg("0.0.0.1").exec(&mut r).unwrap();
    let v = a.publish(&v(&all), Some(Changed { add: &[], del: &[] }), info(8)).unwrap();
    let n: u64 = redis::cmd("ZCARD").arg("t:list").query(&mut r).unwrap();
    assert_eq!(n, 3);
    let mut b = Fleet::new(settings(srv.port, "node-b", None));
    let (meta, list) = expect_full(b.poll().unwrap());
    assert_eq!((meta.version, meta.entries, list.len()), (v, 3, 3));
    let ttl: i64 = redis::cmd("TTL").arg("t:list").query(&mut r).unwrap();
    assert_eq!(ttl, -1);
}

#[test]
fn a_version_number_reused_after_lost_writes_is_still_applied() {
    let srv = server(&[]);
    let mut a = Fleet::new(settings(srv.port, "node-a", None));
    let mut f = Fleet::new(settings(srv.port, "node-f", None));
    a.lease().unwrap();
    let mut all = entries(&[(1, 100)]);
    let v1 = a.publish(&v(&all), None, info(1)).unwrap();
    all.insert(Key::V4(2), 101);
    let v2 = a.publish(&v(&all), Some(Changed { add: &[(Key::V4(2), 101)], del: &[] }), info(2)).unwrap();
    assert_eq!(expect_full(f.poll().unwrap()).0.version, v2);
    // A fail-over loses version 2: the replica that becomes master had only version 1. Made
    // here by hand: the meta goes back to v1 and its writer, the log loses entry 2.
    let mut r = raw(srv.port);
    let w1: String = redis::cmd("XRANGE").arg("t:log").arg("-").arg("+").query::<Vec<(String, HashMap<String, String>)>>(&mut r).unwrap()[0].1["writer"].clone();
    redis::cmd("HSET").arg("t:meta").arg("version").arg(v1).arg("writer").arg(&w1).arg("entries").arg(1).exec(&mut r).unwrap();
    redis::cmd("ZREM").arg("t:list").arg("0.0.0.2").exec(&mut r).unwrap();
    redis::cmd("DEL").arg("t:log").exec(&mut r).unwrap();
    redis::cmd("XADD").arg("t:log").arg(format!("{v1}-0")).arg("writer").arg(&w1).arg("full").arg(1).exec(&mut r).unwrap();
    // A new leader writes another version 2 (with address 3).
    redis::cmd("DEL").arg("t:leader").exec(&mut r).unwrap();
    let mut b = Fleet::new(settings(srv.port, "node-b", None));
    b.lease().unwrap();
    expect_full(b.poll().unwrap());
    let mut other = entries(&[(1, 100)]);
    other.insert(Key::V4(3), 102);
    let v2b = b.publish(&v(&other), Some(Changed { add: &[(Key::V4(3), 102)], del: &[] }), info(3)).unwrap();
    assert_eq!(v2b, v2, "the same number comes back");
    // The follower that saw the lost version 2 notices the writer changed and reads it all.
    let (meta, list) = expect_full(f.poll().unwrap());
    assert_eq!(meta.version, v2);
    assert_eq!(list, vec![(Key::V4(1), 100), (Key::V4(3), 102)]);
    // And once more from there: a delta.
    assert!(matches!(f.poll().unwrap(), Poll::Same(_)));
}

#[test]
fn reads_are_bounded_and_a_refused_full_write_leaves_nothing_behind() {
    let srv = server(&[]);
    let mut a = Fleet::new(settings(srv.port, "node-a", None));
    a.lease().unwrap();
    let all: HashMap<Key, u32> = (0..50u32).map(|i| (Key::V4(i), 100 + i)).collect();
    a.publish(&v(&all), None, info(1)).unwrap();
    // A follower that may hold 10 gets the 10 newest, however long the list.
    let mut s = settings(srv.port, "node-f", None);
    s.max_entries = 10;
    let mut f = Fleet::new(s);
    let (meta, list) = expect_full(f.poll().unwrap());
    assert_eq!((meta.entries, list.len()), (50, 10));
    assert!(list.iter().all(|&(_, t)| t >= 140), "{list:?}");
    // A hostile ZADD under the prefix: the size no longer matches, refused without a read of it.
    let mut r = raw(srv.port);
    let mut z = redis::cmd("ZADD");
    z.arg("t:list");
    for i in 0..5000u32 {
        z.arg(1).arg(format!("10.9.{}.{}", i / 256, i % 256));
    }
    z.exec(&mut r).unwrap();
    let mut g = Fleet::new(settings(srv.port, "node-g", None));
    let e = g.poll().unwrap_err();
    assert!(matches!(&e, FleetError::Garbage(t) if t.contains("holds 5050")), "{e:?}");
    // A Redis at maxmemory refuses the full write: no staging key is left behind.
    redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1).exec(&mut r).unwrap();
    let e = a.publish(&v(&all), None, info(2)).unwrap_err();
    assert!(matches!(&e, FleetError::Server(t) if t.contains("OOM")), "{e:?}");
    redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).exec(&mut r).unwrap();
    let staged: Vec<String> = redis::cmd("KEYS").arg("t:staging:*").query(&mut r).unwrap();
    assert!(staged.is_empty(), "{staged:?}");
}

/// A redis-server these tests cannot do without: no program is a failure, not a skip.
fn must_server(extra: &[&str]) -> Server {
    server(extra)
}

/// A redis-sentinel of its own (it rewrites its config file) that says `port` is the master
/// `name`, with quorum 1; missing, the test fails.
fn must_sentinel(name: &str, master_port: u16) -> Server {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("apiban-sentinel-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("sentinel.conf");
    let text = format!("port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {master_port} 1\n", dir.display());
    std::fs::write(&conf, text).unwrap();
    start("redis-sentinel", &[conf.to_str().unwrap().to_string()], port, dir).expect("no redis-sentinel: scripts/setup-debian.sh installs it")
}

fn signal(s: &Server, sig: libc::c_int) {
    // SAFETY: kill(2) on the PID of a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(s.child.id() as libc::pid_t, sig) }, 0);
}

fn sentinel_settings(sentinels: &[&Server], node: &str, timeout: Duration) -> FleetSettings {
    let hosts: Vec<String> = sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
    let mut s = settings(1, node, None);
    s.target = RedisTarget::parse(&format!("redis+sentinel://{}/m", hosts.join(","))).unwrap();
    s.timeout = timeout;
    s
}

fn sentinel_order(f: &Fleet) -> Vec<u16> {
    match &f.connector {
        Ok(Connector::Sentinel(s)) => s.order(),
        _ => panic!("not a sentinel target"),
    }
}

#[test]
fn a_stopped_sentinel_costs_one_timeout_once() {
    let master = must_server(&[]);
    let (s1, s2) = (must_sentinel("m", master.port), must_sentinel("m", master.port));
    // Stopped, its kernel still accepts connections: only a read timeout gets past it.
    signal(&s1, libc::SIGSTOP);
    let timeout = Duration::from_millis(500);
    let mut a = Fleet::new(sentinel_settings(&[&s1, &s2], "node-a", timeout));
    let t = Instant::now();
    // Taking the lease writes: it reached the master, not a replica.
    let r = a.lease();
    let took = t.elapsed();
    signal(&s1, libc::SIGCONT);
    assert_eq!(r.unwrap(), LeaseState::Leader { token: 1, taken: true });
    assert!(took < timeout * 2, "discovery took {took:?} with a timeout of {timeout:?}");
    assert!(took >= timeout, "{took:?}: was the first sentinel really asked?");
    // The sentinel that answered is asked first from now on.
    assert_eq!(sentinel_order(&a), vec![s2.port, s1.port]);
    signal(&s1, libc::SIGSTOP);
    a.conn = None;
    let t = Instant::now();
    let r = a.poll();
    let took = t.elapsed();
    signal(&s1, libc::SIGCONT);
    assert_eq!(r.unwrap(), Poll::Empty);
    assert!(took < timeout / 2, "the reconnect took {took:?}");
}

#[test]
fn a_sentinel_naming_a_replica_is_passed_over() {
    let master = must_server(&[]);
    let replica = must_server(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    // One sentinel that has not seen a fail-over: the master it names is a replica now.
    let (stale, good) = (must_sentinel("m", replica.port), must_sentinel("m", master.port));
    let timeout = Duration::from_secs(1);
    let mut alone = Fleet::new(sentinel_settings(&[&stale], "node-a", timeout));
    let e = alone.lease().unwrap_err();
    assert!(matches!(&e, FleetError::Unavailable(t) if t.contains(&format!("names 127.0.0.1:{}", replica.port)) && t.contains("not master")), "{e:?}");
    let mut a = Fleet::new(sentinel_settings(&[&stale, &good], "node-a", timeout));
    assert_eq!(a.lease().unwrap(), LeaseState::Leader { token: 1, taken: true });
    assert_eq!(sentinel_order(&a), vec![good.port, stale.port]);
}

#[test]
fn sentinel_errors_never_show_the_password() {
    let master = must_server(&["--requirepass", "right-one"]);
    let s = must_sentinel("m", master.port);
    let mut set = sentinel_settings(&[&s], "node-a", Duration::from_secs(1));
    set.target = RedisTarget::parse(&format!("redis+sentinel://:wrong-one@127.0.0.1:{}/m", s.port)).unwrap();
    let e = Fleet::new(set.clone()).lease().unwrap_err();
    assert!(matches!(e, FleetError::Auth(_)), "{e:?}");
    assert!(!e.to_string().contains("wrong-one"), "{e}");
    set.target.password = Some("right-one".into());
    assert!(matches!(Fleet::new(set).lease().unwrap(), LeaseState::Leader { .. }));
}
