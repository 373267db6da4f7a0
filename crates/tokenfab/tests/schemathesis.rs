//! schemathesis (PyPI) against the real binary's `/openapi.json`: requests generated from
//! the document, valid and invalid, for every route: no 5xx, and every answer matching
//! the schema, status code and content type the document declares (scripts/schemathesis.sh).
//! A platform with a funded key, the admin API, the default chat model and an embedding
//! model; generation capped at a few tokens so that thousands of requests stay quick.
//! `TOKENFAB_SCHEMATHESIS_EXAMPLES` sets the cases per operation (default 10 here).

mod common;

use std::process::Command;

use common::{MODEL, Server, account};
use tokenfab_testkit::{temp_db, temp_path};

const ADMIN: &str = "schemathesis-admin-key-0123456789";

#[test]
fn generated_requests_get_no_5xx_and_answers_match_the_document() {
    let python = std::env::var("TOKENFAB_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TOKENFAB_TEST_PYTHON is not set: run scripts/test.sh, which installs schemathesis in .venv")
    });
    let minilm = std::env::var("TOKENFAB_TEST_MINILM")
        .expect("TOKENFAB_TEST_MINILM is not set: run scripts/test.sh");
    let config = temp_path("schemathesis", "toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[models]]
id = "{MODEL}"
source = "{MODEL}"
input_per_million = "1"
output_per_million = "2"

[[models]]
id = "test/embed"
source = "{minilm}"
input_per_million = "0.5"
"#
        ),
    )
    .unwrap();
    let db = temp_db("schemathesis");
    let db = db.sqlite_url();
    let key = account(&db, "fuzz", "1000");
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--database",
        &db,
        "--admin-key",
        ADMIN,
        "--max-output-tokens",
        "4",
    ]);
    let examples = std::env::var("TOKENFAB_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "10".into());
    let script = format!(
        "{}/../../scripts/schemathesis.sh",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(&script)
        .args([&server.base, &key, ADMIN, &examples])
        .env("TOKENFAB_TEST_PYTHON", python)
        .output()
        .expect("run scripts/schemathesis.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both runs tested operations (a filter matching nothing passes vacuously).
    assert_eq!(stdout.matches("== schemathesis:").count(), 2, "{stdout}");
    eprintln!("{stdout}");
}
