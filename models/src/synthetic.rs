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
use crate::error::{ModelError, Result};
use crate::{LayerWeights, NormWeight};

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
/// Independent noise per channel, relative to the unit-variance mixed signal.
const NOISE: f32 = 0.3;
/// Fraction of outlier channels (at least one per group), and the range of their scale,
/// drawn log-uniformly. Ordinary channels have scales 0.5-1.5 (median 1), so the lower bound
/// of 12 keeps every outlier's column norm above 10x the median even after sampling noise.
const OUTLIER_FRACTION: f64 = 0.02;
const OUTLIER_SCALE: (f64, f64) = (12.0, 100.0);
/// Output gradients are small, as per-token loss gradients are.
const GRAD_SCALE: f64 = 1e-3;

/// Stream tags, so that no two purposes ever draw from the same generator.
const TAG_WEIGHTS: u64 = 1;
const TAG_STRUCTURE: u64 = 2;
const TAG_INPUT: u64 = 3;
const TAG_GRAD_ROWS: u64 = 4;
const TAG_GRAD: u64 = 5;
const TAG_NORMS: u64 = 6;

fn stream(seed: u64, parts: &[u64]) -> Rng {
    Rng::derive(seed, parts)
}

/// A cheap stand-in for a standard normal: four 16-bit uniforms from one draw, summed
/// (Irwin-Hall), centred and scaled to unit variance. Per-element noise needs only its first
/// two moments, and Box-Muller's ln and cos per element dominated the generation time.
fn approx_normal(rng: &mut Rng) -> f32 {
    let x = rng.next_u64();
    let s = (x & 0xFFFF) + ((x >> 16) & 0xFFFF) + ((x >> 32) & 0xFFFF) + (x >> 48);
    // Each lane is uniform on 0..=65535: mean 32767.5, variance about 65536²/12.
    (s as f32 - 131_070.0) * (1.732_050_8 / 65_536.0)
}

/// Two independent standard normals from one Box-Muller step (both the cosine and the sine),
/// half the cost of drawing them one at a time: weights are exactly Gaussian, and a 7B
/// layer holds 200 million of them.
fn normal_pair(rng: &mut Rng) -> (f64, f64) {
    let u1 = 1.0 - rng.uniform(); // (0, 1], so ln is finite
    let r = (-2.0 * u1.ln()).sqrt();
    let (sin, cos) = (std::f64::consts::TAU * rng.uniform()).sin_cos();
    (r * cos, r * sin)
}

fn linear_index(name: &str) -> u64 {
    crate::config::LINEAR_NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap_or(crate::config::LINEAR_NAMES.len()) as u64
}

/// A layer with Gaussian weights (std 0.02, rows scaled by 0.7-1.3), deterministic per
/// (seed, layer, linear) and independent of the thread count (each row has its own stream).
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
                    let mut rng = stream(seed, &[TAG_WEIGHTS, layer as u64, id, r as u64]);
                    let scale = WEIGHT_STD * (0.7 + 0.6 * rng.uniform());
                    let mut pairs = row.chunks_exact_mut(2);
                    for pair in &mut pairs {
                        let (a, b) = normal_pair(&mut rng);
                        pair[0] = (scale * a) as f32;
                        pair[1] = (scale * b) as f32;
                    }
                    if let [last] = pairs.into_remainder() {
                        *last = (scale * normal_pair(&mut rng).0) as f32;
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
        .collect::<Vec<_>>();
    // γ as trained LLaMA norms look: positive, spread around a common level.
    let norms = [InputGroup::AttnIn, InputGroup::MlpIn]
        .into_iter()
        .map(|group| {
            let mut rng = stream(seed, &[TAG_NORMS, layer as u64, group as u64]);
            NormWeight {
                group,
                data: (0..cfg.hidden)
                    .map(|_| (0.3 * rng.normal()).exp() as f32)
                    .collect(),
                dtype: DType::F32,
            }
        })
        .collect();
    LayerWeights {
        model: cfg.clone(),
        layer,
        dtypes: vec![DType::F32; linears.len()],
        linears,
        norms,
    }
}

/// The fixed structure of one input group: channel mixing, channel scales and outliers.
struct GroupStructure {
    group: InputGroup,
    cols: usize,
    /// MIX_RANK x cols, row-major, each column of unit norm so that every channel carries
    /// the same signal variance and the scales alone decide which channels stand out.
    mix: Vec<f32>,
    scale: Vec<f32>,
    /// Sorted indices of the outlier channels.
    outliers: Vec<usize>,
}

impl GroupStructure {
    fn new(group: InputGroup, cols: usize, seed: u64, layer: usize) -> Self {
        let base = [TAG_STRUCTURE, layer as u64, group as u64];
        let sub = |part: u64| stream(seed, &[base[0], base[1], base[2], part]);

        let mut rng = sub(0);
        let mut mix: Vec<f32> = (0..MIX_RANK * cols).map(|_| rng.normal() as f32).collect();
        for c in 0..cols {
            let norm = (0..MIX_RANK)
                .map(|k| mix[k * cols + c].powi(2))
                .sum::<f32>()
                .sqrt()
                .max(f32::MIN_POSITIVE);
            for k in 0..MIX_RANK {
                mix[k * cols + c] /= norm;
            }
        }

        let mut rng = sub(1);
        let mut scale: Vec<f32> = (0..cols).map(|_| (0.5 + rng.uniform()) as f32).collect();

        // A fixed count rather than a per-channel coin flip: a narrow group must not end up
        // with no outlier at all.
        let count = ((cols as f64 * OUTLIER_FRACTION).round() as usize)
            .max(1)
            .min(cols);
        let mut rng = sub(2);
        let mut order: Vec<usize> = (0..cols).collect();
        for i in 0..count {
            let j = i + rng.below(cols - i);
            order.swap(i, j);
        }
        let mut outliers = order[..count].to_vec();
        outliers.sort_unstable();
        let (lo, hi) = (OUTLIER_SCALE.0.ln(), OUTLIER_SCALE.1.ln());
        for &c in &outliers {
            scale[c] = (lo + (hi - lo) * rng.uniform()).exp() as f32;
        }

        Self {
            group,
            cols,
            mix,
            scale,
            outliers,
        }
    }
}

/// LLaMA-like calibration for one layer, generated sample by sample:
/// `X_s = (Z_s · M + noise) · diag(scale)` with `Z_s` tokens x 24 standard normal, `M` a fixed
/// mixing with unit-norm columns and `scale` 0.5-1.5 for ordinary channels, 12-100 for the
/// 2% outlier channels. Output gradients are about 1e-3, varying by row and by token.
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
        // `new` builds one structure for each of the model's groups, and every model has all
        // four, so the search cannot fail.
        self.groups
            .iter()
            .find(|g| g.group == group)
            .expect("every input group has a structure")
    }

    /// The outlier channels of a group, sorted: what Wanda's activation norm should find.
    pub fn outlier_channels(&self, group: InputGroup) -> &[usize] {
        &self.structure(group).outliers
    }

    fn check_sample(&self, sample: usize) -> Result<()> {
        if sample >= self.samples {
            return Err(ModelError::Calibration(format!(
                "sample {sample} requested from {}; valid samples are 0-{}",
                self.describe(),
                self.samples.saturating_sub(1)
            )));
        }
        Ok(())
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
        self.check_sample(sample)?;
        let g = self.structure(group);
        let cols = g.cols;
        let mut data = vec![0.0f32; self.tokens * cols];
        data.par_chunks_mut(cols.max(1))
            .enumerate()
            .for_each(|(t, row)| {
                let mut rng = stream(
                    self.seed,
                    &[
                        TAG_INPUT,
                        self.layer as u64,
                        group as u64,
                        sample as u64,
                        t as u64,
                    ],
                );
                // Row t of Z·M as a sum of scaled rows of M: contiguous, so it vectorises.
                for k in 0..MIX_RANK {
                    let z = rng.normal() as f32;
                    let m = &g.mix[k * cols..(k + 1) * cols];
                    for (v, m) in row.iter_mut().zip(m) {
                        *v += z * m;
                    }
                }
                for (v, s) in row.iter_mut().zip(&g.scale) {
                    *v = s * (*v + NOISE * approx_normal(&mut rng));
                }
            });
        Ok(Matrix {
            rows: self.tokens,
            cols,
            data,
        })
    }

    fn output_grad(&self, linear: &LinearSpec, sample: usize) -> Result<Matrix> {
        self.check_sample(sample)?;
        let id = linear_index(linear.name);
        let rows = linear.rows;
        let mut row_rng = stream(self.seed, &[TAG_GRAD_ROWS, self.layer as u64, id]);
        let row_scale: Vec<f32> = (0..rows)
            .map(|_| (0.5 * row_rng.normal()).exp() as f32)
            .collect();
        let mut data = vec![0.0f32; self.tokens * rows];
        data.par_chunks_mut(rows.max(1))
            .enumerate()
            .for_each(|(t, out)| {
                let mut rng = stream(
                    self.seed,
                    &[TAG_GRAD, self.layer as u64, id, sample as u64, t as u64],
                );
                let token_scale = (GRAD_SCALE * (0.5 * rng.normal()).exp()) as f32;
                for (v, r) in out.iter_mut().zip(&row_scale) {
                    *v = token_scale * r * approx_normal(&mut rng);
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
        assert_eq!(x0.shape(), (8, 256));
        assert_eq!(x0, b.input(InputGroup::AttnIn, 0).unwrap());
        assert_ne!(x0, a.input(InputGroup::AttnIn, 1).unwrap());
        assert_ne!(x0, a.input(InputGroup::MlpIn, 0).unwrap());
        assert_ne!(
            x0,
            SyntheticCalibration::new(&cfg, 2, 4, 8, 7)
                .input(InputGroup::AttnIn, 0)
                .unwrap(),
            "another layer, other data"
        );
        let q = cfg.linear("q_proj").unwrap();
        let dy = a.output_grad(&q, 2).unwrap();
        assert_eq!(dy.shape(), (8, 256));
        assert_eq!(dy, b.output_grad(&q, 2).unwrap());
        assert_ne!(dy, a.output_grad(&q, 3).unwrap());
        let w1 = synthetic_layer(&cfg, 0, &cfg.linears(), 3);
        let w2 = synthetic_layer(&cfg, 0, &cfg.linears(), 3);
        assert_eq!(w1.linears[6].1, w2.linears[6].1);
        assert_ne!(
            w1.linears[0].1,
            synthetic_layer(&cfg, 0, &cfg.linears(), 4).linears[0].1
        );
        // A linear's weights depend on its name, not on its position in the selection.
        let down_alone = synthetic_layer(&cfg, 0, &[cfg.linear("down_proj").unwrap()], 3);
        assert_eq!(down_alone.linears[0].1, w1.linears[6].1);
    }

    #[test]
    fn samples_past_the_end_are_errors() {
        let cfg = lookup("tiny").unwrap();
        let cal = SyntheticCalibration::new(&cfg, 0, 2, 4, 0);
        let e = cal.input(InputGroup::AttnIn, 2).unwrap_err().to_string();
        assert!(e.contains("sample 2") && e.contains("0-1"), "{e}");
        assert!(cal.output_grad(&cfg.linear("k_proj").unwrap(), 2).is_err());
    }

    /// Rows are seeded one by one, so one thread and several give the same bits.
    #[test]
    fn independent_of_the_thread_count() {
        let cfg = lookup("tiny").unwrap();
        let cal = SyntheticCalibration::new(&cfg, 0, 1, 64, 9);
        let down = cfg.linear("down_proj").unwrap();
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    (
                        cal.input(InputGroup::MlpAct, 0).unwrap(),
                        cal.output_grad(&down, 0).unwrap(),
                        synthetic_layer(&cfg, 0, std::slice::from_ref(&down), 9),
                    )
                })
        };
        let (x1, g1, w1) = run(1);
        let (x3, g3, w3) = run(3);
        assert_eq!(x1, x3);
        assert_eq!(g1, g3);
        assert_eq!(w1.linears[0].1, w3.linears[0].1);
    }

    fn rms(d: &[f32]) -> f64 {
        (d.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d.len() as f64).sqrt()
    }

    #[test]
    fn weights_and_gradients_have_llama_like_scales() {
        let cfg = lookup("tiny").unwrap();
        let w = synthetic_layer(&cfg, 0, &cfg.linears(), 3);
        for (l, m) in &w.linears {
            assert_eq!(m.shape(), (l.rows, l.cols));
            let std = rms(&m.data);
            assert!((0.015..0.025).contains(&std), "{} weight std {std}", l.name);
        }
        let cal = SyntheticCalibration::new(&cfg, 0, 1, 256, 0);
        let dy = cal.output_grad(&cfg.linear("up_proj").unwrap(), 0).unwrap();
        let std = rms(&dy.data);
        assert!((3e-4..3e-3).contains(&std), "gradient rms {std}");
        // Per-token scales vary: the loudest token is well above the quietest.
        let token_rms: Vec<f64> = (0..dy.rows).map(|t| rms(dy.row(t))).collect();
        let (lo, hi) = token_rms
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        assert!(hi > 3.0 * lo, "token scales {lo}..{hi}");
    }

    /// The bound a benchmark run relies on: 16 samples x 256 tokens of LLaMA-7B's four input
    /// groups in a few seconds. Timing depends on the machine and its load, so this runs on
    /// request: `cargo test -p prunebench-models -- --ignored`.
    #[test]
    #[ignore]
    fn llama_7b_calibration_is_generated_in_seconds() {
        let cfg = lookup("llama-7b").unwrap();
        let start = std::time::Instant::now();
        let cal = SyntheticCalibration::new(&cfg, 0, 16, 256, 0);
        for (g, cols) in cfg.input_groups() {
            for s in 0..16 {
                assert_eq!(cal.input(g, s).unwrap().shape(), (256, cols));
            }
        }
        let took = start.elapsed();
        println!("16 x 256 tokens, four groups: {took:?}");
        assert!(took.as_secs_f64() < 5.0, "took {took:?}");
    }

    /// Mean |Pearson correlation| over a fixed sample of column pairs.
    fn mean_abs_correlation(x: &Matrix) -> f64 {
        let (t, c) = x.shape();
        let unit: Vec<Vec<f64>> = (0..c)
            .map(|j| {
                let col: Vec<f64> = (0..t).map(|i| x.get(i, j) as f64).collect();
                let m = col.iter().sum::<f64>() / t as f64;
                let v: Vec<f64> = col.iter().map(|x| x - m).collect();
                let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.into_iter().map(|x| x / n).collect()
            })
            .collect();
        let (mut total, mut pairs) = (0.0, 0);
        for a in (0..c).step_by(5) {
            for b in (a + 1..c).step_by(7) {
                let r: f64 = unit[a].iter().zip(&unit[b]).map(|(x, y)| x * y).sum();
                total += r.abs();
                pairs += 1;
            }
        }
        total / pairs as f64
    }

    /// Outlier channels stand out, and channels are correlated far beyond independent data.
    #[test]
    fn inputs_have_llama_like_structure() {
        let cfg = lookup("tiny").unwrap();
        let cal = SyntheticCalibration::new(&cfg, 0, 1, 512, 0);
        for (group, cols) in cfg.input_groups() {
            let x = cal.input(group, 0).unwrap();
            assert_eq!(x.shape(), (512, cols));
            let norms: Vec<f64> = (0..cols)
                .map(|j| (0..512).map(|i| (x.get(i, j) as f64).powi(2)).sum::<f64>())
                .map(f64::sqrt)
                .collect();
            let mut sorted = norms.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[cols / 2];

            // 1-3% of the channels are outliers, each more than 10x the median channel, and
            // they are exactly the channels that large (the rest stay within a few x).
            let outliers = cal.outlier_channels(group);
            let fraction = outliers.len() as f64 / cols as f64;
            assert!(
                (0.01..=0.03).contains(&fraction),
                "{}: {} outliers of {cols}",
                group.name(),
                outliers.len()
            );
            let large: Vec<usize> = (0..cols).filter(|&j| norms[j] > 10.0 * median).collect();
            assert_eq!(large, outliers, "{}: median {median}", group.name());
            let ordinary_max = (0..cols)
                .filter(|j| !outliers.contains(j))
                .map(|j| norms[j])
                .fold(0.0, f64::max);
            assert!(ordinary_max < 3.0 * median, "{}", group.name());

            // Mean |correlation| of independent data with 512 rows is about
            // sqrt(2/(π·512)) ≈ 0.035; a rank-24 mixing gives about sqrt(2/(π·24))·0.92 ≈ 0.15.
            let corr = mean_abs_correlation(&x);
            assert!(corr > 0.1, "{}: mean |correlation| {corr}", group.name());
        }

        // The same measure on independent Gaussian data of the same shape, for contrast.
        let mut rng = Rng::new(1);
        let independent = Matrix::from_fn(512, 256, |_, _| rng.normal() as f32);
        let base = mean_abs_correlation(&independent);
        assert!(base < 0.05, "independent data: {base}");
        let x = cal.input(InputGroup::AttnIn, 0).unwrap();
        assert!(mean_abs_correlation(&x) > 3.0 * base);
    }

    /// The mixing is low-rank: the top 24 singular directions hold nearly all the energy of
    /// the ordinary channels (the noise holds the rest), as in real activations, while
    /// independent data spreads it evenly.
    #[test]
    fn inputs_are_low_rank_plus_noise() {
        let cfg = lookup("tiny").unwrap();
        let cal = SyntheticCalibration::new(&cfg, 0, 1, 512, 5);
        let x = cal.input(InputGroup::AttnIn, 0).unwrap();
        let outliers = cal.outlier_channels(InputGroup::AttnIn);
        let cols: Vec<usize> = (0..x.cols).filter(|j| !outliers.contains(j)).collect();
        let n = cols.len();
        // Gram matrix of the ordinary channels; the energy its top MIX_RANK eigenvectors
        // capture, found by subspace iteration (the signal eigenvalues are about 40x the
        // noise ones, so a few iterations converge).
        let mut g = vec![0.0f64; n * n];
        for t in 0..x.rows {
            let row = x.row(t);
            for (a, &ca) in cols.iter().enumerate() {
                let va = row[ca] as f64;
                for (b, &cb) in cols.iter().enumerate() {
                    g[a * n + b] += va * row[cb] as f64;
                }
            }
        }
        let trace: f64 = (0..n).map(|a| g[a * n + a]).sum();
        let gv = |v: &[f64]| -> Vec<f64> {
            (0..n)
                .map(|a| (0..n).map(|b| g[a * n + b] * v[b]).sum())
                .collect()
        };
        let mut rng = Rng::new(2);
        let mut basis: Vec<Vec<f64>> = (0..MIX_RANK)
            .map(|_| (0..n).map(|_| rng.normal()).collect())
            .collect();
        for _ in 0..30 {
            let mut next: Vec<Vec<f64>> = Vec::new();
            for v in &basis {
                let mut w = gv(v);
                for u in &next {
                    let d: f64 = w.iter().zip(u).map(|(a, b)| a * b).sum();
                    w.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
                }
                let norm = w.iter().map(|a| a * a).sum::<f64>().sqrt();
                next.push(w.into_iter().map(|a| a / norm).collect());
            }
            basis = next;
        }
        let top: f64 = basis
            .iter()
            .map(|v| gv(v).iter().zip(v).map(|(a, b)| a * b).sum::<f64>())
            .sum();
        let share = top / trace;
        // Signal 1, noise 0.09 per channel: the top 24 of 251 directions hold about 0.92
        // (plus their share of the noise); independent data would give about 24/251 ≈ 0.1.
        assert!(share > 0.85, "top-{MIX_RANK} energy share {share}");
    }
}
