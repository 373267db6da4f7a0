# The batch API through the official openai client: a JSONL file uploaded, a batch made,
# polled to its end, its output read; also a plain request with the same body, to compare.
# Prints the batch, the answers by custom_id and the plain answer as JSON.
import io
import json
import os
import time

from openai import OpenAI

client = OpenAI(base_url=os.environ["TOKENFAB_BASE_URL"], api_key="unused")
model = os.environ["TOKENFAB_MODEL"]
questions = ["What is the capital of France?", "Name three primary colors."]
body = lambda q: {
    "model": model,
    "messages": [{"role": "user", "content": q}],
    "max_tokens": 16,
    "temperature": 0,
}
lines = [
    {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(q)}
    for i, q in enumerate(questions)
]
data = "".join(json.dumps(l) + "\n" for l in lines).encode()
f = client.files.create(file=("questions.jsonl", io.BytesIO(data)), purpose="batch")
assert f.purpose == "batch" and f.bytes == len(data), f
batch = client.batches.create(
    input_file_id=f.id,
    endpoint="/v1/chat/completions",
    completion_window="24h",
    metadata={"job": "sdk"},
)
deadline = time.time() + 120
while batch.status not in ("completed", "failed", "expired", "cancelled"):
    assert time.time() < deadline, batch
    time.sleep(0.5)
    batch = client.batches.retrieve(batch.id)
listed = client.batches.list(limit=10)
answers = {}
for line in client.files.content(batch.output_file_id).text.splitlines():
    out = json.loads(line)
    answers[out["custom_id"]] = out["response"]["body"]["choices"][0]["message"]["content"]
plain = client.chat.completions.create(**body(questions[0]))
print(
    json.dumps(
        {
            "status": batch.status,
            "counts": [batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed],
            "metadata": batch.metadata,
            "listed": [b.id for b in listed.data],
            "id": batch.id,
            "answers": answers,
            "plain": plain.choices[0].message.content,
        }
    )
)
