//! Hugging Face checkpoints: `config.json` plus one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, memory-mapped and read one layer at a time; pruned layers
//! are written back as safetensors in the dtype they came in.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use prunebench_kernels::Matrix;

use crate::config::{InputGroup, LinearSpec, ModelConfig};
use crate::dtype::DType;
use crate::error::{io, ModelError, Result};
use crate::input::{check_input_dir, input_present, read_input_text};
use crate::llama::LlamaConfig;
use crate::mapped::{write_matrices, MappedFile, TensorHeader};
use crate::output::write_file;
use crate::LayerWeights;
use crate::NormWeight;

pub(crate) const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

pub struct Checkpoint {
    dir: PathBuf,
    config: ModelConfig,
    files: Vec<MappedFile>,
    /// Tensor name -> index into `files`.
    weight_map: HashMap<String, usize>,
    /// Where the tensor names come from (the index, or the single file), for error messages.
    map_source: PathBuf,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("files", &self.files.len())
            .field("tensors", &self.weight_map.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens `dir`: `config.json` plus `model.safetensors.index.json` and the shards it names,
    /// or a single `model.safetensors`. Every file is mapped and its header checked here, so a
    /// truncated or missing shard is reported at once rather than midway through a run.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        check_input_dir(dir, "a checkpoint folder")?;
        let config = ModelConfig::from_hf_config(&dir.join("config.json"))?;
        let index_path = dir.join(INDEX);
        let (files, weight_map, map_source) = if input_present(&index_path)? {
            let (files, weight_map) = open_sharded(dir, &index_path)?;
            (files, weight_map, index_path)
        } else {
            let single = dir.join(SINGLE);
            if !input_present(&single)? {
                // Older checkpoints ship only PyTorch pickles, which this reader does not
                // load (unpickling runs arbitrary code); say so rather than "not found".
                let hint = if dir.join("pytorch_model.bin").exists()
                    || dir.join("pytorch_model.bin.index.json").exists()
                {
                    "; only PyTorch .bin weights are there: convert them to safetensors first"
                } else {
                    ""
                };
                return Err(ModelError::BadConfig {
                    path: dir.to_path_buf(),
                    detail: format!("neither {SINGLE} nor {INDEX} is there{hint}"),
                });
            }
            let f = MappedFile::open(&single, "a safetensors file")?;
            let weight_map = f.names().into_iter().map(|name| (name, 0)).collect();
            (vec![f], weight_map, single)
        };
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            files,
            weight_map,
            map_source,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The checkpoint's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model's `config.json` read for the whole-model forward (vocabulary, norm epsilon,
    /// RoPE, context length, tied embeddings).
    /// The checkpoint's `config.json` as it is, every key kept (a pruned model's is this with
    /// the new sizes).
    pub fn config_json(&self) -> Result<serde_json::Value> {
        let path = self.dir.join("config.json");
        let text = read_input_text(&path, "a JSON model config")?;
        serde_json::from_str(&text).map_err(|e| ModelError::BadConfig {
            path,
            detail: format!("not valid JSON: {e}"),
        })
    }

    pub fn llama(&self) -> Result<LlamaConfig> {
        LlamaConfig::from_hf_config(&self.dir.join("config.json"))
    }

    /// Every tensor name the checkpoint lists (the index's weight_map, or the single file's
    /// tensors), sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.weight_map.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.weight_map.contains_key(name)
    }

    /// The safetensors file tensor `name` lives in.
    pub fn shard_of(&self, name: &str) -> Option<&Path> {
        self.weight_map
            .get(name)
            .map(|&i| self.files[i].path.as_path())
    }

    /// The file `name` lives in, or an error naming where it was looked for.
    fn file_of(&self, name: &str) -> Result<&MappedFile> {
        self.weight_map
            .get(name)
            .map(|&i| &self.files[i])
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                path: self.map_source.clone(),
            })
    }

    /// The dtype and shape of tensor `name` (an error for a dtype other than F32, F16, BF16).
    pub fn tensor_info(&self, name: &str) -> Result<(DType, Vec<usize>)> {
        let t = self.file_of(name)?.require(name)?;
        Ok((t.dtype, t.shape))
    }

    /// Any 1-D or 2-D tensor as f32 (a 1-D one of n values as a 1 x n matrix), checked for
    /// NaN and Inf, with the dtype it is stored in.
    pub fn read_tensor(&self, name: &str) -> Result<(Matrix, DType)> {
        let file = self.file_of(name)?;
        let t = file.require(name)?;
        let (rows, cols) = match t.shape[..] {
            [n] => (1, n),
            [r, c] => (r, c),
            _ => {
                return Err(ModelError::NotAMatrix {
                    name: name.to_string(),
                    path: file.path.clone(),
                    shape: t.shape.clone(),
                })
            }
        };
        let data = t.read_f32(&file.path, 0, rows * cols, cols)?;
        Ok((Matrix { rows, cols, data }, t.dtype))
    }

    /// The mapped safetensors files, in the order the index first names them.
    pub(crate) fn files(&self) -> &[MappedFile] {
        &self.files
    }

    /// The shard index, when the checkpoint is sharded.
    pub(crate) fn index_path(&self) -> Option<&Path> {
        (self.map_source.file_name() == Some(std::ffi::OsStr::new(INDEX)))
            .then_some(self.map_source.as_path())
    }

    /// The selected linears of one layer as f32, checked for shape, dtype and finiteness, each
    /// with the dtype it is stored in (`write_layer` writes it back in that one).
    pub fn read_layer(&self, layer: usize, linears: &[LinearSpec]) -> Result<LayerWeights> {
        self.config.check_layer(layer)?;
        let mut out = Vec::new();
        let mut dtypes = Vec::new();
        for l in linears {
            let name = l.hf_tensor_name(layer);
            let file = self
                .weight_map
                .get(&name)
                .map(|&i| &self.files[i])
                .ok_or_else(|| ModelError::MissingTensor {
                    name: name.clone(),
                    path: self.map_source.clone(),
                })?;
            let t = file.require(&name)?;
            t.expect_shape(&file.path, &[l.rows, l.cols])?;
            let data = t.read_f32(&file.path, 0, l.rows * l.cols, l.cols)?;
            dtypes.push(t.dtype);
            out.push((
                l.clone(),
                Matrix {
                    rows: l.rows,
                    cols: l.cols,
                    data,
                },
            ));
        }
        let mut norms = Vec::new();
        for group in [InputGroup::AttnIn, InputGroup::MlpIn] {
            let Some(name) = NormWeight::hf_tensor_name(group, layer) else {
                continue;
            };
            // Optional: only the `norm` re-fit needs them, and it says so when they are absent.
            let Some(file) = self.weight_map.get(&name).map(|&i| &self.files[i]) else {
                continue;
            };
            let t = file.require(&name)?;
            t.expect_shape(&file.path, &[self.config.hidden])?;
            let data = t.read_f32(&file.path, 0, self.config.hidden, self.config.hidden)?;
            norms.push(NormWeight {
                group,
                data,
                dtype: t.dtype,
            });
        }
        Ok(LayerWeights {
            model: self.config.clone(),
            layer,
            dtypes,
            linears: out,
            norms,
        })
    }
}

/// Maps every shard the index names (each once) and the tensor name -> shard table.
fn open_sharded(
    dir: &Path,
    index_path: &Path,
) -> Result<(Vec<MappedFile>, HashMap<String, usize>)> {
    let text = read_input_text(index_path, "a JSON shard index")?;
    let bad = |detail: String| ModelError::BadConfig {
        path: index_path.to_path_buf(),
        detail,
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object".into()))?;
    let mut shard_index: BTreeMap<String, usize> = BTreeMap::new();
    let mut weight_map = HashMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map entry {name} is not a file name")))?;
        // A shard is a file of the checkpoint folder: an absolute path or `..` would read
        // weights from elsewhere, and the output checks only guard the folder itself.
        let mut parts = Path::new(file).components();
        if !matches!(
            (parts.next(), parts.next()),
            (Some(std::path::Component::Normal(_)), None)
        ) {
            return Err(bad(format!(
                "weight_map entry {name} names '{file}', which is not a file name in the checkpoint folder"
            )));
        }
        let next = shard_index.len();
        let i = *shard_index.entry(file.to_string()).or_insert(next);
        weight_map.insert(name.clone(), i);
    }
    let mut shards: Vec<(usize, String)> = shard_index.into_iter().map(|(f, i)| (i, f)).collect();
    shards.sort();
    let files = shards
        .into_iter()
        .map(|(_, f)| {
            MappedFile::open(
                &dir.join(f),
                &format!("a safetensors shard ({INDEX} lists it)"),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((files, weight_map))
}

/// Writes pruned linears of one layer to `path` as one safetensors file, HF tensor names, each
/// in the dtype its linear came in, metadata {"format": "pt"}. Each matrix must have its
/// linear's shape and finite values (a NaN here is a bug upstream, better refused than
/// shipped), finite also once stored (the writer refuses, say, a SparseGPT update beyond f16's
/// range), and each linear may appear once. Atomic: nothing is left at
/// `path` if anything fails.
pub fn write_layer(
    path: &Path,
    layer: &LayerWeights,
    pruned: &[(LinearSpec, Matrix)],
) -> Result<()> {
    write_layer_with_norms(path, layer, pruned, &[])
}

/// `write_layer` with re-fitted RMSNorm weights besides the linears, each under its HF name in
/// the dtype it came in, checked for length and finiteness.
pub fn write_layer_with_norms(
    path: &Path,
    layer: &LayerWeights,
    pruned: &[(LinearSpec, Matrix)],
    norms: &[NormWeight],
) -> Result<()> {
    write_layer_with_meta(path, layer, pruned, norms, &[])
}

/// [`write_layer_with_norms`] with `extra` entries in the safetensors metadata (structured
/// pruning's new sizes); each linear is written at the shape its spec gives.
pub fn write_layer_with_meta(
    path: &Path,
    layer: &LayerWeights,
    pruned: &[(LinearSpec, Matrix)],
    norms: &[NormWeight],
    extra: &[(String, String)],
) -> Result<()> {
    let mut tensors: Vec<(TensorHeader, &[f32])> = Vec::with_capacity(pruned.len());
    for n in norms {
        let name = NormWeight::hf_tensor_name(n.group, layer.layer).ok_or_else(|| {
            ModelError::BadConfig {
                path: path.to_path_buf(),
                detail: format!("the {} input has no norm weight", n.group.name()),
            }
        })?;
        let hidden = layer.model.hidden;
        if n.data.len() != hidden {
            return Err(ModelError::WrongShape {
                name,
                path: path.to_path_buf(),
                expected: vec![hidden],
                actual: vec![n.data.len()],
            });
        }
        if let Some(i) = n.data.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite {
                name,
                path: path.to_path_buf(),
                row: 0,
                col: i,
            });
        }
        tensors.push((TensorHeader::new(name, n.dtype, vec![hidden]), &n.data[..]));
    }
    for (l, m) in pruned {
        let name = l.hf_tensor_name(layer.layer);
        if m.shape() != (l.rows, l.cols) || m.data.len() != l.rows * l.cols {
            return Err(ModelError::WrongShape {
                name,
                path: path.to_path_buf(),
                expected: vec![l.rows, l.cols],
                actual: vec![m.rows, m.cols],
            });
        }
        if let Some(i) = m.data.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite {
                name,
                path: path.to_path_buf(),
                row: i / l.cols.max(1),
                col: i % l.cols.max(1),
            });
        }
        tensors.push((
            TensorHeader::new(name, layer.dtype_of(l.name), vec![l.rows, l.cols]),
            &m.data[..],
        ));
    }
    let mut meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    meta.extend(extra.iter().cloned());
    write_matrices(path, tensors, meta)
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
    }
}

/// Writes a whole checkpoint in HF layout (config.json, safetensors shards and their index)
/// holding the given layers, for tests and for producing inputs by hand.
pub fn write_checkpoint(
    dir: &Path,
    cfg: &ModelConfig,
    layers: &[LayerWeights],
    dtype: DType,
    shards: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "torch_dtype": dtype_name(dtype),
    });
    let cpath = dir.join("config.json");
    write_file(
        &cpath,
        serde_json::to_string_pretty(&config)
            .expect("json")
            .as_bytes(),
    )?;
    let all: Vec<(TensorHeader, &[f32])> = layers
        .iter()
        .flat_map(|lw| {
            let norms = lw.norms.iter().filter_map(move |n| {
                let name = NormWeight::hf_tensor_name(n.group, lw.layer)?;
                Some((
                    TensorHeader::new(name, dtype, vec![n.data.len()]),
                    &n.data[..],
                ))
            });
            lw.linears
                .iter()
                .map(move |(l, m)| {
                    (
                        TensorHeader::new(l.hf_tensor_name(lw.layer), dtype, vec![m.rows, m.cols]),
                        &m.data[..],
                    )
                })
                .chain(norms)
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let shards = shards.max(1);
    if shards == 1 {
        // An index left from an earlier sharded write would take precedence when reading.
        let index = dir.join(INDEX);
        if index.exists() {
            std::fs::remove_file(&index).map_err(io(&index))?;
        }
        return write_matrices(&dir.join(SINGLE), all, meta);
    }
    let total: usize = all.iter().map(|(_, d)| d.len() * dtype.size()).sum();
    let mut buckets: Vec<Vec<(TensorHeader, &[f32])>> = (0..shards).map(|_| Vec::new()).collect();
    for (i, t) in all.into_iter().enumerate() {
        buckets[i % shards].push(t);
    }
    let mut weight_map = serde_json::Map::new();
    for (i, bucket) in buckets.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        for (t, _) in &bucket {
            weight_map.insert(t.name.clone(), serde_json::Value::String(file.clone()));
        }
        write_matrices(&dir.join(&file), bucket, meta.clone())?;
    }
    let index = serde_json::json!({
        "metadata": {"total_size": total},
        "weight_map": weight_map,
    });
    let ipath = dir.join(INDEX);
    // Serialising a `Value` built from strings and numbers cannot fail.
    write_file(
        &ipath,
        serde_json::to_string_pretty(&index)
            .expect("json")
            .as_bytes(),
    )
}
