//! HTTP handlers, one file per API area. Handlers stay thin: parsing and validation live
//! in [`crate::job`], the engine does the work.

pub mod chat;
pub mod models;
