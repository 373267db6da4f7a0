//! `/v1/embeddings` served by tokenfab's own encoder (all-MiniLM-L6-v2 from the catalog):
//! `serve --model` picks the endpoint from the model, the official `openai` client gets
//! the published similarity both as floats and as base64, every input form works, the
//! limits are 400s naming the field, and concurrent requests (packed into shared passes)
//! get the vectors they would get alone.

mod common;

use base64::Engine as _;
use common::{Server, run, run_seed};
use serde_json::{Value, json};
use tokenfab_testkit::cosine;

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn server() -> Server {
    Server::start(&["--model", MINILM])
}

async fn embed(s: &Server, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(s.url("/v1/embeddings"))
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The ids `/v1/models?type=embedding` lists.
async fn embedding_models(s: &Server) -> Vec<String> {
    let models: Value = reqwest::get(s.url("/v1/models?type=embedding"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn the_openai_client_embeds_as_floats_and_as_base64() {
    let s = server();
    let v = run_seed(&s, "embeddings.py", MINILM);
    for key in ["cosine_float", "cosine_default"] {
        let c = v[key].as_f64().unwrap();
        assert!((c - 0.755).abs() < 0.005, "{key}: {v}");
    }
    assert!(
        v["same"].as_f64().unwrap() < 1e-6,
        "base64 decodes to the floats: {v}"
    );
    assert_eq!(v["dims"], 384);
    // [CLS] a man is eating food . [SEP] and [CLS] a man is eating a piece of bread . [SEP]
    assert_eq!(v["prompt_tokens"], 19);
    assert_eq!(v["total_tokens"], 19);
    assert_eq!(v["model"], MINILM);
}

#[test]
fn every_input_form_and_format() {
    let s = server();
    run(async {
        let (status, text) = embed(&s, &json!({"model": MINILM, "input": "Hello world"})).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(text["object"], "list");
        assert_eq!(text["data"][0]["object"], "embedding");
        assert_eq!(text["data"][0]["index"], 0);
        assert_eq!(text["usage"]["prompt_tokens"], 4);
        let want = floats(&text["data"][0]["embedding"]);
        assert_eq!(want.len(), 384);
        // The same text as its tokens ([CLS] hello world [SEP]), alone and in a list.
        for input in [
            json!([101, 7592, 2088, 102]),
            json!([[101, 7592, 2088, 102], [101, 102]]),
        ] {
            let (status, v) = embed(&s, &json!({"model": MINILM, "input": input})).await;
            assert_eq!(status, 200, "{v}");
            assert_eq!(floats(&v["data"][0]["embedding"]), want);
        }
        let (status, b64) = embed(
            &s,
            &json!({"model": MINILM, "input": ["Hello world"], "encoding_format": "base64",
                    "dimensions": 384}),
        )
        .await;
        assert_eq!(status, 200, "{b64}");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(decoded, want);
    });
}

#[test]
fn what_cannot_be_served_is_a_400_naming_it() {
    let s = server();
    run(async {
        let long = "word ".repeat(300);
        let cases = [
            (json!({"model": MINILM}), "input"),
            (json!({"model": MINILM, "input": ""}), "input"),
            (json!({"model": MINILM, "input": []}), "input"),
            (json!({"model": MINILM, "input": ["fine", ""]}), "input[1]"),
            (
                json!({"model": MINILM, "input": ["fine", long]}),
                "input[1]",
            ),
            (json!({"model": MINILM, "input": vec!["a"; 2049]}), "input"),
            (
                json!({"model": MINILM, "input": [[101, 40000, 102]]}),
                "input",
            ),
            (
                json!({"model": MINILM, "input": "x", "dimensions": 64}),
                "dimensions",
            ),
            (
                json!({"model": MINILM, "input": "x", "encoding_format": "int8"}),
                "encoding_format",
            ),
            (json!({"model": MINILM, "input": [1, "a"]}), "input"),
        ];
        for (body, param) in cases {
            let (status, v) = embed(&s, &body).await;
            assert_eq!(status, 400, "{body}: {v}");
            assert_eq!(v["error"]["param"], param, "{body}: {v}");
        }
        let (_, v) = embed(
            &s,
            &json!({"model": MINILM, "input": ["fine", "word ".repeat(300)]}),
        )
        .await;
        assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
        // The other endpoints name where the model is served.
        for path in ["/v1/chat/completions", "/v1/rerank"] {
            let r = reqwest::Client::new()
                .post(s.url(path))
                .json(&json!({"model": MINILM, "messages": [], "query": "q", "documents": []}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 400, "{path}");
            let v: Value = r.json().await.unwrap();
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("/v1/embeddings"),
                "{path}: {v}"
            );
        }
    });
}

/// Requests that arrive together are packed into the same passes; each still gets
/// exactly the vectors it gets alone (to float rounding of the kernels' blocking).
#[test]
fn concurrent_requests_get_their_own_vectors() {
    let s = server();
    run(async {
        let texts: Vec<String> = (0..12)
            .map(|i| format!("Sentence number {i} is {} long.", "very ".repeat(i)))
            .collect();
        let mut alone = Vec::new();
        for t in &texts {
            let (status, v) = embed(&s, &json!({"model": MINILM, "input": t})).await;
            assert_eq!(status, 200, "{v}");
            alone.push(floats(&v["data"][0]["embedding"]));
        }
        let bodies: Vec<Value> = texts
            .iter()
            .map(|t| json!({"model": MINILM, "input": [t, "a shared companion"]}))
            .collect();
        let together = futures_util::future::join_all(bodies.iter().map(|b| embed(&s, b))).await;
        for (i, (status, v)) in together.iter().enumerate() {
            assert_eq!(*status, 200, "{v}");
            let got = floats(&v["data"][0]["embedding"]);
            assert!(cosine(&got, &alone[i]) > 0.999_999, "request {i}");
            let diff = got
                .iter()
                .zip(&alone[i])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-5, "request {i}: {diff}");
        }
    });
}

const NOMIC: &str = "nomic-ai/nomic-embed-text-v1.5";

/// nomic-embed-text from the catalog (a GGUF encoder: `serve --model` finds its kind in
/// the file), with Matryoshka `dimensions`: the first components renormalized, any size up
/// to the width; past it a 400.
#[test]
fn nomic_embed_serves_matryoshka_dimensions() {
    let s = Server::start(&["--model", NOMIC]);
    run(async {
        let texts = [
            "search_query: What is TSNE?",
            "search_document: t-SNE is a dimensionality reduction technique for visualization.",
            "search_document: The bakery opens at seven and sells rye bread.",
        ];
        let (status, full) = embed(&s, &json!({"model": NOMIC, "input": texts})).await;
        assert_eq!(status, 200, "{full}");
        let full: Vec<Vec<f32>> = (0..3)
            .map(|i| floats(&full["data"][i]["embedding"]))
            .collect();
        assert_eq!(full[0].len(), 768);
        assert!(cosine(&full[0], &full[1]) > cosine(&full[0], &full[2]) + 0.1);
        for d in [512, 256, 64, 7] {
            let (status, cut) = embed(
                &s,
                &json!({"model": NOMIC, "input": texts, "dimensions": d}),
            )
            .await;
            assert_eq!(status, 200, "{cut}");
            for (i, whole) in full.iter().enumerate() {
                let got = floats(&cut["data"][i]["embedding"]);
                assert_eq!(got.len(), d);
                let norm = got.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                assert!((norm - 1.0).abs() < 1e-5, "{d}: norm {norm}");
                assert!(
                    cosine(&got, &whole[..d]) > 0.999_999,
                    "{d}: a scaled prefix"
                );
            }
        }
        for d in [0, 769] {
            let (status, v) =
                embed(&s, &json!({"model": NOMIC, "input": "x", "dimensions": d})).await;
            assert_eq!(
                (status, &v["error"]["param"]),
                (400, &json!("dimensions")),
                "{v}"
            );
        }
        assert_eq!(embedding_models(&s).await, [NOMIC]);
    });
}

/// A chat model declared `type = "embedding"` with `pooling = "last"` serves
/// `/v1/embeddings` from its final hidden states (the engine's own test compares them with
/// llama.cpp's); the same sentence gives the same vector alone and among others, and it
/// is listed as an embedding model, not a chat one.
#[test]
fn a_chat_model_declared_an_embedding_model_embeds() {
    let dir = tokenfab_testkit::temp_dir("decoder-embedder");
    let config = dir.join("tokenfab.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nid = \"qwen-embed\"\nsource = {:?}\ntype = \"embedding\"\npooling = \"last\"\n",
            common::cached("Qwen/Qwen2.5-Coder-0.5B-Instruct").display().to_string()
        ),
    )
    .unwrap();
    let s = Server::start(&["--config", config.to_str().unwrap()]);
    run(async {
        let texts = [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The stock market fell sharply today.",
        ];
        let (status, v) = embed(&s, &json!({"model": "qwen-embed", "input": texts})).await;
        assert_eq!(status, 200, "{v}");
        let all: Vec<Vec<f32>> = (0..3).map(|i| floats(&v["data"][i]["embedding"])).collect();
        assert_eq!(all[0].len(), 896);
        assert!(cosine(&all[0], &all[1]) > cosine(&all[0], &all[2]));
        let (_, alone) = embed(&s, &json!({"model": "qwen-embed", "input": texts[2]})).await;
        assert!(cosine(&floats(&alone["data"][0]["embedding"]), &all[2]) > 0.999_999);
        assert_eq!(embedding_models(&s).await, ["qwen-embed"]);
        let r = reqwest::Client::new()
            .post(s.url("/v1/chat/completions"))
            .json(&json!({"model": "qwen-embed", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
    });
}

/// Embedding settings on a model that does not embed stop the server at start rather than
/// being ignored.
#[test]
fn embedding_settings_on_a_chat_model_are_refused_at_start() {
    let dir = tokenfab_testkit::temp_dir("pooling-on-chat");
    let config = dir.join("tokenfab.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nid = \"chat\"\nsource = {:?}\npooling = \"last\"\n",
            common::cached(common::MODEL).display().to_string()
        ),
    )
    .unwrap();
    let db = tokenfab_testkit::temp_db("pooling-on-chat");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenfab"))
        .args(["serve", "--port", "0", "--config"])
        .arg(&config)
        .arg("--database")
        .arg(db.sqlite_url())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("`pooling`") && err.contains("embedding"),
        "{err}"
    );
}
