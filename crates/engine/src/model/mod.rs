//! The transformer forward pass (llama and qwen2 architectures) over caller-owned KV caches.
//!
//! [`Model::load`] copies every weight out of the GGUF mapping into owned buffers, so a
//! `Model` is `'static + Send + Sync`, independent of the file, and free to be repacked
//! later. [`Model::forward`] runs one step for a batch of sequences; each sequence brings
//! its own [`KvCache`], so one model serves many conversations.
//!
//! Layout: this file loads the weights; `forward.rs` is the step, `kv.rs` the paged cache
//! and its pool, `attention/` the attention of one head over those pages (with the softmax
//! exponential the sampler borrows). The matmuls are `quant`'s.

mod attention;
mod forward;
mod kv;

pub use forward::{Scratch, SeqInput};
pub use kv::{BLOCK_TOKENS, KvBlock, KvCache, KvPool};

pub(crate) use attention::exp_nonpositive;

use crate::error::EngineError;
use crate::gguf::{GgufFile, TensorInfo};
use crate::quant;
use std::sync::Arc;

/// How rotary embeddings pair up dimensions. llama.cpp uses `Norm` (adjacent pairs) for
/// llama, whose GGUF converter permutes Q/K rows to suit it, and `Neox` (first half with
/// second half) for qwen2, whose weights are stored as Hugging Face has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Norm,
    Neox,
}

/// Hyperparameters read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab_size: usize,
    /// Longest sequence the model was trained for; longer requests are refused.
    pub context_length: usize,
    pub rope_theta: f32,
    /// Dimensions of each head that get rotated (the rest pass through).
    pub n_rot: usize,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
}

/// A weight matrix: `rows` rows of `cols` weights, repacked for the kernels.
pub(crate) type Matrix = quant::Weights;

pub(crate) struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub wo: Matrix,
    pub ffn_norm: Vec<f32>,
    pub gate: Matrix,
    pub up: Matrix,
    pub down: Matrix,
}

/// A loaded model: configuration plus owned weights. Immutable during inference, so it can
/// be shared across threads behind an `Arc`.
pub struct Model {
    pub config: ModelConfig,
    /// The token embedding table, or `None` when it is tied to the output head (whose
    /// rows then serve the lookups).
    pub(crate) tok_embd: Option<quant::Rows>,
    pub(crate) output_norm: Vec<f32>,
    pub(crate) output: Matrix,
    pub(crate) layers: Vec<Layer>,
    /// Where every sequence's KV blocks come from and return to.
    kv_pool: Arc<KvPool>,
}

/// Free KV blocks a model keeps for reuse (see [`KvPool`]): enough for a burst of
/// concurrent requests, small next to the weights of the models it serves.
const KV_POOL_FREE_BYTES: usize = 64 << 20;

struct Loader<'a> {
    g: &'a GgufFile,
    arch: &'a str,
}

impl Loader<'_> {
    fn meta(&self, key: &str) -> Result<usize, EngineError> {
        let full = format!("{}.{key}", self.arch);
        self.g.get_u64(&full).map(|v| v as usize).ok_or_else(|| {
            EngineError::BadModel(format!("{}: metadata key {full} is missing", self.path()))
        })
    }

    fn meta_f(&self, key: &str) -> Option<f32> {
        self.g
            .get_f64(&format!("{}.{key}", self.arch))
            .map(|v| v as f32)
    }

    fn path(&self) -> String {
        self.g.path.display().to_string()
    }

    fn info(&self, name: &str) -> Result<&TensorInfo, EngineError> {
        self.g.tensor(name).ok_or_else(|| {
            EngineError::BadModel(format!("{}: tensor {name} is missing", self.path()))
        })
    }

    fn check_type(&self, t: &TensorInfo) -> Result<(), EngineError> {
        if quant::is_supported(t.ty) {
            return Ok(());
        }
        Err(EngineError::BadModel(format!(
            "{}: tensor {} has type {}, which tokenfab does not support yet (supported: {}); \
             pick a GGUF quantized as one of those, e.g. Q4_K_M, Q5_K_M, IQ4_XS or Q8_0",
            self.path(),
            t.name,
            t.ty,
            quant::SUPPORTED_TYPES
        )))
    }

    /// The raw rows of a matrix of `rows` × `cols` (ggml dims `[cols, rows]`), its shape
    /// and type checked.
    fn shaped(
        &self,
        name: &str,
        cols: usize,
        rows: usize,
    ) -> Result<(&TensorInfo, &[u8]), EngineError> {
        let t = self.info(name)?;
        self.check_type(t)?;
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let ok = match dims.as_slice() {
            [c, r] => *c == cols && *r == rows,
            [c, r, rest @ ..] => *c == cols && *r == rows && rest.iter().all(|&d| d == 1),
            _ => false,
        };
        if !ok {
            return Err(EngineError::BadModel(format!(
                "{}: tensor {name} has shape {dims:?}, expected [{cols}, {rows}]",
                self.path()
            )));
        }
        Ok((t, self.g.tensor_data(t)?))
    }

    fn context(&self, name: &str) -> impl Fn(EngineError) -> EngineError {
        let at = format!("{}: tensor {name}", self.path());
        move |e| EngineError::BadModel(format!("{at}: {e}"))
    }

    /// A matrix for matmuls, repacked for the kernels.
    fn matrix(&self, name: &str, cols: usize, rows: usize) -> Result<Matrix, EngineError> {
        let (t, data) = self.shaped(name, cols, rows)?;
        quant::Weights::from_ggml(t.ty, rows, cols, data).map_err(self.context(name))
    }

    /// A matrix only read row by row, kept as it is.
    fn rows(&self, name: &str, cols: usize, rows: usize) -> Result<quant::Rows, EngineError> {
        let (t, data) = self.shaped(name, cols, rows)?;
        quant::Rows::from_ggml(t.ty, rows, cols, data).map_err(self.context(name))
    }

    /// A vector of `n` floats (norm weights, biases), converted to f32.
    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, EngineError> {
        let t = self.info(name)?;
        self.check_type(t)?;
        if t.n_elements() as usize != n {
            return Err(EngineError::BadModel(format!(
                "{}: tensor {name} has {} elements, expected {n}",
                self.path(),
                t.n_elements()
            )));
        }
        let mut out = vec![0.0f32; n];
        quant::dequantize_row(t.ty, self.g.tensor_data(t)?, &mut out);
        Ok(out)
    }

    fn optional_vector(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>, EngineError> {
        match self.g.tensor(name) {
            Some(_) => self.vector(name, n).map(Some),
            None => Ok(None),
        }
    }
}

/// The architectures [`Model::load`] runs (`general.architecture`).
const ARCHITECTURES: [&str; 2] = ["llama", "qwen2"];

/// Whether this build runs models of `arch`, for listings made before a file is fetched.
pub fn supports_architecture(arch: &str) -> bool {
    ARCHITECTURES.contains(&arch)
}

/// Whether this build can run the model in `g`, from its header alone: the architecture and
/// every tensor's type. [`Model::load`] runs it before allocating anything, and
/// `tokenfab models inspect` prints its answer, which names the first offender.
pub fn check(g: &GgufFile) -> Result<(), EngineError> {
    let arch = g.architecture().unwrap_or("<none>");
    if !supports_architecture(arch) {
        return Err(EngineError::BadModel(format!(
            "{}: architecture `{arch}` is not supported; tokenfab runs {}",
            g.path.display(),
            ARCHITECTURES.join(", ")
        )));
    }
    let l = Loader { g, arch };
    // A vocabulary-only GGUF (tokenizer test files) names an architecture but has no weights.
    l.info("token_embd.weight")?;
    g.tensors.iter().try_for_each(|t| l.check_type(t))
}

impl Model {
    /// Reads the configuration and copies the weights out of `g`. Refuses architectures and
    /// tensor types tokenfab cannot run, with a message naming them, rather than failing
    /// (or producing garbage) at the first request.
    pub fn load(g: &GgufFile) -> Result<Model, EngineError> {
        check(g)?;
        let arch = g.architecture().unwrap_or("<none>");
        let rope_style = match arch {
            "qwen2" => RopeStyle::Neox,
            _ => RopeStyle::Norm,
        };
        let l = Loader { g, arch };
        let n_layer = l.meta("block_count")?;
        let n_embd = l.meta("embedding_length")?;
        let n_ff = l.meta("feed_forward_length")?;
        let n_head = l.meta("attention.head_count")?;
        let n_head_kv = l.meta("attention.head_count_kv").unwrap_or(n_head);
        if n_head == 0 || n_head_kv == 0 || n_embd % n_head != 0 || n_head % n_head_kv != 0 {
            return Err(EngineError::BadModel(format!(
                "{}: inconsistent head counts (embedding {n_embd}, heads {n_head}, kv heads {n_head_kv})",
                l.path()
            )));
        }
        let head_dim = n_embd / n_head;
        let n_rot = l
            .meta("rope.dimension_count")
            .unwrap_or(head_dim)
            .min(head_dim);
        let context_length = l.meta("context_length")?;
        let rope_theta = l.meta_f("rope.freq_base").unwrap_or(10000.0);
        let rms_eps = l.meta_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5);
        let embd_info = l.info("token_embd.weight")?;
        let vocab_size = embd_info.dims.get(1).copied().unwrap_or(0) as usize;
        let (tok_embd, output) = match g.tensor("output.weight") {
            Some(_) => (
                Some(l.rows("token_embd.weight", n_embd, vocab_size)?),
                l.matrix("output.weight", n_embd, vocab_size)?,
            ),
            None => (None, l.matrix("token_embd.weight", n_embd, vocab_size)?),
        };
        let output_norm = l.vector("output_norm.weight", n_embd)?;
        let q_dim = n_head * head_dim;
        let kv_dim = n_head_kv * head_dim;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: l.vector(&n("attn_norm.weight"), n_embd)?,
                wq: l.matrix(&n("attn_q.weight"), n_embd, q_dim)?,
                wk: l.matrix(&n("attn_k.weight"), n_embd, kv_dim)?,
                wv: l.matrix(&n("attn_v.weight"), n_embd, kv_dim)?,
                bq: l.optional_vector(&n("attn_q.bias"), q_dim)?,
                bk: l.optional_vector(&n("attn_k.bias"), kv_dim)?,
                bv: l.optional_vector(&n("attn_v.bias"), kv_dim)?,
                wo: l.matrix(&n("attn_output.weight"), q_dim, n_embd)?,
                ffn_norm: l.vector(&n("ffn_norm.weight"), n_embd)?,
                gate: l.matrix(&n("ffn_gate.weight"), n_embd, n_ff)?,
                up: l.matrix(&n("ffn_up.weight"), n_embd, n_ff)?,
                down: l.matrix(&n("ffn_down.weight"), n_ff, n_embd)?,
            });
        }
        let config = ModelConfig {
            arch: arch.to_string(),
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            vocab_size,
            context_length,
            rope_theta,
            n_rot,
            rope_style,
            rms_eps,
        };
        Ok(Model {
            config,
            tok_embd,
            output_norm,
            output,
            layers,
            kv_pool: KvPool::new(n_layer, kv_dim, KV_POOL_FREE_BYTES),
        })
    }

    /// A fresh, empty cache for one sequence.
    pub fn new_kv_cache(&self) -> KvCache {
        KvCache::with_pool(self.kv_pool.clone())
    }

    /// Reusable working memory for [`Model::forward`]; keep one per engine thread so decode
    /// steps do not allocate.
    pub fn new_scratch(&self) -> Scratch {
        Scratch::default()
    }

    /// Bytes of weights held, for logs and memory accounting.
    pub fn weight_bytes(&self) -> usize {
        let m = |m: &Matrix| m.bytes();
        self.tok_embd.as_ref().map_or(0, |e| e.bytes())
            + m(&self.output)
            + self
                .layers
                .iter()
                .map(|l| {
                    m(&l.wq) + m(&l.wk) + m(&l.wv) + m(&l.wo) + m(&l.gate) + m(&l.up) + m(&l.down)
                })
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::test_writer::{Kv, gguf_bytes, write_temp};

    fn load(arch: &str, ty: u32, bytes_per_block: usize, name: &str) -> String {
        let data = vec![0u8; bytes_per_block];
        let block = if ty == 0 { 1 } else { 256 };
        let file = gguf_bytes(
            &[
                ("general.architecture", Kv::Str(arch)),
                ("llama.block_count", Kv::U32(1)),
            ],
            &[
                ("token_embd.weight", &[1], 0, vec![0u8; 4]),
                ("blk.0.attn_q.weight", &[block], ty, data),
            ],
        );
        let p = write_temp(&file, name);
        let g = GgufFile::open(&p).unwrap();
        let err = Model::load(&g).err().expect("load must fail").to_string();
        std::fs::remove_file(p).ok();
        err
    }

    #[test]
    fn unsupported_architecture_is_refused_by_name() {
        let e = load("gemma3", 0, 4, "arch");
        assert!(e.contains("architecture `gemma3` is not supported"), "{e}");
    }

    #[test]
    fn unsupported_tensor_type_is_refused_by_name() {
        // IQ2_XXS (type 16): 66 bytes per 256-element block.
        let e = load("llama", 16, 66, "iq2xxs");
        assert!(
            e.contains("blk.0.attn_q.weight") && e.contains("IQ2_XXS"),
            "{e}"
        );
    }
}
