"""The seed's Round 2 against one server: how many prompt tokens does the second turn
recompute?

    python3 bench/second_turn.py http://127.0.0.1:8000/v1 MODEL

Round 1 asks the seed's question (greedy, 128 tokens); round 2 sends the answer back as
an assistant turn and then "继续", as the seed's multi-turn example does. Prints one JSON
object: round 2's prompt tokens and how many of them the server computed again. tokenfab
reports the cached part in `usage.prompt_tokens_details.cached_tokens`; llama-server
reports the tokens it evaluated in `timings.prompt_n`. Standard library only.
"""

import json
import sys
import urllib.request


def chat(base, model, messages):
    body = json.dumps(
        {"model": model, "messages": messages, "temperature": 0, "max_tokens": 128}
    ).encode()
    req = urllib.request.Request(
        base.rstrip("/") + "/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.load(resp)


def recomputed(reply):
    usage = reply["usage"]
    details = usage.get("prompt_tokens_details") or {}
    if "cached_tokens" in details:
        return usage["prompt_tokens"] - details["cached_tokens"], "cached_tokens"
    timings = reply.get("timings") or {}
    if "prompt_n" in timings:
        return timings["prompt_n"], "timings.prompt_n"
    return usage["prompt_tokens"], "assumed: no cache report"


def main():
    base, model = sys.argv[1], sys.argv[2]
    messages = [{"role": "user", "content": "奥运会的传奇名将有哪些?"}]
    first = chat(base, model, messages)
    messages += [
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "继续"},
    ]
    second = chat(base, model, messages)
    n, source = recomputed(second)
    print(
        json.dumps(
            {
                "round1_prompt_tokens": first["usage"]["prompt_tokens"],
                "round2_prompt_tokens": second["usage"]["prompt_tokens"],
                "round2_recomputed": n,
                "counted_by": source,
            }
        )
    )


if __name__ == "__main__":
    main()
