//! Module parameters: parsed and checked as the operator sets them, then checked together at
//! mod_init. Every message names the parameter and says what is wrong with the value; none
//! ever contains the API key.

use crate::fleet::RedisTarget;
use ipnet::IpNet;
use std::path::PathBuf;

pub const DEFAULT_URL: &str = "https://apiban.org";

/// `rate_limit`: at most `max` requests in any `window_secs` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub max: u32,
    pub window_secs: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub apikey: Option<String>,
    pub apikey_file: Option<PathBuf>,
    pub url: String,
    pub api_version: u8,
    pub set: String,
    /// Seconds between incremental pulls.
    pub interval: u64,
    pub max_entries: usize,
    /// Connect and read timeout of one request, seconds; a whole request gets twice this.
    pub timeout: u64,
    pub rate_limit: RateLimit,
    pub snapshot_file: Option<PathBuf>,
    /// Seconds an entry stays listed after the batch that listed it.
    pub ttl: u64,
    /// Seconds between full pulls that rebuild the table from scratch.
    pub full_resync: u64,
    pub allow: Vec<(IpNet, String)>,
    pub allow_file: Option<PathBuf>,
    /// A PEM bundle trusted beside the system's store.
    pub ca_file: Option<PathBuf>,
    /// The HTTP proxy the feed is reached through.
    pub proxy: Option<crate::proxy::Proxy>,
    /// Fleet mode: the Redis the fleet shares. None: standalone, as before.
    pub redis_url: Option<RedisTarget>,
    /// The fleet's namespace in Redis.
    pub redis_prefix: String,
    /// This node's name in Redis and stats; the host name when unset (filled in by finish).
    pub node_id: Option<String>,
    /// Seconds a leader's lease lasts without renewal.
    pub leader_ttl: u64,
    /// Seconds of Redis trouble after which a node pulls APIBAN on its own; 0 = never.
    pub fleet_fallback: u64,
    /// Local bans and exemptions in force at most; the oldest are evicted beyond it.
    pub max_bans: usize,
    /// Seconds a local ban lasts when the call gives no ttl.
    pub ban_ttl: u64,
    /// The longest ttl a local ban may have.
    pub ban_max_ttl: u64,
    /// The tables in huge pages (`MAP_HUGETLB`) when the operator reserved them.
    pub huge_pages: bool,
}

/// The parameters after mod_init's checks: the key resolved, the allow-list complete.
#[derive(Clone, Debug)]
pub struct Settings {
    pub key: String,
    pub cfg: Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            apikey: None,
            apikey_file: None,
            url: DEFAULT_URL.into(),
            api_version: 2,
            set: "sip".into(),
            interval: 300,
            max_entries: 1_000_000,
            timeout: 10,
            rate_limit: RateLimit { max: 11, window_secs: 120 },
            snapshot_file: None,
            ttl: 7 * 86400,
            full_resync: 86400,
            allow: Vec::new(),
            allow_file: None,
            ca_file: None,
            proxy: None,
            redis_url: None,
            redis_prefix: "apiban".into(),
            node_id: None,
            leader_ttl: 30,
            fleet_fallback: 900,
            max_bans: 10_000,
            ban_ttl: 3600,
            ban_max_ttl: 7 * 86400,
            huge_pages: false,
        }
    }
}

/// Upper bound of max_bans: the ban records alone reserve 384 bytes each.
const MAX_BANS_CAP: usize = 1_000_000;

/// Upper bound of max_entries whatever the memory: 214 bytes of reservation per entry.
const MAX_ENTRIES_CAP: usize = 100_000_000;

fn err(name: &str, what: String) -> String {
    format!("parameter '{name}': {what}")
}

/// Seconds, optionally with a unit: 90, 90s, 5m, 2h, 7d.
pub fn parse_seconds(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = match v.char_indices().last()? {
        (i, 's') => (&v[..i], 1),
        (i, 'm') => (&v[..i], 60),
        (i, 'h') => (&v[..i], 3600),
        (i, 'd') => (&v[..i], 86400),
        _ => (v, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn seconds(name: &str, v: &str, min: u64, max: u64) -> Result<u64, String> {
    match parse_seconds(v) {
        None => Err(err(name, format!("'{v}' is not a number of seconds (e.g. 300, 5m, 7d)"))),
        Some(n) if n < min => Err(err(name, format!("{n} is too small: at least {min} second(s)"))),
        Some(n) if n > max => Err(err(name, format!("{n} is too large: at most {max} seconds"))),
        Some(n) => Ok(n),
    }
}

fn path(name: &str, v: &str) -> Result<PathBuf, String> {
    if v.trim().is_empty() {
        return Err(err(name, "empty path".into()));
    }
    Ok(PathBuf::from(v.trim()))
}

/// An address or a CIDR range; a bare address is a host route. An IPv4-mapped IPv6 range
/// (`::ffff:192.0.2.0/120`) is the IPv4 range it maps, since a mapped source is looked up as
/// IPv4; a range that covers mapped and other IPv6 addresses at once is refused.
pub fn parse_cidr(v: &str) -> Option<IpNet> {
    let v = v.trim();
    let net = match v.parse::<IpNet>() {
        Ok(n) => n.trunc(),
        Err(_) => crate::addr::parse_text(v.as_bytes()).map(|k| IpNet::from(k.to_ip()))?,
    };
    let mapped = std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0);
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 && n.network().to_ipv4_mapped().is_some() => {
            let v4 = n.network().to_ipv4_mapped()?;
            ipnet::Ipv4Net::new(v4, n.prefix_len() - 96).ok().map(IpNet::V4)
        }
        IpNet::V6(n) if n.prefix_len() > 0 && n.contains(&mapped) => None,
        _ => Some(net),
    }
}

fn check_url(v: &str) -> Result<String, String> {
    let v = v.trim();
    // Trailing slashes go, but not those of a bare scheme, so its message stays readable.
    let v = if v.ends_with("://") { v } else { v.trim_end_matches('/') };
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"))
        .ok_or_else(|| err("url", format!("'{v}' must start with https:// or http://")))?;
    let host = rest.split('/').next().unwrap_or("");
    let host_only = if host.starts_with('[') {
        host.split(']').next().unwrap_or("").trim_start_matches('[')
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    if host_only.is_empty()
        || host.contains('@')
        || rest.contains(|c: char| c.is_whitespace() || c == '?' || c == '#')
    {
        return Err(err("url", format!("'{v}' is not a base URL like https://apiban.org")));
    }
    if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(err("url", format!("'{v}' has a bad port '{port}'")));
        }
    }
    Ok(v.to_string())
}

impl Config {
    /// Sets one parameter from its text. Called once per modparam line.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let v = value.trim();
        match name {
            "apikey" => {
                if v.is_empty() || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return Err(err(name, "empty or contains blanks or control characters".into()));
                }
                if self.apikey.is_some() {
                    return Err(err(name, "set twice".into()));
                }
                self.apikey = Some(v.to_string());
            }
            "apikey_file" => self.apikey_file = Some(path(name, v)?),
            "url" => self.url = check_url(v)?,
            "api_version" => {
                self.api_version = match v {
                    "1" => 1,
                    "2" => 2,
                    _ => return Err(err(name, format!("'{v}' is not a supported API version (1 or 2)"))),
                }
            }
            "set" => {
                if !matches!(v, "sip" | "http" | "all") {
                    return Err(err(name, format!("'{v}' is not an APIBAN set (sip, http or all)")));
                }
                self.set = v.to_string();
            }
            "interval" => self.interval = seconds(name, v, 1, 7 * 86400)?,
            "timeout" => self.timeout = seconds(name, v, 1, 300)?,
            "ttl" => self.ttl = seconds(name, v, 60, 365 * 86400)?,
            "full_resync" => self.full_resync = seconds(name, v, 60, 365 * 86400)?,
            "max_entries" => {
                let n: usize = v
                    .parse()
                    .map_err(|_| err(name, format!("'{v}' is not a number of entries")))?;
                if n == 0 {
                    return Err(err(name, "must be at least 1".into()));
                }
                if n > MAX_ENTRIES_CAP {
                    return Err(err(name, format!("{n} is beyond the limit of {MAX_ENTRIES_CAP}")));
                }
                self.max_entries = n;
            }
            "rate_limit" => {
                let parsed = v.split_once('/').and_then(|(n, w)| Some((n.trim().parse::<u32>().ok()?, parse_seconds(w)?)));
                match parsed {
                    Some((n, w)) if n >= 1 && w >= 1 => self.rate_limit = RateLimit { max: n, window_secs: w },
                    _ => return Err(err(name, format!("'{v}' is not REQUESTS/SECONDS like 11/120"))),
                }
            }
            "snapshot_file" => self.snapshot_file = Some(path(name, v)?),
            "allow" => {
                let net = parse_cidr(v).ok_or_else(|| err(name, format!("'{v}' is not an address or CIDR range")))?;
                self.allow.push((net, format!("allow {v}")));
            }
            "allow_file" => self.allow_file = Some(path(name, v)?),
            "ca_file" => self.ca_file = Some(path(name, v)?),
            "proxy" => self.proxy = Some(crate::proxy::parse(v).map_err(|e| err(name, e))?),
            "redis_url" => self.redis_url = Some(RedisTarget::parse(v)?),
            "redis_prefix" => self.redis_prefix = fleet_name(name, v)?,
            "node_id" => self.node_id = Some(fleet_name(name, v)?),
            "leader_ttl" => self.leader_ttl = seconds(name, v, 2, 3600)?,
            "fleet_fallback" => self.fleet_fallback = seconds(name, v, 0, 30 * 86400)?,
            "max_bans" => {
                let n: usize = v.parse().map_err(|_| err(name, format!("'{v}' is not a number of bans")))?;
                if !(1..=MAX_BANS_CAP).contains(&n) {
                    return Err(err(name, format!("{n} is not between 1 and {MAX_BANS_CAP}")));
                }
                self.max_bans = n;
            }
            "ban_ttl" => self.ban_ttl = seconds(name, v, 1, 365 * 86400)?,
            "ban_max_ttl" => self.ban_max_ttl = seconds(name, v, 1, 365 * 86400)?,
            "huge_pages" => {
                self.huge_pages = match v {
                    "0" => false,
                    "1" => true,
                    _ => return Err(err(name, format!("'{v}' is not 0 (off) or 1 (on)"))),
                }
            }
            _ => return Err(format!("unknown parameter '{name}'")),
        }
        Ok(())
    }

    /// Checks the parameters together and reads the files they name.
    pub fn finish(mut self, phys_mem: Option<u64>) -> Result<Settings, String> {
        let key = match (&self.apikey, &self.apikey_file) {
            (Some(_), Some(_)) => return Err(err("apikey_file", "set together with apikey: use one of them".into())),
            (Some(k), None) => k.clone(),
            (None, Some(p)) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| err("apikey_file", format!("cannot read {}: {e}", p.display())))?;
                let k = text.trim();
                if k.is_empty() || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return Err(err("apikey_file", format!("{} holds no single key", p.display())));
                }
                k.to_string()
            }
            (None, None) => String::new(),
        };
        if key.is_empty() && self.url == DEFAULT_URL {
            return Err(err("apikey", "no API key: set apikey or apikey_file (keys are free at apiban.org)".into()));
        }
        if let Some(mem) = phys_mem {
            // Worst case both generations of both families full: 2 × (64 / 3 + 64 × 4 / 3)
            // bytes (src/table.rs: IPv4 3 entries per 64-byte bucket, IPv6 4 buckets per 3).
            let need = self.max_entries as u64 * 214;
            if need > mem {
                return Err(err(
                    "max_entries",
                    format!("{} entries may need {} MB, more than this machine's {} MB", self.max_entries, need >> 20, mem >> 20),
                ));
            }
        }
        if let Some(p) = &self.allow_file {
            let text = std::fs::read_to_string(p)
                .map_err(|e| err("allow_file", format!("cannot read {}: {e}", p.display())))?;
            for (i, line) in text.lines().enumerate() {
                let l = line.split('#').next().unwrap_or("").trim();
                if l.is_empty() {
                    continue;
                }
                let net = parse_cidr(l).ok_or_else(|| {
                    err("allow_file", format!("{} line {}: '{l}' is not an address or CIDR range", p.display(), i + 1))
                })?;
                self.allow.push((net, format!("allow_file {}:{} {l}", p.display(), i + 1)));
            }
        }
        if self.ban_ttl > self.ban_max_ttl {
            return Err(err("ban_ttl", format!("{} s is longer than ban_max_ttl ({} s)", self.ban_ttl, self.ban_max_ttl)));
        }
        self.check_ca_file()?;
        self.check_fleet()?;
        Ok(Settings { key, cfg: self })
    }

    /// `ca_file` must be readable and hold certificates now: a typo there would otherwise show
    /// only as TLS errors at the first pull. The refresher reads it again when it builds its client.
    fn check_ca_file(&self) -> Result<(), String> {
        match &self.ca_file {
            Some(p) => crate::tls::read_bundle(p).map(|_| ()).map_err(|e| err("ca_file", e)),
            None => Ok(()),
        }
    }

    /// Fleet mode's parameters together: the node's name defaults to the host name, and a node
    /// does not fall back to pulling alone before a lease could have changed hands.
    fn check_fleet(&mut self) -> Result<(), String> {
        if self.redis_url.is_none() {
            return Ok(());
        }
        if self.node_id.is_none() {
            let host = crate::os::host_name().ok_or_else(|| err("node_id", "not set and the host name cannot be read: set node_id".into()))?;
            self.node_id = Some(fleet_name("node_id", &host).map_err(|e| format!("{e} (the host name): set node_id"))?);
        }
        // A request lasts at most 2 × timeout and each Redis call at most timeout: a shorter
        // lease could lapse while its holder is still inside a request it was right to send.
        if self.leader_ttl < 3 * self.timeout {
            return Err(err(
                "leader_ttl",
                format!("{} s is shorter than 3 × timeout ({} s): a lease must outlast a request and a Redis call", self.leader_ttl, 3 * self.timeout),
            ));
        }
        if self.fleet_fallback != 0 && self.fleet_fallback < self.leader_ttl {
            return Err(err(
                "fleet_fallback",
                format!("{} s is shorter than leader_ttl ({} s): use 0 (never) or at least leader_ttl", self.fleet_fallback, self.leader_ttl),
            ));
        }
        Ok(())
    }
}

/// `redis_prefix` and `node_id`: printable ASCII without blanks, at most 64 characters, so that
/// keys and lease values stay readable in redis-cli and stats.
fn fleet_name(name: &str, v: &str) -> Result<String, String> {
    if v.is_empty() || v.len() > 64 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err(name, format!("'{}' must be 1 to 64 printable characters without blanks", v.escape_debug())));
    }
    Ok(v.to_string())
}


#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let mut c = Config::default();
        for (n, v) in pairs {
            c.set(n, v)?;
        }
        Ok(c)
    }

    #[test]
    fn local_ban_parameters_and_their_bound_together() {
        let c = set(&[("max_bans", "500"), ("ban_ttl", "30m"), ("ban_max_ttl", "2d")]).unwrap();
        assert_eq!((c.max_bans, c.ban_ttl, c.ban_max_ttl), (500, 1800, 172_800));
        assert!(set(&[("max_bans", "0")]).unwrap_err().contains("'max_bans'"));
        assert!(set(&[("max_bans", "1000001")]).unwrap_err().contains("between 1 and 1000000"));
        assert!(set(&[("ban_ttl", "0")]).unwrap_err().contains("'ban_ttl'"));
        let e = set(&[("apikey", "k"), ("ban_ttl", "2d"), ("ban_max_ttl", "1d")]).unwrap().finish(None).unwrap_err();
        assert_eq!(e, "parameter 'ban_ttl': 172800 s is longer than ban_max_ttl (86400 s)");
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!((c.url.as_str(), c.api_version, c.set.as_str(), c.interval), (DEFAULT_URL, 2, "sip", 300));
        assert_eq!((c.rate_limit, c.ttl, c.full_resync, c.timeout), (RateLimit { max: 11, window_secs: 120 }, 604800, 86400, 10));
    }

    #[test]
    fn good_values() {
        let c = set(&[
            ("apikey", "abc123"),
            ("url", "http://127.0.0.1:8080/"),
            ("api_version", "1"),
            ("set", "all"),
            ("interval", "1"),
            ("ttl", "7d"),
            ("max_entries", "5000"),
            ("rate_limit", "100/1"),
            ("allow", "10.0.0.0/8"),
            ("allow", "2001:db8::1"),
        ])
        .unwrap();
        assert_eq!(c.url, "http://127.0.0.1:8080");
        assert_eq!((c.api_version, c.interval, c.ttl, c.max_entries, c.rate_limit), (1, 1, 604800, 5000, RateLimit { max: 100, window_secs: 1 }));
        assert_eq!(c.allow.len(), 2);
        assert!(!c.huge_pages && set(&[("huge_pages", "1")]).unwrap().huge_pages);
        let s = c.finish(None).unwrap();
        assert_eq!(s.key, "abc123");
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (n, v) in [
            ("interval", "abc"),
            ("interval", "0"),
            ("interval", "-5"),
            ("timeout", "0"),
            ("url", "ftp://x"),
            ("url", "https://"),
            ("url", "https://a b"),
            ("url", "http://h:99999"),
            ("api_version", "3"),
            ("set", "voip"),
            ("max_entries", "0"),
            ("max_entries", "lots"),
            ("max_entries", "1000000000000"),
            ("rate_limit", "11"),
            ("rate_limit", "0/120"),
            ("allow", "10.0.0.0/33"),
            ("huge_pages", "yes"),
            ("huge_pages", "2"),
            ("allow", "example.com"),
            ("allow", "::ffff:0:0/90"),
            ("apikey", ""),
            ("apikey", "a b"),
        ] {
            let e = set(&[(n, v)]).unwrap_err();
            assert!(e.contains(&format!("'{n}'")), "{n}={v}: {e}");
        }
        assert!(set(&[("nosuch", "1")]).unwrap_err().contains("unknown parameter 'nosuch'"));
    }

    #[test]
    fn fleet_parameters() {
        let c = Config::default();
        assert_eq!((c.redis_url.is_none(), c.redis_prefix.as_str(), c.leader_ttl, c.fleet_fallback), (true, "apiban", 30, 900));
        let s = set(&[
            ("apikey", "k1234"),
            ("redis_url", "redis://:s3cret@127.0.0.1:6390/2"),
            ("redis_prefix", "pop1:apiban"),
            ("node_id", "proxy-a"),
            ("leader_ttl", "3"),
            ("timeout", "1"),
            ("fleet_fallback", "0"),
        ])
        .unwrap()
        .finish(None)
        .unwrap();
        assert_eq!(s.cfg.redis_url.as_ref().unwrap().password.as_deref(), Some("s3cret"));
        assert_eq!((s.cfg.node_id.as_deref(), s.cfg.leader_ttl, s.cfg.fleet_fallback), (Some("proxy-a"), 3, 0));
        // Debug output (and so any accidental log of the config) never shows the password.
        assert!(!format!("{:?}", s.cfg).contains("s3cret"));
        // node_id defaults to the host name.
        let s = set(&[("apikey", "k1234"), ("redis_url", "redis://127.0.0.1")]).unwrap().finish(None).unwrap();
        assert!(!s.cfg.node_id.unwrap().is_empty());
        // Standalone: no node_id is made up.
        assert!(set(&[("apikey", "k1234")]).unwrap().finish(None).unwrap().cfg.node_id.is_none());
        for (n, v) in [
            ("redis_url", "http://127.0.0.1"),
            ("redis_url", "redis://:s3cret@h:0"),
            ("redis_prefix", ""),
            ("redis_prefix", "a b"),
            ("node_id", "x".repeat(65).as_str()),
            ("leader_ttl", "1"),
            ("leader_ttl", "2h"),
            ("fleet_fallback", "soon"),
        ] {
            let e = set(&[(n, v)]).unwrap_err();
            assert!(e.contains(&format!("'{n}'")) && !e.contains("s3cret"), "{n}={v}: {e}");
        }
        let e = set(&[("apikey", "k1234"), ("redis_url", "redis://h"), ("leader_ttl", "60"), ("fleet_fallback", "30")])
            .unwrap()
            .finish(None)
            .unwrap_err();
        assert!(e.contains("'fleet_fallback'"), "{e}");
        let e = set(&[("apikey", "k1234"), ("redis_url", "redis://h"), ("leader_ttl", "20"), ("timeout", "10")])
            .unwrap()
            .finish(None)
            .unwrap_err();
        assert!(e.contains("'leader_ttl'") && e.contains("3 × timeout (30 s)"), "{e}");
    }

    #[test]
    fn checks_together() {
        let e = set(&[]).unwrap().finish(None).unwrap_err();
        assert!(e.contains("'apikey'") && e.contains("no API key"), "{e}");
        let e = set(&[("apikey", "k1234"), ("apikey_file", "/nonexistent")]).unwrap().finish(None).unwrap_err();
        assert!(e.contains("'apikey_file'"), "{e}");
        let e = set(&[("apikey_file", "/nonexistent/key")]).unwrap().finish(None).unwrap_err();
        assert!(e.contains("'apikey_file'") && e.contains("cannot read"), "{e}");
        let e = set(&[("apikey", "k1234"), ("max_entries", "90000000")]).unwrap().finish(Some(1 << 30)).unwrap_err();
        assert!(e.contains("'max_entries'"), "{e}");
        // No key is fine with a feed of one's own.
        assert!(set(&[("url", "http://127.0.0.1:9")]).unwrap().finish(None).is_ok());
    }

    #[test]
    fn files_are_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("apiban-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "  secretkey42\n").unwrap();
        let allow = dir.join("allow");
        std::fs::write(&allow, "# office\n192.0.2.0/24\n\n2001:db8::/32 # lab\n").unwrap();
        let s = set(&[("apikey_file", key.to_str().unwrap()), ("allow_file", allow.to_str().unwrap())])
            .unwrap()
            .finish(None)
            .unwrap();
        assert_eq!(s.key, "secretkey42");
        assert_eq!(s.cfg.allow.len(), 2);
        std::fs::write(&allow, "192.0.2.0/24\nbogus\n").unwrap();
        let e = set(&[("apikey", "k1234"), ("allow_file", allow.to_str().unwrap())]).unwrap().finish(None).unwrap_err();
        assert!(e.contains("'allow_file'") && e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ca_file_is_read_at_start() {
        let e = set(&[("url", "http://127.0.0.1:9"), ("ca_file", "/nonexistent/ca.pem")]).unwrap().finish(None).unwrap_err();
        assert!(e.starts_with("parameter 'ca_file': cannot read /nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("apiban-cfg-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let e = set(&[("url", "http://127.0.0.1:9"), ("ca_file", empty.to_str().unwrap())]).unwrap().finish(None).unwrap_err();
        assert!(e.starts_with("parameter 'ca_file': ") && e.contains("holds no certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(set(&[("ca_file", "")]).unwrap_err().contains("'ca_file': empty path"));
        // The system's own bundle is a valid ca_file, where the machine has one.
        if let Some(p) = crate::tls::system_bundle(None, |p| p.exists()) {
            let s = set(&[("url", "http://127.0.0.1:9"), ("ca_file", p.to_str().unwrap())]).unwrap().finish(None).unwrap();
            assert_eq!(s.cfg.ca_file, Some(p));
        }
    }

    #[test]
    fn proxy_is_checked_and_its_password_never_shown() {
        let c = set(&[("proxy", "http://carrier:PW-s3cret@proxy.example.net:3128")]).unwrap();
        let p = c.proxy.as_ref().unwrap();
        assert_eq!((p.host.as_str(), p.port, p.password()), ("proxy.example.net", 3128, Some("PW-s3cret")));
        assert!(!format!("{c:?}").contains("PW-s3cret"));
        for v in ["", "proxy:3128", "https://proxy:3128", "http://carrier:PW-s3cret@proxy", "http://proxy:0"] {
            let e = set(&[("proxy", v)]).unwrap_err();
            assert!(e.starts_with("parameter 'proxy': ") && !e.contains("PW-s3cret"), "{v}: {e}");
        }
    }

    #[test]
    fn seconds_with_units() {
        assert_eq!(parse_seconds("90"), Some(90));
        assert_eq!(parse_seconds("5m"), Some(300));
        assert_eq!(parse_seconds("2h"), Some(7200));
        assert_eq!(parse_seconds("7d"), Some(604800));
        assert_eq!(parse_seconds("m"), None);
        assert_eq!(parse_seconds("1.5"), None);
    }

    /// The shims register exactly the names of APIBAN_PARAMS in c-shim/apiban.h: each must be
    /// one the core knows, and each one the core knows (an arm of `set`) must be registered.
    /// No count to keep: a parameter added to one side and not the other fails here.
    #[test]
    fn the_shims_register_every_parameter_the_core_knows() {
        let header = include_str!("../c-shim/apiban.h");
        let list = header.split("#define APIBAN_PARAMS(X)").nth(1).unwrap().split("\n\n").next().unwrap();
        let mut names: Vec<&str> = list.split("X(").skip(1).map(|s| s.split(')').next().unwrap()).collect();
        for n in &names {
            let e = Config::default().set(n, "").err().unwrap_or_default();
            assert!(!e.contains("unknown parameter"), "{n}: {e}");
        }
        let source = include_str!("config.rs");
        let body = source.split("pub fn set(&mut self").nth(1).unwrap().split("unknown parameter").next().unwrap();
        let mut known: Vec<&str> = body
            .lines()
            // The arms of set's own match, one indentation level in (12 spaces), not nested ones.
            .filter(|l| l.len() - l.trim_start().len() == 12)
            .filter_map(|l| l.trim().strip_prefix('"')?.split_once("\" =>").map(|(n, _)| n))
            .collect();
        names.sort();
        known.sort();
        assert!(!known.is_empty());
        assert_eq!(names, known, "APIBAN_PARAMS in c-shim/apiban.h and Config::set differ");
    }
}
