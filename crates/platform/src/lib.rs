//! tokenfab's platform: who may call, what it costs, and how often.
//!
//! # Layout
//! - [`days`]: UTC days for the daily aggregates.
//! - [`money`]: exact amounts (integer micro-units) and per-model prices.
//! - [`keys`]: API key generation, hashing and constant-time comparison.
//! - [`store`]: the ledger database (SQLite or PostgreSQL): accounts, keys, credits,
//!   reservations, usage rows and daily aggregates; the batch API's files, batches and
//!   their lines.
//! - [`limits`]: RPM/TPM/RPD/TPD counters, in process or in Redis.
//! - `terms`: prices (and batch discounts) and limits per account tier and model ([`Terms`], [`ModelTerms`]),
//!   replaced whole on a configuration reload.
//! - here: [`Platform`], opened on the ledger with a [`PlatformConfig`]; it starts the
//!   settler and releases what a previous run left reserved.
//! - `admission`: what the server calls per request. [`Platform::authenticate`] turns a
//!   bearer token into a [`Caller`]; [`Platform::admit`] checks the rate limits and
//!   reserves the most the request can cost, returning an [`Admission`]; the admission is
//!   settled with the tokens actually used ([`Admission::settle`]), which charges the cost,
//!   releases the rest and corrects the token counters. An admission dropped unsettled
//!   settles itself as an error (not charged), so no path leaks a reservation.
//!   [`Platform::admit_batch`] admits one line of a batch instead: under a ledger id the
//!   batch runner derives from the line, at the batch price, without rate limits, its hold
//!   left for the runner to resume after a crash.
//! - `settler`: the group-commit writer every settlement goes through: one task commits
//!   all the settlements queued meanwhile in one transaction, so that under load one sync
//!   serves many requests. A settlement that moves money is acknowledged once committed;
//!   a free one is not waited for. One the ledger cannot take for now (a full disk, a
//!   database restarting) is kept and retried until it can. [`Platform::quiesce`] waits
//!   for the clients' requests in flight to settle and for the writer to commit them, for
//!   a shutdown.
//! - `testing` (tests only): a platform on a throwaway ledger, with a paid model and a key.

pub mod days;
pub mod keys;
pub mod limits;
pub mod money;
pub mod store;

mod admission;
mod settler;
mod terms;
#[cfg(test)]
mod testing;

pub use admission::{Admission, Caller, Refusal, Used};
pub use terms::{ModelTerms, Terms};

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use admission::CachedKey;
use limits::{Limiter, Rates};
use settler::Settler;
use store::Store;

/// How the platform is set up (the ledger is opened apart, with [`Store::open`]).
#[derive(Clone, Debug)]
pub struct PlatformConfig {
    /// `redis://…` to share rate-limit counters between replicas.
    pub redis_url: Option<String>,
    /// This server's name in reservations; a restart under the same name releases what
    /// the previous run left unsettled.
    pub instance: String,
    /// Limits per account tier, for every model.
    pub tiers: HashMap<String, Rates>,
    /// Per model id (lowercase).
    pub models: HashMap<String, ModelTerms>,
    /// When the rate-limit store (Redis) cannot be reached: `false` refuses requests with
    /// 503 (fail closed: no request escapes its limits), `true` admits them without rate
    /// limits (fail open: an outage of Redis is not an outage of the API). Balances hold
    /// either way: they are the ledger's, not Redis'.
    pub limits_fail_open: bool,
}

/// The per-request face of accounts, keys, prices, balances and limits.
pub struct Platform {
    pub store: Store,
    settler: Settler,
    limiter: Limiter,
    cfg: PlatformConfig,
    /// Prices and limits: the configuration's, replaced whole on a reload.
    terms: RwLock<Arc<Terms>>,
    keys: Mutex<HashMap<String, CachedKey>>,
    keys_exist: Mutex<Option<(Instant, bool)>>,
    /// Ledger ids are `instance/start-time+counter`: unique across restarts and replicas
    /// whatever request ids clients send.
    started: u64,
    seq: AtomicU64,
    /// Clients' requests admitted and not yet settled, which a shutdown waits for
    /// ([`Platform::quiesce`]).
    in_flight: tokio::sync::watch::Sender<usize>,
}

impl Platform {
    /// Takes the opened ledger, connects the limiter and releases what a previous run of
    /// this instance left reserved.
    pub async fn open(store: Store, cfg: PlatformConfig) -> Result<Arc<Platform>, Refusal> {
        let limiter = match &cfg.redis_url {
            Some(url) => Limiter::redis(url).await?,
            None => Limiter::memory(),
        };
        // A day is longer than any request; older reservations are orphans of servers
        // that never came back under their name.
        let released = store.recover(&cfg.instance, 86_400).await?;
        if released > 0 {
            tracing::warn!(
                released,
                instance = %cfg.instance,
                "released reservations of requests that never settled (recorded as interrupted)"
            );
        }
        let settler = Settler::start(store.clone());
        let terms = RwLock::new(Arc::new(Terms {
            tiers: cfg.tiers.clone(),
            models: cfg.models.clone(),
        }));
        Ok(Arc::new(Platform {
            settler,
            store,
            limiter,
            cfg,
            terms,
            keys: Mutex::new(HashMap::new()),
            keys_exist: Mutex::new(None),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0),
            seq: AtomicU64::new(0),
            in_flight: tokio::sync::watch::Sender::new(0),
        }))
    }
}
