//! Bytes as text and as token ids through a real vocabulary (Qwen2's, or
//! `$TOKENFAB_FUZZ_VOCAB`): no panic, and encode then decode gives the text back.
#![no_main]
use std::sync::LazyLock;

use tokenfab_engine::tokenizer::Tokenizer;

static VOCAB: LazyLock<Tokenizer> = LazyLock::new(tokenfab_engine::fuzz::load_vocab);

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokenfab_engine::fuzz::tokenizer(&VOCAB, data));
