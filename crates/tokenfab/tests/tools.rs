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
