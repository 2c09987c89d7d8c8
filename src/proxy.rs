//! The `proxy` parameter: the HTTP proxy the feed is reached through, as Kamailio's http_client
//! has `httpproxy`. Plain `http://` feeds are asked through it in absolute form (ureq does it);
//! `https://` feeds through a CONNECT tunnel that `Tunnel` opens, so that the request inside
//! it is in origin form (`POST /api/get`), as curl and browsers send it: ureq 2 writes the
//! absolute form inside a tunnel too, and a server that knows only the origin form answers 404.
//!
//! The credentials are secrets like the API key: no message, Debug or Display shows them, and
//! the password is redacted from every log line (log.rs).

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
    /// User and password, percent-decoded.
    pub credentials: Option<(String, String)>,
    /// The same, as ureq takes it; made here so that a value ureq would refuse stops the start.
    client: ureq::Proxy,
}

/// The value as an operator may see it: the credentials, if any, replaced by `***`.
pub fn masked(v: &str) -> String {
    let start = v.find("://").map_or(0, |i| i + 3);
    match v[start..].rfind('@') {
        Some(at) => format!("{}***{}", &v[..start], &v[start + at..]),
        None => v.to_string(),
    }
}

/// Parses `http://[user:password@]host:port`. Errors never contain the credentials.
pub fn parse(v: &str) -> Result<Proxy, String> {
    let shown = masked(v);
    if v.is_empty() {
        return Err("empty: leave the parameter out to reach the feed directly".into());
    }
    let rest = v.strip_prefix("http://").ok_or_else(|| {
        format!("'{shown}' must start with http:// (an HTTP proxy; HTTPS feeds go through it with CONNECT)")
    })?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    if hostport.contains(['/', '?', '#']) || hostport.contains(char::is_whitespace) {
        return Err(format!("'{shown}' is not http://[user:password@]host:port"));
    }
    if hostport.starts_with('[') {
        return Err(format!("'{shown}': an IPv6 address as proxy host is not supported; use a host name"));
    }
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| format!("'{shown}' has no port: write http://host:port"))?;
    let valid_host = |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if !valid_host(host) {
        return Err(format!("'{shown}' has no valid host name or address"));
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("'{shown}' has a bad port '{port}'")),
    };
    let credentials = match userinfo {
        None => None,
        Some(u) => {
            let (user, pass) = u
                .split_once(':')
                .ok_or_else(|| format!("'{shown}': credentials must be user:password"))?;
            let bad = || format!("'{shown}': bad %-escape in the credentials");
            let (user, pass) = (percent_decode(user).ok_or_else(bad)?, percent_decode(pass).ok_or_else(bad)?);
            // RFC 7617: the user-id of Basic credentials cannot hold a colon.
            if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) || pass.chars().any(char::is_control) {
                return Err(format!("'{shown}': the user name is empty or holds ':' or control characters"));
            }
            Some((user, pass))
        }
    };
    let text = match &credentials {
        // ureq splits the credentials at their first ':' and the host at the last '@'.
        Some((u, p)) => format!("http://{u}:{p}@{host}:{port}"),
        None => format!("http://{host}:{port}"),
    };
    let client = ureq::Proxy::new(text).map_err(|_| format!("'{shown}' is refused by the HTTP client"))?;
    Ok(Proxy { host: host.to_string(), port, credentials, client })
}

/// `%XX` escapes decoded (URL credentials); None when an escape is broken or the result is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Proxy {
    pub fn password(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(_, p)| p.as_str())
    }

    /// ureq's form of the proxy; it sends the credentials with the CONNECT of an HTTPS feed.
    pub fn client(&self) -> ureq::Proxy {
        self.client.clone()
    }

    /// `Proxy-Authorization` for the requests of a plain `http://` feed, which ureq sends to the
    /// proxy without one. Never for an `https://` feed: inside the tunnel it would reach the feed.
    pub fn authorization(&self) -> Option<String> {
        let (u, p) = self.credentials.as_ref()?;
        Some(format!("Basic {}", base64(format!("{u}:{p}").as_bytes())))
    }
}

/// Shows where the proxy is, never who logs in.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let creds = if self.credentials.is_some() { "***@" } else { "" };
        write!(f, "http://{creds}{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({self})")
    }
}

/// Standard base64 with padding (RFC 4648), for Basic credentials: a dozen lines against a crate.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_opens_on_2xx_and_is_refused_otherwise() {
        struct Fake {
            reply: io::Cursor<Vec<u8>>,
            sent: Vec<u8>,
        }
        impl Read for Fake {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                self.reply.read(b)
            }
        }
        impl Write for Fake {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.sent.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let fake = |r: &str| Fake { reply: io::Cursor::new(r.as_bytes().to_vec()), sent: Vec::new() };
        let mut ok = fake("HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\n\x16\x03TLS");
        open_tunnel(&mut ok, "apiban.org:443", Some("Basic dTpw")).unwrap();
        assert_eq!(String::from_utf8(ok.sent).unwrap(), "CONNECT apiban.org:443 HTTP/1.1\r\nHost: apiban.org:443\r\nProxy-Authorization: Basic dTpw\r\n\r\n");
        // What follows the blank line is left for TLS.
        let mut rest = Vec::new();
        ok.reply.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"\x16\x03TLS");
        assert!(matches!(open_tunnel(&mut fake("HTTP/1.1 407 Auth\r\n\r\n"), "h:443", None), Err(TunnelError::Refused)));
        let e = open_tunnel(&mut fake("HTTP/1.0 403 Forbidden\r\n\r\n"), "h:443", None).unwrap_err();
        assert_eq!(e.to_string(), "the proxy did not open a tunnel to the feed: it answered 403");
        assert!(matches!(open_tunnel(&mut fake("HTTP/1.1 200 OK\r\n"), "h:443", None), Err(TunnelError::NotOpened(_))));
        assert!(matches!(open_tunnel(&mut fake("garbage\r\n\r\n"), "h:443", None), Err(TunnelError::NotOpened(_))));
    }

    #[test]
    fn good_proxies() {
        let p = parse("http://proxy.example.net:3128").unwrap();
        assert_eq!((p.host.as_str(), p.port, p.credentials.is_none()), ("proxy.example.net", 3128, true));
        assert_eq!(p.authorization(), None);
        let p = parse("http://carrier:s3cr%40t:x@10.0.0.1:8080/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("10.0.0.1", 8080));
        assert_eq!(p.credentials, Some(("carrier".into(), "s3cr@t:x".into())));
    }

    #[test]
    fn bad_proxies_are_refused_without_showing_credentials() {
        for v in [
            "",
            "proxy:3128",
            "https://proxy:3128",
            "socks5://proxy:1080",
            "http://proxy",
            "http://proxy:0",
            "http://proxy:99999",
            "http://:3128",
            "http://pr oxy:3128",
            "http://proxy:3128/path",
            "http://[::1]:3128",
            "http://user:SECRETPW@proxy",
            "http://SECRETPW@proxy:3128",
            "http://:SECRETPW@proxy:3128",
            "http://user:SECRETPW%zz@proxy:3128",
        ] {
            let e = parse(v).unwrap_err();
            assert!(!e.contains("SECRETPW"), "{v}: {e}");
            assert!(!e.is_empty());
        }
        assert!(parse("http://user:SECRETPW@proxy").unwrap_err().contains("'http://***@proxy' has no port"));
    }

    #[test]
    fn display_and_debug_hide_the_credentials() {
        let p = parse("http://carrier:SECRETPW@proxy:3128").unwrap();
        assert_eq!(p.to_string(), "http://***@proxy:3128");
        assert_eq!(format!("{p:?}"), "Proxy(http://***@proxy:3128)");
        assert_eq!(masked("carrier:SECRETPW@proxy:3128"), "***@proxy:3128");
        assert_eq!(masked("http://proxy:3128"), "http://proxy:3128");
    }

    #[test]
    fn basic_credentials_as_rfc_7617_spells_them() {
        let p = parse("http://Aladdin:open%20sesame@proxy:3128").unwrap();
        assert_eq!(p.authorization().unwrap(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}

/// A CONNECT tunnel through the proxy, then TLS to the feed inside it. Given to ureq as its TLS
/// connector for an `https://` feed behind a proxy: ureq connects to the proxy (the feed's
/// resolver points there) and thinks it speaks to the feed directly, so it sends the origin
/// form.
pub struct Tunnel {
    /// `host:port` of the feed.
    pub target: String,
    /// `Proxy-Authorization` for the CONNECT only; it never enters the tunnel.
    pub authorization: Option<String>,
    pub tls: Arc<rustls::ClientConfig>,
}

/// Why a tunnel did not open, told apart from the feed's own errors (feed.rs reads it).
#[derive(Debug)]
pub enum TunnelError {
    /// 407 (or 401): the proxy wants credentials, or other ones.
    Refused,
    /// Any other answer to the CONNECT, or none.
    NotOpened(String),
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelError::Refused => write!(f, "the proxy refused the tunnel: credentials missing or wrong"),
            TunnelError::NotOpened(why) => write!(f, "the proxy did not open a tunnel to the feed: {why}"),
        }
    }
}

impl std::error::Error for TunnelError {}

/// The most a proxy's answer to CONNECT may hold before its blank line.
const MAX_CONNECT_REPLY: usize = 16 * 1024;

/// Sends CONNECT and reads the proxy's answer up to its blank line (byte by byte: what follows
/// belongs to TLS). Ok: the tunnel is open.
fn open_tunnel(io: &mut (impl Read + Write + ?Sized), target: &str, authorization: Option<&str>) -> Result<(), TunnelError> {
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(a) = authorization {
        head.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    let io_err = |e: io::Error| TunnelError::NotOpened(format!("{} ({})", e.kind(), e));
    io.write_all(head.as_bytes()).and_then(|_| io.flush()).map_err(io_err)?;
    let mut reply = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n\r\n") {
        if reply.len() >= MAX_CONNECT_REPLY {
            return Err(TunnelError::NotOpened("its answer has no end".into()));
        }
        match io.read(&mut byte).map_err(io_err)? {
            0 => return Err(TunnelError::NotOpened("it closed the connection".into())),
            _ => reply.push(byte[0]),
        }
    }
    let line = String::from_utf8_lossy(reply.split(|&b| b == b'\r').next().unwrap_or_default()).into_owned();
    let status = line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(()),
        Some(401 | 407) => Err(TunnelError::Refused),
        Some(code) => Err(TunnelError::NotOpened(format!("it answered {code}"))),
        None => Err(TunnelError::NotOpened("its answer is not HTTP".into())),
    }
}

impl ureq::TlsConnector for Tunnel {
    fn connect(&self, dns_name: &str, mut io: Box<dyn ureq::ReadWrite>) -> Result<Box<dyn ureq::ReadWrite>, ureq::Error> {
        open_tunnel(&mut io, &self.target, self.authorization.as_deref())
            .map_err(|e| ureq::Error::from(io::Error::other(e)))?;
        ureq::TlsConnector::connect(&self.tls, dns_name, io)
    }
}
