//! Text <-> token ids, built from a GGUF file's vocabulary and matching llama.cpp's
//! `llama-vocab.cpp` token for token.
//!
//! Two vocabulary kinds are supported, chosen by `tokenizer.ggml.model`:
//! - `gpt2` (and `gemma4`): byte-level BPE with a regex pre-tokenizer picked by
//!   `tokenizer.ggml.pre` ([`bpe`], [`pretokenize`]);
//! - `llama`: SentencePiece BPE with scores and `<0xXX>` byte fallback ([`spm`]).
//!
//! Special tokens are handled like llama.cpp's `tokenizer_st_partition`: before any
//! tokenization the text is cut at exact occurrences of control / user-defined token texts
//! (longest first). User-defined tokens are always cut out; control tokens only when the
//! caller asks (`parse_special`), so that a user typing `<|im_end|>` into a raw prompt cannot
//! forge a turn boundary.
//!
//! Everything derived from the vocabulary (piece bytes, end-of-generation set, special token
//! list) is computed once in [`Tokenizer::from_gguf`], so encode and decode are read-only and
//! the tokenizer can be shared between threads.

mod bpe;
mod pretokenize;
mod spm;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::EngineError;
use crate::gguf::{GgufFile, MetaValue};

use bpe::Bpe;
use pretokenize::PreConfig;

// Token attributes (llama.cpp's `llama_token_attr`, reduced to what we use).
const ATTR_UNDEFINED: u16 = 0;
const ATTR_UNKNOWN: u16 = 1 << 0;
const ATTR_UNUSED: u16 = 1 << 1;
const ATTR_NORMAL: u16 = 1 << 2;
const ATTR_CONTROL: u16 = 1 << 3;
const ATTR_USER_DEFINED: u16 = 1 << 4;
const ATTR_BYTE: u16 = 1 << 5;
const ATTR_LSTRIP: u16 = 1 << 6;
const ATTR_RSTRIP: u16 = 1 << 7;

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

/// FxHash: the vocabulary maps are hashed on every symbol pair while encoding, and SipHash's
/// flood resistance buys nothing for a fixed table built from the model file.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8-byte chunk")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // Spread entropy into the high bits that hashbrown uses for its control bytes.
        self.hash.rotate_left(26)
    }
}

pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;

/// The vocabulary proper: texts, scores and attributes by id, and the reverse map.
#[derive(Debug)]
pub(crate) struct Vocab {
    pub tokens: Vec<String>,
    pub text_to_id: HashMap<String, u32, FxBuild>,
    pub scores: Vec<f32>,
    pub attrs: Vec<u16>,
    /// SentencePiece byte fallback: `<0xXX>`, else the byte itself as a one-char token.
    byte_tokens: [Option<u32>; 256],
}

impl Vocab {
    #[inline]
    pub fn id_of(&self, text: &str) -> Option<u32> {
        self.text_to_id.get(text).copied()
    }

    #[inline]
    pub fn byte_token(&self, b: u8) -> Option<u32> {
        self.byte_tokens[b as usize]
    }
}

#[derive(Debug)]
enum Model {
    Bpe(Box<Bpe>),
    Spm,
}

enum Frag {
    Text(usize, usize),
    Token(u32),
}

/// A tokenizer built from a GGUF vocabulary. Immutable after construction, hence `Send +
/// Sync`: the HTTP layer can count prompt tokens while the engine thread encodes.
#[derive(Debug)]
pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
    /// Concatenated generated bytes of every token (see [`Tokenizer::token_bytes`]).
    piece_bytes: Vec<u8>,
    /// `piece_bytes[piece_off[i]..piece_off[i + 1]]` is token i's bytes.
    piece_off: Vec<u32>,
    /// Tokens the partition step looks for, longest text first.
    special: Vec<u32>,
    eog: HashSet<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

fn meta_err(what: &str) -> EngineError {
    EngineError::BadModel(format!("GGUF vocabulary: {what}"))
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

impl Tokenizer {
    /// Build the tokenizer from the `tokenizer.ggml.*` keys of `g`, with llama.cpp's
    /// defaults where keys are absent. Fails with `BadModel` for vocabulary kinds we do not
    /// implement (WordPiece, Unigram, RWKV) or a malformed vocabulary.
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer, EngineError> {
        let model_name = g
            .get_str("tokenizer.ggml.model")
            .ok_or_else(|| meta_err("missing tokenizer.ggml.model"))?;
        let pre_name = g.get_str("tokenizer.ggml.pre").unwrap_or("");

        let token_vals = g
            .get("tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array)
            .ok_or_else(|| meta_err("missing tokenizer.ggml.tokens"))?;
        let n = token_vals.len();
        if n == 0 || n > u32::MAX as usize / 2 {
            return Err(meta_err("empty or oversized token list"));
        }
        let mut tokens = Vec::with_capacity(n);
        let mut text_to_id: HashMap<String, u32, FxBuild> =
            HashMap::with_capacity_and_hasher(n, FxBuild::default());
        for (i, v) in token_vals.iter().enumerate() {
            let mut t = v
                .as_str()
                .ok_or_else(|| meta_err("tokenizer.ggml.tokens holds a non-string"))?
                .to_owned();
            if t.is_empty() {
                t = format!("[EMPTY_{i}]");
            }
            if text_to_id.contains_key(&t) {
                tracing::warn!("duplicate token {t:?} at id {i} in vocabulary; the first id wins");
            } else {
                text_to_id.insert(t.clone(), i as u32);
            }
            tokens.push(t);
        }
        let scores: Vec<f32> = match g.get("tokenizer.ggml.scores").and_then(MetaValue::as_array) {
            Some(a) => {
                if a.len() < n {
                    return Err(meta_err("fewer scores than tokens"));
                }
                a[..n]
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                    .collect()
            }
            None => vec![0.0; n],
        };
        let mut attrs: Vec<u16> = match g
            .get("tokenizer.ggml.token_type")
            .and_then(MetaValue::as_array)
        {
            Some(a) => {
                if a.len() < n {
                    return Err(meta_err("fewer token types than tokens"));
                }
                a[..n]
                    .iter()
                    .map(|v| match v.as_i64() {
                        Some(1) => ATTR_NORMAL,
                        Some(2) => ATTR_UNKNOWN,
                        Some(3) => ATTR_CONTROL,
                        Some(4) => ATTR_USER_DEFINED,
                        Some(5) => ATTR_UNUSED,
                        Some(6) => ATTR_BYTE,
                        _ => ATTR_UNDEFINED,
                    })
                    .collect()
            }
            None => vec![ATTR_NORMAL; n],
        };

        // Vocabulary kind and llama.cpp's per-kind defaults.
        let in_range = |id: u32| ((id as usize) < n).then_some(id);
        let (pre_cfg, mut bos, mut eos, mut add_bos, mut add_space_prefix) = match model_name {
            "llama" => (None, in_range(1), in_range(2), true, true),
            "gpt2" | "gemma4" => {
                let cfg = PreConfig::for_name(if model_name == "gemma4" {
                    "gemma4"
                } else {
                    pre_name
                });
                let (bos, eos) = if model_name == "gemma4" {
                    (None, None)
                } else {
                    (in_range(11), in_range(11))
                };
                let bos = if cfg.no_bos { None } else { bos };
                let add_bos = cfg.add_bos;
                (Some(cfg), bos, eos, add_bos, false)
            }
            other => {
                return Err(EngineError::BadModel(format!(
                    "tokenizer model '{other}' is not supported (only 'gpt2' byte-level BPE and 'llama' SentencePiece)"
                )));
            }
        };
        let mut add_eos = false;

        let key_id = |key: &str| -> Option<Option<u32>> {
            let v = g.get_u64(&format!("tokenizer.ggml.{key}"))?;
            if (v as usize) < n {
                Some(Some(v as u32))
            } else {
                tracing::warn!("tokenizer.ggml.{key} = {v} is outside the vocabulary; ignored");
                None
            }
        };
        let key_bool = |key: &str| {
            g.get(&format!("tokenizer.ggml.{key}"))
                .and_then(MetaValue::as_bool)
        };
        if let Some(id) = key_id("bos_token_id") {
            bos = id;
        }
        if let Some(id) = key_id("eos_token_id") {
            eos = id;
        }
        // The unknown token needs no handling of its own: SentencePiece falls back to byte
        // tokens and the partition step treats type-2 tokens like control tokens.
        let eot = key_id("eot_token_id").flatten();
        let eom = key_id("eom_token_id").flatten();
        let fim_pre = key_id("fim_pre_token_id")
            .or_else(|| key_id("prefix_token_id"))
            .flatten();
        let fim_suf = key_id("fim_suf_token_id")
            .or_else(|| key_id("suffix_token_id"))
            .flatten();
        let fim_mid = key_id("fim_mid_token_id")
            .or_else(|| key_id("middle_token_id"))
            .flatten();
        let fim_pad = key_id("fim_pad_token_id").flatten();
        let fim_rep = key_id("fim_rep_token_id").flatten();
        let fim_sep = key_id("fim_sep_token_id").flatten();
        if let Some(b) = key_bool("add_space_prefix") {
            add_space_prefix = b;
        }
        if let Some(b) = key_bool("add_bos_token") {
            add_bos = b;
        }
        if let Some(b) = key_bool("add_eos_token") {
            add_eos = b;
        }
        if pre_cfg.as_ref().is_some_and(|c| c.gemma4) {
            add_bos = true;
        }
        if add_bos && bos.is_none() {
            tracing::warn!("vocabulary asks for a BOS token but has none; not adding one");
            add_bos = false;
        }
        if add_eos && eos.is_none() {
            tracing::warn!("vocabulary asks for an EOS token but has none; not adding one");
            add_eos = false;
        }

        // Text-based detection of special tokens (llama.cpp does this because converters do
        // not always mark them); a detected token becomes a control token.
        let find_text = |attrs: &mut Vec<u16>, texts: &[&str]| -> Option<u32> {
            let id = texts
                .iter()
                .filter_map(|t| text_to_id.get(*t).copied())
                .min()?;
            attrs[id as usize] |= ATTR_CONTROL;
            Some(id)
        };
        let eot = eot.or_else(|| find_text(&mut attrs, EOT_TEXTS));
        let eom = eom.or_else(|| find_text(&mut attrs, &["<|eom_id|>"]));
        let _ = fim_pre.or_else(|| find_text(&mut attrs, FIM_PRE_TEXTS));
        let _ = fim_suf.or_else(|| find_text(&mut attrs, FIM_SUF_TEXTS));
        let _ = fim_mid.or_else(|| find_text(&mut attrs, FIM_MID_TEXTS));
        let fim_pad = fim_pad.or_else(|| find_text(&mut attrs, FIM_PAD_TEXTS));
        let fim_rep = fim_rep.or_else(|| find_text(&mut attrs, FIM_REP_TEXTS));
        let fim_sep = fim_sep.or_else(|| find_text(&mut attrs, FIM_SEP_TEXTS));

        // End-of-generation set.
        let mut eog: HashSet<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for t in EOG_TEXTS {
            if let Some(&id) = text_to_id.get(*t) {
                eog.insert(id);
                attrs[id as usize] |= ATTR_CONTROL;
            }
        }
        // gpt-oss: these structure tokens must always render.
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = text_to_id.get(t) {
                attrs[id as usize] = ATTR_USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        let has =
            |eog: &HashSet<u32>, t: &str| text_to_id.get(t).is_some_and(|id| eog.contains(id));
        let harmony = (has(&eog, "<|return|>") && has(&eog, "<|call|>"))
            || (has(&eog, "<|calls|>") && has(&eog, "<|flush|>"));
        if harmony
            && let Some(&end) = text_to_id.get("<|end|>")
            && eog.contains(&end)
        {
            // o200k_harmony / solar-open: <|end|> ends a message, not the generation.
            eog.remove(&end);
            attrs[end as usize] = ATTR_USER_DEFINED;
        }
        if has(&eog, "<|tool_response>")
            && let Some(&s) = text_to_id.get("</s>")
            && eog.contains(&s)
        {
            eog.remove(&s);
            attrs[s as usize] = ATTR_NORMAL;
        }

        // Tokens the partition step looks for, longest first (stable, so ties go by id).
        let mut special: Vec<u32> = (0..n as u32)
            .filter(|&i| attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        special.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));

        let model = match pre_cfg {
            Some(cfg) => {
                let merges: Vec<&str> = match g
                    .get("tokenizer.ggml.merges")
                    .and_then(MetaValue::as_array)
                {
                    Some(a) => a.iter().filter_map(MetaValue::as_str).collect(),
                    None => return Err(meta_err("BPE vocabulary without tokenizer.ggml.merges")),
                };
                let lookup = |t: &str| text_to_id.get(t).copied();
                let bpe = Bpe::new(&lookup, &merges, cfg)?;
                Model::Bpe(Box::new(bpe))
            }
            None => Model::Spm,
        };

        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = text_to_id
                .get(format!("<0x{b:02X}>").as_str())
                .copied()
                .or_else(|| {
                    std::str::from_utf8(&[b as u8])
                        .ok()
                        .and_then(|s| text_to_id.get(s).copied())
                });
        }

        // Per-model attribute fix-ups (llama.cpp sets these by model name): Phi-3's special
        // tokens swallow the whitespace after them.
        let general_name = g.get_str("general.name").unwrap_or("").to_lowercase();
        if general_name.contains("phi-3") || general_name.contains("phi3") {
            for &id in &special {
                attrs[id as usize] |= ATTR_RSTRIP;
            }
            if let Some(&id) = text_to_id.get("</s>") {
                attrs[id as usize] |= ATTR_RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(&id) = text_to_id.get(t) {
                    attrs[id as usize] &= !ATTR_RSTRIP;
                }
            }
        }

        let vocab = Vocab {
            tokens,
            text_to_id,
            scores,
            attrs,
            byte_tokens,
        };
        let mut tok = Tokenizer {
            vocab,
            model,
            piece_bytes: Vec::new(),
            piece_off: Vec::with_capacity(n + 1),
            special,
            eog,
            bos,
            eos,
            add_bos,
            add_eos,
            add_space_prefix,
        };
        tok.build_pieces();
        Ok(tok)
    }

    /// Precompute every token's generated bytes (llama.cpp's `token_to_piece` with
    /// `special = false`).
    fn build_pieces(&mut self) {
        let (escape, byte_level) = match &self.model {
            Model::Spm => (true, false),
            Model::Bpe(b) => (b.escape_whitespace(), b.config().byte_encode),
        };
        // GPT-2 char -> byte.
        let mut unbyte = [None::<u8>; 0x200];
        for (b, c) in pretokenize::byte_to_unicode().iter().enumerate() {
            unbyte[*c as usize] = Some(b as u8);
        }
        let mut buf = Vec::new();
        let mut offs = Vec::with_capacity(self.vocab.tokens.len() + 1);
        offs.push(0u32);
        for (i, text) in self.vocab.tokens.iter().enumerate() {
            let attr = self.vocab.attrs[i];
            if attr & (ATTR_UNKNOWN | ATTR_CONTROL) != 0 {
                // Control / unknown: nothing is generated text.
            } else if attr & ATTR_USER_DEFINED != 0 {
                buf.extend_from_slice(text.as_bytes());
            } else if attr & ATTR_NORMAL != 0 {
                if escape {
                    buf.extend_from_slice(text.replace('\u{2581}', " ").as_bytes());
                } else if byte_level {
                    for c in text.chars() {
                        match unbyte.get(c as usize).copied().flatten() {
                            Some(b) => buf.push(b),
                            // Not a GPT-2 byte character: keep the character itself.
                            None => {
                                let mut tmp = [0u8; 4];
                                buf.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                            }
                        }
                    }
                } else {
                    buf.extend_from_slice(text.as_bytes());
                }
            } else if attr & ATTR_BYTE != 0
                && let Some(b) = text
                    .strip_prefix("<0x")
                    .and_then(|s| s.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                buf.push(b);
            }
            offs.push(buf.len() as u32);
        }
        self.piece_bytes = buf;
        self.piece_off = offs;
    }

    /// Cut `text` at special-token texts (llama.cpp's `tokenizer_st_partition`).
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Frag> {
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

    /// Encode text. `add_special`: prepend BOS (and append EOS) when the vocabulary says so
    /// (`add_bos_token` / `add_eos_token`, llama.cpp's per-model defaults when absent).
    /// `parse_special`: turn control-token texts such as `<|im_start|>` inside `text` into
    /// their ids; chat prompts need this, raw user text usually should not have it.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let frags = self.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special
            && self.add_bos
            && let Some(b) = self.bos
        {
            out.push(b);
        }
        match &self.model {
            Model::Spm => {
                let mut prev_special = true;
                let mut buf = String::new();
                for f in &frags {
                    match *f {
                        Frag::Text(s, e) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in text[s..e].chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::encode(&self.vocab, &buf, &mut out);
                            prev_special = false;
                        }
                        Frag::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Model::Bpe(bpe) => {
                for f in &frags {
                    match *f {
                        Frag::Text(s, e) => {
                            if bpe.escape_whitespace() {
                                let escaped = text[s..e].replace(' ', "\u{2581}");
                                bpe.encode(&self.vocab, &escaped, &mut out);
                            } else {
                                bpe.encode(&self.vocab, &text[s..e], &mut out);
                            }
                        }
                        Frag::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special
            && self.add_eos
            && let Some(e) = self.eos
        {
            out.push(e);
        }
        out
    }

    /// The raw bytes a token stands for when generated: byte-level BPE characters mapped
    /// back to bytes, SentencePiece `▁` turned into a space, `<0xXX>` byte tokens into the
    /// byte; user-defined tokens give their text and control/unknown tokens nothing. A token
    /// may be part of a UTF-8 sequence, hence bytes: feed them to an incremental UTF-8
    /// decoder. Out-of-range ids give an empty slice.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i + 1 >= self.piece_off.len() {
            return &[];
        }
        &self.piece_bytes[self.piece_off[i] as usize..self.piece_off[i + 1] as usize]
    }

    /// Decode a whole sequence to a String (invalid UTF-8 becomes U+FFFD). Control and
    /// unknown tokens are left out when `skip_special`, rendered as their text otherwise.
    /// This is the concatenation of token pieces, as llama.cpp's server builds its output
    /// (no clean-up of spaces, no stripping of the SentencePiece leading space).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let Some(attr) = self.vocab.attrs.get(id as usize) else {
                continue;
            };
            if attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                if !skip_special {
                    bytes.extend_from_slice(self.vocab.tokens[id as usize].as_bytes());
                }
            } else {
                bytes.extend_from_slice(self.token_bytes(id));
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Number of token ids (the logits width).
    pub fn vocab_size(&self) -> usize {
        self.vocab.tokens.len()
    }

    /// Beginning-of-sequence token, if the vocabulary has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token, if the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether generation must stop at `id`: EOS, EOT, EOM, the FIM pad/repo/file-separator
    /// tokens, and any token whose text is one of llama.cpp's end markers (`<|im_end|>`,
    /// `<|endoftext|>`, `<|eot_id|>`, `<|end|>`, `<end_of_turn>`, `<|end_of_text|>`, ...).
    /// Chat models often end a turn with a token that is not their EOS.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Token text as stored in the vocabulary (byte-level or `▁`-escaped); for what a token
    /// shows as in output use [`Tokenizer::token_bytes`].
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.tokens.get(id as usize).map(String::as_str)
    }

    /// Id of a token by its exact vocabulary text (e.g. `"<|im_end|>"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.id_of(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
    }

    #[test]
    fn fx_hash_distinguishes_short_strings() {
        use std::hash::BuildHasher;
        let h = |s: &str| FxBuild::default().hash_one(s);
        assert_ne!(h("a"), h("a\0"));
        assert_ne!(h("ab"), h("ba"));
    }
}
