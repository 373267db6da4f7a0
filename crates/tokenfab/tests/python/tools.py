# Tool calling through the official openai client: a weather call (tool_choice
# "required", then "auto"), its arguments parsed and checked, the tool's result sent back
# for a final answer; the same streamed, reassembled by the SDK's own stream helper.
# Prints what it saw as JSON.
import json
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ["TOKENFAB_BASE_URL"], api_key="unused")
model = os.environ["TOKENFAB_MODEL"]
stream = getattr(client.chat.completions, "stream", None) or client.beta.chat.completions.stream
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
]
question = [{"role": "user", "content": "What is the weather like in Paris today?"}]
out = {}
for choice in ["required", "auto"]:
    r = client.chat.completions.create(
        model=model, messages=question, tools=tools, tool_choice=choice, temperature=0, max_tokens=100
    )
    m = r.choices[0].message
    calls = m.tool_calls or []
    out[choice] = {
        "finish": r.choices[0].finish_reason,
        "calls": [(c.function.name, json.loads(c.function.arguments)) for c in calls],
        "ids": [c.id for c in calls],
        "content": m.content,
    }

# The call, its result, and the final answer.
first = client.chat.completions.create(
    model=model, messages=question, tools=tools, tool_choice="required", temperature=0, max_tokens=100
)
call = first.choices[0].message.tool_calls[0]
messages = question + [
    first.choices[0].message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "sunny"})},
]
final = client.chat.completions.create(model=model, messages=messages, tools=tools, temperature=0, max_tokens=60)
out["final"] = {"finish": final.choices[0].finish_reason, "content": final.choices[0].message.content}

# Streamed, reassembled by the SDK.
with stream(model=model, messages=question, tools=tools, tool_choice="required", temperature=0, max_tokens=100) as events:
    for _ in events:
        pass
    done = events.get_final_completion()
c = done.choices[0]
out["streamed"] = {
    "finish": c.finish_reason,
    "calls": [(t.function.name, json.loads(t.function.arguments)) for t in c.message.tool_calls or []],
    "arguments": [t.function.arguments for t in c.message.tool_calls or []],
    "whole_arguments": [t.function.arguments for t in first.choices[0].message.tool_calls],
}
print(json.dumps(out))
