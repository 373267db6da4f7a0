//! Chat templates: a conversation becomes the exact prompt text the model was trained on.
//!
//! Templates are the Jinja sources that ship inside GGUF files (`tokenizer.chat_template`)
//! or come from the operator's config. They are written for Python's Jinja2 as Hugging Face
//! runs it (`trim_blocks` and `lstrip_blocks` on, Python string methods such as `.strip()`
//! available, `raise_exception` to refuse a conversation), so the environment here
//! reproduces those conditions with minijinja and its Python-compatibility callback.
//!
//! A template read from a GGUF file is code from whoever made the file. It runs with a fuel
//! budget (minijinja charges instructions and the bytes it creates), a recursion limit,
//! a cap on the prompt it writes and bounds on its walks over values (printing, comparing,
//! serializing: our patch to minijinja, vendor/README.md), on a stack of its own, so a loop
//! without end, output that doubles or a value that holds itself fails the request, or the
//! load, with an error in bounded time and memory.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Serde, WalkLimits, with_walk_limits};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;
use serde_json::{Map, Value};
use std::io::Write;

use crate::error::EngineError;

const TEMPLATE_NAME: &str = "chat";

/// Fuel for one render. The 46 reference templates spend at most about 1,900 rendering a
/// six-turn conversation with a tool call (Nemotron Nano v2's; see
/// `real_templates_fit_the_budget`), so this leaves room for conversations a thousand
/// times longer, while a runaway template stops within a second or two and about 64
/// bytes of data per fuel (the prompt itself is capped sooner, by [`MAX_OUTPUT`]).
///
/// A fuzz build (`cfg(fuzzing)`) gets a hundredth of this and of [`MAX_OUTPUT`]: the same
/// code reaches the same limits, without each runaway input spending a second of the
/// fuzzer's time (at full fuel such inputs held the template target to ~280 runs a second).
const FUEL: u64 = if cfg!(fuzzing) { 50_000 } else { 5_000_000 };
/// Real templates nest a few macro calls (a tool schema's depth); minijinja's default of
/// 500 frames is more than the stack of a request thread is sure to hold.
const RECURSION_LIMIT: usize = 100;
/// The longest prompt a template may write: far beyond any context window in tokens,
/// short of a memory problem.
pub const MAX_OUTPUT: usize = if cfg!(fuzzing) { 640 << 10 } else { 64 << 20 };

/// The deepest nesting of values a template may print, serialize, compare or hash
/// (minijinja's walks over values, bounded by our patch to it: vendor/README.md). A
/// request's JSON nests at most 128 deep (serde_json's limit), and templates add a few
/// levels of their own.
const MAX_WALK_DEPTH: usize = 1_000;
/// The stack a render runs on, reserved and touched only as deep as the render goes.
/// Dropping a value recurses through its nesting, which the walk limits do not bound:
/// a template nests as deep as its [`FUEL`] lets it, and the worst nestings measured
/// (`namespace(a=x)` or `x|batch(1)` in a loop until the fuel runs out) drop within
/// 128 MiB, so this leaves a factor of four. Mapping and unmapping it costs about 15 µs
/// a render (a render itself takes 3 to 6 µs).
const RENDER_STACK: usize = 512 << 20;
/// Why a render that went past the walk limits failed (its output means nothing).
const WALKED_TOO_FAR: &str = "it printed, compared or serialized a value nested or shared \
     beyond the limits (a namespace that holds itself, or a list doubled in a loop)";

/// Collects the rendered prompt and refuses to grow past [`MAX_OUTPUT`].
struct Bounded(Vec<u8>);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            return Err(std::io::Error::other("output limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether a render failed because the template used up its budget (fuel, output,
/// recursion) rather than because it refused the conversation: the former is the
/// template's fault whatever the conversation, and fails a load.
fn exhausted(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::OutOfFuel | ErrorKind::WriteFailure)
        || e.to_string().contains("recursion limit exceeded")
        || e.detail() == Some(WALKED_TOO_FAR)
}

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

/// Most operators (punctuation, `not`, `and`, `or`) one tag may hold, outside its string
/// literals. minijinja bounds the nesting of brackets and blocks, but not of a chain of
/// unary (`not not … x`) or binary (`1+1+…`) operators, whose tree its compiler and
/// renderer walk recursively: 20,000 of them overflow an 8 MiB stack and abort the
/// process. Real templates' busiest tags hold a few dozen; 1,000 leaves a tree a small
/// thread stack (tokio's blocking threads' 2 MiB) walks safely.
const MAX_TAG_OPERATORS: usize = 1_000;

/// Refuses a template whose tags chain more operators than [`MAX_TAG_OPERATORS`].
fn shallow(source: &str) -> Result<(), String> {
    let mut rest = source;
    while let Some(open) = rest.find(['{']) {
        rest = &rest[open + 1..];
        let close = match rest.as_bytes().first() {
            Some(b'{') => "}}",
            Some(b'%') => "%}",
            _ => continue,
        };
        let mut ops = 0;
        let mut quote: Option<char> = None;
        let mut escaped = false;
        let mut word = String::new();
        let mut end = rest.len();
        for (i, c) in rest.char_indices().skip(1) {
            if let Some(q) = quote {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    _ if c == q => quote = None,
                    _ => {}
                }
                continue;
            }
            if rest[i..].starts_with(close) {
                end = i + close.len();
                break;
            }
            if c.is_alphanumeric() || c == '_' {
                word.push(c);
                continue;
            }
            if matches!(word.as_str(), "not" | "and" | "or") {
                ops += 1;
            }
            word.clear();
            match c {
                '\'' | '"' => quote = Some(c),
                c if c.is_whitespace() => {}
                _ => ops += 1,
            }
        }
        if matches!(word.as_str(), "not" | "and" | "or") {
            ops += 1;
        }
        if ops > MAX_TAG_OPERATORS {
            return Err(format!(
                "the chat template has a tag of {ops} operators (at most {MAX_TAG_OPERATORS}): nested this deeply it could exhaust the stack"
            ));
        }
        rest = &rest[end.min(rest.len())..];
    }
    Ok(())
}

impl ChatTemplate {
    /// Compiles a template source. `bos_token`/`eos_token` are the vocabulary's strings,
    /// which many templates print literally.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, EngineError> {
        shallow(source).map_err(EngineError::Template)?;
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| EngineError::Template(format!("chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| {
                EngineError::Template(format!("the chat template does not compile: {e}"))
            })?;
        let template = ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        };
        // A template that exhausts its budget on a one-line conversation would fail every
        // request: refuse it now, while the operator is watching the load. Any other
        // refusal (a template that wants a system message first) is the conversation's.
        let probe = [TemplateMessage {
            role: "user".into(),
            content: "Hello".into(),
            extra: Map::new(),
        }];
        match template.render_raw(&probe, true, &Map::new()) {
            Err(e) if exhausted(&e) => Err(EngineError::Template(format!(
                "the chat template cannot render even a one-line conversation: {}",
                describe(&e)
            ))),
            _ => Ok(template),
        }
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
        self.render_raw(messages, add_generation_prompt, extra)
            .map_err(|e| {
                let verb = match exhausted(&e) {
                    true => "failed on",
                    false => "refused",
                };
                EngineError::Template(format!(
                    "the chat template {verb} the conversation: {}",
                    describe(&e)
                ))
            })
    }

    fn render_raw(
        &self,
        messages: &[TemplateMessage],
        add_generation_prompt: bool,
        extra: &Map<String, Value>,
    ) -> Result<String, Error> {
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
        let tmpl = self.env.get_template(TEMPLATE_NAME)?;
        let mut out = Bounded(Vec::new());
        let walks = WalkLimits {
            max_depth: MAX_WALK_DEPTH,
            max_steps: FUEL,
        };
        let (rendered, walked_too_far) = with_walk_limits(walks, || {
            stacker::grow(RENDER_STACK, || {
                tmpl.render_captured_to(Serde(&ctx), &mut out).map(drop)
            })
        });
        if walked_too_far {
            return Err(Error::new(ErrorKind::InvalidOperation, WALKED_TOO_FAR));
        }
        rendered?;
        // minijinja writes whole `str`s, so the bytes are UTF-8.
        String::from_utf8(out.0)
            .map_err(|_| Error::new(ErrorKind::InvalidOperation, "output is not UTF-8"))
    }
}

/// An error in the user's terms: the budget that ran out, or the template's own words
/// (`raise_exception` messages are the template author's words to the user).
fn describe(e: &Error) -> String {
    match e.kind() {
        ErrorKind::OutOfFuel => format!(
            "it ran out of its budget of {FUEL} steps (an endless loop, or output that grows \
             without bound)"
        ),
        ErrorKind::WriteFailure => format!("its output exceeds {MAX_OUTPUT} bytes"),
        _ => e
            .detail()
            .map(str::to_owned)
            .unwrap_or_else(|| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_chains_too_deep_for_the_stack_are_refused() {
        // Found by the template fuzz target: these overflowed the stack and aborted.
        for src in [
            format!("{{{{ {}1 }}}}", "not ".repeat(20_000)),
            format!("{{{{ {}1 }}}}", "-".repeat(20_000)),
            format!("{{{{ 1{} }}}}", "+1".repeat(20_000)),
            format!("{{% set x = 1{} %}}", " and 1".repeat(20_000)),
        ] {
            let e = ChatTemplate::new(&src, "<s>", "</s>").expect_err("refused");
            assert!(e.to_string().contains("operators"), "{e}");
        }
        // Operators inside string literals are text, and a chain within the bound renders
        // on a small stack.
        let quoted = format!("{{{{ '{}' }}}}", "+".repeat(5_000));
        assert!(ChatTemplate::new(&quoted, "<s>", "</s>").is_ok());
        let chain = format!("{{{{ 1{} }}}}", "+1".repeat(400));
        let t = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let t = ChatTemplate::new(&chain, "<s>", "</s>").unwrap();
                t.render(&[], false, &Map::new()).unwrap()
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(t.trim(), "401");
    }

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

    /// Hostile templates: each must fail, at load or per request, with an error naming the
    /// budget it broke, and quickly.
    #[test]
    fn runaway_templates_fail_in_bounded_time() {
        let load = |src: &str| {
            let start = std::time::Instant::now();
            let err = ChatTemplate::new(src, "", "").unwrap_err().to_string();
            assert!(
                start.elapsed().as_secs() < 20,
                "{src}: {:?}",
                start.elapsed()
            );
            err
        };
        let endless =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        assert!(load(endless).contains("budget"));
        let doubling = "{% set s = namespace(v='x') %}{% for i in range(64) %}{% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v }}";
        assert!(load(doubling).contains("budget"));
        let huge = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}";
        assert!(load(huge).contains("exceeds"));
        let recursive = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        assert!(load(recursive).contains("recursion"));
        // Harmless on the probe, runaway on a long message: the request fails, not the load.
        let per_char = "{% for m in messages %}{% for c in m.content %}{% for j in range(100000) %}{% endfor %}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(per_char, "", "").unwrap();
        let err = t
            .render(&[msg("user", &"a".repeat(1000))], true, &Map::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("failed on the conversation") && err.contains("budget"),
            "{err}"
        );
    }

    /// Values whose walks never end (a namespace holding itself), take exponential time (a
    /// list doubled in a loop: shared 2^40 ways, a few hundred bytes in memory) or nest a
    /// million deep: printed, serialized, compared or hashed, or only dropped, each took
    /// the process down (stack overflow) or hung it and filled memory before minijinja's
    /// walks were bounded. Each must fail its load with the limit it broke, and a
    /// conversation that triggers one fails its request.
    #[test]
    fn values_that_walk_forever_or_nest_deep_fail_the_render_not_the_process() {
        // Each setup makes two equal but distinct values, `ns` and `other`.
        let cyclic = "{% set ns = namespace() %}{% set ns.me = ns %}{% set other = namespace() %}{% set other.me = other %}";
        let shared = "{% set ns = namespace(x=[1]) %}{% set other = namespace(x=[1]) %}{% for i in range(40) %}{% set ns.x = [ns.x, ns.x] %}{% set other.x = [other.x, other.x] %}{% endfor %}";
        for setup in [cyclic, shared] {
            for walk in [
                "{{ ns }}",
                "{{ ns|tojson }}",
                "{{ ns ~ '' }}",
                "{{ ns|string }}",
                "{{ ns|pprint }}",
                "{{ [ns]|join(',') }}",
                "{{ ns == other }}",
                "{{ ns in [other] }}",
                "{{ [ns, other]|unique|list|length }}",
                "{{ {ns: 1}|length }}",
            ] {
                let src = format!("{setup}{walk}");
                let Err(err) = ChatTemplate::new(&src, "", "") else {
                    panic!("{src} loads");
                };
                let err = err.to_string();
                assert!(
                    err.contains("cannot render") && err.contains("beyond the limits"),
                    "{src}: {err}"
                );
            }
        }
        // A million levels of nesting that nothing walks: dropping it recursed off the
        // stack. Now the fuel runs out first, and the nest drops on the render's stack.
        let batches = "|batch(1)".repeat(100);
        let deep = format!(
            "{{% set ns = namespace(x=[1]) %}}{{% for i in range(100000) %}}{{% set ns.x = ns.x{batches} %}}{{% endfor %}}"
        );
        let err = ChatTemplate::new(&deep, "", "").unwrap_err().to_string();
        assert!(err.contains("budget"), "{err}");
        // `x + x` copies the list whole once its lazy chain is deep: 2^40 items.
        let doubled = "{% set ns = namespace(x=[1]) %}{% for i in range(40) %}{% set ns.x = ns.x + ns.x %}{% endfor %}";
        let err = ChatTemplate::new(doubled, "", "").unwrap_err().to_string();
        assert!(err.contains("budget"), "{err}");
        // Harmless on the probe, triggered by a message: the request fails, not the load.
        let trigger = format!(
            "{cyclic}{{% for m in messages %}}{{% if m.content == 'boom' %}}{{{{ ns }}}}{{% endif %}}{{% endfor %}}ok"
        );
        let t = ChatTemplate::new(&trigger, "", "").unwrap();
        assert_eq!(
            t.render(&[msg("user", "hi")], true, &Map::new()).unwrap(),
            "ok"
        );
        let err = t
            .render(&[msg("user", "boom")], true, &Map::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed on the conversation"), "{err}");
    }

    /// Every reference template, rendering a conversation with a tool call, spends under a
    /// thousandth of [`FUEL`].
    #[test]
    fn real_templates_fit_the_budget() {
        let tools: Value = serde_json::from_str(r#"[{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}, "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}}]"#).unwrap();
        let mut extra = Map::new();
        extra.insert("tools".into(), tools);
        let mut call = msg("assistant", "");
        call.extra.insert(
            "tool_calls".into(),
            serde_json::json!([{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]),
        );
        let conversation = [
            msg("system", "You are helpful."),
            msg("user", &"What is the weather in Paris? ".repeat(200)),
            call,
            msg("tool", "{\"temp\": 21}"),
            msg("assistant", "It is 21 degrees."),
            msg("user", "Thanks"),
        ];
        let ctx = |t: &ChatTemplate| {
            let mut ctx = extra.clone();
            ctx.insert(
                "messages".into(),
                serde_json::to_value(&conversation).unwrap(),
            );
            ctx.insert("add_generation_prompt".into(), Value::Bool(true));
            ctx.insert("bos_token".into(), t.bos_token.clone().into());
            ctx.insert("eos_token".into(), t.eos_token.clone().into());
            ctx
        };
        let dir = crate::test_assets_dir().join("templates");
        let (mut most, mut rendered) = ((0, String::new()), 0);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let Ok(t) = ChatTemplate::new(&std::fs::read_to_string(&path).unwrap(), "<s>", "</s>")
            else {
                continue;
            };
            let tmpl = t.env.get_template(TEMPLATE_NAME).unwrap();
            let Ok(captured) = tmpl.render_captured(Serde(&ctx(&t))) else {
                continue;
            };
            rendered += 1;
            let (used, _) = captured.state().fuel_levels().unwrap();
            if used > most.0 {
                most = (used, name);
            }
        }
        eprintln!(
            "{rendered} templates rendered; the most fuel: {} ({})",
            most.0, most.1
        );
        assert!(rendered > 20, "only {rendered} templates rendered");
        assert!(most.0 * 1000 <= FUEL, "{} spends {} fuel", most.1, most.0);
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
