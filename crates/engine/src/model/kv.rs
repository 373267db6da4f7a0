//! The paged KV cache.
//!
//! A sequence's keys and values live in fixed-size blocks of [`BLOCK_TOKENS`] positions
//! (every layer's K and V rows for those positions in one allocation). A cache is a list
//! of reference-counted blocks, so sequences that start with the same tokens share the
//! blocks of that prefix instead of copying them: a second turn of a chat, or many
//! requests with one system prompt, hold one copy of the common part. Blocks are written
//! only through [`KvCache::write`] after [`KvCache::reserve`], which gives the sequence its
//! own copy of a block it shares and is about to write into (copy on write, at most one
//! block per sequence: the one its shared prefix ends in).

use std::sync::Arc;

/// Positions per block: small enough that a shared prefix ending mid-block copies little,
/// large enough that per-block bookkeeping is negligible next to attention over it.
pub const BLOCK_TOKENS: usize = 16;

/// One layer's key pages and value pages of a cache (see [`KvCache::pages`]).
pub(crate) type Pages<'a> = (Vec<&'a [f32]>, Vec<&'a [f32]>);

/// Freed blocks of one model, kept for the next sequences: a block is large (hundreds of
/// KB), and taking fresh memory for each one costs page faults and zeroing on every new
/// request, most of the first step of a burst. A reused block is not cleared: positions
/// are always written before they are read. Holds at most `max_free_bytes` of free blocks.
pub struct KvPool {
    n_layer: usize,
    kv_dim: usize,
    max_free: usize,
    free: std::sync::Mutex<Vec<Box<[f32]>>>,
    /// Blocks held by caches (running sequences and the prefix cache), for metrics.
    live: std::sync::atomic::AtomicUsize,
}

impl KvPool {
    pub fn new(n_layer: usize, kv_dim: usize, max_free_bytes: usize) -> Arc<KvPool> {
        Arc::new(KvPool {
            n_layer,
            kv_dim,
            max_free: max_free_bytes / KvBlock::bytes(n_layer, kv_dim).max(1),
            free: std::sync::Mutex::new(Vec::new()),
            live: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn take(self: &Arc<Self>) -> KvBlock {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let len = self.n_layer * 2 * BLOCK_TOKENS * self.kv_dim;
        self.live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        KvBlock {
            data: reused.unwrap_or_else(|| vec![0.0; len].into_boxed_slice()),
            pool: self.clone(),
        }
    }

    fn put(&self, data: Box<[f32]>) {
        self.live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.max_free && !data.is_empty() {
            free.push(data);
        }
    }
}

impl KvPool {
    /// Blocks held by caches, and freed blocks kept for reuse.
    pub fn blocks(&self) -> (usize, usize) {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner()).len();
        (self.live.load(std::sync::atomic::Ordering::Relaxed), free)
    }
}

impl std::fmt::Debug for KvPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvPool")
            .field("n_layer", &self.n_layer)
            .field("kv_dim", &self.kv_dim)
            .finish_non_exhaustive()
    }
}

/// Keys and values of [`BLOCK_TOKENS`] positions for every layer, laid out
/// `[layer][k, v][position][kv_dim]` so that one layer's keys for the block are one slice.
/// Its memory goes back to its pool when the last holder drops it.
#[derive(Debug)]
pub struct KvBlock {
    data: Box<[f32]>,
    pool: Arc<KvPool>,
}

impl Clone for KvBlock {
    fn clone(&self) -> Self {
        let mut b = self.pool.take();
        b.data.copy_from_slice(&self.data);
        b
    }
}

impl Drop for KvBlock {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.data));
    }
}

impl KvBlock {
    /// Bytes of one block of a model, for memory budgets.
    pub fn bytes(n_layer: usize, kv_dim: usize) -> usize {
        n_layer * 2 * BLOCK_TOKENS * kv_dim * std::mem::size_of::<f32>()
    }

    /// Bytes of this block.
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.data)
    }
}

/// One sequence's cache: blocks (some possibly shared with other sequences or the prefix
/// cache) and how many positions are valid.
///
/// Owned by the engine's scheduler rather than the model so that one loaded model serves
/// many sequences at once, and so finished sequences' blocks can be kept and reused.
#[derive(Debug, Clone)]
pub struct KvCache {
    blocks: Vec<Arc<KvBlock>>,
    pool: Arc<KvPool>,
    pub(crate) len: usize,
}

impl KvCache {
    /// An empty cache taking its blocks from `pool`.
    pub(crate) fn with_pool(pool: Arc<KvPool>) -> Self {
        KvCache {
            blocks: Vec::new(),
            pool,
            len: 0,
        }
    }

    /// An empty cache with a pool of its own (tests).
    #[cfg(test)]
    pub(crate) fn new(n_layer: usize, kv_dim: usize) -> Self {
        KvCache::with_pool(KvPool::new(n_layer, kv_dim, 0))
    }

    /// A cache over existing blocks holding `len` valid positions (the prefix cache's hits).
    pub(crate) fn from_blocks(like: &KvCache, blocks: Vec<Arc<KvBlock>>, len: usize) -> Self {
        assert!(len <= blocks.len() * BLOCK_TOKENS);
        KvCache {
            blocks,
            pool: like.pool.clone(),
            len,
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

    /// Whether this cache was made for a model of these shapes.
    pub(crate) fn fits(&self, n_layer: usize, kv_dim: usize) -> bool {
        self.pool.n_layer == n_layer && self.pool.kv_dim == kv_dim
    }

    /// Keeps the first `n` positions, so a sequence sharing a prefix with a previous one
    /// recomputes only what differs. Blocks past the new end are released.
    pub fn truncate(&mut self, n: usize) {
        self.len = n.min(self.len);
        self.blocks.truncate(self.len.div_ceil(BLOCK_TOKENS));
    }

    /// A cache holding the first `n` positions that shares this one's blocks (no copy).
    pub fn prefix(&self, n: usize) -> KvCache {
        let mut c = self.clone();
        c.truncate(n);
        c
    }

    /// The blocks, shared, with the positions they hold: for the prefix cache.
    pub(crate) fn blocks(&self) -> &[Arc<KvBlock>] {
        &self.blocks
    }

    /// Bytes of the blocks this cache alone holds (shared ones are counted by whoever
    /// else holds them too), for memory accounting.
    pub fn unshared_bytes(&self) -> usize {
        let own = self
            .blocks
            .iter()
            .filter(|b| Arc::strong_count(b) == 1)
            .count();
        own * KvBlock::bytes(self.pool.n_layer, self.pool.kv_dim)
    }

    /// Makes room for `n_new` more positions: allocates blocks, and takes a private copy
    /// of a shared block that the new positions will write into.
    pub(crate) fn reserve(&mut self, n_new: usize) {
        let end = self.len + n_new;
        while self.blocks.len() * BLOCK_TOKENS < end {
            self.blocks.push(Arc::new(self.pool.take()));
        }
        if n_new > 0 {
            for b in &mut self.blocks[self.len / BLOCK_TOKENS..end.div_ceil(BLOCK_TOKENS)] {
                Arc::make_mut(b);
            }
        }
    }

    /// Offset of layer `layer`'s keys (`v` false) or values in a block.
    fn base(&self, layer: usize, v: bool) -> usize {
        (layer * 2 + v as usize) * BLOCK_TOKENS * self.pool.kv_dim
    }

    /// Stores the key and value rows of position `pos` for `layer`. The position must
    /// have been reserved.
    pub(crate) fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (kb, vb) = (self.base(layer, false), self.base(layer, true));
        let d = self.pool.kv_dim;
        let row = (pos % BLOCK_TOKENS) * d;
        let block = Arc::get_mut(&mut self.blocks[pos / BLOCK_TOKENS])
            .expect("a written block is reserved, hence not shared");
        block.data[kb + row..kb + row + d].copy_from_slice(k);
        block.data[vb + row..vb + row + d].copy_from_slice(v);
    }

    /// Layer `layer`'s key pages and value pages: one slice of `BLOCK_TOKENS` rows of
    /// `kv_dim` floats per block, in position order.
    pub(crate) fn pages(&self, layer: usize) -> Pages<'_> {
        let n = BLOCK_TOKENS * self.pool.kv_dim;
        let (kb, vb) = (self.base(layer, false), self.base(layer, true));
        self.blocks
            .iter()
            .map(|b| (&b.data[kb..kb + n], &b.data[vb..vb + n]))
            .unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(len: usize) -> KvCache {
        let mut c = KvCache::new(2, 3);
        c.reserve(len);
        for pos in 0..len {
            for layer in 0..2 {
                let k = [pos as f32, layer as f32, 1.0];
                let v = [-(pos as f32), layer as f32, 2.0];
                c.write(layer, pos, &k, &v);
            }
        }
        c.len = len;
        c
    }

    fn row(c: &KvCache, layer: usize, pos: usize) -> (Vec<f32>, Vec<f32>) {
        let (k, v) = c.pages(layer);
        let r = (pos % BLOCK_TOKENS) * 3;
        let p = pos / BLOCK_TOKENS;
        (k[p][r..r + 3].to_vec(), v[p][r..r + 3].to_vec())
    }

    #[test]
    fn rows_land_in_their_block_and_layer() {
        let c = filled(40);
        assert_eq!(c.blocks().len(), 3);
        for pos in [0, 15, 16, 39] {
            for layer in 0..2 {
                let (k, v) = row(&c, layer, pos);
                assert_eq!(k, vec![pos as f32, layer as f32, 1.0]);
                assert_eq!(v, vec![-(pos as f32), layer as f32, 2.0]);
            }
        }
    }

    #[test]
    fn prefixes_share_blocks_and_copy_on_write() {
        let a = filled(40);
        let mut b = a.prefix(20); // ends inside the second block
        assert_eq!(b.len(), 20);
        assert!(Arc::ptr_eq(&a.blocks()[0], &b.blocks()[0]));
        assert!(Arc::ptr_eq(&a.blocks()[1], &b.blocks()[1]));
        b.reserve(1);
        // The first block stays shared; the one being written is b's own copy now.
        assert!(Arc::ptr_eq(&a.blocks()[0], &b.blocks()[0]));
        assert!(!Arc::ptr_eq(&a.blocks()[1], &b.blocks()[1]));
        b.write(0, 20, &[7.0; 3], &[8.0; 3]);
        b.len = 21;
        assert_eq!(row(&b, 0, 20).0, vec![7.0; 3]);
        assert_eq!(row(&a, 0, 20).0, vec![20.0, 0.0, 1.0], "a is untouched");
        assert_eq!(
            row(&b, 1, 19).0,
            vec![19.0, 1.0, 1.0],
            "the copy kept the prefix"
        );
        assert_eq!(a.unshared_bytes(), 2 * KvBlock::bytes(2, 3));
    }

    #[test]
    fn freed_blocks_are_reused() {
        let pool = KvPool::new(2, 3, 1 << 20);
        let mut a = KvCache::with_pool(pool.clone());
        a.reserve(40);
        assert_eq!(pool.blocks(), (3, 0));
        let freed: Vec<*const f32> = a.blocks().iter().map(|b| b.data.as_ptr()).collect();
        drop(a);
        assert_eq!(pool.blocks(), (0, 3));
        let mut b = KvCache::with_pool(pool.clone());
        b.reserve(1);
        assert!(
            freed.contains(&b.blocks()[0].data.as_ptr()),
            "a freed block was taken"
        );
        assert_eq!(pool.blocks(), (1, 2));
        // The cap holds: a pool without room lets its blocks go.
        let tight = KvPool::new(2, 3, 0);
        let mut c = KvCache::with_pool(tight.clone());
        c.reserve(16);
        drop(c);
        assert!(tight.free.lock().unwrap().is_empty());
    }

    #[test]
    fn truncate_releases_blocks() {
        let mut c = filled(40);
        c.truncate(16);
        assert_eq!((c.len(), c.blocks().len()), (16, 1));
        c.truncate(100);
        assert_eq!(c.len(), 16);
        c.truncate(0);
        assert!(c.is_empty() && c.blocks().is_empty());
    }
}
