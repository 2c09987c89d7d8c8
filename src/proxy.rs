//! The `proxy` parameter: the HTTP proxy the feed is reached through, as Kamailio's http_client
//! has `httpproxy`. Plain `http://` feeds are asked through it in absolute form, `https://` feeds
//! through a CONNECT tunnel (ureq does both).
//!
//! The credentials are secrets like the API key: no message, Debug or Display shows them, and
//! the password is redacted from every log line (log.rs).

use std::fmt;

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
