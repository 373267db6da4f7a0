//! Reuse of computed prompt prefixes across requests.
//!
//! A chat's second turn re-sends the whole first turn, and many requests share a system
//! prompt: recomputing those tokens is most of a prompt's cost. When a sequence ends, its KV
//! cache is kept here with the tokens it holds; a new prompt starts from a copy of the
//! longest cached prefix and computes only the rest. Entries are evicted least recently used
//! first under a byte budget. (A paged cache with shared blocks, which avoids the copy,
//! belongs to the batching work; this keeps the same interface for the scheduler.)

use crate::model::KvCache;

struct Entry {
    tokens: Vec<u32>,
    kv: KvCache,
    last_used: u64,
}

/// Finished sequences' KV caches, keyed by the tokens they hold.
pub struct PrefixCache {
    entries: Vec<Entry>,
    max_bytes: usize,
    used_bytes: usize,
    clock: u64,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// `max_bytes` = 0 disables caching.
    pub fn new(max_bytes: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            max_bytes,
            used_bytes: 0,
            clock: 0,
        }
    }

    /// A cache holding the longest cached prefix of `prompt`, always leaving at least the
    /// last prompt token to compute (its logits start the generation). `None` on a miss.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<KvCache> {
        let limit = prompt.len().saturating_sub(1);
        let (best, len) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit)))
            .max_by_key(|&(_, len)| len)?;
        if len == 0 {
            return None;
        }
        self.clock += 1;
        let entry = &mut self.entries[best];
        entry.last_used = self.clock;
        Some(entry.kv.prefix(len))
    }

    /// Keeps a finished sequence's cache; `tokens` are the tokens whose keys and values it
    /// holds (its length must equal `kv.len()`).
    pub fn insert(&mut self, mut tokens: Vec<u32>, kv: KvCache) {
        tokens.truncate(kv.len());
        if tokens.is_empty() || self.max_bytes == 0 {
            return;
        }
        // An entry that is a prefix of the new one adds nothing; one that extends it wins.
        if self
            .entries
            .iter()
            .any(|e| common_prefix(&e.tokens, &tokens) == tokens.len())
        {
            return;
        }
        let before = self.entries.len();
        self.entries
            .retain(|e| common_prefix(&e.tokens, &tokens) < e.tokens.len());
        if self.entries.len() != before {
            self.used_bytes = self.entries.iter().map(|e| e.kv.capacity_bytes()).sum();
        }
        let kv = kv.prefix(tokens.len()); // exact capacity, not the sequence's growth slack
        let bytes = kv.capacity_bytes();
        if bytes > self.max_bytes {
            return;
        }
        while self.used_bytes + bytes > self.max_bytes {
            let oldest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].last_used)
                .expect("used > 0");
            self.used_bytes -= self.entries.swap_remove(oldest).kv.capacity_bytes();
        }
        self.clock += 1;
        self.used_bytes += bytes;
        self.entries.push(Entry {
            tokens,
            kv,
            last_used: self.clock,
        });
    }

    /// Bytes held, for logs and metrics.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(len: usize) -> KvCache {
        let mut c = KvCache::new(1, 2);
        c.k[0] = (0..len * 2).map(|x| x as f32).collect();
        c.v[0] = c.k[0].iter().map(|x| -x).collect();
        c.len = len;
        c
    }

    #[test]
    fn longest_prefix_leaving_the_last_token() {
        let mut pc = PrefixCache::new(1 << 20);
        assert!(pc.lookup(&[1, 2, 3]).is_none());
        pc.insert(vec![1, 2, 3, 4], kv(4));
        pc.insert(vec![1, 9], kv(2));
        let hit = pc.lookup(&[1, 2, 3, 7, 8]).unwrap();
        assert_eq!(hit.len(), 3);
        assert_eq!(hit.k[0], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(
            pc.lookup(&[1, 2, 3, 4]).unwrap().len(),
            3,
            "the last token is computed"
        );
        assert!(pc.lookup(&[5, 1]).is_none());
        assert!(pc.lookup(&[1]).is_none());
    }

    #[test]
    fn evicts_least_recently_used_under_the_budget() {
        let one = kv(4).prefix(4).capacity_bytes();
        let mut pc = PrefixCache::new(2 * one);
        pc.insert(vec![1, 1, 1, 1], kv(4));
        pc.insert(vec![2, 2, 2, 2], kv(4));
        assert!(pc.lookup(&[1, 1, 1, 1, 0]).is_some()); // 1s are now the most recent
        pc.insert(vec![3, 3, 3, 3], kv(4));
        assert!(
            pc.lookup(&[2, 2, 2, 2, 0]).is_none(),
            "2s were least recently used"
        );
        assert!(pc.lookup(&[1, 1, 1, 1, 0]).is_some());
        assert!(pc.lookup(&[3, 3, 3, 3, 0]).is_some());
        assert_eq!(pc.used_bytes(), 2 * one);
    }

    #[test]
    fn a_longer_conversation_replaces_its_prefix() {
        let mut pc = PrefixCache::new(1 << 20);
        pc.insert(vec![1, 2], kv(2));
        pc.insert(vec![1, 2, 3, 4], kv(4));
        pc.insert(vec![1, 2, 3], kv(3)); // already covered
        assert_eq!(pc.entries.len(), 1);
        assert_eq!(pc.lookup(&[1, 2, 3, 4, 5]).unwrap().len(), 4);
        let disabled = &mut PrefixCache::new(0);
        disabled.insert(vec![1, 2], kv(2));
        assert!(disabled.lookup(&[1, 2, 3]).is_none());
    }
}
