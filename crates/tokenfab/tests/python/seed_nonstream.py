# The seed page's non-streaming example, unchanged but for base_url, api_key and model,
# which come from the environment. The lines after "# -- test" only print the results.
import json
import os

from openai import OpenAI
url = os.environ["TOKENFAB_BASE_URL"]
api_key = os.environ.get("TOKENFAB_API_KEY", "unused")
client = OpenAI(
base_url=url,
api_key=api_key
)
# 发送非流式输出的请求
messages = [
{"role": "user", "content": "奥运会的传奇名将有哪些?"}
]
response = client.chat.completions.create(
model=os.environ["TOKENFAB_MODEL"],
messages=messages,
stream=False,
max_tokens=4096
)
content = response.choices[0].message.content
reasoning_content = response.choices[0].message.reasoning_content
# Round 2
messages.append({"role": "assistant", "content": content})
messages.append({'role': 'user', 'content': "继续"})
response = client.chat.completions.create(
model=os.environ["TOKENFAB_MODEL"],
messages=messages,
stream=False
)
# -- test
print(json.dumps({"content": content, "reasoning_content": reasoning_content,
                  "round2": response.choices[0].message.content,
                  "usage": response.usage.total_tokens}, ensure_ascii=False))
