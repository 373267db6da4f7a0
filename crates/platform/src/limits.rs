//! Rate limits per account and model: requests and tokens per minute and per day, in
//! fixed windows aligned to the UTC minute and day. Counters live in this process, or in
//! Redis, where one Lua script checks every window and counts the request in all of them
//! or in none, so a limit holds across any number of replicas.
//!
//! Tokens are admitted on an estimate (prompt plus the most the request may generate) and
//! corrected with the real count when the request ends.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Deserialize;

/// A set of limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub rpd: Option<u64>,
    pub tpd: Option<u64>,
}

impl Rates {
    /// `self`, with `over`'s limits where it sets them.
    pub fn overlaid(self, over: &Rates) -> Rates {
        Rates {
            rpm: over.rpm.or(self.rpm),
            tpm: over.tpm.or(self.tpm),
            rpd: over.rpd.or(self.rpd),
            tpd: over.tpd.or(self.tpd),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        *self == Rates::default()
    }
}

/// One of the four limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Rpm,
    Tpm,
    Rpd,
    Tpd,
}

impl Limit {
    const ALL: [Limit; 4] = [Limit::Rpm, Limit::Tpm, Limit::Rpd, Limit::Tpd];

    pub fn name(self) -> &'static str {
        match self {
            Limit::Rpm => "RPM",
            Limit::Tpm => "TPM",
            Limit::Rpd => "RPD",
            Limit::Tpd => "TPD",
        }
    }

    fn window_secs(self) -> u64 {
        match self {
            Limit::Rpm | Limit::Tpm => 60,
            Limit::Rpd | Limit::Tpd => 86_400,
        }
    }

    fn of(self, r: &Rates) -> Option<u64> {
        match self {
            Limit::Rpm => r.rpm,
            Limit::Tpm => r.tpm,
            Limit::Rpd => r.rpd,
            Limit::Tpd => r.tpd,
        }
    }

    fn counts_tokens(self) -> bool {
        matches!(self, Limit::Tpm | Limit::Tpd)
    }

    fn key_part(self) -> &'static str {
        match self {
            Limit::Rpm => "rpm",
            Limit::Tpm => "tpm",
            Limit::Rpd => "rpd",
            Limit::Tpd => "tpd",
        }
    }
}

/// Where one limit stands after a check: for the `x-ratelimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_secs: u64,
}

/// The answer to a request for admission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `None` when admitted; otherwise the limit that refused it.
    pub refused: Option<Limit>,
    /// Seconds after which a retry may pass (refusals only).
    pub retry_after: u64,
    /// The per-minute limits' standing (or the per-day ones where no per-minute limit is set).
    pub requests: Option<Standing>,
    pub tokens: Option<Standing>,
    /// The windows the request was counted in, to correct its tokens later.
    pub ticket: Ticket,
}

impl Decision {
    /// Admitted without being counted anywhere (the store was unreachable and the operator
    /// chose to fail open): no standing to report, nothing to correct later.
    pub fn unlimited() -> Decision {
        Decision {
            refused: None,
            retry_after: 0,
            requests: None,
            tokens: None,
            ticket: Ticket::default(),
        }
    }
}

/// What an admitted request was counted as, so that its token estimate can be corrected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ticket {
    key: String,
    estimate: u64,
    minute: u64,
    day: u64,
}

/// Why the counters could not be reached (Redis only).
#[derive(Debug, thiserror::Error)]
#[error("rate-limit store error: {0}")]
pub struct LimitError(String);

impl From<redis::RedisError> for LimitError {
    /// Every Redis failure passes here: `tokenfab:limiter_errors_total` counts them.
    fn from(e: redis::RedisError) -> Self {
        metrics::counter!("tokenfab:limiter_errors_total", "backend" => "redis").increment(1);
        LimitError(e.to_string())
    }
}

/// The counters: in this process (per window key: when the window ends, and the count)
/// or in Redis.
pub enum Limiter {
    Memory(Mutex<HashMap<String, (u64, u64)>>),
    Redis {
        conn: redis::aio::MultiplexedConnection,
        admit: redis::Script,
        correct: redis::Script,
    },
}

/// Checks every limit's window (KEYS[i], ARGV: limit, amount, window length per key) and
/// counts the request in all of them only if all have room. Returns {refused index (0 =
/// none), then per key: count after, seconds to reset}.
const ADMIT_LUA: &str = r#"
local n = #KEYS
local out = {0}
for i = 1, n do
  local limit = tonumber(ARGV[3 * i - 2])
  local amount = tonumber(ARGV[3 * i - 1])
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  if limit >= 0 and cur + amount > limit and out[1] == 0 then
    out[1] = i
  end
end
for i = 1, n do
  local amount = tonumber(ARGV[3 * i - 1])
  local window = tonumber(ARGV[3 * i])
  local cur
  if out[1] == 0 then
    cur = redis.call('INCRBY', KEYS[i], amount)
    if cur == amount then redis.call('EXPIRE', KEYS[i], window + 5) end
  else
    cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  end
  out[2 * i] = cur
  local ttl = redis.call('TTL', KEYS[i])
  if ttl < 0 then ttl = window end
  out[2 * i + 1] = ttl
end
return out
"#;

/// Takes ARGV[1] back from each existing key, never below zero.
const CORRECT_LUA: &str = r#"
for i = 1, #KEYS do
  local cur = tonumber(redis.call('GET', KEYS[i]) or '-1')
  if cur >= 0 then
    local take = math.min(cur, tonumber(ARGV[1]))
    redis.call('DECRBY', KEYS[i], take)
  end
end
return 0
"#;

impl Limiter {
    pub fn memory() -> Limiter {
        Limiter::Memory(Mutex::new(HashMap::new()))
    }

    /// Counters in the Redis server at `url` (`redis://host:port/db`).
    pub async fn redis(url: &str) -> Result<Limiter, LimitError> {
        let client = redis::Client::open(url)?;
        let conn = client.get_multiplexed_async_connection().await?;
        Ok(Limiter::Redis {
            conn,
            admit: redis::Script::new(ADMIT_LUA),
            correct: redis::Script::new(CORRECT_LUA),
        })
    }

    /// Admits one request of `tokens` estimated tokens for `account` on `model` under
    /// `rates`, counting it if admitted.
    pub async fn admit(
        &self,
        account: i64,
        model: &str,
        rates: &Rates,
        tokens: u64,
    ) -> Result<Decision, LimitError> {
        let now = tokenfab_wire::time::unix_now();
        let key = format!("tokenfab:rl:{account}:{model}");
        let ticket = Ticket {
            key: key.clone(),
            estimate: tokens,
            minute: now / 60,
            day: now / 86_400,
        };
        let limits: Vec<Limit> = Limit::ALL
            .into_iter()
            .filter(|l| l.of(rates).is_some())
            .collect();
        if limits.is_empty() {
            return Ok(Decision {
                refused: None,
                retry_after: 0,
                requests: None,
                tokens: None,
                ticket,
            });
        }
        let window_key = |l: Limit| {
            let idx = if l.window_secs() == 60 {
                ticket.minute
            } else {
                ticket.day
            };
            format!("{key}:{}:{idx}", l.key_part())
        };
        let amount = |l: Limit| if l.counts_tokens() { tokens } else { 1 };
        // (count after, seconds to reset) per limit, and the first refusing one.
        let (refused, counts): (Option<usize>, Vec<(u64, u64)>) = match self {
            Limiter::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                // Keys name their window, so a key of a past window is never read again.
                let cur = |map: &HashMap<String, (u64, u64)>, l: Limit| {
                    map.get(&window_key(l)).map_or(0, |&(_, c)| c)
                };
                let refused = limits
                    .iter()
                    .position(|&l| cur(&map, l) + amount(l) > l.of(rates).unwrap_or(u64::MAX));
                let mut counts = Vec::with_capacity(limits.len());
                for &l in &limits {
                    let mut c = cur(&map, l);
                    let reset = l.window_secs() - now % l.window_secs();
                    if refused.is_none() {
                        c += amount(l);
                        map.insert(window_key(l), (now + reset, c));
                    }
                    counts.push((c, reset));
                }
                // Ended windows go once in a while, so the map stays the size of the
                // active (account, model) pairs.
                if map.len() > 4096 {
                    map.retain(|_, (end, _)| *end > now);
                }
                (refused, counts)
            }
            Limiter::Redis { conn, admit, .. } => {
                let mut inv = admit.prepare_invoke();
                for &l in &limits {
                    inv.key(window_key(l));
                    let limit = l.of(rates).map_or(-1, |v| v.min(i64::MAX as u64) as i64);
                    inv.arg(limit).arg(amount(l)).arg(l.window_secs());
                }
                let out: Vec<i64> = inv.invoke_async(&mut conn.clone()).await?;
                let refused = match out.first() {
                    Some(&i) if i > 0 => Some(i as usize - 1),
                    _ => None,
                };
                let counts = (0..limits.len())
                    .map(|i| {
                        let c = out.get(1 + 2 * i).copied().unwrap_or(0).max(0) as u64;
                        let ttl = out.get(2 + 2 * i).copied().unwrap_or(60).max(1) as u64;
                        (c, ttl)
                    })
                    .collect();
                (refused, counts)
            }
        };
        let standing = |want: [Limit; 2]| {
            want.into_iter().find_map(|l| {
                let i = limits.iter().position(|&x| x == l)?;
                let limit = l.of(rates)?;
                let (c, reset) = counts[i];
                Some(Standing {
                    limit,
                    remaining: limit.saturating_sub(c),
                    reset_secs: reset,
                })
            })
        };
        Ok(Decision {
            refused: refused.map(|i| limits[i]),
            retry_after: refused.map_or(0, |i| counts[i].1.max(1)),
            requests: standing([Limit::Rpm, Limit::Rpd]),
            tokens: standing([Limit::Tpm, Limit::Tpd]),
            ticket,
        })
    }

    /// Gives back the tokens an admitted request was estimated at but did not use (a
    /// window that has passed since is left alone).
    pub async fn correct(&self, ticket: &Ticket, used: u64) -> Result<(), LimitError> {
        let unused = ticket.estimate.saturating_sub(used);
        if unused == 0 || ticket.key.is_empty() {
            return Ok(());
        }
        let keys = [
            format!("{}:tpm:{}", ticket.key, ticket.minute),
            format!("{}:tpd:{}", ticket.key, ticket.day),
        ];
        match self {
            Limiter::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                for k in &keys {
                    if let Some((_, c)) = map.get_mut(k) {
                        *c = c.saturating_sub(unused);
                    }
                }
            }
            Limiter::Redis { conn, correct, .. } => {
                let mut inv = correct.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                inv.arg(unused);
                let _: i64 = inv.invoke_async(&mut conn.clone()).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(rpm: u64, tpm: u64) -> Rates {
        Rates {
            rpm: Some(rpm),
            tpm: Some(tpm),
            ..Rates::default()
        }
    }

    #[tokio::test]
    async fn memory_limits_count_exactly_and_name_the_limit() {
        let l = Limiter::memory();
        let r = rates(3, 1000);
        for i in 0..3 {
            let d = l.admit(1, "m", &r, 10).await.unwrap();
            assert_eq!(d.refused, None, "request {i}");
            assert_eq!(d.requests.unwrap().remaining, 2 - i);
        }
        let d = l.admit(1, "m", &r, 10).await.unwrap();
        assert_eq!(d.refused, Some(Limit::Rpm));
        assert!(d.retry_after >= 1 && d.retry_after <= 60);
        // Another account and another model have their own counters.
        assert_eq!(l.admit(2, "m", &r, 10).await.unwrap().refused, None);
        assert_eq!(l.admit(1, "n", &r, 10).await.unwrap().refused, None);
    }

    #[tokio::test]
    async fn tokens_admit_on_the_estimate_and_are_corrected() {
        let l = Limiter::memory();
        let r = rates(100, 100);
        let d = l.admit(1, "m", &r, 80).await.unwrap();
        assert_eq!(d.tokens.unwrap().remaining, 20);
        assert_eq!(
            l.admit(1, "m", &r, 30).await.unwrap().refused,
            Some(Limit::Tpm)
        );
        // The first request used 30 of its 80: 50 come back, and 30 more fit.
        l.correct(&d.ticket, 30).await.unwrap();
        let d2 = l.admit(1, "m", &r, 30).await.unwrap();
        assert_eq!(d2.refused, None);
        assert_eq!(d2.tokens.unwrap().remaining, 40);
        // A refused request counts in no window.
        assert_eq!(
            l.admit(1, "m", &r, 41).await.unwrap().refused,
            Some(Limit::Tpm)
        );
        assert_eq!(l.admit(1, "m", &r, 40).await.unwrap().refused, None);
    }

    #[test]
    fn overlay_takes_the_model_s_limits_where_set() {
        let base = rates(10, 100);
        let over = Rates {
            tpm: Some(5),
            rpd: Some(7),
            ..Rates::default()
        };
        assert_eq!(
            base.overlaid(&over),
            Rates {
                rpm: Some(10),
                tpm: Some(5),
                rpd: Some(7),
                tpd: None
            }
        );
    }
}
