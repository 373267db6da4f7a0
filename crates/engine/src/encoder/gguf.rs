//! An encoder in a GGUF file, as llama.cpp converts it: architecture `nomic-bert`
//! (Nomic-BERT: rotary positions, fused QKV without biases, SwiGLU), its shapes under the
//! architecture's keys, its WordPiece vocabulary in the file and its pooling in
//! `{arch}.pooling_type`. Weights are F32 or F16, widened to f32 at load (the encoder's
//! products are f32). A GGUF of a causal model loads as a decoder embedder
//! ([`Encoder::from_decoder`]), pooled as its `pooling_type` says (Qwen3-Embedding's
//! files say `last`), else from its last token.

use std::path::Path;
use std::sync::Arc;

use super::bert::{Bert, Layer, Linear, Norm};
use super::{Body, Encoder, EncoderConfig, Pooling, Positions};
use crate::error::EngineError;
use crate::gguf::{GgmlType, GgufFile};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// The GGUF encoder architectures tokenfab runs.
pub(super) const ARCHITECTURES: [&str; 1] = ["nomic-bert"];

fn bad(what: impl std::fmt::Display) -> EngineError {
    EngineError::BadModel(what.to_string())
}

/// Whether a GGUF file holds an embedding model (of whichever architecture, run or not):
/// a model whose attention is not causal, or one converted with a pooling type (a decoder
/// trained to embed, as Qwen3-Embedding).
pub(super) fn is_encoder(g: &GgufFile) -> bool {
    let arch = g.architecture().unwrap_or("");
    ARCHITECTURES.contains(&arch)
        || g.get(&format!("{arch}.attention.causal"))
            .and_then(|v| v.as_bool())
            == Some(false)
        || g.get_u64(&format!("{arch}.pooling_type"))
            .is_some_and(|p| p > 0)
}

pub(super) fn config_of(path: &Path) -> Result<EncoderConfig, EngineError> {
    config(&GgufFile::open(path)?)
}

pub(super) fn load(path: &Path) -> Result<Encoder, EngineError> {
    let g = GgufFile::open(path)?;
    if !ARCHITECTURES.contains(&g.architecture().unwrap_or("")) {
        let tokenizer = Tokenizer::from_gguf(&g)?;
        let model = Model::load(&g)?;
        let pooling = pooling(&g)?.unwrap_or(Pooling::Last);
        return Ok(Encoder::from_decoder(
            Arc::new(model),
            Arc::new(tokenizer),
            pooling,
        ));
    }
    let config = config(&g)?;
    let tokenizer = Tokenizer::from_gguf(&g)?;
    if tokenizer.vocab_size() > config.vocab {
        return Err(bad(format!(
            "the tokenizer has {} tokens, the model's embeddings {}",
            tokenizer.vocab_size(),
            config.vocab
        )));
    }
    let bert = weights(&g, &config)?;
    Ok(Encoder {
        config,
        tokenizer: Arc::new(tokenizer),
        body: Body::Bert(bert),
        head: None,
    })
}

fn config(g: &GgufFile) -> Result<EncoderConfig, EngineError> {
    let arch = g.architecture().unwrap_or("").to_owned();
    if !ARCHITECTURES.contains(&arch.as_str()) {
        return Err(bad(format!(
            "GGUF encoder architecture `{arch}` is not supported (tokenfab runs {})",
            ARCHITECTURES.join(", ")
        )));
    }
    let float = |k: &str| g.get_f64(&format!("{arch}.{k}"));
    let int = |k: &str| {
        g.get_u64(&format!("{arch}.{k}"))
            .map(|v| v as usize)
            .ok_or_else(|| bad(format!("{}: no `{arch}.{k}`", g.path.display())))
    };
    let (width, heads) = (int("embedding_length")?, int("attention.head_count")?);
    if heads == 0 || !width.is_multiple_of(heads) || !(width / heads).is_multiple_of(2) {
        return Err(bad(format!(
            "{heads} heads do not divide a width of {width} into even head sizes"
        )));
    }
    let vocab = g
        .tensor("token_embd.weight")
        .and_then(|t| t.dims.get(1).copied())
        .ok_or_else(|| bad("no token_embd.weight"))? as usize;
    let pooling = pooling(g)?.unwrap_or(Pooling::Mean);
    Ok(EncoderConfig {
        arch: arch.clone(),
        width,
        heads,
        layers: int("block_count")?,
        ffn: int("feed_forward_length")?,
        vocab,
        positions: Positions::Rotary {
            base: float("rope.freq_base").unwrap_or(10_000.0) as f32,
        },
        token_types: g
            .tensor("token_types.weight")
            .and_then(|t| t.dims.get(1).copied())
            .unwrap_or(1) as usize,
        norm_eps: float("attention.layer_norm_epsilon").unwrap_or(1e-12) as f32,
        context_length: int("context_length")?,
        pooling,
        normalize: true,
        reranker: false,
        dimensions: Vec::new(),
    })
}

/// The file's pooling type (llama.cpp's numbering), if it has one.
fn pooling(g: &GgufFile) -> Result<Option<Pooling>, EngineError> {
    let arch = g.architecture().unwrap_or("");
    match g.get_u64(&format!("{arch}.pooling_type")) {
        None | Some(0) => Ok(None),
        Some(1) => Ok(Some(Pooling::Mean)),
        Some(2) => Ok(Some(Pooling::Cls)),
        Some(3) => Ok(Some(Pooling::Last)),
        Some(other) => Err(bad(format!(
            "pooling type {other} is not one of mean (1), cls (2) or last (3)"
        ))),
    }
}

/// The weights by llama.cpp's tensor names.
fn weights(g: &GgufFile, c: &EncoderConfig) -> Result<Bert, EngineError> {
    // GGUF lists a matrix's dimensions fastest first: `[cols, rows]`.
    let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>, EngineError> {
        let t = g
            .tensor(name)
            .ok_or_else(|| bad(format!("{}: no tensor {name}", g.path.display())))?;
        let dims: Vec<usize> = t.dims.iter().rev().map(|&v| v as usize).collect();
        if dims != shape {
            return Err(bad(format!(
                "{name} has shape {dims:?}, expected {shape:?}"
            )));
        }
        let data = g.tensor_data(t)?;
        match t.ty {
            GgmlType::F32 => Ok(data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            GgmlType::F16 => Ok(data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            other => Err(bad(format!(
                "{name} is {other}; GGUF encoders load F32 and F16"
            ))),
        }
    };
    let (d, f) = (c.width, c.ffn);
    let linear = |name: &str, rows: usize, cols: usize| -> Result<Linear, EngineError> {
        Ok(Linear::new(
            tensor(&format!("{name}.weight"), &[rows, cols])?,
            Vec::new(),
            rows,
            cols,
        ))
    };
    let norm = |name: &str| -> Result<Norm, EngineError> {
        Ok(Norm {
            w: tensor(&format!("{name}.weight"), &[d])?,
            b: tensor(&format!("{name}.bias"), &[d])?,
        })
    };
    let layers = (0..c.layers)
        .map(|i| {
            let p = format!("blk.{i}");
            Ok(Layer {
                qkv: linear(&format!("{p}.attn_qkv"), 3 * d, d)?,
                o: linear(&format!("{p}.attn_output"), d, d)?,
                attn_norm: norm(&format!("{p}.attn_output_norm"))?,
                up: linear(&format!("{p}.ffn_up"), f, d)?,
                gate: Some(linear(&format!("{p}.ffn_gate"), f, d)?),
                down: linear(&format!("{p}.ffn_down"), d, f)?,
                out_norm: norm(&format!("{p}.layer_output_norm"))?,
            })
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    Ok(Bert {
        word: tensor("token_embd.weight", &[c.vocab, d])?,
        position: Vec::new(),
        token_type: tensor("token_types.weight", &[c.token_types, d])?,
        embd_norm: norm("token_embd_norm")?,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::test_writer::{Kv, gguf_bytes, write_temp};

    /// A GGUF is an embedding model by its architecture, or by a pooling type (a decoder
    /// converted as an embedder); a chat model's file is not.
    #[test]
    fn embedding_models_are_told_from_chat_models() {
        let cases = [
            ("nomic-bert", None, true),
            ("qwen3", Some(3), true),
            ("qwen3", Some(0), false),
            ("llama", None, false),
        ];
        for (i, (arch, pooling, encoder)) in cases.into_iter().enumerate() {
            let key = format!("{arch}.pooling_type");
            let mut kvs = vec![("general.architecture", Kv::Str(arch))];
            kvs.extend(pooling.map(|p| (key.as_str(), Kv::U32(p))));
            let p = write_temp(&gguf_bytes(&kvs, &[]), &format!("is-encoder-{i}"));
            let g = GgufFile::open(&p).unwrap();
            assert_eq!(is_encoder(&g), encoder, "{arch} {i}");
            std::fs::remove_file(p).ok();
        }
    }
}
