//! A Hugging Face encoder directory: `config.json` (the shapes), `model.safetensors` (the
//! weights, F32, F16 or BF16), `tokenizer.json`, and where present sentence-transformers'
//! `modules.json`, `1_Pooling/config.json` and `sentence_bert_config.json` (pooling,
//! normalization, the longest input). Without sentence-transformers' files the model is
//! pooled by the mean and normalized, the common default of embedding servers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::bert::{Bert, Classifier, Layer, Linear, Norm};
use super::{Body, Encoder, EncoderConfig, Pooling, Positions};
use crate::error::EngineError;
use crate::tokenizer::Tokenizer;

fn bad(what: impl std::fmt::Display) -> EngineError {
    EngineError::BadModel(what.to_string())
}

fn read(path: &Path) -> Result<String, EngineError> {
    std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))
}

fn json(path: &Path) -> Result<Value, EngineError> {
    serde_json::from_str(&read(path)?).map_err(|e| bad(format!("{}: {e}", path.display())))
}

/// The model families read from `config.json`'s `model_type`, with where their position
/// table starts: RoBERTa's descendants keep rows for the padding index before position 0.
pub(super) fn family(model_type: &str, pad: usize) -> Option<usize> {
    match model_type {
        "bert" => Some(0),
        "roberta" | "xlm-roberta" | "camembert" => Some(pad + 1),
        _ => None,
    }
}

/// The model directory of `path`: itself, or the folder of its weights file.
fn model_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_owned()
    } else {
        path.parent().map(Path::to_owned).unwrap_or_default()
    }
}

pub(super) fn load(path: &Path) -> Result<Encoder, EngineError> {
    let dir = model_dir(path);
    let config = config(&dir)?;
    let tokenizer = Tokenizer::from_hf_json(&read(&dir.join("tokenizer.json"))?)?;
    if tokenizer.vocab_size() > config.vocab {
        return Err(bad(format!(
            "the tokenizer has {} tokens, the model's embeddings {}",
            tokenizer.vocab_size(),
            config.vocab
        )));
    }
    let (bert, head) = weights(&dir.join("model.safetensors"), &config)?;
    Ok(Encoder {
        config,
        tokenizer: Arc::new(tokenizer),
        body: Body::Bert(bert),
        head,
    })
}

/// The configuration of the model at `path` (a directory or its weights file), read
/// without its weights: what `tokenfab models list` checks.
pub(super) fn config_of(path: &Path) -> Result<EncoderConfig, EngineError> {
    config(&model_dir(path))
}

fn config(dir: &Path) -> Result<EncoderConfig, EngineError> {
    let cfg = json(&dir.join("config.json"))?;
    let model_type = cfg["model_type"].as_str().unwrap_or("");
    let int = |k: &str| {
        cfg[k]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| bad(format!("{}: no `{k}`", dir.join("config.json").display())))
    };
    let position_offset = family(model_type, cfg["pad_token_id"].as_u64().unwrap_or(1) as usize)
        .ok_or_else(|| {
            bad(format!(
                "encoder model type `{model_type}` is not supported (tokenfab runs bert, roberta and xlm-roberta encoders)"
            ))
        })?;
    if let Some(act) = cfg["hidden_act"].as_str()
        && act != "gelu"
    {
        return Err(bad(format!(
            "encoder activation `{act}` is not supported (only gelu)"
        )));
    }
    if cfg["position_embedding_type"]
        .as_str()
        .is_some_and(|p| p != "absolute")
    {
        return Err(bad(
            "only absolute position embeddings are supported for BERT encoders",
        ));
    }
    let (width, heads) = (int("hidden_size")?, int("num_attention_heads")?);
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err(bad(format!(
            "{heads} heads do not divide a width of {width}"
        )));
    }
    let positions = int("max_position_embeddings")?;
    let usable = positions.saturating_sub(position_offset);
    let dimensions = cfg["matryoshka_dimensions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64().map(|v| v as usize))
                .filter(|&v| v > 0 && v < width)
                .collect()
        })
        .unwrap_or_default();
    let st = |name: &str| -> Result<Option<Value>, EngineError> {
        let p = dir.join(name);
        if p.is_file() {
            json(&p).map(Some)
        } else {
            Ok(None)
        }
    };
    let max_seq = st("sentence_bert_config.json")?
        .and_then(|v| v["max_seq_length"].as_u64())
        .map(|m| m as usize);
    let (pooling, normalize) = pooling(dir, st("modules.json")?)?;
    let architectures = cfg["architectures"].as_array().cloned().unwrap_or_default();
    let reranker = architectures.iter().any(|a| {
        a.as_str()
            .is_some_and(|a| a.ends_with("ForSequenceClassification"))
    });
    if reranker {
        let labels = cfg["id2label"].as_object().map_or(1, |m| m.len());
        if labels != 1 {
            return Err(bad(format!(
                "a classifier of {labels} labels is not a reranker (a cross-encoder scores with one)"
            )));
        }
    }
    Ok(EncoderConfig {
        arch: model_type.to_owned(),
        width,
        heads,
        layers: int("num_hidden_layers")?,
        ffn: int("intermediate_size")?,
        vocab: int("vocab_size")?,
        positions: Positions::Table {
            rows: positions,
            offset: position_offset,
        },
        token_types: cfg["type_vocab_size"].as_u64().unwrap_or(2) as usize,
        norm_eps: cfg["layer_norm_eps"].as_f64().unwrap_or(1e-12) as f32,
        context_length: max_seq.unwrap_or(usable).min(usable),
        pooling,
        normalize,
        reranker,
        dimensions,
    })
}

/// Pooling and normalization from sentence-transformers' modules; mean and normalized
/// when the directory has none.
fn pooling(dir: &Path, modules: Option<Value>) -> Result<(Pooling, bool), EngineError> {
    let Some(modules) = modules else {
        return Ok((Pooling::Mean, true));
    };
    let list = modules.as_array().cloned().unwrap_or_default();
    let has = |ty: &str| {
        list.iter()
            .find(|m| m["type"].as_str().is_some_and(|t| t.ends_with(ty)))
    };
    let normalize = has(".Normalize").is_some();
    let Some(module) = has(".Pooling") else {
        return Ok((Pooling::Cls, normalize));
    };
    let p = json(
        &dir.join(module["path"].as_str().unwrap_or("1_Pooling"))
            .join("config.json"),
    )?;
    let on = |k: &str| p[k].as_bool().unwrap_or(false);
    let pooling = match (
        on("pooling_mode_mean_tokens"),
        on("pooling_mode_cls_token"),
        on("pooling_mode_lasttoken"),
    ) {
        (true, false, false) => Pooling::Mean,
        (false, true, false) => Pooling::Cls,
        (false, false, true) => Pooling::Last,
        _ => {
            return Err(bad(
                "the pooling config asks for a pooling other than one of mean, cls or last token",
            ));
        }
    };
    Ok((pooling, normalize))
}

/// The weights, by Hugging Face's `BertModel` names with or without the prefix of a model
/// that wraps one (`bert.`, `roberta.`).
fn weights(path: &Path, c: &EncoderConfig) -> Result<(Bert, Option<Classifier>), EngineError> {
    let file = std::fs::File::open(path)
        .map_err(|e| bad(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: the file is mapped read-only and only read while the mapping lives; a file
    // changed under a running load gives wrong weights, never unsafety in this process's
    // own memory beyond what the mapping shows.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| bad(format!("cannot map {}: {e}", path.display())))?;
    let st = SafeTensors::deserialize(&map).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let names = st.names();
    let prefix = ["", "bert.", "roberta.", "model."]
        .into_iter()
        .find(|p| {
            names
                .iter()
                .any(|n| **n == format!("{p}embeddings.word_embeddings.weight"))
        })
        .ok_or_else(|| {
            bad(format!(
                "{}: no embeddings.word_embeddings.weight",
                path.display()
            ))
        })?;
    let tensor =
        |name: &str, shape: &[usize]| read_tensor(&st, path, &format!("{prefix}{name}"), shape);
    let (d, f) = (c.width, c.ffn);
    let linear = |name: &str, rows: usize, cols: usize| -> Result<Linear, EngineError> {
        Ok(Linear::new(
            tensor(&format!("{name}.weight"), &[rows, cols])?,
            tensor(&format!("{name}.bias"), &[rows])?,
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
            let p = format!("encoder.layer.{i}");
            let a = format!("{p}.attention.self");
            let parts = ["query", "key", "value"].map(|n| linear(&format!("{a}.{n}"), d, d));
            Ok(Layer {
                qkv: Linear::stack(parts)?,
                o: linear(&format!("{p}.attention.output.dense"), d, d)?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                up: linear(&format!("{p}.intermediate.dense"), f, d)?,
                gate: None,
                down: linear(&format!("{p}.output.dense"), d, f)?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            })
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    let Positions::Table { rows, .. } = c.positions else {
        return Err(bad("a Hugging Face BERT encoder has a position table"));
    };
    let bert = Bert {
        word: tensor("embeddings.word_embeddings.weight", &[c.vocab, d])?,
        position: tensor("embeddings.position_embeddings.weight", &[rows, d])?,
        token_type: tensor(
            "embeddings.token_type_embeddings.weight",
            &[c.token_types, d],
        )?,
        embd_norm: norm("embeddings.LayerNorm")?,
        layers,
    };
    // The classifier sits outside the wrapped model's prefix (`classifier.*`).
    let head = if c.reranker {
        let outside = |name: &str, shape: &[usize]| read_tensor(&st, path, name, shape);
        Some(Classifier {
            pooler: linear("pooler.dense", d, d)?,
            out: Linear::new(
                outside("classifier.weight", &[1, d])?,
                outside("classifier.bias", &[1])?,
                1,
                d,
            ),
        })
    } else {
        None
    };
    Ok((bert, head))
}

/// Tensor `name` of `st` (the file at `path`) as f32, checked to have `shape`.
fn read_tensor(
    st: &SafeTensors<'_>,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, EngineError> {
    let t = st
        .tensor(name)
        .map_err(|_| bad(format!("{}: no tensor {name}", path.display())))?;
    if t.shape() != shape {
        return Err(bad(format!(
            "{name} has shape {:?}, expected {shape:?}",
            t.shape()
        )));
    }
    floats(t.dtype(), t.data()).ok_or_else(|| {
        bad(format!(
            "{name} is {:?}; encoders load F32, F16 and BF16",
            t.dtype()
        ))
    })
}

/// Little-endian tensor bytes as f32, for the float types.
fn floats(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    let pairs = || {
        data.chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    Some(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => pairs().map(|h| half::f16::from_bits(h).to_f32()).collect(),
        Dtype::BF16 => pairs().map(|h| half::bf16::from_bits(h).to_f32()).collect(),
        _ => return None,
    })
}
