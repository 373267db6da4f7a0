#!/usr/bin/env python3
"""Many concurrent streaming chat clients against a real `tokenfab serve` of the default
model, billed to a paid account: every admitted stream must end with [DONE], every refusal
must be a 503 with retry-after, nothing else may happen, and afterwards the account must
hold nothing reserved. Prints the figures (admitted, shed, peak RSS, time) as JSON and
exits non-zero when a check fails.

    scripts/load_test.py --binary target/release/tokenfab --clients 1000

Standard library only (asyncio over raw sockets), so it runs without the .venv.
"""

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ADMIN = "load-test-admin-key-0123456789"
MODEL_ID = "load/paid"
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(binary, db, *args):
    out = subprocess.run(
        [binary, *args, "--database", db],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    return out.stdout.strip()


async def request(port, raw):
    """Sends `raw` on a new connection; returns (status, headers, body) read to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await reader.read()  # to EOF: every request says connection: close
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/1.1 ") else 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return status, headers, body


def dechunk(body):
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


def http(method, path, body=None, key=None):
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nconnection: close\r\n"
    if key:
        head += f"authorization: Bearer {key}\r\n"
    if body is not None:
        head += f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
    return head.encode() + b"\r\n" + payload


async def client(port, key, max_tokens, counts, failures):
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    try:
        status, headers, data = await request(port, http("POST", "/v1/chat/completions", body, key))
    except OSError as e:
        failures.append(f"connection: {e}")
        return
    if status == 200:
        events = [e[6:] for e in data.decode().split("\n\n") if e.startswith("data: ")]
        if events and events[-1] == "[DONE]":
            counts["completed"] += 1
        else:
            failures.append(f"a stream ended without [DONE]: {data[-200:]!r}")
    elif status == 503 and headers.get("retry-after"):
        counts["shed"] += 1
    else:
        failures.append(f"{status} {headers} {data[:200]!r}")


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", default="target/release/tokenfab")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="tokenfab-load-")
    db = f"sqlite://{work}/ledger.db"
    config = os.path.join(work, "tokenfab.toml")
    with open(config, "w") as f:
        f.write(
            f'[[models]]\nid = "{MODEL_ID}"\nsource = "{DEFAULT_MODEL}"\n'
            'input_per_million = "1"\noutput_per_million = "2"\n'
        )
    cli(args.binary, db, "accounts", "create", "load")
    cli(args.binary, db, "accounts", "top-up", "load", "--add", "1000")
    key = cli(args.binary, db, "keys", "create", "--account", "load")

    port = free_port()
    server = subprocess.Popen(
        [args.binary, "serve", "--port", str(port), "--threads", str(args.threads),
         "--config", config, "--database", db, "--admin-key", ADMIN],
        env={**os.environ, "RUST_LOG": "warn"},
        stdout=subprocess.DEVNULL,
    )
    report = {"clients": args.clients}
    failures = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, _, _ = await request(port, http("GET", "/health"))
                if status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("tokenfab did not start; is the model cached? (tokenfab models fetch)")
            await asyncio.sleep(0.1)
        rss_before = peak_rss_kib(server.pid)

        counts = {"completed": 0, "shed": 0}
        started = time.monotonic()
        await asyncio.gather(
            *(client(port, key, args.max_tokens, counts, failures) for _ in range(args.clients))
        )
        report["seconds"] = round(time.monotonic() - started, 1)
        report["admitted_completed"] = counts["completed"]
        report["shed_503"] = counts["shed"]
        report["failures"] = len(failures)
        report["peak_rss_mib_before"] = round(rss_before / 1024, 1)
        report["peak_rss_mib"] = round(peak_rss_kib(server.pid) / 1024, 1)

        # Settlement is queued: give the ledger a moment to commit the last ones.
        deadline = time.monotonic() + 30
        while True:
            _, _, data = await request(port, http("GET", "/admin/accounts/load", key=ADMIN))
            account = json.loads(data)
            if float(account["reserved"]) == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        report["reserved_after"] = account["reserved"]
        report["balance_after"] = account["balance"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    print(json.dumps(report))
    for f in failures[:10]:
        print("failure:", f, file=sys.stderr)
    ok = (
        not failures
        and float(report["reserved_after"]) == 0
        and report["admitted_completed"] + report["shed_503"] == args.clients
        and report["admitted_completed"] > 0
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    asyncio.run(main())
