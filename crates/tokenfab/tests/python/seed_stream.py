# The seed page's streaming example (DeepSeek-R1 API guide), unchanged but for base_url,
# api_key and model, which come from the environment. The lines after "# -- test" only
# print what the program computed so the Rust test can check it.
import json
import os

from openai import OpenAI
url = os.environ["TOKENFAB_BASE_URL"]
api_key = os.environ.get("TOKENFAB_API_KEY", "unused")
client = OpenAI(
base_url=url,
api_key=api_key
)
# 发送带有流式输出的请求
content = ""
reasoning_content=""
messages = [
{"role": "user", "content": "奥运会的传奇名将有哪些?"}
]
response = client.chat.completions.create(
model=os.environ["TOKENFAB_MODEL"],
messages=messages,
stream=True, # 启用流式输出
max_tokens=4096
)
# 逐步接收并处理响应
for chunk in response:
    if chunk.choices[0].delta.content:
        content += chunk.choices[0].delta.content
    if chunk.choices[0].delta.reasoning_content:
        reasoning_content += chunk.choices[0].delta.reasoning_content
# Round 2
messages.append({"role": "assistant", "content": content})
messages.append({'role': 'user', 'content': "继续"})
response = client.chat.completions.create(
model=os.environ["TOKENFAB_MODEL"],
messages=messages,
stream=True
)
# -- test
round2 = "".join(c.choices[0].delta.content or "" for c in response if c.choices)
print(json.dumps({"content": content, "reasoning_content": reasoning_content, "round2": round2}, ensure_ascii=False))
