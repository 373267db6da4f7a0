//! Bytes as a GGUF file, through parsing and every load step (tokenfab_engine::fuzz::gguf).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tokenfab_engine::fuzz::gguf(data));
