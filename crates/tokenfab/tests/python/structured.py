# Structured outputs through the official openai client's own helpers: `parse` with a
# Pydantic model (the SDK sends a strict json_schema and parses the answer into the model)
# over several prompts and seeds, and `stream` with the same model, reassembled by the
# SDK. Prints how many answers parsed, as JSON.
import json
import os
from typing import Annotated, List

from openai import OpenAI
from pydantic import BaseModel, Field


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: int = Field(ge=0, le=100)
    landmarks: List[Annotated[str, Field(max_length=40)]] = Field(max_length=3)


client = OpenAI(base_url=os.environ["TOKENFAB_BASE_URL"], api_key="unused")
model = os.environ["TOKENFAB_MODEL"]
completions = client.chat.completions
parse = getattr(completions, "parse", None) or client.beta.chat.completions.parse
stream = getattr(completions, "stream", None) or client.beta.chat.completions.stream

questions = [
    "Tell me about Paris.",
    "Describe the biggest city in Japan.",
    "Which city has the Golden Gate Bridge?",
    "Give me facts about a city in Brazil.",
]
parsed = 0
total = 0
for i, q in enumerate(questions * 2):
    answer = parse(
        model=model,
        messages=[{"role": "user", "content": q}],
        response_format=City,
        max_tokens=300,
        temperature=0.8,
        seed=i,
    )
    total += 1
    city = answer.choices[0].message.parsed
    if isinstance(city, City) and len(city.landmarks) <= 3:
        parsed += 1

with stream(
    model=model,
    messages=[{"role": "user", "content": questions[0]}],
    response_format=City,
    max_tokens=300,
    temperature=0.8,
    seed=7,
) as events:
    for _ in events:
        pass
    final = events.get_final_completion()
streamed = final.choices[0].message.parsed

print(
    json.dumps(
        {
            "parsed": parsed,
            "total": total,
            "streamed": isinstance(streamed, City),
            "content": final.choices[0].message.content,
        }
    )
)
