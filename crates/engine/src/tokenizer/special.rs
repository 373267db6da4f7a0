//! Special tokens: which tokens are control or user-defined ones, which end generation,
//! and the cut of text at special-token texts before tokenization (llama.cpp's
//! `tokenizer_st_partition`).
//!
//! [`Specials::from_gguf`] takes llama.cpp's steps (`load_vocab`) in this order: the ids the file
//! names, else the tokens found by text; the end-of-generation set; the fix-ups for model
//! families whose files mark their tokens wrongly; the partition list; Phi-3's spaces.

use std::collections::HashSet;

use super::Tokenizer;
use super::vocab::{
    ATTR_CONTROL, ATTR_LSTRIP, ATTR_NORMAL, ATTR_RSTRIP, ATTR_UNKNOWN, ATTR_USER_DEFINED, Vocab,
};
use crate::gguf::GgufFile;

/// Texts that llama.cpp treats as end of generation whatever their id (its EOG rule).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// What [`Specials::from_gguf`] derives from the vocabulary for the tokenizer.
#[derive(Debug)]
pub(super) struct Specials {
    /// Tokens the partition step looks for, longest text first.
    pub partition: Vec<u32>,
    /// Tokens that end generation.
    pub eog: HashSet<u32>,
}

impl Specials {
    /// Derives the special tokens of `vocab` (with `eos`, the settings' end of sequence),
    /// marking in `vocab` the tokens that llama.cpp makes control tokens or fixes up.
    pub(super) fn from_gguf(g: &GgufFile, vocab: &mut Vocab, eos: Option<u32>) -> Specials {
        let ends = Ends::find(g, vocab);
        let mut eog = end_of_generation(vocab, &ends, eos);
        render_structure_tokens(vocab);
        keep_message_ends(vocab, &mut eog);
        let partition = partition_list(vocab);
        phi3_rstrip(g, vocab, &partition);
        Specials { partition, eog }
    }
}

impl Specials {
    /// The special tokens of a vocabulary whose control tokens are already marked (a
    /// Hugging Face `tokenizer.json`'s added tokens): cut out as they are, ending nothing
    /// (an encoder generates no text).
    pub(super) fn marked(vocab: &Vocab) -> Specials {
        Specials {
            partition: partition_list(vocab),
            eog: HashSet::new(),
        }
    }
}

/// The tokens besides EOS that end generation, by their `*_token_id` keys or else found by
/// text.
struct Ends {
    eot: Option<u32>,
    eom: Option<u32>,
    fim_pad: Option<u32>,
    fim_rep: Option<u32>,
    fim_sep: Option<u32>,
}

impl Ends {
    /// Each token by its key, else the lowest id among its known texts; a token found by
    /// text becomes a control token (llama.cpp does this because converters do not always
    /// mark them). The FIM prefix, suffix and middle tokens end nothing but are marked too.
    /// The unknown token needs no handling of its own: SentencePiece falls back to byte
    /// tokens and the partition step treats type-2 tokens like control tokens.
    fn find(g: &GgufFile, vocab: &mut Vocab) -> Ends {
        let mut find = |keys: &[&str], texts: &[&str]| {
            keys.iter()
                .find_map(|k| vocab.key_id(g, k))
                .or_else(|| mark_control(vocab, texts))
        };
        let eot = find(&["eot_token_id"], EOT_TEXTS);
        let eom = find(&["eom_token_id"], &["<|eom_id|>"]);
        find(&["fim_pre_token_id", "prefix_token_id"], FIM_PRE_TEXTS);
        find(&["fim_suf_token_id", "suffix_token_id"], FIM_SUF_TEXTS);
        find(&["fim_mid_token_id", "middle_token_id"], FIM_MID_TEXTS);
        Ends {
            eot,
            eom,
            fim_pad: find(&["fim_pad_token_id"], FIM_PAD_TEXTS),
            fim_rep: find(&["fim_rep_token_id"], FIM_REP_TEXTS),
            fim_sep: find(&["fim_sep_token_id"], FIM_SEP_TEXTS),
        }
    }
}

/// The lowest id among `texts`, made a control token.
fn mark_control(vocab: &mut Vocab, texts: &[&str]) -> Option<u32> {
    let id = texts.iter().filter_map(|t| vocab.id_of(t)).min()?;
    vocab.attrs[id as usize] |= ATTR_CONTROL;
    Some(id)
}

/// EOS, the [`Ends`], and every token whose text is one of llama.cpp's end markers (made a
/// control token).
fn end_of_generation(vocab: &mut Vocab, ends: &Ends, eos: Option<u32>) -> HashSet<u32> {
    let mut eog: HashSet<u32> = [ends.fim_pad, ends.fim_rep, ends.fim_sep]
        .into_iter()
        .flatten()
        .collect();
    for t in EOG_TEXTS {
        if let Some(id) = vocab.id_of(t) {
            eog.insert(id);
            vocab.attrs[id as usize] |= ATTR_CONTROL;
        }
    }
    eog.extend([eos, ends.eot, ends.eom].into_iter().flatten());
    eog
}

/// gpt-oss: its structure tokens must always render.
fn render_structure_tokens(vocab: &mut Vocab) {
    for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
        if let Some(id) = vocab.id_of(t) {
            vocab.attrs[id as usize] = ATTR_USER_DEFINED;
        }
    }
}

/// Vocabularies where a listed end marker ends a message, not the generation, lose it from
/// the EOG set: `<|end|>` in o200k_harmony / solar-open (which end generation with
/// `<|return|>` and `<|call|>`, or `<|calls|>` and `<|flush|>`), `</s>` beside
/// `<|tool_response>`.
fn keep_message_ends(vocab: &mut Vocab, eog: &mut HashSet<u32>) {
    let has = |vocab: &Vocab, eog: &HashSet<u32>, t: &str| {
        vocab.id_of(t).is_some_and(|id| eog.contains(&id))
    };
    let harmony = (has(vocab, eog, "<|return|>") && has(vocab, eog, "<|call|>"))
        || (has(vocab, eog, "<|calls|>") && has(vocab, eog, "<|flush|>"));
    if harmony
        && let Some(end) = vocab.id_of("<|end|>")
        && eog.remove(&end)
    {
        vocab.attrs[end as usize] = ATTR_USER_DEFINED;
    }
    if has(vocab, eog, "<|tool_response>")
        && let Some(s) = vocab.id_of("</s>")
        && eog.remove(&s)
    {
        vocab.attrs[s as usize] = ATTR_NORMAL;
    }
}

/// The tokens the partition step looks for (control, user-defined, unknown), longest text
/// first (a stable sort, so ties go by id).
fn partition_list(vocab: &Vocab) -> Vec<u32> {
    let mut special: Vec<u32> = (0..vocab.tokens.len() as u32)
        .filter(|&i| {
            vocab.attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0
        })
        .collect();
    special.sort_by_key(|&i| std::cmp::Reverse(vocab.tokens[i as usize].len()));
    special
}

/// Phi-3 (llama.cpp sets this by model name): its special tokens swallow the whitespace
/// after them, except `<unk>`, `<s>` and `<|endoftext|>`; `</s>` does too.
fn phi3_rstrip(g: &GgufFile, vocab: &mut Vocab, partition: &[u32]) {
    let general_name = g.get_str("general.name").unwrap_or("").to_lowercase();
    if !(general_name.contains("phi-3") || general_name.contains("phi3")) {
        return;
    }
    for &id in partition {
        vocab.attrs[id as usize] |= ATTR_RSTRIP;
    }
    if let Some(id) = vocab.id_of("</s>") {
        vocab.attrs[id as usize] |= ATTR_RSTRIP;
    }
    for t in ["<unk>", "<s>", "<|endoftext|>"] {
        if let Some(id) = vocab.id_of(t) {
            vocab.attrs[id as usize] &= !ATTR_RSTRIP;
        }
    }
}

/// A piece of the text being encoded: a byte range of plain text, or a special token cut
/// out of it.
pub(super) enum Frag {
    Text(usize, usize),
    Token(u32),
}

impl Tokenizer {
    /// Cut `text` at special-token texts (llama.cpp's `tokenizer_st_partition`).
    pub(super) fn partition(&self, text: &str, parse_special: bool) -> Vec<Frag> {
        let mut frags = if text.is_empty() {
            Vec::new()
        } else {
            vec![Frag::Text(0, text.len())]
        };
        let bytes = text.as_bytes();
        for &id in &self.special.partition {
            let attr = self.vocab.attrs[id as usize];
            if !parse_special && attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let tok = self.vocab.tokens[id as usize].as_str();
            let present = frags.iter().any(|f| match *f {
                Frag::Text(s, e) => text[s..e].contains(tok),
                Frag::Token(_) => false,
            });
            if !present {
                continue;
            }
            let mut out = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Frag::Text(mut s, e) = f else {
                    out.push(f);
                    continue;
                };
                while s < e {
                    let Some(p) = text[s..e].find(tok) else {
                        out.push(Frag::Text(s, e));
                        break;
                    };
                    let m = s + p;
                    let mut left_end = m;
                    if attr & ATTR_LSTRIP != 0 {
                        while left_end > s && is_c_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > s {
                        out.push(Frag::Text(s, left_end));
                    }
                    out.push(Frag::Token(id));
                    s = m + tok.len();
                    if attr & ATTR_RSTRIP != 0 {
                        while s < e && is_c_space(bytes[s]) {
                            s += 1;
                        }
                    }
                }
            }
            frags = out;
        }
        frags
    }
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}
