//! Chat templates: a conversation becomes the exact prompt text the model was trained on.
//!
//! Templates are the Jinja sources that ship inside GGUF files (`tokenizer.chat_template`)
//! or come from the operator's config. They are written for Python's Jinja2 as Hugging Face
//! runs it (`trim_blocks` and `lstrip_blocks` on, Python string methods such as `.strip()`
//! available, `raise_exception` to refuse a conversation), so the environment here
//! reproduces those conditions with minijinja and its Python-compatibility callback.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::EngineError;

const TEMPLATE_NAME: &str = "chat";

/// One turn handed to a template. Roles and content are already normalised by the caller
/// (content parts joined into one string); extra keys such as `reasoning_content` or
/// `tool_calls` are passed through for templates that use them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A compiled chat template plus the special-token strings templates refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// Templates such as Llama 3's print today's date; `strftime_now("%d %b %Y")` is all they
/// use, so a small formatter over the UTC date is enough.
fn strftime_now(format: String) -> String {
    let secs = tokenfab_wire::time::unix_now();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const FULL: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('b') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('B') => out.push_str(FULL[(m - 1) as usize]),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's civil calendar algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl ChatTemplate {
    /// Compiles a template source. `bos_token`/`eos_token` are the vocabulary's strings,
    /// which many templates print literally.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, EngineError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| EngineError::Template(format!("chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| {
                EngineError::Template(format!("the chat template does not compile: {e}"))
            })?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The Jinja source, for feature detection (think tags, an `enable_thinking` switch).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation. `extra` holds request-level variables (`tools`,
    /// `chat_template_kwargs` such as `enable_thinking`) that override nothing built in.
    pub fn render(
        &self,
        messages: &[TemplateMessage],
        add_generation_prompt: bool,
        extra: &Map<String, Value>,
    ) -> Result<String, EngineError> {
        let mut ctx = Map::new();
        for (k, v) in extra {
            ctx.insert(k.clone(), v.clone());
        }
        ctx.insert(
            "messages".into(),
            serde_json::to_value(messages).unwrap_or_default(),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Value::Bool(add_generation_prompt),
        );
        ctx.insert("bos_token".into(), Value::String(self.bos_token.clone()));
        ctx.insert("eos_token".into(), Value::String(self.eos_token.clone()));
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        tmpl.render(Serde(&ctx)).map_err(|e| {
            // raise_exception messages are the template author's words to the user.
            let detail = e
                .detail()
                .map(str::to_owned)
                .unwrap_or_else(|| e.to_string());
            EngineError::Template(format!(
                "the chat template refused the conversation: {detail}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage {
            role: role.into(),
            content: content.into(),
            extra: Map::new(),
        }
    }

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_multi_turn() {
        let t = ChatTemplate::new(CHATML, "<s>", "</s>").unwrap();
        let out = t
            .render(
                &[
                    msg("user", "hi"),
                    msg("assistant", "yo"),
                    msg("user", "继续"),
                ],
                true,
                &Map::new(),
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\n继续<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_trim_blocks() {
        let src = "{% for m in messages %}\n  {{ m.content.strip().upper() }}|{% if m.content.startswith(' a') %}A{% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        // As Jinja2 with trim_blocks + lstrip_blocks: the newline after each block tag goes,
        // the indentation before a `{{ }}` stays.
        assert_eq!(
            t.render(&[msg("user", " abc ")], false, &Map::new())
                .unwrap(),
            "  ABC|A"
        );
    }

    #[test]
    fn raise_exception_becomes_a_template_error() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let err = t
            .render(&[msg("system", "x")], true, &Map::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("Conversation must start with user"), "{err}");
    }

    #[test]
    fn kwargs_reach_the_template() {
        let src =
            "{% if enable_thinking is defined and not enable_thinking %}off{% else %}on{% endif %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let mut kw = Map::new();
        kw.insert("enable_thinking".into(), Value::Bool(false));
        assert_eq!(t.render(&[], true, &kw).unwrap(), "off");
        assert_eq!(t.render(&[], true, &Map::new()).unwrap(), "on");
    }

    #[test]
    fn bad_template_is_refused() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }

    #[test]
    fn date_formatting() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(strftime_now("%%x".into()).len(), 3);
    }

    /// The real reference templates llama.cpp ships must compile and render a seed
    /// conversation (assets fetched by scripts/fetch-test-assets.sh).
    #[test]
    fn reference_templates_render() {
        let dir = crate::test_assets_dir().join("templates");
        for name in [
            "Qwen-Qwen2.5-7B-Instruct.jinja",
            "Qwen-Qwen3-0.6B.jinja",
            "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
            "HuggingFaceTB-SmolLM3-3B.jinja",
            "meta-llama-Llama-3.1-8B-Instruct.jinja",
        ] {
            let src = std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}; run scripts/fetch-test-assets.sh"));
            let t = ChatTemplate::new(&src, "<s>", "</s>").unwrap();
            let out = t
                .render(
                    &[msg("system", "S"), msg("user", "奥运会的传奇名将有哪些?")],
                    true,
                    &Map::new(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(out.contains("奥运会的传奇名将有哪些?"), "{name}: {out}");
        }
    }
}
