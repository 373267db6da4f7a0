//! Facts about reasoning ("thinking") models that the server's reasoning support relies on:
//! how DeepSeek-R1's vocabulary treats `<think>` / `</think>`, what R1's and Qwen3's chat
//! templates put at the end of a prompt, and how they treat earlier thoughts. Each assertion
//! states what the real files do today, so that a change in the tokenizer, the template
//! engine or the assets is noticed.
//!
//! Assets come from `scripts/fetch-test-assets.sh` (llama.cpp's reference templates and the
//! first 95 MB of DeepSeek-R1-Distill-Qwen-7B Q4_K_M: complete GGUF header, truncated tensor
//! data) plus the SmolLM2 test model. A missing asset is a failure, not a skip.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};
use tokenfab_engine::gguf::GgufFile;
use tokenfab_engine::loader::LoadedModel;
use tokenfab_engine::template::{ChatTemplate, TemplateMessage};
use tokenfab_engine::tokenizer::Tokenizer;

mod common;
use common::{asset, smollm_path};

const THINK: u32 = 151648;
const END_THINK: u32 = 151649;
/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

const OLYMPICS: &str = "奥运会的传奇名将有哪些?";

fn r1_head_path() -> PathBuf {
    asset("deepseek-r1-distill-qwen-7b-head.gguf")
}

fn read_template(name: &str) -> String {
    let p = asset(&format!("templates/{name}"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// R1's GGUF header, opened despite the truncated tensor data.
///
/// `GgufFile::open` checks that every tensor's data lies inside the file and refuses this
/// one, and there is no header-only reader. A GGUF file starts with magic, version, tensor
/// count (u64 at bytes 8..16) and metadata count, then the metadata, then the tensor
/// directory; so a copy with the tensor count set to 0 is a valid GGUF with the same
/// metadata whose tensor directory and data are ignored trailing bytes. The copy is deleted
/// once mapped (the mapping stays valid).
struct R1Header {
    gguf: GgufFile,
    tok: Tokenizer,
}

fn r1_header() -> &'static R1Header {
    static HEADER: OnceLock<R1Header> = OnceLock::new();
    HEADER.get_or_init(|| {
        let src = r1_head_path();
        let mut bytes =
            std::fs::read(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        assert_eq!(&bytes[..4], b"GGUF", "{} is not GGUF", src.display());
        let n_tensors = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
        assert_eq!(n_tensors, 339, "the 7B Q4_K_M file lists 339 tensors");
        bytes[8..16].fill(0);
        let tmp = tokenfab_testkit::temp_path("r1-header", "gguf");
        std::fs::write(&tmp, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        let gguf = GgufFile::open(&tmp);
        drop(tmp);
        let gguf = gguf.unwrap_or_else(|e| panic!("open R1 header copy: {e}"));
        let tok = Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("R1 tokenizer: {e}"));
        R1Header { gguf, tok }
    })
}

fn token_type(g: &GgufFile, id: u32) -> i64 {
    g.get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
        .and_then(|a| a.get(id as usize))
        .and_then(|v| v.as_i64())
        .unwrap_or_else(|| panic!("no token_type for {id}"))
}

fn msg(role: &str, content: &str) -> TemplateMessage {
    TemplateMessage {
        role: role.into(),
        content: content.into(),
        extra: Map::new(),
    }
}

fn msg_with(role: &str, content: &str, extra: Value) -> TemplateMessage {
    TemplateMessage {
        role: role.into(),
        content: content.into(),
        extra: extra.as_object().cloned().unwrap(),
    }
}

fn kwargs(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

/// R1's template from the GGUF header, with the vocabulary's BOS/EOS texts as the loader
/// passes them.
fn r1_gguf_template() -> (String, ChatTemplate) {
    let h = r1_header();
    let src = h
        .gguf
        .get_str("tokenizer.chat_template")
        .expect("R1 GGUF has tokenizer.chat_template")
        .to_owned();
    let t = ChatTemplate::new(&src, &r1_bos(), &r1_eos()).unwrap();
    (src, t)
}

fn r1_bos() -> String {
    let h = r1_header();
    h.tok
        .token_text(h.tok.bos_id().unwrap())
        .unwrap()
        .to_owned()
}

fn r1_eos() -> String {
    let h = r1_header();
    h.tok
        .token_text(h.tok.eos_id().unwrap())
        .unwrap()
        .to_owned()
}

/// llama.cpp's copy of DeepSeek-R1-Distill-Qwen-32B's template (a later revision than the
/// 7B GGUF's, edited by llama.cpp to honour `enable_thinking`).
fn r1_file_template() -> (String, ChatTemplate) {
    let src = read_template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja");
    let t = ChatTemplate::new(&src, &r1_bos(), &r1_eos()).unwrap();
    (src, t)
}

fn qwen3_template() -> (String, ChatTemplate) {
    let src = read_template("Qwen-Qwen3-0.6B.jinja");
    let t = ChatTemplate::new(&src, "", "<|im_end|>").unwrap();
    (src, t)
}

// ---------------------------------------------------------------------------------------
// DeepSeek-R1 tokenizer

/// `<think>` = 151648 and `</think>` = 151649 have token type 4 (USER_DEFINED), not 3
/// (CONTROL) like `<｜Assistant｜>` / `<｜end▁of▁sentence｜>`. Consequences asserted here:
/// - `token_bytes` returns the tag text itself (b"<think>", b"</think>"), while control
///   tokens give empty bytes; so streaming output contains the tags, and the reasoning
///   splitter sees them in the text. (If a future GGUF marks them CONTROL, token_bytes
///   becomes empty and the server must feed `token_text` to the splitter instead — these
///   assertions then fail to say so.)
/// - `decode(.., skip_special = true)` keeps them;
/// - user-defined tokens are matched even with `parse_special = false`, as in llama.cpp;
/// - neither ends generation (`is_eog` false).
#[test]
fn r1_think_tokens() {
    let h = r1_header();
    let tok = &h.tok;
    assert_eq!(tok.token_id("<think>"), Some(THINK));
    assert_eq!(tok.token_id("</think>"), Some(END_THINK));
    assert_eq!(tok.token_text(THINK), Some("<think>"));
    assert_eq!(tok.token_text(END_THINK), Some("</think>"));

    assert_eq!(token_type(&h.gguf, THINK), TYPE_USER_DEFINED);
    assert_eq!(token_type(&h.gguf, END_THINK), TYPE_USER_DEFINED);
    assert_eq!(tok.token_bytes(THINK), b"<think>");
    assert_eq!(tok.token_bytes(END_THINK), b"</think>");
    assert!(!tok.is_eog(THINK) && !tok.is_eog(END_THINK));

    // For contrast, the chat-role tokens are CONTROL with no bytes.
    let assistant = tok.token_id("<｜Assistant｜>").unwrap();
    assert_eq!(assistant, 151645);
    assert_eq!(token_type(&h.gguf, assistant), TYPE_CONTROL);
    assert_eq!(tok.token_bytes(assistant), b"");
    assert_eq!(tok.bos_id(), Some(151646));
    assert_eq!(tok.eos_id(), Some(151643));
    assert_eq!(r1_bos(), "<｜begin▁of▁sentence｜>");
    assert_eq!(r1_eos(), "<｜end▁of▁sentence｜>");
    assert!(tok.is_eog(151643));

    let text = "<think>\nhi\n</think>\n\nok";
    let ids = tok.encode(text, false, true);
    assert_eq!(ids, [THINK, 198, 6023, 198, END_THINK, 271, 562]);
    assert_eq!(
        ids.iter().filter(|&&i| i == THINK).count(),
        1,
        "<think> is one token: {ids:?}"
    );
    assert_eq!(
        ids.iter().filter(|&&i| i == END_THINK).count(),
        1,
        "</think> is one token: {ids:?}"
    );
    assert_eq!(tok.encode(text, false, false), ids);
    assert_eq!(tok.decode(&ids, true), text);
    assert_eq!(tok.decode(&ids, false), text);
    let streamed: Vec<u8> = ids
        .iter()
        .flat_map(|&i| tok.token_bytes(i).to_vec())
        .collect();
    assert_eq!(streamed, text.as_bytes());
}

#[test]
fn r1_truncated_file_is_refused_by_the_loader() {
    let path = r1_head_path();
    let err = match LoadedModel::load(&path, None, None) {
        Ok(_) => panic!("a GGUF with truncated tensor data loaded"),
        Err(e) => e.to_string(),
    };
    println!("LoadedModel::load error: {err}");
    assert!(err.contains("truncated"), "{err}");
    assert!(
        err.contains("deepseek-r1-distill-qwen-7b-head.gguf"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// DeepSeek-R1 chat templates

/// The 7B GGUF carries R1's original template: the generation prompt is `<｜Assistant｜>`
/// alone, the model itself then emits `<think>` (the thought is NOT opened in the prompt).
#[test]
fn r1_gguf_template_generation_prompt() {
    let (_, t) = r1_gguf_template();
    let out = t
        .render(&[msg("user", OLYMPICS)], true, &Map::new())
        .unwrap();
    println!("R1 GGUF template: {out:?}");
    assert_eq!(
        out,
        "<｜begin▁of▁sentence｜><｜User｜>奥运会的传奇名将有哪些?<｜Assistant｜>"
    );
    // enable_thinking means nothing to it.
    let out2 = t
        .render(
            &[msg("user", OLYMPICS)],
            true,
            &kwargs(json!({"enable_thinking": false})),
        )
        .unwrap();
    assert_eq!(out2, out);
}

/// llama.cpp's R1-Distill-Qwen-32B template is the later revision that opens the thought in
/// the prompt (`<｜Assistant｜><think>\n`), edited to honour `enable_thinking`: unless
/// `enable_thinking` is truthy it also closes it at once (`{% if not enable_thinking %}`), so
/// its default rendering (variable undefined) ends `<think>\n</think>`.
#[test]
fn r1_file_template_generation_prompt() {
    let (_, t) = r1_file_template();
    let prefix = "<｜begin▁of▁sentence｜><｜User｜>奥运会的传奇名将有哪些?";

    let thinking = t
        .render(
            &[msg("user", OLYMPICS)],
            true,
            &kwargs(json!({"enable_thinking": true})),
        )
        .unwrap();
    println!("R1 file template, enable_thinking=true: {thinking:?}");
    assert_eq!(thinking, format!("{prefix}<｜Assistant｜><think>\n"));
    assert!(thinking.ends_with("<｜Assistant｜><think>\n"));

    let default = t
        .render(&[msg("user", OLYMPICS)], true, &Map::new())
        .unwrap();
    println!("R1 file template, default: {default:?}");
    assert_eq!(default, format!("{prefix}<｜Assistant｜><think>\n</think>"));

    let off = t
        .render(
            &[msg("user", OLYMPICS)],
            true,
            &kwargs(json!({"enable_thinking": false})),
        )
        .unwrap();
    assert_eq!(off, default);
}

fn r1_multi_turn_checks(t: &ChatTemplate, which: &str) {
    let conv = [
        msg("user", "q1"),
        msg("assistant", "<think>\nreasoning\n</think>\n\nanswer"),
        msg("user", "q2"),
    ];
    let out = t.render(&conv, false, &Map::new()).unwrap();
    println!("R1 {which} multi-turn: {out:?}");
    assert!(!out.contains("reasoning"), "{which}: {out}");
    assert!(!out.contains("<think>"), "{which}: {out}");
    assert!(out.contains("answer"), "{which}: {out}");
    // Only the text after `</think>` is kept, leading newlines included.
    assert_eq!(
        out,
        "<｜begin▁of▁sentence｜><｜User｜>q1<｜Assistant｜>\n\nanswer<｜end▁of▁sentence｜><｜User｜>q2"
    );

    // A reasoning_content key is accepted (and ignored: R1's templates never read it).
    let with_rc = [
        msg("user", "q1"),
        msg_with(
            "assistant",
            "answer",
            json!({"reasoning_content": "reasoning"}),
        ),
        msg("user", "q2"),
    ];
    let out2 = t.render(&with_rc, false, &Map::new()).unwrap();
    assert_eq!(
        out2,
        "<｜begin▁of▁sentence｜><｜User｜>q1<｜Assistant｜>answer<｜end▁of▁sentence｜><｜User｜>q2",
        "{which}"
    );
}

#[test]
fn r1_templates_strip_earlier_thoughts() {
    r1_multi_turn_checks(&r1_gguf_template().1, "GGUF template");
    r1_multi_turn_checks(&r1_file_template().1, "file template");
}

// ---------------------------------------------------------------------------------------
// Qwen3 chat template

#[test]
fn qwen3_generation_prompt() {
    let (_, t) = qwen3_template();
    let conv = [msg("user", OLYMPICS)];

    let default = t.render(&conv, true, &Map::new()).unwrap();
    println!("Qwen3 default: {default:?}");
    assert_eq!(
        default,
        "<|im_start|>user\n奥运会的传奇名将有哪些?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(!default.contains("<think>"));

    let off = t
        .render(&conv, true, &kwargs(json!({"enable_thinking": false})))
        .unwrap();
    println!("Qwen3 enable_thinking=false: {off:?}");
    assert!(off.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    assert_eq!(off, format!("{default}<think>\n\n</think>\n\n"));

    // enable_thinking=true is the default behaviour.
    let on = t
        .render(&conv, true, &kwargs(json!({"enable_thinking": true})))
        .unwrap();
    assert_eq!(on, default);
}

/// Qwen3 keeps a thought only for assistant turns after the last user query: such a turn
/// with `reasoning_content` is rendered `<think>\nR\n</think>\n\n` + content; an earlier
/// turn loses its reasoning (from `reasoning_content` or from `<think>` in its content).
#[test]
fn qwen3_reasoning_content() {
    let (_, t) = qwen3_template();
    let conv = [
        msg("user", "q1"),
        msg_with("assistant", "A1", json!({"reasoning_content": "R1"})),
        msg("user", "q2"),
        msg_with("assistant", "A2", json!({"reasoning_content": "R"})),
    ];
    let out = t.render(&conv, false, &Map::new()).unwrap();
    println!("Qwen3 reasoning_content: {out:?}");
    assert_eq!(
        out,
        "<|im_start|>user\nq1<|im_end|>\n\
         <|im_start|>assistant\nA1<|im_end|>\n\
         <|im_start|>user\nq2<|im_end|>\n\
         <|im_start|>assistant\n<think>\nR\n</think>\n\nA2<|im_end|>\n"
    );
    assert!(!out.contains("R1"));

    // The same split from a `<think>` block inside content.
    let inline = [
        msg("user", "q1"),
        msg("assistant", "<think>\nR1\n</think>\n\nA1"),
        msg("user", "q2"),
        msg("assistant", "<think>\nR\n</think>\n\nA2"),
    ];
    assert_eq!(t.render(&inline, false, &Map::new()).unwrap(), out);
}

// ---------------------------------------------------------------------------------------
// Detection from the template source

#[test]
fn template_sources_for_reasoning_detection() {
    let (qwen3, _) = qwen3_template();
    assert!(qwen3.contains("enable_thinking"));
    assert!(qwen3.contains("<think>"));

    // R1's GGUF template knows nothing of enable_thinking and never writes `<think>`; it
    // only strips everything up to `</think>` from earlier assistant turns.
    let (r1_gguf, _) = r1_gguf_template();
    assert!(!r1_gguf.contains("enable_thinking"));
    assert!(!r1_gguf.contains("<think>"));
    assert!(r1_gguf.contains("</think>"));

    // llama.cpp's edited copy of the later R1 template does mention enable_thinking.
    let (r1_file, _) = r1_file_template();
    assert!(r1_file.contains("enable_thinking"));
    assert!(r1_file.contains("<think>"));

    let smol = smollm_path();
    let g = GgufFile::open(&smol).unwrap_or_else(|e| panic!("open {}: {e}", smol.display()));
    let src = g
        .get_str("tokenizer.chat_template")
        .expect("SmolLM2 has a chat template");
    assert!(!src.contains("<think>"), "{src}");
    assert!(!src.contains("enable_thinking"), "{src}");
}

// ---------------------------------------------------------------------------------------
// The engine's text pipeline on these vocabularies, and reasoning detection

/// DeepSeek-R1's `<think>` and `</think>` are single vocabulary tokens: fed one token at a
/// time through the engine's pipeline, they split the text exactly as decoded text does.
#[test]
fn r1_single_token_tags_split_the_stream() {
    use tokenfab_text::output::OutputText;
    use tokenfab_text::reasoning::ThinkTags;
    let tok = &r1_header().tok;
    let ids = tok.encode(
        "<think>\n奥运会的传奇名将\n</think>\n\n有很多。",
        false,
        true,
    );
    assert!(ids.contains(&151648) && ids.contains(&151649), "{ids:?}");
    for opened in [false, true] {
        // When the template opened the thought, the model writes only the closing tag.
        let ids: &[u32] = if opened { &ids[1..] } else { &ids };
        let mut out = OutputText::new(vec![], Some((ThinkTags::default(), opened)));
        let (mut reasoning, mut content) = (String::new(), String::new());
        for &id in ids {
            let piece = out.push(tok.token_bytes(id), false);
            reasoning.push_str(&piece.split.reasoning);
            content.push_str(&piece.split.content);
        }
        let tail = out.push_end();
        reasoning.push_str(&tail.reasoning);
        content.push_str(&tail.content);
        assert_eq!(reasoning, "奥运会的传奇名将", "opened={opened}");
        assert_eq!(content, "有很多。", "opened={opened}");
        // Every token up to and including `</think>` (and the end token) is a reasoning token.
        let closing = ids.iter().position(|&t| t == 151649).unwrap();
        assert_eq!(out.reasoning_tokens(), closing + 1, "opened={opened}");
    }
}

/// Which templates make a model a reasoning model, and which can switch thinking off.
#[test]
fn reasoning_detection_from_templates() {
    use tokenfab_engine::loader::ReasoningSpec;
    use tokenfab_text::reasoning::ThinkTags;
    let tok = &r1_header().tok;
    let (_, r1) = r1_gguf_template();
    let spec = ReasoningSpec::configure(Some(&r1), tok, None, ThinkTags::default())
        .expect("R1's template mentions </think>");
    assert!(!spec.switchable);
    assert_eq!(tok.decode(&spec.close_tokens, false), "\n</think>\n\n");
    assert!(spec.close_tokens.contains(&151649));
    let (_, qwen3) = qwen3_template();
    let spec = ReasoningSpec::configure(Some(&qwen3), tok, None, ThinkTags::default()).unwrap();
    assert!(spec.switchable, "Qwen3's template has enable_thinking");
    // SmolLM2's ChatML template does not think unless the operator says so.
    let smol = GgufFile::open(smollm_path()).unwrap();
    let smol_tok = Tokenizer::from_gguf(&smol).unwrap();
    let smol_t =
        ChatTemplate::new(smol.get_str("tokenizer.chat_template").unwrap(), "", "").unwrap();
    assert!(
        ReasoningSpec::configure(Some(&smol_t), &smol_tok, None, ThinkTags::default()).is_none()
    );
    assert!(
        ReasoningSpec::configure(Some(&smol_t), &smol_tok, Some(true), ThinkTags::default())
            .is_some()
    );
    assert!(
        ReasoningSpec::configure(Some(&qwen3), tok, Some(false), ThinkTags::default()).is_none()
    );
}
