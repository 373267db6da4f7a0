//! Hugging Face source. Files live in the standard Hugging Face cache, so a
//! file fetched by `huggingface-cli`, Python or another Rust tool is reused,
//! and a cached file resolves even in builds without the `hf` feature.
//! Downloading needs the `hf` feature (an HTTP + TLS stack).

use std::path::{Path, PathBuf};

use crate::{ModelsError, home_dir, non_empty_env};

/// The hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`,
/// as the Python client resolves it.
pub(crate) fn hub_cache_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("HF_HUB_CACHE") {
        return dir.into();
    }
    let hf_home = non_empty_env("HF_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            non_empty_env("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| home_dir().map(|h| h.join(".cache")))
                .unwrap_or_else(std::env::temp_dir)
                .join("huggingface")
        });
    hf_home.join("hub")
}

/// The cached file, following the hub cache layout:
/// `models--ORG--REPO/refs/<revision>` holds a commit hash and the file is
/// `models--ORG--REPO/snapshots/<commit>/<file>`.
pub(crate) fn cached_path(repo: &str, file: &str, revision: Option<&str>) -> Option<PathBuf> {
    cached_path_in(&hub_cache_dir(), repo, file, revision)
}

fn cached_path_in(hub: &Path, repo: &str, file: &str, revision: Option<&str>) -> Option<PathBuf> {
    // The spec parser refuses these already; checked again because a path built from them
    // must stay inside the cache whoever calls.
    if !is_relative_inside(repo) || !is_relative_inside(file) {
        return None;
    }
    let repo_dir = hub.join(format!("models--{}", repo.replace('/', "--")));
    let revision = revision.unwrap_or("main");
    let commit = if is_commit(revision) {
        revision.to_owned()
    } else if is_relative_inside(revision) {
        std::fs::read_to_string(repo_dir.join("refs").join(revision))
            .ok()?
            .trim()
            .to_owned()
    } else {
        return None;
    };
    // A refs file is data in the cache, not a path: only a commit hash names a snapshot.
    if !is_commit(&commit) {
        return None;
    }
    let path = repo_dir.join("snapshots").join(commit).join(file);
    (path.is_file() && inside(hub, &path)).then_some(path)
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A `/`-separated relative path that cannot leave the folder it is joined to on any
/// platform: no empty, `.` or `..` segment, no root, no backslash, drive colon or NUL.
pub(crate) fn is_relative_inside(path: &str) -> bool {
    !path.is_empty()
        && !path.contains(['\\', ':', '\0'])
        && path.split('/').all(|seg| !matches!(seg, "" | "." | ".."))
}

/// Whether `path`, with every symlink followed, lies inside `root` (itself resolved): the
/// hub cache's snapshots are links into its `blobs/`, which is fine; a link out of the
/// cache is not.
pub(crate) fn inside(root: &Path, path: &Path) -> bool {
    match (root.canonicalize(), path.canonicalize()) {
        (Ok(root), Ok(path)) => path.starts_with(root),
        _ => false,
    }
}

fn spec_string(repo: &str, file: &str, revision: Option<&str>) -> String {
    match revision {
        Some(rev) => format!("hf:{repo}/{file}@{rev}"),
        None => format!("hf:{repo}/{file}"),
    }
}

/// What an encoder's safetensors weights need beside them in the repo: the files it
/// cannot load without, then sentence-transformers' modules, which it does without.
const ENCODER_FILES: [(&str, bool); 5] = [
    ("config.json", true),
    ("tokenizer.json", true),
    ("modules.json", false),
    ("sentence_bert_config.json", false),
    ("1_Pooling/config.json", false),
];

/// The local path of the file, from the hub cache or downloaded into it; for an
/// encoder's `.safetensors` weights, with the small files beside them in the repo
/// ([`ENCODER_FILES`]), which the loader reads from the same snapshot folder.
pub(crate) fn resolve(
    repo: &str,
    file: &str,
    revision: Option<&str>,
    progress: bool,
) -> Result<PathBuf, ModelsError> {
    resolve_in(&hub_cache_dir(), repo, file, revision, progress)
}

fn resolve_in(
    hub: &Path,
    repo: &str,
    file: &str,
    revision: Option<&str>,
    progress: bool,
) -> Result<PathBuf, ModelsError> {
    if file.to_ascii_lowercase().ends_with(".safetensors") {
        let folder = file.rsplit_once('/').map_or("", |(dir, _)| dir);
        for (name, required) in ENCODER_FILES {
            let companion = if folder.is_empty() {
                name.to_owned()
            } else {
                format!("{folder}/{name}")
            };
            match one_file(hub, repo, &companion, revision, false) {
                Ok(_) => {}
                Err(e) if required => return Err(e),
                Err(e) => {
                    tracing::debug!(file = %companion, error = %e, "optional encoder file not fetched")
                }
            }
        }
    }
    one_file(hub, repo, file, revision, progress)
}

fn one_file(
    hub: &Path,
    repo: &str,
    file: &str,
    revision: Option<&str>,
    progress: bool,
) -> Result<PathBuf, ModelsError> {
    if let Some(path) = cached_path_in(hub, repo, file, revision) {
        tracing::debug!(path = %path.display(), "using cached Hugging Face file");
        return Ok(path);
    }
    let spec = spec_string(repo, file, revision);
    let path = download(&spec, repo, file, revision, progress)?;
    if !inside(hub, &path) {
        return Err(ModelsError::Hf {
            spec,
            reason: format!(
                "the downloaded file resolves to {}, outside the cache {}",
                path.display(),
                hub.display()
            ),
        });
    }
    Ok(path)
}

#[cfg(not(feature = "hf"))]
fn download(
    spec: &str,
    _repo: &str,
    _file: &str,
    _revision: Option<&str>,
    _progress: bool,
) -> Result<PathBuf, ModelsError> {
    Err(ModelsError::HfUnsupported {
        spec: spec.to_owned(),
    })
}

#[cfg(feature = "hf")]
fn download(
    spec: &str,
    repo: &str,
    file: &str,
    revision: Option<&str>,
    progress: bool,
) -> Result<PathBuf, ModelsError> {
    use std::io::IsTerminal;

    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};

    let hub = hub_cache_dir();
    // HF_TOKEN first (CI, containers), then the token file `huggingface-cli login` writes.
    let token = non_empty_env("HF_TOKEN")
        .map(|t| t.to_string_lossy().into_owned())
        .or_else(|| Cache::new(hub.clone()).token());
    let api = ApiBuilder::from_env()
        .with_cache_dir(hub)
        .with_token(token)
        .with_progress(progress && std::io::stderr().is_terminal())
        .build()
        .map_err(|e| map_error(spec, e))?;
    let repo = match revision {
        Some(rev) => Repo::with_revision(repo.to_owned(), RepoType::Model, rev.to_owned()),
        None => Repo::model(repo.to_owned()),
    };
    tracing::info!(%spec, "downloading from Hugging Face");
    api.repo(repo).get(file).map_err(|e| map_error(spec, e))
}

#[cfg(feature = "hf")]
fn map_error(spec: &str, err: hf_hub::api::sync::ApiError) -> ModelsError {
    use hf_hub::api::sync::ApiError;

    let hf = |reason: String| ModelsError::Hf {
        spec: spec.to_owned(),
        reason,
    };
    match err {
        ApiError::TooManyRetries(inner) => map_error(spec, *inner),
        ApiError::RequestError(e) => match *e {
            ureq::Error::Transport(t) => ModelsError::HfUnreachable {
                spec: spec.to_owned(),
                detail: t.to_string(),
            },
            ureq::Error::Status(code @ (401 | 403), _) => hf(format!(
                "access denied (HTTP {code}); the repo is gated or private: accept its terms \
                 on the hub and set HF_TOKEN, or pass a local path"
            )),
            ureq::Error::Status(404, _) => hf(
                "not found (HTTP 404); check the repo id, the file name and the revision".into(),
            ),
            ureq::Error::Status(code, _) => hf(format!(
                "the hub answered HTTP {code}; try again later or pass a local path"
            )),
        },
        ApiError::LockAcquisition(path) => hf(format!(
            "another process is downloading it (lock {}); wait for it to finish",
            path.display()
        )),
        other => hf(format!(
            "{other}; pass a local path with `--model /path/to/file.gguf`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_cache_layout() {
        let hub = tempfile::tempdir().unwrap();
        let repo_dir = hub.path().join("models--org--repo");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snap = repo_dir.join("snapshots").join(commit);
        std::fs::create_dir_all(snap.join("sub")).unwrap();
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), format!("{commit}\n")).unwrap();
        std::fs::write(snap.join("m.gguf"), b"x").unwrap();
        std::fs::write(snap.join("sub/n.gguf"), b"x").unwrap();

        let get = |file, rev| cached_path_in(hub.path(), "org/repo", file, rev);
        assert_eq!(get("m.gguf", None), Some(snap.join("m.gguf")));
        assert_eq!(get("sub/n.gguf", None), Some(snap.join("sub/n.gguf")));
        assert_eq!(get("m.gguf", Some(commit)), Some(snap.join("m.gguf")));
        assert_eq!(get("m.gguf", Some("v2")), None, "unknown ref");
        assert_eq!(get("other.gguf", None), None);
        assert_eq!(
            cached_path_in(hub.path(), "org/other", "m.gguf", None),
            None
        );
    }

    /// An encoder's weights resolve from a cached snapshot with the files beside them; a
    /// missing required one is what the error names (this build cannot download).
    #[cfg(not(feature = "hf"))]
    #[test]
    fn safetensors_weights_bring_their_configuration() {
        let hub = tempfile::tempdir().unwrap();
        let repo_dir = hub.path().join("models--org--enc");
        let commit = "89abcdef0123456789abcdef0123456789abcdef";
        let snap = repo_dir.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
        for f in ["model.safetensors", "config.json"] {
            std::fs::write(snap.join(f), b"x").unwrap();
        }
        let get = || resolve_in(hub.path(), "org/enc", "model.safetensors", None, false);
        let err = get().unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        std::fs::write(snap.join("tokenizer.json"), b"x").unwrap();
        // The optional sentence-transformers files may be missing.
        assert_eq!(get().unwrap(), snap.join("model.safetensors"));
    }

    /// Nothing from a spec or from the cache's own files leads a lookup out of the cache.
    #[cfg(unix)]
    #[test]
    fn lookups_stay_inside_the_cache() {
        let root = tempfile::tempdir().unwrap();
        let hub = root.path().join("hub");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo_dir = hub.join("models--org--repo");
        let snap = repo_dir.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
        // A secret outside the cache, and the ways a hostile cache or spec could reach it.
        std::fs::write(root.path().join("secret.gguf"), b"x").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret.gguf"), snap.join("out.gguf")).unwrap();
        std::fs::create_dir_all(hub.join("blobs")).unwrap();
        std::fs::write(hub.join("blobs/abc"), b"x").unwrap();
        std::os::unix::fs::symlink("../../../blobs/abc", snap.join("in.gguf")).unwrap();
        std::fs::write(repo_dir.join("refs/evil"), "../../../..").unwrap();

        let get = |repo, file, rev| cached_path_in(&hub, repo, file, rev);
        assert_eq!(get("org/repo", "in.gguf", None), Some(snap.join("in.gguf")));
        assert_eq!(get("org/repo", "out.gguf", None), None, "symlink out");
        assert_eq!(
            get("org/repo", "secret.gguf", Some("evil")),
            None,
            "refs file"
        );
        for file in [
            "../../../../secret.gguf",
            "/etc/passwd",
            "a\\..\\b.gguf",
            "./in.gguf",
            "",
        ] {
            assert_eq!(get("org/repo", file, None), None, "{file}");
        }
        for rev in ["../../../..", "/abs", "a//b"] {
            assert_eq!(get("org/repo", "in.gguf", Some(rev)), None, "{rev}");
        }
        assert_eq!(get("../..", "secret.gguf", None), None);
    }

    #[test]
    fn spec_strings() {
        assert_eq!(spec_string("o/r", "f.gguf", None), "hf:o/r/f.gguf");
        assert_eq!(spec_string("o/r", "f.gguf", Some("v1")), "hf:o/r/f.gguf@v1");
    }
}
