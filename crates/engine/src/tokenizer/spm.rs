//! SentencePiece BPE as llama.cpp's `llm_tokenizer_spm_session` runs it: start from UTF-8
//! characters, repeatedly merge the adjacent pair whose concatenation is a vocabulary entry
//! with the highest score (ties: leftmost), and emit characters that never became a token as
//! `<0xXX>` byte tokens.
//!
//! The caller has already replaced spaces with U+2581 and added the leading space.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Vocab;

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

struct Bigram {
    score: f32,
    left: i32,
    right: i32,
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Encode `text` (already whitespace-escaped), appending ids to `out`.
pub(crate) fn encode(vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
    let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
    let n = text.chars().count();
    for (i, (off, c)) in text.char_indices().enumerate() {
        syms.push(Sym {
            start: off as u32,
            len: c.len_utf8() as u32,
            prev: i as i32 - 1,
            next: if i + 1 == n { -1 } else { i as i32 + 1 },
        });
    }
    let mut heap = BinaryHeap::new();
    for i in 1..syms.len() {
        try_add(vocab, text, &syms, i as i32 - 1, i as i32, &mut heap);
    }
    while let Some(bg) = heap.pop() {
        let (l, r) = (syms[bg.left as usize], syms[bg.right as usize]);
        if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
            continue;
        }
        syms[bg.left as usize].len += r.len;
        syms[bg.right as usize].len = 0;
        syms[bg.left as usize].next = r.next;
        if r.next >= 0 {
            syms[r.next as usize].prev = bg.left;
        }
        try_add(vocab, text, &syms, l.prev, bg.left, &mut heap);
        try_add(vocab, text, &syms, bg.left, r.next, &mut heap);
    }
    let mut i = if syms.is_empty() { -1 } else { 0 };
    while i >= 0 {
        let s = syms[i as usize];
        let piece = &text[s.start as usize..(s.start + s.len) as usize];
        match vocab.id_of(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    if let Some(id) = vocab.byte_token(b) {
                        out.push(id);
                    }
                }
            }
        }
        i = s.next;
    }
}

fn try_add(
    vocab: &Vocab,
    text: &str,
    syms: &[Sym],
    left: i32,
    right: i32,
    heap: &mut BinaryHeap<Bigram>,
) {
    if left < 0 || right < 0 {
        return;
    }
    let l = syms[left as usize];
    let r = syms[right as usize];
    let piece = &text[l.start as usize..(l.start + l.len + r.len) as usize];
    if let Some(id) = vocab.id_of(piece) {
        heap.push(Bigram {
            score: vocab.scores[id as usize],
            left,
            right,
            size: l.len + r.len,
        });
    }
}
