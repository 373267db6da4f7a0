//! tokenfab's platform: who may call, what it costs, and how often.
//!
//! # Layout
//! - [`days`]: UTC days for the daily aggregates.
//! - [`money`]: exact amounts (integer micro-units) and per-model prices.
//! - [`keys`]: API key generation, hashing and constant-time comparison.
//! - [`store`]: the ledger database (SQLite or PostgreSQL): accounts, keys, credits,
//!   reservations, usage rows and daily aggregates.
//! - [`limits`]: RPM/TPM/RPD/TPD counters, in process or in Redis.
//! - [`Platform`] (here): what the server calls per request. [`Platform::authenticate`]
//!   turns a bearer token into a [`Caller`]; [`Platform::admit`] checks the rate limits and
//!   reserves the most the request can cost, returning an [`Admission`]; the admission is
//!   settled with the tokens actually used ([`Admission::settle`]), which charges the cost,
//!   releases the rest and corrects the token counters. An admission dropped unsettled
//!   settles itself as an error (not charged), so no path leaks a reservation.

pub mod days;
pub mod keys;
pub mod limits;
pub mod money;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use limits::{Decision, Limit, LimitError, Limiter, Rates, Standing};
use money::{Money, Price};
use store::{Account, OPEN_ACCOUNT, Outcome, Reservation, Settlement, Source, Store, StoreError};
use tokenfab_wire::usage::TokenUsage;

/// Prices and limits of one model.
#[derive(Clone, Debug, Default)]
pub struct ModelTerms {
    pub price: Price,
    /// Per account tier; field by field over the tier's own limits.
    pub limits: HashMap<String, Rates>,
}

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
}

/// What a configuration reload may change: tier limits and per-model prices and limits.
#[derive(Clone, Debug, Default)]
pub struct Terms {
    pub tiers: HashMap<String, Rates>,
    /// Per model id (lowercase).
    pub models: HashMap<String, ModelTerms>,
}

/// Who is calling.
#[derive(Clone, Debug)]
pub enum Caller {
    /// No key has ever been made: the quick start, open to whoever reaches the address.
    Open,
    Key {
        key_id: i64,
        account: Account,
    },
}

impl Caller {
    fn account_id(&self) -> i64 {
        match self {
            Caller::Open => OPEN_ACCOUNT,
            Caller::Key { account, .. } => account.id,
        }
    }
}

/// Why a request may not run.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no API key: send `Authorization: Bearer sk-…`")]
    MissingKey,
    #[error("invalid API key")]
    InvalidKey,
    #[error("this API key has been revoked")]
    RevokedKey,
    #[error(
        "rate limit reached: {limit} ({limit_value}) for model `{model}`; retry in {retry_after} s"
    )]
    RateLimited {
        limit: &'static str,
        limit_value: u64,
        model: String,
        retry_after: u64,
        decision: Box<Decision>,
    },
    #[error(
        "insufficient balance: this request may cost up to {needed} and the account has {available} available"
    )]
    InsufficientQuota { needed: Money, available: Money },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Limits(#[from] LimitError),
}

/// How long a looked-up key is trusted before the database is asked again: the longest a
/// revocation made elsewhere (the CLI, another replica) takes to bite.
const KEY_TTL: Duration = Duration::from_secs(2);

struct CachedKey {
    at: Instant,
    found: Option<(i64, Option<i64>, String, Account)>,
}

/// A settlement on its way to the writer, and where its answer goes.
type Pending = (
    Settlement,
    Option<oneshot::Sender<Result<bool, StoreError>>>,
);

/// Most settlements committed together.
const MAX_GROUP: usize = 256;

/// How long usage rows that nobody waits for (free requests) wait for company before
/// they are committed: at thousands of requests a second, one sync per this many rows
/// instead of one per few.
const LINGER: Duration = Duration::from_millis(20);

/// Commits settlements as they come, every one queued meanwhile in the same transaction:
/// under load one sync serves many requests; alone, a settlement someone waits for is
/// committed at once, and one nobody waits for after at most [`LINGER`].
async fn write_settlements(store: Store, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if batch.iter().all(|(_, ack)| ack.is_none()) {
            let deadline = tokio::time::Instant::now() + LINGER;
            while batch.len() < MAX_GROUP {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => {
                        let waited_on = p.1.is_some();
                        batch.push(p);
                        if waited_on {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        let group: Vec<Settlement> = batch.iter().map(|(s, _)| s.clone()).collect();
        let results: Vec<Result<bool, StoreError>> = match store.settle_many(&group).await {
            Ok(r) => r.into_iter().map(Ok).collect(),
            // One at a time, so that a row that fails fails alone.
            Err(_) => {
                let mut out = Vec::with_capacity(group.len());
                for s in &group {
                    out.push(store.settle(s).await);
                }
                out
            }
        };
        for ((s, ack), r) in batch.drain(..).zip(results) {
            match ack {
                Some(ack) => {
                    let _ = ack.send(r);
                }
                None => {
                    if let Err(e) = r {
                        tracing::error!(%e, request_id = %s.request_id, "could not record a request's usage");
                    }
                }
            }
        }
    }
}

/// The per-request face of accounts, keys, prices, balances and limits.
pub struct Platform {
    pub store: Store,
    settler: mpsc::UnboundedSender<Pending>,
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
}

/// The tokens a finished request used, and where the counts came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Used {
    pub tokens: TokenUsage,
    pub source: Source,
}

/// A request let in: the money it holds and the windows it was counted in. Settle it
/// once with what it used.
pub struct Admission {
    platform: Arc<Platform>,
    request_id: String,
    account_id: i64,
    key_id: Option<i64>,
    model: String,
    price: Price,
    held: Money,
    prompt_tokens: u64,
    decision: Decision,
    /// What the request has used so far ([`Admission::record`]), billed if it is dropped
    /// unsettled after generating.
    used: Option<Used>,
    settled: bool,
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
        let (settler, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_settlements(store.clone(), rx));
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
        }))
    }

    /// Whether requests need a key: once any key exists (revoked ones included), always.
    pub async fn auth_required(&self) -> Result<bool, StoreError> {
        if let Some((at, yes)) = *self.keys_exist.lock().unwrap_or_else(|p| p.into_inner())
            && (yes || at.elapsed() < KEY_TTL)
        {
            return Ok(yes);
        }
        let yes = self.store.has_keys().await?;
        *self.keys_exist.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), yes));
        Ok(yes)
    }

    /// The caller behind an `Authorization` header value (`Bearer sk-…`).
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller, Refusal> {
        if !self.auth_required().await? {
            return Ok(Caller::Open);
        }
        let secret = header
            .and_then(|h| {
                let (scheme, rest) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|s| !s.is_empty())
            .ok_or(Refusal::MissingKey)?;
        let hash = keys::hash(secret);
        let cached = {
            let map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&hash)
                .filter(|c| c.at.elapsed() < KEY_TTL)
                .map(|c| c.found.clone())
        };
        let found = match cached {
            Some(f) => f,
            None => {
                let row = self.store.key_by_hash(&hash).await?;
                if let Some((k, _, _)) = &row {
                    let now = store::unix_now();
                    // Last use is kept to the minute, not written per request.
                    if k.revoked_at.is_none() && k.last_used_at.is_none_or(|t| now - t >= 60) {
                        self.store.touch_key(k.id, now).await?;
                    }
                }
                let f = row.map(|(k, h, a)| (k.id, k.revoked_at, h, a));
                let mut map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
                if map.len() > 10_000 {
                    map.retain(|_, c| c.at.elapsed() < KEY_TTL);
                }
                map.insert(
                    hash.clone(),
                    CachedKey {
                        at: Instant::now(),
                        found: f.clone(),
                    },
                );
                f
            }
        };
        match found {
            // The database found the row by its hash; comparing again in constant time
            // keeps the check itself free of timing differences.
            Some((key_id, None, stored, account)) if keys::same(&stored, &hash) => {
                Ok(Caller::Key { key_id, account })
            }
            Some((_, Some(_), _, _)) => Err(Refusal::RevokedKey),
            _ => Err(Refusal::InvalidKey),
        }
    }

    /// Forgets cached keys (after a revocation through this process).
    pub fn forget_keys(&self) {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *self.keys_exist.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Replaces the prices and limits (a configuration reload); requests already admitted
    /// keep the terms they were admitted under.
    pub fn set_terms(&self, terms: Terms) {
        *self.terms.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(terms);
    }

    fn terms(&self) -> Arc<Terms> {
        self.terms.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn price(&self, model: &str) -> Price {
        self.terms()
            .models
            .get(&model.to_ascii_lowercase())
            .map(|t| t.price)
            .unwrap_or_default()
    }

    /// The limits of `tier` on `model`: the tier's (or the `default` tier's), overlaid
    /// with the model's own for that tier.
    pub fn rates(&self, tier: &str, model: &str) -> Rates {
        let all = self.terms();
        let base = all
            .tiers
            .get(tier)
            .or_else(|| all.tiers.get("default"))
            .copied()
            .unwrap_or_default();
        let terms = all.models.get(&model.to_ascii_lowercase());
        match terms.and_then(|t| t.limits.get(tier).or_else(|| t.limits.get("default"))) {
            Some(over) => base.overlaid(over),
            None => base,
        }
    }

    /// Lets a request run, or says why not: the rate limits first (counted on the
    /// estimate of prompt plus the most it may generate), then the balance, from which the
    /// most the request can cost is reserved (paid models only).
    pub async fn admit(
        self: &Arc<Self>,
        caller: &Caller,
        model: &str,
        prompt_tokens: u64,
        max_completion: u64,
    ) -> Result<Admission, Refusal> {
        let account_id = caller.account_id();
        let (tier, key_id) = match caller {
            Caller::Open => ("default", None),
            Caller::Key { key_id, account } => (account.tier.as_str(), Some(*key_id)),
        };
        let rates = self.rates(tier, model);
        let decision = self
            .limiter
            .admit(
                account_id,
                model,
                &rates,
                prompt_tokens.saturating_add(max_completion),
            )
            .await?;
        if let Some(limit) = decision.refused {
            let limit_value = match limit {
                Limit::Rpm => rates.rpm,
                Limit::Tpm => rates.tpm,
                Limit::Rpd => rates.rpd,
                Limit::Tpd => rates.tpd,
            }
            .unwrap_or(0);
            return Err(Refusal::RateLimited {
                limit: limit.name(),
                limit_value,
                model: model.to_owned(),
                retry_after: decision.retry_after,
                decision: Box::new(decision),
            });
        }
        let price = self.price(model);
        let request_id = format!(
            "{}/{:x}{:08x}",
            self.cfg.instance,
            self.started,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        tracing::debug!(ledger_id = %request_id, "admitted");
        let mut admission = Admission {
            platform: self.clone(),
            request_id: request_id.clone(),
            account_id,
            key_id,
            model: model.to_owned(),
            price,
            held: Money(0),
            prompt_tokens,
            decision,
            used: None,
            settled: false,
        };
        if let Caller::Key { account, .. } = caller
            && !price.is_free()
        {
            let needed = price.most(prompt_tokens, max_completion);
            let r = Reservation {
                request_id,
                account_id,
                key_id,
                model: model.to_owned(),
                amount: needed,
                prompt_tokens,
            };
            if !self.store.reserve(&r, &self.cfg.instance).await? {
                // Not run: the token estimate goes back to the limits.
                admission.settled = true;
                let _ = self.limiter.correct(&admission.decision.ticket, 0).await;
                let available = self
                    .store
                    .account_by_id(account.id)
                    .await?
                    .map_or(Money(0), |a| a.available());
                return Err(Refusal::InsufficientQuota { needed, available });
            }
            admission.held = needed;
        }
        Ok(admission)
    }

    /// The caller's account, fresh from the ledger.
    pub async fn account(&self, caller: &Caller) -> Result<Option<Account>, StoreError> {
        match caller {
            Caller::Open => Ok(None),
            Caller::Key { account, .. } => self.store.account_by_id(account.id).await,
        }
    }
}

impl Admission {
    /// Where the request's limits stand, for the `x-ratelimit-*` headers.
    pub fn standing(&self) -> (Option<Standing>, Option<Standing>) {
        (self.decision.requests, self.decision.tokens)
    }

    /// Notes what the request has used so far: if the request is dropped before it settles
    /// (a client that hangs up on a non-streamed answer drops the handler with it), the
    /// tokens generated until then are billed as `client_gone`.
    pub fn record(&mut self, used: Used) {
        self.used = Some(used);
    }

    /// Records the request's usage and charges it (nothing for [`Outcome::Error`]); returns
    /// the cost. A charge is committed before this returns, so that a client holding its
    /// answer sees its balance; a request that neither holds nor costs anything (a free
    /// model) does not wait for its usage row.
    pub async fn settle(mut self, used: Used, outcome: Outcome) -> Result<Money, StoreError> {
        self.settled = true;
        let s = self.settlement(used, outcome);
        let cost = s.cost;
        let total = used.tokens.total();
        if let Err(e) = self
            .platform
            .limiter
            .correct(&self.decision.ticket, total)
            .await
        {
            tracing::warn!(%e, "could not correct the token counters");
        }
        let stopped = || StoreError::Settle("the settlement writer has stopped".into());
        if s.cost == Money(0) && s.held == Money(0) {
            self.platform
                .settler
                .send((s, None))
                .map_err(|_| stopped())?;
            return Ok(cost);
        }
        let (ack, done) = oneshot::channel();
        self.platform
            .settler
            .send((s, Some(ack)))
            .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())??;
        Ok(cost)
    }

    fn settlement(&self, used: Used, outcome: Outcome) -> Settlement {
        let cost = match outcome {
            Outcome::Error | Outcome::Interrupted => Money(0),
            _ => self.price.cost(used.tokens),
        };
        // Never more than what was reserved: the reservation is the promise to the balance.
        let cost = if self.held.0 > 0 {
            cost.min(self.held)
        } else {
            cost
        };
        Settlement {
            request_id: self.request_id.clone(),
            account_id: self.account_id,
            key_id: self.key_id,
            model: self.model.clone(),
            tokens: used.tokens,
            cost,
            held: self.held,
            outcome,
            source: used.source,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // A path that lost its admission (a dropped handler, a panic): the reservation is
        // released; what was generated until then is billed as `client_gone`, and a
        // request that generated nothing is recorded as an error, not charged.
        let (used, outcome) = match self.used {
            Some(u) if u.tokens.completion > 0 => (u, Outcome::ClientGone),
            _ => (
                Used {
                    tokens: TokenUsage::prompt(self.prompt_tokens),
                    source: Source::default(),
                },
                Outcome::Error,
            ),
        };
        let s = self.settlement(used, outcome);
        let _ = self.platform.settler.send((s, None));
        let platform = self.platform.clone();
        let ticket = self.decision.ticket.clone();
        let total = used.tokens.total();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = platform.limiter.correct(&ticket, total).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_settlements_commit_together_and_add_up() {
        let path = std::env::temp_dir().join(format!("tokenfab-group-{}.db", std::process::id()));
        let price = Price {
            input_per_million: "1000".parse().unwrap(),
            output_per_million: "2000".parse().unwrap(),
            cached_input_per_million: None,
        };
        let cfg = PlatformConfig {
            redis_url: None,
            instance: "test".into(),
            tiers: HashMap::new(),
            models: HashMap::from([(
                "m".to_owned(),
                ModelTerms {
                    price,
                    limits: HashMap::new(),
                },
            )]),
        };
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let p = Platform::open(store, cfg).await.unwrap();
        p.store.create_account("a", "default").await.unwrap();
        p.store
            .credit("a", "10.00".parse().unwrap(), "test")
            .await
            .unwrap();
        let (secret, _) = p.store.create_key("a").await.unwrap();
        let caller = p
            .authenticate(Some(&format!("Bearer {secret}")))
            .await
            .unwrap();
        let t = Instant::now();
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (p, caller) = (p.clone(), caller.clone());
                tokio::spawn(async move {
                    let a = p.admit(&caller, "m", 10, 5).await.unwrap();
                    let used = Used {
                        tokens: TokenUsage {
                            completion: 3,
                            ..TokenUsage::prompt(10)
                        },
                        source: Source::Engine,
                    };
                    a.settle(used, Outcome::Done).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            // 10 × 1000 + 3 × 2000 micro-units each.
            assert_eq!(task.await.unwrap(), Money(16_000));
        }
        eprintln!("200 admitted and settled requests in {:?}", t.elapsed());
        let acc = p.store.account("a").await.unwrap();
        assert_eq!(
            (acc.balance, acc.reserved),
            ("6.80".parse().unwrap(), Money(0))
        );
        let day = store::unix_now().div_euclid(86_400);
        let totals = p.store.usage(day, day).await.unwrap();
        assert_eq!(
            (totals[0].requests, totals[0].cost),
            (200, "3.20".parse().unwrap())
        );
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
}
