//! Reuse of computed prompt prefixes across requests, block by block.
//!
//! A chat's second turn re-sends the whole first turn, and many requests share a system
//! prompt: recomputing those tokens is most of a prompt's cost. The cache keeps KV blocks
//! (see `model/kv.rs`) in a tree keyed by their tokens: a node is one block, found by the
//! hash of its parent's key and its own tokens, so a prompt is matched block by block from
//! the start. Full blocks are registered when a prompt has been computed (so requests
//! arriving later share them while the first still runs) and when a sequence ends, with
//! its last, partial block too. A hit shares the blocks, it does not copy them; the new
//! sequence copies only the one block it goes on writing into.
//!
//! Blocks are evicted least recently used first, leaves before their parents, under a
//! byte budget.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use crate::model::{BLOCK_TOKENS, KvBlock, KvCache};

/// The key of the (virtual) root, parent of every first block.
const ROOT: u64 = 0;

struct Node {
    parent: u64,
    /// `BLOCK_TOKENS` tokens for a full block, fewer for a sequence's tail.
    tokens: Vec<u32>,
    block: Arc<KvBlock>,
    depth: usize,
    last_used: u64,
}

/// Computed KV blocks keyed by the token prefix they hold.
pub struct PrefixCache {
    nodes: HashMap<u64, Node>,
    children: HashMap<u64, Vec<u64>>,
    max_bytes: usize,
    used_bytes: usize,
    clock: u64,
}

fn key(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish().max(ROOT + 1)
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// `max_bytes` = 0 disables caching.
    pub fn new(max_bytes: usize) -> Self {
        PrefixCache {
            nodes: HashMap::new(),
            children: HashMap::new(),
            max_bytes,
            used_bytes: 0,
            clock: 0,
        }
    }

    /// `empty` extended with the longest cached prefix of `prompt` (as shared blocks),
    /// always leaving at least the last prompt token to compute (its logits start the
    /// generation); `empty` itself on a miss.
    pub fn lookup(&mut self, prompt: &[u32], empty: KvCache) -> KvCache {
        let limit = prompt.len().saturating_sub(1);
        self.clock += 1;
        let (mut parent, mut pos) = (ROOT, 0);
        let mut blocks = Vec::new();
        loop {
            let rest = &prompt[pos..];
            if rest.len() >= BLOCK_TOKENS {
                let k = key(parent, &rest[..BLOCK_TOKENS]);
                if let Some(node) = self.nodes.get_mut(&k)
                    && node.parent == parent
                    && node.tokens == rest[..BLOCK_TOKENS]
                {
                    node.last_used = self.clock;
                    blocks.push(node.block.clone());
                    pos += BLOCK_TOKENS;
                    parent = k;
                    continue;
                }
            }
            // The prompt leaves the tree inside a block (it diverges or ends there): take
            // the child that shares the longest start with it.
            let best = self
                .children
                .get(&parent)
                .into_iter()
                .flatten()
                .map(|k| (*k, common_prefix(&self.nodes[k].tokens, rest)))
                .max_by_key(|&(_, m)| m);
            if let Some((k, m)) = best
                && m > 0
            {
                let node = self.nodes.get_mut(&k).expect("children are nodes");
                node.last_used = self.clock;
                blocks.push(node.block.clone());
                pos += m;
            }
            break;
        }
        let len = pos.min(limit);
        if len == 0 {
            return empty;
        }
        blocks.truncate(len.div_ceil(BLOCK_TOKENS));
        KvCache::from_blocks(&empty, blocks, len)
    }

    /// Registers the blocks of `kv` that hold `tokens` (the first `tokens.len()`
    /// positions; a last partial block included), sharing them.
    pub fn insert(&mut self, tokens: &[u32], kv: &KvCache) {
        let n = tokens.len().min(kv.len());
        if n == 0 || self.max_bytes == 0 {
            return;
        }
        self.clock += 1;
        let mut parent = ROOT;
        for (depth, block) in kv.blocks().iter().enumerate() {
            let start = depth * BLOCK_TOKENS;
            if start >= n {
                break;
            }
            let toks = &tokens[start..(start + BLOCK_TOKENS).min(n)];
            let k = key(parent, toks);
            if let Some(node) = self.nodes.get_mut(&k) {
                if node.parent != parent || node.tokens != toks {
                    break; // a hash collision with another prefix: keep the one there
                }
                node.last_used = self.clock;
            } else if self.covered(parent, toks) {
                break; // a tail that a sibling already holds as the start of its block
            } else {
                self.drop_covered_tails(parent, toks);
                self.nodes.insert(
                    k,
                    Node {
                        parent,
                        tokens: toks.to_vec(),
                        block: block.clone(),
                        depth,
                        last_used: self.clock,
                    },
                );
                self.children.entry(parent).or_default().push(k);
                self.used_bytes += block.size_bytes();
            }
            parent = k;
        }
        self.evict();
    }

    /// Whether a child of `parent` already starts with `toks`.
    fn covered(&self, parent: u64, toks: &[u32]) -> bool {
        self.children
            .get(&parent)
            .into_iter()
            .flatten()
            .any(|k| self.nodes[k].tokens.starts_with(toks))
    }

    /// A partial block that a new sibling extends adds nothing: drop it.
    fn drop_covered_tails(&mut self, parent: u64, toks: &[u32]) {
        let covered: Vec<u64> = self
            .children
            .get(&parent)
            .into_iter()
            .flatten()
            .copied()
            .filter(|k| {
                let t = &self.nodes[k].tokens;
                t.len() < toks.len() && toks.starts_with(t) && !self.children.contains_key(k)
            })
            .collect();
        for k in covered {
            self.remove(k);
        }
    }

    fn remove(&mut self, k: u64) {
        let node = self.nodes.remove(&k).expect("removing a node");
        if let Some(siblings) = self.children.get_mut(&node.parent) {
            siblings.retain(|&c| c != k);
            if siblings.is_empty() {
                self.children.remove(&node.parent);
            }
        }
        self.used_bytes -= node.block.size_bytes();
    }

    /// Evicts least recently used leaves (deepest first among equals) until the budget
    /// holds. A parent is used whenever a child is, so leaves go first anyway.
    fn evict(&mut self) {
        while self.used_bytes > self.max_bytes {
            let victim = self
                .nodes
                .iter()
                .filter(|(k, _)| !self.children.contains_key(k))
                .min_by_key(|(_, n)| (n.last_used, std::cmp::Reverse(n.depth)))
                .map(|(k, _)| *k);
            match victim {
                Some(k) => self.remove(k),
                None => break,
            }
        }
    }

    /// Bytes of the blocks held, for logs and metrics.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// Blocks held, one per node: a node's block is never another node's (a sequence that
    /// goes on writing into a shared block copies it first), so this is also the number
    /// of distinct blocks the cache keeps alive.
    pub fn blocks(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: usize = BLOCK_TOKENS;

    /// A cache of `tokens.len()` positions whose rows encode (position, token).
    fn kv(tokens: &[u32]) -> KvCache {
        let mut c = KvCache::new(1, 2);
        c.reserve(tokens.len());
        for (pos, &t) in tokens.iter().enumerate() {
            c.write(0, pos, &[pos as f32, t as f32], &[t as f32, pos as f32]);
        }
        c.len = tokens.len();
        c
    }

    fn seq(start: u32, n: usize) -> Vec<u32> {
        (start..start + n as u32).collect()
    }

    fn empty() -> KvCache {
        KvCache::new(1, 2)
    }

    #[test]
    fn longest_prefix_leaving_the_last_token() {
        let mut pc = PrefixCache::new(1 << 20);
        assert!(pc.lookup(&seq(1, 3), empty()).is_empty());
        let first = seq(1, 2 * B + 5);
        pc.insert(&first, &kv(&first));
        // A prompt that follows the first for a block and 3 tokens, then differs.
        let mut p = seq(1, B + 3);
        p.extend([999, 998]);
        let hit = pc.lookup(&p, empty());
        assert_eq!(hit.len(), B + 3);
        let (k, _) = hit.pages(0);
        assert_eq!(
            k[1][..2],
            [B as f32, (B + 1) as f32],
            "row B holds position B"
        );
        // The same prompt again: all but its last token.
        assert_eq!(pc.lookup(&first, empty()).len(), first.len() - 1);
        assert!(pc.lookup(&[5, 1], empty()).is_empty());
        assert!(pc.lookup(&[1], empty()).is_empty());
    }

    #[test]
    fn hits_share_blocks_instead_of_copying() {
        let mut pc = PrefixCache::new(1 << 20);
        let first = seq(1, 3 * B);
        let a = kv(&first);
        pc.insert(&first, &a);
        let hit = pc.lookup(&seq(1, 2 * B + 1), empty());
        assert_eq!(hit.len(), 2 * B);
        assert!(Arc::ptr_eq(&hit.blocks()[0], &a.blocks()[0]));
        assert!(Arc::ptr_eq(&hit.blocks()[1], &a.blocks()[1]));
    }

    #[test]
    fn blocks_counts_the_distinct_blocks_kept() {
        let mut pc = PrefixCache::new(1 << 20);
        let first = seq(1, B + 5);
        pc.insert(&first, &kv(&first));
        // A conversation that goes on from inside the first's tail block: it copies that
        // block before writing into it, so the cache then keeps three blocks, not two.
        let mut next = seq(1, B + 3);
        next.extend([900, 901, 902]);
        let mut c = pc.lookup(&next, empty());
        let start = c.len();
        assert_eq!(start, B + 3);
        c.reserve(next.len() - start);
        for (pos, &t) in next.iter().enumerate().skip(start) {
            c.write(0, pos, &[pos as f32, t as f32], &[t as f32, pos as f32]);
        }
        c.len = next.len();
        pc.insert(&next, &c);
        let distinct: std::collections::HashSet<*const KvBlock> =
            pc.nodes.values().map(|n| Arc::as_ptr(&n.block)).collect();
        assert_eq!((pc.blocks(), distinct.len()), (3, 3));
    }

    #[test]
    fn evicts_least_recently_used_leaves_under_the_budget() {
        let one = KvBlock::bytes(1, 2);
        let mut pc = PrefixCache::new(4 * one);
        let a = seq(100, 2 * B);
        let b = seq(200, 2 * B);
        pc.insert(&a, &kv(&a));
        pc.insert(&b, &kv(&b));
        assert_eq!(pc.used_bytes(), 4 * one);
        assert_eq!(pc.lookup(&seq(100, 2 * B + 1), empty()).len(), 2 * B); // a is recent
        let c = seq(300, B);
        pc.insert(&c, &kv(&c));
        // b's second block went first (least recently used leaf), a is whole.
        assert_eq!(pc.lookup(&seq(200, 2 * B + 1), empty()).len(), B);
        assert_eq!(pc.lookup(&seq(100, 2 * B + 1), empty()).len(), 2 * B);
        assert_eq!(pc.lookup(&seq(300, B + 1), empty()).len(), B);
        assert_eq!(pc.used_bytes(), 4 * one);
    }

    #[test]
    fn a_longer_conversation_replaces_its_tail() {
        let mut pc = PrefixCache::new(1 << 20);
        let short = seq(1, 5);
        pc.insert(&short, &kv(&short));
        let long = seq(1, B + 2);
        pc.insert(&long, &kv(&long));
        pc.insert(&short, &kv(&short)); // the start of a block already there
        assert_eq!(
            pc.nodes.len(),
            2,
            "the short tail was dropped and not re-added"
        );
        assert_eq!(pc.lookup(&seq(1, B + 3), empty()).len(), B + 2);
        let disabled = &mut PrefixCache::new(0);
        disabled.insert(&short, &kv(&short));
        assert!(disabled.lookup(&seq(1, 6), empty()).is_empty());
    }
}
