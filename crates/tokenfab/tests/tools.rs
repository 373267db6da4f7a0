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

/// Qwen2.5-Coder-0.5B served with other families' templates (Llama 3.1's, Mistral Nemo's,
/// Devstral's): the tools reach the prompt as each template writes them, a required call
/// comes back parsed from the family's format, streamed = whole, and the call and its
/// result go back through the template for a final turn; on Qwen's own template, `auto`
/// with a strict tool gives a call whose arguments hold to the schema.
#[test]
fn other_families_formats_and_strict_auto() {
    use common::{post, run, stream_chunks, streamed_calls};
    use serde_json::{Value, json};
    let gguf = cached(QWEN);
    let templates = tokenfab_testkit::test_assets_dir().join("templates");
    let dir = tokenfab_testkit::temp_dir("tool-formats");
    let mut config = String::from("max_output_tokens = 80\n");
    for (id, file) in [
        ("as-llama", "meta-llama-Llama-3.1-8B-Instruct.jinja"),
        ("as-mistral", "mistralai-Mistral-Nemo-Instruct-2407.jinja"),
        ("as-devstral", "unsloth-mistral-Devstral-Small-2507.jinja"),
        ("qwen", ""),
    ] {
        config += &format!(
            "[[models]]\nid = \"{id}\"\nsource = {:?}\ncontext_length = 2048\n",
            gguf.to_str().unwrap()
        );
        if !file.is_empty() {
            config += &format!(
                "chat_template_file = {:?}\n",
                templates.join(file).to_str().unwrap()
            );
        }
    }
    std::fs::write(dir.join("tokenfab.toml"), config).unwrap();
    let s = Server::start(&["--config", dir.join("tokenfab.toml").to_str().unwrap()]);
    run(async {
        let weather = json!({"type": "function", "function": {"name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"], "additionalProperties": false}}});
        let user = json!({"role": "user", "content": "What is the weather in Paris?"});
        for model in ["as-llama", "as-mistral", "as-devstral"] {
            let body = json!({"model": model, "messages": [user], "tools": [weather],
                              "tool_choice": "required", "parallel_tool_calls": false,
                              "temperature": 0});
            let (status, v) = post(&s, &body).await;
            assert_eq!(status, 200, "{model}: {v}");
            let choice = &v["choices"][0];
            assert_eq!(choice["finish_reason"], "tool_calls", "{model}: {v}");
            let call = &choice["message"]["tool_calls"][0];
            assert_eq!(call["function"]["name"], "get_weather", "{v}");
            let arguments = call["function"]["arguments"].as_str().unwrap();
            let args: Value = serde_json::from_str(arguments).unwrap();
            assert!(args["city"].is_string(), "{model}: {v}");
            let chunks = stream_chunks(&s, &body).await;
            assert_eq!(
                streamed_calls(&chunks),
                [("get_weather".to_owned(), arguments.to_owned())],
                "{model}"
            );
            // The call and its result, back through the family's template (Mistral's
            // wants nine-character ids).
            let mut call = call.clone();
            call["id"] = json!("abc123xyz");
            let turn = json!({"model": model, "max_tokens": 16, "messages": [user,
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "abc123xyz", "content": "{\"temp_c\": 21}"}]});
            let (status, v) = post(&s, &turn).await;
            assert_eq!(status, 200, "{model}: {v}");
        }

        let mut strict = weather.clone();
        strict["function"]["strict"] = json!(true);
        for seed in 0..4 {
            let body = json!({"model": "qwen", "messages": [user], "tools": [strict],
                              "temperature": 1, "seed": seed});
            let (status, v) = post(&s, &body).await;
            assert_eq!(status, 200, "{v}");
            for call in v["choices"][0]["message"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let args: Value =
                    serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
                let keys: Vec<&String> = args.as_object().unwrap().keys().collect();
                assert!(args["city"].is_string() && keys == ["city"], "{v}");
            }
        }
    });
}
