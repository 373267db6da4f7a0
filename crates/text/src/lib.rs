//! tokenfab's text pipeline: what a generated sequence's bytes become before they reach a
//! client, the same for the engine's own models and for upstream servers' answers. Plain
//! std and `serde_json`, so the gateway (`tokenfab-upstream`) splits thoughts without the
//! engine's weight.
//!
//! # Layout
//! Data flows top to bottom, one [`output::OutputText`] per sequence:
//! - [`utf8`]: token bytes become whole UTF-8 characters (a character split across tokens
//!   is held back until its last byte).
//! - [`reasoning`]: a thinking model's thought is split from its answer
//!   ([`reasoning::split_complete`] is the specification, [`reasoning::ReasoningSplitter`]
//!   its incremental form, property-tested to agree for every chunking).
//! - [`stop`]: the answer is cut at stop strings (never the thought).
//! - [`output`]: the three in that order, plus the count of reasoning tokens.
//! - [`tools`]: tool calls found in the answer (the `<tool_call>` format), for requests
//!   that offer tools; property-tested like the splitter.

pub mod output;
pub mod reasoning;
pub mod stop;
pub mod tools;
pub mod utf8;
