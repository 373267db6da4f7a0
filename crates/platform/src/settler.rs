//! The group-commit writer. Every settlement is one transaction with a synced commit; at
//! thousands of short requests a second, one sync each would be the server's limit. So
//! settlements go over a channel to one task, which commits each one with all those
//! queued meanwhile in one transaction ([`Store::settle_many`]): under load one sync serves
//! many requests. A settlement that moves money comes with an ack, answered once its group
//! is committed (its client then sees its balance); a free one comes without and waits
//! briefly for company instead.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::store::{Settlement, Store, StoreError};

/// A settlement on its way to the writer, and where its answer goes.
struct Pending {
    settlement: Settlement,
    ack: Option<oneshot::Sender<Result<bool, StoreError>>>,
    /// When it was queued: `tokenfab:ledger_settle_seconds` runs from here to its commit.
    queued: Instant,
}

/// The writer's queue, where admissions send their settlements.
pub(crate) struct Settler {
    tx: mpsc::UnboundedSender<Pending>,
    /// `tokenfab:ledger_queue_depth`: settlements queued and not yet committed.
    depth: metrics::Gauge,
}

impl Settler {
    /// Starts the writer on `store`.
    pub(crate) fn start(store: Store) -> Settler {
        let (tx, rx) = mpsc::unbounded_channel();
        let depth = metrics::gauge!("tokenfab:ledger_queue_depth");
        tokio::spawn(write_settlements(store, rx, depth.clone()));
        Settler { tx, depth }
    }

    fn send(
        &self,
        settlement: Settlement,
        ack: Option<oneshot::Sender<Result<bool, StoreError>>>,
    ) -> Result<(), StoreError> {
        let pending = Pending {
            settlement,
            ack,
            queued: Instant::now(),
        };
        // Counted before it is sent: the writer may take it at once.
        self.depth.increment(1.0);
        self.tx.send(pending).map_err(|_| {
            self.depth.decrement(1.0);
            stopped()
        })
    }

    /// Queues a settlement nobody waits for (a free request, a dropped admission); the
    /// writer logs it if it cannot be recorded.
    pub(crate) fn queue(&self, s: Settlement) -> Result<(), StoreError> {
        self.send(s, None)
    }

    /// Queues a settlement and waits until its group is committed; false when the request
    /// was settled before.
    pub(crate) async fn commit(&self, s: Settlement) -> Result<bool, StoreError> {
        let (ack, done) = oneshot::channel();
        self.send(s, Some(ack))?;
        done.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Settle("the settlement writer has stopped".into())
}

/// The histogram of the time from a settlement's queueing to its commit.
const SETTLE_SECONDS: &str = "tokenfab:ledger_settle_seconds";

/// Most settlements committed together.
const MAX_GROUP: usize = 256;

/// How long usage rows that nobody waits for (free requests) wait for company before
/// they are committed: at thousands of requests a second, one sync per this many rows
/// instead of one per few.
const LINGER: Duration = Duration::from_millis(20);

/// Commits settlements as they come, every one queued meanwhile in the same transaction:
/// under load one sync serves many requests; alone, a settlement someone waits for is
/// committed at once, and one nobody waits for after at most [`LINGER`].
async fn write_settlements(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    depth: metrics::Gauge,
) {
    let latency = metrics::histogram!(SETTLE_SECONDS);
    let mut batch: Vec<Pending> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if batch.iter().all(|p| p.ack.is_none()) {
            let deadline = tokio::time::Instant::now() + LINGER;
            while batch.len() < MAX_GROUP {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => {
                        let waited_on = p.ack.is_some();
                        batch.push(p);
                        if waited_on {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        let group: Vec<Settlement> = batch.iter().map(|p| p.settlement.clone()).collect();
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
        depth.decrement(batch.len() as f64);
        for (p, r) in batch.drain(..).zip(results) {
            latency.record(p.queued.elapsed().as_secs_f64());
            let Pending {
                settlement: s, ack, ..
            } = p;
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Instant;

    use crate::money::{Money, Price};
    use crate::store::{self, Outcome, Source, Store};
    use crate::{ModelTerms, Platform, PlatformConfig, Used};
    use tokenfab_wire::usage::TokenUsage;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_settlements_commit_together_and_add_up() {
        let db = tokenfab_testkit::temp_db("group");
        let price = Price {
            input_per_million: "1000".parse().unwrap(),
            output_per_million: "2000".parse().unwrap(),
            cached_input_per_million: None,
        };
        let cfg = PlatformConfig {
            limits_fail_open: false,
            redis_url: None,
            instance: "test".into(),
            tiers: HashMap::new(),
            models: HashMap::from([(
                "m".to_owned(),
                ModelTerms {
                    price,
                    limits: HashMap::new(),
                    batch_discount: Default::default(),
                },
            )]),
        };
        let store = Store::open(&db.sqlite_url()).await.unwrap();
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
    }
}
