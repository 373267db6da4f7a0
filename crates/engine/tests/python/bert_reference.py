"""An independent BERT, the reference tokenfab's encoder is held to.

Tokens come from Hugging Face's own `tokenizers` library reading the model's
`tokenizer.json` (padding and truncation off); the forward pass is written here from the
BERT paper's equations with numpy in float64, reading `model.safetensors` directly, one
sequence at a time (nothing shared with tokenfab's packing, kernels or tokenizer).

    python bert_reference.py embed MODEL_DIR < sentences.json
        a JSON list of strings -> {"ids": [[...]], "embeddings": [[...]]}, mean-pooled and
        L2-normalized as sentence-transformers' all-MiniLM-L6-v2 is
    python bert_reference.py pairs MODEL_DIR < pairs.json
        a JSON list of [query, document] -> {"ids", "types", "scores"}: a cross-encoder's
        sigmoid of BertForSequenceClassification's one logit
    python bert_reference.py make-reranker DIR TOKENIZER_JSON
        writes a small seeded BertForSequenceClassification in Hugging Face's layout to
        DIR (a conformance file for the numerics: random weights, not a model)
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


def hidden(ids, types, W, cfg, prefix=""):
    W = {k[len(prefix):]: v for k, v in W.items() if k.startswith(prefix)}
    eps = cfg["layer_norm_eps"]
    heads = cfg["num_attention_heads"]
    n = len(ids)
    x = W["embeddings.word_embeddings.weight"][ids]
    x = x + W["embeddings.position_embeddings.weight"][:n]
    x = x + W["embeddings.token_type_embeddings.weight"][types]
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
    return x


def embed(ids, W, cfg):
    v = hidden(ids, [0] * len(ids), W, cfg).mean(axis=0)
    return v / np.linalg.norm(v)


def score(ids, types, W, cfg):
    first = hidden(ids, types, W, cfg, prefix="bert.")[0]
    pooled = np.tanh(first @ W["bert.pooler.dense.weight"].T + W["bert.pooler.dense.bias"])
    logit = (pooled @ W["classifier.weight"].T + W["classifier.bias"])[0]
    return 1.0 / (1.0 + math.exp(-logit))


def load(model_dir):
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    return tok, cfg, tensors(os.path.join(model_dir, "model.safetensors"))


def make_reranker(out_dir, tokenizer_json):
    """Seeded weights of a 2-layer, 32-wide BERT cross-encoder over a real vocabulary."""
    rng = np.random.default_rng(20261204)
    vocab, d, ffn, layers, positions = 30522, 32, 64, 2, 128
    cfg = {"architectures": ["BertForSequenceClassification"], "model_type": "bert",
           "hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": 4,
           "intermediate_size": ffn, "max_position_embeddings": positions,
           "type_vocab_size": 2, "vocab_size": vocab, "layer_norm_eps": 1e-12,
           "hidden_act": "gelu", "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    W = {}

    def put(name, *shape, scale=0.2):
        W[name] = (rng.standard_normal(shape) * scale).astype("<f4")

    put("bert.embeddings.word_embeddings.weight", vocab, d)
    put("bert.embeddings.position_embeddings.weight", positions, d)
    put("bert.embeddings.token_type_embeddings.weight", 2, d)
    for norm in ["bert.embeddings.LayerNorm"] + [
            f"bert.encoder.layer.{i}.{n}.LayerNorm" for i in range(layers)
            for n in ("attention.output", "output")]:
        W[norm + ".weight"] = (1.0 + rng.standard_normal(d) * 0.1).astype("<f4")
        put(norm + ".bias", d, scale=0.1)
    for i in range(layers):
        p = f"bert.encoder.layer.{i}"
        for name, rows, cols in (("attention.self.query", d, d), ("attention.self.key", d, d),
                                 ("attention.self.value", d, d), ("attention.output.dense", d, d),
                                 ("intermediate.dense", ffn, d), ("output.dense", d, ffn)):
            put(f"{p}.{name}.weight", rows, cols)
            put(f"{p}.{name}.bias", rows, scale=0.05)
    put("bert.pooler.dense.weight", d, d)
    put("bert.pooler.dense.bias", d, scale=0.05)
    put("classifier.weight", 1, d, scale=1.0)
    put("classifier.bias", 1, scale=0.1)
    header, blobs, offset = {}, [], 0
    for name, a in W.items():
        blob = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(tokenizer_json) as src, open(os.path.join(out_dir, "tokenizer.json"), "w") as dst:
        dst.write(src.read())


def main():
    mode = sys.argv[1]
    if mode == "make-reranker":
        make_reranker(sys.argv[2], sys.argv[3])
        return
    tok, cfg, W = load(sys.argv[2])
    if mode == "embed":
        ids = [tok.encode(s).ids for s in json.load(sys.stdin)]
        json.dump({"ids": ids, "embeddings": [embed(i, W, cfg).tolist() for i in ids]}, sys.stdout)
    elif mode == "pairs":
        encs = [tok.encode(q, d) for q, d in json.load(sys.stdin)]
        json.dump({"ids": [e.ids for e in encs], "types": [e.type_ids for e in encs],
                   "scores": [score(e.ids, e.type_ids, W, cfg) for e in encs]}, sys.stdout)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
