//! Byte-level BPE, as llama.cpp's `llm_tokenizer_bpe_session` does it: split the text with the
//! pre-tokenizer regexes, map each word's bytes to GPT-2's printable characters, then merge
//! adjacent symbols lowest merge-rank first (ties: leftmost first) until no pair has a rank.
//!
//! Symbols carry token ids rather than strings, so a merge is a hash lookup on an id pair and
//! no string is built while encoding. A merge whose result is not itself a vocabulary entry is
//! dropped when the table is built (Hugging Face refuses such files; llama.cpp would merge and
//! then fall back to bytes).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::pretokenize::{PreConfig, PreTokenizer, byte_to_unicode};
use super::{Vocab, VocabHash};
use crate::error::EngineError;

/// The BPE model: merge table, pre-tokenizer and byte mapping.
#[derive(Debug)]
pub(crate) struct Bpe {
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32), VocabHash>,
    pre: PreTokenizer,
    cfg: PreConfig,
    /// Token id of each byte as a starting symbol: the GPT-2 character for byte-level
    /// vocabularies, `<0xXX>` for raw-UTF-8 ones (used only as fallback there).
    byte_ids: [Option<u32>; 256],
    /// GPT-2 byte -> char map (for whole-word lookups with `ignore_merges`).
    byte_chars: [char; 256],
}

#[derive(Clone, Copy)]
struct Sym {
    /// Token id of this symbol's text, if it is a vocabulary entry.
    id: Option<u32>,
    /// Byte range in the (raw) word.
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

impl Bpe {
    pub fn new(
        lookup: &dyn Fn(&str) -> Option<u32>,
        merges: &[&str],
        cfg: PreConfig,
    ) -> Result<Self, EngineError> {
        let pre = PreTokenizer::new(&cfg.regexes)?;
        let mut table: HashMap<(u32, u32), (u32, u32), VocabHash> =
            HashMap::with_capacity_and_hasher(merges.len(), VocabHash::default());
        let mut concat = String::new();
        for (rank, m) in merges.iter().enumerate() {
            // llama.cpp: split at the first space after the first byte.
            let Some(pos) = m.as_bytes().iter().skip(1).position(|&b| b == b' ') else {
                continue;
            };
            let (a, b) = (&m[..pos + 1], &m[pos + 2..]);
            let (Some(ia), Some(ib)) = (lookup(a), lookup(b)) else {
                continue;
            };
            concat.clear();
            concat.push_str(a);
            concat.push_str(b);
            let Some(merged) = lookup(concat.as_str()) else {
                continue;
            };
            table.entry((ia, ib)).or_insert((rank as u32, merged));
        }
        let byte_chars = byte_to_unicode();
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = if cfg.byte_encode {
                let mut buf = [0u8; 4];
                lookup(byte_chars[b].encode_utf8(&mut buf))
            } else {
                lookup(&format!("<0x{b:02X}>"))
            };
        }
        Ok(Bpe {
            merges: table,
            pre,
            cfg,
            byte_ids,
            byte_chars,
        })
    }

    /// Whether spaces must become U+2581 before [`Bpe::encode`] (Gemma 4).
    pub fn escape_whitespace(&self) -> bool {
        self.cfg.escape_whitespace
    }

    pub fn config(&self) -> &PreConfig {
        &self.cfg
    }

    /// Encode one fragment of plain text (no special tokens in it), appending ids to `out`.
    pub fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<Sym> = Vec::new();
        let mut heap: BinaryHeap<Reverse<(u32, i32, u32, u32)>> = BinaryHeap::new();
        let mut encoded = String::new();
        for word in self.pre.split(text) {
            // Whole-word lookup (Llama 3's ignore_merges; Gemma 4's newline runs).
            if self.cfg.ignore_merges || (self.cfg.gemma4 && word.bytes().all(|b| b == b'\n')) {
                let id = if self.cfg.byte_encode {
                    encoded.clear();
                    encoded.extend(word.bytes().map(|b| self.byte_chars[b as usize]));
                    vocab.id_of(&encoded)
                } else {
                    vocab.id_of(word)
                };
                if let Some(id) = id {
                    out.push(id);
                    continue;
                }
            }
            syms.clear();
            heap.clear();
            if self.cfg.byte_encode {
                for (i, &b) in word.as_bytes().iter().enumerate() {
                    syms.push(Sym {
                        id: self.byte_ids[b as usize],
                        start: i as u32,
                        len: 1,
                        prev: i as i32 - 1,
                        next: i as i32 + 1,
                    });
                }
            } else {
                for (i, (off, c)) in word.char_indices().enumerate() {
                    let len = c.len_utf8();
                    syms.push(Sym {
                        id: vocab.id_of(&word[off..off + len]),
                        start: off as u32,
                        len: len as u32,
                        prev: i as i32 - 1,
                        next: i as i32 + 1,
                    });
                }
            }
            if let Some(last) = syms.last_mut() {
                last.next = -1;
            }
            for i in 1..syms.len() {
                self.push_pair(&syms, i as i32 - 1, i as i32, &mut heap);
            }
            while let Some(Reverse((_rank, left, lid, rid))) = heap.pop() {
                let l = syms[left as usize];
                if l.len == 0 || l.id != Some(lid) || l.next < 0 {
                    continue;
                }
                let right = l.next;
                let r = syms[right as usize];
                if r.len == 0 || r.id != Some(rid) {
                    continue;
                }
                let merged = self.merges[&(lid, rid)].1;
                {
                    let ls = &mut syms[left as usize];
                    ls.id = Some(merged);
                    ls.len += r.len;
                    ls.next = r.next;
                }
                syms[right as usize].len = 0;
                if r.next >= 0 {
                    syms[r.next as usize].prev = left;
                }
                let lp = syms[left as usize].prev;
                self.push_pair(&syms, lp, left, &mut heap);
                self.push_pair(&syms, left, r.next, &mut heap);
            }
            let mut i = if syms.is_empty() { -1 } else { 0 };
            while i >= 0 {
                let s = syms[i as usize];
                match s.id {
                    Some(id) => out.push(id),
                    None => self.fallback(
                        vocab,
                        &word.as_bytes()[s.start as usize..(s.start + s.len) as usize],
                        out,
                    ),
                }
                i = s.next;
            }
        }
    }

    fn push_pair(
        &self,
        syms: &[Sym],
        left: i32,
        right: i32,
        heap: &mut BinaryHeap<Reverse<(u32, i32, u32, u32)>>,
    ) {
        if left < 0 || right < 0 {
            return;
        }
        let (Some(a), Some(b)) = (syms[left as usize].id, syms[right as usize].id) else {
            return;
        };
        if let Some(&(rank, _)) = self.merges.get(&(a, b)) {
            heap.push(Reverse((rank, left, a, b)));
        }
    }

    /// A symbol that is not a vocabulary entry: emit its bytes one by one as llama.cpp does
    /// (bytes with no token are dropped).
    fn fallback(&self, vocab: &Vocab, raw: &[u8], out: &mut Vec<u32>) {
        for &b in raw {
            if self.cfg.byte_encode {
                // llama.cpp looks up each byte of the GPT-2-encoded text; only ASCII can hit.
                let mut buf = [0u8; 4];
                let enc = self.byte_chars[b as usize].encode_utf8(&mut buf);
                for &eb in enc.as_bytes() {
                    if eb < 0x80
                        && let Some(id) = vocab.id_of(std::str::from_utf8(&[eb]).unwrap_or(""))
                    {
                        out.push(id);
                    }
                }
            } else if let Some(id) = self.byte_ids[b as usize] {
                out.push(id);
            }
        }
    }
}
