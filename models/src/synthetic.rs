//! Seeded synthetic layers and calibration data. The inputs are what makes pruning methods
//! differ: like LLaMA activations, channels are correlated through a fixed low-rank mixing
//! (plus noise) and a few channels are 10-100x larger than the rest. With independent,
//! equal-scale columns every method would look alike. Every sample is generated on demand from
//! (seed, layer, group, sample), so 128 x 2048-token calibration never has to fit in memory,
//! and rows are seeded one by one so the result does not depend on the thread count.

use rayon::prelude::*;

use prunebench_kernels::rng::Rng;
use prunebench_kernels::Matrix;

use crate::config::{InputGroup, LinearSpec, ModelConfig};
use crate::dtype::DType;
use crate::error::Result;
use crate::LayerWeights;

/// Calibration inputs and output gradients, one sample at a time.
pub trait CalibrationSource: Send + Sync {
    fn samples(&self) -> usize;
    fn tokens(&self) -> usize;
    /// X of one sample: tokens x cols of the group.
    fn input(&self, group: InputGroup, sample: usize) -> Result<Matrix>;
    /// dY of one sample: tokens x rows of the linear (GBLM-Pruner).
    fn output_grad(&self, linear: &LinearSpec, sample: usize) -> Result<Matrix>;
    fn has_output_grads(&self) -> bool;
    /// One line for reports.
    fn describe(&self) -> String;
}

/// Standard deviation of trained LLaMA weights, roughly.
const WEIGHT_STD: f64 = 0.02;
/// Rank of the channel mixing that correlates input channels.
const MIX_RANK: usize = 24;
/// Independent noise per channel, relative to the mixed signal.
const NOISE: f64 = 0.3;
/// Fraction of outlier channels, and their scale range.
const OUTLIER_FRACTION: f64 = 0.02;
const OUTLIER_SCALE: (f64, f64) = (10.0, 100.0);
/// Output gradients are small, as per-token loss gradients are.
const GRAD_SCALE: f64 = 1e-3;

fn stream(seed: u64, parts: &[u64]) -> Rng {
    Rng::derive(seed, parts)
}

fn linear_index(name: &str) -> u64 {
    crate::config::LINEAR_NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap_or(7) as u64
}

/// A layer with Gaussian weights (std 0.02, rows scaled by 0.7-1.3), deterministic per
/// (seed, layer, linear).
pub fn synthetic_layer(
    cfg: &ModelConfig,
    layer: usize,
    linears: &[LinearSpec],
    seed: u64,
) -> LayerWeights {
    let linears = linears
        .iter()
        .map(|l| {
            let id = linear_index(l.name);
            let mut data = vec![0.0f32; l.rows * l.cols];
            data.par_chunks_mut(l.cols.max(1))
                .enumerate()
                .for_each(|(r, row)| {
                    let mut rng = stream(seed, &[1, layer as u64, id, r as u64]);
                    let scale = WEIGHT_STD * (0.7 + 0.6 * rng.uniform());
                    for v in row {
                        *v = (scale * rng.normal()) as f32;
                    }
                });
            (
                l.clone(),
                Matrix {
                    rows: l.rows,
                    cols: l.cols,
                    data,
                },
            )
        })
        .collect();
    LayerWeights {
        model: cfg.clone(),
        layer,
        dtype: DType::F32,
        linears,
    }
}

/// The fixed structure of one input group: channel mixing and channel scales.
struct GroupStructure {
    group: InputGroup,
    cols: usize,
    /// MIX_RANK x cols, row-major.
    mix: Vec<f32>,
    scale: Vec<f32>,
}

impl GroupStructure {
    fn new(group: InputGroup, cols: usize, seed: u64, layer: usize) -> Self {
        let gid = group as u64;
        let mut rng = stream(seed, &[2, layer as u64, gid]);
        let norm = 1.0 / (MIX_RANK as f64).sqrt();
        let mix = (0..MIX_RANK * cols)
            .map(|_| (rng.normal() * norm) as f32)
            .collect();
        let scale = (0..cols)
            .map(|_| {
                if rng.uniform() < OUTLIER_FRACTION {
                    let (lo, hi) = OUTLIER_SCALE;
                    (lo + (hi - lo) * rng.uniform()) as f32
                } else {
                    (0.5 + rng.uniform()) as f32
                }
            })
            .collect();
        Self {
            group,
            cols,
            mix,
            scale,
        }
    }
}

/// LLaMA-like calibration for one layer, generated sample by sample.
pub struct SyntheticCalibration {
    layer: usize,
    seed: u64,
    samples: usize,
    tokens: usize,
    groups: Vec<GroupStructure>,
}

impl SyntheticCalibration {
    pub fn new(cfg: &ModelConfig, layer: usize, samples: usize, tokens: usize, seed: u64) -> Self {
        let groups = cfg
            .input_groups()
            .into_iter()
            .map(|(g, cols)| GroupStructure::new(g, cols, seed, layer))
            .collect();
        Self {
            layer,
            seed,
            samples,
            tokens,
            groups,
        }
    }

    fn structure(&self, group: InputGroup) -> &GroupStructure {
        self.groups
            .iter()
            .find(|g| g.group == group)
            .expect("every input group of the model has a structure")
    }
}

impl CalibrationSource for SyntheticCalibration {
    fn samples(&self) -> usize {
        self.samples
    }

    fn tokens(&self) -> usize {
        self.tokens
    }

    fn input(&self, group: InputGroup, sample: usize) -> Result<Matrix> {
        let g = self.structure(group);
        let cols = g.cols;
        let mut data = vec![0.0f32; self.tokens * cols];
        data.par_chunks_mut(cols.max(1))
            .enumerate()
            .for_each(|(t, row)| {
                let mut rng = stream(
                    self.seed,
                    &[3, self.layer as u64, group as u64, sample as u64, t as u64],
                );
                let z: Vec<f32> = (0..MIX_RANK).map(|_| rng.normal() as f32).collect();
                for (c, v) in row.iter_mut().enumerate() {
                    let mut s = 0.0f32;
                    for (k, zk) in z.iter().enumerate() {
                        s += zk * g.mix[k * cols + c];
                    }
                    *v = g.scale[c] * (s + (NOISE * rng.normal()) as f32);
                }
            });
        Ok(Matrix {
            rows: self.tokens,
            cols,
            data,
        })
    }

    fn output_grad(&self, linear: &LinearSpec, sample: usize) -> Result<Matrix> {
        let id = linear_index(linear.name);
        let rows = linear.rows;
        let mut row_rng = stream(self.seed, &[4, self.layer as u64, id]);
        let row_scale: Vec<f64> = (0..rows).map(|_| (0.5 * row_rng.normal()).exp()).collect();
        let mut data = vec![0.0f32; self.tokens * rows];
        data.par_chunks_mut(rows.max(1))
            .enumerate()
            .for_each(|(t, out)| {
                let mut rng = stream(
                    self.seed,
                    &[5, self.layer as u64, id, sample as u64, t as u64],
                );
                let token_scale = GRAD_SCALE * (0.5 * rng.normal()).exp();
                for (r, v) in out.iter_mut().enumerate() {
                    *v = (token_scale * row_scale[r] * rng.normal()) as f32;
                }
            });
        Ok(Matrix {
            rows: self.tokens,
            cols: rows,
            data,
        })
    }

    fn has_output_grads(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!(
            "synthetic (seed {}, {} samples x {} tokens)",
            self.seed, self.samples, self.tokens
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::lookup;

    #[test]
    fn deterministic_per_seed_and_sample() {
        let cfg = lookup("tiny").unwrap();
        let a = SyntheticCalibration::new(&cfg, 1, 4, 8, 7);
        let b = SyntheticCalibration::new(&cfg, 1, 4, 8, 7);
        let x0 = a.input(InputGroup::AttnIn, 0).unwrap();
        assert_eq!(x0, b.input(InputGroup::AttnIn, 0).unwrap());
        assert_ne!(x0, a.input(InputGroup::AttnIn, 1).unwrap());
        let q = cfg.linear("q_proj").unwrap();
        assert_eq!(a.output_grad(&q, 2).unwrap(), b.output_grad(&q, 2).unwrap());
        let w1 = synthetic_layer(&cfg, 0, &cfg.linears(), 3);
        let w2 = synthetic_layer(&cfg, 0, &cfg.linears(), 3);
        assert_eq!(w1.linears[6].1, w2.linears[6].1);
        assert_ne!(
            w1.linears[0].1,
            synthetic_layer(&cfg, 0, &cfg.linears(), 4).linears[0].1
        );
        let std = {
            let d = &w1.linears[0].1.data;
            (d.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d.len() as f64).sqrt()
        };
        assert!((0.015..0.025).contains(&std), "weight std {std}");
    }

    /// Outlier channels stand out, and channels are correlated far beyond independent data.
    #[test]
    fn inputs_have_llama_like_structure() {
        let cfg = lookup("tiny").unwrap();
        let cal = SyntheticCalibration::new(&cfg, 0, 1, 512, 0);
        let x = cal.input(InputGroup::MlpIn, 0).unwrap();
        let (t, c) = (x.rows, x.cols);
        let x = &x;
        let col = |j: usize| (0..t).map(move |i| x.get(i, j) as f64);
        let norms: Vec<f64> = (0..c)
            .map(|j| col(j).map(|v| v * v).sum::<f64>().sqrt())
            .collect();
        let mut sorted = norms.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[c / 2];
        assert!(
            sorted[c - 1] > 10.0 * median,
            "max {} median {median}",
            sorted[c - 1]
        );
        // Mean |correlation| between channel pairs: sqrt(2/(π·512)) ≈ 0.035 for independent
        // data of 512 rows; a rank-24 mixing gives about sqrt(2/(π·24)) ≈ 0.16.
        let centred: Vec<Vec<f64>> = (0..c)
            .map(|j| {
                let m = col(j).sum::<f64>() / t as f64;
                let v: Vec<f64> = col(j).map(|x| x - m).collect();
                let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.into_iter().map(|x| x / n).collect()
            })
            .collect();
        let mut total = 0.0;
        let mut pairs = 0;
        for a in (0..c).step_by(7) {
            for b in (a + 1..c).step_by(11) {
                total += centred[a]
                    .iter()
                    .zip(&centred[b])
                    .map(|(x, y)| x * y)
                    .sum::<f64>()
                    .abs();
                pairs += 1;
            }
        }
        let mean = total / pairs as f64;
        assert!(mean > 0.1, "mean |correlation| {mean}");
    }
}
