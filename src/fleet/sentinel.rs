//! The master that Redis Sentinel names, found by hand so that every step has a deadline
//! (issue 15): redis-rs's own sentinel client connects and reads with no timeout, so a stopped
//! sentinel (its kernel still accepts) or a black-holed one would stall the refresher.
//!
//! For each sentinel in turn: connect within `timeout`, ask `SENTINEL GET-MASTER-ADDR-BY-NAME`
//! with `timeout` to answer; connect to the address it names as the target says (credentials,
//! db, TLS) and accept it only if `ROLE` says `master` (a sentinel that has not yet seen a
//! fail-over names a replica, or a dead master). A sentinel that answered moves to the front,
//! as Sentinel clients customarily do: a dead first sentinel costs one timeout once, not at
//! every reconnect.

use super::{classify, open, tcp_client, FleetError};
use redis::{Client, Connection, RedisConnectionInfo, Value};
use std::time::Duration;

struct Node {
    host: String,
    port: u16,
    client: Client,
}

pub struct Sentinels {
    /// In the order they are asked: the last one that answered first.
    nodes: Vec<Node>,
    master: String,
    tls: bool,
    certs: Option<Vec<u8>>,
    /// How to log in to the master (the sentinels are asked without credentials).
    info: RedisConnectionInfo,
    password: Option<String>,
}

/// A sentinel answered, but not with a usable master.
enum Miss {
    /// The sentinel itself did not answer (down, stopped, timed out, refused us).
    Sentinel(FleetError),
    /// It named an address that is not a reachable master.
    Master(FleetError),
}

impl Sentinels {
    /// No I/O.
    pub fn new(
        nodes: &[(String, u16)],
        master: &str,
        tls: bool,
        certs: Option<Vec<u8>>,
        info: RedisConnectionInfo,
        password: Option<String>,
    ) -> redis::RedisResult<Sentinels> {
        // Nothing to set up on a sentinel's connection: redis-rs reads every reply of its setup
        // pipeline even after one timed out, so the two CLIENT SETINFO alone would make a stopped
        // sentinel cost three timeouts, not one.
        let asked = RedisConnectionInfo::default().set_skip_set_lib_name();
        let nodes = nodes
            .iter()
            .map(|(h, p)| Ok(Node { host: h.clone(), port: *p, client: tcp_client(h, *p, tls, &certs, asked.clone())? }))
            .collect::<redis::RedisResult<Vec<_>>>()?;
        Ok(Sentinels { nodes, master: master.to_string(), tls, certs, info, password })
    }

    /// The sentinels in the order the next discovery asks them.
    #[cfg(test)]
    pub fn order(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// A connection to the current master, with read and write timeouts of `timeout`. A sentinel
    /// that does not answer costs one `timeout` (a black hole: the connect; a stopped one: the
    /// answer).
    pub fn connect(&mut self, timeout: Duration) -> Result<Connection, FleetError> {
        let mut answered = None;
        let mut misses = Vec::with_capacity(self.nodes.len());
        for i in 0..self.nodes.len() {
            match self.ask(i, timeout) {
                Ok(c) => {
                    self.nodes[..=i].rotate_right(1);
                    return Ok(c);
                }
                Err(Miss::Master(e)) => {
                    answered.get_or_insert(i);
                    misses.push(e);
                }
                Err(Miss::Sentinel(e)) => misses.push(e),
            }
        }
        if let Some(i) = answered {
            self.nodes[..=i].rotate_right(1);
        }
        Err(summary(misses))
    }

    fn ask(&self, i: usize, timeout: Duration) -> Result<Connection, Miss> {
        let n = &self.nodes[i];
        let pw = self.password.as_deref();
        let at = |e: FleetError| rename(e, |t| format!("sentinel {}:{}: {t}", n.host, n.port));
        let mut s = open(&n.client, timeout, pw).map_err(|e| Miss::Sentinel(at(e)))?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master)
            .query(&mut s)
            .map_err(|e| Miss::Sentinel(at(classify(&e, pw))))?;
        let Some((host, port)) = addr else {
            return Err(Miss::Sentinel(at(FleetError::Unavailable(format!("knows no master named '{}'", self.master)))));
        };
        let named = |e: FleetError| at(rename(e, |t| format!("names {host}:{port}: {t}")));
        let client = tcp_client(&host, port, self.tls, &self.certs, self.info.clone()).map_err(|e| Miss::Master(named(classify(&e, pw))))?;
        let mut m = open(&client, timeout, pw).map_err(|e| Miss::Master(named(e)))?;
        let role: Value = redis::cmd("ROLE").query(&mut m).map_err(|e| Miss::Master(named(classify(&e, pw))))?;
        match role_name(&role) {
            Some(r) if r == "master" => Ok(m),
            r => Err(Miss::Master(named(FleetError::Unavailable(format!(
                "its role is '{}', not master (the sentinel has not seen a fail-over yet?)",
                r.unwrap_or_default()
            ))))),
        }
    }
}

fn role_name(v: &Value) -> Option<String> {
    match v {
        Value::Array(a) => a.first().and_then(|r| redis::from_redis_value::<String>(r.clone()).ok()),
        _ => None,
    }
}

/// The same class of error with another text.
fn rename(e: FleetError, f: impl FnOnce(&str) -> String) -> FleetError {
    match e {
        FleetError::Unavailable(t) => FleetError::Unavailable(f(&t)),
        FleetError::Auth(t) => FleetError::Auth(f(&t)),
        FleetError::Garbage(t) => FleetError::Garbage(f(&t)),
        FleetError::Server(t) => FleetError::Server(f(&t)),
        FleetError::LeaseLost => FleetError::LeaseLost,
    }
}

/// One error for a discovery that found no master: what each sentinel said, classified as the
/// most telling of them (refused credentials before a server error before unavailable).
fn summary(misses: Vec<FleetError>) -> FleetError {
    let rank = |e: &FleetError| match e {
        FleetError::Auth(_) => 0,
        FleetError::Server(_) | FleetError::Garbage(_) => 1,
        _ => 2,
    };
    let Some(worst) = misses.iter().min_by_key(|e| rank(e)).cloned() else {
        return FleetError::Unavailable("no sentinel to ask".into());
    };
    let text = misses
        .iter()
        .map(|e| match e {
            FleetError::Unavailable(t) | FleetError::Auth(t) | FleetError::Garbage(t) | FleetError::Server(t) => t.clone(),
            FleetError::LeaseLost => e.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ");
    rename(worst, |_| format!("no sentinel named a usable master: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_telling_error_classifies_the_summary() {
        let e = summary(vec![FleetError::Unavailable("sentinel a:1: timed out".into()), FleetError::Auth("sentinel b:2: names m:3: WRONGPASS".into())]);
        assert_eq!(e, FleetError::Auth("no sentinel named a usable master: sentinel a:1: timed out; sentinel b:2: names m:3: WRONGPASS".into()));
        assert!(matches!(summary(vec![]), FleetError::Unavailable(_)));
    }

    #[test]
    fn roles() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(role_name(&Value::Array(vec![b("master"), Value::Int(0), Value::Array(vec![])])).as_deref(), Some("master"));
        assert_eq!(role_name(&Value::Array(vec![b("slave"), b("127.0.0.1")])).as_deref(), Some("slave"));
        assert_eq!(role_name(&Value::Nil), None);
    }
}
