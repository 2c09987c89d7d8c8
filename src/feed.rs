//! The APIBAN client: one request, one reply, classified. Paging, pacing and retries are the
//! refresher's. Reply parsing is a pure function of status and body, so every reply shape of
//! apiban-api.md is unit-tested (and fuzzed) without a network.
//!
//! Error texts never contain a URL: with API v1 the key is part of it.

use crate::addr::Key;
use crate::log::{log_info, log_warn};
use crate::proxy::{Tunnel, TunnelError};
use serde_json::Value;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod reply;

/// The ID that starts a full pull, as the official clients send it.
pub const START_ID: u64 = 100;

/// A reply of the feed, made sense of.
#[derive(Debug, Default, PartialEq)]
pub struct Batch {
    /// The addresses listed, in reply order, IPv4 (v4-mapped IPv6 included) apart from IPv6:
    /// 4-byte keys for what APIBAN lists, rather than a 32-byte `Key` each.
    pub v4: Vec<u32>,
    pub v6: Vec<u128>,
    /// Tokens that were not addresses.
    pub skipped: u64,
    /// The numeric ID to ask for next, when the reply had one.
    pub id: Option<u64>,
    /// The feed said there is nothing newer (the end marker).
    pub end: bool,
}

impl Batch {
    /// How many addresses the reply listed (duplicates included).
    pub fn listed(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    fn push(&mut self, k: Key) {
        match k {
            Key::V4(a) => self.v4.push(a),
            Key::V6(a) => self.v6.push(a),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FeedError {
    /// 401, or 403 that is not the end marker: a wrong or missing key.
    Unauthorized(u16),
    /// 429. `retry_after` in seconds when the server said.
    RateLimited { retry_after: Option<u64> },
    /// 5xx.
    Server(u16),
    /// Any other status that is not a batch or the end marker.
    Status(u16),
    /// Connect, DNS, TLS, reset, timeout: no usable reply.
    Transport(String),
    /// The body was larger than the cap.
    TooLarge(usize),
    /// A 200 whose body is not an APIBAN reply.
    BadReply(String),
}

impl std::fmt::Display for FeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedError::Unauthorized(c) => write!(f, "HTTP {c}: the API key was refused"),
            FeedError::RateLimited { retry_after: Some(s) } => write!(f, "HTTP 429: rate limited (Retry-After {s} s)"),
            FeedError::RateLimited { retry_after: None } => write!(f, "HTTP 429: rate limited"),
            FeedError::Server(c) => write!(f, "HTTP {c}: server error"),
            FeedError::Status(c) => write!(f, "HTTP {c}: unexpected status"),
            FeedError::Transport(m) => write!(f, "no reply: {m}"),
            FeedError::TooLarge(n) => write!(f, "reply larger than {n} bytes: refused"),
            FeedError::BadReply(m) => write!(f, "bad reply: {m}"),
        }
    }
}

/// Classifies one reply. `cursor` is the ID the request asked for, to refuse IDs going back.
///
/// A reply of the usual shape (an object with `ipaddress` a list or a string and `ID` once each)
/// is read in one pass (`reply::read`): each address parsed where it lies in the body, no JSON
/// tree, no string per address. Anything else (not JSON, another shape, a field twice) is read
/// by `parse_reply_general` into a `serde_json::Value`, which decides every error as it always
/// has; the two agree on every reply the fast reader accepts (tested and fuzzed).
pub fn parse_reply(status: u16, body: &[u8], retry_after: Option<&str>, cursor: u64) -> Result<Batch, FeedError> {
    let Some(fast) = reply::read(body) else { return parse_reply_general(status, body, retry_after, cursor) };
    let id_is_none = matches!(fast.id, reply::Id::NoneText);
    if let Some(r) = by_status(status, id_is_none, retry_after) {
        return r;
    }
    let mut batch = fast.batch;
    if id_is_none {
        // "no new bans" beside ID none is the end marker's text, not a bad token.
        batch.skipped = 0;
    }
    match fast.id {
        reply::Id::NoneText => batch.end = true,
        reply::Id::Number(id) => batch.id = Some(id),
        reply::Id::NotNumber => return Err(FeedError::BadReply("ID is not a number".into())),
    }
    check_id(batch, cursor)
}

/// What the status says before the body is read: `None` for 200, a batch to read.
fn by_status(status: u16, id_is_none: bool, retry_after: Option<&str>) -> Option<Result<Batch, FeedError>> {
    Some(match status {
        200 => return None,
        // The end marker: nothing newer than the ID we sent.
        400 | 403 | 404 if id_is_none => Ok(Batch { end: true, ..Batch::default() }),
        401 | 403 => Err(FeedError::Unauthorized(status)),
        429 => {
            let retry_after = retry_after.and_then(|v| v.trim().parse::<u64>().ok());
            Err(FeedError::RateLimited { retry_after })
        }
        500..=599 => Err(FeedError::Server(status)),
        _ => Err(FeedError::Status(status)),
    })
}

/// Refuses an ID behind the cursor; the same ID again ends the pull.
fn check_id(mut batch: Batch, cursor: u64) -> Result<Batch, FeedError> {
    if let Some(id) = batch.id {
        if id < cursor {
            return Err(FeedError::BadReply(format!("ID went backwards ({id} after {cursor})")));
        }
        // Same ID again: the feed has nothing newer (guards against a request loop).
        if id == cursor {
            batch.end = true;
        }
    }
    Ok(batch)
}

/// Every reply through a `serde_json::Value`: the reference `parse_reply` agrees with, and the
/// reader of whatever the fast reader leaves (bad replies, unusual shapes).
pub fn parse_reply_general(status: u16, body: &[u8], retry_after: Option<&str>, cursor: u64) -> Result<Batch, FeedError> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let id_is_none = matches!(json.as_ref().and_then(|j| j.get("ID")), Some(Value::String(s)) if s.eq_ignore_ascii_case("none"));
    if let Some(r) = by_status(status, id_is_none, retry_after) {
        return r;
    }
    let json = match json {
        Some(j @ Value::Object(_)) => j,
        Some(_) => return Err(FeedError::BadReply("JSON is not an object".into())),
        None if body.is_empty() => return Err(FeedError::BadReply("empty body".into())),
        None => return Err(FeedError::BadReply("not JSON".into())),
    };
    let id_field = json.get("ID");
    let mut batch = Batch::default();
    match json.get("ipaddress") {
        Some(Value::Array(items)) => {
            for it in items {
                match it.as_str().and_then(|s| crate::addr::parse_text(s.as_bytes())) {
                    Some(k) => batch.push(k),
                    // "no new bans" beside ID none is the end marker's text, not a bad token.
                    None if id_is_none => {}
                    None => batch.skipped += 1,
                }
            }
        }
        // Some replies carry one string: an address, or a phrase meaning "no data".
        Some(Value::String(s)) => match crate::addr::parse_text(s.as_bytes()) {
            Some(k) => batch.push(k),
            None if id_is_none => {}
            None => batch.skipped += 1,
        },
        Some(Value::Null) | None => return Err(FeedError::BadReply("no ipaddress field".into())),
        Some(_) => return Err(FeedError::BadReply("ipaddress is neither a list nor a string".into())),
    }
    match id_field {
        _ if id_is_none => batch.end = true,
        Some(Value::String(s)) => match s.trim().parse::<u64>() {
            Ok(id) => batch.id = Some(id),
            Err(_) => return Err(FeedError::BadReply("ID is not a number".into())),
        },
        Some(Value::Number(n)) => match n.as_u64() {
            Some(id) => batch.id = Some(id),
            None => return Err(FeedError::BadReply("ID is not a number".into())),
        },
        Some(_) => return Err(FeedError::BadReply("ID is not a number".into())),
        None => return Err(FeedError::BadReply("no ID field".into())),
    }
    check_id(batch, cursor)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    V2,
}

/// How the feed is reached: whom TLS trusts (None: ureq's built-in roots, unit tests only) and
/// the proxy, if any.
#[derive(Clone, Default)]
pub struct Net {
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub proxy: Option<crate::proxy::Proxy>,
}

impl Net {
    /// The refresher's: the trust store read now (after the fork: no thread, only files), the
    /// proxy as configured. Says in the log what is trusted and which proxy is used.
    pub fn for_config(cfg: &crate::config::Config) -> Net {
        let tls = cfg.url.starts_with("https://").then(|| {
            let system = crate::tls::system_bundle(std::env::var_os("SSL_CERT_FILE").map(Into::into), |p| p.exists());
            let trust = crate::tls::load(system.as_deref(), cfg.ca_file.as_deref());
            if let Some(w) = &trust.warning {
                log_warn!("{w}");
            }
            log_info!("{}", trust.summary);
            crate::tls::client_config(trust.store)
        });
        if let Some(p) = &cfg.proxy {
            log_info!("the feed is reached through the proxy {p}");
        }
        Net { tls, proxy: cfg.proxy.clone() }
    }
}

pub struct Feed {
    agent: ureq::Agent,
    /// Sent with each request of a plain http:// feed through a proxy with credentials.
    proxy_auth: Option<String>,
    /// "proxy host:port", added to transport errors so that they say which hop failed.
    via: Option<String>,
    /// An http:// feed through a proxy: the proxy's refusals arrive as replies, not as errors.
    plain_proxy: bool,
    url: String,
    key: String,
    version: ApiVersion,
    set: String,
    max_body: usize,
    /// Where the next connection goes ("host:port" of the feed, or of the proxy), and what
    /// `resolve` found for it: ureq's own lookup has no deadline, so a fleet's leader resolves
    /// before it checks its lease, and the request then connects without a lookup.
    netloc: String,
    resolved: Arc<Mutex<Option<Vec<SocketAddr>>>>,
}

/// "host:port" of a URL, the port defaulting to the scheme's.
fn netloc_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let auth = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    let has_port = match host.rfind(']') {
        Some(i) => host[i..].contains(':'),
        None => host.contains(':'),
    };
    if has_port {
        host.to_string()
    } else {
        format!("{host}:{}", if scheme == "https" { 443 } else { 80 })
    }
}

/// Largest reply accepted: a batch of 250 is ~5 KB; this leaves room for servers that send far
/// bigger batches, and refuses a runaway body before it fills the refresher's memory.
pub const MAX_BODY: usize = 16 << 20;

impl Feed {
    pub fn new(url: &str, key: &str, version: ApiVersion, set: &str, timeout: Duration, net: &Net) -> Feed {
        // ureq 2 has one deadline per request, which overrides its per-read and per-write
        // timeouts: a server that connects and then says nothing, or trickles its reply, is
        // given up `2 × timeout` after the request started.
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout(timeout * 2)
            // The key travels in a header (v2) or the path (v1): never follow it elsewhere.
            .redirects(0)
            .user_agent(concat!("apiban-module/", env!("CARGO_PKG_VERSION")));
        let (mut proxy_auth, mut via) = (None, None);
        let plain_proxy = net.proxy.is_some() && url.starts_with("http://");
        let netloc = match &net.proxy {
            Some(p) => format!("{}:{}", p.host, p.port),
            None => netloc_of(url),
        };
        match (&net.proxy, &net.tls) {
            // An https:// feed behind a proxy: the tunnel is ours (proxy.rs says why), and ureq
            // connects to the proxy as if it were the feed.
            (Some(p), tls) if !plain_proxy => {
                let tls = tls.clone().unwrap_or_else(|| crate::tls::client_config(rustls::RootCertStore::empty()));
                builder = builder.tls_connector(Arc::new(Tunnel { target: netloc_of(url), authorization: p.authorization(), tls }));
            }
            (_, Some(tls)) => builder = builder.tls_config(tls.clone()),
            (_, None) => {}
        }
        if let Some(p) = &net.proxy {
            if plain_proxy {
                builder = builder.proxy(p.client());
                proxy_auth = p.authorization();
            }
            via = Some(format!("proxy {}:{}", p.host, p.port));
        }
        let resolved: Arc<Mutex<Option<Vec<SocketAddr>>>> = Arc::default();
        let (cache, target) = (resolved.clone(), netloc.clone());
        builder = builder.resolver(move |_: &str| {
            // What resolve() found, else the system's lookup of the one place this client
            // connects to: the feed, or the proxy (ureq asks for the feed's name through a tunnel).
            match cache.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                Some(addrs) => Ok(addrs),
                None => target.to_socket_addrs().map(Iterator::collect),
            }
        });
        Feed {
            agent: builder.build(),
            proxy_auth,
            via,
            plain_proxy,
            url: url.to_string(),
            key: key.to_string(),
            version,
            set: set.to_string(),
            max_body: MAX_BODY,
            netloc,
            resolved,
        }
    }

    /// Looks up the host the next request connects to (the feed's, or the proxy's), so that
    /// the request itself makes no lookup: a leader does this before it checks its lease,
    /// since a lookup has no deadline. The answer is used until the next call.
    pub fn resolve(&self) -> Result<(), FeedError> {
        let addrs: Vec<SocketAddr> = self
            .netloc
            .to_socket_addrs()
            .map_err(|e| self.no_reply(format!("cannot resolve {}: {}", self.netloc, io_text(&e))))?
            .collect();
        if addrs.is_empty() {
            return Err(self.no_reply(format!("cannot resolve {}: no address", self.netloc)));
        }
        *self.resolved.lock().unwrap_or_else(|e| e.into_inner()) = Some(addrs);
        Ok(())
    }

    #[cfg(test)]
    pub fn with_max_body(mut self, n: usize) -> Feed {
        self.max_body = n;
        self
    }

    /// Asks for the batch after `id` and classifies the reply.
    #[cfg(test)]
    pub fn fetch(&self, id: u64) -> Result<Batch, FeedError> {
        self.fetch_within(id, None)
    }

    /// Asks for the batch after `id` and classifies the reply; given up after `deadline` when
    /// that is shorter than the client's own (2 × timeout): a leader's request never outlives
    /// its lease.
    pub fn fetch_within(&self, id: u64, deadline: Option<Duration>) -> Result<Batch, FeedError> {
        let req = match self.version {
            ApiVersion::V2 => self
                .agent
                .post(&format!("{}/api/get", self.url))
                .set("Authorization", &format!("Bearer {}", self.key))
                .set("Content-Type", "application/json"),
            ApiVersion::V1 => self.agent.get(&format!("{}/api/{}/banned/{}", self.url, self.key, id)),
        };
        let req = match &self.proxy_auth {
            Some(auth) => req.set("Proxy-Authorization", auth),
            None => req,
        };
        let req = match deadline {
            Some(d) => req.timeout(d),
            None => req,
        };
        let result = match self.version {
            ApiVersion::V2 => req.send_string(&serde_json::json!({"set": self.set, "id": id.to_string()}).to_string()),
            ApiVersion::V1 => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(self.no_reply(transport_text(&t))),
        };
        let status = resp.status();
        let retry_after = resp.header("Retry-After").map(str::to_string);
        let mut body = Vec::new();
        let limit = self.max_body as u64 + 1;
        let read = resp.into_reader().take(limit).read_to_end(&mut body);
        // Before the body's own errors: a proxy that refuses a POST may close without reading
        // its body, and the reset that follows can cut its reply short.
        if self.plain_proxy && proxy_refused(status, &body) {
            return Err(self.no_reply(PROXY_REFUSED.into()));
        }
        if let Err(e) = read {
            return Err(FeedError::Transport(format!("reading the body: {}", io_text(&e))));
        }
        if body.len() > self.max_body {
            return Err(FeedError::TooLarge(self.max_body));
        }
        parse_reply(status, &body, retry_after.as_deref(), id)
    }

    /// A transport error, saying which proxy it went through.
    fn no_reply(&self, text: String) -> FeedError {
        FeedError::Transport(match &self.via {
            Some(via) => format!("{text} (via {via})"),
            None => text,
        })
    }
}

const PROXY_REFUSED: &str = "the proxy refused the request: credentials missing or wrong (check proxy's user:password)";

/// A reply of the proxy itself, not the feed: 407, or a 401 that is not APIBAN's own JSON
/// (tinyproxy answers wrong credentials with 401 and an HTML page). Otherwise a refused proxy
/// login would read as a refused API key.
fn proxy_refused(status: u16, body: &[u8]) -> bool {
    let apiban_json = || serde_json::from_slice::<Value>(body).is_ok_and(|j| j.get("ID").is_some());
    status == 407 || (status == 401 && !apiban_json())
}

/// ureq's own messages name the URL; build ours from the kind and the underlying I/O error.
fn transport_text(t: &ureq::Transport) -> String {
    use std::error::Error;
    match t.kind() {
        // What ureq makes of the proxy's answer to a CONNECT (an https:// feed).
        ureq::ErrorKind::ProxyUnauthorized => return PROXY_REFUSED.into(),
        ureq::ErrorKind::ProxyConnect => return "the proxy did not open a tunnel to the feed (CONNECT refused or failed)".into(),
        _ => {}
    }
    let kind = t.kind().to_string();
    let mut src = t.source();
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.get_ref().and_then(|inner| inner.downcast_ref::<TunnelError>()) {
                Some(TunnelError::Refused) => return PROXY_REFUSED.into(),
                Some(tunnel) => return tunnel.to_string(),
                None => {}
            }
            // A TLS failure says what it is; "Connection Failed" before it would only blur that.
            if let Some(tls) = tls_error(io) {
                return crate::tls::describe(tls);
            }
            return format!("{kind}: {}", io_text(io));
        }
        src = e.source();
    }
    kind
}

/// rustls reports a TLS failure as an InvalidData I/O error around its own error.
fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn io_text(e: &std::io::Error) -> String {
    if let Some(tls) = tls_error(e) {
        return crate::tls::describe(tls);
    }
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out".into(),
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        std::io::ErrorKind::UnexpectedEof => "connection closed early".into(),
        k => format!("{k}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use std::io::Write;

    fn ok(body: &str) -> Result<Batch, FeedError> {
        parse_reply(200, body.as_bytes(), None, START_ID)
    }

    #[test]
    fn a_batch_with_an_array() {
        let b = ok(r#"{"ipaddress":["192.0.2.1","198.51.100.7","2001:db8::5"],"ID":"1664386920"}"#).unwrap();
        assert_eq!(b.listed(), 3);
        assert_eq!((b.id, b.end, b.skipped), (Some(1664386920), false, 0));
    }

    #[test]
    fn a_batch_with_one_string_and_a_numeric_id() {
        let b = ok(r#"{"ipaddress":"192.0.2.1","ID":1664386920}"#).unwrap();
        assert_eq!((b.listed(), b.id), (1, Some(1664386920)));
    }

    #[test]
    fn end_markers() {
        for (status, body) in [
            (400, r#"{"ipaddress":["no new bans"],"ID":"none"}"#),
            (400, r#"{"ipaddress":"no new bans","ID":"none"}"#),
            (403, r#"{"ipaddress":["no new bans"],"ID":"none"}"#),
            (404, r#"{"ipaddress":["no new bans"],"ID":"none"}"#),
            (200, r#"{"ipaddress":["no new bans"],"ID":"none"}"#),
        ] {
            let b = parse_reply(status, body.as_bytes(), None, 1700000000).unwrap();
            assert!(b.end && b.listed() == 0 && b.id.is_none() && b.skipped == 0, "{status} {body}");
        }
        // 200 with addresses and ID none: keep the addresses, then stop.
        let b = ok(r#"{"ipaddress":["192.0.2.9"],"ID":"none"}"#).unwrap();
        assert!(b.end && b.listed() == 1);
    }

    #[test]
    fn errors_are_classified() {
        let e = |s: u16, b: &str, ra: Option<&str>| parse_reply(s, b.as_bytes(), ra, START_ID).unwrap_err();
        assert_eq!(e(403, r#"{"ipaddress":"none","ID":"unauthorized"}"#, None), FeedError::Unauthorized(403));
        assert_eq!(e(401, "", None), FeedError::Unauthorized(401));
        assert_eq!(e(429, "{}", Some("30")), FeedError::RateLimited { retry_after: Some(30) });
        assert_eq!(e(429, "", None), FeedError::RateLimited { retry_after: None });
        assert_eq!(e(503, "<html>", None), FeedError::Server(503));
        assert_eq!(e(302, "", None), FeedError::Status(302));
        assert_eq!(e(400, r#"{"ipaddress":"bad","ID":"x"}"#, None), FeedError::Status(400));
    }

    #[test]
    fn bad_bodies_are_refused() {
        for body in [
            "",
            "<html><body>502 Bad Gateway</body></html>",
            r#"{"ipaddress": [1.2.3.4,}"#,
            r#"{"ipaddress":["192.0.2.1"],"ID":"16643"#,
            r#"["192.0.2.1"]"#,
            r#"{"ID":"1664386920"}"#,
            r#"{"ipaddress":42,"ID":"1664386920"}"#,
            r#"{"ipaddress":["192.0.2.1"]}"#,
            r#"{"ipaddress":["192.0.2.1"],"ID":"abc"}"#,
            r#"{"ipaddress":["192.0.2.1"],"ID":-5}"#,
        ] {
            assert!(matches!(ok(body), Err(FeedError::BadReply(_))), "{body}");
        }
    }

    #[test]
    fn ids_going_back_are_refused_and_a_repeat_ends() {
        let r = parse_reply(200, br#"{"ipaddress":["192.0.2.1"],"ID":"1600000000"}"#, None, 1700000000);
        assert!(matches!(r, Err(FeedError::BadReply(m)) if m.contains("backwards")));
        let b = parse_reply(200, br#"{"ipaddress":[],"ID":"1700000000"}"#, None, 1700000000).unwrap();
        assert!(b.end);
    }

    #[test]
    fn tokens_that_are_not_addresses_are_skipped_and_counted() {
        let b = ok(r#"{"ipaddress":["192.0.2.1","not-an-ip","999.1.1.1","",null,7,"1.2.3.4/24","192.0.2.1"],"ID":"1700000001"}"#)
            .unwrap();
        assert_eq!(b.listed(), 2); // duplicates collapse later, in the set
        assert_eq!(b.skipped, 6);
    }

    #[test]
    fn transport_errors_do_not_show_the_url_or_key() {
        // Nothing listens on port 9 of 127.0.0.1 in the test sandbox.
        let f = Feed::new("http://127.0.0.1:9", "SECRETKEY123", ApiVersion::V1, "sip", Duration::from_secs(2), &Net::default());
        let e = f.fetch(START_ID).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, FeedError::Transport(_)), "{text}");
        assert!(!text.contains("SECRETKEY123") && !text.contains("127.0.0.1"), "{text}");
    }

    /// Reads headers and a Content-Length body, however the client split its writes.
    fn read_request(s: &mut std::net::TcpStream) -> String {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap();
            data.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&data).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                    .unwrap_or(0usize);
                if data.len() >= end + 4 + len || n == 0 {
                    return text;
                }
            }
        }
    }

    #[test]
    fn netlocs_take_the_schemes_port() {
        assert_eq!(netloc_of("https://apiban.org"), "apiban.org:443");
        assert_eq!(netloc_of("http://127.0.0.1:8080/x"), "127.0.0.1:8080");
        assert_eq!(netloc_of("https://u:p@[::1]/api"), "[::1]:443");
        assert_eq!(netloc_of("https://[::1]:8443"), "[::1]:8443");
    }

    #[test]
    fn a_request_given_a_deadline_ends_by_it_and_resolving_is_apart() {
        // A server that accepts and never answers: the request ends at its deadline, not at
        // the client's 2 × timeout.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let f = Feed::new(&format!("http://127.0.0.1:{port}"), "K", ApiVersion::V2, "sip", Duration::from_secs(5), &Net::default());
        f.resolve().unwrap();
        let t = std::time::Instant::now();
        assert!(f.fetch_within(START_ID, Some(Duration::from_millis(300))).is_err());
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(2), "{took:?}");
        drop(l);
        // A name that does not resolve fails in resolve(), before any request.
        let bad = Feed::new("https://feed.invalid", "KEY-x9", ApiVersion::V2, "sip", Duration::from_secs(1), &Net::default());
        let e = bad.resolve().unwrap_err().to_string();
        assert!(e.contains("cannot resolve feed.invalid:443") && !e.contains("KEY-x9"), "{e}");
    }

    #[test]
    fn fetch_against_a_local_server_v1_and_v2() {
        use std::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let (mut s, _) = l.accept().unwrap();
                let req = read_request(&mut s);
                let body = if req.contains("/api/get") || req.contains("/banned/100 ") {
                    r#"{"ipaddress":["192.0.2.1","192.0.2.2"],"ID":"1700000000"}"#.to_string()
                } else {
                    "x".repeat(5000)
                };
                write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
                seen.push(req);
            }
            seen
        });
        let base = format!("http://127.0.0.1:{port}");
        let v2 = Feed::new(&base, "KEY2", ApiVersion::V2, "sip", Duration::from_secs(5), &Net::default());
        assert_eq!(v2.fetch(START_ID).unwrap().listed(), 2);
        let v1 = Feed::new(&base, "KEY1", ApiVersion::V1, "sip", Duration::from_secs(5), &Net::default());
        assert_eq!(v1.fetch(START_ID).unwrap().id, Some(1700000000));
        let small = Feed::new(&base, "KEY1", ApiVersion::V1, "sip", Duration::from_secs(5), &Net::default()).with_max_body(1000);
        assert_eq!(small.fetch(1700000000).unwrap_err(), FeedError::TooLarge(1000));
        let seen = server.join().unwrap();
        assert!(seen[0].starts_with("POST /api/get "), "{}", seen[0]);
        assert!(seen[0].contains("Bearer KEY2") && seen[0].contains(r#""set":"sip""#) && seen[0].contains(r#""id":"100""#));
        assert!(seen[1].starts_with("GET /api/KEY1/banned/100 "), "{}", seen[1]);
    }

    const BATCH: &str = r#"{"ipaddress":["192.0.2.1","192.0.2.2"],"ID":"1700000000"}"#;

    fn reply(s: &mut impl Write, head: &str, body: &str) {
        write!(s, "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        s.flush().unwrap();
    }

    /// A TLS server with the test certificate for 127.0.0.1 (tls::fixtures) answering `n`
    /// connections with a batch; handshakes the client refuses are counted.
    fn tls_server(n: usize) -> (u16, std::thread::JoinHandle<usize>) {
        use crate::tls::fixtures::{SERVER_127_KEY, SERVER_127_PEM};
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_slice(SERVER_127_PEM.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(SERVER_127_KEY.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let config = std::sync::Arc::new(config);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut refused = 0;
            for _ in 0..n {
                let (tcp, _) = l.accept().unwrap();
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 4096];
                match tls.read(&mut buf) {
                    Ok(n) if n > 0 => reply(&mut tls, "HTTP/1.1 200 OK", BATCH),
                    _ => refused += 1,
                }
            }
            refused
        });
        (port, server)
    }

    #[test]
    fn a_401_is_the_proxys_unless_it_is_apibans_json() {
        assert!(proxy_refused(407, b""));
        assert!(proxy_refused(401, b"<html>401 Unauthorized</html>"));
        assert!(!proxy_refused(401, br#"{"ipaddress":"none","ID":"unauthorized"}"#));
        assert!(!proxy_refused(403, b"<html>403</html>"));
    }

    #[test]
    fn tls_failures_say_which_check_failed_and_a_trusted_ca_is_pulled() {
        let (port, server) = tls_server(3);
        let t = Duration::from_secs(5);
        let feed = |host: &str, net: &Net| Feed::new(&format!("https://{host}:{port}"), "SECRETKEY123", ApiVersion::V1, "sip", t, net);
        // ureq's own roots (the Mozilla set) do not know the test CA.
        let e = feed("127.0.0.1", &Net::default()).fetch(START_ID).unwrap_err().to_string();
        assert!(e.starts_with("no reply: TLS: unknown issuer"), "{e}");
        assert!(!e.contains("SECRETKEY123") && !e.contains("/api/"), "{e}");
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(rustls::pki_types::CertificateDer::pem_slice_iter(crate::tls::fixtures::CA_PEM.as_bytes()).map(|c| c.unwrap()));
        let net = Net { tls: Some(crate::tls::client_config(store)), proxy: None };
        // The certificate is for the address 127.0.0.1, not the name localhost.
        let e = feed("localhost", &net).fetch(START_ID).unwrap_err().to_string();
        assert!(e.starts_with("no reply: TLS: name mismatch"), "{e}");
        assert_eq!(feed("127.0.0.1", &net).fetch(START_ID).unwrap().listed(), 2);
        assert_eq!(server.join().unwrap(), 2);
    }

    #[test]
    fn an_https_url_on_a_plain_http_server_is_told() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            reply(&mut s, "HTTP/1.1 400 Bad Request", "plain HTTP here");
        });
        let f = Feed::new(&format!("https://127.0.0.1:{port}"), "K", ApiVersion::V2, "sip", Duration::from_secs(5), &Net::default());
        let e = f.fetch(START_ID).unwrap_err().to_string();
        assert!(e.starts_with("no reply: TLS: the server does not speak TLS"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn requests_go_through_the_proxy_with_its_credentials() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let proxy = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for answer in ["HTTP/1.1 200 OK", "HTTP/1.1 407 Proxy Authentication Required", "HTTP/1.0 401 Unauthorized"] {
                let (mut s, _) = l.accept().unwrap();
                let req = read_request(&mut s);
                reply(&mut s, answer, if answer.contains("200") { BATCH } else { "" });
                seen.push(req);
            }
            seen
        });
        let net = Net { tls: None, proxy: Some(crate::proxy::parse(&format!("http://carrier:PW%3As3cret@127.0.0.1:{port}")).unwrap()) };
        let t = Duration::from_secs(5);
        let plain = Feed::new("http://feed.invalid:8080", "KEY2", ApiVersion::V2, "sip", t, &net);
        assert_eq!(plain.fetch(START_ID).unwrap().listed(), 2);
        let refused = format!("no reply: {PROXY_REFUSED} (via proxy 127.0.0.1:{port})");
        let e = Feed::new("https://feed.invalid", "KEY2", ApiVersion::V2, "sip", t, &net).fetch(START_ID).unwrap_err();
        assert_eq!(e.to_string(), refused);
        assert_eq!(plain.fetch(START_ID).unwrap_err().to_string(), refused);
        let seen = proxy.join().unwrap();
        // "carrier:PW:s3cret" in base64: a plain request carries it to the proxy...
        let creds = "Y2FycmllcjpQVzpzM2NyZXQ=";
        assert!(seen[0].starts_with("POST http://feed.invalid:8080/api/get HTTP/1.1"), "{}", seen[0]);
        assert!(seen[0].contains(&format!("Proxy-Authorization: Basic {creds}")), "{}", seen[0]);
        // ...and an HTTPS feed is asked for through CONNECT, the credentials only on the CONNECT.
        assert!(seen[1].starts_with("CONNECT feed.invalid:443 HTTP/1.1"), "{}", seen[1]);
        assert!(seen[1].to_ascii_lowercase().contains(&format!("proxy-authorization: basic {}", creds.to_ascii_lowercase())), "{}", seen[1]);
    }

    /// Bounded fuzzing in every test run: mutated replies never panic, and what parses keeps
    /// the parser's promises.
    #[test]
    fn mutated_replies_never_panic() {
        let seeds: [&[u8]; 5] = [
            br#"{"ipaddress":["192.0.2.1","198.51.100.7","2001:db8::5"],"ID":"1664386920"}"#,
            br#"{"ipaddress":"192.0.2.1","ID":1664386920}"#,
            br#"{"ipaddress":["no new bans"],"ID":"none"}"#,
            br#"{"ipaddress":"none","ID":"unauthorized"}"#,
            b"<html>502</html>",
        ];
        let mut m = crate::mutate::Mutator::new(0x5eed_feed);
        let mut fast = 0;
        for i in 0..200_000 {
            let input = m.mutate(seeds[i % seeds.len()]);
            let status = [200, 200, 200, 400, 403, 404, 429, 500][i % 8];
            let r = parse_reply(status, &input, Some("7"), START_ID);
            // The fast reader and the general one agree on every reply.
            assert_eq!(r, parse_reply_general(status, &input, Some("7"), START_ID), "{:?}", String::from_utf8_lossy(&input));
            fast += reply::read(&input).is_some() as u32;
            if let Ok(b) = r {
                assert!(b.id.is_none_or(|id| id >= START_ID));
                assert!(b.end || b.id.is_some());
            }
        }
        // The mutations reach the fast reader, not only the general path.
        assert!(fast > 5_000, "{fast}");
    }

    /// The fast reader takes the usual shapes (escapes included) and leaves every other one to
    /// the general path; both give the same answer on each.
    #[test]
    fn the_fast_reader_agrees_with_the_general_one() {
        let cases: &[(&str, bool)] = &[
            (r#"{"ipaddress":["192.0.2.1","198.51.100.7","2001:db8::5","::ffff:192.0.2.9"],"ID":"1664386920"}"#, true),
            (r#"{"ipaddress":"192.0.2.1","ID":1664386920}"#, true),
            (r#" {"ID":"1664386920","x":[1,{"a":null}],"ipaddress":["192.0.2.1"]} "#, true),
            // Escapes: a borrowed &str cannot hold them; the address is still read.
            (r#"{"ipaddress":["192.0.2.\u0031","\u0032001:db8::1"],"ID":"1664386920"}"#, true),
            (r#"{"ip\u0061ddress":["192.0.2.1"],"\u0049D":" 1664386920 "}"#, true),
            (r#"{"ipaddress":["192.0.2.1","not-an-ip",null,7,-7,1.5,true,[],{},"1.2.3.4/24"],"ID":"1700000001"}"#, true),
            (r#"{"ipaddress":["no new bans"],"ID":"NONE"}"#, true),
            (r#"{"ipaddress":"none","ID":"unauthorized"}"#, true),
            (r#"{"ipaddress":["192.0.2.1"],"ID":-5}"#, true),
            (r#"{"ipaddress":["192.0.2.1"],"ID":1.0}"#, true),
            (r#"{"ipaddress":["192.0.2.1"],"ID":18446744073709551616}"#, true),
            (r#"{"ipaddress":["192.0.2.1"],"ID":null}"#, true),
            // Left to the general path: a field twice (the last one counts there), missing,
            // null or of another type, not an object, not JSON, a number out of range.
            (r#"{"ipaddress":["192.0.2.1"],"ipaddress":["192.0.2.2"],"ID":"1664386920"}"#, false),
            (r#"{"ipaddress":["192.0.2.1"],"ID":"1","ID":"1664386920"}"#, false),
            (r#"{"ipaddress":["192.0.2.1"]}"#, false),
            (r#"{"ipaddress":null,"ID":"1664386920"}"#, false),
            (r#"{"ipaddress":42,"ID":"1664386920"}"#, false),
            (r#"{"ipaddress":{"a":1},"ID":"none"}"#, false),
            (r#"[{"ipaddress":["192.0.2.1"],"ID":"1664386920"}]"#, false),
            (r#"{"ipaddress":["192.0.2.1"],"ID":"1664386920"} x"#, false),
            (r#"{"ipaddress":["192.0.2.1",1e400],"ID":"1664386920"}"#, false),
            (r#"{"x":1e400,"ipaddress":["192.0.2.1"],"ID":"1664386920"}"#, false),
            (r#"{"ipaddress":["192.0.2.1"],"ID":"1664386920","x":"\ud800"}"#, false),
        ];
        for &(body, usual) in cases {
            assert_eq!(reply::read(body.as_bytes()).is_some(), usual, "{body}");
            for status in [200, 400, 403, 404, 429, 503] {
                for cursor in [START_ID, 1664386920] {
                    let got = parse_reply(status, body.as_bytes(), Some("5"), cursor);
                    assert_eq!(got, parse_reply_general(status, body.as_bytes(), Some("5"), cursor), "{status} {body}");
                }
            }
        }
        let b = ok(r#"{"ipaddress":["192.0.2.\u0031","\u0032001:db8::1","::ffff:192.0.2.9"],"ID":"1664386920"}"#).unwrap();
        assert_eq!((b.v4, b.v6), (vec![0xc000_0201, 0xc000_0209], vec![0x2001_0db8 << 96 | 1]));
        // Invalid UTF-8 in a string is not JSON, whichever reader meets it.
        let bad = b"{\"ipaddress\":[\"192.0.2.1\xff\"],\"ID\":\"1664386920\"}";
        assert!(reply::read(bad).is_none());
        assert_eq!(parse_reply(200, bad, None, START_ID), Err(FeedError::BadReply("not JSON".into())));
    }
}
