//! A model's backends and the choice among them.
//!
//! Choice: among the backends that are up, the one with the fewest outstanding requests
//! per unit of weight (SGLang's and LiteLLM's default); with prefix affinity, the backend
//! a conversation's prefix hashes to (rendezvous hashing, so adding a backend moves only
//! its share), unless that one has clearly more outstanding requests than the least busy.
//!
//! Health: a backend that fails a request before answering is taken out for a backoff
//! that doubles with each consecutive failure (1 s up to 30 s); a probe of its
//! `GET /models` every `health_interval` takes it out when it fails and brings it back
//! when it answers. When every untried backend is out, the one whose backoff ends first is
//! tried anyway: a stale mark never turns a request away untried.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::http::{self, Origin};

/// How to reach one upstream server for one model.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConfig {
    /// Base URL of the OpenAI-compatible API, e.g. `http://10.0.0.5:8000/v1`.
    pub url: String,
    /// Sent as `Authorization: Bearer …`.
    pub api_key: Option<String>,
    /// The upstream's name for the model.
    pub model: String,
    pub weight: u32,
    pub connect_timeout: Duration,
    /// Until the response starts: headers of a stream, the whole body of a plain answer.
    pub timeout: Duration,
    /// Longest silence between two chunks of a stream.
    pub idle_timeout: Duration,
    /// PEM certificates to trust instead of the public roots (https backends).
    pub ca_file: Option<std::path::PathBuf>,
}

/// Longest a failed backend stays out before it is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Health {
    /// Consecutive failures.
    failures: u32,
    down_until: Option<Instant>,
}

/// One backend and its live state.
pub struct Backend {
    pub cfg: BackendConfig,
    pub(crate) client: http::Client,
    outstanding: AtomicUsize,
    health: Mutex<Health>,
    /// `tokenfab:upstream_in_flight`: what `outstanding` counts, for the metrics.
    in_flight: metrics::Gauge,
    /// `tokenfab:upstream_up`: 0 while taken out after a failure, else 1.
    up: metrics::Gauge,
}

impl Backend {
    fn new(cfg: BackendConfig) -> Result<Backend, String> {
        let origin = Origin::parse(&cfg.url)?;
        let client = http::Client::new(
            origin,
            cfg.api_key.as_deref(),
            cfg.connect_timeout,
            cfg.ca_file.as_deref(),
        )
        .map_err(|e| format!("backend `{}`: {e}", cfg.url))?;
        let labels = [
            ("backend", cfg.url.clone()),
            ("upstream_model", cfg.model.clone()),
        ];
        let up = metrics::gauge!("tokenfab:upstream_up", &labels);
        up.set(1.0);
        Ok(Backend {
            in_flight: metrics::gauge!("tokenfab:upstream_in_flight", &labels),
            up,
            cfg,
            client,
            outstanding: AtomicUsize::new(0),
            health: Mutex::new(Health::default()),
        })
    }

    /// Counts a request passed on to another backend after failing here
    /// (`tokenfab:upstream_failovers_total`).
    pub(crate) fn count_failover(&self) {
        metrics::counter!("tokenfab:upstream_failovers_total", "backend" => self.cfg.url.clone(), "upstream_model" => self.cfg.model.clone()).increment(1);
    }

    /// Counts a failed attempt on this backend by what went wrong (`tokenfab:upstream_errors_total`).
    pub(crate) fn count_error(&self, kind: &'static str) {
        metrics::counter!("tokenfab:upstream_errors_total", "backend" => self.cfg.url.clone(), "upstream_model" => self.cfg.model.clone(), "kind" => kind).increment(1);
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the backend is out, until when.
    fn down_until(&self, now: Instant) -> Option<Instant> {
        self.health().down_until.filter(|&t| t > now)
    }

    /// A request failed before the backend answered: out for a growing backoff.
    pub fn failed(&self) {
        let mut h = self.health();
        h.failures = h.failures.saturating_add(1);
        let backoff = Duration::from_secs(1) * 2u32.saturating_pow(h.failures.min(16) - 1);
        h.down_until = Some(Instant::now() + backoff.min(MAX_BACKOFF));
        self.up.set(0.0);
        tracing::warn!(url = %self.cfg.url, model = %self.cfg.model, failures = h.failures, "upstream backend taken out");
    }

    /// The backend answered: in again, its failures forgotten.
    pub fn succeeded(&self) {
        let mut h = self.health();
        if h.failures > 0 || h.down_until.is_some() {
            tracing::info!(url = %self.cfg.url, model = %self.cfg.model, "upstream backend back");
        }
        *h = Health::default();
        self.up.set(1.0);
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Whether requests may go to it now (not taken out after failures).
    pub fn is_up(&self) -> bool {
        self.down_until(Instant::now()).is_none()
    }

    /// Failures in a row since it last answered, for an operator watching it.
    pub fn failures(&self) -> u32 {
        self.health().failures
    }
}

/// A request's hold on a backend: counted as outstanding until dropped.
pub struct Lease {
    pub backend: Arc<Backend>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.outstanding.fetch_sub(1, Ordering::Relaxed);
        self.backend.in_flight.decrement(1.0);
    }
}

/// How far above the least busy backend an affine backend may be before a request goes
/// elsewhere.
const AFFINITY_SLACK: usize = 4;

/// One model's backends.
pub struct Pool {
    pub backends: Vec<Arc<Backend>>,
    affinity: bool,
    /// Rotates the order in which equally good backends are considered.
    turn: AtomicUsize,
}

impl Pool {
    /// A pool over `configs` (at least one). `affinity`: requests sharing a conversation
    /// prefix go to the same backend while it is not overloaded.
    /// Refuses a backend whose URL or key this client cannot use, saying why.
    pub fn new(configs: Vec<BackendConfig>, affinity: bool) -> Result<Pool, String> {
        let backends = configs
            .into_iter()
            .map(|c| Backend::new(c).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Pool {
            backends,
            affinity,
            turn: AtomicUsize::new(0),
        })
    }

    pub fn affinity(&self) -> bool {
        self.affinity
    }

    /// Backends not taken out now.
    pub fn up(&self) -> usize {
        self.backends.iter().filter(|b| b.is_up()).count()
    }

    /// The backend for the next attempt, skipping those in `tried`; `affinity_key` is the
    /// hash of the conversation's prefix (used when the pool has affinity on).
    pub fn pick(&self, tried: &[usize], affinity_key: Option<u64>) -> Option<(usize, Lease)> {
        let now = Instant::now();
        let untried = || (0..self.backends.len()).filter(|i| !tried.contains(i));
        let up: Vec<usize> = untried()
            .filter(|&i| self.backends[i].down_until(now).is_none())
            .collect();
        let i = if up.is_empty() {
            // Everything left is out: try the one that comes back first.
            untried().min_by_key(|&i| self.backends[i].down_until(now))?
        } else {
            let least = self.least_busy(&up);
            match affinity_key.filter(|_| self.affinity) {
                Some(key) => {
                    let affine = self.rendezvous(&up, key);
                    let busy = |i: usize| self.backends[i].outstanding();
                    if busy(affine) <= busy(least) + AFFINITY_SLACK {
                        affine
                    } else {
                        least
                    }
                }
                None => least,
            }
        };
        let backend = self.backends[i].clone();
        backend.outstanding.fetch_add(1, Ordering::Relaxed);
        backend.in_flight.increment(1.0);
        Some((i, Lease { backend }))
    }

    /// Fewest outstanding requests per unit of weight; ties go round the backends.
    fn least_busy(&self, up: &[usize]) -> usize {
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let n = up.len();
        (0..n)
            .map(|k| up[(start + k) % n])
            .min_by(|&a, &b| {
                let load = |i: usize| {
                    let b = &self.backends[i];
                    (b.outstanding() as f64 + 1.0) / f64::from(b.cfg.weight.max(1))
                };
                load(a).total_cmp(&load(b))
            })
            .expect("at least one backend is up")
    }

    /// Weighted rendezvous hashing: the backend with the highest `u^(1/weight)`, where `u`
    /// is a hash of (key, backend) mapped to (0, 1).
    fn rendezvous(&self, up: &[usize], key: u64) -> usize {
        let score = |i: usize| {
            let h = mix(key ^ mix(i as u64 + 1));
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            u.powf(1.0 / f64::from(self.backends[i].cfg.weight.max(1)))
        };
        *up.iter()
            .max_by(|&&a, &&b| score(a).total_cmp(&score(b)))
            .expect("at least one backend is up")
    }

    /// Probes every backend's `GET /models` each `interval` while the pool lives (the task
    /// holds it weakly and ends with it), taking failing backends out and bringing
    /// answering ones back.
    pub fn watch(self: &Arc<Pool>, interval: Duration) {
        let pool: Weak<Pool> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let probes = pool.backends.iter().map(|b| probe(b, interval));
                futures_util::future::join_all(probes).await;
            }
        });
    }
}

/// One health probe: any 2xx answer from `GET {url}/models` within the interval (at most
/// 5 s) counts as healthy.
async fn probe(b: &Backend, interval: Duration) {
    let deadline = Instant::now() + interval.min(Duration::from_secs(5));
    let exchange = async {
        let r = b.client.get("models", deadline).await?;
        // Read to the end, so that the connection is kept for requests.
        let status = r.status;
        r.body.bytes(PROBE_LIMIT).await?;
        Ok::<_, http::Error>(status)
    };
    match tokio::time::timeout_at(deadline.into(), exchange).await {
        Ok(Ok(status)) if http::success(status) => b.succeeded(),
        Ok(Ok(status)) => {
            tracing::debug!(url = %b.cfg.url, status, "health probe failed");
            b.failed()
        }
        Ok(Err(e)) => {
            tracing::debug!(url = %b.cfg.url, %e, "health probe failed");
            b.failed()
        }
        Err(_) => {
            tracing::debug!(url = %b.cfg.url, "health probe timed out");
            b.failed()
        }
    }
}

/// The most of a model list a probe reads.
const PROBE_LIMIT: usize = 16 << 20;

/// A 64-bit finalizer (SplitMix64's): spreads nearby keys over the whole range.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(weight: u32) -> BackendConfig {
        BackendConfig {
            url: "http://127.0.0.1:9/v1".into(),
            api_key: None,
            model: "m".into(),
            weight,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            ca_file: None,
        }
    }

    #[test]
    fn least_outstanding_per_weight() {
        let pool = Pool::new(vec![cfg(1), cfg(3)], false).unwrap();
        // Hold leases so that outstanding counts build up: weight 3 takes 3 of every 4.
        let leases: Vec<_> = (0..8).map(|_| pool.pick(&[], None).unwrap()).collect();
        let on = |i| leases.iter().filter(|(b, _)| *b == i).count();
        assert_eq!((on(0), on(1)), (2, 6));
        drop(leases);
        assert!(pool.backends.iter().all(|b| b.outstanding() == 0));
    }

    #[test]
    fn failed_backends_are_skipped_until_none_is_left() {
        let pool = Pool::new(vec![cfg(1), cfg(1)], false).unwrap();
        pool.backends[0].failed();
        for _ in 0..5 {
            assert_eq!(pool.pick(&[], None).unwrap().0, 1);
        }
        // Everything else tried: the out one is still tried rather than nothing.
        assert_eq!(pool.pick(&[1], None).unwrap().0, 0);
        assert!(pool.pick(&[0, 1], None).is_none());
        pool.backends[0].succeeded();
        let picks: Vec<usize> = (0..4).map(|_| pool.pick(&[], None).unwrap().0).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn affinity_keeps_a_prefix_on_one_backend_unless_it_is_overloaded() {
        let pool = Pool::new(vec![cfg(1), cfg(1), cfg(1)], true).unwrap();
        let first = pool.pick(&[], Some(42)).unwrap().0;
        for _ in 0..3 {
            assert_eq!(pool.pick(&[], Some(42)).unwrap().0, first);
        }
        // Different prefixes spread over the backends.
        let spread: std::collections::HashSet<usize> = (0..64u64)
            .map(|k| pool.pick(&[], Some(mix(k))).unwrap().0)
            .collect();
        assert_eq!(spread.len(), 3);
        // Overloaded: more than the slack above the least busy.
        let held: Vec<_> = (0..AFFINITY_SLACK + 1)
            .map(|_| {
                let (i, l) = pool.pick(&[], Some(42)).unwrap();
                assert_eq!(i, first);
                l
            })
            .collect();
        assert_ne!(pool.pick(&[], Some(42)).unwrap().0, first);
        drop(held);
    }
}
