//! Safetensors files, read and written without holding them in memory: a memory-mapped file
//! whose header is parsed once, tensors read by name as byte slices (so a layer or a
//! calibration sample is read without loading the file), and an atomic streaming writer.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::SafeTensors;

use crate::dtype::DType;
use crate::error::{io, ModelError, Result};
use crate::input::open_input_file;
use crate::output::PartialFile;

pub struct MappedFile {
    pub path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    meta: safetensors::tensor::Metadata,
}

pub struct TensorRef<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

impl MappedFile {
    /// Maps `path`, which must be a regular file; `expected` names it in errors
    /// ("a safetensors file").
    pub fn open(path: &Path, expected: &str) -> Result<Self> {
        let file = open_input_file(path, expected)?;
        // SAFETY: the map is read-only; a file changed underneath while we read it would give
        // wrong values, as any reader would, but cannot break memory safety of our code beyond
        // what memmap2 documents for read-only maps.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io(path))?;
        let (n, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + n,
            meta,
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.meta.tensors().into_keys().collect()
    }

    /// The tensor names in the order their data lies in the file.
    pub fn names_in_file_order(&self) -> Vec<String> {
        self.meta.offset_keys()
    }

    /// The tensor `name` as stored, whatever its dtype (for copying it unchanged).
    pub fn raw(&self, name: &str) -> Result<Option<RawTensor<'_>>> {
        let Some(info) = self.meta.info(name) else {
            return Ok(None);
        };
        let (a, b) = info.data_offsets;
        let bytes = self
            .mmap
            .get(self.data_start + a..self.data_start + b)
            .ok_or_else(|| ModelError::Corrupt {
                path: self.path.clone(),
                detail: format!("tensor {name} lies past the end of the file"),
            })?;
        Ok(Some(RawTensor {
            dtype: info.dtype,
            shape: &info.shape,
            bytes,
        }))
    }

    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.meta.metadata().as_ref()
    }

    /// The tensor `name`, if present; errors if its dtype is not f32/f16/bf16.
    pub fn get<'a>(&'a self, name: &'a str) -> Result<Option<TensorRef<'a>>> {
        let Some(info) = self.meta.info(name) else {
            return Ok(None);
        };
        let dtype =
            DType::from_safetensors(info.dtype).ok_or_else(|| ModelError::UnsupportedDtype {
                name: name.into(),
                path: self.path.clone(),
                dtype: format!("{:?}", info.dtype),
            })?;
        let (a, b) = info.data_offsets;
        let bytes = self
            .mmap
            .get(self.data_start + a..self.data_start + b)
            .ok_or_else(|| ModelError::Corrupt {
                path: self.path.clone(),
                detail: format!("tensor {name} lies past the end of the file"),
            })?;
        Ok(Some(TensorRef {
            name,
            dtype,
            shape: info.shape.clone(),
            bytes,
        }))
    }

    /// Like `get`, but a missing tensor is an error naming it.
    pub fn require<'a>(&'a self, name: &'a str) -> Result<TensorRef<'a>> {
        self.get(name)?.ok_or_else(|| ModelError::MissingTensor {
            name: name.into(),
            path: self.path.clone(),
        })
    }
}

/// A tensor's stored bytes, in any safetensors dtype.
pub struct RawTensor<'a> {
    pub dtype: safetensors::Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl TensorRef<'_> {
    pub fn expect_shape(&self, path: &Path, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            return Err(ModelError::WrongShape {
                name: self.name.into(),
                path: path.to_path_buf(),
                expected: expected.to_vec(),
                actual: self.shape.clone(),
            });
        }
        Ok(())
    }

    /// Elements [start, start+len) as f32, failing on NaN or Inf with its position in a
    /// matrix of `cols` columns.
    pub fn read_f32(&self, path: &Path, start: usize, len: usize, cols: usize) -> Result<Vec<f32>> {
        let s = self.dtype.size();
        // The header was validated against the file size and callers check shapes first, so
        // the range is in bounds; still, a wrong caller gets an error, not a panic.
        let bytes = start
            .checked_add(len)
            .and_then(|end| Some((start.checked_mul(s)?, end.checked_mul(s)?)))
            .and_then(|(a, b)| self.bytes.get(a..b))
            .ok_or_else(|| ModelError::Corrupt {
                path: path.to_path_buf(),
                detail: format!(
                    "tensor {} holds {} values, {} requested from {start}",
                    self.name,
                    self.bytes.len() / s,
                    len
                ),
            })?;
        let v = self.dtype.decode(bytes);
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(ModelError::NonFinite {
                name: self.name.into(),
                path: path.to_path_buf(),
                row: (start + i) / cols.max(1),
                col: (start + i) % cols.max(1),
            });
        }
        Ok(v)
    }
}

/// A tensor to write: its name, the dtype it is stored in, and its shape.
pub struct TensorHeader {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorHeader {
    pub fn new(name: String, dtype: DType, shape: Vec<usize>) -> Self {
        Self { name, dtype, shape }
    }

    fn elements(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }
}

/// Receives one tensor's values in order, as f32, and stores them in the tensor's dtype,
/// refusing a finite value the dtype cannot hold (it would be stored as Inf).
pub struct TensorSink<'a> {
    out: &'a mut PartialFile,
    dtype: DType,
    /// Values received so far, and the matrix width they are placed in, for error positions.
    done: usize,
    cols: usize,
    remaining: usize,
    name: &'a str,
    path: &'a Path,
}

impl TensorSink<'_> {
    pub fn put(&mut self, values: &[f32]) -> Result<()> {
        if values.len() > self.remaining {
            return Err(ModelError::Write {
                path: self.path.to_path_buf(),
                detail: format!(
                    "{}: {} more values given than its shape holds",
                    self.name,
                    values.len() - self.remaining
                ),
            });
        }
        let bytes = self
            .dtype
            .encode_in_range(values)
            .map_err(|i| self.out_of_range(values[i], self.done + i))?;
        self.remaining -= values.len();
        self.done += values.len();
        self.out.write_all(&bytes).map_err(io(self.path))
    }

    /// The error for `value` at flat index `at`, placed as row and column of the matrix.
    fn out_of_range(&self, value: f32, at: usize) -> ModelError {
        ModelError::OutOfRange {
            name: self.name.to_string(),
            path: self.path.to_path_buf(),
            dtype: self.dtype.name(),
            value,
            row: at / self.cols,
            col: at % self.cols,
        }
    }
}

/// Writes a safetensors file, streaming each tensor's values from `fill(i, sink)` so that a
/// file larger than memory (a full calibration set) can be written one sample at a time.
/// The header is built by the safetensors crate itself, so the layout is the reference one.
/// Atomic, through `output::PartialFile`: nothing is left at or beside `path` if anything
/// fails, a value overflowing its dtype included.
pub fn write_streamed(
    path: &Path,
    tensors: &[TensorHeader],
    metadata: HashMap<String, String>,
    mut fill: impl FnMut(usize, &mut TensorSink) -> Result<()>,
) -> Result<()> {
    let fail = |detail: String| ModelError::Write {
        path: path.to_path_buf(),
        detail,
    };
    let header = header_bytes(tensors, metadata).map_err(fail)?;
    let mut out = PartialFile::create(path)?;
    out.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|()| out.write_all(&header))
        .map_err(io(path))?;
    for (i, t) in tensors.iter().enumerate() {
        let mut sink = TensorSink {
            out: &mut out,
            dtype: t.dtype,
            done: 0,
            cols: t.shape.last().copied().unwrap_or(1).max(1),
            remaining: t.elements().unwrap_or(0),
            name: &t.name,
            path,
        };
        fill(i, &mut sink)?;
        if sink.remaining != 0 {
            return Err(fail(format!(
                "tensor {}: {} values missing",
                t.name, sink.remaining
            )));
        }
    }
    out.commit()
}

/// The safetensors header of `tensors`, padded with spaces to 8 bytes as the reference writer
/// does, so the data is aligned.
fn header_bytes(
    tensors: &[TensorHeader],
    metadata: HashMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let entries: Vec<(&str, safetensors::Dtype, &[usize])> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dtype.to_safetensors(), &t.shape[..]))
        .collect();
    raw_header_bytes(&entries, metadata)
}

/// The header of tensors of any safetensors dtype (name, dtype, shape), their data laid out
/// in the order given, padded as `header_bytes` pads it.
pub fn raw_header_bytes(
    tensors: &[(&str, safetensors::Dtype, &[usize])],
    metadata: HashMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    let mut seen = std::collections::HashSet::new();
    for &(name, dtype, shape) in tensors {
        if !seen.insert(name) {
            return Err(format!("tensor {name} is given twice"));
        }
        // Counted in bits, as safetensors validates it: some dtypes are narrower than a byte.
        let bits = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.bitsize()))
            .ok_or_else(|| format!("tensor {name} shape {shape:?} is too large"))?;
        if bits % 8 != 0 {
            return Err(format!(
                "tensor {name} of {dtype} with shape {shape:?} does not fill whole bytes"
            ));
        }
        let bytes = bits / 8;
        infos.push((
            name.to_string(),
            TensorInfo {
                dtype,
                shape: shape.to_vec(),
                data_offsets: (offset, offset + bytes),
            },
        ));
        offset += bytes;
    }
    // A HashMap serialises in an order that differs from process to process; the metadata
    // is written sorted instead, so the same tensors give the same bytes on every run. The map
    // serialises the same way alone as inside the header, so its text is swapped whole.
    let unsorted = serde_json::to_string(&metadata).map_err(|e| e.to_string())?;
    let sorted: std::collections::BTreeMap<&String, &String> = metadata.iter().collect();
    let sorted = serde_json::to_string(&sorted).map_err(|e| e.to_string())?;
    let header = Metadata::new(Some(metadata), infos)
        .map_err(|e| e.to_string())
        .and_then(|m| serde_json::to_string(&m).map_err(|e| e.to_string()))?
        .replacen(&unsorted, &sorted, 1);
    let mut header = header.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    Ok(header)
}

/// Writes in-memory f32 tensors, each converted to its header's dtype.
pub fn write_matrices(
    path: &Path,
    tensors: Vec<(TensorHeader, &[f32])>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let (headers, data): (Vec<TensorHeader>, Vec<&[f32]>) = tensors.into_iter().unzip();
    write_streamed(path, &headers, metadata, |i, sink| sink.put(data[i]))
}
