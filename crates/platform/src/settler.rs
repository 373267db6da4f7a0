//! The group-commit writer. Every settlement is one transaction with a synced commit; at
//! thousands of short requests a second, one sync each would be the server's limit. So
//! settlements go over a channel to one task, which commits each one with all those
//! queued meanwhile in one transaction ([`Store::settle_many`]): under load one sync serves
//! many requests. A settlement that moves money comes with an ack, answered once its group
//! is committed (its client then sees its balance); a free one comes without and waits
//! briefly for company instead.
//!
//! A ledger that cannot be written for a while (its disk full, its PostgreSQL restarting)
//! loses no settlement: one that failed for such a reason is kept and retried, with a
//! growing pause, until the ledger takes it. Its waiter is told at once (its client keeps
//! its answer, which the hold already paid for), so nobody hangs on the outage; the hold
//! stays in the ledger meanwhile, so the money cannot be spent twice. Retrying is safe
//! because a settlement is recorded once per request id ([`Store::settle_many`]).
//! [`Settler::flush`] waits until everything queued before it is committed, for a
//! shutdown that must not lose the last settlements.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::money::Money;
use crate::store::{Settlement, Store, StoreError};

/// A settlement on its way to the writer, and where its answer goes.
struct Pending {
    settlement: Settlement,
    ack: Option<oneshot::Sender<Result<bool, StoreError>>>,
    /// When it was queued: `tokenfab:ledger_settle_seconds` runs from here to its commit.
    queued: Instant,
}

/// What the writer is sent.
enum Message {
    Settle(Pending),
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// The writer's queue, where admissions send their settlements.
pub(crate) struct Settler {
    tx: mpsc::UnboundedSender<Message>,
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
        self.tx.send(Message::Settle(pending)).map_err(|_| {
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
    /// was settled before. An error says it is not recorded yet: if the ledger could not
    /// be written, it is kept and retried.
    pub(crate) async fn commit(&self, s: Settlement) -> Result<bool, StoreError> {
        let (ack, done) = oneshot::channel();
        self.send(s, Some(ack))?;
        done.await.map_err(|_| stopped())?
    }

    /// Waits until every settlement queued before this call is committed (those kept for
    /// a ledger that cannot be written included: the caller bounds the wait).
    pub(crate) async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Message::Flush(ack)).is_ok() {
            let _ = done.await;
        }
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

/// The first pause before settlements kept from a failed write are tried again; it
/// doubles up to [`RETRY_MAX`] while the ledger stays unwritable.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Most free settlements (usage rows that move no money) kept while the ledger cannot be
/// written: free requests are still served then, and their rows must not grow memory
/// without bound. Settlements that move money are always kept; they are few, as no new
/// hold can be made while the ledger cannot be written.
const MAX_KEPT_FREE: usize = 100_000;

/// Whether a failed write may succeed if tried again: the database could not be reached,
/// or refused for its own state (a full disk, a restart, a lock), not for the rows (a
/// constraint they break fails every time).
fn passing(e: &StoreError) -> bool {
    use sqlx::error::ErrorKind;
    match e {
        StoreError::Kept(_) => true,
        StoreError::Db(sqlx::Error::Database(d)) => matches!(d.kind(), ErrorKind::Other),
        StoreError::Db(
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed,
        ) => true,
        _ => false,
    }
}

/// Commits settlements as they come, every one queued meanwhile in the same transaction:
/// under load one sync serves many requests; alone, a settlement someone waits for is
/// committed at once, and one nobody waits for after at most [`LINGER`]. Settlements the
/// ledger could not take for a passing reason are kept and go first into the next group,
/// tried after a pause that grows while the outage lasts.
async fn write_settlements(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Message>,
    depth: metrics::Gauge,
) {
    let latency = metrics::histogram!(SETTLE_SECONDS);
    let mut batch: Vec<Pending> = Vec::new();
    let mut kept: Vec<Pending> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut pause = RETRY_MIN;
    let take = |m: Message, batch: &mut Vec<Pending>, flushes: &mut Vec<_>| match m {
        Message::Settle(p) => batch.push(p),
        Message::Flush(f) => flushes.push(f),
    };
    loop {
        // The next message; with settlements kept, no longer than the pause before their
        // retry.
        let next = if kept.is_empty() {
            rx.recv().await.map(Some)
        } else {
            match tokio::time::timeout(pause, rx.recv()).await {
                Ok(m) => m.map(Some),
                // The pause is over: the kept ones are tried again.
                Err(_) => Some(None),
            }
        };
        // `None`: every sender is gone (the platform was dropped).
        let Some(next) = next else { break };
        if let Some(m) = next {
            take(m, &mut batch, &mut flushes);
        }
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(m) => take(m, &mut batch, &mut flushes),
                Err(_) => break,
            }
        }
        if !batch.is_empty() && flushes.is_empty() && batch.iter().all(|p| p.ack.is_none()) {
            let deadline = tokio::time::Instant::now() + LINGER;
            while batch.len() < MAX_GROUP && flushes.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(m)) => {
                        take(m, &mut batch, &mut flushes);
                        if batch.last().is_some_and(|p| p.ack.is_some()) {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        // The kept ones first: they are the oldest.
        let retrying = !kept.is_empty();
        let mut group = std::mem::take(&mut kept);
        group.append(&mut batch);
        let settlements: Vec<Settlement> = group.iter().map(|p| p.settlement.clone()).collect();
        let results: Vec<Result<bool, StoreError>> = if settlements.is_empty() {
            Vec::new()
        } else {
            match store.settle_many(&settlements).await {
                Ok(r) => r.into_iter().map(Ok).collect(),
                // The ledger, not a row, failed: every settlement of the group is kept.
                Err(e) if passing(&e) => {
                    let why = e.to_string();
                    let kept = || Err(StoreError::Kept(why.clone()));
                    settlements.iter().map(|_| kept()).collect()
                }
                // One at a time, so that a row that fails fails alone.
                Err(_) => {
                    let mut out = Vec::with_capacity(settlements.len());
                    for s in &settlements {
                        out.push(store.settle(s).await);
                    }
                    out
                }
            }
        };
        let mut failure = None;
        let mut free_kept = 0;
        for (mut p, r) in group.into_iter().zip(results) {
            match r {
                Err(e) if passing(&e) => {
                    let why = match e {
                        StoreError::Kept(why) => why,
                        e => e.to_string(),
                    };
                    if let Some(ack) = p.ack.take() {
                        let _ = ack.send(Err(StoreError::Kept(why.clone())));
                    }
                    let s = &p.settlement;
                    let free = s.cost == Money(0) && s.held == Money(0);
                    if free && free_kept >= MAX_KEPT_FREE {
                        depth.decrement(1.0);
                        tracing::error!(request_id = %s.request_id, "the ledger has been unwritable too long: a free request's usage row is dropped");
                    } else {
                        free_kept += usize::from(free);
                        kept.push(p);
                    }
                    failure = Some(why);
                }
                r => {
                    depth.decrement(1.0);
                    latency.record(p.queued.elapsed().as_secs_f64());
                    match p.ack {
                        Some(ack) => {
                            let _ = ack.send(r);
                        }
                        None => {
                            if let Err(e) = r {
                                tracing::error!(%e, request_id = %p.settlement.request_id, "could not record a request's usage");
                            }
                        }
                    }
                }
            }
        }
        if let Some(why) = failure {
            tracing::error!(%why, kept = kept.len(), retry_in = ?pause, "the ledger cannot be written: its settlements are kept and retried");
            pause = (pause * 2).min(RETRY_MAX);
        } else {
            if retrying {
                tracing::info!("the ledger is written again: the kept settlements are recorded");
            }
            pause = RETRY_MIN;
            for f in flushes.drain(..) {
                let _ = f.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::Used;
    use crate::money::Money;
    use crate::store::{self, Outcome, Source};
    use crate::testing::paid_platform;
    use tokenfab_wire::usage::TokenUsage;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_settlements_commit_together_and_add_up() {
        let (p, caller, _db) = paid_platform("group").await;
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
