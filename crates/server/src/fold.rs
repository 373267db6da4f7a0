//! The one fold of a local request's engine events into its answer: each choice's counts
//! and finish reason, the request's usage, and its billing. The whole answer collects the
//! fold's [`Step`]s; the stream sends each as it comes; both end through the fold.
//!
//! The fold holds the request's admission and records the usage on it after every event,
//! so a request that ends without settling (a client that hangs up drops the handler or
//! the stream task, and the fold with it) is billed by the admission's drop for exactly
//! what was generated, whichever path it was on.

use tokenfab_engine::scheduler::{Event, FinishReason, TokenLogprob};
use tokenfab_platform::store::{Outcome, Source};
use tokenfab_platform::{Admission, Used};
use tokenfab_text::reasoning::Split;
use tokenfab_wire::usage::TokenUsage;

use crate::routes::settle;

/// What one engine event means for the answer.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Text released for choice `index` (either field may be empty: text held back), with
    /// the token that released it and its log-probabilities when they were asked for.
    Text {
        index: usize,
        text: Split,
        token: Option<(u32, TokenLogprob)>,
    },
    /// The prompt's logprobs for choice `index` (asked for by a completion's `echo`):
    /// entry `i` is prompt token `i + 1`'s.
    Prompt {
        index: usize,
        logprobs: Vec<TokenLogprob>,
    },
    /// Choice `index` ended.
    Finished { index: usize, reason: FinishReason },
    /// Generation failed; the request ends with an error.
    Failed(String),
}

/// One request's choices as their events arrive.
pub struct Fold {
    /// Each prompt's tokens; choice `i` belongs to prompt `i / per_prompt`.
    prompts: Vec<u64>,
    per_prompt: usize,
    choices: Vec<(TokenUsage, Option<FinishReason>)>,
    admission: Option<Admission>,
}

impl Fold {
    /// A request of `n` choices over one prompt (a chat).
    pub fn new(prompt_tokens: usize, n: usize, admission: Option<Admission>) -> Fold {
        Fold::batch(&[prompt_tokens], n, admission)
    }

    /// A request of `per_prompt` choices over each of `prompts` (a completion batch),
    /// choices ordered prompt after prompt.
    pub fn batch(prompts: &[usize], per_prompt: usize, admission: Option<Admission>) -> Fold {
        Fold {
            prompts: prompts.iter().map(|&p| p as u64).collect(),
            per_prompt: per_prompt.max(1),
            choices: vec![(TokenUsage::default(), None); prompts.len() * per_prompt],
            admission,
        }
    }

    /// Folds in an event of choice `index`.
    pub fn apply(&mut self, index: usize, event: Event) -> Step {
        let counted = matches!(event, Event::Token { .. } | Event::Finished { .. });
        let step = match event {
            Event::Token {
                id,
                text,
                logprob,
                usage,
            } => {
                self.choices[index].0 = usage;
                Step::Text {
                    index,
                    text,
                    token: logprob.map(|lp| (id, lp)),
                }
            }
            Event::Text(text) => Step::Text {
                index,
                text,
                token: None,
            },
            Event::Prompt(logprobs) => Step::Prompt { index, logprobs },
            Event::Finished { reason, usage } => {
                self.choices[index] = (usage, Some(reason));
                Step::Finished { index, reason }
            }
            Event::Failed(msg) => Step::Failed(msg),
        };
        // Only a token or an end changes the counts the admission would bill.
        if counted {
            let used = self.used();
            if let Some(a) = self.admission.as_mut() {
                a.record(used);
            }
        }
        step
    }

    /// The request's usage so far: the choices' generated tokens add up, each prompt
    /// counts once.
    pub fn usage(&self) -> TokenUsage {
        self.prompts
            .iter()
            .zip(self.choices.chunks(self.per_prompt))
            .map(|(&p, choices)| {
                choices
                    .iter()
                    .fold(TokenUsage::prompt(p), |all, (u, _)| all.merge(*u))
            })
            .fold(TokenUsage::default(), std::ops::Add::add)
    }

    fn used(&self) -> Used {
        Used {
            tokens: self.usage(),
            source: Source::Engine,
        }
    }

    /// Every choice's finish reason, once all have finished.
    pub fn finish_reasons(&self) -> Option<Vec<FinishReason>> {
        self.choices.iter().map(|(_, f)| *f).collect()
    }

    /// Ends a request whose every choice finished: its usage is settled (and charged)
    /// before the answer leaves, so a client that has its answer sees its balance. A
    /// request with a choice left unfinished is settled as an error instead. Returns the
    /// usage to report.
    pub async fn settle(mut self) -> TokenUsage {
        let outcome = match self.finish_reasons() {
            Some(r) if r.contains(&FinishReason::Length) => Outcome::Length,
            Some(_) => Outcome::Done,
            None => Outcome::Error,
        };
        let used = self.used();
        settle(self.admission.take(), used, outcome).await;
        used.tokens
    }

    /// Ends a request that failed in the server: recorded, not charged.
    pub async fn fail(mut self) {
        let used = self.used();
        settle(self.admission.take(), used, Outcome::Error).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(completion: u64, reasoning: u64, cached: u64) -> TokenUsage {
        TokenUsage {
            prompt: 10,
            cached,
            completion,
            reasoning,
        }
    }

    fn token(n: u64) -> Event {
        Event::Token {
            id: 7,
            text: Split {
                reasoning: String::new(),
                content: "x".into(),
            },
            logprob: None,
            usage: usage(n, 0, 4),
        }
    }

    #[test]
    fn choices_fold_into_one_usage_and_their_finish_reasons() {
        let mut f = Fold::new(10, 2, None);
        assert_eq!(f.usage(), TokenUsage::prompt(10));
        assert!(matches!(
            f.apply(0, token(1)),
            Step::Text {
                index: 0,
                token: None,
                ..
            }
        ));
        f.apply(1, token(1));
        f.apply(1, Event::Text(Split::default()));
        assert_eq!(f.usage().completion, 2);
        assert_eq!(f.finish_reasons(), None);
        let end = |n, reason| Event::Finished {
            reason,
            usage: usage(n, 1, 6),
        };
        assert_eq!(
            f.apply(0, end(3, FinishReason::Stop)),
            Step::Finished {
                index: 0,
                reason: FinishReason::Stop
            }
        );
        f.apply(1, end(5, FinishReason::Length));
        assert_eq!(f.usage(), usage(8, 2, 6));
        assert_eq!(
            f.finish_reasons(),
            Some(vec![FinishReason::Stop, FinishReason::Length])
        );
        assert!(matches!(
            f.apply(0, Event::Failed("boom".into())),
            Step::Failed(m) if m == "boom"
        ));
    }

    /// A request that ends without settling (its handler or stream task dropped with a
    /// client that left) is billed by the fold's admission for what was generated; one that
    /// ends normally is settled with its usage. Both go through the same ledger.
    #[tokio::test]
    async fn the_ledger_gets_what_was_generated_however_the_request_ends() {
        use std::collections::HashMap;
        use tokenfab_platform::store::Store;
        use tokenfab_platform::{Caller, Platform, PlatformConfig};
        let db = tokenfab_testkit::temp_db("fold");
        let store = Store::open(&db.sqlite_url()).await.unwrap();
        let cfg = PlatformConfig {
            redis_url: None,
            instance: "fold-test".into(),
            tiers: HashMap::new(),
            models: HashMap::new(),
        };
        let p = Platform::open(store, cfg).await.unwrap();
        let admit = |model: &'static str| {
            let p = p.clone();
            async move { p.admit(&Caller::Open, model, 10, 50).await.unwrap() }
        };
        let mut gone = Fold::new(10, 1, Some(admit("gone").await));
        gone.apply(0, token(1));
        gone.apply(0, token(2));
        drop(gone);
        let mut done = Fold::new(10, 1, Some(admit("done").await));
        done.apply(0, token(1));
        done.apply(
            0,
            Event::Finished {
                reason: FinishReason::Stop,
                usage: usage(3, 0, 4),
            },
        );
        assert_eq!(done.settle().await.completion, 3);
        let day = tokenfab_platform::store::unix_now().div_euclid(86_400);
        // The dropped request's settlement is queued without an ack; the next commit has it.
        let mut totals = Vec::new();
        for _ in 0..200 {
            totals = p.store.usage(day, day).await.unwrap();
            if totals.len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let completion = |m: &str| {
            let t = totals.iter().find(|t| t.model == m).unwrap();
            (t.requests, t.prompt_tokens, t.completion_tokens)
        };
        assert_eq!(completion("gone"), (1, 10, 2));
        assert_eq!(completion("done"), (1, 10, 3));
    }

    #[test]
    fn a_batch_counts_each_prompt_once() {
        let mut f = Fold::batch(&[10, 3], 2, None);
        for i in 0..4 {
            let mut ev = token(i as u64 + 1);
            // The second prompt's sequences report its 3 tokens, 2 of them cached.
            if let (Event::Token { usage, .. }, true) = (&mut ev, i >= 2) {
                (usage.prompt, usage.cached) = (3, 2);
            }
            f.apply(i, ev);
        }
        let u = f.usage();
        // Prompts 10 + 3, each with its best cache hit.
        assert_eq!((u.prompt, u.cached, u.completion), (13, 6, 10));
        let step = f.apply(3, Event::Prompt(vec![]));
        assert_eq!(
            step,
            Step::Prompt {
                index: 3,
                logprobs: vec![]
            }
        );
    }

    #[test]
    fn logprobs_ride_on_their_token() {
        let mut f = Fold::new(3, 1, None);
        let lp = TokenLogprob {
            logprob: -0.5,
            top: vec![(7, -0.5)],
        };
        let step = f.apply(
            0,
            Event::Token {
                id: 7,
                text: Split::default(),
                logprob: Some(lp.clone()),
                usage: usage(1, 0, 0),
            },
        );
        assert!(matches!(step, Step::Text { token: Some((7, l)), .. } if l == lp));
    }
}
