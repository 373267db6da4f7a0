//! Speculative decoding through `tokenfab serve`: a model configured with a `draft`
//! answers exactly as it does alone (greedy, whole and streamed), and a draft of another
//! vocabulary stops the server at start with the reason. (The engine's tests prove the
//! token-for-token identity while proposals are made and refused; this proves the
//! configuration reaches the engine: the served log shows the draft's proposals.)

mod common;

use std::process::Command;

use common::{Server, cached, post, run, stream_chunks};
use serde_json::json;

const QWEN: &str = "Qwen/Qwen2.5-Coder-0.5B-Instruct";

#[test]
fn a_served_draft_changes_no_answer() {
    let gguf = cached(QWEN);
    let draft = tokenfab_testkit::requantized_dir().join("qwen2.5-coder-0.5b-instruct.Q3_K_S.gguf");
    assert!(
        draft.is_file(),
        "{}: run scripts/requantize.sh",
        draft.display()
    );
    let dir = tokenfab_testkit::temp_dir("speculative");
    let mut config = String::new();
    for (id, with_draft) in [("alone", false), ("drafted", true)] {
        config += &format!(
            "[[models]]\nid = \"{id}\"\nsource = {:?}\ncontext_length = 2048\n",
            gguf.to_str().unwrap()
        );
        if with_draft {
            config += &format!("draft = {:?}\n", draft.to_str().unwrap());
        }
    }
    std::fs::write(dir.join("tokenfab.toml"), config).unwrap();
    let log = dir.join("serve.log");
    let s = Server::start_logged(
        &["--config", dir.join("tokenfab.toml").to_str().unwrap()],
        &log,
    );
    run(async {
        let ask = |model: &str| {
            json!({"model": model, "max_tokens": 60, "temperature": 0,
                   "messages": [{"role": "user", "content": "Write a Python function that adds two numbers."}]})
        };
        let (status, alone) = post(&s, &ask("alone")).await;
        assert_eq!(status, 200, "{alone}");
        let (status, drafted) = post(&s, &ask("drafted")).await;
        assert_eq!(status, 200, "{drafted}");
        assert_eq!(
            alone["choices"][0]["message"],
            drafted["choices"][0]["message"]
        );
        assert_eq!(alone["usage"], drafted["usage"]);
        let streamed = common::streamed_content(&stream_chunks(&s, &ask("drafted")).await);
        assert_eq!(
            streamed,
            alone["choices"][0]["message"]["content"].as_str().unwrap()
        );
    });
    // The same answers prove nothing unless the draft ran: the engine logs what each
    // drafted sequence proposed when it ends (the undrafted model logs no such line).
    let proposed = drafted_sequences(&log);
    assert_eq!(proposed.len(), 2, "two drafted answers, whole and streamed");
    assert!(proposed.iter().all(|&n| n > 0), "{proposed:?}");
}

/// `proposed` of each "speculative decoding" line in a server's log, waiting a little for
/// the lines of sequences that have just answered (they are logged as they retire).
fn drafted_sequences(log: &std::path::Path) -> Vec<usize> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let proposed: Vec<usize> = text
            .lines()
            .filter(|l| l.contains("speculative decoding"))
            .filter_map(|l| l.split("proposed=").nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        if proposed.len() >= 2 || std::time::Instant::now() > deadline {
            return proposed;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_draft_of_another_vocabulary_is_refused_at_start() {
    let db = tokenfab_testkit::temp_db("speculative");
    let out = Command::new(env!("CARGO_BIN_EXE_tokenfab"))
        .args(["serve", "--port", "0", "--model"])
        .arg(cached(QWEN))
        .arg("--draft")
        .arg(cached(common::MODEL))
        .arg("--database")
        .arg(db.sqlite_url())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot be the draft") && err.contains("vocabulary"),
        "{err}"
    );
}
