//! Pre-tokenization for byte-level BPE: the regex splits llama.cpp applies before merging,
//! chosen by the GGUF key `tokenizer.ggml.pre`, and GPT-2's byte <-> unicode mapping.
//!
//! llama.cpp applies a *list* of regexes in sequence: every regex splits every piece left by
//! the previous one, and both the matches and the unmatched gaps between them become pieces
//! (Hugging Face's `Split(behavior = Isolated)`). We do the same with `fancy_regex`, which
//! understands the look-ahead (`\s+(?!\S)`) these patterns rely on.

use fancy_regex::Regex;

use crate::error::EngineError;

/// GPT-2's pattern as llama.cpp writes it (without HF's trailing `|\s+`: the gap it would
/// match becomes a piece anyway).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3 (also dbrx, smaug, chatglm4): case-insensitive contractions spelled out, digits
/// in groups of up to three.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2 (also stablelm2, hunyuan, grok-2, ...): like Llama 3 but single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen3.5: Qwen2 with combining marks kept with their letters.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Tekken (Mistral Nemo), in the original tokenizer.json form: fancy-regex supports the
/// classes that llama.cpp had to rewrite as look-aheads.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-4o / Llama 4, original tokenizer.json form.
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";

// Written with \x{..} escapes where the code point has a canonical (NFC) equivalent, so
// that no editor or copy step can silently normalize it into another range.
const DEEPSEEK_LLM_LETTERS: &str = r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+";

const DEEPSEEK3: &str = r"[!\x22#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const PORO: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

/// What a `tokenizer.ggml.pre` name implies, besides its regexes (llama.cpp's `load`).
#[derive(Debug, Clone)]
pub(crate) struct PreConfig {
    /// Regexes applied in sequence.
    pub regexes: Vec<&'static str>,
    /// Emit a word as one token when the whole word is in the vocabulary (Llama 3 style).
    pub ignore_merges: bool,
    /// llama.cpp's default for `add_bos_token` when the key is absent.
    pub add_bos: bool,
    /// Map bytes to GPT-2's printable unicode before merging (false: raw UTF-8 with `<0xXX>`
    /// byte fallback, the Gemma 4 "SPM-style BPE").
    pub byte_encode: bool,
    /// Replace spaces with U+2581 before tokenizing (Gemma 4).
    pub escape_whitespace: bool,
    /// The model has no BOS token (ChatGLM).
    pub no_bos: bool,
    /// Gemma 4: llama.cpp forces `add_bos` on whatever the file says, and looks up words made
    /// only of newlines whole.
    pub gemma4: bool,
}

impl PreConfig {
    fn new(regexes: Vec<&'static str>) -> Self {
        PreConfig {
            regexes,
            ignore_merges: false,
            add_bos: false,
            byte_encode: true,
            escape_whitespace: false,
            no_bos: false,
            gemma4: false,
        }
    }

    /// llama.cpp's table from pre-tokenizer name to behaviour. An empty name is llama.cpp's
    /// "default"; a name we do not know falls back to GPT-2's regex with a warning (llama.cpp
    /// refuses such a file, but GPT-2's split is right for most byte-level vocabularies).
    pub fn for_name(pre: &str) -> Self {
        let default = || {
            PreConfig::new(vec![
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2,
                r"\p{N}+",
                "[0-9][0-9][0-9]",
            ])
        };
        match pre {
            "" => {
                tracing::warn!(
                    "GGUF has no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer, quality may suffer"
                );
                default()
            }
            "default" => default(),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => PreConfig {
                ignore_merges: true,
                add_bos: true,
                ..PreConfig::new(vec![LLAMA3])
            },
            "minicpm5" => PreConfig {
                ignore_merges: true,
                ..PreConfig::new(vec![
                    r"\p{N}{1,3}",
                    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
                ])
            },
            "dbrx" | "smaug-bpe" => PreConfig::new(vec![LLAMA3]),
            "glm4" | "chatglm-bpe" => PreConfig {
                no_bos: true,
                ..PreConfig::new(vec![LLAMA3])
            },
            "deepseek-llm" => PreConfig::new(vec![
                "[\r\n]",
                DEEPSEEK_LLM_LETTERS,
                r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
                r"\s+$",
                "[一-龥ࠀ-一가-퟿]+",
                r"\p{N}+",
            ]),
            "deepseek-coder" => PreConfig::new(vec![
                "[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                "[一-龥ࠀ-一가-퟿]+",
                r"\p{N}",
            ]),
            "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => {
                PreConfig::new(vec![r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", DEEPSEEK3])
            }
            "falcon" => PreConfig::new(vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"]),
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
            | "minerva-7b" | "mellum2" => PreConfig::new(vec![r"\p{N}", GPT2]),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais"
            | "trillion" | "granite-docling" | "exaone4" | "jina-v1-en" | "jina-v2-code"
            | "roberta-bpe" => PreConfig::new(vec![GPT2]),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "stablelm2" | "hunyuan"
            | "solar-open" | "megrez" | "grok-2" => PreConfig::new(vec![QWEN2]),
            "qwen35" => PreConfig::new(vec![QWEN35]),
            "seed-coder" => PreConfig::new(vec![SEED_CODER]),
            "poro-chat" | "bloom" | "gpt3-finnish" => PreConfig::new(vec![PORO]),
            "viking" => PreConfig::new(vec![PORO, r"\p{N}"]),
            "tekken" => PreConfig {
                ignore_merges: true,
                add_bos: true,
                ..PreConfig::new(vec![TEKKEN])
            },
            "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => {
                PreConfig::new(vec![GPT4O])
            }
            "gemma4" | "granite-embed-multi-311m" | "sarvam-moe" => PreConfig {
                byte_encode: false,
                escape_whitespace: true,
                gemma4: pre != "sarvam-moe",
                ..PreConfig::new(vec!["[^\n]+|[\n]+"])
            },
            other => {
                tracing::warn!(
                    "unknown pre-tokenizer '{other}' in GGUF; falling back to GPT-2's regex, tokenization may differ from the model's"
                );
                PreConfig::new(vec![GPT2])
            }
        }
    }
}

/// Compiled regex sequence.
#[derive(Debug)]
pub(crate) struct PreTokenizer {
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    pub fn new(patterns: &[&str]) -> Result<Self, EngineError> {
        let regexes = patterns
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| {
                    EngineError::BadModel(format!(
                        "pre-tokenizer regex {p:?} does not compile: {e}"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PreTokenizer { regexes })
    }

    /// Split `text` into words (byte ranges of `text`, in order, covering all of it).
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces: Vec<&'t str> = if text.is_empty() {
            Vec::new()
        } else {
            vec![text]
        };
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let mut last = 0;
                for m in re.find_iter(piece) {
                    let Ok(m) = m else {
                        // Backtrack limit hit: keep the rest unsplit rather than lose text.
                        break;
                    };
                    if m.start() > last {
                        next.push(&piece[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < piece.len() {
                    next.push(&piece[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }
}

/// GPT-2's `bytes_to_unicode`: every byte gets a printable character, so byte-level tokens
/// can be stored as text. Index by byte.
pub(crate) fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        table[b as usize] = char::from_u32(c).expect("GPT-2 byte map stays in the BMP");
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_matches_gpt2() {
        let t = byte_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        let mut all: Vec<char> = t.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn gpt2_split_keeps_everything() {
        let p = PreTokenizer::new(&[GPT2]).unwrap();
        let text = "Hello world!  it's\n\n 333  ";
        let pieces = p.split(text);
        assert_eq!(pieces.concat(), text);
        assert_eq!(pieces[..3], ["Hello", " world", "!"]);
        assert!(pieces.contains(&"'s"));
    }

    #[test]
    fn smollm_splits_digits() {
        let cfg = PreConfig::for_name("smollm");
        let p = PreTokenizer::new(&cfg.regexes).unwrap();
        assert_eq!(p.split("a 123"), ["a", " ", "1", "2", "3"]);
    }

    #[test]
    fn every_table_entry_compiles() {
        for name in [
            "",
            "default",
            "llama-bpe",
            "minicpm5",
            "dbrx",
            "glm4",
            "deepseek-llm",
            "deepseek-coder",
            "deepseek-v3",
            "falcon",
            "starcoder",
            "gpt-2",
            "qwen2",
            "qwen35",
            "seed-coder",
            "poro-chat",
            "viking",
            "tekken",
            "gpt-4o",
            "gemma4",
            "nonsense",
        ] {
            let cfg = PreConfig::for_name(name);
            PreTokenizer::new(&cfg.regexes).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
