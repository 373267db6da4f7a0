#!/usr/bin/env python3
"""Writes small seeded conformance GGUFs: an architecture's exact tensor layout and metadata
with random weights, so tokenfab's forward pass can be compared with llama.cpp's on the same
file where no real weights of that architecture can be had. They test numerics; they are
not models (general.name says so).

    python bench/conformance.py OUT_DIR        # needs the `gguf` and `numpy` packages

Then scripts/requantized_golden.py (the reference llama-server) gives llama.cpp's outputs on
each file; crates/engine/tests/architectures.rs compares. The vocabulary is 256 plain pieces
and three specials (259 tokens), enough for llama.cpp to load the file; prompts are ids.
"""
import sys

import gguf
import numpy as np

N_VOCAB = 259


def vocab(w):
    # Plain pieces rather than byte tokens: llama.cpp's server merges byte pieces into
    # characters, which would misalign its per-token log-probabilities with the tokens.
    tokens = ["<unk>", "<s>", "</s>"] + [f"\u2581t{i:03d}" for i in range(256)]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * N_VOCAB)
    # 2 = unknown, 3 = control, 1 = normal
    w.add_token_types([2, 3, 3] + [1] * 256)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)


def dense(path, rng, arch):
    """`qwen3` (q/k norms, explicit key length), `llama` with Llama 3's rope frequency
    factors (`rope_freqs.weight`), or `phi3` (fused `attn_qkv` and gate/up `ffn_up`, and a
    declared sliding window that llama.cpp turns off), in the layout llama.cpp loads."""
    n_embd, n_layer, n_head, n_kv, n_ff = 64, 2, 4, 2, 96
    head_dim = 32 if arch == "qwen3" else n_embd // n_head
    w = gguf.GGUFWriter(path, arch)
    # (llama.cpp special-cases vocabularies of files named "phi3", hence the spelling.)
    layout = "Phi 3" if arch == "phi3" else path.rsplit("/", 1)[-1]
    w.add_name(f"tokenfab conformance file ({layout} layout, seeded random weights; not a model)")
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(10000.0 if arch == "qwen3" else 500000.0)
    w.add_layer_norm_rms_eps(1e-6)
    if arch == "phi3":
        # Shorter than the longer prompts: llama.cpp ignores it for phi3, so must we.
        w.add_sliding_window(8)
    vocab(w)

    def t(name, *shape, scale=None, around=0.0):
        # numpy shape is (rows, cols): ggml's dims reversed.
        s = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
        w.add_tensor(name, (around + s * rng.standard_normal(shape)).astype(np.float32))

    t("token_embd.weight", N_VOCAB, n_embd, scale=1.0)
    t("output_norm.weight", n_embd, scale=0.1, around=1.0)
    t("output.weight", N_VOCAB, n_embd, scale=2.0 / np.sqrt(n_embd))
    if arch == "llama":
        # Llama 3's scaling as its converter writes it: one divisor per rotated pair, 1 for
        # the high frequencies up to the scale factor (here 8) for the low ones.
        w.add_rope_dimension_count(head_dim)
        w.add_tensor("rope_freqs.weight", np.geomspace(1.0, 8.0, head_dim // 2).astype(np.float32))
    for i in range(n_layer):
        b = f"blk.{i}."
        t(b + "attn_norm.weight", n_embd, scale=0.1, around=1.0)
        if arch == "phi3":
            t(b + "attn_qkv.weight", (n_head + 2 * n_kv) * head_dim, n_embd)
        else:
            t(b + "attn_q.weight", n_head * head_dim, n_embd)
            t(b + "attn_k.weight", n_kv * head_dim, n_embd)
            t(b + "attn_v.weight", n_kv * head_dim, n_embd)
        if arch == "qwen3":
            t(b + "attn_q_norm.weight", head_dim, scale=0.1, around=1.0)
            t(b + "attn_k_norm.weight", head_dim, scale=0.1, around=1.0)
        t(b + "attn_output.weight", n_embd, n_head * head_dim)
        t(b + "ffn_norm.weight", n_embd, scale=0.1, around=1.0)
        if arch == "phi3":
            t(b + "ffn_up.weight", 2 * n_ff, n_embd)
        else:
            t(b + "ffn_gate.weight", n_ff, n_embd)
            t(b + "ffn_up.weight", n_ff, n_embd)
        t(b + "ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    out = sys.argv[1]
    dense(f"{out}/qwen3.gguf", np.random.default_rng(15), "qwen3")
    dense(f"{out}/llama3-rope.gguf", np.random.default_rng(16), "llama")
    dense(f"{out}/phi3.gguf", np.random.default_rng(17), "phi3")
