//! A batch's input file read into lines. Every non-blank line of the file is one request
//! of the batch (counted in `request_counts.total`); one that cannot run gets its error
//! line here, in the error file's shape, and the rest run.

use std::collections::HashSet;

use serde_json::Value;
use tokenfab_platform::store::BatchLine;
use tokenfab_wire::batch::{InputLine, LineError, OutputLine};

use super::line_id;

/// The lines of `bytes`, for a batch `batch_id` whose requests go to `endpoint`; a line
/// longer than `max_line_bytes` is refused as a request body that large would be.
pub fn read(bytes: &[u8], batch_id: &str, endpoint: &str, max_line_bytes: usize) -> Vec<BatchLine> {
    let mut seen = HashSet::new();
    bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .enumerate()
        .map(|(n, raw)| {
            let n = n as i64;
            match request(raw, endpoint, max_line_bytes, &mut seen) {
                Ok((custom_id, body)) => BatchLine {
                    line: n,
                    custom_id: Some(custom_id),
                    request: Some(body.to_string()),
                    state: "pending".into(),
                    result: None,
                },
                Err((custom_id, code, message)) => {
                    let out = OutputLine {
                        id: line_id(batch_id, n),
                        custom_id: custom_id.clone(),
                        response: None,
                        error: Some(LineError {
                            code: code.into(),
                            message,
                        }),
                    };
                    BatchLine {
                        line: n,
                        custom_id,
                        request: None,
                        state: "failed".into(),
                        result: Some(serde_json::to_string(&out).unwrap_or_default()),
                    }
                }
            }
        })
        .collect()
}

/// A line's `custom_id` and request body, or why it cannot run (with its `custom_id`
/// when it has one).
fn request(
    raw: &[u8],
    endpoint: &str,
    max_line_bytes: usize,
    seen: &mut HashSet<String>,
) -> Result<(String, Value), (Option<String>, &'static str, String)> {
    if raw.len() > max_line_bytes {
        return Err((
            None,
            "line_too_large",
            format!(
                "the line is {} bytes, more than the {max_line_bytes} a request body may be",
                raw.len()
            ),
        ));
    }
    let line: InputLine = serde_json::from_slice(raw).map_err(|e| {
        (
            None,
            "invalid_json_line",
            format!("the line is not a JSON object of custom_id, method, url and body: {e}"),
        )
    })?;
    let Some(custom_id) = line.custom_id.filter(|c| !c.is_empty()) else {
        return Err((
            None,
            "missing_custom_id",
            "the line has no `custom_id` string".into(),
        ));
    };
    let id = Some(custom_id.clone());
    if !seen.insert(custom_id.clone()) {
        return Err((
            id,
            "duplicate_custom_id",
            format!("the `custom_id` `{custom_id}` is an earlier line's: each must be unique"),
        ));
    }
    if line.method.as_deref() != Some("POST") {
        return Err((id, "invalid_method", "`method` must be `POST`".into()));
    }
    if line.url.as_deref() != Some(endpoint) {
        return Err((
            id,
            "mismatched_endpoint",
            format!(
                "`url` is {}, but this batch's endpoint is {endpoint}: every line must call it",
                line.url.as_deref().unwrap_or("missing")
            ),
        ));
    }
    match line.body {
        Some(body @ Value::Object(_)) => Ok((custom_id, body)),
        _ => Err((
            id,
            "invalid_body",
            "`body` must be a JSON object: the request the endpoint takes".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_line_gets_its_own_error_and_the_rest_run() {
        let good = |id: &str| {
            format!(
                r#"{{"custom_id":"{id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"m"}}}}"#
            )
        };
        let text = [
            good("a"),
            "not json".into(),
            String::new(),
            good("a"),
            r#"{"custom_id":"c","method":"GET","url":"/v1/chat/completions","body":{}}"#.into(),
            r#"{"custom_id":"d","method":"POST","url":"/v1/embeddings","body":{}}"#.into(),
            r#"{"custom_id":"e","method":"POST","url":"/v1/chat/completions","body":[1]}"#.into(),
            r#"{"method":"POST"}"#.into(),
            format!("{}\r", good("f")),
            format!(r#"{{"custom_id":"g","pad":"{}"}}"#, "x".repeat(200)),
        ]
        .join("\n");
        let lines = read(text.as_bytes(), "batch_x", "/v1/chat/completions", 150);
        let codes: Vec<(i64, Option<&str>, String)> = lines
            .iter()
            .map(|l| {
                let code = l.result.as_ref().map_or(String::new(), |r| {
                    let v: Value = serde_json::from_str(r).unwrap();
                    assert_eq!(v["id"], format!("batch_req_x_{}", l.line));
                    v["error"]["code"].as_str().unwrap().to_owned()
                });
                (l.line, l.custom_id.as_deref(), code)
            })
            .collect();
        assert_eq!(
            codes,
            vec![
                (0, Some("a"), String::new()),
                (1, None, "invalid_json_line".into()),
                (2, Some("a"), "duplicate_custom_id".into()),
                (3, Some("c"), "invalid_method".into()),
                (4, Some("d"), "mismatched_endpoint".into()),
                (5, Some("e"), "invalid_body".into()),
                (6, None, "missing_custom_id".into()),
                (7, Some("f"), String::new()),
                (8, None, "line_too_large".into()),
            ]
        );
        assert_eq!(lines[0].request.as_deref(), Some(r#"{"model":"m"}"#));
        assert_eq!(lines[0].state, "pending");
        assert_eq!(lines[1].state, "failed");
    }
}
