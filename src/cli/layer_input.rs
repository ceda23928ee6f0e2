//! Turns the layer arguments into weights and calibration: a checkpoint or a seeded synthetic
//! layer, a calibration file or synthetic LLaMA-like calibration.

use anyhow::{bail, Context, Result};

use prunebench_harness::Calibration;
use prunebench_kernels::suite::{ForwardDims, ModelShapes};
use prunebench_models::calibration::CalibrationFile;
use prunebench_models::checkpoint::Checkpoint;
use prunebench_models::config::{self, parse_linears, ModelConfig};
use prunebench_models::synthetic::{synthetic_layer, SyntheticCalibration};
use prunebench_models::LayerWeights;

use super::LayerArgs;

pub struct LayerInput {
    pub layer: LayerWeights,
    /// The forward pass's sizes for the forward op cases.
    pub forward: ForwardDims,
    synthetic: Option<SyntheticCalibration>,
    file: Option<CalibrationFile>,
}

impl LayerInput {
    pub fn model(args: &LayerArgs) -> Result<(ModelConfig, Option<Checkpoint>)> {
        match &args.checkpoint {
            Some(dir) => {
                let ck = Checkpoint::open(dir)
                    .with_context(|| format!("opening checkpoint {}", dir.display()))?;
                let cfg = ck.config().clone();
                if let Some(name) = &args.model {
                    let named = config::lookup(name)?;
                    if (named.hidden, named.intermediate, named.num_kv_heads)
                        != (cfg.hidden, cfg.intermediate, cfg.num_kv_heads)
                    {
                        bail!(
                            "--model {name} (hidden {}, intermediate {}) does not match the checkpoint's config.json (hidden {}, intermediate {})",
                            named.hidden, named.intermediate, cfg.hidden, cfg.intermediate
                        );
                    }
                }
                Ok((cfg, Some(ck)))
            }
            None => Ok((
                config::lookup(args.model.as_deref().unwrap_or("tiny"))?,
                None,
            )),
        }
    }

    pub fn load(args: &LayerArgs) -> Result<Self> {
        let (cfg, checkpoint) = Self::model(args)?;
        let forward = forward_dims(&cfg, checkpoint.as_ref());
        if args.layer >= cfg.num_layers {
            bail!(
                "layer {} is out of range: {} has {} layers (0-{})",
                args.layer,
                cfg.name,
                cfg.num_layers,
                cfg.num_layers - 1
            );
        }
        let linears = parse_linears(&cfg, &args.linears)?;
        let layer = match &checkpoint {
            Some(ck) => ck.read_layer(args.layer, &linears)?,
            None => synthetic_layer(&cfg, args.layer, &linears, args.seed),
        };
        let (synthetic, file) = match &args.calibration {
            Some(path) => (
                None,
                Some(
                    CalibrationFile::open(path, &cfg)
                        .with_context(|| format!("opening calibration {}", path.display()))?,
                ),
            ),
            None => {
                if args.samples == 0 || args.tokens == 0 {
                    bail!("--samples and --tokens must be at least 1");
                }
                (
                    Some(SyntheticCalibration::new(
                        &cfg,
                        args.layer,
                        args.samples,
                        args.tokens,
                        args.seed,
                    )),
                    None,
                )
            }
        };
        Ok(Self {
            layer,
            forward,
            synthetic,
            file,
        })
    }

    /// The distinct (rows, cols) of the selected linears: the shapes op cases run on.
    pub fn shapes(&self) -> Vec<(usize, usize)> {
        distinct_shapes(self.layer.linears.iter().map(|(l, _)| l))
    }

    /// What the op cases at this layer's sizes are cut from, at `tokens` per sample.
    pub fn model_shapes(&self, tokens: usize) -> ModelShapes {
        ModelShapes {
            linears: self.shapes(),
            layer: self.layer.model.layer_dims(),
            forward: self.forward,
            tokens,
        }
    }

    pub fn calibration(&self) -> Calibration<'_> {
        match (&self.file, &self.synthetic) {
            (Some(f), _) => Calibration {
                source: f,
                ready: Some(f),
            },
            (None, Some(s)) => Calibration {
                source: s,
                ready: None,
            },
            (None, None) => unreachable!("load always sets one calibration"),
        }
    }
}

/// The forward pass's sizes: a checkpoint's vocabulary and RoPE base from its config.json
/// where it has them (a layer-only config may not), else the family's.
pub fn forward_dims(cfg: &ModelConfig, checkpoint: Option<&Checkpoint>) -> ForwardDims {
    checkpoint
        .and_then(|ck| ck.llama().ok())
        .map_or_else(|| cfg.forward_dims(), |l| l.forward_dims())
}

pub fn distinct_shapes<'a>(
    linears: impl IntoIterator<Item = &'a prunebench_models::LinearSpec>,
) -> Vec<(usize, usize)> {
    let mut shapes: Vec<(usize, usize)> = linears.into_iter().map(|l| (l.rows, l.cols)).collect();
    shapes.sort_unstable();
    shapes.dedup();
    shapes
}
