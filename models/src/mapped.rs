//! A memory-mapped safetensors file whose header is parsed once; tensors are read by name as
//! byte slices, so a layer or a calibration sample is read without loading the file.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::dtype::DType;
use crate::error::{io, ModelError, Result};

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
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(io(path))?;
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

    pub fn metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
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
        let v = self.dtype.decode(&self.bytes[start * s..(start + len) * s]);
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

/// A tensor to write: its name, dtype, shape and little-endian bytes.
pub struct OwnedTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl OwnedTensor {
    pub fn from_f32(name: String, dtype: DType, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            name,
            dtype,
            shape,
            bytes: dtype.encode(values),
        }
    }
}

/// Writes tensors to `path` atomically: a temporary file in the
/// same folder, renamed over `path` only once complete, removed on any failure.
pub fn write_atomic(
    path: &Path,
    tensors: Vec<OwnedTensor>,
    metadata: std::collections::HashMap<String, String>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| ModelError::BadConfig {
            path: path.to_path_buf(),
            detail: "not a file path".into(),
        })?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.partial-{}", std::process::id()));
    let views: std::result::Result<Vec<_>, _> = tensors
        .iter()
        .map(|t| {
            safetensors::tensor::TensorView::new(
                t.dtype.to_safetensors(),
                t.shape.clone(),
                &t.bytes,
            )
            .map(|v| (t.name.clone(), v))
        })
        .collect();
    let result = views
        .map_err(|e| ModelError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
        .and_then(|views| {
            safetensors::serialize_to_file(views, Some(metadata), &tmp).map_err(|e| match e {
                safetensors::SafeTensorError::IoError(error) => ModelError::Io {
                    path: path.to_path_buf(),
                    error,
                },
                other => ModelError::Corrupt {
                    path: path.to_path_buf(),
                    detail: other.to_string(),
                },
            })
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io(path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
