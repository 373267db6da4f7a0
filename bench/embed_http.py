#!/usr/bin/env python3
"""Sentences per second of an OpenAI-compatible `/v1/embeddings` server: the texts of a JSON
array in requests of `batch` inputs, one request at a time, one warm-up pass then `runs`
timed passes, the median printed as JSON. bench/run.sh points it at `tokenfab serve` and at
`llama-server --embedding` in turn, so both sides pay the same client and HTTP costs.

    bench/embed_http.py URL MODEL TEXTS.json BATCH RUNS

Standard library only.
"""
import json
import statistics
import sys
import time
import urllib.request


def main():
    url, model, path, batch, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    texts = json.load(open(path, encoding="utf-8"))

    def once():
        tokens = 0
        start = time.perf_counter()
        for i in range(0, len(texts), batch):
            body = json.dumps({"model": model, "input": texts[i:i + batch]}).encode()
            req = urllib.request.Request(url + "/embeddings", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as r:
                got = json.load(r)
            if len(got["data"]) != len(texts[i:i + batch]):
                sys.exit(f"{len(got['data'])} vectors for {len(texts[i:i + batch])} inputs")
            tokens += got.get("usage", {}).get("prompt_tokens", 0)
        return len(texts) / (time.perf_counter() - start), tokens

    once()
    rates, tokens = [], 0
    for _ in range(runs):
        rate, tokens = once()
        rates.append(rate)
    print(json.dumps({"sentences": len(texts), "tokens": tokens, "batch": batch,
                      "sentences_per_s": statistics.median(rates), "rates": rates}))


if __name__ == "__main__":
    main()
