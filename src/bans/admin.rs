//! The admin commands of local bans (RPC `apiban.ban`, `.unban`, `.lookup`, `.bans`; MI
//! `apiban_ban` ...), for both hosts: each answer is a list of named fields that the shim turns
//! into its own reply. These run in the host's RPC/MI process: they may wait (for the keeper to
//! apply a ban) and allocate; the SIP workers never come here.

use super::{ban_request, refusal_text, unban_request, Ban, Kind};
use crate::addr::{parse_text, Key};
use crate::boundary::{apiban_field, apiban_reply, APIBAN_REPLY_FIELDS};
use crate::config::parse_seconds;
use crate::module::Module;
use std::ffi::CStr;
use std::os::raw::c_char;
use std::time::{Duration, Instant};

/// How long `apiban.ban` waits to see its ban in force.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// Fills a reply field by field.
pub struct Reply<'a>(&'a mut apiban_reply);

impl<'a> Reply<'a> {
    pub fn new(out: &'a mut apiban_reply) -> Reply<'a> {
        out.count = 0;
        out.error[0] = 0;
        Reply(out)
    }

    fn field(&mut self, name: &'static CStr) -> Option<&mut apiban_field> {
        let i = self.0.count as usize;
        if i >= APIBAN_REPLY_FIELDS as usize {
            return None;
        }
        self.0.count += 1;
        let f = &mut self.0.fields[i];
        f.name = name.as_ptr();
        f.is_number = 0;
        f.number = 0;
        f.text[0] = 0;
        Some(f)
    }

    pub fn num(&mut self, name: &'static CStr, v: u64) -> &mut Self {
        if let Some(f) = self.field(name) {
            f.is_number = 1;
            f.number = v;
        }
        self
    }

    pub fn text(&mut self, name: &'static CStr, v: &str) -> &mut Self {
        if let Some(f) = self.field(name) {
            copy_text(&mut f.text, v);
        }
        self
    }

    /// A refusal: -1, with why.
    pub fn error(&mut self, why: &str) -> i32 {
        self.0.count = 0;
        copy_text(&mut self.0.error, why);
        -1
    }
}

pub fn copy_text(dst: &mut [c_char], s: &str) {
    let mut n = s.len().min(dst.len() - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as _;
    }
    dst[n] = 0;
}

fn shown(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(64)]).chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// `apiban.ban IP [TTL] [REASON]`.
pub fn ban(m: &Module, ip: &[u8], ttl: Option<&[u8]>, reason: Option<&[u8]>, out: &mut apiban_reply) -> i32 {
    let mut r = Reply::new(out);
    let cfg = &m.settings.cfg;
    let ttl = match ttl.map(|t| String::from_utf8_lossy(t).trim().to_string()).filter(|t| !t.is_empty()) {
        None => -1,
        Some(t) => match parse_seconds(&t) {
            Some(s) => s.min(i64::MAX as u64) as i64,
            None => return r.error(&format!("{}: '{}' is not a ttl in seconds (like 3600 or 1h)", shown(ip), shown(t.as_bytes()))),
        },
    };
    let req = match ban_request(ip, ttl, reason.unwrap_or(b""), cfg.ban_ttl, cfg.ban_max_ttl, m.table.now()) {
        Ok(q) => q,
        Err(code) => return r.error(&format!("{}: {}", shown(ip), refusal_text(code, cfg.ban_max_ttl))),
    };
    fresh(m);
    let before = m.board.find(req.key).map(|(_, b)| b.made_at);
    if !m.ring.push(&req) {
        m.stats.get().mine().ban_drops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return r.error(&format!("{}: {}", shown(ip), refusal_text(-1, 0)));
    }
    let applied = wait(|| fresh(m) && m.board.find(req.key).is_some_and(|(_, b)| b.kind == Kind::Ban && Some(b.made_at) != before));
    describe(m, req.key, applied, &mut r);
    0
}

/// `apiban.unban IP`.
pub fn unban(m: &Module, ip: &[u8], out: &mut apiban_reply) -> i32 {
    let mut r = Reply::new(out);
    let req = match unban_request(ip, m.table.now()) {
        Ok(q) => q,
        Err(code) => return r.error(&format!("{}: {}", shown(ip), refusal_text(code, 0))),
    };
    fresh(m);
    let held = m.board.find(req.key).filter(|(_, b)| b.live(m.bans.now()));
    if held.as_ref().is_none_or(|(_, b)| b.kind != Kind::Ban) && m.table.expiry(req.key).is_none() {
        let what = if held.is_some() { "is already exempted" } else { "is neither banned nor listed by APIBAN" };
        return r.error(&format!("{} {what}: nothing to unban", req.key.to_ip()));
    }
    let before = held.map(|(_, b)| b.made_at);
    if !m.ring.push(&req) {
        m.stats.get().mine().ban_drops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return r.error(&format!("{}: {}", shown(ip), refusal_text(-1, 0)));
    }
    let applied = wait(|| fresh(m) && m.board.find(req.key).map(|(_, b)| b.made_at) != before);
    describe(m, req.key, applied, &mut r);
    0
}

/// `apiban.lookup IP`.
pub fn lookup(m: &Module, ip: &[u8], out: &mut apiban_reply) -> i32 {
    let mut r = Reply::new(out);
    match parse_text(ip) {
        Some(k) => {
            fresh(m);
            describe(m, k, true, &mut r);
            0
        }
        None => r.error(&format!("{}: not an IP address", shown(ip))),
    }
}

/// `apiban.bans`: the first `max` bans and exemptions, newest first; returns how many there are.
pub fn list(m: &Module, max: usize, mut each: impl FnMut(&apiban_reply)) -> usize {
    let now = m.bans.now();
    fresh(m);
    let (bans, total) = m.board.list(max);
    // SAFETY: apiban_reply is plain data (integers, pointers, byte arrays): all zeros is valid.
    let mut out: apiban_reply = unsafe { std::mem::zeroed() };
    for (k, b) in bans.iter().filter(|(_, b)| b.live(now)) {
        let mut r = Reply::new(&mut out);
        r.text(c"address", &k.to_ip().to_string())
            .text(c"kind", if b.kind == Kind::Ban { "ban" } else { "exempt" })
            .num(c"made_at", b.made_at / 1000)
            .num(c"expires", b.expires)
            .text(c"node", &b.node)
            .text(c"reason", &b.reason);
        each(&out);
    }
    total
}

/// Has the keeper publish the board now (it does at its own pace only once a second) and waits
/// for it: what the admin command reads is then what the tables hold. False when the keeper did
/// not answer within APPLY_WAIT (the refresher is not running).
fn fresh(m: &Module) -> bool {
    let g = m.board.published();
    m.board.want();
    wait(|| m.board.published() != g)
}

/// Polls `done` every 10 ms for at most APPLY_WAIT.
fn wait(done: impl Fn() -> bool) -> bool {
    let t = Instant::now();
    while !done() {
        if t.elapsed() >= APPLY_WAIT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// What the module answers for `k` now, and why: the same order of rules as the lookup path
/// (feed, allow, exemption; then local ban, allow).
fn describe(m: &Module, k: Key, applied: bool, r: &mut Reply) {
    let ttl = m.settings.cfg.ttl;
    let listed = m.table.expiry(k);
    let rec: Option<Ban> = m.board.find(k).map(|(_, b)| b).filter(|b| b.live(m.bans.now()));
    let ban = rec.as_ref().filter(|b| b.kind == Kind::Ban);
    let exempt = rec.as_ref().filter(|b| b.kind == Kind::Exempt);
    let allow = m.allow.find(k);
    let (verdict, detail) = match (listed, ban, allow, exempt) {
        (Some(_), _, Some(rule), _) | (None, Some(_), Some(rule), _) => ("allowed", format!("let through by {rule}")),
        (Some(_), _, None, Some(e)) => ("exempted", format!("listed by APIBAN, unbanned by node {} until its listing ends", e.node)),
        (Some(exp), _, None, None) => ("listed", format!("listed by APIBAN until unix {exp}")),
        (None, Some(b), None, _) => ("banned", format!("banned by node {} until unix {}{}", b.node, b.expires, if b.reason.is_empty() { String::new() } else { format!(": {}", b.reason) })),
        (None, None, _, _) => ("not listed", "neither listed by APIBAN nor banned".to_string()),
    };
    let detail = if applied { detail } else { format!("{detail} (the change is queued: the refresher has not applied it within 2 s)") };
    let refused = matches!(verdict, "listed" | "banned") as u64;
    r.text(c"address", &k.to_ip().to_string())
        .text(c"verdict", verdict)
        .num(c"refused", refused)
        .text(c"detail", &detail)
        .num(c"listed", listed.is_some() as u64)
        .num(c"listed_at", listed.map_or(0, |e| e.saturating_sub(ttl)))
        .num(c"listing_expires", listed.unwrap_or(0))
        .num(c"banned", ban.is_some() as u64)
        .num(c"banned_at", ban.map_or(0, |b| b.made_at / 1000))
        .num(c"ban_expires", ban.map_or(0, |b| b.expires))
        .text(c"ban_node", ban.map_or("", |b| b.node.as_str()))
        .text(c"ban_reason", ban.map_or("", |b| b.reason.as_str()))
        .num(c"exempt_until", exempt.map_or(0, |b| b.expires))
        .text(c"allowed_by", allow.unwrap_or(""));
}
