//! GBLM-Pruner's gradients for a whole model, as `baselines/compute_gradients.py` writes them
//! from the dense model (ALGORITHMS.md §2 and §14): one safetensors file holding, per linear of
//! every layer, the final G under the weight's own HF name (`model.layers.3.mlp.up_proj.weight`),
//! f32, f16 or bf16, with metadata `prunebench.gradients` = `1`.

use std::path::Path;

use prunebench_kernels::Matrix;

use crate::config::{InputGroup, LinearSpec, ModelConfig};
use crate::error::{ModelError, Result};
use crate::mapped::MappedFile;
use crate::ReadyStats;

pub const FORMAT_KEY: &str = "prunebench.gradients";
pub const FORMAT_VERSION: &str = "1";

pub struct GradientsFile {
    file: MappedFile,
    cfg: ModelConfig,
}

impl std::fmt::Debug for GradientsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradientsFile")
            .field("path", &self.file.path)
            .finish()
    }
}

impl GradientsFile {
    /// Opens the file and checks its version and that every linear of every layer of `cfg`
    /// is there at its shape, before any work starts.
    pub fn open(path: &Path, cfg: &ModelConfig) -> Result<GradientsFile> {
        let file = MappedFile::open(path, "a gradients safetensors file")?;
        let bad = |detail: String| ModelError::BadConfig {
            path: path.to_path_buf(),
            detail,
        };
        match file.metadata().and_then(|m| m.get(FORMAT_KEY)) {
            Some(v) if v == FORMAT_VERSION => {}
            Some(v) => {
                return Err(bad(format!(
                    "gradients format version {v}, this build reads {FORMAT_VERSION}"
                )))
            }
            None => {
                return Err(bad(format!(
                    "not a prunebench gradients file (metadata {FORMAT_KEY} missing; \
                     baselines/compute_gradients.py writes one)"
                )))
            }
        }
        for layer in 0..cfg.num_layers {
            for l in cfg.linears() {
                let name = l.hf_tensor_name(layer);
                let t = file.get(&name)?.ok_or_else(|| ModelError::MissingTensor {
                    name: name.clone(),
                    path: path.to_path_buf(),
                })?;
                t.expect_shape(path, &[l.rows, l.cols])?;
            }
        }
        Ok(GradientsFile {
            file,
            cfg: cfg.clone(),
        })
    }

    /// The statistics of one layer, for the layer's pruning pass.
    pub fn layer(&self, layer: usize) -> LayerGradients<'_> {
        LayerGradients { file: self, layer }
    }
}

/// One layer's view of a [`GradientsFile`]: gradients ready, no activation statistics.
pub struct LayerGradients<'a> {
    file: &'a GradientsFile,
    layer: usize,
}

impl ReadyStats for LayerGradients<'_> {
    fn ready_act_stat(&self, _group: InputGroup) -> Result<Option<Matrix>> {
        Ok(None)
    }

    fn ready_hessian(&self, _group: InputGroup) -> Result<Option<Matrix>> {
        Ok(None)
    }

    fn ready_grad(&self, linear: &LinearSpec) -> Result<Option<Matrix>> {
        let l = self.file.cfg.linear(linear.name)?;
        let name = l.hf_tensor_name(self.layer);
        let path = &self.file.file.path;
        let t = self.file.file.require(&name)?;
        let data = t.read_f32(path, 0, l.rows * l.cols, l.cols)?;
        if let Some(i) = data.iter().position(|&v| v < 0.0) {
            return Err(ModelError::InvalidStatistic {
                name,
                path: path.clone(),
                statistic: "gradient statistic",
                detail: format!(
                    "{} at row {}, column {} is negative",
                    data[i],
                    i / l.cols,
                    i % l.cols
                ),
            });
        }
        Ok(Some(Matrix {
            rows: l.rows,
            cols: l.cols,
            data,
        }))
    }
}

/// What a gradients file records of the run that made it, as `baselines/compute_gradients.py`
/// writes it.
pub struct GradientsMeta<'a> {
    pub grad_norm: &'a str,
    pub nsamples: usize,
    pub seqlen: usize,
    pub seed: u64,
    pub grad_scale: f32,
}

/// Writes the statistic of every linear (HF weight names, f32) with the format's metadata,
/// through a temporary renamed into place, so no partial file is ever left at `path`.
pub fn write(path: &Path, tensors: &[(String, Matrix)], meta: &GradientsMeta<'_>) -> Result<()> {
    let metadata = std::collections::HashMap::from([
        (FORMAT_KEY.to_string(), FORMAT_VERSION.to_string()),
        ("grad_norm".to_string(), meta.grad_norm.to_string()),
        ("nsamples".to_string(), meta.nsamples.to_string()),
        ("seqlen".to_string(), meta.seqlen.to_string()),
        ("seed".to_string(), meta.seed.to_string()),
        ("grad_scale".to_string(), format!("{}", meta.grad_scale)),
    ]);
    let all = tensors
        .iter()
        .map(|(name, m)| {
            let header = crate::mapped::TensorHeader::new(
                name.clone(),
                crate::DType::F32,
                vec![m.rows, m.cols],
            );
            (header, &m.data[..])
        })
        .collect();
    crate::mapped::write_matrices(path, all, metadata)
}
