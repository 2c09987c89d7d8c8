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
    // What `$si` or a header gives for an IPv4 source: a few word operations for the whole
    // address, where the general parser below costs several hundred instructions.
    match parse_v4(t) {
        Some(a) => Some(Key::V4(a)),
        None => parse_general(t),
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that is a dot, exactly (no false positives: the sum of a
/// byte's low seven bits and 0x7f never carries into the next byte).
fn dots_of(w: u64) -> u64 {
    let x = w ^ (ONES * b'.' as u64);
    !(((x & !HIGHS) + !HIGHS) | x) & HIGHS
}

/// The high bit of each byte of `w` that is not an ASCII digit: a digit is a byte whose xor
/// with 0x30 is below 10 (the low seven bits plus 0x76 reach the high bit from 10 up, and never
/// carry out of the byte).
fn non_digits(w: u64) -> u64 {
    let x = w ^ (ONES * b'0' as u64);
    (((x & !HIGHS) + ONES * (0x80 - 10)) | x) & HIGHS
}

/// One bit per byte (bit i for byte i) from the high bits of `m`.
fn byte_mask(m: u64) -> u32 {
    ((m >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
}

/// The text's bytes as two little-endian words, bytes past its end zero. Never reads past
/// `t`: the second word is the last eight bytes, shifted down; seven bytes are two overlapping
/// four-byte reads. `None` outside 7..=15 bytes, which no dotted quad has.
fn load_words(t: &[u8]) -> Option<(u64, u64)> {
    let len = t.len();
    if !(7..=15).contains(&len) {
        return None;
    }
    let word = |i: usize| t.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let half = |i: usize| t.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    if len == 7 {
        // Bytes 0..4, and 3..7 less its first byte (3 again) above them.
        return Some((half(0)? as u64 | ((half(3)? >> 8) as u64) << 32, 0));
    }
    // len - 8 bytes of the last word are past the first: its top ones.
    Some((word(0)?, word(len - 8)?.checked_shr(8 * (16 - len) as u32).unwrap_or(0)))
}

/// Dotted-quad IPv4 exactly as `std` accepts it: four decimal octets of at most 255, no empty
/// octet, no leading zero (so that nothing is read as octal by one program and decimal by
/// another). `None` for anything else, which the general parser then sees.
///
/// Eight bytes at a time: the text's 7 to 15 bytes as two words, its dots and its other bytes
/// found for all bytes at once as bit masks, then the octets taken from between the dots.
/// No loop, no panic (every index is masked to the 16 bytes), no allocation. Under callgrind
/// (Kamailio, a 13-byte address): `parse_text` 229 instructions against the one-pass parser's
/// 258; what is left is the octets' arithmetic, the trim and the `Key` returned.
fn parse_v4(t: &[u8]) -> Option<u32> {
    let (lo, hi) = load_words(t)?;
    let len = t.len() as u32;
    let (dots_lo, dots_hi) = (dots_of(lo), dots_of(hi));
    // Bytes that are neither digits nor dots, within the text (the second word's bytes past
    // its end are zero: not digits, so they are masked off by the text's length).
    let bad = byte_mask(non_digits(lo) & !dots_lo) | byte_mask(non_digits(hi) & !dots_hi) << 8;
    let dots = byte_mask(dots_lo) | byte_mask(dots_hi) << 8;
    // Three dots: with the lowest two cleared, one bit is left.
    let two = dots & dots.wrapping_sub(1);
    let three = two & two.wrapping_sub(1);
    if bad & ((1u32 << len) - 1) != 0 || three == 0 || three & three.wrapping_sub(1) != 0 {
        return None;
    }
    let b = {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lo.to_le_bytes());
        b[8..].copy_from_slice(&hi.to_le_bytes());
        b
    };
    // The octets' starts and ends (the end's dot, or the text's end).
    let (d1, d2, d3) = (dots.trailing_zeros(), two.trailing_zeros(), three.trailing_zeros());
    let octet = |start: u32, end: u32| -> Option<u32> {
        let n = end.wrapping_sub(start);
        let d = |i: u32| b[((start + i) & 15) as usize].wrapping_sub(b'0') as u32;
        match n {
            1 => Some(d(0)),
            2 if d(0) != 0 => Some(d(0) * 10 + d(1)),
            3 if d(0) != 0 => Some(d(0) * 100 + d(1) * 10 + d(2)).filter(|&v| v <= 255),
            _ => None,
        }
    };
    let a = octet(0, d1)?;
    let b1 = octet(d1 + 1, d2)?;
    let c = octet(d2 + 1, d3)?;
    let e = octet(d3 + 1, len)?;
    Some(a << 24 | b1 << 16 | c << 8 | e)
}

/// The one-pass parser `parse_v4` replaced, kept as the reference it is tested (and fuzzed)
/// against: the same answer for every input.
#[cfg(any(test, feature = "fuzz"))]
pub fn parse_v4_reference(t: &[u8]) -> Option<u32> {
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

/// `parse_text` as it was, on the reference parser: for the equivalence test and fuzz target.
#[cfg(any(test, feature = "fuzz"))]
pub fn parse_text_reference(bytes: &[u8]) -> Option<Key> {
    let t = bytes.trim_ascii();
    match parse_v4_reference(t) {
        Some(a) => Some(Key::V4(a)),
        None => parse_general(t),
    }
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
            assert_eq!(parse_v4(&input), parse_v4_reference(&input), "{:?}", String::from_utf8_lossy(&input));
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
            assert_eq!(parse_text(&input), parse_text_reference(&input), "{:?}", String::from_utf8_lossy(&input));
            if let Some(k) = parse_text(&input) {
                assert_eq!(parse_text(k.to_ip().to_string().as_bytes()), Some(k));
            }
        }
    }

    fn same(input: &[u8]) {
        assert_eq!(parse_v4(input), parse_v4_reference(input), "{:?}", String::from_utf8_lossy(input));
        assert_eq!(parse_text(input), parse_text_reference(input), "{:?}", String::from_utf8_lossy(input));
    }

    /// Every octet value, and the spellings around the limits, at each of the four places.
    #[test]
    fn the_word_parser_agrees_with_the_reference_on_every_octet() {
        let mut octets: Vec<String> = (0..=999).map(|v| v.to_string()).collect();
        for v in ["", "00", "000", "0000", "01", "001", "010", "099", "0255", "1000", "2555", "25 ", " 1", "+1", "-1",
            "1a", "a", "/", ":", "\0"] {
            octets.push(v.to_string());
        }
        for (i, o) in octets.iter().enumerate() {
            for place in 0..4 {
                let mut parts = ["1", "22", "0", "255"].map(String::from);
                parts[place] = o.clone();
                let text = parts.join(".");
                same(text.as_bytes());
                if i <= 255 {
                    let k = u32::from_be_bytes(parts.each_ref().map(|p| p.parse::<u8>().unwrap()));
                    assert_eq!(parse_v4(text.as_bytes()), Some(k), "{text}");
                }
            }
        }
        // Three and five octets, empty ones, dots at either end, garbage after, blanks around.
        let tokens = ["", "0", "00", "1", "01", "9", "10", "99", "100", "199", "249", "250", "255", "256", "300", "999",
            "0000", "1000", "x"];
        for a in tokens {
            for b in tokens {
                for c in tokens {
                    same(format!("{a}.{b}.{c}").as_bytes());
                    for d in ["", "0", "7", "25", "255", "256", "0255", "1.", ".1", "1.2", "1 ", " 1", "1\0", "1:5060"] {
                        same(format!("{a}.{b}.{c}.{d}").as_bytes());
                        same(format!(" {a}.{b}.{c}.{d}\t").as_bytes());
                        same(format!("{a}.{b}.{c}.{d}.").as_bytes());
                    }
                }
            }
        }
    }

    /// Millions of random texts of every length around the fast path's 7 to 15 bytes, of bytes
    /// drawn mostly from digits and dots (which reach its deepest checks), the rest anything.
    #[test]
    fn the_word_parser_agrees_with_the_reference_on_random_texts() {
        let mut m = crate::mutate::Mutator::new(0x5a4a_5a4a);
        let alphabet = b"0123456789....  \t\n:[]abcdefx/%";
        let mut buf = [0u8; 20];
        let mut parsed = 0;
        for i in 0..3_000_000 {
            let mut len = 0;
            if i & 1 == 0 {
                // Anything.
                len = m.below(buf.len() + 1);
                for c in &mut buf[..len] {
                    let r = m.next();
                    *c = match r % 16 {
                        0 => (r >> 8) as u8,
                        1..=4 => b'.',
                        5 => alphabet[(r >> 8) as usize % alphabet.len()],
                        _ => b'0' + ((r >> 8) % 10) as u8,
                    };
                }
            } else {
                // Four octets of one to three random digits, then at times one byte changed.
                for o in 0..4 {
                    if o > 0 {
                        buf[len] = b'.';
                        len += 1;
                    }
                    for _ in 0..1 + m.below(3) {
                        buf[len] = b'0' + m.below(10) as u8;
                        len += 1;
                    }
                }
                if m.below(4) == 0 {
                    let r = m.next();
                    buf[m.below(len)] = if r & 1 == 0 { alphabet[(r >> 8) as usize % alphabet.len()] } else { (r >> 8) as u8 };
                }
            }
            let input = &buf[..len];
            same(input);
            parsed += parse_v4(input).is_some() as u32;
        }
        assert!(parsed > 200_000, "only {parsed} random texts were addresses");
    }
}
