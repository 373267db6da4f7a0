//! The seed page's two Python programs, run with the official `openai` package against the
//! real server (scripts/test.sh installs the package in `.venv` and sets
//! TOKENFAB_TEST_PYTHON to that interpreter).

mod common;

use common::{MODEL, Server, run_seed};
use serde_json::Value;

/// The seed asks for max_tokens=4096 and then for no limit at all; a 135M model rambles,
/// so the operator ceiling keeps the test short while the programs stay unchanged.
fn server() -> Server {
    Server::start(&["--max-output-tokens", "48"])
}

fn assert_sensible(v: &Value) {
    for field in ["content", "round2"] {
        let text = v[field].as_str().unwrap_or_default();
        // (Unseeded sampling: a 135M model may emit byte sequences that are not UTF-8,
        // which arrive as U+FFFD; the seeded stream test proves nothing is cut in half.)
        assert!(!text.trim().is_empty(), "{field} is empty: {v}");
    }
    // Not a reasoning model: the thought is empty, the answer is all content.
    assert!(
        v["reasoning_content"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{v}"
    );
}

#[test]
fn seed_streaming_program_runs_unchanged() {
    assert_sensible(&run_seed(&server(), "seed_stream.py", MODEL));
}

#[test]
fn seed_non_streaming_program_runs_unchanged() {
    let v = run_seed(&server(), "seed_nonstream.py", MODEL);
    assert_sensible(&v);
    assert!(v["usage"].as_u64().unwrap() > 0);
}
