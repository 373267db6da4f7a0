"""What a running batch costs interactive requests: p99 time to first token of 8 concurrent
streams (5 rounds of 8, max_tokens 32), first with the server otherwise idle, then while a
500-request batch (queued through the batch API) runs; prints one JSON object with both
and their ratio (the target: at most 1.2). The batch is cancelled at the end.

Every stream asks a question of its own (a number in it), so neither phase answers from
prompts the other computed; the batch's lines ask other questions again.

    python3 batch_ttft.py BASE_URL MODEL
"""

import json
import sys
import threading
import time
import urllib.request

base, model = sys.argv[1].rstrip("/"), sys.argv[2]
ROUNDS, STREAMS, MAX_TOKENS, BATCH = 5, 8, 32, 500


def call(path, body=None, headers=None, method=None):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    h = {"content-type": "application/json"} if isinstance(body, dict) else {}
    h.update(headers or {})
    req = urllib.request.Request(f"{base}{path}", data, h, method=method)
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def ttft(question, out, i):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}],
                       "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}).encode()
    req = urllib.request.Request(f"{base}/chat/completions", body, {"content-type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        for line in r:
            if line.startswith(b"data: {") and b'"content"' in line:
                out[i] = (time.perf_counter() - start) * 1000
                break
        for _ in r:
            pass


def phase(tag):
    times = []
    for round_ in range(ROUNDS):
        out = [None] * STREAMS
        threads = [threading.Thread(target=ttft, args=(
            f"Question {tag}-{round_}-{i}: in two sentences, what is the number {7 * i + round_} known for?", out, i))
            for i in range(STREAMS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        times += [t for t in out if t is not None]
    times.sort()
    return {"p50_ms": round(times[len(times) // 2], 1),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1),
            "n": len(times)}


def queue_batch():
    lines = [json.dumps({"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": model, "max_tokens": 64, "temperature": 0,
                                  "messages": [{"role": "user", "content": f"Write a short story about robot {i}."}]}})
             for i in range(BATCH)]
    boundary = "batch-ttft-boundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench.jsonl\"\r\n\r\n"
            + "\n".join(lines) + f"\r\n--{boundary}--\r\n").encode()
    f = call("/files", form, {"content-type": f"multipart/form-data; boundary={boundary}"})
    return call("/batches", {"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                             "completion_window": "24h"})["id"]


ttft("Warm-up question.", [None], 0)
alone = phase("alone")
batch = queue_batch()
# Measured once the batch's lines are in the engine.
while call(f"/batches/{batch}")["request_counts"]["completed"] < 2:
    time.sleep(0.2)
before = call(f"/batches/{batch}")["request_counts"]["completed"]
busy = phase("busy")
after = call(f"/batches/{batch}")
call(f"/batches/{batch}/cancel", b"", method="POST")
print(json.dumps({
    "without_batch": alone,
    "with_batch": busy,
    "p99_ratio": round(busy["p99_ms"] / alone["p99_ms"], 3),
    "batch_lines_done_during": after["request_counts"]["completed"] - before,
    "batch_status_during": after["status"],
}))
