//! The per-sequence KV cache.

/// Positions reserved at a time when a cache grows: big enough that appends rarely
/// reallocate, small enough that a short chat does not pay for the full context.
const GROW_POSITIONS: usize = 256;

/// Keys and values of one sequence, for every layer, as f32 rows of `n_head_kv * head_dim`.
///
/// Owned by the engine's scheduler rather than the model so that one loaded model serves
/// many sequences at once, and so a finished prefix can be kept and reused ([`truncate`]).
/// It grows in chunks of 256 positions instead of reserving the whole context up front.
///
/// [`truncate`]: KvCache::truncate
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    pub(crate) kv_dim: usize,
    pub(crate) len: usize,
}

impl KvCache {
    pub(crate) fn new(n_layer: usize, kv_dim: usize) -> Self {
        KvCache {
            k: vec![Vec::new(); n_layer],
            v: vec![Vec::new(); n_layer],
            kv_dim,
            len: 0,
        }
    }

    /// Number of cached positions (the position the next token will take).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first token, when the next forward step is a fresh prompt.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `n` positions, dropping the rest, so a sequence sharing a prefix with
    /// a previous one recomputes only what differs. Capacity is kept for reuse.
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len);
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            layer.truncate(n * self.kv_dim);
        }
        self.len = n;
    }

    /// A copy of the first `n` positions, so several sequences can start from one cached
    /// prefix (a shared system prompt, an earlier turn of the same chat) at the cost of a
    /// memory copy instead of recomputing it.
    pub fn prefix(&self, n: usize) -> KvCache {
        let n = n.min(self.len);
        let copy = |layers: &[Vec<f32>]| -> Vec<Vec<f32>> {
            layers
                .iter()
                .map(|l| l[..n * self.kv_dim].to_vec())
                .collect()
        };
        KvCache {
            k: copy(&self.k),
            v: copy(&self.v),
            kv_dim: self.kv_dim,
            len: n,
        }
    }

    /// Bytes held (capacity), for memory accounting by the scheduler.
    pub fn capacity_bytes(&self) -> usize {
        self.k
            .iter()
            .chain(self.v.iter())
            .map(|l| l.capacity() * 4)
            .sum()
    }

    /// Makes room for `n_new` more positions, growing by whole chunks.
    pub(crate) fn reserve(&mut self, n_new: usize) {
        let need = (self.len + n_new) * self.kv_dim;
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            if layer.capacity() < need {
                let positions = (self.len + n_new).div_ceil(GROW_POSITIONS) * GROW_POSITIONS;
                layer.reserve_exact(positions * self.kv_dim - layer.len());
            }
        }
    }
}
