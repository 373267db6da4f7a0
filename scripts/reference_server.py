"""What the golden-data scripts share when they talk to the reference `llama-server` on
loopback: a JSON POST, and waiting until a started server answers `/health`. Standard
library only; imported by scripts/requantized_golden.py and scripts/embedding_golden.py
(Python puts a script's own folder on its import path)."""
import json
import sys
import time
import urllib.request


def post(url, body):
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def wait_ready(base, proc):
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"llama-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit("llama-server did not become ready")
