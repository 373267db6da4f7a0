//! WordPiece, BERT's vocabulary kind (`tokenizer.ggml.model = "bert"`, and Hugging Face's
//! `"WordPiece"` model in a `tokenizer.json`), token for token as llama.cpp's WPM tokenizer
//! and Hugging Face's `BertNormalizer` + `BertPreTokenizer` + `WordPiece` give.
//!
//! Text is normalized (accents stripped after NFD, lowercased, control characters dropped)
//! and cut into words at whitespace, with every punctuation mark, ASCII symbol and CJK
//! ideograph a word of its own. Each word is then matched greedily, longest piece first,
//! against the pieces that may start a word and then against those that continue one; a
//! word with any part unmatched becomes the unknown token.
//!
//! Pieces are kept in llama.cpp's spelling, which both sources are brought to: a piece
//! that starts a word carries a leading `▁` (Hugging Face writes it bare), one that
//! continues a word is bare (Hugging Face writes `##` before it). So one lookup of
//! `"▁" + word` prefixes serves the start and bare suffixes the rest.

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

use super::vocab::Vocab;

/// The word-start marker of llama.cpp's WordPiece vocabularies.
pub(super) const WORD_START: char = '\u{2581}';

/// How stripping accents decomposes and what it removes: the two sources differ on spacing
/// marks (Devanagari's vowel signs, for one), which Hugging Face keeps, and on what
/// decomposing leaves (see [`Strip::Marks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Strip {
    /// Nothing: accents stay.
    Nothing,
    /// llama.cpp's: each character replaced by the first character of its NFD alone (a
    /// Hangul syllable by its leading consonant, where a full NFD keeps its vowel and
    /// final consonant too), then every mark, `\p{M}`, removed.
    Marks,
    /// Nonspacing marks only, `\p{Mn}` (Hugging Face's `BertNormalizer`).
    Nonspacing,
}

/// A WordPiece encoder's settings; the pieces are the vocabulary's.
#[derive(Debug)]
pub(super) struct WordPiece {
    /// Longest piece in bytes, `▁` included: the greedy match never looks further.
    max_piece: usize,
    lowercase: bool,
    strip: Strip,
    /// Words of more characters than this become the unknown token (Hugging Face's
    /// `max_input_chars_per_word`; llama.cpp has no such limit).
    max_word_chars: Option<usize>,
    unk: Option<u32>,
}

impl WordPiece {
    pub(super) fn new(
        vocab: &Vocab,
        lowercase: bool,
        strip: Strip,
        max_word_chars: Option<usize>,
        unk: Option<u32>,
    ) -> WordPiece {
        let max_piece = vocab.tokens.iter().map(String::len).max().unwrap_or(1);
        WordPiece {
            max_piece,
            lowercase,
            strip,
            max_word_chars,
            unk,
        }
    }

    /// Appends the tokens of `text` (no special tokens) to `out`.
    pub(super) fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut word = String::from(WORD_START);
        let mut emit = |word: &mut String| {
            if word.len() > WORD_START.len_utf8() {
                self.encode_word(vocab, word, out);
                word.truncate(WORD_START.len_utf8());
            }
        };
        let mut push = |c: char, word: &mut String| {
            if c.is_whitespace() {
                emit(word);
                return;
            }
            let group = c.general_category_group();
            if c == '\0' || c == '\u{FFFD}' || group == GeneralCategoryGroup::Other {
                return;
            }
            let stripped = match self.strip {
                Strip::Nothing => false,
                Strip::Marks => group == GeneralCategoryGroup::Mark,
                Strip::Nonspacing => c.general_category() == GeneralCategory::NonspacingMark,
            };
            if stripped {
                return;
            }
            let c = if self.lowercase {
                // A one-to-one lowering (llama.cpp's): the first character of the full
                // mapping, which is the simple mapping wherever the two differ.
                c.to_lowercase().next().unwrap_or(c)
            } else {
                c
            };
            let alone = group == GeneralCategoryGroup::Punctuation
                || (c.is_ascii() && group == GeneralCategoryGroup::Symbol)
                || is_cjk(c);
            if alone {
                emit(word);
                word.push(c);
                emit(word);
            } else {
                word.push(c);
            }
        };
        match self.strip {
            Strip::Marks => {
                for c in text.chars() {
                    push(std::iter::once(c).nfd().next().unwrap_or(c), &mut word);
                }
            }
            Strip::Nonspacing => {
                for c in text.nfd() {
                    push(c, &mut word);
                }
            }
            Strip::Nothing => {
                for c in text.chars() {
                    push(c, &mut word);
                }
            }
        }
        emit(&mut word);
    }

    /// One word, `▁` first: its pieces, or the unknown token if any part has none.
    fn encode_word(&self, vocab: &Vocab, word: &str, out: &mut Vec<u32>) {
        let start = out.len();
        let too_long = self
            .max_word_chars
            .is_some_and(|m| word.chars().count() - 1 > m);
        let mut i = 0;
        while i < word.len() && !too_long {
            let mut j = (i + self.max_piece).min(word.len());
            let found = loop {
                while !word.is_char_boundary(j) {
                    j -= 1;
                }
                if j <= i {
                    break None;
                }
                if let Some(id) = vocab.id_of(&word[i..j]) {
                    break Some(id);
                }
                j -= 1;
            };
            match found {
                Some(id) => {
                    out.push(id);
                    i = j;
                }
                None => {
                    out.truncate(start);
                    break;
                }
            }
        }
        if out.len() == start || too_long {
            out.truncate(start);
            out.extend(self.unk);
        }
    }
}

/// CJK ideographs, each a word of its own (the ranges of BERT's `_is_chinese_char`, with
/// the one Hugging Face's Rust code and llama.cpp both start at 0x2B920).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}
