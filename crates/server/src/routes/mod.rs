//! HTTP handlers, one file per API area. Handlers stay thin: parsing and validation live
//! in [`crate::job`], the engine does the work, the platform does the accounting.

pub mod admin;
pub mod chat;
pub mod models;
pub mod user;
