# The legacy completions endpoint through the official openai client, streamed and not;
# prints the two greedy texts and the usage as JSON.
import json
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ["TOKENFAB_BASE_URL"], api_key="unused")
model = os.environ["TOKENFAB_MODEL"]
whole = client.completions.create(
    model=model, prompt="The capital of France is", max_tokens=8, temperature=0
)
streamed = ""
for chunk in client.completions.create(
    model=model,
    prompt="The capital of France is",
    max_tokens=8,
    temperature=0,
    stream=True,
):
    if chunk.choices:
        streamed += chunk.choices[0].text
print(
    json.dumps(
        {
            "text": whole.choices[0].text,
            "streamed": streamed,
            "usage": whole.usage.total_tokens,
        }
    )
)
