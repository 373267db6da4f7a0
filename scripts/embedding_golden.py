#!/usr/bin/env python3
"""Golden embeddings from llama.cpp, for crates/engine/tests/embedding_golden.rs.

Runs the reference `llama-server` (bench/build-reference.sh) in embedding mode on one GGUF
(CPU, 2 threads, the given pooling; weights not repacked, `-nr`: this version's AMX
kernels for repacked K-quants crash on a pass of a whole prompt), and for each input text asks it for the token ids it
frames (`/tokenize` with the special tokens) and the pooled, normalized vector
(`/embedding`). Writes one JSON document: the file's name and SHA-256, the pooling, and per
input the text, the ids and the vector as base64 of little-endian f32.

    scripts/embedding_golden.py --server BIN --model FILE.gguf --pooling mean \
        --inputs crates/engine/tests/data/sentences.json [--first N] --out OUT.json

Standard library only; talks to the server on loopback.
"""
import argparse
import base64
import hashlib
import json
import math
import os
import struct
import subprocess
import sys

from reference_server import post, wait_ready


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--pooling", required=True, choices=["mean", "cls", "last"])
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--first", type=int, default=0, help="only the first N inputs")
    ap.add_argument("--out", required=True)
    ap.add_argument("--port", type=int, default=8391)
    args = ap.parse_args()

    with open(args.inputs, encoding="utf-8") as f:
        inputs = json.load(f)
    if args.first:
        inputs = inputs[: args.first]
    base = f"http://127.0.0.1:{args.port}"
    proc = subprocess.Popen(
        [args.server, "-m", args.model, "--embedding", "--pooling", args.pooling,
         "-t", "2", "-nr", "-c", "4096", "-b", "4096", "-ub", "4096", "-np", "1",
         "--host", "127.0.0.1", "--port", str(args.port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(base, proc)
        items = []
        for text in inputs:
            ids = post(base + "/tokenize", {"content": text, "add_special": True})["tokens"]
            got = post(base + "/embedding", {"content": text})
            vec = got[0]["embedding"]
            if vec and isinstance(vec[0], list):  # one row: the pooled vector
                vec = vec[0]
            norm = math.sqrt(sum(x * x for x in vec))
            if abs(norm - 1.0) > 1e-3:
                sys.exit(f"llama-server gave a vector of norm {norm}: not normalized")
            items.append({
                "input": text,
                "ids": ids,
                "embedding": base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode(),
            })
    finally:
        proc.terminate()
        proc.wait()
    doc = {
        "model_file": os.path.basename(args.model),
        "sha256": sha256(args.model),
        "pooling": args.pooling,
        "reference": "llama-server --embedding (llama.cpp vendored by llama-cpp-python 0.3.36)",
        "items": items,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()
