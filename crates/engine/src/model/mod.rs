//! The transformer forward pass (the dense architectures of [`ARCHITECTURES`]) over
//! caller-owned KV caches.
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
/// second half) for the others, whose weights are stored as Hugging Face has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Norm,
    Neox,
}

/// The activation of the gated feed-forward network: `act(gate) · up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnAct {
    Silu,
    /// GELU (tanh form) as ggml's CPU backend computes it: the input rounded to f16 and
    /// looked up in a table of f16 results, which is what the reference logits carry.
    GeluF16,
}

/// What tells one supported architecture's layer from another's, as llama.cpp's graph for
/// it builds it. The one list of what this build runs.
#[derive(Debug)]
struct Arch {
    name: &'static str,
    rope_style: RopeStyle,
    /// RMS norms of each query and key head (weights of `head_dim`) before rotation.
    qk_norm: bool,
    /// RMS norms of the attention output and of the FFN output before their residual adds.
    post_norms: bool,
    ffn: FfnAct,
    /// Token embeddings multiplied by `sqrt(n_embd)`.
    embd_scale: bool,
    /// Sliding-window attention: the period of the layer pattern (every `n`-th layer is
    /// global) when the file declares a window but no `sliding_window_pattern`, llama.cpp's
    /// default for the architecture. `None`: llama.cpp's graph for it has no sliding window
    /// and ignores an `attention.sliding_window` key (as it does for `llama`, Mistral's
    /// files included), so tokenfab does too.
    swa_pattern: Option<usize>,
}

const LLAMA_LIKE: Arch = Arch {
    name: "llama",
    rope_style: RopeStyle::Norm,
    qk_norm: false,
    post_norms: false,
    ffn: FfnAct::Silu,
    embd_scale: false,
    swa_pattern: None,
};

/// The architectures [`Model::load`] runs (`general.architecture`).
const ARCHITECTURES: [Arch; 5] = [
    LLAMA_LIKE,
    Arch {
        name: "qwen2",
        rope_style: RopeStyle::Neox,
        ..LLAMA_LIKE
    },
    // Phi-3: fused Q/K/V and gate/up matrices (split at load, see `Loader::fused`);
    // llama.cpp turns its declared sliding window off (its converter's values are wrong).
    Arch {
        name: "phi3",
        rope_style: RopeStyle::Neox,
        ..LLAMA_LIKE
    },
    Arch {
        name: "qwen3",
        rope_style: RopeStyle::Neox,
        qk_norm: true,
        ..LLAMA_LIKE
    },
    Arch {
        name: "gemma3",
        rope_style: RopeStyle::Neox,
        qk_norm: true,
        post_norms: true,
        ffn: FfnAct::GeluF16,
        embd_scale: true,
        swa_pattern: Some(6),
    },
];

fn arch(name: &str) -> Option<&'static Arch> {
    ARCHITECTURES.iter().find(|a| a.name == name)
}

/// One set of rotary frequencies: `angle_i(pos) = pos · inv_freq[i]`, `inv_freq[i] =
/// scale · theta^(-2i / n_rot) / factor_i` (ggml's rope without YaRN: linear scaling by
/// `scale`, Llama 3's per-dimension `rope_freqs.weight` factors).
#[derive(Debug, Clone)]
pub struct Rope {
    pub theta: f32,
    inv_freq: Vec<f64>,
}

impl Rope {
    fn new(theta: f32, scale: f32, factors: Option<&[f32]>, n_rot: usize) -> Rope {
        let inv_freq = (0..n_rot / 2)
            .map(|i| {
                let f = (theta as f64).powf(-2.0 * i as f64 / n_rot as f64);
                let f = if scale == 1.0 { f } else { f * scale as f64 };
                factors.map_or(f, |ff| f / ff[i] as f64)
            })
            .collect();
        Rope { theta, inv_freq }
    }
}

/// How one layer attends: the rotary set it uses and its sliding window, if any (a
/// position sees the `window` positions ending at itself, llama.cpp's standard SWA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerAttn {
    pub rope: usize,
    pub window: Option<usize>,
}

/// Hyperparameters read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Length of each key and value head (`attention.key_length`, else `n_embd / n_head`).
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab_size: usize,
    /// Longest sequence the model was trained for; longer requests are refused.
    pub context_length: usize,
    /// Dimensions of each head that get rotated (the rest pass through).
    pub n_rot: usize,
    pub rope_style: RopeStyle,
    /// The rotary sets the layers use: the global one first, then the sliding layers' own.
    pub ropes: Vec<Rope>,
    pub rms_eps: f32,
    pub ffn_act: FfnAct,
    /// Factor on the token embeddings (gemma's `sqrt(n_embd)`).
    pub embd_scale: Option<f32>,
    /// Factor on the query-key dot products.
    pub attn_scale: f32,
    /// `logits = cap · tanh(logits / cap)` where the metadata asks for it.
    pub final_softcap: Option<f32>,
    pub layers: Vec<LayerAttn>,
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
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub wo: Matrix,
    pub attn_post_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub ffn_post_norm: Option<Vec<f32>>,
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

/// Far above any real model's widths (the largest are tens of thousands), low enough that
/// products of two never overflow.
const MAX_HPARAM: usize = 1 << 24;

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

    fn meta_opt(&self, key: &str) -> Option<usize> {
        self.g
            .get_u64(&format!("{}.{key}", self.arch))
            .map(|v| v as usize)
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

    /// The matrices `name_a` and `name_b` of `cols` columns and `rows.0`, `rows.1`, …
    /// rows, or, when the file fuses them into one tensor `fused` (Phi-3's `attn_qkv`,
    /// `ffn_up` holding gate then up), that tensor's rows split in this order.
    fn fused(
        &self,
        fused: &str,
        names: &[&str],
        cols: usize,
        rows: &[usize],
    ) -> Result<Vec<Matrix>, EngineError> {
        let separate = names.iter().all(|n| self.g.tensor(n).is_some());
        if separate || self.g.tensor(fused).is_none() {
            return names
                .iter()
                .zip(rows)
                .map(|(n, &r)| self.matrix(n, cols, r))
                .collect();
        }
        let total = rows.iter().sum();
        let (t, data) = self.shaped(fused, cols, total)?;
        let row_bytes = data.len() / total;
        let mut at = 0;
        rows.iter()
            .map(|&r| {
                let part = &data[at * row_bytes..(at + r) * row_bytes];
                at += r;
                quant::Weights::from_ggml(t.ty, r, cols, part).map_err(self.context(fused))
            })
            .collect()
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

/// Whether this build runs models of `arch`, for listings made before a file is fetched.
pub fn supports_architecture(name: &str) -> bool {
    arch(name).is_some()
}

/// Rope scaling types with more than linear position scaling (YaRN's interpolation ramp,
/// LongRoPE's factor sets) that this build does not compute; refused rather than run
/// with the wrong angles.
const UNSUPPORTED_ROPE_SCALING: [&str; 2] = ["yarn", "longrope"];

/// Whether this build can run the model in `g`, from its header alone: the architecture and
/// every tensor's type. [`Model::load`] runs it before allocating anything, and
/// `tokenfab models inspect` prints its answer, which names the first offender.
pub fn check(g: &GgufFile) -> Result<(), EngineError> {
    let arch = g.architecture().unwrap_or("<none>");
    if !supports_architecture(arch) {
        return Err(EngineError::BadModel(format!(
            "{}: architecture `{arch}` is not supported; tokenfab runs {}",
            g.path.display(),
            ARCHITECTURES.map(|a| a.name).join(", ")
        )));
    }
    let scaling_key = format!("{arch}.rope.scaling.type");
    if let Some(t) = g.get_str(&scaling_key)
        && UNSUPPORTED_ROPE_SCALING.contains(&t)
    {
        return Err(EngineError::BadModel(format!(
            "{}: rope scaling `{t}` ({scaling_key}) is not supported; tokenfab runs none and linear",
            g.path.display()
        )));
    }
    // Phi-3's 128k variants carry LongRoPE's two factor sets (with an attention factor);
    // without them computed the angles would be wrong past the original context.
    if let Some(t) = g
        .tensors
        .iter()
        .find(|t| t.name.starts_with("rope_factors_"))
    {
        return Err(EngineError::BadModel(format!(
            "{}: tensor {} holds LongRoPE factors, which tokenfab does not run yet",
            g.path.display(),
            t.name
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
        let name = g.architecture().unwrap_or("<none>");
        let spec = arch(name).expect("check accepted the architecture");
        let l = Loader { g, arch: name };
        let n_layer = l.meta("block_count")?;
        let n_embd = l.meta("embedding_length")?;
        let n_ff = l.meta("feed_forward_length")?;
        let n_head = l.meta("attention.head_count")?;
        let n_head_kv = l.meta("attention.head_count_kv").unwrap_or(n_head);
        let head_dim = match l.meta_opt("attention.key_length") {
            Some(k) => k,
            None if n_head > 0 && n_embd % n_head == 0 => n_embd / n_head,
            None => 0,
        };
        let v_dim = l.meta_opt("attention.value_length").unwrap_or(head_dim);
        // A hostile header's sizes must fail here, not become allocations (rotary tables,
        // per-layer lists) or overflowing products before the tensors contradict them.
        if n_layer > g.tensors.len() {
            return Err(EngineError::BadModel(format!(
                "{}: {n_layer} layers declared but the file holds only {} tensors",
                l.path(),
                g.tensors.len()
            )));
        }
        for (key, v) in [
            ("embedding_length", n_embd),
            ("feed_forward_length", n_ff),
            ("attention.head_count", n_head),
            ("attention.key_length", head_dim),
        ] {
            if !(1..=MAX_HPARAM).contains(&v) {
                return Err(EngineError::BadModel(format!(
                    "{}: {name}.{key} is {v}; it must be between 1 and {MAX_HPARAM}",
                    l.path()
                )));
            }
        }
        if n_head == 0 || n_head_kv == 0 || head_dim == 0 || n_head % n_head_kv != 0 {
            return Err(EngineError::BadModel(format!(
                "{}: inconsistent head counts (embedding {n_embd}, heads {n_head}, kv heads {n_head_kv}, head length {head_dim})",
                l.path()
            )));
        }
        if v_dim != head_dim {
            return Err(EngineError::BadModel(format!(
                "{}: value heads of {v_dim} differ from key heads of {head_dim}, which tokenfab does not run",
                l.path()
            )));
        }
        let n_rot = l
            .meta("rope.dimension_count")
            .unwrap_or(head_dim)
            .min(head_dim);
        let context_length = l.meta("context_length")?;
        let rope_theta = l.meta_f("rope.freq_base").unwrap_or(10000.0);
        // llama.cpp: `rope.scaling.factor` (or the old `rope.scale_linear`) divides
        // positions on the global layers; sliding layers keep their own unscaled set.
        let rope_scale = l
            .meta_f("rope.scaling.factor")
            .or_else(|| l.meta_f("rope.scale_linear"))
            .filter(|&f| f != 0.0)
            .map_or(1.0, |f| 1.0 / f);
        let rope_factors = l.optional_vector("rope_freqs.weight", n_rot / 2)?;
        let mut ropes = vec![Rope::new(
            rope_theta,
            rope_scale,
            rope_factors.as_deref(),
            n_rot,
        )];
        let window = l.meta_opt("attention.sliding_window").filter(|&w| w > 0);
        let layers_attn = match (window, spec.swa_pattern) {
            (Some(w), Some(pattern)) => {
                let pattern = l
                    .meta_opt("attention.sliding_window_pattern")
                    .unwrap_or(pattern);
                let theta_swa = l.meta_f("rope.freq_base_swa").unwrap_or(10000.0);
                ropes.push(Rope::new(theta_swa, 1.0, rope_factors.as_deref(), n_rot));
                // llama.cpp: a layer slides unless it ends a group of `pattern`.
                (0..n_layer)
                    .map(|i| match pattern == 0 || i % pattern < pattern - 1 {
                        true => LayerAttn {
                            rope: 1,
                            window: Some(w),
                        },
                        false => LayerAttn {
                            rope: 0,
                            window: None,
                        },
                    })
                    .collect()
            }
            _ => vec![
                LayerAttn {
                    rope: 0,
                    window: None,
                };
                n_layer
            ],
        };
        let rms_eps = l.meta_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5);
        let final_softcap = l.meta_f("final_logit_softcapping").filter(|&c| c != 0.0);
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
            let norm = |on: bool, s: &str, len: usize| match on {
                true => l.vector(&n(s), len).map(Some),
                false => Ok(None),
            };
            let [wq, wk, wv]: [Matrix; 3] = l
                .fused(
                    &n("attn_qkv.weight"),
                    &[
                        &n("attn_q.weight"),
                        &n("attn_k.weight"),
                        &n("attn_v.weight"),
                    ],
                    n_embd,
                    &[q_dim, kv_dim, kv_dim],
                )?
                .try_into()
                .unwrap_or_else(|_| unreachable!("three parts"));
            let [gate, up]: [Matrix; 2] = l
                .fused(
                    &n("ffn_up.weight"),
                    &[&n("ffn_gate.weight"), &n("ffn_up.weight")],
                    n_embd,
                    &[n_ff, n_ff],
                )?
                .try_into()
                .unwrap_or_else(|_| unreachable!("two parts"));
            layers.push(Layer {
                attn_norm: l.vector(&n("attn_norm.weight"), n_embd)?,
                wq,
                wk,
                wv,
                bq: l.optional_vector(&n("attn_q.bias"), q_dim)?,
                bk: l.optional_vector(&n("attn_k.bias"), kv_dim)?,
                bv: l.optional_vector(&n("attn_v.bias"), kv_dim)?,
                q_norm: norm(spec.qk_norm, "attn_q_norm.weight", head_dim)?,
                k_norm: norm(spec.qk_norm, "attn_k_norm.weight", head_dim)?,
                wo: l.matrix(&n("attn_output.weight"), q_dim, n_embd)?,
                attn_post_norm: norm(spec.post_norms, "post_attention_norm.weight", n_embd)?,
                ffn_norm: l.vector(&n("ffn_norm.weight"), n_embd)?,
                ffn_post_norm: norm(spec.post_norms, "post_ffw_norm.weight", n_embd)?,
                gate,
                up,
                down: l.matrix(&n("ffn_down.weight"), n_ff, n_embd)?,
            });
        }
        let config = ModelConfig {
            arch: name.to_string(),
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            vocab_size,
            context_length,
            n_rot,
            rope_style: spec.rope_style,
            ropes,
            rms_eps,
            ffn_act: spec.ffn,
            embd_scale: spec.embd_scale.then(|| (n_embd as f32).sqrt()),
            // llama.cpp scales gemma3's queries by 1/sqrt(key length) too, except for its
            // 27B (62 layers, after gemma_pytorch's config), scaled by n_embd / n_head.
            attn_scale: match (name, n_layer) {
                ("gemma3", 62) => 1.0 / ((n_embd / n_head) as f32).sqrt(),
                _ => 1.0 / (head_dim as f32).sqrt(),
            },
            final_softcap,
            layers: layers_attn,
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

    /// KV blocks held by caches, and freed ones kept for reuse (for metrics).
    pub fn kv_blocks(&self) -> (usize, usize) {
        self.kv_pool.blocks()
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

    /// Bytes a decode step reads: every matrix but a separate embedding table, of which
    /// it reads one row. Single-stream decode is bound by reading these once per token.
    pub fn streamed_bytes(&self) -> usize {
        self.weight_bytes() - self.tok_embd.as_ref().map_or(0, |e| e.bytes())
    }

    /// Bytes of the output matrix (the LM head).
    pub fn head_bytes(&self) -> usize {
        self.output.bytes()
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
        load_with(arch, ty, bytes_per_block, name, &[])
    }

    fn load_with(
        arch: &str,
        ty: u32,
        bytes_per_block: usize,
        name: &str,
        extra: &[(&str, Kv<'_>)],
    ) -> String {
        let data = vec![0u8; bytes_per_block];
        let block = if ty == 0 { 1 } else { 256 };
        let mut kvs = vec![
            ("general.architecture", Kv::Str(arch)),
            ("llama.block_count", Kv::U32(1)),
        ];
        kvs.extend_from_slice(extra);
        let file = gguf_bytes(
            &kvs,
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
        let e = load("mamba", 0, 4, "arch");
        assert!(e.contains("architecture `mamba` is not supported"), "{e}");
        for name in ["llama", "qwen2", "qwen3", "gemma3"] {
            assert!(e.contains(name), "{e}");
        }
    }

    #[test]
    fn unsupported_rope_scaling_is_refused_by_name() {
        let e = load_with(
            "llama",
            0,
            4,
            "yarn",
            &[("llama.rope.scaling.type", Kv::Str("yarn"))],
        );
        assert!(e.contains("rope scaling `yarn`"), "{e}");
    }

    #[test]
    fn longrope_factor_sets_are_refused_by_name() {
        let file = gguf_bytes(
            &[("general.architecture", Kv::Str("phi3"))],
            &[
                ("token_embd.weight", &[1], 0, vec![0u8; 4]),
                ("rope_factors_long.weight", &[1], 0, vec![0u8; 4]),
            ],
        );
        let p = write_temp(&file, "longrope");
        let g = GgufFile::open(&p).unwrap();
        let e = Model::load(&g).err().expect("load must fail").to_string();
        std::fs::remove_file(p).ok();
        assert!(e.contains("rope_factors_long.weight holds LongRoPE"), "{e}");
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
