//! Addresses as the table keys them: IPv4 as u32, IPv6 as u128, v4-mapped IPv6 as IPv4.
//! Parsing never allocates: it runs on the lookup path for `apiban_check("$var")`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    V4(u32),
    V6(u128),
}

impl Key {
    pub fn from_ip(ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(a) => Key::V4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Key::V4(u32::from(v4)),
                None => Key::V6(u128::from(a)),
            },
        }
    }

    pub fn to_ip(self) -> IpAddr {
        match self {
            Key::V4(a) => IpAddr::V4(Ipv4Addr::from(a)),
            Key::V6(a) => IpAddr::V6(Ipv6Addr::from(a)),
        }
    }

    /// Raw network-order bytes as hosts keep them: 4 for IPv4, 16 for IPv6.
    pub fn from_bytes(b: &[u8]) -> Option<Key> {
        match b.len() {
            4 => Some(Key::V4(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                Some(Key::from_ip(IpAddr::V6(Ipv6Addr::from(a))))
            }
            _ => None,
        }
    }
}

/// Parses an address as a script or an operator writes it: surrounding blanks ignored,
/// IPv6 with or without `[]`. Anything else (ports, ranges, names) is not an address.
pub fn parse_text(bytes: &[u8]) -> Option<Key> {
    let t = bytes.trim_ascii();
    // What `$si` or a header gives for an IPv4 source: one pass of a few instructions a byte,
    // where the general parser below costs several hundred instructions.
    match parse_v4(t) {
        Some(a) => Some(Key::V4(a)),
        None => parse_general(t),
    }
}

/// Dotted-quad IPv4 exactly as `std` accepts it, in one pass: four decimal octets of at most
/// 255, no empty octet, no leading zero (so that nothing is read as octal by one program and
/// decimal by another). `None` for anything else, which the general parser then sees.
fn parse_v4(t: &[u8]) -> Option<u32> {
    if t.len() < 7 || t.len() > 15 {
        return None;
    }
    let (mut addr, mut n, mut digits, mut dots) = (0u32, 0u32, 0u32, 0u32);
    for &c in t {
        let d = c.wrapping_sub(b'0');
        if d < 10 {
            if digits == 3 || (digits == 1 && n == 0) {
                return None;
            }
            n = n * 10 + d as u32;
            digits += 1;
        } else if c == b'.' && digits != 0 && n <= 255 && dots < 3 {
            addr = addr << 8 | n;
            (n, digits) = (0, 0);
            dots += 1;
        } else {
            return None;
        }
    }
    (dots == 3 && digits != 0 && n <= 255).then_some(addr << 8 | n)
}

fn parse_general(t: &[u8]) -> Option<Key> {
    let s = std::str::from_utf8(t).ok()?;
    let s = match s.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']')?,
        None => s,
    };
    if s.is_empty() || s.len() > 45 {
        return None;
    }
    s.parse::<IpAddr>().ok().map(Key::from_ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_scripts_pass() {
        assert_eq!(parse_text(b"192.0.2.1"), Some(Key::V4(0xC000_0201)));
        assert_eq!(parse_text(b" 192.0.2.1\r\n"), Some(Key::V4(0xC000_0201)));
        assert_eq!(parse_text(b"[2001:db8::1]"), Some(Key::V6(0x2001_0db8_0000_0000_0000_0000_0000_0001)));
        assert_eq!(parse_text(b"2001:db8::1"), parse_text(b"[2001:db8::1]"));
        assert_eq!(parse_text(b"::ffff:192.0.2.1"), Some(Key::V4(0xC000_0201)));
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for bad in [&b""[..], b"[]", b"[1.2.3.4", b"1.2.3.4]", b"999.1.1.1", b"1.2.3.4/24", b"1.2.3.4:5060",
            b"example.com", b"\xff\xfe", b"no new bans", b"::1%eth0"] {
            assert_eq!(parse_text(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_ipv4_fast_path_agrees_with_std() {
        let seeds: [&[u8]; 5] = [b"192.0.2.1", b"10.0.0.255", b"1.2.3.4", b"255.255.255.255", b"0.0.0.0"];
        let mut m = crate::mutate::Mutator::new(0x4444);
        let mut checked = 0;
        for i in 0..300_000 {
            let input = m.mutate(seeds[i % seeds.len()]);
            let std = std::str::from_utf8(&input).ok().and_then(|s| s.parse::<Ipv4Addr>().ok()).map(u32::from);
            if !input.iter().all(|&c| c.is_ascii_digit() || c == b'.') {
                // Other bytes: the fast path declines, or agrees with std.
                assert!(parse_v4(&input).is_none() || parse_v4(&input) == std, "{:?}", String::from_utf8_lossy(&input));
                continue;
            }
            assert_eq!(parse_v4(&input), std, "{:?}", String::from_utf8_lossy(&input));
            checked += 1;
        }
        assert!(checked > 10_000, "only {checked} inputs of digits and dots");
        for bad in ["1.2.3", "1.2.3.4.5", "01.2.3.4", "1..2.3", "256.1.1.1", "1.2.3.4.", ".1.2.3.4", "1.2.3.0000"] {
            assert_eq!(parse_v4(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn raw_bytes_match_text() {
        assert_eq!(Key::from_bytes(&[192, 0, 2, 1]), parse_text(b"192.0.2.1"));
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(Key::from_bytes(&mapped), parse_text(b"192.0.2.1"));
        assert_eq!(Key::from_bytes(&[1, 2, 3]), None);
        assert_eq!(Key::V4(0xC000_0201).to_ip().to_string(), "192.0.2.1");
    }

    #[test]
    fn mutated_addresses_never_panic_and_round_trip() {
        let seeds: [&[u8]; 4] = [b"192.0.2.1", b"[2001:db8::1]", b"::ffff:10.0.0.1", b" 198.51.100.255 "];
        let mut m = crate::mutate::Mutator::new(0xadd7);
        for i in 0..300_000 {
            let input = m.mutate(seeds[i % seeds.len()]);
            if let Some(k) = parse_text(&input) {
                assert_eq!(parse_text(k.to_ip().to_string().as_bytes()), Some(k));
            }
        }
    }
}
