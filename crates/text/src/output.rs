//! A sequence's text pipeline: token bytes → whole UTF-8 characters → thought and answer
//! → the answer cut at stop strings.
//!
//! The order matters: stop strings apply to the answer, never to the thought (a stop of
//! "\n\n" must not end a reasoning model in the middle of its first paragraph of thought),
//! and the splitter must see whole characters so a tag next to Chinese text is found.

use crate::reasoning::{ReasoningSplitter, Split, ThinkTags};
use crate::stop::StopMatcher;
use crate::utf8::Utf8Stream;

/// What one push produced.
#[derive(Debug, Default)]
pub struct Piece {
    /// Text now certain in each field (the answer already cut at a stop string).
    pub split: Split,
    /// A stop string matched in the answer: the sequence ends here.
    pub stopped: bool,
}

/// Per-sequence text state, and the count of reasoning tokens.
///
/// A token is a reasoning token when it is generated inside the thought, tags included.
/// The tokens of an opening tag arrive before the splitter knows they open a thought
/// (`<th`, `ink`, `>`), so tokens of that undecided start are counted once it is decided.
#[derive(Debug)]
pub struct OutputText {
    utf8: Utf8Stream,
    splitter: Option<ReasoningSplitter>,
    stop: StopMatcher,
    reasoning_tokens: usize,
    /// Tokens pushed before it was known whether the output opens a thought.
    undecided: usize,
    /// Answer text has been produced: no thought can open any more.
    answered: bool,
}

impl OutputText {
    /// `thinking`: the model's think tags and whether the prompt opened the thought; `None`
    /// for models that do not think (all text is answer).
    pub fn new(stops: Vec<String>, thinking: Option<(ThinkTags, bool)>) -> Self {
        OutputText {
            utf8: Utf8Stream::new(),
            splitter: thinking.map(|(tags, opened)| ReasoningSplitter::new(tags, opened)),
            stop: StopMatcher::new(stops),
            reasoning_tokens: 0,
            undecided: 0,
            answered: false,
        }
    }

    /// Tokens generated inside the thought so far.
    pub fn reasoning_tokens(&self) -> usize {
        self.reasoning_tokens
    }

    /// Whether the thought is open (tokens generated now are reasoning tokens).
    pub fn in_thought(&self) -> bool {
        self.splitter
            .as_ref()
            .is_some_and(ReasoningSplitter::in_thought)
    }

    /// Whether the answer has begun (answer text came out, or a thought closed): no
    /// thought can open any more.
    pub fn answer_begun(&self) -> bool {
        self.answered
            || self
                .splitter
                .as_ref()
                .is_none_or(ReasoningSplitter::thought_closed)
    }

    /// The next token's bytes. `forced`: the engine fed it to close the thought (it belongs
    /// to the thought whatever the splitter's state).
    pub fn push(&mut self, bytes: &[u8], forced: bool) -> Piece {
        let was_thinking = self.in_thought();
        let text = self.utf8.push(bytes);
        let split = match &mut self.splitter {
            Some(sp) => sp.push(&text),
            None => Split {
                reasoning: String::new(),
                content: text,
            },
        };
        self.count(was_thinking || forced, &split);
        self.answer(split)
    }

    /// An end-of-generation token (no text of its own): it ends a thought that is open.
    pub fn push_end(&mut self) -> Split {
        if self.in_thought() {
            self.reasoning_tokens += 1;
        }
        self.finish()
    }

    fn count(&mut self, thinking: bool, split: &Split) {
        let Some(sp) = &self.splitter else { return };
        if thinking || sp.in_thought() {
            self.reasoning_tokens += 1 + std::mem::take(&mut self.undecided);
        } else if !self.answered && !sp.thought_closed() {
            if split.content.is_empty() {
                self.undecided += 1;
            } else {
                self.answered = true;
                self.undecided = 0;
            }
        }
    }

    /// The thinking budget is spent: end the thought now. The caller then feeds the end
    /// tag's tokens like generated ones; the splitter drops that tag (its contract).
    pub fn force_close(&mut self) -> Piece {
        let split = self
            .splitter
            .as_mut()
            .map(ReasoningSplitter::force_close)
            .unwrap_or_default();
        self.answer(split)
    }

    /// Generation ended: release everything held back (a character cut in half is dropped).
    pub fn finish(&mut self) -> Split {
        self.utf8.finish();
        let mut split = self
            .splitter
            .as_mut()
            .map(ReasoningSplitter::finish)
            .unwrap_or_default();
        let rest = self.stop.push(&split.content);
        split.content = rest.text;
        if !rest.stopped {
            split.content.push_str(&self.stop.finish());
        }
        split
    }

    fn answer(&mut self, mut split: Split) -> Piece {
        let out = self.stop.push(&split.content);
        split.content = out.text;
        Piece {
            split,
            stopped: out.stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(out: &mut OutputText, pieces: &[&str]) -> (String, String, bool) {
        let (mut r, mut c) = (String::new(), String::new());
        for p in pieces {
            let piece = out.push(p.as_bytes(), false);
            r.push_str(&piece.split.reasoning);
            c.push_str(&piece.split.content);
            if piece.stopped {
                return (r, c, true);
            }
        }
        let tail = out.finish();
        r.push_str(&tail.reasoning);
        c.push_str(&tail.content);
        (r, c, false)
    }

    #[test]
    fn stops_apply_to_the_answer_not_the_thought() {
        let mut out = OutputText::new(vec!["\n\n".into()], Some((ThinkTags::default(), true)));
        let (r, c, stopped) = run(&mut out, &["a\n\nb", "</think>", "\n\nans", "wer\n\nmore"]);
        assert_eq!(
            (r.as_str(), c.as_str(), stopped),
            ("a\n\nb", "answer", true)
        );
    }

    #[test]
    fn without_thinking_everything_is_content() {
        let mut out = OutputText::new(vec![], None);
        let (r, c, _) = run(&mut out, &["<think>x</think>", "y"]);
        assert_eq!((r.as_str(), c.as_str()), ("", "<think>x</think>y"));
    }

    #[test]
    fn reasoning_tokens_include_both_tags() {
        let mut out = OutputText::new(vec![], Some((ThinkTags::default(), false)));
        let (r, c, _) = run(
            &mut out,
            &[
                "<th", "ink", ">\n", "x", "</", "think", ">\n\n", "ans", "wer",
            ],
        );
        assert_eq!((r.as_str(), c.as_str()), ("x", "answer"));
        assert_eq!(out.reasoning_tokens(), 7);
        // No thought: nothing counts, whatever the first tokens looked like.
        let mut out = OutputText::new(vec![], Some((ThinkTags::default(), false)));
        run(&mut out, &["<", "b>", "bold", "</think>"]);
        assert_eq!(out.reasoning_tokens(), 0);
    }

    #[test]
    fn forced_close_then_tag_tokens() {
        let mut out = OutputText::new(vec![], Some((ThinkTags::default(), true)));
        let a = out.push(b"thinking hard ", false);
        let f = out.force_close();
        assert!(!out.in_thought());
        let (r, c, _) = run(&mut out, &["\n</", "think>\n\n", "42"]);
        assert_eq!(a.split.reasoning + &f.split.reasoning + &r, "thinking hard");
        assert_eq!(c, "42");
    }
}
