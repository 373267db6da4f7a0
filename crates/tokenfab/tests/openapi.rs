//! `/openapi.json` on the real binary: a valid OpenAPI 3.1 document
//! (openapi-spec-validator, PyPI) naming every route the server serves, and the server's
//! real answers valid against the schemas the document declares for them
//! (tests/python/openapi_check.py; scripts/test.sh installs both packages in .venv).

mod common;

use std::process::Command;

use common::{MODEL, Server};
use serde_json::Value;

const ADMIN: &str = "openapi-admin-key-0123456789";

#[test]
fn the_document_is_valid_complete_and_matches_real_answers() {
    let python = std::env::var("TOKENFAB_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TOKENFAB_TEST_PYTHON is not set: run scripts/test.sh, which installs openapi-spec-validator in .venv")
    });
    let server = Server::start(&["--admin-key", ADMIN, "--max-output-tokens", "16"]);
    let script = format!(
        "{}/tests/python/openapi_check.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(python)
        .arg(&script)
        .env("TOKENFAB_ROOT", &server.base)
        .env("TOKENFAB_MODEL", MODEL)
        .env("TOKENFAB_ADMIN_KEY", ADMIN)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openapi_check.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    let paths: Vec<&str> = summary["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    // Every route this server answers (the admin API is on: an admin key is set).
    for route in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/rerank",
        "/v1/models",
        "/v1/user/info",
        "/v1/user/usage",
        "/v1/user/requests",
        "/v1/files",
        "/v1/files/{id}",
        "/v1/files/{id}/content",
        "/v1/batches",
        "/v1/batches/{id}",
        "/v1/batches/{id}/cancel",
        "/tokenize",
        "/detokenize",
        "/admin/accounts",
        "/admin/accounts/{name}",
        "/admin/accounts/{name}/credit",
        "/admin/keys",
        "/admin/keys/{which}",
        "/admin/usage",
        "/admin/terms",
        "/admin/models",
        "/health",
        "/metrics",
        "/openapi.json",
        "/",
        "/console/{asset}",
    ] {
        assert!(paths.contains(&route), "{route} is not in {paths:?}");
    }
}
