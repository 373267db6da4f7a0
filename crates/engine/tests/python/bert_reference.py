"""An independent BERT sentence embedder, the reference tokenfab's encoder is held to.

Tokens come from Hugging Face's own `tokenizers` library reading the model's
`tokenizer.json` (padding and truncation off); the forward pass is written here from the
BERT paper's equations with numpy in float64, reading `model.safetensors` directly, one
sentence at a time (nothing shared with tokenfab's packing, kernels or tokenizer).

    python bert_reference.py MODEL_DIR < sentences.json > result.json

Input: a JSON list of strings. Output: {"ids": [[...], ...], "embeddings": [[...], ...]},
mean-pooled and L2-normalized as sentence-transformers' all-MiniLM-L6-v2 is.
"""

import json
import math
import os
import struct
import sys

import numpy as np
from tokenizers import Tokenizer


def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        dtype = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}[t["dtype"]]
        out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(t["shape"]).astype(np.float64)
    return out


ERF = np.vectorize(math.erf)


def layer_norm(x, w, b, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def embed(ids, W, cfg):
    eps = cfg["layer_norm_eps"]
    heads = cfg["num_attention_heads"]
    n = len(ids)
    x = W["embeddings.word_embeddings.weight"][ids]
    x = x + W["embeddings.position_embeddings.weight"][:n]
    x = x + W["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)
    d = x.shape[1]
    hd = d // heads

    def lin(name, v):
        return v @ W[name + ".weight"].T + W[name + ".bias"]

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q = lin(p + ".attention.self.query", x).reshape(n, heads, hd).transpose(1, 0, 2)
        k = lin(p + ".attention.self.key", x).reshape(n, heads, hd).transpose(1, 0, 2)
        v = lin(p + ".attention.self.value", x).reshape(n, heads, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s = s / s.sum(axis=-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, d)
        x = layer_norm(x + lin(p + ".attention.output.dense", a),
                       W[p + ".attention.output.LayerNorm.weight"],
                       W[p + ".attention.output.LayerNorm.bias"], eps)
        h = lin(p + ".intermediate.dense", x)
        h = 0.5 * h * (1.0 + ERF(h / math.sqrt(2.0)))
        x = layer_norm(x + lin(p + ".output.dense", h),
                       W[p + ".output.LayerNorm.weight"],
                       W[p + ".output.LayerNorm.bias"], eps)
    v = x.mean(axis=0)
    return v / np.linalg.norm(v)


def main():
    model_dir = sys.argv[1]
    sentences = json.load(sys.stdin)
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    W = tensors(os.path.join(model_dir, "model.safetensors"))
    ids = [tok.encode(s).ids for s in sentences]
    embeddings = [embed(i, W, cfg).tolist() for i in ids]
    json.dump({"ids": ids, "embeddings": embeddings}, sys.stdout)


if __name__ == "__main__":
    main()
