//! The allow-list: addresses the feed may list but that are never reported as listed.
//! Consulted only after a table hit, so clean traffic never pays for it.

use crate::addr::Key;
use ipnet::IpNet;

#[derive(Clone, Debug, Default)]
pub struct AllowList {
    rules: Vec<(IpNet, String)>,
}

impl AllowList {
    pub fn new(rules: Vec<(IpNet, String)>) -> AllowList {
        AllowList { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The rule that allows `key`, if any: its text says where it came from.
    pub fn find(&self, key: Key) -> Option<&str> {
        let ip = key.to_ip();
        self.rules.iter().find(|(net, _)| net.contains(&ip)).map(|(_, why)| why.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::parse_text;
    use crate::config::parse_cidr;

    #[test]
    fn ranges_and_hosts_of_both_families() {
        let a = AllowList::new(vec![
            (parse_cidr("192.0.2.0/24").unwrap(), "allow 192.0.2.0/24".into()),
            (parse_cidr("2001:db8::1").unwrap(), "allow 2001:db8::1".into()),
        ]);
        let k = |s: &str| parse_text(s.as_bytes()).unwrap();
        assert_eq!(a.find(k("192.0.2.200")), Some("allow 192.0.2.0/24"));
        assert_eq!(a.find(k("::ffff:192.0.2.9")), Some("allow 192.0.2.0/24"));
        assert_eq!(a.find(k("192.0.3.1")), None);
        assert_eq!(a.find(k("2001:db8::1")), Some("allow 2001:db8::1"));
        assert_eq!(a.find(k("2001:db8::2")), None);
    }

    #[test]
    fn an_ipv4_mapped_rule_matches_the_ipv4_sources_it_maps() {
        let a = AllowList::new(vec![(parse_cidr("::ffff:192.0.2.0/120").unwrap(), "allow ::ffff:192.0.2.0/120".into())]);
        let k = |s: &str| parse_text(s.as_bytes()).unwrap();
        assert_eq!(a.find(k("192.0.2.9")), Some("allow ::ffff:192.0.2.0/120"));
        assert_eq!(a.find(k("::ffff:192.0.2.10")), Some("allow ::ffff:192.0.2.0/120"));
        assert_eq!(a.find(k("192.0.3.1")), None);
        assert_eq!(parse_cidr("::ffff:10.1.2.3"), parse_cidr("10.1.2.3/32"));
    }
}
