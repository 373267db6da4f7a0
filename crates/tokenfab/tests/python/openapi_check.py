"""Checks tokenfab's /openapi.json: a valid OpenAPI 3.1 document (openapi-spec-validator),
and real answers of the server valid against the schemas it declares for them (jsonschema,
draft 2020-12, which OpenAPI 3.1's schemas are). Prints a JSON summary.

Environment: TOKENFAB_ROOT (the server's base URL, no /v1), TOKENFAB_MODEL, TOKENFAB_ADMIN_KEY.
"""

import json
import os
import urllib.request

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

ROOT = os.environ["TOKENFAB_ROOT"].rstrip("/")
MODEL = os.environ["TOKENFAB_MODEL"]
ADMIN = os.environ["TOKENFAB_ADMIN_KEY"]


def call(method, path, body=None, key=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(ROOT + path, data=data, method=method)
    req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read().decode()


status, _, text = call("GET", "/openapi.json")
assert status == 200, (status, text)
doc = json.loads(text)
validate(doc)
assert doc["openapi"].startswith("3.1"), doc["openapi"]


def schema_of(path, method, status, media="application/json"):
    op = doc["paths"][path][method]
    return op["responses"][str(status)]["content"][media]["schema"]


def check(path, method, status, instance, media="application/json"):
    schema = dict(schema_of(path, method, status, media))
    schema["components"] = doc["components"]
    errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=str)
    assert not errors, f"{method.upper()} {path} {status}: {[e.message for e in errors]}"


checked = []
# Admin: an account and a key, then the key's own calls.
status, _, text = call("POST", "/admin/accounts", {"name": "openapi"}, ADMIN)
assert status == 201, text
check("/admin/accounts", "post", 201, json.loads(text))
status, _, text = call("POST", "/admin/accounts/openapi/credit", {"amount": "5"}, ADMIN)
check("/admin/accounts/{name}/credit", "post", 200, json.loads(text))
status, _, text = call("POST", "/admin/keys", {"account": "openapi"}, ADMIN)
key = json.loads(text)["key"]
check("/admin/keys", "post", 201, json.loads(text))
for path in ["/admin/accounts", "/admin/keys", "/admin/usage", "/admin/terms", "/admin/models"]:
    status, _, text = call("GET", path, None, ADMIN)
    assert status == 200, text
    check(path, "get", 200, json.loads(text))
    checked.append(path)

chat = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8,
        "temperature": 0, "logprobs": True, "top_logprobs": 2}
status, _, text = call("POST", "/v1/chat/completions", chat, key)
assert status == 200, text
check("/v1/chat/completions", "post", 200, json.loads(text))
status, ctype, text = call("POST", "/v1/chat/completions",
                           dict(chat, stream=True, stream_options={"include_usage": True}), key)
assert ctype.startswith("text/event-stream"), ctype
chunks = [json.loads(line[6:]) for line in text.splitlines()
          if line.startswith("data: ") and line != "data: [DONE]"]
assert chunks
for c in chunks:
    check("/v1/chat/completions", "post", 200, c, "text/event-stream")
status, _, text = call("POST", "/v1/completions",
                       {"model": MODEL, "prompt": "One, two,", "max_tokens": 4, "logprobs": 2,
                        "echo": True}, key)
assert status == 200, text
check("/v1/completions", "post", 200, json.loads(text))
status, _, text = call("POST", "/tokenize", {"model": MODEL, "prompt": "hello world",
                                             "return_token_strs": True}, key)
check("/tokenize", "post", 200, json.loads(text))
status, _, text = call("POST", "/detokenize", {"model": MODEL, "tokens": [1, 2, 3]}, key)
check("/detokenize", "post", 200, json.loads(text))
for path in ["/v1/models", "/v1/user/info", "/v1/user/usage", "/v1/user/requests", "/health"]:
    status, _, text = call("GET", path, None, key)
    assert status == 200, text
    check(path, "get", 200, json.loads(text))
    checked.append(path)
# Errors have the one shape the document declares for them.
status, _, text = call("POST", "/v1/chat/completions", {"model": "no/such"}, key)
assert status == 404, text
check("/v1/chat/completions", "post", "4XX", json.loads(text))
status, _, text = call("GET", "/admin/accounts")
assert status == 401, text
check("/admin/accounts", "get", "4XX", json.loads(text))

print(json.dumps({"paths": sorted(doc["paths"]), "checked": checked,
                  "schemas": len(doc["components"]["schemas"])}))
