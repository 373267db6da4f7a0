# Embeddings through the official openai client: floats asked for explicitly, and the
# client's default (it asks for base64 and decodes it itself); prints both pairs of
# vectors' cosine, their length and the usage as JSON.
import json
import math
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ["TOKENFAB_BASE_URL"], api_key="unused")
model = os.environ["TOKENFAB_MODEL"]
pair = ["A man is eating food.", "A man is eating a piece of bread."]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


floats = client.embeddings.create(model=model, input=pair, encoding_format="float")
default = client.embeddings.create(model=model, input=pair)
a, b = (d.embedding for d in floats.data)
c, d = (d.embedding for d in default.data)
print(
    json.dumps(
        {
            "cosine_float": cosine(a, b),
            "cosine_default": cosine(c, d),
            "same": max(abs(x - y) for x, y in zip(a + b, c + d)),
            "dims": len(a),
            "prompt_tokens": floats.usage.prompt_tokens,
            "total_tokens": floats.usage.total_tokens,
            "model": floats.model,
        }
    )
)
