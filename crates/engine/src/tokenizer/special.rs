//! Special tokens: the texts llama.cpp recognizes them by, and the cut of text at
//! special-token texts before tokenization.

use super::Tokenizer;
use super::vocab::*;

/// Texts that llama.cpp treats as end of generation whatever their id (its EOG rule).
pub(super) const EOG_TEXTS: &[&str] = &[
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

pub(super) const EOT_TEXTS: &[&str] = &[
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
pub(super) const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
pub(super) const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
pub(super) const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
pub(super) const FIM_PAD_TEXTS: &[&str] =
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
pub(super) const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
pub(super) const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

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
        for &id in &self.special {
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
