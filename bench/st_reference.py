"""sentence-transformers (PyTorch on CPU) embedding the same texts as `tokenfab bench embed`:
the reference of bench/run.sh's embedding row.

    python st_reference.py MODEL_DIR TEXTS.json THREADS BATCH RUNS

Prints one JSON object: sentences per second, the median of RUNS after one warm-up.
"""

import json
import statistics
import sys
import time

import torch
from sentence_transformers import SentenceTransformer


def main():
    model_dir, texts_path, threads, batch, runs = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    texts = json.load(open(texts_path))
    model = SentenceTransformer(model_dir, device="cpu")
    model.encode(texts, batch_size=int(batch))
    rates = []
    for _ in range(int(runs)):
        start = time.perf_counter()
        model.encode(texts, batch_size=int(batch))
        rates.append(len(texts) / (time.perf_counter() - start))
    print(json.dumps({"sentences": len(texts), "batch": int(batch), "threads": int(threads),
                      "sentences_per_s": statistics.median(rates), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
