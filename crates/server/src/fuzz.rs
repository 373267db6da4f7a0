//! The body of the `request` fuzz target in `fuzz/` (cargo-fuzz), kept here so that its
//! saved corpus and every crash found run as ordinary tests on stable:
//! `fuzz/corpus/request` and `fuzz/regressions/request` are replayed by this module's
//! test.
//!
//! A request body is untrusted: arbitrary bytes go, as the body of each endpoint that
//! reads one, through the code its handler runs up to what it would hand to an engine
//! (JSON parsing, [`crate::job`] for chat and completions with the chat template and the
//! tokenizer, the embeddings' and rerank's checks and tokenization, the admin API's
//! bodies). Every refusal must be a 4xx in the OpenAI error shape, and every accepted
//! request must fit the model's context. Nothing is generated: the engine's own inputs
//! are fuzzed by the engine's targets, and the whole server by schemathesis
//! (`scripts/schemathesis.sh`).

use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use tokenfab_engine::EngineError;
use tokenfab_engine::encoder::{self, Encoder, EncoderHandle};
use tokenfab_engine::loader::LoadedModel;
use tokenfab_engine::scheduler::{self, SchedulerConfig};
use tokenfab_platform::money::Money;
use tokenfab_wire::admin as wire;

use crate::error::HttpError;
use crate::job::{self, Job, completion};
use crate::routes::{body_value, embeddings, rerank, typed};
use crate::state::{Limits, ServedModel};

/// The models requests are checked against, loaded once per fuzzing process.
pub struct Fixture {
    chat: Arc<ServedModel>,
    encoder: EncoderHandle,
    limits: Limits,
}

impl Fixture {
    /// A chat model from the GGUF at `chat` and an encoder from `encoder` (a
    /// sentence-transformers folder or a GGUF). The chat model's engine is started, so
    /// that structured-output constraints compile against its vocabulary, but never sent
    /// a request.
    pub fn load(chat: &Path, encoder: &Path) -> Result<Fixture, EngineError> {
        let loaded = LoadedModel::load(chat, None, Some(2048))?;
        let engine = scheduler::start(
            loaded.model,
            loaded.tokenizer.clone(),
            loaded.reasoning,
            SchedulerConfig {
                threads: 1,
                ..SchedulerConfig::default()
            },
        )?;
        let chat = Arc::new(ServedModel {
            engine,
            tokenizer: loaded.tokenizer,
            template: loaded.template,
        });
        let encoder = encoder::start(Arc::new(Encoder::load(encoder)?), 1, 1)?;
        Ok(Fixture {
            chat,
            encoder,
            limits: Limits::default(),
        })
    }

    /// The fixture of the test models: `$TOKENFAB_TEST_MODEL` (a chat GGUF) and
    /// `$TOKENFAB_TEST_MINILM` (an embedding model), as scripts/test.sh and
    /// scripts/fuzz.sh set them.
    pub fn from_env() -> Fixture {
        let var = |name: &str| {
            std::env::var_os(name).unwrap_or_else(|| {
                panic!("{name} is not set: run scripts/test.sh or scripts/fuzz.sh")
            })
        };
        let (chat, encoder) = (var("TOKENFAB_TEST_MODEL"), var("TOKENFAB_TEST_MINILM"));
        Fixture::load(chat.as_ref(), encoder.as_ref())
            .unwrap_or_else(|e| panic!("fuzz fixture: {e}"))
    }
}

/// The endpoints a body may go to, by the input's first byte.
const ENDPOINTS: [&str; 7] = [
    "chat",
    "completions",
    "embeddings",
    "rerank",
    "admin/accounts",
    "admin/credit",
    "admin/keys",
];

/// `data`'s first byte picks the endpoint ([`ENDPOINTS`]); the rest is the body.
pub fn request(f: &Fixture, data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let endpoint = ENDPOINTS[usize::from(which) % ENDPOINTS.len()];
    if let Err(e) = checked(f, endpoint, body) {
        assert!(
            e.status.is_client_error(),
            "{endpoint}: a {} for a body: {:?}",
            e.status,
            e.body
        );
        assert!(
            !e.body.message.is_empty() && !e.body.kind.is_empty(),
            "{endpoint}: an error without a message or a type: {:?}",
            e.body
        );
    }
}

/// What the endpoint's handler makes of `body` before any work is done.
fn checked(f: &Fixture, endpoint: &str, body: &[u8]) -> Result<(), HttpError> {
    let body = body_value(Ok(Bytes::copy_from_slice(body)), f.limits.max_body_bytes)?;
    let model = "fuzz/model";
    match endpoint {
        "chat" => fits(f, &job::build(body, model, f.chat.clone(), &f.limits)?),
        "completions" => fits(
            f,
            &completion::build(body, model, f.chat.clone(), &f.limits)?.job,
        ),
        "embeddings" => {
            let p = embeddings::prepare(model, &f.encoder, body)?;
            let context = f.encoder.config().context_length;
            assert!(p.inputs.iter().all(|i| !i.is_empty() && i.len() <= context));
        }
        "rerank" => {
            let (_, documents, pairs) = rerank::prepare(&f.encoder, body)?;
            assert!(!documents.is_empty() && pairs.tokens <= embeddings::MAX_TOKENS);
        }
        "admin/accounts" => {
            typed::<wire::NewAccount>(body)?;
        }
        "admin/credit" => {
            let c: wire::Credit = typed(body)?;
            c.amount
                .parse::<Money>()
                .map_err(|e| HttpError::bad_request(Some("amount"), e.to_string()))?;
        }
        _ => {
            typed::<wire::NewKey>(body)?;
        }
    }
    Ok(())
}

/// An accepted job's prompts and their room to generate fit the model's context.
fn fits(f: &Fixture, job: &Job) {
    let context = f.chat.engine.context_length();
    assert!(!job.choices.is_empty() && !job.prompts.is_empty());
    assert_eq!(job.prompts.iter().sum::<usize>(), job.prompt_tokens);
    assert_eq!(job.choices.len() % job.prompts.len(), 0);
    for c in &job.choices {
        assert!(
            !c.prompt.is_empty() && c.prompt.len() + c.max_tokens <= context,
            "a prompt of {} tokens with room for {} in a context of {context}",
            c.prompt.len(),
            c.max_tokens
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every saved input: the seed corpus and the crashes found.
    #[test]
    fn request_corpus() {
        let f = Fixture::from_env();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join("request")) else {
                continue;
            };
            for e in entries {
                request(&f, &std::fs::read(e.unwrap().path()).unwrap());
                n += 1;
            }
        }
        assert!(n > 0, "no request corpus");
    }
}
