//! Separating a reasoning model's chain of thought from its answer.
//!
//! Reasoning models (DeepSeek-R1 and its distills, QwQ, Qwen3 in thinking
//! mode, ...) write `<think>` thought `</think>` answer. The OpenAI-compatible
//! API returns the thought as `reasoning_content` and the answer as `content`.
//! This is the part of the product users see first, and it is where other
//! servers (vLLM, SGLang, llama.cpp, Ollama) keep having bugs:
//!
//! * a tag split across tokens (`</th` + `ink>`) leaks into one of the fields;
//! * the answer starts with the `"\n\n"` the model writes after `</think>`;
//! * streaming and non-streaming responses disagree for the same generation.
//!
//! The design answers all three at once: [`split_complete`] is the
//! specification, written as plainly as possible, and [`ReasoningSplitter`]
//! is its incremental form, tested (property tests below) to produce exactly
//! the same two strings for *every* chunking of the text. A streaming client
//! therefore receives, concatenated, byte for byte what a non-streaming client
//! receives.
//!
//! # The rules
//!
//! "Whitespace" is Unicode `White_Space` ([`char::is_whitespace`], what
//! [`str::trim`] uses).
//!
//! 1. **Start** (the prompt did not open the thought): leading whitespace is
//!    skipped; if the start tag follows, the whitespace and the tag are dropped
//!    and the thought begins. Otherwise the output has no thought and all of
//!    it, the leading whitespace included, is content, byte-exact.
//! 2. **Repeated start** (the prompt opened the thought): if the output
//!    begins, after only whitespace, with the start tag, that tag is dropped
//!    with the whitespace around it, and the thought begins after it. Some
//!    models write `<think>` again although the chat template already did, and
//!    a tag must never show up in `reasoning_content`. The output is then
//!    split exactly as if the prompt had not opened the thought. Only that one
//!    tag is dropped: a start tag anywhere later in the thought is text.
//!    The end tag keeps priority: where the end tag begins at that same
//!    place too (one tag is a prefix of the other, e.g. `<t` and `<t/>`, or
//!    they are equal), it is the end tag, not a repeated start tag. So with an
//!    end tag that is a prefix of the start tag (or empty), this rule never
//!    applies; an empty start tag is nothing to drop.
//! 3. **Thinking**: the thought runs to the first end tag, which is dropped.
//!    Whitespace at the very beginning of the thought and right before the end
//!    tag is dropped. If the end tag never comes, the thought is all the rest
//!    (trailing whitespace dropped) and the content is empty.
//! 4. **Answer**: after the end tag, the answer's leading whitespace is
//!    dropped; from its first other character on, everything is content,
//!    byte-exact, including any later tag text (there is only one thought).

use std::mem;

/// The tags around a thought.
///
/// Configurable per model because not every model family spells them
/// `<think>`/`</think>`. Both should be non-empty; an empty start tag means
/// every output begins with a thought (as if `opened`), an empty end tag means
/// the thought is always empty. Either way [`split_complete`] and
/// [`ReasoningSplitter`] agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinkTags {
    /// Opens the thought, e.g. `<think>`.
    pub start: String,
    /// Closes the thought, e.g. `</think>`.
    pub end: String,
}

impl Default for ThinkTags {
    /// DeepSeek-R1's `<think>` / `</think>`.
    fn default() -> Self {
        Self {
            start: "<think>".to_owned(),
            end: "</think>".to_owned(),
        }
    }
}

/// Text for each of the two response fields. Either may be empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    /// The chain of thought: `reasoning_content`.
    pub reasoning: String,
    /// The answer: `content`.
    pub content: String,
}

impl Split {
    /// True when neither field has text (nothing worth a stream chunk).
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty()
    }
}

/// Splits a complete generation at once: the reference semantics.
///
/// Written as simply as possible (find and strip) because it *is* the
/// specification: the streaming [`ReasoningSplitter`] is tested against it.
/// Use it directly when the whole text is at hand (non-streaming responses,
/// stored transcripts). `opened`: the prompt already opened the thought (the
/// chat template's generation prompt ends with the start tag).
///
/// With `opened`, a start tag that the output begins with (after only
/// whitespace) is a repetition of the prompt's and is dropped, unless the end
/// tag begins there as well: `"\n<think>\nhmm</think>ok"` splits into `"hmm"`
/// and `"ok"`, exactly as without `opened`, and `"<think></think>ok"` into
/// `""` and `"ok"`. See rule 2 of the [module documentation](self).
pub fn split_complete(text: &str, tags: &ThinkTags, opened: bool) -> Split {
    let Some(thought) = thought_onwards(text, tags, opened) else {
        // No thought: an ordinary answer, left byte-exact.
        return Split {
            reasoning: String::new(),
            content: text.to_owned(),
        };
    };
    let thought = thought.trim_start();
    match thought.find(tags.end.as_str()) {
        Some(at) => Split {
            reasoning: thought[..at].trim_end().to_owned(),
            content: thought[at + tags.end.len()..].trim_start().to_owned(),
        },
        None => Split {
            reasoning: thought.trim_end().to_owned(),
            content: String::new(),
        },
    }
}

/// Rules 1 and 2: the text from where the thought begins (after its start
/// tag) on, or `None` when there is no thought.
fn thought_onwards<'a>(text: &'a str, tags: &ThinkTags, opened: bool) -> Option<&'a str> {
    let lead = text.trim_start();
    let after_tag = lead.strip_prefix(tags.start.as_str());
    if !opened {
        return after_tag;
    }
    match after_tag {
        // A repeated start tag, unless it is (the beginning of) an end tag.
        Some(after_tag) if !lead.starts_with(tags.end.as_str()) => Some(after_tag),
        _ => Some(text),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not opened: whether a thought begins is not known yet.
    Start,
    /// Opened, and nothing but whitespace yet, perhaps followed by a partial
    /// start tag: whether the thought begins with a repeated start tag (rule
    /// 2) is not known yet.
    Opening,
    /// Inside the thought.
    Thinking,
    /// After the thought, or there was none.
    Answer,
}

/// Incremental [`split_complete`] over decoded text, one piece at a time.
///
/// One per sequence. Feed every piece of decoded text with [`push`], then call
/// [`finish`] once when generation ends; concatenating the [`Split`]s they
/// return gives exactly `split_complete(whole text)`, whatever the pieces.
/// Text is held back only while it is genuinely uncertain: a suffix that may
/// be the beginning of a tag, and whitespace that may turn out to be dropped
/// (before the end tag, or before the start tag at the very beginning). With
/// `opened`, that includes a partial start tag at the very beginning, which
/// may become a repeated start tag and be dropped (rule 2).
///
/// Cost: [`push`] is O(piece length) amortized (plus the tag length once per
/// tag seen); the end tag is searched with a Knuth–Morris–Pratt automaton, so
/// nothing already seen is rescanned, however the text is chunked.
///
/// [`push`]: ReasoningSplitter::push
/// [`finish`]: ReasoningSplitter::finish
#[derive(Debug, Clone)]
pub struct ReasoningSplitter {
    tags: ThinkTags,
    state: State,
    /// Start: matching the start tag after leading whitespace. Opening:
    /// matching [`Self::opening_tag`] (whitespace is not kept: `lead.ws` stays
    /// empty). Answer while `swallowing`: matching the forced end tag.
    lead: LeadingTag,
    /// The start tag is a proper prefix of the end tag: in Opening, a complete
    /// start tag is still uncertain until the end tag is ruled out.
    lead_long: bool,
    /// After [`ReasoningSplitter::force_close`]: an end tag pushed next is the
    /// forced one and is dropped.
    swallowing: bool,
    /// Thinking: a non-whitespace character of the thought was seen (until
    /// then, whitespace is dropped).
    thought_started: bool,
    /// Thinking: the thought's text not yet released. Is at most: whitespace,
    /// then text up to the current candidate end-tag position, then a proper
    /// prefix of the end tag (`end.state` bytes long).
    held: String,
    /// Thinking: `held[..scanned]` is known to be whitespace only, so it is not
    /// scanned again.
    scanned: usize,
    /// Thinking: end-tag search state across pieces.
    end: Kmp,
    /// Answer: a non-whitespace character of the answer was seen (until then,
    /// whitespace is dropped).
    answer_started: bool,
    /// The end tag was seen, or forced.
    closed: bool,
    /// [`ReasoningSplitter::finish`] was called.
    finished: bool,
}

impl ReasoningSplitter {
    /// A splitter for one generation.
    ///
    /// `opened`: the prompt already opened the thought (the chat template's
    /// generation prompt ends with the start tag, as DeepSeek-R1 distills'
    /// `<think>\n` does), so generation starts inside the thought and an
    /// output that contains only an end tag still splits correctly.
    pub fn new(tags: ThinkTags, opened: bool) -> Self {
        // An empty start tag is present before any text: same as opened.
        let opened = opened || tags.start.is_empty();
        // Rule 2 can apply: there is a start tag, and the end tag (which has
        // priority) is not a prefix of it.
        let may_repeat = !tags.start.is_empty() && !tags.start.starts_with(tags.end.as_str());
        let mut splitter = Self {
            end: Kmp::new(&tags.end),
            lead_long: tags.end.len() > tags.start.len()
                && tags.end.starts_with(tags.start.as_str()),
            tags,
            state: State::Start,
            lead: LeadingTag::default(),
            swallowing: false,
            thought_started: false,
            held: String::new(),
            scanned: 0,
            answer_started: false,
            closed: false,
            finished: false,
        };
        if opened {
            splitter.enter_thinking();
            if may_repeat && splitter.state == State::Thinking {
                splitter.state = State::Opening;
            }
        }
        splitter
    }

    /// Feeds the next piece of generated text (any split: mid-tag, mid-word;
    /// empty pieces are fine) and returns what is now certain in each field.
    ///
    /// Must not be called after [`finish`](Self::finish) (debug builds
    /// assert; release builds ignore the text).
    pub fn push(&mut self, text: &str) -> Split {
        debug_assert!(!self.finished, "ReasoningSplitter::push after finish");
        let mut out = Split::default();
        if self.finished {
            return out;
        }
        self.feed(text, &mut out);
        out
    }

    /// Generation ended: releases what was held back, as [`split_complete`]
    /// would place it.
    ///
    /// * Start (the output was only whitespace and perhaps a proper prefix of
    ///   the start tag, e.g. `"\n<thi"`): there was no thought, so all of it is
    ///   content, byte-exact, whitespace-only output included.
    /// * Opening (the output was only whitespace and perhaps a proper prefix
    ///   of the start tag, e.g. `"\n<thi"`): it was not a repeated start tag,
    ///   so the held text is the thought's, as below (`"<thi"`). (If the start
    ///   tag is a proper prefix of the end tag and the output was a complete
    ///   start tag then a proper prefix of the rest of the end tag, the start
    ///   tag is dropped and that rest is the thought's.)
    /// * Thinking (the thought never closed, e.g. `max_tokens` ran out): held
    ///   text is reasoning, a partial end tag included; trailing whitespace of
    ///   the thought is dropped.
    /// * Answer: only whitespace of an answer that never began can be held;
    ///   it is dropped, as is a partial end tag being swallowed after
    ///   [`force_close`](Self::force_close).
    ///
    /// Later calls return an empty [`Split`].
    pub fn finish(&mut self) -> Split {
        let mut out = Split::default();
        if mem::replace(&mut self.finished, true) {
            return out;
        }
        if self.state == State::Opening {
            self.leave_opening(self.lead.matched, &mut out);
        }
        match self.state {
            State::Start => out.content = self.lead.take_held(&self.tags.start),
            State::Opening => unreachable!("left above"),
            State::Thinking => {
                out.reasoning.push_str(self.held.trim_end());
                self.clear_thought();
            }
            State::Answer => self.lead.reset(),
        }
        out
    }

    /// Closes the thought now, as if the end tag had just been generated: the
    /// held reasoning is released (minus trailing whitespace) and the splitter
    /// switches to the answer. For the engine's thinking budget.
    ///
    /// # Contract
    ///
    /// The engine may, and normally will, then feed the end tag's tokens to
    /// the model *and push their decoded text* like any other generated text:
    /// right after `force_close`, pushed whitespace and one end tag are
    /// swallowed (the tag may come split across pieces; the tag's own leading
    /// whitespace counts as optional). So the engine needs no special case
    /// for forced tokens, and for the usual call (in the thought, right before
    /// pushing the end tag) the streamed result equals `split_complete` of the
    /// whole generated text, forced tag included (for end tags like
    /// `</think>` that neither begin with whitespace nor overlap themselves;
    /// and, when forced while a partial repeated start tag is held, as long
    /// as that partial tag followed by the end tag does not spell out the
    /// start tag, which `<think>` and `</think>` never do).
    ///
    /// Not pushing the tag is also fine: as soon as the pushed text diverges
    /// from the end tag (after optional whitespace), swallowing stops and that
    /// text is the answer (its leading whitespace dropped). Only an end tag
    /// immediately following is dropped, never more; if generation ends in
    /// the middle of the forced tag, the partial tag is dropped.
    ///
    /// In Start (the output so far is whitespace and perhaps a partial start
    /// tag; [`in_thought`](Self::in_thought) is false there, so a budget
    /// normally never forces it), the held text is dropped and the thought is
    /// taken as empty and closed. In Opening (`opened`, and the output so far
    /// is whitespace and perhaps a partial start tag that may be a repeated
    /// one), the held text is resolved as [`finish`](Self::finish) resolves
    /// it (a partial start tag is the thought's text: the forced end tag comes
    /// next, not the rest of the start tag), then the thought is closed as
    /// usual: `"\n<thi"` gives the reasoning `"<thi"`. Once the thought is
    /// closed or the answer has begun, this does nothing and returns an empty
    /// [`Split`].
    pub fn force_close(&mut self) -> Split {
        let mut out = Split::default();
        if self.state == State::Opening {
            self.leave_opening(self.lead.matched, &mut out);
        }
        match self.state {
            State::Start => self.lead.reset(),
            State::Opening => unreachable!("left above"),
            State::Thinking => {
                out.reasoning.push_str(self.held.trim_end());
                self.clear_thought();
            }
            // Closed already (perhaps by held text just released): no-op.
            State::Answer => return out,
        }
        self.state = State::Answer;
        self.closed = true;
        self.swallowing = !self.tags.end.is_empty();
        out
    }

    /// True while the thought is open, given all text pushed so far.
    ///
    /// False in Start (a thought may still open, but has not: text that is only
    /// whitespace and a partial start tag is not thinking yet), after the end
    /// tag and after [`force_close`](Self::force_close). With `opened` it is
    /// true from the beginning (even while a repeated start tag may still
    /// come). For counting reasoning tokens and enforcing a thinking budget.
    pub fn in_thought(&self) -> bool {
        matches!(self.state, State::Opening | State::Thinking)
    }

    /// True once the end tag was seen or [`force_close`](Self::force_close)d.
    /// False for an output without a thought, and for a thought that never
    /// closed.
    pub fn thought_closed(&self) -> bool {
        self.closed
    }

    fn enter_thinking(&mut self) {
        if self.tags.end.is_empty() {
            // The empty end tag occurs right away: the thought is empty.
            self.state = State::Answer;
            self.closed = true;
        } else {
            self.state = State::Thinking;
        }
    }

    fn clear_thought(&mut self) {
        self.held.clear();
        self.scanned = 0;
        self.end.state = 0;
    }

    /// Feeds `text` to the state machine, state after state.
    fn feed(&mut self, text: &str, out: &mut Split) {
        let mut rest = Some(text);
        while let Some(text) = rest {
            rest = match self.state {
                State::Start => self.push_start(text, out),
                State::Opening => self.push_opening(text, out),
                State::Thinking => self.push_thinking(text, out),
                State::Answer => {
                    self.push_answer(text, out);
                    None
                }
            };
        }
    }

    /// Opening: what the beginning of the thought is matched against: the
    /// start tag, or the end tag when the start tag is a proper prefix of it
    /// (the end tag has priority, so it must be ruled out).
    fn opening_tag(&self) -> &str {
        if self.lead_long {
            &self.tags.end
        } else {
            &self.tags.start
        }
    }

    /// Opening: returns the thought's text that follows, once it is known
    /// whether the thought begins with a repeated start tag.
    fn push_opening<'a>(&mut self, text: &'a str, out: &mut Split) -> Option<&'a str> {
        let mut text = text;
        if self.lead.matched == 0 {
            // Whitespace at the beginning of the thought is dropped anyway.
            text = text.trim_start();
            if text.is_empty() {
                return None;
            }
        }
        let tag = self.opening_tag();
        let need = &tag.as_bytes()[self.lead.matched..];
        let common = need
            .iter()
            .zip(text.as_bytes())
            .take_while(|(a, b)| a == b)
            .count();
        let total = self.lead.matched + common;
        if common == text.len() && total < tag.len() {
            // Still a proper prefix of the tag: held.
            self.lead.matched = total;
            return None;
        }
        // The tag is complete, or the text diverged from it.
        let skip = self.leave_opening(total, out);
        Some(&text[skip..])
    }

    /// Opening is decided: the text after the leading whitespace is (at least)
    /// `total` bytes of [`Self::opening_tag`], the `lead.matched` held ones
    /// and then some of the current piece, after which the tag is complete or
    /// the text diverges from it (or ends). Switches to Thinking, feeds it the
    /// held text that is the thought's, and returns how many bytes of the
    /// current piece to skip (the rest of a dropped start tag).
    fn leave_opening(&mut self, total: usize, out: &mut Split) -> usize {
        let tag_len = self.opening_tag().len();
        let start_len = self.tags.start.len();
        let repeated = if self.lead_long {
            // The start tag, but not the whole end tag.
            total >= start_len && total < tag_len
        } else {
            total == tag_len
        };
        let skip = if repeated { start_len } else { 0 };
        let held = mem::take(&mut self.lead.matched);
        self.state = State::Thinking;
        if skip < held {
            // Never more than the tag: O(tag length), once.
            let thought = self.opening_tag()[skip..held].to_owned();
            self.feed(&thought, out);
            0
        } else {
            skip - held
        }
    }

    /// Start: returns the text after the start tag once it is found.
    fn push_start<'a>(&mut self, text: &'a str, out: &mut Split) -> Option<&'a str> {
        match self.lead.feed(&self.tags.start, text) {
            Lead::Pending => None,
            Lead::Found(after_tag) => {
                self.lead.reset();
                self.enter_thinking();
                Some(after_tag)
            }
            Lead::Mismatch(rest) => {
                // No thought: everything, held whitespace included, is content.
                out.content.push_str(&self.lead.take_held(&self.tags.start));
                out.content.push_str(rest);
                self.state = State::Answer;
                self.answer_started = true;
                None
            }
        }
    }

    /// Thinking: returns the text after the end tag once it is found.
    fn push_thinking<'a>(&mut self, text: &'a str, out: &mut Split) -> Option<&'a str> {
        let mut text = text;
        if !self.thought_started {
            text = text.trim_start();
            if text.is_empty() {
                return None;
            }
            self.thought_started = true;
        }
        let end = &mut self.end;
        match text.bytes().position(|b| end.feed(b)) {
            Some(last) => {
                let (body, after_tag) = text.split_at(last + 1);
                self.held.push_str(body);
                // The whole tag is in `held`: it cannot start before the
                // longest partial match, which `held` always keeps.
                let tag_at = self.held.len() - self.tags.end.len();
                out.reasoning.push_str(self.held[..tag_at].trim_end());
                self.clear_thought();
                self.state = State::Answer;
                self.closed = true;
                Some(after_tag)
            }
            None => {
                self.held.push_str(text);
                // Before `certain`, the end tag can no longer start; release up
                // to its last non-whitespace character. Only the part not
                // scanned before is scanned (`held[..scanned]` is whitespace).
                let certain = self.held.len() - self.end.state;
                let last_solid = self.held[self.scanned..certain]
                    .char_indices()
                    .rev()
                    .find(|&(_, c)| !c.is_whitespace());
                match last_solid {
                    Some((at, c)) => {
                        let upto = self.scanned + at + c.len_utf8();
                        out.reasoning.push_str(&self.held[..upto]);
                        self.held.drain(..upto);
                        self.scanned = certain - upto;
                    }
                    None => self.scanned = certain,
                }
                None
            }
        }
    }

    fn push_answer(&mut self, text: &str, out: &mut Split) {
        if !self.swallowing {
            self.answer_text(text, out);
            return;
        }
        // Whitespace, then the end tag: its own leading whitespace, if any,
        // is part of the first.
        let tag = self.tags.end.trim_start();
        match self.lead.feed(tag, text) {
            Lead::Pending => {}
            Lead::Found(after_tag) => {
                self.lead.reset();
                self.swallowing = false;
                self.answer_text(after_tag, out);
            }
            Lead::Mismatch(rest) => {
                // Not the forced tag after all: it is the answer. Its leading
                // whitespace goes the usual way (dropped).
                self.swallowing = false;
                let held = self.lead.take_held(tag);
                self.answer_text(&held, out);
                self.answer_text(rest, out);
            }
        }
    }

    fn answer_text(&mut self, text: &str, out: &mut Split) {
        let text = if self.answer_started {
            text
        } else {
            let text = text.trim_start();
            if text.is_empty() {
                return;
            }
            self.answer_started = true;
            text
        };
        out.content.push_str(text);
    }
}

/// Matches a tag at the beginning of a stream, after optional whitespace
/// (what [`str::trim_start`] then [`str::strip_prefix`] do, incrementally).
#[derive(Debug, Clone, Default)]
struct LeadingTag {
    /// Leading whitespace seen.
    ws: String,
    /// Bytes of the tag matched after it (a proper prefix).
    matched: usize,
}

enum Lead<'a> {
    /// Still possible; everything so far is held.
    Pending,
    /// The tag is complete; the text after it.
    Found(&'a str),
    /// Not the tag: the held text (see [`LeadingTag::take_held`]) then this.
    Mismatch(&'a str),
}

impl LeadingTag {
    fn feed<'a>(&mut self, tag: &str, text: &'a str) -> Lead<'a> {
        let mut text = text;
        if self.matched == 0 {
            let solid = text.trim_start();
            self.ws.push_str(&text[..text.len() - solid.len()]);
            text = solid;
            if text.is_empty() {
                return Lead::Pending;
            }
        }
        let need = &tag[self.matched..];
        if text.len() >= need.len() {
            match text.strip_prefix(need) {
                Some(after_tag) => Lead::Found(after_tag),
                None => Lead::Mismatch(text),
            }
        } else if need.starts_with(text) {
            self.matched += text.len();
            Lead::Pending
        } else {
            Lead::Mismatch(text)
        }
    }

    /// The held text (whitespace, then the partial tag), resetting.
    fn take_held(&mut self, tag: &str) -> String {
        let mut held = mem::take(&mut self.ws);
        held.push_str(&tag[..self.matched]);
        self.matched = 0;
        held
    }

    fn reset(&mut self) {
        self.ws.clear();
        self.matched = 0;
    }
}

/// Knuth–Morris–Pratt search for one non-empty pattern, fed byte by byte
/// across pieces. Bytewise matching is exact for UTF-8: a match starts at a
/// character boundary because the pattern's first byte starts a character.
#[derive(Debug, Clone)]
struct Kmp {
    pattern: Vec<u8>,
    /// `fail[i]`: length of the longest proper border of `pattern[..=i]`.
    fail: Vec<usize>,
    /// Length of the longest suffix of the input that is a proper prefix of
    /// the pattern.
    state: usize,
}

impl Kmp {
    fn new(pattern: &str) -> Self {
        let pattern = pattern.as_bytes().to_vec();
        let mut fail = vec![0; pattern.len()];
        let mut k = 0;
        for (i, &b) in pattern.iter().enumerate().skip(1) {
            while k > 0 && pattern[k] != b {
                k = fail[k - 1];
            }
            if pattern[k] == b {
                k += 1;
            }
            fail[i] = k;
        }
        Self {
            pattern,
            fail,
            state: 0,
        }
    }

    /// Feeds one byte; true when the pattern just ended (state then resets).
    fn feed(&mut self, b: u8) -> bool {
        while self.state > 0 && self.pattern[self.state] != b {
            self.state = self.fail[self.state - 1];
        }
        if self.pattern[self.state] == b {
            self.state += 1;
        }
        if self.state == self.pattern.len() {
            self.state = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    fn tags(start: &str, end: &str) -> ThinkTags {
        ThinkTags {
            start: start.to_owned(),
            end: end.to_owned(),
        }
    }

    fn split(reasoning: &str, content: &str) -> Split {
        Split {
            reasoning: reasoning.to_owned(),
            content: content.to_owned(),
        }
    }

    fn append(acc: &mut Split, part: Split) {
        acc.reasoning.push_str(&part.reasoning);
        acc.content.push_str(&part.content);
    }

    /// Streams `pieces`, checking the holding invariant after each push.
    fn stream<S: AsRef<str>>(tags: &ThinkTags, opened: bool, pieces: &[S]) -> Split {
        let mut s = ReasoningSplitter::new(tags.clone(), opened);
        let mut acc = Split::default();
        for piece in pieces {
            append(&mut acc, s.push(piece.as_ref()));
            check_invariants(&s);
        }
        append(&mut acc, s.finish());
        acc
    }

    /// Released as soon as certain: in the thought, nothing is held but
    /// whitespace and a partial end tag.
    fn check_invariants(s: &ReasoningSplitter) {
        match s.state {
            State::Thinking => {
                let partial = s.end.state;
                assert!(partial < s.tags.end.len());
                let (before, tag) = s.held.split_at(s.held.len() - partial);
                assert!(before.chars().all(char::is_whitespace), "{:?}", s.held);
                assert!(s.tags.end.starts_with(tag));
                assert!(s.scanned <= before.len());
            }
            State::Start => {
                assert!(s.held.is_empty());
                assert!(s.lead.ws.chars().all(char::is_whitespace));
            }
            State::Opening => {
                // Only a proper prefix of the tag; whitespace is not kept.
                assert!(s.held.is_empty());
                assert!(s.lead.ws.is_empty());
                assert!(s.lead.matched < s.opening_tag().len());
                assert!(!s.thought_started);
            }
            State::Answer => assert!(s.held.is_empty()),
        }
    }

    fn chars(text: &str) -> Vec<String> {
        text.chars().map(String::from).collect()
    }

    #[test]
    fn r1_opened_pieces() {
        let pieces = [
            "Okay",
            ", so",
            " 2+2",
            "\n</th",
            "ink>",
            "\n\n",
            "The answer",
            " is 4.",
        ];
        let mut s = ReasoningSplitter::new(ThinkTags::default(), true);
        assert!(s.in_thought());
        assert_eq!(s.push(pieces[0]), split("Okay", ""));
        assert_eq!(s.push(pieces[1]), split(", so", ""));
        assert_eq!(s.push(pieces[2]), split(" 2+2", ""));
        // "\n</th": whitespace and a partial tag, both held.
        assert_eq!(s.push(pieces[3]), split("", ""));
        assert!(s.in_thought());
        assert!(!s.thought_closed());
        assert_eq!(s.push(pieces[4]), split("", ""));
        assert!(!s.in_thought());
        assert!(s.thought_closed());
        assert_eq!(s.push(pieces[5]), split("", ""));
        assert_eq!(s.push(pieces[6]), split("", "The answer"));
        assert_eq!(s.push(pieces[7]), split("", " is 4."));
        assert_eq!(s.finish(), split("", ""));
        assert_eq!(
            stream(&ThinkTags::default(), true, &pieces),
            split("Okay, so 2+2", "The answer is 4.")
        );
    }

    #[test]
    fn not_opened_with_tags() {
        let text = "<think>\nI need…\n</think>\n\nThe answer is 4.";
        let want = split("I need…", "The answer is 4.");
        let t = ThinkTags::default();
        assert_eq!(split_complete(text, &t, false), want);
        assert_eq!(stream(&t, false, &[text]), want);
        assert_eq!(stream(&t, false, &chars(text)), want);
        // Leading whitespace before the start tag goes with it.
        assert_eq!(
            stream(&t, false, &["\n", " <th", "ink>hi</think>ok"]),
            split("hi", "ok")
        );
        let mut s = ReasoningSplitter::new(t, false);
        assert!(!s.in_thought());
        assert_eq!(s.push("\n<thi"), split("", ""));
        assert!(!s.in_thought());
        s.push("nk>");
        assert!(s.in_thought());
    }

    #[test]
    fn no_thought_is_byte_exact() {
        let t = ThinkTags::default();
        assert_eq!(stream(&t, false, &["Hello"]), split("", "Hello"));
        assert_eq!(
            stream(&t, false, &[" ", "\n Hel", "lo \n"]),
            split("", " \n Hello \n")
        );
        // A near-tag at the start is released once it diverges.
        let mut s = ReasoningSplitter::new(t.clone(), false);
        assert_eq!(s.push("\n<th"), split("", ""));
        assert_eq!(s.push("e"), split("", "\n<the"));
        assert_eq!(s.push(" end</think> x"), split("", " end</think> x"));
        assert!(!s.thought_closed());
        assert_eq!(s.finish(), split("", ""));
        // A thought later in the output is not a thought.
        assert_eq!(
            stream(&t, false, &["a<think>b</think>c"]),
            split("", "a<think>b</think>c")
        );
    }

    #[test]
    fn thought_never_closed() {
        let t = ThinkTags::default();
        let mut s = ReasoningSplitter::new(t.clone(), true);
        assert_eq!(s.push("\nLet me"), split("Let me", ""));
        assert_eq!(s.push(" think \n"), split(" think", ""));
        assert_eq!(s.push("</th"), split("", ""));
        assert_eq!(s.finish(), split(" \n</th", ""));
        assert!(!s.thought_closed());
        assert!(s.in_thought());
        assert_eq!(stream(&t, true, &["abc", "  \n", "\n"]), split("abc", ""));
        assert_eq!(stream(&t, false, &["<think>abc\n"]), split("abc", ""));
        assert_eq!(stream(&t, false, &["<think>"]), split("", ""));
    }

    #[test]
    fn tag_split_at_every_position() {
        let t = ThinkTags::default();
        let text = " <think>\nab c\n</think>\n\nanswer <x";
        let want = split("ab c", "answer <x");
        assert_eq!(split_complete(text, &t, false), want);
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &i in &cuts {
            for &j in cuts.iter().filter(|&&j| j >= i) {
                let pieces = [&text[..i], &text[i..j], &text[j..]];
                assert_eq!(stream(&t, false, &pieces), want, "{pieces:?}");
            }
        }
    }

    #[test]
    fn multibyte_around_tags() {
        let t = ThinkTags::default();
        let text = "思考</think>答案";
        for i in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            assert_eq!(
                stream(&t, true, &[&text[..i], &text[i..]]),
                split("思考", "答案")
            );
        }
        assert_eq!(
            stream(&t, true, &chars("\u{3000}思\u{3000}</think>\u{3000}答")),
            split("思", "答")
        );
        let t = tags("<思>", "</思>");
        assert_eq!(
            stream(&t, false, &chars("<思>想</思>答")),
            split("想", "答")
        );
    }

    #[test]
    fn lt_that_is_not_a_tag() {
        let t = ThinkTags::default();
        let mut s = ReasoningSplitter::new(t.clone(), true);
        assert_eq!(s.push("a <"), split("a", ""));
        assert_eq!(s.push(" b</"), split(" < b", ""));
        assert_eq!(s.push("/think>"), split("<//think>", ""));
        assert_eq!(s.push("</think>x"), split("", "x"));
        assert_eq!(
            stream(&t, true, &chars("a < b</think>x")),
            split("a < b", "x")
        );
        assert_eq!(
            stream(&t, true, &chars("<</</t</think>x")),
            split("<</</t", "x")
        );
    }

    #[test]
    fn end_tag_in_answer_stays() {
        let t = ThinkTags::default();
        let text = "x</think>\ny</think> <think>z\n";
        let want = split("x", "y</think> <think>z\n");
        assert_eq!(split_complete(text, &t, true), want);
        assert_eq!(stream(&t, true, &chars(text)), want);
    }

    #[test]
    fn custom_tags() {
        let t = tags("<reasoning>", "</reasoning>");
        let text = "\n<reasoning>\nhmm </think>\n</reasoning>\n\nok";
        let want = split("hmm </think>", "ok");
        assert_eq!(split_complete(text, &t, false), want);
        assert_eq!(stream(&t, false, &chars(text)), want);
        // Self-overlapping end tag: the KMP fallback matters.
        let t = tags("[[", "]]]");
        assert_eq!(
            stream(&t, false, &chars("[[a]]b]]]]c")),
            split("a]]b", "]c")
        );
        assert_eq!(stream(&t, true, &chars("]]]]")), split("", "]"));
        let t = tags("[[", "]]>");
        assert_eq!(stream(&t, true, &chars("a]]]>b")), split("a]", "b"));
        assert_eq!(stream(&t, true, &chars("a]]]]>b")), split("a]]", "b"));
    }

    #[test]
    fn empty_tags() {
        let t = tags("", "</think>");
        assert_eq!(stream(&t, false, &[" a</think> b"]), split("a", "b"));
        assert_eq!(split_complete(" a</think> b", &t, false), split("a", "b"));
        let t = tags("<think>", "");
        let mut s = ReasoningSplitter::new(t.clone(), true);
        assert!(s.thought_closed());
        assert_eq!(s.push(" a"), split("", "a"));
        assert_eq!(split_complete(" a", &t, true), split("", "a"));
        assert_eq!(stream(&t, false, &["<think> a"]), split("", "a"));
    }

    #[test]
    fn whitespace_only() {
        let t = ThinkTags::default();
        for ws in ["", " ", "\n\n", " \n\t\u{3000}"] {
            // No thought: byte-exact, whitespace included.
            assert_eq!(stream(&t, false, &chars(ws)), split("", ws));
            assert_eq!(split_complete(ws, &t, false), split("", ws));
            // Inside a thought, whitespace is dropped.
            assert_eq!(stream(&t, true, &chars(ws)), split("", ""));
            assert_eq!(split_complete(ws, &t, true), split("", ""));
        }
        let text = "\n<think>\n\n</think>\n\n";
        assert_eq!(stream(&t, false, &chars(text)), split("", ""));
        assert_eq!(split_complete(text, &t, false), split("", ""));
        assert_eq!(stream(&t, false, &["\n<thi"]), split("", "\n<thi"));
    }

    #[test]
    fn force_close_then_engine_pushes_tag() {
        let t = ThinkTags::default();
        let mut s = ReasoningSplitter::new(t.clone(), true);
        assert_eq!(s.push("abc \n"), split("abc", ""));
        assert_eq!(s.force_close(), split("", ""));
        assert!(!s.in_thought());
        assert!(s.thought_closed());
        assert_eq!(s.push("</"), split("", ""));
        assert_eq!(s.push("think>"), split("", ""));
        assert_eq!(s.push("\n\n"), split("", ""));
        assert_eq!(s.push("Answer"), split("", "Answer"));
        assert_eq!(s.push(" </think>"), split("", " </think>"));
        assert_eq!(s.finish(), split("", ""));
        // A held partial end tag is reasoning, as with a real end tag next:
        // the result equals the oracle on the whole generated text.
        let mut s = ReasoningSplitter::new(t.clone(), true);
        let mut acc = s.push("abc</th");
        append(&mut acc, s.force_close());
        append(&mut acc, s.push("</think>\n\nans"));
        append(&mut acc, s.finish());
        assert_eq!(acc, split("abc</th", "ans"));
        assert_eq!(split_complete("abc</th</think>\n\nans", &t, true), acc);
    }

    #[test]
    fn force_close_without_pushing_tag() {
        let t = ThinkTags::default();
        let mut s = ReasoningSplitter::new(t.clone(), true);
        assert_eq!(s.push("abc"), split("abc", ""));
        assert_eq!(s.force_close(), split("", ""));
        assert_eq!(s.push("\n\n"), split("", ""));
        assert_eq!(s.push("Hello</think>"), split("", "Hello</think>"));
        // Divergence in the middle of what looked like the forced tag.
        let mut s = ReasoningSplitter::new(t.clone(), true);
        s.push("abc");
        s.force_close();
        assert_eq!(s.push(" </th"), split("", ""));
        assert_eq!(s.push("x"), split("", "</thx"));
        // Generation ends in the middle of the forced tag: dropped.
        let mut s = ReasoningSplitter::new(t, true);
        s.push("abc");
        s.force_close();
        assert_eq!(s.push("</th"), split("", ""));
        assert_eq!(s.finish(), split("", ""));
    }

    #[test]
    fn force_close_tag_with_leading_whitespace() {
        let t = tags("<think>", "\n</think>");
        let mut s = ReasoningSplitter::new(t, true);
        assert_eq!(s.push("abc\n"), split("abc", ""));
        s.force_close();
        assert_eq!(s.push("\n</think>\n\nok"), split("", "ok"));
    }

    #[test]
    fn force_close_other_states() {
        let t = ThinkTags::default();
        // Already closed: no-op, a later end tag is content.
        let mut s = ReasoningSplitter::new(t.clone(), true);
        s.push("a</think>b");
        assert_eq!(s.force_close(), split("", ""));
        assert_eq!(s.push("</think>"), split("", "</think>"));
        // No thought: no-op.
        let mut s = ReasoningSplitter::new(t.clone(), false);
        assert_eq!(s.push("hi"), split("", "hi"));
        assert_eq!(s.force_close(), split("", ""));
        assert!(!s.thought_closed());
        assert_eq!(s.push("</think>"), split("", "</think>"));
        // Start with a partial start tag: dropped, empty thought closed.
        let mut s = ReasoningSplitter::new(t.clone(), false);
        assert_eq!(s.push("\n<thi"), split("", ""));
        assert_eq!(s.force_close(), split("", ""));
        assert!(s.thought_closed());
        assert_eq!(s.push("</think>\n\nok"), split("", "ok"));
        // Twice: the second is a no-op.
        let mut s = ReasoningSplitter::new(t, true);
        s.push("a ");
        s.force_close();
        assert_eq!(s.force_close(), split("", ""));
        assert_eq!(s.push("</think>ok"), split("", "ok"));
    }

    /// Both the oracle and every chunking (whole, per char, cut at any two
    /// places) give `want`.
    fn check_all(t: &ThinkTags, opened: bool, text: &str, want: Split) {
        assert_eq!(split_complete(text, t, opened), want, "{text:?}");
        assert_eq!(stream(t, opened, &[text]), want, "{text:?}");
        assert_eq!(stream(t, opened, &chars(text)), want, "{text:?}");
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &i in &cuts {
            for &j in cuts.iter().filter(|&&j| j >= i) {
                let pieces = [&text[..i], &text[i..j], &text[j..]];
                assert_eq!(stream(t, opened, &pieces), want, "{pieces:?}");
            }
        }
    }

    #[test]
    fn opened_repeated_start_tag_is_dropped() {
        let t = ThinkTags::default();
        check_all(&t, true, "<think>\n</think>\n\nX", split("", "X"));
        check_all(&t, true, "\n<think>a</think>b", split("a", "b"));
        check_all(
            &t,
            true,
            " \n<think> \n hmm \n</think>\nok",
            split("hmm", "ok"),
        );
        check_all(&t, true, "<think>", split("", ""));
        check_all(
            &t,
            true,
            "\n<think>\nstill thinking",
            split("still thinking", ""),
        );
        // Only one: a second start tag, or one later in the thought, is text.
        check_all(&t, true, "<think><think>a</think>b", split("<think>a", "b"));
        check_all(&t, true, "<think>\n<think>a", split("<think>a", ""));
        check_all(&t, true, "a<think>b</think>c", split("a<think>b", "c"));
        check_all(&t, true, "\n<think\n>a", split("<think\n>a", ""));
        // A partial start tag that the output ends in, or that diverges.
        check_all(&t, true, "<thin", split("<thin", ""));
        check_all(&t, true, "\n<thin \n", split("<thin", ""));
        check_all(&t, true, "<thinking>a</think>b", split("<thinking>a", "b"));
        check_all(&t, true, "<</think>b", split("<", "b"));
        check_all(&t, true, "<th</think>b", split("<th", "b"));
        // Without `opened` nothing changes: one start tag, then text.
        check_all(
            &t,
            false,
            "<think><think>a</think>b",
            split("<think>a", "b"),
        );
        // Custom tags.
        let r = tags("<reasoning>", "</reasoning>");
        check_all(
            &r,
            true,
            "\n<reasoning>\nx\n</reasoning>\ny",
            split("x", "y"),
        );
        let r = tags("<think>", "\n</think>");
        check_all(&r, true, "<think>\nx\n</think>\ny", split("x", "y"));
    }

    #[test]
    fn opened_partial_start_tag_is_held() {
        let t = ThinkTags::default();
        let mut s = ReasoningSplitter::new(t.clone(), true);
        assert!(s.in_thought());
        assert_eq!(s.push(" \n"), split("", ""));
        assert_eq!(s.push("<thi"), split("", ""));
        assert!(s.in_thought());
        assert_eq!(s.push("nk"), split("", ""));
        assert_eq!(s.push(">\n\nOkay"), split("Okay", ""));
        assert_eq!(s.push(" <think>"), split(" <think>", ""));
        assert_eq!(s.push("</think>\nA"), split("", "A"));
        assert_eq!(s.finish(), split("", ""));
        // Released as soon as it diverges.
        let mut s = ReasoningSplitter::new(t.clone(), true);
        assert_eq!(s.push("\n<th"), split("", ""));
        assert_eq!(s.push("e"), split("<the", ""));
        let mut s = ReasoningSplitter::new(t.clone(), true);
        assert_eq!(s.push("<"), split("", ""));
        // "<" may be the end tag's beginning too: Thinking holds it.
        assert_eq!(s.push("/"), split("", ""));
        assert_eq!(s.push("x"), split("</x", ""));
        // Ends held: it was no start tag, so it is the thought.
        let mut s = ReasoningSplitter::new(t, true);
        assert_eq!(s.push("<thin"), split("", ""));
        assert_eq!(s.finish(), split("<thin", ""));
        assert!(!s.thought_closed());
    }

    #[test]
    fn opened_repeated_start_tag_force_close() {
        let t = ThinkTags::default();
        // Still uncertain: the held partial tag is the thought's text.
        let mut s = ReasoningSplitter::new(t.clone(), true);
        let mut acc = s.push("\n<thi");
        append(&mut acc, s.force_close());
        assert_eq!(acc, split("<thi", ""));
        assert!(s.thought_closed());
        assert!(!s.in_thought());
        append(&mut acc, s.push("</think>\n\nok"));
        append(&mut acc, s.finish());
        assert_eq!(acc, split("<thi", "ok"));
        assert_eq!(split_complete("\n<thi</think>\n\nok", &t, true), acc);
        // Only whitespace yet: an empty thought.
        let mut s = ReasoningSplitter::new(t.clone(), true);
        assert_eq!(s.push(" \n"), split("", ""));
        assert_eq!(s.force_close(), split("", ""));
        assert_eq!(s.push("</think>ok"), split("", "ok"));
        // After a complete repeated tag: as without it.
        let mut s = ReasoningSplitter::new(t.clone(), true);
        assert_eq!(s.push("<think>\n"), split("", ""));
        assert_eq!(s.force_close(), split("", ""));
        assert_eq!(s.push("</think>ok"), split("", "ok"));
        assert_eq!(
            split_complete("<think>\n</think>ok", &t, true),
            split("", "ok")
        );
    }

    /// With one tag a prefix of the other, the end tag has priority: a start
    /// tag is dropped only where the end tag does not begin.
    #[test]
    fn opened_repeated_start_tag_prefix_tags() {
        // The start tag is a prefix of the end tag.
        let t = tags("<t", "<t/>");
        check_all(&t, true, "<t/>x", split("", "x"));
        check_all(&t, true, " <t/> x", split("", "x"));
        check_all(&t, true, "<t a<t/>b", split("a", "b"));
        check_all(&t, true, "<t<t/>b", split("", "b"));
        check_all(&t, true, "<t/", split("/", ""));
        check_all(&t, true, "<t/x<t/>b", split("/x", "b"));
        check_all(&t, true, "<t", split("", ""));
        check_all(&t, true, "<", split("<", ""));
        check_all(&t, true, "<x<t/>b", split("<x", "b"));
        let mut s = ReasoningSplitter::new(t.clone(), true);
        assert_eq!(s.push("\n<t"), split("", ""));
        assert_eq!(s.push("/"), split("", ""));
        assert_eq!(s.push("x"), split("/x", ""));
        let mut s = ReasoningSplitter::new(t.clone(), true);
        assert_eq!(s.push("\n<t/"), split("", ""));
        assert_eq!(s.force_close(), split("/", ""));
        assert_eq!(s.push("<t/>ok"), split("", "ok"));
        assert_eq!(split_complete("\n<t/<t/>ok", &t, true), split("/", "ok"));
        let t = tags("思", "思考");
        check_all(&t, true, "思考x", split("", "x"));
        check_all(&t, true, "思老x思考y", split("老x", "y"));
        // The end tag is a prefix of the start tag: never a repeated start tag.
        let t = tags("<t/>", "<t");
        check_all(&t, true, "<t/>x", split("", "/>x"));
        check_all(&t, true, " <t/", split("", "/"));
        check_all(&t, false, "<t/>x<t/>y", split("x", "/>y"));
        // Equal tags: the end tag.
        let t = tags("<t>", "<t>");
        check_all(&t, true, "\n<t>a<t>b", split("", "a<t>b"));
        check_all(&t, false, "\n<t>a<t>b", split("a", "b"));
        // An empty start tag is nothing to drop.
        let t = tags("", "</think>");
        check_all(&t, true, " <think>a</think>b", split("<think>a", "b"));
        check_all(&t, false, " <think>a</think>b", split("<think>a", "b"));
        // An empty end tag: the thought is empty, as before.
        let t = tags("<think>", "");
        check_all(&t, true, " <think>a", split("", "<think>a"));
    }

    #[test]
    fn finish_is_final() {
        let mut s = ReasoningSplitter::new(ThinkTags::default(), false);
        s.push(" ");
        assert_eq!(s.finish(), split("", " "));
        assert_eq!(s.finish(), split("", ""));
    }

    /// Linear, not quadratic: a million one-byte pushes of the worst kinds
    /// (whitespace runs held in the thought and at the start, repeated partial
    /// tags) would take minutes if anything rescanned the history.
    #[test]
    fn long_streams_are_linear() {
        let t = ThinkTags::default();
        let n = 1_000_000;
        let mut s = ReasoningSplitter::new(t.clone(), true);
        s.push("a");
        for _ in 0..n {
            s.push("\n");
        }
        assert_eq!(s.push("b").reasoning.len(), n + 1);
        let mut released = 0;
        for _ in 0..n / 4 {
            released += s.push("</th").reasoning.len();
        }
        assert_eq!(released, n - 4);
        assert_eq!(s.finish().reasoning, "</th");

        let mut s = ReasoningSplitter::new(t.clone(), false);
        for _ in 0..n {
            s.push(" ");
        }
        assert_eq!(s.push("x").content.len(), n + 1);

        let mut s = ReasoningSplitter::new(t.clone(), true);
        s.push("a</think>");
        for _ in 0..n {
            s.push("\n");
        }
        assert_eq!(s.push("x").content, "x");

        // Opened: whitespace before a repeated start tag.
        let mut s = ReasoningSplitter::new(t, true);
        for _ in 0..n {
            s.push(" ");
        }
        assert_eq!(s.push("<think>").reasoning, "");
        assert_eq!(s.push("x").reasoning, "x");
    }

    /// Texts over an alphabet that makes tags, partial tags and near-tags
    /// likely, with the tags set's own pieces added.
    fn text_pieces(t: &ThinkTags) -> Vec<String> {
        let mut alphabet: Vec<String> = [
            "<think>", "</think>", "</th", "<th", "<", ">", "/", "ink>", "think", "\n", " ",
            "\u{3000}", "a", "b", "思", "考",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for tag in [&t.start, &t.end] {
            for (i, _) in tag.char_indices().skip(1) {
                alphabet.push(tag[..i].to_owned());
                alphabet.push(tag[i..].to_owned());
            }
            alphabet.push(tag.clone());
            alphabet.push(tag.clone());
        }
        alphabet
    }

    fn tag_sets() -> impl Strategy<Value = ThinkTags> {
        prop_oneof![
            4 => Just(ThinkTags::default()),
            1 => Just(tags("<reasoning>", "</reasoning>")),
            1 => Just(tags("[[", "]]]")),
            1 => Just(tags("[[", "]]>")),
            1 => Just(tags("思", "考")),
            1 => Just(tags("<think>", "\n</think>")),
            1 => Just(tags("", "</think>")),
            1 => Just(tags("<think>", "")),
            // One tag a prefix of the other, or equal: the end tag has
            // priority over a repeated start tag.
            1 => Just(tags("<t", "<t/>")),
            1 => Just(tags("<t/>", "<t")),
            1 => Just(tags("<t>", "<t>")),
        ]
    }

    /// Tags whose end tag has no border (no proper prefix that is also a
    /// suffix), so that text before a forced end tag cannot form an earlier
    /// end tag with it, and does not begin with whitespace (which the oracle
    /// trims off at the beginning of a thought).
    fn borderless_tag_sets() -> impl Strategy<Value = ThinkTags> {
        prop_oneof![
            4 => Just(ThinkTags::default()),
            1 => Just(tags("<reasoning>", "</reasoning>")),
            1 => Just(tags("思", "考")),
            1 => Just(tags("", "</think>")),
            1 => Just(tags("<t", "<t/>")),
        ]
    }

    /// Beginnings that make a (repeated) start tag likely: nothing, or
    /// whitespace then the start tag (perhaps twice, perhaps with whitespace
    /// after it), or whitespace then a proper prefix of it.
    fn lead(t: &ThinkTags) -> impl Strategy<Value = String> + use<> {
        let start = &t.start;
        let mut tagged = Vec::new();
        let mut partial = Vec::new();
        for ws in ["", " ", "\n\n", " \n\u{3000}"] {
            tagged.push(format!("{ws}{start}"));
            tagged.push(format!("{ws}{start}\n"));
            tagged.push(format!("{ws}{start}{ws}{start}"));
            partial.push(ws.to_owned());
            for (i, _) in start.char_indices().skip(1) {
                partial.push(format!("{ws}{}", &start[..i]));
            }
        }
        prop_oneof![
            Just(String::new()),
            prop::sample::select(tagged),
            prop::sample::select(partial),
        ]
    }

    /// (tags, text, chunking of the text at char boundaries, opened)
    fn cases(
        tag_sets: impl Strategy<Value = ThinkTags>,
    ) -> impl Strategy<Value = (ThinkTags, String, Vec<String>, bool)> {
        tag_sets.prop_flat_map(|t| {
            let alphabet = text_pieces(&t);
            let lead = lead(&t);
            (
                Just(t),
                lead,
                prop::collection::vec(prop::sample::select(alphabet), 0..32),
                prop::collection::vec(any::<Index>(), 0..12),
                any::<bool>(),
            )
                .prop_map(|(t, lead, parts, cuts, opened)| {
                    let text = lead + &parts.concat();
                    let pieces = chunk(&text, &cuts);
                    (t, text, pieces, opened)
                })
        })
    }

    /// Splits at the chosen char boundaries; may yield empty pieces.
    fn chunk(text: &str, cuts: &[Index]) -> Vec<String> {
        let bounds: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let mut at: Vec<usize> = cuts.iter().map(|c| *c.get(&bounds)).collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for to in at.into_iter().chain([text.len()]) {
            pieces.push(text[from..to].to_owned());
            from = to;
        }
        pieces
    }

    /// (opened, closed) as the oracle sees the whole text.
    fn oracle_state(text: &str, t: &ThinkTags, opened: bool) -> (bool, bool) {
        match thought_onwards(text, t, opened) {
            None => (false, false),
            Some(thought) => (true, thought.trim_start().contains(t.end.as_str())),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 3000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn stream_equals_oracle((t, text, pieces, opened) in cases(tag_sets())) {
            let want = split_complete(&text, &t, opened);
            prop_assert_eq!(&stream(&t, opened, &pieces), &want);
            prop_assert_eq!(&stream(&t, opened, &chars(&text)), &want);
            // Rule 2: a repeated start tag is as if the prompt had not opened
            // the thought.
            let lead = text.trim_start();
            if opened && lead.starts_with(t.start.as_str()) && !lead.starts_with(t.end.as_str()) {
                prop_assert_eq!(&split_complete(&text, &t, false), &want);
            }

            let mut s = ReasoningSplitter::new(t.clone(), opened);
            for piece in &pieces {
                s.push(piece);
            }
            let (thought_opened, closed) = oracle_state(&text, &t, opened);
            prop_assert_eq!(s.thought_closed(), closed);
            prop_assert_eq!(s.in_thought(), thought_opened && !closed);
        }

        /// The engine forces the end tag after any prefix, then pushes the
        /// tag's text (maybe after whitespace, maybe split) and the answer.
        #[test]
        fn force_close_equals_oracle(
            (t, prefix, pieces, opened) in cases(borderless_tag_sets()),
            lead_ws in prop::sample::select(vec!["", "\n", " \n"]),
            tag_cut in any::<Index>(),
            answer in "[ \na-z<>/]{0,12}",
        ) {
            let mut s = ReasoningSplitter::new(t.clone(), opened);
            let mut got = Split::default();
            for piece in &pieces {
                append(&mut got, s.push(piece));
            }
            let was = s.state;
            append(&mut got, s.force_close());
            prop_assert!(!s.in_thought());
            let forced = format!("{lead_ws}{}", t.end);
            for piece in chunk(&forced, &[tag_cut]) {
                append(&mut got, s.push(&piece));
            }
            append(&mut got, s.push(&answer));
            append(&mut got, s.finish());
            let whole = format!("{prefix}{forced}{answer}");
            let want = match was {
                // Thought discarded, forced tag swallowed.
                State::Start => split("", answer.trim_start()),
                // force_close is a no-op, or acts exactly as the tag would.
                State::Opening | State::Thinking | State::Answer => {
                    split_complete(&whole, &t, opened)
                }
            };
            prop_assert_eq!(got, want);
        }
    }
}
