//! GGUF container reader: metadata, tensor directory, and tensor bytes borrowed from the
//! file's memory mapping.
//!
//! The mapping serves the load, not inference: opening reads only the header and the
//! metadata (onto the heap), [`GgufFile::tensor_data`] hands out slices of the mapping, and
//! `Model::load` copies every tensor out of them into buffers of its own, repacking the
//! quantized matrices and keeping even the token-embedding table as an owned copy.
//! `LoadedModel::load` drops the file when the model, tokenizer and template are built, so a
//! served model costs heap about the size of its file, and while it loads the mapped pages
//! it has read come on top (resident memory peaks near twice the file's size). Everything
//! is validated at open time (tensor data inside the file, known alignment) so that later
//! code can index without re-checking; a truncated download is refused here with a message
//! that says so.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::EngineError;

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// No writer pads tensors to more than a page or two; a larger value is corruption, and
/// refusing it keeps the data-start arithmetic far from overflow.
const MAX_ALIGNMENT: u64 = 1 << 20;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: usize = 4;
/// Array elements in all the metadata together. Each costs a [`MetaValue`] (32 bytes) on the
/// heap however few bytes it took in the file, so a file of byte arrays could otherwise ask
/// for 32 times its size. The largest real vocabularies (262k tokens with scores, types
/// and merges) hold about 1.5 million.
const MAX_META_ELEMENTS: usize = 16 << 20;
/// The fewest bytes a tensor's directory entry takes (name length, no name, n_dims, no
/// dims, type, offset): the tensor count times this must fit in what is left of the file.
const MIN_TENSOR_ENTRY: u64 = 8 + 4 + 4 + 8;
/// The fewest bytes a metadata entry takes (key length, type, a one-byte value).
const MIN_KV_ENTRY: u64 = 8 + 4 + 1;

/// One metadata value. GGUF arrays may nest, so `Array` holds values of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Integer view of any integer-typed value; GGUF writers are inconsistent about
    /// which width they use for counts, so callers should not care.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) if v >= 0 => Some(v as u64),
            MetaValue::I16(v) if v >= 0 => Some(v as u64),
            MetaValue::I32(v) if v >= 0 => Some(v as u64),
            MetaValue::I64(v) if v >= 0 => Some(v as u64),
            MetaValue::Bool(v) => Some(v as u64),
            _ => None,
        }
    }

    /// Signed integer view (token types and some ids are stored as i32).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().map(|v| v as i64),
        }
    }

    /// Float view of any numeric value.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => self.as_u64().map(|v| v != 0),
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor element types. Unknown ids are kept so the model loader can name them in
/// its error instead of the reader failing on a file it could otherwise describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ4NL,
    IQ4XS,
    BF16,
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            20 => GgmlType::IQ4NL,
            23 => GgmlType::IQ4XS,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// (elements per block, bytes per block); `None` for types whose layout we do not know,
    /// which makes the tensor's byte size unknowable and the file unusable for that tensor.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Q8K => (256, 292),
            GgmlType::IQ4NL => (32, 18),
            GgmlType::IQ4XS => (256, 136),
            GgmlType::Other(_) => return None,
        })
    }
}

/// ggml's own names (`Q4_K`, `IQ4_XS`), which users know from file names and
/// llama-quantize, for every type id ggml defines; unknown ids print as `type N`.
impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Q8K => "Q8_K",
            GgmlType::IQ4NL => "IQ4_NL",
            GgmlType::IQ4XS => "IQ4_XS",
            GgmlType::BF16 => "BF16",
            GgmlType::Other(id) => match ggml_only_name(*id) {
                Some(name) => name,
                None => return write!(f, "type {id}"),
            },
        };
        f.write_str(name)
    }
}

/// The types ggml defines that tokenfab has no block layout for. A file may hold them
/// (the model loader names them in its refusal); any other id means the file is corrupt.
fn ggml_only_name(id: u32) -> Option<&'static str> {
    Some(match id {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        21 => "IQ3_S",
        22 => "IQ2_S",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// A tensor's directory entry. `dims[0]` is the fastest-varying (row length) dimension,
/// as in ggml.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the tensor data in the file.
    pub offset: u64,
    /// Byte size, when the type's layout is known.
    pub size: Option<u64>,
}

impl TensorInfo {
    /// Cannot overflow: [`GgufFile::open`] refuses tensors whose product does.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The file's bytes: mapped for a model on disk, owned for one built in memory (the fuzz
/// targets and tests, which must not touch the filesystem per input).
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

fn bad(msg: String) -> EngineError {
    EngineError::BadModel(msg)
}

/// An open GGUF file. Cheap to query; tensor bytes borrow from the mapping.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    bytes: Bytes,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array elements read so far (see [`MAX_META_ELEMENTS`]).
    elements: usize,
}

/// The fewest file bytes one metadata value of type `ty` takes.
fn min_value_size(ty: u32) -> Result<u64, EngineError> {
    Ok(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        other => {
            return Err(bad(format!("GGUF metadata has unknown value type {other}")));
        }
    })
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EngineError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| {
            EngineError::BadModel(format!(
                "GGUF header ends early at byte {} (the file is truncated or not GGUF)",
                self.pos
            ))
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], EngineError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
    fn u32(&mut self) -> Result<u32, EngineError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, EngineError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
    /// A count of items each at least `min_size` bytes long: refused before anything is
    /// allocated for them when they could not fit in the rest of the file.
    fn count(&mut self, what: &str, min_size: u64) -> Result<usize, EngineError> {
        let at = self.pos;
        let n = self.u64()?;
        if n.checked_mul(min_size)
            .is_none_or(|bytes| bytes > self.remaining())
        {
            return Err(bad(format!(
                "GGUF header declares {n} {what} at byte {at}, more than the {} bytes left in the \
                 file can hold (the file is corrupt or truncated)",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }
    fn len(&mut self) -> Result<usize, EngineError> {
        self.count("bytes", 1)
    }
    fn string(&mut self) -> Result<String, EngineError> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        // Some vocabularies hold invalid UTF-8 pieces; keep them lossily rather than refuse.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue, EngineError> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>()?[0]),
            1 => MetaValue::I8(self.array::<1>()?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => MetaValue::Bool(self.array::<1>()?[0] != 0),
            8 => MetaValue::String(self.string()?),
            9 => {
                if depth > 4 {
                    return Err(EngineError::BadModel(
                        "GGUF arrays nested too deeply".into(),
                    ));
                }
                let elem_ty = self.u32()?;
                let n = self.count("array elements", min_value_size(elem_ty)?)?;
                self.elements = self.elements.saturating_add(n);
                if self.elements > MAX_META_ELEMENTS {
                    return Err(bad(format!(
                        "GGUF metadata holds more than {MAX_META_ELEMENTS} array elements \
                         (the file is corrupt)"
                    )));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem_ty, depth + 1)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            other => {
                return Err(EngineError::BadModel(format!(
                    "GGUF metadata has unknown value type {other}"
                )));
            }
        })
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file: header, metadata, tensor directory, and that every
    /// tensor's data lies inside the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, EngineError> {
        let path = path.as_ref().to_path_buf();
        let file =
            File::open(&path).map_err(|e| bad(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: the mapping is read-only and the engine never writes model files; a file
        // truncated underneath us by another process is outside what we can defend against.
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| bad(format!("cannot map {}: {e}", path.display())))?;
        Self::parse(path, Bytes::Mapped(mmap))
    }

    /// [`GgufFile::open`] for a file already in memory; `name` stands for its path in
    /// messages.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, EngineError> {
        Self::parse(name.into(), Bytes::Owned(bytes))
    }

    /// Every count, length, offset and size is checked against the bytes that are really
    /// there before anything is allocated for it, so a hostile or damaged file costs at
    /// most a bounded multiple of its own size and ends in a `BadModel` naming the fault.
    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self, EngineError> {
        let mut c = Cursor {
            buf: &bytes,
            pos: 0,
            elements: 0,
        };
        if c.take(4).ok() != Some(GGUF_MAGIC.as_slice()) {
            return Err(bad(format!(
                "{} is not a GGUF file (bad magic)",
                path.display()
            )));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!(
                "{}: GGUF version {version} is not supported (2 and 3 are)",
                path.display()
            )));
        }
        let n_tensors = c.count("tensors", MIN_TENSOR_ENTRY)?;
        let n_kv = c.count("metadata entries", MIN_KV_ENTRY)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c.value(ty, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(bad(format!(
                    "{}: metadata key {key} appears twice (the file is corrupt)",
                    path.display()
                )));
            }
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut names = std::collections::HashSet::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims > MAX_DIMS {
                return Err(bad(format!(
                    "tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64())
                .collect::<Result<Vec<_>, _>>()?;
            // ggml counts elements in an i64.
            if dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .is_none_or(|n| n > i64::MAX as u64)
            {
                return Err(bad(format!(
                    "tensor {name} has dimensions {dims:?}, whose product overflows"
                )));
            }
            let id = c.u32()?;
            let ty = GgmlType::from_id(id);
            if let GgmlType::Other(id) = ty
                && ggml_only_name(id).is_none()
            {
                return Err(bad(format!(
                    "tensor {name} has type id {id}, which is no ggml type (the file is corrupt)"
                )));
            }
            let offset = c.u64()?;
            if !names.insert(name.clone()) {
                return Err(bad(format!(
                    "tensor {name} appears twice in the tensor directory"
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size: None,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => a,
                _ => {
                    return Err(bad(format!(
                        "{}: general.alignment is {v:?}; it must be a power of two up to \
                         {MAX_ALIGNMENT}",
                        path.display()
                    )));
                }
            },
        };
        // Both below 2^20 apart from `pos`, which is at most the file length: no overflow.
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        let truncated = |name: &str, end: &dyn std::fmt::Display| {
            bad(format!(
                "{}: tensor data is truncated (tensor {name} needs bytes up to {end}, the file has \
                 {file_len}); the download is incomplete, fetch the model again",
                path.display(),
            ))
        };
        for t in &mut tensors {
            if !t.offset.is_multiple_of(alignment) {
                return Err(bad(format!(
                    "tensor {} has offset {}, not a multiple of the file's alignment {alignment}",
                    t.name, t.offset
                )));
            }
            t.offset = data_start
                .checked_add(t.offset)
                .ok_or_else(|| bad(format!("tensor {} has an impossible offset", t.name)))?;
            if t.offset > file_len {
                return Err(truncated(&t.name, &t.offset));
            }
            if let Some((block, bytes)) = t.ty.block_layout() {
                let (block, bytes) = (block as u64, bytes as u64);
                let row = t.dims.first().copied().unwrap_or(1);
                if !row.is_multiple_of(block) {
                    return Err(bad(format!(
                        "tensor {} has rows of {row} elements, not a multiple of the {} block \
                         size {block}",
                        t.name, t.ty
                    )));
                }
                let size = (t.n_elements() / block).checked_mul(bytes);
                match size.and_then(|size| t.offset.checked_add(size)) {
                    Some(end) if end <= file_len => {}
                    Some(end) => return Err(truncated(&t.name, &end)),
                    None => return Err(truncated(&t.name, &"beyond 2^64")),
                }
                t.size = size;
            }
        }
        // Tensors of known size must not share bytes: a repacked copy of one would silently
        // be the other's weights.
        let mut spans: Vec<(u64, u64, &str)> = tensors
            .iter()
            .filter_map(|t| Some((t.offset, t.offset + t.size?, t.name.as_str())))
            .filter(|&(start, end, _)| end > start)
            .collect();
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
            return Err(bad(format!(
                "{}: tensors {} and {} overlap in the file (the file is corrupt)",
                path.display(),
                w[0].2,
                w[1].2
            )));
        }
        Ok(GgufFile {
            path,
            version,
            metadata,
            tensors,
            bytes,
        })
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(MetaValue::as_f64)
    }

    /// The architecture name (`general.architecture`), which prefixes most model keys.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor, or an error naming the tensor if its type is unknown.
    pub fn tensor_data(&self, t: &TensorInfo) -> Result<&[u8], EngineError> {
        let size = t.size.ok_or_else(|| {
            bad(format!(
                "tensor {} has type {}, which tokenfab cannot read",
                t.name, t.ty
            ))
        })?;
        Ok(&self.bytes[t.offset as usize..(t.offset + size) as usize])
    }
}

/// Writes small GGUF files for tests (of this reader and of the model loader's refusals).
#[cfg(test)]
pub(crate) mod test_writer {
    use std::path::PathBuf;

    /// A metadata value to write: strings, u32s, or an i32 array.
    #[derive(Clone, Copy)]
    pub enum Kv<'a> {
        Str(&'a str),
        U32(u32),
        I32s(&'a [i32]),
    }

    fn put_str(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    }

    /// GGUF v3 bytes: `kvs`, then tensors `(name, dims, ggml type id, data)` laid out one
    /// after another with 32-byte alignment.
    pub fn gguf_bytes(kvs: &[(&str, Kv)], tensors: &[(&str, &[u64], u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (k, v) in kvs {
            put_str(&mut b, k);
            match v {
                Kv::Str(s) => {
                    b.extend_from_slice(&8u32.to_le_bytes());
                    put_str(&mut b, s);
                }
                Kv::U32(x) => {
                    b.extend_from_slice(&4u32.to_le_bytes());
                    b.extend_from_slice(&x.to_le_bytes());
                }
                Kv::I32s(xs) => {
                    b.extend_from_slice(&9u32.to_le_bytes());
                    b.extend_from_slice(&5u32.to_le_bytes());
                    b.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                    for x in xs.iter() {
                        b.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        let mut offset = 0u64;
        for (name, dims, ty, data) in tensors {
            put_str(&mut b, name);
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims.iter() {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        for (_, _, _, data) in tensors {
            while b.len() % 32 != 0 {
                b.push(0);
            }
            b.extend_from_slice(data);
        }
        b
    }

    /// Writes bytes to a unique temporary file.
    pub fn write_temp(bytes: &[u8], name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("tokenfab-gguf-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::test_writer::{Kv, gguf_bytes, write_temp};
    use super::*;

    /// One F32 tensor of 4 elements, of which only `data_len` bytes are present.
    fn tiny_gguf(data_len: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..4).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let mut b = gguf_bytes(
            &[
                ("general.architecture", Kv::Str("llama")),
                ("list", Kv::I32s(&[7, -1])),
            ],
            &[("w", &[4], 0, data)],
        );
        b.truncate(b.len() - (16 - data_len));
        b
    }

    #[test]
    fn reads_metadata_and_tensor() {
        let p = write_temp(&tiny_gguf(16), "ok");
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        let list = g.get("list").unwrap().as_array().unwrap();
        assert_eq!(list[1].as_i64(), Some(-1));
        let t = g.tensor("w").unwrap();
        let data = g.tensor_data(t).unwrap();
        assert_eq!(f32::from_le_bytes(data[12..16].try_into().unwrap()), 3.0);
        std::fs::remove_file(p).ok();
    }

    #[test]
    fn refuses_truncated_data() {
        let p = write_temp(&tiny_gguf(8), "trunc");
        let err = GgufFile::open(&p).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        std::fs::remove_file(p).ok();
    }

    #[test]
    fn refuses_non_gguf() {
        let p = write_temp(b"not a model at all", "bad");
        let err = GgufFile::open(&p).unwrap_err().to_string();
        assert!(err.contains("not a GGUF"), "{err}");
        std::fs::remove_file(p).ok();
    }

    /// Hand-assembled GGUF bytes, for files no honest writer makes.
    struct Raw(Vec<u8>);

    impl Raw {
        fn new(n_tensors: u64, n_kv: u64) -> Raw {
            Raw(b"GGUF".to_vec()).u32(3).u64(n_tensors).u64(n_kv)
        }
        fn u32(mut self, v: u32) -> Raw {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Raw {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn str(mut self, s: &str) -> Raw {
            self = self.u64(s.len() as u64);
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        fn kv_u32(self, key: &str, v: u32) -> Raw {
            self.str(key).u32(4).u32(v)
        }
        fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Raw {
            let mut r = self.str(name).u32(dims.len() as u32);
            for &d in dims {
                r = r.u64(d);
            }
            r.u32(ty).u64(offset)
        }
        /// Pads to `align` and appends `n` data bytes.
        fn data(mut self, align: usize, n: usize) -> Raw {
            while !self.0.len().is_multiple_of(align) {
                self.0.push(0);
            }
            self.0.resize(self.0.len() + n, 0);
            self
        }
        fn err(self) -> String {
            GgufFile::from_bytes("t.gguf", self.0)
                .map(|_| ())
                .expect_err("malformed file accepted")
                .to_string()
        }
    }

    fn assert_mentions(err: String, words: &str) {
        assert!(err.contains(words), "{err:?} does not say {words:?}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let whole = tiny_gguf(16);
        for len in 0..whole.len() {
            assert!(
                GgufFile::from_bytes("t.gguf", whole[..len].to_vec()).is_err(),
                "accepted the first {len} bytes"
            );
        }
        assert!(GgufFile::from_bytes("t.gguf", whole).is_ok());
    }

    #[test]
    fn counts_beyond_the_file_are_refused_before_allocating() {
        assert_mentions(Raw::new(u64::MAX, 0).err(), "tensors");
        assert_mentions(Raw::new(1 << 40, 0).err(), "more than the");
        assert_mentions(Raw::new(0, u64::MAX / 2).err(), "metadata entries");
        // A string, and arrays of bytes, strings and arrays, each one longer than the file.
        assert_mentions(Raw::new(0, 1).u64(1 << 50).err(), "bytes");
        for elem in [0, 8, 9] {
            let r = Raw::new(0, 1).str("k").u32(9).u32(elem).u64(u64::MAX);
            assert_mentions(r.err(), "array elements");
        }
        // 100 u32s need 400 bytes, not 100.
        let r = Raw::new(0, 1).str("k").u32(9).u32(4).u64(100).data(1, 200);
        assert_mentions(r.err(), "array elements");
        assert_mentions(Raw::new(0, 1).str("k").u32(13).err(), "unknown value type");
    }

    #[test]
    fn deeply_nested_arrays_are_refused() {
        let mut r = Raw::new(0, 1).str("k").u32(9);
        for _ in 0..8 {
            r = r.u32(9).u64(1);
        }
        assert_mentions(r.u32(4).u64(1).u32(0).err(), "nested");
    }

    #[test]
    fn tensor_directory_faults_are_named() {
        let one = |dims: &[u64], ty: u32, offset: u64, data: usize| {
            Raw::new(1, 0).tensor("w", dims, ty, offset).data(32, data)
        };
        assert!(GgufFile::from_bytes("t.gguf", one(&[4], 0, 0, 16).0).is_ok());
        assert_mentions(one(&[4], 0, 32, 16).err(), "truncated");
        assert_mentions(one(&[4], 0, u64::MAX - 31, 16).err(), "impossible offset");
        assert_mentions(one(&[4], 0, 1 << 40, 16).err(), "truncated");
        assert_mentions(one(&[4], 0, 4, 64).err(), "alignment");
        assert_mentions(one(&[1, 1, 1, 1, 1], 0, 0, 16).err(), "dimensions");
        assert_mentions(one(&[1 << 32, 1 << 32], 0, 0, 16).err(), "overflows");
        assert_mentions(one(&[u64::MAX], 0, 0, 16).err(), "overflows");
        // 2^62 F32 elements are 2^64 bytes; 2^40 are merely far more than the file.
        assert_mentions(one(&[1 << 62], 0, 0, 16).err(), "beyond 2^64");
        assert_mentions(one(&[1 << 40], 0, 0, 16).err(), "truncated");
        assert_mentions(one(&[48], 2, 0, 64).err(), "block size 32");
        assert_mentions(one(&[4], 99, 0, 16).err(), "type id 99");
        // A type ggml defines but tokenfab cannot read opens, and says so on use.
        let g = GgufFile::from_bytes("t.gguf", one(&[256], 16, 0, 66).0).unwrap();
        let err = g.tensor_data(&g.tensors[0]).unwrap_err().to_string();
        assert_mentions(err, "IQ2_XXS");
    }

    #[test]
    fn overlapping_and_duplicate_tensors_are_refused() {
        let r = Raw::new(2, 0)
            .tensor("a", &[16], 0, 0)
            .tensor("b", &[16], 0, 32)
            .data(32, 128);
        assert_mentions(r.err(), "tensors a and b overlap");
        let r = Raw::new(2, 0)
            .tensor("a", &[8], 0, 0)
            .tensor("a", &[8], 0, 32)
            .data(32, 64);
        assert_mentions(r.err(), "appears twice");
        let r = Raw::new(0, 2).kv_u32("k", 1).kv_u32("k", 2);
        assert_mentions(r.err(), "appears twice");
    }

    #[test]
    fn alignment_must_be_a_sane_power_of_two() {
        for bad in [0, 3, 48, 1 << 30] {
            let r = Raw::new(0, 1).kv_u32("general.alignment", bad);
            assert_mentions(r.err(), "power of two");
        }
        let r = Raw::new(1, 1)
            .kv_u32("general.alignment", 64)
            .tensor("w", &[4], 0, 0)
            .data(64, 16);
        let g = GgufFile::from_bytes("t.gguf", r.0).unwrap();
        assert_eq!(g.tensors[0].offset % 64, 0);
    }

    /// The checks refuse no real file: every GGUF among the test assets (vocabularies of
    /// many families, a model head) opens, and `TOKENFAB_EXTRA_GGUF_DIRS` (`:`-separated)
    /// adds more, such as the requantized test models.
    #[test]
    fn real_files_open() {
        let mut dirs = vec![crate::test_assets_dir()];
        if let Some(extra) = std::env::var_os("TOKENFAB_EXTRA_GGUF_DIRS") {
            dirs.extend(std::env::split_paths(&extra));
        }
        let mut opened = 0;
        for dir in dirs {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|e| e != "gguf") {
                    continue;
                }
                match GgufFile::open(&path) {
                    Ok(_) => opened += 1,
                    // A model's first 100 MB, kept for its header: refused as truncated.
                    Err(e) if path.to_string_lossy().ends_with("-head.gguf") => {
                        assert_mentions(e.to_string(), "truncated")
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert!(opened > 10, "only {opened} GGUF files found");
    }

    #[test]
    fn types_print_with_ggml_names() {
        let name = |id| GgmlType::from_id(id).to_string();
        assert_eq!(name(12), "Q4_K");
        assert_eq!(name(23), "IQ4_XS");
        assert_eq!(name(30), "BF16");
        assert_eq!(name(99), "type 99");
    }
}
