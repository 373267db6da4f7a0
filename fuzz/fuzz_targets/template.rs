//! A chat template source and a message, compiled and rendered under the request budgets.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tokenfab_engine::fuzz::template(data));
