//! The rate limit as the feed counts it, for one node or for a whole fleet.
//!
//! At most `max` requests in any `window` as the feed counts them, spaced at least
//! window / (2 × max) apart so that a long pull is paced rather than sent in one burst.
//!
//! The feed counts arrivals, and a request arrives somewhere between its send and the end of
//! its reply: a first request slowed by DNS, TCP and TLS may arrive after a later one sent on a
//! kept-alive connection. So each request is recorded when its reply (or its failure) is
//! complete, a time no arrival is later than, and request k + max waits for `window` plus a
//! margin after request k's record. Then any two arrivals max apart are more than `window`
//! apart, whatever the network did, and no window the feed can draw holds more than max.
//!
//! In a fleet the budget is the fleet's: a node that starts to lead merges the fleet's request
//! history from Redis into its own (`adopt`). Its own requests stay, whether Redis knows them
//! or not (sent alone in a fallback, or lost in a flush); a request both know is counted once,
//! told apart by the name it has in Redis.

pub use crate::config::RateLimit;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Covers a feed that counts in whole seconds or draws closed windows.
pub const RATE_MARGIN: Duration = Duration::from_secs(1);


struct Sent {
    /// When its reply, or its failure, was complete (for one still in flight elsewhere in the
    /// fleet: the latest it can complete).
    done: Instant,
    /// Its member in the fleet's request history (`P:requests`), when it is there.
    name: Option<Box<str>>,
    /// A request that may have been sent (by a leader Redis forgot): it counts in the window,
    /// but does not pace the next one.
    maybe: bool,
}

pub struct RateLimiter {
    max: usize,
    window: Duration,
    gap: Duration,
    /// Recent requests, oldest first.
    sent: VecDeque<Sent>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        let max = limit.max.max(1);
        let window = Duration::from_secs(limit.window_secs);
        RateLimiter { max: max as usize, window, gap: window / (2 * max), sent: VecDeque::new() }
    }

    /// How long until the next request may be sent, zero when it may go now.
    pub fn wait(&mut self, now: Instant) -> Duration {
        while self.sent.front().is_some_and(|s| now.saturating_duration_since(s.done) >= self.window + RATE_MARGIN) {
            self.sent.pop_front();
        }
        let paced = self.sent.iter().rev().find(|s| !s.maybe);
        let by_gap = paced.map_or(Duration::ZERO, |s| (s.done + self.gap).saturating_duration_since(now));
        let by_window = if self.sent.len() >= self.max {
            (self.sent[self.sent.len() - self.max].done + self.window + RATE_MARGIN).saturating_duration_since(now)
        } else {
            Duration::ZERO
        };
        by_gap.max(by_window)
    }

    /// Records a request whose reply, or failure, was complete at `done`; `name`: its member in
    /// the fleet's history, when a leader sent it.
    pub fn record(&mut self, done: Instant, name: Option<&str>) {
        self.insert(Sent { done, name: name.map(Box::from), maybe: false });
    }

    /// Records a request that may have been sent, completing by `done` at the latest: it counts
    /// against the window, it does not pace.
    pub fn record_maybe(&mut self, done: Instant) {
        self.insert(Sent { done, name: None, maybe: true });
    }

    fn insert(&mut self, s: Sent) {
        // Kept in order: a record is never older than the newest (Instant is monotonic).
        let at = self.sent.iter().rposition(|x| x.done <= s.done).map_or(0, |i| i + 1);
        self.sent.insert(at, s);
    }

    /// Counts the whole budget as spent at `now`: the next request waits a full window. For a
    /// node that takes the lease from another while Redis has lost the fleet's history (a flush,
    /// a restart empty): the other leader may have sent `max` requests just before.
    pub fn assume_spent(&mut self, now: Instant) {
        for _ in 0..self.max {
            self.record_maybe(now);
        }
    }

    /// Merges the fleet's request history: `(member, offset)` with the offset from now in ms,
    /// positive in the past, negative a completion still ahead. A completion ahead is counted
    /// until then, but never further ahead than `ahead_max` (a request's longest duration): a
    /// skewed or hostile time must not stop the pulls.
    pub fn adopt(&mut self, now: Instant, fleet: &[(String, i64)], ahead_max: Duration) {
        for (name, ms) in fleet {
            if self.sent.iter().any(|s| s.name.as_deref() == Some(name.as_str())) {
                continue;
            }
            let done = match *ms {
                0.. => now.checked_sub(Duration::from_millis(ms.unsigned_abs())).unwrap_or(now),
                _ => now + Duration::from_millis(ms.unsigned_abs()).min(ahead_max),
            };
            self.record(done, Some(name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends as the refresher does: wait, send, the reply completes after `latency(i)`; the
    /// request arrives at the feed `arrival(i)` after it was sent (never after its reply).
    fn simulate(limit: RateLimit, n: usize, arrival: impl Fn(usize) -> Duration, latency: impl Fn(usize) -> Duration) -> Vec<Instant> {
        let mut l = RateLimiter::new(limit);
        let mut t = Instant::now();
        let mut arrivals = Vec::new();
        for i in 0..n {
            t += l.wait(t);
            arrivals.push(t + arrival(i));
            t += latency(i).max(arrival(i));
            l.record(t, None);
        }
        arrivals
    }

    /// The most arrivals in any closed window of `window` seconds the feed could draw.
    fn worst_window(arrivals: &[Instant], window: u64) -> usize {
        let w = Duration::from_secs(window);
        arrivals.iter().map(|&a| arrivals.iter().filter(|&&x| x >= a && x - a <= w).count()).max().unwrap_or(0)
    }

    #[test]
    fn the_limiter_counts_as_the_feed_does_whatever_the_network() {
        for (max, window_secs) in [(4u32, 10u64), (11, 120)] {
            let limit = RateLimit { max, window_secs };
            // Every kind of path: fast, a slow first request of a connection (DNS, TCP, TLS),
            // a slow connection every few requests, a request that arrives late and fails.
            let slow_first = |i: usize| if i == 0 { Duration::from_millis(1500) } else { Duration::from_millis(2) };
            let every_third = |i: usize| if i.is_multiple_of(3) { Duration::from_millis(1500) } else { Duration::ZERO };
            let flat = |_| Duration::from_millis(5);
            for arrivals in [
                simulate(limit, 40, slow_first, flat),
                simulate(limit, 40, every_third, flat),
                simulate(limit, 40, |_| Duration::ZERO, |i| Duration::from_millis(100 * (i % 7) as u64)),
            ] {
                let worst = worst_window(&arrivals, window_secs);
                assert!(worst <= max as usize, "{max}/{window_secs}: {worst} arrivals in one window");
            }
        }
    }

    #[test]
    fn the_limiter_paces_and_keeps_the_budget_busy() {
        let mut l = RateLimiter::new(RateLimit { max: 11, window_secs: 120 });
        let t0 = Instant::now();
        let mut t = t0;
        let mut sent = Vec::new();
        while sent.len() < 30 {
            t += l.wait(t);
            sent.push(t);
            l.record(t, None);
        }
        // Paced: consecutive requests at least window / 22 apart.
        assert!(sent.windows(2).all(|w| w[1].duration_since(w[0]) >= Duration::from_millis(5454)));
        // And not slower than the budget plus the margin: request 12 goes at 120 s + 1 s.
        assert_eq!(sent[11].duration_since(sent[0]), Duration::from_secs(121));
    }

    #[test]
    fn a_new_leader_keeps_its_own_requests_and_counts_the_fleets_once() {
        let limit = RateLimit { max: 4, window_secs: 10 };
        let mut l = RateLimiter::new(limit);
        let now = Instant::now() + Duration::from_secs(60);
        // Two requests this node sent alone (a fallback, or before a flush): Redis never knew
        // them. One it sent as leader: Redis knows it as "3:1:n".
        l.record(now - Duration::from_secs(4), None);
        l.record(now - Duration::from_secs(3), None);
        l.record(now - Duration::from_secs(2), Some("3:1:n"));
        // The fleet's history: ours again, and one by another node.
        l.adopt(now, &[("3:1:n".into(), 2000), ("4:1:m".into(), 1000)], Duration::from_secs(2));
        assert_eq!(l.sent.len(), 4, "own requests kept, the shared one counted once");
        // Four in the window: the next waits for the oldest to leave it (4 s ago + 11 s).
        assert_eq!(l.wait(now), Duration::from_secs(7));
        // Replacing the history with Redis's (the old adopt) would have allowed a request now.
    }

    #[test]
    fn a_request_that_may_have_been_sent_counts_but_does_not_pace() {
        let mut l = RateLimiter::new(RateLimit { max: 4, window_secs: 10 });
        let now = Instant::now();
        l.record_maybe(now + Duration::from_secs(2));
        assert_eq!(l.wait(now), Duration::ZERO, "no pacing after a request that may not exist");
        for i in 0..3 {
            l.record(now + Duration::from_millis(i), None);
        }
        // Four in the window now, the maybe among them: the fifth waits for the oldest to leave
        // it (done at now, so at now + 11 s).
        assert_eq!(l.wait(now + Duration::from_secs(3)), Duration::from_secs(8));
    }

    #[test]
    fn a_budget_assumed_spent_waits_a_whole_window() {
        let mut l = RateLimiter::new(RateLimit { max: 4, window_secs: 10 });
        let now = Instant::now();
        l.assume_spent(now);
        assert_eq!(l.wait(now), Duration::from_secs(11));
        assert_eq!(l.wait(now + Duration::from_secs(11)), Duration::ZERO);
    }

    #[test]
    fn a_completion_far_ahead_is_clamped_to_a_requests_length() {
        let mut l = RateLimiter::new(RateLimit { max: 1, window_secs: 10 });
        let now = Instant::now();
        // A hostile or skewed history: a completion a century ahead.
        l.adopt(now, &[("1:1:x".into(), -3_153_600_000_000)], Duration::from_secs(2));
        assert_eq!(l.wait(now), Duration::from_secs(13));
    }
}
