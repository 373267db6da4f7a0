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
            GgmlType::Other(id) => match id {
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
                id => return write!(f, "type {id}"),
            },
        };
        f.write_str(name)
    }
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
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open GGUF file. Cheap to query; tensor bytes borrow from the mapping.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    mmap: Mmap,
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
    fn len(&mut self) -> Result<usize, EngineError> {
        let n = self.u64()?;
        // Any count larger than the remaining bytes is corrupt; refuse before allocating.
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(EngineError::BadModel(format!(
                "GGUF header declares a length of {n} at byte {}, beyond the end of the file",
                self.pos
            )));
        }
        Ok(n as usize)
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
                let n = self.len()?;
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
        let file = File::open(&path)
            .map_err(|e| EngineError::BadModel(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: the mapping is read-only and the engine never writes model files; a file
        // truncated underneath us by another process is outside what we can defend against.
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| EngineError::BadModel(format!("cannot map {}: {e}", path.display())))?;
        let mut c = Cursor { buf: &mmap, pos: 0 };
        if c.take(4).ok() != Some(GGUF_MAGIC.as_slice()) {
            return Err(EngineError::BadModel(format!(
                "{} is not a GGUF file (bad magic)",
                path.display()
            )));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(EngineError::BadModel(format!(
                "{}: GGUF version {version} is not supported (2 and 3 are)",
                path.display()
            )));
        }
        let n_tensors = c.len()?;
        let n_kv = c.len()?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c.value(ty, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims > 4 {
                return Err(EngineError::BadModel(format!(
                    "tensor {name} has {n_dims} dimensions"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let ty = GgmlType::from_id(c.u32()?);
            let offset = c.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size: None,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(MetaValue::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT)
            .max(1);
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = mmap.len() as u64;
        for t in &mut tensors {
            t.offset = data_start.checked_add(t.offset).ok_or_else(|| {
                EngineError::BadModel(format!("tensor {} has an impossible offset", t.name))
            })?;
            if let Some((block, bytes)) = t.ty.block_layout() {
                let n = t.n_elements();
                if n % block as u64 != 0 {
                    return Err(EngineError::BadModel(format!(
                        "tensor {} has {n} elements, not a multiple of its block size {block}",
                        t.name
                    )));
                }
                let size = n / block as u64 * bytes as u64;
                if t.offset.saturating_add(size) > file_len {
                    return Err(EngineError::BadModel(format!(
                        "{}: tensor data is truncated (tensor {} needs bytes up to {}, the file has {file_len}); \
                         the download is incomplete, fetch the model again",
                        path.display(),
                        t.name,
                        t.offset + size
                    )));
                }
                t.size = Some(size);
            }
        }
        Ok(GgufFile {
            path,
            version,
            metadata,
            tensors,
            mmap,
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
            EngineError::BadModel(format!("tensor {} has unsupported type {:?}", t.name, t.ty))
        })?;
        Ok(&self.mmap[t.offset as usize..(t.offset + size) as usize])
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

    #[test]
    fn types_print_with_ggml_names() {
        let name = |id| GgmlType::from_id(id).to_string();
        assert_eq!(name(12), "Q4_K");
        assert_eq!(name(23), "IQ4_XS");
        assert_eq!(name(30), "BF16");
        assert_eq!(name(99), "type 99");
    }
}
