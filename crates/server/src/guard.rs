//! Brute-force guard for the admin key: each client address gets a few wrong guesses per
//! minute; past them its admin requests are refused with 429 without the key being looked
//! at, so guessing costs a minute per handful of tries. Counted per address (never all
//! clients together, which would let anyone lock the operator out), in memory: a restart
//! forgets, which costs a guesser one more handful.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong admin keys allowed per address per window.
pub const MAX_FAILURES: u32 = 10;
/// The window failures are counted over.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most: past this, windows that have ended are dropped first, so
/// a flood from many addresses cannot grow the map without bound.
const MAX_ADDRESSES: usize = 65_536;

/// Failures per client address in the current window.
#[derive(Default)]
pub struct Guard {
    failures: Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>,
}

impl Guard {
    /// `Some(seconds to wait)` while `addr` has used up its guesses (`None` is a client
    /// whose address the server does not know, e.g. an embedder's listener: they share one
    /// allowance).
    pub fn locked(&self, addr: Option<IpAddr>, now: Instant) -> Option<u64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let &(start, n) = map.get(&addr)?;
        let left = WINDOW
            .checked_sub(now.duration_since(start))
            .filter(|l| !l.is_zero())?;
        (n >= MAX_FAILURES).then(|| left.as_secs_f64().ceil() as u64)
    }

    /// Counts a wrong key from `addr`.
    pub fn failed(&self, addr: Option<IpAddr>, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ADDRESSES {
            map.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if map.len() >= MAX_ADDRESSES {
                // Every address is in a live window: forget the oldest half of them.
                let mut starts: Vec<Instant> = map.values().map(|(s, _)| *s).collect();
                starts.sort();
                let cut = starts[starts.len() / 2];
                map.retain(|_, (start, _)| *start > cut);
            }
        }
        let entry = map.entry(addr).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_locked_after_its_failures_until_the_window_ends() {
        let g = Guard::default();
        let a: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let b: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert_eq!(g.locked(a, t0), None);
            g.failed(a, t0);
        }
        assert_eq!(g.locked(a, t0), Some(60));
        assert_eq!(g.locked(b, t0), None, "another address is not locked");
        let later = t0 + Duration::from_secs(45);
        assert_eq!(g.locked(a, later), Some(15));
        assert_eq!(g.locked(a, t0 + WINDOW), None, "the window ended");
        g.failed(a, t0 + WINDOW);
        assert_eq!(g.locked(a, t0 + WINDOW), None, "a new window counts afresh");
    }

    #[test]
    fn the_map_stays_bounded() {
        let g = Guard::default();
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            g.failed(
                Some(IpAddr::from(i.to_be_bytes())),
                t0 + Duration::from_nanos(i as u64),
            );
        }
        assert!(g.failures.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}
