//! A hostile upstream's bytes (head, framing, event stream, JSON) through everything
//! tokenfab reads from an upstream server: no panic, bounded buffers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokenfab_upstream::fuzz::answer(data));
