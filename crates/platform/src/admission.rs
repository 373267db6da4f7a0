//! The platform's per-request API: who is calling ([`Platform::authenticate`]), whether
//! the request may run ([`Platform::admit`]), and, once it ran, what it used and cost
//! ([`Admission::settle`], or the admission's drop on a path that lost it).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::limits::{Decision, Limit, LimitError, Standing};
use crate::money::{Money, Price};
use crate::store::{
    self, Account, OPEN_ACCOUNT, Outcome, Reservation, Settlement, Source, StoreError,
};
use crate::{Platform, keys};
use tokenfab_wire::usage::TokenUsage;

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
    /// The ledger account the caller's requests are charged to, whose reports it may read
    /// and whose files and batches it uses.
    pub fn account_id(&self) -> i64 {
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

pub(crate) struct CachedKey {
    at: Instant,
    found: Option<(i64, Option<i64>, String, Account)>,
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
    /// Counted in the platform's requests in flight until dropped (a client's request; a
    /// batch line is not: a restart resumes it).
    counted: bool,
}

impl Platform {
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
        let counted = self
            .limiter
            .admit(
                account_id,
                model,
                &rates,
                prompt_tokens.saturating_add(max_completion),
            )
            .await;
        let decision = match counted {
            Ok(d) => d,
            Err(e) if self.cfg.limits_fail_open => {
                tracing::warn!(%e, "the rate-limit store is unavailable: admitting without rate limits (limits_fail_open)");
                Decision::unlimited()
            }
            Err(e) => return Err(e.into()),
        };
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
            counted: true,
        };
        self.in_flight.send_modify(|n| *n += 1);
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
            // Held before it is known to be: should the reservation fail with its outcome
            // unknown, the admission's drop settles it as holding `needed`, which releases
            // a hold that was committed (and nothing otherwise).
            admission.held = needed;
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
        }
        Ok(admission)
    }

    /// Lets one line of a batch run under its own ledger id, `request_id`, which the batch
    /// runner derives from the batch and the line so that a resumed line is the same
    /// request to the ledger. Batch lines are not counted against the rate limits (as
    /// OpenAI exempts its batch API); they pay the model's batch price and are held to the
    /// balance like any request. Their holds are recorded under this instance's batch name
    /// ([`Platform::batch_instance`]), which the restart recovery leaves alone: the runner
    /// resumes the line and adopts its hold here, and a line already settled (the server
    /// stopped between its settlement and the runner's record of it) holds nothing, its
    /// second settlement being refused by the ledger. Either way it is charged once.
    pub async fn admit_batch(
        self: &Arc<Self>,
        caller: &Caller,
        model: &str,
        prompt_tokens: u64,
        max_completion: u64,
        request_id: &str,
    ) -> Result<Admission, Refusal> {
        let account_id = caller.account_id();
        let key_id = match caller {
            Caller::Open => None,
            Caller::Key { key_id, .. } => Some(*key_id),
        };
        let price = self.batch_price(model);
        let mut admission = Admission {
            platform: self.clone(),
            request_id: request_id.to_owned(),
            account_id,
            key_id,
            model: model.to_owned(),
            price,
            held: Money(0),
            prompt_tokens,
            decision: Decision {
                refused: None,
                retry_after: 0,
                requests: None,
                tokens: None,
                ticket: Default::default(),
            },
            used: None,
            settled: false,
            counted: false,
        };
        if account_id == OPEN_ACCOUNT
            || price.is_free()
            || self.store.is_settled(request_id).await?
        {
            return Ok(admission);
        }
        if let Some(held) = self.store.reserved(request_id).await? {
            admission.held = held;
            return Ok(admission);
        }
        let needed = price.most(prompt_tokens, max_completion);
        let r = Reservation {
            request_id: request_id.to_owned(),
            account_id,
            key_id,
            model: model.to_owned(),
            amount: needed,
            prompt_tokens,
        };
        // As in `admit`: held before it is known to be.
        admission.held = needed;
        if !self.store.reserve(&r, &self.batch_instance()).await? {
            admission.settled = true;
            let available = self
                .store
                .account_by_id(account_id)
                .await?
                .map_or(Money(0), |a| a.available());
            return Err(Refusal::InsufficientQuota { needed, available });
        }
        Ok(admission)
    }

    /// The name batch lines' holds are recorded under: not this instance's own, so that
    /// the recovery at start (which releases the instance's holds as interrupted) leaves
    /// them to the batch runner, which resumes their lines.
    pub fn batch_instance(&self) -> String {
        format!("{}#batch", self.cfg.instance)
    }

    /// Waits until every client's request admitted so far has settled and the ledger has
    /// committed every settlement queued: a shutdown calls it once its connections are
    /// closed, so that the requests it cut are recorded before the process exits. The
    /// caller bounds the wait (a ledger that cannot be written keeps its settlements
    /// queued).
    pub async fn quiesce(&self) {
        let _ = self.in_flight.subscribe().wait_for(|&n| n == 0).await;
        self.settler.flush().await;
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
        if s.cost == Money(0) && s.held == Money(0) {
            self.platform.settler.queue(s)?;
            return Ok(cost);
        }
        self.platform.settler.commit(s).await?;
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
        if !self.settled {
            self.settle_dropped();
        }
        if self.counted {
            self.platform.in_flight.send_modify(|n| *n -= 1);
        }
    }
}

impl Admission {
    fn settle_dropped(&mut self) {
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
        let _ = self.platform.settler.queue(s);
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
    use std::sync::atomic::Ordering;

    use crate::Refusal;
    use crate::money::Money;
    use crate::testing::paid_platform;

    /// A reservation whose COMMIT went through but whose reply was lost: the client got a
    /// store error, while the hold stands in the ledger. The refused request's settlement
    /// releases it, uncharged, without a restart.
    #[tokio::test]
    async fn a_hold_whose_commit_reply_was_lost_is_released() {
        let (p, caller, _db) = paid_platform("lost-reply").await;
        let before = p.store.account("a").await.unwrap();
        p.store.lose_commit_reply.store(true, Ordering::SeqCst);
        let refused = p.admit(&caller, "m", 10, 5).await;
        assert!(
            matches!(refused, Err(Refusal::Store(_))),
            "{:?}",
            refused.err()
        );
        p.quiesce().await;
        assert_eq!(p.store.holds().await.unwrap(), (0, Money(0)));
        let after = p.store.account("a").await.unwrap();
        assert_eq!((after.balance, after.reserved), (before.balance, Money(0)));
        // The next request is held and charged as usual.
        let admitted = p.admit(&caller, "m", 10, 5).await.unwrap();
        assert_eq!(p.store.holds().await.unwrap().0, 1);
        drop(admitted);
        p.quiesce().await;
        assert_eq!(p.store.holds().await.unwrap(), (0, Money(0)));
    }
}
