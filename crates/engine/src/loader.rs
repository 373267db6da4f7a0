//! Loading a model file into everything serving needs: weights, tokenizer, chat template.

use std::path::Path;
use std::sync::Arc;

use crate::error::EngineError;
use crate::gguf::GgufFile;
use crate::model::Model;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// A model ready to serve. The weights are shared with the engine thread; the tokenizer and
/// template are used by request handlers to turn conversations into prompt tokens.
pub struct LoadedModel {
    pub model: Arc<Model>,
    pub tokenizer: Arc<Tokenizer>,
    /// `None` when neither the file nor the operator provides a chat template: such a model
    /// can still complete raw text but chat requests get a clear error.
    pub template: Option<ChatTemplate>,
    /// The context window served: the model's own unless the operator lowered it.
    pub context_length: usize,
}

impl LoadedModel {
    /// Loads a GGUF file. `template_override` replaces the file's chat template;
    /// `max_context` caps the context window (memory grows with it).
    pub fn load(
        path: &Path,
        template_override: Option<&str>,
        max_context: Option<usize>,
    ) -> Result<Self, EngineError> {
        let gguf = GgufFile::open(path)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let mut model = Model::load(&gguf)?;
        let source = template_override
            .map(str::to_owned)
            .or_else(|| gguf.get_str("tokenizer.chat_template").map(str::to_owned));
        let token_str = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token_text(i))
                .unwrap_or("")
                .to_owned()
        };
        let template = source
            .map(|src| {
                ChatTemplate::new(
                    &src,
                    &token_str(tokenizer.bos_id()),
                    &token_str(tokenizer.eos_id()),
                )
            })
            .transpose()?;
        let context_length = max_context
            .map_or(model.config.context_length, |m| {
                m.min(model.config.context_length)
            })
            .max(1);
        model.config.context_length = context_length;
        Ok(LoadedModel {
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            template,
            context_length,
        })
    }
}
