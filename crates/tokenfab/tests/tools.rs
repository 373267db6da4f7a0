//! Tool calling over HTTP on the real Qwen2.5-Coder-0.5B: the official `openai` client's
//! weather call (required and auto), the tool result sent back for a final answer, and
//! the streamed call reassembled by the SDK, byte-identical to the whole answer's.

mod common;

use common::{Server, cached, run_seed};

const QWEN: &str = "Qwen/Qwen2.5-Coder-0.5B-Instruct";

#[test]
fn the_openai_client_calls_a_tool_and_gets_a_final_answer() {
    let gguf = cached(QWEN);
    let s = Server::start(&["--model", gguf.to_str().unwrap(), "--model-id", QWEN]);
    let v = run_seed(&s, "tools.py", QWEN);
    for choice in ["required", "auto"] {
        let r = &v[choice];
        assert_eq!(r["finish"], "tool_calls", "{choice}: {v}");
        assert_eq!(r["calls"][0][0], "get_weather", "{v}");
        assert_eq!(r["calls"][0][1]["city"], "Paris", "{v}");
        assert!(r["ids"][0].as_str().unwrap().starts_with("call_"));
        assert!(
            r["content"].is_null(),
            "only text outside the call is content: {v}"
        );
    }
    assert_eq!(v["final"]["finish"], "stop", "{v}");
    assert!(!v["final"]["content"].as_str().unwrap().is_empty(), "{v}");
    let st = &v["streamed"];
    assert_eq!(st["finish"], "tool_calls", "{v}");
    assert_eq!(st["calls"][0][0], "get_weather");
    assert_eq!(st["arguments"], st["whole_arguments"], "{v}");
}

/// A template without tool support (SmolLM2's) gets the tools in the system prompt; a
/// required call (one: without parallel calls the grammar ends after it) is still a call
/// with schema-valid arguments, and bad tool requests are 400s naming the field.
#[test]
fn a_template_without_tools_gets_the_fallback_and_required_still_calls() {
    use common::{MODEL, post, run};
    use serde_json::{Value, json};
    let s = Server::start(&[]);
    run(async {
        let tools = json!([{"type": "function", "function": {"name": "add", "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"], "additionalProperties": false}}}]);
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "What is 2 + 3?"}],
            "tools": tools, "tool_choice": "required", "parallel_tool_calls": false,
            "max_tokens": 60, "temperature": 0.7, "seed": 1});
        let (status, v) = post(&s, &body).await;
        assert_eq!(status, 200, "{v}");
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
        let call = &choice["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "add");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert!(
            args["a"].is_i64() && args["b"].is_i64() && args.as_object().unwrap().len() == 2,
            "{v}"
        );
        for (extra, field) in [
            (
                json!({"tools": [{"type": "function", "function": {"description": "x"}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                "tool_choice",
            ),
            (json!({"response_format": {"type": "json_object"}}), "tools"),
        ] {
            let mut b = body.clone();
            for (k, x) in extra.as_object().unwrap() {
                b[k] = x.clone();
            }
            let (status, v) = post(&s, &b).await;
            assert_eq!(
                (status, v["error"]["param"].as_str()),
                (400, Some(field)),
                "{extra}: {v}"
            );
        }
    });
}
