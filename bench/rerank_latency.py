"""Rerank latency of a running server: 1 query x 32 documents of about 100 tokens, 20
requests one after the other (after one warm-up), p50 and p99 in ms; prints one JSON object.
Each request asks a different query, so that no server answers from a cache of the last
request's prompts (a judge's prompt holds the query before the document).

    python3 rerank_latency.py BASE_URL MODEL
"""

import json
import random
import statistics
import sys
import time
import urllib.request

base, model = sys.argv[1], sys.argv[2]
random.seed(11)
words = ("the a river city engine market garden station letter window storm morning team "
         "bread map bicycle apples tools song sea quiet careful broken bright old new").split()
docs = [" ".join(random.choice(words) for _ in range(75)) + "." for _ in range(32)]
def once(i=0):
    body = json.dumps({"model": model, "documents": docs,
                       "query": f"Which document talks about storm number {i} near the river?"}).encode()
    req = urllib.request.Request(f"{base}/rerank", body, {"content-type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        answer = json.load(r)
    return (time.perf_counter() - start) * 1000, answer["tokens"]["input_tokens"]


once()
runs = [once(i) for i in range(1, 21)]
ms = sorted(r[0] for r in runs)
print(json.dumps({"documents": 32, "input_tokens": runs[0][1], "p50_ms": statistics.median(ms),
                  "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}))
