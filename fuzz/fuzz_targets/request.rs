//! Request bodies through each endpoint's checks, against the test models
//! (`$TOKENFAB_TEST_MODEL`, `$TOKENFAB_TEST_MINILM`): no panic, every refusal a 4xx in the
//! OpenAI shape, every accepted request within the model's context.
#![no_main]
use std::sync::LazyLock;

use tokenfab_server::fuzz::Fixture;

static FIXTURE: LazyLock<Fixture> = LazyLock::new(Fixture::from_env);

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokenfab_server::fuzz::request(&FIXTURE, data));
