#!/usr/bin/env python3
"""Golden data for the requantized real-weight files (crates/engine/tests/requantized.rs).

For each GGUF given, runs the reference `llama-server` on it (CPU, 2 threads, f16 KV cache,
default settings, as the existing goldens) and asks it for 32 greedy tokens with the top-5
log-probabilities of each step, on the very prompt tokens of the model family's existing
golden file, so that every requantized file is judged on the same prompts. Writes one JSON
line per prompt in the format of the existing goldens (see /work/shared/golden/README.md),
to `<out-dir>/<file stem>.jsonl`.

    scripts/requantized_golden.py --server BIN --prompts crates/engine/tests/data/X.jsonl \
        --out-dir crates/engine/tests/data/requantized FILE.gguf...

Standard library only; talks to the server on loopback.
"""
import argparse
import json
import os
import subprocess
import sys

from reference_server import post, wait_ready


def golden(server, gguf, prompts, out, port):
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [server, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-t", "2",
         "-c", "4096", "--parallel", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(base, proc)
        lines = []
        for p in prompts:
            r = post(base + "/completion", {
                "prompt": p["prompt_tokens"], "n_predict": 32, "temperature": 0.0,
                "n_probs": 5, "cache_prompt": False, "return_tokens": True,
            })
            probs = r["completion_probabilities"]
            line = {k: p[k] for k in ("model", "kind", "input", "prompt", "prompt_tokens")}
            line["model_file"] = os.path.basename(gguf)
            # Every generated id; `completion_probabilities` merges the pieces of a UTF-8
            # character into one entry, so it can be shorter (as in the existing goldens).
            line["completion_tokens"] = r["tokens"]
            line["completion_text"] = r["content"]
            line["stop_type"] = r.get("stop_type")
            line["top_logprobs"] = [
                [{"id": t["id"], "token": t["token"], "logprob": t["logprob"]}
                 for t in c["top_logprobs"]]
                for c in probs
            ]
            lines.append(json.dumps(line, ensure_ascii=False))
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, out)
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--port", type=int, default=18461)
    ap.add_argument("gguf", nargs="+")
    a = ap.parse_args()
    prompts = [json.loads(l) for l in open(a.prompts) if l.strip()]
    os.makedirs(a.out_dir, exist_ok=True)
    for g in a.gguf:
        stem = os.path.basename(g).removesuffix(".gguf")
        out = os.path.join(a.out_dir, stem + ".jsonl")
        print(f"== {stem}", file=sys.stderr)
        golden(a.server, g, prompts, out, a.port)


if __name__ == "__main__":
    main()
