//! A pruned model written back as a Hugging Face checkpoint folder that loads wherever the
//! input did: the input's files, its sharding and tensor names, each tensor in its own dtype,
//! only the replaced tensors re-encoded. docs/FORMATS.md describes the folder.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use prunebench_kernels::Matrix;
use serde_json::Value;

use crate::checkpoint::{Checkpoint, INDEX};
use crate::dtype::DType;
use crate::error::{io, ModelError, Result};
use crate::input::{open_input_file, read_input_text};
use crate::mapped::{raw_header_bytes, MappedFile};
use crate::output::{check_new_folder, Inputs, PartialDir, PartialFile};

/// Values encoded per write of a replaced tensor, so that no tensor is held encoded whole.
const ENCODE_CHUNK: usize = 1 << 16;

/// Top-level files that are weights in another format than safetensors, or an index of such
/// weights. They are the dense model: copied beside the pruned shards they would double the
/// folder and be loaded instead of them by tools that prefer them.
fn is_other_weights(name: &str) -> bool {
    const EXTENSIONS: [&str; 9] = [
        "safetensors",
        "bin",
        "pt",
        "pth",
        "ckpt",
        "h5",
        "msgpack",
        "gguf",
        "onnx",
    ];
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".index.json")
        || Path::new(&lower)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e))
}

/// Where one tensor's bytes come from.
enum Data<'a> {
    /// The input's bytes, unchanged.
    Copy(&'a [u8]),
    /// New f32 values, encoded into the tensor's dtype.
    Encode(&'a [f32], DType),
}

struct Entry<'a> {
    name: String,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Data<'a>,
}

impl Entry<'_> {
    fn bytes(&self) -> usize {
        match &self.data {
            Data::Copy(b) => b.len(),
            Data::Encode(v, d) => v.len() * d.size(),
        }
    }

    fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One output shard: its file name, the input file's metadata, its tensors in file order.
struct Shard<'a> {
    name: String,
    metadata: HashMap<String, String>,
    entries: Vec<Entry<'a>>,
}

/// Fails unless `out` can take a pruned copy of `input`: a new or empty folder, neither the
/// input checkpoint folder (whether or not `inputs` lists it) nor inside it, nor any of
/// `inputs`. [`write_pruned_checkpoint`] checks it again; call this before the pruning, so
/// that a bad `--out` is refused before the hours of work rather than after.
pub fn check_output_folder(input: &Checkpoint, out: &Path, inputs: &Inputs) -> Result<()> {
    let mut own = Inputs::new();
    own.folder(input.dir(), "the input checkpoint folder");
    check_new_folder(out, &own)?;
    check_new_folder(out, inputs)
}

/// Writes `input` with the tensors of `replaced` swapped in as a checkpoint folder at `out`.
///
/// - `out` must be new or an empty folder, neither the input folder nor inside it nor any of
///   `inputs`; all of this is checked, and every replacement validated, before anything is
///   written. Everything is written into a temporary folder beside `out` (removed on any
///   failure, and on SIGINT/SIGTERM by the program's handler) and moved into place at the end.
/// - Every top-level file of the input folder is copied unchanged, except the safetensors
///   shards and the index, which are written anew, weights in other formats (`.bin`, `.pt`,
///   `.pth`, `.ckpt`, `.h5`, `.msgpack`, `.gguf`, `.onnx`, other `*.index.json`: the dense
///   model), and `config.json` when `config_json` is given (written instead, pretty-printed).
///   Sub-folders are not copied.
/// - The same shards as the input, under the same file names, each holding the same tensor
///   names in the same order with the same safetensors metadata (`format: pt` added where
///   absent); each tensor in its input dtype. An unchanged tensor's bytes are copied as they
///   are; a replaced one is encoded from f32 (round to nearest even), refusing NaN, Inf, and a
///   finite value its dtype cannot hold (f16 beyond 65504). A replacement may change the shape
///   (structured pruning): a 1-D tensor takes a 1 x n matrix, a 2-D one any matrix. A
///   replaced name the checkpoint does not list is an error.
/// - A sharded input gets a new `model.safetensors.index.json`: the same weight_map and other
///   keys, `metadata.total_size` (and `total_parameters`, where present) recomputed.
///
/// Memory: nothing of a shard is held in memory; unchanged tensors are copied from the input's
/// memory map, replaced ones encoded 65536 values at a time. The peak beyond the caller's
/// `replaced` is a 1 MiB write buffer and one 256 KiB chunk, whatever the model's size (the
/// input's pages pass through the page cache, which the system reclaims as needed).
pub fn write_pruned_checkpoint(
    input: &Checkpoint,
    out: &Path,
    replaced: &HashMap<String, Matrix>,
    config_json: Option<&Value>,
    inputs: &Inputs,
) -> Result<()> {
    check_output_folder(input, out, inputs)?;
    let refuse = |detail: String| ModelError::Write {
        path: out.to_path_buf(),
        detail,
    };
    let mut unknown: Vec<&String> = replaced.keys().filter(|n| !input.has_tensor(n)).collect();
    unknown.sort();
    if let Some(name) = unknown.first() {
        return Err(refuse(format!(
            "tensor {name} is not in the checkpoint {}, so it cannot be replaced",
            input.dir().display()
        )));
    }
    let shards = plan_shards(input, replaced, out)?;
    let shard_names: Vec<&str> = shards.iter().map(|s| s.name.as_str()).collect();
    let copies = files_to_copy(input, &shard_names, config_json.is_some())?;

    let dir = PartialDir::create(out)?;
    for (from, name) in &copies {
        copy_file(from, &dir.path().join(name))?;
    }
    if let Some(config) = config_json {
        write_json(&dir.path().join("config.json"), config)?;
    }
    for shard in &shards {
        write_shard(shard, &dir.path().join(&shard.name))?;
    }
    if let Some(index) = input.index_path() {
        let updated = updated_index(index, &shards)?;
        write_json(&dir.path().join(INDEX), &updated)?;
    }
    dir.commit_new(inputs)
}

/// Every output shard's tensors, the replacements checked for dtype, shape and values.
fn plan_shards<'a>(
    input: &'a Checkpoint,
    replaced: &'a HashMap<String, Matrix>,
    out: &Path,
) -> Result<Vec<Shard<'a>>> {
    let mut shards = Vec::new();
    for file in input.files() {
        let name = file
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| ModelError::BadConfig {
                path: file.path.clone(),
                detail: "a shard path without a file name".into(),
            })?;
        let target = out.join(&name);
        let mut metadata = file.metadata().cloned().unwrap_or_default();
        metadata
            .entry("format".to_string())
            .or_insert_with(|| "pt".to_string());
        let mut entries = Vec::new();
        for tensor in file.names_in_file_order() {
            let raw = file
                .raw(&tensor)?
                .ok_or_else(|| ModelError::MissingTensor {
                    name: tensor.clone(),
                    path: file.path.clone(),
                })?;
            // A tensor the index maps to another shard is copied here as it is.
            let here = input.shard_of(&tensor) == Some(file.path.as_path());
            let entry = match replaced.get(&tensor).filter(|_| here) {
                None => Entry {
                    name: tensor,
                    dtype: raw.dtype,
                    shape: raw.shape.to_vec(),
                    data: Data::Copy(raw.bytes),
                },
                Some(m) => replacement(file, tensor, raw.dtype, raw.shape, m, &target)?,
            };
            entries.push(entry);
        }
        shards.push(Shard {
            name,
            metadata,
            entries,
        });
    }
    Ok(shards)
}

/// The entry for tensor `name` replaced by `m`, after checking that it can be stored.
fn replacement<'a>(
    file: &MappedFile,
    name: String,
    dtype: safetensors::Dtype,
    shape: &[usize],
    m: &'a Matrix,
    target: &Path,
) -> Result<Entry<'a>> {
    let d = DType::from_safetensors(dtype).ok_or_else(|| ModelError::UnsupportedDtype {
        name: name.to_string(),
        path: file.path.clone(),
        dtype: format!("{dtype:?}"),
    })?;
    let wrong = |expected: Vec<usize>| ModelError::WrongShape {
        name: name.clone(),
        path: target.to_path_buf(),
        expected,
        actual: vec![m.rows, m.cols],
    };
    if m.rows.checked_mul(m.cols) != Some(m.data.len()) {
        return Err(ModelError::Write {
            path: target.to_path_buf(),
            detail: format!(
                "tensor {name}: a {}x{} matrix holding {} values",
                m.rows,
                m.cols,
                m.data.len()
            ),
        });
    }
    let new_shape = match shape.len() {
        1 if m.rows == 1 => vec![m.cols],
        1 => return Err(wrong(vec![1, shape[0]])),
        2 => vec![m.rows, m.cols],
        _ => {
            return Err(ModelError::NotAMatrix {
                name: name.to_string(),
                path: file.path.clone(),
                shape: shape.to_vec(),
            })
        }
    };
    let cols = m.cols.max(1);
    if let Some(i) = m.data.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::NonFinite {
            name: name.to_string(),
            path: target.to_path_buf(),
            row: i / cols,
            col: i % cols,
        });
    }
    if let Some(i) = d.first_out_of_range(&m.data) {
        return Err(ModelError::OutOfRange {
            name: name.to_string(),
            path: target.to_path_buf(),
            dtype: d.name(),
            value: m.data[i],
            row: i / cols,
            col: i % cols,
        });
    }
    Ok(Entry {
        name,
        dtype,
        shape: new_shape,
        data: Data::Encode(&m.data, d),
    })
}

/// Refuses, before any work, a checkpoint whose pruned copy could not be written for a file
/// of its own: every top-level file the copy takes is opened now (a dangling link, a FIFO,
/// an unreadable file), and the error names that file, not the output.
pub fn check_files_to_copy(input: &Checkpoint) -> Result<()> {
    let names: Vec<String> = input
        .files()
        .iter()
        .filter_map(|f| f.path.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    files_to_copy(input, &names, false).map(drop)
}

/// The top-level files copied as they are: (source, file name), all but the shards named in
/// `shards`. Checked here, before anything is written, so that an unreadable one stops the
/// run at once.
fn files_to_copy(
    input: &Checkpoint,
    shards: &[&str],
    new_config: bool,
) -> Result<Vec<(PathBuf, String)>> {
    let dir = input.dir();
    let entries = std::fs::read_dir(dir).map_err(io(dir))?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(io(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let skip = shards.contains(&name.as_str())
            || name == INDEX
            || is_other_weights(&name)
            || (new_config && name == "config.json")
            || path.is_dir();
        if !skip {
            // Refuses, naming it, what is not a regular file once links are followed.
            open_input_file(&path, "a file of the checkpoint folder")?;
            out.push((path, name));
        }
    }
    out.sort();
    Ok(out)
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    let mut src = open_input_file(from, "a file of the checkpoint folder")?;
    let mut dst = PartialFile::create(to)?;
    std::io::copy(&mut src, &mut dst).map_err(io(to))?;
    dst.commit()
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    // Serialising a `Value` cannot fail.
    let mut text = serde_json::to_string_pretty(v).expect("json");
    text.push('\n');
    crate::output::write_file(path, text.as_bytes())
}

fn write_shard(shard: &Shard, path: &Path) -> Result<()> {
    let headers: Vec<(&str, safetensors::Dtype, &[usize])> = shard
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.dtype, &e.shape[..]))
        .collect();
    let header =
        raw_header_bytes(&headers, shard.metadata.clone()).map_err(|detail| ModelError::Write {
            path: path.to_path_buf(),
            detail,
        })?;
    let mut out = PartialFile::create(path)?;
    out.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|()| out.write_all(&header))
        .map_err(io(path))?;
    for e in &shard.entries {
        match e.data {
            Data::Copy(bytes) => out.write_all(bytes).map_err(io(path))?,
            Data::Encode(values, d) => {
                for chunk in values.chunks(ENCODE_CHUNK) {
                    out.write_all(&d.encode(chunk)).map_err(io(path))?;
                }
            }
        }
    }
    out.commit()
}

/// The input index with the sizes recomputed for the tensors written.
fn updated_index(index: &Path, shards: &[Shard]) -> Result<Value> {
    let text = read_input_text(index, "a JSON shard index")?;
    let mut v: Value = serde_json::from_str(&text).map_err(|e| ModelError::BadConfig {
        path: index.to_path_buf(),
        detail: format!("not valid JSON: {e}"),
    })?;
    let entries = shards.iter().flat_map(|s| &s.entries);
    let bytes: usize = entries.clone().map(Entry::bytes).sum();
    let params: usize = entries.map(Entry::elements).sum();
    let Some(map) = v.as_object_mut() else {
        return Err(ModelError::BadConfig {
            path: index.to_path_buf(),
            detail: "not a JSON object".into(),
        });
    };
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if !meta.is_object() {
        *meta = Value::Object(Default::default());
    }
    let meta = meta.as_object_mut().expect("an object");
    meta.insert("total_size".into(), Value::from(bytes));
    if meta.contains_key("total_parameters") {
        meta.insert("total_parameters".into(), Value::from(params));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_weights_in_other_formats_are_not_copied() {
        for name in [
            "pytorch_model.bin",
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model.bin.index.json",
            "consolidated.00.pth",
            "model.safetensors",
            "tf_model.h5",
            "flax_model.msgpack",
            "model.Q4.GGUF",
        ] {
            assert!(is_other_weights(name), "{name}");
        }
        for name in [
            "config.json",
            "tokenizer.json",
            "tokenizer.model",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "generation_config.json",
            "README.md",
            "LICENSE",
        ] {
            assert!(!is_other_weights(name), "{name}");
        }
    }
}
