//! `redis_url`: where the fleet's Redis is, parsed and checked at start, shown only redacted.
//!
//! Forms:
//! - `redis://[user:password@]host[:port][/db]`, `rediss://...` for TLS;
//! - `redis+unix:///path/to/socket[?db=N&user=U&pass=P]` (the query names are redis-rs's own);
//! - `redis+sentinel://[user:password@]host[:port][,host[:port]...]/master[/db]`, the masters
//!   that Redis Sentinel manages (`rediss+sentinel://` speaks TLS to the sentinels and the
//!   master). The credentials are the master's; the sentinels are asked without them.
//!
//! User and password may be percent-encoded (a password with `@` or `/` must be). No message
//! made here ever contains the password: the operator sees `redis://user:***@host`.

use std::fmt;
use std::path::PathBuf;

pub const DEFAULT_PORT: u16 = 6379;
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
    Sentinel { nodes: Vec<(String, u16)>, master: String },
}

#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub endpoint: Endpoint,
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
}

/// Debug never shows the password (Config derives Debug).
impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisTarget({self})")
    }
}

fn host_text(h: &str) -> String {
    if h.contains(':') {
        format!("[{h}]")
    } else {
        h.to_string()
    }
}

/// The URL as the operator wrote it, canonical, with the password as `***`.
impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.tls { "s" } else { "" };
        let creds = match (&self.username, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (None, Some(_)) => ":***@".into(),
            (Some(u), None) => format!("{u}@"),
            (None, None) => String::new(),
        };
        match &self.endpoint {
            Endpoint::Tcp { host, port } => write!(f, "redis{s}://{creds}{}:{port}/{}", host_text(host), self.db),
            Endpoint::Unix(p) => {
                write!(f, "redis+unix://{}?db={}", p.display(), self.db)?;
                if let Some(u) = &self.username {
                    write!(f, "&user={u}")?;
                }
                if self.password.is_some() {
                    write!(f, "&pass=***")?;
                }
                Ok(())
            }
            Endpoint::Sentinel { nodes, master } => {
                let n: Vec<String> = nodes.iter().map(|(h, p)| format!("{}:{p}", host_text(h))).collect();
                write!(f, "redis{s}+sentinel://{creds}{}/{master}/{}", n.join(","), self.db)
            }
        }
    }
}

fn bad(what: impl fmt::Display) -> String {
    format!("parameter 'redis_url': {what}")
}

/// What the operator wrote, safe to echo: everything between `://` and the last `@` (user and
/// password, however many `/`, `:` or `@` an unencoded password holds) becomes `***`, as does a
/// `pass=` query value. No host, master name or database number contains `@`, so whatever comes
/// before the last one can only be user-info.
pub fn redact_raw(v: &str) -> String {
    let Some((scheme, rest)) = v.split_once("://") else { return v.to_string() };
    let end = rest.find('?').unwrap_or(rest.len());
    let mut out = match rest[..end].rfind('@') {
        Some(i) => format!("{scheme}://***{}", &rest[i..]),
        None => format!("{scheme}://{rest}"),
    };
    if let Some(i) = out.find("pass=") {
        let end = out[i..].find('&').map_or(out.len(), |e| i + e);
        out.replace_range(i + 5..end, "***");
    }
    out
}

/// Splits `[user-info@]authority[/path]` at the last `@` before any `?`, so that a password
/// with an unencoded `/` never becomes a path or a host in an error message.
fn split_userinfo(rest: &str) -> (Option<&str>, &str) {
    let end = rest.find('?').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    }
}

fn parse_db(v: &str) -> Result<i64, String> {
    match v.parse::<i64>() {
        Ok(n) if (0..=1_000_000).contains(&n) => Ok(n),
        _ => Err(bad(format!("'{v}' is not a database number"))),
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn parse_host_port(v: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| bad(format!("'{v}': unclosed '['")))?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':').ok_or_else(|| bad(format!("'{v}' is not host:port")))?)),
        }
    } else {
        match v.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (v, None),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control() || "/?#@[],".contains(c)) {
        return Err(bad(format!("'{v}' has no valid host")));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad(format!("'{v}' has a bad port '{p}'"))),
        },
    };
    Ok((host.to_string(), port))
}

type Credentials = (Option<String>, Option<String>);

/// `user:password` → (user, password). Either part may be empty.
fn parse_credentials(creds: Option<&str>) -> Result<Credentials, String> {
    let Some(creds) = creds else { return Ok((None, None)) };
    let (u, p) = match creds.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (creds, None),
    };
    let dec = |s: &str, what: &str| crate::proxy::percent_decode(s).ok_or_else(|| bad(format!("the {what} has a bad %-escape")));
    let user = if u.is_empty() { None } else { Some(dec(u, "user name")?) };
    let pass = match p {
        Some(p) if !p.is_empty() => Some(dec(p, "password")?),
        _ => None,
    };
    Ok((user, pass))
}

impl RedisTarget {
    /// Parses `redis_url`. Error messages show the value redacted.
    pub fn parse(v: &str) -> Result<RedisTarget, String> {
        let v = v.trim();
        let shown = redact_raw(v);
        let (scheme, rest) = v
            .split_once("://")
            .ok_or_else(|| bad(format!("'{shown}' must start with redis://, rediss://, redis+unix:// or redis+sentinel://")))?;
        if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!("'{shown}' contains blanks or control characters")));
        }
        match scheme {
            "redis" | "rediss" => {
                let (creds, rest) = split_userinfo(rest);
                let (username, password) = parse_credentials(creds)?;
                let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
                let (host, port) = parse_host_port(hostport, DEFAULT_PORT)?;
                let db = if path.is_empty() { 0 } else { parse_db(path)? };
                Ok(RedisTarget { endpoint: Endpoint::Tcp { host, port }, tls: scheme == "rediss", username, password, db })
            }
            "redis+unix" | "unix" => {
                let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
                if !path.starts_with('/') || path.len() < 2 {
                    return Err(bad(format!("'{shown}': the socket path must be absolute (redis+unix:///run/redis.sock)")));
                }
                let mut t = RedisTarget { endpoint: Endpoint::Unix(PathBuf::from(path)), tls: false, username: None, password: None, db: 0 };
                for kv in query.split('&').filter(|s| !s.is_empty()) {
                    let (k, val) = kv.split_once('=').unwrap_or((kv, ""));
                    let val = crate::proxy::percent_decode(val).ok_or_else(|| bad(format!("'{shown}': bad %-escape")))?;
                    match k {
                        "db" => t.db = parse_db(&val)?,
                        "user" => t.username = Some(val).filter(|s| !s.is_empty()),
                        "pass" | "password" => t.password = Some(val).filter(|s| !s.is_empty()),
                        _ => return Err(bad(format!("'{shown}': unknown option '{k}' (db, user, pass)"))),
                    }
                }
                Ok(t)
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let (creds, rest) = split_userinfo(rest);
                let (username, password) = parse_credentials(creds)?;
                let (hosts, path) = rest
                    .split_once('/')
                    .ok_or_else(|| bad(format!("'{shown}' names no master: redis+sentinel://host:26379/mymaster")))?;
                let nodes = hosts
                    .split(',')
                    .map(|h| parse_host_port(h, DEFAULT_SENTINEL_PORT))
                    .collect::<Result<Vec<_>, _>>()?;
                let (master, db) = path.split_once('/').unwrap_or((path, ""));
                if master.is_empty() || master.contains(|c: char| c.is_control() || "?#@,".contains(c)) {
                    return Err(bad(format!("'{shown}' names no master: redis+sentinel://host:26379/mymaster")));
                }
                let db = if db.is_empty() { 0 } else { parse_db(db)? };
                Ok(RedisTarget {
                    endpoint: Endpoint::Sentinel { nodes, master: master.to_string() },
                    tls: scheme.starts_with("rediss"),
                    username,
                    password,
                    db,
                })
            }
            _ => Err(bad(format!("'{shown}': unknown scheme '{scheme}' (redis, rediss, redis+unix, redis+sentinel)"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_forms() {
        let t = RedisTarget::parse("redis://127.0.0.1").unwrap();
        assert_eq!(t.endpoint, Endpoint::Tcp { host: "127.0.0.1".into(), port: 6379 });
        assert_eq!((t.tls, t.db, t.username.as_deref(), t.password.as_deref()), (false, 0, None, None));
        let t = RedisTarget::parse("rediss://app:s%40cr%2Ft@redis.example.net:6380/3").unwrap();
        assert_eq!(t.endpoint, Endpoint::Tcp { host: "redis.example.net".into(), port: 6380 });
        assert_eq!((t.tls, t.db, t.username.as_deref(), t.password.as_deref()), (true, 3, Some("app"), Some("s@cr/t")));
        let t = RedisTarget::parse("redis://:pw@[::1]:7000").unwrap();
        assert_eq!(t.endpoint, Endpoint::Tcp { host: "::1".into(), port: 7000 });
        assert_eq!((t.username.as_deref(), t.password.as_deref()), (None, Some("pw")));
        assert_eq!(t.to_string(), "redis://:***@[::1]:7000/0");
    }

    #[test]
    fn unix_and_sentinel_forms() {
        let t = RedisTarget::parse("redis+unix:///run/redis/redis.sock?db=2&pass=x%26y").unwrap();
        assert_eq!(t.endpoint, Endpoint::Unix("/run/redis/redis.sock".into()));
        assert_eq!((t.db, t.password.as_deref()), (2, Some("x&y")));
        assert_eq!(t.to_string(), "redis+unix:///run/redis/redis.sock?db=2&pass=***");
        let t = RedisTarget::parse("redis+sentinel://:pw@10.0.0.1,10.0.0.2:26380/mymaster/1").unwrap();
        assert_eq!(
            t.endpoint,
            Endpoint::Sentinel { nodes: vec![("10.0.0.1".into(), 26379), ("10.0.0.2".into(), 26380)], master: "mymaster".into() }
        );
        assert_eq!((t.db, t.tls), (1, false));
        assert_eq!(t.to_string(), "redis+sentinel://:***@10.0.0.1:26379,10.0.0.2:26380/mymaster/1");
    }

    #[test]
    fn bad_urls_name_the_parameter_and_never_show_the_password() {
        for v in [
            "http://h",
            "redis://",
            "redis://:hunter2@",
            "redis://:hunter2@h:0",
            "redis://:hunter2@h:99999",
            "redis://:hunter2@h/abc",
            "redis://:hunter2@h/-1",
            "redis://:hunter2@h a",
            "redis+unix://relative.sock?pass=hunter2",
            "redis+unix:///s.sock?pass=hunter2&x=1",
            "redis+sentinel://:hunter2@h1,h2",
            "redis+sentinel://:hunter2@h1,/m",
            "redis+sentinel://:hunter2@h1/",
            "redis://:hunter2%zz@h",
            // A password with an unencoded '/' or '@': the user-info still ends at the last '@'.
            "redis://u:hunter2/5678@h/x",
            "redis://:hunter2/2@h:0",
            "redis://:hun@ter2/2@",
            "redis+sentinel://:hunter2/x@h1,",
            "hunter2",
        ] {
            let e = RedisTarget::parse(v).unwrap_err();
            assert!(e.starts_with("parameter 'redis_url'"), "{v}: {e}");
            if v != "hunter2" {
                assert!(!e.contains("hunter2"), "{v}: {e}");
            }
        }
    }

    #[test]
    fn raw_redaction() {
        assert_eq!(redact_raw("redis://u:p@h:1/2"), "redis://***@h:1/2");
        assert_eq!(redact_raw("redis://h"), "redis://h");
        assert_eq!(redact_raw("redis+unix:///s?db=1&pass=p&user=u"), "redis+unix:///s?db=1&pass=***&user=u");
        assert_eq!(redact_raw("redis://a@b@h/0"), "redis://***@h/0");
        assert_eq!(redact_raw("redis+unix://s.sock?pass=p"), "redis+unix://s.sock?pass=***");
        assert_eq!(redact_raw("redis://u:1234/5678@h"), "redis://***@h");
        assert_eq!(redact_raw("redis://:hunter/2@h/0"), "redis://***@h/0");
    }

    #[test]
    fn an_unencoded_slash_in_the_password_is_still_the_password() {
        let t = RedisTarget::parse("redis://u:1234/5678@h/3").unwrap();
        assert_eq!((t.username.as_deref(), t.password.as_deref(), t.db), (Some("u"), Some("1234/5678"), 3));
        assert_eq!(t.endpoint, Endpoint::Tcp { host: "h".into(), port: 6379 });
        let t = RedisTarget::parse("redis+sentinel://:a/b@s1,s2/m").unwrap();
        assert_eq!(t.password.as_deref(), Some("a/b"));
    }
}
