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
use tokenfab_text::tools::{Piece, Tool, ToolCallParser, ToolFormat, trailing_calls};
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
    /// Choice `index` wrote a complete tool call, its `call`-th (when tools were offered;
    /// `id` is the call's new id, `arguments` compact JSON text).
    Call {
        index: usize,
        call: usize,
        id: String,
        name: String,
        arguments: String,
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
    tools: Option<ToolState>,
}

/// The tools a request offered, as the fold reads answers for their calls.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOffer {
    /// Every call an answer writes is returned, or only its first.
    pub parallel: bool,
    /// How the model writes its calls.
    pub format: ToolFormat,
    /// The tools: an answer that is only a JSON call of them is a call.
    pub tools: Vec<Tool>,
}

/// The answers' tool calls, when tools were offered.
struct ToolState {
    /// Every call is returned, or only each answer's first.
    parallel: bool,
    format: ToolFormat,
    tools: Vec<Tool>,
    parsers: Vec<ToolCallParser>,
    /// Calls returned per choice.
    calls: Vec<usize>,
    /// Per choice, its thought (for a call it ends on) and whether answer text came.
    thoughts: Vec<String>,
    answered: Vec<bool>,
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
            tools: None,
        }
    }

    /// Reads the answers for calls of the tools `offer` names.
    pub fn with_tool_calls(mut self, offer: &ToolOffer) -> Fold {
        let n = self.choices.len();
        self.tools = Some(ToolState {
            parallel: offer.parallel,
            format: offer.format,
            tools: offer.tools.clone(),
            parsers: (0..n)
                .map(|_| ToolCallParser::new(offer.format, offer.tools.clone()))
                .collect(),
            calls: vec![0; n],
            thoughts: vec![String::new(); n],
            answered: vec![false; n],
        });
        self
    }

    /// Whether choice `index` returned a tool call.
    pub fn called(&self, index: usize) -> bool {
        self.tools.as_ref().is_some_and(|t| t.calls[index] > 0)
    }

    /// The steps of answer text `text` of choice `index`: as is without tools, else its
    /// content read for calls (text and calls in order; the token rides on the first).
    fn text_steps(
        &mut self,
        index: usize,
        text: Split,
        token: Option<(u32, TokenLogprob)>,
        end: bool,
    ) -> Vec<Step> {
        let Some(tools) = self.tools.as_mut() else {
            return vec![Step::Text { index, text, token }];
        };
        tools.thoughts[index].push_str(&text.reasoning);
        tools.answered[index] |= !text.content.trim().is_empty();
        let parser = &mut tools.parsers[index];
        let mut pieces = parser.push(&text.content);
        if end {
            pieces.extend(parser.finish());
            // A turn that ended inside or right after a thought that ends on a call, with
            // no answer, called (see `tools::trailing_calls`).
            if !tools.answered[index]
                && tools.calls[index] == 0
                && !pieces.iter().any(|p| matches!(p, Piece::Call(_)))
            {
                let calls = trailing_calls(&tools.thoughts[index], tools.format, &tools.tools);
                pieces.extend(calls.into_iter().map(Piece::Call));
            }
        }
        let mut steps = vec![Step::Text {
            index,
            text: Split {
                reasoning: text.reasoning,
                content: String::new(),
            },
            token,
        }];
        for piece in pieces {
            match piece {
                Piece::Text(t) => match steps.last_mut() {
                    Some(Step::Text { text, .. }) => text.content.push_str(&t),
                    _ => steps.push(Step::Text {
                        index,
                        text: Split {
                            reasoning: String::new(),
                            content: t,
                        },
                        token: None,
                    }),
                },
                Piece::Call(c) => {
                    let call = tools.calls[index];
                    if call > 0 && !tools.parallel {
                        continue;
                    }
                    tools.calls[index] += 1;
                    steps.push(Step::Call {
                        index,
                        call,
                        id: call_id(),
                        name: c.name,
                        arguments: c.arguments,
                    });
                }
            }
        }
        steps
    }

    /// Folds in an event of choice `index`: what it means for the answer, in order (empty
    /// text steps included, for the logprobs they may carry).
    pub fn apply(&mut self, index: usize, event: Event) -> Vec<Step> {
        let counted = matches!(event, Event::Token { .. } | Event::Finished { .. });
        let steps = match event {
            Event::Token {
                id,
                text,
                logprob,
                usage,
            } => {
                self.choices[index].0 = usage;
                self.text_steps(index, text, logprob.map(|lp| (id, lp)), false)
            }
            Event::Text(text) => self.text_steps(index, text, None, false),
            Event::Prompt(logprobs) => vec![Step::Prompt { index, logprobs }],
            Event::Finished { reason, usage } => {
                self.choices[index] = (usage, Some(reason));
                // What the tool-call parser still holds comes out before the end.
                let mut steps = match self.tools {
                    Some(_) => self.text_steps(index, Split::default(), None, true),
                    None => Vec::new(),
                };
                steps.push(Step::Finished { index, reason });
                steps
            }
            Event::Failed(msg) => vec![Step::Failed(msg)],
        };
        // Only a token or an end changes the counts the admission would bill.
        if counted {
            let used = self.used();
            if let Some(a) = self.admission.as_mut() {
                a.record(used);
            }
        }
        steps
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

/// A new tool-call id, unique in practice (`call_` and 24 hex digits, as OpenAI's look).
fn call_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng =
        tokenfab_engine::sampler::Rng::new(nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed) << 40);
    format!("call_{:016x}{:08x}", rng.next_u64(), rng.next_u64() as u32)
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
            &f.apply(0, token(1))[..],
            [Step::Text {
                index: 0,
                token: None,
                ..
            }]
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
            [Step::Finished {
                index: 0,
                reason: FinishReason::Stop
            }]
        );
        f.apply(1, end(5, FinishReason::Length));
        assert_eq!(f.usage(), usage(8, 2, 6));
        assert_eq!(
            f.finish_reasons(),
            Some(vec![FinishReason::Stop, FinishReason::Length])
        );
        assert!(matches!(
            &f.apply(0, Event::Failed("boom".into()))[..],
            [Step::Failed(m)] if m == "boom"
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
            limits_fail_open: false,
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
            [Step::Prompt {
                index: 3,
                logprobs: vec![]
            }]
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
        assert!(matches!(&step[..], [Step::Text { token: Some((7, l)), .. }] if *l == lp));
    }

    /// A reasoning model's call written in its thought, the turn ended with no answer: a
    /// call; with an answer after the thought, the quoted call stays thought.
    #[test]
    fn a_call_the_thought_ends_on_is_recovered() {
        let offer = ToolOffer {
            parallel: true,
            format: ToolFormat::Hermes,
            tools: vec![Tool {
                name: "f".into(),
                string_params: vec![],
            }],
        };
        let thought = |t: &str| {
            Event::Text(Split {
                reasoning: t.into(),
                content: String::new(),
            })
        };
        let end = Event::Finished {
            reason: FinishReason::Stop,
            usage: usage(9, 9, 0),
        };
        let call = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n";
        let mut f = Fold::new(3, 1, None).with_tool_calls(&offer);
        f.apply(0, thought("I need f.\n"));
        f.apply(0, thought(call));
        let steps = f.apply(0, end.clone());
        assert!(
            steps
                .iter()
                .any(|s| matches!(s, Step::Call { name, .. } if name == "f"))
        );
        assert!(f.called(0));

        let mut f = Fold::new(3, 1, None).with_tool_calls(&offer);
        f.apply(0, thought(call));
        f.apply(
            0,
            Event::Text(Split {
                reasoning: String::new(),
                content: "No call needed: 42.".into(),
            }),
        );
        f.apply(0, end);
        assert!(!f.called(0));
    }

    /// With tools, the answer's calls come out as calls (every one, or only the first
    /// without parallel calls), the text around them as text, and a partial tag never.
    #[test]
    fn tool_calls_are_read_from_the_answer() {
        let text = |t: &str| {
            Event::Text(Split {
                reasoning: String::new(),
                content: t.into(),
            })
        };
        let call = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        for parallel in [true, false] {
            let offer = ToolOffer {
                parallel,
                format: ToolFormat::Hermes,
                tools: vec![Tool {
                    name: "f".into(),
                    string_params: vec![],
                }],
            };
            let mut f = Fold::new(3, 1, None).with_tool_calls(&offer);
            let mut steps = f.apply(0, text("Sure. <tool"));
            steps.extend(f.apply(0, text(&call["<tool".len()..])));
            steps.extend(f.apply(0, text(call)));
            steps.extend(f.apply(
                0,
                Event::Finished {
                    reason: FinishReason::Stop,
                    usage: usage(9, 0, 0),
                },
            ));
            let content: String = steps
                .iter()
                .filter_map(|s| match s {
                    Step::Text { text, .. } => Some(text.content.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(content, "Sure. ");
            let calls: Vec<(usize, &str, &str)> = steps
                .iter()
                .filter_map(|s| match s {
                    Step::Call {
                        call,
                        name,
                        arguments,
                        ..
                    } => Some((*call, name.as_str(), arguments.as_str())),
                    _ => None,
                })
                .collect();
            let want = if parallel { 2 } else { 1 };
            assert_eq!(calls.len(), want);
            assert!(
                calls
                    .iter()
                    .enumerate()
                    .all(|(i, c)| *c == (i, "f", "{\"a\":1}"))
            );
            assert!(f.called(0));
        }
    }
}
