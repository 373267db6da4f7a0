//! Constrained decoding: at each step of a constrained sequence, the tokens a grammar
//! allows next, by `llguidance` (the engine llama.cpp and vLLM use: JSON Schema, regular
//! expressions, Lark grammars; a mask in tens of microseconds).
//!
//! [`Grammars`] holds llguidance's index of the model's vocabulary, built once per model on
//! the first constrained request (a walk over every token's bytes). [`Grammars::compile`]
//! turns a request's [`Grammar`] into a [`Constraint`] before any token is generated, so
//! that a schema llguidance cannot honour is refused with its reason instead of being
//! applied in part. The scheduler then masks each step's logits with
//! [`Constraint::mask`] and tells it the token chosen ([`Constraint::commit`]); a grammar
//! that is complete allows only the end-of-generation token.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};

use crate::tokenizer::Tokenizer;

/// What a request constrains its answer to.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON value valid against this JSON Schema (`{"type": "object"}` for OpenAI's
    /// `json_object`), written with `json.dumps`'s separators (`", "`, `": "`) and no
    /// other whitespace, unless the schema's own `x-guidance` options say otherwise.
    JsonSchema(serde_json::Value),
    /// Text matching this regular expression, whole.
    Regex(String),
    /// Text in the language of this Lark grammar (llguidance's dialect, which also embeds
    /// JSON schemas and regexes).
    Lark(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
}

impl Grammar {
    fn top_level(&self) -> Result<TopLevelGrammar, String> {
        Ok(match self {
            Grammar::JsonSchema(schema) => {
                let mut schema = schema.clone();
                // Whitespace as `json.dumps` writes it, unless the schema says otherwise:
                // with free whitespace a small model can pad until `max_tokens`.
                if let Some(o) = schema.as_object_mut()
                    && !o.contains_key("x-guidance")
                {
                    JsonCompileOptions {
                        item_separator: ", ".into(),
                        key_separator: ": ".into(),
                        whitespace_flexible: false,
                        ..Default::default()
                    }
                    .apply_to(&mut schema);
                }
                TopLevelGrammar::from_json_schema(schema)
            }
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            Grammar::Choice(options) => {
                if options.is_empty() {
                    return Err("the list of choices is empty".into());
                }
                let alternatives: Vec<String> = options
                    .iter()
                    .map(|o| format!("(?:{})", regex_syntax::escape(o)))
                    .collect();
                TopLevelGrammar::from_regex(&alternatives.join("|"))
            }
        })
    }
}

/// The model's vocabulary as llguidance sees it: each token's bytes (special tokens marked
/// the way llguidance expects), and the model's own tokenizer for the text it must
/// tokenize itself.
struct Vocab {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Vocab {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self.tokenizer.encode(text, false, false),
            // Partial characters have no tokenization of their own: the longest tokens
            // that spell the bytes.
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// The per-model half of constrained decoding: the vocabulary index and llguidance's
/// parser factory over it. Cheap to share; compiling a grammar takes it by reference.
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// Indexes the tokenizer's vocabulary (hundreds of milliseconds for 150k tokens).
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<Grammars, String> {
        let n = tokenizer.vocab_size();
        let eos = tokenizer
            .eos_id()
            .ok_or("the model has no end-of-generation token to finish a grammar with")?;
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| match tokenizer.special_text(id) {
                // llguidance tells special tokens by this first byte.
                Some(text) => [&[TokTrie::SPECIAL_TOKEN_MARKER][..], text.as_bytes()].concat(),
                None => tokenizer.token_bytes(id).to_vec(),
            })
            .collect();
        let mut info = TokRxInfo::new(n as u32, eos);
        info.tok_bos = tokenizer.bos_id();
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Vocab { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// The constraint for one request, or why the grammar cannot be used (its error as
    /// llguidance words it: the unsupported keyword, the bad regex, the Lark syntax error).
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, String> {
        let parser = self
            .factory
            .create_parser(grammar.top_level()?)
            .map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(e),
            None => Ok(Constraint { matcher }),
        }
    }
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
}

impl Clone for Constraint {
    /// An independent copy (each of a request's `n` choices walks the grammar alone).
    fn clone(&self) -> Self {
        Constraint {
            matcher: self.matcher.deep_clone(),
        }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Constraint {
    /// Sets every logit the grammar does not allow next to -∞; `also` stays allowed (the
    /// first token of a reasoning model's thought-opening tag, before the answer starts).
    /// Returns whether the grammar itself allows `also`. Logits past the tokenizer's
    /// vocabulary (padding rows of the output matrix) are never allowed.
    pub fn mask(&mut self, logits: &mut [f32], also: Option<u32>) -> Result<bool, String> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| e.to_string())?;
        let allows = |id: usize| id < allowed.len() && allowed.is_allowed(id as u32);
        for (id, l) in logits.iter_mut().enumerate() {
            if Some(id as u32) != also && !allows(id) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(also.is_some_and(|id| allows(id as usize)))
    }

    /// Advances the grammar by the token chosen (one `mask` allowed).
    pub fn commit(&mut self, token: u32) -> Result<(), String> {
        if self.matcher.is_stopped() {
            // Only the end-of-generation token was allowed; nothing follows it.
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_escaped_literals() {
        let g = Grammar::Choice(vec!["a.b".into(), "(x)".into()]);
        assert!(g.top_level().is_ok());
        assert!(Grammar::Choice(vec![]).top_level().is_err());
    }
}
