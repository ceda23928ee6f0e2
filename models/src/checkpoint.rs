//! Hugging Face checkpoints: `config.json` plus one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, memory-mapped and read one layer at a time; pruned layers
//! are written back as safetensors in the dtype they came in.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use prunebench_kernels::Matrix;

use crate::config::{LinearSpec, ModelConfig};
use crate::dtype::DType;
use crate::error::{io, ModelError, Result};
use crate::mapped::{write_atomic, MappedFile, OwnedTensor};
use crate::LayerWeights;

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

pub struct Checkpoint {
    dir: PathBuf,
    config: ModelConfig,
    files: Vec<MappedFile>,
    /// Tensor name -> index into `files`.
    weight_map: HashMap<String, usize>,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(ModelError::Io {
                path: dir.to_path_buf(),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
            });
        }
        let config = ModelConfig::from_hf_config(&dir.join("config.json"))?;
        let index_path = dir.join(INDEX);
        let mut files = Vec::new();
        let mut weight_map = HashMap::new();
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(io(&index_path))?;
            let bad = |detail: String| ModelError::BadConfig {
                path: index_path.clone(),
                detail,
            };
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad("no weight_map object".into()))?;
            let mut shard_index: BTreeMap<String, usize> = BTreeMap::new();
            for (name, file) in map {
                let file = file
                    .as_str()
                    .ok_or_else(|| bad(format!("weight_map entry {name} is not a file name")))?;
                let next = shard_index.len();
                let i = *shard_index.entry(file.to_string()).or_insert(next);
                weight_map.insert(name.clone(), i);
            }
            let mut shards: Vec<(usize, String)> =
                shard_index.into_iter().map(|(f, i)| (i, f)).collect();
            shards.sort();
            for (_, f) in shards {
                files.push(MappedFile::open(&dir.join(f))?);
            }
        } else {
            let single = dir.join(SINGLE);
            if !single.exists() {
                return Err(ModelError::BadConfig {
                    path: dir.to_path_buf(),
                    detail: format!("neither {SINGLE} nor {INDEX} is there"),
                });
            }
            let f = MappedFile::open(&single)?;
            for name in f.names() {
                weight_map.insert(name, 0);
            }
            files.push(f);
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            files,
            weight_map,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The selected linears of one layer as f32, checked for shape, dtype and finiteness.
    pub fn read_layer(&self, layer: usize, linears: &[LinearSpec]) -> Result<LayerWeights> {
        self.config.check_layer(layer)?;
        let mut out = Vec::new();
        let mut dtype = None;
        for l in linears {
            let name = l.hf_tensor_name(layer);
            let file = self
                .weight_map
                .get(&name)
                .map(|&i| &self.files[i])
                .ok_or_else(|| ModelError::MissingTensor {
                    name: name.clone(),
                    path: self.dir.clone(),
                })?;
            let t = file.require(&name)?;
            t.expect_shape(&file.path, &[l.rows, l.cols])?;
            let data = t.read_f32(&file.path, 0, l.rows * l.cols, l.cols)?;
            dtype.get_or_insert(t.dtype);
            out.push((
                l.clone(),
                Matrix::new(l.rows, l.cols, data).expect("shape checked"),
            ));
        }
        Ok(LayerWeights {
            model: self.config.clone(),
            layer,
            dtype: dtype.unwrap_or(DType::F32),
            linears: out,
        })
    }
}

/// Writes pruned linears of one layer to `path` as one safetensors file, HF tensor names, in
/// the layer's dtype. Atomic: nothing is left at `path` if anything fails.
pub fn write_layer(
    path: &Path,
    layer: &LayerWeights,
    pruned: &[(LinearSpec, Matrix)],
) -> Result<()> {
    let tensors = pruned
        .iter()
        .map(|(l, m)| {
            OwnedTensor::from_f32(
                l.hf_tensor_name(layer.layer),
                layer.dtype,
                vec![m.rows, m.cols],
                &m.data,
            )
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_atomic(path, tensors, meta)
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
    std::fs::write(&cpath, serde_json::to_string_pretty(&config).expect("json"))
        .map_err(io(&cpath))?;
    let all: Vec<OwnedTensor> = layers
        .iter()
        .flat_map(|lw| {
            lw.linears.iter().map(move |(l, m)| {
                OwnedTensor::from_f32(
                    l.hf_tensor_name(lw.layer),
                    dtype,
                    vec![m.rows, m.cols],
                    &m.data,
                )
            })
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let shards = shards.max(1);
    if shards == 1 {
        return write_atomic(&dir.join(SINGLE), all, meta);
    }
    let total: usize = all.iter().map(|t| t.bytes.len()).sum();
    let mut buckets: Vec<Vec<OwnedTensor>> = (0..shards).map(|_| Vec::new()).collect();
    for (i, t) in all.into_iter().enumerate() {
        buckets[i % shards].push(t);
    }
    let mut weight_map = serde_json::Map::new();
    for (i, bucket) in buckets.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        for t in &bucket {
            weight_map.insert(t.name.clone(), serde_json::Value::String(file.clone()));
        }
        write_atomic(&dir.join(&file), bucket, meta.clone())?;
    }
    let index = serde_json::json!({
        "metadata": {"total_size": total},
        "weight_map": weight_map,
    });
    let ipath = dir.join(INDEX);
    std::fs::write(&ipath, serde_json::to_string_pretty(&index).expect("json")).map_err(io(&ipath))
}
