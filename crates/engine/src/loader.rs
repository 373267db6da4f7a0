//! Loading a model file into everything serving needs: weights, tokenizer, chat template.

use std::path::Path;
use std::sync::Arc;

use crate::error::EngineError;
use crate::gguf::GgufFile;
use crate::model::Model;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use tokenfab_text::reasoning::ThinkTags;

/// SiliconFlow's default `thinking_budget`.
pub const DEFAULT_THINKING_BUDGET: usize = 4096;

/// How a model thinks, for models that do: what the engine needs to split the thought from
/// the answer and to close a thought when its budget is spent. The engine owns it (the
/// scheduler applies it to every sequence); a request carries only its own budget, and
/// the switch that turns thinking off goes to the chat template.
#[derive(Debug, Clone)]
pub struct ReasoningSpec {
    pub tags: ThinkTags,
    /// The chat template reads `enable_thinking` (Qwen3's switch), so thinking can be
    /// turned off per request.
    pub switchable: bool,
    /// The tokens the engine appends itself to close the thought ("\n" + end tag + "\n\n",
    /// as the model would write it).
    pub close_tokens: Vec<u32>,
    /// The start tag's tokens: a constrained answer lets the model write them first (one
    /// token in Qwen3's vocabulary, several in a model that learned the tags from a prompt).
    pub open_tokens: Vec<u32>,
    /// Reasoning tokens a request may spend when it names no budget of its own.
    pub budget: usize,
}

impl ReasoningSpec {
    /// `enabled`: the operator's word (config `reasoning = true|false`); `None` detects it
    /// from the template, which mentions the think tags exactly when the model family
    /// thinks (Qwen3, DeepSeek-R1 and its distills, QwQ); models that learned to think
    /// from a prompt (a worked example) need `reasoning = true`.
    pub fn configure(
        template: Option<&ChatTemplate>,
        tokenizer: &Tokenizer,
        enabled: Option<bool>,
        tags: ThinkTags,
    ) -> Option<ReasoningSpec> {
        let source = template.map(ChatTemplate::source).unwrap_or("");
        let detected = source.contains(tags.start.as_str()) || source.contains(tags.end.as_str());
        if !enabled.unwrap_or(detected) {
            return None;
        }
        let close_tokens = tokenizer.encode(&format!("\n{}\n\n", tags.end), false, true);
        let open_tokens = tokenizer.encode(&tags.start, false, true);
        Some(ReasoningSpec {
            switchable: source.contains("enable_thinking"),
            close_tokens,
            open_tokens,
            tags,
            budget: DEFAULT_THINKING_BUDGET,
        })
    }

    /// The smallest budget the engine can keep: one token of thought and the tag it
    /// appends to close it. A smaller budget would be overrun by the tag itself.
    pub fn min_budget(&self) -> usize {
        self.close_tokens.len() + 1
    }

    /// Whether `prompt` ends inside an opened thought (R1 distills' templates end with
    /// `<think>\n`): generation then starts in the thought.
    pub fn opens_thought(&self, tokenizer: &Tokenizer, prompt: &[u32]) -> bool {
        // A tag and the whitespace after it take a handful of tokens.
        let tail = &prompt[prompt.len().saturating_sub(64)..];
        tokenizer
            .decode(tail, false)
            .trim_end()
            .ends_with(self.tags.start.as_str())
    }
}

/// A model ready to serve. The weights are shared with the engine thread; the tokenizer and
/// template are used by request handlers to turn conversations into prompt tokens.
pub struct LoadedModel {
    pub model: Arc<Model>,
    pub tokenizer: Arc<Tokenizer>,
    /// `None` when neither the file nor the operator provides a chat template: such a model
    /// can still complete raw text but chat requests get a clear error.
    pub template: Option<ChatTemplate>,
    /// `Some` for reasoning models (detected from the template; see
    /// [`LoadedModel::set_reasoning`] for the operator's override).
    pub reasoning: Option<ReasoningSpec>,
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
        let reasoning =
            ReasoningSpec::configure(template.as_ref(), &tokenizer, None, ThinkTags::default());
        Ok(LoadedModel {
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            template,
            reasoning,
        })
    }

    /// The context window served: the model's own unless the operator lowered it.
    pub fn context_length(&self) -> usize {
        self.model.config.context_length
    }

    /// Applies the operator's reasoning settings: `enabled` overrides detection, `tags`
    /// replaces `<think>`/`</think>`, `budget` the default thinking budget (held to
    /// [`ReasoningSpec::min_budget`] at least).
    pub fn set_reasoning(
        &mut self,
        enabled: Option<bool>,
        tags: Option<ThinkTags>,
        budget: Option<usize>,
    ) {
        self.reasoning = ReasoningSpec::configure(
            self.template.as_ref(),
            &self.tokenizer,
            enabled,
            tags.unwrap_or_default(),
        )
        .map(|spec| ReasoningSpec {
            budget: budget.map_or(spec.budget, |b| b.max(spec.min_budget())),
            ..spec
        });
    }
}
